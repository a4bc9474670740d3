"""Walk-ahead: listing the directories a tree walker is about to enter.

Design note
-----------
``find``, ``du``, ``ls -R``, ``rsync``, ``tar`` and ``git`` walk a tree one directory
at a time, and each readdir waits for its listing: a tree of N directories costs N
round trips in a row (18 s for 820 directories at 20 ms per request).  When a readdir
shows a walk in progress - its directory's parent, or an ancestor's, was read by a
readdir moments ago - the directories the walker enters next (the subdirectories of
this one and its siblings) are listed in the background by a few threads, into the
metadata cache.  The walker then finds them cached, or waits for the request already
in flight (the VFS lists a directory once at a time: ``VFS._listing_shared``).  Each
directory is still listed once: the requests are the same, only earlier and several
at once.

Bounded: ``workers`` requests at once, ``QUEUE_MAX`` directories waiting, and never
more than one level ahead of the walker (a prefetched listing schedules the next
level only when a readdir reads it), so a walk that stops leaves at most one level
of listings unused.  A single ``ls``, or ``ls`` of unrelated directories, lists
nothing ahead.  Failures are dropped: the walker's own readdir asks again.

Locks: ``_cond`` guards the queue and the recent readdirs; it is a leaf (the VFS
calls in with its own locks released, and workers call out without it).
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections import OrderedDict, deque
from typing import Callable

from agavefs.vfs.workers import Workers

log = logging.getLogger("agavefs.vfs")

WALK_WINDOW = 30.0  # a readdir within this long of one of its ancestor's continues a walk
QUEUE_MAX = 512
RECENT_MAX = 4096
SETTLED_FOR = 1.0  # s a directory with every subdirectory listed is not looked at again


class WalkAhead:
    def __init__(self, list_dir: Callable[[str], None], workers: int):
        self._list_dir = list_dir  # list a directory into the cache (no-op when cached)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()  # protected by _cond
        self._queued: set[str] = set()  # protected by _cond
        self._recent: OrderedDict[str, float] = OrderedDict()  # dir -> last readdir in it or below
        self._settled: OrderedDict[str, float] = OrderedDict()  # dir -> when found all listed
        self.prefetched = 0  # listings fetched ahead (status)
        self._workers = Workers("walk", workers, self._cond, self._queue, self._list_one)

    def entered(self, path: str, unlisted: Callable[[str], list[str] | None]) -> None:
        """A readdir of ``path`` by a user (its listing is known): when it continues a
        walk, queue ``unlisted(d)`` (the subdirectories of ``d`` not listed yet; None
        when ``d``'s own listing is not known) for ``path`` then for its parent (its
        siblings); they are not computed otherwise, nor for a directory settled moments
        ago (a readdir is on the FUSE hot path)."""
        now = time.monotonic()
        with self._cond:
            parent = posixpath.dirname(path)
            walking = path != "/" and now - self._recent.get(parent, float("-inf")) < WALK_WINDOW
            _touch(self._recent, path, now, ancestors=True)
            if not walking or self._workers.stopping:
                return
            look = [d for d in (path, parent) if now - self._settled.get(d, float("-inf")) >= SETTLED_FOR]
        if not look:
            return
        wanted: list[str] = []
        settled: list[str] = []
        for d in look:
            found = unlisted(d)
            if found is None:
                continue  # nothing known of it yet: not settled
            wanted += found
            if not found:
                settled.append(d)
        with self._cond:
            for d in settled:
                _touch(self._settled, d, now)
            if self._workers.stopping:
                return
            added = 0
            for d in wanted:
                if d != path and d not in self._queued and len(self._queue) < QUEUE_MAX:
                    self._queue.append(d)
                    self._queued.add(d)
                    added += 1
            if added:
                self._cond.notify(added)

    def stop(self) -> None:
        with self._cond:
            self._workers.stop()
            self._queued.clear()

    def _list_one(self, path: str) -> None:
        try:
            if self._list_dir(path):
                self.prefetched += 1
        except Exception as exc:  # noqa: BLE001 - the walker's readdir asks again
            log.debug("listing %s ahead failed: %s", path, exc)
        finally:
            with self._cond:
                self._queued.discard(path)


def _touch(times: OrderedDict[str, float], path: str, now: float, ancestors: bool = False) -> None:
    """Record ``now`` for ``path`` (and each of its ancestors) in the bounded LRU
    ``times`` (RECENT_MAX entries)."""
    p = path
    while True:
        times[p] = now
        times.move_to_end(p)
        if not ancestors or p == "/":
            break
        p = posixpath.dirname(p)
    while len(times) > RECENT_MAX:
        times.popitem(last=False)
