"""Metadata cache: directory listings, per-path attributes, negative entries.

Design note
-----------
* ``listings``: dir path -> ``Listing`` (children by name, fetch time).  Filled by
  ``readdir`` from the listing response, so ``ls -l`` costs only the listing pages:
  every child's attributes come from it.
* ``attrs``: path -> ``Entry`` for paths stat'ed on their own (parent not listed).
* ``negative``: path -> True, "does not exist", with its own short TTL.

All three are cachetools ``TTLCache`` s bounded by *entries* (a listing weighs its
number of children), so memory stays bounded however large the directories.
cachetools caches are not thread-safe: every access holds ``_lock``.  Nothing here
calls out while holding it (no I/O, no callbacks), so it is a leaf lock: callers may
hold their own locks while calling in.

Lookups answer a three-way ``Lookup``: an entry, "known absent" (from a negative
entry or from a listing young enough to be trusted for absence), or "unknown"
(ask the server).

A listing fetched from the server may be older than a change made through the mount
while it was in flight (an upload renamed into place, a delete, a rename): the fetch
is registered (``begin_listing``), changes to its directory's children are recorded
on it meanwhile, and ``put_listing`` applies them to what the server sent.  A fetch of
a directory that was removed or renamed meanwhile is returned but not cached.  A stat
of one path is registered the same way (``begin_stat``/``put_stat``): when the path
changed through the mount while the request was in flight, the change wins (a stat
sent just before an upload was renamed into place would otherwise cache the old size,
or the absence of a file that now exists).
"""

from __future__ import annotations

import posixpath
import threading
import time
from dataclasses import dataclass, field

from cachetools import TTLCache

from agavefs.vfs.backend import Entry

# Names that desktops and shells probe in every directory.  Once the directory is
# listed, their absence is answered from the listing without a request.
PROBED_NAMES = frozenset({
    ".Trash", ".hidden", ".directory", "desktop.ini", "Desktop.ini", "autorun.inf",
    ".DS_Store", ".localized", "folder.jpg", "Folder.jpg", ".git", ".svn", ".hg",
    ".xdg-volume-info", ".comment", ".thumbnails",
})


def is_probed_name(name: str) -> bool:
    return name in PROBED_NAMES or name.startswith(("._", ".Trash-"))


@dataclass
class Listing:
    me: Entry
    children: dict[str, Entry]
    fetched: float = field(default_factory=time.monotonic)


ABSENT = object()  # "known not to exist"


class ListingFetch:
    """A listing (or stat) request in flight (see the module note); fields under
    MetaCache._lock.  ``table`` is the registry it is in."""

    def __init__(self, path: str, table: dict):
        self.path = path
        self.table = table
        self.started = time.monotonic()
        self.changes: list[tuple[str, Entry | None]] = []  # (name, entry or None: gone)
        self.void = False  # the directory itself was removed or renamed meanwhile


def _applied(kids: dict[str, Entry], changes: list[tuple[str, Entry | None]]) -> dict[str, Entry]:
    """``kids`` (changed in place) with the changes made through the mount applied."""
    for name, entry in changes:
        if entry is None:
            kids.pop(name, None)
        else:
            kids[name] = entry
    return kids


class MetaCache:
    def __init__(self, attr_ttl: float, dir_ttl: float, negative_ttl: float, max_entries: int):
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        # protected by _lock:
        self._listings: TTLCache = TTLCache(maxsize=max_entries, ttl=max(dir_ttl, 0.001),
                                            getsizeof=lambda listing: len(listing.children) + 1)
        self._attrs: TTLCache = TTLCache(maxsize=max(1000, max_entries // 10), ttl=max(attr_ttl, 0.001))
        self._negative: TTLCache = TTLCache(maxsize=10_000, ttl=max(negative_ttl, 0.001))
        self.hits = 0
        self.misses = 0
        self._fetches: dict[str, list[ListingFetch]] = {}  # dir -> fetches in flight
        self._stats: dict[str, list[ListingFetch]] = {}  # path -> stats in flight

    # -- reads -------------------------------------------------------------
    def lookup(self, path: str):
        """An ``Entry``, ``ABSENT``, or None (unknown: ask the server)."""
        parent, name = posixpath.split(path)
        with self._lock:
            if path != "/":
                listing = self._listings.get(parent)
                if listing is not None:
                    entry = listing.children.get(name)
                    if entry is not None:
                        self.hits += 1
                        return entry
                    young = time.monotonic() - listing.fetched < self.negative_ttl
                    if young or is_probed_name(name):
                        self.hits += 1
                        return ABSENT
            listing = self._listings.get(path)
            if listing is not None:
                self.hits += 1
                return listing.me
            entry = self._attrs.get(path)
            if entry is not None:
                self.hits += 1
                return entry
            if path in self._negative:
                self.hits += 1
                return ABSENT
            self.misses += 1
            return None

    def listing(self, path: str) -> Listing | None:
        with self._lock:
            listing = self._listings.get(path)
            if listing is None:
                self.misses += 1
            else:
                self.hits += 1
            return listing

    def peek_listing(self, path: str) -> Listing | None:
        """The cached listing of ``path`` (not counted as a hit or a miss)."""
        with self._lock:
            return self._listings.get(path)

    def has_listing(self, path: str) -> bool:
        """Is a listing of ``path`` cached (not counted as a hit or a miss)."""
        with self._lock:
            return path in self._listings

    # -- requests in flight -------------------------------------------------
    def _begin(self, table: dict, path: str) -> ListingFetch:
        fetch = ListingFetch(path, table)
        with self._lock:
            table.setdefault(path, []).append(fetch)
        return fetch

    def begin_listing(self, path: str) -> ListingFetch:
        return self._begin(self._fetches, path)

    def begin_stat(self, path: str) -> ListingFetch:
        return self._begin(self._stats, path)

    def watch_listing(self, path: str) -> ListingFetch:
        """Record the changes to ``path``'s children from now on, for a reader of a
        listing that may be superseded before it is used (``children``)."""
        return self._begin(self._fetches, path)

    def children(self, watch: ListingFetch, listing: Listing) -> dict[str, Entry]:
        """``listing``'s children with the changes made since ``watch`` began applied
        (they are newer, or already in it); ends the watch."""
        with self._lock:
            self._end(watch)
            return _applied(dict(listing.children), watch.changes)

    def end(self, fetch: ListingFetch) -> None:
        """Forget a request (put_listing/put_stat do it; call it when it failed)."""
        with self._lock:
            self._end(fetch)

    def _end(self, fetch: ListingFetch) -> None:
        fetches = fetch.table.get(fetch.path)
        if fetches is not None and fetch in fetches:
            fetches.remove(fetch)
            if not fetches:
                del fetch.table[fetch.path]

    def put_stat(self, fetch: ListingFetch, entry: Entry | None):
        """The server's answer to a stat (None: not found), unless the path changed
        through the mount meanwhile: then what the mount did.  Returns an Entry,
        ABSENT, or None (the path moved or went away meanwhile: ask again)."""
        with self._lock:  # one hold: no change can slip in between the check and the put
            self._end(fetch)
            if fetch.void:
                return None
            if fetch.changes:
                newest = fetch.changes[-1][1]
                return ABSENT if newest is None else newest
            if entry is None:
                self._put_absent(fetch.path)
                return ABSENT
            self._put(fetch.path, entry)
            return entry

    def put_children(self, watch: ListingFetch, path: str, children: list[Entry]) -> None:
        """Some children of ``path`` that a stat brought along (not its listing: a name
        missing from them says nothing).  Each is cached as if stat'ed, except a name
        changed through the mount since ``watch`` began (what the mount did is newer)
        and except when a listing of ``path`` is cached (it answers for its children).
        Ends the watch."""
        with self._lock:
            self._end(watch)
            if watch.void or not children or path in self._listings:
                return
            changed = {name for name, _ in watch.changes}
            for entry in children:
                if entry.name not in changed:
                    child = posixpath.join(path, entry.name)
                    self._negative.pop(child, None)
                    self._attrs[child] = entry

    def _note(self, path: str, entry: Entry | None) -> None:
        """Call with _lock held: a child changed through the mount (the root is no one's
        child: not even its own, which ``split`` would make it)."""
        if self._fetches and path != "/":
            parent, name = posixpath.split(path)
            for fetch in self._fetches.get(parent, ()):
                fetch.changes.append((name, entry))
        if self._stats:
            for fetch in self._stats.get(path, ()):
                fetch.changes.append((path, entry))

    def _void(self, path: str) -> None:
        """Call with _lock held: ``path`` and everything below it moved or went away."""
        prefix = path.rstrip("/") + "/"
        for table in (self._fetches, self._stats):
            for d, fetches in table.items():
                if d == path or d.startswith(prefix):
                    for fetch in fetches:
                        fetch.void = True

    # -- writes ------------------------------------------------------------
    def put_listing(self, path: str, me: Entry, children: list[Entry],
                    fetch: ListingFetch | None = None) -> Listing:
        kids = {e.name: e for e in children}
        with self._lock:  # one hold: no change can slip in between applying and caching
            if fetch is not None:
                self._end(fetch)
                _applied(kids, fetch.changes)  # newer than what the server sent
                if fetch.void:
                    return Listing(me, kids)
            listing = Listing(me, kids)
            try:
                self._listings[path] = listing
            except ValueError:  # larger than the whole cache: do not keep it
                pass
            self._attrs.pop(path, None)
            self._negative.pop(path, None)
            # the listing supersedes what was known of each child: walk whichever is
            # shorter, the children or the (bounded) per-path caches
            for cache in (self._negative, self._attrs):
                if len(cache) < len(listing.children):
                    stale = [p for p in cache if posixpath.dirname(p) == path
                             and posixpath.basename(p) in listing.children]
                else:
                    stale = (posixpath.join(path, name) for name in listing.children)
                for child in stale:
                    cache.pop(child, None)
        return listing

    def put(self, path: str, entry: Entry) -> None:
        """A path's entry is known (stat'ed, or changed through the mount)."""
        with self._lock:
            self._put(path, entry)

    def _put(self, path: str, entry: Entry) -> None:
        self._note(path, entry)
        self._negative.pop(path, None)
        listing = self._listings.get(posixpath.dirname(path))
        if listing is not None and path != "/":
            listing.children[entry.name] = entry
            # an older per-path entry must not come back when the listing goes
            self._attrs.pop(path, None)
        else:
            self._attrs[path] = entry

    def put_absent(self, path: str) -> None:
        with self._lock:
            self._put_absent(path)

    def _put_absent(self, path: str) -> None:
        parent, name = posixpath.split(path)
        self._note(path, None)
        self._attrs.pop(path, None)
        listing = self._listings.get(parent)
        if listing is not None:
            listing.children.pop(name, None)
        self._negative[path] = True

    def forget(self, path: str) -> None:
        """Drop everything known about ``path`` and below it."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._void(path)
            for cache in (self._listings, self._attrs, self._negative):
                for key in [k for k in list(cache.keys()) if k == path or k.startswith(prefix)]:
                    cache.pop(key, None)

    def removed(self, path: str) -> None:
        """``path`` (and anything below it) was deleted through the mount."""
        self.forget(path)
        self.put_absent(path)

    def invalidate_listing(self, path: str) -> None:
        with self._lock:
            self._listings.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self._listings.clear()
            self._attrs.clear()
            self._negative.clear()

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {
                "listings": len(self._listings),
                "entries": int(self._listings.currsize) + len(self._attrs),
                "negative": len(self._negative),
                "hits": self.hits,
                "misses": self.misses,
                "hit_ratio": round(self.hits / total, 4) if total else None,
            }
