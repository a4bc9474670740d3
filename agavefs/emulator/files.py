"""The files service's rules, read side: listings, downloads, history, pems.

Design note.  :class:`FileService` owns the namespace (``paths.Namespace``), the
permission rules (``access.Access``) and the state (``state.State``); it returns
plain JSON-ready dicts and raises :class:`AgaveError` with the reference's statuses
and messages (taken from the Agave 2.2.27 files-api sources).  The write side lives
in ``manage.py``.  Order of checks follows the real resources: for reads the path
must exist (404) before permission is checked (403).  ``base`` arguments are the
public base URL used in ``_links`` (hrefs use the ``//absolute`` form, as Agave's do).

No lock here: each call works on the file system directly (listings are recomputed
per request, as the real server does) and the state serialises itself.  stdlib only.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat as stat_mod
import time
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO

from .access import ALL, NAMES, PERMISSIONS, Access, bits_from_grants, owner_of
from .errors import AgaveError, forbidden, not_found
from .paths import Namespace, Resolved, join, name_of
from .state import State

DIR_LENGTH = 4096
PAGE_DEFAULT = 100
READ_DENIED = "User does not have access to view the requested resource"


def agave_time(ts: float) -> str:
    """Joda's DateTime.toString(): 2017-07-20T13:28:30.000-05:00 (server local time)."""
    lt = time.localtime(ts)
    off = lt.tm_gmtoff or 0
    sign = "-" if off < 0 else "+"
    off = abs(off)
    ms = int(ts * 1000) % 1000
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', lt)}.{ms:03d}{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


def mime_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def quote_path(apath: str) -> str:
    return urllib.parse.quote(apath, safe="/")


@dataclass
class Download:
    file: BinaryIO | None   # None for HEAD
    name: str
    offset: int
    length: int
    size: int
    mtime: float
    status: int
    content_range: str | None


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.I)


def plan_range(header: str | None, size: int, mode: str) -> tuple[int, int, int, str | None]:
    """-> (status, offset, length, Content-Range) for one ``bytes=a-b`` range."""
    whole = (200, 0, size, None)
    if mode == "ignore" or not header:
        return whole
    m = _RANGE.fullmatch(header)
    if not m or (m[1] == "" and m[2] == ""):
        return whole  # several ranges or garbage: ignored, as RFC 7233 allows
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    if m[1] == "":  # suffix range
        n = int(m[2])
        if mode == "agave":
            raise AgaveError(416, "Specified Range lower bound outside bounds of file", unsatisfiable)
        if n == 0 or size == 0:
            raise AgaveError(416, "Requested Range Not Satisfiable", unsatisfiable)
        start, end = max(0, size - n), size - 1
        return 206, start, end - start + 1, f"bytes {start}-{end}/{size}"
    start = int(m[1])
    end = int(m[2]) if m[2] else None
    if mode == "agave":
        if end is not None and end < start:
            raise AgaveError(416, "Specified Range upper bound less than lower bound", unsatisfiable)
        if start > size:
            raise AgaveError(416, "Specified Range lower bound outside bounds of file", unsatisfiable)
        last = size - 1 if end is None else end
        if (start + 1 if end is None else end + 1) > size:
            raise AgaveError(416, "Specified Range upper bound outside bounds of file", unsatisfiable)
        return 200, start, last - start + 1, f"bytes {start}-{last}/{size}"
    # rfc
    if end is not None and end < start:
        return whole
    if start >= size:
        raise AgaveError(416, "Requested Range Not Satisfiable", unsatisfiable)
    last = size - 1 if end is None else min(end, size - 1)
    return 206, start, last - start + 1, f"bytes {start}-{last}/{size}"


class FileService:
    def __init__(self, ns: Namespace, state: State, system_id: str, range_mode: str = "agave"):
        self.ns = ns
        self.state = state
        self.access = Access(state)
        self.system_id = system_id
        self.range_mode = range_mode

    # -- JSON shapes ---------------------------------------------------------------
    def media_link(self, base: str, apath: str) -> str:
        return f"{base}/files/v2/media/system/{self.system_id}/{quote_path(apath)}"

    def system_link(self, base: str) -> str:
        return f"{base}/systems/v2/{self.system_id}"

    def entry(self, base: str, apath: str, name: str, st: os.stat_result, permission: str,
              with_history: bool = False) -> dict:
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        links = {"self": {"href": self.media_link(base, apath)}, "system": {"href": self.system_link(base)}}
        if with_history:
            links["history"] = {"href": f"{base}/files/v2/history/system/{self.system_id}/{quote_path(apath)}"}
        return {
            "name": name,
            "path": apath,
            "lastModified": agave_time(st.st_mtime),
            "length": DIR_LENGTH if is_dir else st.st_size,
            "permissions": permission,
            "format": "folder" if is_dir else "raw",
            "mimeType": "text/directory" if is_dir else mime_type(name),
            "type": "dir" if is_dir else "file",
            "system": self.system_id,
            "_links": links,
        }

    def logical_file(self, base: str, apath: str, owner: str, status: str | None, native_format: str,
                     source: str | None, uuid: str | None = None) -> dict:
        """The LogicalFile JSON that upload and manage operations answer with."""
        return {
            "name": name_of(apath),
            "uuid": uuid or make_uuid(),
            "owner": owner,
            "internalUsername": None,
            "lastModified": agave_time(time.time()),
            "source": source,
            "path": apath,
            "status": status,
            "systemId": self.system_id,
            "nativeFormat": native_format,
            "_links": {
                "self": {"href": self.media_link(base, apath)},
                "system": {"href": self.system_link(base)},
                "profile": {"href": f"{base}/profiles/v2/{owner}"},
                "history": {"href": f"{base}/files/v2/history/system/{self.system_id}/{quote_path(apath)}"},
            },
        }

    # -- helpers -------------------------------------------------------------------
    def existing(self, apath: str) -> Resolved:
        r = self.ns.resolve(apath)
        if not r.exists:
            raise not_found()
        return r

    # -- listings ------------------------------------------------------------------
    def listing(self, user: str, apath: str, base: str, limit: int, offset: int) -> list[dict]:
        r = self.existing(apath)
        self.access.require(user, r, "read", READ_DENIED)
        grants = None if owner_of(r.apath) == user else self.state.grants_of(user)

        def perm(p: str, real: str | None = None) -> str:
            # a symlinked entry is used with the rights on both its path and its target
            # (Access.can checks both): report what a request would be allowed
            bits = [True, True, True]
            for q in {p, real or p}:
                if owner_of(q) != user:
                    bits = [a and b for a, b in zip(bits, bits_from_grants(grants or {}, q))]
            return NAMES[tuple(bits)]

        if r.is_file:
            page = [self.entry(base, r.apath, name_of(r.apath), r.st, perm(r.apath, r.real_apath), True)]
            return page[offset:offset + limit]
        out: list[dict] = []
        if offset == 0 and limit > 0:
            out.append(self.entry(base, r.apath, ".", r.st, perm(r.apath, r.real_apath), True))
        first = max(0, offset - 1)
        try:
            with os.scandir(r.real) as it:
                entries = sorted(it, key=lambda e: (e.name.casefold(), e.name))
        except OSError as exc:
            raise AgaveError(400, f"Failed to retrieve file listing for {apath}: {exc.strerror}") from None
        skipped = 0
        for e in entries:  # visibility is decided while paging, so hidden names never count
            if len(out) >= limit:
                break
            visible, st = self.ns.child_visible(r.real, e, need_stat=skipped >= first)
            if not visible:
                continue
            if skipped < first:
                skipped += 1
                continue
            child = join(r.apath, e.name)
            real = self.ns.to_apath(os.path.realpath(os.path.join(r.real, e.name))) if e.is_symlink() else None
            out.append(self.entry(base, child, e.name, st, perm(child, real)))
        return out

    # -- downloads -----------------------------------------------------------------
    def download(self, user: str, apath: str, range_header: str | None, head: bool = False) -> Download:
        r = self.existing(apath)
        if r.is_dir:
            raise AgaveError(501, "Directory downloads not supported")
        self.access.require(user, r, "read", READ_DENIED)
        f = open(r.real, "rb", buffering=0)
        try:
            st = os.fstat(f.fileno())
            status, offset, length, content_range = plan_range(range_header, st.st_size, self.range_mode)
        except BaseException:
            f.close()
            raise
        if head:
            f.close()
            f = None
        else:
            self.state.history_add(r.apath, "DOWNLOAD", user, "File was downloaded")
        return Download(f, name_of(r.apath), offset, length, st.st_size, st.st_mtime, status, content_range)

    # -- history -------------------------------------------------------------------
    def history(self, user: str, apath: str, limit: int, offset: int) -> list[dict]:
        r = self.ns.resolve(apath)
        has = self.state.history_exists(r.apath)
        if not r.exists and not has:
            raise not_found()
        self.access.require(user, r, "read", "User does not have permission to view this job history")
        if not has:
            raise not_found(f"No history found on system {self.system_id} for {r.apath}")
        return [{"status": e["status"], "created": agave_time(e["created"]), "createdBy": e["createdBy"],
                 "description": e["description"]} for e in self.state.history_list(r.apath, limit, offset)]

    # -- pems ------------------------------------------------------------------------
    def pem_json(self, base: str, apath: str, username: str, bits: tuple[bool, bool, bool], recursive: bool) -> dict:
        return {
            "username": username,
            "internalUsername": None,
            "permission": {"read": bits[0], "write": bits[1], "execute": bits[2]},
            "recursive": recursive,
            "_links": {
                "self": {"href": f"{base}/files/v2/pems/system/{self.system_id}/{quote_path(apath)}"
                                 f"?username.eq={urllib.parse.quote(username)}"},
                "file": {"href": self.media_link(base, apath)},
                "profile": {"href": f"{base}/profiles/v2/{urllib.parse.quote(username)}"},
            },
        }

    def pems_list(self, user: str, apath: str, base: str, limit: int, offset: int) -> list[dict]:
        r = self.existing(apath)
        self.access.require(user, r, "read", READ_DENIED)
        owner = owner_of(r.apath)
        pems = [self.pem_json(base, r.apath, owner, ALL, True)] if owner else []
        pems += [self.pem_json(base, r.apath, u, PERMISSIONS[p], rec)
                 for u, p, rec in self.state.grants_on(r.apath) if u != owner]
        return pems[offset:offset + limit]

    def pems_update(self, user: str, apath: str, base: str, users: dict, body: dict) -> tuple[int, list[dict]]:
        username = body.get("username")
        if not isinstance(username, str) or not username or username.lower() == "null":
            raise AgaveError(400, "No username specified")
        perm = body.get("permission")
        valid = ",".join(PERMISSIONS)
        if not isinstance(perm, str) or perm.upper() not in PERMISSIONS:
            raise AgaveError(400, f"Invalid permission value. Valid values are: {valid}")
        perm = perm.upper()
        r = self.existing(apath)
        if owner_of(r.apath) != user or owner_of(r.real_apath) != user:
            raise forbidden("User does not have permission to manage permissions on this file or directory.")
        if username not in users:
            raise AgaveError(400, f"No user found matching {username}")
        if username == user:
            raise AgaveError(400, "The owner's permissions cannot be changed")
        recursive = r.is_dir and str(body.get("recursive", "false")).lower() in ("true", "1", "yes", "on")
        self.state.grant_clear(r.apath, username, recursive=recursive)
        if perm == "NONE":
            self.state.history_add(r.apath, "PERMISSION_REVOKE", user, f"All permissions revoked for {username}")
            return 200, [self.pem_json(base, r.apath, username, PERMISSIONS["NONE"], recursive)]
        self.state.grant_set(r.apath, username, perm, recursive)
        self.state.history_add(r.apath, "PERMISSION_GRANT", user,
                               f"{perm} permission granted to {username}" + (" recursively" if recursive else ""))
        return 201, [self.pem_json(base, r.apath, username, PERMISSIONS[perm], recursive)]

    def pems_clear(self, user: str, apath: str, recursive: bool) -> None:
        r = self.ns.resolve(apath)
        if owner_of(r.apath) != user or owner_of(r.real_apath) != user:
            raise forbidden(f"User does not have access to change permissions on {apath}")
        if not r.exists:
            raise not_found()
        self.state.grant_clear(r.apath, None, recursive=recursive)
        self.state.history_add(r.apath, "PERMISSION_REVOKE", user, "All permissions revoked")


def make_uuid() -> str:
    """Something shaped like Agave's UUIDs: 0001409758089943-5056a550b8-0001-002."""
    return f"{int(time.time() * 1000):016d}-{os.urandom(5).hex()}-0001-002"
