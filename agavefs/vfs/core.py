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
* Writes go to the spool (``writing.WriteOps``).  The last close of a changed file
  seals its spool and queues a ``writeback.Job``; ``fsync`` (and ``flush`` with
  ``sync_close``) queue a snapshot and wait for the server to have it.
* Namespace operations (``namespace.NamespaceOps``) are synchronous on the server
  (mkdir, rmdir, unlink, rename), except for files whose only version is still
  pending: those are retargeted or cancelled locally.

This module holds the state, lookups, directories, reads and the lifecycle; the two
mixins above hold the rest and use this state.

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
import stat as st
import threading
import time
from collections import defaultdict

from agavefs.errors import (AgaveFSError, InvalidArgument, IsADirectory, NameTooLong, NotADirectory,
                            NotFound, PermissionDenied, ReadOnly, TimedOut, Unsupported)
from agavefs.vfs.backend import Backend, Entry
from agavefs.vfs.memo import SizedLRU
from agavefs.vfs.metadata import ABSENT, MetaCache
from agavefs.vfs.namespace import NamespaceOps
from agavefs.vfs.nodes import BLOCK, FileNode, Handle
from agavefs.vfs.options import Options
from agavefs.vfs.pipes import PipeData
from agavefs.vfs.reader import MemoryReader, ReadBudget, RemoteReader
from agavefs.vfs.siblings import SiblingPrefetch
from agavefs.vfs.spool import SpoolStore
from agavefs.vfs.walkahead import WalkAhead
from agavefs.vfs.writeback import WriteBack, is_temp_name
from agavefs.vfs.writing import WriteOps

log = logging.getLogger("agavefs.vfs")

NAME_MAX = 255
RELIST_MAX = 1000  # a lookup miss re-lists a cached directory this small (<= 3 pages)
# a lookup's stat of a directory brings this many of its entries along, in the same request
# (limit=100, the server's default page): the next lookups in it cost nothing
LOOKUP_CHILDREN = 99
# readdir keeps its last answer for this many directories, this many entries in all: an
# unchanged directory read again (ls, a file manager's refresh, every directory of a
# tree walked again by find or du) is answered as it was; the entries bound the memory
READDIR_KEPT = 1024
READDIR_KEPT_ENTRIES = 20_000


class DirEntries(list):
    """readdir's answer: [(name, attributes or None)], "." and ".." first.  The same
    object is returned while the directory does not change (``basis``: what it was
    made from), so a caller may keep what it derives from it."""

    basis: tuple = ()


class VFS(NamespaceOps, WriteOps):
    def __init__(self, backend: Backend, opts: Options, spool_dir: str):
        self.backend = backend
        self.opts = opts
        self.lock = threading.RLock()
        self.meta = MetaCache(opts.attr_ttl, opts.dir_ttl, opts.negative_ttl, opts.max_cached_entries)
        self.nodes: dict[str, FileNode] = {}  # protected by lock
        self._child_nodes: dict[str, set[str]] = defaultdict(set)  # parent -> names; protected by lock
        self.handles: dict[int, Handle] = {}  # protected by lock
        # remote files unlinked or renamed over, kept aside for the descriptors still
        # reading them: path -> journal record (namespace.py); protected by lock
        self._asides: dict[str, str] = {}
        self._fh = itertools.count(1)
        self.store = SpoolStore(spool_dir, opts.cache_max_size, fsync=opts.fsync_spool)
        self.budget = ReadBudget(opts.readahead_total)
        self.writeback = WriteBack(backend, self.store, self, workers=opts.upload_workers,
                                   staging_timeout=opts.staging_timeout)
        self._flights: dict[str, _Flight] = {}  # listings in flight; protected by lock
        self._readdir_lock = threading.Lock()
        # readdir's last answers (a directory over READDIR_KEPT_ENTRIES is not kept)
        self._readdirs: SizedLRU[DirEntries] = SizedLRU(READDIR_KEPT, READDIR_KEPT_ENTRIES)
        self.walk = WalkAhead(self._list_ahead, opts.walk_ahead) if opts.walk_ahead > 0 else None
        self.siblings = SiblingPrefetch(lambda path, size: self.backend.read(path, 0, size, size),
                                        self.meta.peek_listing, ahead=opts.prefetch_files,
                                        workers=min(8, opts.prefetch_files)) if opts.prefetch_files > 0 else None
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
        if cached is None and path != "/":
            with self.lock:  # the parent is being listed (walk-ahead, a readdir): its
                flight = self._flights.get(posixpath.dirname(path))  # answer is this one's too
            if flight is not None:
                flight.done.wait(self.opts.op_timeout)
                cached = self.meta.lookup(path)
        if cached is None and path != "/" and self._relist_for_lookup(posixpath.dirname(path)):
            cached = self.meta.lookup(path)
        if cached is ABSENT:
            raise NotFound(path)
        if cached is not None:
            return cached
        for _ in range(3):
            fetch = self.meta.begin_stat(path)
            watch = self.meta.watch_listing(path)  # for the children the stat brings along
            try:
                entry, kids, whole = self.backend.stat_with_children(path, LOOKUP_CHILDREN)
            except NotFound:
                entry, kids, whole = None, [], False
            except BaseException:
                self.meta.end(fetch)
                self.meta.end(watch)
                raise
            known = self.meta.put_stat(fetch, entry)  # a change made meanwhile wins
            if whole and known is entry:  # a small directory: the stat was its listing
                self.meta.put_listing(path, entry, kids, watch)
            else:
                self.meta.put_children(watch, path, kids if known is entry else [])
            if known is ABSENT:
                raise NotFound(path)
            if known is not None:
                return known
        raise AgaveFSError(f"{path}: changed during every lookup", errno=errno.EAGAIN)

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

    # -- read-only handles of remote files follow their file (POSIX: a descriptor
    # -- names a file, not a path).  Call these with lock held.
    def _remote_readers(self):
        return [h for h in self.handles.values()
                if h.reader is not None and h.node is None and not h.orphan]

    def _bind_readers(self, node: FileNode) -> None:
        """``node`` now holds local content of the remote file at its path: the
        handles reading that file read it from the node (what any writer wrote)."""
        for h in self._remote_readers():
            if h.path == node.path:
                h.node = node
                node.readers += 1

    def _orphan_readers(self, path: str) -> None:
        """The remote file at ``path`` was deleted or renamed over."""
        for h in self._remote_readers():
            if h.path == path:
                h.orphan = True

    def _move_readers(self, old: str, new: str) -> None:
        """``old`` (a file, or a directory and everything below it) is now ``new``."""
        prefix = old.rstrip("/") + "/"
        for h in self._remote_readers():
            if h.path == old or h.path.startswith(prefix):
                h.path = new + h.path[len(old):]
                h.reader.path = h.path

    def _release_spool(self, node: FileNode) -> None:
        """Call with lock held: the node lets go of its spool file."""
        if node.spool is not None:
            node.spool.decref()
            node.spool = None

    def _maybe_forget(self, node: FileNode) -> None:
        """Call with lock held: drop a node that has nothing left to do."""
        if node.writers == 0 and node.readers == 0 and not node.jobs and (not node.dirty or node.deleted):
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
                if handle.node is not None:  # its last version landed; the node keeps its attributes
                    return self.attr_of(self._node_entry(handle.node))
                return self.attr_of(Entry("", False, handle.size, handle.mtime))
        return self.attr_of(self._entry(path))

    def readdir(self, path: str) -> list[tuple[str, dict | None]]:
        """[(name, attributes)], "." and ".." first."""
        self.check_path(path)
        me = self._entry(path)
        if not me.is_dir:
            raise NotADirectory(path)
        # an upload that lands meanwhile moves its file from the pending nodes to the
        # cache (job_done, under self.lock): the listing in hand may be a copy it did
        # not reach (superseded, not cached); the watch catches it
        watch = self.meta.watch_listing(path)
        try:
            listing = self.meta.listing(path)
            if listing is None:
                listing = self._listing_shared(path)
        except BaseException:
            self.meta.end(watch)
            raise
        with self.lock:
            kids = self.meta.children(watch, listing)
            local = [(name, self._node_entry(node)) for name in self._child_nodes.get(path, ())
                     if (node := self.nodes[posixpath.join(path, name)]).local]
        # the same directory as the last time it was read (compared in C: the entries
        # are mostly the very same objects): the same list, which the FUSE adapter
        # keeps packed for the kernel
        basis = (listing.me, kids, local)
        with self._readdir_lock:
            out = self._readdirs.get(path)
            if out is not None and out.basis != basis:
                out = None
        if out is None:
            entries = {name: e for name, e in kids.items() if not is_temp_name(name)}
            entries.update(local)
            out = DirEntries([(".", self.attr_of(listing.me)), ("..", None)])
            out.extend((name, self.attr_of(e)) for name, e in entries.items())
            out.basis = basis
            with self._readdir_lock:
                self._readdirs.put(path, out)
        if self.walk is not None:
            self.walk.entered(path, lambda d: self._unlisted_subdirs(d, listing if d == path else None))
        return out

    def _unlisted_subdirs(self, path: str, listing=None) -> list[str] | None:
        """The subdirectories of ``path`` (from its cached listing) whose own listing is
        not cached: what walk-ahead may list; None when ``path``'s listing is not cached."""
        listing = listing or self.meta.listing(path)
        if listing is None:
            return None
        subdirs = [posixpath.join(path, name) for name, e in listing.children.items()
                   if e.is_dir and not is_temp_name(name)]
        return [d for d in subdirs if not self.meta.has_listing(d)]

    def _content_changed(self, path: str) -> None:
        """A file (or everything below a directory) changes through the mount: copies
        fetched ahead of a reader are no longer its content."""
        if self.siblings is not None:
            self.siblings.forget(path)

    def _list_ahead(self, path: str) -> bool:
        """Walk-ahead (walkahead.py): list ``path`` into the cache unless it is there;
        True when it was fetched."""
        if self.meta.listing(path) is not None:
            return False
        self._listing_shared(path)
        return True

    def _listing_shared(self, path: str):
        """``_fetch_listing``, but one request at a time per directory: a caller that
        finds the directory being listed (by walk-ahead, or another process) waits
        for that answer, or its error."""
        with self.lock:
            flight = self._flights.get(path)
            leader = flight is None
            if leader:
                flight = self._flights[path] = _Flight()
        if not leader:
            flight.done.wait()  # the request is bounded by its own deadline
            if flight.error is not None:
                raise flight.error
            return flight.result
        try:
            flight.result = self._fetch_listing(path)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self.lock:
                self._flights.pop(path, None)
            flight.done.set()

    def _fetch_listing(self, path: str):
        """A fresh listing from the server, with the changes made through the mount
        while it was in flight applied (see metadata.py), cached."""
        fetch = self.meta.begin_listing(path)
        try:
            me, children = self.backend.list(path)
        except BaseException:
            self.meta.end(fetch)
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

    def open(self, path: str, flags: int) -> int:
        self.check_path(path)
        access = flags & os.O_ACCMODE
        writing = access != os.O_RDONLY
        truncate = bool(flags & os.O_TRUNC) and writing
        if writing or truncate:
            self._readonly()
            self._content_changed(path)
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
                    with self.lock:
                        if self.nodes.get(path) is not node or not node.local:
                            continue  # its last upload landed meanwhile: read the server's copy
                        # a reader keeps the node (and its spool) until it closes: the
                        # kernel keeps the size it was told, so the content must not change
                        # under it when the upload lands and the writer has gone
                        node.readers += 1
                    return self._new_handle(Handle(path, False, node=node))
                ahead = (self.siblings.take(path, entry.size, entry.mtime, self.opts.op_timeout)
                         if self.siblings is not None else None)
                if ahead is not None:
                    reader = MemoryReader(path, ahead)
                else:
                    reader = RemoteReader(self.backend, path, entry.size, window_min=self.opts.readahead_min,
                                          window_max=self.opts.readahead_max, budget=self.budget,
                                          timeout=self.opts.op_timeout)
                return self._new_handle(Handle(path, False, reader=reader, size=entry.size, mtime=entry.mtime))
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
                    self._bind_readers(node)
                node.writers += 1
                break
        try:
            self._start_writing(node, truncate=truncate)
        except BaseException:
            self._writer_gone(node)
            raise
        return self._new_handle(Handle(path, True, node=node, changed=truncate))

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

    def read(self, fh: int, offset: int, size: int, pipes: bool = False) -> bytes | PipeData:
        """The bytes; with ``pipes``, possibly a ``PipeData`` that the caller hands on
        (it is read once) and closes (vfs/pipes.py)."""
        handle = self._handle(fh)
        node = handle.node
        if node is None:
            if handle.orphan:  # its name now holds another file, or nothing
                raise AgaveFSError(f"{handle.path}: the file was deleted or replaced since it was opened",
                                   errno=errno.EIO)
            data = handle.reader.read(offset, size, pipes)
            if self.siblings is not None and offset + len(data) >= handle.size and not handle.ended:
                with handle.lock:
                    first, handle.ended = not handle.ended, True
                if first:
                    self.siblings.finished(handle.path)
            return data
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
            return handle.reader.read(offset, size, pipes)
        try:
            return spool.pread(size, offset)
        finally:
            spool.decref()

    def release(self, fh: int) -> None:
        with self.lock:
            handle = self.handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()
        if handle.writable:
            self._writer_gone(handle.node)
        elif handle.node is not None:
            with self.lock:
                handle.node.readers -= 1
                self._maybe_forget(handle.node)
        if self._asides:
            self._done_with(handle)

    # ------------------------------------------------------------------ lifecycle
    def drain(self, progress=None, timeout: float | None = None, settle: bool = True) -> bool:
        """Wait until the server has every file written; with ``settle``, also until
        their spool files are gone (an unmount leaves that to ``close``, which it runs
        anyway: it need not wait for the unlinks before it unmounts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.writeback.drain(progress, timeout)
        if done and settle:
            left = 30.0 if deadline is None else max(0.0, deadline - time.monotonic())
            done = self.store.settle(left)
        return done

    def status(self) -> dict:
        with self.lock:
            open_files = len([h for h in self.handles.values() if h.entries is None])
        return {
            "pending": [j.info() for j in self.writeback.pending()],
            "streaming": self.writeback.streams(),
            "spool_bytes": self.store.used,
            "spool_dir": str(self.store.root),
            "cache": self.meta.stats(),
            # fetched before anyone asked: listings (walkahead.py), small files (siblings.py)
            "ahead": {"listings": self.walk.prefetched if self.walk is not None else 0,
                      "files": self.siblings.fetched if self.siblings is not None else 0,
                      "files_used": self.siblings.used if self.siblings is not None else 0},
            "open_files": open_files,
            "uploaded_files": self.writeback.files_uploaded,
            "uploaded_bytes": self.writeback.bytes_uploaded,
        }

    def close(self, wait: bool = False) -> None:
        """Stop the upload workers (pending uploads stay in the journal)."""
        if self.walk is not None:
            self.walk.stop()
        if self.siblings is not None:
            self.siblings.stop()
        self.writeback.stop(wait)
        self.store.settle()


class _Flight:
    """A listing request in flight, for the callers waiting on it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


__all__ = ["VFS", "Handle", "TimedOut"]
