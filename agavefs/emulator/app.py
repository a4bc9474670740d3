"""The WSGI application: request parsing, routing, auth, profiles and systems.

Design note.  :class:`App` is a plain WSGI callable (testable without a socket).  The
URL path is taken from the raw request line and percent-decoded here as UTF-8 (400 if
it is not), so ``%2F`` becomes "/" as on the real server and an invalid byte sequence
is refused rather than replaced.  Routes accept a trailing slash everywhere (agavepy
adds one).  Handlers return :class:`responses.Response`; every exception becomes an
Agave error envelope, and anything unexpected a 500 envelope without a stack trace
(the traceback goes to the log, on stderr).

Auth: ``/clients/v2`` takes HTTP Basic user:password (the users given on the command
line); ``/token`` and ``/revoke`` take Basic consumerKey:consumerSecret; the rest a
Bearer token, else the gateway's 401 ``fault``.  Tokens are 32 hex digits, stored
hashed (``state.py``).  Files routes live in ``files_api.py``.  No locks here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import time
import urllib.parse

from . import files_api
from .config import Options
from .errors import AgaveError, FaultError, OAuthError
from .files import FileService, agave_time
from .manage import Manager, text
from .multipart import MultipartError, parse as parse_multipart, parse_params
from .responses import Response, error, fault, oauth, status_line, success
from .state import State

log = logging.getLogger("agavefs.emulator.app")
BODY_LIMIT = 1 << 20
TIERS = ("Bronze", "Silver", "Gold", "Unlimited")
CLIENT_NAME = re.compile(r"[^/\x00-\x1f\x7f]{1,128}")


def _raw(environ: dict, key: str) -> bytes:
    """The request-line bytes behind a werkzeug environ string (undo its encoding dance)."""
    value = environ.get(key, "")
    try:
        return value.encode("latin-1").decode("utf-8").encode("latin-1")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value.encode("latin-1", "replace")


class Request:
    def __init__(self, environ: dict):
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET").upper()
        uri = _raw(environ, "REQUEST_URI") if environ.get("REQUEST_URI") else _raw(environ, "PATH_INFO")
        if uri.lower().startswith((b"http://", b"https://")):
            uri = b"/" + uri.split(b"/", 3)[3] if uri.count(b"/") >= 3 else b"/"
        raw_path, _, raw_query = uri.partition(b"?")
        if not environ.get("REQUEST_URI"):
            raw_query = _raw(environ, "QUERY_STRING")
        try:
            self.path = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            self.path = None  # answered 400 by the app
        self.query: dict[str, str] = {}
        for k, v in urllib.parse.parse_qsl(raw_query.decode("utf-8", "replace"), keep_blank_values=True):
            self.query.setdefault(k, v)
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
        if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", host):
            host = f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
        self.base = f"{environ.get('wsgi.url_scheme', 'http')}://{host}"
        self.input = environ["wsgi.input"]

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    def content_type(self) -> tuple[str, dict[str, str]]:
        kind, params = parse_params(self.environ.get("CONTENT_TYPE") or "")
        return kind, params

    def read_body(self, limit: int = BODY_LIMIT) -> bytes:
        length = self.environ.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) > limit:
            raise AgaveError(413, f"The request body is larger than {limit} bytes")
        chunks, total = [], 0
        while True:
            data = self.input.read(limit + 1 - total)
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if total > limit:
                raise AgaveError(413, f"The request body is larger than {limit} bytes")
        return b"".join(chunks)

    def form(self) -> dict:
        """The body as a dict: JSON object, url-encoded form or (small) multipart form."""
        kind, params = self.content_type()
        if kind == "multipart/form-data":
            try:
                got = parse_multipart(self.input.read, params.get("boundary", ""), lambda n, f: None)
            except MultipartError as exc:
                raise AgaveError(400, f"Failed to parse request form: {exc}") from None
            return dict(got.fields)
        raw = self.read_body()
        if kind == "application/json" or (kind in ("", "text/plain") and raw.lstrip()[:1] in (b"{", b"[")):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AgaveError(400, "Invalid JSON in the request body") from None
            if not isinstance(obj, dict):
                raise AgaveError(400, "The request body must be a JSON object")
            try:
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:  # "\ud800" escapes: not Unicode text
                raise AgaveError(400, "The request body is not valid Unicode") from None
            return obj
        if kind not in ("", "application/x-www-form-urlencoded", "text/plain"):
            raise AgaveError(415, f"Unsupported content type {kind}")
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AgaveError(400, "The request body is not UTF-8") from None
        out: dict[str, str] = {}
        for k, v in urllib.parse.parse_qsl(decoded, keep_blank_values=True):
            out.setdefault(k, v)
        return out

    def basic(self) -> tuple[str, str] | None:
        auth = self.header("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        name, sep, password = decoded.partition(":")
        return (name, password) if sep else None


class App:
    def __init__(self, opts: Options, state: State, files: FileService, manager: Manager):
        self.opts = opts
        self.state = state
        self.files = files
        self.manager = manager
        self.users = dict(opts.users)
        self.started = time.time()
        self.routes = [
            (re.compile(r"/clients/v2/?"), {"GET": self.clients_list, "POST": self.clients_create}),
            (re.compile(r"/clients/v2/(?P<name>[^/]+)/?"), {"GET": self.clients_get, "DELETE": self.clients_delete}),
            (re.compile(r"/token/?"), {"POST": self.token}),
            (re.compile(r"/revoke/?"), {"POST": self.revoke}),
            (re.compile(r"/profiles/v2/(?P<name>[^/]+)/?"), {"GET": self.profile}),
            (re.compile(r"/systems/v2/?"), {"GET": self.systems_list}),
            (re.compile(r"/systems/v2/(?P<sid>[^/]+)/?"), {"GET": self.system_get}),
        ] + files_api.routes(self)

    # -- WSGI ------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response):
        resp = self.respond(environ)
        start_response(status_line(resp.status), resp.headers)
        return [resp.body] if isinstance(resp.body, bytes) else resp.body

    def respond(self, environ: dict) -> Response:
        req = None
        try:
            req = Request(environ)
            return self.dispatch(req)
        except AgaveError as exc:
            pretty = req is not None and (req.query.get("pretty") or "").lower() == "true"
            return error(exc.status, exc.message, exc.headers, pretty)
        except FaultError as exc:
            return fault(exc.code, exc.description)
        except OAuthError as exc:
            return oauth(exc.status, {"error": exc.error, "error_description": exc.description})
        except Exception:
            log.exception("internal error answering %s %s", environ.get("REQUEST_METHOD"),
                          req.path if req is not None else "?")
            return error(500, "An unexpected internal error occurred while processing the request. "
                              "If this persists, please contact your tenant administrator")

    def dispatch(self, req: Request) -> Response:
        if req.path is None:
            raise AgaveError(400, "Invalid file path: the URL is not valid UTF-8 once percent-decoded")
        for rx, methods in self.routes:
            m = rx.fullmatch(req.path)
            if m is None:
                continue
            method = "GET" if req.method == "HEAD" and "HEAD" not in methods else req.method
            handler = methods.get(method)
            if handler is None:
                allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
                raise AgaveError(405, f"Method {req.method} is not allowed on {req.path}",
                                 {"Allow": ", ".join(allowed)})
            return handler(req, **m.groupdict())
        raise AgaveError(404, f"No resource found at {req.path}")

    # -- authentication ------------------------------------------------------------------
    def check_password(self, name: str, password: str) -> bool:
        known = self.users.get(name)
        return known is not None and hmac.compare_digest(known.encode(), password.encode())

    def basic_user(self, req: Request) -> str:
        cred = req.basic()
        if cred is None or not self.check_password(*cred):
            raise AgaveError(401, "Invalid username/password combination", {"WWW-Authenticate": 'Basic realm="agave"'})
        return cred[0]

    def bearer(self, req: Request) -> str:
        auth = (req.header("Authorization") or "").strip()
        if not auth:
            raise FaultError(900902, "Required OAuth credentials not provided. Make sure your API invocation "
                                     "call has a header: \"Authorization: Bearer ACCESS_TOKEN\"")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        found = self.state.session_user(token) if scheme.lower() == "bearer" and token else None
        if found is None or found[0] not in self.users:
            raise FaultError(900901, "Access failure for API: /v2, version: v2 status: (900901) - Invalid "
                                     "Credentials. Make sure you have given the correct access token")
        if found[1] < time.time():
            raise FaultError(900901, "Access failure for API: /v2, version: v2 status: (900901) - Invalid "
                                     "Credentials. The access token has expired")
        return found[0]

    # -- clients -----------------------------------------------------------------------------
    def client_json(self, req: Request, owner: str, c: dict, secret: str | None = None) -> dict:
        name = urllib.parse.quote(c["name"], safe="")
        out = {"name": c["name"], "description": c["description"] or "", "tier": c["tier"],
               "callbackUrl": c["callbackUrl"] or "", "consumerKey": c["consumerKey"]}
        if secret is not None:
            out["consumerSecret"] = secret
        out["_links"] = {"self": {"href": f"{req.base}/clients/v2/{name}"},
                         "subscriber": {"href": f"{req.base}/profiles/v2/{owner}"},
                         "subscriptions": {"href": f"{req.base}/clients/v2/{name}/subscriptions/"}}
        return out

    def clients_create(self, req: Request) -> Response:
        owner = self.basic_user(req)
        body = req.form()
        name = text(body, "clientName")
        if not name or not name.strip():
            raise AgaveError(400, "clientName is required")
        if not CLIENT_NAME.fullmatch(name):
            raise AgaveError(400, "Invalid clientName: 1 to 128 characters, no '/' or control characters")
        tier = text(body, "tier") or "Unlimited"
        match = [t for t in TIERS if t.lower() == tier.lower()]
        if not match:
            raise AgaveError(400, f"Invalid tier {tier}. Valid values are {', '.join(TIERS)}")
        key, secret = secrets.token_urlsafe(21), secrets.token_urlsafe(21)
        c = {"name": name, "description": text(body, "description") or "", "tier": match[0],
             "callbackUrl": text(body, "callbackUrl") or ""}
        if not self.state.client_create(owner, name, c["description"], c["tier"], c["callbackUrl"], key, secret):
            raise AgaveError(400, f"An application with the name {name} already exists for user {owner}")
        c["consumerKey"] = key
        return success(req.query, self.client_json(req, owner, c, secret), "Client created successfully.", 201)

    def clients_list(self, req: Request) -> Response:
        owner = self.basic_user(req)
        return success(req.query, [self.client_json(req, owner, c) for c in self.state.clients_of(owner)])

    def clients_get(self, req: Request, name: str) -> Response:
        owner = self.basic_user(req)
        found = self.state.clients_of(owner, name)
        if not found:
            raise AgaveError(404, f"No client found matching {name}")
        return success(req.query, self.client_json(req, owner, found[0]))

    def clients_delete(self, req: Request, name: str) -> Response:
        owner = self.basic_user(req)
        if not self.state.client_delete(owner, name):
            raise AgaveError(404, f"No client found matching {name}")
        return success(req.query, None, "Client removed successfully.")

    # -- OAuth ---------------------------------------------------------------------------------
    def client_auth(self, req: Request, body: dict) -> str:
        cred = req.basic() or (text(body, "client_id") or "", text(body, "client_secret") or "")
        if not cred[0] or not self.state.client_check(cred[0], cred[1]):
            raise OAuthError(401, "invalid_client", "Client Authentication failed.")
        return cred[0]

    def token(self, req: Request) -> Response:
        body = req.form()
        key = self.client_auth(req, body)
        grant = text(body, "grant_type")
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        expires = time.time() + self.opts.token_ttl
        if not grant:
            raise OAuthError(400, "invalid_request", "Missing grant_type parameter value")
        if grant == "password":
            user, password = text(body, "username") or "", text(body, "password") or ""
            if not self.check_password(user, password):
                raise OAuthError(400, "invalid_grant", "Provided Authorization Grant is invalid.")
            self.state.session_create(user, key, access, expires, refresh)
        elif grant == "refresh_token":
            old = text(body, "refresh_token")
            if not old:
                raise OAuthError(400, "invalid_request", "Missing parameters: refresh_token")
            user = self.state.session_rotate(key, old, access, expires, refresh)
            if user is None or user not in self.users:
                raise OAuthError(400, "invalid_grant", "Provided Authorization Grant is invalid.")
        else:
            raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type value")
        return oauth(200, {"scope": text(body, "scope") or "default", "token_type": "bearer",
                           "expires_in": int(self.opts.token_ttl), "refresh_token": refresh, "access_token": access})

    def revoke(self, req: Request) -> Response:
        body = req.form()
        key = self.client_auth(req, body)
        token = text(body, "token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing parameters: token")
        self.state.session_revoke(key, token)
        return Response(200, b"", content_type=None)

    # -- profiles and systems ------------------------------------------------------------------
    def profile(self, req: Request, name: str) -> Response:
        user = self.bearer(req)
        who = user if name == "me" else name
        if who not in self.users:
            raise AgaveError(404, f"No profile found for user {who}")
        first = who[:1].upper() + who[1:]
        return success(req.query, {
            "create_time": time.strftime("%Y%m%d%H%M%SZ", time.gmtime(self.started)),
            "email": f"{who}@localhost", "first_name": first, "last_name": "User",
            "full_name": f"{first} User", "mobile_phone": "", "phone": "", "status": "Active",
            "username": who, "uid": None, "nonce": None})

    def system_summary(self, req: Request) -> dict:
        sid = self.opts.system_id
        return {"id": sid, "name": f"Local storage ({sid})", "type": "STORAGE",
                "description": "The agavefs embedded Agave server's storage system",
                "status": "UP", "public": False, "default": True,
                "lastUpdated": agave_time(self.started),
                "_links": {"self": {"href": f"{req.base}/systems/v2/{sid}"}}}

    def systems_list(self, req: Request) -> Response:
        self.bearer(req)
        kind = (req.query.get("type") or "").upper()
        default = (req.query.get("default") or "").lower()
        public = (req.query.get("public") or "").lower()
        keep = (kind in ("", "STORAGE") and default in ("", "true") and public in ("", "false"))
        return success(req.query, [self.system_summary(req)] if keep else [])

    def system_get(self, req: Request, sid: str) -> Response:
        self.bearer(req)
        if sid != self.opts.system_id:
            raise AgaveError(404, f"No system found for user with id {sid}")
        out = self.system_summary(req)
        out.update({"uuid": "0001-agavefs-emulator-system-" + sid, "owner": None, "revision": 1,
                    "site": "localhost", "globalDefault": True, "available": True,
                    "storage": {"host": req.environ.get("SERVER_NAME"),
                                "port": int(req.environ.get("SERVER_PORT") or 0),
                                "protocol": "LOCAL", "rootDir": self.files.ns.root, "homeDir": "/home",
                                "mirror": False, "publicAppsDir": None, "auth": {"type": "LOCAL"}}})
        return success(req.query, out)
