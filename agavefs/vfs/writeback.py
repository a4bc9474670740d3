"""Write-back: queued uploads, waiting out the staging queue, the final rename.

Design note
-----------
A ``Job`` uploads one sealed spool file to the path its ``FileNode`` has *when the
job finishes* (renames retarget it).  Each job runs three kinds of steps on a pool
of worker threads, driven by a delay heap (as rclone's writeback does):

``upload``   stream the spool file to a hidden temporary name in the target's
             directory (``.agavefs~<id>~<attempt>``), so that a partial or failed
             staging never shows under the real name and never destroys an old
             version.  At most ``upload_workers`` run at once.
``poll``     one look at the staging state of the temporary file, rescheduled while
             PENDING: at the end the copy's growing length predicts, else after a
             quarter of the time waited so far (20 ms to 1 s), so a wait overshoots
             the staging's end by a quarter at most.  STAGING_FAILED, or no
             progress for ``staging_timeout`` seconds (a lost job), means upload
             again.  Polls do not occupy upload slots, so thousands of files can
             wait out the queue together.
``finalize`` under the node's ``ns_lock``: rename the temporary file to the target
             name; when the target exists (the server refuses to rename onto it),
             move the old version aside, rename, delete the old version, and put it
             back if the rename failed.  Then the journal record and the spool file
             go, in that order.

Supersession: a newer job for the same node cancels the older ones; a cancelled job
deletes its temporary file instead of finalizing.  The cancel flag is read under
``ns_lock`` at the start of finalize, and the newer job's finalize takes the same
lock, so a stale version never lands after a newer one.

Failures never delete the spool: every error is retried with exponential backoff
(1 s doubling to 60 s, with jitter; every 2 s while the session is refused, until a
new login), without limit of attempts, and logged.  fsync
waiters are woken by success or by the first failure (they get its errno).

Locks: ``_cond`` protects the heap and the job table; job fields are protected by
the VFS lock (``owner.lock``) when another thread may read them.  Order:
node.ns_lock -> owner.lock -> _cond.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import posixpath
import random
import threading
import time
import uuid

from agavefs.errors import AgaveFSError, AlreadyExists, AuthError, NotFound, Transient, to_errno
from agavefs.vfs.backend import Staging
from agavefs.vfs.nodes import FileNode
from agavefs.vfs.spool import SpoolFile, SpoolStore
from agavefs.vfs.streaming import STREAM_MAX, StreamAborted, StreamSource

log = logging.getLogger("agavefs.upload")

TEMP_PREFIX = ".agavefs~"
PROGRESS_MIN = 64 * 1024 * 1024  # uploads this large log their progress

# staging polls: soon after the upload (a small file or an idle server is done within
# milliseconds), then less and less often (a busy server takes seconds to minutes)
POLL_FIRST = 0.02
POLL_SHARE = 0.25  # without a prediction, the next look comes after this share of the wait so far
POLL_MAX = 1.0
CLEANUP_WAIT = 10.0  # an unmount waits this long for cancelled uploads to delete their files
DRAIN_WAKE_JOBS = 8  # with this many jobs left or fewer, a drain wakes as each is stored
# a refused session (the refresh token is dead) is not a busy server: the client answers
# from the credentials cache without a request until a new login appears there, so the
# uploads look again this often and resume within seconds of `agavefs login`
SESSION_RETRY = 2.0


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def temp_path(directory: str) -> str:
    return posixpath.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex[:16]}")


def _place(backend, src: str, target: str) -> None:
    if posixpath.dirname(src) == posixpath.dirname(target):
        backend.rename(src, posixpath.basename(target))
    else:
        backend.move(src, target)


def replace_remote(backend, src: str, target: str, note_aside=None) -> str | None:
    """Put the remote file ``src`` at ``target``, replacing a file already there.

    The server refuses to rename or move onto an existing name, so an existing
    target is first renamed aside to a hidden name, then ``src`` is put in place,
    and the old version is put back if that fails.  Not atomic, but no step can
    lose either file.  Returns the aside path (for the caller to delete) or None.
    ``note_aside(aside)`` is called before the aside rename, so that a crash in
    between leaves a record of it.
    """
    try:
        _place(backend, src, target)
        return None
    except AlreadyExists:
        pass
    aside = temp_path(posixpath.dirname(target))
    if note_aside:
        note_aside(aside)
    backend.rename(target, posixpath.basename(aside))
    try:
        _place(backend, src, target)
    except Exception:
        try:
            backend.rename(aside, posixpath.basename(target))
        except Exception as exc:  # noqa: BLE001
            log.error("could not put %s back from %s: %s", target, aside, exc)
        raise
    return aside


class Job:
    _seq = itertools.count(int(time.time() * 1000))

    def __init__(self, node: FileNode, spool: SpoolFile, size: int, mtime: float,
                 leftovers: list[str] | None = None, seq: int | None = None,
                 source: StreamSource | None = None):
        self.node = node
        self.spool = spool
        # a streamed upload (streaming.py) has its own id until the close seals the
        # spool: a stream dropped before that must not touch the spool's later record
        self.source = source
        self.id = spool.id if source is None else f"{spool.id}~stream"
        self.seq = seq if seq is not None else next(Job._seq)
        self.size = size
        self.mtime = mtime
        self.state = "queued"
        self.attempts = 0
        self.held = False  # queued by a flush that wrote nothing; the VFS lets it go at release
        self.last_error: str | None = None
        self.last_errno: int | None = None
        self.cancelled = False
        self.finishing = False
        self.snapshot_of = None  # the open spool this job is a copy of (fsync)
        self.closed = False  # the journal record is gone: never write it again
        self.record_lock = threading.Lock()
        self.temp: str | None = None  # remote path of the current temporary upload
        # the temporary path of the first upload, chosen and journaled with the job's first
        # record (so that the upload need not rewrite the record); nothing is sent to it yet
        self.next_temp: str | None = None
        self.leftovers: list[str] = list(leftovers or [])  # remote paths to delete at the end
        self.finished = threading.Event()
        self.failure = threading.Condition()
        self.failures = 0
        self.started = time.time()
        # staging progress
        self.uploaded_at = 0.0  # when the body was accepted
        self.last_seen: object = None
        self.last_progress = 0.0
        self.seen_length: tuple[float, int] | None = None  # (when, listed length) of the last look

    def record(self) -> dict:
        rec = {"id": self.id, "seq": self.seq, "path": self.node.path, "size": self.size,
               "mtime": self.mtime, "attempts": self.attempts,
               "leftovers": self.leftovers + [t for t in dict.fromkeys((self.temp, self.next_temp)) if t],
               "created": self.started}
        if self.streaming:
            rec["streaming"] = True  # no data to recover: only the leftovers to delete
        return rec

    @property
    def streaming(self) -> bool:
        """A streamed upload whose file is still open (its size is not known yet)."""
        return self.source is not None and not self.source.sealed

    def info(self) -> dict:
        return {"path": self.node.path, "size": self.size, "state": self.state,
                "attempts": self.attempts, "last_error": self.last_error}


class WriteBack:
    def __init__(self, backend, store: SpoolStore, owner, *, workers: int, staging_timeout: float):
        self.backend = backend
        self.store = store
        self.owner = owner  # the VFS: .lock, .job_done(job, path)
        self.staging_timeout = staging_timeout
        self._cond = threading.Condition()
        self._heap: list = []  # (when, tiebreak, step, job); protected by _cond
        self._tiebreak = itertools.count()
        self.jobs: dict[str, Job] = {}  # protected by _cond
        # drain() sleeps on this until a job leaves the table (a leaf lock)
        self._left = threading.Condition()
        self._jobs_left = 0  # protected by _left
        self._upload_slots = threading.Semaphore(workers)
        self._stream_slots = threading.Semaphore(STREAM_MAX)
        self.streaming = True  # off once the server refuses a streamed body
        self._stopping = False
        self.bytes_uploaded = 0
        self.files_uploaded = 0
        self._threads = [threading.Thread(target=self._worker, name=f"agavefs-upload-{i}", daemon=True)
                         for i in range(workers + 2)]
        for t in self._threads:
            t.start()

    # -- public ----------------------------------------------------------------
    def submit(self, job: Job, write_record: bool = True, delay: float = 0.0) -> None:
        """Queue ``job``; its upload starts after ``delay`` seconds (a short grace lets
        a version that is superseded at once, as ``echo x > f`` does through dup2, be
        cancelled before it is sent)."""
        if write_record:
            if job.source is None and job.temp is None:
                job.next_temp = temp_path(posixpath.dirname(job.node.path))
            self.store.write_record(job.record())
        self.store.set_freeable(job.size)
        with self._cond:
            self.jobs[job.id] = job
        log.info("upload queued: %s (%d bytes)", job.node.path, job.size)
        self._schedule(delay, "upload", job)

    def cancel(self, job: Job) -> None:
        """Stop a job: it deletes what it sent and never touches the target.

        Its journal record becomes a tombstone at once (a crash must not bring a
        deleted or superseded version back); the tombstone lists what the job may
        have left on the server, for the next mount to clean."""
        with job.record_lock:
            if job.cancelled or job.closed:
                return
            job.cancelled = True
            if job.source is not None:
                job.source.abort("cancelled")
            with self._cond:
                queued = job.state == "queued"
            if not queued:
                record = job.record()
                record["cancelled"] = True
                self.store.write_record(record)
        if queued:
            self._finish(job, cancelled=True)

    @staticmethod
    def _progress_logger(target: str):
        """A progress(sent, total) callback logging each quarter of a large upload."""
        shown = [0]

        def progress(sent: int, total: int) -> None:
            quarter = sent * 4 // total if total else 4
            if 0 < quarter < 4 and quarter > shown[0]:
                shown[0] = quarter
                log.info("uploading %s: %.1f of %.1f MiB (%d%%)", target, sent / 2**20, total / 2**20,
                         quarter * 25)
        return progress

    @classmethod
    def _stream_progress_logger(cls, target: str):
        """progress(sent, size, written) of a streamed upload: while the file is being
        written, a line at 16, 32, 64... MiB sent; once its size is known, the quarters."""
        quarters = cls._progress_logger(target)
        mark = [PROGRESS_MIN // 4]

        def progress(sent: int, size: int | None, written: int) -> None:
            if size is not None:
                if size >= PROGRESS_MIN:
                    quarters(sent, size)
            elif sent >= mark[0]:
                mark[0] *= 2
                log.info("uploading %s: %.1f of %.1f MiB (%d%%) written so far, as it is written",
                         target, sent / 2**20, written / 2**20, sent * 100 // max(1, written))
        return progress

    def persist(self, job: Job) -> None:
        """Rewrite the job's journal record (new path, new leftovers)."""
        with job.record_lock:
            if not job.cancelled and not job.closed:
                self.store.write_record(job.record())

    def persist_or_warn(self, job: Job) -> None:
        """persist(), but a full or failing cache disk does not stop the step: the
        uploads it would block are what frees the disk.  The record on disk still
        names the data; only a hidden remote leftover may go unrecorded (garbage, never
        lost data)."""
        try:
            self.persist(job)
        except OSError as exc:
            log.warning("could not update the journal record of %s (%s); going on", job.node.path, exc)

    def remote_files_under(self, prefix: str) -> list[Job]:
        """Jobs, cancelled ones included, with a temporary or aside file on the server
        below the directory ``prefix`` (ending in "/"): their cleanup names those paths."""
        with self._cond:
            jobs = list(self.jobs.values())
        return [j for j in jobs if not j.finishing and any(
            isinstance(p, str) and p.startswith(prefix) for p in [j.temp, *j.leftovers])]

    def pending(self) -> list[Job]:
        """Jobs carrying data (cancelled ones only clean up after themselves; a stream
        of a file still open carries none yet: the file's close will seal it)."""
        with self._cond:
            return sorted((j for j in self.jobs.values() if not j.cancelled and not j.streaming),
                          key=lambda j: j.seq)

    def streams(self) -> list[dict]:
        """Streamed uploads of files still open: path and bytes sent so far."""
        with self._cond:
            jobs = [j for j in self.jobs.values() if j.streaming and not j.cancelled]
        return [{"path": j.node.path, "sent": j.source.sent} for j in jobs]

    # -- streamed uploads (streaming.py) -------------------------------------------
    def reserve_stream(self) -> bool:
        """Take a slot for a streamed upload (False: streams are off, or STREAM_MAX
        run); ``start_stream`` uses it."""
        return self.streaming and not self._stopping and self._stream_slots.acquire(blocking=False)

    def start_stream(self, job: Job) -> None:
        """Start sending ``job`` (a Job with a source) while its file is written, in a
        slot taken by ``reserve_stream``."""
        job.state = "streaming"
        with self._cond:
            self.jobs[job.id] = job
        threading.Thread(target=self._run_stream, args=(job,), name="agavefs-stream", daemon=True).start()

    def seal_stream(self, job: Job, size: int, mtime: float) -> bool:
        """The file's close: ``job`` becomes the ordinary upload of its spool at
        ``size`` bytes (same id, same record as a sealed upload).  False when the
        stream is cancelled or aborted: the caller queues an ordinary upload."""
        with job.record_lock:
            if job.cancelled or job.closed or not job.source.seal(size):
                return False
            old_id = job.id
            with self._cond:
                self.jobs.pop(old_id, None)
                job.id = job.spool.id
                job.size, job.mtime = size, mtime
                self.jobs[job.id] = job
            self.store.write_record(job.record())
            self.store.remove_record(old_id)
        self.store.set_freeable(size)
        log.info("upload queued: %s (%d bytes, streamed while written)", job.node.path, size)
        return True

    def _run_stream(self, job: Job) -> None:
        try:
            target, recorded = self._claim_target(job, "streaming")
            if target is None:
                raise StreamAborted("cancelled")
            parent = posixpath.dirname(target)
            if not recorded:
                self.persist_or_warn(job)  # the temporary name is recorded before anything is sent
            log.info("streaming %s to the server as it is written", target)
            job.source.progress = self._stream_progress_logger(target)
            self.backend.upload_stream(job.source.chunks, parent, posixpath.basename(job.temp))
        except Exception as exc:  # noqa: BLE001 - every outcome is handled below
            self._stream_slots.release()
            if not job.cancelled and not job.source.abort(f"upload failed: {exc}"):
                # sealed meanwhile: an ordinary upload of a sealed spool, retried as such
                return self._failed(job, "upload", exc)
            if not isinstance(exc, (StreamAborted, Transient)) and not job.cancelled:
                self.streaming = False
                log.warning("the server refused a streamed upload (%s): files upload at their "
                            "close from now on", exc)
            elif not job.cancelled:
                log.info("streamed upload of %s stopped (%s); it uploads at its close", job.node.path, exc)
            self.cancel(job)
            try:
                self._cleanup_cancelled(job)
            except Exception as cleanup_exc:  # noqa: BLE001 - hidden leftovers only (journaled)
                log.info("cleanup of a dropped stream failed: %s", cleanup_exc)
                self._finish(job, cancelled=True)
            return
        self._stream_slots.release()
        self._uploaded(job)

    def wait(self, job: Job, timeout: float | None = None) -> int:
        """Block until ``job`` is stored (0) or an attempt fails (its errno)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = job.failures
        while not job.finished.is_set():
            with job.failure:
                if job.failures > failures:
                    return job.last_errno or 5
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0:
                    return 110  # ETIMEDOUT
                job.failure.wait(left)
        return 0

    def drain(self, progress=None, timeout: float | None = None, interval: float = 1.0) -> bool:
        """Wait until no job is left; call ``progress(files, bytes)`` as it goes.

        Cancelled jobs carry no data, but one that has sent its bytes leaves a hidden
        temporary file on the server until it deletes it (once its staging is over):
        those are waited for up to CLEANUP_WAIT seconds after the data is stored, then
        left to the journal's tombstones (the next mount deletes them)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._advance(None, 0.0)  # graces end: an unmount is waiting
        last = 0.0
        cleanup_until = None
        while True:
            with self._left:
                left = self._jobs_left
            jobs = self.pending()
            now = time.monotonic()
            if not jobs:
                with self._cond:
                    cleaning = any(not j.finishing and not j.streaming for j in self.jobs.values())
                if cleanup_until is None:
                    cleanup_until = now + CLEANUP_WAIT
                if not cleaning or now > cleanup_until or (deadline is not None and now > deadline):
                    if cleaning:
                        log.info("leaving the temporary files of cancelled uploads to the next mount "
                                 "(journal tombstones)")
                    if progress:
                        progress(0, 0)
                    return True
                self._wait_for_a_job(left, 0.02)
                continue
            if progress and now - last >= interval:
                progress(len(jobs), sum(j.size for j in jobs))
                last = now
            if deadline is not None and now > deadline:
                return False
            if len(jobs) > DRAIN_WAKE_JOBS:  # many left: a look every 50 ms is enough
                time.sleep(0.05)
            else:  # the last few: look again as soon as one is stored
                self._wait_for_a_job(left, 0.05)

    def _wait_for_a_job(self, left: int, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less if a job leaves the table after the
        count ``left`` was read."""
        with self._left:
            if self._jobs_left == left:
                self._left.wait(timeout)

    def stop(self, wait: bool = False) -> None:
        """Start no more steps; with ``wait``, also let the running ones end."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join(60)

    # -- scheduling --------------------------------------------------------------
    def expedite(self, job: Job, delay: float) -> None:
        """``job``'s first upload starts within ``delay`` seconds."""
        self._advance(job, delay)

    def _advance(self, job: Job | None, delay: float) -> None:
        """Bring forward the first upload of ``job`` (of every job: None) to now + delay."""
        due = time.monotonic() + delay
        with self._cond:
            self._heap = [(min(d, due) if step == "upload" and not j.attempts and job in (None, j) else d,
                           tie, step, j) for d, tie, step, j in self._heap]
            heapq.heapify(self._heap)
            self._cond.notify_all()

    def _schedule(self, delay: float, step: str, job: Job) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._tiebreak), step, job))
            self._cond.notify()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, step, job = heapq.heappop(self._heap)
            if job.finishing:
                continue
            try:
                getattr(self, "_step_" + step)(job)
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                self._failed(job, step, exc)

    def _failed(self, job: Job, step: str, exc: Exception) -> None:
        if job.cancelled:  # its spool may be gone already; nothing to retry
            try:
                self._cleanup_cancelled(job)
            except Exception as cleanup_exc:  # noqa: BLE001 - hidden leftovers only
                log.info("cleanup of a cancelled upload failed: %s", cleanup_exc)
                self._finish(job, cancelled=True)
            return
        job.attempts += 1
        job.last_error = f"{step}: {exc}"
        job.last_errno = to_errno(exc)
        delay = min(60.0, 2.0 ** min(job.attempts - 1, 6)) * (0.5 + random.random() / 2)
        if isinstance(exc, AuthError):
            delay = min(delay, SESSION_RETRY)
        log.warning("upload of %s failed (attempt %d, %s); retrying in %.1f s",
                    job.node.path, job.attempts, job.last_error, delay)
        with job.failure:
            job.failures += 1
            job.failure.notify_all()
        try:
            self.persist(job)
        except OSError:
            pass
        # a failed upload or a vanished temporary file starts over; finalize retries itself
        self._schedule(delay, "finalize" if step == "finalize" else "upload", job)

    # -- steps ---------------------------------------------------------------------
    def _step_upload(self, job: Job) -> None:
        if job.cancelled:
            return self._cleanup_cancelled(job)
        with self._upload_slots:
            if job.cancelled:
                return self._cleanup_cancelled(job)
            target, recorded = self._claim_target(job, "uploading")
            if target is None:
                return self._cleanup_cancelled(job)
            parent = posixpath.dirname(target)
            if not recorded:
                self.persist_or_warn(job)  # the temporary name is recorded before anything is sent
            log.info("uploading %s (%d bytes, attempt %d)", target, job.size, job.attempts + 1)
            self.backend.upload(job.spool.path, parent, posixpath.basename(job.temp),
                                progress=self._progress_logger(target) if job.size >= PROGRESS_MIN else None)
        self._uploaded(job)

    def _claim_target(self, job: Job, state: str) -> tuple[str | None, bool]:
        """Enter ``state`` and pick the job's target and a fresh temporary name beside
        it: (target, whether the journal already names that temporary path - the one
        chosen at submit, when the target is still in the same directory); (None,
        False) when the job was cancelled first.

        The target and the state change together under the VFS lock: a directory rename
        (VFS._rename_dir) either sees this job busy (and waits for it, or drops it when
        it streams), or has already moved the node, so the temporary file goes where the
        node is.  Under _cond too: cancel() either sees the job busy (and leaves the
        cleanup of what it sends to it) or has set ``cancelled`` before this check (a
        cancelled job that still uploaded would leave its file on the server)."""
        with self.owner.lock:
            with self._cond:
                if job.cancelled:
                    return None, False
                job.state = state
            target = job.node.path
            if job.temp:
                job.leftovers.append(job.temp)
            # job.temp is set before next_temp is cleared: a record written meanwhile by
            # another thread (a rename's) names the path either way
            chosen = job.next_temp
            if chosen is not None and posixpath.dirname(chosen) == posixpath.dirname(target):
                job.temp, job.next_temp = chosen, None
                return target, True
            job.temp, job.next_temp = temp_path(posixpath.dirname(target)), None
            return target, False

    def _uploaded(self, job: Job) -> None:
        """The body is sent (202): wait out the staging, then finalize."""
        job.spool.drop_cache()  # it is on disk; a retry reads it from there
        job.state = "staging"
        job.last_seen = job.seen_length = None
        job.last_progress = job.uploaded_at = time.monotonic()
        if getattr(self.backend, "synchronous_upload", False):
            self._schedule(0, "finalize", job)
        else:
            self._schedule(POLL_FIRST, "poll", job)

    @staticmethod
    def _next_poll(job: Job, now: float, length: int | None) -> float:
        """Seconds until the next look at a pending staging."""
        delay = POLL_SHARE * (now - job.uploaded_at)
        seen, job.seen_length = job.seen_length, (now, length) if length is not None else None
        if length is not None and length >= job.size:
            delay = 0.0  # copied: the completion event is due
        elif length is not None and seen is not None and length > seen[1] and now > seen[0]:
            delay = (job.size - length) * (now - seen[0]) / (length - seen[1])  # when the copy ends
        return min(POLL_MAX, max(POLL_FIRST, delay))

    def _step_poll(self, job: Job) -> None:
        state, progress, length = self.backend.staging_state(job.temp, job.size)
        now = time.monotonic()
        if job.cancelled and (state is not Staging.PENDING or now - job.last_progress > self.staging_timeout):
            # a cancelled upload is deleted once it has landed, or it would land later
            return self._cleanup_cancelled(job)
        if state is Staging.STORED and not job.cancelled:
            self._schedule(0, "finalize", job)
            return
        if state is Staging.FAILED:
            self._distrust_streams(job)
            raise AgaveFSError(f"the server's staging of {job.node.path} failed")
        if progress != job.last_seen:
            job.last_seen = progress
            job.last_progress = now
        if state is Staging.LOST or now - job.last_progress > self.staging_timeout:
            self._distrust_streams(job)
            raise AgaveFSError(f"the staging of {job.node.path} made no progress for "
                               f"{self.staging_timeout:.0f} s (lost)")
        self._schedule(self._next_poll(job, now, length), "poll", job)

    def _distrust_streams(self, job: Job) -> None:
        """A streamed body the server accepted but did not store right (a proxy that
        mangles bodies of unknown length would look like this): the retry, and every
        later file, uploads at its close."""
        if job.source is not None and self.streaming and job.attempts == 0:
            self.streaming = False
            log.warning("the server did not store the streamed upload of %s: files upload at "
                        "their close from now on", job.node.path)

    def _step_finalize(self, job: Job) -> None:
        node = job.node
        with node.ns_lock:
            if job.cancelled:
                return self._cleanup_cancelled(job)
            job.state = "finalizing"
            with self.owner.lock:
                target = node.path
            self._move_into_place(job, target)
            self._delete_leftovers(job)
            self._finish(job, path=target)

    def _move_into_place(self, job: Job, target: str) -> None:
        def note_aside(aside: str) -> None:
            job.leftovers.append(aside)
            self.persist_or_warn(job)
        replace_remote(self.backend, job.temp, target, note_aside)

    def _delete_leftovers(self, job: Job) -> None:
        for path in list(job.leftovers):
            try:
                self.backend.delete(path)
            except NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - garbage, not data
                log.info("could not delete leftover %s: %s", path, exc)
                continue
            job.leftovers.remove(path)

    def _cleanup_cancelled(self, job: Job) -> None:
        if job.temp:
            job.leftovers.append(job.temp)
            job.temp = None
        self._delete_leftovers(job)
        self._finish(job, cancelled=True)

    def _finish(self, job: Job, path: str | None = None, cancelled: bool = False) -> None:
        with self._cond:
            if job.id not in self.jobs or job.finishing:
                return
            job.finishing = True
        job.state = "cancelled" if cancelled else "done"
        if not cancelled:
            self.bytes_uploaded += job.size
            self.files_uploaded += 1
            log.info("stored %s (%d bytes)", path, job.size)
        with job.record_lock:
            job.closed = True
            self.store.remove_record(job.id)
        self.store.set_freeable(-job.size)
        self.owner.job_done(job, path)
        # the job is over for its waiters before its spool file goes (an unlink of a
        # large file takes ~0.1 s): the store counts the removal until it is done, and
        # the daemon settles the store before it exits
        self.store.hold()
        try:
            with self._cond:
                self.jobs.pop(job.id, None)
            with self._left:
                self._jobs_left += 1
                self._left.notify_all()
            job.finished.set()
            with job.failure:
                job.failure.notify_all()
        finally:
            try:
                job.spool.decref()
            finally:
                self.store.release()
