"""Client-core benchmark: events per second through ClientMachine, and SimNetwork speed.

1. An 8-peer mesh on a SimNetwork is run once to record, for one client, every event
   the simulator fed it (frames, peer-connection results, timers none). The recorded
   events are then replayed into fresh ClientMachines, timed, with tracing off and with
   a trace sink that serialises each record to a JSON line (what the adapters do).
2. The wall time for SimNetwork to run one full 8-peer join to a settled mesh, with
   browser-like and aiortc-like peers.

Run: ``python benchmarks/bench_client.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sansio_signal.client import ClientMachine
from sansio_signal.events import ClientEvent
from sansio_signal.negotiation import AIORTC, BROWSER, Capabilities
from sansio_signal.testing import SimNetwork
from sansio_signal.wire import dumps

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import print_table

PEERS = 8


def mesh(caps: Capabilities, seed: int = 1, start: bool = True) -> SimNetwork:
    sim = SimNetwork(seed=seed)
    for i in range(PEERS):
        sim.add_client(f"peer{i}", caps)
    if start:
        join_all(sim)
    return sim


def join_all(sim: SimNetwork) -> None:
    for user in sim.clients:
        sim.connect(user)
        sim.join(user, "bench")


def record_events(caps: Capabilities) -> tuple[list[tuple[ClientEvent, float]], ClientMachine]:
    """Every event fed to one client (the middle id) during an 8-peer join."""
    sim = mesh(caps, start=False)
    user = f"peer{PEERS // 2}"
    client = sim.clients[user]
    recorded: list[tuple[ClientEvent, float]] = []
    original = client.machine.handle

    def spy(event: ClientEvent, now: float) -> Any:
        recorded.append((event, now))
        return original(event, now)

    client.machine.handle = spy  # type: ignore[method-assign]
    join_all(sim)
    sim.run()
    assert sim.settled_problems() == []
    return recorded, client.machine


def replay(events: list[tuple[ClientEvent, float]], original: ClientMachine, trace: bool) -> float:
    """Seconds to feed ``events`` to a fresh twin of ``original``."""
    lines: list[str] = []
    sink = (lambda record: lines.append(dumps(record))) if trace else None
    machine = ClientMachine(
        original.user_id, capabilities=original.capabilities, jitter=lambda: 0.5, trace=sink
    )
    # The same session names, so that the recorded frames (which echo them) still match.
    machine._instance = original._instance
    start = time.perf_counter()
    for event, now in events:
        machine.handle(event, now)
    elapsed = time.perf_counter() - start
    # The twin went where the original went: every pair negotiated and connected.
    assert {p: (n.state, n.link) for p, n in machine.peers.items()} == {
        p: (n.state, n.link) for p, n in original.peers.items()
    }
    assert len(machine.peers) == PEERS - 1
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name, caps in (("browser", BROWSER), ("aiortc", AIORTC)):
        events, original = record_events(caps)
        for trace in (False, True):
            times = [replay(events, original, trace) for _ in range(args.repeat)]
            best = min(times)
            results[f"{name}_events_per_s{'_traced' if trace else ''}"] = len(events) / best
        results[f"{name}_events"] = len(events)
        runs = []
        for seed in range(max(3, args.repeat // 5)):
            sim = mesh(caps, seed)
            start = time.perf_counter()
            sim.run()
            runs.append(time.perf_counter() - start)
            assert sim.settled_problems() == []
        results[f"{name}_sim_join_ms"] = statistics.median(runs) * 1000
        results[f"{name}_sim_steps"] = sim.steps
    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"ClientMachine, one client of an {PEERS}-peer mesh (events replayed, best of "
        f"{args.repeat}); SimNetwork, full {PEERS}-peer join (median)\n"
    )
    rows = []
    for name in ("browser", "aiortc"):
        plain = results[f"{name}_events_per_s"]
        traced = results[f"{name}_events_per_s_traced"]
        rows.append(
            [
                name,
                results[f"{name}_events"],
                f"{plain:.0f}",
                f"{traced:.0f}",
                f"{plain / traced:.2f}x",
                f"{results[f'{name}_sim_join_ms']:.1f}",
                results[f"{name}_sim_steps"],
            ]
        )
    print_table(
        ["peers", "events", "events/s", "traced/s", "trace cost", "sim join ms", "sim steps"], rows
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
