"""The background staging queue: uploaded bodies copied into place after a delay.

Design note.  The real files service answers an upload with 202 STAGING_QUEUED once
the body sits in a temp file, and a Quartz pool (5 workers per host) copies it to
storage later; the queue lives in memory, so a restart loses it.  Here:

* ``submit`` records the job in SQLite (``staging`` table) and pushes it on a heap
  ordered by due time (enqueue time + ``delay``); each job has its own delay, and
  ``workers`` threads run due jobs concurrently, so N small uploads take about
  ``delay`` in total, not N x delay.
* Jobs for the same target path run one after the other, in submission order (a later
  upload of the same name wins): ``_active[path]`` holds the waiting jobs of a path
  whose job is running.
* The copy writes the target IN PLACE, progressively (open without truncating, then
  truncate to 0 and append chunk by chunk), so a listing during the copy shows a
  growing length, and an overwrite is visible as such.  ``bps`` throttles the copy
  (test knob).  Success records STAGING_COMPLETED; an error STAGING_FAILED.
* Rows still in the table at start-up belong to a server that stopped before running
  them: ``recover`` records STAGING_FAILED for each and removes its temp file.

Locks: ``_cond`` (a Condition over one Lock) guards ``_heap``, ``_active``, ``_seq``
and ``_stopping``; the copy itself runs outside it.  stdlib only.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .state import State

log = logging.getLogger("agavefs.emulator.staging")
CHUNK = 1 << 20


class Interrupted(Exception):
    pass


@dataclass(order=True)
class Job:
    due: float
    seq: int
    id: str = field(compare=False)
    path: str = field(compare=False)
    temp: str = field(compare=False)
    user: str = field(compare=False)
    size: int = field(compare=False)


class StagingQueue:
    def __init__(self, state: State, open_target: Callable[[str], int], delay: float, workers: int = 8,
                 bps: float = 0.0, fail_rate: float = 0.0, lose_rate: float = 0.0):
        self.state = state
        self.open_target = open_target  # Agave path -> fd opened O_WRONLY|O_CREAT (validated)
        self.delay = max(0.0, delay)
        self.bps = bps
        self.fail_rate = fail_rate
        self.lose_rate = lose_rate
        self._cond = threading.Condition()
        self._heap: list[Job] = []
        self._active: dict[str, list[Job]] = {}
        self._seq = 0
        self._stopping = False
        self._threads = [threading.Thread(target=self._worker, name=f"staging-{i}", daemon=True)
                         for i in range(max(1, workers))]

    def recover(self) -> int:
        """Fail the jobs a previous server accepted but never ran."""
        pending = self.state.jobs_pending()
        for job in pending:
            self.state.history_add(job["path"], "STAGING_FAILED", job["username"],
                                   "Staging failed: the server stopped before the file was staged")
            _unlink(job["temp"])
            self.state.job_done(job["id"])
        return len(pending)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def submit(self, job_id: str, path: str, temp: str, user: str, size: int) -> None:
        self.state.job_add(job_id, path, temp, user, size)
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, Job(time.monotonic() + self.delay, self._seq, job_id, path, temp, user, size))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + sum(1 + len(w) for w in self._active.values())

    # -- workers -----------------------------------------------------------------
    def _next_job(self) -> Job | None:
        """Wait for a due job whose path is idle; None when stopping."""
        with self._cond:
            while not self._stopping:
                if self._heap:
                    wait = self._heap[0].due - time.monotonic()
                    if wait <= 0:
                        job = heapq.heappop(self._heap)
                        if job.path in self._active:
                            self._active[job.path].append(job)
                            continue
                        self._active[job.path] = []
                        return job
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _finished(self, job: Job) -> Job | None:
        """Mark ``job`` done; return the next waiting job of the same path, if any."""
        with self._cond:
            waiting = self._active.get(job.path, [])
            if waiting and not self._stopping:
                return waiting.pop(0)
            self._active.pop(job.path, None)
            return None

    def _worker(self) -> None:
        job = self._next_job()
        while job is not None:
            try:
                self._run(job)
            except Interrupted:
                return  # left in the table: STAGING_FAILED at the next start
            except Exception:  # never let a worker die
                log.exception("staging job %s crashed", job.id)
            job = self._finished(job) or self._next_job()

    def _run(self, job: Job) -> None:
        if self.lose_rate and random.random() < self.lose_rate:
            log.info("staging job %s lost (test knob)", job.id)
            self._drop(job)
            return
        try:
            if self.fail_rate and random.random() < self.fail_rate:
                raise OSError("injected staging failure (test knob)")
            self._copy(job)
        except Interrupted:
            raise
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("staging of %s failed: %s", job.path, reason)
            self.state.history_add(job.path, "STAGING_FAILED", job.user, f"Staging failed: {reason}")
        else:
            self.state.history_add(job.path, "STAGING_COMPLETED", job.user,
                                   "Your scheduled transfer completed successfully")
        self._drop(job)

    def _drop(self, job: Job) -> None:
        _unlink(job.temp)
        self.state.job_done(job.id)

    def _copy(self, job: Job) -> None:
        chunk = CHUNK if not self.bps else max(1, min(CHUNK, int(self.bps / 10)))
        buf = bytearray(chunk)
        view = memoryview(buf)
        with open(job.temp, "rb", buffering=0) as src:
            fd = self.open_target(job.path)
            try:
                os.ftruncate(fd, 0)
                started = time.monotonic()
                done = 0
                while True:
                    if self._stopping:
                        raise Interrupted()
                    n = src.readinto(buf)
                    if not n:
                        break
                    written = 0
                    while written < n:
                        written += os.write(fd, view[written:n])
                    done += n
                    if self.bps:
                        ahead = done / self.bps - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
            finally:
                os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove staging temp file %s: %s", path, exc)
