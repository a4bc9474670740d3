"""The small storage interface the VFS stands on.

Design note: the VFS knows files, directories and a slow, asynchronous upload, but
nothing of HTTP, URLs or Agave's JSON.  Everything it needs from a storage service is
the ``Backend`` protocol below, in paths relative to the mount root ("/" is the
mount root, "/a/b.txt" a file in it).  ``agave_backend.AgaveBackend`` implements it
over ``agavefs.client``; a Tapis v3 backend (synchronous upload) would implement the
same methods with ``synchronous_upload = True`` so that the VFS skips waiting for
staging.

Errors are ``agavefs.errors`` exceptions: each carries the errno to report.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol


class Entry(NamedTuple):
    """What the VFS knows of a remote file or directory.

    A named tuple, not a frozen dataclass: a listing of 10,000 entries makes 10,000 of
    them, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` a field)
    cost 18 ms of it against ~4 ms."""

    name: str
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch
    readable: bool = True
    writable: bool = True


class Staging(enum.Enum):
    """One observation of an asynchronous upload."""

    STORED = "stored"  # the server has the bytes, size checked
    PENDING = "pending"  # still queued or copying
    FAILED = "failed"  # the server says the staging job failed
    LOST = "lost"  # nothing moved for too long: upload again


class ReadStream(Protocol):
    """A stream may also have ``splice_into(fd, n) -> int | None``: move up to ``n``
    bytes into the non-blocking pipe ``fd`` without a copy through Python (fewer when
    the pipe is full, 0 at the end, None if it cannot: use ``read``).  The read-ahead
    then keeps its chunks in pipes (pipes.py); a stream without it is read."""

    def read(self, n: int) -> bytes: ...  # short only at the end

    def close(self) -> None: ...


class Backend(Protocol):
    synchronous_upload: bool

    def stat(self, path: str) -> Entry: ...

    def stat_with_children(self, path: str, children: int) -> tuple[Entry, list[Entry], bool]:
        """``stat`` that also brings up to ``children`` entries of a directory, and
        whether they are all of them (then they are its listing; else some of them,
        and a name missing says nothing).  One request, as a stat."""
        ...

    def list(self, path: str) -> tuple[Entry, list[Entry]]: ...

    def read(self, path: str, offset: int, size: int, file_size: int | None = None) -> bytes: ...

    def open_stream(self, path: str, offset: int, file_size: int | None = None) -> ReadStream: ...

    def upload(self, local_path: str, dir_path: str, name: str, progress=None) -> None:
        """``progress(sent, total)`` is called as the body goes out, when given."""
        ...

    def upload_stream(self, chunks, dir_path: str, name: str) -> None:
        """Upload content still being produced: ``chunks()`` (called once per attempt)
        yields it from its first byte; an exception it raises ends the upload, which
        the server then never stores, and propagates."""
        ...

    def staging_state(self, path: str, size: int) -> tuple[Staging, object, int | None]:
        """(state, progress, length) of the newest upload to ``path``; ``progress`` is
        any value that changes whenever the staging moved (a new event, a new length);
        ``length`` is the size listed now (it grows as the server copies; None when
        not listed), used only to time the next look."""
        ...

    def mkdir(self, path: str) -> bool: ...

    def rename(self, path: str, new_name: str) -> None: ...

    def move(self, path: str, dest_path: str) -> None: ...

    def delete(self, path: str) -> None: ...

    def status(self) -> dict: ...
