"""Room membership as the relay sees it, behind a small interface.

The relay machine asks the directory who is in a room and which connection holds a
user id; it never keeps membership itself. The in-memory :class:`MemoryDirectory` is
the default; a scale-out adapter can supply one backed by shared state, and routing in
:mod:`sansio_signal.relay` does not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .events import ConnId


class Directory(Protocol):
    """Who is in which room, and on which connection."""

    def add(self, room_id: str, user_id: str, conn: ConnId) -> None:
        """Record ``user_id`` in ``room_id`` on ``conn`` (the id is known to be free)."""

    def remove(self, room_id: str, user_id: str) -> None:
        """Forget ``user_id`` in ``room_id`` (it is known to be there)."""

    def lookup(self, room_id: str, user_id: str) -> ConnId | None:
        """The connection of ``user_id`` in ``room_id``, or ``None``."""

    def members(self, room_id: str) -> list[str]:
        """The user ids in ``room_id``, sorted by code point."""

    def connections(self, room_id: str) -> Iterable[tuple[str, ConnId]]:
        """``(user_id, conn)`` for every member of ``room_id``, in join order."""

    def size(self, room_id: str) -> int:
        """How many members ``room_id`` has."""

    def room_count(self) -> int:
        """How many rooms have at least one member."""


class MemoryDirectory:
    """The default :class:`Directory`: dictionaries in this process."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, ConnId]] = {}

    def add(self, room_id: str, user_id: str, conn: ConnId) -> None:
        """See :meth:`Directory.add`."""
        self._rooms.setdefault(room_id, {})[user_id] = conn

    def remove(self, room_id: str, user_id: str) -> None:
        """See :meth:`Directory.remove`."""
        room = self._rooms[room_id]
        del room[user_id]
        if not room:
            del self._rooms[room_id]

    def lookup(self, room_id: str, user_id: str) -> ConnId | None:
        """See :meth:`Directory.lookup`."""
        room = self._rooms.get(room_id)
        return None if room is None else room.get(user_id)

    def members(self, room_id: str) -> list[str]:
        """See :meth:`Directory.members`."""
        return sorted(self._rooms.get(room_id, ()))

    def connections(self, room_id: str) -> Iterable[tuple[str, ConnId]]:
        """See :meth:`Directory.connections`."""
        return list(self._rooms.get(room_id, {}).items())

    def size(self, room_id: str) -> int:
        """See :meth:`Directory.size`."""
        return len(self._rooms.get(room_id, ()))

    def room_count(self) -> int:
        """See :meth:`Directory.room_count`."""
        return len(self._rooms)
