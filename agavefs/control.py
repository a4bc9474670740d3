"""How ``agavefs umount`` and ``agavefs status`` talk to a running mount daemon.

Each daemon listens on a Unix socket in the runtime directory
(``$XDG_RUNTIME_DIR/agavefs``, else ``/tmp/agavefs-UID``, mode 0700) named after its
mount point, next to a ``.json`` file describing the mount.  The protocol is one
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
from pathlib import Path


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "agavefs" if base and os.path.isdir(base) else Path(f"/tmp/agavefs-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory owned by you")
    os.chmod(path, 0o700)
    return path


def mount_key(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:20]


def socket_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}.sock"


def info_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}.json"


def registered_mounts() -> list[dict]:
    out = []
    for p in sorted(runtime_dir().glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


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
        self.sock_path = socket_path(mountpoint)
        self.info_path = info_path(mountpoint)
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
        self.thread = threading.Thread(target=self.server.serve_forever, name="agavefs-control", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for p in (self.sock_path, self.info_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
