"""A few daemon threads working through a queue: the background half of walk-ahead
(walkahead.py) and sibling prefetch (siblings.py).  stdlib only.

The owner keeps the queue (a deque) and its own bookkeeping under its own Condition;
``Workers`` takes items from that queue under the same Condition (``taken(item)``
runs there too, for the owner's in-flight set) and runs ``run(item)`` outside it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class Workers:
    def __init__(self, name: str, count: int, cond: threading.Condition, queue: deque,
                 run: Callable[[object], None], taken: Callable[[object], None] | None = None):
        self._cond = cond
        self._queue = queue
        self._run = run
        self._taken = taken
        self.stopping = False  # protected by cond
        self._threads = [threading.Thread(target=self._loop, name=f"agavefs-{name}-{i}", daemon=True)
                         for i in range(count)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Call with the Condition held: no more items are taken; the queue is emptied."""
        self.stopping = True
        self._queue.clear()
        self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self.stopping:
                    self._cond.wait()
                if self.stopping:
                    return
                item = self._queue.popleft()
                if self._taken is not None:
                    self._taken(item)
            self._run(item)
