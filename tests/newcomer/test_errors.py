"""Issue 6: errors a person sees are one sentence that says what to do, with an exit
code, and never a traceback.

Each case is a real command line against a real (loopback) emulator; they run in
parallel once per module and each test checks one of them: the exit code, the words
of the message, and the absence of "Traceback".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import Emulator
from newcomer_support import HAVE_FUSE, login

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edit_creds(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir(parents=True)
    data = json.loads((src / "current").read_text())
    data.update(changes)
    (dst / "current").write_text(json.dumps(data))
    os.chmod(dst / "current", 0o600)
    return dst


# name -> (argv after "agavefs", AGAVE_CACHE_DIR key, stdin, expected exit code, words in stderr)
def cases(base: Path, emu_url: str, dead_url: str, busy_port: int = 1) -> dict:
    empty = lambda name: str(base / "mp" / name)  # noqa: E731
    return {
        "not logged in": (["mount", empty("a")], "nobody", None, 1,
                          ["not logged in", "agavefs login --base-url"]),
        "mount point not empty": (["mount", str(base / "full")], "ok", None, 1,
                                  ["mount point", "is not empty", "empty directory"]),
        "mount point missing": (["mount", str(base / "nowhere")], "ok", None, 1,
                                ["does not exist", "mkdir -p"]),
        "token refresh failed": (["mount", empty("b")], "badrefresh", None, 1,
                                 ["token refresh failed: log in again", f"agavefs login --base-url {emu_url}"]),
        "unknown system": (["mount", "nosuch.system:/", empty("c")], "ok", None, 1,
                           ["unknown storage system 'nosuch.system'", "check its id"]),
        "unknown path": (["mount", "local.storage:/no/such/folder", empty("d")], "ok", None, 1,
                         ["local.storage:/no/such/folder does not exist", "check the path"]),
        "path is a file": (["mount", "local.storage:/home/demo/a-file.txt", empty("l")], "ok", None, 1,
                           ["local.storage:/home/demo/a-file.txt is a file, not a folder"]),
        "unreachable server": (["mount", empty("e"), "--op-timeout", "3"], "dead", None, 1,
                               [f"cannot reach {dead_url}", "connection refused"]),
        "credentials readable by others": (["mount", empty("f")], "loose", None, 1, ["chmod 600"]),
        "unknown -o option": (["mount", empty("g"), "-o", "frob=1"], "ok", None, 2,
                              ["unknown mount option 'frob=1'"]),
        "login refused": (["login", "--base-url", emu_url, "--username", "demo", "--password-stdin"], "scratch",
                          "wrong\n", 1, ["login refused", "wrong user name or password"]),
        "login unreachable": (["login", "--base-url", dead_url, "--username", "demo", "--password-stdin"],
                              "scratch", "demo\n", 3, [f"cannot reach {dead_url}", "connection refused"]),
        "login bad url": (["login", "--base-url", "ftp://example.org", "--username", "demo", "--password-stdin"],
                          "scratch", "demo\n", 2, ["--base-url must be an http(s) URL"]),
        "status of a non-mount": (["status", empty("h")], "ok", None, 1, ["is not a live agavefs mount"]),
        "umount of a non-mount": (["umount", empty("i")], "ok", None, 1, ["is not mounted"]),
        "log file in a missing folder": (["mount", empty("j"), "--log-file", "/nonexistent-agavefs/x.log"], "ok",
                                         None, 1, ["/nonexistent-agavefs/x.log: No such file or directory"]),
        "log file in a missing folder (foreground)": (
            ["mount", "--foreground", empty("k"), "--log-file", "/nonexistent-agavefs/x.log"], "ok", None, 1,
            ["cannot write the log file /nonexistent-agavefs/x.log", "choose another --log-file"]),
        "demo port in use": (["demo", str(base / "demo-mp"), "--data-dir", str(base / "demo-data"),
                              "--port", str(busy_port)], "ok", None, 1,
                             ["the demo server did not start", "choose another --port"]),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    emu = Emulator(base / "root", log_dir=base).start()
    try:
        ok = login(emu, base / "creds-ok")
        creds = {
            "ok": ok,
            "nobody": base / "creds-nobody",
            "scratch": base / "creds-scratch",
            # an expired token whose refresh token the server does not know
            "badrefresh": edit_creds(ok, base / "creds-badrefresh", access_token="0" * 32,
                                     refresh_token="1" * 32, created_at=str(int(time.time()) - 100_000),
                                     expires_in="14400"),
            "dead": None,
            "loose": edit_creds(ok, base / "creds-loose"),
        }
        dead_url = f"http://127.0.0.1:{free_port()}"
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        creds["dead"] = edit_creds(ok, base / "creds-dead", baseurl=dead_url)
        os.chmod(creds["loose"] / "current", 0o644)
        creds["nobody"].mkdir()
        creds["scratch"].mkdir()
        (base / "full").mkdir()
        (base / "full" / "mine.txt").write_text("mine")
        home = base / "home"
        home.mkdir()
        (emu.home() / "a-file.txt").write_text("not a folder")
        table = cases(base, emu.url, dead_url, busy.getsockname()[1])
        for argv, *_ in table.values():
            if argv[0] == "mount" or argv[0] in ("status", "umount"):
                target = Path(next(a for a in argv[1:] if a.startswith(str(base))))
                if target.parent.name == "mp":
                    target.mkdir(parents=True, exist_ok=True)

        def run(item):
            name, (argv, key, stdin, _, _) = item
            env = dict(os.environ, HOME=str(home), AGAVE_CACHE_DIR=str(creds[key]))
            env.pop("NOTIFY_SOCKET", None)
            r = subprocess.run([sys.executable, "-m", "agavefs", *argv], input=stdin, capture_output=True,
                               text=True, timeout=120, env=env, stdin=None if stdin else subprocess.DEVNULL)
            return name, r

        with ThreadPoolExecutor(8) as pool:
            out = dict(pool.map(run, table.items()))
        busy.close()
        yield table, out
        for d in (base / "mp").iterdir():  # tests check none is; clear any for the next tests
            if os.path.ismount(d):
                subprocess.run(["fusermount3", "-uz", str(d)])
    finally:
        emu.stop()
        emu.kill()


ALL = list(cases(Path("/x"), "http://u", "http://d"))


@pytest.mark.parametrize("name", ALL)
def test_error_message(results, name):
    table, out = results
    _, _, _, code, words = table[name]
    r = out[name]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == code, f"exit {r.returncode}: {r.stderr}"
    message = r.stderr.strip()
    assert message.startswith("agavefs "), message  # which command speaks
    assert len(message.splitlines()) == 1, f"one sentence, not a dump: {message}"
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"


def test_no_mount_is_left_behind(results):
    table, _ = results
    for argv, *_ in table.values():
        for a in argv:
            if a.startswith("/") and os.path.isdir(a):
                assert not os.path.ismount(a), a


def test_full_mount_point_is_untouched(results):
    table, _ = results
    full = Path(table["mount point not empty"][0][1])
    assert [p.name for p in full.iterdir()] == ["mine.txt"]


def test_vv_shows_the_traceback(tmp_path):
    """-vv is how a person (or a bug report) gets the details behind a one-line error."""
    mp = tmp_path / "mp"
    mp.mkdir()
    r = subprocess.run([sys.executable, "-m", "agavefs", "mount", "--foreground", str(mp), "-vv",
                        "--log-file", "/nonexistent-agavefs/x.log"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "cannot write the log file" in r.stderr
