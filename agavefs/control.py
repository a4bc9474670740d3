"""How ``agavefs umount`` and ``agavefs status`` talk to a running mount daemon.

Each daemon listens on a Unix socket in the runtime directory
(``$XDG_RUNTIME_DIR/agavefs``, else ``/run/user/UID/agavefs``, else
``/tmp/agavefs-UID``; mode 0700) named after its mount point, next to a ``.json``
file describing the mount.  Clients look in all three, because mount(8), fstab and
systemd start daemons with another environment than the user's shell.  The protocol is one
JSON request line and JSON answer lines:

``{"cmd": "status"}``  -> one object (the daemon's status)
``{"cmd": "drain"}``   -> ``{"files": N, "bytes": B}`` lines while uploads are
                          pending, then ``{"done": true}``
``{"cmd": "force"}``   -> ``{"ok": true}``; the daemon will exit at unmount without
                          waiting for pending uploads (they stay in the journal)

Only the owner can reach the socket (directory mode 0700, socket 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import stat
import threading
import time
from pathlib import Path


def _candidate_dirs() -> list[Path]:
    """Where daemons of this user may keep their sockets, the preferred one first.

    ``$XDG_RUNTIME_DIR/agavefs`` when set, ``/run/user/UID/agavefs`` (what a login
    session's XDG_RUNTIME_DIR normally is: mount(8) and systemd start daemons with
    a different environment than your shell's), then ``/tmp/agavefs-UID``.  A
    daemon registers in the first usable one; ``status`` and ``umount`` look in
    all of them.
    """
    uid = os.getuid()
    out: list[Path] = []
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        out.append(Path(base) / "agavefs")
    run = Path(f"/run/user/{uid}")
    try:
        if run.is_dir() and run.stat().st_uid == uid:
            out.append(run / "agavefs")
    except OSError:
        pass
    out.append(Path(f"/tmp/agavefs-{uid}"))
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def _private(path: Path) -> bool:
    """An existing directory of ours that nobody else can write to."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def runtime_dir() -> Path:
    """The directory this process registers a mount in (created 0700)."""
    candidates = _candidate_dirs()
    for path in candidates:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            if path == candidates[-1]:
                raise RuntimeError(f"{path} is not a directory owned by you")
            continue
        os.chmod(path, 0o700)
        return path
    raise RuntimeError("no usable runtime directory for agavefs")


def _search_dirs() -> list[Path]:
    return [p for p in _candidate_dirs() if _private(p)]


def mount_key(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:20]


def _find(mountpoint: str, suffix: str) -> Path:
    name = f"{mount_key(mountpoint)}{suffix}"
    for directory in _search_dirs():
        if (directory / name).exists():
            return directory / name
    return runtime_dir() / name


def socket_path(mountpoint: str) -> Path:
    """The control socket of the daemon serving ``mountpoint`` (wherever it registered)."""
    return _find(mountpoint, ".sock")


def info_path(mountpoint: str) -> Path:
    return _find(mountpoint, ".json")


def registered_mounts() -> list[dict]:
    """The registrations of every mount daemon of this user (live or not); each
    carries ``_info_path`` and ``_socket_path`` for cleaning up after a dead one."""
    out: list[dict] = []
    seen: set[str] = set()
    for directory in _search_dirs():
        for p in sorted(directory.glob("*.json")):
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(info, dict) or info.get("mountpoint") in seen:
                continue
            seen.add(info.get("mountpoint"))
            info["_info_path"] = str(p)
            info["_socket_path"] = str(p.with_suffix(".sock"))
            out.append(info)
    return out


def forget(info: dict) -> None:
    """Remove the registration of a daemon that is gone."""
    for key in ("_info_path", "_socket_path"):
        if info.get(key):
            try:
                os.unlink(info[key])
            except OSError:
                pass


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def request(mountpoint: str, cmd: str, timeout: float = 5.0):
    """Yield the daemon's answer objects to ``cmd``; raises OSError when nobody answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path(mountpoint)))
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        with sock.makefile("rb") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    finally:
        sock.close()


def status_of(mountpoint: str, timeout: float = 5.0) -> dict:
    for answer in request(mountpoint, "status", timeout):
        return answer
    raise OSError("the mount daemon closed the connection")


class ControlServer:
    """The daemon side.  ``handlers`` maps a command to a callable(write) that
    answers by calling ``write(obj)`` one or more times."""

    def __init__(self, mountpoint: str, info: dict, handlers: dict):
        directory = runtime_dir()
        self.sock_path = directory / f"{mount_key(mountpoint)}.sock"
        self.info_path = directory / f"{mount_key(mountpoint)}.json"
        handlers = dict(handlers)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    line = self.rfile.readline(65536)
                    cmd = json.loads(line or b"{}").get("cmd")
                    func = handlers.get(cmd)

                    def write(obj):
                        self.wfile.write(json.dumps(obj).encode() + b"\n")
                        self.wfile.flush()

                    if func is None:
                        write({"error": f"unknown command {cmd!r}"})
                    else:
                        func(write)
                except (OSError, ValueError):
                    pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            self.server = Server(str(self.sock_path), Handler)
        finally:
            os.umask(old_umask)
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.info_path)
        # a short poll interval: close() (shutdown) waits for the loop to notice, and
        # the unmount ends with it (the default 0.5 s was a quarter second per unmount)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="agavefs-control", daemon=True)
        self.thread.start()

    def close(self) -> None:
        # shutdown() waits for serve_forever to notice, which it does when it wakes up:
        # empty connections wake it now instead of at its next poll (an unmount waits)
        stopper = threading.Thread(target=self.server.shutdown, name="agavefs-control-stop", daemon=True)
        stopper.start()
        deadline = time.monotonic() + 2.0
        while stopper.is_alive() and time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.2)
                    s.connect(str(self.sock_path))
            except OSError:
                pass
            stopper.join(0.005)
        self.server.server_close()
        for p in (self.sock_path, self.info_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
