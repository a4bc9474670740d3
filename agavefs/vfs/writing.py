"""The write path of the VFS: spool files, close/flush/fsync, sealing versions for
upload, and recovery from the journal.

Design note
-----------
A mixin of ``VFS`` (core.py), which owns the state these methods use.  Writes go to
a spool file on local disk.  The last close of a changed file seals its spool (it
becomes read-only; a later write makes a copy) and queues a ``writeback.Job``,
journaled first.  ``fsync`` (and ``flush`` with ``sync_close``) queue a snapshot
and wait for the server to have it.  A small file waits a short grace before its
upload starts, so that a version replaced at once is never sent; a version sealed by
a flush that wrote nothing (a shell's ``> file`` closing a duplicate) is held until
the file's release.  ``recover`` queues again what an earlier daemon left in the
journal.

Locks: as in core.py (``node.open_lock``/``node.ns_lock`` -> ``lock``); ``lock`` is
never held across a network call or a copy.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import shutil
import threading
import time

from agavefs.errors import AgaveFSError, InvalidArgument, NotFound, PermissionDenied
from agavefs.vfs.backend import Entry
from agavefs.vfs.metadata import ABSENT
from agavefs.vfs.nodes import FileNode, Handle
from agavefs.vfs.spool import SpoolFile
from agavefs.vfs.streaming import StreamSource
from agavefs.vfs.writeback import Job

log = logging.getLogger("agavefs.vfs")

COPY_CHUNK = 4 * 1024 * 1024  # bytes per read when fetching a file's content into its spool
GRACE_MAX_SIZE = 1 << 20  # files this large start uploading at close, without the grace
HOLD_UNTIL_RELEASE = 24 * 3600.0  # an upload held until the file's release (or an unmount)


class WriteOps:
    """create/write/truncate/flush/fsync and the write-back hooks for ``VFS``."""

    # ------------------------------------------------------------------ files
    def create(self, path: str, mode: int = 0o644) -> int:
        self.check_path(path)
        self.check_new_name(path)
        self._readonly()
        parent = self._parent_dir(path)
        if not parent.writable:
            raise PermissionDenied(posixpath.dirname(path))
        self._content_changed(path)
        known = self.meta.lookup(path)
        remote_exists = False if known is ABSENT else None if known is None else True
        with self.lock:
            old = self.nodes.get(path)
            if old is not None and old.local:
                node = old
            else:
                node = FileNode(path, remote_exists=remote_exists)
                self._add_node(node)
                if remote_exists is not False:  # O_CREAT on an existing file: the same file
                    self._bind_readers(node)
            node.writers += 1
        try:
            self._start_writing(node, truncate=True)
        except BaseException:
            self._writer_gone(node)
            raise
        # a create over an existing (or unknown) remote file truncates it: a change
        return self._new_handle(Handle(path, True, node=node, changed=remote_exists is not False))

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
                        node.append_at = 0
                    else:
                        node.base_pending, node.size = True, node.remote_size
                        node.append_at = None
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
                    node.append_at = 0 if fresh.size == 0 else None
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
            stream = self._not_an_append(node)
        if stream is not None:
            self.writeback.cancel(stream)
        spool.truncate(length, self.opts.op_timeout)
        with self.lock:
            node.size = length
            node.dirty = True
            node.mtime = time.time()
            if length == 0 and node.spool is spool and not node.appending:
                node.append_at = 0  # empty again: appends from here are the whole content

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise AgaveFSError("file not open for writing", errno=errno.EBADF)
        node = handle.node
        spool = self._writable_spool(node)
        with self.lock:
            appended = node.append_at == offset and node.spool is spool and bool(data)
            if appended:
                node.append_at += len(data)
                node.appending += 1
                stream = None
            else:
                stream = self._not_an_append(node)
        if stream is not None:
            self.writeback.cancel(stream)  # before the bytes it may have sent change
        try:
            written = spool.pwrite(data, offset, self.opts.op_timeout)
        except BaseException:
            if appended:
                self._append_done(node, spool, ok=False, wrote=False)
            raise
        handle.changed = True
        if appended:
            self._append_done(node, spool, ok=written == len(data))
        else:
            with self.lock:
                self._written(node, spool)
        return written

    @staticmethod
    def _written(node: FileNode, spool: SpoolFile) -> None:
        """Call with lock held: the spool was written."""
        node.size = spool.size
        node.dirty = True
        node.mtime = time.time()

    # ------------------------------------------------------------------ streamed uploads
    @staticmethod
    def _stream_of(node: FileNode) -> Job | None:
        """Call with lock held: the node's streamed upload still waiting for the close."""
        job = node.jobs[-1] if node.jobs else None
        if job is not None and job.streaming and not job.cancelled and job.spool is node.spool:
            return job
        return None

    def _not_an_append(self, node: FileNode) -> Job | None:
        """Call with lock held: the spool is changed other than by an append; returns the
        stream to cancel (before the change)."""
        node.append_at = None
        return self._stream_of(node)

    def _append_done(self, node: FileNode, spool: SpoolFile, ok: bool, wrote: bool = True) -> None:
        """An append reached the spool (or failed): feed the stream, or start one (in
        the same hold of the lock as the node's size update: the write path)."""
        start = None
        cancel = None
        with self.lock:
            if wrote:
                self._written(node, spool)
            node.appending -= 1
            if not ok:
                cancel = self._not_an_append(node)
            elif node.append_at is not None and not node.appending and node.spool is spool:
                stream = self._stream_of(node)
                if stream is not None:
                    stream.source.grow(node.append_at)
                elif (node.append_at >= self.opts.stream_min and node.writers == 1 and not node.deleted
                      and not node.sealed and not spool.streamed and self.writeback.reserve_stream()):
                    spool.streamed = True  # one stream per spool: a dropped one is not restarted
                    start = Job(node, spool.incref(), 0, node.mtime,
                                source=StreamSource(spool, node.append_at, self.opts.stream_idle))
                    node.jobs.append(start)
        if cancel is not None:
            self.writeback.cancel(cancel)
        if start is not None:
            self.writeback.start_stream(start)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        if path is not None:
            self.check_path(path)
        self._readonly()
        if length < 0:
            raise InvalidArgument("negative length")
        if fh is not None:
            handle = self._handle(fh)
            if handle.node is not None and handle.writable:
                handle.changed = True
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
            changed, handle.changed = handle.changed, False
        if last and (changed or self.opts.sync_close):
            self._seal(handle.node, delay=0.0 if self.opts.sync_close else None)
        elif last:
            # a duplicate closed before anything was written through it (`> file`, dd): the
            # file must survive a crash as it is (journaled), but its upload waits for the
            # release, since more data is likely coming through the other descriptor
            self._seal(handle.node, delay=HOLD_UNTIL_RELEASE)
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
        """Seal a copy of an open file's spool (writers keep writing the original).
        The snapshot supersedes a streamed upload, and the file does not stream again
        (a writer that fsyncs as it goes would restart it every time)."""
        with self.lock:
            source = node.spool.incref()
            node.dirty = False
            mtime = node.mtime
            node.append_at = None
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

    def _grace(self, size: int) -> float:
        """Seconds a closed version waits before its upload starts: small files get the
        upload grace (saves and rewrites replace them at once); a big one goes at once."""
        return self.opts.upload_delay if size < GRACE_MAX_SIZE else 0.0

    def _queue(self, node: FileNode, spool: SpoolFile, mtime: float, snapshot_of=None,
               delay: float = 0.0, clean: bool = False, held: bool = False) -> Job:
        """Queue ``spool`` (whose reference passes to the job) as the node's newest version;
        with ``clean``, the node stops being dirty as the job joins its list."""
        if self.opts.fsync_spool:
            spool.fsync()
        job = Job(node, spool, spool.size, mtime)
        job.snapshot_of = snapshot_of
        job.held = held
        with self.lock:
            older = list(node.jobs)
            node.jobs.append(job)
            if clean:
                node.dirty = False
        self.writeback.submit(job, delay=delay)
        for j in older:
            self.writeback.cancel(j)
        return job

    def _writer_gone(self, node: FileNode) -> None:
        with self.lock:
            node.writers -= 1
            if node.writers > 0:
                return
        self._seal(node)
        with self.lock:
            held = [j for j in node.jobs if j.held]
            self._maybe_forget(node)
        for job in held:  # sealed by a flush that wrote nothing: the release lets it go
            job.held = False
            self.writeback.expedite(job, self._grace(job.size))

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
            stream = self._stream_of(node) if delay != HOLD_UNTIL_RELEASE else None
        if stream is not None:
            # the streamed upload becomes this version's upload: it sends the tail now
            if self.opts.fsync_spool:
                spool.fsync()  # before the journal says the spool holds the version
            if self.writeback.seal_stream(stream, spool.size, mtime):
                spool.decref()
                with self.lock:
                    older = [j for j in node.jobs if j is not stream]
                    node.dirty = False
                for j in older:
                    self.writeback.cancel(j)
                return stream
        try:
            return self._queue(node, spool, mtime, delay=self._grace(spool.size) if delay is None else delay,
                               clean=True, held=delay == HOLD_UNTIL_RELEASE)
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
        # tombstones (and streams of files never closed: their spool is an unclosed
        # file's, moved to lost+found below): delete what they sent, never upload
        dead = [r for r in records if r.get("cancelled") or r.get("streaming")]
        for rec in dead:
            garbage.extend(p for p in rec.get("leftovers", []) if isinstance(p, str))
            self._discard_record(rec)
        if garbage:
            threading.Thread(target=self._delete_garbage, args=(garbage,), daemon=True).start()
        for rec in [r for r in records if r not in dead]:
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
