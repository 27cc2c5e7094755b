"""Loopback throughput and latency of the relay server, against a bare forwarder.

What is measured
----------------
Two servers, each in its own process, under the same load:

* **ours** — ``sansio-signal serve --port 0 --rate-limit 0 --log-level WARNING`` (the
  real server: RelayMachine behind the websockets adapter, metrics included);
* **bare** — this file run as ``--bare-forwarder --port 0``: a websockets server that
  remembers ``userId → connection`` per room on ``join-room`` (answering the joiner with
  a minimal ``user-joined-room``) and forwards every signaling frame to ``toUserId``
  with no validation: ``json.loads``, set ``fromUserId``/``roomId``, ``json.dumps``,
  ``send``. It is the floor any Python relay on websockets pays.

The load generator is one asyncio process (this one) holding 10 rooms × 10 clients per
server. Every client sends ``webrtc-ice`` frames (a realistic candidate frame plus an
extra field ``"bench":[sender, seq, t_ns]``, ~330 bytes) to room-mates chosen by a seeded
random generator; the receiver takes ``perf_counter_ns()`` on arrival, so latency is
measured by one clock in one process, and checks per-pair order. Phases:

1. *max throughput* (closed loop): each client keeps ``--window`` frames (default 8) in
   flight — a frame counts as in flight until its recipient has read it. After
   ``--warmup`` seconds, frames delivered during ``--duration`` seconds are counted:
   frames/s delivered, and p50/p99 latency *at saturation* (mostly queueing: by
   Little's law ≈ frames in flight / throughput). ``--rounds N`` repeats this phase,
   alternating the order (ours, bare, bare, ours, ...), and reports medians.
2. *fixed rate* (open loop): ``--rate`` frames/s in total (default 1,000), well under
   either server's capacity, for latency when nobody queues.

Also reported: the server process's CPU time (from ``/proc``) per delivered frame — the
steadier efficiency figure when the generator, or a neighbour, limits throughput — the
generator's own CPU use, and the CPU used by everything else on the machine. On a
2-core machine the generator and the server compete for the CPUs; by default the
generator is pinned to one CPU and the servers to the other (``--no-pin`` to let the
scheduler decide). Permessage-deflate is not offered by the clients (``--compression``
to offer it); neither server then compresses. ``--profile DIR`` runs both servers under
cProfile and prints where their time goes.

Everything runs on 127.0.0.1, is bounded in time and stops by itself; the server
subprocesses are terminated (then killed) on the way out. ``--json`` prints one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    CANDIDATE,
    HOST,
    CpuTimes,
    Member,
    ServerProcess,
    percentile,
    print_results,
    print_table,
    profile_table,
    serve_argv,
)

ROOMS = 10
CLIENTS_PER_ROOM = 10
TARGET_RATIO = 0.8
BENCH = re.compile(r'"bench":\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]')


# --------------------------------------------------------------------------- bare forwarder


async def run_bare_forwarder(host: str, port: int, out: TextIO = sys.stdout) -> None:
    """The baseline server: join bookkeeping and blind forwarding, nothing else."""
    rooms: dict[str, dict[str, ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        room: str | None = None
        user: str | None = None
        try:
            async for data in ws:
                obj = json.loads(data)
                if obj.get("channel") == "webrtc-signaling":
                    target = rooms[room].get(obj.get("toUserId")) if room is not None else None
                    if target is None:
                        continue
                    obj["fromUserId"] = user
                    obj["roomId"] = room
                    with contextlib.suppress(ConnectionClosed):
                        await target.send(json.dumps(obj, separators=(",", ":")))
                elif obj.get("type") == "join-room":
                    if room is not None and user is not None:
                        rooms[room].pop(user, None)
                    room, user = str(obj["roomId"]), str(obj["userId"])
                    rooms.setdefault(room, {})[user] = ws
                    await ws.send(
                        json.dumps(
                            {
                                "channel": "webrtc-dashboard-rooms",
                                "type": "user-joined-room",
                                "roomId": room,
                                "userId": user,
                                "existingParticipants": [],
                            },
                            separators=(",", ":"),
                        )
                    )
        except ConnectionClosed:
            pass
        finally:
            if room is not None and user is not None and rooms[room].get(user) is ws:
                del rooms[room][user]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(handler, host, port, max_size=2 * 65_536) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{host}:{bound}/", file=out, flush=True)
        await stop.wait()


# --------------------------------------------------------------------------- load generator


class Client:
    """One simulated peer."""

    def __init__(self, idx: int, room: str, user: str, mates: list[str]) -> None:
        self.idx = idx
        self.room = room
        self.user = user
        self.mates = mates
        self.member: Member | None = None


class Load:
    """The clients and the counters of one phase against one server."""

    def __init__(self, url: str, seed: int, compression: bool) -> None:
        self.url = url
        self.seed = seed
        self.compression = compression
        self.clients: list[Client] = []
        for r in range(ROOMS):
            users = [f"user_r{r}_{i}" for i in range(CLIENTS_PER_ROOM)]
            for user in users:
                mates = [u for u in users if u != user]
                self.clients.append(Client(len(self.clients), f"room{r}", user, mates))
        self.slots: list[asyncio.Semaphore] = []
        self.window_ns = (0, 0)
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.in_window = 0
        self.latencies_ns: list[int] = []
        self.out_of_order = 0
        self._last_seq: dict[tuple[int, int], int] = {}
        self._readers: list[asyncio.Task[None]] = []

    # -- setup / teardown

    async def open(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(self._join(c) for c in self.clients))
        self._readers = [asyncio.create_task(self._read(c)) for c in self.clients]
        await asyncio.sleep(0.3)  # let the membership broadcasts drain

    async def _join(self, c: Client) -> None:
        compression = "deflate" if self.compression else None
        c.member = await Member.join(self.url, c.room, c.user, compression=compression)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        closes = [c.member.close() for c in self.clients if c.member is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*closes, return_exceptions=True), 5.0)

    # -- receiving

    async def _read(self, c: Client) -> None:
        assert c.member is not None
        me = c.idx
        with contextlib.suppress(ConnectionClosed):
            async for frame in c.member:
                now = time.perf_counter_ns()
                if not isinstance(frame, str):
                    continue
                match = BENCH.search(frame)
                if match is None:
                    if '"type":"error"' in frame:
                        self.errors += 1
                        if self.slots:
                            self.slots[me].release()
                    continue
                sender, seq, sent_ns = int(match[1]), int(match[2]), int(match[3])
                self.received += 1
                if self.slots:
                    self.slots[sender].release()
                key = (sender, me)
                if seq <= self._last_seq.get(key, 0):
                    self.out_of_order += 1
                self._last_seq[key] = seq
                window = self.window_ns
                if window[0] <= now < window[1]:
                    self.in_window += 1
                    self.latencies_ns.append(now - sent_ns)

    # -- sending

    def _frame(self, c: Client, target: str, seq: int) -> str:
        return (
            '{"channel":"webrtc-signaling","type":"webrtc-ice","toUserId":"'
            + target
            + '",'
            + CANDIDATE
            + f',"epoch":1,"bench":[{c.idx},{seq},{time.perf_counter_ns()}]}}'
        )

    async def _send_closed_loop(self, c: Client, rng: random.Random, seq0: int) -> None:
        assert c.member is not None
        slot = self.slots[c.idx]
        seq = seq0
        while True:
            await slot.acquire()
            seq += 1
            await c.member.send(self._frame(c, rng.choice(c.mates), seq))
            self.sent += 1

    async def _send_fixed_rate(
        self, c: Client, rng: random.Random, seq0: int, interval: float
    ) -> None:
        assert c.member is not None
        loop = asyncio.get_running_loop()
        seq = seq0
        next_at = loop.time() + rng.random() * interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            seq += 1
            await c.member.send(self._frame(c, rng.choice(c.mates), seq))
            self.sent += 1

    async def phase(
        self,
        server: ServerProcess,
        *,
        window: int | None,
        rate: float | None,
        warmup: float,
        duration: float,
        seq0: int,
    ) -> dict[str, Any]:
        """Run one phase: closed loop (``window`` in flight per client) or ``rate`` total."""
        self.sent = self.received = self.errors = self.in_window = self.out_of_order = 0
        self.latencies_ns = []
        self.slots = [asyncio.Semaphore(window) for _ in self.clients] if window else []
        never = 2**63
        self.window_ns = (never, never)  # the receivers count frames read inside the window
        senders: list[asyncio.Task[None]] = []
        for c in self.clients:
            rng = random.Random(self.seed * 1_000_003 + seq0 + c.idx)
            if window:
                senders.append(asyncio.create_task(self._send_closed_loop(c, rng, seq0)))
            else:
                assert rate is not None
                interval = len(self.clients) / rate
                senders.append(asyncio.create_task(self._send_fixed_rate(c, rng, seq0, interval)))
        try:
            await asyncio.sleep(warmup)
            cpu0 = CpuTimes.now(server)
            sent0, t0 = self.sent, time.perf_counter_ns()
            self.window_ns = (t0, never)
            await asyncio.sleep(duration)
            sent1, t1 = self.sent, time.perf_counter_ns()
            self.window_ns = (t0, t1)
            cpu = CpuTimes.now(server) - cpu0
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        drain_until = time.perf_counter() + 5.0
        while self.received + self.errors < self.sent and time.perf_counter() < drain_until:
            await asyncio.sleep(0.02)
        elapsed = (t1 - t0) / 1e9
        lat = sorted(self.latencies_ns)
        return {
            "mode": f"closed loop W={window}" if window else f"fixed rate {rate:g}/s",
            "offered_per_s": (sent1 - sent0) / elapsed,
            "delivered_per_s": self.in_window / elapsed,
            "p50_ms": percentile(lat, 50) / 1e6,
            "p99_ms": percentile(lat, 99) / 1e6,
            "max_ms": (lat[-1] if lat else 0) / 1e6,
            "samples": len(lat),
            "server_cpu_util": cpu.processes[0] / elapsed,
            "server_cpu_us_per_frame": cpu.processes[0] / self.in_window * 1e6
            if self.in_window
            else None,
            "generator_cpu_util": cpu.own / elapsed,
            # CPUs kept busy by everything else on the machine (other processes, kernel)
            "other_cpu_util": cpu.other / elapsed,
            "undelivered": self.sent - self.received - self.errors,
            "errors": self.errors,
            "out_of_order": self.out_of_order,
        }


# --------------------------------------------------------------------------- driver


def _server_argvs(profile_dir: Path | None) -> dict[str, list[str]]:
    """The argv of ours and of the bare forwarder; under cProfile if ``profile_dir``."""

    def python(name: str) -> list[str]:
        if profile_dir is None:
            return [sys.executable]
        return [sys.executable, "-m", "cProfile", "-o", str(profile_dir / f"{name}.prof")]

    return {
        "ours": serve_argv("--rate-limit", "0", interpreter=python("ours")),
        "bare": [*python("bare"), str(Path(__file__).resolve()), "--bare-forwarder", "--port", "0"],
    }


def _median_phase(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase summary from several rounds: the median of every figure, problems summed."""
    out: dict[str, Any] = {"mode": rounds[0]["mode"], "rounds": len(rounds)}
    for key, value in rounds[0].items():
        if key in ("undelivered", "errors", "out_of_order", "samples"):
            out[key] = sum(r[key] for r in rounds)
        elif isinstance(value, int | float) and key != "round":
            values = [r[key] for r in rounds if r[key] is not None]
            out[key] = statistics.median(values) if values else None
    return out


async def run_phases(
    servers: dict[str, ServerProcess], loads: dict[str, Load], args: argparse.Namespace
) -> dict[str, Any]:
    """The max-throughput rounds (order ours, bare, then bare, ours, ...) and the fixed rate."""
    names = list(servers)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    phase_no = 0
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            phase_no += 1
            rounds[name].append(
                {"round": r + 1}
                | await loads[name].phase(
                    servers[name],
                    window=args.window,
                    rate=None,
                    warmup=args.warmup,
                    duration=args.duration,
                    seq0=phase_no * 1_000_000_000,
                )
            )
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {
            "url": servers[name].url,
            "max": _median_phase(rounds[name]),
            "max_rounds": rounds[name],
        }
    if args.rate > 0:
        for name in names:
            phase_no += 1
            out[name]["fixed"] = await loads[name].phase(
                servers[name],
                window=None,
                rate=args.rate,
                warmup=args.warmup,
                duration=args.duration,
                seq0=phase_no * 1_000_000_000,
            )
    for name, server in servers.items():
        if server.proc is not None and not server.running:
            raise RuntimeError(f"{name} exited early: {server.stderr_tail()}")
    return out


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    cpus: tuple[int, int] | None = None
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not args.no_pin and len(available) >= 2:
        cpus = (available[0], available[1])
        os.sched_setaffinity(0, {cpus[0]})
    results: dict[str, Any] = {
        "benchmark": "server",
        "rooms": ROOMS,
        "clients_per_room": CLIENTS_PER_ROOM,
        "window": args.window,
        "rate": args.rate,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "pinned": {"generator": cpus[0], "server": cpus[1]} if cpus else None,
        "compression": args.compression,
    }
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    servers = {
        name: ServerProcess(argv, name=name, cpu=cpus[1] if cpus else None)
        for name, argv in _server_argvs(profile_dir).items()
    }
    loads: dict[str, Load] = {}
    try:
        for name, server in servers.items():
            await server.start()
            loads[name] = Load(server.url, args.seed, args.compression)
            await loads[name].open()
        results["servers"] = await run_phases(servers, loads, args)
    finally:
        try:
            for load in loads.values():
                await load.close()
        finally:
            await asyncio.gather(*(server.stop() for server in servers.values()))
            if cpus:
                os.sched_setaffinity(0, set(available))
    if profile_dir is not None:
        results["profiles"] = {
            name: profile_table(profile_dir / f"{name}.prof") for name in servers
        }
    ours, bare = results["servers"]["ours"], results["servers"]["bare"]
    ratios = [
        o["delivered_per_s"] / b["delivered_per_s"]
        for o, b in zip(ours["max_rounds"], bare["max_rounds"], strict=True)
    ]
    ratio = statistics.median(ratios)
    results["throughput_ratio"] = ratio
    results["throughput_ratio_rounds"] = ratios
    results["target_ratio"] = TARGET_RATIO
    results["target_met"] = ratio >= TARGET_RATIO
    cpu_ours = ours["max"]["server_cpu_us_per_frame"]
    cpu_bare = bare["max"]["server_cpu_us_per_frame"]
    results["cpu_per_frame_ratio"] = cpu_ours / cpu_bare if cpu_ours and cpu_bare else None
    max_rounds = [p for s in results["servers"].values() for p in s["max_rounds"]]
    results["machine_busy"] = any(p["other_cpu_util"] > 0.25 for p in max_rounds)
    results["generator_saturated"] = any(p["generator_cpu_util"] > 0.9 for p in max_rounds)
    return results


def _label(phase: dict[str, Any], rounds: int) -> str:
    if "rounds" in phase:
        return f"{phase['mode']}, median"
    if "round" in phase and rounds > 1:
        return f"{phase['mode']}, round {phase['round']}"
    return str(phase["mode"])


def print_report(r: dict[str, Any]) -> None:
    n = r["rooms"] * r["clients_per_room"]
    print(
        f"loopback relay benchmark: {r['rooms']} rooms x {r['clients_per_room']} clients "
        f"({n} connections), webrtc-ice frames to random room-mates (seed {r['seed']}); "
        f"warm-up {r['warmup_s']:g} s, measured {r['duration_s']:g} s per phase"
    )
    pin = r["pinned"]
    print(
        f"NOTE: {r['cpus']} CPUs; the load generator (one Python process) and the server "
        "compete for them"
        + (
            f" — generator pinned to CPU {pin['generator']}, server to CPU {pin['server']}."
            if pin
            else " (not pinned)."
        )
    )
    rows: list[list[str]] = []
    for name, s in r["servers"].items():
        phases = s["max_rounds"] + ([s["max"]] if len(s["max_rounds"]) > 1 else [])
        phases += [s["fixed"]] if "fixed" in s else []
        for p in phases:
            per_frame = p["server_cpu_us_per_frame"]
            problems = {k: p[k] for k in ("undelivered", "errors", "out_of_order") if p[k]}
            rows.append(
                [
                    name,
                    _label(p, r["rounds"]),
                    f"{p['offered_per_s']:.0f}",
                    f"{p['delivered_per_s']:.0f}",
                    f"{p['p50_ms']:.2f}",
                    f"{p['p99_ms']:.2f}",
                    f"{p['server_cpu_util']:.0%}",
                    f"{per_frame if per_frame is not None else float('nan'):.1f}",
                    f"{p['generator_cpu_util']:.0%}",
                    f"{p['other_cpu_util']:.0%}",
                    f"!! {problems}" if problems else "",
                ]
            )
    print()
    headers = ["server", "phase", "offered/s", "delivered/s", "p50 ms", "p99 ms", "srv CPU"]
    headers += ["srv µs/frame", "gen CPU", "other", "problems"]
    print_table(headers, rows, align="<<>>>>>>>><")
    verdict = "ok" if r["target_met"] else "MISSED"
    rounds = ", ".join(f"{x:.2f}" for x in r["throughput_ratio_rounds"])
    print(
        f"\nthroughput ours/bare: {r['throughput_ratio']:.2f} "
        f"(target >= {r['target_ratio']:g}: {verdict})"
        + (f"; per round: {rounds}" if len(r["throughput_ratio_rounds"]) > 1 else "")
    )
    if r["cpu_per_frame_ratio"] is not None:
        print(
            f"server CPU per delivered frame ours/bare: {r['cpu_per_frame_ratio']:.2f} "
            f"-> capacity per server CPU-second ours/bare: {1 / r['cpu_per_frame_ratio']:.2f}"
        )
    print(
        "(srv CPU / gen CPU: share of one CPU used by the server / the load generator; "
        "other: CPUs busy with anything else on the machine)"
    )
    if r["machine_busy"]:
        print(
            "WARNING: other work kept > 25% of a CPU busy during a max-throughput phase; "
            "delivered/s then depends on the neighbours, the server CPU per frame less so."
        )
    if r["generator_saturated"]:
        print(
            "WARNING: the load generator used > 90% of its CPU in a max-throughput phase; "
            "the throughput figures are then capped by the generator, compare the server "
            "CPU per frame instead."
        )
    print(
        "p50/p99 in the closed-loop phase are latencies at saturation (queueing); the "
        "fixed-rate phase shows latency below capacity."
    )
    for name, text in r.get("profiles", {}).items():
        print(f"\ncProfile of {name} (whole run, by own time; profiling slows the server):\n{text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback relay throughput/latency benchmark.")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per phase (default 5)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="warm-up seconds before each phase's measurement (default 1)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=8,
        help="frames in flight per client in the max-throughput phase (default 8)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="total frames/s in the fixed-rate phase; 0 skips it (default 1000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="max-throughput phases per server, alternating ours/bare then bare/ours; "
        "medians are reported (default 1; use 3 or more on a busy machine)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the generator and the server to separate CPUs",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="clients offer permessage-deflate (off by default)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run both servers under cProfile, write DIR/ours.prof and "
        "DIR/bare.prof and print their top functions (slows them down)",
    )
    parser.add_argument(
        "--bare-forwarder",
        action="store_true",
        help="run the bare forwarder server instead of the benchmark",
    )
    parser.add_argument("--port", type=int, default=0, help="port of --bare-forwarder (0: any)")
    args = parser.parse_args(argv)
    if args.bare_forwarder:
        asyncio.run(run_bare_forwarder(HOST, args.port))
        return 0
    if not (args.duration > 0 and args.warmup >= 0 and args.rate >= 0):
        parser.error("--duration must be > 0, --warmup and --rate >= 0")
    if not (args.window > 0 and args.rounds > 0):
        parser.error("--window and --rounds must be > 0")
    results = asyncio.run(run_bench(args))
    print_results(results, print_report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
