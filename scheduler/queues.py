"""Fair, prioritised queueing of tasks: pure code, no I/O.

The rule (pyLoadBalancer's): the next task goes to the user with the fewest running
tasks; within that user the highest priority goes first, then FIFO. Workers may be
reserved for a priority band, so a pop can be restricted to ``min_p <= priority <= max_p``.

Per user, tasks sit in one deque per priority level with a sorted list of the levels
present: real workloads use few levels, so push and pop are O(1) plus a bisect.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _UserQueue(Generic[T]):
    levels: list[int] = field(default_factory=list)  # ascending; the last is the highest
    by_level: dict[int, deque[T]] = field(default_factory=dict)
    size: int = 0
    running: int = 0

    def push(self, priority: int, item: T) -> None:
        bucket = self.by_level.get(priority)
        if bucket is None:
            bucket = self.by_level[priority] = deque()
            bisect.insort(self.levels, priority)
        bucket.append(item)
        self.size += 1

    def push_front(self, priority: int, item: T) -> None:
        bucket = self.by_level.get(priority)
        if bucket is None:
            bucket = self.by_level[priority] = deque()
            bisect.insort(self.levels, priority)
        bucket.appendleft(item)
        self.size += 1

    def best_level(self, min_p: int | None, max_p: int | None) -> int | None:
        """The highest priority level present within the band, if any."""
        levels = self.levels
        if not levels:
            return None
        if max_p is None:
            i = len(levels) - 1
        else:
            i = bisect.bisect_right(levels, max_p) - 1
            if i < 0:
                return None
        level = levels[i]
        if min_p is not None and level < min_p:
            return None
        return level

    def pop_level(self, level: int) -> T:
        bucket = self.by_level[level]
        item = bucket.popleft()
        if not bucket:
            del self.by_level[level]
            self.levels.remove(level)
        self.size -= 1
        return item


class FairQueue(Generic[T]):
    """Queued items per user, popped fairly. Items must be unique objects.

    ``running`` counts live here because fairness depends on them: :meth:`pop`
    counts a popped item as running for its user, and the owner calls
    :meth:`finished` when it ends or is put back.
    """

    def __init__(self, *, max_queued_per_user: int | None = None) -> None:
        self._users: dict[str, _UserQueue[T]] = {}
        self._ready: set[str] = set()  # users with at least one queued item
        self.max_queued_per_user = max_queued_per_user
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _user(self, user: str) -> _UserQueue[T]:
        q = self._users.get(user)
        if q is None:
            q = self._users[user] = _UserQueue()
        return q

    def room_for(self, user: str) -> int | None:
        """How many more items ``user`` may queue (``None``: unlimited)."""
        if self.max_queued_per_user is None:
            return None
        q = self._users.get(user)
        return self.max_queued_per_user - (q.size if q else 0)

    def push(self, user: str, priority: int, item: T) -> None:
        q = self._user(user)
        q.push(priority, item)
        self._ready.add(user)
        self._size += 1

    def push_front(self, user: str, priority: int, item: T) -> None:
        """Put back an item that was popped but never ran (it keeps its place)."""
        q = self._user(user)
        q.push_front(priority, item)
        self._ready.add(user)
        self._size += 1

    def pop(self, min_p: int | None = None, max_p: int | None = None) -> T | None:
        """The next item by the fairness rule, counted as running for its user."""
        best_user: str | None = None
        best_key: tuple[int, int] | None = None
        best_level = 0
        for user in self._ready:
            q = self._users[user]
            level = q.best_level(min_p, max_p)
            if level is None:
                continue
            # fewest running first, then the highest priority available
            key = (q.running, -level)
            if best_key is None or key < best_key:
                best_user, best_key, best_level = user, key, level
                if q.running == 0 and len(self._ready) == 1:
                    break
        if best_user is None:
            return None
        q = self._users[best_user]
        item = q.pop_level(best_level)
        q.running += 1
        self._size -= 1
        if not q.size:
            self._ready.discard(best_user)
        return item

    def pop_many(self, n: int, min_p: int | None = None, max_p: int | None = None) -> list[T]:
        out: list[T] = []
        if len(self._ready) == 1 and min_p is None and max_p is None:
            # Fast path for the common single-user case: no fairness scan per item.
            user = next(iter(self._ready))
            q = self._users[user]
            while len(out) < n and q.size:
                level = q.levels[-1]
                out.append(q.pop_level(level))
            q.running += len(out)
            self._size -= len(out)
            if not q.size:
                self._ready.discard(user)
            return out
        while len(out) < n:
            item = self.pop(min_p, max_p)
            if item is None:
                break
            out.append(item)
        return out

    def finished(self, user: str, count: int = 1) -> None:
        """``count`` running items of ``user`` ended (or were put back)."""
        q = self._users.get(user)
        if q is None:
            return
        q.running = max(0, q.running - count)
        if not q.running and not q.size:
            del self._users[user]

    def remove(self, user: str, priority: int, item: T) -> bool:
        """Take a queued item out (cancellation). O(n) in its bucket, which is rare."""
        q = self._users.get(user)
        if q is None:
            return False
        bucket = q.by_level.get(priority)
        if bucket is None:
            return False
        try:
            bucket.remove(item)
        except ValueError:
            return False
        if not bucket:
            del q.by_level[priority]
            q.levels.remove(priority)
        q.size -= 1
        self._size -= 1
        if not q.size:
            self._ready.discard(user)
            if not q.running:
                del self._users[user]
        return True

    def users(self) -> Iterator[tuple[str, int, int]]:
        """(user, queued, running) for every user with queued or running items."""
        for user, q in self._users.items():
            yield user, q.size, q.running

    def running(self, user: str) -> int:
        q = self._users.get(user)
        return q.running if q else 0

    def queued(self, user: str) -> int:
        q = self._users.get(user)
        return q.size if q else 0
