"""Paging over Agave's ``offset``/``limit`` collections (listings, history).

Design note
-----------
The server pages a *virtual* list (for listings: [self, child0, child1, ...]) and
recomputes it on every request: there is no snapshot (agave-api.md section 3).  The
rule "page until a page is shorter than ``limit``" fails on a server that caps
``limit`` (a cap of 7 returns 7 entries for limit=100), and plain offsets skip or
repeat entries when the directory changes between pages.  So:

* :class:`PageCaps` remembers, per endpoint and for the client's life, what the
  server has shown: the longest page ever returned (``max_seen``) and a confirmed
  cap (``cap``: a page shorter than asked that was followed by more data).  A short
  page of length n is the end when n == 0, or n < max_seen and n != cap (the server
  has returned longer pages, so n is not its cap).  Otherwise the page is
  *ambiguous* and one more page is requested: an empty answer ends the listing,
  data confirms the cap.  A fresh client therefore pays one extra small request per
  listing until it has seen a page as long as the one in hand; afterwards short
  pages end listings immediately.
* That knowledge dies with the client, and a tree of small directories of one
  size (a 9x9x9 tree: every inner directory has 9 entries) would cost a probe per
  directory on every new mount.  So :class:`PageCaps` also remembers the longest
  page and where it came from (``longest``: its length and the caller's ``where``,
  for listings the path and offset), which the mount keeps for the next one
  (``agavefs/known_servers.py``).  A later client gets it back as a *hint*: an
  unverified claim that the server returns pages of that length.  It is not
  trusted as such (the server may have lowered its cap since, and a short page
  taken for the end would hide entries): the first ambiguous page that the hint
  would settle fetches that same page again (one request, once per client; the
  other threads wait for its answer).  If it comes back as long, the server
  still returns such pages and ``max_seen`` takes its length; if not (a lower
  cap, a changed or missing directory, an error) the hint is dropped and the
  client probes as before.
* Every page after the first (except a probe after an ambiguous page) starts one
  element early (``offset - 1``): that element must be the one that ended the
  previous page.  If it is not, the list
  shifted under us (an entry was added or removed before our offset) and the
  collection restarts from 0 (at most 3 times; then it continues without the check
  and relies on de-duplication).  A page that adds nothing new ends the loop, so a
  server that ignores ``offset`` cannot make it spin.

Locks: ``PageCaps._lock`` protects ``max_seen``, ``cap``, ``longest`` and ``_hint``;
``_hint_lock`` serialises the one check of a hint (taken before ``_lock``, and held
across that check's request; nothing else is held then).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable, Hashable

from agavefs.errors import ProtocolError

MAX_PAGES = 100_000
MAX_RESTARTS = 3


class PageCaps:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hint_lock = threading.Lock()
        self.max_seen = 0
        self.cap: int | None = None
        self.longest: tuple[int, object] | None = None  # (length, where) of the longest page
        self._hint: tuple[int, Callable[[int], int]] | None = None
        self.hint_ok: bool | None = None  # the hint's check: None before (or without) one

    def hint(self, n: int, check: Callable[[int], int]) -> None:
        """An earlier run saw pages of ``n`` items: ``check(n)`` fetches that page again
        (limit n) and returns its length.  Used at most once, when it would settle an
        ambiguous page."""
        with self._lock:
            self._hint = (int(n), check) if n > 1 else None

    def seen(self, n: int, where: object = None) -> int:
        """A page of n items came back (from ``where``, for ``longest``): the server
        returns pages that long.  Returns the longest seen before."""
        with self._lock:
            prior = self.max_seen
            self.max_seen = max(prior, n)
            if where is not None and n > 0 and (self.longest is None or n > self.longest[0]):
                self.longest = (n, where)
            return prior

    def maybe_more(self, n: int, limit: int, where: object = None) -> tuple[bool, bool]:
        """(more pages may follow, this page was ambiguous) after a page of n items."""
        prior = self.seen(n, where)
        with self._lock:
            verdict = self._judge(n, limit, prior)
            if not verdict[1] or self._hint is None or self._hint[0] <= n:
                return verdict
        self._check_hint()
        with self._lock:
            return self._judge(n, limit, self.max_seen)

    def _judge(self, n: int, limit: int, prior: int) -> tuple[bool, bool]:
        if n <= 0:
            return False, False
        if n >= limit:
            return True, False
        if self.cap is not None and n >= self.cap:
            return True, False
        if n < prior:
            return False, False
        return True, True

    def _check_hint(self) -> None:
        with self._hint_lock:  # one check; other threads wait for its outcome
            with self._lock:
                hint = self._hint  # still set while checked: other threads wait above
            if hint is None:
                return
            n, check = hint
            try:
                got = int(check(n))
            except Exception:  # noqa: BLE001 - any failure only means "not verified"
                got = 0
            with self._lock:
                self._hint = None
                self.max_seen = max(self.max_seen, got)  # a page the server really returned
                self.hint_ok = got >= n

    def confirm_cap(self, n: int) -> None:
        with self._lock:
            self.cap = n if self.cap is None else max(self.cap, n)


class PageThreads:
    """A few long-lived threads that fetch pages ahead (``collect``'s ``submit``).

    Long-lived, so each keeps its connection (transport.session); daemon threads, so a
    page stuck on a dead server never holds up the process's exit (its request has its
    own deadline; the thread that waits for the answer gets its error).  After
    ``close`` a page is fetched by the thread that asks for it."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads, self._name = threads, name
        self._started = 0
        self._closed = False

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        with self._lock:
            inline = self._closed
            if not inline and self._started < self._threads:
                for i in range(self._started, self._threads):
                    threading.Thread(target=self._loop, name=f"{self._name}-{i}", daemon=True).start()
                self._started = self._threads
            if not inline:
                self._queue.put((future, fn, args))
        if inline:
            self._run(future, fn, args)
        return future

    @staticmethod
    def _run(future: Future, fn: Callable, args: tuple) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(exc)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._run(*item)
            item = None  # its future holds the page: not kept while this thread waits

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _ in range(self._started):
                self._queue.put(None)
            self._started = 0


class Shifted(Exception):
    """``collect(after=...)``: the collection changed before ``start`` (the item
    before it is no longer ``after``): what was read before it is out of date."""


def collect(fetch: Callable[[int, int], list], caps: PageCaps, limit: int,
            key: Callable[[object], Hashable], start: int = 0, dedupe: bool = True,
            source: object = None, convert: Callable[[list, int], list] | None = None,
            submit: Callable[..., Future] | None = None, after: object = None) -> list:
    """Every item from index ``start`` to the end of the collection, in order.

    ``after``: the item at ``start - 1``, read earlier (the end of a first page the
    caller has): the first page then starts one item early, as every later page
    does, and must repeat it; if it does not, or the collection shifts on a later
    page, ``Shifted`` is raised (no restart from ``start``: the caller's items before
    it are what is out of date).

    ``fetch(offset, limit)`` returns one page (a list).  With ``dedupe`` items are
    de-duplicated by ``key`` (the first occurrence wins; listings); without it
    (history, where two identical events are legitimate) a page identical to the
    previous one ends the loop instead.  ``source`` names the collection for
    ``PageCaps.longest`` (recorded with each page's offset when given).

    ``convert(items, index)`` turns each page's new items (the first of them at
    ``index`` of the result; 0 again after a restart) into what is returned in their
    place; the raw items are then not kept (only the last one, which the next page
    must repeat), so a big listing holds its converted entries and at most two raw
    pages, not all of them.  With ``submit`` (an executor's), the next page is requested as soon as a
    page has been judged, and the page converted while that request is in flight:
    the same requests in the same order, the client's work hidden in the wait for
    the server.
    """
    restarts = 0
    check_overlap = True
    floor = start if after is None else start - 1  # pages at offsets above it overlap
    while True:
        items: list = []  # the raw items, kept only without ``convert`` (they are the result)
        count = 0  # items so far
        out: list = []
        seen: set = set()
        offset = start
        prev_last = after
        prev_keys: list | None = None
        ambiguous_len: int | None = None
        restart = False
        ahead: tuple[bool, int, Future] | None = None  # (overlap, at, answer) of the next page
        for _ in range(MAX_PAGES):
            if ahead is not None:
                overlap, at, answer = ahead
                ahead = None
                page = answer.result()
            else:
                overlap, at = _plan(check_overlap, offset, floor, prev_last, ambiguous_len, caps)
                if after is not None and offset == start and not overlap:
                    raise Shifted()  # a server paging one item at a time: cannot check
                page = fetch(at, limit)
            if not isinstance(page, list):
                raise ProtocolError("a page of results is not a list")
            n = len(page)
            body = page
            if overlap:
                if n == 0 or key(page[0]) != key(prev_last):
                    restart = True
                    break
                body = page[1:]
                if n == 1 and caps.max_seen <= 1:
                    # a server capping pages at one item can only be paged without
                    # the overlap; ask for the next item itself
                    check_overlap = False
                    at = offset
                    page = fetch(offset, limit)
                    if not isinstance(page, list):
                        raise ProtocolError("a page of results is not a list")
                    n = len(page)
                    body = page
            if ambiguous_len is not None and body:
                caps.confirm_cap(ambiguous_len)
            if not body:
                break
            first_new = count
            if dedupe:
                new = []
                for item in body:
                    k = key(item)
                    if k not in seen:
                        seen.add(k)
                        new.append(item)
            else:
                keys = [key(item) for item in body]
                new = body if keys != prev_keys else []
                prev_keys = keys
            added = len(new)
            count += added
            if convert is None:
                items.extend(new)
            offset += len(body)
            prev_last = page[-1]
            more, ambiguous = caps.maybe_more(n, limit, None if source is None else (source, at))
            more = more and added > 0
            if more:
                ambiguous_len = n if ambiguous else None
                if submit is not None:
                    overlap, at = _plan(check_overlap, offset, floor, prev_last, ambiguous_len, caps)
                    ahead = (overlap, at, submit(fetch, at, limit))
            if convert is not None and added:
                out.extend(convert(new, first_new))
            new = body = page = None  # a converted page is not kept
            if not more:
                break
        if not restart:
            return out if convert is not None else items
        if after is not None:
            raise Shifted()
        restarts += 1
        if restarts >= MAX_RESTARTS:
            check_overlap = False


def _plan(check_overlap: bool, offset: int, start: int, prev_last: object,
          ambiguous_len: int | None, caps: PageCaps) -> tuple[bool, int]:
    """(does the next page overlap the last one, its offset).  The page after an
    ambiguous one is only a probe: no overlap (an empty answer ends the listing in one
    request); nor with a cap of one item."""
    overlap = (check_overlap and offset > start and prev_last is not None
               and ambiguous_len is None and (caps.cap is None or caps.cap > 1))
    return overlap, (offset - 1 if overlap else offset)


def collect_range(fetch: Callable[[int, int], list], start: int, stop: int, limit: int) -> list:
    """Items ``start``..``stop - 1`` of a collection whose length is known to be >= stop."""
    out: list = []
    offset = start
    while offset < stop:
        page = fetch(offset, min(limit, stop - offset))
        if not isinstance(page, list):
            raise ProtocolError("a page of results is not a list")
        if not page:
            break
        page = page[: stop - offset]
        out.extend(page)
        offset += len(page)
    return out


def count_items(fetch: Callable[[int, int], list], caps: PageCaps, limit: int) -> tuple[int, list]:
    """(length of the collection, its first page).

    One page, then - only when more may follow - one-item probes: an exponential
    search past the first page and a binary search for the end, so a history of n
    events costs O(log n) small requests instead of n / page-size pages.
    """
    first = fetch(0, limit)
    if not isinstance(first, list):
        raise ProtocolError("a page of results is not a list")
    n = len(first)
    more, _ = caps.maybe_more(n, limit)
    if not more:
        return n, first

    def exists(i: int) -> bool:
        page = fetch(i, 1)
        if not isinstance(page, list):
            raise ProtocolError("a page of results is not a list")
        return bool(page)

    if not exists(n):
        return n, first
    if n < limit:
        caps.confirm_cap(n)  # a short first page with more behind it: the server's cap
    known = n  # exists(known) is true
    step = max(limit, n, 1)
    while exists(known + step):
        known += step
        step *= 2
    lo, hi = known + 1, known + step  # exists(lo - 1), not exists(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if exists(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo, first
