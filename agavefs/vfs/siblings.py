"""Sibling prefetch: fetching the small files a reader is about to open.

Design note
-----------
``cat *``, ``grep -r``, ``tar c``, ``cp -r`` and ``rsync`` read the files of a
directory one after the other, each whole.  Each small file costs a round trip that
the reader waits for (1,000 files of 4 KiB: 23 s at 20 ms per request), and no
read-ahead inside a file can help: the next request is for another file.  When a
reader has read two sibling files in a row to their end - in the order of the
directory's listing (the order readdir gives: tar, cp, grep -r, find) or in name
order (a shell glob) - the next ``ahead`` small files in that order are fetched in
the background, each with one GET, as many at once as there are workers.  An open
of one of them is then answered from memory, without a request.  Each file is still
fetched once: the requests are the same, only earlier and several at once.

Bounded: only files up to ``SMALL_MAX``; at most ``ahead`` files past the one being
read, ``workers`` requests at once, and ``BYTES_MAX`` held (the oldest go first).
A reader that stops leaves at most ``ahead`` files fetched for nothing; one that
reads a file or two, or skips around, starts nothing.

Freshness: a copy is used only if the file's size and mtime (from the metadata
cache, as any open sees them) still match those it was fetched under, and within
``FRESH`` seconds of its fetch; changes made through the mount drop it (``forget``).
So a prefetched read is as fresh as an ``ls -l`` of the directory, never older than
a few seconds.  Failures are dropped: the open reads the file itself.

Locks: ``_lock`` guards the cache, the in-flight set and the per-directory reading
state; it is a leaf (no call out while holding it).
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

SMALL_MAX = 1024 * 1024  # larger files have their own read-ahead (reader.py)
BYTES_MAX = 32 * 1024 * 1024
FRESH = 10.0  # seconds a fetched copy may be used
DIRS_MAX = 16  # directories whose reading order is remembered


class _DirState:
    """What a directory's reader did, and its files in two orders (listing, names)."""

    def __init__(self, key: object, children: dict):
        self.key = key  # the cached listing this was made from
        self.size = len(children)
        self.files = {n: (e.size, e.mtime) for n, e in children.items() if not e.is_dir}
        self.orders = (list(self.files), sorted(self.files))
        self.index = tuple({n: i for i, n in enumerate(o)} for o in self.orders)
        self.last_done: str | None = None  # the last file read to its end
        self.streak = 0  # files read to their end one after the other
        self.order = 0  # which order the streak follows


class SiblingPrefetch:
    def __init__(self, fetch: Callable[[str, int], bytes],
                 listing: Callable[[str], object | None], *, ahead: int, workers: int):
        """``fetch(path, size)`` returns the file's bytes; ``listing(dir)`` returns the
        cached listing of ``dir`` (its ``children``: {name: entry}), or None."""
        self._fetch = fetch
        self._listing = listing
        self.ahead = ahead
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._dirs: OrderedDict[str, _DirState] = OrderedDict()  # protected by _lock
        self._cache: OrderedDict[str, tuple[int, float, bytes, float]] = OrderedDict()  # path -> (size, mtime, data, at)
        self._bytes = 0  # protected by _lock
        self._queue: deque[tuple[str, int, float]] = deque()  # protected by _lock
        self._queued: set[str] = set()  # queued or in flight; protected by _lock
        self._void: set[str] = set()  # in flight and changed since; protected by _lock
        self._inflight: set[str] = set()  # being fetched (also in _queued); protected by _lock
        self.fetched = 0  # files fetched ahead (status)
        self.used = 0  # opens answered from a fetched copy (status)
        self._workers = Workers("siblings", workers, self._cond, self._queue, self._fetch_one,
                                taken=lambda item: self._inflight.add(item[0]))

    # -- the read path's hooks ----------------------------------------------------------
    def take(self, path: str, size: int, mtime: float, timeout: float = 30.0) -> bytes | None:
        """The fetched copy of ``path`` if it is still the file of that size and mtime.
        A fetch of it in flight is waited for (the opener would only send the same
        request again); one still queued is dropped (the opener sends it)."""
        with self._lock:
            if path in self._queued and path not in self._inflight:
                for q in [q for q in self._queue if q[0] == path]:
                    self._queue.remove(q)  # in place: the workers hold this deque
                self._queued.discard(path)
            deadline = time.monotonic() + timeout
            while path in self._inflight and not self._workers.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            got = self._cache.pop(path, None)
            if got is None:
                return None
            self._bytes -= len(got[2])
            if got[0] != size or got[1] != mtime or time.monotonic() - got[3] > FRESH:
                return None
            self.used += 1
            return got[2]

    def finished(self, path: str) -> None:
        """A reader read ``path`` (a remote file) to its end: continue or start a
        streak, and when it is one, fetch the files that come next."""
        parent, name = posixpath.split(path)
        listing = self._listing(parent)
        if listing is None:
            return
        children = listing.children
        with self._lock:
            state = self._dirs.get(parent)
            if state is None or state.key is not listing or state.size != len(children) \
                    or name not in state.files:
                # dict() copies at once (no Python code runs while it copies): a snapshot
                # even while the cache adds to the listing
                fresh = _DirState(listing, dict(children))
                if state is not None and state.key is listing:
                    fresh.last_done, fresh.streak, fresh.order = state.last_done, state.streak, state.order
                state = self._dirs[parent] = fresh
            self._dirs.move_to_end(parent)
            while len(self._dirs) > DIRS_MAX:
                self._dirs.popitem(last=False)
            follows = None
            if state.last_done is not None:
                for which in (state.order, 1 - state.order):
                    i = state.index[which].get(name)
                    if i is not None and i > 0 and state.orders[which][i - 1] == state.last_done:
                        follows = which
                        break
            if follows is None:
                state.streak, state.order = 1, 0
            else:
                state.streak, state.order = state.streak + 1, follows
            state.last_done = name
            i = state.index[state.order].get(name)
            if state.streak < 2 or i is None:
                return
            for next_name in state.orders[state.order][i + 1:i + 1 + self.ahead]:
                child = posixpath.join(parent, next_name)
                size, mtime = state.files[next_name]
                if size == 0 or size > SMALL_MAX or child in self._queued or child in self._cache:
                    continue
                self._queue.append((child, size, mtime))
                self._queued.add(child)
            self._cond.notify_all()

    def forget(self, path: str) -> None:
        """``path`` (and anything below it) changed through the mount."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            if not self._cache and not self._queued:  # the usual case: nothing held
                return
            for p in [p for p in self._cache if p == path or p.startswith(prefix)]:
                self._bytes -= len(self._cache.pop(p)[2])
            for p in self._queued:  # in flight: what they bring is dropped
                if p == path or p.startswith(prefix):
                    self._void.add(p)

    def stop(self) -> None:
        with self._lock:
            self._workers.stop()

    # -- workers --------------------------------------------------------------------------
    def _fetch_one(self, item: tuple[str, int, float]) -> None:
        path, size, mtime = item
        try:
            data = self._fetch(path, size)
        except Exception as exc:  # noqa: BLE001 - the open reads the file itself
            log.debug("prefetch of %s failed: %s", path, exc)
            data = None
        with self._lock:
            self._queued.discard(path)
            self._inflight.discard(path)
            self._cond.notify_all()  # an opener may wait for it
            void = path in self._void
            self._void.discard(path)
            if data is None or len(data) != size or void or self._workers.stopping:
                return
            self.fetched += 1
            old = self._cache.pop(path, None)
            if old is not None:
                self._bytes -= len(old[2])
            self._cache[path] = (size, mtime, data, time.monotonic())
            self._bytes += size
            while self._bytes > BYTES_MAX and self._cache:
                self._bytes -= len(self._cache.popitem(last=False)[1][2])
