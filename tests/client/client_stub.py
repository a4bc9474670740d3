"""A tiny stdlib HTTP server whose answers a test scripts: hostile and broken servers.

The emulator models a well-behaved Agave; the client must also survive servers
that answer short bodies, non-JSON, wrong types, bad names, redirects to other
hosts, and so on.  Each test registers a handler function per (method, path
prefix); every request is recorded (method, path, query, headers, body size).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes):
        parts = urlsplit(handler.path)
        self.method = handler.command
        self.raw_path = parts.path
        self.path = unquote(parts.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.raw_query = parts.query
        self.target = handler.path  # as sent: an absolute URI when it came through a proxy
        self.peer = handler.client_address  # which connection it came on
        self.headers = {k.lower(): v for k, v in handler.headers.items()}
        self.body = body


class Stub:
    """``Stub().start()``; ``route(method, prefix, fn)``; ``fn(req, h)`` answers with
    ``h.send_json(...)``, ``h.send_raw(...)`` or anything on the handler."""

    def __init__(self):
        self.routes: list[tuple[str, str, object]] = []
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.cut_bodies = 0  # this many requests with a body are cut short
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, delayed ACKs
                # cost 40 ms per request
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = b""
                if length and stub.cut_bodies > 0:  # read a little, then hang up
                    stub.cut_bodies -= 1
                    self.rfile.read(min(length, 1000))
                    with stub.lock:
                        stub.requests.append(Request(self, b"<cut>"))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if length and not getattr(stub, "drop_body", False):
                    left = length
                    chunks = []
                    while left > 0:
                        chunk = self.rfile.read(min(left, 1 << 20))
                        if not chunk:
                            break
                        chunks.append(chunk[:64])
                        left -= len(chunk)
                    body = b"".join(chunks)
                req = Request(self, body)
                with stub.lock:
                    stub.requests.append(req)
                for method, prefix, fn in stub.routes:
                    if method == self.command and req.path.startswith(prefix):
                        fn(req, self)
                        return
                self.send_json(404, {"status": "error", "message": "File/folder does not exist",
                                     "version": "stub"})

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def send_json(self, status, obj, headers=None):
                self.send_raw(status, json.dumps(obj).encode(), "application/json", headers)

            def send_raw(self, status, body, ctype="application/octet-stream", headers=None,
                         length=None, close=False):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if close:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self) -> "Stub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, prefix: str, fn) -> None:
        self.routes.insert(0, (method, prefix, fn))

    def seen(self, method: str | None = None, prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and r.path.startswith(prefix)]


def wrap(result, message="", status="success"):
    return {"status": status, "message": message, "result": result, "version": "2.2.27-stub"}


def entry(name, path, *, length=10, kind="file", **over):
    e = {"name": name, "path": path, "lastModified": "2017-07-20T13:28:30.000-05:00",
         "length": length, "permissions": "ALL", "format": "folder" if kind == "dir" else "raw",
         "mimeType": "text/directory" if kind == "dir" else "application/octet-stream",
         "type": kind, "system": "stub", "_links": {}}
    e.update(over)
    return e
