"""Malformed and hostile server answers through a real mount (the client-level cases
are in tests/client/test_client_hostile.py; this is what a user of the mount sees).
A scripted stub server (tests/client/client_stub.py) answers a listing that names
".." or "a/b" or points outside the home, a negative length, a body that is not
JSON, wrong types, a redirect to another host: the mount answers EIO or ENOENT,
lists nothing it should not, never asks for a path outside its root, and stays alive."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from client_stub import Stub, entry, wrap  # noqa: E402

from agavefs.client import Credentials  # noqa: E402
from helpers import agavefs_cmd  # noqa: E402
from relsupport import proc_state  # noqa: E402

H = "/home/demo"
OK = b"the right bytes\n" * 100


def _items(path: str):
    d = lambda name, **kw: entry(name, f"{H}/{name}", kind="dir", length=4096, **kw)  # noqa: E731
    me = lambda p: entry(".", p, kind="dir", length=4096)  # noqa: E731
    if path == H:
        return [me(H), entry("ok.txt", f"{H}/ok.txt", length=len(OK)), entry("..", "/home", kind="dir"),
                entry("a/b", f"{H}/a/b"), entry(".", H, kind="dir"), entry("", f"{H}/"),
                entry("evil", "/etc/passwd", length=len(OK)), entry("nul\0x", f"{H}/nul"),
                d("hostile"), d("notjson"), d("neg"), d("wrongtype"), d("redirect"), d("shape")]
    if path == f"{H}/hostile":
        return [me(path), entry("..", "/home"), entry("../../etc", "/etc", kind="dir"),
                entry("inner.txt", f"{path}/inner.txt", length=len(OK))]
    if path == f"{H}/neg":
        return [me(path), entry("neg.txt", f"{path}/neg.txt", length=-5)]
    if path == f"{H}/wrongtype":
        return [me(path), entry("w", f"{path}/w", length="ten")]
    if path in (f"{H}/ok.txt", f"{H}/evil", f"{H}/hostile/inner.txt"):
        return [entry(path.rsplit("/", 1)[1], path, length=len(OK))]
    return None


def _stub() -> tuple[Stub, Stub]:
    stub, other = Stub().start(), Stub().start()
    other.route("GET", "/", lambda req, h: h.send_raw(200, b"STOLEN"))
    stub.route("GET", "/systems/v2/stub", lambda req, h: h.send_json(200, wrap(
        {"id": "stub", "type": "STORAGE", "storage": {"homeDir": "/home", "rootDir": "/"}})))

    def listing(req, h):
        path = "/" + req.path.split("/system/stub/", 1)[1].lstrip("/")
        path = path.rstrip("/") or "/"
        if path == f"{H}/notjson":
            return h.send_raw(200, b"<html>not json</html>", "text/html")
        if path == f"{H}/shape":
            return h.send_json(200, wrap({"name": "not a list"}))
        if path == f"{H}/redirect":
            return h.send_raw(302, b"", headers={"Location": other.url + "/files/v2/listings/x"})
        items = _items(path)
        if items is None:
            return h.send_json(404, wrap(None, "File/folder does not exist", "error"))
        off, lim = int(req.query.get("offset", 0)), int(req.query.get("limit", 100))
        h.send_json(200, wrap(items[off:off + lim]))

    def media(req, h):
        path = "/" + req.path.split("/system/stub/", 1)[1].lstrip("/")
        if path in (f"{H}/ok.txt", f"{H}/evil", f"{H}/hostile/inner.txt"):
            return h.send_raw(200, OK)
        h.send_json(404, wrap(None, "File/folder does not exist", "error"))

    stub.route("GET", "/files/v2/listings/", listing)
    stub.route("GET", "/files/v2/media/", media)
    return stub, other


@pytest.fixture
def hostile_mount(tmp_path):
    stub, other = _stub()
    creds = tmp_path / "creds"
    Credentials(baseurl=stub.url, username="demo", apikey="KEY-abcdef", apisecret="SECRET-abcdef",
                access_token="ACCESS-abcdef-1", refresh_token="REFRESH-abcdef-1",
                created_at=str(int(time.time())), expires_in="3600").save(str(creds / "current"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "mount.log"
    proc = subprocess.Popen(agavefs_cmd("mount", "--foreground", f"stub:{H}", str(mnt), "--agave-cache-dir",
                                        str(creds), "--cache-dir", str(tmp_path / "cache"), "--log-file", str(log),
                                        "-vv", "--op-timeout", "3"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the mount did not come up"
            time.sleep(0.05)
        yield mnt, proc, stub, other, log
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # ours, by pid
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        stub.stop()
        other.stop()


def _errno(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def test_hostile_listings_through_the_mount(hostile_mount):
    mnt, proc, stub, other, log = hostile_mount
    names = sorted(os.listdir(mnt))
    # "..", "a/b", "", "." and a NUL name are dropped; "evil" is shown under its name only
    assert names == ["evil", "hostile", "neg", "notjson", "ok.txt", "redirect", "shape", "wrongtype"]
    assert (mnt / "ok.txt").read_bytes() == OK
    assert sorted(os.listdir(mnt / "hostile")) == ["inner.txt"]
    # "evil" claims to be /etc/passwd: it is read as HOME/evil, never as /etc/passwd
    assert (mnt / "evil").read_bytes() == OK
    for bad in ("notjson", "shape", "neg", "wrongtype", "redirect"):
        assert _errno(os.listdir, mnt / bad) == errno.EIO, bad
    assert _errno(os.stat, mnt / "missing") == errno.ENOENT
    assert _errno(os.stat, mnt / "hostile" / "..." ) == errno.ENOENT
    # the kernel resolves ".." itself: it never reaches the server as a name
    assert os.path.realpath(mnt / "hostile" / "..") == str(mnt)
    assert other.seen() == [], "a request followed a redirect to another host"
    paths = [r.path for r in stub.seen()]
    assert paths and all(p.startswith(("/systems/v2", "/files/v2/listings/system/stub//home/demo",
                                       "/files/v2/media/system/stub//home/demo")) for p in paths), paths
    assert not [p for p in paths if "/etc" in p or "/../" in p or p.endswith("/..")], paths
    # alive and well
    os.statvfs(mnt)
    assert proc.poll() is None and proc_state(proc.pid) != "D"
    assert (mnt / "ok.txt").read_bytes() == OK
    text = log.read_text()
    assert "Traceback" not in text
    assert "ignored" in text  # the dropped names are logged
