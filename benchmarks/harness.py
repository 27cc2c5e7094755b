"""What the benchmarks share: one implementation of each piece, imported by all of them.

* :class:`ServerProcess` — a subprocess (``sansio-signal serve`` from :func:`serve_argv`,
  or any argv) that prints one ready line, by default ``listening on ws://127.0.0.1:PORT/``
  on a free loopback port; stopped with SIGTERM, then SIGKILL; its pid, CPU time, RSS
  and file-descriptor limit are read from ``/proc``.
* :func:`raise_nofile` — this process's file-descriptor limit raised for many sockets.
* :class:`CpuTimes` — CPU seconds of the watched processes, of this process and of the
  whole machine, so that a phase can say who kept the CPUs busy.
* :class:`Member` — a ``websockets`` client joined to a room with the protocol's
  ``join-room`` frame, back once the server has answered with its own
  ``user-joined-room``; it sends and receives frames. :func:`connect_client` opens a
  connection with the same options without joining.
* :class:`Scenario` — one load generator scenario (rooms × clients × frames, a rate);
  :func:`loadgen_report` runs a load generator and parses its JSON report; :data:`CHECKED`
  — its counters that must stay 0; :func:`run_problems` — what went wrong in a run;
  :func:`run_figures` — the figures of a run; :func:`run_line` — the progress line of
  a run; :data:`LG_SATURATED`.
* :func:`percentile` — nearest-rank percentile of sorted samples.
* :func:`scrape_metrics` — ``GET /metrics``, the Prometheus text as ``sample → value``;
  :func:`http_get_json` — any other ``GET`` (``/healthz``).
* :func:`print_table` — the one report-table printer; :func:`print_results` — a report or
  ``--json``; :func:`profile_table` — the top of a cProfile by own time;
  :func:`median_rows` — the medians of a report, scenario by scenario, in a given order;
  :func:`fmt_num` — a figure or ``—``; :func:`log` — a progress line on stderr.
* :data:`HOST`, :data:`ICE_CANDIDATE` / :data:`CANDIDATE` (a Chrome srflx candidate, as a
  dict and as the JSON member the load generators splice into their frames).

The benchmarks are run as scripts (``python benchmarks/bench_x.py``) and imported as the
package ``benchmarks`` (by the tests); either way they import this module as
``benchmarks.harness``.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import re
import resource
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Data

from sansio_signal import Channel, JoinRoom, encode

HOST = "127.0.0.1"
ROOMS_CHANNEL = Channel.ROOMS.value
SIGNALING_CHANNEL = Channel.SIGNALING.value
CHAT_CHANNEL = Channel.CHAT.value

ICE_CANDIDATE: dict[str, Any] = {
    "candidate": (
        "candidate:3471623853 1 udp 1686052607 203.0.113.45 61539 typ srflx "
        "raddr 192.168.1.23 rport 61539 generation 0 ufrag 7Xq2 network-id 1 network-cost 10"
    ),
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "7Xq2",
}
"""A Chrome-style srflx ICE candidate, as a ``webrtc-ice`` frame carries it."""
CANDIDATE = '"candidate":' + json.dumps(ICE_CANDIDATE, separators=(",", ":"))
""":data:`ICE_CANDIDATE` as a compact JSON object member, for frames built from strings."""

LISTENING = re.compile(r"listening on (ws://127\.0\.0\.1:\d+/)")
"""The ready line of ``sansio-signal serve`` (and of the yardstick relays of ``shared/bench``)."""


# --------------------------------------------------------------------------- file descriptors


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit; children inherit it.

    Returns the new (soft, hard) pair; raises when even the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(
            f"RLIMIT_NOFILE hard limit is {hard}, {needed} file descriptors are needed "
            "(raise it with `ulimit -Hn` as root or in limits.conf)"
        )
    return soft, hard


# --------------------------------------------------------------------------- processes


def console_script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (else from ``PATH``)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name!r} not found next to {sys.executable} nor on PATH")
    return found


def serve_argv(*options: str, interpreter: Sequence[str] = (sys.executable,)) -> list[str]:
    """``sansio-signal serve`` on :data:`HOST`, a free port, ``WARNING`` logs, plus ``options``.

    ``interpreter`` runs the console script: this Python by default, or for example
    ``[sys.executable, "-m", "cProfile", "-o", FILE]``.
    """
    return [
        *interpreter,
        console_script("sansio-signal"),
        "serve",
        "--host",
        HOST,
        "--port",
        "0",
        "--log-level",
        "WARNING",
        *options,
    ]


class ServerProcess:
    """A subprocess that prints one ready line on stdout, then runs until stopped.

    :meth:`start` waits for the first line of stdout and checks it against ``ready``
    (default :data:`LISTENING`); its first group, if the pattern has one, becomes
    :attr:`url`. ``cpu`` pins the process to that CPU. stderr goes to a temporary file
    (:meth:`stderr_tail`). :meth:`stop` sends SIGTERM, waits, then kills, and returns what
    the process printed on stdout after its ready line. Also an async context manager.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "server",
        cpu: int | None = None,
        ready: re.Pattern[str] = LISTENING,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.cpu = cpu
        self.ready = ready
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            # not the project root: there the source directory ``sansio_signal/`` would
            # shadow the editable install's package (which maps ``adapters/`` into it)
            cwd=tempfile.gettempdir(),
        )
        if self.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no ready line within {timeout:g} s") from None
        match = self.ready.search(line.decode(errors="replace"))
        if match is None:
            raise RuntimeError(
                f"{self.name}: unexpected first line {line!r}; stderr: {self.stderr_tail()}"
            )
        self.url = match.group(1) if self.ready.groups else ""

    async def stop(self, timeout: float = 10.0) -> str:
        """Terminate (after ``timeout`` s: kill) the process; the rest of its stdout."""
        out = b""
        proc = self.proc
        if proc is not None:
            if proc.returncode is None:
                proc.terminate()
            try:
                if proc.stdout is not None:  # to EOF: the process has exited
                    out = await asyncio.wait_for(proc.stdout.read(), timeout)
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._stderr.close()
        return out.decode(errors="replace")

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux ``/proc/PID/stat``)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int]:
        """``VmRSS`` (resident now) and ``VmHWM`` (peak resident), KiB, ``/proc/PID/status``."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out

    def rss_kib(self) -> int:
        """Resident memory now, KiB."""
        return self.memory_kib()["VmRSS"]

    def open_files_limit(self) -> int | None:
        """The soft ``Max open files`` of the process (``/proc/PID/limits``; None: unlimited)."""
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
        return None

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]


def _machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (``/proc/stat``; 0 if unavailable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds at one moment (:meth:`now`), or used between two (``later - earlier``).

    ``processes``: each watched process, in the order given; ``own``: this process;
    ``machine``: all CPUs busy with anything (0 where ``/proc/stat`` is unavailable).
    """

    processes: tuple[float, ...]
    own: float
    machine: float

    @classmethod
    def now(cls, *processes: ServerProcess) -> CpuTimes:
        return cls(
            tuple(p.cpu_seconds() for p in processes), time.process_time(), _machine_busy_seconds()
        )

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(
            tuple(a - b for a, b in zip(self.processes, earlier.processes, strict=True)),
            self.own - earlier.own,
            self.machine - earlier.machine,
        )

    @property
    def other(self) -> float:
        """Of a difference: the CPU seconds used by everything else on the machine."""
        return max(0.0, self.machine - sum(self.processes) - self.own)


# --------------------------------------------------------------------------- clients


CONNECT_OPTIONS: dict[str, Any] = {
    "compression": None,
    "ping_interval": None,
    "proxy": None,
    "max_size": 2**20,
    "open_timeout": 10,
    "close_timeout": 2,
}
"""How the benchmarks' clients connect: no permessage-deflate, no keepalive pings, no
proxy from the environment."""


def connect_client(url: str, **options: Any) -> connect:
    """A ``websockets`` client connection with :data:`CONNECT_OPTIONS`, ``options`` on top."""
    return connect(url, **(CONNECT_OPTIONS | options))


def join_frame(room: str, user: str) -> str:
    """The protocol's ``join-room`` frame."""
    return encode(JoinRoom(room_id=room, user_id=user))


class Member:
    """A WebSocket client joined to a room: ``member = await Member.join(url, room, user)``.

    It sends and receives frames (``send``, ``recv``, ``async for frame in member``);
    :attr:`ws` is the ``websockets`` connection itself.
    """

    def __init__(self, ws: ClientConnection, room: str, user: str) -> None:
        self.ws = ws
        self.room = room
        self.user = user
        self.existing: list[str] = []
        """The ``existingParticipants`` of this member's own ``user-joined-room``."""

    @classmethod
    async def join(cls, url: str, room: str, user: str, **options: Any) -> Member:
        """Connect (:func:`connect_client` with ``options``), send ``join-room`` and wait
        for the server's ``user-joined-room`` of this user. Bound it with
        :func:`asyncio.timeout`."""
        member = cls(await connect_client(url, **options), room, user)
        await member.send(join_frame(room, user))
        joined = await member.wait_joined(user)
        member.existing = [str(u) for u in joined.get("existingParticipants") or ()]
        return member

    async def wait_joined(self, user: str) -> dict[str, Any]:
        """Read frames until the ``user-joined-room`` of ``user``; it, decoded. The frames
        read before it are dropped."""
        while True:
            frame = await self.ws.recv()
            if isinstance(frame, str) and '"user-joined-room"' in frame:
                obj = json.loads(frame)
                if obj.get("type") == "user-joined-room" and obj.get("userId") == user:
                    return dict(obj)

    async def send(self, frame: str | Mapping[str, Any]) -> None:
        """Send a frame: a string as it is, a mapping as compact JSON."""
        if not isinstance(frame, str):
            frame = json.dumps(frame, separators=(",", ":"))
        await self.ws.send(frame)

    async def recv(self) -> Data:
        return await self.ws.recv()

    def __aiter__(self) -> AsyncIterator[Data]:
        """Every frame until the connection closes (then the iteration ends)."""
        return self.ws.__aiter__()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


# --------------------------------------------------------------------------- HTTP


def http_url(server_url: str, path: str) -> str:
    """``path`` on the server of ``server_url`` (``ws://HOST:PORT/`` → ``http://HOST:PORT/path``)."""
    base = server_url.replace("ws://", "http://", 1)
    return base.rstrip("/") + "/" + path.lstrip("/")


def http_get_json(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    """``GET url`` without any proxy: (status, decoded JSON body or the raw text)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status, body = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def scrape_metrics(url: str, timeout: float = 10.0) -> dict[str, float]:
    """``GET /metrics`` of the server at ``url`` (its ``ws://`` or ``http://`` base URL).

    Every sample of the Prometheus text, keyed as written before its value:
    ``sansio_signal_refusals_total{reason="rate-limited"}`` → 3.0. Blocking; from a
    coroutine use ``await asyncio.to_thread(scrape_metrics, url)``.
    """
    endpoint = http_url(url, "metrics")
    status, body = http_get_json(endpoint, timeout)
    if status != 200 or not isinstance(body, str):
        raise RuntimeError(f"GET {endpoint}: {status}")
    out: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        labels_end = line.rfind("}")
        name_end = labels_end + 1 if labels_end >= 0 else line.index(" ")
        out[line[:name_end]] = float(line[name_end:].split()[0])
    return out


# --------------------------------------------------------------------------- load generators


CHECKED = ("lost", "reordered", "duplicates", "wrong_sender", "wrong_room", "misrouted")
"""The load generators' counters that must stay 0 (``loadgen.mjs``, ``loadgen_multi.mjs``)."""
LG_SATURATED = 90.0
"""The generator's send-phase CPU % (100 = one core) from which its figure is a lower bound."""


@dataclass(frozen=True)
class Scenario:
    """What a load generator run does: ``rooms`` × ``per_room`` clients, each sending
    ``frames`` frames at ``rate``."""

    name: str
    rooms: int
    per_room: int
    frames: int
    rate: float = 0.0
    """Frames/s per client; 0: flat out (16 in flight per client)."""

    @classmethod
    def paced(cls, load: float, seconds: float, rooms: int = 10, per_room: int = 10) -> Scenario:
        """``paced-LOAD``: ``load`` frames/s in all, open loop, for about ``seconds``."""
        rate = load / (rooms * per_room)
        return cls(f"paced-{load:g}", rooms, per_room, max(1, round(rate * seconds)), rate)

    @property
    def clients(self) -> int:
        return self.rooms * self.per_room

    @property
    def load(self) -> float:
        """Offered frames/s in total (0: flat out)."""
        return self.rate * self.clients

    def loadgen_args(self, rooms: int | None = None) -> list[str]:
        """The generator's options for this scenario (over ``rooms`` rooms if given)."""
        return [
            f"--rooms={self.rooms if rooms is None else rooms}",
            f"--per-room={self.per_room}",
            f"--frames={self.frames}",
            f"--rate={self.rate:g}",
        ]


async def loadgen_report(argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a load generator (``argv``) that prints one JSON report: the report, or
    ``{"status": "loadgen-failed", "detail": <its stderr's tail>}`` if it printed none.
    Killed when it has not exited ``timeout`` + 15 s after it started."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 15)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        return {"status": "loadgen-failed", "detail": err.decode(errors="replace")[-500:]}
    return report


def run_problems(
    run: Mapping[str, Any],
    *,
    alive: str = "alive",
    died: str = "a server died",
    detail_apart: bool = False,
) -> list[str]:
    """What went wrong in a run's figures (empty: nothing): a counter of :data:`CHECKED`
    or ``rejected`` not 0, a ``status`` not ``ok`` (with the run's ``detail``; apart,
    before it, if ``detail_apart``), ``run[alive]`` false (``died``), nothing delivered."""
    out = [f"{key}={run[key]}" for key in (*CHECKED, "rejected") if run.get(key)]
    if detail_apart and run.get("detail"):
        out.append(f"detail: {run['detail'][-200:]!r}")
    if run["status"] != "ok":
        why = "" if detail_apart else f": {str(run.get('detail'))[-200:]}"
        out.append(f"status={run['status']}{why}")
    if not run[alive]:
        out.append(died)
    if not run["delivered"]:
        out.append("nothing delivered")
    return out


def run_figures(*own: str) -> tuple[str, ...]:
    """The figures of a run of which a report shows medians: throughput, p50 and p99
    latency, the benchmark's ``own`` (what the servers' CPU does per frame), the
    generator's CPU % and everything else's (the figures :func:`run_line` shows too)."""
    return ("throughput_fps", "p50_ms", "p99_ms", *own, "loadgen_cpu_pct", "other_cpu_pct")


def run_line(
    done: str,
    label: str,
    run: Mapping[str, Any],
    cpu: str,
    flags: Sequence[str],
    *,
    saturated: str = "generator saturated",
) -> str:
    """The progress line of a run: ``round {done} {label}``, throughput, p50/p99, ``cpu``
    (the servers' share), the generator's and everything else's CPU %, ``saturated`` when
    the generator neared a core (:data:`LG_SATURATED`), and the run's problems (``flags``)."""
    lg = run["loadgen_cpu_pct"] or 0.0
    return (
        f"round {done} {label} "
        f"{run['throughput_fps'] or 0:9,.0f} f/s  p50 {run['p50_ms']} ms  "
        f"p99 {run['p99_ms']} ms  {cpu}  lg {lg:.0f}%  other {fmt_num(run['other_cpu_pct'])}%"
        + (f"  ({saturated})" if lg >= LG_SATURATED else "")
        + (f"  !!! {', '.join(flags)}" if flags else "")
    )


def log(*parts: object) -> None:
    """A progress line on stderr (stdout is the report's, or the ``--json``)."""
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank ``pct`` percentile of ascending ``sorted_values`` (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


# --------------------------------------------------------------------------- reports


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    align: str = "",
    indent: str = "",
    file: TextIO | None = None,
) -> None:
    """Print ``rows`` under ``headers``, each column as wide as its widest cell.

    Cells are printed with ``str()`` (format numbers first: ``f"{x:.2f}"``). ``align``
    has one ``<`` (left) or ``>`` (right) per column; columns it does not cover are left
    aligned if first, right aligned otherwise. Columns are two spaces apart, every line
    starts with ``indent``, trailing spaces are dropped.
    """
    table = [[str(cell) for cell in headers]]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row of {len(row)} cells under {len(headers)} headers: {row!r}")
        table.append([str(cell) for cell in row])
    sides = [align[i] if i < len(align) else ("<" if i == 0 else ">") for i in range(len(headers))]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    for line in table:
        cells = [
            f"{cell:{side}{width}}" for cell, side, width in zip(line, sides, widths, strict=True)
        ]
        print((indent + "  ".join(cells)).rstrip(), file=file or sys.stdout)


def fmt_num(x: float | None, digits: int = 0, suffix: str = "") -> str:
    """``x`` with thousands separators, ``digits`` decimals and ``suffix``; ``—`` for None."""
    return "—" if x is None else f"{x:,.{digits}f}{suffix}"


def median_rows(
    medians: Mapping[str, Mapping[str, dict[str, Any]]], names: Iterable[str]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(scenario, name, figures) of ``medians`` (scenario → name → figures), scenario by
    scenario, each in the order of ``names`` (those a scenario has)."""
    order = list(names)
    for scenario, by_name in medians.items():
        for name in order:
            figures = by_name.get(name)
            if figures is not None:
                yield scenario, name, figures


def print_results(
    results: dict[str, Any], report: Callable[[dict[str, Any]], None], *, as_json: bool
) -> None:
    """A benchmark's output: ``results`` as one indented JSON object, or its ``report``."""
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


def profile_table(stats: str | Path | cProfile.Profile, top: int = 25) -> str:
    """The ``top`` functions of a cProfile (a dump file or a profiler), by own time."""
    buf = io.StringIO()
    loaded = pstats.Stats(str(stats) if isinstance(stats, Path) else stats, stream=buf)
    loaded.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = buf.getvalue().splitlines()
    # keep the header line of the table and the rows; drop pstats' preamble
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(line.rstrip() for line in lines[start:] if line.strip())
