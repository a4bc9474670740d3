"""``agavefs login``: get a token and write the shared credentials cache.

Design note
-----------
The tutorial flow of agave-api.md section 1: an OAuth client (reused when the
cache already holds one for the same gateway and user, else created; a client of
the same name that exists at the server is deleted and re-created, because its
secret is shown only at creation), then a password grant, then the cache file
(``$AGAVE_CACHE_DIR/current`` or ``~/.agave/current``, or ``--cache-dir``) written
atomically with mode 0600 in the agave-cli format, so agave-cli, tapis-cli and
agavepy can use it too.

The password is read with ``getpass`` (no echo) or, with ``--password-stdin``,
from the first line of standard input.  It is never stored, printed or logged (the
transport's redactor knows it).  Every failure ends with one line on stderr and a
non-zero status: 1 for a refused login, 2 for a usage problem, 3 when the server
cannot be reached or TLS verification fails.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import socket
import sys
from urllib.parse import urlsplit

from agavefs.errors import AgaveFSError, AlreadyExists, AuthError, PermissionDenied, TLSError, Transient

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def register(sub, name: str, help_text: str, formatter_class) -> argparse.ArgumentParser:
    class Formatter(formatter_class):
        def _get_help_string(self, action):  # no "(default: None)" noise
            if action.default in (None, False):
                return action.help
            return super()._get_help_string(action)

    p = sub.add_parser(
        name, help=help_text, formatter_class=Formatter,
        description="Log in to an Agave (Tapis v2) gateway: create or reuse an OAuth client,\n"
                    "get a token with your password and write the credentials cache that\n"
                    "agave-cli, tapis-cli and agavepy share ($AGAVE_CACHE_DIR/current or\n"
                    "~/.agave/current, mode 0600).  The password is never stored.",
        epilog="example: agavefs login --base-url https://api.tacc.utexas.edu --username jdoe")
    p.add_argument("--base-url", required=True, help="the gateway, e.g. https://api.tacc.utexas.edu")
    p.add_argument("--username", required=True, help="your gateway user name")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p.add_argument("--client-name", default=f"agavefs-{socket.gethostname()}",
                   help="name of the OAuth client to create or reuse")
    p.add_argument("--tenant-id", default=None, help="tenant id stored in the cache (tenantid)")
    p.add_argument("--ca-bundle", metavar="FILE", default=None,
                   help="CA certificates to verify the server with (else the system's, or "
                        "$REQUESTS_CA_BUNDLE)")
    p.add_argument("--insecure", action="store_true",
                   help="do NOT verify the server's TLS certificate (dangerous)")
    p.add_argument("--agave-cache-dir", "--cache-dir", dest="cache_dir", metavar="DIR", default=None,
                   help="where to write 'current' (default: $AGAVE_CACHE_DIR, else ~/.agave)")
    p.set_defaults(func=run)
    return p


def _fail(code: int, message: str) -> int:
    print(f"agavefs login: {message}", file=sys.stderr)
    return code


def _read_password(args) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        for ending in ("\r\n", "\n"):
            if line.endswith(ending):
                return line[: -len(ending)]
        return line
    return getpass.getpass(f"Password for {args.username} at {args.base_url}: ")


def run(args) -> int:
    from agavefs.client.api import resolve_verify
    from agavefs.client.auth import create_client, delete_client, password_grant
    from agavefs.client.credentials import Credentials, cache_file
    from agavefs.client.transport import Transport

    log = logging.getLogger("agavefs.client")
    base = args.base_url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _fail(EXIT_USAGE, f"--base-url must be an http(s) URL, not {args.base_url!r}")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        log.warning("logging in over plain http: your password crosses the network unencrypted")
    path = cache_file(args.cache_dir)
    existing = None
    try:
        existing = Credentials.load(path=path)
    except AuthError as exc:
        if "not logged in" not in exc.message:
            print(f"agavefs login: ignoring the existing cache: {exc.message}", file=sys.stderr)
    try:
        verify = resolve_verify(args.ca_bundle, args.insecure, log)
    except AgaveFSError as exc:
        return _fail(EXIT_USAGE, exc.message)
    password = _read_password(args)
    if not password:
        return _fail(EXIT_USAGE, "empty password")

    transport = Transport(base, verify=verify, workers=1, connect_timeout=10, read_timeout=60,
                          op_timeout=5, logger=log)
    transport.redact.add(password)
    user = args.username
    try:
        token = key = secret = None
        same = (existing is not None and existing.baseurl.rstrip("/") == base
                and existing.username == user and existing.apikey and existing.apisecret)
        if same:
            key, secret = existing.apikey, existing.apisecret
            try:
                token = password_grant(transport, key, secret, user, password)
            except (PermissionDenied, AgaveFSError) as exc:
                if isinstance(exc, (Transient, TLSError)):
                    raise
                token = None  # client gone, or wrong password: the client call tells
        if token is None:
            client = _create_or_replace(transport, user, password, args.client_name,
                                        create_client, delete_client)
            key, secret = client["consumerKey"], client["consumerSecret"]
            token = password_grant(transport, key, secret, user, password)
        creds = Credentials(
            tenantid=args.tenant_id if args.tenant_id is not None
            else (existing.tenantid if same else ""),
            baseurl=base, devurl="", apikey=key, apisecret=secret, username=user)
        creds.set_token(token)
        saved = creds.save(path)
    except PermissionDenied as exc:
        log.debug("login refused: %s", exc)
        return _fail(EXIT_REFUSED, f"login refused for {user} at {base}: wrong user name or "
                                   f"password")
    except TLSError as exc:
        return _fail(EXIT_UNREACHABLE, f"cannot talk to {base} securely: {_reason(exc)}; give "
                                       f"the server's CA with --ca-bundle FILE")
    except Transient as exc:
        return _fail(EXIT_UNREACHABLE, f"cannot reach {base}: {_reason(exc)}")
    except AgaveFSError as exc:
        if exc.status in (400, 401):
            return _fail(EXIT_REFUSED, f"login refused for {user} at {base}: wrong user name or "
                                       f"password ({_reason(exc)})")
        return _fail(EXIT_REFUSED, f"login failed: {exc}")
    except OSError as exc:
        return _fail(EXIT_REFUSED, f"cannot write {path}: {exc.strerror}")
    finally:
        transport.close()
    expiry = creds.expiry()
    when = expiry.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if expiry else "unknown"
    print(f"Logged in to {base} as {user}; credentials saved to {saved} "
          f"(token valid until {when}).")
    return 0


def _reason(exc: AgaveFSError) -> str:
    """The part of the message after "METHOD PATH: "."""
    text = exc.message
    return text.split(": ", 1)[1] if ": " in text else text


def _create_or_replace(transport, user, password, name, create_client, delete_client) -> dict:
    try:
        return create_client(transport, user, password, name, description="agavefs mount client")
    except AlreadyExists:
        # the secret is only shown at creation: replace the client
        delete_client(transport, user, password, name)
        return create_client(transport, user, password, name, description="agavefs mount client")
