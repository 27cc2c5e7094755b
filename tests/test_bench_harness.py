"""The benchmarks' shared harness (``benchmarks/harness.py``), imported as a package.

The pure pieces (percentile, the report table) are checked on their own; the server
process, the joined members, ``/metrics`` and ``/healthz`` against one real
``sansio-signal serve`` on a free loopback port.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
import sys
from pathlib import Path

import pytest

# the project root, which holds the package ``benchmarks``, goes last (see test_load.py)
sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_idle import hold
from benchmarks.harness import (
    CANDIDATE,
    ICE_CANDIDATE,
    CpuTimes,
    Member,
    ServerProcess,
    http_get_json,
    http_url,
    percentile,
    print_table,
    scrape_metrics,
    serve_argv,
)
from sansio_signal.adapters.server import RelayServer


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))


def test_print_table_sizes_columns_to_their_widest_cell() -> None:
    out = io.StringIO()
    print_table(["name", "n", "note"], [["a", 1, ""], ["longer", 12.5, "x"]], file=out)
    assert out.getvalue().splitlines() == [
        "name       n  note",
        "a          1",
        "longer  12.5     x",
    ]
    out = io.StringIO()
    print_table(["k", "v"], [["a", "1"]], align="<<", indent="  ", file=out)
    assert out.getvalue() == "  k  v\n  a  1\n"
    with pytest.raises(ValueError):
        print_table(["a", "b"], [["only one"]], file=out)


def test_candidate_is_the_ice_candidate_as_a_json_member() -> None:
    assert CANDIDATE.startswith('"candidate":{"candidate":"candidate:3471623853 ')
    assert ICE_CANDIDATE["usernameFragment"] in CANDIDATE


def test_http_url_maps_the_websocket_url() -> None:
    assert http_url("ws://127.0.0.1:8765/", "metrics") == "http://127.0.0.1:8765/metrics"
    assert http_url("http://127.0.0.1:8765", "/healthz") == "http://127.0.0.1:8765/healthz"


@pytest.mark.timeout(60)
def test_members_join_and_relay_through_a_server_process() -> None:
    async def main() -> None:
        async with asyncio.timeout(45), ServerProcess(serve_argv()) as server:
            assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", server.url)
            assert server.running and server.pid > 0
            assert server.rss_kib() > 0 and set(server.memory_kib()) == {"VmRSS", "VmHWM"}
            cpu0 = CpuTimes.now(server)
            alice = await Member.join(server.url, "room", "alice")
            bob = await Member.join(server.url, "room", "bob")
            assert (alice.existing, bob.existing) == ([], ["alice"])
            await alice.wait_joined("bob")
            await alice.send(
                {"channel": "webrtc-signaling", "type": "webrtc-ice", "toUserId": "bob"}
                | {"candidate": ICE_CANDIDATE}
            )
            relayed = await bob.recv()
            assert isinstance(relayed, str) and '"fromUserId":"alice"' in relayed
            cpu = CpuTimes.now(server) - cpu0
            # The server's start (a Python interpreter importing the package) took CPU;
            # /proc counts in clock ticks, too coarse for the few frames since cpu0, but
            # this process's clients used some (process_time is fine-grained).
            assert cpu0.processes[0] > 0 and len(cpu.processes) == 1 and cpu.own > 0
            metrics = await asyncio.to_thread(scrape_metrics, server.url)
            assert metrics["sansio_signal_connections"] == 2.0
            assert metrics['sansio_signal_frames_in_total{type="webrtc-ice"}'] >= 1.0
            status, body = await asyncio.to_thread(http_get_json, http_url(server.url, "healthz"))
            assert (status, body) == (200, {"connections": 2, "rooms": 1})
            await asyncio.gather(alice.close(), bob.close())
        assert not server.running

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_server_process_waits_for_its_ready_line_and_returns_the_rest() -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )

    async def main() -> str:
        proc = ServerProcess([sys.executable, "-c", script], ready=re.compile(r"^ready$"))
        await proc.start()
        assert proc.url == ""
        return await proc.stop()

    assert asyncio.run(main()) == "bye\n"


def test_bench_idle_holds_joined_connections_with_hand_made_frames() -> None:
    """bench_idle's holder (raw streams, one masked join frame each) really joins: the
    relay counts every connection and room."""

    async def main() -> None:
        async with RelayServer(port=0) as server:
            writers = await asyncio.wait_for(hold(server.url, 25, room_size=10), 20)
            assert server.machine.connection_count == 25
            assert server.machine.room_count == 3
            assert server.machine.directory.members("r2") == [f"u{i}" for i in range(20, 25)]
            for writer in writers:
                writer.close()

    asyncio.run(main())
