"""What writing a trace costs: buffered against flushed as each record is made.

Client: the events one client of an 8-peer mesh receives (recorded as in
``bench_client.py``) are replayed into fresh ClientMachines whose trace sink writes each
record to a real file the way ``adapters/client.py`` does: ``dumps(record)`` plus a
newline, with the wall time added, then either left in the file object's buffer (written
at exit, lost on SIGKILL) or flushed at once (one ``write`` system call per record).

Relay: signaling frames (``bench_core.py``'s ICE candidate and offer) fed to a
RelayMachine between two members, each event and its actions written as
``adapters/server.py`` does (``record_line`` per record, one write per event), buffered
or flushed per event.

Run: ``python benchmarks/bench_trace.py [--json] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from sansio_signal.client import ClientMachine
from sansio_signal.events import ClientEvent, FrameReceived
from sansio_signal.negotiation import AIORTC, BROWSER
from sansio_signal.trace import WALL_TIME, record_line
from sansio_signal.wire import JSONValue, dumps

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_client import record_events
from benchmarks.bench_core import FRAMES, NOW, A, new_machine
from benchmarks.harness import print_table


def replay(
    events: list[tuple[ClientEvent, float]], original: ClientMachine, out: TextIO, flush: bool
) -> tuple[float, int]:
    """Seconds to feed ``events`` to a fresh twin of ``original`` tracing into ``out``,
    and the number of records written."""
    count = 0

    def sink(record: dict[str, JSONValue]) -> None:
        nonlocal count
        count += 1
        record[WALL_TIME] = time.time()
        out.write(dumps(record) + "\n")
        if flush:
            out.flush()

    machine = ClientMachine(
        original.user_id, capabilities=original.capabilities, jitter=lambda: 0.5, trace=sink
    )
    machine._instance = original._instance  # the recorded frames echo the session names
    start = time.perf_counter()
    for event, now in events:
        machine.handle(event, now)
    out.flush()
    return time.perf_counter() - start, count


def relay_events(frame: dict[str, Any], out: TextIO, flush: bool, count: int) -> float:
    """Microseconds per event to relay ``frame`` ``count`` times, traced into ``out``."""
    machine = new_machine()
    text = json.dumps(frame)
    start = time.perf_counter()
    for _ in range(count):
        event = FrameReceived(conn=A, data=text, wall_time=NOW)
        actions = machine.handle(event, NOW)
        lines = [record_line(NOW, "in", event)]
        lines += [record_line(NOW, "out", action) for action in actions]
        out.write("\n".join(lines) + "\n")
        if flush:
            out.flush()
    out.flush()
    return (time.perf_counter() - start) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    # The two modes alternate, repetition by repetition, so that whatever else the
    # machine does at the time weighs on both alike (the difference is a few µs).
    modes = {False: "buffered", True: "flushed"}
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        for name, caps in (("browser", BROWSER), ("aiortc", AIORTC)):
            events, original = record_events(caps)
            best, records = dict.fromkeys(modes, float("inf")), 0
            for _ in range(args.repeat):
                for flush in modes:
                    with trace.open("w", encoding="utf-8") as out:
                        elapsed, records = replay(events, original, out, flush)
                    best[flush] = min(best[flush], elapsed)
            for flush, mode in modes.items():
                results[f"{name}_{mode}_us_per_record"] = best[flush] / records * 1e6
                results[f"{name}_{mode}_records_per_s"] = records / best[flush]
            results[f"{name}_records"] = records
        for name, frame in FRAMES.items():
            best = dict.fromkeys(modes, float("inf"))
            for _ in range(max(3, args.repeat // 5)):
                for flush in modes:
                    with trace.open("w", encoding="utf-8") as out:
                        best[flush] = min(best[flush], relay_events(frame, out, flush, 2000))
            for flush, mode in modes.items():
                results[f"relay_{name}_{mode}_us_per_event"] = best[flush]
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"One client of an 8-peer mesh, traced to a file (best of {args.repeat})\n")
    rows = []
    for name in ("browser", "aiortc"):
        buffered = results[f"{name}_buffered_us_per_record"]
        flushed = results[f"{name}_flushed_us_per_record"]
        rows.append(
            [
                name,
                results[f"{name}_records"],
                f"{buffered:.1f}",
                f"{flushed:.1f}",
                f"{flushed - buffered:.1f}",
                f"{results[f'{name}_flushed_records_per_s']:.0f}",
            ]
        )
    print_table(
        ["peers", "records", "µs/record buffered", "µs/record flushed", "flush µs", "records/s"],
        rows,
    )
    print("\nRelay, one signaling frame relayed between two members, traced to a file\n")
    rows = []
    for name in FRAMES:
        buffered = results[f"relay_{name}_buffered_us_per_event"]
        flushed = results[f"relay_{name}_flushed_us_per_event"]
        rows.append([name, f"{buffered:.1f}", f"{flushed:.1f}", f"{flushed - buffered:.1f}"])
    print_table(["frame", "µs/event buffered", "µs/event flushed", "flush µs"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
