"""Load (issue 6): 1,000 WebSocket connections in 100 rooms through one server process.

The load generator is ``benchmarks/bench_load.py`` (written once, imported here as
``benchmarks.bench_load``); this test runs it with 2 frames per ordered pair of
room-mates (18,000 frames) and asserts delivery only: nothing lost, reordered,
duplicated, misrouted or stamped with the wrong sender, every join answered, and the
server still healthy afterwards. Latency and throughput are reported by the benchmark,
not asserted (they depend on the machine).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path, not the project root, which holds the package
# ``benchmarks``. The root goes last, never first (as pytest's ``pythonpath`` would put
# it): there the source directory sansio_signal/ would shadow the installed package,
# which maps adapters/ into it as sansio_signal.adapters.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_load import LoadConfig, run_load

CONNECTIONS = 1000
ROOMS = 100


@pytest.mark.timeout(120)
def test_thousand_connections_in_hundred_rooms_lose_nothing() -> None:
    cfg = LoadConfig(
        connections=CONNECTIONS,
        rooms=ROOMS,
        frames=2,
        rate=3000.0,
        join_timeout=45.0,
        drain_timeout=30.0,
        pin=False,  # other processes may be using either CPU: let the scheduler decide
    )

    async def main() -> dict[str, object]:
        async with asyncio.timeout(100):
            return await run_load(cfg)

    r = asyncio.run(main())
    expected = 10 * 9 * 2 * ROOMS
    assert r["expected"] == expected
    assert r["joins_answered"] == CONNECTIONS
    assert r["membership_complete"] == CONNECTIONS
    assert r["sent"] == expected
    assert r["received"] == expected
    assert r["lost"] == 0
    assert r["reordered"] == 0
    assert r["wrong_sender"] == 0
    assert r["misrouted"] == 0
    assert r["duplicates"] == 0
    assert (r["errors"], r["left_during_load"], r["unexpected"]) == (0, 0, 0)
    healthy = {"status": 200, "body": {"connections": CONNECTIONS, "rooms": ROOMS}}
    assert r["health_joined"] == healthy
    assert r["health_after"] == healthy
    assert r["server_alive"] is True
    assert r["server_closed_clients"] == 0
