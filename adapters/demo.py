"""``sansio-signal demo``: the whole system on one machine, checked end to end.

A relay server starts in this process on a free loopback port; N Python peers
(aiortc) join one room through it; the full mesh forms; every peer sends one message to
every other over their data channel and waits for all of its own. The summary says
how long the mesh took, how long each pair took to open its channel, and how many
signaling frames each pair needed. The exit status is 0 only if every pair worked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sansio_signal import Limits

from .aiortc_peer import loopback_only
from .client import Client
from .server import RelayServer

ROOM = "demo"


async def run_demo(
    peers: int,
    *,
    timeout: float = 30.0,
    trace_dir: Path | None = None,
    progress: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Run the demo; returns the summary (see ``--json``)."""
    users = [f"peer{i}" for i in range(peers)]
    traces: list[TextIO] = []
    relay_trace = None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        relay_trace = (trace_dir / "relay.jsonl").open("w", encoding="utf-8")
        traces.append(relay_trace)
    result: dict[str, Any] = {
        "peers": peers,
        "pairs": peers * (peers - 1) // 2,
        "pairs_connected": 0,
        "mesh_seconds": None,
        "ok": False,
    }
    with loopback_only():
        async with RelayServer(port=0, limits=Limits(rate_limit=0), trace=relay_trace) as server:
            clients = []
            for user in users:
                trace = None
                if trace_dir is not None:
                    trace = (trace_dir / f"{user}.jsonl").open("w", encoding="utf-8")
                    traces.append(trace)
                clients.append(Client(server.url, room_id=ROOM, user_id=user, trace=trace))
            loop = asyncio.get_running_loop()
            started = loop.time()
            show = _Progress(progress, clients, peers)
            try:
                await asyncio.gather(*(c.start() for c in clients))
                watcher = loop.create_task(show.run())
                try:
                    await asyncio.wait_for(
                        asyncio.gather(
                            *(
                                c.wait_all_connected(expected=peers - 1, timeout=timeout)
                                for c in clients
                            )
                        ),
                        timeout,
                    )
                    mesh = loop.time() - started
                    delivered = await asyncio.wait_for(_exchange(clients), timeout)
                finally:
                    watcher.cancel()
                    show.done()
            except TimeoutError:
                mesh, delivered = None, set()
            result.update(_summary(clients, started, mesh, delivered))
            await asyncio.gather(*(c.close() for c in clients))
    for f in traces:
        f.close()
    return result


async def _exchange(clients: list[Client]) -> set[tuple[str, str]]:
    """Everyone sends to everyone; returns the (sender, receiver) pairs that arrived."""
    for client in clients:
        for peer_id in client.connected_peers():
            client.send(peer_id, f"hello {peer_id}, from {client.user_id}")
    delivered: set[tuple[str, str]] = set()

    async def receive(client: Client) -> None:
        want = len(clients) - 1
        async for message in client.messages():
            if message.text == f"hello {client.user_id}, from {message.from_user_id}":
                delivered.add((message.from_user_id, client.user_id))
            if sum(1 for _, to in delivered if to == client.user_id) >= want:
                return

    await asyncio.gather(*(receive(c) for c in clients))
    return delivered


def _summary(
    clients: list[Client], started: float, mesh: float | None, delivered: set[tuple[str, str]]
) -> dict[str, Any]:
    by_user = {c.user_id: c for c in clients}
    pairs = []
    for a, b in itertools.combinations(sorted(by_user), 2):
        pa, pb = by_user[a].peers.get(b), by_user[b].peers.get(a)
        opened = [p.channel_at for p in (pa, pb) if p is not None and p.channel_at is not None]
        worked = len(opened) == 2 and (a, b) in delivered and (b, a) in delivered
        pairs.append(
            {
                "pair": [a, b],
                "open_seconds": round(max(opened) - started, 4) if len(opened) == 2 else None,
                "signaling_frames": (pa.frames_sent if pa else 0) + (pb.frames_sent if pb else 0),
                "messages_exchanged": worked,
            }
        )
    connected = sum(1 for p in pairs if p["messages_exchanged"])
    return {
        "pairs_connected": connected,
        "mesh_seconds": None if mesh is None else round(mesh, 4),
        "ok": connected == len(pairs),
        "pair_details": pairs,
    }


class _Progress:
    """A one-line progress display on stderr while the mesh forms."""

    def __init__(self, out: TextIO | None, clients: list[Client], peers: int) -> None:
        self.out, self.clients, self.peers = out, clients, peers

    def line(self) -> str:
        ends = sum(len(c.connected_peers()) for c in self.clients)
        total = self.peers * (self.peers - 1)
        return f"\rforming the mesh: {ends // 2}/{total // 2} pairs open"

    async def run(self) -> None:
        while self.out is not None:
            self.out.write(self.line())
            self.out.flush()
            await asyncio.sleep(0.05)  # a display refresh, not synchronisation

    def done(self) -> None:
        if self.out is not None:
            self.out.write(self.line() + "\n")
            self.out.flush()


def print_summary(result: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """The readable summary."""
    mesh = result["mesh_seconds"]
    out.write(
        f"{result['peers']} peers, {result['pairs']} pairs: "
        f"{result['pairs_connected']} connected and exchanged messages\n"
    )
    out.write(f"time to full mesh: {'-' if mesh is None else f'{mesh * 1000:.0f} ms'}\n")
    out.write(f"{'pair':24} {'channel open':>13} {'signaling frames':>17}  message\n")
    for p in result["pair_details"]:
        opened = "-" if p["open_seconds"] is None else f"{p['open_seconds'] * 1000:.0f} ms"
        out.write(
            f"{' ↔ '.join(p['pair']):24} {opened:>13} {p['signaling_frames']:>17}  "
            f"{'ok' if p['messages_exchanged'] else 'FAILED'}\n"
        )
    out.write("OK: every pair worked\n" if result["ok"] else "FAILED: not every pair worked\n")


def main_demo(peers: int, as_json: bool, trace_dir: str | None, timeout: float) -> int:
    """Entry point of ``sansio-signal demo``."""
    result = asyncio.run(
        run_demo(
            peers,
            timeout=timeout,
            trace_dir=None if trace_dir is None else Path(trace_dir),
            progress=None if as_json else sys.stderr,
        )
    )
    if as_json:
        print(json.dumps(result))
    else:
        print_summary(result)
    return 0 if result["ok"] else 1
