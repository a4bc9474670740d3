"""Knowing when an upload is really stored: file history and staging state.

Design note
-----------
An upload answers 202 at once and a background job copies the body to storage
later; the job can fail or be lost (agave-api.md sections 5 and 6).  The only
trustworthy signals are the file's history *after the newest STAGING_QUEUED*
(agavepy's "any event says COMPLETE" is fooled by earlier uploads) and the
listing's ``length``.  History is oldest first, paged, and grows by one DOWNLOAD
event per read, so a mounted file read often has a long history whose interesting
end is on the last page.

``_history_tail(path)`` finds the newest STAGING_QUEUED cheaply:

* with a cursor from an earlier look at the same path (index and identity of the
  newest STAGING_QUEUED seen), it pages forward from that index only, after
  checking that the event there is still the same one (else it starts over);
* otherwise it learns the history's length with one page plus O(log n) one-item
  probes (paging.count_items), then reads windows backwards from the end until a
  STAGING_QUEUED turns up.

With ``fresh=True`` (a path whose history began with the watched upload, like the
write-back's unique temporary names) the first page is enough: one history request
per look instead of a page plus a probe (see ``_fresh_tail`` for why, and for the
periodic full check that keeps a page-capping server from stalling it).  The
listing length is asked in parallel with the history.

``staging_state`` makes ONE observation; ``wait_staged`` polls it with backoff
(50 ms growing to 1 s) until STORED or FAILED, or reports LOST when nothing moved
(no new event, same length) for ``stall_timeout`` seconds or the deadline passed,
so that the caller can upload again.  It never loops forever.

Locks: ``_cursor_lock`` guards the cursor cache (``_hist_cursors``, an LRU dict), the
pending-look counts of fresh paths (``_fresh_looks``) and the lazily created thread
pool that asks listing lengths (``_pool``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import OrderedDict

from agavefs.errors import NotFound, ProtocolError, Transient
from agavefs.client.models import HistoryEvent, StagingObservation, StagingState, parse_event
from agavefs.client.paging import PageCaps, collect, collect_range, count_items
from agavefs.client.paths import SysPath
from agavefs.client.responses import unwrap

HISTORY_PAGE = 500
MAX_CURSORS = 4096
STAT_THREADS = 4  # threads asking listing lengths beside history requests
FRESH_FULL_CHECK = 4  # every 4th pending look at a fresh path pages through its history
QUEUED = "STAGING_QUEUED"
COMPLETED = "STAGING_COMPLETED"
FAILED = "STAGING_FAILED"


def _event_key(raw: object):
    if isinstance(raw, dict):
        return (str(raw.get("status")), str(raw.get("created")), str(raw.get("description")))
    return repr(raw)


def _with_first_page(fetch, first_page: list):
    """``fetch`` answering its first request for page (0, HISTORY_PAGE) from memory."""
    pending = [first_page]

    def fetch_once(offset: int, limit: int) -> list:
        if pending and offset == 0 and limit == HISTORY_PAGE:
            return pending.pop()
        return fetch(offset, limit)

    return fetch_once


class StagingOps:
    """Mixin for AgaveClient: history, staging_state, wait_staged."""

    def _init_staging(self) -> None:
        self._hist_caps = PageCaps()
        self._cursor_lock = threading.Lock()
        self._hist_cursors: OrderedDict[str, tuple[int, tuple]] = OrderedDict()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # created on first use
        self._fresh_looks: OrderedDict[str, int] = OrderedDict()  # fresh path -> pending looks

    # -- raw history -------------------------------------------------------------------------
    def _history_fetcher(self, sp: SysPath, deadline: float | None = None):
        url = self._url("history", sp)
        label = self._label(sp)

        def fetch(offset: int, limit: int) -> list:
            resp = self.transport.request("GET", url, kind="history", label=label,
                                          params={"offset": offset, "limit": limit},
                                          deadline=deadline)
            result = unwrap(resp.content, f"GET history {label}")
            if result is None or result == {}:
                return []
            if not isinstance(result, list):
                raise ProtocolError(f"GET history {label}: the result is not a list")
            return result

        return fetch

    def history(self, path: str) -> list[dict]:
        """Every history event of ``path``, oldest first (all pages)."""
        sp = SysPath.parse(path)
        fetch = self._history_fetcher(sp)
        raw = collect(fetch, self._hist_caps, HISTORY_PAGE, key=_event_key, dedupe=False)
        for r in raw:
            parse_event(r)  # type check
        return raw

    def _history_tail(self, sp: SysPath, deadline: float | None = None, first_page: list | None = None
                      ) -> tuple[HistoryEvent | None, list[HistoryEvent]]:
        """(newest STAGING_QUEUED or None, the events after it).  ``first_page``: page
        (0, HISTORY_PAGE), already fetched, used instead of asking again."""
        key = str(sp)
        fetch = self._history_fetcher(sp, deadline)
        if first_page is not None:
            fetch = _with_first_page(fetch, first_page)
        with self._cursor_lock:
            cursor = self._hist_cursors.get(key)
        if cursor is not None:
            index, qkey = cursor
            raw = collect(fetch, self._hist_caps, HISTORY_PAGE, key=_event_key, start=index,
                          dedupe=False)
            events = [parse_event(r) for r in raw]
            if events and events[0].key == qkey:
                return self._remember(key, index, events)
        count, first = count_items(fetch, self._hist_caps, HISTORY_PAGE)
        # walk back from the end one server page at a time (the cap when it has one)
        size = min(HISTORY_PAGE, self._hist_caps.cap or HISTORY_PAGE)
        after: list[HistoryEvent] = []
        stop = count
        while stop > 0:
            start = max(0, stop - size)
            if start == 0 and len(first) >= stop:
                window = first[:stop]
            else:
                window = collect_range(fetch, start, stop, size)
            events = [parse_event(r) for r in window]
            for i in range(len(events) - 1, -1, -1):
                if events[i].status == QUEUED:
                    return self._remember(key, start, events[i:] + after, offset_in=i)
            after = events + after
            stop = start
        return None, after

    def _fresh_tail(self, sp: SysPath, deadline: float | None):
        """((newest STAGING_QUEUED, the events after it), None) from the first history
        page of a fresh path; or (None, that page) for the general path to reuse.

        Why one page is enough: on a fresh path the only STAGING_QUEUED events are
        those of the upload being watched, so one seen with an outcome after it on
        the first page decides, whatever a capped page may have left unshown (a
        re-sent body of the same upload would only repeat the same bytes).  Without
        an outcome the answer is PENDING, which is always safe; but every
        FRESH_FULL_CHECK-th such look takes the general path, which pages through,
        so that a server capping pages below the history's length (the outcome
        beyond the cap) is noticed a few polls late instead of never."""
        key = str(sp)
        raw = self._history_fetcher(sp, deadline)(0, HISTORY_PAGE)
        if not isinstance(raw, list) or len(raw) >= HISTORY_PAGE:
            return None, raw
        events = [parse_event(r) for r in raw]
        newest = max((i for i, e in enumerate(events) if e.status == QUEUED), default=None)
        if newest is None:
            return None, raw
        self._hist_caps.maybe_more(len(raw), HISTORY_PAGE)  # what it showed still counts
        after = events[newest + 1:]
        with self._cursor_lock:
            if any(e.status in (COMPLETED, FAILED) for e in after):
                self._fresh_looks.pop(key, None)
                return (events[newest], after), None
            looks = self._fresh_looks.pop(key, 0) + 1
            self._fresh_looks[key] = looks
            while len(self._fresh_looks) > MAX_CURSORS:
                self._fresh_looks.popitem(last=False)
        if looks % FRESH_FULL_CHECK:
            return (events[newest], after), None
        return None, raw

    def _remember(self, key: str, base: int, events: list[HistoryEvent], offset_in: int = 0):
        """Record the newest STAGING_QUEUED in ``events`` (which start at index
        ``base + offset_in``) and split there."""
        newest = max((i for i, e in enumerate(events) if e.status == QUEUED), default=None)
        if newest is None:
            return None, events
        with self._cursor_lock:
            self._hist_cursors[key] = (base + offset_in + newest, events[newest].key)
            self._hist_cursors.move_to_end(key)
            while len(self._hist_cursors) > MAX_CURSORS:
                self._hist_cursors.popitem(last=False)
        return events[newest], events[newest + 1:]

    def _forget_history(self, path: str) -> None:
        with self._cursor_lock:
            self._hist_cursors.pop(path, None)

    # -- staging -------------------------------------------------------------------------
    def staging_state(self, path: str, expected_size: int, *, deadline: float | None = None,
                      fresh: bool = False) -> StagingObservation:
        """ONE look at an upload of ``expected_size`` bytes to ``path``.

        ``fresh``: the path's history began with the upload being watched (a unique
        temporary name nothing else writes, as the write-back uses): its first
        history page decides (``_fresh_tail``), one request instead of a page plus
        a probe for more.
        """
        sp = SysPath.parse(path)
        # the listing length is asked in parallel with the history: one round trip per
        # look instead of two.  Either order is sound: a STORED verdict needs the
        # COMPLETED event, which the server records only after the copy has ended.
        stat = self._staging_pool().submit(self._length_of, sp, deadline)
        try:
            tail, first = self._fresh_tail(sp, deadline) if fresh else (None, None)
            queued, after = tail if tail is not None else self._history_tail(sp, deadline, first)
        except NotFound:
            queued, after = None, []
        except BaseException:
            concurrent.futures.wait([stat])  # no request left behind; the history's error wins
            raise
        length = stat.result()
        statuses = tuple(e.status for e in after)
        outcome = next((s for s in reversed(statuses) if s in (COMPLETED, FAILED)), None)
        if queued is None:
            state = StagingState.PENDING
        elif outcome == FAILED:
            state = StagingState.FAILED
        elif outcome == COMPLETED and length == expected_size:
            state = StagingState.STORED
        else:
            state = StagingState.PENDING
        return StagingObservation(state, length, statuses, queued.key if queued else None)

    def _length_of(self, sp: SysPath, deadline: float | None) -> int | None:
        """The listing length of a file (None: not there, or a directory)."""
        try:
            entry = self.stat(str(sp), deadline=deadline)
        except NotFound:
            return None
        return None if entry.is_dir else entry.size

    def _staging_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._cursor_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(STAT_THREADS,
                                                                   thread_name_prefix="agavefs-stat")
            return self._pool

    def wait_staged(self, path: str, expected_size: int, deadline: float, *,
                    stall_timeout: float = 60) -> StagingState:
        """Poll until STORED or FAILED; LOST when nothing moved for ``stall_timeout``
        seconds or ``deadline`` (an absolute ``time.monotonic()`` value) passed."""
        delay = 0.05
        last_key = None
        last_move = time.monotonic()
        while True:
            now = time.monotonic()
            request_deadline = min(deadline, now + self.transport.op_timeout)
            try:
                obs = self.staging_state(path, expected_size, deadline=request_deadline)
            except Transient as exc:
                self.log.info("staging of %s: cannot observe now (%s)", path, exc.message)
                obs = None
            now = time.monotonic()
            if obs is not None:
                if obs.state in (StagingState.STORED, StagingState.FAILED):
                    return obs.state
                if obs.progress_key != last_key:
                    last_key = obs.progress_key
                    last_move = now
            if now - last_move >= stall_timeout:
                self.log.info("staging of %s: nothing moved for %.0f s: lost", path, stall_timeout)
                return StagingState.LOST
            if now >= deadline:
                self.log.info("staging of %s: deadline passed", path)
                return StagingState.LOST
            time.sleep(max(0.0, min(delay, deadline - now, stall_timeout - (now - last_move))))
            delay = min(1.0, delay * 1.6)
