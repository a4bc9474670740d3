"""Logging for the commands and the mount daemon.

``-v`` is INFO (mounts, uploads, retries, token refreshes), ``-vv`` DEBUG (one line
per HTTP request and per FUSE operation).  ``--log-file`` appends to a file,
``--log-json`` writes one JSON object per line.

Secrets are kept out at the source (the client never formats a token, a password or
a client secret into a message).  ``RedactingFilter`` is a second line of defence:
it masks anything shaped like a bearer token, an OAuth field or a Basic credential
that reaches a handler anyway, including text from third-party libraries.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"(?i)(basic\s+)[A-Za-z0-9+/=]+"), r"\1[redacted]"),
    # a key that names a secret, then = or :, then the value ("/token: text" is a path, not a key)
    (re.compile(r"(?i)(?<![\w/.-])((?:access_token|refresh_token|password|apisecret|consumerSecret|"
                r"client_secret|token)[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+"), r"\1[redacted]"),
]

# callables that mask the secrets a process actually holds (the client's Redactor
# learns every token, client secret and password it sees; see add_redactor)
_redactors: list = []


def add_redactor(func) -> None:
    """Also pass every log message through ``func(text) -> text`` (e.g. the HTTP
    transport's Redactor, which knows the live tokens, the client secret and the
    password)."""
    if func not in _redactors:
        _redactors.append(func)


def redact(text: str) -> str:
    for func in list(_redactors):
        try:
            text = func(text)
        except Exception:  # noqa: BLE001 - a redactor must never lose the log line
            pass
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.exc_info:
            if record.exc_info:
                clean = clean + "\n" + redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
                record.exc_text = None
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
                    + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }, ensure_ascii=False)


class LogFileError(Exception):
    """--log-file cannot be opened (the message says what to do)."""


def setup(verbose: int = 0, log_file: str | None = None, json_lines: bool = False,
          stream=None) -> logging.Logger:
    """Configure the ``agavefs`` logger tree; returns it."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger("agavefs")
    root.setLevel(level)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if log_file:
        try:
            handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise LogFileError(f"cannot write the log file {log_file}: {exc.strerror} (create its folder or "
                               f"choose another --log-file)") from None
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    if verbose >= 3:  # -vvv: also the libraries underneath (urllib3, mfusepy)
        for name in ("urllib3", "mfusepy"):
            lib = logging.getLogger(name)
            lib.setLevel(logging.DEBUG)
            lib.addHandler(handler)
    return root
