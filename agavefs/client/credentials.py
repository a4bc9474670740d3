"""The credentials cache shared with agave-cli, tapis-cli and agavepy.

Design note
-----------
The file is ``$AGAVE_CACHE_DIR/current``, else ``~/.agave/current``: one JSON object
with the fields ``tenantid, baseurl, devurl, apikey, apisecret, username,
access_token, refresh_token, created_at, expires_in, expires_at``
(agave-api.md section 1).  The tools disagree on the *formats* of the last three,
so all of these are read:

* agave-cli (bash): every value a string; ``created_at`` = ``date +%s`` ("1511234567"),
  ``expires_in`` = "14400", ``expires_at`` = ``date -d @N`` ("Thu Sep 21 16:40:51 CDT 2017").
* agavepy ``tokens`` helpers: ``created_at`` = str(epoch), ``expires_in`` as the server
  sent it (int), ``expires_at`` = ``strftime("%a %b %-d %H:%M:%S %Z %Y")``.
* agavepy ``Token``: ``created_at`` an int, ``expires_at`` = ``time.ctime()`` (no zone).
* old CLIs wrote a JSON *list* of such objects; the first one is used.

The expiry is computed from ``created_at + expires_in`` when both are numbers (the
only unambiguous form), else from ``expires_at`` (an epoch number, ISO 8601, or the
ctime/date form above: "UTC"/"GMT"/numeric zones are honoured, any other zone
abbreviation is taken as local time, which is where those tools wrote it).

We write the agave-cli form (all strings, agavepy's ``expires_at`` layout) and keep
any unknown keys another tool put there.  Writes are atomic: a temp file created
0600 in the same directory, fsync, rename, fsync of the directory.  A file that
group or others can access is refused with a message saying ``chmod 600 FILE``.
Secrets never appear in ``repr``.

Locks: ``file_lock()`` takes ``fcntl.flock`` on ``<cache dir>/current.lock``; it
serialises token refreshes between processes (see auth.py).  A Credentials object
itself has no lock: its owner (the TokenManager) guards it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from agavefs.client.models import parse_time
from agavefs.errors import AuthError, ProtocolError

FIELDS = ("tenantid", "baseurl", "devurl", "apikey", "apisecret", "username", "access_token",
          "refresh_token", "created_at", "expires_in", "expires_at")
SECRET_FIELDS = ("apisecret", "access_token", "refresh_token")

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_CTIME_RE = re.compile(
    r"^(?:[A-Za-z]{3},?\s+)?([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})"
    r"(?:\s+([A-Za-z]{1,6}|[+-]\d{4}))?\s+(\d{4})$")


def default_cache_dir() -> str:
    env = os.environ.get("AGAVE_CACHE_DIR")
    return env if env else os.path.join(os.path.expanduser("~"), ".agave")


def cache_file(cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or default_cache_dir(), "current")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def parse_expiry_text(value: object) -> datetime | None:
    """``expires_at`` in any of the forms the tools write, or None."""
    num = _number(value)
    if num is not None:
        return datetime.fromtimestamp(num, timezone.utc) if num > 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = " ".join(value.split())
    m = _CTIME_RE.match(text)
    if m:
        mon = _MONTHS.get(m.group(1).lower())
        if mon is None:
            return None
        day, hh, mm, ss, zone, year = (int(m.group(2)), int(m.group(3)), int(m.group(4)),
                                       int(m.group(5)), m.group(6), int(m.group(7)))
        try:
            if zone and zone.upper() in ("UTC", "GMT", "Z", "UT"):
                return datetime(year, mon, day, hh, mm, ss, tzinfo=timezone.utc)
            if zone and zone[0] in "+-":
                off = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
                tz = timezone(off if zone[0] == "+" else -off)
                return datetime(year, mon, day, hh, mm, ss, tzinfo=tz)
            # no zone, or an abbreviation like CDT: the writer's local time
            return datetime(year, mon, day, hh, mm, ss).astimezone()
        except ValueError:
            return None
    try:
        return parse_time(text)
    except ProtocolError:
        return None


def format_expires_at(epoch: float) -> str:
    """agavepy's layout ("Wed Nov 26 05:30:00 UTC 2025"), in local time."""
    t = time.localtime(epoch)
    return time.strftime(f"%a %b {t.tm_mday} %H:%M:%S %Z %Y", t)


@contextlib.contextmanager
def file_lock(lock_path: str | None):
    """Exclusive flock on ``lock_path`` (created 0600) for the ``with`` block; no-op
    without a path or where it cannot be created (nothing to serialise writes of)."""
    if lock_path is None:
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_private_file(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (creating its directory 0700):
    a crash leaves the old file or the new one, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass(eq=False)
class Credentials:
    tenantid: str = ""
    baseurl: str = ""
    devurl: str = ""
    apikey: str = ""
    apisecret: str = ""
    username: str = ""
    access_token: str = ""
    refresh_token: str = ""
    created_at: object = ""  # str, int or float, as the writing tool chose
    expires_in: object = ""
    expires_at: object = ""
    path: str | None = field(default=None, repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    # -- loading -----------------------------------------------------------------
    @classmethod
    def load(cls, cache_dir: str | None = None, *, path: str | None = None,
             check_mode: bool = True) -> "Credentials":
        """Read the cache file; AuthError when missing, unreadable, unsafe or bad."""
        path = path or cache_file(cache_dir)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise AuthError(f"not logged in: no credentials file {path}; run "
                            f"`agavefs login --base-url URL --username USER`") from None
        except OSError as exc:
            raise AuthError(f"cannot read credentials file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise AuthError(f"credentials file {path} is not a regular file")
            if check_mode and st.st_mode & 0o077:
                raise AuthError(
                    f"credentials file {path} can be read by other users (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` and retry")
            raw = f.read(1 << 20)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AuthError(f"credentials file {path} is not valid JSON; log in again with "
                            f"`agavefs login`") from None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            data = data[0]
        if not isinstance(data, dict):
            raise AuthError(f"credentials file {path} does not hold a JSON object")
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data: dict, *, path: str | None = None) -> "Credentials":
        known = {}
        for name in FIELDS:
            value = data.get(name, "")
            if value is None:
                value = ""
            if name in ("created_at", "expires_in", "expires_at"):
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    value = ""
            elif not isinstance(value, str):
                value = str(value)
            known[name] = value
        extra = {k: v for k, v in data.items() if k not in FIELDS}
        return cls(**known, path=path, extra=extra)

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in FIELDS}
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    # -- saving ------------------------------------------------------------------
    def save(self, path: str | None = None) -> str:
        """Write atomically with mode 0600 (creating the directory 0700)."""
        path = path or self.path or cache_file()
        data = json.dumps(self.to_dict(), indent=None, separators=(", ", ": ")).encode("utf-8")
        write_private_file(path, data + b"\n")
        self.path = path
        return path

    @property
    def lock_path(self) -> str | None:
        return self.path + ".lock" if self.path else None

    def file_lock(self):
        """Exclusive flock on the lock file next to the cache (no-op without a path)."""
        return file_lock(self.lock_path)

    # -- tokens --------------------------------------------------------------------
    def expiry(self) -> datetime | None:
        """When the access token expires (aware), or None when unknown."""
        created, lifetime = _number(self.created_at), _number(self.expires_in)
        if created is None and isinstance(self.created_at, str) and self.created_at.strip():
            parsed = parse_expiry_text(self.created_at)
            created = parsed.timestamp() if parsed else None
        if created is not None and created > 0 and lifetime is not None:
            return datetime.fromtimestamp(created + lifetime, timezone.utc)
        return parse_expiry_text(self.expires_at)

    def lifetime(self) -> float | None:
        return _number(self.expires_in)

    def seconds_left(self, now: float | None = None) -> float | None:
        exp = self.expiry()
        if exp is None:
            return None
        return exp.timestamp() - (time.time() if now is None else now)

    def set_token(self, token: dict, now: float | None = None) -> None:
        """Store an OAuth token answer (access, refresh, lifetime) in agave-cli form."""
        now = int(time.time() if now is None else now)
        self.access_token = str(token["access_token"])
        if token.get("refresh_token"):
            self.refresh_token = str(token["refresh_token"])
        lifetime = _number(token.get("expires_in"))
        lifetime = int(lifetime) if lifetime is not None and lifetime > 0 else 14400
        self.created_at = str(now)
        self.expires_in = str(lifetime)
        self.expires_at = format_expires_at(now + lifetime)

    def adopt_token(self, other: "Credentials") -> None:
        for name in ("access_token", "refresh_token", "created_at", "expires_in", "expires_at"):
            setattr(self, name, getattr(other, name))

    def older_than(self, other: "Credentials") -> bool:
        """Was this token issued before ``other``'s?  (False when either is unknown.)"""
        mine, theirs = _number(self.created_at), _number(other.created_at)
        return mine is not None and theirs is not None and mine < theirs

    def same_identity(self, other: "Credentials") -> bool:
        """Same gateway, user and OAuth client (so its tokens are usable by us)."""
        return (self.baseurl.rstrip("/") == other.baseurl.rstrip("/")
                and self.username == other.username and self.apikey == other.apikey)

    def secrets(self) -> list[str]:
        return [v for v in (self.apisecret, self.access_token, self.refresh_token)
                if isinstance(v, str) and len(v) >= 4]

    def __repr__(self) -> str:
        shown = {name: getattr(self, name) for name in FIELDS if name not in SECRET_FIELDS}
        hidden = {name: "***" for name in SECRET_FIELDS if getattr(self, name)}
        return f"Credentials({shown | hidden}, path={self.path!r})"

    __str__ = __repr__
