"""The Python half of the JS conformance checks: a normal form for the client machine's
inputs, outputs and state, shared by the vector recorder (tests/make_vectors.py), the
differential test (tests/test_js_equal.py) and — in JavaScript — tests/js/conformance.mjs.

Events and actions become JSON objects named by their class (``{"type":
"ServerFrameReceived", "text": ...}``, ``{"kind": "CreateOffer", "peerId": ...}``) with
camelCase fields; ``SendToServer`` carries the decoded frame; logs are left out (their
wording is free) and a ``ProtocolViolation`` is compared by its peer only (its detail is
prose). A snapshot after each step holds the machine's state, room, resume flags, next
deadline and every peer's state, epoch, connection handle and deadline.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from sansio_signal.actions import ClientAction, Log, ProtocolViolation, SendToServer
from sansio_signal.client import DEFAULT_RECONNECT, ClientMachine, ReconnectPolicy
from sansio_signal.errors import LocalProtocolError, RemoteProtocolError
from sansio_signal.events import ClientEvent
from sansio_signal.negotiation import Capabilities, NegotiationConfig, PeerNegotiation
from sansio_signal.room import DEFAULT_MAX_MEMBERS
from sansio_signal.wire import (
    Answer,
    Ice,
    IceCandidate,
    Offer,
    Renegotiate,
    SessionDescription,
    to_json,
)

ROOT = Path(__file__).resolve().parent.parent
Json = Any


def camel(name: str) -> str:
    """``peer_id`` → ``peerId``."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def plain(value: Any) -> Json:
    """A field value in the normal form."""
    if isinstance(value, SessionDescription | IceCandidate):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if attrs.has(type(value)):  # a nested record (IceServerFailure): camelCase fields
        return _fields(value)
    return value


def _fields(obj: Any) -> dict[str, Json]:
    return {camel(f.name): plain(getattr(obj, f.name)) for f in attrs.fields(type(obj))}


def event_json(event: ClientEvent) -> dict[str, Json]:
    """An event in the normal form."""
    return {"type": type(event).__name__, **_fields(event)}


def action_json(action: ClientAction) -> dict[str, Json] | None:
    """An action in the normal form, or ``None`` for one left out (a log)."""
    if isinstance(action, Log):
        return None
    if isinstance(action, ProtocolViolation):
        return {"kind": "ProtocolViolation", "peerId": action.peer_id}
    if isinstance(action, SendToServer):
        return {"kind": "SendToServer", "frame": json.loads(action.text), "peerId": action.peer_id}
    return {"kind": type(action).__name__, **_fields(action)}


def actions_json(actions: list[ClientAction]) -> list[dict[str, Json]]:
    """Actions in the normal form."""
    return [a for a in (action_json(x) for x in actions) if a is not None]


def capabilities_json(caps: Capabilities) -> dict[str, bool]:
    """Capabilities as the JS machine takes them."""
    return {"rollback": caps.rollback, "iceRestart": caps.ice_restart, "trickle": caps.trickle}


def config_json(config: NegotiationConfig) -> dict[str, Json]:
    """A negotiation config as the JS machine takes it."""
    return _fields(config)


def snapshot(machine: ClientMachine) -> dict[str, Json]:
    """What ``machine`` holds after a step, in the normal form."""
    return {
        "state": machine.state.value,
        "roomId": machine.room_id,
        "resuming": machine.resuming,
        "absent": sorted(machine.absent),
        "nextDeadline": machine.next_deadline(),
        "peers": {
            peer_id: {
                "state": peer.state.value,
                "epoch": peer.epoch,
                "pc": peer.pc,
                "deadline": peer.deadline,
            }
            for peer_id, peer in sorted(machine.peers.items())
        },
    }


def negotiation_snapshot(peer: PeerNegotiation) -> dict[str, Json]:
    """What one negotiation holds after a call, in the normal form."""
    return {
        "state": peer.state.value,
        "epoch": peer.epoch,
        "pc": peer.pc,
        "deadline": peer.deadline,
        "link": peer.link.value,
        "attempts": peer.attempts,
    }


def negotiation_init(
    peer: PeerNegotiation, new_pc: list[int], jitter: list[float]
) -> dict[str, Json]:
    """How to build the JS twin of a negotiation (``new_pc`` and ``jitter``: the values
    the Python one drew, in order)."""
    return {
        "ourId": peer.our_id,
        "peerId": peer.peer_id,
        "capabilities": capabilities_json(peer.capabilities),
        "config": config_json(peer.config),
        "session": peer.session,
        "newPc": new_pc,
        "jitter": jitter,
    }


def call_json(method: str, args: tuple[Any, ...]) -> dict[str, Json]:
    """A call of a ``PeerNegotiation`` input method in the normal form (``now`` last)."""
    *values, now = args
    plain_args: list[Json] = []
    for value in values:
        if isinstance(value, Offer | Answer | Ice | Renegotiate):
            plain_args.append({"frame": to_json(value)})
        else:
            plain_args.append(plain(value))
    return {"call": method, "args": plain_args, "now": now}


def trace_who(record: dict[str, Any]) -> list[Json]:
    """What a trace record says about who and where: direction, kind, the peer it was
    about, that peer's epoch, its state before and after (tests/js/conformance.mjs
    ``traceWho``)."""
    return [
        record["dir"],
        record["kind"],
        *(record.get(key) for key in ("peer", "epoch", "before", "after")),
    ]


def run_step(machine: ClientMachine, step: dict[str, Json]) -> dict[str, Json]:
    """Run one input in the normal form (``{"event", "now"}`` or ``{"timer"}``) on the
    Python machine; ``event`` must then be the Python event in ``step["_event"]``."""
    raised = None
    actions: list[ClientAction] = []
    try:
        if "timer" in step:
            actions = machine.handle_timer(step["timer"])
        else:
            actions = machine.handle(step["_event"], step["now"])
    except LocalProtocolError:
        raised = "LocalProtocolError"
    except RemoteProtocolError:
        raised = "RemoteProtocolError"
    return {"actions": actions_json(actions), "raised": raised, "snapshot": snapshot(machine)}


class ListJitter:
    """Hands out ``values`` in order and remembers how many were used."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.used = 0

    def __call__(self) -> float:
        value = self.values[self.used]
        self.used += 1
        return value


class RecordingJitter:
    """Wraps a value source (a jitter source, a ``new_pc``) and records what it handed
    out."""

    def __init__(self, source: Callable[[], Any]) -> None:
        self.source = source
        self.values: list[Any] = []

    def __call__(self) -> Any:
        value = self.source()
        self.values.append(value)
        return value


def client_init(
    user_id: str,
    capabilities: Capabilities,
    config: NegotiationConfig,
    resume_window: float,
    jitter: list[float],
    reconnect: ReconnectPolicy | None = DEFAULT_RECONNECT,
    max_peers: int = DEFAULT_MAX_MEMBERS,
) -> dict[str, Json]:
    """How to build the JS twin of a client machine."""
    return {
        "maxPeers": max_peers,
        "userId": user_id,
        "capabilities": capabilities_json(capabilities),
        "config": config_json(config),
        "resumeWindow": resume_window,
        "reconnect": None if reconnect is None else _fields(reconnect),
        "jitter": jitter,
    }


def node() -> str:
    """The node binary (.ci/run installs it)."""
    import shutil

    found = shutil.which("node") or shutil.which("nodejs")
    assert found is not None, "node is needed for the JS client's tests (.ci/run installs it)"
    return found


class JsMachine:
    """The JS client machine in a node subprocess (tests/js/machine_runner.mjs)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [node(), str(ROOT / "tests" / "js" / "machine_runner.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, message: dict[str, Json]) -> dict[str, Json]:
        """One line in, one line out."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        assert line, "the JS machine runner died"
        out: dict[str, Json] = json.loads(line)
        return out

    def close(self) -> None:
        """Stop the subprocess."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


def step_input(step: dict[str, Json]) -> dict[str, Json]:
    """The part of a step the JS side gets (the Python event left out)."""
    return {k: v for k, v in step.items() if not k.startswith("_")}


def key_paths(value: Json, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a frame (nested objects included), for tests that put junk
    into any field."""
    out: list[tuple[str, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((*prefix, key))
            out += key_paths(child, (*prefix, key))
    return out
