"""Issue 6: agavefs as a mount helper (fstab, ``mount -t fuse.agavefs`` through
mount.fuse3) and as a systemd service (``Type=notify``, ``ExecStop`` drains).

mount.fuse3 runs ``agavefs SOURCE MOUNTPOINT -o OPTIONS`` through ``/bin/sh`` and the
PATH it was given, so the tests put a bin directory with this interpreter's
``agavefs`` first in PATH.  mount(8) itself drops PATH (and HOME) before running
mount.fuse3; that path is tested only when ``agavefs`` is installed in the default
PATH (e.g. /usr/local/bin), which the tests never do themselves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from newcomer_support import HAVE_FUSE, REPO, agavefs, is_live_mount, login, no_traceback

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def agavefs_bin(tmp_path: Path) -> Path:
    """A directory whose ``agavefs`` is the package under test."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    script = d / "agavefs"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m agavefs \"$@\"\n")
    script.chmod(0o755)
    return d


def helper_env(tmp_path: Path, **extra) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("AGAVE_CACHE_DIR", "NOTIFY_SOCKET", "XDG_CACHE_HOME")}
    env.update(PATH=f"{agavefs_bin(tmp_path)}:{os.environ.get('PATH', DEFAULT_PATH)}", HOME=str(home))
    env.update(extra)
    return env


def status_json(mountpoint: Path) -> dict:
    r = agavefs("status", str(mountpoint), "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["mounts"][0]


def unmount(mountpoint: Path) -> None:
    if is_live_mount(str(mountpoint)):
        r = agavefs("umount", str(mountpoint), timeout=120)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_mount_fuse3_with_fstab_options(emu, tmp_path):
    creds = login(emu, tmp_path / "creds")
    (emu.home() / "data.txt").write_text("from the server\n")
    mp = tmp_path / "agave"
    mp.mkdir()
    env = helper_env(tmp_path)
    opts = (f"_netdev,user,noauto,nofail,defaults,x-systemd.device-timeout=10,attr_ttl=30,ro,"
            f"agave_cache_dir={creds},cache_dir={tmp_path / 'spool'},log_file={tmp_path / 'helper.log'},verbose=2")
    try:
        r = subprocess.run(["mount.fuse3", "local.storage:/home/demo", str(mp), "-o", opts, "-t", "fuse.agavefs"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        no_traceback(r)
        assert is_live_mount(str(mp))
        line = next(l for l in open("/proc/mounts") if f" {mp} " in l)
        assert " fuse.agavefs " in line and " ro," in line
        assert (mp / "data.txt").read_text() == "from the server\n"
        with pytest.raises(OSError) as exc:
            (mp / "new.txt").write_text("x")
        assert exc.value.errno == 30  # EROFS
        s = status_json(mp)
        assert s["options"]["attr_ttl"] == 30.0
        assert s["options"]["read_only"] is True
        assert s["options"]["agave_cache_dir"] == str(creds)
        assert (s["system"], s["path"]) == ("local.storage", "/home/demo")
        pid = s["pid"]
        r = agavefs("umount", str(mp), timeout=120)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(str(mp)) and wait_gone(pid)
        assert "GET" in (tmp_path / "helper.log").read_text()  # verbose=2 and log_file were applied
    finally:
        unmount(mp)


def test_mount_fuse3_type_in_source_and_writes_drain(emu, tmp_path):
    """``agavefs#SYSTEM:PATH`` (the fstab form without -t) and a writable mount whose
    plain umount-by-agavefs leaves the file on the server."""
    creds = login(emu, tmp_path / "creds")
    mp = tmp_path / "agave"
    mp.mkdir()
    env = helper_env(tmp_path)
    try:
        r = subprocess.run(["mount.fuse3", "agavefs#local.storage:/home/demo", str(mp), "-o",
                            f"_netdev,attr_ttl=5,upload_workers=2,agave_cache_dir={creds}"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        (mp / "written.txt").write_text("through mount.fuse3\n")
        assert status_json(mp)["options"]["upload_workers"] == 2
        r = agavefs("umount", str(mp), timeout=120)
        assert r.returncode == 0, r.stderr
        assert (emu.home() / "written.txt").read_text() == "through mount.fuse3\n"
    finally:
        unmount(mp)


def test_mount_fuse3_without_credentials_says_what_to_do(emu, tmp_path):
    """mount(8) does not always pass AGAVE_CACHE_DIR: then the user's ~/.agave is used,
    and when there is none the message names the fix."""
    mp = tmp_path / "agave"
    mp.mkdir()
    env = helper_env(tmp_path)  # HOME is an empty directory, no AGAVE_CACHE_DIR
    r = subprocess.run(["mount.fuse3", "local.storage:/home/demo", str(mp), "-o", "_netdev", "-t", "fuse.agavefs"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "not logged in" in r.stderr and "agavefs login" in r.stderr, r.stderr
    no_traceback(r)
    assert not os.path.ismount(str(mp))


def test_mount_8_type_fuse_agavefs(emu, tmp_path):
    """The real ``mount -t fuse.agavefs`` (mount(8) -> mount.fuse3 -> agavefs), when agavefs
    is installed in the default PATH that mount(8) leaves to its helpers."""
    if os.getuid() != 0:
        pytest.skip("mount(8) with a fuse.TYPE helper needs root")
    found = shutil.which("agavefs", path=DEFAULT_PATH)
    wrapper = None
    if not found:
        # mount(8) drops PATH: install agavefs where it looks, for this test only
        wrapper = Path("/usr/local/bin/agavefs")
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m agavefs \"$@\"\n")
        wrapper.chmod(0o755)
    creds = login(emu, tmp_path / "creds")
    mp = tmp_path / "agave"
    mp.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "fuse.agavefs", "local.storage:/home/demo", str(mp), "-o",
                            f"_netdev,attr_ttl=30,read_only,agave_cache_dir={creds}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert is_live_mount(str(mp))
        assert status_json(mp)["options"]["read_only"] is True
    finally:
        unmount(mp)
        if wrapper is not None:
            wrapper.unlink()


# -- fstab lines of the documentation -------------------------------------------------

def fstab_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and "fuse.agavefs" in line]


def test_documented_fstab_lines_parse():
    from agavefs.cli import mount as mount_cli

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```fstab\n(.*?)```", readme, flags=re.S)
    lines = fstab_lines((REPO / "contrib/fstab.example").read_text()) + fstab_lines("\n".join(blocks))
    assert len(lines) >= 4
    for fields in lines:
        assert len(fields) == 6 and fields[2] == "fuse.agavefs", fields
        source, mountpoint, _, options = fields[:4]
        assert ":" in source and mountpoint.startswith("/")
        defaults = mount_cli._defaults()
        import argparse
        args = argparse.Namespace(**dict(defaults, options=[options], target=[source, mountpoint]))
        mount_cli.apply_o_options(args, defaults)  # raises on an unknown word
        system, path, mp = mount_cli.split_target(args.target)
        assert system and path and mp == mountpoint
        assert "_netdev" in options


# -- systemd ----------------------------------------------------------------------------

def unit_commands(unit: Path, home: Path, agavefs_path: Path) -> tuple[dict, dict]:
    """Environment= and Exec*= of the unit, expanded as systemd would for this home."""
    env: dict[str, str] = {}
    execs: dict[str, list[str]] = {}
    service: dict[str, str] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        value = value.replace("%h", str(home))
        if section == "[Service]":
            service[key] = value
            if key == "Environment":
                name, _, v = value.partition("=")
                env[name] = v
            elif key.startswith("Exec"):
                execs[key] = value
    env["AGAVEFS"] = str(agavefs_path)  # what the user edits in
    out = {}
    for key, value in execs.items():
        words = shlex.split(value)
        out[key] = [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), w) for w in words]
    return env, {"service": service, "exec": out}


def test_systemd_user_unit_notify_and_drain(emulator_factory, tmp_path):
    """Run the contrib unit's commands as systemd would: READY=1 arrives on
    NOTIFY_SOCKET once the mount is live, ExecStop waits for the upload."""
    emu = emulator_factory("--staging-delay", "1.5")
    home = tmp_path / "h"
    home.mkdir()
    # `agavefs login` as the user: HOME is set, AGAVE_CACHE_DIR is not
    env = helper_env(tmp_path, HOME=str(home))
    r = agavefs("login", "--base-url", emu.url, "--username", "demo", "--password-stdin", env=env, input="demo\n")
    assert r.returncode == 0, r.stderr
    assert (home / ".agave/current").exists()

    unit_env, unit = unit_commands(REPO / "contrib/systemd/agavefs.service", home, agavefs_bin(tmp_path) / "agavefs")
    assert unit["service"]["Type"] == "notify"
    assert "umount" in " ".join(unit["exec"]["ExecStop"])
    env.update(unit_env)
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(1.0)
    env["NOTIFY_SOCKET"] = str(notify_path)
    mp = Path(unit_env["MOUNTPOINT"])
    proc = None
    try:
        subprocess.run(unit["exec"]["ExecStartPre"], env=env, check=True, timeout=30)
        proc = subprocess.Popen(unit["exec"]["ExecStart"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "journal.txt", "wb"))
        messages = []
        deadline = time.monotonic() + 60
        while not any("READY=1" in m for m in messages):
            assert time.monotonic() < deadline, f"no READY=1: {messages} {(tmp_path / 'journal.txt').read_text()}"
            assert proc.poll() is None, (tmp_path / "journal.txt").read_text()
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        assert is_live_mount(str(mp))  # READY=1 means live
        (mp / "from-service.txt").write_text("service\n")
        r = subprocess.run(unit["exec"]["ExecStop"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        no_traceback(r)
        # ExecStop returned: the server has the file, the daemon is gone
        assert (emu.home() / "from-service.txt").read_text() == "service\n"
        assert proc.wait(30) == 0
        journal = (tmp_path / "journal.txt").read_text()
        assert "mounted" in journal  # -v in the unit: the mount is logged to the journal
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        sock.close()
        unmount(mp)


def test_sigterm_of_the_service_drains_too(emulator_factory, tmp_path):
    """systemctl stop without ExecStop (or a shutdown) sends SIGTERM: the daemon
    drains pending uploads, unmounts and exits 0, telling systemd STOPPING=1."""
    emu = emulator_factory("--staging-delay", "1.5")
    creds = login(emu, tmp_path / "creds")
    mp = tmp_path / "agave"
    mp.mkdir()
    notify_path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(1.0)
    env = helper_env(tmp_path, AGAVE_CACHE_DIR=str(creds), NOTIFY_SOCKET=str(notify_path))
    proc = subprocess.Popen([sys.executable, "-m", "agavefs", "mount", "--foreground", str(mp),
                             "--cache-dir", str(tmp_path / "spool")], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.txt", "wb"))
    try:
        messages = []
        deadline = time.monotonic() + 60
        while not any("READY=1" in m for m in messages):
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "err.txt").read_text()
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        (mp / "pending.bin").write_bytes(b"p" * 300_000)
        proc.terminate()
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 5
        while not any("STOPPING=1" in m for m in messages) and time.monotonic() < deadline:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        assert any("STOPPING=1" in m for m in messages), messages
        assert (emu.home() / "pending.bin").read_bytes() == b"p" * 300_000
        assert not os.path.ismount(str(mp))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        sock.close()
        unmount(mp)
