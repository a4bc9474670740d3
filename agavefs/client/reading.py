"""Downloads: ranged reads and the streaming reader.

Design note
-----------
Agave honours one ``bytes=a-b`` range, answers a satisfied range with 200 *or* 206
plus ``Content-Range``, answers 416 when ``b`` is past EOF (it does not truncate
like RFC 7233 says), may get the length wrong for ranges that start above 0, and a
server can also ignore ``Range`` altogether (agave-api.md section 4).  Every read
goes through :class:`ReadStream`, which opens one GET for ``[pos, end]`` and
classifies the answer:

* ``Content-Range: bytes pos-e/total`` (200 or 206) with a consistent
  ``Content-Length``: take the body; if ``e < end`` the stream continues with a new
  range from ``e + 1`` when the body is used up.
* 200 without ``Content-Range``: the range was ignored, the body is the whole file:
  skip ``pos`` bytes by reading and discarding (1 MiB at a time: constant memory),
  then take what is needed and close the connection.
* a mangled answer (a range starting elsewhere, a ``Content-Length`` that disagrees
  with ``Content-Range``, 206 without ``Content-Range``): the stream switches to
  the whole-file mode above.
* 416: re-stat the file; if ``pos`` is at or past EOF the stream ends there,
  otherwise ``end`` is clamped to the real size and the request is repeated (a
  second 416 switches to whole-file mode).

The byte count is checked against what the server promised: a body that ends
early (or a connection that drops) is resumed from the exact position reached with
a new request, at most twice in a row without progress; after that the read fails
with ``ProtocolError`` (EIO).  Wrong or missing bytes are never returned.  We ask
for ``Accept-Encoding: identity`` so that byte counts are byte counts.

Locks: none.  A ReadStream belongs to one thread at a time.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl

import requests
import urllib3.exceptions

from agavefs.errors import InvalidArgument, IsADirectory, ProtocolError
from agavefs.client.paths import SysPath
from agavefs.client.transport import describe_exception

SKIP_CHUNK = 1 << 20
_SPLICE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 0)  # 0: no splice(2) here
MAX_STALLED_RESUMES = 2
MAX_RESUMES = 64
_CR_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if not value:
        return None
    m = _CR_RE.match(value)
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name)
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise ProtocolError(f"malformed {name} header") from None
    if n < 0:
        raise ProtocolError(f"negative {name} header")
    return n


def _ready(fd: int, events: int, timeout_ms: int) -> bool:
    """Is ``fd`` ready for ``events`` within ``timeout_ms`` (-1: no limit)?"""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(timeout_ms))


class _BodyError(Exception):
    """The connection failed while reading a body."""


class ReadStream:
    """Bytes ``offset``..``end`` (inclusive) of a remote file, in order.

    ``read(n)`` returns exactly ``n`` bytes except at the end of the range (or of
    the file, when it turns out shorter than ``end``).  Close it (or use ``with``).
    """

    def __init__(self, client, path: str, offset: int, end: int, *, size: int | None = None):
        self._client = client
        self._sp = SysPath.parse(path)
        self.path = str(self._sp)
        self.offset = offset
        self.size = size  # file size when known
        self.end = end if size is None else min(end, size - 1)  # inclusive
        self.pos = offset  # next byte to deliver
        self._resp: requests.Response | None = None
        self._encoded = False  # the current response has a Content-Encoding
        self._owed: int | None = 0  # bytes the current response still promises (None: to EOF)
        self._no_ranges = False
        self._clamped = size is not None
        self._stalled = 0
        self._resumes = 0
        self._closed = False
        # splice_into's view of the current response: (socket, the parser's buffered
        # reader, whether that reader is known to hold no body bytes); None: not yet
        # looked at, False: its body cannot be spliced
        self._splice: tuple | bool | None = None

    # -- public -------------------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed ReadStream")
        parts: list[bytes] = []
        got = 0
        while True:
            want = self.end - self.pos + 1
            if n is not None and n >= 0:
                want = min(want, n - got)
            if want <= 0:
                break
            if self._resp is None and not self._open():
                break  # the file ends before `end`
            try:
                chunk = self._read_body(min(want, SKIP_CHUNK))
            except _BodyError as exc:
                self._resume(str(exc))
                continue
            if not chunk:
                if self._owed is None:  # a body "to EOF" ended: that is the file's end
                    self._release()
                    self.end = min(self.end, self.pos - 1)
                    break
                if self._owed == 0:  # the response gave all it promised; ask for the rest
                    self._release()
                    continue
                self._resume(f"the body ended {self._owed} byte(s) early")
                continue
            parts.append(chunk)
            got += len(chunk)
            self.pos += len(chunk)
            self._stalled = 0
        if self.pos > self.end:
            self._release()
        if len(parts) == 1:
            return parts[0]  # the usual case: one body read, no copy
        return b"".join(parts)

    def splice_into(self, fd: int, n: int) -> int | None:
        """Move the next bytes, up to ``n``, into the pipe ``fd`` (opened non-blocking)
        without passing them through Python: until ``n`` are moved, the pipe is full
        or the range ends (0 then).  None when this stream cannot splice: nothing was
        moved, use ``read``."""
        if self._closed:
            raise ValueError("splice from a closed ReadStream")
        moved = 0
        while moved < n:
            want = min(n - moved, self.end - self.pos + 1)
            if want <= 0:
                break
            if self._resp is None and not self._open():
                break  # the file ends before `end`
            sock = self._splice_socket()
            if sock is None:
                return moved or None
            try:
                got = self._splice_body(sock, fd, min(want, self._owed))  # known: _splice_socket
            except _BodyError as exc:
                self._resume(str(exc))
                continue
            if got is None:
                break  # the pipe is full
            if not got:
                if self._owed == 0:  # the response gave all it promised; ask for the rest
                    self._release()
                    continue
                self._resume(f"the body ended {self._owed} byte(s) early")
                continue
            self._owed -= got
            self.pos += got
            moved += got
            self._stalled = 0
            self._client.stats.add_down(got)
        if self.pos > self.end:
            self._release()
        return moved

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos + 1)

    def close(self) -> None:
        self._closed = True
        self._release()

    def __enter__(self) -> "ReadStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- opening -------------------------------------------------------------------------
    def _open(self) -> bool:
        """Open a response positioned at ``pos``; False when the file ends before it."""
        while True:
            if self.pos > self.end:
                return False
            whole = self._no_ranges or (self.pos == 0 and self.size is not None
                                        and self.end == self.size - 1)
            headers = {"Accept-Encoding": "identity"}
            if not whole:
                headers["Range"] = f"bytes={self.pos}-{self.end}"
            resp = self._client._media_get(self._sp, headers=headers)
            if resp.status_code == 416:
                resp.close()
                if not self._after_416():
                    return False
                continue
            try:
                if self._classify(resp, whole):
                    return True
            except BaseException:
                resp.close()
                raise
            if self._resp is None:
                resp.close()
                if self.pos > self.end:
                    return False

    def _classify(self, resp: requests.Response, whole: bool) -> bool:
        """Adopt ``resp`` if usable (True); False to try again (mode may change)."""
        cr = parse_content_range(resp.headers.get("Content-Range"))
        length = _int_header(resp, "Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        self._encoded = encoded
        if resp.status_code == 206 or cr is not None:
            if cr is None or cr[0] != self.pos or cr[1] < cr[0] or cr[1] > self.end \
                    or (cr[2] is not None and cr[1] >= cr[2]) \
                    or (length is not None and not encoded and length != cr[1] - cr[0] + 1):
                self._switch_to_whole("a mangled range answer")
                return False
            if cr[2] is not None:
                self._learn_size(cr[2])
            self._resp, self._owed = resp, cr[1] - cr[0] + 1
            return True
        # 200 without Content-Range: the body is the whole file, from byte 0
        if not whole:
            self._client._note_range_ignored()
        self._resp = resp
        self._owed = None if (length is None or encoded) else length
        if self._owed is not None:
            self._learn_size(length)
            if self.pos > self.end:  # the file ends before our range
                self._release()
                return False
        if self.pos:
            self._skip(self.pos)
            if self._resp is None:
                return False
        return True

    def _learn_size(self, size: int) -> None:
        if self.pos > self.offset and self.pos > size:
            raise ProtocolError(f"GET {self.path}: the file shrank while being read")
        self.size = size
        self.end = min(self.end, size - 1)

    def _after_416(self) -> bool:
        """Re-stat after a 416: False when ``pos`` is at or past EOF."""
        entry = self._client.stat(self.path)
        if entry.is_dir:
            raise IsADirectory(f"GET {self.path}: is a directory")
        if self._clamped and self.pos < entry.size and self.end <= entry.size - 1:
            self._switch_to_whole("416 for a range inside the file")
            return True
        self._learn_size(entry.size)
        self._clamped = True
        return self.pos <= self.end

    def _switch_to_whole(self, why: str) -> None:
        if self._no_ranges:
            raise ProtocolError(f"GET {self.path}: {why}")
        self._client.log.info("GET %s: %s; reading the whole file instead", self.path, why)
        self._no_ranges = True

    def _skip(self, count: int) -> None:
        """Discard ``count`` bytes of a whole-file body (constant memory)."""
        left = count
        while left > 0:
            try:
                chunk = self._read_body(min(left, SKIP_CHUNK))
            except _BodyError as exc:
                self._release()
                self._resume(f"{exc} while skipping to byte {self.pos}")
                return
            if not chunk:
                break
            left -= len(chunk)
        if left > 0:  # the body ended before pos
            owed = self._owed
            self._release()
            if owed is None:  # to-EOF body: the file is shorter than pos
                self._learn_size(count - left)
            else:
                self._resume("the body ended early while skipping")

    # -- body ----------------------------------------------------------------------------
    def _splice_socket(self):
        """The current response's socket if its body can be spliced, else None (and
        the response is read as usual)."""
        if self._splice is None:
            self._splice = False
            resp = self._resp.raw
            try:
                parsed = resp._fp  # http.client's response: its buffered reader, its mode
                buffered, chunked = parsed.fp, parsed.chunked
                # the socket the body comes from (the connection lets go of it when the
                # answer says "Connection: close")
                sock = buffered.raw._sock
                pending = len(getattr(resp, "_decoded_buffer", b""))
            except AttributeError:  # another urllib3: read instead
                return None
            if (not _SPLICE_FLAGS or self._encoded or self._owed is None or chunked or pending
                    or buffered is None or not isinstance(sock, socket.socket)
                    or isinstance(sock, ssl.SSLSocket)):
                return None
            self._splice = (sock, buffered, False)  # False: the parser may hold body bytes
        return self._splice[0] if self._splice else None

    def _splice_body(self, sock, fd: int, n: int) -> int | None:
        """Up to ``n`` body bytes into the pipe ``fd``: how many (0 at the body's end),
        None if the pipe is full.  Raises _BodyError when the connection fails."""
        sock, buffered, drained = self._splice
        try:
            if not drained:
                # the bytes the parser holds (read past the headers, or past a read()'s
                # end) come first; they leave it only once in the pipe.  peek() returns
                # all it holds, or reads some if it holds none
                held = buffered.peek(1)
                if held:
                    try:
                        k = os.write(fd, held[:n])
                    except BlockingIOError:
                        return None
                    buffered.read(k)
                    if k < len(held):
                        return k
                self._splice = (sock, buffered, True)
                if held:
                    return len(held)
            timeout = sock.gettimeout()
            wait = -1 if timeout is None else max(1, int(timeout * 1000))
            while True:
                try:
                    return os.splice(sock.fileno(), fd, n, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    pass  # nothing received yet, or the pipe is full
                if not _ready(fd, select.POLLOUT, 0):
                    return None
                if not _ready(sock.fileno(), select.POLLIN, wait):
                    raise socket.timeout("timed out")
        except (OSError, ValueError) as exc:
            raise _BodyError(describe_exception(exc)) from None

    def _read_body(self, n: int) -> bytes:
        if self._owed is not None:
            n = min(n, self._owed)
            if n <= 0:
                return b""
        raw = self._resp.raw
        if self._splice:  # a read through the parser may leave bytes in its buffer
            self._splice = self._splice[:2] + (False,)
        try:
            if not self._encoded:
                # identity body: one read of n bytes straight from the socket into a
                # bytes object (no decoder, no re-buffering); it returns early at the
                # body's end, so a body that ends early still resumes at the exact byte
                chunk = raw.read(n, decode_content=False)
            elif hasattr(raw, "read1"):
                # read1 returns what has arrived, so bytes received before a failure are
                # kept and the resume starts at the exact byte (urllib3 >= 2)
                chunk = raw.read1(n, decode_content=True)
            else:
                chunk = raw.read(min(n, 65536), decode_content=True)
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError,
                ValueError) as exc:
            raise _BodyError(describe_exception(exc)) from None
        chunk = chunk or b""
        if self._owed is not None:
            self._owed -= len(chunk)
        if chunk:
            self._client.stats.add_down(len(chunk))
        return chunk

    def _resume(self, why: str) -> None:
        """The current response failed: the next read re-opens at ``pos`` (bounded)."""
        self._release()
        self._stalled += 1
        self._resumes += 1
        if self._stalled > MAX_STALLED_RESUMES or self._resumes > MAX_RESUMES:
            raise ProtocolError(f"GET {self.path}: got {self.pos - self.offset} of "
                                f"{self.end - self.offset + 1} bytes ({why})")
        self._client.stats.retry()
        self._client.log.info("GET %s: %s at byte %d; resuming", self.path, why, self.pos)

    def _release(self) -> None:
        self._splice = None
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # noqa: BLE001
                pass
            self._resp = None
        self._owed = 0


class ReadOps:
    """Mixin for AgaveClient: ``read`` and ``open_stream``."""

    def read(self, path: str, offset: int, size: int, *, file_size: int | None = None) -> bytes:
        """Bytes ``offset``..``offset + size - 1`` (fewer only at EOF)."""
        if offset < 0 or size < 0:
            raise InvalidArgument(f"read {path}: negative offset or size")
        if size == 0 or (file_size is not None and offset >= file_size):
            return b""
        with ReadStream(self, path, offset, offset + size - 1, size=file_size) as stream:
            return stream.read(size)

    def open_stream(self, path: str, offset: int = 0, end: int | None = None, *,
                    file_size: int | None = None) -> ReadStream:
        """One streaming GET from ``offset`` to ``end`` (inclusive) or EOF."""
        if offset < 0 or (end is not None and end < offset - 1):
            raise InvalidArgument(f"open_stream {path}: bad range {offset}-{end}")
        if file_size is None and end is None:
            entry = self.stat(path)
            if entry.is_dir:
                raise IsADirectory(f"GET {path}: is a directory")
            file_size = entry.size
        last = end if end is not None else file_size - 1
        return ReadStream(self, path, offset, last, size=file_size)

    def _note_range_ignored(self) -> None:
        if not getattr(self, "_range_ignored_logged", False):
            self._range_ignored_logged = True
            self.log.info("the server ignores Range: reads skip through whole-file streams")


__all__ = ["ReadStream", "ReadOps", "parse_content_range"]
