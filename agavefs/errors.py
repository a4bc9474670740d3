"""One exception tree for the whole client side of agavefs.

Design note: an error gets its errno where it is created (the client knows that a
404 is ENOENT, the VFS knows that a non-empty rmdir is ENOTEMPTY), so the FUSE
adapter only reads ``exc.errno`` and never interprets HTTP.  Messages never carry a
token, a password or a client secret: the client builds them from the HTTP status,
Agave's ``message`` field and the request's method and *path* only.

stdlib only; imported by every layer (client, vfs, fuse adapter, cli).  The
emulator does not import it (it shares no code with the client).
"""

from __future__ import annotations

import errno as _errno


class AgaveFSError(Exception):
    """Base class. ``errno`` is what a filesystem call should fail with."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, status: int | None = None, errno: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        if errno is not None:
            self.errno = errno

    def __str__(self) -> str:
        if self.status is not None:
            return f"{self.message} (HTTP {self.status})"
        return self.message


class NotFound(AgaveFSError):
    errno = _errno.ENOENT


class PermissionDenied(AgaveFSError):
    errno = _errno.EACCES


class AuthError(PermissionDenied):
    """No usable credentials: not logged in, refresh failed, client deleted."""


class AlreadyExists(AgaveFSError):
    errno = _errno.EEXIST


class NotEmpty(AgaveFSError):
    errno = _errno.ENOTEMPTY


class IsADirectory(AgaveFSError):
    errno = _errno.EISDIR


class NotADirectory(AgaveFSError):
    errno = _errno.ENOTDIR


class NoSpace(AgaveFSError):
    errno = _errno.ENOSPC


class ReadOnly(AgaveFSError):
    errno = _errno.EROFS


class InvalidArgument(AgaveFSError):
    errno = _errno.EINVAL


class NameTooLong(AgaveFSError):
    errno = _errno.ENAMETOOLONG


class Unsupported(AgaveFSError):
    errno = _errno.EPERM


class RangeNotSatisfiable(AgaveFSError):
    """HTTP 416: the requested range starts or ends past EOF."""

    errno = _errno.EIO


class Transient(AgaveFSError):
    """Worth retrying: connection errors, timeouts, 429 and 5xx."""

    errno = _errno.EIO


class TimedOut(Transient):
    """The operation's total deadline passed (server down or too slow)."""

    errno = _errno.ETIMEDOUT


class TLSError(AgaveFSError):
    """TLS verification or handshake failed: a configuration problem, not retried."""

    errno = _errno.EIO


class ProtocolError(AgaveFSError):
    """The server answered something we cannot trust (bad JSON, short body...)."""

    errno = _errno.EIO


def to_errno(exc: BaseException) -> int:
    """The errno a filesystem call should return for ``exc`` (EIO when unknown)."""
    if isinstance(exc, AgaveFSError):
        return exc.errno
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return _errno.EIO
