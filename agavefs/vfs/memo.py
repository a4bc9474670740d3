"""A few recent answers, bounded by their number and their total size.

Used for readdir's answers: the VFS keeps the entries of the last directories read
(``VFS.readdir``), the FUSE adapter keeps them packed for the kernel
(``AgaveFUSE._packed``).  Not thread-safe: each user holds its own lock around it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

V = TypeVar("V")


class SizedLRU(Generic[V]):
    """At most ``max_items`` values and ``max_size`` in all (``size(value)``); the least
    recently used go first.  A value larger than ``max_size`` is not kept, unless
    ``keep_newest``: then the newest value is always kept (whoever put it is using it)."""

    def __init__(self, max_items: int, max_size: int, size: Callable[[V], int] = len,
                 keep_newest: bool = False):
        self.max_items, self.max_size = max_items, max_size
        self._size, self._keep_newest = size, keep_newest
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.total = 0  # sum of the kept values' sizes

    def get(self, key: Hashable) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: Hashable, value: V) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.total -= old[1]
        n = self._size(value)
        if n > self.max_size and not self._keep_newest:
            return
        self._items[key] = (value, n)
        self.total += n
        floor = 1 if self._keep_newest else 0
        while len(self._items) > floor and (len(self._items) > self.max_items or self.total > self.max_size):
            self.total -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Iterator[V]:
        """The kept values, least recently used first."""
        return (v for v, _ in self._items.values())
