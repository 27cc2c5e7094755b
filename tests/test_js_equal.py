"""The browser client's machine equals the Python one: a differential test.

Hypothesis builds event sequences for one client — server connections coming and going,
joins, leaves, chat, renegotiation requests, every server frame (own joins, members
coming and going, chat, errors, offers, answers, candidates, renegotiation requests with
every pair field, and junk), results of peer-connection operations (current and stale
handles) and timers — and feeds each event to the Python ``ClientMachine`` and to the
JS ``ClientMachine`` of ``adapters/static/machine.js`` (in one node subprocess). After
every step both must have produced the same actions (tests/conformance.py: normal
form), raised the same error class, and hold the same state, deadlines and peers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from conformance import (
    JsMachine,
    ListJitter,
    client_init,
    event_json,
    key_paths,
    run_step,
    step_input,
    trace_who,
)
from hypothesis import HealthCheck, given, settings

from sansio_signal.client import ClientMachine, ClientState
from sansio_signal.events import (
    ChatRequested,
    ClientEvent,
    CloseRequested,
    ConnectionStateChanged,
    ConnectRequested,
    IceCandidateGathered,
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
from sansio_signal.negotiation import AIORTC, BROWSER, NegotiationConfig, NegState
from sansio_signal.wire import IceCandidate, SessionDescription

USERS = ["alice", "bob", "carol", "dave"]
ROOMS = ["r1", "r2"]
CONFIG = NegotiationConfig(max_retries=2, backoff_base=0.5)
SEQUENCES = int(os.environ.get("SANSIO_DIFF_EXAMPLES", "500"))


@pytest.fixture(scope="module")
def js() -> Iterator[JsMachine]:
    machine = JsMachine()
    yield machine
    machine.close()


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


junk: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**54)
    | st.sampled_from([1.0, 0.5, -0.0, 1e300, 10**400, _nested(31), _nested(40)])
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


_EXPECTED_FRAME = {NegState.HAVE_LOCAL_OFFER: "answer", NegState.IDLE: "offer"}


def _signal_frame(
    draw: Callable[..., Any], machine: ClientMachine, room: str | None
) -> dict[str, Any]:
    members = sorted(machine.peers)
    others = [u for u in USERS if u != machine.user_id]
    sender = draw(st.sampled_from(members + members + others))
    peer = machine.peers.get(sender)
    expected = None if peer is None else _EXPECTED_FRAME.get(peer.state)
    kinds = ["offer", "answer", "ice", "renegotiate"]
    kind = draw(st.sampled_from(kinds + [expected] * 10 if expected else kinds))
    frame: dict[str, Any] = {
        "channel": "webrtc-signaling",
        "type": f"webrtc-{kind}",
        "toUserId": machine.user_id,
        "fromUserId": sender,
        "roomId": room or draw(st.sampled_from(ROOMS)),
    }
    if kind in ("offer", "answer"):
        sdp = draw(st.sampled_from(["v=0 a", "v=0 b", "v=0 c"]))
        frame[kind] = {"type": kind, "sdp": sdp}
        frame["caps"] = draw(
            st.sampled_from([None, [], ["rollback", "ice-restart", "trickle"], ["x"]])
        )
    if kind == "offer":
        frame["seq"] = draw(st.sampled_from([None, 1, 2, 3, 2.0]))
    if kind == "ice":
        frame["candidate"] = draw(
            st.sampled_from(
                [
                    None,
                    {"candidate": ""},
                    {"candidate": "candidate:1 1 UDP 1 127.0.0.1 9 typ host", "sdpMid": "0"},
                    {"candidate": "candidate:2 1 UDP 1 127.0.0.1 8 typ host", "sdpMLineIndex": 0},
                ]
            )
        )
    if kind == "renegotiate":
        frame["reason"] = draw(st.sampled_from([None, "failed", "no-offer", "renegotiate"]))
    epoch_now = 0 if peer is None else peer.epoch
    if peer is not None and draw(st.integers(0, 2)) > 0:  # mostly a well-behaved peer
        frame.update(epoch=epoch_now, sid=f"{sender}-1", rsid=peer.session)
        return {k: v for k, v in frame.items() if v is not None or k == "candidate"}
    epochs = [None, 0, epoch_now, epoch_now + 1, max(0, epoch_now - 1)]
    frame["epoch"] = draw(st.sampled_from(epochs))
    frame["sid"] = draw(st.sampled_from([None, f"{sender}-1", f"{sender}-2"]))
    sessions = [None, "stale"] + ([] if peer is None else [peer.session])
    frame["rsid"] = draw(st.sampled_from(sessions))
    for key in [k for k, v in frame.items() if v is None and k != "candidate"]:
        if draw(st.booleans()):
            del frame[key]
    return frame


def _server_frame(draw: Callable[..., Any], machine: ClientMachine) -> str:
    room = machine.room.room_id if machine.room is not None else machine.room_id
    others = [u for u in USERS if u != machine.user_id]
    kind = draw(
        st.sampled_from(["own-join", "joined", "left", "chat", "error", "junk", *["signal"] * 8])
    )
    frame: dict[str, Any]
    if kind == "own-join":
        existing = draw(st.lists(st.sampled_from(others), unique=True, max_size=3))
        frame = {
            "channel": "webrtc-dashboard-rooms",
            "type": "user-joined-room",
            "roomId": draw(st.sampled_from([room or "r1", *ROOMS])),
            "userId": machine.user_id,
            "existingParticipants": existing,
            "resumeToken": draw(st.sampled_from(["t1", "t2", None])),
        }
    elif kind in ("joined", "left"):
        frame = {
            "channel": "webrtc-dashboard-rooms",
            "type": "user-joined-room" if kind == "joined" else "user-left-room",
            "roomId": draw(st.sampled_from([room or "r1", *ROOMS])),
            "userId": draw(st.sampled_from(others)),
        }
        if kind == "joined":
            frame["existingParticipants"] = []
    elif kind == "chat":
        frame = {
            "channel": "webrtc-dashboard-chat",
            "type": "chat-message",
            "roomId": room or "r1",
            "fromUserId": draw(st.sampled_from(USERS)),
            "text": "hi",
            "ts": draw(st.sampled_from([1.5, 2, 1e9])),
        }
    elif kind == "error":
        frame = {
            "channel": draw(st.sampled_from(["webrtc-dashboard-rooms", "webrtc-dashboard-chat"])),
            "type": "error",
            "code": draw(st.sampled_from(["user-id-taken", "room-full", "not-in-room", "nope"])),
            "message": "no",
        }
    else:
        frame = _signal_frame(draw, machine, room)
    if kind == "junk":  # any field, nested ones included, replaced or removed
        paths = key_paths(frame)
        path = draw(st.sampled_from(paths))
        target: Any = frame
        for key in path[:-1]:
            target = target[key]
        if draw(st.integers(0, 4)) == 0:
            del target[path[-1]]
        else:
            target[path[-1]] = draw(junk)
    return json.dumps(frame)


_AWAITED = {
    NegState.MAKING_OFFER: ("local", "offer"),
    NegState.MAKING_ANSWER: ("local", "answer"),
    NegState.APPLYING_OFFER: ("applied", ""),
    NegState.APPLYING_ANSWER: ("applied", ""),
    NegState.STABLE: ("state", ""),
}


def _pc_event(draw: Callable[..., Any], machine: ClientMachine) -> ClientEvent:
    live = sorted((p.pc, p.state) for p in machine.peers.values() if p.pc is not None)
    waiting = [(pc, state) for pc, state in live if state in _AWAITED]
    pc, neg_state = draw(st.sampled_from([*live, *waiting * 4, (99, NegState.IDLE)]))
    awaited, sdp_type = _AWAITED.get(neg_state, ("", ""))
    kinds = ["local", "applied", "gathered", "state", "failed", "needed"]
    kind = draw(st.sampled_from(kinds + [awaited] * 15 if awaited else kinds))
    if kind == "state" and awaited == "state" and draw(st.booleans()):
        return ConnectionStateChanged(pc=pc, state="connected")
    if kind == "local":
        sdp_type = sdp_type or draw(st.sampled_from(["offer", "answer"]))
        return LocalDescriptionCreated(
            pc=pc, description=SessionDescription(type=sdp_type, sdp=f"v=0 {sdp_type}")
        )
    if kind == "applied":
        return RemoteDescriptionApplied(pc=pc)
    if kind == "needed":
        return NegotiationNeeded(pc=pc)
    if kind == "gathered":
        candidate = draw(
            st.sampled_from(
                [None, IceCandidate(candidate="candidate:9 1 UDP 1 10.0.0.1 9 typ host")]
            )
        )
        return IceCandidateGathered(pc=pc, candidate=candidate)
    if kind == "state":
        state = draw(
            st.sampled_from(["new", "connecting", "connected", "disconnected", "failed", "closed"])
        )
        return ConnectionStateChanged(pc=pc, state=state)
    operation = draw(st.sampled_from(["CreateOffer", "SetRemoteDescription", "AddIceCandidate"]))
    return OperationFailed(pc=pc, operation=operation, error="boom")


def _event(draw: Callable[..., Any], machine: ClientMachine) -> ClientEvent:
    online = machine.state is not ClientState.OFFLINE
    if not online and draw(st.integers(0, 2)) > 0:
        attempt: ClientEvent = draw(
            st.sampled_from([ServerConnected(), ServerConnectFailed(reason="refused")])
        )
        return attempt
    if machine.state is ClientState.JOINING and draw(st.booleans()):  # the server answers
        own = {
            "channel": "webrtc-dashboard-rooms",
            "type": "user-joined-room",
            "roomId": machine.room_id,
            "userId": machine.user_id,
            "existingParticipants": draw(
                st.lists(st.sampled_from([u for u in USERS if u != machine.user_id]), unique=True)
            ),
            "resumeToken": "t1",
        }
        return ServerFrameReceived(text=json.dumps(own))
    kind = draw(
        st.sampled_from(
            ["frame"] * 10
            + ["pc"] * 12
            + ["connect", "disconnect", "join", "leave", "chat", "reneg", "want"]
            + ["close"] * (draw(st.integers(0, 3)) == 0)
        )
    )
    if kind == "want":
        return ConnectRequested()
    if kind == "close":
        return CloseRequested()
    if kind == "frame":
        return ServerFrameReceived(text=_server_frame(draw, machine))
    if kind == "pc":
        return _pc_event(draw, machine)
    if kind == "connect":
        return ServerConnected()
    if kind == "disconnect":
        code = draw(st.sampled_from([None, 1000, 1001, 1006, 1008, 1012, 4000]))
        return ServerDisconnected(close_code=code)
    if kind == "join":
        return JoinRequested(room_id=draw(st.sampled_from(ROOMS)))
    if kind == "leave":
        return LeaveRequested()
    if kind == "chat":
        return ChatRequested(text="hello")
    return RenegotiationRequested(peer_id=draw(st.sampled_from(USERS)))


def _compare(py: dict[str, Any], js: dict[str, Any], where: list[dict[str, Any]]) -> None:
    for key in ("raised", "actions", "snapshot", "trace"):
        assert json.loads(json.dumps(py[key])) == js[key], (
            f"Python and JS differ in {key} after {json.dumps(where[-3:])}:\n"
            f"  Python: {json.dumps(py[key])}\n  JS:     {json.dumps(js[key])}"
        )


@settings(
    max_examples=SEQUENCES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_python_and_js_client_machines_agree(js: JsMachine, data: st.DataObject) -> None:
    user = data.draw(st.sampled_from(["alice", "bob", "carol"]), label="user")
    caps = data.draw(st.sampled_from([BROWSER, AIORTC]), label="caps")
    window = data.draw(st.sampled_from([0.0, 8.0]), label="resume window")
    max_peers = data.draw(st.sampled_from([64, 2]), label="max peers")
    jitter_values = [((i * 7919) % 1000) / 1000 for i in range(1, 400)]
    jitter = ListJitter(jitter_values)
    records: list[dict[str, Any]] = []  # the trace: who each record is about must agree
    python = ClientMachine(
        user,
        capabilities=caps,
        jitter=jitter,
        config=CONFIG,
        resume_window=window,
        max_peers=max_peers,
        trace=records.append,
    )
    init = {
        **client_init(user, caps, CONFIG, window, jitter_values, max_peers=max_peers),
        "trace": True,
    }
    js.send({"init": init})
    now = 0.0
    history: list[dict[str, Any]] = []
    prefix: list[ClientEvent] = [ServerConnected(), JoinRequested(room_id="r1")]
    for _ in range(data.draw(st.integers(min_value=10, max_value=120), label="steps")):
        deadline = python.next_deadline()
        if deadline is not None and data.draw(st.integers(0, 7)) == 0:
            now = max(now, deadline)
            step: dict[str, Any] = {"timer": now}
        else:
            now += data.draw(st.sampled_from([0.0, 0.01, 0.5, 2.0]))
            event = prefix.pop(0) if prefix else _event(data.draw, python)
            step = {"event": event_json(event), "now": now, "_event": event}
        history.append(step_input(step))
        py_out = run_step(python, step)
        py_out["trace"] = [trace_who(record) for record in records]
        records.clear()
        js_out = js.send(history[-1])
        _compare(py_out, js_out, history)
        assert js_out["jitterUsed"] == jitter.used, (
            f"Python and JS drew jitter {jitter.used} and {js_out['jitterUsed']} times"
            f" after {json.dumps(history[-3:])}"
        )
