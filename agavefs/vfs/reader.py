"""The read path of a remote file: ranged reads for random access, a streaming
read-ahead for sequential readers.

Design note
-----------
``RemoteReader`` serves one open handle.  Its first read, and every read that does
not continue the previous one, is a single ranged request for exactly the bytes
asked (clamped to the file size): a thumbnailer's first bytes or a random 4 KiB
read cost one small request and nothing more.

A read that continues the previous one starts a ``Prefetch``: one streaming GET
from that offset to EOF, drained by a background thread into a window of chunks
that grows (``readahead_min`` doubling to ``readahead_max``) whenever the reader
catches up with it.  The kernel sends concurrent, possibly reordered reads for one
sequential reader, so the window is addressed by offset, keeps a little data behind
the furthest read, and a read ahead of the fetched part waits for it instead of
opening a new request.  Reads far outside the window count as misses; two in a row
close the stream (the reader has become random).

Memory: each window is at most ``readahead_max``; the bytes fetched *speculatively*
by all windows are bounded by ``ReadBudget`` (``readahead_total``).  Bytes a reader
is waiting for are always fetched.

Locks: ``Prefetch._cond`` protects its window; ``RemoteReader._lock`` protects the
reader's bookkeeping; neither is held across a network call except by the filler
thread's own ``stream.read`` (outside the condition).  ``ReadBudget._lock`` is a leaf.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from agavefs.errors import ProtocolError, TimedOut
from agavefs.vfs.backend import Backend

log = logging.getLogger("agavefs.vfs")

CHUNK = 512 * 1024
KEEP_BEHIND = 4 * 1024 * 1024


class ReadBudget:
    """Bytes held by all read-ahead windows together."""

    def __init__(self, total: int):
        self.total = total
        self._lock = threading.Lock()
        self.used = 0  # protected by _lock

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def take(self, n: int) -> None:
        with self._lock:
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Prefetch:
    def __init__(self, backend: Backend, path: str, start: int, file_size: int,
                 window_min: int, window_max: int, budget: ReadBudget, timeout: float):
        self.backend, self.path, self.file_size = backend, path, file_size
        self.window, self.window_max = window_min, window_max
        self.budget, self.timeout = budget, timeout
        self._cond = threading.Condition()
        # protected by _cond:
        self._chunks: collections.deque[tuple[int, bytes]] = collections.deque()
        self.lo = start  # first byte held
        self.hi = start  # first byte not yet fetched
        self._read_max = start  # furthest byte handed to the reader
        self._want = start  # furthest byte a reader waits for
        self._error: BaseException | None = None
        self._closed = False
        self._held = 0  # bytes charged to the budget
        self._thread = threading.Thread(target=self._fill, name="agavefs-readahead", daemon=True)
        self._thread.start()

    # -- filler thread -------------------------------------------------------
    def _fill(self) -> None:
        stream = None
        try:
            stream = self.backend.open_stream(self.path, self.hi, self.file_size)
            while True:
                with self._cond:
                    while not self._closed and self._full():
                        self._cond.wait(0.05)
                    if self._closed or self.hi >= self.file_size:
                        return
                    want = min(CHUNK, self.file_size - self.hi)
                data = stream.read(want)
                if not data:
                    raise ProtocolError(f"{self.path}: the server ended the file at {self.hi} of "
                                        f"{self.file_size} bytes")
                with self._cond:
                    self._chunks.append((self.hi, data))
                    self.hi += len(data)
                    self.budget.take(len(data))
                    self._held += len(data)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001
                    pass

    def _full(self) -> bool:
        """Call with _cond held: stop fetching until the reader needs more."""
        if self.hi < self._want:
            return False
        ahead = self.hi - self._read_max
        if ahead >= self.window:
            return True
        return self.budget.used + CHUNK > self.budget.total

    # -- reader side -----------------------------------------------------------
    def get(self, offset: int, size: int) -> bytes | None:
        """The bytes, or None when [offset, offset+size) is outside this window."""
        end = offset + size
        deadline = time.monotonic() + self.timeout
        with self._cond:
            if offset < self.lo or offset > self.hi + self.window_max:
                return None
            if self.hi < end:
                self._want = max(self._want, end)
                self.window = min(self.window * 2, self.window_max)  # the reader caught up
                self._cond.notify_all()
                while self.hi < end and self._error is None and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimedOut(f"read of {self.path} timed out")
                    self._cond.wait(min(left, 1.0))
                if self.hi < end:
                    if self._error is not None:
                        raise self._error
                    return None
            data = self._extract(offset, size)
            if end > self._read_max:
                self._read_max = end
                self._trim()
            self._cond.notify_all()
            return data

    def _extract(self, offset: int, size: int) -> bytes:
        parts = []
        end = offset + size
        for start, chunk in self._chunks:
            stop = start + len(chunk)
            if stop <= offset:
                continue
            if start >= end:
                break
            parts.append(chunk[max(0, offset - start):min(len(chunk), end - start)])
        return b"".join(parts)

    def _trim(self) -> None:
        floor = self._read_max - KEEP_BEHIND
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= floor:
            start, chunk = self._chunks.popleft()
            self.lo = start + len(chunk)
            self.budget.give(len(chunk))
            self._held -= len(chunk)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self.budget.give(self._held)
            self._held = 0
            self.lo = self.hi
            self._cond.notify_all()


class RemoteReader:
    """Reads of one open handle on a remote file of known size."""

    def __init__(self, backend: Backend, path: str, size: int, *, window_min: int, window_max: int,
                 budget: ReadBudget, timeout: float):
        self.backend, self.path, self.size = backend, path, size
        self._opts = (window_min, window_max, budget, timeout)
        self._lock = threading.Lock()
        self._prefetch: Prefetch | None = None  # protected by _lock
        self._last_end: int | None = None  # protected by _lock
        self._misses = 0  # protected by _lock

    def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        with self._lock:
            prefetch = self._prefetch
            if prefetch is None and offset == self._last_end:
                prefetch = self._prefetch = self._start(offset)
        if prefetch is not None:
            try:
                data = prefetch.get(offset, size)
            except ProtocolError:
                self.close()
                raise  # the server broke its promise: EIO, never wrong bytes
            except Exception as exc:  # noqa: BLE001 - a broken stream: fall back to a ranged read
                log.info("read-ahead of %s stopped (%s); reading by range", self.path, exc)
                self.close()
                data = None
            if data is not None:
                with self._lock:
                    self._misses = 0
                    self._last_end = offset + size
                return data
        data = self.backend.read(self.path, offset, size, self.size)
        with self._lock:
            if self._prefetch is not None:
                self._misses += 1
                if self._misses >= 2:
                    self._prefetch.close()
                    self._prefetch = None
            self._last_end = offset + len(data)
        return data

    def _start(self, offset: int) -> Prefetch:
        window_min, window_max, budget, timeout = self._opts
        log.debug("read-ahead of %s from %d", self.path, offset)
        return Prefetch(self.backend, self.path, offset, self.size, window_min, window_max, budget, timeout)

    def close(self) -> None:
        with self._lock:
            if self._prefetch is not None:
                self._prefetch.close()
                self._prefetch = None
