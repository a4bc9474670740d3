"""Who may do what: ownership by position plus ``pems`` grants.

Design note.  The system is a shared storage system whose homeDir is /home: a user
owns /home/NAME and everything below it (all rights, shown as "ALL" in listings, as
the real server does for the owner).  Anything else is reachable only through a grant
stored by ``pems`` (``grants`` table).  A grant applies to its own path and, when
recursive, to everything below it; the most specific grant wins (its own path first,
then the nearest recursive ancestor).  Paths outside every home (/, /home, /shared)
belong to nobody: nobody can be granted them either, since only the owner may grant.

Checks are made on the lexical Agave path and on the symlink-resolved one (see
``paths.py``): both must allow the operation.  stdlib only.
"""

from __future__ import annotations

from .errors import AgaveError
from .paths import Resolved, parent_of
from .state import State

# name -> (read, write, execute)
PERMISSIONS: dict[str, tuple[bool, bool, bool]] = {
    "READ": (True, False, False),
    "WRITE": (False, True, False),
    "EXECUTE": (False, False, True),
    "READ_WRITE": (True, True, False),
    "READ_EXECUTE": (True, False, True),
    "WRITE_EXECUTE": (False, True, True),
    "ALL": (True, True, True),
    "NONE": (False, False, False),
}
NAMES = {bits: name for name, bits in PERMISSIONS.items()}
NONE = PERMISSIONS["NONE"]
ALL = PERMISSIONS["ALL"]


def owner_of(apath: str) -> str | None:
    parts = apath.split("/")
    if len(parts) >= 3 and parts[1] == "home" and parts[2]:
        return parts[2]
    return None


def home_of(user: str) -> str:
    return f"/home/{user}"


def bits_from_grants(grants: dict[str, tuple[str, bool]], apath: str) -> tuple[bool, bool, bool]:
    if apath in grants:
        return PERMISSIONS[grants[apath][0]]
    p = apath
    while p != "/":
        p = parent_of(p)
        g = grants.get(p)
        if g is not None and g[1]:
            return PERMISSIONS[g[0]]
    return NONE


class Access:
    def __init__(self, state: State):
        self.state = state

    def bits(self, user: str, apath: str, grants: dict | None = None) -> tuple[bool, bool, bool]:
        if owner_of(apath) == user:
            return ALL
        if grants is None:
            grants = self.state.grants_of(user)
        return bits_from_grants(grants, apath)

    def name(self, user: str, apath: str, grants: dict | None = None) -> str:
        return NAMES[self.bits(user, apath, grants)]

    def can(self, user: str, r: Resolved | str, what: str) -> bool:
        index = {"read": 0, "write": 1, "execute": 2}[what]
        paths = {r} if isinstance(r, str) else {r.apath, r.real_apath}
        if all(owner_of(p) == user for p in paths):
            return True
        grants = self.state.grants_of(user)
        return all(self.bits(user, p, grants)[index] for p in paths)

    def require(self, user: str, r: Resolved | str, what: str, message: str, status: int = 403) -> None:
        if not self.can(user, r, what):
            raise AgaveError(status, message)
