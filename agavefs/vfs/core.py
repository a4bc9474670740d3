"""The VFS: POSIX file operations over a ``Backend``, with no FUSE and no HTTP.

Design note
-----------
Paths are mount-relative ("/", "/dir/file").  Every method either returns a value
or raises an ``agavefs.errors`` exception whose ``errno`` the FUSE adapter reports.

* Metadata comes from ``MetaCache`` (listings fill attributes, so ``ls -l`` costs the
  listing pages only).  Changes made through the mount update it at once.
* Reads of remote files go through ``RemoteReader`` (ranged reads, streaming
  read-ahead).  Files with local content (a ``FileNode`` with a spool file) are
  read from the spool: every process reads what any process wrote, before the
  server has it.
* Writes go to the spool.  The last close of a changed file seals its spool and
  queues a ``writeback.Job``; ``fsync`` (and ``flush`` with ``sync_close``) queue a
  snapshot and wait for the server to have it.
* Namespace operations are synchronous on the server (mkdir, rmdir, unlink,
  rename), except for files whose only version is still pending: those are
  retargeted or cancelled locally.

Locks (order: node.ns_lock -> lock -> MetaCache/SpoolStore/WriteBack internals):
``lock`` (an RLock) protects ``nodes``, ``_child_nodes``, ``handles`` and every
FileNode field.  It is never held across a network call or a large copy.
``node.ns_lock`` serializes the remote namespace steps on one file (see nodes.py).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import posixpath
import shutil
import stat as st
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from agavefs.errors import (AgaveFSError, AlreadyExists, InvalidArgument, IsADirectory, NameTooLong,
                            NotADirectory, NotEmpty, NotFound, PermissionDenied, ReadOnly, TimedOut,
                            Unsupported)
from agavefs.vfs.backend import Backend, Entry
from agavefs.vfs.metadata import ABSENT, MetaCache
from agavefs.vfs.nodes import FileNode
from agavefs.vfs.options import Options
from agavefs.vfs.reader import ReadBudget, RemoteReader
from agavefs.vfs.spool import SpoolFile, SpoolStore
from agavefs.vfs.writeback import Job, WriteBack, is_temp_name, replace_remote

log = logging.getLogger("agavefs.vfs")

NAME_MAX = 255


def is_trash_name(name: str) -> bool:
    return name == ".Trash" or name.startswith(".Trash-")
BLOCK = 4096
COPY_CHUNK = 4 * 1024 * 1024
RELIST_MAX = 1000  # a lookup miss re-lists a cached directory this small (<= 3 pages)


@dataclass
class Handle:
    path: str
    writable: bool
    node: FileNode | None = None
    reader: RemoteReader | None = None
    entries: list | None = None  # directory handles: the listing snapshot
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class VFS:
    def __init__(self, backend: Backend, opts: Options, spool_dir: str):
        self.backend = backend
        self.opts = opts
        self.lock = threading.RLock()
        self.meta = MetaCache(opts.attr_ttl, opts.dir_ttl, opts.negative_ttl, opts.max_cached_entries)
        self.nodes: dict[str, FileNode] = {}  # protected by lock
        self._child_nodes: dict[str, set[str]] = defaultdict(set)  # parent -> names; protected by lock
        self.handles: dict[int, Handle] = {}  # protected by lock
        self._fh = itertools.count(1)
        self.store = SpoolStore(spool_dir, opts.cache_max_size, fsync=opts.fsync_spool)
        self.budget = ReadBudget(opts.readahead_total)
        self.writeback = WriteBack(backend, self.store, self, workers=opts.upload_workers,
                                   staging_timeout=opts.staging_timeout)
        self.started = time.time()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def check_path(path: str) -> None:
        for part in path.split("/"):
            if not part:
                continue
            try:
                size = len(part.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidArgument(f"{path!r}: names must be valid UTF-8 on Agave") from None
            if size > NAME_MAX:
                raise NameTooLong(f"a name is longer than {NAME_MAX} bytes")
            if "\0" in part:
                raise InvalidArgument("a name contains a NUL byte")

    @staticmethod
    def check_new_name(path: str) -> None:
        """A name being created: agavefs's own temporary names are not for users (a
        file of that name would be stored but never listed)."""
        if is_temp_name(posixpath.basename(path)):
            raise InvalidArgument(f"{path!r}: names starting with .agavefs~ are reserved by agavefs")

    def _readonly(self) -> None:
        if self.opts.read_only:
            raise ReadOnly("mounted read-only")

    def _entry(self, path: str) -> Entry:
        """The remote entry of ``path``: cache first, then one stat request."""
        if is_temp_name(posixpath.basename(path)):
            raise NotFound(path)
        cached = self.meta.lookup(path)
        if cached is None and path != "/" and self._relist_for_lookup(posixpath.dirname(path)):
            cached = self.meta.lookup(path)
        if cached is ABSENT:
            raise NotFound(path)
        if cached is not None:
            return cached
        try:
            entry = self.backend.stat(path)
        except NotFound:
            self.meta.put_absent(path)
            raise
        self.meta.put(path, entry)
        return entry

    def _relist_for_lookup(self, parent: str) -> bool:
        """A name missing from a cached listing that is too old to prove absence:
        list the (small) directory again instead of a stat of that one name.  One
        request either way, but the fresh listing answers the next lookups in the
        directory for ``negative_ttl`` seconds: creating many files (cp -r, tar x,
        editors' temporary files) costs no request per name."""
        listing = self.meta.listing(parent)
        if listing is None or len(listing.children) > RELIST_MAX:
            return False
        try:
            self._fetch_listing(parent)
        except NotFound:
            return False
        return True

    def _local_node(self, path: str) -> FileNode | None:
        with self.lock:
            node = self.nodes.get(path)
            return node if node is not None and node.local else None

    def _add_node(self, node: FileNode) -> None:
        """Call with lock held."""
        self.nodes[node.path] = node
        parent, name = posixpath.split(node.path)
        self._child_nodes[parent].add(name)

    def _drop_node(self, node: FileNode) -> None:
        """Call with lock held: forget ``node`` if it is still the one at its path."""
        if self.nodes.get(node.path) is node:
            del self.nodes[node.path]
            parent, name = posixpath.split(node.path)
            names = self._child_nodes.get(parent)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._child_nodes[parent]

    def _release_spool(self, node: FileNode) -> None:
        """Call with lock held: the node lets go of its spool file."""
        if node.spool is not None:
            node.spool.decref()
            node.spool = None

    def _maybe_forget(self, node: FileNode) -> None:
        """Call with lock held: drop a node that has nothing left to do."""
        if node.writers == 0 and not node.jobs and (not node.dirty or node.deleted):
            self._release_spool(node)
            self._drop_node(node)

    def attr_of(self, entry: Entry) -> dict:
        if entry.is_dir:
            mode = st.S_IFDIR | (0o777 & ~self.opts.umask)
            nlink, size = 2, entry.size or BLOCK
        else:
            mode = st.S_IFREG | (0o666 & ~self.opts.umask)
            nlink, size = 1, entry.size
        if not entry.writable:
            mode &= ~0o222
        if not entry.readable:
            mode &= ~0o444
        return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_uid": self.opts.uid,
                "st_gid": self.opts.gid, "st_mtime": entry.mtime, "st_ctime": entry.mtime,
                "st_atime": entry.mtime, "st_blocks": (size + 511) // 512, "st_blksize": 128 * 1024}

    def _node_entry(self, node: FileNode) -> Entry:
        """Call with lock held."""
        return Entry(posixpath.basename(node.path), False, node.size, node.mtime)

    # ------------------------------------------------------------------ metadata
    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        """Attributes of ``path``; of the open file ``fh`` when ``path`` is None
        (a file unlinked or renamed over while open)."""
        if path is not None:
            self.check_path(path)
        with self.lock:
            handle = self.handles.get(fh) if fh is not None else None
            node = handle.node if handle is not None and handle.node is not None else self.nodes.get(path)
            if node is not None and node.spool is not None and (node.deleted or node.local):
                return self.attr_of(self._node_entry(node))
            if path is None:
                if handle is None:
                    raise AgaveFSError("stale file handle", errno=errno.ESTALE)
                return self.attr_of(Entry("", False, handle.size, time.time()))
        return self.attr_of(self._entry(path))

    def readdir(self, path: str) -> list[tuple[str, dict | None]]:
        """[(name, attributes)], "." and ".." first."""
        self.check_path(path)
        me = self._entry(path)
        if not me.is_dir:
            raise NotADirectory(path)
        listing = self.meta.listing(path)
        if listing is None:
            listing = self._fetch_listing(path)
        entries = {name: e for name, e in listing.children.items() if not is_temp_name(name)}
        with self.lock:
            for name in self._child_nodes.get(path, ()):
                node = self.nodes[posixpath.join(path, name)]
                if node.local:
                    entries[name] = self._node_entry(node)
        out: list[tuple[str, dict | None]] = [(".", self.attr_of(listing.me)), ("..", None)]
        out.extend((name, self.attr_of(e)) for name, e in entries.items())
        return out

    def _fetch_listing(self, path: str):
        """A fresh listing from the server, with the changes made through the mount
        while it was in flight applied (see metadata.py), cached."""
        fetch = self.meta.begin_listing(path)
        try:
            me, children = self.backend.list(path)
        except BaseException:
            self.meta.end_listing(fetch)
            raise
        return self.meta.put_listing(path, me, children, fetch)

    def opendir(self, path: str) -> int:
        entries = self.readdir(path)
        fh = next(self._fh)
        with self.lock:
            self.handles[fh] = Handle(path, False, entries=entries)
        return fh

    def readdir_handle(self, fh: int) -> list[tuple[str, dict | None]]:
        with self.lock:
            handle = self.handles.get(fh)
        if handle is None or handle.entries is None:
            raise AgaveFSError("stale directory handle", errno=errno.EBADF)
        return handle.entries

    def releasedir(self, fh: int) -> None:
        with self.lock:
            self.handles.pop(fh, None)

    def statfs(self) -> dict:
        # Agave reports no quota: a large, honest "unknown", never 0 free (desktops
        # refuse to copy onto a full filesystem).
        blocks = 1 << 40  # 4 PiB in 4 KiB blocks
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 1 << 32, "f_ffree": 1 << 32, "f_favail": 1 << 32,
                "f_namemax": NAME_MAX}

    def chmod(self, path: str, mode: int) -> None:
        self.getattr(path)
        self._readonly()
        if self.opts.strict:
            raise Unsupported("Agave keeps no POSIX modes")

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.getattr(path)
        self._readonly()
        if self.opts.strict and (uid not in (-1, self.opts.uid) or gid not in (-1, self.opts.gid)):
            raise Unsupported("Agave keeps no POSIX owners")

    def utimens(self, path: str, mtime: float | None) -> None:
        """Set the mtime of a file with local content; accepted and not sent otherwise."""
        self.getattr(path)
        self._readonly()
        with self.lock:
            node = self.nodes.get(path)
            if node is not None and node.local:
                if mtime is not None:
                    node.mtime = mtime
                    for job in node.jobs:
                        job.mtime = mtime
                return
        if self.opts.strict:
            raise Unsupported("Agave does not keep times set by clients")

    # ------------------------------------------------------------------ namespace
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

    def rmdir(self, path: str) -> None:
        self.check_path(path)
        self._readonly()
        if path == "/":
            raise AgaveFSError("cannot remove the mount root", errno=errno.EBUSY)
        entry = self._entry(path)
        if not entry.is_dir:
            raise NotADirectory(path)
        with self.lock:
            if any(n.local for n in self._nodes_under(path)):
                raise NotEmpty(path)
        me, children = self.backend.list(path)  # always fresh: emptiness is checked on the server
        if any(not is_temp_name(c.name) for c in children):
            self.meta.put_listing(path, me, children)
            raise NotEmpty(path)
        self.backend.delete(path)
        self.meta.removed(path)

    def unlink(self, path: str) -> None:
        self.check_path(path)
        self._readonly()
        with self.lock:
            node = self.nodes.get(path)
        if node is None or not node.local:
            entry = self._entry(path)
            if entry.is_dir:
                raise IsADirectory(path)
            if not entry.writable:
                raise PermissionDenied(path)
            self.backend.delete(path)
            self.meta.removed(path)
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
                    self.backend.delete(path)
                except NotFound:
                    pass
        self.meta.removed(path)

    def rename(self, old: str, new: str) -> None:
        self.check_path(old)
        self.check_path(new)
        self.check_new_name(new)
        self._readonly()
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise InvalidArgument("cannot move a directory into itself")
        src_node = self._local_node(old)
        src = self._node_entry_locked(src_node) if src_node else self._entry(old)
        self._parent_dir(new)
        dst_node = self._local_node(new)
        try:
            dst = self._node_entry_locked(dst_node) if dst_node else self._entry(new)
        except NotFound:
            dst = None
        if src.is_dir:
            if dst is not None:
                if not dst.is_dir:
                    raise NotADirectory(new)
                self.rmdir(new)  # ENOTEMPTY unless empty
            self._rename_dir(old, new, src)
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
            dst_remote = dst_exists
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
                try:
                    aside = replace_remote(self.backend, old, new)
                except NotFound:
                    if src_node is None:
                        raise
                    src_remote = False  # only the pending version exists
                    aside = None
                if aside:
                    self._delete_quietly(aside)
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
        self.meta.removed(old)
        self.meta.put(new, Entry(posixpath.basename(new), False, src.size, src.mtime, src.readable,
                                 src.writable))

    def _rename_dir(self, old: str, new: str, src: Entry) -> None:
        prefix = old.rstrip("/") + "/"
        deadline = time.monotonic() + self.opts.op_timeout
        # uploads in flight below the directory have temporary files in it (cancelled ones
        # too, until they have deleted theirs): let them land.  The check and the move of
        # the pending nodes happen under one hold of the lock, under which an upload also
        # picks its target (WriteBack._step_upload): none can start in the old place after.
        while True:
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
        try:
            if posixpath.dirname(old) == posixpath.dirname(new):
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
        self.meta.removed(old)
        self.meta.forget(new)
        self.meta.put(new, Entry(posixpath.basename(new), True, src.size, src.mtime, src.readable,
                                 src.writable))

    def _delete_quietly(self, path: str) -> None:
        try:
            self.backend.delete(path)
        except Exception as exc:  # noqa: BLE001 - a hidden leftover, not data
            log.warning("could not delete the old version at %s: %s", path, exc)

    # ------------------------------------------------------------------ files
    def create(self, path: str, mode: int = 0o644) -> int:
        self.check_path(path)
        self.check_new_name(path)
        self._readonly()
        parent = self._parent_dir(path)
        if not parent.writable:
            raise PermissionDenied(posixpath.dirname(path))
        known = self.meta.lookup(path)
        remote_exists = False if known is ABSENT else None if known is None else True
        with self.lock:
            old = self.nodes.get(path)
            if old is not None and old.local:
                node = old
            else:
                node = FileNode(path, remote_exists=remote_exists)
                self._add_node(node)
            node.writers += 1
        try:
            self._start_writing(node, truncate=True)
        except BaseException:
            self._writer_gone(node)
            raise
        return self._new_handle(Handle(path, True, node=node))

    def open(self, path: str, flags: int) -> int:
        self.check_path(path)
        access = flags & os.O_ACCMODE
        writing = access != os.O_RDONLY
        truncate = bool(flags & os.O_TRUNC) and writing
        if writing or truncate:
            self._readonly()
        while True:
            node = self._local_node(path)
            entry = None
            if node is None:
                entry = self._entry(path)
                if entry.is_dir:
                    raise IsADirectory(path)
                if writing and not entry.writable:
                    raise PermissionDenied(path)
                if not writing and not entry.readable:
                    raise PermissionDenied(path)
            if not writing:
                if node is not None:
                    return self._new_handle(Handle(path, False, node=node))
                reader = RemoteReader(self.backend, path, entry.size, window_min=self.opts.readahead_min,
                                      window_max=self.opts.readahead_max, budget=self.budget,
                                      timeout=self.opts.op_timeout)
                return self._new_handle(Handle(path, False, reader=reader, size=entry.size))
            with self.lock:
                node = self.nodes.get(path)
                if node is None or node.deleted:
                    if entry is None:
                        # the local node went away since we looked (its last upload landed):
                        # look again, or the new node would start from an empty file
                        continue
                    node = FileNode(path, remote_exists=True, remote_size=entry.size)
                    node.mtime = entry.mtime
                    self._add_node(node)
                node.writers += 1
                break
        try:
            self._start_writing(node, truncate=truncate)
        except BaseException:
            self._writer_gone(node)
            raise
        return self._new_handle(Handle(path, True, node=node))

    def _new_handle(self, handle: Handle) -> int:
        fh = next(self._fh)
        with self.lock:
            self.handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> Handle:
        with self.lock:
            handle = self.handles.get(fh)
        if handle is None:
            raise AgaveFSError("stale file handle", errno=errno.EBADF)
        return handle

    def _start_writing(self, node: FileNode, truncate: bool) -> None:
        """Give a node a spool file that may be written (the caller counted a writer)."""
        with node.open_lock:
            source = None
            with self.lock:
                if node.spool is not None and not node.sealed:
                    pass  # another writer has it open
                elif node.spool is not None:
                    # a closed version (queued or in flight) keeps its spool and its journal
                    # record until a newer version is closed: write a copy.  Taking a queued
                    # version back instead would lose it if agavefs died before the next
                    # close.  The node keeps showing the sealed version while it is copied.
                    source = node.spool.incref()
                else:
                    node.spool, node.sealed = self.store.new_file(), False
                    if truncate or node.remote_exists is not True:
                        node.base_pending, node.size, node.dirty = False, 0, True
                    else:
                        node.base_pending, node.size = True, node.remote_size
            if source is not None:
                fresh = self.store.new_file()
                try:
                    if not truncate:
                        fresh.copy_from(source, self.opts.op_timeout)
                except BaseException:
                    fresh.decref()
                    source.decref()
                    raise
                with self.lock:
                    old, node.spool, node.sealed = node.spool, fresh, False
                    node.dirty, node.base_pending, node.size = True, False, fresh.size
                source.decref()
                if old is not None:
                    old.decref()  # the node's reference to the sealed version
            if truncate:
                self._truncate_node(node, 0)

    def _ensure_base(self, node: FileNode, upto: int | None = None) -> None:
        """Fetch the remote content a lazily opened spool lacks (the first ``upto`` bytes)."""
        with self.lock:
            if not node.base_pending:
                return
            spool, path, size = node.spool, node.path, node.remote_size
        with node.ns_lock:
            with self.lock:
                if not node.base_pending:
                    return
            want = size if upto is None else min(size, upto)
            if want > 0:
                stream = self.backend.open_stream(path, 0, size)
                try:
                    offset = 0
                    while offset < want:
                        chunk = stream.read(min(COPY_CHUNK, want - offset))
                        if not chunk:
                            raise AgaveFSError(f"{path}: content ended early", errno=errno.EIO)
                        spool.pwrite(chunk, offset, self.opts.op_timeout)
                        offset += len(chunk)
                finally:
                    stream.close()
            with self.lock:
                node.base_pending = False
                node.size = spool.size

    def _writable_spool(self, node: FileNode, upto: int | None = None) -> SpoolFile:
        """The node's spool, ready to be changed: taken back from (or copied off) a
        queued upload, with the remote content fetched (its first ``upto`` bytes)."""
        with self.lock:
            ready = node.spool is not None and not node.sealed
        if not ready:
            self._start_writing(node, truncate=False)
        if upto != 0:
            self._ensure_base(node, upto)
        with self.lock:
            return node.spool

    def _truncate_node(self, node: FileNode, length: int) -> None:
        spool = self._writable_spool(node, upto=length)
        with self.lock:
            node.base_pending = False
        spool.truncate(length, self.opts.op_timeout)
        with self.lock:
            node.size = length
            node.dirty = True
            node.mtime = time.time()

    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handle(fh)
        if handle.reader is not None:
            return handle.reader.read(offset, size)
        node = handle.node
        with self.lock:
            spool = node.spool.incref() if node.spool is not None and not node.base_pending else None
            remote_size = node.size
            path = node.path
        if spool is None:
            with handle.lock:
                if handle.reader is None:
                    handle.reader = RemoteReader(self.backend, path, remote_size,
                                                 window_min=self.opts.readahead_min,
                                                 window_max=self.opts.readahead_max, budget=self.budget,
                                                 timeout=self.opts.op_timeout)
            return handle.reader.read(offset, size)
        try:
            return spool.pread(size, offset)
        finally:
            spool.decref()

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise AgaveFSError("file not open for writing", errno=errno.EBADF)
        node = handle.node
        spool = self._writable_spool(node)
        written = spool.pwrite(data, offset, self.opts.op_timeout)
        with self.lock:
            node.size = spool.size
            node.dirty = True
            node.mtime = time.time()
        return written

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        if path is not None:
            self.check_path(path)
        self._readonly()
        if length < 0:
            raise InvalidArgument("negative length")
        if fh is not None:
            handle = self._handle(fh)
            if handle.node is not None and handle.writable:
                return self._truncate_node(handle.node, length)
        fh = self.open(path, os.O_WRONLY)
        try:
            self._truncate_node(self._handle(fh).node, length)
        finally:
            self.release(fh)

    def flush(self, fh: int) -> None:
        """close(2) of a descriptor.  FUSE sends RELEASE only after close() has
        returned, so this is where a closed file's data must become durable: the
        last writer's flush seals and journals the spool (a later write through a
        duplicated descriptor writes a copy)."""
        handle = self._handle(fh)
        if not handle.writable:
            return
        with self.lock:
            last = handle.node.writers <= 1
        if last:
            self._seal(handle.node, delay=0.0 if self.opts.sync_close else None)
        if self.opts.sync_close:
            self._sync(handle.node)

    def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.node is not None:
            self._sync(handle.node)

    def _sync(self, node: FileNode) -> None:
        """Queue the current content now and wait until the server has it."""
        with self.lock:
            dirty = node.dirty and not node.deleted
            job = node.jobs[-1] if node.jobs else None
        if dirty:
            job = self._queue_snapshot(node)
        if job is None:
            return
        # A failed attempt that the write-back retries (a restart, a lost staging job, a
        # 503 storm) is waited out while op_timeout has not passed since the fsync
        # began; past it, or for an error that retrying cannot cure, fsync fails.
        deadline = time.monotonic() + self.opts.op_timeout
        failed = 0
        while True:
            left = deadline - time.monotonic()
            if failed and left <= 0:
                raise AgaveFSError(f"{node.path}: upload failed: {job.last_error}", errno=failed)
            code = self.writeback.wait(job, max(0.0, left) if failed else None)
            if not code:
                return
            if code not in (errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.ECONNRESET):
                raise AgaveFSError(f"{node.path}: upload failed: {job.last_error}", errno=code)
            failed = job.last_errno if code == errno.ETIMEDOUT and job.last_errno else code

    def _queue_snapshot(self, node: FileNode) -> Job:
        """Seal a copy of an open file's spool (writers keep writing the original)."""
        with self.lock:
            source = node.spool.incref()
            node.dirty = False
            mtime = node.mtime
        snap = self.store.new_file()
        try:
            snap.copy_from(source, self.opts.op_timeout)
        except BaseException:
            snap.decref()
            with self.lock:
                node.dirty = True
            raise
        finally:
            source.decref()
        return self._queue(node, snap, mtime, snapshot_of=source)

    def _queue(self, node: FileNode, spool: SpoolFile, mtime: float, snapshot_of=None,
               delay: float = 0.0, clean: bool = False) -> Job:
        """Queue ``spool`` (whose reference passes to the job) as the node's newest version;
        with ``clean``, the node stops being dirty as the job joins its list."""
        if self.opts.fsync_spool:
            spool.fsync()
        job = Job(node, spool, spool.size, mtime)
        job.snapshot_of = snapshot_of
        with self.lock:
            older = list(node.jobs)
            node.jobs.append(job)
            if clean:
                node.dirty = False
        self.writeback.submit(job, delay=delay)
        for j in older:
            self.writeback.cancel(j)
        return job

    def release(self, fh: int) -> None:
        with self.lock:
            handle = self.handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()
        if handle.writable:
            self._writer_gone(handle.node)

    def _writer_gone(self, node: FileNode) -> None:
        with self.lock:
            node.writers -= 1
            if node.writers > 0:
                return
        self._seal(node)
        with self.lock:
            self._maybe_forget(node)

    def _seal(self, node: FileNode, delay: float | None = None) -> Job | None:
        """Queue the node's changed spool for upload (it becomes read-only), after
        ``delay`` (default: the upload grace) seconds."""
        with self.lock:
            if node.deleted or node.spool is None or node.sealed:
                return None
            if not node.dirty:
                newest = node.jobs[-1] if node.jobs else None
                if newest is not None and newest.snapshot_of is node.spool and not newest.cancelled:
                    # unchanged since an fsync queued a snapshot: keep that copy only
                    node.spool.decref()
                    node.spool, node.sealed = newest.spool.incref(), True
                return None
            # dirty stays set until the job is on the node's list (_queue): in between, the
            # previous version's upload may finish, and a node with no job, no writer and
            # nothing dirty is forgotten - with it the pending version (readers would get
            # the previous one from the server; renames would not retarget the upload)
            node.sealed = True
            spool = node.spool.incref()
            mtime = node.mtime
        try:
            return self._queue(node, spool, mtime, delay=self.opts.upload_delay if delay is None else delay,
                               clean=True)
        except BaseException:
            with self.lock:
                node.sealed, node.dirty = False, True
            spool.decref()
            raise

    # ------------------------------------------------------------------ write-back hooks
    def job_done(self, job: Job, path: str | None) -> None:
        """Called by the write-back when ``job`` is stored (path set) or cancelled."""
        node = job.node
        with self.lock:
            if job in node.jobs:
                node.jobs.remove(job)
            if path is not None:
                node.remote_exists = True
                node.remote_size = job.size
                if not node.deleted:
                    self.meta.put(path, Entry(posixpath.basename(path), False, job.size, job.mtime))
            self._maybe_forget(node)

    def recover(self) -> int:
        """Queue again the uploads a previous daemon left in the journal."""
        records = self.store.load_records()
        newest: dict[str, dict] = {}
        garbage: list[str] = []
        for rec in [r for r in records if r.get("cancelled")]:  # tombstones: clean, never upload
            garbage.extend(p for p in rec.get("leftovers", []) if isinstance(p, str))
            self._discard_record(rec)
        if garbage:
            threading.Thread(target=self._delete_garbage, args=(garbage,), daemon=True).start()
        for rec in [r for r in records if not r.get("cancelled")]:
            prev = newest.get(rec["path"])
            if prev is not None:  # an older version of the same path: superseded
                rec.setdefault("leftovers", []).extend(prev.get("leftovers", []))
                self._discard_record(prev)
            newest[rec["path"]] = rec
        kept = set()
        for rec in newest.values():
            spool = self.store.open_existing(rec["id"])
            if spool is None:
                log.error("journal entry for %s has no spool data; dropping it", rec["path"])
                self.store.remove_record(rec["id"])
                continue
            kept.add(rec["id"])
            node = FileNode(rec["path"], remote_exists=None)
            node.spool, node.sealed, node.size = spool, True, spool.size
            node.mtime = float(rec.get("mtime") or time.time())
            job = Job(node, spool.incref(), spool.size, node.mtime,
                      leftovers=[p for p in rec.get("leftovers", []) if isinstance(p, str)],
                      seq=int(rec.get("seq", 0)))
            job.attempts = int(rec.get("attempts", 0))
            with self.lock:
                node.jobs.append(job)
                self._add_node(node)
            log.info("recovering pending upload of %s (%d bytes)", node.path, spool.size)
            self.writeback.submit(job)
        orphans = self.store.orphan_files(kept)
        if orphans:
            lost = self.store.root / "lost+found"
            lost.mkdir(exist_ok=True)
            for name in orphans:
                shutil.move(str(self.store.data_dir / name), str(lost / name))
            log.warning("%d spool files of files that were never closed moved to %s", len(orphans), lost)
        return len(kept)

    def _delete_garbage(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self.backend.delete(path)
            except NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - hidden leftovers only
                log.info("could not delete leftover %s: %s", path, exc)

    def _discard_record(self, rec: dict) -> None:
        self.store.remove_record(rec["id"])
        try:
            os.unlink(self.store.data_dir / rec["id"])
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ lifecycle
    def drain(self, progress=None, timeout: float | None = None) -> bool:
        return self.writeback.drain(progress, timeout)

    def status(self) -> dict:
        with self.lock:
            open_files = len([h for h in self.handles.values() if h.entries is None])
        return {
            "pending": [j.info() for j in self.writeback.pending()],
            "spool_bytes": self.store.used,
            "spool_dir": str(self.store.root),
            "cache": self.meta.stats(),
            "open_files": open_files,
            "uploaded_files": self.writeback.files_uploaded,
            "uploaded_bytes": self.writeback.bytes_uploaded,
        }

    def close(self, wait: bool = False) -> None:
        """Stop the upload workers (pending uploads stay in the journal)."""
        self.writeback.stop(wait)


__all__ = ["VFS", "Handle", "TimedOut"]
