"""Security through real mounts and emulator processes: the credentials cache, secrets
kept out of everything a user or another local user can read, a mount private to its
user, permissions with --allow-other enforced for another uid, TLS, the emulator's
listening address, user A against user B's space through a mount, escapes from the
root, and oversized requests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from mountsupport import Mount
from helpers import Emulator, agavefs_cmd, password_token

PW = "Pa55-w0rd-no-one-sees"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=60)


@pytest.fixture
def open_base():
    """A directory every uid may traverse (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="agavefs-rel-"))
    os.chmod(base, 0o755)
    mounts: list[Mount] = []
    yield base, mounts
    for m in mounts:
        m.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def _creds(m: Mount) -> dict:
    return json.loads((m.creds / "current").read_text())


# -- the credentials cache ------------------------------------------------------------------
def test_cache_readable_by_others_is_refused_with_the_fix(emu, mount_factory):
    m = mount_factory(emu, start=False)
    cache = m.creds / "current"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    for mode in (0o640, 0o604, 0o644):
        os.chmod(cache, mode)
        m.mountpoint.mkdir(exist_ok=True)
        r = m.agavefs("mount", str(m.mountpoint), "--cache-dir", str(m.cache_dir), timeout=60)
        assert r.returncode != 0
        assert f"can be read by other users (mode {mode:04o}); run `chmod 600 {cache}` and retry" in r.stderr, \
            r.stderr
        assert not os.path.ismount(m.mountpoint)
    os.chmod(cache, 0o600)
    m.start()
    assert os.listdir(m.path) == []


# -- secrets ----------------------------------------------------------------------------------
def test_tokens_and_passwords_never_leak(emulator_factory, tmp_path):
    users_file = tmp_path / "users"
    users_file.write_text(f"alice:{PW}\n")
    os.chmod(users_file, 0o600)
    emu = emulator_factory("--users-file", str(users_file), "--token-ttl", "3", "--staging-delay", "0.1",
                           users=())
    m = Mount(emu, tmp_path, user="alice", password=PW, name="amnt")
    try:
        first = _creds(m)
        m.start()
        (m.path / "a.txt").write_bytes(b"x" * 1000)
        time.sleep(3.5)  # the token expires: the mount refreshes it
        assert (m.path / "a.txt").read_bytes() == b"x" * 1000
        os.listdir(m.path)
        (m.path / "b.txt").write_bytes(b"y")
        deadline = time.monotonic() + 20
        while "access token refreshed" not in m.log_text() and time.monotonic() < deadline:
            os.listdir(m.path)
            time.sleep(0.5)
        assert "access token refreshed" in m.log_text()
        status_json = m.agavefs("status", "--json", str(m.path))
        status_text = m.agavefs("status", str(m.path))
        assert status_json.returncode == 0 and status_text.returncode == 0
        cmdlines = {}
        for name, pid in (("daemon", m.proc.pid), ("emulator", emu.proc.pid)):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdlines[name] = f.read().replace(b"\0", b" ").decode()
            with open(f"/proc/{pid}/comm") as f:
                cmdlines[name + " comm"] = f.read()
        last = _creds(m)
        # a login's own output
        login = subprocess.run(agavefs_cmd("login", "--base-url", emu.url, "--username", "alice",
                                           "--password-stdin", "--client-name", "leakcheck"),
                               input=PW + "\n", capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, AGAVE_CACHE_DIR=str(tmp_path / "creds2")))
        assert login.returncode == 0, login.stderr
        assert (m.path / "b.txt").read_bytes() == b"y"
        r = m.umount()
        assert r.returncode == 0, r.stderr
    finally:
        m.cleanup()
    secrets = {"password": PW}
    for i, c in enumerate((first, last)):
        for key in ("access_token", "refresh_token", "apisecret"):
            if c.get(key):
                secrets[f"{key}{i}"] = c[key]
    assert first["access_token"] != last["access_token"], "no refresh happened"
    texts = {
        "mount log (-vv)": m.log_text(),
        "mount stderr": (tmp_path / "mount.stderr").read_text(errors="replace"),
        "status --json": status_json.stdout + status_json.stderr,
        "status": status_text.stdout + status_text.stderr,
        "login output": login.stdout + login.stderr,
        "emulator stderr": emu.stderr_text(),
        "emulator access log": emu.access_log.read_text(errors="replace"),
        "umount output": r.stdout + r.stderr,
        **cmdlines,
    }
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} appears in the {where}"
    # the emulator keeps client secrets and tokens hashed only
    state = b"".join(p.read_bytes() for p in (emu.root / ".agave-emulator").glob("state.sqlite*"))
    for what, secret in secrets.items():
        assert secret.encode() not in state, f"the {what} is stored in clear by the emulator"
    # a directory made by `agavefs login` is private
    assert stat.S_IMODE((tmp_path / "creds2").stat().st_mode) == 0o700
    # refreshed tokens were written back atomically, 0600, no temp file left
    assert stat.S_IMODE((m.creds / "current").stat().st_mode) == 0o600
    assert sorted(p.name for p in m.creds.iterdir() if not p.name.endswith(".lock")) == ["current"]


# -- who may use the mount ----------------------------------------------------------------
def test_private_mount_and_allow_other_with_modes_enforced(emulator_factory, open_base):
    base, mounts = open_base
    emu = emulator_factory("--staging-delay", "0.1", users=(("demo", "demo"), ("bob", "bobpw")))
    shared = emu.home("bob") / "shared"
    shared.mkdir()
    (shared / "doc.txt").write_bytes(b"bob's doc\n")
    tok = password_token(emu.url, "bob", "bobpw", client_name="grant")
    r = requests.post(f"{emu.url}/files/v2/pems/system/local.storage/bob/shared",
                      headers={"Authorization": f"Bearer {tok['access_token']}"},
                      json={"username": "demo", "permission": "READ", "recursive": True}, timeout=30)
    assert r.status_code == 201, r.text
    (emu.home() / "root-file.txt").write_bytes(b"created by the mounting user\n")

    private = Mount(emu, base, name="private")
    mounts.append(private)
    private.start()
    assert as_nobody("stat", str(base)).returncode == 0  # the way there is open...
    r = as_nobody("stat", str(private.path))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r  # ...the mount is not
    r = as_nobody("cat", str(private.path / "root-file.txt"))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    private.umount()

    shared_view = Mount(emu, base, "--allow-other", source="local.storage:/home/bob/shared", name="shared")
    mine = Mount(emu, base, "--allow-other", name="open")
    mounts += [shared_view, mine]
    mine.start()
    shared_view.start()
    with open("/proc/mounts") as f:
        opts = next(line.split()[3] for line in f if line.split()[1] == str(mine.path))
    assert "allow_other" in opts.split(",") and "default_permissions" in opts.split(","), opts
    # the modes shown are enforced for another uid
    assert as_nobody("cat", str(mine.path / "root-file.txt")).stdout == "created by the mounting user\n"
    assert stat.S_IMODE(os.stat(mine.path / "root-file.txt").st_mode) == 0o644
    r = as_nobody("sh", "-c", f"echo intruder >> '{mine.path / 'root-file.txt'}'")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = as_nobody("sh", "-c", f"echo intruder > '{mine.path / 'new.txt'}'")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = as_nobody("mkdir", str(mine.path / "newdir"))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = as_nobody("rm", "-f", str(mine.path / "root-file.txt"))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    # a file Agave marks read-only (READ grant) shows no write bits and cannot be opened for writing
    doc = shared_view.path / "doc.txt"
    assert stat.S_IMODE(os.stat(doc).st_mode) & 0o222 == 0
    assert as_nobody("cat", str(doc)).stdout == "bob's doc\n"
    r = as_nobody("sh", "-c", f"echo x >> '{doc}'")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    with pytest.raises(PermissionError):
        open(doc, "ab")  # not even the mounting user (root) can: the server would refuse
    for m in (mine, shared_view):
        assert m.umount().returncode == 0
    assert (emu.home() / "root-file.txt").read_bytes() == b"created by the mounting user\n"
    assert (shared / "doc.txt").read_bytes() == b"bob's doc\n"
    assert sorted(os.listdir(emu.home())) == ["root-file.txt"]


def test_user_a_cannot_reach_user_b_through_a_mount(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory(users=(("demo", "demo"), ("bob", "bobpw")))
    (emu.home("bob") / "private.txt").write_bytes(b"bob's secret")
    (emu.home() / "peek").symlink_to(emu.home("bob"))
    (emu.home() / "peekfile").symlink_to(emu.home("bob") / "private.txt")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "etc.txt").write_bytes(b"OUTSIDE")
    (emu.home() / "escape").symlink_to(outside)
    for source in ("local.storage:/home/bob", "local.storage:bob", "local.storage:/home", "local.storage:/"):
        m = mount_factory(emu, source=source, start=False, name=f"x{abs(hash(source)) % 1000}")
        m.mountpoint.mkdir(exist_ok=True)
        r = m.agavefs("mount", source, str(m.mountpoint), "--cache-dir", str(m.cache_dir), timeout=60)
        if r.returncode == 0:  # a mount of /home or / may come up: it must not show bob's files
            try:
                for sub in ("bob", "home/bob"):
                    p = m.mountpoint / sub
                    with pytest.raises(OSError):
                        (p / "private.txt").read_bytes()
            finally:
                m.agavefs("umount", str(m.mountpoint), timeout=60)
        else:
            assert "permission" in r.stderr.lower() or "denied" in r.stderr.lower(), (source, r.stderr)
        assert not os.path.ismount(m.mountpoint)
    m = mount_factory(emu)
    names = os.listdir(m.path)
    assert "escape" not in names  # a link out of the root is not even listed
    # links into bob's space may be listed (they are inside the root), but lead nowhere
    for p in (m.path / "peek" / "private.txt", m.path / "peekfile"):
        with pytest.raises(PermissionError):
            p.read_bytes()
    with pytest.raises(PermissionError):
        os.listdir(m.path / "peek")
    with pytest.raises(FileNotFoundError):
        (m.path / "escape" / "etc.txt").read_bytes()
    with pytest.raises(PermissionError):
        (m.path / "peek" / "planted.txt").write_bytes(b"x")
    r = m.umount()
    assert r.returncode == 0
    assert sorted(p.name for p in emu.home("bob").iterdir()) == ["private.txt"]
    assert sorted(p.name for p in outside.iterdir()) == ["etc.txt"]


# -- TLS ----------------------------------------------------------------------------------------
def test_tls_is_verified_by_default_and_insecure_warns(emulator_factory, mount_factory):
    emu = emulator_factory("--tls")
    m = mount_factory(emu, start=False)  # logged in with the emulator's CA
    m.mountpoint.mkdir(exist_ok=True)
    r = m.agavefs("mount", str(m.mountpoint), "--cache-dir", str(m.cache_dir), timeout=60)
    assert r.returncode != 0 and "certificate" in r.stderr.lower(), r.stderr
    assert not os.path.ismount(m.mountpoint)
    r = m.agavefs("mount", str(m.mountpoint), "--cache-dir", str(m.cache_dir), "--insecure", timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert "verification is OFF" in r.stderr, r.stderr  # said on the terminal of `agavefs mount`
        assert os.listdir(m.mountpoint) == []
    finally:
        m.agavefs("umount", str(m.mountpoint), timeout=60)


# -- the emulator --------------------------------------------------------------------------------
def _listening(port: int) -> set[str]:
    out = set()
    for table, fam in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, st = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if st == "0A" and int(p, 16) == port:
                raw = bytes.fromhex(addr)
                if fam == socket.AF_INET:
                    out.add(socket.inet_ntop(fam, raw[::-1]))
                else:
                    out.add(socket.inet_ntop(fam, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return out


def test_emulator_binds_loopback_and_warns_elsewhere(emulator_factory, tmp_path):
    emu = emulator_factory()
    assert urllib.parse.urlsplit(emu.url).hostname == "127.0.0.1"
    assert _listening(emu.port) == {"127.0.0.1"}
    assert "WARNING" not in emu.stderr_text()
    wide = Emulator(tmp_path / "wide", "--host", "0.0.0.0", log_dir=tmp_path)
    wide.start()
    try:
        assert _listening(wide.port) == {"0.0.0.0"}
        assert "WARNING: listening on 0.0.0.0, not a loopback address" in wide.stderr_text()
    finally:
        wide.stop()
        wide.kill()


def test_oversized_and_malformed_requests_are_4xx(emulator_factory):
    emu = emulator_factory()
    tok = password_token(emu.url, "demo", "demo", client_name="big")
    auth = {"Authorization": f"Bearer {tok['access_token']}"}
    media = f"{emu.url}/files/v2/media/system/local.storage/demo"
    big = b"x" * (8 << 20)

    def chunks():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    cases = [
        requests.put(media, data=b"action=mkdir&path=" + big, headers={
            **auth, "Content-Type": "application/x-www-form-urlencoded"}, timeout=60),
        requests.put(media, data=chunks(), headers={**auth, "Content-Type": "application/json"}, timeout=60),
        requests.post(f"{emu.url}/token", data=b"grant_type=password&username=" + big,
                      auth=(tok["apikey"], tok["apisecret"]), timeout=60),
        requests.post(f"{emu.url}/clients/v2", json={"clientName": "x" * (4 << 20)}, auth=("demo", "demo"),
                      timeout=60),
        requests.post(f"{emu.url}/files/v2/pems/system/local.storage/demo", data=chunks(),
                      headers={**auth, "Content-Type": "application/json"}, timeout=60),
        requests.get(f"{emu.url}/files/v2/listings/system/local.storage/demo?limit=" + "9" * 5000,
                     headers=auth, timeout=60),
        requests.get(f"{emu.url}/files/v2/listings/system/local.storage/demo?offset=-5&limit=-1",
                     headers=auth, timeout=60),
        requests.put(media, data=b"\x00\xff" * 1000, headers={**auth, "Content-Type": "application/json"},
                     timeout=60),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.method, r.request.url[:120], r.status_code, r.text[:200])
        assert b"Traceback" not in r.content
    assert "Traceback" not in emu.stderr_text()
    assert [p.name for p in emu.home().iterdir()] == []
