"""A streaming multipart/form-data parser that writes file parts straight to disk.

Design note.  Uploads can be many GiB, so the body is read in 1 MiB blocks and each
block is searched with ``bytes.find`` (C speed) for the next delimiter
``CRLF--boundary``; everything before the last ``len(delimiter) - 1`` bytes can be
written out at once.  Memory stays at about two blocks whatever the body size.  Each
part is streamed to the writable that ``sink(name, filename)`` returns; when it
returns None, a part with a filename is discarded and other parts are text fields,
kept in memory up to ``max_field`` bytes each, ``max_parts`` parts in all.  Any
syntax problem raises :class:`MultipartError`, which the HTTP layer answers with
400.  stdlib only.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

CHUNK = 1 << 20


class MultipartError(Exception):
    pass


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)      # first value of each text field
    files: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # name -> (filename, size)

    def get(self, name: str) -> str | None:
        """Case-insensitive field lookup (Agave matches form field names that way)."""
        for key, value in self.fields.items():
            if key.lower() == name.lower():
                return value
        return None


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="a"; filename="b"`` -> ("form-data", {...}).  Quoted strings
    may hold ';'; a backslash escapes only '"' and '\\' (browsers send Windows paths such
    as C:\\dir\\f.txt unescaped); ``filename*=UTF-8''...`` (RFC 5987) wins."""
    items: list[str] = []
    cur, quoted, escaped = [], False, False
    for ch in value:
        if escaped:
            if ch not in ('"', "\\"):
                cur.append("\\")
            cur.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == ";" and not quoted:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    main = items[0].strip().lower()
    params: dict[str, str] = {}
    for item in items[1:]:
        key, sep, val = item.partition("=")
        if not sep:
            continue
        key, val = key.strip().lower(), val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        if key.endswith("*"):
            charset, _, rest = val.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                params[key[:-1]] = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                raise MultipartError("invalid RFC 5987 parameter") from None
        elif key not in params:
            params[key] = val
    return main, params


class _Reader:
    def __init__(self, read: Callable[[int], bytes]):
        self.read = read
        self.buf = bytearray()
        self.eof = False

    def fill(self) -> None:
        data = self.read(CHUNK)
        if not data:
            self.eof = True
        else:
            self.buf += data

    def need(self, n: int) -> None:
        while len(self.buf) < n and not self.eof:
            self.fill()
        if len(self.buf) < n:
            raise MultipartError("the multipart body ends too early")


def _emit(rd: _Reader, n: int, out: BinaryIO | None, acc: bytearray | None, limit: int) -> int:
    if n:
        if out is not None:
            mv = memoryview(rd.buf)
            part = mv[:n]
            out.write(part)
            part.release()
            mv.release()
        elif acc is not None:
            if len(acc) + n > limit:
                raise MultipartError(f"a form field is larger than {limit} bytes")
            acc += rd.buf[:n]
        del rd.buf[:n]
    return n


def parse(read: Callable[[int], bytes], boundary: str,
          sink: Callable[[str, str | None], BinaryIO | None],
          max_field: int = 64 * 1024, max_parts: int = 64, max_header: int = 16 * 1024) -> Form:
    if not boundary or len(boundary) > 200:
        raise MultipartError("missing or invalid multipart boundary")
    rd = _Reader(read)
    first = b"--" + boundary.encode("latin-1")
    _skip_preamble(rd, first, max_header)
    form = Form()
    for _ in range(max_parts + 1):
        rd.need(2)
        if rd.buf[:2] == b"--":
            return form
        while rd.buf[:1] in (b" ", b"\t"):  # transport padding
            del rd.buf[:1]
            rd.need(2)
        if rd.buf[:2] != b"\r\n":
            raise MultipartError("malformed multipart delimiter")
        del rd.buf[:2]
        name, filename = _disposition(_headers(rd, max_header))
        out = sink(name, filename)
        acc = bytearray() if out is None and filename is None else None
        size = _body(rd, b"\r\n" + first, out, acc, max_field)
        if acc is None:
            form.files.setdefault(name, (filename, size))
        elif name not in form.fields:
            try:
                form.fields[name] = bytes(acc).decode("utf-8")
            except UnicodeDecodeError:
                raise MultipartError(f"form field {name!r} is not UTF-8") from None
    raise MultipartError("too many parts in the form")


def _skip_preamble(rd: _Reader, first: bytes, limit: int) -> None:
    """Consume everything up to and including the first delimiter at a line start."""
    while True:
        i = rd.buf.find(first)
        while i > 0 and rd.buf[i - 2:i] != b"\r\n":
            i = rd.buf.find(first, i + 1)
        if i >= 0:
            del rd.buf[:i + len(first)]
            return
        if len(rd.buf) > limit or rd.eof:
            raise MultipartError("no multipart boundary found in the body")
        rd.fill()


def _headers(rd: _Reader, limit: int) -> bytes:
    """Consume a part's header block (up to the blank line) and return it."""
    if rd.buf.startswith(b"\r\n"):  # no headers at all
        del rd.buf[:2]
        return b""
    while (end := rd.buf.find(b"\r\n\r\n")) < 0:
        if len(rd.buf) > limit or rd.eof:
            raise MultipartError("multipart part headers missing or too long")
        rd.fill()
    if end > limit:
        raise MultipartError("multipart part headers too long")
    head = bytes(rd.buf[:end])
    del rd.buf[:end + 4]
    return head


def _body(rd: _Reader, delim: bytes, out: BinaryIO | None, acc: bytearray | None, limit: int) -> int:
    """Stream a part's body up to the next delimiter; return its size."""
    size = 0
    keep = len(delim) - 1
    while True:
        i = rd.buf.find(delim)
        if i >= 0:
            size += _emit(rd, i, out, acc, limit)
            del rd.buf[:len(delim)]
            return size
        if len(rd.buf) > keep:
            size += _emit(rd, len(rd.buf) - keep, out, acc, limit)
        if rd.eof:
            raise MultipartError("the multipart body ends before its closing boundary")
        rd.fill()


def _disposition(head: bytes) -> tuple[str, str | None]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    for line in text.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "content-disposition":
            kind, params = parse_params(value)
            if kind != "form-data" or "name" not in params:
                raise MultipartError("a part is not form-data or has no name")
            return params["name"], params.get("filename")
    raise MultipartError("a part has no Content-Disposition header")
