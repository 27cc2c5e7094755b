"""bench_scaleout.py runs end to end: ``--quick`` with real ``serve --redis`` processes,
a real ``redis-server`` and the Node load generator (``benchmarks/loadgen_multi.mjs``).

Skipped without ``node``/``npm`` (the generator) or without ``redis-server`` (failed when
``CI`` is set, as the other Redis tests). The script stops every process it starts; here
it is bounded by the subprocess timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchutil import require_node, run_bench
from redisfix import require_redis_server

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_scaleout.py"


@pytest.mark.timeout(40)
def test_quick_run_relays_across_processes_with_nothing_lost_or_reordered() -> None:
    require_node("the load generator is a Node script")
    require_redis_server()
    results = run_bench(SCRIPT, "--quick", "--json", timeout=35)
    assert results["problems"] == []
    for scenario, by_setup in results["medians"].items():
        assert set(by_setup) == {"single", "redis-1", "redis-2"}, scenario
        for setup, m in by_setup.items():
            assert m["delivered"] > 0, (scenario, setup)
            assert m["lost"] == m["reordered"] == m["duplicates"] == 0, (scenario, setup)
            assert m["wrong_sender"] == m["misrouted"] == 0, (scenario, setup)
        # every frame of the two-process set-up crossed from one process to the other
        two = by_setup["redis-2"]
        assert two["cross_delivered"] == two["delivered"] > 0, scenario
        assert by_setup["redis-1"]["cross_delivered"] == 0, scenario
        # and Redis was asked for it: a Post per frame at least, measured per frame
        assert two["evalsha_per_frame"] > 0.8, scenario
        assert two["redis_us_per_frame"] > 0, scenario
    for run in results["runs"]:
        assert run["status"] == "ok", run
