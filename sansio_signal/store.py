"""What the relay processes of one cluster share: rooms, mailboxes and node liveness.

Scale-out (``serve --redis URL``) runs one :class:`~.relay.RelayMachine` per process. The
machines decide everything, as on one process; what they share lives in a store (Redis,
through ``sansio_signal.adapters.redis_store``; :class:`~.testing.store.SimStore` in tests)
that offers a handful of **generic primitives** — compare-and-set on a versioned hash,
append to lists named by a hash's fields, take a list — and no rule of the protocol. A
machine asks for one with a :data:`StoreOp` action and hears the answer as a
:data:`StoreResult` event, like any other input. The store's semantics, which every
implementation follows exactly, are written here next to the types.

The shared state
----------------
``room R``
    a versioned map ``user id → MemberRecord`` (who is in ``R``, on which node and
    connection, whether held for a resume) and its ``version``, an integer that grows by
    one with every committed change (0: never used). An emptied room keeps its version
    for at least an hour, so a node's stale read never matches a new room's version.
``mailbox R/U``
    the frames waiting for member ``U`` of ``R``, oldest first: every frame for a member
    goes through its mailbox, so one member's frames have one order, whichever node
    sends them. Bounded: a full mailbox refuses the next frame and its member's node
    is told (the holder of a held member ends the hold, as one process does when its
    resume queue overflows); and expiring (a mailbox nobody takes is dropped
    eventually).
``node N``
    alive while its heartbeat is fresher than the node timeout; a node learns which of
    its members have mail through *notices*: ``(R, U)`` pairs the store hands to node
    ``N`` when a frame lands in the mailbox of a member whose record names ``N``. The
    store also keeps, per node, the ``(R, U)`` of every record that names it (so that
    the members of a node that died can be found), and hands a dead node's list to the
    one node that claims it first.

Every primitive on one room is atomic and all of them run in one total order (one Redis
instance executes one command at a time), and the answers one node receives come in the
order it asked (one connection, pipelined).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import attrs

from .events import ConnId


@attrs.frozen(kw_only=True)
class MemberRecord:
    """One member of a room, as every node sees it.

    ``node`` and ``conn`` name the socket that receives its frames; ``token`` is a digest
    of its current resume token (never the token itself); ``held`` is true while its
    socket is gone and its place is kept for a resume (the node that holds it runs the
    grace on its own clock)."""

    node: str
    conn: ConnId
    token: str
    held: bool = False


Members: TypeAlias = Mapping[str, MemberRecord]
"""A room's members: user id → :class:`MemberRecord`."""


# --------------------------------------------------------------------------- operations


@attrs.frozen(kw_only=True)
class ReadRoom:
    """Read room ``room``: answered by :class:`RoomRead`."""

    op: int
    room: str


@attrs.frozen(kw_only=True)
class CommitRoom:
    """Change room ``room`` if its version is still ``expected``: answered by
    :class:`RoomCommitted`.

    Atomically, when the version matches: every ``put`` record is written, every
    ``delete`` user removed (their mailboxes too), the version grows by one; then each
    ``post`` ``(user, text)`` is appended to that member's mailbox (the room as just
    written must have ``user``; a post to anyone else is dropped), with a notice to the
    member's node unless it is held; each ``tell`` goes to its node. When the version does
    not match nothing changes.
    Either way the answer carries the room as it is after the step."""

    op: int
    room: str
    expected: int
    put: Members = attrs.field(factory=dict)
    delete: tuple[str, ...] = ()
    post: tuple[tuple[str, str], ...] = ()
    tell: tuple[tuple[str, str], ...] = ()
    """``(node, text)``: a :class:`NodeMessage` for another node, delivered after the
    change (e.g. "the socket you hold for this member was replaced")."""


@attrs.frozen(kw_only=True)
class Post:
    """Append ``text`` to the mailbox of ``user`` in ``room`` if ``user`` is a member
    (notice to its node unless held): answered by :class:`Posted`.
    ``user=None``: to every member of ``room`` (a chat)."""

    op: int
    room: str
    user: str | None
    text: str


@attrs.frozen(kw_only=True)
class Take:
    """Take every frame in the mailbox of ``user`` in ``room`` — only if its record still
    names ``node`` and ``conn`` and is not held (a mailbox belongs to whoever holds the
    member's socket): answered by :class:`Taken`."""

    op: int
    room: str
    user: str
    node: str
    conn: ConnId


@attrs.frozen(kw_only=True)
class FindDeadNodes:
    """Which nodes have records but no fresh heartbeat: answered by :class:`DeadNodes`.
    (A dead node with no record left is forgotten.)"""

    op: int


@attrs.frozen(kw_only=True)
class ClaimNode:
    """Claim dead node ``node``'s members, if no other node claimed them within the last
    ``ttl_ms`` milliseconds: answered by :class:`NodeClaimed`."""

    op: int
    node: str
    ttl_ms: int


StoreOp: TypeAlias = ReadRoom | CommitRoom | Post | Take | FindDeadNodes | ClaimNode
"""An action: one primitive the adapter carries to the store."""


# --------------------------------------------------------------------------- results


@attrs.frozen(kw_only=True)
class RoomRead:
    """The answer to :class:`ReadRoom`."""

    op: int
    room: str
    version: int
    members: Members


@attrs.frozen(kw_only=True)
class RoomCommitted:
    """The answer to :class:`CommitRoom`: ``ok`` when it applied; the room as it is now."""

    op: int
    room: str
    ok: bool
    version: int
    members: Members


@attrs.frozen(kw_only=True)
class Posted:
    """The answer to :class:`Post`: how many mailboxes got the text (0: no such member)."""

    op: int
    count: int


@attrs.frozen(kw_only=True)
class Taken:
    """The answer to :class:`Take`: the frames, oldest first (none when the mailbox is
    not this connection's any more)."""

    op: int
    frames: tuple[str, ...]


@attrs.frozen(kw_only=True)
class DeadNodes:
    """The answer to :class:`FindDeadNodes`."""

    op: int
    nodes: tuple[str, ...]


@attrs.frozen(kw_only=True)
class NodeClaimed:
    """The answer to :class:`ClaimNode`: ``members`` — the ``(room, user)`` of every record
    naming the node — when this node got the claim, ``None`` when another has it."""

    op: int
    node: str
    members: tuple[tuple[str, str], ...] | None


@attrs.frozen(kw_only=True)
class StoreFailed:
    """The store could not be reached for operation ``op`` (nothing is known about
    whether it applied: a commit is re-read before it is retried)."""

    op: int
    reason: str


@attrs.frozen(kw_only=True)
class MailNotice:
    """Member ``user`` of ``room``, on this node, has frames in its mailbox. ``full``:
    its mailbox is full and refused a frame (said once, even when the member is held)."""

    room: str
    user: str
    full: bool = False


@attrs.frozen(kw_only=True)
class NodeMessage:
    """A ``tell`` of a committed change, for this node."""

    text: str


@attrs.frozen(kw_only=True)
class NodeLapsed:
    """This node's heartbeat lapsed (it was paused, or cut off from the store, longer
    than its liveness lasts): the others may have taken its members over."""


StoreResult: TypeAlias = (
    RoomRead
    | RoomCommitted
    | Posted
    | Taken
    | DeadNodes
    | NodeClaimed
    | StoreFailed
    | MailNotice
    | NodeMessage
    | NodeLapsed
)
"""An event: what the store answered (or announced)."""
