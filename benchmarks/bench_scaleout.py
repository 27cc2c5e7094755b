"""Signaling across processes (``serve --redis``, issue 14): what a frame costs when its
sender and its target are connected to different processes of one cluster.

Three set-ups, each started fresh for every run (a fresh ``redis-server`` too, started
as the tests' ``redisfix`` fixture starts it), alternating (the order reverses every other
round), ``--rounds`` rounds, medians:

* ``single``: one ``serve`` without Redis — today's single-process relay;
* ``redis-1``: one ``serve --redis`` — sender and target in the same room on the same
  process, every frame still through the target's mailbox in Redis;
* ``redis-2``: two ``serve --redis`` processes on one Redis, each room's members spread
  over both, and every frame sent to a member on the **other** process.

The load generator is ``benchmarks/loadgen_multi.mjs``: ``shared/bench/loadgen.mjs``
(Node, ``ws``; kept pristine there) taught to take several ``--url``\\s, to spread each
room's clients round-robin over them and to send only across processes (``--cross``).
One generator sees the whole membership of each room, so its join wait (K members per
client) holds as with one process; it checks per-sender order, loss, stamping and
routing as loadgen does, and counts the frames delivered across processes. It costs a
few µs of CPU per frame: its own CPU is reported (a figure is a lower bound when it
nears one core).

Scenarios (10 rooms × 10 clients, ICE frames): ``flat`` — as fast as possible, 16
frames in flight per client (throughput; its latency is queueing); ``paced-L`` — L
frames/s in all, open loop (latency at a given load).

Per run: delivered frames/s, p50/p99 latency, lost/reordered/duplicates/wrong sender
(must be 0), frames delivered across processes; over the send phase (samples every
20 ms, interpolated at its start and end): each ``serve``'s CPU µs per delivered frame
(``serve µs/f`` is their sum: the relay's total CPU per frame), ``redis-server``'s CPU
µs per frame (``/proc/PID/stat``), the commands Redis executed per frame (``INFO
commandstats`` deltas; commands run inside the Lua scripts count too, ``EVALSHA`` and
``XREAD`` — the ones the processes send — are also shown alone), the generator's CPU %
and the CPU % of everything else on the machine (a shared machine).

A run whose join phase does not complete within ``--join-timeout`` is retried (at most
twice) and counted in ``join_timeouts``: with two processes a member may never receive
the frames of its mailbox when another process posts to it before its own join's commit
is answered (see benchmarks/README.md, "bench_scaleout.py").

    python benchmarks/bench_scaleout.py                # ~4 minutes; --rounds, --json
    python benchmarks/bench_scaleout.py --quick        # seconds: 1 round, flat only, small
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))
# the tests' redis-server fixture module (tests/ is not a package)
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

import redis.asyncio as aioredis
from redisfix import RedisServer, redis_server_executable

from benchmarks.bench_idle import NODE_DIR, node_relay
from benchmarks.bench_relay import _git_commit, machine, ours_argv, ours_at
from benchmarks.harness import (
    CHECKED,
    CpuTimes,
    Scenario,
    ServerProcess,
    fmt_num,
    loadgen_report,
    log,
    median_rows,
    print_results,
    print_table,
    raise_nofile,
    run_figures,
    run_line,
    run_problems,
)

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = Path(__file__).resolve().parent / "loadgen_multi.mjs"
SETUPS = ("single", "redis-1", "redis-2")
COST_FIGURES = (
    "serve_us_per_frame",
    "redis_us_per_frame",
    "redis_cmds_per_frame",
    "evalsha_per_frame",
    "xread_per_frame",
)
"""What a delivered frame costs: measured over the send phase (None when it is not)."""
FIGURES = run_figures(*COST_FIGURES)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    if args.quick:
        return [Scenario("flat", 10, 10, 50)]  # 3 runs: the smoke test's, kept short
    flat = Scenario("flat", 10, 10, args.frames)
    return [flat] + [Scenario.paced(load, args.seconds) for load in args.loads]


# --------------------------------------------------------------------------- sampling


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (``/proc/PID/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # USER_HZ (SC_CLK_TCK) is 100 on Linux


@dataclass
class Sampler:
    """CPU seconds of ``pids`` and of the whole machine every ``interval`` s, and Redis'
    ``INFO commandstats`` every ``every``-th sample, stamped with wall time."""

    pids: Sequence[int]
    redis: aioredis.Redis | None
    interval: float = 0.02
    every: int = 2
    cpu: list[tuple[float, list[float], float]] = field(default_factory=list)
    cmds: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)
    """Redis' ``used_memory`` (bytes), sampled with the commands."""
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        for tick in itertools.count():
            await self.sample(commands=tick % self.every == 0)
            await asyncio.sleep(self.interval)

    async def sample(self, *, commands: bool) -> None:
        with contextlib.suppress(OSError):
            now = time.time()
            cpus = [_cpu_seconds(pid) for pid in self.pids]
            self.cpu.append((now, cpus, CpuTimes.now().machine))
        if commands and self.redis is not None:
            with contextlib.suppress(OSError, aioredis.RedisError):
                stats = await self.redis.info("commandstats")
                calls = {
                    name.removeprefix("cmdstat_"): int(value["calls"])
                    for name, value in stats.items()
                    if name != "cmdstat_info"
                }
                self.cmds.append((time.time(), calls))
                used = await self.redis.info("memory")
                self.memory.append((time.time(), int(used["used_memory"])))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sample(commands=True)

    def cpu_at(self, t: float) -> tuple[list[float], float] | None:
        """Each pid's CPU seconds and the machine's busy seconds at wall time ``t``
        (linear between samples; None outside them)."""
        for (ta, ca, ma), (tb, cb, mb) in itertools.pairwise(self.cpu):
            if ta <= t <= tb:
                w = 0.0 if tb == ta else (t - ta) / (tb - ta)
                return [a + (b - a) * w for a, b in zip(ca, cb, strict=True)], ma + (mb - ma) * w
        return None

    def memory_before(self, t: float) -> int | None:
        """The last ``used_memory`` sampled before wall time ``t``."""
        before = [m for tm, m in self.memory if tm <= t]
        return before[-1] if before else None

    def cmds_at(self, t: float) -> dict[str, float] | None:
        for (ta, ca), (tb, cb) in itertools.pairwise(self.cmds):
            if ta <= t <= tb:
                w = 0.0 if tb == ta else (t - ta) / (tb - ta)
                return {k: ca.get(k, 0) + (cb.get(k, 0) - ca.get(k, 0)) * w for k in cb}
        return None


# --------------------------------------------------------------------------- one run


async def run_loadgen(
    script: Path, urls: list[str], scenario: Scenario, args: argparse.Namespace
) -> dict[str, Any]:
    """One generator over ``urls``; its JSON report (``loadgen-failed`` if none)."""
    argv = ["node", str(script), *(f"--url={u}" for u in urls)]
    if len(urls) > 1:
        argv.append("--cross")
    argv += [
        "--json",
        "--quiet",
        f"--timeout={args.timeout:g}",
        f"--join-timeout={args.join_timeout:g}",
        *scenario.loadgen_args(),
    ]
    return await loadgen_report(argv, args.timeout)


async def one_run(
    setup: str, scenario: Scenario, script: Path, prefix: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Start Redis and the process(es) of ``setup``, run the generator, stop them all."""
    async with contextlib.AsyncExitStack() as stack:
        redis_server: RedisServer | None = None
        client: aioredis.Redis | None = None
        serves: list[ServerProcess] = []
        nodes = {"single": 0, "redis-1": 1, "redis-2": 2}[setup]
        if nodes:
            redis_server = RedisServer()
            stack.callback(redis_server.stop)
            await asyncio.to_thread(redis_server.start)
            client = aioredis.Redis.from_url(redis_server.url)
            stack.push_async_callback(client.aclose)
        for i in range(max(1, nodes)):
            options = ["--rate-limit", "0"]
            if redis_server is not None:
                options += ["--redis", redis_server.url, "--node-id", f"n{i + 1}"]
            serve = ServerProcess(ours_argv(prefix, options=options), name=f"{setup}-{i + 1}")
            stack.push_async_callback(serve.stop)
            serves.append(serve)
        await asyncio.gather(*(s.start() for s in serves))
        # the serves, Redis (if any), then this process (last: "other" leaves it out)
        pids = [s.pid for s in serves] + ([redis_server.pid] if redis_server else [])
        sampler = Sampler([*pids, os.getpid()], client)
        sampler.start()
        try:
            r = await run_loadgen(script, [s.url for s in serves], scenario, args)
        finally:
            await sampler.stop()
        if client is not None:  # what the notice streams keep (they are only trimmed)
            r["streams"] = await notice_streams(client, max(1, nodes))
        alive = all(s.running for s in serves)
        detail = "" if alive else " | ".join(s.stderr_tail(300) for s in serves)
    return figures(setup, scenario, r, sampler, len(serves), alive, detail)


async def notice_streams(client: aioredis.Redis, nodes: int) -> dict[str, float]:
    """Entries and bytes (``MEMORY USAGE``) of the nodes' notice streams."""
    entries = size = 0
    with contextlib.suppress(OSError, aioredis.RedisError):
        for i in range(nodes):
            key = f"ss:node:n{i + 1}"
            entries += int(await client.xlen(key))
            size += int(await client.memory_usage(key, samples=0) or 0)
    return {
        "entries": entries,
        "bytes": size,
        "bytes_per_entry": size / entries if entries else 0.0,
    }


def figures(
    setup: str,
    scenario: Scenario,
    r: dict[str, Any],
    sampler: Sampler,
    nserves: int,
    alive: bool,
    detail: str,
) -> dict[str, Any]:
    delivered = int(r.get("frames_delivered") or 0)
    start, end = r.get("send_start_epoch_ms"), r.get("send_end_epoch_ms")
    out: dict[str, Any] = {
        "setup": setup,
        "scenario": scenario.name,
        "load": scenario.load,
        "status": r.get("status"),
        "alive": alive,
        "frames_sent": r.get("frames_sent"),
        "delivered": delivered,
        "cross_delivered": r.get("cross_delivered"),
        "clients_per_process": r.get("clients_per_url"),
        "throughput_fps": r.get("throughput_fps"),
        "p50_ms": (r.get("latency_ms") or {}).get("p50"),
        "p99_ms": (r.get("latency_ms") or {}).get("p99"),
        "loadgen_cpu_pct": (r.get("loadgen") or {}).get("send_phase_cpu_pct"),
        "rejected": r.get("rejected"),
        **{key: r.get(key) for key in CHECKED},
        **dict.fromkeys((*COST_FIGURES, "other_cpu_pct")),
    }
    if r.get("status") != "ok" or not alive:
        out["detail"] = r.get("detail") or detail
    if r.get("streams"):
        out["notice_streams"] = r["streams"]
    if not (start and end and end > start and delivered):
        return out
    t0, t1 = start / 1000, end / 1000
    # Redis' memory with every member joined (send start) over what it was before
    first, joined = sampler.memory[0][1] if sampler.memory else None, sampler.memory_before(t0)
    if first is not None and joined is not None:
        out["redis_bytes_per_member"] = (joined - first) / (scenario.rooms * scenario.per_room)
    a, b = sampler.cpu_at(t0), sampler.cpu_at(t1)
    if a is not None and b is not None:
        used = [y - x for x, y in zip(a[0], b[0], strict=True)]
        serve_s = used[:nserves]
        out["serve_us_each"] = [1e6 * s / delivered for s in serve_s]
        out["serve_us_per_frame"] = 1e6 * sum(serve_s) / delivered
        out["serve_cpu_pct_each"] = [100 * s / (t1 - t0) for s in serve_s]
        if len(used) > nserves + 1:
            out["redis_us_per_frame"] = 1e6 * used[nserves] / delivered
        lg_pct = float(out["loadgen_cpu_pct"] or 0.0)
        # everything else: the machine minus the serves, Redis, the generator and us
        other = (b[1] - a[1]) - sum(used) - lg_pct / 100 * (t1 - t0)
        out["other_cpu_pct"] = max(0.0, 100 * other / (t1 - t0))
    ca, cb = sampler.cmds_at(t0), sampler.cmds_at(t1)
    if ca is not None and cb is not None:
        delta = {k: cb[k] - ca.get(k, 0) for k in cb if cb[k] - ca.get(k, 0) > 0}
        out["redis_commands"] = {k: round(v / delivered, 3) for k, v in sorted(delta.items())}
        out["redis_cmds_per_frame"] = sum(delta.values()) / delivered
        out["evalsha_per_frame"] = delta.get("evalsha", 0.0) / delivered
        out["xread_per_frame"] = delta.get("xread", 0.0) / delivered
    return out


def problems(run: dict[str, Any]) -> list[str]:
    """What went wrong in a run (empty: nothing)."""
    out = run_problems(run)
    if (
        run["setup"] == "redis-2"
        and run["delivered"]
        and run["cross_delivered"] != run["delivered"]
    ):
        out.append(f"only {run['cross_delivered']} of {run['delivered']} crossed processes")
    return out


# --------------------------------------------------------------------------- all runs


def loadgen_script() -> Path:
    """``loadgen_multi.mjs`` in ``benchmarks/.node`` (beside ``ws``, installed by npm ci)."""
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed: the load generator is a Node script")
    if node_relay() is None:
        raise RuntimeError("the Node package `ws` could not be installed (npm ci)")
    script = NODE_DIR / LOADGEN.name
    shutil.copy(LOADGEN, script)
    return script


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM cancels the run as Ctrl-C does: every process started is stopped on the way out
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if redis_server_executable() is None:
        raise RuntimeError("redis-server not found on PATH (Debian package redis-server)")
    raise_nofile(4096)
    script = loadgen_script()
    rev = _git_commit(args.ours_at)
    copy = Path(tempfile.mkdtemp(prefix="bench-scaleout-ours-"))
    try:
        prefix = ours_at(rev, copy)
        return await _run_all(args, script, prefix, rev)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


async def _run_all(
    args: argparse.Namespace, script: Path, prefix: list[str], rev: str
) -> dict[str, Any]:
    plan = scenarios(args)
    rounds = 1 if args.quick else args.rounds
    if args.quick:
        args.join_timeout = min(args.join_timeout, 3.0)
    runs: list[dict[str, Any]] = []
    join_timeouts: list[str] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load0 = CpuTimes.now()
    wall0 = time.monotonic()
    for r in range(rounds):
        order = list(SETUPS) if r % 2 == 0 else list(reversed(SETUPS))
        for scenario in plan:
            for setup in order:
                for attempt in range(3):
                    run = await one_run(setup, scenario, script, prefix, args)
                    if run["status"] != "join-timeout":
                        break
                    join_timeouts.append(f"{setup} {scenario.name} round {r + 1}: {run['detail']}")
                    log(f"  join timeout ({setup}, attempt {attempt + 1}): {run['detail']}")
                run["round"] = r + 1
                runs.append(run)
                cpu = (
                    f"serve {fmt_num(run['serve_us_per_frame'], 1)} µs/f  "
                    f"redis {fmt_num(run['redis_us_per_frame'], 1)} µs/f "
                    f"{fmt_num(run['redis_cmds_per_frame'], 1)} cmd/f"
                )
                label = f"{scenario.name:10} {setup:8}"
                log(run_line(f"{r + 1}/{rounds}", label, run, cpu, problems(run)))
    used = CpuTimes.now() - load0
    memory = await store_memory(2_000 if args.quick else 40_000, 4)
    return {
        "store_memory": memory,
        "when": started,
        "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "server_commit": rev,
        "machine": machine()
        | {"busy_cpu_pct_during_run": 100 * used.machine / (time.monotonic() - wall0)},
        "rounds": rounds,
        "scenarios": [s.__dict__ | {"load": s.load} for s in plan],
        "runs": runs,
        "medians": medians(runs),
        "join_timeouts": join_timeouts,
        "problems": [
            f"{run['setup']} {run['scenario']} round {run['round']}: {', '.join(problems(run))}"
            for run in runs
            if problems(run)
        ],
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario → set-up → the median of each figure over the rounds (counters: worst)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(run["scenario"], {}).setdefault(run["setup"], []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, by_setup in grouped.items():
        for setup, group in by_setup.items():
            m: dict[str, Any] = {"runs": len(group)}
            for key in (*FIGURES, "redis_bytes_per_member"):
                values = [float(g[key]) for g in group if g.get(key) is not None]
                m[key] = statistics.median(values) if values else None
            per_entry = [
                float(g["notice_streams"]["bytes_per_entry"])
                for g in group
                if (g.get("notice_streams") or {}).get("entries")
            ]
            m["notice_bytes_per_entry"] = statistics.median(per_entry) if per_entry else None
            for key in (*CHECKED, "rejected"):
                m[key] = max(int(g.get(key) or 0) for g in group)
            m["delivered"] = min(int(g["delivered"]) for g in group)
            m["cross_delivered"] = min(int(g.get("cross_delivered") or 0) for g in group)
            m["clean"] = all(not problems(g) for g in group)
            out.setdefault(scenario, {})[setup] = m
    return out


async def store_memory(members: int, room_size: int) -> dict[str, Any]:
    """Redis memory per member, measured on the store itself: ``members`` records written
    with the store's own ``CommitRoom`` (as joins write them: node, connection, token
    digest) into rooms of ``room_size`` on a fresh ``redis-server``; ``used_memory``
    after over before, and ``MEMORY USAGE`` of one room hash and of one node's index.

    The store is this environment's ``sansio_signal.adapters.redis_store`` (the working
    tree), not the ``--ours-at`` copy the servers run."""
    from sansio_signal.adapters.redis_store import RedisStore
    from sansio_signal.store import CommitRoom, MemberRecord

    nodes = 50
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            store = RedisStore(client)
            before = int((await client.info("memory"))["used_memory"])
            ops = []
            for i in range(members):
                room, slot = divmod(i, room_size)
                record = MemberRecord(
                    node=f"node-{i % nodes:02d}", conn=1000 + i, token=f"{i:064x}"
                )
                ops.append(
                    CommitRoom(
                        op=i, room=f"room-{room:07d}", expected=slot, put={f"user-{i:07d}": record}
                    )
                )
            for start in range(0, len(ops), 500):
                await store.apply_many(ops[start : start + 500])
            after = int((await client.info("memory"))["used_memory"])
            room_bytes = await client.memory_usage("ss:{room-0000000}:room", samples=0)
            index_bytes = await client.memory_usage("ss:idx:node-00", samples=0)
            index_len = await client.scard("ss:idx:node-00")
        finally:
            await client.aclose()
    return {
        "members": members,
        "room_size": room_size,
        "nodes": nodes,
        "bytes_per_member": (after - before) / members,
        "room_hash_bytes": room_bytes,
        "node_index_bytes_per_member": (index_bytes or 0) / index_len if index_len else None,
    }


def report(results: dict[str, Any]) -> None:
    mach = results["machine"]
    print(
        f"bench_scaleout {results['when']} – {results['ended']}, server at "
        f"{results['server_commit']}; {mach['nproc']} CPUs ({mach['cpu']}), Python "
        f"{mach['python']}, node {mach['node']}; machine busy "
        f"{mach['busy_cpu_pct_during_run']:.0f}% of one CPU over the run (all processes), "
        f"load average {mach['loadavg_1m_at_end']:.2f} at the end"
    )
    print(
        f"medians of {results['rounds']} round(s); 10 rooms x 10 clients; "
        "µs and commands per delivered frame\n"
    )
    rows = [
        [
            scenario,
            setup,
            fmt_num(m["throughput_fps"]),
            fmt_num(m["p50_ms"], 2),
            fmt_num(m["p99_ms"], 2),
            fmt_num(m["serve_us_per_frame"], 1),
            fmt_num(m["redis_us_per_frame"], 1),
            fmt_num(m["redis_cmds_per_frame"], 2),
            fmt_num(m["evalsha_per_frame"], 2),
            fmt_num(m["xread_per_frame"], 3),
            fmt_num(m["loadgen_cpu_pct"]),
            fmt_num(m["other_cpu_pct"]),
            f"{m['lost']}/{m['reordered']}",
            m["cross_delivered"],
        ]
        for scenario, setup, m in median_rows(results["medians"], SETUPS)
    ]
    print_table(
        [
            "scenario",
            "setup",
            "frames/s",
            "p50 ms",
            "p99 ms",
            "serve µs/f",
            "redis µs/f",
            "cmds/f",
            "evalsha/f",
            "xread/f",
            "lg %",
            "other %",
            "lost/reord",
            "crossed",
        ],
        rows,
    )
    notices = [
        m["notice_bytes_per_entry"]
        for by_setup in results["medians"].values()
        for m in by_setup.values()
        if m.get("notice_bytes_per_entry") is not None
    ]
    if notices:
        print(
            f"\nnotice streams: {statistics.median(notices):.0f} B per entry kept "
            "(MEMORY USAGE / XLEN after each run; run figures: redis_bytes_per_member is "
            "used_memory growth while 100 members joined, mostly fixed costs)"
        )
    mem = results.get("store_memory")
    if mem:
        print(
            f"\nRedis memory of the store: {mem['members']:,} members in rooms of "
            f"{mem['room_size']} over {mem['nodes']} nodes: {mem['bytes_per_member']:,.0f} B "
            f"per member (used_memory); one room hash {mem['room_hash_bytes']} B; a node's "
            f"index {fmt_num(mem['node_index_bytes_per_member'])} B per member"
        )
    if results["join_timeouts"]:
        print(f"\njoin phases that never completed (run retried): {len(results['join_timeouts'])}")
        for line in results["join_timeouts"]:
            print("  " + line)
    if results["problems"]:
        print("\nPROBLEMS:")
        for line in results["problems"]:
            print("  " + line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of small scenarios")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=300, help="per client, flat out")
    parser.add_argument("--loads", type=float, nargs="+", default=[2000.0, 5000.0])
    parser.add_argument("--seconds", type=float, default=3.0, help="of each paced run")
    parser.add_argument("--timeout", type=float, default=40.0, help="of one generator run")
    parser.add_argument("--join-timeout", type=float, default=5.0)
    parser.add_argument(
        "--ours-at", metavar="REV", default="HEAD", help="the server's code as of REV"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        results = uvloop.run(run_all(args))
    except ImportError:
        results = asyncio.run(run_all(args))
    print_results(results, report, as_json=args.json)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
