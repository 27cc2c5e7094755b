"""The relay server as a pure state machine.

Theory of operation
-------------------
The adapter owns the sockets; this machine owns every decision. It is fed three
events — :class:`~.events.Connected`, :class:`~.events.FrameReceived` (the raw text or
bytes of one frame) and :class:`~.events.Disconnected` — together with ``now``, and
answers with a list of actions to run in order: :class:`~.actions.SendFrame`,
:class:`~.actions.CloseConnection` and :class:`~.actions.Log`. It never reads a clock,
never draws a random number (resume tokens come from the ``new_token`` callable given
to the constructor) and never blocks.

Two clocks, each for what it is good at. ``now`` is monotonic seconds from any origin
(``time.monotonic()``, ``loop.time()``, ``trio.current_time()``), the same convention as
every machine of the package: every deadline, rate and window (token bucket, abuse
window, idle timeout, resume grace) runs on it, so a wall clock stepped by NTP moves
none of them, and a ``now`` that goes back is the adapter's bug
(``LocalProtocolError``). The wall time (Unix seconds) is needed only where the
protocol speaks calendar time — a chat's ``ts`` and a join token's expiry — and arrives
with the frame that needs it (``FrameReceived.wall_time``), so that it is an input like
any other: recorded in a trace and replayed with it.

Each connection is in one of three phases::

    LOBBY ──join-room──▶ JOINED ──leave-room──▶ LOBBY
      │                    │  └──join-room (other room/id)──▶ JOINED
      └────────┬───────────┘
               ▼ the machine closes it (1008 abuse, 1009 oversize)
            CLOSED ──Disconnected──▶ (forgotten)

and every frame goes through the same pipeline:

1. *size*: over ``Limits.max_frame_bytes`` → ``frame-too-large`` then close 1009;
2. *rate*: a token bucket per connection (``rate_limit`` frames/s, ``rate_burst``
   deep) refilled from ``now``; an empty bucket → ``rate-limited``, frame dropped;
3. *envelope*: the frame is decoded and its ``channel``/``type`` checked
   (:func:`~.wire.client_envelope`);
4. *dispatch*: the table :data:`_TRANSITIONS` maps ``(phase, type)`` to the handler,
   which checks the type's fields; a pair missing from the table is an error reply
   (``not-in-room``). Signaling frames are never turned into message objects: the
   handler checks the decoded object's fields (:func:`~.wire.check_signal`) and relays
   the *sender's text*, its closing brace replaced by the member's stamp
   (``,"fromUserId":…,"roomId":…}``, made once per join): every field it does not
   read passes byte for byte, and no encoder runs. Only a frame that carries its own
   ``fromUserId`` or ``roomId`` is stamped in the decoded object and encoded anew, so
   that the client's values are overwritten, never relayed.

**Addresses.** ``Connected.address`` (the client's IP, fed at TCP accept) keys two
rules. ``Limits.max_per_address`` bounds its open connections *plus its held members*
(a connection over it is closed as it arrives with 1013; a held member counts until
its hold ends, so dropping sockets on purpose escapes nothing). And a connection's rate
bucket is *parked* when it ends not full: the address's next connection starts from
the emptiest parked bucket (refilled for the time between) rather than a full one, so
reconnecting never resets the rate limit; a parked bucket is forgotten once it would be
full again (a ``(parked, address)`` deadline).

Every error reply is recorded; ``abuse_errors`` of them within ``abuse_window`` seconds
close the connection with 1008. A connection the machine closes leaves its room at
once, so the others are told before the adapter has even finished closing it.

Membership lives behind :class:`~.directory.Directory`; a join consults the optional
``authorize`` callable (the seam for signed tokens). Deadlines live in
:class:`~.timers.Timers`; the adapter keeps one real timer armed for
:meth:`RelayMachine.next_deadline` and calls :meth:`RelayMachine.handle_timer`.

**Resume.** A member whose socket ends without a clean close (``Disconnected(clean=
False)``) is *held*: it stays in the directory under its old connection id, nobody is
told, and every frame addressed to it is queued instead of sent (at most
``Limits.resume_queue_frames`` frames / ``resume_queue_bytes`` bytes). A ``join-room``
for that room and id carrying the ``resumeToken`` of its last ``user-joined-room`` takes
the place back: the new connection gets a fresh ``user-joined-room`` (new token) and the
queue, in order. The grace deadline (``Limits.resume_grace``) or a full queue ends the
hold: the member leaves as usual, exactly once. A resume while the old socket is still
open closes the old one with 4000 (``replaced``), and that close removes nobody.

Delivery order: actions come out in the order the machine decided them, and the
adapter sends each connection's frames in that order, so frames from one sender to one
target arrive in the order they were sent, and a ``user-joined-room`` reaches every
member before any later frame of that room.

**A cluster** (``RelayMachine(node=...)``, ``serve --redis``): rooms and the frames for
their members live in a shared store (:mod:`.store`), asked with ``StoreOp`` actions and
heard as ``StoreResult`` events. Every change of a room is a transaction — read the
room, decide with the same rules (:meth:`RelayMachine._admission`), commit at the
version read, decide again on a conflict — and every frame for a member goes through its
mailbox. The section "a cluster" below is the whole of it; docs/scaling.md the design.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
from collections import Counter, deque
from collections.abc import Callable
from enum import Enum

import attrs

from .actions import CloseConnection, Log, LogLevel, RelayAction, SendFrame, send_frame
from .codes import Channel, CloseCode, ErrorCode
from .directory import Directory, MemoryDirectory
from .errors import LocalProtocolError, WireError
from .events import Connected, ConnId, Disconnected, FrameReceived, RelayEvent
from .limits import DEFAULT_LIMITS, Limits, WireLimits
from .store import (
    ClaimNode,
    CommitRoom,
    DeadNodes,
    FindDeadNodes,
    MailNotice,
    MemberRecord,
    Members,
    NodeClaimed,
    NodeLapsed,
    NodeMessage,
    Post,
    Posted,
    ReadRoom,
    RoomCommitted,
    RoomRead,
    StoreFailed,
    StoreResult,
    Take,
    Taken,
)
from .timers import Timers
from .wire import (
    CLIENT_TYPES,
    Answer,
    ChatMessage,
    Ice,
    JoinRoom,
    JSONValue,
    LeaveRoom,
    Offer,
    Renegotiate,
    UserJoinedRoom,
    UserLeftRoom,
    check_signal,
    client_envelope,
    decode_object,
    dumps,
    encode,
    parse_chat,
    parse_join_room,
    parse_leave_room,
    signal_stamp,
)

Authorize = Callable[[JoinRoom, float], bool]
"""``authorize(join, wall_time)``: may this join go ahead? (False → ``unauthorized``.)
``wall_time`` is the join frame's :attr:`~.events.FrameReceived.wall_time` (Unix seconds):
a token's expiry is calendar time, not the machine's monotonic ``now``."""


def is_clean_close(code: int | None, *, by_server: bool, server_code: int | None = None) -> bool:
    """The ``clean`` flag of :class:`~.events.Disconnected`, by the protocol's rule.

    ``code`` is the close code the client sent (``None`` when the socket simply dropped);
    ``by_server`` is true when the server side (machine, adapter or WebSocket library)
    started the close, with ``server_code``. A clean close leaves at once; any other end
    of a socket is held for a resume. The server's own closes (1001, 1007, 1008, 1009,
    1011, 1013) are clean, except a restart (1012): its clients come back and resume.
    """
    if by_server:
        return server_code != CloseCode.SERVICE_RESTART
    return code in (CloseCode.NORMAL, CloseCode.GOING_AWAY)


_IDLE, _HELD, _PARKED, _SWEEP, _RETRY = "idle", "held", "parked", "sweep", "retry"
"""The kinds of deadline in the machine's ``Timers``: ``(kind, conn)`` for the first two,
``(_PARKED, address)`` for the rate buckets an address's ended connections left."""

_PARKED_PER_ADDRESS = 64
"""At most this many parked rate buckets per address (the fullest go first)."""


class Phase(Enum):
    """Where one connection stands."""

    LOBBY = "lobby"
    JOINED = "joined"
    CLOSED = "closed"

    # Every frame looks its (phase, type) up in _TRANSITIONS: Enum's own __hash__ is
    # Python code (it hashes the name); a member is equal to itself alone, so hashing by
    # identity is as right and runs in C.
    __hash__ = object.__hash__


_CLOSED = Phase.CLOSED
"""For the hot path: an enum member read from its class costs a lookup each time."""


@attrs.define(slots=True)
class _Conn:
    phase: Phase
    tokens: float
    refilled_at: float
    address: str | None = None
    """The client's address, when known: the connection counts against it (and parks its
    rate bucket there when it ends)."""
    room_id: str | None = None
    user_id: str | None = None
    resume_token: str | None = None
    stamp: str = ""
    """How a signal this member sends ends once relayed (:func:`~.wire.signal_stamp`:
    its ``fromUserId``, ``roomId`` and the closing brace), made once per join."""
    last_frame: float = 0.0
    waiting: deque[tuple[str | bytes, float | None]] | None = None
    """Cluster: frames that arrived while a change of this member's room is being
    committed; handled, in order, once it is (``None``: nothing in flight)."""
    taking: bool = False
    """Cluster: a take of its mailbox is in flight (``mail``: another notice came)."""
    mail: bool = False
    errors: deque[float] | None = None
    """When its recent error replies were sent (made at the first: most connections
    never get one, and an empty deque is 600 bytes)."""


@attrs.define(slots=True)
class _Held:
    """A member whose socket dropped, kept for a resume."""

    room_id: str
    user_id: str
    resume_token: str
    address: str | None = None
    """The address it still counts against until the hold ends."""
    frames: deque[tuple[str, str]] = attrs.field(factory=deque)
    """``(text, frame type)`` addressed to it meanwhile, in order."""
    size: int = 0


@attrs.define(slots=True)
class RelayStats:
    """Counters kept by the machine (pure numbers; an adapter exports them)."""

    frames_in: Counter[str] = attrs.field(factory=Counter)
    """Frames received, by ``type`` (``"invalid"`` for frames that did not parse)."""
    frames_out: Counter[str] = attrs.field(factory=Counter)
    """Frames sent, by ``type``."""
    errors: Counter[str] = attrs.field(factory=Counter)
    """Error replies, by code."""
    closes: Counter[int] = attrs.field(factory=Counter)
    """Connections closed by the machine, by close code."""
    rooms_limit_refusals: int = 0
    """Joins refused (``room-full``) because the server had ``max_rooms`` rooms."""
    resumes: int = 0
    """Members that took their place back with a resume token."""
    holds_expired: int = 0
    """Held members that left because the grace period passed."""
    holds_overflowed: int = 0
    """Held members that left early because their queue was full."""
    idle_closes: int = 0
    """Connections closed (1001) for sending no frame within ``idle_timeout``."""
    address_refusals: int = 0
    """Connections closed as they arrived: their address had ``max_per_address``."""


class RelayMachine:
    """The relay server's decisions. See the module docstring for the whole story.

    ``new_token`` makes resume tokens (the adapter passes a CSPRNG, tests a counter);
    ``directory`` holds membership; ``authorize`` vets joins.
    """

    def __init__(
        self,
        *,
        new_token: Callable[[], str],
        limits: Limits = DEFAULT_LIMITS,
        directory: Directory | None = None,
        authorize: Authorize | None = None,
        node: str | None = None,
    ) -> None:
        self.limits = limits
        self.node = node
        """Scale-out: this process's node id; membership and delivery then go through
        the shared store (``StoreOp`` actions, ``StoreResult`` events). ``None``: one
        process, the directory in memory."""
        self.directory: Directory = directory if directory is not None else MemoryDirectory()
        self.stats = RelayStats()
        self._new_token = new_token
        self._authorize = authorize
        self._conns: dict[ConnId, _Conn] = {}
        self._held: dict[ConnId, _Held] = {}
        self._per_address: Counter[str] = Counter()
        """Open connections plus held members, by address (only addresses with some)."""
        self._parked: dict[str, list[tuple[float, float]]] = {}
        """``(tokens, refilled_at)`` of rate buckets that ended not full, by address."""
        self._overflowed: list[ConnId] = []
        self._timers = Timers()
        self._op_ids = itertools.count(1)
        self._awaits: dict[int, _Txn | _Callback] = {}
        """Cluster: store operations in flight, by op id: what to do with the answer."""
        self._local: dict[tuple[str, str], ConnId] = {}
        """Cluster: ``(room, user) → conn`` of this node's live members."""
        self._reading: tuple[str, int] | None = None
        """Cluster: the room (and its size) a join is being decided on, for room_size()."""
        self._now = _NEVER
        """The latest ``now`` fed in: ``now`` never goes back."""
        self._pseudo = itertools.count(1)
        self._retries: dict[int, _Txn] = {}
        """Cluster: room changes that must happen (a leave, a hold, its end) whose store
        could not be reached: tried again a second later, until it can."""
        """Cluster: ids (negated) of the holds this node took over from dead nodes."""

    # ------------------------------------------------------------------ public API

    @property
    def connection_count(self) -> int:
        """Open connections (those the machine has closed but not yet heard end excluded)."""
        return sum(1 for c in self._conns.values() if c.phase is not Phase.CLOSED)

    @property
    def held_count(self) -> int:
        """Members held for a resume (their socket dropped; the grace has not passed)."""
        return len(self._held)

    def address_load(self, address: str) -> int:
        """Open connections plus held members of ``address`` (what ``max_per_address``
        bounds)."""
        return self._per_address[address]

    @property
    def room_count(self) -> int:
        """Rooms with at least one member (in a cluster: with one on this node)."""
        if self.node is not None:
            return len({room for room, _ in self._local})
        return self.directory.room_count()

    def room_size(self, room_id: str) -> int:
        """How many members ``room_id`` has (for an ``authorize`` hook that caps it, such
        as :class:`~.tokens.TokenAuthority`'s ``max`` claim). In a cluster: as the store
        answered the join being decided (the hook runs inside that decision)."""
        if self.node is not None:
            reading = self._reading
            return reading[1] if reading is not None and reading[0] == room_id else 0
        return self.directory.size(room_id)

    def phase(self, conn: ConnId) -> Phase:
        """The phase of ``conn`` (raises ``LocalProtocolError`` for an unknown one)."""
        return self._conn(conn).phase

    def member(self, conn: ConnId) -> tuple[str, str] | None:
        """``(room_id, user_id)`` of ``conn``, or ``None`` when it is in no room."""
        c = self._conn(conn)
        if c.room_id is None or c.user_id is None:
            return None
        return c.room_id, c.user_id

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None``."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> list[RelayAction]:
        """Run every deadline that is due at ``now`` (resume graces that passed)."""
        if now < self._now:
            self._went_back(now)
        self._now = now
        actions: list[RelayAction] = []
        for key in self._timers.pop_due(now):
            assert isinstance(key, tuple)
            kind, which = key
            if kind == _HELD:
                held = self._held.pop(which)
                self._release(held.address)
                if self.node is not None:
                    actions += self._cluster_expire(held, which)
                    continue
                self.stats.holds_expired += 1
                actions += self._depart(held.room_id, held.user_id, _GRACE_PASSED)
            elif kind == _PARKED:
                self._expire_parked(which, now)
            elif kind == _SWEEP:
                actions += self._sweep(now)
            elif kind == _RETRY:
                txn = self._retries.pop(which)
                txn.attempts = 0
                actions += self._transact(txn)
            else:
                actions += self._idle_check(which, now)
        return self._after(actions)

    def _idle_check(self, conn: ConnId, now: float) -> list[RelayAction]:
        """The idle deadline of ``conn`` came: close it, or wait for its last frame's own
        deadline (frames do not move the timer; this check does, lazily)."""
        c = self._conns.get(conn)
        if c is None or c.phase is Phase.CLOSED:
            return []
        due = c.last_frame + self.limits.idle_timeout
        if now < due:
            self._timers.schedule((_IDLE, conn), due)
            return []
        self.stats.idle_closes += 1
        return self._close(c, conn, CloseCode.GOING_AWAY, "idle timeout")

    def handle(self, event: RelayEvent | StoreResult, now: float) -> list[RelayAction]:
        """Feed one event; returns the actions to run, in order."""
        if now < self._now:
            self._went_back(now)
        if self._now == _NEVER and self.node is not None:  # the first event: sweeps start
            self._timers.schedule((_SWEEP, ""), now + self.limits.node_timeout / 3)
        self._now = now
        if isinstance(event, FrameReceived):  # nearly every event: dispatched here
            actions = self._on_frame(event.conn, event.data, now, event.wall_time)
        else:
            actions = self._handle(event, now)
        return self._after(actions) if self._overflowed else actions

    def _went_back(self, now: float) -> None:
        raise LocalProtocolError(
            f"now went back from {self._now!r} to {now!r}: the relay's now is monotonic"
            " (time.monotonic(), loop.time()); the wall time goes in FrameReceived.wall_time"
        )

    def _after(self, actions: list[RelayAction]) -> list[RelayAction]:
        """Held members whose queue overflowed while deciding ``actions`` leave now (the
        frames that made them overflow were queued for nobody, so order is kept)."""
        while self._overflowed:
            conn = self._overflowed.pop(0)
            held = self._held.pop(conn, None)
            if held is not None:
                self._timers.cancel((_HELD, conn))
                self._release(held.address)
                self.stats.holds_overflowed += 1
                actions += self._depart(held.room_id, held.user_id, " (resume queue full)")
        return actions

    def _handle(self, event: RelayEvent | StoreResult, now: float) -> list[RelayAction]:
        """Every event but ``FrameReceived`` (which :meth:`handle` dispatches itself)."""
        if isinstance(event, Connected):
            return self._on_connected(event.conn, event.address, now)
        if isinstance(event, Disconnected):
            c = self._conn(event.conn)
            del self._conns[event.conn]
            self._timers.cancel((_IDLE, event.conn))
            self._park(c, now)
            if c.phase is not Phase.JOINED:
                self._release(c.address)
                return []
            if event.clean or self.limits.resume_grace <= 0 or c.resume_token is None:
                self._release(c.address)
                return self._leave(c, event.conn)
            if self.node is not None:
                return self._cluster_hold(c, event.conn, now)
            return self._hold(c, event.conn, now)
        if self.node is not None and isinstance(event, _STORE_RESULTS):
            return self._on_store(event, now)
        raise LocalProtocolError(f"RelayMachine cannot handle {type(event).__name__}")

    # ------------------------------------------------------------------ addresses

    def _on_connected(self, conn: ConnId, address: str | None, now: float) -> list[RelayAction]:
        if conn in self._conns:
            raise LocalProtocolError(f"Connected for connection {conn}, already open")
        limits = self.limits
        load = 0 if address is None else self._per_address[address]
        if address is not None and limits.max_per_address and load >= limits.max_per_address:
            # Refused as it arrives: it never counts, and takes no parked bucket.
            self._conns[conn] = _Conn(
                phase=Phase.CLOSED, tokens=0.0, refilled_at=now, last_frame=now
            )
            self.stats.address_refusals += 1
            return [
                CloseConnection(
                    conn=conn,
                    code=_REFUSED_AT_CONNECT[0],
                    reason="too many connections from your address",
                ),
                Log(
                    level=LogLevel.INFO,
                    message="Refused connection %s from %s: %d connections and held"
                    " members from this address (limit %d)",
                    args=(conn, address, load, limits.max_per_address),
                ),
            ]
        tokens, refilled_at = self._unpark(address, now)
        c = _Conn(phase=Phase.LOBBY, tokens=tokens, refilled_at=refilled_at, last_frame=now)
        self._conns[conn] = c
        if address is not None:
            self._per_address[address] = load + 1
            c.address = address
        if limits.idle_timeout > 0:
            self._timers.schedule((_IDLE, conn), now + limits.idle_timeout)
        return []

    def _release(self, address: str | None) -> None:
        """One connection or held member of ``address`` is gone."""
        if address is None:
            return
        left = self._per_address[address] - 1
        if left > 0:
            self._per_address[address] = left
        else:
            del self._per_address[address]

    def _level(self, tokens: float, refilled_at: float, now: float) -> float:
        """A rate bucket's tokens at ``now``."""
        limits = self.limits
        return min(float(limits.rate_burst), tokens + (now - refilled_at) * limits.rate_limit)

    def _park(self, c: _Conn, now: float) -> None:
        """A connection ended: keep its rate bucket for its address's next connection,
        unless it is full by now (a fresh one would be the same)."""
        address = c.address
        if address is None or self.limits.rate_limit <= 0:
            return
        level = self._level(c.tokens, c.refilled_at, now)
        if level >= self.limits.rate_burst:
            return
        parked = self._parked.setdefault(address, [])
        parked.append((level, now))
        if len(parked) > _PARKED_PER_ADDRESS:
            parked.sort()
            del parked[_PARKED_PER_ADDRESS:]  # the fullest matter least
        self._schedule_parked(address, parked)

    def _schedule_parked(self, address: str, parked: list[tuple[float, float]]) -> None:
        """Wake when the emptiest parked bucket of ``address`` is full again: then none
        of them matters any more."""
        rate, burst = self.limits.rate_limit, self.limits.rate_burst
        full_at = max(at + (burst - tokens) / rate for tokens, at in parked)
        self._timers.schedule((_PARKED, address), full_at)

    def _unpark(self, address: str | None, now: float) -> tuple[float, float]:
        """The rate bucket a new connection starts with: the emptiest one its address's
        ended connections left, else a full one."""
        parked = self._parked.get(address) if address is not None else None
        if not parked:
            return float(self.limits.rate_burst), now
        assert address is not None
        emptiest = min(range(len(parked)), key=lambda i: self._level(*parked[i], now))
        tokens, at = parked.pop(emptiest)
        if parked:
            self._schedule_parked(address, parked)
        else:
            del self._parked[address]
            self._timers.cancel((_PARKED, address))
        return tokens, at

    def _expire_parked(self, address: str, now: float) -> None:
        parked = [
            p
            for p in self._parked.pop(address, [])
            if self._level(*p, now) < self.limits.rate_burst
        ]
        if parked:
            self._parked[address] = parked
            self._schedule_parked(address, parked)

    # ------------------------------------------------------------------ pipeline

    def _conn(self, conn: ConnId) -> _Conn:
        c = self._conns.get(conn)
        if c is None:
            raise _not_open(conn)
        return c

    def _on_frame(
        self, conn: ConnId, data: str | bytes, now: float, wall_time: float | None
    ) -> list[RelayAction]:
        # The hot path: every call saved here is saved for every frame, so the steps
        # that are one line (the connection, the common size case) are written inline.
        c = self._conns.get(conn)
        if c is None:
            raise _not_open(conn)
        if c.phase is _CLOSED:
            return []  # still in flight when we closed it; nothing to decide
        c.last_frame = now
        limits = self.limits
        # A frame of at most max_frame_bytes / 4 characters cannot be over the limit
        # (4 UTF-8 bytes per character at most): only a longer one is measured.
        if len(data) * 4 > limits.max_frame_bytes and limits.too_large(data):
            self.stats.frames_in["invalid"] += 1
            error = WireError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame is larger than {limits.max_frame_bytes} bytes",
                _channel_hint(data),
            )
            actions = self._error_frame(conn, error)
            actions += self._close(c, conn, CloseCode.TOO_BIG, "frame too large")
            return actions
        if limits.rate_limit > 0:
            tokens = self._level(c.tokens, c.refilled_at, now)
            c.refilled_at = now
            if tokens < 1.0:
                c.tokens = tokens
                self.stats.frames_in["invalid"] += 1
                error = WireError(
                    ErrorCode.RATE_LIMITED,
                    f"more than {limits.rate_limit:g} frames/s (burst {limits.rate_burst});"
                    " frame dropped",
                    _channel_hint(data),
                )
                return self._reply_error(c, conn, error, now)
            c.tokens = tokens - 1.0
        if c.waiting is not None:  # cluster: its room is changing; in order, after that
            if len(c.waiting) >= _MAX_WAITING:
                error = WireError(
                    ErrorCode.UNAVAILABLE,
                    "the shared store is slow to answer; frame dropped",
                    _channel_hint(data),
                )
                return self._reply_error(c, conn, error, now)
            c.waiting.append((data, wall_time))
            return []
        type_ = "invalid"
        try:
            obj = decode_object(data)  # text from here on: binary frames are bad-frame
            channel, type_ = client_envelope(obj)
            handler = _TRANSITIONS.get((c.phase, type_))
            if handler is None:
                _check_fields(obj, type_, limits)  # a malformed frame is bad-frame first
                raise WireError(
                    ErrorCode.NOT_IN_ROOM, f"{type_} needs a room; join one first", channel
                )
            actions = handler(self, c, conn, obj, type_, data, now, wall_time)  # type: ignore[arg-type]
        except WireError as exc:
            # A well-formed frame refused by a rule still counts under its type.
            self.stats.frames_in[type_ if exc.code in _RULE_ERRORS else "invalid"] += 1
            return self._reply_error(c, conn, exc, now)
        self.stats.frames_in[type_] += 1
        return actions

    def _error_frame(self, conn: ConnId, error: WireError) -> list[RelayAction]:
        self.stats.errors[error.code.value] += 1
        text = dumps(
            {
                "channel": error.channel,
                "type": "error",
                "code": error.code.value,
                "message": error.message,
            }
        )
        return [
            self._send(conn, text, "error"),
            Log(
                level=LogLevel.DEBUG,
                message="Error %s to connection %s: %s",
                args=(error.code.value, conn, error.message),
            ),
        ]

    def _reply_error(
        self, c: _Conn, conn: ConnId, error: WireError, now: float
    ) -> list[RelayAction]:
        actions = self._error_frame(conn, error)
        errors = c.errors
        if errors is None:
            errors = c.errors = deque()
        errors.append(now)
        horizon = now - self.limits.abuse_window
        while errors and errors[0] <= horizon:
            errors.popleft()
        if len(errors) >= self.limits.abuse_errors:
            actions += self._close(c, conn, CloseCode.POLICY, "too many bad frames")
        return actions

    def _send(self, conn: ConnId, text: str, frame_type: str) -> SendFrame:
        self.stats.frames_out[frame_type] += 1
        return send_frame(conn, text, frame_type)

    def _to_room(self, room_id: str, text: str, frame_type: str) -> list[RelayAction]:
        """``text`` for every member of ``room_id``: sent, or queued for held members."""
        held = self._held
        actions: list[RelayAction] = []
        for _, conn in self.directory.connections(room_id):
            if conn in held:
                self._queue(conn, text, frame_type)
            else:
                actions.append(self._send(conn, text, frame_type))
        return actions

    def _queue(self, conn: ConnId, text: str, frame_type: str) -> None:
        """Keep a frame for the held member on ``conn``; a full queue ends its grace."""
        held = self._held[conn]
        held.frames.append((text, frame_type))
        held.size += len(text)
        limits = self.limits
        full = (
            len(held.frames) > limits.resume_queue_frames or held.size > limits.resume_queue_bytes
        )
        if full and conn not in self._overflowed:
            self._overflowed.append(conn)

    def _hold(self, c: _Conn, conn: ConnId, now: float) -> list[RelayAction]:
        """The socket of a member dropped: keep its place for ``resume_grace`` seconds."""
        assert c.room_id is not None and c.user_id is not None and c.resume_token is not None
        self._held[conn] = _Held(
            room_id=c.room_id, user_id=c.user_id, resume_token=c.resume_token, address=c.address
        )
        self._timers.schedule((_HELD, conn), now + self.limits.resume_grace)
        return [
            Log(
                level=LogLevel.INFO,
                message='User "%s" dropped from room "%s"; held %gs for a resume',
                args=(c.user_id, c.room_id, self.limits.resume_grace),
            )
        ]

    def _depart(self, room_id: str, user_id: str, why: str = "") -> list[RelayAction]:
        """``user_id`` is no longer in ``room_id``: the others (held ones included) are told."""
        self.directory.remove(room_id, user_id)
        text = encode(UserLeftRoom(room_id=room_id, user_id=user_id))
        actions = self._to_room(room_id, text, UserLeftRoom.TYPE)
        actions.append(
            Log(
                level=LogLevel.INFO,
                message='User "%s" left room "%s"%s',
                args=(user_id, room_id, why),
            )
        )
        return actions

    def _close(self, c: _Conn, conn: ConnId, code: int, reason: str) -> list[RelayAction]:
        actions: list[RelayAction] = []
        if c.phase is Phase.JOINED:
            actions += self._leave(c, conn)
        c.phase = Phase.CLOSED
        self.stats.closes[code] += 1
        actions.append(CloseConnection(conn=conn, code=code, reason=reason))
        actions.append(
            Log(
                level=LogLevel.WARNING,
                message="Closing connection %s: %s %s",
                args=(conn, code, reason),
            )
        )
        return actions

    # ------------------------------------------------------------------ membership

    def _leave(self, c: _Conn, conn: ConnId, then: _Then | None = None) -> list[RelayAction]:
        room_id, user_id = c.room_id, c.user_id
        assert room_id is not None and user_id is not None
        c.room_id = c.user_id = c.resume_token = None
        c.stamp = ""
        if c.phase is Phase.JOINED:
            c.phase = Phase.LOBBY
        if self.node is not None:
            return self._cluster_leave(room_id, user_id, conn, then)
        return self._depart(room_id, user_id)

    def _on_join(
        self,
        c: _Conn,
        conn: ConnId,
        obj: dict[str, JSONValue],
        type_: str,
        text: str,
        now: float,
        wall_time: float | None,
    ) -> list[RelayAction]:
        msg = parse_join_room(obj, self.limits)
        room_id, user_id = msg.room_id, msg.user_id
        if self._authorize is not None:
            wall_time = _wall_time(wall_time, "a join on a relay with authorize")
        if self.node is not None:  # authorized in the transaction: on the room as read
            return self._cluster_join(c, conn, msg, now, wall_time)
        if self._authorize is not None and not self._authorize(msg, wall_time or 0.0):
            return self._refuse_join(c, conn, msg, _unauthorized(), now)
        holder = self.directory.lookup(room_id, user_id)
        other = holder is not None and holder != conn
        refusal = self._admission(
            c,
            msg,
            other_holder=other,
            resumable=other
            and msg.resume_token is not None
            and self._resumable(holder, msg.resume_token),  # type: ignore[arg-type]
            taken=lambda: self._taken(holder, msg, now),  # type: ignore[arg-type]
            size=self.directory.size(room_id),
        )
        if refusal is not None:
            return self._refuse_join(c, conn, msg, refusal, now)
        if other:
            assert holder is not None
            return self._resume(c, conn, holder, room_id, user_id)

        actions: list[RelayAction] = []
        if c.phase is Phase.JOINED:
            actions += self._leave(c, conn)  # one room per connection
        existing = self.directory.members(room_id)
        joined = UserJoinedRoom(
            room_id=room_id, user_id=user_id, existing_participants=tuple(existing)
        )
        to_others = self._to_room(room_id, encode(joined), UserJoinedRoom.TYPE)
        self.directory.add(room_id, user_id, conn)
        c.phase, c.room_id, c.user_id = Phase.JOINED, room_id, user_id
        c.stamp = signal_stamp(user_id, room_id)
        c.resume_token = self._new_token()
        own = encode(attrs.evolve(joined, resume_token=c.resume_token))
        actions.append(self._send(conn, own, UserJoinedRoom.TYPE))
        actions += to_others
        actions.append(
            Log(
                level=LogLevel.INFO,
                message='User "%s" joined room "%s" (%d members)',
                args=(user_id, room_id, len(existing) + 1),
            )
        )
        return actions

    def _admission(
        self,
        c: _Conn,
        msg: JoinRoom,
        *,
        other_holder: bool,
        resumable: bool,
        taken: Callable[[], str],
        size: int,
    ) -> WireError | None:
        """The rule of a join, on one process and across a cluster alike: ``None``
        admits it — as a resume when another connection holds the id (``other_holder``)
        and the join brings that member's token (``resumable``), as a join otherwise —
        or the refusal. ``size`` counts the room's members (the joiner's own place, when
        it is in that room already, is freed by the join)."""
        if other_holder:
            if resumable:
                return None
            return WireError(ErrorCode.USER_ID_TAKEN, taken(), Channel.ROOMS)
        if c.room_id == msg.room_id:
            size -= 1
        if size >= self.limits.max_room_size:
            return WireError(
                ErrorCode.ROOM_FULL,
                f"room {msg.room_id!r} is full ({self.limits.max_room_size} members)",
                Channel.ROOMS,
            )
        if size == 0 and c.room_id != msg.room_id and self._rooms_exhausted(c):
            self.stats.rooms_limit_refusals += 1
            return WireError(
                ErrorCode.ROOM_FULL,
                f"the server's room limit ({self.limits.max_rooms} rooms) is reached",
                Channel.ROOMS,
            )
        return None

    def _taken(self, holder: ConnId, msg: JoinRoom, now: float) -> str:
        """The ``user-id-taken`` message: a member held for a resume says so, and for how
        many seconds more (whole seconds, rounded up) the id stays held."""
        deadline = self._timers.deadline_of((_HELD, holder)) if holder in self._held else None
        if deadline is None:
            return f"user id {msg.user_id!r} is taken in room {msg.room_id!r}"
        more = max(1, math.ceil(deadline - now))
        return (
            f"user id {msg.user_id!r} is held for a resume in room {msg.room_id!r}"
            f" for {more} s more"
        )

    def _refuse_join(
        self, c: _Conn, conn: ConnId, msg: JoinRoom, error: WireError, now: float
    ) -> list[RelayAction]:
        """The error reply to a join refused by a rule, and its INFO log line (an operator
        sees who could not join, and why)."""
        refused = Log(
            level=LogLevel.INFO,
            message='Join of user "%s" to room "%s" refused (%s): %s',
            args=(msg.user_id, msg.room_id, error.code.value, error.message),
        )
        return [refused, *self._reply_error(c, conn, error, now)]

    def _rooms_exhausted(self, c: _Conn) -> bool:
        """Whether opening one more room would pass ``max_rooms`` (the joiner's own room
        closes when it is that room's last member, which frees a place)."""
        if self.node is not None:  # a cluster: the rooms this node has members in
            local = {room for room, _ in self._local} - {c.room_id}
            return len(local) >= self.limits.max_rooms
        rooms = self.directory.room_count()
        if c.room_id is not None and self.directory.size(c.room_id) == 1:
            rooms -= 1
        return rooms >= self.limits.max_rooms

    def _resumable(self, holder: ConnId, token: str) -> bool:
        """Whether ``token`` is the current resume token of the member on ``holder``."""
        held = self._held.get(holder)
        if held is not None:
            expected: str | None = held.resume_token
        else:
            live = self._conns.get(holder)
            expected = None if live is None else live.resume_token
        # compare_digest takes str only when both are ASCII: compare bytes, so that any
        # token a client sends (non-ASCII, a lone surrogate) is simply a wrong one.
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
        )

    def _resume(
        self, c: _Conn, conn: ConnId, holder: ConnId, room_id: str, user_id: str
    ) -> list[RelayAction]:
        """``conn`` takes back the place of ``user_id`` held (or still open) on ``holder``:
        a fresh ``user-joined-room`` for it alone, then every frame it missed."""
        actions: list[RelayAction] = []
        if c.phase is Phase.JOINED:
            actions += self._leave(c, conn)  # the new connection was in a room already
        held = self._held.pop(holder, None)
        backlog: deque[tuple[str, str]] = deque()
        if held is not None:
            self._timers.cancel((_HELD, holder))
            self._release(held.address)
            backlog = held.frames
        else:  # the old socket is still open: it is replaced, and removes nobody
            old = self._conns[holder]
            old.phase = Phase.CLOSED
            old.room_id = old.user_id = old.resume_token = None
            self.stats.closes[CloseCode.REPLACED] += 1
            actions.append(CloseConnection(conn=holder, code=CloseCode.REPLACED, reason="replaced"))
        self.directory.add(room_id, user_id, conn)  # the same place, a new connection
        c.phase, c.room_id, c.user_id = Phase.JOINED, room_id, user_id
        c.stamp = signal_stamp(user_id, room_id)
        c.resume_token = self._new_token()
        existing = [m for m in self.directory.members(room_id) if m != user_id]
        joined = UserJoinedRoom(
            room_id=room_id,
            user_id=user_id,
            existing_participants=tuple(existing),
            resume_token=c.resume_token,
        )
        actions.append(self._send(conn, encode(joined), UserJoinedRoom.TYPE))
        actions += [self._send(conn, text, frame_type) for text, frame_type in backlog]
        self.stats.resumes += 1
        actions.append(
            Log(
                level=LogLevel.INFO,
                message='User "%s" resumed in room "%s" (%d missed frames)',
                args=(user_id, room_id, len(backlog)),
            )
        )
        return actions

    def _on_leave(
        self,
        c: _Conn,
        conn: ConnId,
        obj: dict[str, JSONValue],
        type_: str,
        text: str,
        now: float,
        wall_time: float | None,
    ) -> list[RelayAction]:
        msg = parse_leave_room(obj, self.limits)
        if msg.room_id != c.room_id:
            raise WireError(ErrorCode.NOT_IN_ROOM, f"not in room {msg.room_id!r}", Channel.ROOMS)
        return self._leave(c, conn)

    # ------------------------------------------------------------------ relaying

    def _on_signal(
        self,
        c: _Conn,
        conn: ConnId,
        obj: dict[str, JSONValue],
        type_: str,
        text: str,
        now: float,
        wall_time: float | None,
    ) -> list[RelayAction]:
        # The hot path: check the fields, find the target, relay the sender's text stamped.
        to_user_id = check_signal(obj, type_, self.limits)
        room_id = c.room_id
        assert room_id is not None
        cluster = self.node is not None  # then the store says whether the target is in
        target = None if cluster else self.directory.lookup(room_id, to_user_id)
        if target is None and not cluster:
            raise WireError(
                ErrorCode.PEER_NOT_FOUND,
                f"no user {to_user_id!r} in room {room_id!r}",
                Channel.SIGNALING,
            )
        if "fromUserId" in obj or "roomId" in obj or not (text.isascii() or _sendable(text)):
            # A sender's own fromUserId/roomId is overwritten, never trusted: the object is
            # stamped and encoded anew (as is a text no frame could carry, see _sendable).
            obj["fromUserId"] = c.user_id
            obj["roomId"] = room_id
            text = dumps(obj)
        else:
            # The relayed frame is the sender's text itself, byte for byte, with the two
            # stamped fields before its closing brace: every field the relay does not
            # read passes exactly as sent (PROTOCOL.md), and no encoder runs. The text
            # parsed as one object, so after any trailing JSON whitespace it ends in "}";
            # neither key is in it (checked on the decoded object above, whatever escapes
            # spelled the keys), so each appears once.
            text = text.rstrip(_JSON_WHITESPACE)[:-1] + c.stamp
        if cluster:
            return self._cluster_post(c, conn, to_user_id, type_, text)
        assert target is not None
        if target in self._held:
            self._queue(target, text, type_)
            return [_RELAYED_TO_ONE[type_]]
        self.stats.frames_out[type_] += 1
        return [send_frame(target, text, type_), _RELAYED_TO_ONE[type_]]

    def _on_chat(
        self,
        c: _Conn,
        conn: ConnId,
        obj: dict[str, JSONValue],
        type_: str,
        text: str,
        now: float,
        wall_time: float | None,
    ) -> list[RelayAction]:
        msg = parse_chat(obj, self.limits)
        room_id, user_id = c.room_id, c.user_id
        assert room_id is not None and user_id is not None
        ts = _wall_time(wall_time, "a chat-message (its ts)")
        text = encode(ChatMessage(text=msg.text, room_id=room_id, from_user_id=user_id, ts=ts))
        if self.node is not None:
            return self._cluster_post(c, conn, None, ChatMessage.TYPE, text)
        actions = self._to_room(room_id, text, ChatMessage.TYPE)
        actions.append(_relayed(ChatMessage.TYPE, Channel.CHAT.value, self.directory.size(room_id)))
        return actions

    # ------------------------------------------------------------------ a cluster
    #
    # With ``node`` set, the room a member is in lives in the shared store
    # (:mod:`.store`), and so do the frames for it (its mailbox). Every change of a room
    # is a transaction: read the room, decide with the same rules as one process
    # (:meth:`_admission` for a join), commit at the version read; when another node
    # changed the room first, the commit answers the room as it is now and the same
    # decision is made again on that. Frames a connection sends while its room changes
    # wait in order (``_Conn.waiting``). Every frame for a member — membership, chat,
    # signaling — goes through its mailbox, which this node takes when the store says it
    # filled: one order per member, whichever nodes sent its frames.

    def _transact(self, txn: _Txn) -> list[RelayAction]:
        return [ReadRoom(op=self._ask(txn), room=txn.room)]

    def _ask(self, waiter: _Txn | _Callback) -> int:
        """A new store operation's id; ``waiter`` hears its answer."""
        op = next(self._op_ids)
        self._awaits[op] = waiter
        return op

    def _on_store(self, event: StoreResult, now: float) -> list[RelayAction]:
        if isinstance(event, NodeLapsed):
            return self._lapsed(now)
        if isinstance(event, MailNotice):
            if event.full:
                return self._mailbox_full(event.room, event.user)
            return self._on_notice(event.room, event.user)
        if isinstance(event, NodeMessage):
            return self._on_node_message(event.text)
        waiter = self._awaits.pop(event.op, None)
        if waiter is None:
            raise LocalProtocolError(f"no store operation {event.op} is waiting for an answer")
        if not isinstance(waiter, _Txn):
            return waiter(event, now)
        if isinstance(event, StoreFailed):
            if waiter.retry:
                self._retries[event.op] = waiter
                self._timers.schedule((_RETRY, event.op), now + _RETRY_AFTER)
                return [
                    Log(
                        level=LogLevel.WARNING,
                        message='A change of room "%s" waits for the store (%s)',
                        args=(waiter.room, event.reason),
                    )
                ]
            return waiter.failed(event.reason)
        if isinstance(event, RoomCommitted) and event.ok:
            return waiter.done(event)
        if not isinstance(event, RoomRead | RoomCommitted):
            raise LocalProtocolError(f"{type(event).__name__} answers no room transaction")
        waiter.attempts += 1
        if waiter.attempts > _MAX_ATTEMPTS:
            return waiter.failed("the room kept changing")
        change = waiter.decide(event.members)
        if change is None:
            return waiter.done(None)
        return [
            CommitRoom(
                op=self._ask(waiter),
                room=waiter.room,
                expected=event.version,
                put=change.put,
                delete=change.delete,
                post=change.post,
                tell=change.tell,
            )
        ]

    def _mine(self, record: MemberRecord | None, conn: ConnId) -> bool:
        return record is not None and record.node == self.node and record.conn == conn

    def _busy(self, c: _Conn) -> None:
        if c.waiting is None:
            c.waiting = deque()

    def _ready(self, conn: ConnId, now: float) -> list[RelayAction]:
        """The change of ``conn``'s room is done: the frames it sent meanwhile, in order
        (until one of them starts another change), and its mail."""
        c = self._conns.get(conn)
        if c is None or c.waiting is None:
            return []
        waiting, c.waiting = c.waiting, None
        actions: list[RelayAction] = []
        while waiting:
            if c.waiting is not None:  # a frame started another change: the rest wait
                c.waiting.extend(waiting)
                return actions
            data, wall_time = waiting.popleft()
            actions += self._on_frame(conn, data, now, wall_time)
        if c.mail and not c.taking and c.room_id is not None and c.user_id is not None:
            c.mail = False
            actions += self._on_notice(c.room_id, c.user_id)
        return actions

    def _cluster_join(
        self, c: _Conn, conn: ConnId, msg: JoinRoom, now: float, wall_time: float | None
    ) -> list[RelayAction]:
        room_id, user_id = msg.room_id, msg.user_id
        token = self._new_token()
        record = MemberRecord(node=self.node or "", conn=conn, token=_digest(token))
        plan: dict[str, MemberRecord | None] = {}
        refused: list[WireError] = []
        self._busy(c)

        def decide(members: Members) -> _Change | None:
            plan.clear()
            if self._authorize is not None:
                # room_size() answers from this room as read while the hook runs (a
                # token's own cap on the room's size is checked on it)
                self._reading = (room_id, len(members))
                try:
                    allowed = self._authorize(msg, wall_time or 0.0)
                finally:
                    self._reading = None
                if not allowed:
                    plan["refused"] = None
                    refused[:] = [_unauthorized()]
                    return None
            held = members.get(user_id)
            other = held is not None and not self._mine(held, conn)
            size = len(members)
            if c.room_id == room_id and c.user_id is not None and c.user_id not in members:
                size += 1  # its own place (counted by the rule) is not in the store
            refusal = self._admission(
                c,
                msg,
                other_holder=other,
                resumable=other
                and held is not None
                and msg.resume_token is not None
                and hmac.compare_digest(held.token, _digest(msg.resume_token)),
                taken=lambda: f"user id {user_id!r} is taken in room {room_id!r}",
                size=size,
            )
            if refusal is not None:
                plan["refused"] = None
                refused[:] = [refusal]
                return None
            if c.phase is Phase.JOINED:
                # admitted: out of the current room first (as one process does: the
                # others see it leave, its mailbox goes), then in as a new member
                plan["leave first"] = None
                return None
            if other:
                assert held is not None
                plan["resume"] = held
                tell: tuple[tuple[str, str], ...] = ()
                if not held.held and held.node != self.node:
                    replaced = json.dumps({"replaced": [room_id, user_id, held.conn]})
                    tell = ((held.node, replaced),)
                return _Change(put={user_id: record}, tell=tell)
            others = sorted(m for m in members if m not in (user_id, c.user_id))
            joined = UserJoinedRoom(
                room_id=room_id, user_id=user_id, existing_participants=tuple(others)
            )
            plan["join"] = None
            entry = _entry(UserJoinedRoom.TYPE, encode(joined))
            return _Change(put={user_id: record}, post=tuple((m, entry) for m in others))

        def done(result: RoomCommitted | None) -> list[RelayAction]:
            if "refused" in plan:
                return self._refuse_join(c, conn, msg, refused[0], now) + self._ready(conn, now)
            if "leave first" in plan:

                def rejoin(now: float) -> list[RelayAction]:
                    return self._transact(_Txn(room_id, decide, done, failed))

                return self._leave(c, conn, rejoin)
            assert result is not None
            if conn not in self._conns:  # gone meanwhile: it leaves again
                return self._cluster_leave(room_id, user_id, conn)
            if c.room_id is not None and c.user_id is not None:
                self._local.pop((c.room_id, c.user_id), None)
            c.phase, c.room_id, c.user_id = Phase.JOINED, room_id, user_id
            c.stamp = signal_stamp(user_id, room_id)
            c.resume_token = token
            self._local[(room_id, user_id)] = conn
            others = sorted(m for m in result.members if m != user_id)
            own = encode(
                UserJoinedRoom(
                    room_id=room_id,
                    user_id=user_id,
                    existing_participants=tuple(others),
                    resume_token=token,
                )
            )
            actions: list[RelayAction] = [self._send(conn, own, UserJoinedRoom.TYPE)]
            if "resume" in plan:
                actions += self._resumed_here(plan["resume"], room_id, user_id)
                self.stats.resumes += 1
                actions.append(
                    Log(
                        level=LogLevel.INFO,
                        message='User "%s" resumed in room "%s"',
                        args=(user_id, room_id),
                    )
                )
            else:
                actions.append(
                    Log(
                        level=LogLevel.INFO,
                        message='User "%s" joined room "%s" (%d members)',
                        args=(user_id, room_id, len(others) + 1),
                    )
                )
            # Its mailbox now: what it missed (a resume), or what others posted between
            # the commit and this answer — whose notice may have come first, when this
            # node did not know the member yet.
            c.taking = True
            op = self._ask(lambda r, t: self._taken_mail(conn, r, t, then_ready=True))
            actions.append(Take(op=op, room=room_id, user=user_id, node=self.node or "", conn=conn))
            return actions

        def failed(reason: str) -> list[RelayAction]:
            error = WireError(
                ErrorCode.UNAVAILABLE,
                f"the shared store cannot be reached ({reason}); try again",
                Channel.ROOMS,
            )
            return self._refuse_join(c, conn, msg, error, now) + self._ready(conn, now)

        return self._transact(_Txn(room_id, decide, done, failed))

    def _resumed_here(
        self, old: MemberRecord | None, room_id: str, user_id: str
    ) -> list[RelayAction]:
        """A resume on this node took the place of ``old``: a hold of it here ends, a live
        socket of it here is replaced (4000; it removes nobody)."""
        if old is None or old.node != self.node:
            return []
        held = self._held.pop(old.conn, None)
        if held is not None:
            self._timers.cancel((_HELD, old.conn))
            self._release(held.address)
            return []
        return self._replace(old.conn, room_id, user_id)

    def _replace(self, conn: ConnId, room_id: str, user_id: str) -> list[RelayAction]:
        c = self._conns.get(conn)
        if c is None or (c.room_id, c.user_id) != (room_id, user_id):
            return []
        if self._local.get((room_id, user_id)) == conn:
            del self._local[(room_id, user_id)]
        c.phase = Phase.CLOSED
        c.room_id = c.user_id = c.resume_token = None
        self.stats.closes[CloseCode.REPLACED] += 1
        return [CloseConnection(conn=conn, code=CloseCode.REPLACED, reason="replaced")]

    def _on_node_message(self, text: str) -> list[RelayAction]:
        message = json.loads(text)
        room_id, user_id, conn = message["replaced"]
        return self._replace(int(conn), str(room_id), str(user_id))

    def _cluster_leave(
        self, room_id: str, user_id: str, conn: ConnId, then: _Then | None = None
    ) -> list[RelayAction]:
        """``user_id`` on ``conn`` leaves ``room_id`` (already out of it here): the store
        forgets it and the rest are told — unless its place is not this connection's
        any more (a resume elsewhere took it). A connection still open waits for that
        (its next frames, a join, must not race its own leave); ``then`` runs once the
        leave is decided."""
        if self._local.get((room_id, user_id)) == conn:
            del self._local[(room_id, user_id)]
        c = self._conns.get(conn)
        if then is None and c is not None and c.phase is not _CLOSED:
            self._busy(c)

            def then(now: float) -> list[RelayAction]:
                return self._ready(conn, now)

        txn = self._departure(room_id, user_id, conn, held=False, why="", then=then)
        return self._transact(txn)

    def _departure(
        self,
        room_id: str,
        user_id: str,
        conn: ConnId,
        *,
        held: bool,
        why: str,
        then: _Then | None = None,
    ) -> _Txn:
        def decide(members: Members) -> _Change | None:
            record = members.get(user_id)
            if not self._mine(record, conn) or (held and record is not None and not record.held):
                return None
            left = _entry(UserLeftRoom.TYPE, encode(UserLeftRoom(room_id=room_id, user_id=user_id)))
            return _Change(
                delete=(user_id,), post=tuple((m, left) for m in members if m != user_id)
            )

        def after() -> list[RelayAction]:
            return [] if then is None else then(self._now)

        def done(result: RoomCommitted | None) -> list[RelayAction]:
            if result is None:
                return after()
            if held and why == _GRACE_PASSED:
                self.stats.holds_expired += 1
            left = Log(
                level=LogLevel.INFO,
                message='User "%s" left room "%s"%s',
                args=(user_id, room_id, why),
            )
            return [left, *after()]

        def failed(reason: str) -> list[RelayAction]:  # the room kept changing
            return [
                Log(
                    level=LogLevel.WARNING,
                    message='Leave of user "%s" from room "%s" not recorded: %s',
                    args=(user_id, room_id, reason),
                ),
                *after(),
            ]

        return _Txn(room_id, decide, done, failed, retry=True)

    def _cluster_hold(self, c: _Conn, conn: ConnId, now: float) -> list[RelayAction]:
        """The socket of a member dropped: its record says so (no notices: its mailbox
        keeps its frames), and this node runs the grace."""
        room_id, user_id = c.room_id, c.user_id
        assert room_id is not None and user_id is not None
        if self._local.get((room_id, user_id)) == conn:
            del self._local[(room_id, user_id)]
        actions = self._hold(c, conn, now)

        def decide(members: Members) -> _Change | None:
            record = members.get(user_id)
            if record is None or not self._mine(record, conn) or record.held:
                return None
            return _Change(put={user_id: attrs.evolve(record, held=True)})

        def done(result: RoomCommitted | None) -> list[RelayAction]:
            return []

        def failed(reason: str) -> list[RelayAction]:
            return []

        return actions + self._transact(_Txn(room_id, decide, done, failed, retry=True))

    def _cluster_expire(self, held: _Held, conn: ConnId) -> list[RelayAction]:
        """A hold's grace passed: the member leaves, if its place is still this hold."""
        txn = self._departure(held.room_id, held.user_id, conn, held=True, why=_GRACE_PASSED)
        return self._transact(txn)

    def _lapsed(self, now: float) -> list[RelayAction]:
        """This node's heartbeat lapsed: another node may have swept its members (their
        records then name it, and a resume may have moved some). Every member here is
        closed with 1012 so that its client comes back and resumes — here or elsewhere —
        from what the store says now."""
        actions: list[RelayAction] = [
            Log(
                level=LogLevel.WARNING,
                message="This node's heartbeat lapsed: closing its %d members (1012) so they"
                " resume from what the cluster holds now",
                args=(len(self._local),),
            )
        ]
        for conn in list(self._local.values()):
            c = self._conns.get(conn)
            if c is not None and c.phase is Phase.JOINED:
                actions += self._close(c, conn, CloseCode.SERVICE_RESTART, "rejoin the cluster")
        return actions

    def _sweep(self, now: float) -> list[RelayAction]:
        """Look for dead nodes (every third of the node timeout); the members of each
        are held again here — the first node to claim it does it — so they may resume
        anywhere within the grace, and the rest leave once it passes."""
        self._timers.schedule((_SWEEP, ""), now + self.limits.node_timeout / 3)
        op = self._ask(self._dead_nodes)
        return [FindDeadNodes(op=op)]

    def _dead_nodes(self, result: StoreResult, now: float) -> list[RelayAction]:
        if not isinstance(result, DeadNodes):
            return []  # the store is unreachable: the next sweep asks again
        ttl_ms = int(self.limits.node_timeout * 1000)
        actions: list[RelayAction] = []
        for node in result.nodes:
            if node != self.node:
                op = self._ask(self._claimed)
                actions.append(ClaimNode(op=op, node=node, ttl_ms=ttl_ms))
        return actions

    def _claimed(self, result: StoreResult, now: float) -> list[RelayAction]:
        if not isinstance(result, NodeClaimed) or result.members is None:
            return []
        actions: list[RelayAction] = [
            Log(
                level=LogLevel.WARNING,
                message='Node "%s" is gone: holding its %d members for a resume',
                args=(result.node, len(result.members)),
            )
        ]
        for room_id, user_id in result.members:
            actions += self._transact(self._take_over(result.node, room_id, user_id, now))
        return actions

    def _take_over(self, dead: str, room_id: str, user_id: str, now: float) -> _Txn:
        """The hold of ``user_id``, whose record names the dead node, moves here (a
        pseudo connection id; nobody is told), unless it resumed elsewhere meanwhile."""
        pseudo = -next(self._pseudo)

        def decide(members: Members) -> _Change | None:
            record = members.get(user_id)
            if record is None or record.node != dead:
                return None
            mine = MemberRecord(node=self.node or "", conn=pseudo, token=record.token, held=True)
            return _Change(put={user_id: mine})

        def done(result: RoomCommitted | None) -> list[RelayAction]:
            if result is None:
                return []
            self._held[pseudo] = _Held(room_id=room_id, user_id=user_id, resume_token="")
            self._timers.schedule((_HELD, pseudo), now + self.limits.resume_grace)
            return []

        def failed(reason: str) -> list[RelayAction]:
            return []  # the claim lapses; a later sweep claims the node again

        return _Txn(room_id, decide, done, failed)

    def _cluster_post(
        self, c: _Conn, conn: ConnId, to_user_id: str | None, type_: str, text: str
    ) -> list[RelayAction]:
        """A signal for ``to_user_id`` (or a chat for the room: ``None``) into mailboxes."""
        room_id = c.room_id
        assert room_id is not None

        def posted(result: StoreResult, now: float) -> list[RelayAction]:
            live = self._conns.get(conn)
            if isinstance(result, Posted) and result.count:
                if to_user_id is None:
                    return [_relayed(type_, Channel.CHAT.value, result.count)]
                return [_RELAYED_TO_ONE[type_]]
            if live is None or live.phase is _CLOSED:
                return []
            if isinstance(result, StoreFailed):
                error = WireError(
                    ErrorCode.UNAVAILABLE,
                    f"the shared store cannot be reached ({result.reason}); frame dropped",
                    Channel.CHAT if to_user_id is None else Channel.SIGNALING,
                )
            else:
                error = WireError(
                    ErrorCode.PEER_NOT_FOUND,
                    f"no user {to_user_id!r} in room {room_id!r}",
                    Channel.SIGNALING,
                )
            self.stats.frames_in[type_] -= 1
            self.stats.frames_in["invalid" if isinstance(result, StoreFailed) else type_] += 1
            return self._reply_error(live, conn, error, now)

        op = self._ask(posted)
        return [Post(op=op, room=room_id, user=to_user_id, text=_entry(type_, text))]

    def _mailbox_full(self, room_id: str, user_id: str) -> list[RelayAction]:
        """A member's mailbox refused a frame: held here, its hold ends (it leaves, as
        when one process's resume queue overflows); live here, it is taken now."""
        for conn, held in list(self._held.items()):
            if (held.room_id, held.user_id) == (room_id, user_id):
                del self._held[conn]
                self._timers.cancel((_HELD, conn))
                self._release(held.address)
                self.stats.holds_overflowed += 1
                txn = self._departure(room_id, user_id, conn, held=True, why=" (resume queue full)")
                return self._transact(txn)
        return self._on_notice(room_id, user_id)

    def _on_notice(self, room_id: str, user_id: str) -> list[RelayAction]:
        conn = self._local.get((room_id, user_id))
        c = None if conn is None else self._conns.get(conn)
        if conn is None or c is None or c.phase is _CLOSED:
            return []
        if c.taking or c.waiting is not None:
            c.mail = True  # taken once the take or change in flight is done
            return []
        c.taking = True
        op = self._ask(lambda r, t: self._taken_mail(conn, r, t, then_ready=False))
        return [Take(op=op, room=room_id, user=user_id, node=self.node or "", conn=conn)]

    def _taken_mail(
        self, conn: ConnId, result: StoreResult, now: float, *, then_ready: bool
    ) -> list[RelayAction]:
        c = self._conns.get(conn)
        if c is None:
            return []
        c.taking = False
        actions: list[RelayAction] = []
        if isinstance(result, Taken) and c.phase is not _CLOSED:
            for entry in result.frames:
                type_, _, text = entry.partition("\n")
                actions.append(self._send(conn, text, type_))
        if then_ready:
            return actions + self._ready(conn, now)
        if c.mail and c.room_id is not None and c.user_id is not None:
            c.mail = False
            actions += self._on_notice(c.room_id, c.user_id)
        return actions


_RULE_ERRORS = frozenset(
    {
        ErrorCode.NOT_IN_ROOM,
        ErrorCode.PEER_NOT_FOUND,
        ErrorCode.USER_ID_TAKEN,
        ErrorCode.ROOM_FULL,
        ErrorCode.UNAUTHORIZED,
    }
)


_NEVER = float("-inf")


def _unauthorized() -> WireError:
    return WireError(
        ErrorCode.UNAUTHORIZED, "join refused: missing or invalid token", Channel.ROOMS
    )


_GRACE_PASSED = " (resume grace passed)"

_MAX_ATTEMPTS = 1024
"""Cluster: times one room change is decided again because another change of the room
committed first. Optimistic, not locked: every conflict means another change went
through, so k changes racing on one room take at most k rounds — a burst of joins of a
full room, twice that with leaves; the bound only stops a change that could never go
through (then it fails: ``unavailable``)."""

_MAX_WAITING = 256
"""Cluster: frames one connection may have waiting for its room's change; more are
answered ``unavailable`` (a flood during a long store outage costs bounded memory)."""

_RETRY_AFTER = 1.0
"""Cluster: seconds before a room change that must happen is tried again."""
"""Cluster: times one room change is decided again because another node changed the
room first, before it fails (``unavailable``)."""

_Callback = Callable[[StoreResult, float], list[RelayAction]]

_Then = Callable[[float], list[RelayAction]]
"""What runs once a room change is decided (given ``now``)."""


@attrs.frozen
class _Change:
    """What a room transaction commits (see :class:`~.store.CommitRoom`)."""

    put: Members = attrs.field(factory=dict)
    delete: tuple[str, ...] = ()
    post: tuple[tuple[str, str], ...] = ()
    tell: tuple[tuple[str, str], ...] = ()


@attrs.define
class _Txn:
    """A room transaction in flight: ``decide`` (the room as read → the change, or
    ``None`` for no change) runs again on every conflict; then ``done`` (the commit's
    answer, or ``None`` when nothing was committed) or ``failed``."""

    room: str
    decide: Callable[[Members], _Change | None]
    done: Callable[[RoomCommitted | None], list[RelayAction]]
    failed: Callable[[str], list[RelayAction]]
    attempts: int = 0
    retry: bool = False
    """Tried again while the store cannot be reached (a change that must happen: a
    leave, a hold, its end), rather than ``failed``."""


_STORE_RESULTS = (
    RoomRead,
    RoomCommitted,
    Posted,
    Taken,
    DeadNodes,
    NodeClaimed,
    StoreFailed,
    MailNotice,
    NodeMessage,
    NodeLapsed,
)


def _digest(token: str) -> str:
    """What the store keeps of a resume token (a node can check one; nobody can use it)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _entry(type_: str, text: str) -> str:
    """A mailbox entry: the frame's type (for the counters), a newline, the frame."""
    return f"{type_}\n{text}"


def _check_fields(obj: dict[str, JSONValue], type_: str, limits: WireLimits) -> None:
    """Check a client frame's fields without acting on it."""
    if type_ == JoinRoom.TYPE:
        parse_join_room(obj, limits)
    elif type_ == LeaveRoom.TYPE:
        parse_leave_room(obj, limits)
    elif type_ == ChatMessage.TYPE:
        parse_chat(obj, limits)
    else:
        check_signal(obj, type_, limits)


_JSON_WHITESPACE = " \t\n\r"


def _sendable(text: str) -> bool:
    """Whether ``text`` can go out as it is (an ASCII text can: the caller tests that
    first, inline). A str holding a lone surrogate (no WebSocket text frame can carry
    one, but a caller of the machine may feed it) cannot be encoded as UTF-8; its
    stamped copy is encoded anew, with escapes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _not_open(conn: ConnId) -> LocalProtocolError:
    return LocalProtocolError(f"connection {conn} is not open (no Connected)")


def _wall_time(wall_time: float | None, needs: str) -> float:
    """The wall time of a frame that needs one, or ``LocalProtocolError`` (the adapter
    left ``FrameReceived.wall_time`` out)."""
    if wall_time is None:
        raise LocalProtocolError(
            f"{needs} needs the wall time: FrameReceived(..., wall_time=time.time())"
        )
    return wall_time


def _channel_hint(data: str | bytes) -> str:
    """The channel of a frame we refuse before parsing it (too large, rate-limited),
    when it has a known one: errors go on the bad frame's channel."""
    try:
        channel = decode_object(data).get("channel")
    except WireError:
        return Channel.SYSTEM.value
    return channel if isinstance(channel, str) and channel in CLIENT_TYPES else "system"


def _relayed(type_: str, channel: str, clients: int) -> Log:
    """The one INFO line of a relayed frame: the seed's two lines (``Relaying message
    type ...`` and ``Message relayed to N clients``) as one record."""
    return Log(
        level=LogLevel.INFO,
        message='Relaying message type "%s" on channel "%s". Message relayed to %d clients',
        args=(type_, channel, clients),
    )


# A signaling frame's line, built once per type: a relayed frame costs no log formatting
# unless the adapter emits the record.
_RELAYED_TO_ONE = {
    t: _relayed(t, Channel.SIGNALING.value, 1) for t in CLIENT_TYPES[Channel.SIGNALING.value]
}

_Handler = Callable[
    ["RelayMachine", _Conn, ConnId, dict[str, JSONValue], str, str, float, float | None],
    list[RelayAction],
]
"""``handler(machine, c, conn, obj, type_, text, now, wall_time)``: ``obj`` is the decoded
frame, ``text`` the frame as it came (a signal is relayed as that text, stamped)."""

_TRANSITIONS: dict[tuple[Phase, str], _Handler] = {
    (Phase.LOBBY, JoinRoom.TYPE): RelayMachine._on_join,
    (Phase.JOINED, JoinRoom.TYPE): RelayMachine._on_join,
    (Phase.JOINED, LeaveRoom.TYPE): RelayMachine._on_leave,
    (Phase.JOINED, Offer.TYPE): RelayMachine._on_signal,
    (Phase.JOINED, Answer.TYPE): RelayMachine._on_signal,
    (Phase.JOINED, Ice.TYPE): RelayMachine._on_signal,
    (Phase.JOINED, Renegotiate.TYPE): RelayMachine._on_signal,
    (Phase.JOINED, ChatMessage.TYPE): RelayMachine._on_chat,
}
"""``(phase, message type) → handler``. A missing pair is answered with ``not-in-room``
(every message except ``join-room`` needs a room); ``CLOSED`` connections never reach
the table."""


# --------------------------------------------------------------------------- the diagram
#
# Drawn from the table (:func:`diagram`): the phase each accepted frame leads to, the
# types a phase refuses because its pairs are missing from the table, and, around the
# table, the machine's own closes and the end of every connection (``Disconnected``, in
# any phase: one edge from ``ANY``). Frame types that lead to the same place share one
# edge, so the picture stays small however many types there are.

_LEADS_TO: dict[_Handler, Phase] = {
    RelayMachine._on_join: Phase.JOINED,
    RelayMachine._on_leave: Phase.LOBBY,
    RelayMachine._on_signal: Phase.JOINED,
    RelayMachine._on_chat: Phase.JOINED,
}
"""Where each handler of the table leaves the connection when it accepts the frame."""

NEXT_PHASE: dict[tuple[Phase, str], Phase] = {
    key: _LEADS_TO[handler] for key, handler in _TRANSITIONS.items() if handler in _LEADS_TO
}
"""``(phase, message type) → phase`` once the frame is accepted: the keys of the relay's
table and where their handlers lead (a test checks that every key is here, and that the
machine goes where this says). A refused frame (an error reply) keeps the phase, unless
the abuse rule closes the connection; a pair missing from the table is refused with
``not-in-room``. Read-only."""

_OPEN = (Phase.LOBBY, Phase.JOINED)

_CLOSES: tuple[tuple[int, str, tuple[Phase, ...]], ...] = (
    (CloseCode.GOING_AWAY, "idle", _OPEN),
    (CloseCode.POLICY, "abuse", _OPEN),
    (CloseCode.TOO_BIG, "too large", _OPEN),
    (CloseCode.REPLACED, "replaced", (Phase.JOINED,)),
    (CloseCode.SERVICE_RESTART, "node lapsed", (Phase.JOINED,)),
)
"""The machine's own closes, around the table: ``(close code, why, from phases)``. The
idle deadline, the abuse rule and the size check close any open connection; a resume
elsewhere closes the member's old connection if it is still open; in a cluster, a node
whose heartbeat lapsed closes its members so that they resume."""

_REFUSED_AT_CONNECT = (CloseCode.TRY_AGAIN_LATER, "address at its limit")
"""The close of a connection refused as it arrives (``Limits.max_per_address``)."""


def _frame_types(types: set[str]) -> str:
    """``types`` in the codec's order (rooms, signaling, chat), all the signaling types
    together written ``webrtc-*``."""
    names: list[str] = []
    for channel, allowed in CLIENT_TYPES.items():
        present = sorted(allowed & types)
        if channel == Channel.SIGNALING and present and len(present) == len(allowed):
            present = ["webrtc-*"]
        names += present
    return ", ".join(names)


def diagram() -> str:
    """The relay's phases as a Mermaid state diagram, drawn from :data:`NEXT_PHASE` (the
    table) and the machine's own closes. docs/architecture.md embeds it between
    ``<!-- diagram:relay:begin -->`` and ``<!-- diagram:relay:end -->``; ``python
    docs/update_diagram.py`` rewrites it, and a test fails when it is stale."""
    every_type = {type_ for types in CLIENT_TYPES.values() for type_ in types}
    accepted: dict[tuple[Phase, Phase], set[str]] = {}
    for (phase, type_), target in NEXT_PHASE.items():
        accepted.setdefault((phase, target), set()).add(type_)
    lines = [
        "stateDiagram-v2",
        "    direction LR",
        '    state "any phase" as ANY',
        f"    [*] --> {Phase.LOBBY.name}: Connected",
        f"    [*] --> {Phase.CLOSED.name}: Connected → {' '.join(map(str, _REFUSED_AT_CONNECT))}",
    ]
    for phase in _OPEN:
        for target in _OPEN:
            if (phase, target) in accepted:
                types = _frame_types(accepted[phase, target])
                lines.append(f"    {phase.name} --> {target.name}: {types}")
        refused = every_type - {type_ for (p, type_) in NEXT_PHASE if p is phase}
        if refused:
            types = _frame_types(refused)
            lines.append(f"    {phase.name} --> {phase.name}: {types} → not-in-room")
    for phase in _OPEN:
        closes = ", ".join(f"{code} {why}" for code, why, phases in _CLOSES if phase in phases)
        lines.append(f"    {phase.name} --> {Phase.CLOSED.name}: {closes}")
    lines.append("    ANY --> [*]: Disconnected")
    return "\n".join(lines)
