"""A machine's one timer on asyncio: armed for its ``next_deadline()``, re-armed after
every call into it (the aioquic way: the machine keeps its deadlines, the adapter keeps
one real timer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class OneTimer:
    """Calls ``fire()`` at the deadline it was last armed for (the loop's clock)."""

    def __init__(self, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (``None``: not at all); a deadline already armed is kept."""
        if deadline == self._armed_for:
            return
        self.cancel()
        self._armed_for = deadline
        if deadline is not None:  # the machine runs on the loop's clock
            self._handle = asyncio.get_running_loop().call_at(deadline, self._fired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_for = None

    def _fired(self) -> None:
        self._handle = self._armed_for = None
        self._fire()
