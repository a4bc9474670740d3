"""HTTP transport: per-thread sessions, timeouts, retries, deadlines, auth, logging.

Design note
-----------
One ``requests.Session`` per thread (keyed by the OS thread id, see ``session()``;
Sessions are not safe to share between threads), all of them mounting ONE
``HTTPAdapter`` (urllib3's connection pools are thread-safe), with urllib3's own
retries off: every retry decision is made here, where the meaning of the request is
known.  The pool is shared so that a thread's first request takes a connection
another thread opened (a FUSE worker thread is new at a fresh mount, and new ones come
and go under load: each used to open its own connection before its first answer).
A request answered whole with a string body or none (listings, history, manage actions,
deletes: 3 of the 4 requests per small file stored) skips the session and is sent on
that adapter's urllib3 pool directly (``_pool_request``): requests' own work per request
(preparing and merging it, running every answer through a cookie jar nothing here uses)
cost more client CPU than urllib3's.  Streams, uploads, token calls and origins reached
through a proxy keep the session.

Retry policies (``retry=``):

* ``IDEMPOTENT`` (GET, DELETE, mkdir, copy): connection errors, timeouts, 429, 500,
  502, 503, 504 are retried until the call's deadline.
* ``SAFE`` (rename, move, token calls, client creation): retried only when the
  server cannot have acted: the connection was never made (refused, DNS, connect
  timeout) or it answered 429/503 (throttled / unavailable, answered before any
  work).  Anything else raises ``Transient`` with ``ambiguous = True`` so that the
  caller can check whether the action already happened before repeating it.
* ``UPLOAD``: as SAFE, plus failures while the body was still being sent (the
  body reader had not reached its end: Agave receives the whole body before it
  acts, so a partial body was never stored).  Not retried: 500/502/504 and a lost
  answer after the last byte.  A duplicate upload would queue a second staging job
  for the same path, and a stale job finishing late rewrites the file under a
  caller that already saw STORED; the caller decides (``ambiguous`` is set).

Backoff is exponential with full jitter (base 50 ms, cap 4 s), ``Retry-After`` is
honoured, and nothing sleeps past the call's deadline (``op_timeout`` seconds by
default): when it passes, ``TimedOut`` (ETIMEDOUT).  The deadline bounds waiting
and retrying; a transfer in progress is bounded by the socket timeouts instead, so
a long upload or stream that keeps moving is never cut off.

Auth: a bearer token from the TokenManager (auth.py) is attached per attempt
through a ``requests.auth.AuthBase`` (so ``~/.netrc`` can never replace it).  A 401
whose body is a gateway ``fault`` triggers ``recover()`` (adopt a newer token from
the cache file, or refresh) and one retry; at most one refresh per call.  A 401
with an Agave wrapper, or a second one after a refresh, is EACCES.

Redirects are never followed blindly: a same-origin redirect of a GET/HEAD is
followed (the token stays on the same host), anything else is a ProtocolError.

Logging (logger "agavefs.client"): DEBUG one line per HTTP attempt with method,
kind, path, status, bytes and milliseconds; INFO for retries.  Never a header,
token, query string or exception text from requests/urllib3 (those can embed URLs):
``describe_exception`` builds a short description from exception *types*.

Locks: ``_sessions_lock`` guards ``_sessions`` (the list used by close()) and the
writes of ``_by_thread``.  The per-thread sessions themselves are touched only by
their thread.
"""

from __future__ import annotations

import email.utils
import errno as _errno
import itertools
import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import requests.utils
import urllib3
import urllib3.exceptions

from agavefs.errors import (AuthError, InvalidArgument, PermissionDenied, ProtocolError, TimedOut,
                            TLSError, Transient)
from agavefs.client.models import ClientStats
from agavefs.client.responses import Redactor, error_for, is_fault

IDEMPOTENT = "idempotent"
SAFE = "safe"
UPLOAD = "upload"

RETRY_STATUS = {IDEMPOTENT: {429, 500, 502, 503, 504}, SAFE: {429, 503}, UPLOAD: {429, 503}}
BACKOFF_BASE = 0.05
BACKOFF_CAP = 4.0
MAX_ATTEMPTS = 25
MAX_REDIRECTS = 5
# idle connections the shared pool keeps per host (at least ``workers``): above the
# daemon's concurrency (16 FUSE threads, uploads, staging looks, listing pages, walk-
# ahead, sibling prefetch, read streams: ~50 at most), so that a connection is not
# closed after a burst (urllib3 would log "pool is full").  Only connections a burst
# needed are ever opened; with a session per thread, each thread kept its own.
POOL_IDLE = 64
BODY_READ = 1 << 20  # bytes taken from an upload body per read


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free description of a requests/urllib3/socket failure."""
    seen: list[BaseException] = []
    stack = [exc]
    while stack and len(seen) < 12:
        e = stack.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        stack.extend(_linked(e))
    for e in seen:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({e.verify_message or 'untrusted'})"
    for e in seen:
        if isinstance(e, (ssl.SSLError, requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
            return "TLS error (handshake failed)"
    for e in seen:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError)):
            return "cannot resolve the host name"
    for e in seen:
        if isinstance(e, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)) \
                and not isinstance(e, urllib3.exceptions.NewConnectionError):
            return "connection timed out"
        if isinstance(e, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError,
                          socket.timeout, TimeoutError)):
            return "read timed out"
    for e in seen:
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(e, BrokenPipeError):
            return "connection closed while sending"
        if isinstance(e, urllib3.exceptions.IncompleteRead) or type(e).__name__ == "IncompleteRead":
            return "connection closed before the whole body arrived"
        if type(e).__name__ == "RemoteDisconnected":
            return "connection closed by the server without an answer"
        if isinstance(e, OSError) and e.errno:
            return (_errno.errorcode.get(e.errno, "error") + ": " + (e.strerror or "")).strip()
    return type(exc).__name__


def _never_connected(exc: BaseException) -> bool:
    """True when the request cannot have reached the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen = 0
    stack = [exc]
    while stack and seen < 12:
        e = stack.pop()
        seen += 1
        if isinstance(e, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError,
                          ConnectionRefusedError, socket.gaierror)):
            return True
        if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
            return True
        stack.extend(_linked(e))
    return False


def _linked(e: BaseException) -> list[BaseException]:
    """Exceptions that ``e`` wraps (urllib3's ``reason``, causes, exception args)."""
    out = [x for x in (getattr(e, "reason", None), e.__cause__, e.__context__)
           if isinstance(x, BaseException)]
    out.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return out


def retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class CountingReader:
    """File-like request body that counts what the transport has taken from it.

    ``complete`` tells whether the last byte was handed to the socket, which is
    what decides whether a failed upload may be re-sent.
    """

    def __init__(self, inner, total: int, progress: Callable[[int, int], None] | None = None,
                 stats: ClientStats | None = None):
        self._inner = inner
        self.total = total
        self.consumed = 0
        self._progress = progress
        self._stats = stats

    def __len__(self) -> int:
        return self.total

    @property
    def len(self) -> int:  # requests_toolbelt convention
        return self.total

    def read(self, size: int = -1) -> bytes:
        # urllib3 asks for 16 KiB at a time; a body may hand out more, and a multipart
        # encoder is pure Python per call: 1 MiB reads send a large file ~1.5x faster
        chunk = self._inner.read(max(size, BODY_READ) if size is not None and size >= 0 else BODY_READ)
        n = len(chunk)
        self.consumed += n
        if self._stats is not None and n:
            self._stats.add_up(n)
        if self._progress is not None and n:
            try:
                self._progress(self.consumed, self.total)
            except Exception:  # noqa: BLE001 - a progress callback must not break uploads
                pass
        return chunk

    @property
    def complete(self) -> bool:
        return self.consumed >= self.total


class CountingStream:
    """Request body of unknown length (requests sends it chunked): the chunks of an
    iterable, counted.  ``complete`` turns true only once the iterable is exhausted,
    i.e. after its last byte went to the socket: until then the server cannot have
    accepted the body, so a failed attempt may be re-sent."""

    def __init__(self, chunks, stats: ClientStats | None = None):
        self._chunks = chunks
        self._stats = stats
        self.consumed = 0
        self.complete = False

    def __iter__(self):
        for chunk in self._chunks:
            if chunk:
                self.consumed += len(chunk)
                if self._stats is not None:
                    self._stats.add_up(len(chunk))
                yield chunk
        self.complete = True


class _Bearer(requests.auth.AuthBase):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, r):
        r.headers["Authorization"] = "Bearer " + self._token
        return r

    def __repr__(self) -> str:
        return "_Bearer(***)"


class PlainResponse:
    """The part of ``requests.Response`` that the client reads from an answer read whole
    (``Transport._pool_request``)."""

    __slots__ = ("status_code", "headers", "content", "_content", "url", "maybe_acted")

    def __init__(self, status: int, headers, content: bytes, url: str):
        self.status_code = status
        self.headers = headers  # urllib3's HTTPHeaderDict: case-insensitive, as requests'
        self.content = self._content = content
        self.url = url
        self.maybe_acted = False

    def close(self) -> None:
        pass  # read whole: the connection is back in the pool already


class _UrlOnly:
    """What ``HTTPAdapter.build_connection_pool_key_attributes`` reads of a request."""

    def __init__(self, url: str):
        self.url = url


@dataclass
class Body:
    """One attempt's request body (upload bodies are rebuilt per attempt)."""

    data: object
    headers: dict
    reader: CountingReader | CountingStream | None = None
    close: Callable[[], None] | None = None


class Transport:
    def __init__(self, base_url: str, *, verify, workers: int = 8, connect_timeout: float = 10,
                 read_timeout: float = 60, op_timeout: float = 30,
                 logger: logging.Logger | None = None, stats: ClientStats | None = None,
                 redact: Redactor | None = None):
        self.base_url = base_url.rstrip("/")
        # The environment (proxy variables, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE) is read once
        # here; sessions run with trust_env off, because requests otherwise re-reads and
        # re-parses the whole environment on every request (~10% of a small request's CPU).
        env = requests.Session().merge_environment_settings(self.base_url, {}, None, verify, None)
        self.verify = env["verify"]
        self._proxies = env["proxies"]
        # every request carries these (the sessions have no headers of their own: see _send)
        self._base_headers = {**requests.utils.default_headers(), "User-Agent": "agavefs-client"}
        self.workers = max(1, int(workers))
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.op_timeout = float(op_timeout)
        self.log = logger or logging.getLogger("agavefs.client")
        self.stats = stats or ClientStats()
        self.redact = redact or Redactor()
        self.auth = None  # TokenManager, set by the owner (auth.py)
        # one connection pool for every thread's session (urllib3's pools are thread-safe);
        # it keeps up to POOL_IDLE idle connections per host, more are opened when needed
        self._adapter = requests.adapters.HTTPAdapter(pool_connections=2,
                                                      pool_maxsize=max(POOL_IDLE, self.workers),
                                                      max_retries=0)
        self._by_thread: dict[int, requests.Session] = {}  # OS thread id -> its session
        self._sessions_lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._origin = _origin(self.base_url)
        # the adapter's pool for the base URL's origin (see _pool_request); None when a
        # proxy serves it (requests' proxy handling is kept for that)
        self._pool_key = None
        if requests.utils.select_proxy(self.base_url, self._proxies) is None:
            self._pool_key = self._adapter.build_connection_pool_key_attributes(
                _UrlOnly(self.base_url), self.verify, None)
        self._change_seq = itertools.count(1)  # next() is atomic
        self.changes = 0  # see request()

    # -- sessions --------------------------------------------------------------------
    def session(self) -> requests.Session:
        # Keyed by the OS thread id, not threading.local: a FUSE worker thread is a
        # foreign (libfuse) thread whose Python thread state - and with it every
        # threading.local value - is created and destroyed around EACH callback, so a
        # thread-local session meant a new connection per request and leaked sessions.
        # An id is reused only after its thread ended, so a session never has two users.
        key = threading.get_ident()
        s = self._by_thread.get(key)
        if s is None:
            s = requests.Session()
            s.mount("https://", self._adapter)
            s.mount("http://", self._adapter)
            # no session-level headers or proxies: each request passes its own whole set
            # (see _send for why nothing is left for requests to merge)
            s.headers = s.proxies = None
            s.trust_env = False  # read once in __init__
            with self._sessions_lock:
                old = self._by_thread.get(key)
                if old is not None:  # cannot happen (one thread), but never leak one
                    return old
                self._by_thread[key] = s
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
            self._by_thread = {}
        for s in sessions:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass
        self._adapter.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def deadline(self, seconds: float | None = None) -> float:
        return time.monotonic() + (self.op_timeout if seconds is None else seconds)

    # -- the request loop --------------------------------------------------------------
    def request(self, method: str, path: str, **kw) -> requests.Response:
        """Send until success, a non-retryable failure, or the deadline (``_request``).

        ``changes`` moves on before and after every request but a GET or HEAD (one
        that may change something on the server), so that a reader can tell whether
        such a request was sent or answered while its own was in flight."""
        if method in ("GET", "HEAD"):
            return self._request(method, path, **kw)
        self.changes = next(self._change_seq)
        try:
            return self._request(method, path, **kw)
        finally:
            self.changes = next(self._change_seq)

    def _request(self, method: str, path: str, *, kind: str, label: str, params=None, data=None,
                 body: Callable[[], Body] | None = None, headers: dict | None = None,
                 stream: bool = False, retry: str = IDEMPOTENT, auth="bearer",
                 deadline: float | None = None, passthrough: tuple[int, ...] = (),
                 ) -> requests.Response:
        """Returns the response for 2xx and for statuses in ``passthrough`` (with
        ``stream=True`` the caller must close it); raises the mapped exception
        otherwise.  ``label`` is the system path used in logs and messages.
        """
        deadline = self.deadline() if deadline is None else deadline
        url = self.url(path)
        attempt = 0
        refreshed = False
        recoveries = 0
        maybe_acted = False  # has an earlier attempt possibly reached the server's logic?
        last = "no attempt made"
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0 or attempt > MAX_ATTEMPTS:
                raise TimedOut(f"{method} {label}: gave up after {attempt - 1} attempt(s): {last}")
            token = None
            req_auth = auth
            if auth == "bearer":
                token = self.auth.token() if self.auth is not None else None
                req_auth = _Bearer(token) if token else None
            attempt_body = body() if body is not None else None
            t0 = time.monotonic()
            self.stats.request(kind)
            try:
                resp = self._send(method, url, params=params,
                                  data=attempt_body.data if attempt_body else data,
                                  headers={**(headers or {}), **(attempt_body.headers if attempt_body else {})},
                                  auth=req_auth, stream=stream, left=left)
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader) as exc:
                self.stats.error(kind)
                raise InvalidArgument(f"{method} {label}: invalid request "
                                      f"({type(exc).__name__})") from None
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                self.stats.error(kind)
                desc = describe_exception(exc)
                ms = (time.monotonic() - t0) * 1000
                self.log.debug("%s %s %s -> %s (%.0f ms)", method, kind, label, desc, ms)
                if isinstance(exc, requests.exceptions.SSLError) or desc.startswith("TLS"):
                    raise TLSError(f"{method} {label}: {desc}") from None
                never = _never_connected(exc)
                unsent = (attempt_body is not None and attempt_body.reader is not None
                          and not attempt_body.reader.complete)
                last = desc
                if not never and not (retry == UPLOAD and unsent):
                    maybe_acted = True
                if retry == IDEMPOTENT or never or (retry == UPLOAD and unsent):
                    self._backoff(method, label, attempt, desc, deadline, None)
                    continue
                err = Transient(f"{method} {label}: {desc} (outcome unknown)")
                err.ambiguous = True
                err.maybe_acted = True
                raise err from None
            finally:
                if attempt_body is not None and attempt_body.close is not None:
                    attempt_body.close()
            status = resp.status_code
            if status in (301, 302, 303, 307, 308):
                resp = self._redirect(resp, method, label, kind, req_auth, headers)
                status = resp.status_code
            self._log_response(method, kind, label, resp, t0, stream)
            if 200 <= status < 300 or status in passthrough:
                resp.maybe_acted = maybe_acted
                return resp
            self.stats.error(kind)
            body_bytes = self._error_body(resp)
            if status == 401 and auth == "bearer" and self.auth is not None and \
                    is_fault(body_bytes, resp.headers.get("Content-Type")):
                if refreshed or recoveries >= 2:
                    raise AuthError(f"{method} {label}: the server rejects a freshly refreshed "
                                    f"token; log in again with `agavefs login`", status=401)
                how = self.auth.recover(token)
                recoveries += 1
                refreshed = refreshed or how == "refreshed"
                attempt -= 1  # an auth recovery is not a retry
                continue
            err = error_for(status, body_bytes, method, label, kind=kind, redact=self.redact)
            err.maybe_acted = maybe_acted
            if status == 401 and isinstance(err, PermissionDenied):
                raise err
            last = f"HTTP {status}"
            if status in RETRY_STATUS[retry]:
                if status >= 500 and status != 503:
                    maybe_acted = True
                self._backoff(method, label, attempt, last, deadline, retry_after(resp))
                continue
            if isinstance(err, Transient) and retry != IDEMPOTENT:
                err.ambiguous = True
                err.maybe_acted = True
            raise err

    def _send(self, method, url, *, params, data, headers, auth, stream, left) -> requests.Response:
        connect = max(0.05, min(self.connect_timeout, left))
        # a stream's timeout also bounds each wait for body bytes later on: a stream that
        # keeps moving is never cut off, a server that stops answering is noticed within
        # op_timeout (never the 60 s read timeout: a FUSE read would hang that long)
        read = max(0.05, min(self.read_timeout, self.op_timeout if stream else left))
        # Query strings and form bodies are encoded here, and the session has no headers
        # or proxies to merge: requests >= 2.33 tests dicts against typing Protocols at
        # run time (requests._types.SupportsItems / SupportsRead; slow on Python 3.11),
        # 8 of them per request, while a str query or body and settings merged with
        # nothing take none.  A one-file listing went from 1.16 to 1.01 ms of client CPU.
        # The encoding is requests' own: urlencode(doseq=True), None values left out.
        if isinstance(data, dict):
            data = _form(data)
            headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        return self._session_request(method, url, headers, params=_form(params) if params else None,
                                     data=data, auth=auth, stream=stream, timeout=(connect, read))

    def _session_request(self, method, url, headers, **kw) -> requests.Response | PlainResponse:
        """One attempt: the whole headers (the base ones and ``headers``), the proxies, the
        trust store, no redirect followed.  A request whose answer is read whole and
        whose body is a string (listings, history, manage actions, deletes) goes straight
        to the shared urllib3 pool (``_pool_request``); streams, uploads, other auth and
        proxied origins go through this thread's requests session."""
        if self._pool_key is not None and not kw.get("stream") \
                and (kw.get("auth") is None or isinstance(kw.get("auth"), _Bearer)) \
                and isinstance(kw.get("data"), (str, bytes, type(None))):
            return self._pool_request(method, url, headers, params=kw["params"], data=kw["data"],
                                      auth=kw["auth"], timeout=kw["timeout"])
        return self.session().request(method, url, headers={**self._base_headers, **(headers or {})},
                                      proxies=self._proxies, verify=self.verify,
                                      allow_redirects=False, **kw)

    def _pool_request(self, method, url, headers, *, params, data, auth, timeout) -> PlainResponse:
        """One whole-answer attempt on the adapter's own urllib3 pool (the pool requests
        uses too, so connections are shared), without what requests adds around urllib3
        (preparing and re-merging the request, the cookie jar it runs every answer
        through, which nothing here uses): a one-file listing took 0.50-0.56 ms of client
        CPU through the session and takes 0.37-0.47 ms here, a rename 0.74-1.04 ms and
        0.45-0.65 ms; a daemon storing small files sends 3 such requests per file."""
        h = {**self._base_headers, **(headers or {})}
        if auth is not None:
            h["Authorization"] = "Bearer " + auth._token
        if isinstance(data, str):
            data = data.encode("utf-8")
        if data is None and method not in ("GET", "HEAD"):
            h["Content-Length"] = "0"  # as requests sends it
        parts = urlsplit(url)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        if params:
            target += ("&" if parts.query else "?") + params
        host, pool_kwargs = self._pool_key
        pool = self._adapter.poolmanager.connection_from_host(**host, pool_kwargs=pool_kwargs)
        r = pool.urlopen(method, target, body=data, headers=h, redirect=False, retries=False,
                         assert_same_host=False, preload_content=True, decode_content=True,
                         timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
        return PlainResponse(r.status, r.headers, r.data or b"", url)

    def _redirect(self, resp, method, label, kind, req_auth, headers) -> requests.Response:
        """Follow same-origin redirects of GET/HEAD (never to another host)."""
        hops = 0
        while resp.status_code in (301, 302, 303, 307, 308):
            location = resp.headers.get("Location", "")
            target = urljoin(resp.url, location)
            resp.close()
            if method not in ("GET", "HEAD"):
                raise ProtocolError(f"{method} {label}: unexpected redirect (HTTP {resp.status_code})")
            if _origin(target) != self._origin:
                raise ProtocolError(f"{method} {label}: refusing a redirect to another host "
                                    f"({urlsplit(target).hostname})")
            hops += 1
            if hops > MAX_REDIRECTS:
                raise ProtocolError(f"{method} {label}: too many redirects")
            self.stats.request(kind)
            try:
                resp = self._session_request(method, target, headers, auth=req_auth, stream=True,
                                             timeout=(self.connect_timeout,
                                                      min(self.read_timeout, self.op_timeout)))
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                    OSError) as exc:
                self.stats.error(kind)
                raise Transient(f"{method} {label}: {describe_exception(exc)} (after a "
                                f"redirect)") from None
        return resp

    def _error_body(self, resp: requests.Response) -> bytes:
        try:
            return resp.raw.read(65536, decode_content=True) if resp._content is False \
                else (resp.content or b"")[:65536]
        except Exception:  # noqa: BLE001 - an unreadable error body is just empty
            return b""
        finally:
            resp.close()

    def _log_response(self, method, kind, label, resp, t0, stream) -> None:
        if not self.log.isEnabledFor(logging.DEBUG):
            return
        ms = (time.monotonic() - t0) * 1000
        if stream:
            size = resp.headers.get("Content-Length", "?")
            self.log.debug("%s %s %s -> %d stream %sB (%.0f ms to headers)", method, kind, label,
                           resp.status_code, size, ms)
        else:
            self.log.debug("%s %s %s -> %d %dB (%.0f ms)", method, kind, label, resp.status_code,
                           len(resp.content or b""), ms)

    def _backoff(self, method, label, attempt, why, deadline, hint: float | None) -> None:
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1))))
        if hint is not None:
            delay = max(delay, hint)
        left = deadline - time.monotonic()
        if delay >= left:
            raise TimedOut(f"{method} {label}: {why}; no time left to retry "
                           f"(deadline after {attempt} attempt(s))")
        self.stats.retry()
        self.log.info("retrying %s %s in %.2f s (attempt %d): %s", method, label, delay, attempt, why)
        time.sleep(delay)


def _form(fields: dict) -> str:
    """``fields`` encoded as requests encodes a dict of params or form data."""
    return urlencode({k: v for k, v in fields.items() if v is not None}, doseq=True)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = (parts.scheme or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, (parts.hostname or "").lower(), port)
