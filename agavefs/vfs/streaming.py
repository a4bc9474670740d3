"""Uploading a file while it is still being written.

Design note
-----------
A file written from empty by appends only (``cp``, ``dd``, ``rsync``, a program
saving a download) need not wait for its close before its upload starts: once it
holds ``stream_min`` bytes (8 MiB), a *streamed upload* sends the spool as it grows (a
request body of unknown length, sent chunked), so the close only has to wait for the
tail and the server's staging.  This is what keeps a large copy into the mount close
to a direct upload of a file already on disk.

The bytes sent are always the spool's: every change that is not an append (a write
elsewhere, a truncate, an fsync's snapshot, a second writer interleaving, a rename of
the directory, the file deleted or renamed over) cancels the streamed upload *before*
it touches the spool, and a streamed body never ends before the file's close seals
the spool.  A cancelled or failed stream is dropped (its temporary file, if any, is
deleted) and the file goes the usual way at its close.  A writer that pauses for
``stream_idle`` seconds (5) also ends the stream (a server would time out the idle
request; a file held open without writes loses nothing by waiting for its close),
and so does a server that refuses bodies of unknown length - then for the mount's
life.

Durability is unchanged: until the close, the bytes are only in the spool (a crash
leaves it unclosed, and the next mount moves it to lost+found like any unclosed
file); the job's journal record says "streaming" and names its temporary file, so
the next mount deletes what may have reached the server.  At the seal the job takes
the spool's id and an ordinary record, and continues as any upload: staging checked
by history and length, then the rename into place.

Locks: ``StreamSource._cond`` guards its fields and is a leaf: the VFS and the
write-back call ``grow``/``seal``/``abort`` with their own locks held; the producer
(``chunks``, run by the upload's request) holds it only while it waits, never while
it reads the spool.
"""

from __future__ import annotations

import threading
import time

from agavefs.vfs.spool import SpoolFile

MiB = 1024 * 1024
# the size that starts a stream and the idle time that ends one are mount options
# (Options.stream_min, Options.stream_idle)
STREAM_MAX = 2  # streamed uploads at once
STREAM_CHUNK = MiB
DROP_EVERY = 8 * MiB  # the spool's pages behind the stream are dropped this often (spool.py)


class StreamAborted(Exception):
    """The stream's source gave up: the request must end without its last byte."""


class StreamSource:
    """The growing content of one spool, handed to a streamed upload."""

    def __init__(self, spool: SpoolFile, available: int, idle: float):
        self.spool = spool
        self.idle = idle
        self._cond = threading.Condition()
        self.available = available  # bytes at the start of the spool that are final
        self.size: int | None = None  # set by seal(): the content ends there
        self.aborted: str | None = None
        self.sent = 0  # bytes handed to the current attempt's request (status)
        self.progress = None  # progress(sent, size or None, available) after each chunk

    @property
    def sealed(self) -> bool:
        with self._cond:
            return self.size is not None

    def grow(self, available: int) -> None:
        with self._cond:
            if available > self.available:
                self.available = available
                self._cond.notify_all()

    def seal(self, size: int) -> bool:
        """The content is complete at ``size`` bytes; False if the stream was aborted."""
        with self._cond:
            if self.aborted is not None:
                return False
            self.size = self.available = size
            self._cond.notify_all()
            return True

    def abort(self, why: str) -> bool:
        """Stop the stream; False when it was sealed already (its job carries the
        version then: it is cancelled, if at all, as any queued upload)."""
        with self._cond:
            if self.aborted is None:
                self.aborted = why
            self._cond.notify_all()
            return self.size is None

    def chunks(self):
        """The content from its first byte, as it becomes final (one call per attempt)."""
        pos = self.sent = dropped = 0
        while True:
            with self._cond:
                deadline = time.monotonic() + self.idle
                while True:
                    if self.aborted is not None:
                        raise StreamAborted(self.aborted)
                    if pos < self.available:
                        n = min(STREAM_CHUNK, self.available - pos)
                        break
                    if self.size is not None:
                        return
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.aborted = f"no new data for {self.idle:g} s"
                        raise StreamAborted(self.aborted)
                    self._cond.wait(left)
            data = self.spool.pread(n, pos)
            if len(data) != n:
                raise StreamAborted(f"the spool holds {pos + len(data)} bytes, not {pos + n}")
            pos += n
            self.sent = pos
            if self.progress is not None:
                self.progress(pos, self.size, self.available)
            yield data
            if pos - dropped >= DROP_EVERY:  # what was sent is read no more
                self.spool.drop_cache(pos)
                dropped = pos
