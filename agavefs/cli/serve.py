"""``agavefs serve``: run the embedded Agave v2 server over a local directory.

Design note: argument parsing and validation only; everything else is in
``agavefs.emulator`` (imported lazily, so ``agavefs --help`` stays fast).  The first
stdout line is the base URL, the second (with TLS) the PEM file to trust; logs go to
stderr and never contain a password, secret or token.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

EPILOG = """\
The server prints its base URL (e.g. http://127.0.0.1:43121) as the first line on
stdout, and with --tls/--tls-cert the path of the PEM file clients must trust as
the second line; it runs until SIGINT or SIGTERM and then exits 0.

Each user owns /home/NAME (created at start) on the one storage system, whose
rootDir is ROOT and homeDir /home. State (OAuth clients, hashed tokens, file
history, permission grants, queued uploads) lives in SQLite under
ROOT/.agave-emulator/ (hidden from every listing) unless --state says otherwise.

Test-only environment knobs:
  AGAVEFS_EMULATOR_STAGING_BPS=N   throttle each staging copy to N bytes/s
  AGAVEFS_EMULATOR_STAGING_FAIL=F  fraction of staging jobs that end STAGING_FAILED
  AGAVEFS_EMULATOR_STAGING_LOSE=F  fraction of staging jobs silently lost
  AGAVEFS_EMULATOR_DELETE_401=1    DELETE without permission on a path with no
                                   history answers 401 (a real-server quirk)
  AGAVEFS_EMULATOR_TRUNCATE_BODY=F downloads send only F of the promised bytes, then
                                   hang up (a cut connection)
"""


def _user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not sep or not USER_NAME.fullmatch(name) or not password:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD (NAME: letters, digits, '_', '.', '-')")
    return name, password


def _fraction(value: str) -> float:
    f = float(value)
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return f


def _non_negative(value: str) -> float:
    f = float(value)
    if f < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return f


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def register(sub, name: str, help_text: str, formatter_class) -> None:
    class Formatter(formatter_class):
        def _get_help_string(self, action):  # no "(default: None)" noise
            if action.default in (None, False):
                return action.help
            return super()._get_help_string(action)

    p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--root", required=True, metavar="DIR",
                   help="directory holding the files (the storage system's rootDir)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (a warning is printed "
                   "when it is not a loopback address)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    p.add_argument("--user", dest="users", action="append", type=_user, metavar="NAME:PASSWORD",
                   help="a user who may log in (repeatable; default demo:demo). The password is "
                        "visible to every local user in the process list: prefer --users-file")
    p.add_argument("--users-file", metavar="FILE",
                   help="users who may log in, one NAME:PASSWORD per line (keeps the passwords off "
                        "the command line)")
    p.add_argument("--system-id", default="local.storage", help="id of the storage system")
    p.add_argument("--staging-delay", type=_non_negative, default=0.5, metavar="SECONDS",
                   help="delay before an uploaded file is copied into place")
    p.add_argument("--token-ttl", type=_positive_int, default=14400, metavar="SECONDS",
                   help="lifetime of access tokens")
    p.add_argument("--latency", type=_non_negative, default=0.0, metavar="MS",
                   help="delay added before answering every request")
    p.add_argument("--fail-rate", type=_fraction, default=0.0, metavar="FRACTION",
                   help="fraction of requests (token calls included) answered 503, at random")
    p.add_argument("--range-mode", choices=("agave", "rfc", "ignore"), default="agave",
                   help="Range handling: agave = 200 with Content-Range and 416 past EOF; "
                        "rfc = 206, end clamped to EOF; ignore = whole file")
    p.add_argument("--max-page", type=_positive_int, default=None, metavar="N",
                   help="cap the 'limit' of listings, history and pems (models stricter servers)")
    p.add_argument("--access-log", metavar="FILE", help="append one JSON line per request to FILE")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls", action="store_true", help="serve HTTPS with a certificate made at start")
    tls.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM; needs --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    p.add_argument("--state", metavar="FILE",
                   help="SQLite state file (default ROOT/.agave-emulator/state.sqlite)")
    p.set_defaults(func=run, _parser=p)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    if bool(args.tls_cert) != bool(args.tls_key):
        args._parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s agavefs-serve %(levelname)s %(message)s")
    if not _is_loopback(args.host):
        print(f"agavefs serve: WARNING: listening on {args.host}, not a loopback address: anyone who can "
              "reach it can try the configured passwords", file=sys.stderr, flush=True)
    from agavefs.emulator import EmulatorServer, Options

    users = dict(args.users or [])
    if args.users_file:
        try:
            with open(args.users_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            users.update(_user(line) for line in lines)
        except (OSError, UnicodeDecodeError, argparse.ArgumentTypeError) as exc:
            args._parser.error(f"--users-file {args.users_file}: {exc}")
    users = users or {"demo": "demo"}
    opts = Options(root=args.root, host=args.host, port=args.port, users=users, system_id=args.system_id,
                   staging_delay=args.staging_delay, token_ttl=args.token_ttl, latency_ms=args.latency,
                   fail_rate=args.fail_rate, range_mode=args.range_mode, max_page=args.max_page,
                   access_log=args.access_log, tls=args.tls, tls_cert=args.tls_cert, tls_key=args.tls_key,
                   state=args.state)
    try:
        return EmulatorServer(opts).serve_until_signal()
    except (OSError, ValueError) as exc:
        print(f"agavefs serve: {exc}", file=sys.stderr)
        return 1
