"""A deadline queue for machines that never read a clock.

A machine schedules ``(deadline, key)`` pairs; the adapter asks
:meth:`Timers.next_deadline` after every call, keeps exactly one real timer armed for
it, and on expiry calls the machine's ``handle_timer(now)``, which pops every key that is
due with :meth:`Timers.pop_due`. Cancelling is lazy (a cancelled entry is skipped when
it surfaces), so scheduling and cancelling are both O(log n).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class Timers:
    """Deadlines keyed by any hashable; one live deadline per key."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int]] = {}
        self._seq = itertools.count()

    def schedule(self, key: Hashable, deadline: float) -> None:
        """Set (or move) the deadline of ``key``."""
        seq = next(self._seq)
        self._live[key] = (deadline, seq)
        heapq.heappush(self._heap, (deadline, seq, key))

    def cancel(self, key: Hashable) -> None:
        """Forget ``key``'s deadline, if it has one."""
        self._live.pop(key, None)

    def deadline_of(self, key: Hashable) -> float | None:
        """The live deadline of ``key``, or ``None``."""
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            deadline, seq, key = heap[0]
            if self._live.get(key) == (deadline, seq):
                return
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or ``None`` when nothing is scheduled."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """Remove and return every key whose deadline is ``<= now``, earliest first."""
        due: list[Hashable] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            due.append(key)

    def __len__(self) -> int:
        return len(self._live)
