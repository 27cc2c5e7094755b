"""Our relay against a Node ``ws`` relay and a bare Python ``websockets`` relay, in one run.

The load generator is ``loadgen.mjs`` of ``shared/bench`` (Node, ``ws``; copied with
``npm ci`` into ``benchmarks/.node/``, as bench_idle.py does for the Node relay): it is
several times cheaper per frame than any Python client, so it is not the bottleneck of a
Python server (its own CPU is reported, and a warning printed when it nears one core).

Servers, each started fresh for every run, alternating (the order reverses every other
round), ``--rounds`` rounds, medians:

* ``ours``: ``sansio-signal serve --rate-limit 0 --log-level WARNING`` (full validation,
  stamping, limits and metrics; the rate limit, per connection, would drop frames);
* ``ours-info``: the same at ``--log-level INFO`` (the seed's per-frame log line), in the
  flat-out scenarios: what INFO logging costs;
* ``bare``: the bare Python ``websockets`` relay of ``shared/bench`` (no validation);
* ``node``: the Node ``ws`` relay of ``shared/bench``, modelling the seed's server.

Scenarios: flat out (``--rate 0``, 16 frames in flight per client) 10 rooms × 10
clients × 500 ICE frames and 100 rooms × 10 clients × ``--frames-100`` frames; paced
(open loop) 10 × 10 clients at ``--loads`` frames/s in total for ``--paced-seconds``
each, for latency at a given load (a server that falls behind at one load is not run
at the higher ones in that round). Per run: delivered frames/s, p50/p99 latency,
lost/reordered/wrong-sender (must be 0), the server's CPU µs per delivered frame (its
``/proc`` CPU time over the send phase ÷ frames delivered) and the generator's CPU %.
Then bench_idle.py's memory per idle joined connection (``--idle-connections``), unless
``--no-idle``. A plot of throughput and p99 against offered load goes to ``--plot``.

    python benchmarks/bench_relay.py                  # everything, ~11 min
    python benchmarks/bench_relay.py --quick          # 1 round, small scenarios, seconds
    python benchmarks/bench_relay.py --json --save /tmp/relay.json --no-idle
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_idle
from benchmarks.bench_idle import ANY_LISTENING, NODE_DIR, SHARED_BENCH, free_port, node_relay
from benchmarks.harness import (
    CHECKED,
    LG_SATURATED,
    CpuTimes,
    Scenario,
    ServerProcess,
    console_script,
    fmt_num,
    loadgen_report,
    log,
    median_rows,
    print_table,
    profile_table,
    raise_nofile,
    run_figures,
    run_line,
    run_problems,
    serve_argv,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLOT = ROOT / "docs" / "bench-relay.png"
SERVERS = ("ours", "ours-info", "bare", "node")
PLOTTED = ("ours", "bare", "node")
FLAT_ONLY = {"ours-info"}
OTHER_BUSY = 20.0
"""The CPU % (100 = one core) of everything else on the machine that makes a run noisy."""
FIGURES = run_figures("server_cpu_us_per_frame", "server_cpu_pct")


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    if args.quick:
        flat = [Scenario("flat-10x10", 10, 10, 100), Scenario("flat-100x10", 100, 10, 10)]
        loads, seconds = [2000.0], 1.0
    else:
        flat = [
            Scenario("flat-10x10", 10, 10, args.frames_10),
            Scenario("flat-100x10", 100, 10, args.frames_100),
        ]
        loads, seconds = args.loads, args.paced_seconds
    return flat + [Scenario.paced(load, seconds) for load in loads]


# --------------------------------------------------------------------------- set-up


def loadgen_script() -> Path:
    """``loadgen.mjs`` beside the Node relay in ``benchmarks/.node`` (``ws`` installed)."""
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed: the load generator is a Node script")
    if node_relay() is None:
        raise RuntimeError("the Node package `ws` could not be installed (npm ci)")
    script = NODE_DIR / "loadgen.mjs"
    shutil.copy(SHARED_BENCH / "loadgen.mjs", script)
    return script


def ours_at(rev: str, into: Path) -> list[str]:
    """The prefix of :func:`ours_argv` that runs our server as of git revision ``rev``
    (its ``sansio_signal/`` and ``adapters/``, laid out as the installed package in
    ``into``) on this interpreter.

    The editable install runs the working tree, which may change under a run while
    someone works on it; a commit is a fixed, named thing to measure.
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "sansio_signal", "adapters"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "adapters").rename(into / "sansio_signal" / "adapters")
    where = subprocess.run(
        [sys.executable, "-c", "import sansio_signal; print(sansio_signal.__file__)"],
        env=os.environ | {"PYTHONPATH": str(into)},
        cwd=into,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(into)):
        raise RuntimeError(f"--ours-at {rev}: imported {where}, not the copy in {into}")
    # serve_argv's console script path arrives as sys.argv[1]: dropped, then the CLI runs
    return ["env", f"PYTHONPATH={into}"]


def ours_argv(
    prefix: Sequence[str] = (),
    profile: Path | None = None,
    options: Sequence[str] = ("--rate-limit", "0"),
) -> list[str]:
    """``python -m sansio_signal serve`` as :func:`serve_argv` makes it, plus ``options``,
    after ``prefix`` (:func:`ours_at`'s), under cProfile if ``profile``."""
    python: list[str] = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    argv = serve_argv(*options, interpreter=python)
    script = argv.index(console_script("sansio-signal"))
    return [*prefix, *argv[:script], "-m", "sansio_signal", *argv[script + 1 :]]


def server_argvs(ours: list[str]) -> dict[str, list[str]]:
    """Every server's argv; the yardsticks take ``$PORT`` (see :func:`start_server`)."""
    base = bench_idle.server_argvs(True)
    if set(base) != {"ours", "bare", "node"}:
        raise RuntimeError(f"a yardstick is missing (have {sorted(base)}): see {SHARED_BENCH}")
    return {
        "ours": ours,
        "ours-info": [*ours, "--log-level", "INFO"],
        "bare": base["bare"],
        "node": base["node"],
    }


async def start_server(name: str, argv: list[str]) -> ServerProcess:
    if not name.startswith("ours"):
        argv = ["env", f"PORT={free_port()}", *argv]
    server = ServerProcess(argv, name=name, ready=ANY_LISTENING)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    return server


# --------------------------------------------------------------------------- one run


class CpuSampler:
    """The server's cumulative CPU seconds every ``interval`` s, stamped with wall time."""

    def __init__(self, server: ServerProcess, interval: float = 0.02) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.samples.append((time.time(), self.server.cpu_seconds()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def at(self, t: float) -> float | None:
        """CPU seconds at wall time ``t`` (linear between samples; None outside them)."""
        s = self.samples
        for (ta, ca), (tb, cb) in itertools.pairwise(s):
            if ta <= t <= tb:
                return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)
        return None


async def run_loadgen(
    script: Path, url: str, scenario: Scenario, rooms: int, timeout: float
) -> dict[str, Any]:
    """One loadgen process over ``rooms`` of the scenario's rooms; its JSON report
    (``status`` ``loadgen-failed`` if none)."""
    argv = ["node", str(script), f"--url={url}", "--json", "--quiet", f"--timeout={timeout:g}"]
    return await loadgen_report([*argv, *scenario.loadgen_args(rooms)], timeout)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several loadgens' reports as one: counters summed, throughput over the union of
    their send phases, latency percentiles the worst of them (a bound, not a merge)."""
    if len(reports) == 1:
        return reports[0]
    out: dict[str, Any] = {
        "status": next((r["status"] for r in reports if r.get("status") != "ok"), "ok"),
        "parts": reports,
    }
    for key in ("frames_sent", "frames_delivered", "rejected", *CHECKED):
        out[key] = sum(int(r.get(key) or 0) for r in reports)
    starts = [r["send_start_epoch_ms"] for r in reports if r.get("send_start_epoch_ms")]
    ends = [r["send_end_epoch_ms"] for r in reports if r.get("send_end_epoch_ms")]
    if starts and ends and max(ends) > min(starts):
        out["send_start_epoch_ms"], out["send_end_epoch_ms"] = min(starts), max(ends)
        out["throughput_fps"] = out["frames_delivered"] / ((max(ends) - min(starts)) / 1000)
    out["latency_ms"] = {
        p: max((r.get("latency_ms") or {}).get(p) or 0.0 for r in reports) for p in ("p50", "p99")
    }
    out["loadgen"] = {
        "send_phase_cpu_pct": max(
            (r.get("loadgen") or {}).get("send_phase_cpu_pct") or 0.0 for r in reports
        )
    }
    return out


async def one_run(
    name: str,
    argv: list[str],
    scenario: Scenario,
    script: Path,
    loadgens: int,
    timeout: float,
) -> dict[str, Any]:
    """Start the server, run the generator(s) against it, stop it; the figures."""
    try:
        server = await start_server(name, argv)
    except RuntimeError as exc:  # recorded as a problem of this run; the others go on
        return {
            "server": name,
            "scenario": scenario.name,
            "load": scenario.load,
            "status": "server-failed-to-start",
            "server_alive": False,
            "delivered": 0,
            "detail": str(exc)[-500:],
            **dict.fromkeys(FIGURES),
        }
    sampler = CpuSampler(server)
    try:
        sampler.start()
        wall0, cpu0 = time.perf_counter(), CpuTimes.now(server)
        shares = [
            scenario.rooms // loadgens + (i < scenario.rooms % loadgens) for i in range(loadgens)
        ]
        reports = await asyncio.gather(
            *(run_loadgen(script, server.url, scenario, n, timeout) for n in shares if n)
        )
        alive = server.running
        used = CpuTimes.now(server) - cpu0 if alive else None
        wall = time.perf_counter() - wall0
    finally:
        await sampler.stop()
        await server.stop()
    r = merge(list(reports))
    delivered = int(r.get("frames_delivered") or 0)
    start, end = r.get("send_start_epoch_ms"), r.get("send_end_epoch_ms")
    cpu_us = cpu_pct = None
    if start and end and end > start:
        a, b = sampler.at(start / 1000), sampler.at(end / 1000)
        if a is not None and b is not None:
            cpu_pct = 100 * (b - a) / ((end - start) / 1000)
            cpu_us = 1e6 * (b - a) / delivered if delivered else None
    latency = r.get("latency_ms") or {}
    other_pct = None
    if used is not None and used.machine > 0:  # the machine minus server, loadgen(s), us
        lg_cpu = sum(float((p.get("loadgen") or {}).get("cpu_s") or 0) for p in reports)
        other_pct = 100 * max(0.0, used.other - lg_cpu) / wall
    result = {
        "server": name,
        "scenario": scenario.name,
        "load": scenario.load,
        "status": r.get("status"),
        "server_alive": alive,
        "frames_sent": r.get("frames_sent"),
        "delivered": delivered,
        "throughput_fps": r.get("throughput_fps"),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "server_cpu_us_per_frame": cpu_us,
        "server_cpu_pct": cpu_pct,
        "loadgen_cpu_pct": (r.get("loadgen") or {}).get("send_phase_cpu_pct"),
        "other_cpu_pct": other_pct,
        "rejected": r.get("rejected"),
        **{key: r.get(key) for key in CHECKED},
    }
    if r.get("status") != "ok" or not alive:
        result["detail"] = r.get("detail") or server.stderr_tail(500)
    return result


def problems(run: dict[str, Any]) -> list[str]:
    """What went wrong in a run (empty: nothing)."""
    return run_problems(run, alive="server_alive", died="server died", detail_apart=True)


def falls_behind(run: dict[str, Any]) -> bool:
    """A paced run the server did not keep up with (< 90 % of the offered load)."""
    return bool(problems(run)) or (run["throughput_fps"] or 0) < 0.9 * run["load"]


# --------------------------------------------------------------------------- all runs


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM cancels the run as Ctrl-C does, so that every server started is stopped
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        return await _run_all(args, stack)


async def _run_all(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    raise_nofile(4096)
    script = loadgen_script()
    prefix: list[str] = []
    if args.ours_at:
        args.ours_at = _git_commit(args.ours_at)
        copy = Path(tempfile.mkdtemp(prefix="bench-relay-ours-"))
        stack.callback(shutil.rmtree, copy, ignore_errors=True)
        prefix = ours_at(args.ours_at, copy)
    ours = ours_argv(prefix)
    argvs = {k: v for k, v in server_argvs(ours).items() if k in args.servers}
    plan = scenarios(args)
    rounds = 1 if args.quick else args.rounds
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        order = list(argvs) if r % 2 == 0 else list(reversed(argvs))
        behind: set[str] = set()
        for scenario in plan:
            for name in order:
                if (scenario.rate and name in FLAT_ONLY) or name in behind:
                    continue
                code = args.ours_at or server_code()  # as the server starts
                run = await one_run(
                    name, argvs[name], scenario, script, args.loadgens, args.timeout
                )
                run["round"] = r + 1
                run["server_code"] = code
                runs.append(run)
                log(
                    run_line(
                        f"{r + 1}/{rounds}",
                        f"{scenario.name:12} {name:9}",
                        run,
                        f"srv {fmt_num(run['server_cpu_us_per_frame'], 1)} µs/f",
                        problems(run),
                        saturated="generator saturated: a lower bound",
                    )
                )
                if scenario.rate and falls_behind(run):
                    behind.add(name)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": _git_commit(),
        "ours_at": args.ours_at,
        "machine": machine(),
        "rounds": rounds,
        "loadgens": args.loadgens,
        "scenarios": [s.__dict__ | {"load": s.load} for s in plan],
        "runs": runs,
        "medians": medians(runs),
        "server_code_versions": sorted({run["server_code"] for run in runs}),
        "problems": [
            f"{run['server']} {run['scenario']} round {run['round']}: {', '.join(problems(run))}"
            for run in runs
            if problems(run)
        ],
    }
    results["info_cost"] = info_cost(results["medians"])
    if args.profile:
        results["profile"] = await profile(args, prefix, plan[0], script)
    if not args.no_idle and not args.quick:
        results["idle"] = await idle(args, ours_argv(prefix, options=()) if prefix else None)
    return results


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario → server → the median of each figure over the rounds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["scenario"], {}).setdefault(run["server"], {"runs": []})["runs"].append(
            run
        )
    for by_server in out.values():
        for figures in by_server.values():
            group = figures.pop("runs")
            figures["rounds"] = len(group)
            figures["load"] = group[0]["load"]
            figures["delivered"] = statistics.median(r["delivered"] for r in group)
            figures["lost"] = sum(int(r.get("lost") or 0) for r in group)
            figures["clean"] = not any(problems(r) for r in group)
            for key in FIGURES:
                values = [r[key] for r in group if r[key] is not None]
                figures[key] = statistics.median(values) if values else None
    for by_server in out.values():
        node = (by_server.get("node") or {}).get("throughput_fps")
        for figures in by_server.values():
            fps = figures["throughput_fps"]
            figures["vs_node"] = fps / node if fps and node else None
    return out


def info_cost(med: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """scenario → 1 − INFO/WARNING throughput."""
    out: dict[str, float] = {}
    for scenario, by_server in med.items():
        warn = (by_server.get("ours") or {}).get("throughput_fps")
        info = (by_server.get("ours-info") or {}).get("throughput_fps")
        if warn and info:
            out[scenario] = 1 - info / warn
    return out


async def profile(
    args: argparse.Namespace, prefix: list[str], scenario: Scenario, script: Path
) -> dict[str, Any]:
    """One more run of ours, under cProfile: the run's figures and the top functions."""
    path: Path = args.profile
    path.parent.mkdir(parents=True, exist_ok=True)
    run = await one_run(
        "ours-profiled", ours_argv(prefix, path), scenario, script, args.loadgens, args.timeout
    )
    log(f"profiled {scenario.name}: {run['throughput_fps'] or 0:,.0f} f/s under cProfile")
    return {"run": run, "file": str(path), "top": profile_table(path, 30)}


async def idle(args: argparse.Namespace, ours: list[str] | None) -> dict[str, Any]:
    """bench_idle.py's measurement (its lines on stderr), of ``ours`` if given (as
    :func:`ours_at` makes it) instead of the working tree's server."""
    n = args.idle_connections
    _soft, hard = raise_nofile(0)
    limit = hard if hard != -1 else n + 200
    if n + 200 > limit:
        log(f"idle: RLIMIT_NOFILE hard limit {hard}: {limit - 200} connections, not {n}")
        n = limit - 200
    idle_args = argparse.Namespace(
        connections=n,
        room_size=10,
        rounds=args.idle_rounds,
        settle=2.0,
        no_node=False,
        serve_option=[],
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        if ours is not None:  # bench_idle builds ours with its serve_argv(*options)
            stack.enter_context(
                unittest.mock.patch.object(bench_idle, "serve_argv", lambda *o: [*ours, *o])
            )
        result: dict[str, Any] = await bench_idle.run(idle_args)
    return result


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "node": node,
        "loadavg_1m_at_end": os.getloadavg()[0],
    }


def server_code() -> str:
    """A digest of our server's code as it is now (``adapters/``, ``sansio_signal/``).

    The install is editable: a run measures the working tree, which may change between
    runs while someone works on it; each run records this, the report says if it moved.
    """
    digest = hashlib.sha1()
    for folder in ("adapters", "sansio_signal"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _git_commit(rev: str | None = None) -> str:
    """The short hash of ``rev``; without one, of HEAD, marked if the server's code in the
    working tree differs from it."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev or "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    if rev:
        return done.stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "adapters", "sansio_signal"],
        capture_output=True,
        text=True,
    )
    # the server measured is the working tree's (an editable install)
    return done.stdout.strip() + ("+uncommitted server changes" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"\n{results['when']}, commit {results['commit']}"
        + (f", ours as of {results['ours_at']}" if results["ours_at"] else "")
        + f"; {m['cpu']}, {m['nproc']} CPUs, "
        f"Python {m['python']}, node {m['node']}; medians of {results['rounds']} round(s), "
        f"{results['loadgens']} loadgen process(es)"
    )
    rows = []
    for scenario, name, f in median_rows(results["medians"], SERVERS):
        lg = f["loadgen_cpu_pct"]
        rows.append(
            [
                scenario,
                name,
                fmt_num(f["throughput_fps"]),
                fmt_num(f["vs_node"], 2, "×"),
                fmt_num(f["p50_ms"], 2),
                fmt_num(f["p99_ms"], 2),
                fmt_num(f["server_cpu_us_per_frame"], 1),
                fmt_num(f["server_cpu_pct"]),
                fmt_num(lg) + (" !" if lg is not None and lg >= LG_SATURATED else ""),
                fmt_num(f["other_cpu_pct"]),
                "ok" if f["clean"] else "PROBLEM",
            ]
        )
    print_table(
        [
            "scenario",
            "server",
            "frames/s",
            "vs node",
            "p50 ms",
            "p99 ms",
            "srv µs/frame",
            "srv CPU%",
            "lg CPU%",
            "other CPU%",
            "checks",
        ],
        rows,
        align="<<",
    )
    if any(r.endswith(" !") for row in rows for r in row):
        print(
            f"! the load generator used ≥ {LG_SATURATED:g} % of a core: those throughputs are"
            " lower bounds (the server may be faster)"
        )
    busy = [
        f["other_cpu_pct"]
        for by_server in results["medians"].values()
        for f in by_server.values()
        if f["other_cpu_pct"] is not None
    ]
    if busy and max(busy) >= OTHER_BUSY:
        print(
            f"! other work used up to {max(busy):.0f} % of a CPU during the runs (other CPU%):"
            " the machine was shared, the figures are noisy"
        )
    for scenario, cost in results["info_cost"].items():
        print(f"INFO logging cost, {scenario}: {100 * cost:.0f} % of throughput (1 − INFO/WARNING)")
    idle_r = results.get("idle")
    if idle_r:
        per = idle_r["kib_per_connection"]
        print(
            f"idle: {idle_r['connections']:,} joined connections, KiB each: "
            + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
        )
    if results.get("profile"):
        prof = results["profile"]
        print(
            f"\nours under cProfile, {prof['run']['scenario']}: "
            f"{prof['run']['throughput_fps'] or 0:,.0f} frames/s, "
            f"{prof['run']['delivered']:,} frames; top by own time ({prof['file']}):"
        )
        print(prof["top"])
    if len(results["server_code_versions"]) > 1:
        print(
            "! our server's code changed during the run (digests "
            + ", ".join(results["server_code_versions"])
            + "): its rounds measured different code"
        )
    for line in results["problems"]:
        print(f"!!! PROBLEM: {line}")


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and p99 against offered load, one line per server (paced runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for name in PLOTTED:
        points = sorted(
            (f["load"], f["throughput_fps"], f["p99_ms"])
            for by_server in results["medians"].values()
            if (f := by_server.get(name)) and f["load"] and f["throughput_fps"]
        )
        if not points:
            continue
        loads = [p[0] for p in points]
        top.plot(loads, [p[1] for p in points], marker="o", label=name)
        bottom.plot(loads, [p[2] for p in points], marker="o", label=name)
    if results["medians"]:
        loads_all = sorted({s["load"] for s in results["scenarios"] if s["load"]})
        if loads_all:
            top.plot(loads_all, loads_all, color="grey", linestyle=":", label="offered")
    top.set_ylabel("delivered frames/s")
    top.set_title(
        f"relay under paced load (10 rooms × 10 clients), {results['when'][:10]}, "
        f"ours at {results['ours_at'] or results['commit']}",
        fontsize=9,
    )
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("offered frames/s (total)")
    bottom.set_xscale("log")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n\n")
    parser = argparse.ArgumentParser(
        description=doc[0],
        epilog="\n\n".join(doc[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 round, small scenarios, no idle")
    parser.add_argument("--frames-10", type=int, default=500, help="per client, 10×10 (500)")
    parser.add_argument("--frames-100", type=int, default=100, help="per client, 100×10 (100)")
    parser.add_argument(
        "--loads",
        type=float,
        nargs="+",
        default=[2000.0, 5000.0, 10000.0, 20000.0, 40000.0, 80000.0],
        help="paced total frames/s (default 2000 5000 10000 20000 40000 80000)",
    )
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="per paced run (3)")
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="default: all"
    )
    parser.add_argument(
        "--loadgens", type=int, default=1, help="loadgen processes splitting the rooms (1)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="then run ours once more under cProfile (the first scenario), dump to FILE",
    )
    parser.add_argument(
        "--ours-at",
        metavar="REV",
        help="run our server as of this git revision (default: the working tree)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per loadgen run, s (60)")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-memory part")
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--idle-rounds", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"(default {DEFAULT_PLOT})")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--save", type=Path, help="also write the JSON results to this file")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    args = parser.parse_args(argv)
    results = asyncio.run(run_all(args))
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_plot:
        plot(results, args.plot)
        results["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
        if not args.no_plot:
            print(f"plot: {args.plot}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
