"""The client machine's trust boundary: whatever a room member or the server puts in any
field of any frame, ``ClientMachine.handle`` reports it (a ``ProtocolViolation`` or a
dropped frame) and never raises; the other members' pairs carry on.

We are ``alice``, the lower id, so we offer to ``bob`` (who sends the junk) and to
``carol`` (whose pair must keep working afterwards).
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
import pytest
from conformance import key_paths
from hypothesis import HealthCheck, given, settings

from sansio_signal.actions import (
    ClientAction,
    ClosePeer,
    CreateOffer,
    CreatePeer,
    Log,
    ProtocolViolation,
    SendToServer,
    SetRemoteDescription,
)
from sansio_signal.client import ClientMachine
from sansio_signal.errors import WireError
from sansio_signal.events import (
    JoinRequested,
    LocalDescriptionCreated,
    OperationFailed,
    ServerConnected,
    ServerFrameReceived,
)
from sansio_signal.negotiation import BROWSER, NegotiationConfig, PeerNegotiation
from sansio_signal.wire import (
    MAX_SAFE_INTEGER,
    JSONValue,
    Offer,
    PairFields,
    SessionDescription,
    parse_server_frame,
    read_pair_fields,
    wire_int,
)

ROOM = "demo"
OFFER_SDP = SessionDescription(type="offer", sdp="v=0 offer")


def _signal(type_: str, **fields: JSONValue) -> dict[str, JSONValue]:
    return {
        "channel": "webrtc-signaling",
        "type": type_,
        "toUserId": "alice",
        "fromUserId": "bob",
        "roomId": ROOM,
        "epoch": 0,
        "sid": "bob-session",
        **fields,
    }


TEMPLATES: dict[str, dict[str, JSONValue]] = {
    "offer": _signal(
        "webrtc-offer", offer={"type": "offer", "sdp": "v=0"}, caps=["rollback"], seq=1
    ),
    "answer": _signal("webrtc-answer", answer={"type": "answer", "sdp": "v=0"}, caps=[]),
    "ice": _signal(
        "webrtc-ice",
        candidate={"candidate": "candidate:1 1 UDP 1 127.0.0.1 9 typ host", "sdpMid": "0"},
    ),
    "renegotiate": _signal("webrtc-renegotiate", reason="failed"),
    "joined": {
        "channel": "webrtc-dashboard-rooms",
        "type": "user-joined-room",
        "roomId": ROOM,
        "userId": "dave",
        "existingParticipants": [],
    },
    "own-join": {
        "channel": "webrtc-dashboard-rooms",
        "type": "user-joined-room",
        "roomId": ROOM,
        "userId": "alice",
        "existingParticipants": ["bob", "carol"],
        "resumeToken": "t",
    },
    "left": {
        "channel": "webrtc-dashboard-rooms",
        "type": "user-left-room",
        "roomId": ROOM,
        "userId": "bob",
    },
    "chat": {
        "channel": "webrtc-dashboard-chat",
        "type": "chat-message",
        "roomId": ROOM,
        "fromUserId": "bob",
        "text": "hi",
        "ts": 1.5,
    },
    "error": {"channel": "webrtc-dashboard-rooms", "type": "error", "code": "room-full"},
}

json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, 1.0, 2.0, -1, 0.5, MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1])
    | st.text(max_size=12)
    | st.sampled_from(["rollback", "ice-restart", "trickle", "offer", "answer", "bob", ""]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _replace(frame: dict[str, JSONValue], path: tuple[str, ...], junk: Any) -> None:
    target: Any = frame
    for key in path[:-1]:
        target = target[key]
    if junk is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = junk


_DELETE = object()


def _joined_machine() -> tuple[ClientMachine, dict[str, int]]:
    """``alice`` in a room with ``bob`` and ``carol``; an offer to carol is out."""
    client = ClientMachine("alice", capabilities=BROWSER, jitter=lambda: 0.25)
    client.handle(ServerConnected(), 0.0)
    client.handle(JoinRequested(room_id=ROOM), 0.0)
    own = json.dumps(TEMPLATES["own-join"])
    actions = client.handle(ServerFrameReceived(text=own), 0.0)
    pcs = {a.peer_id: a.pc for a in actions if isinstance(a, CreatePeer)}
    assert sorted(pcs) == ["bob", "carol"]
    assert [a.peer_id for a in actions if isinstance(a, CreateOffer)] == ["bob", "carol"]
    out = client.handle(LocalDescriptionCreated(pc=pcs["carol"], description=OFFER_SDP), 0.1)
    sent = [json.loads(a.text) for a in out if isinstance(a, SendToServer)]
    assert [f["type"] for f in sent] == ["webrtc-offer"]
    return client, pcs


def _carol_still_works(client: ClientMachine, pcs: dict[str, int]) -> None:
    peer = client.peers.get("carol")
    assert peer is not None, "carol's pair is gone"
    answer = {
        "channel": "webrtc-signaling",
        "type": "webrtc-answer",
        "toUserId": "alice",
        "fromUserId": "carol",
        "roomId": ROOM,
        "answer": {"type": "answer", "sdp": "v=0 answer"},
        "epoch": peer.epoch,
        "sid": "carol-session",
        "rsid": peer.session,
        "caps": ["rollback", "ice-restart", "trickle"],
    }
    out = client.handle(ServerFrameReceived(text=json.dumps(answer)), 1.0)
    applied = [a for a in out if isinstance(a, SetRemoteDescription)]
    assert [(a.peer_id, a.pc) for a in applied] == [("carol", pcs["carol"])], out


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_junk_in_any_field_never_escapes_and_spares_other_peers(data: st.DataObject) -> None:
    client, pcs = _joined_machine()
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        name = data.draw(st.sampled_from(sorted(TEMPLATES)))
        frame = json.loads(json.dumps(TEMPLATES[name]))
        path = data.draw(st.sampled_from(key_paths(frame)))
        junk = data.draw(st.just(_DELETE) | json_values)
        _replace(frame, path, junk)
        client.handle(ServerFrameReceived(text=json.dumps(frame)), 0.5)  # must not raise
    _carol_still_works(client, pcs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("caps", [[]]),
        ("caps", [{}]),
        ("caps", "rollback"),
        ("caps", {"rollback": True}),
        ("epoch", -1),
        ("epoch", 0.5),
        ("epoch", "1"),
        ("epoch", True),
        ("epoch", MAX_SAFE_INTEGER + 1),
        ("seq", "x"),
        ("seq", -3),
        ("sid", 7),
        ("rsid", ["a"]),
        ("reason", {}),
    ],
)
def test_a_malformed_pair_field_is_a_violation_for_that_frame(field: str, value: Any) -> None:
    client, pcs = _joined_machine()
    frame = json.loads(json.dumps(TEMPLATES["offer"]))
    frame[field] = value
    out = client.handle(ServerFrameReceived(text=json.dumps(frame)), 0.5)
    assert len(out) == 1 and isinstance(out[0], ProtocolViolation), out
    assert field in out[0].detail
    assert out[0].peer_id == "bob"  # the relay's stamp says who sent it
    _carol_still_works(client, pcs)


def test_caps_nested_ten_thousand_deep_is_a_violation() -> None:
    client, pcs = _joined_machine()
    text = json.dumps(TEMPLATES["offer"])[:-1] + ', "caps2": ' + "[" * 10_000 + "]" * 10_000 + "}"
    text = text.replace('"caps2"', '"caps"').replace('"caps": ["rollback"], ', "")
    out: list[ClientAction] = client.handle(ServerFrameReceived(text=text), 0.5)
    assert [type(a) for a in out] == [ProtocolViolation]
    _carol_still_works(client, pcs)


def test_integral_numbers_are_integers_whatever_their_spelling() -> None:
    """``1.0`` is 1: a JavaScript peer cannot tell them apart, so neither do we."""
    assert wire_int(1.0) == 1 and wire_int(2) == 2 and wire_int(0.0) == 0
    bad_values: list[JSONValue] = [True, False, -1, 0.5, "1", None, [], 2**53, float(2**60)]
    for bad in bad_values:
        assert wire_int(bad) is None, bad
    assert read_pair_fields({"epoch": 1.0, "seq": 2.0}) == PairFields(
        epoch=1, epoch_given=True, seq=2
    )
    assert read_pair_fields({"epoch": None}) == PairFields()  # null counts as absent
    assert read_pair_fields({}) == PairFields()
    assert read_pair_fields({"rsid": None, "caps": ["x", "rollback"]}) == PairFields(
        caps=("x", "rollback")
    )
    with pytest.raises(WireError):
        read_pair_fields({"caps": [1]})


def test_an_offer_at_epoch_one_point_oh_is_epoch_one() -> None:
    """The polite side follows an initiator whose offer says ``"epoch": 1.0``."""
    pcs = iter(range(1, 100))
    neg = PeerNegotiation(
        our_id="bob",
        peer_id="alice",
        capabilities=BROWSER,
        config=NegotiationConfig(),
        new_pc=lambda: next(pcs),
        jitter=lambda: 0.0,
        session="bob.alice.1",
    )
    neg.start(0.0)
    frame = json.loads(json.dumps(TEMPLATES["offer"]))
    frame.update(fromUserId="alice", toUserId="bob", epoch=1.0)
    message = parse_server_frame(json.dumps(frame))
    assert isinstance(message, Offer)
    neg.on_signal(message, 0.1)
    assert neg.epoch == 1


def test_a_candidate_the_connection_refuses_loses_only_itself() -> None:
    """``OperationFailed`` for ``AddIceCandidate`` (a peer's malformed line, an mDNS name
    that does not resolve) is logged; the pair does not count a failed attempt."""
    client, pcs = _joined_machine()
    peer = client.peers["carol"]
    out = client.handle(
        OperationFailed(pc=pcs["carol"], operation="AddIceCandidate", error="bad line"), 0.2
    )
    assert all(isinstance(a, Log) for a in out), out
    assert peer.attempts == 0 and peer.pc == pcs["carol"]
    out = client.handle(
        OperationFailed(pc=pcs["carol"], operation="SetRemoteDescription", error="bad"), 0.3
    )
    assert any(isinstance(a, ClosePeer) for a in out) and peer.attempts == 1


@pytest.mark.parametrize(
    "text",
    [
        # nested past MAX_FRAME_DEPTH in a field nobody reads
        '{"channel":"webrtc-dashboard-chat","type":"chat-message","roomId":"demo",'
        '"fromUserId":"bob","text":"hi","ts":1,"x":' + "[" * 40 + "]" * 40 + "}",
        # an integer past a double's range (JavaScript reads Infinity)
        '{"channel":"webrtc-dashboard-chat","type":"chat-message","roomId":"demo",'
        '"fromUserId":"bob","text":"hi","ts":1' + "0" * 400 + "}",
    ],
)
def test_frames_a_browser_could_not_read_as_we_do_are_unreadable(text: str) -> None:
    client, pcs = _joined_machine()
    out = client.handle(ServerFrameReceived(text=text), 0.5)
    assert len(out) == 1 and isinstance(out[0], ProtocolViolation), out
    assert "unreadable" in out[0].detail
    _carol_still_works(client, pcs)


def test_a_server_cannot_make_us_build_more_peers_than_we_take() -> None:
    """A lying server listing 500 members, or adding one past the cap, is refused (a
    ProtocolViolation) before a single peer connection is made for it."""
    client = ClientMachine("alice", capabilities=BROWSER, jitter=lambda: 0.25, max_peers=3)
    client.handle(ServerConnected(), 0.0)
    client.handle(JoinRequested(room_id=ROOM), 0.0)
    crowd = dict(TEMPLATES["own-join"], existingParticipants=[f"u{i}" for i in range(500)])
    out = client.handle(ServerFrameReceived(text=json.dumps(crowd)), 0.1)
    assert [type(a) for a in out] == [ProtocolViolation] and client.peers == {}
    ok = dict(TEMPLATES["own-join"], existingParticipants=["bob", "carol", "dave"])
    client.handle(ServerFrameReceived(text=json.dumps(ok)), 0.2)
    assert sorted(client.peers) == ["bob", "carol", "dave"]
    one_more = dict(TEMPLATES["joined"], userId="erin")
    out = client.handle(ServerFrameReceived(text=json.dumps(one_more)), 0.3)
    assert [type(a) for a in out] == [ProtocolViolation] and "erin" not in client.peers
    left = dict(TEMPLATES["left"], userId="dave")
    client.handle(ServerFrameReceived(text=json.dumps(left)), 0.4)
    client.handle(ServerFrameReceived(text=json.dumps(one_more)), 0.5)
    assert "erin" in client.peers  # room again for one
