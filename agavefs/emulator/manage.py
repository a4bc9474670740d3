"""The files service's rules, write side: mkdir, rename, move, copy, delete, upload.

Design note.  Statuses and messages follow the Agave 2.2.27 FileManagementResource
(see the reference): PUT parses the body, needs an ``action`` (400) that it knows
(501), checks permission on the URL path (read for copy, write otherwise: 403), then
that the URL path exists (404), then runs the action.  Uploads answer 202 once the
body is in a temp file under the state dir and hand it to the staging queue; errors
in the upload branch are 400 whatever their cause, as in the real service.

A user's home directory, /home and / can be neither deleted, renamed nor moved (the
server recreates homes at start; deleting one through the API is refused with 403).

Renames/moves go through ``os.rename`` on the directory entries themselves (a symlink
is moved, not its target); copies never follow symlinks inside the source tree and
never write through a symlink at the destination (O_NOFOLLOW; a link there is replaced).

Locks: ``self.lock`` serialises namespace changes (the "destination exists" check and
the change itself), so two concurrent renames cannot both win.  Downloads, listings
and staging copies do not take it.  State calls happen under it (state has its own lock;
order: Manager.lock -> State._lock, never the reverse).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
import uuid as uuid_mod

from .access import owner_of
from .errors import AgaveError, forbidden, not_found
from .files import FileService
from .paths import NAME_MAX, Resolved, is_within, join, normalize, parent_of

ACTIONS = ("mkdir", "rename", "move", "copy")


def text(body: dict, key: str) -> str | None:
    value = body.get(key)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value if isinstance(value, str) else None


def is_protected(apath: str) -> bool:
    parts = apath.strip("/").split("/")
    return apath in ("/", "/home") or (len(parts) == 2 and parts[0] == "home")


class Manager:
    def __init__(self, svc: FileService, staging_dir: str, delete_401: bool = False):
        self.svc = svc
        self.ns = svc.ns
        self.state = svc.state
        self.access = svc.access
        self.staging_dir = staging_dir
        self.delete_401 = delete_401
        self.staging = None  # StagingQueue, attached by the server
        self.lock = threading.Lock()

    # -- PUT ---------------------------------------------------------------------------
    def manage(self, user: str, apath: str, base: str, body: dict) -> tuple[int, str | None, dict]:
        action = body.get("action")
        if action is None or (isinstance(action, str) and not action.strip()):
            raise AgaveError(400, "Please provide a file action to perform")
        op = str(action).strip().lower()
        if op not in ACTIONS:
            raise AgaveError(501, f"Action {str(action).upper()} not supported")
        r = self.ns.resolve(apath)
        if op == "copy":
            self.access.require(user, r, "read", f"User does not have access to copy the requested path {apath}")
        else:
            self.access.require(user, r, "write", f"User does not have access to modify the requested path {apath}")
        if not r.exists:
            raise not_found()
        return getattr(self, "_" + op)(user, r, base, body)

    def _result(self, base: str, user: str, apath: str) -> dict:
        r = self.ns.resolve(apath)
        return self.svc.logical_file(base, apath, user, "STAGING_COMPLETED", "dir" if r.is_dir else "raw",
                                     None)

    def _mkdir(self, user: str, r: Resolved, base: str, body: dict) -> tuple[int, str | None, dict]:
        dirpath = text(body, "path")
        if not dirpath:
            raise AgaveError(400, "No path value provided. Please provide the path of the new directory to "
                                  "create. Paths may be absolute or relative to the path given in the url.")
        if not r.is_dir:
            raise AgaveError(400, f"A file already exists at {r.apath}")
        newdir = normalize(r.apath + "/" + dirpath)
        denied = f"User does not have access to create the directory {newdir}"
        self.access.require(user, self.ns.resolve(newdir), "write", denied)
        with self.lock:
            target = self.ns.resolve(newdir)
            if target.exists:
                if target.is_dir:
                    return 200, f"Directory {newdir} already exists", self._result(base, user, newdir)
                raise AgaveError(400, f"A file already exists at {newdir}")
            cur = "/"
            for seg in newdir.strip("/").split("/"):
                cur = join(cur, seg)
                step = self.ns.resolve(cur)
                if step.exists:
                    if not step.is_dir:
                        raise AgaveError(400, f"A file already exists at {cur}")
                    continue
                self.access.require(user, step, "write", denied)
                try:
                    os.mkdir(step.real, 0o755)
                except FileExistsError:
                    raise AgaveError(400, f"A file already exists at {cur}") from None
                except OSError as exc:
                    raise AgaveError(400, f"Failed to create directory {cur}: {exc.strerror}") from None
                self.state.history_add(cur, "CREATED", user, f"New directory created at {self.svc.media_link(base, cur)}")
        return 201, None, self._result(base, user, newdir)

    def _still_there(self, r: Resolved) -> Resolved:
        """The source again, under the lock: a concurrent rename, move or delete may have
        taken it since the request was checked (the service answers 404 then, not a
        failed filesystem call)."""
        again = self.ns.resolve(r.apath)
        if not again.exists:
            raise not_found()
        return again

    def _dest_checks(self, r: Resolved, target: Resolved, kind: str) -> None:
        """Common checks of move and copy destinations; call with self.lock held."""
        if r.is_dir and is_within(target.apath, r.apath):
            raise AgaveError(400, f"Cannot {kind} a folder into itself: {target.apath}")
        parent = self.ns.resolve(parent_of(target.apath))
        if not parent.is_dir:
            raise not_found(f"Destination folder {parent.apath} does not exist")
        if target.exists:
            if r.is_dir and target.is_file:
                raise AgaveError(400, f"File at {target.apath} already exists")
            if r.is_file and target.is_dir:
                raise AgaveError(400, f"Folder at {target.apath} already exists")

    def _rename(self, user: str, r: Resolved, base: str, body: dict) -> tuple[int, str | None, dict]:
        new_name = text(body, "path")
        if not new_name:
            raise AgaveError(400, "No 'path' value provided. Please provide the new name of the file or "
                                  "folder in the 'path' attribute.")
        if r.apath == "/":
            raise AgaveError(400, "No path specified.")
        new = normalize(parent_of(r.apath) + "/" + new_name)
        return self._relocate(user, r, base, new, "rename")

    def _move(self, user: str, r: Resolved, base: str, body: dict) -> tuple[int, str | None, dict]:
        dest = text(body, "path")
        if not dest:
            raise AgaveError(400, "Please specify a destination location")
        return self._relocate(user, r, base, normalize(dest), "move")

    def _relocate(self, user: str, r: Resolved, base: str, new: str, kind: str) -> tuple[int, str | None, dict]:
        if is_protected(r.apath):
            raise forbidden(f"User does not have access to {kind} {r.apath}")
        target = self.ns.resolve(new)
        denied = ("User does not have access to rename the requested resource" if kind == "rename"
                  else f"User does not have access to move data to {new}")
        self.access.require(user, target, "write", denied)
        with self.lock:
            r = self._still_there(r)
            target = self.ns.resolve(new)
            if kind == "rename" and (target.exists or os.path.lexists(target.entry)):
                raise AgaveError(400, f"A File or folder at {new} already exists")
            self._dest_checks(r, target, kind)
            if target.exists or os.path.lexists(target.entry):
                raise AgaveError(400, f"Destination already exists: {new}")
            try:
                os.rename(r.entry, target.entry)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise AgaveError(400, f"Failed to {kind} {r.apath} to {new}: {exc.strerror}") from None
                shutil.move(r.entry, target.entry)
            self.state.rekey(r.apath, new)
            if kind == "rename":
                self.state.history_add(new, "RENAME", user, f"Renamed by {user} from {r.apath} to {new}")
            else:
                self.state.history_add(new, "MOVED", user, f"Moved from {self.svc.media_link(base, r.apath)}"
                                                            f" to {self.svc.media_link(base, new)}")
        return 200, "Rename success" if kind == "rename" else "Move success", self._result(base, user, new)

    def _copy(self, user: str, r: Resolved, base: str, body: dict) -> tuple[int, str | None, dict]:
        dest = text(body, "path")
        if not dest:
            raise AgaveError(400, "Please specify a destination location")
        new = normalize(dest)
        target = self.ns.resolve(new)
        self.access.require(user, target, "write", f"User does not have access to copy data to {new}")
        if new == r.apath:
            raise AgaveError(400, "Source and destination locations cannot be the same.")
        with self.lock:
            r = self._still_there(r)
            target = self.ns.resolve(new)
            self._dest_checks(r, target, "copy")
            existed = target.exists
            try:
                if r.is_dir:
                    self._copy_tree(r.real, target.entry)
                else:
                    _copy_file(r.real, target.entry)
            except OSError as exc:
                raise AgaveError(400, f"Copy failed: {exc.strerror or exc}") from None
            self.state.history_add(new, "OVERWRITTEN" if existed else "CREATED", user,
                                   f"File item copied from {self.svc.media_link(base, r.apath)}")
        return 200, "Copy success", self._result(base, user, new)

    def _copy_tree(self, src: str, dst: str) -> None:
        if os.path.islink(dst):
            os.unlink(dst)
        if not os.path.isdir(dst):
            os.mkdir(dst, 0o755)
        with os.scandir(src) as it:
            entries = list(it)
        for e in entries:
            if e.is_symlink() or self.ns.is_hidden(e.path):
                continue  # never follow links inside a copied tree
            out = os.path.join(dst, e.name)
            if e.is_dir(follow_symlinks=False):
                if os.path.exists(out) and not os.path.isdir(out) and not os.path.islink(out):
                    raise AgaveError(400, f"Cannot overwrite the file {out[len(self.ns.root):]} with a folder")
                self._copy_tree(e.path, out)
            elif e.is_file(follow_symlinks=False):
                if os.path.isdir(out) and not os.path.islink(out):
                    raise AgaveError(400, f"Cannot overwrite the folder {out[len(self.ns.root):]} with a file")
                _copy_file(e.path, out)

    # -- DELETE ------------------------------------------------------------------------
    def delete(self, user: str, apath: str) -> None:
        r = self.ns.resolve(apath)
        if is_protected(r.apath):
            raise forbidden(f"User does not have permission to delete {apath}")
        if not self.access.can(user, r, "write"):
            status = 401 if self.delete_401 and not self.state.history_exists(r.apath) else 403
            raise AgaveError(status, f"User does not have permission to delete {apath}")
        with self.lock:
            r = self.ns.resolve(apath)
            if not r.exists and not os.path.islink(r.entry):
                raise not_found(f"Remote path {apath} does not exist.")
            try:
                if os.path.islink(r.entry) or not r.is_dir:
                    os.unlink(r.entry)
                else:
                    shutil.rmtree(r.entry)
            except OSError as exc:
                raise AgaveError(500, f"Failed to delete {apath} on the remote system.") from exc
            self.state.history_mark_deleted(r.apath, user, "Deleted via API")
            self.state.grants_drop_subtree(r.apath)

    # -- uploads -----------------------------------------------------------------------
    def upload_dir(self, user: str, apath: str) -> Resolved:
        r = self.ns.resolve(apath)
        if not r.exists:
            raise not_found(f"Destination path {apath} does not exist.")
        if not r.is_dir:
            raise AgaveError(400, f"Destination path {apath} is not a directory")
        if not self.access.can(user, r, "write"):
            raise AgaveError(400, f"User does not have access to modify {apath}")
        return r

    def new_temp(self) -> tuple[str, str]:
        job_id = uuid_mod.uuid4().hex
        return job_id, os.path.join(self.staging_dir, job_id + ".upload")

    def accept_upload(self, user: str, base: str, dir_apath: str, job_id: str, temp: str, size: int,
                      field_name: str | None, part_filename: str | None) -> dict:
        if field_name and field_name.strip():
            name = field_name.strip().split("/")[-1]  # used as given; "/" can never be in a name
        else:  # the part's filename, directories stripped like FilenameUtils.getName (/ and \\)
            name = re.split(r"[/\\]", (part_filename or "").strip())[-1]
        if not name or name in (".", ".."):
            raise AgaveError(400, "No file name was given for the upload")
        try:
            name_bytes = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            name_bytes = NAME_MAX + 1
        if "\x00" in name or name_bytes > NAME_MAX:
            raise AgaveError(400, f"Invalid file name {name[:40]!r}: at most {NAME_MAX} UTF-8 bytes, no NUL")
        self.upload_dir(user, dir_apath)
        target = self.ns.resolve(join(dir_apath, name))
        if target.is_dir:
            raise AgaveError(400, f"Destination path {target.apath} is a directory")
        if not self.access.can(user, target, "write"):
            raise AgaveError(400, f"User does not have access to modify {target.apath}")
        self.state.history_add(target.apath, "OVERWRITTEN" if target.exists else "CREATED", user,
                               "File uploaded" if not target.exists else "File overwritten by an upload")
        self.state.history_add(target.apath, "STAGING_QUEUED", user, "File/folder queued for staging")
        self.staging.submit(job_id, target.apath, temp, user, size)
        source = "http://127.0.0.1/" + (part_filename or name)
        owner = owner_of(target.apath) or user
        return self.svc.logical_file(base, target.apath, owner, "STAGING_QUEUED", "raw", source, job_id)

    def open_for_staging(self, apath: str) -> int:
        """Open the staging target for writing, in place (not truncated); re-validated."""
        parent = self.ns.resolve(parent_of(apath))
        if not parent.is_dir:
            raise OSError(errno.ENOENT, f"destination folder {parent.apath} no longer exists")
        target = self.ns.resolve(apath)
        if target.is_dir:
            raise OSError(errno.EISDIR, f"{apath} is now a directory")
        return os.open(target.real, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _copy_file(src: str, dst: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(dst, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        os.unlink(dst)  # a symlink at the destination is replaced, never written through
        fd = os.open(dst, flags, 0o644)
    with open(src, "rb") as fi, os.fdopen(fd, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
