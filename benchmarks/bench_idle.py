"""Server memory per idle joined connection: ours against the yardsticks, in one run.

Each server is started fresh; its RSS is read (``/proc``) when it listens, then N
connections each join a room (rooms of ``--room-size``), the membership frames are read
and the connections sit idle for ``--settle`` seconds; RSS again. The figure is the
difference over N, in KiB. Servers, alternating over ``--rounds`` rounds (medians):

* ``ours``: ``sansio-signal serve`` with its defaults (limits, metrics, keep-alive);
* ``bare``: the bare Python ``websockets`` relay of ``shared/bench`` (the floor of any
  server written on ``websockets``);
* ``node``: the Node ``ws`` relay of ``shared/bench`` (modelling the seed's server),
  when ``node`` and its ``ws`` package can be had (``npm ci`` into a cache directory).

The holder is this process: raw asyncio streams (one hand-made ``join-room`` frame
each), so that it costs the servers nothing a real client would not.

    python benchmarks/bench_idle.py --connections 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    HOST,
    ServerProcess,
    join_frame,
    print_results,
    print_table,
    raise_nofile,
    serve_argv,
)

SHARED_BENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
NODE_DIR = Path(__file__).resolve().parent / ".node"
"""Where ``npm ci`` puts the Node yardstick's ``ws`` (not committed)."""
ANY_LISTENING = re.compile(r"listening on (ws://127\.0\.0\.1:\d+/)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def node_relay() -> Path | None:
    """The Node yardstick relay, with ``ws`` installed beside it (``None``: no node/npm,
    or the registry cannot be reached)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None or not SHARED_BENCH.is_dir():
        return None
    script = NODE_DIR / "baseline_node_relay.mjs"
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        NODE_DIR.mkdir(exist_ok=True)
        for name in ("package.json", "package-lock.json", "baseline_node_relay.mjs"):
            shutil.copy(SHARED_BENCH / name, NODE_DIR / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True
        )
        if done.returncode != 0:
            print(f"node yardstick unavailable: npm ci failed: {done.stderr[-300:]}")
            return None
    shutil.copy(SHARED_BENCH / "baseline_node_relay.mjs", script)
    return script


def server_argvs(include_node: bool, options: Sequence[str] = ()) -> dict[str, list[str]]:
    """The argv of each server (``options`` for ours); the yardsticks print their ready
    line on stderr."""
    servers: dict[str, list[str]] = {"ours": serve_argv(*options)}
    bare = SHARED_BENCH / "baseline_py_relay.py"
    if bare.is_file():
        servers["bare"] = ["sh", "-c", f'exec "{sys.executable}" "{bare}" --port $PORT 2>&1']
    script = node_relay() if include_node else None
    if script is not None:
        servers["node"] = ["sh", "-c", f'exec node "{script}" --port $PORT 2>&1']
    return servers


async def hold(url: str, n: int, room_size: int) -> list[asyncio.StreamWriter]:
    """Open ``n`` WebSocket connections to ``url``, each joined to a room; back when
    every one has seen its own ``user-joined-room``. The caller closes the writers."""
    host, port = url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
    gate = asyncio.Semaphore(200)
    writers: list[asyncio.StreamWriter] = []

    async def one(i: int) -> None:
        user = f"u{i}"
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            writers.append(writer)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {head[:60]!r}")
            writer.write(_masked_text(join_frame(f"r{i // room_size}", user)))
            mine = re.compile(rb'"userId":\s*"' + user.encode() + rb'"')
            seen = b""
            while not mine.search(seen):
                chunk = await reader.read(65536)
                if not chunk:
                    raise RuntimeError(f"{user}: closed before joining")
                seen = seen[-200:] + chunk
        asyncio.get_running_loop().create_task(_drain(reader))

    await asyncio.gather(*(one(i) for i in range(n)))
    return writers


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and drop what the server sends (later joins of the room, pings)."""
    while await reader.read(65536):
        pass


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    else:
        header += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def measure(name: str, argv: list[str], n: int, room_size: int, settle: float) -> float:
    """KiB of server RSS per idle joined connection."""
    if name != "ours":  # the yardsticks take a port, and are told one
        argv = ["env", f"PORT={free_port()}", *argv]
    server = ServerProcess(argv, name=name, ready=ANY_LISTENING)
    await server.start()
    try:
        await asyncio.sleep(settle)
        before = server.memory_kib()["VmRSS"]
        started = time.perf_counter()
        writers = await hold(server.url, n, room_size)
        opened = time.perf_counter() - started
        await asyncio.sleep(settle)  # allocations settle; nothing is waited for
        after = server.memory_kib()["VmRSS"]
        for w in writers:
            w.close()
        per = (after - before) / n
        print(f"  {name}: {before} → {after} KiB RSS, {per:.2f} KiB/conn ({opened:.1f} s to join)")
        return per
    finally:
        await server.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.connections + 200)  # per process: the holder's sockets, or the server's
    servers = server_argvs(not args.no_node, args.serve_option)
    results: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}")
        for name, argv in servers.items():
            results[name].append(
                await measure(name, argv, args.connections, args.room_size, args.settle)
            )
    return {
        "connections": args.connections,
        "room_size": args.room_size,
        "kib_per_connection": {k: statistics.median(v) for k, v in results.items()},
        "rounds": results,
    }


def report(r: dict[str, Any]) -> None:
    medians = r["kib_per_connection"]
    rows = []
    for name, per in medians.items():
        vs = [f"{per / medians[ref]:.2f}×" if ref in medians else "—" for ref in ("bare", "node")]
        spread = " / ".join(f"{x:.1f}" for x in r["rounds"][name])
        rows.append([name, f"{per:.2f}", spread, *vs])
    print(f"\n{r['connections']} idle joined connections (rooms of {r['room_size']}), medians:")
    print_table(["server", "KiB/conn", "rounds", "vs bare", "vs node"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--no-node", action="store_true", help="skip the Node yardstick")
    parser.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for `sansio-signal serve` (repeatable)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    print_results(asyncio.run(run(args)), report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
