"""The client as a pure state machine: one per client, one room at a time.

Theory of operation
-------------------
A :class:`ClientMachine` sits between the application, the relay server and the
peer connections. It is fed :data:`~.events.ClientEvent` values with ``now`` and answers
with :data:`~.actions.ClientAction` values to run in order: frames for the server,
operations on peer connections, and notifications for the application.

Its own state (:class:`ClientState`) is about the server and the room, and the whole
machine is one table, :data:`TRANSITIONS`: for each ``(state, input)`` the handler and
the states it may lead to (every step is checked against it, and the diagram in
docs/architecture.md is drawn from it). A pair missing from the table is our caller's
error (:class:`~.errors.LocalProtocolError`): a frame while offline, chat outside a
room. Inputs are the events, with server frames sorted by what they mean (our own
``user-joined-room``, an error, a frame of the room, an unreadable one) and the timers
by what they end (the resume window, the wait for absent peers, a peer's deadline)::

    OFFLINE ──connected──▶ LOBBY ──join──▶ JOINING ──own join──▶ JOINED
       ▲                     ▲                │ refused             │ │
       └──disconnected───────┴────────────────┴────── leave ────────┘ │ dropped (resumable)
                                                                      ▼
                              JOINED ◀──own join── REJOINING ◀──connected── RESUMING

    and from anywhere, ``close`` ──▶ CLOSED (for good).

**Connecting** is decided here too: :class:`~.events.ConnectRequested` makes the machine
ask for a socket (:class:`~.actions.ConnectToServer`); after a lost connection, or an
attempt the adapter reports as :class:`~.events.ServerConnectFailed`, it asks again when
a deadline of its :class:`ReconnectPolicy` passes (jittered, doubling while attempts
keep failing); a failed attempt before any connection ever opened is also told to the
application (:class:`~.actions.ServerUnreachable`), which may give up at once.
:class:`~.events.CloseRequested` leaves the room and asks for
:class:`~.actions.DisconnectFromServer`. No adapter keeps a reconnect policy, nor decides
when the server counts as unreachable.

A join asked for while in a room keeps the current room (and its peers) until the
server confirms the new one with our own ``user-joined-room``; if the server refuses
it, we are still where we were, as the server says. The room it wants (``room_id`` of
the last :class:`~.events.JoinRequested`) survives a lost connection: when the server is
back, the machine joins again.

**Resume.** A lost server connection does not end the peer connections at once: the
server holds our place for its grace period (``serve --resume-grace``, 10 s by
default). For ``resume_window`` seconds after the loss the machine keeps the room and
every negotiation, holds back the frames they want to send, and, once connected
again, sends ``join-room`` with the ``resumeToken`` of our last ``user-joined-room``.
The server answers with a fresh ``user-joined-room`` and replays what we missed; the
machine reconciles the room with that answer: newcomers are added; members the answer
lacks are kept *absent* for the window (after a server restart the others come back
one by one, and their peer connections still work) and let go if they do not return;
replayed membership frames that repeat a change already made are skipped. Then it
sends what it held back and reports :class:`~.actions.RoomResumed`. The window bounds
the wait for a connection: with none by its end, the room is given up and the next
connection joins afresh; a resuming join already sent by then is answered (the relay
answers every join), and that answer decides — unless the connection is lost again
first, which gives the room up. After a close that removed
us (``ServerDisconnected.close_code`` 1007, 1008, ...) it joins afresh at once.

A resume the server no longer expected (its grace passed, or it restarted) is
answered like a fresh join, and the others start their pairs with us over; each
negotiation follows (see "Sessions" in :mod:`~.negotiation`).

Inside the room, :class:`~.room.RoomView` replays the membership frames, and each other
member gets a :class:`~.negotiation.PeerNegotiation`, created when the member appears
(in our join's ``existingParticipants`` or a later ``user-joined-room``) and closed
when it leaves. Signaling frames go to the sender's negotiation; results of peer
connection operations go to the negotiation that owns that connection handle, and are
dropped when the handle has been closed since (the adapter may finish an operation
after we replaced the connection).

Frames from the server that make no sense now (a frame for a room we are leaving, a
signal from a non-member, an answer nobody asked for) are dropped and reported as
:class:`~.actions.ProtocolViolation`; they never raise. Misuse by the caller (chat
outside a room, renegotiating with a stranger, frames while offline) raises
:class:`~.errors.LocalProtocolError`.

Deadlines of all negotiations live in one :class:`~.timers.Timers`; the adapter keeps a
single timer for :meth:`ClientMachine.next_deadline` and calls
:meth:`ClientMachine.handle_timer`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from enum import Enum
from typing import Any, NamedTuple

import attrs

from .actions import (
    ChatReceived,
    ClientAction,
    ConnectToServer,
    DisconnectFromServer,
    JoinRefused,
    Log,
    LogLevel,
    PeerJoined,
    PeerLeft,
    PeerRoute,
    ProtocolViolation,
    RoomJoined,
    RoomLeft,
    RoomResumed,
    SendToServer,
    ServerErrorReceived,
    ServerUnreachable,
)
from .errors import LocalProtocolError, RemoteProtocolError, WireError
from .events import (
    CandidatePairSelected,
    ChatRequested,
    ClientEvent,
    CloseRequested,
    ConnectionStateChanged,
    ConnectRequested,
    IceCandidateGathered,
    IceGatheringDone,
    JoinRequested,
    LeaveRequested,
    LocalDescriptionCreated,
    NegotiationNeeded,
    OperationFailed,
    PeerConnectionEvent,
    RemoteDescriptionApplied,
    RenegotiationRequested,
    ServerConnected,
    ServerConnectFailed,
    ServerDisconnected,
    ServerFrameReceived,
)
from .negotiation import Capabilities, NegotiationConfig, PeerNegotiation, pair_kind
from .room import DEFAULT_MAX_MEMBERS, RoomView
from .timers import Timers
from .trace import fields_of
from .wire import (
    DEFAULT_LIMITS,
    Channel,
    ChatMessage,
    CloseCode,
    Error,
    ErrorCode,
    JoinRoom,
    JSONValue,
    LeaveRoom,
    Limits,
    ServerMessage,
    UserJoinedRoom,
    UserLeftRoom,
    parse_server_frame,
)

TraceSink = Callable[[dict[str, JSONValue]], None]
"""Where a client machine writes its trace: one JSON object per record."""

OWN_HOLD_HORIZON = 60.0
"""For how long after losing the server while in a room a refusal of our id
(``user-id-taken``) may be the relay still holding our own place (its resume grace,
10 s by default, can outlast our ``resume_window`` on a slow link): then we reconnect and
join again rather than give up."""

_JOIN_REFUSALS = frozenset(
    {ErrorCode.USER_ID_TAKEN, ErrorCode.ROOM_FULL, ErrorCode.INVALID_ID, ErrorCode.UNAUTHORIZED}
)


class ClientState(Enum):
    """The client's standing with the relay server (see the module docstring)."""

    OFFLINE = "offline"
    """No server connection, no room held."""
    LOBBY = "lobby"
    """Connected, in no room."""
    JOINING = "joining"
    """Connected, a ``join-room`` on its way (a room we are in stays ours until the
    answer)."""
    JOINED = "joined"
    """In a room."""
    RESUMING = "resuming"
    """The server connection was lost while in a room: the room and its peers are kept
    for ``resume_window``, waiting for a connection."""
    REJOINING = "rejoining"
    """Connected again while resuming: the ``join-room`` with our ``resumeToken`` is on
    its way, and its answer decides even after the resume window."""
    CLOSED = "closed"
    """The application closed the client: no room, no connection, no reconnect."""


class ClientInput(Enum):
    """Everything that can happen to a client machine (the keys of :data:`TRANSITIONS`)."""

    CONNECT = "connect"
    """The application wants the server."""
    CONNECT_FAILED = "connect-failed"
    CLOSE = "close"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    JOIN = "join"
    LEAVE = "leave"
    CHAT = "chat"
    RENEGOTIATE = "renegotiate"
    PEER_CONNECTION = "peer-connection"
    """A result of a peer-connection operation."""
    OWN_JOIN = "own-join"
    """Our own ``user-joined-room``: the answer to a join."""
    SERVER_ERROR = "server-error"
    ROOM_FRAME = "room-frame"
    """Membership, chat or signaling (dropped when not for our room)."""
    UNREADABLE = "unreadable"
    """A server frame the codec refused."""
    RESUME_ENDED = "resume-ended"
    """The resume window passed."""
    ABSENT_ENDED = "absent-ended"
    """The wait for members missing after a rejoin passed."""
    RECONNECT_DUE = "reconnect-due"
    """The back-off before the next connection attempt passed."""
    PEER_DEADLINE = "peer-deadline"


class ClientTimer(Enum):
    """The machine's own deadlines (a peer's deadline is keyed by its id)."""

    RESUME = "resume"
    ABSENT = "absent"
    RECONNECT = "reconnect"


@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """When to try the server again: the first attempt after a loss waits
    ``delay(1)``, each failed attempt in a row doubles it up to ``maximum``; every
    delay is jittered into [0.5, 1] of itself so that the clients of a restarting server
    do not all come back at once."""

    base: float = 0.25
    maximum: float = 5.0

    def delay(self, attempt: int, jitter: float) -> float:
        """The wait before attempt number ``attempt`` (1-based); ``jitter`` in [0, 1)."""
        raw = min(self.maximum, self.base * 2.0 ** max(0, attempt - 1))
        return float(raw * (0.5 + jitter / 2))


DEFAULT_RECONNECT = ReconnectPolicy()
"""0.25 s after a loss, doubling to 5 s, jittered."""


_RESUMABLE_CLOSES = frozenset(
    {None, CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.SERVICE_RESTART}
)
"""Ends of the server connection after which our place may still be ours: a drop (no
close frame; 1006 is how libraries report it), a server going away or restarting."""


class ClientMachine:
    """All of one client's signaling decisions. See the module docstring.

    ``jitter`` returns floats in [0, 1) for retry back-off: pass ``random.random`` in an
    adapter, a seeded source in tests. ``trace``, when given, receives one record per
    event in and action out. ``resume_window`` is how long after losing the server the
    room and peers are kept for a resume (``0``: never; see the module docstring).
    """

    def __init__(
        self,
        user_id: str,
        *,
        capabilities: Capabilities,
        jitter: Callable[[], float],
        config: NegotiationConfig | None = None,
        limits: Limits = DEFAULT_LIMITS,
        trace: TraceSink | None = None,
        resume_window: float = 8.0,
        reconnect: ReconnectPolicy | None = DEFAULT_RECONNECT,
        max_peers: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        if not limits.valid_id(user_id):
            raise LocalProtocolError(f"user id {user_id!r} does not match {limits.id_pattern}")
        self.user_id = user_id
        self.capabilities = capabilities
        self.config = config if config is not None else NegotiationConfig()
        self.limits = limits
        self.state = ClientState.OFFLINE
        self.room_id: str | None = None
        """The room we want to be in (kept across reconnects)."""
        self.room: RoomView | None = None
        self.peers: dict[str, PeerNegotiation] = {}
        self._pcs: dict[int, str] = {}
        self._pc_ids = itertools.count(1)
        self._sessions: dict[str, int] = {}
        self._instance = f"{int(jitter() * 0xFFFFFFFF):08x}"
        self._touched: PeerNegotiation | None = None
        self._joins_in_flight = 0
        self._token: str | None = None
        self._jitter = jitter
        self._timers = Timers()
        self._trace = trace
        self.resume_window = resume_window
        self._resume_token: str | None = None
        """The token of our last ``user-joined-room`` (for the room in ``self.room``)."""
        self._lost_place: tuple[str, float] | None = None
        """(room, when) we lost the server while in that room, not leaving it: the relay
        may hold our place there for its resume grace."""
        self.max_peers = max_peers
        """The most other members we take in a room: a server that lists more is refused
        (a ``ProtocolViolation``), since each costs a peer connection."""
        self.reconnect = reconnect
        """The reconnect policy (``None``: the adapter connects only when asked, once)."""
        self._wants_server = False
        self._attempts = 0
        """Connection attempts since the last one that opened (the one in flight
        included)."""
        self._reached = False
        """A connection to the server has opened (until then a failed attempt is
        :class:`~.actions.ServerUnreachable`)."""
        self._held_out: list[SendToServer] = []
        self._reconciled_added: set[str] = set()
        self.absent: set[str] = set()
        """Peers kept after a rejoin although the server's list lacks them (yet)."""

    # ------------------------------------------------------------------ public API

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None``."""
        return self._timers.next_deadline()

    @property
    def resuming(self) -> bool:
        """Whether we hold a room for a resume (``RESUMING`` or ``REJOINING``)."""
        return self.state in (ClientState.RESUMING, ClientState.REJOINING)

    def handle_timer(self, now: float) -> list[ClientAction]:
        """Run every deadline that is due."""
        actions: list[ClientAction] = []
        for key in self._timers.pop_due(now):
            if key is ClientTimer.RESUME:
                actions += self._dispatch(ClientInput.RESUME_ENDED, now, None)
                continue
            if key is ClientTimer.ABSENT:
                actions += self._dispatch(ClientInput.ABSENT_ENDED, now, None)
                continue
            if key is ClientTimer.RECONNECT:
                actions += self._dispatch(ClientInput.RECONNECT_DUE, now, None)
                continue
            peer = self.peers.get(str(key))
            if peer is None:
                continue
            before = (peer.state.value, peer.epoch)
            out = self._dispatch(ClientInput.PEER_DEADLINE, now, peer)
            self._record(now, "in", "TimerFired", {}, peer, before)
            actions += out
        self._record_out(now, actions)
        return actions

    def handle(self, event: ClientEvent, now: float) -> list[ClientAction]:
        """Feed one event; returns the actions to run, in order."""
        if self._trace is None:
            return self._handle(event, now)
        states = {pid: (p.state.value, p.epoch) for pid, p in self.peers.items()}
        self._touched = None
        actions = self._handle(event, now)
        peer = self._touched
        before = None if peer is None else states.get(peer.peer_id)
        self._record(now, "in", type(event).__name__, fields_of(event), peer, before)
        self._record_out(now, actions)
        return actions

    # ------------------------------------------------------------------ dispatch

    def _handle(self, event: ClientEvent, now: float) -> list[ClientAction]:
        if isinstance(event, ServerFrameReceived):
            kind, payload = self._classify(event.text)
            return self._dispatch(kind, now, payload)
        event_input = _EVENT_INPUTS.get(type(event))
        if event_input is None:
            raise LocalProtocolError(f"ClientMachine cannot handle {type(event).__name__}")
        return self._dispatch(event_input, now, event)

    def _classify(self, text: str) -> tuple[ClientInput, Any]:
        """What a server frame means (the codec's verdict included)."""
        try:
            message = parse_server_frame(text, self.limits)
        except WireError as exc:
            return ClientInput.UNREADABLE, exc
        if isinstance(message, Error):
            return ClientInput.SERVER_ERROR, message
        if isinstance(message, UserJoinedRoom) and message.user_id == self.user_id:
            return ClientInput.OWN_JOIN, message
        return ClientInput.ROOM_FRAME, message

    def _dispatch(self, kind: ClientInput, now: float, payload: Any) -> list[ClientAction]:
        entry = TRANSITIONS.get((self.state, kind))
        if entry is None:
            raise LocalProtocolError(
                f"input {kind.value} is not allowed in state {self.state.value}"
            )
        before = self.state
        actions = entry.handler(self, now, payload)
        if self.state not in entry.next_states:
            raise LocalProtocolError(  # the table is wrong: a bug here, not a caller's
                f"{kind.value} in {before.value} led to {self.state.value}, which the "
                "transition table does not list"
            )
        return actions

    # ------------------------------------------------------------------ handlers

    def _want_server(self, now: float, _: ConnectRequested) -> list[ClientAction]:
        self._wants_server = True  # connected already: this matters when it is lost
        return []

    def _on_connect(self, now: float, _: ConnectRequested) -> list[ClientAction]:
        self._wants_server = True
        if self._attempts or self._timers.deadline_of(ClientTimer.RECONNECT) is not None:
            return []  # an attempt is on its way or due
        return self._attempt()

    def _attempt(self) -> list[ClientAction]:
        self._attempts += 1
        return [ConnectToServer()]

    def _on_reconnect_due(self, now: float, _: None) -> list[ClientAction]:
        return self._attempt()

    def _on_connect_failed(self, now: float, event: ServerConnectFailed) -> list[ClientAction]:
        """A server never reached is unreachable at its first failure (a refused
        connection, an HTTP error), unless the attempt only timed out and another is due."""
        retry = self._retry_later(now)
        never = (
            []
            if self._reached or (event.timed_out and retry)
            else [ServerUnreachable(reason=event.reason)]
        )
        return [
            Log(level=LogLevel.INFO, message="cannot reach the server: %s", args=(event.reason,)),
            *never,
            *retry,
        ]

    def _retry_later(self, now: float) -> list[ClientAction]:
        """Schedule the next attempt (the policy permitting)."""
        if self.reconnect is None or not self._wants_server:
            self._attempts = 0
            return []
        delay = self.reconnect.delay(self._attempts + 1, self._jitter())
        self._timers.schedule(ClientTimer.RECONNECT, now + delay)
        return [Log(level=LogLevel.INFO, message="reconnecting in %.2fs", args=(delay,))]

    def _on_close(self, now: float, _: CloseRequested) -> list[ClientAction]:
        online = self.state not in (ClientState.OFFLINE, ClientState.RESUMING)
        actions = self._on_leave(now, LeaveRequested())
        self._wants_server = False
        self._attempts = 0
        self._timers.cancel(ClientTimer.RECONNECT)
        self.state = ClientState.CLOSED
        return [*actions, DisconnectFromServer()] if online else actions

    def _ignore(self, now: float, _: object) -> list[ClientAction]:
        return []

    def _on_connected_after_close(self, now: float, _: ServerConnected) -> list[ClientAction]:
        return [DisconnectFromServer()]  # an attempt that was on its way when we closed

    def _on_connected(self, now: float, _: ServerConnected) -> list[ClientAction]:
        self._attempts = 0
        self._reached = True
        self._timers.cancel(ClientTimer.RECONNECT)
        if self.state is ClientState.RESUMING:
            return self._send_join()  # with our resume token
        self.state = ClientState.LOBBY
        return self._send_join() if self.room_id is not None else []

    def _on_disconnected(self, now: float, event: ServerDisconnected) -> list[ClientAction]:
        return self._lose_server(now, event) + self._retry_later(now)

    def _lose_server(self, now: float, event: ServerDisconnected) -> list[ClientAction]:
        self._joins_in_flight = 0  # their answers went with the connection
        if self.state is ClientState.REJOINING:  # lost again before the resume went through
            self.state = ClientState.RESUMING
            if self._timers.deadline_of(ClientTimer.RESUME) is None:  # and the window is over
                return self._on_resume_ended(now, None)
            return []
        resumable = (
            event.close_code in _RESUMABLE_CLOSES
            and self.state is ClientState.JOINED
            and self.room is not None
            and self.room.room_id == self.room_id
            and self._resume_token is not None
            and self.resume_window > 0
        )
        if resumable:
            assert self.room is not None
            self._lost_place = (self.room.room_id, now)
            self.state = ClientState.RESUMING
            self._timers.schedule(ClientTimer.RESUME, now + self.resume_window)
            return [
                Log(
                    level=LogLevel.INFO,
                    message="server connection lost; keeping room %s for %gs to resume",
                    args=(self.room_id, self.resume_window),
                )
            ]
        actions = self._leave_room(now)
        self.state = ClientState.OFFLINE
        return actions

    def _on_join(self, now: float, event: JoinRequested) -> list[ClientAction]:
        if not self.limits.valid_id(event.room_id):
            raise LocalProtocolError(
                f"room id {event.room_id!r} does not match {self.limits.id_pattern}"
            )
        # The current room (if any) stays ours until the server confirms the new one: a
        # refused join leaves us where we were, on the server too.
        self.room_id, self._token = event.room_id, event.token
        if self.state in (ClientState.OFFLINE, ClientState.RESUMING):
            return []
        return self._send_join()

    def _on_leave(self, now: float, _: LeaveRequested) -> list[ClientAction]:
        # A resume in progress ends here: its peers go. Offline, nobody needs telling
        # (the server's grace will end); with the resuming join on its way, the
        # leave-room below follows it.
        given_up = self._give_up_resume(now)
        target, self.room_id = self.room_id, None
        if self.state in (ClientState.OFFLINE, ClientState.LOBBY) or target is None:
            return given_up
        # While a join is pending we cannot know which room the server will have us
        # in, so we leave both; one of the two answers not-in-room, harmlessly.
        rooms = [target]
        if self.room is not None and self.room.room_id != target:
            rooms.insert(0, self.room.room_id)
        actions = self._leave_room(now)
        self.state = ClientState.LOBBY
        frames: list[ClientAction] = [
            SendToServer(message=LeaveRoom(room_id=room)) for room in rooms
        ]
        return given_up + frames + actions

    def _on_chat(self, now: float, event: ChatRequested) -> list[ClientAction]:
        if len(event.text) > self.limits.max_text_chars:
            raise LocalProtocolError(
                f"chat text is {len(event.text)} characters; the limit is "
                f"{self.limits.max_text_chars}"
            )
        return [SendToServer(message=ChatMessage(text=event.text))]

    def _on_renegotiate(self, now: float, event: RenegotiationRequested) -> list[ClientAction]:
        peer = self.peers.get(event.peer_id)
        if peer is None:
            raise LocalProtocolError(f"no peer {event.peer_id!r} in our room")
        return self._run(peer, peer.request_renegotiation(now))

    def _on_resume_ended(self, now: float, _: None) -> list[ClientAction]:
        note = Log(
            level=LogLevel.INFO,
            message="no server within %gs: room %s given up (the next join is fresh)",
            args=(self.resume_window, self.room_id),
        )
        return [note, *self._give_up_resume(now)]

    def _on_resume_ended_rejoining(self, now: float, _: None) -> list[ClientAction]:
        # The window bounds the wait for a connection; we have one, and the relay answers
        # every join: the answer to our resuming join decides (a resume, or a fresh join
        # when its grace has passed). Giving up now would leave the relay resuming a
        # place whose peers we had dropped.
        return [
            Log(
                level=LogLevel.INFO,
                message="resume window of %gs passed with our resuming join on its way: "
                "its answer decides",
                args=(self.resume_window,),
            )
        ]

    def _on_absent_ended(self, now: float, _: None) -> list[ClientAction]:
        actions: list[ClientAction] = []
        for peer_id in sorted(self.absent):
            actions += self._remove_peer(self.peers[peer_id], now)
        return actions

    def _on_peer_deadline(self, now: float, peer: PeerNegotiation) -> list[ClientAction]:
        return self._run(peer, peer.on_timer(now))

    def _on_unreadable(self, now: float, error: WireError) -> list[ClientAction]:
        detail = f"unreadable server frame: {error}"
        return [ProtocolViolation(peer_id=error.sender, detail=detail)]

    def _send_join(self) -> list[ClientAction]:
        assert self.room_id is not None
        self.state = ClientState.REJOINING if self.resuming else ClientState.JOINING
        self._joins_in_flight += 1
        same_room = self.room is not None and self.room.room_id == self.room_id
        resume = self._resume_token if self.resuming and same_room else None
        join = JoinRoom(
            room_id=self.room_id, user_id=self.user_id, token=self._token, resume_token=resume
        )
        joining = Log(
            level=LogLevel.INFO, message="Joining room: %s as %s", args=(self.room_id, self.user_id)
        )
        return [SendToServer(message=join), joining]

    def _hold_back(self, actions: list[ClientAction]) -> list[ClientAction]:
        """While resuming, frames for the server wait until the room is ours again (the
        new connection is in no room until then)."""
        if not self.resuming:
            return actions
        kept: list[ClientAction] = []
        for action in actions:
            if isinstance(action, SendToServer):
                self._held_out.append(action)
            else:
                kept.append(action)
        return kept

    def _drop_to_absent(self, actions: list[ClientAction]) -> list[ClientAction]:
        """Frames for absent peers could not be delivered (they are in no room)."""
        return [
            a
            for a in actions
            if not (
                isinstance(a, SendToServer) and a.peer_id is not None and a.peer_id in self.absent
            )
        ]

    def _give_up_resume(self, now: float) -> list[ClientAction]:
        """No resume after all: the room and its peers go (the next join is fresh)."""
        if not self.resuming:
            return []
        after = ClientState.OFFLINE if self.state is ClientState.RESUMING else ClientState.JOINING
        self._held_out = []
        self._timers.cancel(ClientTimer.RESUME)
        self._timers.cancel(ClientTimer.ABSENT)
        self.absent.clear()
        actions = self._leave_room(now)
        self.state = after
        return actions

    def _leave_room(self, now: float) -> list[ClientAction]:
        """Close every peer and forget the room view (the server has dropped us or
        will)."""
        actions: list[ClientAction] = []
        for peer in list(self.peers.values()):
            actions += self._remove_peer(peer, now)
        if self.room is not None:
            actions.append(RoomLeft(room_id=self.room.room_id))
            self.room = None
        if self.state is ClientState.JOINED:
            self.state = ClientState.LOBBY
        return actions

    # ------------------------------------------------------------------ peers

    def _run(self, peer: PeerNegotiation, actions: list[ClientAction]) -> list[ClientAction]:
        self._touched = peer
        actions = self._hold_back(actions)
        if self.absent:
            actions = self._drop_to_absent(actions)
        self._after_peer(peer, actions)
        return actions

    def _after_peer(self, peer: PeerNegotiation, actions: list[ClientAction]) -> None:
        """Keep the handle map and the timers in step with what ``peer`` just did."""
        if peer.pc is not None:
            self._pcs[peer.pc] = peer.peer_id
        for pc in [
            pc for pc, owner in self._pcs.items() if owner == peer.peer_id and pc != peer.pc
        ]:
            del self._pcs[pc]
        if peer.deadline is None:
            self._timers.cancel(peer.peer_id)
        elif self._timers.deadline_of(peer.peer_id) != peer.deadline:
            self._timers.schedule(peer.peer_id, peer.deadline)

    def _next_pc(self) -> int:
        return next(self._pc_ids)

    def _new_session(self, peer_id: str) -> str:
        """A name for a new incarnation of the pair with ``peer_id``: unique in this
        machine by the per-peer count, and across restarts of the process by the
        machine's random part."""
        count = self._sessions.get(peer_id, 0) + 1
        self._sessions[peer_id] = count
        return f"{self._instance}.{peer_id}.{count}"

    def _new_negotiation(self, peer_id: str) -> PeerNegotiation:
        peer = PeerNegotiation(
            our_id=self.user_id,
            peer_id=peer_id,
            capabilities=self.capabilities,
            config=self.config,
            new_pc=self._next_pc,
            jitter=self._jitter,
            session=self._new_session(peer_id),
        )
        self.peers[peer_id] = peer
        return peer

    def _add_peer(self, peer_id: str, now: float) -> list[ClientAction]:
        peer = self._new_negotiation(peer_id)
        return [PeerJoined(peer_id=peer_id), *self._run(peer, peer.start(now))]

    def _remove_peer(self, peer: PeerNegotiation, now: float) -> list[ClientAction]:
        if peer.peer_id in self.absent:
            self.absent.discard(peer.peer_id)
            if not self.absent:
                self._timers.cancel(ClientTimer.ABSENT)
        actions = self._run(peer, peer.close(now))  # a closed peer has no deadline left
        del self.peers[peer.peer_id]
        return [*actions, PeerLeft(peer_id=peer.peer_id)]

    def _on_pc_event(self, now: float, event: PeerConnectionEvent) -> list[ClientAction]:
        owner = self._pcs.get(event.pc)
        peer = None if owner is None else self.peers.get(owner)
        if peer is None or peer.pc != event.pc:
            return [
                Log(
                    level=LogLevel.DEBUG,
                    message="dropped %s for closed connection %d",
                    args=(type(event).__name__, event.pc),
                )
            ]
        if isinstance(event, IceGatheringDone):
            return self._on_gathered(peer.peer_id, event)
        if isinstance(event, CandidatePairSelected):
            return self._on_pair_selected(peer.peer_id, event)
        if isinstance(event, LocalDescriptionCreated):
            out = peer.on_local_description(event.description, now)
        elif isinstance(event, RemoteDescriptionApplied):
            out = peer.on_remote_applied(now)
        elif isinstance(event, IceCandidateGathered):
            out = peer.on_candidate_gathered(event.candidate, now)
        elif isinstance(event, ConnectionStateChanged):
            out = peer.on_connection_state(event.state, now)
        elif isinstance(event, NegotiationNeeded):
            out = peer.on_negotiation_needed(now)
        else:
            out = peer.on_operation_failed(event.operation, event.error, now)
        return self._run(peer, out)

    @staticmethod
    def _on_gathered(peer_id: str, event: IceGatheringDone) -> list[ClientAction]:
        """What gathering found, for the log and the trace (diagnose reads it): nothing
        here changes what the negotiation does."""
        actions: list[ClientAction] = [
            Log(
                level=LogLevel.INFO,
                message="[%s] gathered %s candidates (ICE servers: %s)",
                args=(
                    peer_id,
                    ", ".join(event.candidate_types) or "no",
                    ", ".join(event.servers) or "none",
                ),
            )
        ]
        for failure in event.failures:
            actions.append(
                Log(
                    level=LogLevel.WARNING,
                    message="[%s] ICE server %s gave no candidate: %s",
                    args=(peer_id, failure.url, failure.error),
                )
            )
        return actions

    @staticmethod
    def _on_pair_selected(peer_id: str, event: CandidatePairSelected) -> list[ClientAction]:
        kind = pair_kind(event.local_type, event.remote_type)
        return [
            Log(
                level=LogLevel.INFO,
                message="[%s] connected over a %s pair (local %s %s, remote %s %s)",
                args=(
                    peer_id,
                    kind,
                    event.local_type,
                    event.local_address,
                    event.remote_type,
                    event.remote_address,
                ),
            ),
            PeerRoute(
                peer_id=peer_id,
                pair_type=kind,
                local_type=event.local_type,
                remote_type=event.remote_type,
                local_address=event.local_address,
                remote_address=event.remote_address,
            ),
        ]

    # ------------------------------------------------------------------ server frames

    def _on_room_frame(self, now: float, message: ServerMessage) -> list[ClientAction]:
        # Everything but our own join and errors belongs to the room we are in; frames of
        # a room we already left (we asked for another while they were on the way) are
        # dropped quietly.
        assert not isinstance(message, Error)
        if self.room is None or message.room_id != self.room.room_id:
            return [
                Log(
                    level=LogLevel.DEBUG,
                    message="dropped %s: not for our room",
                    args=(message.TYPE,),
                )
            ]
        try:
            if isinstance(message, UserJoinedRoom | UserLeftRoom):
                return self._on_membership(message, now)
            if isinstance(message, ChatMessage):
                assert message.from_user_id is not None and message.ts is not None
                return [
                    ChatReceived(
                        from_user_id=message.from_user_id, text=message.text, ts=message.ts
                    )
                ]
            assert message.from_user_id is not None
            peer = self.peers.get(message.from_user_id)
            if peer is None:
                raise RemoteProtocolError(
                    f"{message.TYPE} from {message.from_user_id!r}, who is not in our room"
                )
            return self._run(peer, peer.on_signal(message, now))
        except RemoteProtocolError as exc:
            peer_id = getattr(message, "from_user_id", None) or getattr(message, "user_id", None)
            return [ProtocolViolation(peer_id=peer_id, detail=str(exc))]

    def _on_error(self, now: float, error: Error) -> list[ClientAction]:
        actions: list[ClientAction] = [
            ServerErrorReceived(channel=error.channel, code=error.code.value, message=error.message)
        ]
        refused = error.channel == Channel.ROOMS and error.code in _JOIN_REFUSALS
        if (
            error.channel == Channel.ROOMS
            and error.code == ErrorCode.UNAVAILABLE
            and self.state in (ClientState.JOINING, ClientState.REJOINING)
        ):
            # A server of a cluster cannot reach its shared store: our join was not
            # decided. Reconnect (with the usual back-off; behind a load balancer maybe
            # to another server) and join — or resume — again.
            actions.append(
                Log(
                    level=LogLevel.INFO,
                    message="the server cannot decide our join now (%s): reconnecting",
                    args=(error.message,),
                )
            )
            actions.append(DisconnectFromServer())
            return actions
        lost = self._lost_place
        if (
            error.channel == Channel.ROOMS
            and error.code == ErrorCode.USER_ID_TAKEN
            and self.state is ClientState.JOINING
            and self._joins_in_flight <= 1
            and lost is not None
            and lost[0] == self.room_id
            and now - lost[1] < OWN_HOLD_HORIZON
        ):
            # Our own place, still held: our resume window ended before the relay's
            # grace did. Reconnect (with back-off) and join again until it lets go.
            actions.append(
                Log(
                    level=LogLevel.INFO,
                    message="our place in room %s is still held (lost %.1fs ago): reconnecting",
                    args=(lost[0], now - lost[1]),
                )
            )
            actions.append(DisconnectFromServer())
            return actions
        if refused:
            self._joins_in_flight = max(0, self._joins_in_flight - 1)
        if refused and self.resuming and self._joins_in_flight == 0:
            actions += self._give_up_resume(now)  # our place is gone: so are its peers
        if refused and self.state is ClientState.JOINING and self._joins_in_flight == 0:
            # we stay where we were, as the server does
            assert self.room_id is not None
            actions.append(
                JoinRefused(room_id=self.room_id, code=error.code.value, message=error.message)
            )
            if self.room is not None:
                self.state, self.room_id = ClientState.JOINED, self.room.room_id
            else:
                self.state, self.room_id = ClientState.LOBBY, None
        return actions

    def _on_own_join(self, now: float, joined: UserJoinedRoom) -> list[ClientAction]:
        # The server answers every join-room we sent, in order; only the answer to the
        # last one describes the room as it is now (a join, leave, join sequence gets
        # two of them, and the first one's participants are out of date).
        self._joins_in_flight = max(0, self._joins_in_flight - 1)
        superseded = self._joins_in_flight > 0
        pending = self.state in (ClientState.JOINING, ClientState.REJOINING)
        if superseded or not pending or joined.room_id != self.room_id:
            return [
                Log(
                    level=LogLevel.DEBUG,
                    message="dropped our join of room %s: superseded",
                    args=(joined.room_id,),
                )
            ]
        try:
            room = RoomView(self.user_id, joined, self.max_peers)
        except RemoteProtocolError as exc:
            return [ProtocolViolation(peer_id=None, detail=str(exc))]
        self._resume_token = joined.resume_token
        self._lost_place = None
        if self.resuming and self.room is not None and self.room.room_id == joined.room_id:
            return self._on_resumed(room, now)
        actions = self._give_up_resume(now)
        actions += self._leave_room(now)  # the server has moved us out of the old room
        self.room = room
        self.state = ClientState.JOINED
        self._reconciled_added.clear()
        self.absent.clear()
        self._timers.cancel(ClientTimer.ABSENT)
        actions.append(RoomJoined(room_id=joined.room_id, participants=room.members))
        for peer_id in self.room.members:
            actions += self._add_peer(peer_id, now)
        return actions

    def _on_resumed(self, room: RoomView, now: float) -> list[ClientAction]:
        """We are in our room again, after a resume or — when the server had let us go
        or restarted — a fresh join (the two answers look the same). Reconcile the room
        with the server's list: newcomers are added; peers the list lacks are kept as
        *absent* for ``resume_window`` (after a server restart they come back one by one,
        and their established connections should survive); then send what the
        negotiations held back. A resume replays the membership frames we missed right
        after this; the first one that repeats a change made here is skipped."""
        self._timers.cancel(ClientTimer.RESUME)
        self.room, self.state = room, ClientState.JOINED
        now_members = set(room.members)
        actions: list[ClientAction] = []
        self._reconciled_added.clear()
        self.absent = {p for p in self.peers if p not in now_members}
        if self.absent:
            self._timers.schedule(ClientTimer.ABSENT, now + max(self.resume_window, 1.0))
        held, self._held_out = self._held_out, []
        actions += [a for a in held if a.peer_id is None or a.peer_id in now_members]
        actions.append(RoomResumed(room_id=room.room_id, participants=room.members))
        for peer_id in room.members:
            if peer_id not in self.peers:
                self._reconciled_added.add(peer_id)
                actions += self._add_peer(peer_id, now)
        return actions

    def _on_membership(
        self, frame: UserJoinedRoom | UserLeftRoom, now: float
    ) -> list[ClientAction]:
        assert self.room is not None
        user_id = frame.user_id
        # After a resume the server replays the membership frames we missed; the room was
        # already brought up to date from its list, so the first replayed frame for a
        # member we added (or removed) then is the same change again.
        if isinstance(frame, UserJoinedRoom) and user_id in self._reconciled_added:
            self._reconciled_added.discard(user_id)
            if user_id in self.room:
                return []
        if user_id in self.absent:
            if isinstance(frame, UserLeftRoom):  # it had left while we were away
                return self._remove_peer(self.peers[user_id], now)
            self.absent.discard(user_id)
            if not self.absent:
                self._timers.cancel(ClientTimer.ABSENT)
            self.room.apply(frame)  # back: its negotiation (and connection) carry on
            return [Log(level=LogLevel.INFO, message="%s is back in the room", args=(user_id,))]
        self._reconciled_added.discard(user_id)
        self.room.apply(frame)
        if isinstance(frame, UserJoinedRoom):
            return self._add_peer(user_id, now)
        return self._remove_peer(self.peers[user_id], now)

    # ------------------------------------------------------------------ trace

    def _record(
        self,
        now: float,
        direction: str,
        kind: str,
        fields: dict[str, Any],
        peer: PeerNegotiation | None,
        before: tuple[str, int] | None,
    ) -> None:
        if self._trace is None:
            return
        record: dict[str, JSONValue] = {
            "t": now,
            "dir": direction,
            "kind": kind,
            "user": self.user_id,
            **fields,
        }
        if peer is not None:
            record["peer"] = peer.peer_id
            record["epoch"] = peer.epoch
            record["after"] = peer.state.value
            if before is not None:
                record["before"] = before[0]
        self._trace(record)

    def _record_out(self, now: float, actions: list[ClientAction]) -> None:
        if self._trace is None:
            return
        for action in actions:
            record: dict[str, JSONValue] = {
                "t": now,
                "dir": "out",
                "kind": type(action).__name__,
                "user": self.user_id,
                **fields_of(action),
            }
            peer_id = record.get("peer_id")
            if isinstance(peer_id, str) and peer_id in self.peers:
                record["epoch"] = self.peers[peer_id].epoch
            self._trace(record)


# --------------------------------------------------------------------------- the table


class Transition(NamedTuple):
    """One entry of :data:`TRANSITIONS`: what runs, and where it may lead."""

    handler: Callable[[ClientMachine, float, Any], list[ClientAction]]
    next_states: frozenset[ClientState]


_EVENT_INPUTS: dict[type, ClientInput] = {
    ConnectRequested: ClientInput.CONNECT,
    ServerConnectFailed: ClientInput.CONNECT_FAILED,
    CloseRequested: ClientInput.CLOSE,
    ServerConnected: ClientInput.CONNECTED,
    ServerDisconnected: ClientInput.DISCONNECTED,
    JoinRequested: ClientInput.JOIN,
    LeaveRequested: ClientInput.LEAVE,
    ChatRequested: ClientInput.CHAT,
    RenegotiationRequested: ClientInput.RENEGOTIATE,
    LocalDescriptionCreated: ClientInput.PEER_CONNECTION,
    RemoteDescriptionApplied: ClientInput.PEER_CONNECTION,
    IceCandidateGathered: ClientInput.PEER_CONNECTION,
    ConnectionStateChanged: ClientInput.PEER_CONNECTION,
    NegotiationNeeded: ClientInput.PEER_CONNECTION,
    OperationFailed: ClientInput.PEER_CONNECTION,
    IceGatheringDone: ClientInput.PEER_CONNECTION,
    CandidatePairSelected: ClientInput.PEER_CONNECTION,
}

_S = ClientState
_I = ClientInput
_M = ClientMachine
_ONLINE = (_S.LOBBY, _S.JOINING, _S.JOINED, _S.REJOINING)
_FRAMES = (_I.OWN_JOIN, _I.SERVER_ERROR, _I.ROOM_FRAME, _I.UNREADABLE)


def _to(*states: ClientState) -> frozenset[ClientState]:
    return frozenset(states)


def _stays(
    kind: ClientInput,
    handler: Callable[[ClientMachine, float, Any], list[ClientAction]],
    states: tuple[ClientState, ...] = tuple(ClientState),
) -> dict[tuple[ClientState, ClientInput], Transition]:
    """Entries for an input that never changes the state, in each of ``states``."""
    return {(state, kind): Transition(handler, _to(state)) for state in states}


_OFFLINE = (_S.OFFLINE, _S.RESUMING)

TRANSITIONS: dict[tuple[ClientState, ClientInput], Transition] = {
    # the server connection: attempts, the reconnect policy, closing
    **_stays(_I.CONNECT, _M._on_connect, _OFFLINE),
    **_stays(_I.CONNECT, _M._want_server, _ONLINE),
    **_stays(_I.RECONNECT_DUE, _M._on_reconnect_due, _OFFLINE),
    **_stays(_I.CONNECT_FAILED, _M._on_connect_failed, _OFFLINE),
    **{
        (state, _I.CLOSE): Transition(_M._on_close, _to(_S.CLOSED))
        for state in (*_OFFLINE, *_ONLINE)
    },
    (_S.CLOSED, _I.CONNECTED): Transition(_M._on_connected_after_close, _to(_S.CLOSED)),
    **_stays(_I.DISCONNECTED, _M._ignore, (_S.CLOSED,)),
    **_stays(_I.CLOSE, _M._ignore, (_S.CLOSED,)),  # closing twice is harmless
    **_stays(_I.CONNECT_FAILED, _M._ignore, (_S.CLOSED,)),
    **{(_S.CLOSED, kind): Transition(_M._ignore, _to(_S.CLOSED)) for kind in _FRAMES},
    # connected, lost
    (_S.OFFLINE, _I.CONNECTED): Transition(_M._on_connected, _to(_S.LOBBY, _S.JOINING)),
    (_S.RESUMING, _I.CONNECTED): Transition(_M._on_connected, _to(_S.REJOINING)),
    (_S.LOBBY, _I.DISCONNECTED): Transition(_M._on_disconnected, _to(_S.OFFLINE)),
    (_S.JOINING, _I.DISCONNECTED): Transition(_M._on_disconnected, _to(_S.OFFLINE)),
    (_S.JOINED, _I.DISCONNECTED): Transition(_M._on_disconnected, _to(_S.OFFLINE, _S.RESUMING)),
    (_S.REJOINING, _I.DISCONNECTED): Transition(_M._on_disconnected, _to(_S.RESUMING, _S.OFFLINE)),
    (_S.RESUMING, _I.RESUME_ENDED): Transition(_M._on_resume_ended, _to(_S.OFFLINE)),
    (_S.REJOINING, _I.RESUME_ENDED): Transition(_M._on_resume_ended_rejoining, _to(_S.REJOINING)),
    # what the application asks for
    (_S.OFFLINE, _I.JOIN): Transition(_M._on_join, _to(_S.OFFLINE)),
    (_S.RESUMING, _I.JOIN): Transition(_M._on_join, _to(_S.RESUMING)),
    (_S.LOBBY, _I.JOIN): Transition(_M._on_join, _to(_S.JOINING)),
    (_S.JOINING, _I.JOIN): Transition(_M._on_join, _to(_S.JOINING)),
    (_S.JOINED, _I.JOIN): Transition(_M._on_join, _to(_S.JOINING)),
    (_S.REJOINING, _I.JOIN): Transition(_M._on_join, _to(_S.REJOINING)),
    (_S.OFFLINE, _I.LEAVE): Transition(_M._on_leave, _to(_S.OFFLINE)),
    (_S.RESUMING, _I.LEAVE): Transition(_M._on_leave, _to(_S.OFFLINE)),
    (_S.LOBBY, _I.LEAVE): Transition(_M._on_leave, _to(_S.LOBBY)),
    (_S.JOINING, _I.LEAVE): Transition(_M._on_leave, _to(_S.LOBBY)),
    (_S.JOINED, _I.LEAVE): Transition(_M._on_leave, _to(_S.LOBBY)),
    (_S.REJOINING, _I.LEAVE): Transition(_M._on_leave, _to(_S.LOBBY)),
    (_S.JOINED, _I.CHAT): Transition(_M._on_chat, _to(_S.JOINED)),
    **_stays(_I.RENEGOTIATE, _M._on_renegotiate),
    # the server's answers
    (_S.JOINING, _I.OWN_JOIN): Transition(_M._on_own_join, _to(_S.JOINING, _S.JOINED)),
    (_S.REJOINING, _I.OWN_JOIN): Transition(_M._on_own_join, _to(_S.REJOINING, _S.JOINED)),
    **_stays(_I.OWN_JOIN, _M._on_own_join, (_S.LOBBY, _S.JOINED)),  # not ours to take
    (_S.JOINING, _I.SERVER_ERROR): Transition(_M._on_error, _to(_S.JOINING, _S.LOBBY, _S.JOINED)),
    (_S.REJOINING, _I.SERVER_ERROR): Transition(_M._on_error, _to(_S.REJOINING, _S.LOBBY)),
    **_stays(_I.SERVER_ERROR, _M._on_error, (_S.LOBBY, _S.JOINED)),
    # the room, the peers and their deadlines
    **_stays(_I.ROOM_FRAME, _M._on_room_frame, _ONLINE),
    **_stays(_I.UNREADABLE, _M._on_unreadable, _ONLINE),
    **_stays(_I.PEER_CONNECTION, _M._on_pc_event),
    **_stays(_I.PEER_DEADLINE, _M._on_peer_deadline),
    **_stays(_I.ABSENT_ENDED, _M._on_absent_ended),
}
"""``(state, input) → Transition(handler, next states)``; a pair not listed is our
caller's error. Every step is checked against it, and :func:`diagram` draws it."""


def diagram() -> str:
    """The state changes of :data:`TRANSITIONS` as a Mermaid state diagram (inputs that
    never change the state are left out, and one that leads every other state to the
    same place is drawn once, from ``ANY``; docs/architecture.md embeds it)."""
    sources: dict[tuple[ClientInput, ClientState], set[ClientState]] = {}
    for (source, kind), entry in TRANSITIONS.items():
        for target in entry.next_states - {source}:
            sources.setdefault((kind, target), set()).add(source)
    edges: dict[tuple[str, str], list[str]] = {}
    for (kind, target), states in sources.items():
        if states == set(ClientState) - {target}:  # from everywhere: one edge
            edges.setdefault(("ANY", target.name), []).append(kind.value)
            continue
        for source in states:
            edges.setdefault((source.name, target.name), []).append(kind.value)
    lines = ["stateDiagram-v2", "    [*] --> OFFLINE"]
    for (source_name, target_name), kinds in sorted(edges.items()):
        lines.append(f"    {source_name} --> {target_name}: {', '.join(sorted(kinds))}")
    return "\n".join(lines)
