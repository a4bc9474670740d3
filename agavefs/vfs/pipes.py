"""File bytes held in kernel pipes: a sequential read without copies through Python.

Design note
-----------
A cold sequential read through a FUSE mount in Python is bound by CPU: the bytes were
received into a ``bytes`` object (one copy out of the socket), copied into libfuse's
buffer (a second) and written to /dev/fuse (a third, into the page cache).  When the
backend's stream can splice (``ReadStream.splice_into``: a plain HTTP body), the
read-ahead keeps each chunk as a ``PipeData`` instead: the bytes spliced from the
socket into one or more pipes, inside the kernel.  The FUSE adapter hands a whole
chunk to libfuse as file-descriptor buffers (``read_buf``), which splices them on to
/dev/fuse: the only copy left is the kernel's into the page cache.

A ``PipeData`` is read once: handing it to libfuse or turning it into bytes
(``take_bytes``, for a read that covers part of a chunk) empties it.  Its owner closes
it (``close``): the read-ahead window while it holds it, else whoever took it.

Pipes are created non-blocking and as large as ``PIPE_BYTES`` allows (a socket's
bytes arrive in pieces smaller than a page, so a pipe of 256 pages holds about 600
KiB; a chunk that does not fit takes a second pipe).  At most ``MAX_PIPES`` are open
at once, mount-wide.  An unprivileged daemon keeps to 32 (32 MiB of pipe capacity),
half of what one user's pipes may hold in all by default
(/proc/sys/fs/pipe-user-pages-soft, 64 MiB), past which the kernel shrinks every new
pipe of that user, the user's other programs' included; a daemon with CAP_SYS_ADMIN or
CAP_SYS_RESOURCE (root) is not held to that limit and may have 160, enough for the
whole read-ahead budget (64 MiB in chunks of 512 KiB) and the pipes the FUSE threads
have just handed on (with 32 for root, a cold read of 1 GiB at 20 ms read many of its
chunks instead: 0.67x of a direct download, against 0.78x with 160 and 0.80x with no
cap, medians of 3 in runs of scripts/bench.py).  A pipe that cannot be made
(that cap, too many open files, the kernel's limits) ends the splicing of that chunk:
``fetch`` falls back to reading it.

Locks: ``_lock`` guards the count of open pipes; it is a leaf.
"""

from __future__ import annotations

import fcntl
import os
import threading

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 1024 * 1024  # the default /proc/sys/fs/pipe-max-size
CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 21, 24


def _exempt_from_user_limits() -> bool:
    """Does this process have a capability that lifts the per-user pipe limits?"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << CAP_SYS_ADMIN | 1 << CAP_SYS_RESOURCE))
    except (OSError, ValueError, IndexError):
        pass
    return False


MAX_PIPES = 160 if _exempt_from_user_limits() else 32  # open at once, mount-wide (see above)
MAX_SEGMENTS = 8  # pipes for one chunk at most: bytes that come in tinier pieces are read


class PipeData:
    """``size`` bytes of a file, in order, in the pipes ``segments`` ((read fd, bytes)
    each).  Read once, by ``take_bytes`` or by handing the descriptors to the kernel."""

    __slots__ = ("segments", "size")

    def __init__(self) -> None:
        self.segments: list[tuple[int, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def take_bytes(self) -> bytes:
        """The bytes, read out of the pipes (which are closed)."""
        parts = []
        try:
            for fd, n in self.segments:
                left = n
                while left:
                    part = os.read(fd, left)
                    if not part:
                        raise OSError(f"a pipe held {n - left} of its {n} bytes")
                    parts.append(part)
                    left -= len(part)
        finally:
            self.close()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        segments, self.segments = self.segments, []
        for fd, _ in segments:
            _close_pipe(fd)


_lock = threading.Lock()
_open = 0  # pipes open (their read ends), guarded by _lock


def open_pipes() -> int:
    with _lock:
        return _open


def _new_pipe() -> tuple[int, int] | None:
    """A pipe (read end, write end) of PIPE_BYTES, counted until ``_close_pipe`` of its
    read end; None when MAX_PIPES are open or the kernel refuses."""
    global _open
    with _lock:
        if _open >= MAX_PIPES:
            return None
        _open += 1
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        _close_pipe(None)
        return None
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        os.close(w)
        _close_pipe(r)
        return None
    return r, w


def _close_pipe(r: int | None) -> None:
    global _open
    if r is not None:
        try:
            os.close(r)
        except OSError:
            pass
    with _lock:
        _open -= 1


def fetch(stream, want: int) -> PipeData | bytes:
    """The next ``want`` bytes of ``stream`` (fewer only where it ends): spliced into
    pipes when the stream can, else (or for what is left when it stops being able to)
    read into bytes."""
    data = PipeData()
    try:
        while data.size < want and len(data.segments) < MAX_SEGMENTS:
            pipe = _new_pipe()
            if pipe is None:
                break
            r, w = pipe
            try:
                moved = stream.splice_into(w, want - data.size)
            except BaseException:
                _close_pipe(r)
                raise
            finally:
                os.close(w)
            if not moved:
                _close_pipe(r)
                if moved is None:
                    break  # this stream cannot splice (any more): read the rest
                return data  # the stream ended
            data.segments.append((r, moved))
            data.size += moved
        if data.size == want:
            return data
    except BaseException:
        data.close()
        raise
    if not data.size:
        return stream.read(want)
    head = data.take_bytes()
    return head + stream.read(want - len(head))
