"""The local spool: files written through the mount live here until the server has them.

Design note
-----------
Layout of a mount's cache directory (one per system, path and account)::

    CACHE/lock              flock'ed by the live daemon (one owner at a time)
    CACHE/data/<id>         spool files: the bytes of a file being written or
                            waiting for upload
    CACHE/journal/<id>.json one record per queued upload (path, size, attempts,
                            remote leftovers to clean up); written atomically

A spool file becomes *sealed* when its upload is queued; from then on nobody writes
it, so an upload never reads bytes that are changing.  A record is written only
after the data is on disk (fsync'ed when ``fsync`` is on), and removed only after
the server provably stored the file, so a crash at any point leaves either nothing
to do or a record the next mount finishes (``load_records``).

Writeback: with ``fsync`` on, a file's close waits for its data to reach the disk.
So that this wait is for the last few MiB and not the whole file, every
WRITEBACK_EVERY bytes written to a spool file start the kernel's writeback of its
dirty pages (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait for the
disk): the disk works while the file is still being written, and a close of 256 MiB
waited 0.14 s for its fsync before, 0.005 s after.  It changes nothing about what is
durable when: only the fsync is a promise.  Once its bytes are on their way to the
server, a spool file's pages are dropped from the page cache (``drop_cache``: the
streamed upload behind itself, every upload at its end): the kernel keeps the written
file's pages for the mount's readers anyway, and a second copy of every byte written
would double the memory a large copy takes (and push out other files' pages).  Pages
still dirty stay; a later read of the spool reads the disk.

Space: ``used`` counts the bytes of every spool file.  ``reserve`` waits (bounded)
while the spool is over ``max_size`` and uploads can free space, and raises ENOSPC
when the request alone exceeds the spool or nothing is left to free.

Locks: ``_cond`` protects ``used`` and is a leaf (no calls out while held).
SpoolFile methods are thread-safe: pread/pwrite on one fd need no lock, and the
size/refcount fields are updated under the file's ``_lock``.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid
from pathlib import Path

from agavefs.errors import AgaveFSError, NoSpace

COPY_CHUNK = 8 * 1024 * 1024
WRITEBACK_EVERY = 8 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def _load_sync_file_range():
    """libc's sync_file_range, or None where there is none (not Linux)."""
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int) -> bool:
    """Start writing ``fd``'s dirty pages to disk without waiting; False if this system
    cannot (then the fsync at close does it all)."""
    return _sync_file_range is not None and _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0


class SpoolFile:
    def __init__(self, store: "SpoolStore", file_id: str, fd: int, size: int = 0):
        self.store = store
        self.id = file_id
        self.path = str(store.data_dir / file_id)
        self._fd = fd
        self._lock = threading.Lock()
        self.size = size  # protected by _lock
        self._refs = 1  # protected by _lock
        self._unflushed = 0  # bytes written since writeback was last started; _lock
        self.streamed = False  # a streamed upload was started for it (one per spool); VFS lock

    # -- references: the node, open handles and queued uploads share a file ----
    def incref(self) -> "SpoolFile":
        with self._lock:
            self._refs += 1
        return self

    def decref(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self._discard()

    def _discard(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.store._account(-self.size)

    # -- I/O -----------------------------------------------------------------
    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def pwrite(self, data: bytes, offset: int, timeout: float) -> int:
        if not data:
            return 0  # an empty write changes nothing, not even the size
        end = offset + len(data)
        with self._lock:
            grow = max(0, end - self.size)
        if grow:
            self.store.reserve(grow, timeout)
        try:
            written = os.pwrite(self._fd, data, offset)
        except OSError:
            if grow:
                self.store._account(-grow)
            raise
        with self._lock:
            new_size = max(self.size, offset + written) if written else self.size
            surplus = grow - (new_size - self.size)
            self.size = new_size
            self._unflushed += written
            flush = self.store.fsync and self._unflushed >= WRITEBACK_EVERY
            if flush:
                self._unflushed = 0
        if flush:
            start_writeback(self._fd)
        if surplus:
            self.store._account(-surplus)
        return written

    def truncate(self, length: int, timeout: float) -> None:
        with self._lock:
            delta = length - self.size
        if delta > 0:
            self.store.reserve(delta, timeout)
        os.ftruncate(self._fd, length)
        with self._lock:
            self.size = length
        if delta < 0:
            self.store._account(delta)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def drop_cache(self, end: int = 0) -> None:
        """Let the kernel drop this file's clean cached pages below ``end`` (0: all)."""
        try:
            os.posix_fadvise(self._fd, 0, end, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):  # not on this system: only memory is at stake
            pass

    def copy_from(self, other: "SpoolFile", timeout: float) -> None:
        """Make this (empty) file a copy of ``other``, in the kernel where possible."""
        n = other.size
        self.store.reserve(n, timeout)
        offset = 0
        while offset < n:
            try:
                done = os.copy_file_range(other._fd, self._fd, min(COPY_CHUNK, n - offset), offset, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                done = os.pwrite(self._fd, os.pread(other._fd, min(COPY_CHUNK, n - offset), offset), offset)
            if done <= 0:
                break
            offset += done
        with self._lock:
            self.size = offset
        if offset != n:
            raise AgaveFSError(f"spool copy stopped at {offset} of {n} bytes", errno=errno.EIO)


class SpoolStore:
    def __init__(self, root: str, max_size: int, fsync: bool = True):
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.journal_dir = self.root / "journal"
        for d in (self.root, self.data_dir, self.journal_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_size = max_size
        self.fsync = fsync
        self._cond = threading.Condition()
        self.used = 0  # protected by _cond
        self.freeable = 0  # bytes that queued uploads will free; protected by _cond
        self.busy = 0  # removals announced by hold() and not yet done; protected by _cond

    # -- space ---------------------------------------------------------------
    def _account(self, delta: int) -> None:
        with self._cond:
            self.used += delta
            if delta < 0:
                self._cond.notify_all()

    def set_freeable(self, delta: int) -> None:
        with self._cond:
            self.freeable = max(0, self.freeable + delta)
            self._cond.notify_all()

    def reserve(self, nbytes: int, timeout: float) -> None:
        if nbytes > self.max_size:
            raise NoSpace(f"a file of {nbytes} bytes does not fit in the spool (--cache-max-size)")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.used + nbytes > self.max_size:
                left = deadline - time.monotonic()
                if self.freeable <= 0 or left <= 0:
                    raise NoSpace("the spool is full (--cache-max-size) and no upload can free it")
                self._cond.wait(min(left, 1.0))
            self.used += nbytes

    # -- removals that outlive their job -------------------------------------------
    def hold(self) -> None:
        """A spool file is about to be let go after its upload was reported done (an
        unlink may take 0.1 s): ``settle`` waits for the matching ``release``."""
        with self._cond:
            self.busy += 1

    def release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no announced removal is left (before the process exits: a spool
        file left without its journal record would come back as lost+found)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.busy > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- files ---------------------------------------------------------------
    def new_file(self) -> SpoolFile:
        file_id = uuid.uuid4().hex
        fd = os.open(self.data_dir / file_id, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return SpoolFile(self, file_id, fd)

    def open_existing(self, file_id: str) -> SpoolFile | None:
        try:
            fd = os.open(self.data_dir / file_id, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        size = os.fstat(fd).st_size
        self._account(size)
        return SpoolFile(self, file_id, fd, size)

    # -- journal -------------------------------------------------------------
    def write_record(self, record: dict) -> None:
        path = self.journal_dir / f"{record['id']}.json"
        tmp = self.journal_dir / f"{record['id']}.{uuid.uuid4().hex[:8]}.tmp"
        data = json.dumps(record, ensure_ascii=False).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def remove_record(self, file_id: str) -> None:
        try:
            os.unlink(self.journal_dir / f"{file_id}.json")
        except FileNotFoundError:
            pass

    def load_records(self) -> list[dict]:
        """Journal records left by an earlier daemon, oldest first; junk is skipped."""
        records = []
        for p in self.journal_dir.glob("*.json"):
            try:
                rec = json.loads(p.read_text())
                if isinstance(rec, dict) and isinstance(rec.get("path"), str) and "id" in rec:
                    records.append(rec)
            except (OSError, ValueError):
                continue
        for p in self.journal_dir.glob("*.tmp"):
            p.unlink(missing_ok=True)
        records.sort(key=lambda r: r.get("seq", 0))
        return records

    def orphan_files(self, keep: set[str]) -> list[str]:
        """Spool files that no record references (left by a crash before sealing)."""
        return [p.name for p in self.data_dir.iterdir() if p.name not in keep]

    def sync_dir(self) -> None:
        if not self.fsync:
            return
        for d in (self.data_dir, self.journal_dir):
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
