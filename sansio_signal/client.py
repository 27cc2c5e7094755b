"""The client as a pure state machine: one per client, one room at a time.

Theory of operation
-------------------
A :class:`ClientMachine` sits between the application, the relay server and the
peer connections. It is fed :data:`~.events.ClientEvent` values with ``now`` and answers
with :data:`~.actions.ClientAction` values to run in order: frames for the server,
operations on peer connections, and notifications for the application.

Its own state (:class:`ClientState`) is about the server::

    OFFLINE ──ServerConnected──▶ LOBBY ──join──▶ JOINING ──own user-joined-room──▶ JOINED
       ▲                           ▲                │ error (taken, full, ...)      │
       └──ServerDisconnected───────┴────────────────┴───────── leave ───────────────┘

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
sends what it held back and reports :class:`~.actions.RoomResumed`. Past the window,
the room is given up and the next connection joins afresh. After a close that removed
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
from typing import Any

from .actions import (
    ChatReceived,
    ClientAction,
    JoinRefused,
    Log,
    LogLevel,
    PeerJoined,
    PeerLeft,
    ProtocolViolation,
    RoomJoined,
    RoomLeft,
    RoomResumed,
    SendToServer,
    ServerErrorReceived,
)
from .errors import LocalProtocolError, RemoteProtocolError, WireError
from .events import (
    ChatRequested,
    ClientEvent,
    ConnectionStateChanged,
    IceCandidateGathered,
    JoinRequested,
    LeaveRequested,
    LocalDescriptionCreated,
    OperationFailed,
    PeerConnectionEvent,
    RemoteDescriptionApplied,
    RenegotiationRequested,
    ServerConnected,
    ServerDisconnected,
    ServerFrameReceived,
)
from .negotiation import Capabilities, NegotiationConfig, PeerNegotiation
from .room import RoomView
from .timers import Timers
from .trace import fields_of
from .wire import (
    DEFAULT_LIMITS,
    Answer,
    Channel,
    ChatMessage,
    CloseCode,
    Error,
    ErrorCode,
    Ice,
    JoinRoom,
    JSONValue,
    LeaveRoom,
    Limits,
    Offer,
    Renegotiate,
    UserJoinedRoom,
    UserLeftRoom,
    parse_server_frame,
)

TraceSink = Callable[[dict[str, JSONValue]], None]

_JOIN_REFUSALS = frozenset(
    {ErrorCode.USER_ID_TAKEN, ErrorCode.ROOM_FULL, ErrorCode.INVALID_ID, ErrorCode.UNAUTHORIZED}
)


class ClientState(Enum):
    """The client's standing with the relay server."""

    OFFLINE = "offline"
    LOBBY = "lobby"
    JOINING = "joining"
    JOINED = "joined"


_RESUME_KEY = " resume"
"""The timer key of the resume window (peer ids cannot contain a space)."""
_RESUMABLE_CLOSES = frozenset(
    {None, CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.SERVICE_RESTART}
)
"""Ends of the server connection after which our place may still be ours: a drop (no
close frame; 1006 is how libraries report it), a server going away or restarting."""
_ABSENT_KEY = " absent"
"""The timer key of the wait for absent peers after a rejoin."""


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
        self.resuming = False
        """The server connection was lost while in a room; we hope to take it back."""
        self._held_out: list[SendToServer] = []
        self._reconciled_added: set[str] = set()
        self.absent: set[str] = set()
        """Peers kept after a rejoin although the server's list lacks them (yet)."""

    # ------------------------------------------------------------------ public API

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None``."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> list[ClientAction]:
        """Run every peer deadline that is due."""
        actions: list[ClientAction] = []
        for key in self._timers.pop_due(now):
            if key == _RESUME_KEY:
                actions += self._give_up_resume(now)
                continue
            if key == _ABSENT_KEY:
                for peer_id in sorted(self.absent):
                    actions += self._remove_peer(self.peers[peer_id], now)
                continue
            peer = self.peers.get(str(key))
            if peer is None:
                continue
            before = (peer.state.value, peer.epoch)
            out = self._run(peer, peer.on_timer(now))
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
            if self.state is ClientState.OFFLINE:
                raise LocalProtocolError("a server frame while offline (no ServerConnected)")
            return self._on_frame(event.text, now)
        if isinstance(
            event,
            LocalDescriptionCreated
            | RemoteDescriptionApplied
            | IceCandidateGathered
            | ConnectionStateChanged
            | OperationFailed,
        ):
            return self._on_pc_event(event, now)
        if isinstance(event, ServerConnected):
            if self.state is not ClientState.OFFLINE:
                raise LocalProtocolError(f"ServerConnected in state {self.state.value}")
            self.state = ClientState.LOBBY
            return self._send_join() if self.room_id is not None else []
        if isinstance(event, ServerDisconnected):
            if self.state is ClientState.OFFLINE:
                raise LocalProtocolError("ServerDisconnected while offline")
            self._joins_in_flight = 0  # their answers went with the connection
            if self.resuming:  # lost again before the resume went through: keep trying
                self.state = ClientState.OFFLINE
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
                self.state, self.resuming = ClientState.OFFLINE, True
                self._timers.schedule(_RESUME_KEY, now + self.resume_window)
                return [
                    Log(
                        level=LogLevel.INFO,
                        message="server connection lost; keeping room %s for %gs to resume",
                        args=(self.room_id, self.resume_window),
                    )
                ]
            actions = self._give_up_resume(now) + self._leave_room(now)
            self.state = ClientState.OFFLINE
            return actions
        if isinstance(event, JoinRequested):
            if not self.limits.valid_id(event.room_id):
                raise LocalProtocolError(
                    f"room id {event.room_id!r} does not match {self.limits.id_pattern}"
                )
            # The current room (if any) stays ours until the server confirms the new
            # one: a refused join leaves us where we were, on the server too.
            self.room_id, self._token = event.room_id, event.token
            if self.state is ClientState.OFFLINE:
                return []
            return self._send_join()
        if isinstance(event, LeaveRequested):
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
        if isinstance(event, ChatRequested):
            if self.state is not ClientState.JOINED:
                raise LocalProtocolError(f"chat needs a room (state {self.state.value})")
            if len(event.text) > self.limits.max_text_chars:
                raise LocalProtocolError(
                    f"chat text is {len(event.text)} characters; the limit is "
                    f"{self.limits.max_text_chars}"
                )
            return [SendToServer(message=ChatMessage(text=event.text))]
        if isinstance(event, RenegotiationRequested):
            peer = self.peers.get(event.peer_id)
            if peer is None:
                raise LocalProtocolError(f"no peer {event.peer_id!r} in our room")
            return self._run(peer, peer.request_renegotiation(now))
        raise LocalProtocolError(f"ClientMachine cannot handle {type(event).__name__}")

    def _send_join(self) -> list[ClientAction]:
        assert self.room_id is not None
        self.state = ClientState.JOINING
        self._joins_in_flight += 1
        same_room = self.room is not None and self.room.room_id == self.room_id
        resume = self._resume_token if self.resuming and same_room else None
        join = JoinRoom(
            room_id=self.room_id, user_id=self.user_id, token=self._token, resume_token=resume
        )
        return [SendToServer(message=join)]

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
        self.resuming = False
        self._held_out = []
        self._timers.cancel(_RESUME_KEY)
        self._timers.cancel(_ABSENT_KEY)
        self.absent.clear()
        state = self.state
        actions = self._leave_room(now)
        self.state = state
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
                self._timers.cancel(_ABSENT_KEY)
        actions = self._run(peer, peer.close(now))  # a closed peer has no deadline left
        del self.peers[peer.peer_id]
        return [*actions, PeerLeft(peer_id=peer.peer_id)]

    def _on_pc_event(self, event: PeerConnectionEvent, now: float) -> list[ClientAction]:
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
        if isinstance(event, LocalDescriptionCreated):
            out = peer.on_local_description(event.description, now)
        elif isinstance(event, RemoteDescriptionApplied):
            out = peer.on_remote_applied(now)
        elif isinstance(event, IceCandidateGathered):
            out = peer.on_candidate_gathered(event.candidate, now)
        elif isinstance(event, ConnectionStateChanged):
            out = peer.on_connection_state(event.state, now)
        else:
            out = peer.on_operation_failed(event.operation, event.error, now)
        return self._run(peer, out)

    # ------------------------------------------------------------------ server frames

    def _on_frame(self, text: str, now: float) -> list[ClientAction]:
        try:
            message = parse_server_frame(text, self.limits)
        except WireError as exc:
            return [ProtocolViolation(peer_id=None, detail=f"unreadable server frame: {exc}")]
        if isinstance(message, Error):
            return self._on_error(message, now)
        if isinstance(message, UserJoinedRoom) and message.user_id == self.user_id:
            return self._on_own_join(message, now)
        # Everything else belongs to the room we are in; frames of a room we already
        # left (we asked for another while they were on the way) are dropped quietly.
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
            assert isinstance(message, Offer | Answer | Ice | Renegotiate)
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

    def _on_error(self, error: Error, now: float) -> list[ClientAction]:
        actions: list[ClientAction] = [
            ServerErrorReceived(channel=error.channel, code=error.code.value, message=error.message)
        ]
        refused = error.channel == Channel.ROOMS and error.code in _JOIN_REFUSALS
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

    def _on_own_join(self, joined: UserJoinedRoom, now: float) -> list[ClientAction]:
        # The server answers every join-room we sent, in order; only the answer to the
        # last one describes the room as it is now (a join, leave, join sequence gets
        # two of them, and the first one's participants are out of date).
        self._joins_in_flight = max(0, self._joins_in_flight - 1)
        superseded = self._joins_in_flight > 0
        if superseded or self.state is not ClientState.JOINING or joined.room_id != self.room_id:
            return [
                Log(
                    level=LogLevel.DEBUG,
                    message="dropped our join of room %s: superseded",
                    args=(joined.room_id,),
                )
            ]
        try:
            room = RoomView(self.user_id, joined)
        except RemoteProtocolError as exc:
            return [ProtocolViolation(peer_id=None, detail=str(exc))]
        self._resume_token = joined.resume_token
        if self.resuming and self.room is not None and self.room.room_id == joined.room_id:
            return self._on_resumed(room, now)
        actions = self._give_up_resume(now)
        actions += self._leave_room(now)  # the server has moved us out of the old room
        self.room = room
        self.state = ClientState.JOINED
        self._reconciled_added.clear()
        self.absent.clear()
        self._timers.cancel(_ABSENT_KEY)
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
        self.resuming = False
        self._timers.cancel(_RESUME_KEY)
        self.room, self.state = room, ClientState.JOINED
        now_members = set(room.members)
        actions: list[ClientAction] = []
        self._reconciled_added.clear()
        self.absent = {p for p in self.peers if p not in now_members}
        if self.absent:
            self._timers.schedule(_ABSENT_KEY, now + max(self.resume_window, 1.0))
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
                self._timers.cancel(_ABSENT_KEY)
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
