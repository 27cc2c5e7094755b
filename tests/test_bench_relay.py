"""bench_relay.py runs end to end: ``--quick`` against the three real servers.

The load generator is Node (``loadgen.mjs`` with ``ws``, installed by ``npm ci`` into
``benchmarks/.node``); without ``node`` the test is skipped. The script stops every
process it starts; here it is bounded by the subprocess timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchutil import require_node, run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_relay.py"
SHARED_BENCH = ROOT.parent / "shared" / "bench"


@pytest.mark.timeout(90)
def test_quick_run_relays_every_frame_through_the_three_servers(tmp_path: Path) -> None:
    require_node("bench_relay's load generator is a Node script")
    if not (SHARED_BENCH / "loadgen.mjs").is_file():
        pytest.skip(f"no shared bench at {SHARED_BENCH} (loadgen.mjs and the yardstick relays)")
    plot = tmp_path / "relay.png"
    results = run_bench(SCRIPT, "--quick", "--json", "--plot", str(plot), timeout=75)
    assert results["problems"] == []
    for scenario in ("flat-10x10", "flat-100x10", "paced-2000"):
        by_server = results["medians"][scenario]
        assert {"ours", "bare", "node"} <= set(by_server), scenario
        for name, figures in by_server.items():
            assert figures["delivered"] > 0, (scenario, name)
            assert figures["lost"] == 0, (scenario, name)
            assert figures["clean"], (scenario, name)
    assert set(results["medians"]["flat-10x10"]) == {"ours", "ours-info", "bare", "node"}
    assert "flat-10x10" in results["info_cost"]
    for run in results["runs"]:
        assert run["status"] == "ok" and run["lost"] == 0 and run["wrong_sender"] == 0
    assert plot.stat().st_size > 0
