"""The relay's diagram says what the relay does.

The client's and the negotiation's diagrams are drawn from tables that carry their next
states and are checked at every step (tests/test_client.py, tests/test_negotiation.py).
The relay's table is ``(phase, type) → handler`` only, so :data:`~sansio_signal.relay.
NEXT_PHASE` (where each accepted frame leads) and the machine's own closes drawn around
the table are claims; these tests hold the machine to them, edge by edge, and fail when
the table gains a key or the machine a close code that the drawing does not know.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from sansio_signal import relay
from sansio_signal.actions import CloseConnection, Log, RelayAction, SendFrame
from sansio_signal.codes import Channel, CloseCode, ErrorCode
from sansio_signal.events import Connected, ConnId, FrameReceived
from sansio_signal.limits import Limits
from sansio_signal.relay import NEXT_PHASE, Phase, RelayMachine
from sansio_signal.store import NodeLapsed
from sansio_signal.testing import RelayHarness
from sansio_signal.testing.store import SimStore
from sansio_signal.wire import CLIENT_TYPES, dumps

ROOM = "demo"


def frame(type_: str, **fields: Any) -> dict[str, Any]:
    """A well-formed client frame of ``type_`` from alice (to bob, for a signal)."""
    (channel,) = [ch for ch, types in CLIENT_TYPES.items() if type_ in types]
    bodies: dict[str, dict[str, Any]] = {
        "join-room": {"roomId": "elsewhere", "userId": "alice"},
        "leave-room": {"roomId": ROOM},
        "chat-message": {"text": "hi"},
        "webrtc-offer": {"offer": {"type": "offer", "sdp": "v=0"}},
        "webrtc-answer": {"answer": {"type": "answer", "sdp": "v=0"}},
        "webrtc-ice": {"candidate": None},
        "webrtc-renegotiate": {},
    }
    body = bodies[type_]
    if channel == Channel.SIGNALING:
        body = {"toUserId": "bob", **body}
    return {"channel": channel, "type": type_, **body, **fields}


def alice_in(phase: Phase, limits: Limits | None = None) -> tuple[RelayHarness, ConnId]:
    """A relay where bob is in the room, and alice's connection is in ``phase``."""
    h = RelayHarness(limits) if limits is not None else RelayHarness()
    h.join(h.connect(), ROOM, "bob")
    alice = h.connect()
    if phase is Phase.JOINED:
        h.join(alice, ROOM, "alice")
    assert h.machine.phase(alice) is phase
    h.take(alice)
    return h, alice


def edges(chart: str) -> dict[tuple[str, str], set[str]]:
    """``(source, target) → labels`` of a Mermaid state diagram (labels split at ", ")."""
    drawn: dict[tuple[str, str], set[str]] = {}
    for line in chart.splitlines():
        if " --> " not in line:
            continue
        arrow, _, label = line.strip().partition(": ")
        source, _, target = arrow.partition(" --> ")
        drawn.setdefault((source, target), set()).update(label.split(", "))
    return drawn


# ---------------------------------------------------------------------- the table


def test_every_key_of_the_table_has_its_next_phase() -> None:
    assert set(NEXT_PHASE) == set(relay._TRANSITIONS)


TABLE_KEYS: list[tuple[Phase, str]] = sorted(NEXT_PHASE, key=lambda k: (k[0].value, k[1]))


@pytest.mark.parametrize(("phase", "type_"), TABLE_KEYS, ids=str)
def test_an_accepted_frame_leads_where_the_table_says(phase: Phase, type_: str) -> None:
    h, alice = alice_in(phase)
    h.send(alice, frame(type_))
    assert [f for f in h.take(alice) if f["type"] == "error"] == []
    assert h.machine.phase(alice) is NEXT_PHASE[phase, type_]


MISSING_KEYS: list[tuple[Phase, str]] = [
    (phase, type_)
    for phase in (Phase.LOBBY, Phase.JOINED)
    for type_ in sorted({t for types in CLIENT_TYPES.values() for t in types})
    if (phase, type_) not in NEXT_PHASE
]
"""Every frame type a connection in a live phase may send that the table has no key for."""


def test_only_the_lobby_lacks_keys() -> None:
    # A joined member may send every frame type; in the lobby only a join is taken.
    assert {p for p, _ in MISSING_KEYS} == {Phase.LOBBY}
    assert "join-room" not in {t for _, t in MISSING_KEYS}


@pytest.mark.parametrize(("phase", "type_"), MISSING_KEYS, ids=str)
def test_a_pair_missing_from_the_table_is_refused_and_keeps_the_phase(
    phase: Phase, type_: str
) -> None:
    h, alice = alice_in(phase)
    h.send(alice, frame(type_))
    assert [f["code"] for f in h.take(alice)] == [ErrorCode.NOT_IN_ROOM]
    assert h.machine.phase(alice) is phase


def test_the_diagram_draws_every_key_of_the_table() -> None:
    drawn = edges(relay.diagram())
    signaling = CLIENT_TYPES[Channel.SIGNALING]
    for (phase, type_), target in NEXT_PHASE.items():
        name = "webrtc-*" if type_ in signaling else type_
        assert name in drawn[phase.name, target.name], (phase, type_)


def test_the_diagram_is_small() -> None:
    assert relay.diagram().count("-->") <= 12


# ---------------------------------------------------------------- around the table


Scenario = tuple[RelayMachine, ConnId, list[RelayAction]]
"""The machine, alice's connection, and the actions of the step that closed it (the
harness is bypassed there, so that no ``Disconnected`` follows the close)."""


def _idle(phase: Phase) -> Scenario:
    h, alice = alice_in(phase, Limits(idle_timeout=5.0))
    h.advance(6.0)
    return h.machine, alice, h.machine.handle_timer(h.now)


def _abuse(phase: Phase) -> Scenario:
    h, alice = alice_in(phase, Limits(abuse_errors=3))
    actions: list[RelayAction] = []
    for _ in range(3):
        actions = h.machine.handle(FrameReceived(conn=alice, data="{"), h.now)
    return h.machine, alice, actions


def _too_large(phase: Phase) -> Scenario:
    h, alice = alice_in(phase)
    data = "x" * (h.machine.limits.max_frame_bytes + 1)
    return h.machine, alice, h.machine.handle(FrameReceived(conn=alice, data=data), h.now)


def _replaced(phase: Phase) -> Scenario:
    assert phase is Phase.JOINED
    h = RelayHarness()
    alice = h.connect()
    h.join(alice, ROOM, "alice")
    (own,) = h.take(alice)
    again = h.connect()
    join = dumps(frame("join-room", roomId=ROOM, resumeToken=own["resumeToken"]))
    return h.machine, alice, h.machine.handle(FrameReceived(conn=again, data=join), h.now)


def _lapsed(phase: Phase) -> Scenario:
    """A cluster node whose heartbeat lapsed (its store is the reference SimStore)."""
    assert phase is Phase.JOINED
    store = SimStore()
    machine = RelayMachine(new_token=lambda: "t", node="n1")
    alice = 1
    pending = machine.handle(Connected(conn=alice), 0.0)
    pending += machine.handle(FrameReceived(conn=alice, data=dumps(frame("join-room"))), 0.0)
    while ops := [a for a in pending if not isinstance(a, SendFrame | Log)]:
        pending = [a for op in ops for a in machine.handle(store.apply(op), 0.0)]  # type: ignore[arg-type]
    assert machine.phase(alice) is Phase.JOINED
    return machine, alice, machine.handle(NodeLapsed(), 0.0)


SCENARIOS: dict[int, Callable[[Phase], Scenario]] = {
    CloseCode.GOING_AWAY: _idle,
    CloseCode.POLICY: _abuse,
    CloseCode.TOO_BIG: _too_large,
    CloseCode.REPLACED: _replaced,
    CloseCode.SERVICE_RESTART: _lapsed,
}
"""How to make the machine close alice's connection with each code it draws."""


@pytest.mark.parametrize(
    ("code", "phase"),
    [(code, phase) for code, _, phases in relay._CLOSES for phase in phases],
    ids=str,
)
def test_each_close_drawn_happens_from_its_phase(code: int, phase: Phase) -> None:
    machine, alice, actions = SCENARIOS[code](phase)
    assert [a.code for a in actions if isinstance(a, CloseConnection) and a.conn == alice] == [code]
    assert machine.phase(alice) is Phase.CLOSED


def test_the_diagram_knows_every_close_code_of_the_machine() -> None:
    """Every ``CloseCode`` the machine names is one of the closes drawn."""
    tree = ast.parse(inspect.getsource(RelayMachine))
    named = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "CloseCode"
    }
    drawn = {name for name, value in vars(CloseCode).items() if value in SCENARIOS}
    assert named == drawn
    assert {code for code, _, _ in relay._CLOSES} == set(SCENARIOS)


def test_the_refusal_at_connect_is_drawn_and_happens() -> None:
    code, why = relay._REFUSED_AT_CONNECT
    assert f"Connected → {code} {why}" in edges(relay.diagram())["[*]", Phase.CLOSED.name]
    h = RelayHarness(Limits(max_per_address=1))
    h.connect("192.0.2.1")
    actions = h.machine.handle(Connected(conn=99, address="192.0.2.1"), h.now)
    assert [a.code for a in actions if isinstance(a, CloseConnection)] == [code]
    assert h.machine.phase(99) is Phase.CLOSED
