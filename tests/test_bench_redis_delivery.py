"""bench_redis_delivery.py runs end to end: ``--quick`` against the ``redis_server``
fixture's server (skipped without ``redis-server``, failed when ``CI`` is set).

The script starts its worker processes itself and stops them (joined, else terminated,
then killed); here it is bounded by the subprocess timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redisfix import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_redis_delivery.py"


@pytest.mark.timeout(150)
def test_quick_run_delivers_in_order_and_the_stream_loses_nothing_on_reconnect(
    redis_server: RedisServer,
) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--redis-url", redis_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["problems"] == []
    medians = results["medians"]

    deliveries = {name: m for name, m in medians.items() if "transport" in m}
    assert {m["transport"] for m in deliveries.values()} == {"pubsub", "stream"}
    for name, m in deliveries.items():
        assert m["out_of_order"] == 0, name
        assert m["duplicates"] == 0, name
        assert m["delivered"] > 0, name
        assert m["ended"], name

    # the consumer was away for a while: the stream resumed from its last id, pub/sub did not
    assert medians["reconnect-xs"]["lost"] == 0
    assert medians["reconnect-xs"]["delivered"] == medians["reconnect-xs"]["sent"]
    assert medians["reconnect-ps"]["lost"] > 0
    # three producers into one consumer: every message, in order per producer
    for name in ("fanin-ps", "fanin-xs"):
        assert medians[name]["producers"] == 3
        assert medians[name]["lost"] == 0, name

    for name in ("cas-watch-p1", "cas-lua-p1", "cas-watch-p2", "cas-lua-p2"):
        cas = medians[name]
        assert cas["committed_version"] == cas["commits"] > 0, name
        assert cas["inbox_len"] > 0, name

    memory = results["memory"]
    assert memory["added"] > memory["cap"]
    assert memory["cap"] <= memory["kept"] < memory["cap"] * 1.1
    assert memory["bytes_per_entry"] > 0
