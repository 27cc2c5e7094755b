"""Record the conformance vectors of the client machine (tests/vectors/).

Every ``PeerNegotiation`` the scripted negotiation tests (tests/test_negotiation.py)
make is recorded call by call, and every ``ClientMachine`` that the scripted client
tests (tests/test_client.py, tests/test_client_resume.py, tests/test_trust_boundary.py)
and a set of seeded SimNetwork runs create is recorded:
how it was built (the jitter values it drew included), then each input — an event with
its ``now``, or a timer — with the outcome in the normal form of tests/conformance.py
(actions, error class, snapshot). tests/js/vectors.test.mjs replays them on the browser
client's machine; tests/test_vectors.py fails when the committed vectors are stale.

    python tests/make_vectors.py            # rewrite tests/vectors/*.jsonl
    python tests/make_vectors.py --check    # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conformance import (
    RecordingJitter,
    actions_json,
    call_json,
    client_init,
    event_json,
    negotiation_init,
    negotiation_snapshot,
    snapshot,
)

from sansio_signal.actions import ClientAction
from sansio_signal.client import ClientMachine
from sansio_signal.errors import LocalProtocolError, RemoteProtocolError
from sansio_signal.events import ClientEvent
from sansio_signal.negotiation import (
    AIORTC,
    BROWSER,
    NegotiationConfig,
    PeerNegotiation,
)
from sansio_signal.testing import SimNetwork
from sansio_signal.wire import DEFAULT_LIMITS

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors"
SCRIPTED = ["test_client.py", "test_client_resume.py", "test_trust_boundary.py"]
SIM_SEEDS = range(20)


def _recorded(
    step: dict[str, Any],
    call: Callable[[], list[ClientAction]],
    after: Callable[[], dict[str, Any]],
    steps: list[dict[str, Any]],
) -> list[ClientAction]:
    """Run ``call`` and append ``step`` with what came of it (the actions, the error
    class it raised — raised again — and the snapshot ``after`` takes) to ``steps``."""
    raised = None
    actions: list[ClientAction] = []
    try:
        actions = call()
    except LocalProtocolError:
        raised = "LocalProtocolError"
        raise
    except RemoteProtocolError:
        raised = "RemoteProtocolError"
        raise
    finally:
        step["expect"] = {"actions": actions_json(actions), "raised": raised, "snapshot": after()}
        steps.append(step)
    return actions


class _Labels:
    """Names recorded machines after the test (or run) that made them."""

    def __init__(self) -> None:
        self.label = ""
        self._counts: dict[str, int] = {}

    def name(self) -> str:
        """A name for the next machine: the label and its number under that label."""
        self._counts[self.label] = self._counts.get(self.label, 0) + 1
        return f"{self.label}#{self._counts[self.label]}"


class Recorder(_Labels):
    """Patches ``ClientMachine`` so that every machine made while it is active is
    recorded under the current ``label``."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: list[dict[str, Any]] = []
        self.machines: list[tuple[dict[str, Any], ClientMachine, RecordingJitter]] = []

    @contextmanager
    def active(self) -> Iterator[None]:
        original = (ClientMachine.__init__, ClientMachine.handle, ClientMachine.handle_timer)
        recorder = self

        def init(machine: ClientMachine, user_id: str, **kwargs: Any) -> None:
            jitter = RecordingJitter(kwargs["jitter"])
            kwargs["jitter"] = jitter
            original[0](machine, user_id, **kwargs)
            vector: dict[str, Any] = {"name": recorder.name(), "steps": []}
            if machine.limits != DEFAULT_LIMITS:
                vector["skip"] = "non-default limits"
            machine._conformance = (vector, jitter)  # type: ignore[attr-defined]
            recorder.vectors.append(vector)
            recorder.machines.append((vector, machine, jitter))

        def run(
            machine: ClientMachine, step: dict[str, Any], call: Callable[[], list[ClientAction]]
        ) -> list[ClientAction]:
            vector, _ = machine._conformance  # type: ignore[attr-defined]
            return _recorded(step, call, lambda: snapshot(machine), vector["steps"])

        def handle(machine: ClientMachine, event: ClientEvent, now: float) -> list[ClientAction]:
            step = {"event": event_json(event), "now": now}
            return run(machine, step, lambda: original[1](machine, event, now))

        def handle_timer(machine: ClientMachine, now: float) -> list[ClientAction]:
            return run(machine, {"timer": now}, lambda: original[2](machine, now))

        patched = {"__init__": init, "handle": handle, "handle_timer": handle_timer}
        for name, function in patched.items():
            setattr(ClientMachine, name, function)
        try:
            yield
        finally:
            for name, function in zip(patched, original, strict=True):
                setattr(ClientMachine, name, function)

    def finish(self) -> list[dict[str, Any]]:
        """The vectors, with how to build each machine (known once it has drawn all
        its jitter)."""
        for vector, machine, jitter in self.machines:
            vector["init"] = client_init(
                machine.user_id,
                machine.capabilities,
                machine.config,
                machine.resume_window,
                jitter.values,
                machine.reconnect,
                machine.max_peers,
            )
        return self.vectors


NEGOTIATION_INPUTS = (
    "start",
    "close",
    "request_renegotiation",
    "on_timer",
    "on_local_description",
    "on_remote_applied",
    "on_candidate_gathered",
    "on_connection_state",
    "on_operation_failed",
    "on_signal",
)
"""The input methods of ``PeerNegotiation`` (each takes ``now`` last)."""


class NegotiationRecorder(_Labels):
    """Patches ``PeerNegotiation`` so that every negotiation the scripted negotiation
    tests make is recorded call by call (those a client machine makes are recorded
    with it instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[
            tuple[dict[str, Any], PeerNegotiation, RecordingJitter, RecordingJitter]
        ] = []

    @contextmanager
    def active(self) -> Iterator[None]:
        originals = {
            name: getattr(PeerNegotiation, name) for name in ("__init__", *NEGOTIATION_INPUTS)
        }
        recorder = self

        def init(peer: PeerNegotiation, **kwargs: Any) -> None:
            new_pc, jitter = RecordingJitter(kwargs["new_pc"]), RecordingJitter(kwargs["jitter"])
            originals["__init__"](peer, **{**kwargs, "new_pc": new_pc, "jitter": jitter})
            vector: dict[str, Any] = {"name": recorder.name(), "steps": []}
            peer._conformance = vector  # type: ignore[attr-defined]
            recorder.records.append((vector, peer, new_pc, jitter))

        def wrap(name: str) -> Callable[..., list[ClientAction]]:
            def method(peer: PeerNegotiation, *args: Any) -> list[ClientAction]:
                steps = peer._conformance["steps"]  # type: ignore[attr-defined]
                return _recorded(
                    call_json(name, args),
                    lambda: originals[name](peer, *args),
                    lambda: negotiation_snapshot(peer),
                    steps,
                )

            return method

        setattr(PeerNegotiation, "__init__", init)  # noqa: B010 (mypy: no method-assign)
        for name in NEGOTIATION_INPUTS:
            setattr(PeerNegotiation, name, wrap(name))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(PeerNegotiation, name, original)

    def finish(self) -> list[dict[str, Any]]:
        """The vectors, with how to build each negotiation."""
        for vector, peer, new_pc, jitter in self.records:
            vector["init"] = negotiation_init(peer, new_pc.values, jitter.values)
        return [vector for vector, *_ in self.records]


class _Plugin:
    """Runs each scripted test with the recorder labelled by the test's id."""

    def __init__(self, recorder: _Labels) -> None:
        self.recorder = recorder

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Left out: hypothesis tests (random inputs) and tests that patch the machines'
        # internals (``monkeypatch``: what they check is not behaviour a port can have).
        items[:] = [
            item
            for item in items
            if not getattr(getattr(item, "function", None), "is_hypothesis_test", False)
            and "monkeypatch" not in getattr(item, "fixturenames", ())
        ]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        self.recorder.label = item.nodeid
        return (yield)


def _sim_runs(recorder: Recorder) -> None:
    """Three clients meet on a lossy, duplicating network; one drops and resumes."""
    config = NegotiationConfig(max_retries=100, backoff_max=1.0)
    for caps_name, caps in (("browser", BROWSER), ("aiortc", AIORTC), ("mixed", None)):
        for seed in SIM_SEEDS:
            recorder.label = f"sim-{caps_name}-{seed}"
            sim = SimNetwork(seed=seed, loss=0.1, duplication=0.1, fault_budget=3, config=config)
            users = ["ann", "ben", "cat"]
            for i, user in enumerate(users):
                chosen = caps if caps is not None else (BROWSER if i % 2 else AIORTC)
                sim.add_client(user, chosen)
                sim.connect(user)
                sim.join(user, "room")
            sim.run(until=sim.now + 5.0)
            sim.disconnect(users[seed % 3], clean=False)
            sim.run(until=sim.now + 1.0)
            sim.connect(users[seed % 3])
            sim.run(max_steps=20_000)


def _run_tests(names: list[str], recorder: _Labels) -> None:
    code = pytest.main(
        [*(str(HERE / name) for name in names), "-q", "-p", "no:cacheprovider", "-x"],
        plugins=[_Plugin(recorder)],
    )
    if code != 0:
        raise SystemExit(f"the scripted tests failed while recording (exit {code})")


def record() -> dict[str, list[dict[str, Any]]]:
    """Every vector, by file, in a stable order."""
    negotiations = NegotiationRecorder()
    with negotiations.active():
        _run_tests(["test_negotiation.py"], negotiations)
    clients = Recorder()
    with clients.active():
        _run_tests(SCRIPTED, clients)
        scripted = len(clients.vectors)
        _sim_runs(clients)
    every = clients.finish()
    return {
        "negotiation-scripted.jsonl": negotiations.finish(),
        "client-scripted.jsonl": every[:scripted],
        "client-sim.jsonl": every[scripted:],
    }


def render(files: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The text of each file of tests/vectors/ (one vector a line)."""
    return {
        name: "".join(
            json.dumps(vector, sort_keys=True, separators=(",", ":")) + "\n"
            for vector in vectors
            if "skip" not in vector and vector["steps"]
        )
        for name, vectors in files.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the vectors are stale")
    args = parser.parse_args(argv)
    rendered = render(record())
    if args.check:
        stale = [
            name
            for name, text in rendered.items()
            if not (VECTORS / name).exists() or (VECTORS / name).read_text() != text
        ]
        if stale:
            print(f"stale vectors: {', '.join(stale)}; run python tests/make_vectors.py")
            return 1
        print("vectors are current")
        return 0
    VECTORS.mkdir(exist_ok=True)
    for name, text in rendered.items():
        (VECTORS / name).write_text(text)
        print(f"wrote {VECTORS / name} ({len(text) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
