"""Time to a full mesh: through the relay, against aiortc's in-memory floor.

For N peers (default 2, 4, 8, 16), side by side in one run:

- **ours**: the relay as users run it — ``sansio-signal serve`` in its own process on
  loopback (``--relay in-process`` puts a RelayServer in the peers' process instead) —
  and N :class:`Client` s joining one room; the clock runs from the moment the last of
  them sent its ``join-room`` (its WebSocket opened) — when every peer exists, as in
  the floor — until every data channel is open at both ends;
- **floor**: N aiortc peers in this process, every pair exchanging offer and answer
  directly in memory (no server, no JSON, no machines), all pairs at once; the clock
  runs from the first ``createOffer`` until every data channel is open.

Both gather ICE on 127.0.0.1 only and pass ``iceServers=[]``. Each case is run
``--repeat`` times alternately; medians are reported with the ratio ours/floor, and a
PNG plot of time against N is written (``--plot``, default docs/mesh-time.png).

Run: ``python benchmarks/bench_mesh.py [--sizes 2 4 8 16] [--repeat 5] [--json]
[--relay serve|in-process]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection

from sansio_signal import Limits
from sansio_signal.adapters.aiortc_peer import loopback_only
from sansio_signal.adapters.client import Client
from sansio_signal.adapters.server import RelayServer

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import ServerProcess, print_table, serve_argv


async def floor(n: int) -> float:
    """Seconds for an in-memory full mesh of ``n`` aiortc peers."""
    pcs: dict[int, dict[int, RTCPeerConnection]] = {i: {} for i in range(n)}
    opened: list[asyncio.Event] = []

    async def link(a: int, b: int) -> None:
        offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs[a][b], pcs[b][a] = offerer, answerer
        here, there = asyncio.Event(), asyncio.Event()
        opened.extend([here, there])
        channel = offerer.createDataChannel("chat")
        channel.on("open", here.set)
        answerer.on("datachannel", lambda _channel: there.set())
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(asyncio.gather(here.wait(), there.wait()), 60)

    start = time.perf_counter()
    await asyncio.gather(*(link(a, b) for a, b in itertools.combinations(range(n), 2)))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(pc.close() for peers in pcs.values() for pc in peers.values()))
    return elapsed


async def ours(n: int, relay: str) -> float:
    """Seconds for ``n`` Clients to form a full mesh through the relay (a ``serve``
    process, or a RelayServer in this process)."""
    if relay == "serve":
        async with ServerProcess(serve_argv("--rate-limit", "0", "--log-level", "WARNING")) as p:
            return await mesh(p.url, n)
    async with RelayServer(port=0, limits=Limits(rate_limit=0)) as server:
        return await mesh(server.url, n)


async def mesh(url: str, n: int) -> float:
    clients = [Client(url, room_id="mesh", user_id=f"p{i:02d}") for i in range(n)]
    await asyncio.gather(*(c.start() for c in clients))
    await asyncio.gather(*(c.wait_all_connected(expected=n - 1, timeout=60) for c in clients))
    done = asyncio.get_running_loop().time()
    all_joined = max(c.server_connected_at or done for c in clients)
    elapsed = done - all_joined
    await asyncio.gather(*(c.close() for c in clients))
    return elapsed


def plot(results: dict[int, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [results[n]["ours_ms"] for n in sizes], "o-", label="through the relay")
    ax.plot(sizes, [results[n]["floor_ms"] for n in sizes], "s--", label="in-memory floor")
    ax.set_xlabel("peers in the room (full mesh)")
    ax.set_ylabel("time to every data channel open (ms)")
    ax.set_xticks(sizes)
    ax.set_title("sansio-signal: time to full mesh (aiortc, loopback)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--plot", default="docs/mesh-time.png", help="'' for none")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--relay",
        choices=["serve", "in-process"],
        default="serve",
        help="the relay: a `sansio-signal serve` process (default), or a RelayServer in "
        "the peers' process",
    )
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    with loopback_only():
        for n in args.sizes:
            ours_s, floor_s = [], []
            asyncio.run(ours(n, args.relay))  # warm-up (imports, first connections), not counted
            asyncio.run(floor(n))
            for _ in range(args.repeat):  # alternate, so both see the same conditions
                ours_s.append(asyncio.run(ours(n, args.relay)))
                floor_s.append(asyncio.run(floor(n)))
            o, f = statistics.median(ours_s), statistics.median(floor_s)
            results[n] = {"ours_ms": o * 1000, "floor_ms": f * 1000, "ratio": o / f}
    if args.plot:
        plot(results, Path(args.plot))
    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"time to full mesh, median of {args.repeat} (aiortc on loopback, iceServers=[]),"
        f" relay: {args.relay}"
    )
    print_table(
        ["peers", "pairs", "ours ms", "floor ms", "ours/floor"],
        [
            [
                n,
                n * (n - 1) // 2,
                f"{r['ours_ms']:.1f}",
                f"{r['floor_ms']:.1f}",
                f"{r['ratio']:.2f}x",
            ]
            for n, r in results.items()
        ],
        align=">",
    )
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
