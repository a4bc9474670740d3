"""Namespace operations of the VFS: mkdir, rmdir, unlink, rename.

Design note
-----------
A mixin of ``VFS`` (core.py), which owns the state these methods use (``lock``,
``nodes``, ``meta``, ``writeback``...).  Every operation is synchronous on the server,
except for a file whose only version is still pending upload: that one is renamed
or deleted locally (the pending upload is retargeted or cancelled, see
writeback.py).  The server refuses to rename onto an existing name, so a rename over
a file goes through ``replace_remote`` (aside, in place, delete).

Locks: as in core.py (``node.ns_lock`` -> ``lock``); nothing here holds ``lock``
across a network call.
"""

from __future__ import annotations

import errno
import functools
import logging
import posixpath
import time
import uuid

from agavefs.errors import (AgaveFSError, AlreadyExists, InvalidArgument, IsADirectory, NotADirectory,
                            NotEmpty, NotFound, PermissionDenied, ProtocolError, Transient, Unsupported)
from agavefs.vfs.backend import Entry
from agavefs.vfs.nodes import BLOCK, FileNode, is_trash_name
from agavefs.vfs.writeback import is_temp_name, replace_remote, temp_path

log = logging.getLogger("agavefs.vfs")


def _forgets_when_unsure(method):
    """A change whose failure may leave it done on the server (a timeout, a frozen or
    restarting server) makes the cache forget what it knew of the paths and their
    directories, so that the next call asks the server instead of acting on a state
    that may be gone (and, say, deleting the target of a rename whose source had
    already moved)."""
    @functools.wraps(method)
    def change(self, *paths: str):
        try:
            return method(self, *paths)
        except (Transient, ProtocolError):
            for path in paths:
                self.meta.forget(path)
                self.meta.invalidate_listing(posixpath.dirname(path))
            raise
    return change


class NamespaceOps:
    """mkdir/rmdir/unlink/rename for ``VFS``."""

    # ------------------------------------------------------------------ namespace
    @_forgets_when_unsure
    def mkdir(self, path: str) -> None:
        self.check_path(path)
        self.check_new_name(path)
        self._readonly()
        if posixpath.dirname(path) == "/" and is_trash_name(posixpath.basename(path)):
            # desktops (GIO) trash by creating .Trash-UID at the top of a mount; refusing
            # it makes them offer permanent deletion instead of uploading a trash can
            raise Unsupported("no trash can on an Agave mount")
        self._parent_dir(path)
        if self._exists(path):
            raise AlreadyExists(path)
        if not self.backend.mkdir(path):
            raise AlreadyExists(path)
        now = time.time()
        me = Entry(posixpath.basename(path), True, BLOCK, now)
        self.meta.put(path, me)
        self.meta.put_listing(path, me, [])

    def _parent_dir(self, path: str) -> Entry:
        parent = self._entry(posixpath.dirname(path))
        if not parent.is_dir:
            raise NotADirectory(posixpath.dirname(path))
        return parent

    def _exists(self, path: str) -> bool:
        if self._local_node(path) is not None:
            return True
        try:
            self._entry(path)
            return True
        except NotFound:
            return False

    def _nodes_under(self, path: str) -> list[FileNode]:
        """Call with lock held."""
        prefix = path.rstrip("/") + "/"
        return [n for p, n in self.nodes.items() if p.startswith(prefix)]

    @_forgets_when_unsure
    def rmdir(self, path: str) -> None:
        self.check_path(path)
        self._readonly()
        if path == "/":
            raise AgaveFSError("cannot remove the mount root", errno=errno.EBUSY)
        entry = self._entry(path)
        if not entry.is_dir:
            raise NotADirectory(path)
        self._check_empty(path)
        self.backend.delete(path)
        self.meta.removed(path)

    def _check_empty(self, path: str) -> None:
        """NotEmpty unless the directory is empty on the server (a fresh listing; our
        own temporary files do not count) and has no pending local files."""
        with self.lock:
            if any(n.local for n in self._nodes_under(path)):
                raise NotEmpty(path)
        me, children = self.backend.list(path)
        if any(not is_temp_name(c.name) for c in children):
            self.meta.put_listing(path, me, children)
            raise NotEmpty(path)

    @_forgets_when_unsure
    def unlink(self, path: str) -> None:
        self.check_path(path)
        self._readonly()
        self._content_changed(path)
        with self.lock:
            node = self.nodes.get(path)
        if node is None or not node.local:
            entry = self._entry(path)
            if entry.is_dir:
                raise IsADirectory(path)
            if not entry.writable:
                raise PermissionDenied(path)
            self._remove_remote(path)
            self.meta.removed(path)
            with self.lock:
                self._orphan_readers(path)
            return
        with node.ns_lock:
            with self.lock:
                node.deleted = True
                jobs = list(node.jobs)
                remote = node.remote_exists
                self._drop_node(node)
                self._maybe_forget(node)
            for job in jobs:
                self.writeback.cancel(job)
            if remote is not False:
                try:
                    self._remove_remote(path)
                except NotFound:
                    pass
        self.meta.removed(path)
        with self.lock:
            self._orphan_readers(path)

    @_forgets_when_unsure
    def rename(self, old: str, new: str) -> None:
        self.check_path(old)
        self.check_path(new)
        self.check_new_name(new)
        self._readonly()
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise InvalidArgument("cannot move a directory into itself")
        self._content_changed(old)
        self._content_changed(new)
        src_node = self._local_node(old)
        src = self._node_entry_locked(src_node) if src_node else self._entry(old)
        self._parent_dir(new)
        dst_node = self._local_node(new)
        try:
            dst = self._node_entry_locked(dst_node) if dst_node else self._entry(new)
        except NotFound:
            dst = None
        if src.is_dir:
            if dst is not None and not dst.is_dir:
                raise NotADirectory(new)
            self._rename_dir(old, new, src, dst is not None)
        else:
            if dst is not None and dst.is_dir:
                raise IsADirectory(new)
            self._rename_file(old, new, src, src_node, dst is not None, dst_node)

    def _node_entry_locked(self, node: FileNode) -> Entry:
        with self.lock:
            return self._node_entry(node)

    def _rename_file(self, old: str, new: str, src: Entry, src_node: FileNode | None, dst_exists: bool,
                     dst_node: FileNode | None) -> None:
        locks = sorted({id(n): n for n in (src_node, dst_node) if n is not None}.values(), key=id)
        for n in locks:
            n.ns_lock.acquire()
        try:
            with self.lock:
                if src_node is not None and self.nodes.get(old) is not src_node:
                    # its upload landed while this waited for the lock (the finalize holds
                    # it): a plain remote file now, its node forgotten; do not bring it back
                    src_node = None
            dst_remote = dst_exists
            with self.lock:  # descriptors still reading the file being replaced from the server
                users = self._users_of_remote(new) if dst_exists else []
            if dst_node is not None:
                with self.lock:
                    dst_node.deleted = True
                    dst_jobs = list(dst_node.jobs)
                    dst_remote = dst_node.remote_exists is not False
                    self._drop_node(dst_node)
                    self._maybe_forget(dst_node)
                for job in dst_jobs:
                    self.writeback.cancel(job)
            src_remote = src_node is None or src_node.remote_exists is not False
            if src_remote:
                noted: list[str] = []
                try:
                    aside = replace_remote(self.backend, old, new,
                                           (lambda a: noted.append(self._note_aside(a))) if users else None)
                except NotFound:
                    self._forget_notes(noted)
                    if src_node is None:
                        raise
                    src_remote = False  # only the pending version exists
                    aside = None
                except BaseException:
                    self._forget_notes(noted)  # the old version is back in place (or logged)
                    raise
                if aside and noted:
                    with self.lock:
                        self._keep_aside(aside, noted[0], users)
                elif aside:
                    self._delete_quietly(aside)
            if not src_remote and dst_remote and users:
                # the pending version is uploaded in place of the file there later: the
                # descriptors open on that file keep it aside from now on
                try:
                    self._remove_remote(new)
                except NotFound:
                    pass
            if src_node is not None:
                with self.lock:
                    self._drop_node(src_node)
                    src_node.path = new
                    src_node.remote_exists = src_remote or dst_remote
                    self._add_node(src_node)
                    jobs = list(src_node.jobs)
                for job in jobs:
                    self.writeback.persist(job)
        finally:
            for n in reversed(locks):
                n.ns_lock.release()
        with self.lock:
            self._orphan_readers(new)
            self._move_readers(old, new)
        self.meta.removed(old)
        self.meta.put(new, Entry(posixpath.basename(new), False, src.size, src.mtime, src.readable,
                                 src.writable))

    # -- a remote file that goes while open (unlink, rename over) -----------------------
    # POSIX keeps a file that was unlinked or renamed over alive for the descriptors open
    # on it.  Those that read it from the server (a reader, or a writer whose copy of it
    # is not fetched yet) would find another file, or none, under its name: the server's
    # copy is moved aside to a hidden name instead of being deleted, the descriptors
    # follow it there, and the last one to close deletes it (NFS's "silly rename").  A
    # journal record (a tombstone) names it meanwhile: the next mount deletes it if this
    # one dies first.

    def _users_of_remote(self, path: str) -> list:
        """Call with lock held: the open descriptors that read the remote file at ``path``
        from the server: its readers, and those of a node whose copy of it is not
        fetched yet (opened for writing, not written)."""
        return [h for h in self.handles.values() if h.entries is None and (
            (h.node is None and h.reader is not None and h.path == path and not h.orphan)
            or (h.node is not None and h.node.path == path and h.node.base_pending))]

    def _remove_remote(self, path: str) -> None:
        """Delete the remote file at ``path``, or move it aside while descriptors still
        read it from the server."""
        with self.lock:
            users = self._users_of_remote(path)
        if not users:
            self.backend.delete(path)
            return
        aside = temp_path(posixpath.dirname(path))
        record = self._note_aside(aside)
        try:
            self.backend.rename(path, posixpath.basename(aside))
        except BaseException:
            self._forget_notes([record])
            raise
        with self.lock:
            self._keep_aside(aside, record, users)

    def _note_aside(self, aside: str, record: str | None = None) -> str | None:
        """Journal ``aside`` as a tombstone (the next mount deletes it); its record id.
        A journal that cannot be written only risks a hidden leftover: None, going on."""
        record = record or f"aside-{uuid.uuid4().hex[:16]}"
        try:
            self.store.write_record({"id": record, "path": aside, "cancelled": True, "leftovers": [aside]})
        except OSError as exc:
            log.warning("could not journal %s (%s); going on", aside, exc)
            return None
        return record

    def _forget_notes(self, records: list) -> None:
        for record in records:
            if record is not None:
                self.store.remove_record(record)

    def _keep_aside(self, aside: str, record: str, users: list) -> None:
        """Call with lock held: the remote file ``users`` read is at ``aside`` now."""
        for h in users:
            if h.node is not None:
                h.node.path = aside  # a deleted node: its copy is fetched from there
            else:
                h.path = h.reader.path = aside
        self._asides[aside] = record
        log.info("%d open descriptor(s) keep the replaced or deleted file at %s until closed",
                 len(users), aside)

    def _done_with(self, handle) -> None:
        """``handle`` was closed: the last descriptor of a file kept aside deletes it."""
        with self.lock:
            path = handle.node.path if handle.node is not None else handle.path
            if path not in self._asides or any(h.entries is None and (h.path == path or (
                    h.node is not None and h.node.path == path)) for h in self.handles.values()):
                return
            record = self._asides.pop(path)
        if self._delete_quietly(path):  # else its tombstone stays, for the next mount
            self._forget_notes([record])

    def _move_asides(self, old: str, new: str) -> list[tuple[str, str]]:
        """Call with lock held: the directory ``old`` is now ``new``, with the files kept
        aside in it (their readers follow with ``_move_readers``).  Returns the journal
        records to rewrite, (new path, record id), for the caller to write unlocked."""
        prefix = old.rstrip("/") + "/"
        rewrites = []
        for aside in [a for a in self._asides if a.startswith(prefix)]:
            moved = new + aside[len(old):]
            record = self._asides.pop(aside)
            self._asides[moved] = record
            if record is not None:
                rewrites.append((moved, record))
            for h in self.handles.values():
                if h.node is not None and h.node.path == aside:
                    h.node.path = moved
        return rewrites

    def _rename_dir(self, old: str, new: str, src: Entry, dst_exists: bool) -> None:
        prefix = old.rstrip("/") + "/"
        deadline = time.monotonic() + self.opts.op_timeout
        # uploads in flight below the directory have temporary files in it (cancelled ones
        # too, until they have deleted theirs): let them land.  The check and the move of
        # the pending nodes happen under one hold of the lock, under which an upload also
        # picks its target (WriteBack._step_upload): none can start in the old place after.
        while True:
            with self.lock:
                # a file below still being written and streamed: its stream has a temporary
                # file in the old place; drop the stream (the file uploads at its close)
                streams = [j for n in self._nodes_under(old) for j in n.jobs if j.streaming]
            for job in streams:
                self.writeback.cancel(job)
            with self.lock:
                busy = [j for n in self._nodes_under(old) for j in n.jobs
                        if j.state != "queued" and not j.cancelled]
                busy += self.writeback.remote_files_under(prefix)
                if not busy:
                    moved = self._nodes_under(old)
                    for node in moved:
                        self._drop_node(node)
                        node.path = new + node.path[len(old):]
                        self._add_node(node)
                    break
            if time.monotonic() > deadline:
                raise AgaveFSError(f"{old}: uploads below it are still in flight", errno=errno.EBUSY)
            busy[0].finished.wait(0.2)
        aside = None
        try:
            if dst_exists:
                aside = self._replace_empty_dir(old, new)
            elif posixpath.dirname(old) == posixpath.dirname(new):
                self.backend.rename(old, posixpath.basename(new))
            else:
                self.backend.move(old, new)
        except Exception:
            with self.lock:  # put the pending files back where they were
                for node in moved:
                    self._drop_node(node)
                    node.path = prefix + node.path[len(new) + 1:]
                    self._add_node(node)
            raise
        for node in moved:
            for job in list(node.jobs):
                self.writeback.persist(job)
        if aside is not None:
            self._delete_if_empty(aside)
        with self.lock:
            self._move_readers(old, new)
            rewrites = self._move_asides(old, new)
        for moved, record in rewrites:
            self._note_aside(moved, record)
        self.meta.removed(old)
        self.meta.forget(new)
        self.meta.put(new, Entry(posixpath.basename(new), True, src.size, src.mtime, src.readable,
                                 src.writable))

    def _replace_empty_dir(self, old: str, new: str) -> str | None:
        """rename(2) of a directory onto an empty one.  The server refuses to move
        onto an existing name, so the empty target is renamed aside, the source put
        in place, and the target put back if that fails: a source that is gone (moved
        meanwhile by someone else, or by a request of ours that timed out and was
        carried out late) costs nothing.  Returns the aside path."""
        self._check_empty(new)
        return replace_remote(self.backend, old, new)

    def _delete_if_empty(self, path: str) -> None:
        try:
            self._check_empty(path)
            self.backend.delete(path)
        except NotEmpty:
            log.warning("left %s in place: something was put in it meanwhile", path)
        except Exception as exc:  # noqa: BLE001 - a hidden empty leftover, not data
            log.warning("could not delete the replaced directory at %s: %s", path, exc)

    def _delete_quietly(self, path: str) -> bool:
        """Delete a hidden old version; False (logged) when it may still be there."""
        try:
            self.backend.delete(path)
        except NotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - a hidden leftover, not data
            log.warning("could not delete the old version at %s: %s", path, exc)
            return False
        return True

