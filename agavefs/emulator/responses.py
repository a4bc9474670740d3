"""HTTP shapes of Agave answers: envelopes, faults, OAuth errors, streamed file bodies.

Design note.  Every Agave service wraps its answer in
``{"status": "success"|"error", "message": ..., "result": ..., "version": "2.2.27"}``;
the common query parameters act here: ``naked=true`` (the result alone; a naked
success without a result, e.g. a DELETE, is 204), ``pretty=true`` (indented JSON) and
``filter=a,b.c`` (projection of the result's fields, applied to each element of a
list; dotted names reach into nested objects).  The token endpoint answers bare OAuth
JSON and the gateway its ``fault`` JSON; those bypass the envelope.

:class:`Response` is what handlers return; the WSGI app turns it into
``start_response`` + an iterable.  :class:`FileBody` streams a file range in 1 MiB
``pread`` blocks and exposes ``sendfile_spec`` so the server can use ``sendfile(2)``
on plain-HTTP sockets.  stdlib only.
"""

from __future__ import annotations

import json
import os
from typing import BinaryIO, Iterable

VERSION = "2.2.27"
CHUNK = 1 << 20

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
           415: "Unsupported Media Type", 416: "Requested Range Not Satisfiable", 429: "Too Many Requests",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable"}


def status_line(code: int) -> str:
    return f"{code} {REASONS.get(code, 'Unknown')}"


class Response:
    def __init__(self, status: int, body: bytes | Iterable[bytes] = b"", headers: list | None = None,
                 content_type: str | None = "application/json; charset=utf-8"):
        self.status = status
        self.headers: list[tuple[str, str]] = list(headers or [])
        self.body = body
        if content_type and not any(k.lower() == "content-type" for k, _ in self.headers):
            self.headers.append(("Content-Type", content_type))
        if (isinstance(body, bytes) and status != 204
                and not any(k.lower() == "content-length" for k, _ in self.headers)):
            self.headers.append(("Content-Length", str(len(body))))


class FileBody:
    """Iterable over ``length`` bytes of ``file`` from ``offset``; closes the file."""

    def __init__(self, file: BinaryIO, offset: int, length: int):
        self.file = file
        self.offset = offset
        self.length = length
        self.sendfile_spec = (file, offset, length)

    def __iter__(self):
        fd = self.file.fileno()
        pos, left = self.offset, self.length
        while left > 0:
            data = os.pread(fd, min(CHUNK, left), pos)
            if not data:
                return  # the file shrank: the server notices the short body
            pos += len(data)
            left -= len(data)
            yield data

    def close(self) -> None:
        self.file.close()


def dumps(obj, pretty: bool = False) -> bytes:
    """UTF-8 JSON; strings that are not valid Unicode (lone surrogates) fall back to \\u escapes."""
    kw = {"indent": 2} if pretty else {"separators": (",", ":")}
    try:
        out = json.dumps(obj, ensure_ascii=False, **kw).encode("utf-8")
    except UnicodeEncodeError:
        out = json.dumps(obj, ensure_ascii=True, **kw).encode("ascii")
    return out + b"\n" if pretty else out


def project(obj, fields: list[str]):
    if isinstance(obj, list):
        return [project(x, fields) for x in obj]
    if not isinstance(obj, dict) or not fields or "*" in fields:
        return obj
    out: dict = {}
    nested: dict[str, list[str]] = {}
    for f in fields:
        head, _, tail = f.partition(".")
        if head not in obj:
            continue
        if tail:
            nested.setdefault(head, []).append(tail)
        else:
            out[head] = obj[head]
    for head, tails in nested.items():
        if head not in out:
            out[head] = project(obj[head], tails)
    return {k: out[k] for k in obj if k in out}


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def success(query: dict, result, message: str | None = None, status: int = 200) -> Response:
    pretty = is_true(query.get("pretty"))
    flt = query.get("filter")
    if flt and result is not None:
        result = project(result, [f.strip() for f in flt.split(",") if f.strip()])
    if is_true(query.get("naked")):
        if result is None:
            return Response(204 if status == 200 else status, b"", content_type=None)
        return Response(status, dumps(result, pretty))
    return Response(status, dumps({"status": "success", "message": message, "result": result,
                                   "version": VERSION}, pretty))


def error(status: int, message: str, headers: dict | None = None, pretty: bool = False) -> Response:
    body = dumps({"status": "error", "message": message, "version": VERSION}, pretty)
    return Response(status, body, list((headers or {}).items()))


def fault(code: int, description: str) -> Response:
    body = dumps({"fault": {"code": code, "message": "Invalid Credentials", "description": description}})
    return Response(401, body, [("WWW-Authenticate", 'Bearer realm="agave"')])


def oauth(status: int, payload: dict) -> Response:
    return Response(status, dumps(payload), [("Cache-Control", "no-store"), ("Pragma", "no-cache")])
