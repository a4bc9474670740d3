"""Typed records parsed from Agave's JSON, and the client's counters.

Design note
-----------
The server is not trusted: every field of a listing entry or history event is
type-checked here, and anything malformed raises ``ProtocolError`` (EIO) instead of
turning into a wrong attribute later.  Entries with names that cannot be a
directory entry ("", ".", "..", anything with "/" or NUL) are not errors: the
listing code drops them (a hostile or buggy listing must not make the mount show
``..`` twice or a name with a slash).

``lastModified`` is ISO 8601 with milliseconds and a numeric offset
("2017-07-20T13:28:30.000-05:00"); the parser below also takes "Z", offsets without
a colon, any number of fractional digits, a space instead of "T", and epoch numbers
(seconds, or milliseconds when large), and it works on Python 3.10 whose
``fromisoformat`` knows none of that.  A time without an offset is taken as UTC.

Locks: only :class:`ClientStats` has state; its ``_lock`` protects all its counters.
"""

from __future__ import annotations

import enum
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from agavefs.client.paths import clean_remote_path
from agavefs.errors import ProtocolError

# -- time ---------------------------------------------------------------------

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_time(value: object) -> datetime:
    """An aware datetime from Agave's timestamp forms; ProtocolError otherwise."""
    if isinstance(value, bool):
        raise ProtocolError(f"bad timestamp {value!r}")
    if isinstance(value, (int, float)):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ProtocolError(f"bad timestamp {value!r}") from None
    if not isinstance(value, str):
        raise ProtocolError(f"bad timestamp {value!r}")
    if len(value) == 29 and value[10] == "T" and value[19] == "." and value[23] in "+-" and value[26] == ":":
        # Agave's own shape (2017-07-20T13:28:30.000-05:00): the C parser is ~100x faster
        # than the regex below, and a listing of 10,000 entries parses 10,000 of them
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    m = _ISO_RE.match(value.strip())
    if not m:
        raise ProtocolError(f"bad timestamp {value[:60]!r}")
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    off = m.group(8)
    if off and off not in ("Z", "z"):
        sign = -1 if off[0] == "-" else 1
        digits = off[1:].replace(":", "")
        hours, mins = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or mins > 59:
            raise ProtocolError(f"bad timestamp offset {value[:60]!r}")
        tz = timezone(sign * timedelta(hours=hours, minutes=mins))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        raise ProtocolError(f"bad timestamp {value[:60]!r}") from None


# -- listing entries ------------------------------------------------------------

PERMISSION_WORDS = frozenset(
    {"ALL", "READ", "WRITE", "EXECUTE", "READ_WRITE", "READ_EXECUTE", "WRITE_EXECUTE", "NONE",
     "OWNER"})


class RemoteEntry(NamedTuple):
    """One file or directory as a listing describes it (a named tuple: made once per
    listing entry, see ``agavefs.vfs.backend.Entry``)."""

    name: str
    path: str  # absolute system path, no trailing slash
    is_dir: bool
    size: int
    mtime: datetime  # timezone-aware
    permissions: str  # Agave's word, e.g. "READ_WRITE"
    mime_type: str | None = None

    @property
    def readable(self) -> bool:
        p = self.permissions.upper()
        return p in ("ALL", "OWNER") or "READ" in p

    @property
    def writable(self) -> bool:
        p = self.permissions.upper()
        return p in ("ALL", "OWNER") or "WRITE" in p

    @property
    def executable(self) -> bool:
        p = self.permissions.upper()
        return p in ("ALL", "OWNER") or "EXECUTE" in p

    def renamed(self, name: str, path: str | None = None) -> "RemoteEntry":
        return self._replace(name=name, path=self.path if path is None else path)


def usable_name(name: object) -> bool:
    """Can ``name`` be a directory entry?  ("." is the self entry, handled apart.)"""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\0" not in name)


def _field(raw: dict, key: str, types: tuple, what: str, required: bool = True):
    value = raw.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"listing entry without {key!r} ({what})")
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise ProtocolError(f"listing entry field {key!r} has a wrong type ({what})")
    return value


def parse_entry(raw: object, *, fallback_path: str | None = None, parent: str | None = None
                ) -> RemoteEntry:
    """A RemoteEntry from one element of a listing; ProtocolError when malformed.

    The name is kept exactly as sent (the caller decides whether it is usable).
    ``fallback_path`` is used when the entry's own ``path`` is missing or not an
    absolute path.  With ``parent`` (a directory's path, "" for the root) the entry is
    that directory's child: its path is ``parent/name``, whatever ``path`` it carries.
    """
    if not isinstance(raw, dict):
        raise ProtocolError("listing entry is not an object")
    name = _field(raw, "name", (str,), "name")
    what = name[:60]
    length = _field(raw, "length", (int, float), what)
    if length < 0 or (isinstance(length, float) and not length.is_integer()):
        raise ProtocolError(f"listing entry {what!r} has an invalid length {length!r}")
    kind = raw.get("type")
    fmt = raw.get("format")
    mime = _field(raw, "mimeType", (str,), what, required=False)
    if kind is not None and not isinstance(kind, str):
        raise ProtocolError(f"listing entry {what!r} has a wrong type for 'type'")
    if isinstance(kind, str) and kind.lower() in ("dir", "directory", "folder"):
        is_dir = True
    elif isinstance(kind, str) and kind.lower() == "file":
        is_dir = False
    else:
        is_dir = fmt == "folder" or mime == "text/directory"
    perms = _field(raw, "permissions", (str,), what, required=False) or "READ_WRITE"
    modified = raw.get("lastModified")
    mtime = parse_time(modified) if modified is not None else datetime.fromtimestamp(0, timezone.utc)
    path = f"{parent}/{name}" if parent is not None else clean_remote_path(raw.get("path")) or fallback_path
    if path is None:
        raise ProtocolError(f"listing entry {what!r} has no usable path")
    return RemoteEntry(name, path, is_dir, int(length), mtime, perms.upper(), mime)


# -- history / staging ----------------------------------------------------------


@dataclass(frozen=True)
class HistoryEvent:
    status: str
    created: str
    description: str
    raw: dict = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.status, self.created, self.description)


def parse_event(raw: object) -> HistoryEvent:
    if not isinstance(raw, dict):
        raise ProtocolError("history event is not an object")
    status = raw.get("status")
    if not isinstance(status, str):
        raise ProtocolError("history event without a status")
    created = raw.get("created")
    desc = raw.get("description")
    return HistoryEvent(status.upper(), created if isinstance(created, str) else str(created),
                        desc if isinstance(desc, str) else "", raw)


class StagingState(enum.Enum):
    """Where an upload's background copy to storage stands."""

    PENDING = "pending"  # queued or copying; keep waiting
    STORED = "stored"  # STAGING_COMPLETED after the newest STAGING_QUEUED, length matches
    FAILED = "failed"  # STAGING_FAILED after the newest STAGING_QUEUED: upload again
    LOST = "lost"  # nothing moved for too long (or deadline): upload again

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StagingObservation:
    """One look at an upload: what ``AgaveClient.staging_state`` returns.

    Compares equal to its ``state`` (``obs == StagingState.STORED`` works), and
    ``progress_key`` changes whenever anything moved (a new event after the newest
    STAGING_QUEUED, or a new listing length).
    """

    state: StagingState
    length: int | None  # listing length now (None: not listed yet)
    events: tuple[str, ...]  # statuses after the newest STAGING_QUEUED, oldest first
    queued_key: tuple | None  # identity of the newest STAGING_QUEUED event

    @property
    def progress_key(self) -> tuple:
        return (self.queued_key, self.events, self.length)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StagingState):
            return self.state is other
        if isinstance(other, StagingObservation):
            return (self.state, self.length, self.events, self.queued_key) == (
                other.state, other.length, other.events, other.queued_key)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.state, self.length, self.events))


# -- counters -------------------------------------------------------------------


class ClientStats:
    """Thread-safe request counters.  ``_lock`` protects every field below it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._retries = 0
        self._refreshes = 0
        self._bytes_up = 0
        self._bytes_down = 0

    def request(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] = self._requests.get(kind, 0) + 1

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def refresh(self) -> None:
        with self._lock:
            self._refreshes += 1

    def add_up(self, n: int) -> None:
        with self._lock:
            self._bytes_up += n

    def add_down(self, n: int) -> None:
        with self._lock:
            self._bytes_down += n

    def count(self, kind: str) -> int:
        with self._lock:
            return self._requests.get(kind, 0)

    @property
    def retries(self) -> int:
        with self._lock:
            return self._retries

    @property
    def refreshes(self) -> int:
        with self._lock:
            return self._refreshes

    def snapshot(self) -> dict:
        """A JSON-able copy of every counter."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "errors": dict(self._errors),
                "requests_total": sum(self._requests.values()),
                "errors_total": sum(self._errors.values()),
                "retries": self._retries,
                "token_refreshes": self._refreshes,
                "bytes_up": self._bytes_up,
                "bytes_down": self._bytes_down,
            }
