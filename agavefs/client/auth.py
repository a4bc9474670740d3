"""OAuth calls (client creation, password and refresh grants) and token upkeep.

Design note
-----------
Agave gives one access token per OAuth client, shared by every process that uses
the same credentials cache; a refresh in one process kills the token in the others
and rotates the refresh token (agave-api.md section 1).  So :class:`TokenManager`:

* refreshes *before* expiry (``created_at + expires_in`` minus a margin of 10% of
  the lifetime, at most 60 s), and once when a request gets a gateway 401 fault;
* before refreshing, re-reads the cache file under an exclusive ``flock`` on
  ``current.lock``: if another process already wrote a different token for the
  same gateway/user/client, that token is adopted instead of refreshing (and its
  refresh token, the newest rotation, is the one used when a refresh is needed);
* writes each rotated token back atomically while still holding the flock (unless
  the file is gone, unreadable, or now holds another login: a user who logged in
  again with another client must not be overwritten by a running mount);
* a refused refresh becomes ``AuthError`` ("token refresh failed: log in again
  with `agavefs login ...`"), EACCES at the mount - never a crash or a loop (the
  transport allows at most one refresh per request).  The refused refresh token is
  not sent again: until the cache holds a newer one (or a new login, adopted), the
  same AuthError is answered from the cache file, without a request, however often
  the write-back retries.

Locks: ``_lock`` (a threading.Lock) guards the Credentials' token fields and
serialises refreshes between threads; it is taken *before* the cache file's flock
(lock order: ``_lock`` -> flock), and no HTTP request other than the refresh itself
is made while holding either.
"""

from __future__ import annotations

import logging
import threading

from agavefs.errors import AgaveFSError, AuthError, PermissionDenied, ProtocolError
from agavefs.client.credentials import Credentials
from agavefs.client.responses import parse_json, unwrap
from agavefs.client.transport import SAFE, Transport

MAX_MARGIN = 60.0


def login_hint(creds: Credentials) -> str:
    base = creds.baseurl or "URL"
    user = creds.username or "USER"
    return f"`agavefs login --base-url {base} --username {user}`"


# -- plain OAuth calls (also used by `agavefs login`) -----------------------------------

def create_client(transport: Transport, username: str, password: str, name: str,
                  description: str = "agavefs") -> dict:
    """POST /clients/v2; returns the result with consumerKey/consumerSecret."""
    resp = transport.request("POST", "/clients/v2", kind="client", label=f"/clients/v2 ({name})",
                             data={"clientName": name, "description": description},
                             auth=(username, password), retry=SAFE)
    result = unwrap(resp.content, "creating an OAuth client")
    if not isinstance(result, dict) or not isinstance(result.get("consumerKey"), str) \
            or not isinstance(result.get("consumerSecret"), str):
        raise ProtocolError("creating an OAuth client: the answer has no consumerKey/consumerSecret")
    transport.redact.add(result["consumerSecret"])
    return result


def delete_client(transport: Transport, username: str, password: str, name: str) -> None:
    from urllib.parse import quote

    transport.request("DELETE", "/clients/v2/" + quote(name, safe=""), kind="client",
                      label=f"/clients/v2/{name}", auth=(username, password))


def _token_call(transport: Transport, key: str, secret: str, form: dict, what: str) -> dict:
    resp = transport.request("POST", "/token", kind="token", label="/token", data=form,
                             auth=(key, secret), retry=SAFE)
    data = parse_json(resp.content)
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str) \
            or not data["access_token"]:
        raise ProtocolError(f"{what}: the token answer has no access_token")
    if data.get("refresh_token") is not None and not isinstance(data["refresh_token"], str):
        raise ProtocolError(f"{what}: the token answer has a malformed refresh_token")
    transport.redact.add(data["access_token"], data.get("refresh_token"))
    return data


def password_grant(transport: Transport, key: str, secret: str, username: str,
                   password: str) -> dict:
    transport.redact.add(password, secret)
    return _token_call(transport, key, secret,
                       {"grant_type": "password", "username": username, "password": password,
                        "scope": "PRODUCTION"}, "password grant")


def refresh_grant(transport: Transport, key: str, secret: str, refresh_token: str) -> dict:
    transport.redact.add(secret, refresh_token)
    return _token_call(transport, key, secret,
                       {"grant_type": "refresh_token", "refresh_token": refresh_token,
                        "scope": "PRODUCTION"}, "token refresh")


# -- token upkeep for a running client ------------------------------------------------------

class TokenManager:
    def __init__(self, creds: Credentials, transport: Transport, *, logger: logging.Logger):
        self.creds = creds
        self.transport = transport
        self.log = logger
        self._lock = threading.Lock()
        self._refused: tuple[str, AuthError] | None = None  # (refresh token, its refusal) under _lock
        transport.redact.add(*creds.secrets())

    def _margin(self) -> float:
        life = self.creds.lifetime()
        return min(MAX_MARGIN, max(0.1, (life if life and life > 0 else 14400) * 0.1))

    def _near_expiry(self) -> bool:
        left = self.creds.seconds_left()
        return left is not None and left < self._margin()

    def token(self) -> str:
        """The access token to send now (refreshed first when about to expire)."""
        with self._lock:
            token = self.creds.access_token
            near = self._near_expiry()
        if not token:
            raise AuthError(f"no access token in the credentials; log in with "
                            f"{login_hint(self.creds)}")
        if near:
            self._renew(failed=None)
            with self._lock:
                token = self.creds.access_token
        return token

    def recover(self, failed_token: str | None) -> str:
        """After a 401 fault: "current", "adopted" or "refreshed" (else AuthError)."""
        return self._renew(failed=failed_token)

    def expires_at(self):
        with self._lock:
            return self.creds.expiry()

    def _renew(self, failed: str | None) -> str:
        with self._lock:
            creds = self.creds
            if failed is not None and creds.access_token != failed:
                return "current"  # another thread already renewed it
            if failed is None and not self._near_expiry():
                return "current"
            with creds.file_lock():
                disk = self._reload()
                if disk is not None and disk.same_identity(creds) and not disk.older_than(creds):
                    stale = failed if failed is not None else creds.access_token
                    if disk.access_token and disk.access_token != stale:
                        usable = disk.seconds_left()
                        if usable is None or usable > self._margin():
                            creds.adopt_token(disk)
                            self.transport.redact.add(*creds.secrets())
                            self.log.info("using the token another process refreshed")
                            return "adopted"
                    if disk.refresh_token:
                        creds.refresh_token = disk.refresh_token  # the newest rotation
                # a cache that is gone, unreadable or now holds another login (other
                # gateway, user or client) is left alone: the token stays in memory
                try:
                    if self._refused is not None and self._refused[0] == creds.refresh_token:
                        raise AuthError(self._refused[1].message, status=self._refused[1].status)
                    self._refresh_locked(persist=disk is not None and disk.same_identity(creds))
                except AuthError as exc:
                    if creds.refresh_token:
                        self._refused = (creds.refresh_token, exc)
                    # our session is dead (a refresh whose answer was lost already rotated
                    # the refresh token, or it was revoked): a newer login of the same user
                    # on the same gateway, with another OAuth client, is what "log in again"
                    # produced; take it, so the running mount recovers without a remount
                    if disk is not None and self._adopt_new_login(disk):
                        return "adopted"
                    raise
                return "refreshed"

    def _adopt_new_login(self, disk: Credentials) -> bool:
        """Call with the locks held: switch to ``disk``'s client and tokens when it is a
        newer, usable login of the same user on the same gateway."""
        creds = self.creds
        if (disk.baseurl.rstrip("/") != creds.baseurl.rstrip("/") or disk.username != creds.username
                or disk.apikey == creds.apikey or not disk.access_token or disk.older_than(creds)):
            return False
        usable = disk.seconds_left()
        if usable is not None and usable <= self._margin() and not disk.refresh_token:
            return False
        for name in ("apikey", "apisecret"):
            setattr(creds, name, getattr(disk, name))
        creds.adopt_token(disk)
        self.transport.redact.add(*creds.secrets())
        self.log.warning("the session could not be refreshed; using the new login found in %s", creds.path)
        return True

    def _reload(self) -> Credentials | None:
        if not self.creds.path:
            return None
        try:
            return Credentials.load(path=self.creds.path)
        except AuthError as exc:
            self.log.warning("cannot re-read the credentials cache: %s", exc)
            return None

    def _refresh_locked(self, persist: bool = True) -> None:
        """Refresh with ``_lock`` and the file lock held; persist the result."""
        creds = self.creds
        if not (creds.apikey and creds.apisecret and creds.refresh_token):
            raise AuthError(f"token expired and the credentials cannot refresh it; log in "
                            f"again with {login_hint(creds)}")
        self.transport.stats.refresh()
        try:
            answer = refresh_grant(self.transport, creds.apikey, creds.apisecret,
                                   creds.refresh_token)
        except (PermissionDenied, ProtocolError) as exc:
            raise AuthError(f"token refresh failed: log in again with {login_hint(creds)} "
                            f"({exc.message})", status=exc.status) from None
        except AgaveFSError as exc:
            if exc.status in (400, 401, 403):
                raise AuthError(f"token refresh failed: log in again with {login_hint(creds)} "
                                f"({exc.message})", status=exc.status) from None
            raise
        creds.set_token(answer)
        self.transport.redact.add(*creds.secrets())
        self.log.info("access token refreshed (valid %s s)", creds.expires_in)
        if creds.path and not persist:
            self.log.info("not writing the refreshed token: the credentials cache is gone or "
                          "holds another login")
        elif creds.path:
            try:
                creds.save()
            except OSError as exc:
                self.log.warning("could not write the refreshed token to %s: %s", creds.path,
                                 exc.strerror)
