"""An in-memory ``Backend`` for VFS tests without HTTP (like mountpoint-s3's mock
client).  It keeps Agave's shape where the VFS depends on it: uploads land after a
staging delay, rename/move refuse an existing target, delete is recursive.
Failure injection: ``fail_next[op] = n`` makes the next n calls of ``op`` raise
Transient; ``lose_next_staging`` makes the next upload never land; ``refuse_session``
makes every call raise AuthError (a dead session) until it is cleared (a new login).
``splicing=True``: streams also have ``splice_into`` (as a plain HTTP body does), which
moves at most ``SPLICE_PIECE`` bytes a call, as a pipe that fills up early.
"""

from __future__ import annotations

import os
import posixpath
import threading
import time

from agavefs.errors import AlreadyExists, AuthError, InvalidArgument, NotFound, Transient
from agavefs.vfs.backend import Entry, Staging


class _Stream:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass


class _SplicingStream(_Stream):
    SPLICE_PIECE = 300_000

    def splice_into(self, fd: int, n: int) -> int:
        out = self.data[self.pos:self.pos + min(n, self.SPLICE_PIECE)]
        if not out:
            return 0
        try:
            k = os.write(fd, out)
        except BlockingIOError:
            return 0
        self.pos += k
        return k


class MemoryBackend:
    synchronous_upload = False

    def __init__(self, staging_delay: float = 0.0, splicing: bool = False):
        self.splicing = splicing
        self.lock = threading.RLock()
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/"}
        self.mtimes: dict[str, float] = {}
        self.staging_delay = staging_delay
        self.staging: dict[str, tuple[float, bytes, bool]] = {}  # path -> (ready_at, data, lost)
        self.calls: dict[str, int] = {}
        self.read_paths: list[str] = []  # the path of each read() (ranged GET)
        self.fail_next: dict[str, int] = {}
        self.lose_next_staging = False
        self.refuse_session = False
        self.refuse_streams = False
        self.list_delay = 0.0  # seconds each listing takes
        self.mangle_streams = False  # accept streamed bodies but store them a byte short
        self.streamed_bytes = 0  # taken from streamed bodies (finished or not)

    def _call(self, op: str) -> None:
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            if self.refuse_session:
                raise AuthError("token refresh failed: log in again with `agavefs login`")
            if self.fail_next.get(op, 0) > 0:
                self.fail_next[op] -= 1
                raise Transient(f"injected failure of {op}")
            self._land()

    def _land(self) -> None:
        now = time.monotonic()
        for path, (ready, data, lost) in list(self.staging.items()):
            if ready <= now and not lost:
                self.files[path] = data
                self.mtimes[path] = time.time()
                del self.staging[path]

    def _entry(self, path: str) -> Entry:
        name = posixpath.basename(path) or "/"
        if path in self.dirs:
            return Entry(name, True, 4096, self.mtimes.get(path, 0.0))
        if path in self.files:
            return Entry(name, False, len(self.files[path]), self.mtimes.get(path, 0.0))
        raise NotFound(path)

    def stat(self, path):
        self._call("stat")
        with self.lock:
            return self._entry(path)

    def stat_with_children(self, path, children):
        """One stat (counted as one) that brings the first ``children`` entries too,
        and whether they are all of them."""
        self._call("stat")
        with self.lock:
            me, kids = self._listed(path)
            return me, kids[:children], me.is_dir and len(kids) <= children

    def list(self, path):
        self._call("list")
        if self.list_delay:
            time.sleep(self.list_delay)  # a remote server's round trip
        with self.lock:
            return self._listed(path)

    def _listed(self, path):
        """Call with lock held: (entry, children in listing order)."""
        me = self._entry(path)
        if not me.is_dir:
            return me, []
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):] for p in list(self.files) + list(self.dirs)
                 if p.startswith(prefix) and "/" not in p[len(prefix):] and p != path}
        return me, [self._entry(prefix + n) for n in sorted(names, key=str.lower)]

    def read(self, path, offset, size, file_size=None):
        self._call("read")
        with self.lock:
            self.read_paths.append(path)
        with self.lock:
            if path not in self.files:
                raise NotFound(path)
            return self.files[path][offset:offset + size]

    def open_stream(self, path, offset, file_size=None):
        self._call("stream")
        with self.lock:
            if path not in self.files:
                raise NotFound(path)
            return (_SplicingStream if self.splicing else _Stream)(self.files[path][offset:])

    def upload(self, local_path, dir_path, name, progress=None):
        self._call("upload")
        with open(local_path, "rb") as f:
            data = f.read()
        self._stage(dir_path, name, data)

    def upload_stream(self, chunks, dir_path, name):
        """Takes the chunks as they come (like a server reading a chunked body); an
        exception from them propagates and nothing is stored.  ``refuse_streams``
        answers like a server that wants a Content-Length."""
        self._call("upload_stream")
        if self.refuse_streams:
            raise InvalidArgument("HTTP 411: Length Required")
        parts = []
        for chunk in chunks():
            parts.append(bytes(chunk))
            with self.lock:
                self.streamed_bytes += len(chunk)
        data = b"".join(parts)
        self._stage(dir_path, name, data[:-1] if self.mangle_streams else data)

    def _stage(self, dir_path, name, data):
        with self.lock:
            if dir_path not in self.dirs:
                raise NotFound(dir_path)
            path = posixpath.join(dir_path, name)
            self.staging[path] = (time.monotonic() + self.staging_delay, data, self.lose_next_staging)
            self.lose_next_staging = False
            self._land()

    def staging_state(self, path, size):
        self._call("staging")
        with self.lock:
            if path in self.staging:
                return Staging.PENDING, None, None
            if path in self.files and len(self.files[path]) == size:
                return Staging.STORED, size, size
            return Staging.PENDING, None, None

    def mkdir(self, path):
        self._call("mkdir")
        with self.lock:
            if path in self.dirs:
                return False
            if path in self.files:
                raise AlreadyExists(path)
            if posixpath.dirname(path) not in self.dirs:
                raise NotFound(path)
            self.dirs.add(path)
            self.mtimes[path] = time.time()
            return True

    def _move(self, src, dst):
        if src not in self.files and src not in self.dirs:
            raise NotFound(src)
        if dst in self.files or dst in self.dirs:
            raise AlreadyExists(dst)
        if posixpath.dirname(dst) not in self.dirs:
            raise NotFound(dst)
        prefix = src.rstrip("/") + "/"
        for table in (self.files, self.mtimes):
            for p in [p for p in table if p == src or p.startswith(prefix)]:
                table[dst + p[len(src):]] = table.pop(p)
        for p in [p for p in self.dirs if p == src or p.startswith(prefix)]:
            self.dirs.discard(p)
            self.dirs.add(dst + p[len(src):])

    def rename(self, path, new_name):
        self._call("rename")
        with self.lock:
            self._move(path, posixpath.join(posixpath.dirname(path), new_name))

    def move(self, path, dest):
        self._call("move")
        with self.lock:
            self._move(path, dest)

    def delete(self, path):
        self._call("delete")
        with self.lock:
            if path not in self.files and path not in self.dirs:
                raise NotFound(path)
            prefix = path.rstrip("/") + "/"
            for p in [p for p in self.files if p == path or p.startswith(prefix)]:
                del self.files[p]
            for p in [p for p in self.dirs if p == path or p.startswith(prefix)]:
                self.dirs.discard(p)

    def status(self):
        return {"requests": dict(self.calls)}

    # test helpers
    def put(self, path, data: bytes):
        with self.lock:
            d = posixpath.dirname(path)
            while d not in self.dirs:
                self.dirs.add(d)
                d = posixpath.dirname(d)
            self.files[path] = data
            self.mtimes[path] = time.time()
