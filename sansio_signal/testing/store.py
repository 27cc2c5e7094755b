"""An in-memory shared store: the reference semantics of :mod:`sansio_signal.store`.

:class:`SimStore` answers every :data:`~sansio_signal.store.StoreOp` exactly as the
module documents it, at once and deterministically. Tests of a cluster feed several
relay machines from one ``SimStore`` and choose when each answer and notice is
delivered (random interleavings, delays, a node that dies); the Redis adapter is
tested against the same expectations.
"""

from __future__ import annotations

from collections import deque

import attrs

from sansio_signal.store import (
    ClaimNode,
    CommitRoom,
    DeadNodes,
    FindDeadNodes,
    MailNotice,
    MemberRecord,
    NodeClaimed,
    NodeMessage,
    Post,
    Posted,
    ReadRoom,
    RoomCommitted,
    RoomRead,
    StoreOp,
    StoreResult,
    Take,
    Taken,
)

MAILBOX_CAP = 512
"""Frames a mailbox holds at most (``Limits.resume_queue_frames``'s default)."""

_FULL = "\x00full"
"""Marks a mailbox that refused a frame (so that it is said once); never taken."""


@attrs.define
class _Room:
    version: int = 0
    members: dict[str, MemberRecord] = attrs.field(factory=dict)


class SimStore:
    """Rooms, mailboxes and notices in dictionaries; one operation at a time."""

    def __init__(self, mailbox_cap: int = MAILBOX_CAP) -> None:
        self.mailbox_cap = mailbox_cap
        self._rooms: dict[str, _Room] = {}
        self._mailboxes: dict[tuple[str, str], deque[str]] = {}
        self._notices: dict[str, list[MailNotice | NodeMessage]] = {}
        self.ops = 0
        """Operations applied so far (a cost measure for tests)."""
        self.alive: set[str] = set()
        """Nodes whose heartbeat is fresh (tests say who lives: :meth:`heartbeat`,
        :meth:`kill`)."""
        self._index: dict[str, set[tuple[str, str]]] = {}
        self._claimed: set[str] = set()

    # ------------------------------------------------------------------ inspection

    def members(self, room: str) -> dict[str, MemberRecord]:
        """The records of ``room`` (a copy)."""
        found = self._rooms.get(room)
        return {} if found is None else dict(found.members)

    def version(self, room: str) -> int:
        """The version of ``room`` (0: never used)."""
        found = self._rooms.get(room)
        return 0 if found is None else found.version

    def rooms(self) -> list[str]:
        """Rooms with at least one member."""
        return sorted(r for r, room in self._rooms.items() if room.members)

    def mailbox(self, room: str, user: str) -> list[str]:
        """The frames waiting in the mailbox of ``user`` in ``room``, oldest first."""
        return [f for f in self._mailboxes.get((room, user), ()) if f is not _FULL]

    def notices(self, node: str) -> list[MailNotice | NodeMessage]:
        """The notices for ``node`` since the last call, oldest first."""
        return self._notices.pop(node, [])

    def heartbeat(self, node: str) -> None:
        """``node`` beats: it is alive (again)."""
        self.alive.add(node)

    def kill(self, node: str) -> None:
        """``node`` stops beating (it died, or its node timeout passed)."""
        self.alive.discard(node)

    def release_claims(self) -> None:
        """Every claim's ``ttl_ms`` passed."""
        self._claimed.clear()

    def index(self, node: str) -> set[tuple[str, str]]:
        """The ``(room, user)`` members held on ``node`` (a copy)."""
        return set(self._index.get(node, ()))

    # ------------------------------------------------------------------ operations

    def apply(self, op: StoreOp) -> StoreResult:
        """Run one operation and return its answer."""
        self.ops += 1
        if isinstance(op, ReadRoom):
            room = self._rooms.get(op.room, _Room())
            return RoomRead(
                op=op.op, room=op.room, version=room.version, members=dict(room.members)
            )
        if isinstance(op, CommitRoom):
            return self._commit(op)
        if isinstance(op, Post):
            return self._post(op)
        if isinstance(op, Take):
            return self._take(op)
        if isinstance(op, FindDeadNodes):
            dead = sorted(n for n, keys in self._index.items() if keys and n not in self.alive)
            return DeadNodes(op=op.op, nodes=tuple(dead))
        return self._claim(op)

    def _claim(self, op: ClaimNode) -> NodeClaimed:
        if op.node in self._claimed:
            return NodeClaimed(op=op.op, node=op.node, members=None)
        self._claimed.add(op.node)
        return NodeClaimed(op=op.op, node=op.node, members=tuple(sorted(self.index(op.node))))

    def _reindex(
        self, room: str, user: str, old: MemberRecord | None, new: MemberRecord | None
    ) -> None:
        if old is not None:
            self._index.get(old.node, set()).discard((room, user))
        if new is not None:
            self._index.setdefault(new.node, set()).add((room, user))

    def _commit(self, op: CommitRoom) -> RoomCommitted:
        room = self._rooms.setdefault(op.room, _Room())
        if room.version != op.expected:
            return RoomCommitted(
                op=op.op, room=op.room, ok=False, version=room.version, members=dict(room.members)
            )
        for user, record in op.put.items():
            self._reindex(op.room, user, room.members.get(user), record)
            room.members[user] = record
        for user in op.delete:
            self._reindex(op.room, user, room.members.pop(user, None), None)
            self._mailboxes.pop((op.room, user), None)
        room.version += 1
        for user, text in op.post:
            self._append(op.room, user, text)
        for node, text in op.tell:
            self._notices.setdefault(node, []).append(NodeMessage(text=text))
        return RoomCommitted(
            op=op.op, room=op.room, ok=True, version=room.version, members=dict(room.members)
        )

    def _post(self, op: Post) -> Posted:
        room = self._rooms.get(op.room)
        if room is None:
            return Posted(op=op.op, count=0)
        if op.user is None:
            users = list(room.members)
        else:
            users = [op.user] if op.user in room.members else []
        for user in users:
            self._append(op.room, user, op.text)
        return Posted(op=op.op, count=len(users))

    def _append(self, room_id: str, user: str, text: str) -> None:
        record = self._rooms[room_id].members.get(user)
        if record is None:
            return
        box = self._mailboxes.setdefault((room_id, user), deque())
        if len(box) >= self.mailbox_cap:
            if len(box) == self.mailbox_cap:  # said once: the refused frame marks it
                box.append(_FULL)
                notice = MailNotice(room=room_id, user=user, full=True)
                self._notices.setdefault(record.node, []).append(notice)
            return
        was_empty = not box
        box.append(text)
        if was_empty and not record.held:
            self._notices.setdefault(record.node, []).append(MailNotice(room=room_id, user=user))

    def _take(self, op: Take) -> Taken:
        room = self._rooms.get(op.room)
        record = None if room is None else room.members.get(op.user)
        if record is None or record.held or (record.node, record.conn) != (op.node, op.conn):
            return Taken(op=op.op, frames=())
        box = self._mailboxes.pop((op.room, op.user), deque())
        return Taken(op=op.op, frames=tuple(f for f in box if f is not _FULL))
