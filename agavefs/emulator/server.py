"""The HTTP server: werkzeug's threaded WSGI server with a keep-alive request handler.

Design note.  Which server and why: werkzeug's ``ThreadedWSGIServer`` (a thread per
connection, SO_REUSEADDR, port 0, IPv4/IPv6, stdlib ``ssl`` for TLS).  waitress was
rejected because it has no TLS, and the real service is HTTPS only.  werkzeug's stock
``run_wsgi`` however closes every connection (``Connection: close``: no keep-alive,
so every request pays a TCP and TLS handshake) and flushes per write, which would make
the emulator the bottleneck of client benchmarks.  :class:`Handler` therefore keeps
werkzeug's environ building and replaces ``run_wsgi`` with a gateway that:

* keeps connections alive (HTTP/1.1), knowing exactly how much of the request body
  is left (``Input`` counts it) and draining it, or closing when too much is left;
* sends headers and a small body in one write (TCP_NODELAY is also set);
* streams file bodies with ``sendfile(2)`` on plain sockets (1 MiB ``pread`` blocks
  over TLS);
* wraps each accepted socket in TLS inside the connection's own thread, so a client
  that never finishes its handshake cannot stall the accept loop;
* applies the fault knobs before the app sees the request (``--latency`` sleeps,
  ``--fail-rate`` answers 503 with an Agave error body and does nothing else);
* writes the access log line when the response is finished (real ``bytes_out``);
* answers protocol errors (bad request line, huge headers) with Agave JSON, not HTML.

The server process keeps the heap memory it frees (``keep_freed_memory``, called by
``serve_until_signal``): glibc's default hands the top of a heap back to the kernel as
soon as enough of it is free, so a request body read in 1 MiB buffers faulted in fresh
zeroed pages for every MiB (46,000 minor faults for a 64 MiB upload, 189,000 over a
mount's streamed 256 MiB upload and its staging: ~3 per 4 KiB received), which doubled
the server's CPU for an upload on a VM whose host reclaims freed pages (0.68-0.95 s
against 0.31-0.44 s).  A real Agave (a JVM) keeps its heap too.

Locks: ``AccessLog._lock`` serialises log lines; ``Server._conns_lock`` guards the set
of open connections (closed at stop).  Nothing else is shared between threads here.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from .errors import BodyReadError
from .responses import VERSION, status_line

log = logging.getLogger("agavefs.emulator.server")
# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets: buffers up
# to 32 MiB (the most glibc allows) come from the heap, not from a mapping of their own,
# and a heap's free top goes back to the kernel only above 256 MiB
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
DRAIN_LIMIT = 4 << 20
SMALL_BODY = 64 << 10
SENSITIVE_KEY = re.compile(r"token|secret|passw|pwd|key|nonce|code|auth|sig|credential|session", re.I)
TOKEN_LIKE = re.compile(r"[0-9a-fA-F]{32}|[A-Za-z0-9_\-]{28}")


def redact_query(query: str) -> str:
    """The decoded query string, values of token-like parameters replaced by REDACTED."""
    out = []
    for item in query.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote_plus(key, errors="replace")
        value = urllib.parse.unquote_plus(value, errors="replace")
        if SENSITIVE_KEY.search(key) or TOKEN_LIKE.fullmatch(value):
            value = "REDACTED"
        out.append(key + sep + value)
    return "&".join(out)


def keep_freed_memory() -> bool:
    """Have this process's C library keep the heap memory it frees (see the module
    note); False where that is not glibc's malloc (then nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


class AccessLog:
    """One JSON object per request and line; never a header, body or secret."""

    def __init__(self, path: str):
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Input:
    """The request body: bounded by Content-Length (or dechunked), counted."""

    def __init__(self, handler: "Handler", stream, length: int | None, expect_continue: bool):
        self.handler = handler
        self.stream = stream
        self.remaining = length  # None: chunked
        self.count = 0
        self.done = length == 0
        self._expect = expect_continue and length != 0

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self.done or n == 0:
            return b""
        if self._expect:
            self._expect = False
            self.handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.remaining is not None:
            n = min(n, self.remaining)
        try:
            data = self.stream.read(n)
        except (OSError, ValueError) as exc:
            self.done = True
            raise BodyReadError() from exc
        if not data:
            self.done = True
            if self.remaining:
                raise BodyReadError("the client closed the connection before sending the whole body")
            return b""
        self.count += len(data)
        if self.remaining is not None:
            self.remaining -= len(data)
            self.done = self.remaining == 0
        return data

    def drain(self, limit: int) -> bool:
        """Read and drop what is left of the body; False when it is too much to bother."""
        if self.done:
            return True
        if self._expect:
            return False  # answered before "100 Continue": the client may or may not send the body
        if self.remaining is not None and self.remaining > limit:
            return False
        total = 0
        try:
            while not self.done and total <= limit:
                total += len(self.read(1 << 20))
        except BodyReadError:
            return False
        return self.done


def _error(code: int, message: str) -> tuple[str, list, list]:
    body = json.dumps({"status": "error", "message": message, "version": VERSION}).encode()
    return status_line(code), [("Content-Type", "application/json; charset=utf-8"),
                               ("Content-Length", str(len(body)))], [body]


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the WSGI write() callable is not supported")


class Handler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def setup(self) -> None:
        sock = self.request
        sock.settimeout(self.server.conn_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.server.tls_context is not None:
            self.request = self.server.tls_context.wrap_socket(sock, server_side=True)
        self.server.track(self.request, True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, False)

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" is sent by Input, only if the app starts reading the body

    # quiet: the access log records requests; protocol noise goes to debug
    def log_request(self, code="-", size="-") -> None:
        pass

    def log_error(self, format: str, *args) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        body = json.dumps({"status": "error", "message": message or explain or status_line(code),
                           "version": VERSION}).encode()
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # garbage request line: still answer with a status line
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)
        self._log(getattr(self, "command", "-") or "-", code, 0, len(body), time.monotonic())

    def _log(self, method: str, status: int, bytes_in: int, bytes_out: int, started: float) -> None:
        if self.server.access_log is None:
            return
        target = getattr(self, "path", "") or ""
        if target.lower().startswith(("http://", "https://")):  # absolute-form request target
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        raw_path, _, query = target.partition("?")
        path = urllib.parse.unquote(raw_path, errors="replace")
        self.server.access_log.write({
            "ts": round(time.time(), 3), "method": method, "path": path, "query": redact_query(query),
            "status": status, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "ms": round((time.monotonic() - started) * 1000, 3)})

    def run_wsgi(self) -> None:
        started = time.monotonic()
        try:
            environ = self.make_environ()
        except Exception:
            self.send_error(400, "Malformed request")
            return
        length: int | None = None
        if not environ.get("wsgi.input_terminated"):  # not chunked: Content-Length or nothing
            raw_length = (self.headers.get("Content-Length") or "0").strip()
            if not raw_length.isdigit():
                self.send_error(400, "Invalid Content-Length header")
                return
            length = int(raw_length)
        expect = (self.headers.get("Expect") or "").strip().lower() == "100-continue"
        inp = Input(self, environ["wsgi.input"], length, expect)
        environ["wsgi.input"] = inp
        status, headers, app_iter = self._call_app(environ)
        code = int(status.split(None, 1)[0])
        self._sent = 0
        try:
            self._respond(code, status, headers, app_iter, inp)
        except BaseException:
            self.close_connection = True
            raise
        finally:
            try:
                if hasattr(app_iter, "close"):
                    app_iter.close()
                if not self.close_connection and not inp.drain(DRAIN_LIMIT):
                    self.close_connection = True
            except Exception:
                self.close_connection = True
            self._log(self.command, code, inp.count, self._sent, started)

    def _call_app(self, environ: dict) -> tuple[str, list, object]:
        """Fault knobs first (latency, then maybe a 503 that has no effect), then the app."""
        srv = self.server
        if srv.latency:
            time.sleep(srv.latency)
        if srv.fail_rate and random.random() < srv.fail_rate:
            return _error(503, "Service temporarily unavailable (injected fault)")
        captured: list = []

        def start_response(status, headers, exc_info=None):
            captured[:] = [status, headers]
            return _no_write

        try:
            app_iter = srv.app(environ, start_response)
            return captured[0], captured[1], app_iter
        except Exception:
            log.exception("the WSGI app failed")
            return _error(500, "An unexpected internal error occurred while processing the request.")

    def _respond(self, code: int, status: str, headers: list, app_iter, inp: Input) -> None:
        """Send status, headers and body; ``self._sent`` counts body bytes as they go."""
        declared = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
        bodyless = self.command == "HEAD" or code in (204, 304) or code < 200
        if declared is None and not bodyless:
            self.close_connection = True  # close-delimited body
        if not inp.done and inp.remaining is not None and inp.remaining > DRAIN_LIMIT:
            self.close_connection = True
        self.send_response(code, status.split(None, 1)[1] if " " in status else None)
        for key, value in headers:
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        if bodyless:
            self.wfile.write(head)
            return
        spec = getattr(app_iter, "sendfile_spec", None)
        if spec is not None and self.server.truncate_body is not None:
            # test-only knob: promise the whole body, send a part, hang up
            file, offset, count = spec
            part = int(count * self.server.truncate_body)
            data = os.pread(file.fileno(), part, offset) if part > 0 else b""
            self.wfile.write(head + data)
            self._sent = len(data)
            self.close_connection = True
            return
        if spec is not None and not isinstance(self.connection, ssl.SSLSocket):
            self.wfile.write(head)
            file, offset, count = spec
            self._sent = self.connection.sendfile(file, offset, count) if count else 0
        else:
            for chunk in app_iter:
                if not chunk:
                    continue
                if head and len(chunk) <= SMALL_BODY:
                    self.wfile.write(head + chunk)
                else:
                    if head:
                        self.wfile.write(head)
                    self.wfile.write(chunk)
                head = b""
                self._sent += len(chunk)
            if head:
                self.wfile.write(head)
        if declared is not None and self._sent != declared:
            self.close_connection = True  # the file changed under us: the client sees a short body


class Server(ThreadedWSGIServer):
    request_queue_size = 1024

    def __init__(self, host: str, port: int, app, tls_context: ssl.SSLContext | None = None,
                 access_log: AccessLog | None = None, latency_ms: float = 0.0, fail_rate: float = 0.0,
                 conn_timeout: float = 300.0):
        super().__init__(host, port, app, handler=Handler)
        # werkzeug reads ssl_context only to pick the URL scheme: sockets are wrapped in Handler.setup
        self.ssl_context = tls_context
        self.tls_context = tls_context
        self.access_log = access_log
        self.latency = latency_ms / 1000.0
        self.fail_rate = fail_rate
        self.conn_timeout = conn_timeout
        self.truncate_body: float | None = None  # test-only: AGAVEFS_EMULATOR_TRUNCATE_BODY
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    def track(self, conn, alive: bool) -> None:
        with self._conns_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, socket.timeout, OSError)):
            log.debug("connection from %s dropped: %s", client_address, exc)
        else:
            log.error("connection from %s failed", client_address, exc_info=True)
