"""Issue 6: logging.  -vv gives one line per HTTP request (method, path, status, bytes,
ms) and per FUSE operation; --log-json one JSON object per line; draining at unmount
reports progress; and no token, client secret or password ever appears, in any log or
any output of a whole session (login, mount, reads, writes, token refreshes, umount)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from helpers import agavefs_cmd
from newcomer_support import HAVE_FUSE, no_traceback

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)")

USER = "alice"
PASSWORD = "Pw-7f3a9c1e-not-in-any-log"
SECRET_FIELDS = ("access_token", "refresh_token", "apisecret")


def secrets_in(creds_file) -> set[str]:
    data = json.loads(creds_file.read_text())
    return {data[k] for k in SECRET_FIELDS if data.get(k)}


@pytest.mark.timeout(180)
def test_no_secret_in_any_log_of_a_whole_session(emulator_factory, mount_factory, tmp_path):
    # tokens live 2 s: the session refreshes them
    emu = emulator_factory("--token-ttl", "2", "--staging-delay", "1", users=((USER, PASSWORD),))
    (emu.home(USER) / "input.dat").write_bytes(os.urandom(300_000))
    m = mount_factory(emu, "--log-json", user=USER, password=PASSWORD, start=False)
    creds_file = m.creds / "current"
    outputs: list[str] = []
    secrets = secrets_in(creds_file) | {PASSWORD}

    # log in again, keeping what it prints (a new token; the mount's login was the first)
    r = subprocess.run(agavefs_cmd("login", "--base-url", emu.url, "--username", USER, "--password-stdin",
                                   "--client-name", f"tests-{USER}"),
                       input=PASSWORD + "\n", env=m.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    outputs += [r.stdout, r.stderr]
    secrets |= secrets_in(creds_file)

    m.start()
    for round_ in range(2):
        data = (m.path / "input.dat").read_bytes()
        assert len(data) == 300_000
        (m.path / f"out-{round_}.bin").write_bytes(data[: 100_000 * (round_ + 1)])
        os.listdir(m.path)
        r = m.agavefs("status", "--json", timeout=30)
        outputs += [r.stdout, r.stderr]
        secrets |= secrets_in(creds_file)
        time.sleep(2.2)  # the token expires
        os.stat(m.path / "input.dat")
        os.listdir(m.path)
        secrets |= secrets_in(creds_file)
    (m.path / "last.bin").write_bytes(b"z" * 2_000_000)
    r = m.umount()
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr
    secrets |= secrets_in(creds_file)
    assert (emu.home(USER) / "last.bin").stat().st_size == 2_000_000

    log = m.log_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    messages = [line["message"] for line in lines]
    # -vv: a line per HTTP request (method, path, status, bytes, ms) and per FUSE operation
    assert any(re.match(r"GET \w+ /\S+ -> 200 \d+B \(\d+ ms\)", msg) for msg in messages), messages[:20]
    assert any(re.match(r"POST upload /\S+ -> 20\d \d+B \(\d+ ms\)", msg) for msg in messages)
    assert any(re.match(r"fuse (getattr|readdir|read|write|create) /\S* -> ok \(\d+\.\d ms\)", msg)
               for msg in messages)
    refreshes = [msg for msg in messages if "token refreshed" in msg]
    assert len(refreshes) >= 2, "the session did not refresh its token: nothing was tested"
    assert len(secrets) >= 2 * 3 + 1  # the first login's, the second's, the refreshes', the password

    texts = {"mount log": log, "mount stderr": (m.base / "mount.stderr").read_text(errors="replace"),
             "server stderr": emu.stderr_text(),
             "access log": emu.access_log.read_text() if emu.access_log.exists() else "",
             **{f"output {i}": t for i, t in enumerate(outputs)}}
    leaks = [(name, s[:6] + "...") for name, text in texts.items() for s in secrets if s in text]
    assert not leaks, f"secrets found in: {leaks}"
    for name, text in texts.items():
        assert "Traceback" not in text, name


def test_plain_log_lines_and_drain_progress(emulator_factory, mount_factory):
    """The text form of -vv, and the progress line of a drain at unmount."""
    emu = emulator_factory("--staging-delay", "2")
    m = mount_factory(emu)  # the fixture mounts with -vv --log-file
    (m.path / "slow.bin").write_bytes(b"s" * 3_000_000)
    r = m.umount()
    assert r.returncode == 0, r.stderr
    assert re.search(r"waiting for 1 file \(2\.9 MiB\) to reach the server", r.stderr), r.stderr
    assert "all uploads stored" in r.stderr
    no_traceback(r)
    log = m.log_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG agavefs\.client: GET \w+ /\S+ -> 200 \d+B "
                     r"\(\d+ ms\)$", log, flags=re.M), log[:2000]
    assert re.search(r"DEBUG agavefs\.fuse: fuse \w+ /\S* -> \w+ \(\d+\.\d ms\)$", log, flags=re.M)
    assert re.search(r"INFO agavefs\.\w+: stored /slow\.bin \(3000000 bytes\)", log)


def test_large_upload_reports_progress(emulator_factory, mount_factory):
    """A long upload says how far it is (at -v), not only when it starts and ends.

    Expected to FAIL until vfs/writeback.py logs upload progress (see the report of
    issue 6: backend.upload(..., progress=) -> an INFO line per 25 % of a file of at
    least 64 MiB, 'uploading PATH: X of Y MiB (P%)')."""
    emu = emulator_factory()
    m = mount_factory(emu)
    with open(m.path / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(96):
            f.write(chunk)
    r = m.umount()
    assert r.returncode == 0, r.stderr
    assert (emu.home() / "big.bin").stat().st_size == 96 << 20
    progress = re.findall(r"uploading /big\.bin: [\d.]+ of [\d.]+ MiB \((\d+)%\)", m.log_text())
    assert len(progress) >= 2, "no upload progress lines in the log"
