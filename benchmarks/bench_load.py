"""Load: many WebSocket connections in many rooms through one relay server process.

What is measured
----------------
One ``sansio-signal serve --port 0 --rate-limit 0`` process (a subprocess; the rate
limit is off so that the run measures delivery, not throttling) and, in this process,
``--connections`` ``websockets`` clients (default 1,000) spread over ``--rooms`` rooms
(default 100, so 10 per room). Every client connects, sends ``join-room``, and waits for
its own ``user-joined-room``; the load starts once every client has seen every member
of its room (from ``existingParticipants`` and the later ``user-joined-room`` frames).

Then every client sends ``--frames`` ``webrtc-ice`` frames to every other member of its
room (``frames × members × (members − 1)`` in total), round-robin over its room-mates,
paced so that all clients together offer ``--rate`` frames/s. Each frame carries a
client-added field ``"load":[sender, seq, t_ns]`` — the sender's userId, a sequence
number per (sender → receiver) pair starting at 1, and ``perf_counter_ns()`` just before
the send. A whole room lives in this one process, so latency (arrival − send) is read
on one clock. Every receiver checks each frame:

* **wrong sender** — ``fromUserId`` (stamped by the server) differs from the sender
  written in the payload;
* **misrouted** — ``toUserId`` is not the receiver, ``roomId`` not its room, or the
  payload sender not one of its room-mates;
* **reordered** — a frame arrives after a higher sequence number of the same pair;
  **duplicates** — a sequence number arrives twice;
* **lost** — frames sent but never received (every pair must end with all of 1..N).

Also reported: p50/p99/max latency, the achieved throughput (frames delivered from the
first send to the last arrival), how far the senders fell behind their schedule, the
server's and the generator's CPU, and the server's memory from ``/proc/PID/status``:
``VmRSS`` before any connection (baseline), once all clients have joined, sampled during
the run, and ``VmHWM`` (the peak) at the end; per connection = (figure − baseline) /
connections, in KiB. ``GET /healthz`` is checked after the joins and after the load
(status 200, ``connections`` and ``rooms`` as expected).

File descriptors: every client connection is one fd here and one in the server, so the
soft ``RLIMIT_NOFILE`` of this process is raised to its hard limit before anything
starts; the server subprocess inherits it. Connections are opened ``--connect-concurrency``
at a time (default 100, the server's listen backlog) so that no SYN is dropped.

On a 2-CPU machine the generator and the server compete for the CPUs; by default this
process is pinned to one CPU and the server to the other (``--no-pin`` to let the
scheduler decide). Everything runs on 127.0.0.1 and stops by itself; the server is
terminated (then killed) on the way out. ``--json`` prints one JSON object.

``tests/test_load.py`` runs the same code (:func:`run_load`) with fewer frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    CANDIDATE,
    CpuTimes,
    Member,
    ServerProcess,
    http_get_json,
    http_url,
    percentile,
    print_results,
    print_table,
    raise_nofile,
    serve_argv,
)

# --------------------------------------------------------------------------- configuration


@dataclass
class LoadConfig:
    """One load run. The defaults are the benchmark's: 1,000 connections in 100 rooms."""

    connections: int = 1000
    rooms: int = 100
    frames: int = 5
    """Frames per ordered (sender → receiver) pair of room-mates."""
    rate: float = 2000.0
    """Frames/s offered by all clients together."""
    connect_concurrency: int = 100
    join_timeout: float = 60.0
    drain_timeout: float = 30.0
    """Seconds to wait for the last frames after the senders have finished."""
    pin: bool = True
    server_args: list[str] = field(default_factory=list)
    """Extra ``sansio-signal serve`` arguments."""

    def room_sizes(self) -> list[int]:
        base, extra = divmod(self.connections, self.rooms)
        return [base + (1 if r < extra else 0) for r in range(self.rooms)]

    def expected_frames(self) -> int:
        return sum(n * (n - 1) for n in self.room_sizes()) * self.frames


# --------------------------------------------------------------------------- clients


class Peer:
    """One client: its room, its view of the room, and what it received from each mate."""

    def __init__(self, idx: int, room: str, user: str, members: list[str]) -> None:
        self.idx = idx
        self.room = room
        self.user = user
        self.members = frozenset(members)
        self.mates = [u for u in members if u != user]
        self.member: Member | None = None
        self.joined = asyncio.Event()
        self.complete = asyncio.Event()
        self.seen: set[str] = {user}
        self.rx: dict[str, set[int]] = {u: set() for u in self.mates}
        self.highest: dict[str, int] = dict.fromkeys(self.mates, 0)
        self.close_code: int | None = None


class LoadRun:
    """The clients and counters of one run against one server URL."""

    def __init__(self, cfg: LoadConfig, url: str) -> None:
        self.cfg = cfg
        self.url = url
        self.peers: list[Peer] = []
        for r, size in enumerate(cfg.room_sizes()):
            members = [f"u{r}_{i}" for i in range(size)]
            for user in members:
                self.peers.append(Peer(len(self.peers), f"room{r}", user, members))
        self.expected = cfg.expected_frames()
        self.sent = 0
        self.received = 0  # distinct (pair, seq) received
        self.delivered = 0  # every data frame read, duplicates included
        self.wrong_sender = 0
        self.misrouted = 0
        self.reordered = 0
        self.duplicates = 0
        self.errors = 0
        self.left = 0  # user-left-room while loaded: somebody was dropped
        self.unexpected = 0
        self.latencies_ns: list[int] = []
        self.lag_ns: list[int] = []  # actual send time − scheduled send time
        self.first_send_ns = 0
        self.last_send_ns = 0
        self.last_recv_ns = 0
        self.all_received = asyncio.Event()
        self.closing = False
        self._readers: list[asyncio.Task[None]] = []

    # -- set-up / teardown

    async def open(self) -> float:
        """Connect and join every client; wait until each has seen its whole room."""
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(self.cfg.connect_concurrency)
        async with asyncio.timeout(self.cfg.join_timeout):
            await asyncio.gather(*(self._join(p, gate) for p in self.peers))
            await asyncio.gather(*(p.complete.wait() for p in self.peers))
        return time.perf_counter() - t0

    async def _join(self, p: Peer, gate: asyncio.Semaphore) -> None:
        async with gate:
            p.member = await Member.join(self.url, p.room, p.user, open_timeout=30, close_timeout=5)
        p.joined.set()
        p.seen.update(p.member.existing)
        self._check_complete(p)
        self._readers.append(asyncio.create_task(self._read(p, p.member)))

    async def close(self) -> None:
        self.closing = True
        closes = [p.member.close() for p in self.peers if p.member is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*closes, return_exceptions=True), 15.0)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    # -- receiving

    async def _read(self, p: Peer, member: Member) -> None:
        try:
            async for frame in member:
                now = time.perf_counter_ns()
                try:
                    obj = json.loads(frame)
                    load = obj.get("load")
                    if load is not None:
                        self._on_data(p, obj, load, now)
                    elif obj.get("type") == "user-joined-room":
                        self._on_joined(p, obj)
                    elif obj.get("type") == "error":
                        self.errors += 1
                    elif obj.get("type") == "user-left-room":
                        if not self.closing:
                            self.left += 1
                    else:
                        self.unexpected += 1
                except (ValueError, TypeError, AttributeError):  # not what the server sends
                    self.unexpected += 1
        except ConnectionClosed:
            pass
        finally:
            if member.close_code is not None:
                p.close_code = member.close_code

    def _on_joined(self, p: Peer, obj: dict[str, Any]) -> None:
        """Another member's join (a peer's own was answered in :meth:`_join`)."""
        user = obj.get("userId")
        if isinstance(user, str):
            p.seen.add(user)
        self._check_complete(p)

    @staticmethod
    def _check_complete(p: Peer) -> None:
        if p.seen == p.members:
            p.complete.set()

    def _on_data(self, p: Peer, obj: dict[str, Any], load: list[Any], now: int) -> None:
        self.delivered += 1
        self.last_recv_ns = now
        sender, seq, sent_ns = load
        if obj.get("fromUserId") != sender:
            self.wrong_sender += 1
        seqs = p.rx.get(sender)
        if seqs is None or obj.get("toUserId") != p.user or obj.get("roomId") != p.room:
            self.misrouted += 1
            return
        if seq in seqs:
            self.duplicates += 1
            return
        seqs.add(seq)
        if seq < p.highest[sender]:
            self.reordered += 1
        else:
            p.highest[sender] = seq
        self.received += 1
        self.latencies_ns.append(now - sent_ns)
        if self.received == self.expected:
            self.all_received.set()

    # -- sending

    async def send_all(self) -> None:
        """Every client sends its frames on schedule; returns when all are sent."""
        loop = asyncio.get_running_loop()
        # each client sends one frame every `interval`; clients are spread over it
        interval = len(self.peers) / self.cfg.rate
        start = loop.time() + 0.05
        self.first_send_ns = time.perf_counter_ns()
        await asyncio.gather(
            *(
                self._send(p, start + interval * i / len(self.peers), interval)
                for i, p in enumerate(self.peers)
            )
        )
        self.last_send_ns = time.perf_counter_ns()

    async def _send(self, p: Peer, start: float, interval: float) -> None:
        assert p.member is not None
        loop = asyncio.get_running_loop()
        head = '{"channel":"webrtc-signaling","type":"webrtc-ice","toUserId":"'
        tail = '",' + CANDIDATE + ',"load":["' + p.user + '",'
        k = 0
        for seq in range(1, self.cfg.frames + 1):
            for mate in p.mates:
                at = start + k * interval
                k += 1
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                lag = loop.time() - at
                t_ns = time.perf_counter_ns()
                await p.member.send(f"{head}{mate}{tail}{seq},{t_ns}]}}")
                self.sent += 1
                self.lag_ns.append(int(lag * 1e9))

    def lost(self) -> int:
        return sum(
            self.cfg.frames - len(seqs & set(range(1, self.cfg.frames + 1)))
            for p in self.peers
            for seqs in p.rx.values()
        )


# --------------------------------------------------------------------------- the run


def server_argv(cfg: LoadConfig) -> list[str]:
    biggest = max(cfg.room_sizes())
    return serve_argv(
        "--rate-limit", "0", "--max-room-size", str(max(32, biggest)), *cfg.server_args
    )


async def _sample_rss(server: ServerProcess, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, KeyError):
            peak[0] = max(peak[0], server.rss_kib())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def _health(url: str) -> dict[str, Any]:
    status, body = await asyncio.to_thread(http_get_json, http_url(url, "healthz"))
    return {"status": status, "body": body}


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """Start a server, run the load against it, stop it; every figure in one dict."""
    if cfg.connections < 2 or not 1 <= cfg.rooms <= cfg.connections // 2:
        raise ValueError("need >= 2 connections and 1 <= rooms <= connections / 2")
    t_start = time.perf_counter()
    nofile = raise_nofile(cfg.connections + 256)
    available = sorted(os.sched_getaffinity(0))
    cpus = (available[0], available[1]) if cfg.pin and len(available) >= 2 else None
    if cpus:
        os.sched_setaffinity(0, {cpus[0]})
    server = ServerProcess(server_argv(cfg), cpu=cpus[1] if cpus else None)
    run: LoadRun | None = None
    stop_sampler = asyncio.Event()
    sampler: asyncio.Task[None] | None = None
    res: dict[str, Any] = {
        "benchmark": "load",
        "connections": cfg.connections,
        "rooms": cfg.rooms,
        "room_sizes": sorted(set(cfg.room_sizes())),
        "frames_per_pair": cfg.frames,
        "offered_rate": cfg.rate,
        "cpus": os.cpu_count(),
        "pinned": {"generator": cpus[0], "server": cpus[1]} if cpus else None,
        "nofile_soft_hard": list(nofile),
    }
    try:
        await server.start()
        res["url"] = server.url
        res["server_nofile"] = server.open_files_limit()
        baseline = server.rss_kib()
        peak = [baseline]
        sampler = asyncio.create_task(_sample_rss(server, peak, stop_sampler))
        run = LoadRun(cfg, server.url)
        res["expected"] = run.expected
        try:
            res["connect_join_s"] = await run.open()
        except TimeoutError:
            answered = sum(p.joined.is_set() for p in run.peers)
            complete = sum(p.complete.is_set() for p in run.peers)
            raise RuntimeError(
                f"within {cfg.join_timeout:g} s: {answered}/{cfg.connections} joins answered, "
                f"{complete}/{cfg.connections} clients saw their whole room"
            ) from None
        res["joins_answered"] = sum(p.joined.is_set() for p in run.peers)
        res["membership_complete"] = sum(p.complete.is_set() for p in run.peers)
        joined_rss = server.rss_kib()
        res["health_joined"] = await _health(server.url)

        cpu0 = CpuTimes.now(server)
        t0 = time.perf_counter()
        await run.send_all()
        send_s = time.perf_counter() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.all_received.wait(), cfg.drain_timeout)
        cpu = CpuTimes.now(server) - cpu0
        status = server.memory_kib()
        res["health_after"] = await _health(server.url)
        res["server_alive"] = server.running

        lat = sorted(run.latencies_ns)
        lag = sorted(run.lag_ns)
        span_s = max(1e-9, (run.last_recv_ns - run.first_send_ns) / 1e9)
        n = cfg.connections
        res |= {
            "sent": run.sent,
            "received": run.received,
            "delivered": run.delivered,
            "lost": run.lost(),
            "reordered": run.reordered,
            "duplicates": run.duplicates,
            "wrong_sender": run.wrong_sender,
            "misrouted": run.misrouted,
            "errors": run.errors,
            "left_during_load": run.left,
            "unexpected": run.unexpected,
            "p50_ms": percentile(lat, 50) / 1e6,
            "p99_ms": percentile(lat, 99) / 1e6,
            "max_ms": (lat[-1] if lat else float("nan")) / 1e6,
            "send_s": send_s,
            "achieved_send_rate": run.sent / max(1e-9, send_s),
            "throughput": run.received / span_s,
            "send_lag_p99_ms": percentile(lag, 99) / 1e6,
            "send_lag_max_ms": (lag[-1] if lag else float("nan")) / 1e6,
            "server_cpu_util": cpu.processes[0] / span_s,
            "server_cpu_us_per_frame": cpu.processes[0] / run.received * 1e6
            if run.received
            else None,
            "generator_cpu_util": cpu.own / span_s,
            # CPUs kept busy by everything else on the machine (other processes, kernel)
            "other_cpu_util": cpu.other / span_s,
            "memory_kib": {
                "baseline_rss": baseline,
                "joined_rss": joined_rss,
                "peak_rss_sampled": max(peak[0], status["VmRSS"]),
                "end_rss": status["VmRSS"],
                "hwm": status["VmHWM"],
            },
            "kib_per_connection_joined": (joined_rss - baseline) / n,
            "kib_per_connection_peak": (status["VmHWM"] - baseline) / n,
        }
    finally:
        stop_sampler.set()
        if sampler is not None:
            await sampler
        try:
            if run is not None:
                await run.close()
                res["server_closed_clients"] = sum(
                    p.close_code is not None and p.close_code != 1000 for p in run.peers
                )
        finally:
            await server.stop()
            if cpus:
                os.sched_setaffinity(0, set(available))
    res["total_s"] = time.perf_counter() - t_start
    return res


# --------------------------------------------------------------------------- report


def print_report(r: dict[str, Any]) -> None:
    sizes = "/".join(str(s) for s in r["room_sizes"])
    print(
        f"load: {r['connections']} connections in {r['rooms']} rooms ({sizes} per room), "
        f"{r['frames_per_pair']} webrtc-ice frames per ordered pair of room-mates "
        f"= {r['expected']} frames, offered at {r['offered_rate']:g} frames/s; "
        "one server process, rate limit off"
    )
    pin = r["pinned"]
    print(
        f"NOTE: {r['cpus']} CPUs shared by the generator (this process) and the server"
        + (
            f"; generator pinned to CPU {pin['generator']}, server to CPU {pin['server']}."
            if pin
            else "."
        )
    )
    mem = r["memory_kib"]
    rows = [
        ("joins answered", f"{r['joins_answered']} / {r['connections']}"),
        ("full membership seen", f"{r['membership_complete']} / {r['connections']}"),
        ("frames sent / received", f"{r['sent']} / {r['received']}"),
        ("lost", r["lost"]),
        ("reordered", r["reordered"]),
        ("wrong sender", r["wrong_sender"]),
        ("misrouted / duplicates", f"{r['misrouted']} / {r['duplicates']}"),
        (
            "errors / left / unexpected",
            f"{r['errors']} / {r['left_during_load']} / {r['unexpected']}",
        ),
        (
            "latency p50 / p99 / max",
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['max_ms']:.1f} ms",
        ),
        ("throughput (delivered)", f"{r['throughput']:.0f} frames/s"),
        ("send rate achieved", f"{r['achieved_send_rate']:.0f} frames/s over {r['send_s']:.1f} s"),
        ("sender lag p99 / max", f"{r['send_lag_p99_ms']:.1f} / {r['send_lag_max_ms']:.1f} ms"),
        (
            "CPU server / generator / other",
            f"{r['server_cpu_util']:.0%} / {r['generator_cpu_util']:.0%} / "
            f"{r['other_cpu_util']:.0%}"
            + (
                f" ({r['server_cpu_us_per_frame']:.0f} µs server CPU per frame)"
                if r["server_cpu_us_per_frame"]
                else ""
            ),
        ),
        (
            "server RSS base/joined/peak",
            f"{mem['baseline_rss'] / 1024:.1f} / {mem['joined_rss'] / 1024:.1f} / "
            f"{mem['hwm'] / 1024:.1f} MiB",
        ),
        (
            "KiB per connection",
            f"{r['kib_per_connection_joined']:.1f} joined, {r['kib_per_connection_peak']:.1f} peak",
        ),
        (
            "/healthz joined / after",
            f"{r['health_joined']['status']} {json.dumps(r['health_joined']['body'])} / "
            f"{r['health_after']['status']} {json.dumps(r['health_after']['body'])}",
        ),
        (
            "fd limit generator / server",
            f"{r['nofile_soft_hard'][0]} / {r['server_nofile']} (RLIMIT_NOFILE soft)",
        ),
        ("connect + join", f"{r['connect_join_s']:.1f} s"),
        ("total", f"{r['total_s']:.1f} s"),
    ]
    print()
    print_table(("measure", "value"), rows, align="<<", indent="  ")
    ok = (
        r["lost"] == 0
        and r["reordered"] == 0
        and r["wrong_sender"] == 0
        and r["misrouted"] == 0
        and r["joins_answered"] == r["connections"]
    )
    print(
        f"\n{'OK' if ok else 'FAILED'}: lost, reordered, wrong sender and misrouted must all be 0"
    )
    print(
        "(CPU: share of one CPU used by the server / this generator / everything else on "
        "the machine, from the first send to the last arrival)"
    )
    if r["other_cpu_util"] > 0.25:
        print("WARNING: other work kept > 25% of a CPU busy; latency depends on the neighbours.")
    if r["generator_cpu_util"] > 0.9:
        print("WARNING: the generator used > 90% of a CPU; latency includes its own queueing.")


def main(argv: list[str] | None = None) -> int:
    d = LoadConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--connections", type=int, default=d.connections, help="(default %(default)s)"
    )
    parser.add_argument("--rooms", type=int, default=d.rooms, help="(default %(default)s)")
    parser.add_argument(
        "--frames",
        type=int,
        default=d.frames,
        help="frames per ordered pair of room-mates (default %(default)s)",
    )
    parser.add_argument(
        "--rate", type=float, default=d.rate, help="total frames/s offered (default %(default)s)"
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=d.connect_concurrency,
        help="connections opened at once (default %(default)s)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the generator and the server to CPUs"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    if not (args.frames > 0 and args.rate > 0 and args.connect_concurrency > 0):
        parser.error("--frames, --rate and --connect-concurrency must be > 0")
    cfg = LoadConfig(
        connections=args.connections,
        rooms=args.rooms,
        frames=args.frames,
        rate=args.rate,
        connect_concurrency=args.connect_concurrency,
        pin=not args.no_pin,
    )
    results = asyncio.run(run_load(cfg))
    print_results(results, print_report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
