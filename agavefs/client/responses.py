"""Reading Agave's answers: the JSON envelope, faults, and status -> exception.

Design note
-----------
Every service answer below ``/token`` is wrapped: ``{"status": "success"|"error",
"message": ..., "result": ..., "version": ...}`` with ``result`` absent, null or
``{}`` on errors (agave-api.md section 8).  The gateway answers auth failures
itself with ``{"fault": {...}}`` (or XML ``<ams:fault>`` on older gateways): that
kind of 401 means "refresh the token once and retry", while a 401 carrying a
normal Agave wrapper comes from the service (DELETE without permission) and means
EACCES - the gateway accepted the token.

``error_for`` builds the exception that a filesystem call will report: the errno
comes from agavefs.errors' classes, and the message is "METHOD PATH: Agave's
message" only.  Server text is cut short, stripped of control characters and of
any known secret (:class:`Redactor`), because a server echoing a token back must
not put it into a log line or an error message.

Locks: :class:`Redactor` guards its secret set with ``_lock``.
"""

from __future__ import annotations

import json
import re
import threading

from agavefs.errors import (AgaveFSError, AlreadyExists, IsADirectory, NoSpace, NotADirectory,
                            NotFound, PermissionDenied, ProtocolError, RangeNotSatisfiable,
                            Transient, Unsupported)

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
_BEARER_RE = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_QUERY_RE = re.compile(r"(https?://[^\s'\"?]*)\?[^\s'\")]*")
_QUOTA_WORDS = ("quota", "no space", "disk full", "insufficient storage", "exceed")


class Redactor:
    """Replaces every known secret (tokens, client secret, password) with "***"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()

    def add(self, *secrets: object) -> None:
        with self._lock:
            for s in secrets:
                if isinstance(s, str) and len(s) >= 4:
                    self._secrets.add(s)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for s in secrets:
            if s in text:
                text = text.replace(s, "***")
        text = _BEARER_RE.sub(r"\1 ***", text)
        return _QUERY_RE.sub(r"\1?...", text)


def clean_message(text: object, redact=None, limit: int = 300) -> str:
    """Server text made safe for a log line or an exception message."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = _CONTROL_RE.sub(" ", text).strip()
    if redact is not None:
        text = redact(text)
    else:
        text = _BEARER_RE.sub(r"\1 ***", text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def parse_json(body: bytes) -> object:
    """JSON from a body, ProtocolError when it is not JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ProtocolError("the server answered something that is not JSON") from None


def unwrap(body: bytes, what: str) -> object:
    """The ``result`` of a successful wrapped answer (a naked result is accepted)."""
    data = parse_json(body)
    if isinstance(data, dict) and "status" in data and ("result" in data or "message" in data):
        if str(data.get("status")).lower() != "success":
            msg = clean_message(data.get("message"))
            raise ProtocolError(f"{what}: the server reported an error with a 2xx status: {msg}")
        return data.get("result")
    return data  # naked=true style or an unwrapped server


def is_fault(body: bytes, content_type: str | None) -> bool:
    """Is this 401 body the gateway's (token rejected) rather than the service's?"""
    text = body[:4096]
    if not text.strip():
        return True  # a bare 401: nothing says the token was accepted
    try:
        data = json.loads(text.decode("utf-8", "replace"))
    except (json.JSONDecodeError, RecursionError):
        # XML <ams:fault>, HTML, plain text: all come from a gateway, not Agave
        return True
    if isinstance(data, dict):
        if "fault" in data:
            return True
        if "status" in data and "message" in data:
            return False  # a normal Agave wrapper: the service saw our token
        if "error" in data:
            return True  # OAuth-style {"error": "invalid_token"}
    return True


def agave_message(body: bytes) -> str:
    """Agave's ``message`` (or the fault/OAuth description) from an error body."""
    text = body[:65536]
    try:
        data = json.loads(text.decode("utf-8", "replace"))
    except (json.JSONDecodeError, RecursionError):
        raw = text.decode("utf-8", "replace")
        m = re.search(r"<ams:message>(.*?)</ams:message>", raw, re.S)
        if m:
            return m.group(1)
        return "" if raw.lstrip().startswith("<") else raw[:200]
    if isinstance(data, dict):
        if isinstance(data.get("fault"), dict):
            f = data["fault"]
            return " ".join(str(f.get(k, "")) for k in ("message", "description") if f.get(k))
        for key in ("message", "error_description", "error"):
            if isinstance(data.get(key), str) and data[key]:
                return data[key]
    return ""


def error_for(status: int, body: bytes, method: str, label: str, *, kind: str = "",
              redact=None) -> AgaveFSError:
    """The exception a failed request becomes (never containing a secret)."""
    msg = clean_message(agave_message(body), redact)
    text = f"{method} {label}: {msg}" if msg else f"{method} {label}"
    low = msg.lower()
    if status == 404:
        return NotFound(text, status=status)
    if status in (401, 403):
        return PermissionDenied(text, status=status)
    if status == 507 or any(w in low for w in _QUOTA_WORDS) and status in (400, 403, 413, 500):
        return NoSpace(text, status=status)
    if status == 413:
        return NoSpace(text, status=status)
    if status == 416:
        return RangeNotSatisfiable(text, status=status)
    if status == 409 or (status == 400 and "exist" in low and "not exist" not in low
                         and "does not" not in low):
        return AlreadyExists(text, status=status)
    if status == 400 and "not a directory" in low:
        return NotADirectory(text, status=status)
    if status == 400 and ("permission" in low or "denied" in low or "not authorized" in low):
        return PermissionDenied(text, status=status)
    if status == 501:
        if kind == "read" or "director" in low:
            return IsADirectory(text, status=status)
        return Unsupported(text, status=status)
    if status == 429 or status >= 500 or status == 412:
        return Transient(text, status=status)
    return AgaveFSError(text, status=status)
