# mypy: no-strict-equality
# (machines change state inside method calls; strict equality would narrow across them)
"""ClientMachine as scripts: events in, actions out.

Server frames are made with the real codec (``encode`` of the wire messages, with
``roomId``/``fromUserId`` stamped as the server does) or come from a real relay machine
through :class:`Net`, which wires client machines to a ``RelayHarness`` and leaves the
peer-connection operations to the test. ``alice`` < ``bob`` < ``carol``: the lower id
offers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sansio_signal.actions import (
    ChatReceived,
    ClientAction,
    ClosePeer,
    ConnectToServer,
    CreateAnswer,
    CreateOffer,
    CreatePeer,
    DisconnectFromServer,
    JoinRefused,
    Log,
    LogLevel,
    PeerConnected,
    PeerConnecting,
    PeerJoined,
    PeerLeft,
    PeerRoute,
    ProtocolViolation,
    ReadSelectedPair,
    RoomJoined,
    RoomLeft,
    SendToServer,
    ServerErrorReceived,
    ServerUnreachable,
    SetRemoteDescription,
)
from sansio_signal.client import ClientMachine, ClientState
from sansio_signal.codes import ErrorCode
from sansio_signal.errors import LocalProtocolError
from sansio_signal.events import (
    CandidatePairSelected,
    ChatRequested,
    ClientEvent,
    CloseRequested,
    ConnectionStateChanged,
    ConnectRequested,
    IceCandidateGathered,
    IceGatheringDone,
    IceServerFailure,
    JoinRequested,
    LeaveRequested,
    LocalDescriptionCreated,
    NegotiationNeeded,
    OperationFailed,
    RemoteDescriptionApplied,
    RenegotiationRequested,
    ServerConnected,
    ServerConnectFailed,
    ServerDisconnected,
    ServerFrameReceived,
)
from sansio_signal.limits import Limits
from sansio_signal.negotiation import AIORTC, BROWSER, Capabilities, NegotiationConfig, NegState
from sansio_signal.testing import SimNetwork
from sansio_signal.testing.relay import RelayHarness
from sansio_signal.wire import (
    Answer,
    ChatMessage,
    Error,
    Ice,
    IceCandidate,
    JSONValue,
    Offer,
    Renegotiate,
    ServerMessage,
    SessionDescription,
    UserJoinedRoom,
    UserLeftRoom,
    dumps,
    encode,
)

ROOM = "demo"
CONFIG = NegotiationConfig(
    negotiation_timeout=10.0,
    connect_timeout=15.0,
    offer_wait=5.0,
    backoff_base=1.0,
    max_retries=2,
)
OFFER = SessionDescription(type="offer", sdp="offer-sdp")
ANSWER = SessionDescription(type="answer", sdp="answer-sdp")

# ----------------------------------------------------------------------- helpers


def machine(
    user_id: str,
    caps: Capabilities = AIORTC,
    trace: list[dict[str, JSONValue]] | None = None,
) -> ClientMachine:
    return ClientMachine(
        user_id,
        capabilities=caps,
        jitter=lambda: 0.0,
        config=CONFIG,
        trace=None if trace is None else trace.append,
    )


def server(message: ServerMessage) -> ServerFrameReceived:
    """A frame from the server, through the real codec."""
    return ServerFrameReceived(text=encode(message))


def joined(user_id: str, *existing: str, room_id: str = ROOM) -> ServerFrameReceived:
    return server(UserJoinedRoom(room_id=room_id, user_id=user_id, existing_participants=existing))


def left(user_id: str, room_id: str = ROOM) -> ServerFrameReceived:
    return server(UserLeftRoom(room_id=room_id, user_id=user_id))


def signal(
    kind: type[Offer | Answer | Ice | Renegotiate],
    sender: str,
    to: str,
    room_id: str = ROOM,
    **fields: Any,
) -> ServerFrameReceived:
    """A signaling frame as the server relays it (``fromUserId``/``roomId`` stamped)."""
    fields.setdefault("epoch", 0)
    return server(kind(to_user_id=to, fields=fields, from_user_id=sender, room_id=room_id))


def offer_from(sender: str, to: str, sdp: str = "their-offer", **extra: Any) -> Any:
    return signal(Offer, sender, to, offer={"type": "offer", "sdp": sdp}, **extra)


def answer_from(sender: str, to: str, sdp: str = "their-answer") -> Any:
    return signal(Answer, sender, to, answer={"type": "answer", "sdp": sdp})


def ops(actions: list[ClientAction]) -> list[ClientAction]:
    return [a for a in actions if not isinstance(a, Log)]


def frames(actions: list[ClientAction]) -> list[dict[str, Any]]:
    """Frames sent to the server, decoded; the per-pair session fields (``sid``,
    ``rsid``) of signaling frames are left out."""
    out = []
    for action in actions:
        if isinstance(action, SendToServer):
            frame = json.loads(action.text)
            frame.pop("sid", None)
            frame.pop("rsid", None)
            out.append(frame)
    return out


def in_room(user_id: str, *existing: str, caps: Capabilities = AIORTC) -> ClientMachine:
    """A machine connected at t=0 and joined at t=1 to a room holding ``existing``."""
    m = machine(user_id, caps)
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    m.handle(joined(user_id, *existing), 1.0)
    assert m.state is ClientState.JOINED
    return m


class Net:
    """Client machines wired to a real relay machine (frames flow both ways at once);
    peer-connection results are fed by the test."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.relay = RelayHarness(limits or Limits(rate_limit=0))
        self.machines: dict[str, ClientMachine] = {}
        self.conns: dict[str, int] = {}
        self.out: dict[str, list[ClientAction]] = {}

    def add(self, label: str, user_id: str | None = None, caps: Capabilities = AIORTC) -> None:
        self.machines[label] = machine(user_id or label, caps)
        self.out[label] = []
        self.conns[label] = self.relay.connect()
        self.run(label, ServerConnected())

    def run(self, label: str, event: ClientEvent) -> list[ClientAction]:
        """Feed ``label``'s machine; its frames go to the relay at once."""
        actions = self.machines[label].handle(event, self.relay.now)
        self.out[label] += actions
        for action in actions:
            if isinstance(action, SendToServer):
                self.relay.send(self.conns[label], action.text)
        return actions

    def deliver(self, label: str) -> list[ClientAction]:
        """Hand ``label`` every frame the relay sent it so far."""
        actions: list[ClientAction] = []
        for frame in self.relay.take(self.conns[label]):
            actions += self.run(label, ServerFrameReceived(text=dumps(frame)))
        return actions

    def join(self, label: str, room_id: str = ROOM) -> list[ClientAction]:
        self.run(label, JoinRequested(room_id=room_id))
        return self.deliver(label)

    def pc_of(self, label: str, peer_id: str) -> int:
        pc = self.machines[label].peers[peer_id].pc
        assert pc is not None
        return pc


# ----------------------------------------------------------------------- lobby and joining


def test_offline_then_connected_is_the_lobby() -> None:
    m = machine("alice")
    assert m.state is ClientState.OFFLINE
    assert m.handle(ServerConnected(), 0.0) == []
    assert m.state is ClientState.LOBBY
    assert m.next_deadline() is None


def test_join_sends_join_room() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    out = m.handle(JoinRequested(room_id=ROOM), 0.0)
    assert frames(out) == [
        {
            "channel": "webrtc-dashboard-rooms",
            "type": "join-room",
            "roomId": ROOM,
            "userId": "alice",
        }
    ]
    assert (m.state, m.room_id, m.room) == (ClientState.JOINING, ROOM, None)


def test_join_while_offline_waits_for_the_server() -> None:
    m = machine("alice")
    assert m.handle(JoinRequested(room_id=ROOM), 0.0) == []
    assert (m.state, m.room_id) == (ClientState.OFFLINE, ROOM)
    out = m.handle(ServerConnected(), 1.0)
    assert [f["type"] for f in frames(out)] == ["join-room"]
    assert m.state is ClientState.JOINING


def test_own_join_starts_a_negotiation_per_participant_with_the_right_role() -> None:
    m = machine("bob")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    out = m.handle(joined("bob", "alice", "carol"), 1.0)
    assert ops(out) == [
        RoomJoined(room_id=ROOM, participants=("alice", "carol")),
        PeerJoined(peer_id="alice"),  # alice < bob: alice offers, we wait
        PeerJoined(peer_id="carol"),  # bob < carol: we offer
        CreatePeer(peer_id="carol", pc=1, initiator=True),
        PeerConnecting(peer_id="carol", epoch=0),
        CreateOffer(peer_id="carol", pc=1, ice_restart=False),
    ]
    assert m.state is ClientState.JOINED
    assert m.room is not None and m.room.members == ("alice", "carol")
    assert not m.peers["alice"].is_initiator
    assert m.peers["carol"].is_initiator
    assert m.next_deadline() == 6.0  # alice's offer-wait comes before carol's 11.0


def test_a_newcomer_gets_a_negotiation() -> None:
    m = in_room("alice")
    out = m.handle(joined("bob", "alice"), 2.0)
    assert ops(out) == [
        PeerJoined(peer_id="bob"),
        CreatePeer(peer_id="bob", pc=1, initiator=True),
        PeerConnecting(peer_id="bob", epoch=0),
        CreateOffer(peer_id="bob", pc=1, ice_restart=False),
    ]
    assert m.room is not None and "bob" in m.room
    assert m.next_deadline() == 12.0


@pytest.mark.parametrize("first", ["low", "high"])
@pytest.mark.parametrize(("low", "high"), [("alice", "bob"), ("user_10", "user_9"), ("Z", "a")])
def test_initiator_rule_holds_from_both_sides(first: str, low: str, high: str) -> None:
    """Whoever joins first, the lower id offers: one side learns of the other from
    ``existingParticipants``, the other from a ``user-joined-room``."""
    net = Net()
    net.add(low)
    net.add(high)
    order = [low, high] if first == "low" else [high, low]
    net.join(order[0])
    net.join(order[1])  # the second joiner sees the first in existingParticipants
    net.deliver(order[0])  # the first sees the second as a newcomer
    for label in order:
        assert net.machines[label].state is ClientState.JOINED
    low_peer = net.machines[low].peers[high]
    high_peer = net.machines[high].peers[low]
    assert (low_peer.is_initiator, high_peer.is_initiator) == (True, False)
    offers = {
        label: [a for a in net.out[label] if isinstance(a, CreateOffer)] for label in (low, high)
    }
    assert offers == {low: [CreateOffer(peer_id=high, pc=1)], high: []}
    creates = [a for a in net.out[low] if isinstance(a, CreatePeer)]
    assert creates == [CreatePeer(peer_id=high, pc=1, initiator=True)]  # it opens "chat"
    assert high_peer.deadline_kind == "offer-wait"


def test_the_full_exchange_through_the_relay() -> None:
    """alice and bob negotiate through a real relay; the test plays both adapters."""
    net = Net()
    net.add("alice")
    net.add("bob")
    net.join("alice")
    net.join("bob")
    net.deliver("alice")
    a_pc = net.pc_of("alice", "bob")
    net.run("alice", LocalDescriptionCreated(pc=a_pc, description=OFFER))
    out = net.deliver("bob")
    b_pc = net.pc_of("bob", "alice")
    assert SetRemoteDescription(peer_id="alice", pc=b_pc, description=OFFER) in out
    assert net.run("bob", RemoteDescriptionApplied(pc=b_pc)) == [
        CreateAnswer(peer_id="alice", pc=b_pc)
    ]
    net.run("bob", LocalDescriptionCreated(pc=b_pc, description=ANSWER))
    out = net.deliver("alice")
    assert SetRemoteDescription(peer_id="bob", pc=a_pc, description=ANSWER) in out
    net.run("alice", RemoteDescriptionApplied(pc=a_pc))
    a_up = net.run("alice", ConnectionStateChanged(pc=a_pc, state="connected"))
    b_up = net.run("bob", ConnectionStateChanged(pc=b_pc, state="connected"))
    assert ops(a_up) == [
        ReadSelectedPair(peer_id="bob", pc=a_pc),
        PeerConnected(peer_id="bob", epoch=0),
    ]
    assert ops(b_up) == [
        ReadSelectedPair(peer_id="alice", pc=b_pc),
        PeerConnected(peer_id="alice", epoch=0),
    ]
    assert net.machines["alice"].peers["bob"].state is NegState.STABLE
    assert net.machines["alice"].next_deadline() is None
    assert net.machines["bob"].next_deadline() is None


@pytest.mark.parametrize("caps", [AIORTC, BROWSER])
def test_a_simulated_mesh_settles(caps: Capabilities) -> None:
    net = SimNetwork(seed=7, config=CONFIG)
    for user in ("carol", "alice", "bob"):
        net.add_client(user, caps)
        net.connect(user)
        net.join(user, ROOM)
    net.run()
    assert net.settled_problems() == []
    assert all(any(isinstance(n, PeerConnected) for n in c.notes) for c in net.clients.values())


# ----------------------------------------------------------------------- leaving


def test_user_left_room_closes_the_peer_and_forgets_it() -> None:
    m = in_room("alice", "bob")
    out = m.handle(left("bob"), 3.0)
    assert ops(out) == [ClosePeer(peer_id="bob", pc=1), PeerLeft(peer_id="bob")]
    assert m.peers == {}
    assert m.room is not None and m.room.members == ()
    assert m.next_deadline() is None
    assert m.state is ClientState.JOINED
    # a result of the closed connection arrives late: dropped
    late = m.handle(LocalDescriptionCreated(pc=1, description=OFFER), 4.0)
    assert ops(late) == []
    assert [a.text() for a in late if isinstance(a, Log)] == [
        "dropped LocalDescriptionCreated for closed connection 1"
    ]


def test_leave_requested_sends_leave_room_and_closes_everything() -> None:
    m = in_room("alice", "bob")
    out = m.handle(LeaveRequested(), 3.0)
    assert frames(out) == [
        {"channel": "webrtc-dashboard-rooms", "type": "leave-room", "roomId": ROOM}
    ]
    assert ops(out)[1:] == [
        ClosePeer(peer_id="bob", pc=1),
        PeerLeft(peer_id="bob"),
        RoomLeft(room_id=ROOM),
    ]
    assert (m.state, m.room_id, m.room, m.peers) == (ClientState.LOBBY, None, None, {})
    assert m.handle(LeaveRequested(), 4.0) == []  # nothing left to leave
    # frames of the old room still on their way are dropped
    stray = m.handle(offer_from("bob", "alice"), 5.0)
    assert ops(stray) == []


def test_leave_while_joining_makes_the_late_join_confirmation_moot() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    out = m.handle(LeaveRequested(), 0.1)
    assert [f["type"] for f in frames(out)] == ["leave-room"]
    assert m.state is ClientState.LOBBY
    late = m.handle(joined("alice", "bob"), 0.2)
    assert ops(late) == []
    assert (m.state, m.room, m.peers) == (ClientState.LOBBY, None, {})


def test_joining_another_room_leaves_the_first_once_the_server_confirms() -> None:
    m = in_room("alice", "bob")
    out = m.handle(JoinRequested(room_id="other"), 3.0)
    # Nothing is torn down yet: the server may still refuse the new room.
    assert not [a for a in out if isinstance(a, ClosePeer | PeerLeft | RoomLeft)]
    assert frames(out) == [
        {
            "channel": "webrtc-dashboard-rooms",
            "type": "join-room",
            "roomId": "other",
            "userId": "alice",
        }
    ]
    assert (m.state, m.room_id, list(m.peers)) == (ClientState.JOINING, "other", ["bob"])
    # Our own user-joined-room for the new room is the confirmation.
    out = m.handle(joined("alice", "carol", room_id="other"), 3.3)
    assert ops(out)[:3] == [
        ClosePeer(peer_id="bob", pc=1),
        PeerLeft(peer_id="bob"),
        RoomLeft(room_id=ROOM),
    ]
    assert RoomJoined(room_id="other", participants=("carol",)) in out
    assert (m.state, list(m.peers)) == (ClientState.JOINED, ["carol"])
    # Frames of the old room that were still on the way are dropped.
    assert ops(m.handle(left("bob"), 3.4)) == []


# ----------------------------------------------------------------------- chat


def test_chat_send_and_receive() -> None:
    m = in_room("alice", "bob")
    assert frames(m.handle(ChatRequested(text="hi"), 2.0)) == [
        {"channel": "webrtc-dashboard-chat", "type": "chat-message", "text": "hi"}
    ]
    relayed = ChatMessage(text="hello", room_id=ROOM, from_user_id="bob", ts=1764100000.5)
    assert m.handle(server(relayed), 2.1) == [
        ChatReceived(from_user_id="bob", text="hello", ts=1764100000.5)
    ]
    with pytest.raises(LocalProtocolError, match="limit"):
        m.handle(ChatRequested(text="x" * 4097), 2.2)


# ----------------------------------------------------------------------- server errors


def test_a_refused_join_returns_to_the_lobby() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    error = Error(channel="webrtc-dashboard-rooms", code=ErrorCode.USER_ID_TAKEN, message="taken")
    assert m.handle(server(error), 0.1) == [
        ServerErrorReceived(
            channel="webrtc-dashboard-rooms", code="user-id-taken", message="taken"
        ),
        JoinRefused(room_id=ROOM, code="user-id-taken", message="taken"),
    ]
    assert (m.state, m.room_id) == (ClientState.LOBBY, None)


def test_an_undecided_join_reconnects_and_joins_again() -> None:
    """``unavailable`` (a cluster's server cannot reach its store): not a refusal — the
    client reconnects with its back-off and joins again."""
    m = machine("alice")
    m.handle(ConnectRequested(), 0.0)
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    error = Error(channel="webrtc-dashboard-rooms", code=ErrorCode.UNAVAILABLE, message="down")
    out = m.handle(server(error), 0.1)
    assert out[0] == ServerErrorReceived(
        channel="webrtc-dashboard-rooms", code="unavailable", message="down"
    )
    assert out[-1] == DisconnectFromServer()
    assert not any(isinstance(a, JoinRefused) for a in out)
    m.handle(ServerDisconnected(close_code=1000), 0.2)
    deadline = m.next_deadline()
    assert deadline is not None and deadline > 0.2
    assert ConnectToServer() in m.handle_timer(deadline)
    again = m.handle(ServerConnected(), deadline + 0.1)
    joins = [a for a in again if isinstance(a, SendToServer) and '"join-room"' in a.text]
    assert len(joins) == 1 and m.room_id == ROOM


def test_a_taken_user_id_through_the_relay() -> None:
    net = Net()
    net.add("alice")
    net.add("alice-2", user_id="alice")
    net.join("alice")
    out = net.join("alice-2")
    assert [(a.channel, a.code) for a in out if isinstance(a, ServerErrorReceived)] == [
        ("webrtc-dashboard-rooms", "user-id-taken")
    ]
    assert net.machines["alice-2"].state is ClientState.LOBBY
    assert net.machines["alice"].state is ClientState.JOINED


def test_other_errors_are_reported_and_change_nothing() -> None:
    m = in_room("alice", "bob")
    error = Error(channel="webrtc-signaling", code=ErrorCode.PEER_NOT_FOUND, message="gone")
    assert m.handle(server(error), 2.0) == [
        ServerErrorReceived(channel="webrtc-signaling", code="peer-not-found", message="gone")
    ]
    assert (m.state, list(m.peers)) == (ClientState.JOINED, ["bob"])
    # a join-refusal code outside a join is only reported
    taken = Error(channel="webrtc-dashboard-rooms", code=ErrorCode.ROOM_FULL, message="full")
    m.handle(server(taken), 2.1)
    assert (m.state, m.room_id) == (ClientState.JOINED, ROOM)


def test_a_refused_join_from_inside_a_room_keeps_client_and_server_in_step() -> None:
    net = Net()
    net.add("alice")
    net.add("bob")
    net.add("other-alice", user_id="alice")
    net.join("alice")
    net.join("bob")
    net.deliver("alice")
    net.join("other-alice", room_id="other")
    out = net.join("alice", room_id="other")  # refused: user-id-taken
    assert any(isinstance(a, ServerErrorReceived) for a in out)
    in_old_room = "alice" in net.relay.machine.directory.members(ROOM)
    alice = net.machines["alice"]
    assert in_old_room == (alice.state is ClientState.JOINED and alice.room_id == ROOM)
    net.run("alice", LeaveRequested())
    assert "alice" not in net.relay.machine.directory.members(ROOM)


# ----------------------------------------------------------------------- nonsense from the server


def test_garbage_and_misdirected_frames_never_raise() -> None:
    m = in_room("alice", "bob")
    cases: list[tuple[str, ServerFrameReceived]] = [
        ("unreadable", ServerFrameReceived(text="not json")),
        ("unreadable", ServerFrameReceived(text="[1, 2]")),
        ("unreadable", ServerFrameReceived(text='{"channel": "nope", "type": "x"}')),
        (
            "unreadable",
            ServerFrameReceived(
                text=dumps(
                    {
                        "channel": "webrtc-dashboard-rooms",
                        "type": "join-room",
                        "roomId": ROOM,
                        "userId": "x",
                    }
                )
            ),
        ),
        (
            "unreadable",
            ServerFrameReceived(
                text=dumps(
                    {"channel": "system", "type": "error", "code": "no-such-code", "message": "?"}
                )
            ),
        ),
        ("dropped", offer_from("bob", "alice", room_id="elsewhere")),
        ("dropped", left("bob", room_id="elsewhere")),
        ("dropped", joined("mallory", room_id="elsewhere")),
        ("violation", offer_from("mallory", "alice")),  # not a member
        ("violation", left("mallory")),  # was never here
        ("violation", joined("bob", "alice")),  # joined twice
        ("violation", answer_from("bob", "alice")),  # an answer nobody asked for
        ("violation", offer_from("bob", "alice", epoch=5)),  # ahead of the initiator
    ]
    for expected, event in cases:
        out = m.handle(event, 2.0)
        if expected == "dropped":
            assert ops(out) == [], event
        else:
            assert len(out) == 1 and isinstance(out[0], ProtocolViolation), event
            if expected == "unreadable":
                assert out[0].peer_id is None
                assert "unreadable server frame" in out[0].detail
    assert (m.state, list(m.peers)) == (ClientState.JOINED, ["bob"])
    assert m.room is not None and m.room.members == ("bob",)
    assert m.peers["bob"].state is NegState.MAKING_OFFER


def test_a_violation_names_the_peer_the_state_and_the_input() -> None:
    m = in_room("bob", "alice")  # polite towards alice, waiting for her offer
    out = m.handle(answer_from("alice", "bob"), 2.0)
    assert len(out) == 1 and isinstance(out[0], ProtocolViolation)
    assert out[0].peer_id == "alice"
    assert "remote-answer" in out[0].detail and "idle" in out[0].detail
    out = m.handle(left("mallory"), 2.1)
    assert isinstance(out[0], ProtocolViolation) and out[0].peer_id == "mallory"


def test_frames_in_the_lobby_are_dropped() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    for event in (offer_from("bob", "alice"), left("bob"), joined("bob", "alice")):
        assert ops(m.handle(event, 1.0)) == []
    assert (m.state, m.peers) == (ClientState.LOBBY, {})


def test_an_own_join_listing_ourselves_is_a_violation() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    out = m.handle(joined("alice", "alice", "bob"), 1.0)
    assert [type(a) for a in out] == [ProtocolViolation]
    assert (m.state, m.peers) == (ClientState.JOINING, {})


# ----------------------------------------------------------------------- peer connections


def test_signals_reach_the_right_negotiation() -> None:
    m = in_room("bob", "alice", "carol")  # polite to alice, initiator to carol (pc 1)
    out = m.handle(offer_from("alice", "bob"), 2.0)
    assert ops(out) == [
        CreatePeer(peer_id="alice", pc=2, initiator=False),
        PeerConnecting(peer_id="alice", epoch=0),
        SetRemoteDescription(
            peer_id="alice", pc=2, description=SessionDescription(type="offer", sdp="their-offer")
        ),
    ]
    assert m.handle(RemoteDescriptionApplied(pc=2), 2.1) == [CreateAnswer(peer_id="alice", pc=2)]
    assert m.peers["carol"].state is NegState.MAKING_OFFER  # untouched
    out = m.handle(LocalDescriptionCreated(pc=1, description=OFFER), 2.2)
    assert [(f["type"], f["toUserId"]) for f in frames(out)] == [("webrtc-offer", "carol")]
    candidate = IceCandidate(candidate="candidate:1 1 udp 1 10.0.0.1 5000 typ host")
    out = m.handle(IceCandidateGathered(pc=1, candidate=candidate), 2.3)
    assert [(f["type"], f["toUserId"]) for f in frames(out)] == [("webrtc-ice", "carol")]


def test_results_for_a_replaced_connection_are_dropped() -> None:
    m = in_room("alice", "bob")
    m.handle(OperationFailed(pc=1, operation="CreateOffer", error="boom"), 2.0)
    assert m.peers["bob"].pc is None
    assert m.next_deadline() == 2.5  # back-off
    out = m.handle_timer(2.5)
    assert CreatePeer(peer_id="bob", pc=2, initiator=True) in out
    for event in (
        LocalDescriptionCreated(pc=1, description=OFFER),
        ConnectionStateChanged(pc=1, state="closed"),
        OperationFailed(pc=1, operation="CreateOffer", error="late"),
        RemoteDescriptionApplied(pc=99),  # never ours
    ):
        late = m.handle(event, 3.0)
        assert ops(late) == [], event
        assert [a.text() for a in late if isinstance(a, Log)] == [
            f"dropped {type(event).__name__} for closed connection {event.pc}"
        ]
    assert (m.peers["bob"].pc, m.peers["bob"].epoch, m.peers["bob"].attempts) == (2, 1, 1)


def test_what_ice_found_is_logged_and_the_pair_reported() -> None:
    """Gathering's findings change nothing but the log (and the trace, for diagnose);
    the selected pair becomes a PeerRoute whose kind is the farther end's; both are
    dropped for a replaced connection."""
    m = in_room("alice", "bob")
    failure = IceServerFailure(
        url="turn:10.0.0.1:3478", error="401 Unauthorized", code=401, username="17:alice"
    )
    gathered = m.handle(
        IceGatheringDone(
            pc=1,
            servers=("turn:10.0.0.1:3478",),
            candidate_types=("host",),
            failures=(failure,),
        ),
        1.0,
    )
    assert ops(gathered) == []
    assert [(a.level, a.text()) for a in gathered if isinstance(a, Log)] == [
        (LogLevel.INFO, "[bob] gathered host candidates (ICE servers: turn:10.0.0.1:3478)"),
        (
            LogLevel.WARNING,
            "[bob] ICE server turn:10.0.0.1:3478 gave no candidate: 401 Unauthorized",
        ),
    ]
    bare = m.handle(IceGatheringDone(pc=1), 1.0)
    assert [a.text() for a in bare if isinstance(a, Log)] == [
        "[bob] gathered no candidates (ICE servers: none)"
    ]
    for local, remote, kind in (
        ("host", "host", "host"),
        ("host", "prflx", "srflx"),
        ("srflx", "host", "srflx"),
        ("relay", "srflx", "relay"),
        ("host", "relay", "relay"),
    ):
        out = m.handle(
            CandidatePairSelected(
                pc=1,
                local_type=local,
                remote_type=remote,
                local_address="10.0.0.2:5000",
                remote_address="10.0.0.3:6000",
            ),
            2.0,
        )
        assert ops(out) == [
            PeerRoute(
                peer_id="bob",
                pair_type=kind,
                local_type=local,
                remote_type=remote,
                local_address="10.0.0.2:5000",
                remote_address="10.0.0.3:6000",
            )
        ]
        assert [a.text() for a in out if isinstance(a, Log)] == [
            f"[bob] connected over a {kind} pair (local {local} 10.0.0.2:5000, remote "
            f"{remote} 10.0.0.3:6000)"
        ]
    assert m.peers["bob"].state is NegState.MAKING_OFFER  # nothing else moved
    late = m.handle(CandidatePairSelected(pc=99, local_type="host", remote_type="host"), 3.0)
    assert ops(late) == []


def test_timers_drive_the_negotiations() -> None:
    m = in_room("bob", "alice")  # waiting for alice's offer until t=6
    assert m.next_deadline() == 6.0
    assert m.handle_timer(5.9) == []
    out = m.handle_timer(6.0)
    assert frames(out) == [
        {
            "channel": "webrtc-signaling",
            "type": "webrtc-renegotiate",
            "toUserId": "alice",
            "reason": "no-offer",
            "epoch": 0,
        }
    ]
    assert m.next_deadline() == 11.5


def test_renegotiation_requested_by_the_application() -> None:
    m = in_room("bob", "alice")
    m.handle(offer_from("alice", "bob"), 2.0)
    m.handle(RemoteDescriptionApplied(pc=1), 2.1)
    m.handle(LocalDescriptionCreated(pc=1, description=ANSWER), 2.2)
    out = m.handle(RenegotiationRequested(peer_id="alice"), 3.0)
    assert [(f["type"], f["reason"]) for f in frames(out)] == [
        ("webrtc-renegotiate", "renegotiate")
    ]


# ----------------------------------------------------------------------- the server connection


def test_server_disconnected_closes_every_peer_and_keeps_the_room() -> None:
    m = in_room("bob", "alice", "carol")
    m.handle(offer_from("alice", "bob"), 2.0)  # pc 2 for alice, pc 1 for carol
    out = m.handle(ServerDisconnected(), 3.0)
    assert ops(out) == [
        ClosePeer(peer_id="alice", pc=2),
        PeerLeft(peer_id="alice"),
        ClosePeer(peer_id="carol", pc=1),
        PeerLeft(peer_id="carol"),
        RoomLeft(room_id=ROOM),
    ]
    assert (m.state, m.room_id, m.room, m.peers) == (ClientState.OFFLINE, ROOM, None, {})
    assert m.next_deadline() is None
    assert ops(m.handle(RemoteDescriptionApplied(pc=2), 3.1)) == []  # late result: dropped
    out = m.handle(ServerConnected(), 4.0)
    assert frames(out) == [
        {"channel": "webrtc-dashboard-rooms", "type": "join-room", "roomId": ROOM, "userId": "bob"}
    ]
    assert m.state is ClientState.JOINING
    out = m.handle(joined("bob", "alice", "carol"), 4.1)
    assert CreatePeer(peer_id="carol", pc=3, initiator=True) in out  # handles never reused


def test_server_disconnected_in_the_lobby() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    assert m.handle(ServerDisconnected(), 1.0) == []
    assert (m.state, m.room_id) == (ClientState.OFFLINE, None)
    assert m.handle(ServerConnected(), 2.0) == []  # no room wanted: no join


# ----------------------------------------------------------------------- misuse


def test_misuse_raises_local_protocol_errors() -> None:
    offline = machine("alice")
    with pytest.raises(LocalProtocolError, match="offline"):
        offline.handle(joined("alice"), 0.0)
    with pytest.raises(LocalProtocolError, match="offline"):
        offline.handle(ServerDisconnected(), 0.0)
    with pytest.raises(LocalProtocolError, match="input chat is not allowed in state offline"):
        offline.handle(ChatRequested(text="hi"), 0.0)
    offline.handle(ServerConnected(), 0.0)
    with pytest.raises(LocalProtocolError, match="input connected is not allowed in state lobby"):
        offline.handle(ServerConnected(), 0.0)
    with pytest.raises(LocalProtocolError, match="input chat is not allowed in state lobby"):
        offline.handle(ChatRequested(text="hi"), 0.0)
    with pytest.raises(LocalProtocolError, match="room id"):
        offline.handle(JoinRequested(room_id="no spaces allowed"), 0.0)
    m = in_room("alice", "bob")
    with pytest.raises(LocalProtocolError, match="no peer 'zoe'"):
        m.handle(RenegotiationRequested(peer_id="zoe"), 2.0)
    # a result the current connection never had pending is the adapter's bug
    m.handle(LocalDescriptionCreated(pc=1, description=OFFER), 2.0)  # our offer: fine
    with pytest.raises(LocalProtocolError, match=r"local-description .*have-local-offer"):
        m.handle(LocalDescriptionCreated(pc=1, description=OFFER), 2.1)  # a second one
    with pytest.raises(LocalProtocolError, match="user id"):
        machine("not valid!")
    assert (m.state, list(m.peers)) == (ClientState.JOINED, ["bob"])


def test_a_spurious_remote_description_applied_is_a_local_error() -> None:
    m = in_room("alice", "bob")  # MAKING_OFFER on pc 1
    with pytest.raises(LocalProtocolError):
        m.handle(RemoteDescriptionApplied(pc=1), 2.0)


# ----------------------------------------------------------------------- trace


def test_trace_records_events_and_actions() -> None:
    records: list[dict[str, JSONValue]] = []
    m = machine("alice", trace=records)
    m.handle(ServerConnected(), 0.0)
    assert records == [{"t": 0.0, "dir": "in", "kind": "ServerConnected", "user": "alice"}]
    records.clear()
    m.handle(JoinRequested(room_id=ROOM), 0.5)
    assert [(r["dir"], r["kind"]) for r in records] == [
        ("in", "JoinRequested"),
        ("out", "SendToServer"),
        ("out", "Log"),  # Joining room: ...
    ]
    assert records[0]["room_id"] == ROOM
    m.handle(joined("alice", "bob"), 1.0)
    records.clear()
    m.handle(LocalDescriptionCreated(pc=1, description=OFFER), 2.0)
    event = records[0]
    assert {k: event[k] for k in ("t", "dir", "kind", "user", "pc")} == {
        "t": 2.0,
        "dir": "in",
        "kind": "LocalDescriptionCreated",
        "user": "alice",
        "pc": 1,
    }
    assert (event["peer"], event["epoch"], event["before"], event["after"]) == (
        "bob",
        0,
        "making-offer",
        "have-local-offer",
    )
    assert all(r["dir"] == "out" and r["t"] == 2.0 for r in records[1:])
    assert "SendToServer" in [r["kind"] for r in records[1:]]
    records.clear()
    m.handle_timer(11.0)  # the negotiation deadline
    fired = records[0]
    assert (fired["kind"], fired["peer"], fired["before"], fired["after"]) == (
        "TimerFired",
        "bob",
        "have-local-offer",
        "waiting",
    )
    closes = [r for r in records if r["kind"] == "ClosePeer"]
    assert closes == [
        {
            "t": 11.0,
            "dir": "out",
            "kind": "ClosePeer",
            "user": "alice",
            "peer_id": "bob",
            "pc": 1,
            "epoch": 0,
        }
    ]
    json.dumps(records)  # plain JSON all through


def test_trace_names_the_pair_of_an_incoming_signal() -> None:
    records: list[dict[str, JSONValue]] = []
    m = machine("bob", trace=records)
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    m.handle(joined("bob", "alice"), 1.0)
    records.clear()
    m.handle(offer_from("alice", "bob"), 2.0)
    event = records[0]
    assert event["kind"] == "ServerFrameReceived"
    assert (event.get("peer"), event.get("before"), event.get("after")) == (
        "alice",
        "idle",
        "applying-offer",
    )


def test_join_leave_join_adopts_only_the_answer_to_the_last_join() -> None:
    """Found by the stateful test: join, leave and join again before the server
    answered. The server answers both joins; the first answer's participant list is
    out of date (someone joined while we were out), so only the second counts."""
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.1)
    m.handle(LeaveRequested(), 0.2)
    m.handle(JoinRequested(room_id=ROOM), 0.3)
    assert m.state is ClientState.JOINING
    first = m.handle(joined("alice", "bob"), 0.4)  # the answer to the first join
    assert not [a for a in first if isinstance(a, RoomJoined | PeerJoined)]
    assert m.state is ClientState.JOINING
    second = m.handle(joined("alice", "bob", "carol"), 0.5)
    assert RoomJoined(room_id=ROOM, participants=("bob", "carol")) in second
    assert (m.state, sorted(m.peers)) == (ClientState.JOINED, ["bob", "carol"])


def test_a_refused_first_join_does_not_undo_a_later_one() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.1)
    m.handle(LeaveRequested(), 0.2)
    m.handle(JoinRequested(room_id=ROOM), 0.3)
    full = Error(channel="webrtc-dashboard-rooms", code=ErrorCode.ROOM_FULL, message="full")
    m.handle(server(full), 0.4)  # the first join was refused
    assert m.state is ClientState.JOINING
    m.handle(joined("alice", "bob"), 0.5)
    assert (m.state, list(m.peers)) == (ClientState.JOINED, ["bob"])


# ----------------------------------------------------------------------- the server connection


def test_the_machine_decides_when_to_connect_and_backs_off_with_jitter() -> None:
    """Attempts are the machine's: ConnectToServer, and after each failure in a row a
    doubled, jittered wait (jitter 0 here: half of base * 2^(n-1), at most half of max)."""
    m = machine("alice")
    assert m.handle(ConnectRequested(), 0.0) == [ConnectToServer()]
    assert m.handle(ConnectRequested(), 0.1) == []  # one attempt at a time
    waits = []
    now = 1.0
    for _ in range(6):
        m.handle(ServerConnectFailed(reason="refused"), now)
        deadline = m.next_deadline()
        assert deadline is not None
        waits.append(round(deadline - now, 6))
        now = deadline
        assert m.handle_timer(now) == [ConnectToServer()]
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]
    m.handle(ServerConnected(), now)
    assert m.next_deadline() is None and m.state is ClientState.LOBBY


def test_the_application_hears_a_server_never_reached_and_not_a_lost_one() -> None:
    """Each failed attempt before any connection opened is ``ServerUnreachable`` (the
    application may give up at once); once the server was reached, failed reconnects
    are the reconnect policy's business only."""
    m = machine("alice")
    m.handle(ConnectRequested(), 0.0)
    for now in (0.1, 0.5):
        out = m.handle(ServerConnectFailed(reason="refused"), now)
        assert [a for a in out if isinstance(a, ServerUnreachable)] == [
            ServerUnreachable(reason="refused")
        ]
        m.handle_timer(m.next_deadline() or now)
    m.handle(ServerConnected(), 1.0)
    m.handle(ServerDisconnected(close_code=None), 2.0)
    m.handle_timer(m.next_deadline() or 2.0)
    out = m.handle(ServerConnectFailed(reason="refused"), 3.0)
    assert not [a for a in out if isinstance(a, ServerUnreachable)]
    assert m.next_deadline() is not None  # still trying


def test_an_attempt_that_only_timed_out_is_tried_again_before_giving_up() -> None:
    """On a lossy link the first TCP or WebSocket handshake can time out: with another
    attempt due the server is not yet unreachable (the application's own deadline
    decides); a refusal still is, and so is a timeout with no attempt to follow."""
    m = machine("alice")
    m.handle(ConnectRequested(), 0.0)
    out = m.handle(ServerConnectFailed(reason="timed out", timed_out=True), 10.0)
    assert not [a for a in out if isinstance(a, ServerUnreachable)]
    assert m.next_deadline() is not None
    assert m.handle_timer(m.next_deadline() or 10.0) == [ConnectToServer()]
    out = m.handle(ServerConnectFailed(reason="refused"), 10.6)
    assert [a for a in out if isinstance(a, ServerUnreachable)] == [
        ServerUnreachable(reason="refused")
    ]
    once = ClientMachine("alice", capabilities=AIORTC, jitter=lambda: 0.0, reconnect=None)
    once.handle(ConnectRequested(), 0.0)
    out = once.handle(ServerConnectFailed(reason="timed out", timed_out=True), 10.0)
    assert [a for a in out if isinstance(a, ServerUnreachable)] == [
        ServerUnreachable(reason="timed out")
    ]


def test_a_lost_server_is_tried_again_soon_and_the_room_resumed() -> None:
    m = machine("alice")
    m.handle(ServerConnected(), 0.0)
    m.handle(JoinRequested(room_id=ROOM), 0.0)
    own = UserJoinedRoom(
        room_id=ROOM, user_id="alice", existing_participants=("bob",), resume_token="t1"
    )
    m.handle(server(own), 0.5)
    m.handle(ConnectRequested(), 1.0)  # connected already: it matters once it is lost
    out = m.handle(ServerDisconnected(close_code=None), 2.0)
    assert m.state is ClientState.RESUMING and not any(isinstance(a, ClosePeer) for a in out)
    assert m.handle_timer(2.125) == [ConnectToServer()]  # delay(1) with jitter 0
    out = m.handle(ServerConnected(), 2.2)
    assert m.state is ClientState.REJOINING
    join = [a.message for a in out if isinstance(a, SendToServer)]
    assert [type(j).__name__ for j in join] == ["JoinRoom"] and join[0].resume_token is not None


def test_without_a_policy_a_failed_attempt_is_not_retried() -> None:
    m = ClientMachine("alice", capabilities=AIORTC, jitter=lambda: 0.0, reconnect=None)
    assert m.handle(ConnectRequested(), 0.0) == [ConnectToServer()]
    m.handle(ServerConnectFailed(reason="refused"), 1.0)
    assert m.next_deadline() is None
    assert m.handle(ConnectRequested(), 2.0) == [ConnectToServer()]  # when asked again


def test_close_leaves_the_room_hangs_up_and_never_reconnects() -> None:
    m = in_room("alice", "bob")
    m.handle(ConnectRequested(), 1.0)
    out = m.handle(CloseRequested(), 2.0)
    kinds = [type(a).__name__ for a in out]
    assert kinds[0] == "SendToServer" and kinds[-1] == "DisconnectFromServer", kinds
    assert "ClosePeer" in kinds and "RoomLeft" in kinds
    assert m.state is ClientState.CLOSED and m.peers == {}
    assert m.handle(ServerDisconnected(close_code=1000), 2.1) == []
    assert m.next_deadline() is None
    assert m.handle(ServerConnected(), 2.2) == [DisconnectFromServer()]  # a late attempt
    assert m.handle(CloseRequested(), 2.3) == []  # closing twice is harmless
    with pytest.raises(LocalProtocolError, match="input connect is not allowed in state closed"):
        m.handle(ConnectRequested(), 3.0)
    offline = machine("bob")
    assert offline.handle(CloseRequested(), 0.0) == []  # nothing to leave, nothing to close


def test_negotiation_needed_before_the_first_exchange_is_the_first_offer_itself() -> None:
    """A browser fires ``negotiationneeded`` for the initiator's data channel, made
    before the first offer: nothing more to do then. After an exchange completed, it
    means the application changed what it sends: a new offer."""
    m = in_room("alice", "bob", caps=BROWSER)
    pc = m.peers["bob"].pc
    assert pc is not None
    assert m.handle(NegotiationNeeded(pc=pc), 1.1) == []
    m.handle(LocalDescriptionCreated(pc=pc, description=OFFER), 1.2)
    assert m.handle(NegotiationNeeded(pc=pc), 1.3) == []  # still the first exchange
    m.handle(answer_from("bob", "alice"), 1.4)
    m.handle(RemoteDescriptionApplied(pc=pc), 1.5)
    assert m.peers["bob"].state is NegState.STABLE
    out = m.handle(NegotiationNeeded(pc=pc), 1.6)
    assert [type(a) for a in out if not isinstance(a, Log)] == [CreateOffer]
