"""The read path of a remote file: ranged reads for random access, a streaming
read-ahead for sequential readers.

Design note
-----------
``RemoteReader`` serves one open handle.  Its first read, and every read that does
not continue the previous one, is a single ranged request for exactly the bytes
asked (clamped to the file size): a thumbnailer's first bytes or a random 4 KiB
read cost one small request and nothing more.

A read that continues the previous one, or a first read of a whole CHUNK at offset 0
(only a sequential reader asks for that much at once: the kernel's first read-ahead
for a small read is a few pages), starts a ``Prefetch``: one streaming GET from that
offset to EOF (from 0 when the first read is the whole second chunk: the kernel sends
the first two chunks at once and either may come first), drained by a background
thread into a window of chunks that grows (``readahead_min`` doubling to
``readahead_max``) whenever the reader catches up with it.  The kernel sends
concurrent, possibly reordered reads for one sequential reader, so the window is
addressed by offset, keeps a little data behind the furthest read, and a read ahead of
the fetched part waits for it instead of opening a new request; a read whose bytes
were trimmed away while it waited (by a read further ahead) falls back to a ranged
read.  So does a read a little behind the window (a straggler of the kernel's
read-ahead, which keeps up to ``read_ahead_kb`` of reads in flight: with 4 MiB, some
came more than KEEP_BEHIND late), without counting against the stream; and the window
keeps that much more behind from then on (up to KEEP_BEHIND_MAX), so the next
stragglers find their bytes (a sequential read of 1 GiB with read_ahead_kb 4096:
64-311 GETs before, 4 now).  Reads far ahead of the window, or further behind than
KEEP_BEHIND_MAX, count as misses; two in a row close the stream (the reader has become
random).

Cost per byte matters here (a FUSE read path in Python is CPU-bound): chunks are
CHUNK (512 KiB, the largest kernel read: the mount's max_read) and aligned to
multiples of it.  When the stream can splice (a plain HTTP body), a chunk is a
``PipeData``: its bytes moved from the socket into pipes inside the kernel, and an
aligned kernel read that asks for pipes (the FUSE adapter's read_buf) gets it as it
is, to be spliced on to /dev/fuse: no copy in user space at all (pipes.py).  Else a
chunk is a single ``bytes`` read from the socket, and an aligned kernel read is
answered with that object as it is.  A read of part of a chunk held in pipes reads
the chunk out into bytes first (a PipeData is read once), and a read of a chunk
handed out already (read again, say after the page cache dropped it) is a ranged read.

Memory: each window is at most ``readahead_max``; the bytes fetched *speculatively*
by all windows are bounded by ``ReadBudget`` (``readahead_total``).  Bytes a reader
is waiting for are always fetched.

Locks: ``Prefetch._cond`` protects its window; ``RemoteReader._lock`` protects the
reader's bookkeeping; neither is held across a network call except by the filler
thread's own ``stream.read`` (outside the condition).  ``ReadBudget._lock`` is a leaf.
"""

from __future__ import annotations

import logging
import threading
import time

from agavefs.errors import ProtocolError, TimedOut
from agavefs.vfs import pipes
from agavefs.vfs.backend import Backend
from agavefs.vfs.pipes import PipeData

log = logging.getLogger("agavefs.vfs")

# also the largest FUSE read (the mount's max_read): one chunk per kernel request, and
# one that fits with its reply header in a pipe of the default pipe-max-size (1 MiB), so
# that libfuse splices it to the kernel (with 1 MiB, libfuse copied it: pipes.py)
CHUNK = 512 * 1024
KEEP_BEHIND = 4 * 1024 * 1024  # kept behind the furthest read, at first
KEEP_BEHIND_MAX = 16 * 1024 * 1024  # ... and at most, after late reads (note_late_read)
# the kernel re-sends a failed read-ahead at once as a plain read of the same offset:
# a read that just timed out fails again at once for this long instead of waiting
# out a second op_timeout (so a read(2) on a silent server ends within op_timeout)
FAILED_READ_MEMORY = 1.0


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
    """One streaming GET from ``start`` to EOF, kept in CHUNK-aligned pieces.

    Chunks are aligned to absolute multiples of CHUNK (the first one ends at the
    next boundary), so that a kernel read of one aligned MiB is answered with the
    very ``bytes`` object the stream produced: no slicing, no joining.
    """

    def __init__(self, backend: Backend, path: str, start: int, file_size: int,
                 window_min: int, window_max: int, budget: ReadBudget, timeout: float):
        self.backend, self.path, self.file_size = backend, path, file_size
        self.window, self.window_max = window_min, window_max
        self.budget, self.timeout = budget, timeout
        self._cond = threading.Condition()
        # protected by _cond:
        self._chunks: dict[int, bytes] = {}  # chunk index (offset // CHUNK) -> bytes from max(lo, index*CHUNK)
        self.lo = start  # first byte held
        self.hi = start  # first byte not yet fetched
        self._read_max = start  # furthest byte handed to the reader
        self._want = start  # furthest byte a reader waits for
        self._waiting = 0  # readers blocked in get()
        self._error: BaseException | None = None
        self._closed = False
        self._held = 0  # bytes charged to the budget
        self.keep_behind = KEEP_BEHIND  # bytes kept behind the furthest read
        self._thread = threading.Thread(target=self._fill, name="agavefs-readahead", daemon=True)
        self._thread.start()

    # -- filler thread -------------------------------------------------------
    def _fill(self) -> None:
        stream = None
        try:
            stream = self.backend.open_stream(self.path, self.hi, self.file_size)
            splicing = hasattr(stream, "splice_into")
            while True:
                with self._cond:
                    while not self._closed and self._full():
                        self._cond.wait(0.05)
                    if self._closed or self.hi >= self.file_size:
                        return
                    hi = self.hi
                    want = min(CHUNK - hi % CHUNK, self.file_size - hi)
                data = pipes.fetch(stream, want) if splicing else stream.read(want)
                if len(data) != want:
                    if isinstance(data, PipeData):
                        data.close()
                    raise ProtocolError(f"{self.path}: the server ended the file at {hi + len(data)} of "
                                        f"{self.file_size} bytes")
                with self._cond:
                    if self._closed:
                        if isinstance(data, PipeData):
                            data.close()
                        return
                    self._chunks[hi // CHUNK] = data
                    self.hi = hi + want
                    self.budget.take(want)
                    self._held += want
                    if self._waiting:
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
    def get(self, offset: int, size: int, pipes: bool = False) -> bytes | PipeData | None:
        """The bytes, or None when [offset, offset+size) is outside this window.  With
        ``pipes``, a read of exactly one chunk held in pipes gets that ``PipeData``
        (the caller closes it) and the window lets go of it."""
        end = min(offset + size, self.file_size)
        with self._cond:
            if offset < self.lo or offset > self.hi + self.window_max:
                return None
            if self.hi < end:
                deadline = time.monotonic() + self.timeout
                self._want = max(self._want, end)
                self.window = min(self.window * 2, self.window_max)  # the reader caught up
                self._cond.notify_all()
                self._waiting += 1
                try:
                    while self.hi < end and self._error is None and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimedOut(f"read of {self.path} timed out")
                        self._cond.wait(min(left, 1.0))
                finally:
                    self._waiting -= 1
                if self.hi < end:
                    if self._error is not None:
                        raise self._error
                    return None
                if offset < self.lo:  # trimmed away by a reader further ahead while we waited
                    return None
            data = self._extract(offset, end, pipes)
            if data is None:  # handed out already (a read of the same bytes again)
                return None
            if end > self._read_max:
                self._read_max = end
                self._trim()
                self._cond.notify_all()  # room for the filler
            return data

    def note_late_read(self, offset: int) -> bool:
        """Is ``offset`` a late read: before the bytes still held, by no more than the
        kernel's read-ahead can lag (KEEP_BEHIND_MAX)?  Then the window keeps enough
        behind for a read that late from now on.  A read further back is a seek."""
        with self._cond:
            late = self._read_max - offset + CHUNK
            if offset >= self.lo or late > KEEP_BEHIND_MAX:
                return False
            self.keep_behind = max(self.keep_behind, late)
            return True

    def _extract(self, offset: int, end: int, pipes: bool) -> bytes | PipeData | None:
        """Call with _cond held; lo <= offset < end <= hi.  None if a chunk in the range
        was handed out (a PipeData is read once)."""
        first, last = offset // CHUNK, (end - 1) // CHUNK
        if first == last:
            chunk = self._chunks.get(first)
            if chunk is None:
                return None
            cstop = min((first + 1) * CHUNK, self.file_size)
            base = cstop - len(chunk)  # a chunk ends at a boundary or at EOF
            whole = offset == base and end == cstop
            if isinstance(chunk, PipeData):
                if whole and pipes:  # handed out: the window lets go of it
                    del self._chunks[first]
                    self.budget.give(len(chunk))
                    self._held -= len(chunk)
                    return chunk
                chunk = self._chunks[first] = chunk.take_bytes()  # kept as bytes from now on
            # the common case: one aligned kernel request answered with the chunk, no copy
            return chunk if whole else chunk[offset - base:end - base]
        parts = []
        for i in range(first, last + 1):
            chunk = self._chunk(i)
            if chunk is None:
                return None
            cstop = min((i + 1) * CHUNK, self.file_size)
            base = cstop - len(chunk)
            parts.append(chunk[max(offset, base) - base:min(end, cstop) - base])
        return b"".join(parts)

    def _chunk(self, index: int) -> bytes | None:
        """Call with _cond held: chunk ``index`` as bytes (one held in pipes is read out
        and kept as bytes), None if handed out."""
        chunk = self._chunks.get(index)
        if isinstance(chunk, PipeData):
            chunk = self._chunks[index] = chunk.take_bytes()
        return chunk

    def _trim(self) -> None:
        floor = self._read_max - self.keep_behind
        while self.lo < self.hi:
            i = self.lo // CHUNK
            stop = min((i + 1) * CHUNK, self.file_size)
            if stop > floor:
                break
            chunk = self._chunks.pop(i, None)  # None: handed out
            if chunk is not None:
                self.budget.give(len(chunk))
                self._held -= len(chunk)
                if isinstance(chunk, PipeData):
                    chunk.close()
            self.lo = stop

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for chunk in self._chunks.values():
                if isinstance(chunk, PipeData):
                    chunk.close()
            self._chunks.clear()
            self.budget.give(self._held)
            self._held = 0
            self.lo = self.hi
            self._cond.notify_all()


def _opens_a_sequential_read(offset: int, size: int, file_size: int) -> bool:
    """Is a handle's first read one of the kernel's first read-ahead for a sequential
    reader: a whole chunk at offset 0, or the whole second chunk (to EOF in a smaller
    file)?  The kernel sends the first MiB as two reads at once, and FUSE threads may
    take the second one first: read by range, it cost a request of its own and its
    bytes came again in the stream that the read at 0 started (1 in 8 cold reads).  A
    random reader whose first read is exactly that chunk pays a stream instead of a
    range: at most ``readahead_min`` fetched, and two misses close it."""
    if offset == 0:
        return size >= CHUNK
    return offset == CHUNK and (size >= CHUNK or offset + size == file_size)


class MemoryReader:
    """Reads of one open handle on a remote file whose bytes are already here (fetched
    ahead by siblings.py): no request."""

    def __init__(self, path: str, data: bytes):
        self.path, self.data, self.size = path, data, len(data)

    def read(self, offset: int, size: int, pipes: bool = False) -> bytes:
        return self.data[offset:offset + size]

    def close(self) -> None:
        pass


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
        self._failed: tuple[int, float, TimedOut] | None = None  # protected by _lock

    def read(self, offset: int, size: int, pipes: bool = False) -> bytes | PipeData:
        """The bytes; with ``pipes``, possibly a ``PipeData`` (the caller closes it)."""
        if offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        with self._lock:
            failed = self._failed
        if failed is not None and failed[0] == offset and time.monotonic() - failed[1] < FAILED_READ_MEMORY:
            raise failed[2]
        try:
            return self._read(offset, size, pipes)
        except TimedOut as exc:
            with self._lock:
                self._failed = (offset, time.monotonic(), exc)
            raise

    def _read(self, offset: int, size: int, pipes: bool) -> bytes | PipeData:
        with self._lock:
            prefetch = self._prefetch
            # a read continuing the previous one, or a first read of the kernel's first
            # read-ahead (cp, dd, cat: _opens_a_sequential_read; a small first read, as a
            # probe or `head` makes, stays one exact ranged request)
            if prefetch is None and (offset == self._last_end or (
                    self._last_end is None and _opens_a_sequential_read(offset, size, self.size))):
                prefetch = self._prefetch = self._start(0 if self._last_end is None else offset)
        if prefetch is not None:
            try:
                data = prefetch.get(offset, size, pipes)
            except (ProtocolError, TimedOut):
                self.close()
                raise  # the server broke its promise (EIO, never wrong bytes) or is silent
            except Exception as exc:  # noqa: BLE001 - a broken stream: fall back to a ranged read
                log.info("read-ahead of %s stopped (%s); reading by range", self.path, exc)
                self.close()
                data = None
            if data is not None:
                with self._lock:
                    self._misses = 0
                    self._last_end = offset + size
                return data
        straggler = prefetch is not None and prefetch.note_late_read(offset)
        data = self.backend.read(self.path, offset, size, self.size)
        with self._lock:
            if self._prefetch is not None and not straggler:
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
