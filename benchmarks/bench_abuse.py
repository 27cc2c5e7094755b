"""What abuse costs a well-behaved client: round trips of a pair during each kind of abuse.

What is measured
----------------
One ``sansio-signal serve --port 0 --max-connections-per-ip 50 --allowed-origin
http://good.example`` process (every other limit at its default: 50 frames/s per
connection, burst 200, 20 error replies in 10 s close with 1008, frames up to 65,536
bytes, 4 MiB send buffer). In this process, a **well-behaved pair**: two ``websockets``
clients, ``pair-a`` and ``pair-b``, in room ``pair-room``. ``pair-a`` sends a
``webrtc-ice`` frame (a Chrome srflx candidate, ~330 bytes, plus ``"abuse":[seq,
t_ns]``) to ``pair-b`` on a fixed schedule (``--rate``, default 20 round trips/s, open
loop: a late reply does not delay the next send); ``pair-b`` echoes it back to
``pair-a`` as a ``webrtc-ice`` frame; ``pair-a`` takes the round-trip time on arrival
(``perf_counter_ns``, one clock). A frame not back within a drain period after the phase
is **lost** (must be 0); replies are also checked for sender and order.

Phases of ``--seconds`` (default 5) round trips each, alternating a **baseline** (no
abuse) and one **scenario**, each scenario's abuser a separate process started by this
benchmark (``bench_abuse.py --abuser KIND``), so that it competes for the CPUs like a
real attacker would:

* ``flood`` — 10 connections, each in a room of its own, sending small chat messages as
  fast as they can; the bucket (burst 200, 50/s) answers ``rate-limited``, the 20th
  error reply closes with 1008; each reconnects and starts again;
* ``oversize`` — 4 connections sending one chat frame of 70,000 bytes (over the limit:
  ``frame-too-large`` + 1009) or 200,000 bytes (over twice the limit: websockets cuts it
  off, 1009), reconnecting after each close;
* ``garbage`` — 4 connections sending invalid JSON, non-object JSON, binary frames,
  unknown channels and incomplete frames as fast as they can (error replies, then 1008
  after 20), reconnecting;
* ``churn`` — one address opening WebSocket connections until it is refused (HTTP 429;
  the pair holds 2 of the 50), then 4 workers that each close one held connection, open
  one and try two more, in a loop;
* ``origin`` — 4 workers opening upgrades with a foreign ``Origin`` (``null``, a foreign
  site, two ``Origin`` headers) as fast as they can: HTTP 403;
* ``slow`` — a reader that joins ``pair-room`` and never reads (16 KiB receive buffer,
  one-frame client queue) while two accomplices in the same room chat (small messages,
  5/s each) and send it 60 KB offers (40/s each, under the rate limit): the server's
  queue for it fills and it is closed with 1013; the abuser then opens a new one.

Each scenario phase: the abuser starts and reports ``ready`` once its abuse is under
way; after ``--warmup`` seconds the pair measures for ``--seconds``; the abuser is
stopped (it closes its connections cleanly) and the server's ``/metrics`` is scraped
again: the refusals counted (``sansio_signal_refusals_total{reason}``, also
``errors_total`` and ``closes_total``) over the abuser's whole life. Before every phase
the benchmark waits until ``/healthz`` shows only the pair's two connections.

Order: B S1 B S2 ... S6 B, then (``--rounds`` > 1) S6 B S5 B ... S1 B, ...; every
scenario phase sits between two baseline phases, and its ratios are taken against
those two neighbours pooled (the nearest baselines in time). Also reported per phase:
the CPU share of the server, the abuser, this process and everything else
(``/proc``), and how late the pair's sends were against their schedule. Everything
runs on 127.0.0.1 and stops by itself; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    CANDIDATE,
    CHAT_CHANNEL,
    HOST,
    SIGNALING_CHANNEL,
    CpuTimes,
    Member,
    ServerProcess,
    connect_client,
    http_get_json,
    http_url,
    join_frame,
    percentile,
    print_results,
    print_table,
    scrape_metrics,
    serve_argv,
)

PAIR_ROOM = "pair-room"
PAIR_A, PAIR_B = "pair-a", "pair-b"
MAX_PER_IP = 50
GOOD_ORIGIN = "http://good.example"
SCENARIOS = ("flood", "oversize", "garbage", "churn", "origin", "slow")
EXPECTED: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "flood": ("rate-limited", "abuse-close"),
    "oversize": ("frame-too-large",),
    "garbage": ("abuse-close",),
    "churn": ("per-ip-limit",),
    "origin": ("bad-origin",),
    "slow": ("slow-consumer",),
}
"""The refusal reasons each scenario is meant to provoke."""
ABUSE = re.compile(r'"abuse":\[(\d+),(\d+)\]')
METRIC = re.compile(
    r'^sansio_signal_(refusals|errors|closes|frames_in)_total\{(?:reason|code|type)="([^"]*)"\}$'
)
READY = re.compile(r"^ready$")
QUICK: dict[str, Any] = {"open_timeout": 5, "close_timeout": 1}
"""Every client here gives up sooner than the harness's default."""


def _client(url: str, **options: Any) -> connect:
    """A client connection as :func:`connect_client` opens it, with :data:`QUICK` timeouts."""
    return connect_client(url, **(QUICK | options))


# --------------------------------------------------------------------------- abusers


class Abuser:
    """One abuse scenario, run in its own process until SIGTERM; tallies what it saw."""

    def __init__(self, url: str, room: str) -> None:
        self.url = url
        self.room = room
        self.stats: Counter[str] = Counter()
        self.ready = asyncio.Event()

    def closed(self, ws: ClientConnection) -> None:
        self.stats[f"closed_{ws.close_code}"] += 1

    def refused(self, exc: BaseException) -> None:
        if isinstance(exc, InvalidStatus):
            self.stats[f"http_{exc.response.status_code}"] += 1
        else:
            self.stats[f"connect_error_{type(exc).__name__}"] += 1

    async def connection(self) -> ClientConnection:
        """A new connection to the server, retried (after a short pause, so a refusing
        server is not spun on) until one is accepted; refusals are counted."""
        while True:
            try:
                ws = await _client(self.url)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.refused(exc)
                await asyncio.sleep(0.05)
                continue
            self.stats["connections"] += 1
            return ws

    async def drain(self, ws: ClientConnection) -> None:
        """Read and count what the server sends, so this client is no slow consumer."""
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                if isinstance(frame, str) and '"type":"error"' in frame:
                    self.stats["error_replies"] += 1

    async def run(self, kind: str) -> None:
        workers: dict[str, Callable[[], list[Awaitable[None]]]] = {
            "flood": lambda: [self.flood(i) for i in range(10)],
            "oversize": lambda: [self.oversize(i) for i in range(4)],
            "garbage": lambda: [self.garbage(i) for i in range(4)],
            "churn": lambda: [self.churn()],
            "origin": lambda: [self.origin(i) for i in range(4)],
            "slow": lambda: [self.slow()],
        }
        tasks = [asyncio.ensure_future(w) for w in workers[kind]()]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        ready = asyncio.ensure_future(self.ready.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([ready, stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if self.ready.is_set():
            print("ready", flush=True)
            await stopped
        ready.cancel()
        for task in tasks:
            task.cancel()  # each closes its connections on the way out
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        for task in tasks:
            exc = task.exception() if task.done() and not task.cancelled() else None
            if exc is not None:
                self.stats[f"crashed_{type(exc).__name__}"] += 1
                print(f"abuser task crashed: {exc!r}", file=sys.stderr)
        print(json.dumps(dict(sorted(self.stats.items()))), flush=True)

    # -- flood: valid frames as fast as possible

    async def flood(self, i: int) -> None:
        frame = json.dumps({"channel": CHAT_CHANNEL, "type": "chat-message", "text": "flood"})
        while True:
            ws = await self.connection()
            reader = asyncio.create_task(self.drain(ws))
            try:
                await ws.send(join_frame(f"flood-{i}", f"flood{i}"))
                self.ready.set()
                for n in itertools.count(1):
                    await ws.send(frame)
                    self.stats["frames_sent"] += 1
                    if n % 16 == 0:
                        await asyncio.sleep(0)  # let the reader and the others run
            except ConnectionClosed:
                self.closed(ws)
            finally:
                reader.cancel()
                await ws.close()

    # -- oversize: one frame over the limit per connection

    async def oversize(self, i: int) -> None:
        head = '{"channel":"' + CHAT_CHANNEL + '","type":"chat-message","text":"'
        frames = [head + "x" * (size - len(head) - 2) + '"}' for size in (70_000, 200_000)]
        for n in itertools.count(i):
            ws = await self.connection()
            try:
                await ws.send(frames[n % 2])
                self.stats[f"sent_{len(frames[n % 2])}_bytes"] += 1
                self.ready.set()
                async with asyncio.timeout(5):
                    async for frame in ws:
                        if isinstance(frame, str) and '"type":"error"' in frame:
                            self.stats["error_replies"] += 1
            except ConnectionClosed:
                pass
            except TimeoutError:
                self.stats["not_closed_within_5s"] += 1
            finally:
                await ws.close()
                self.closed(ws)

    # -- garbage: bad input as fast as possible

    async def garbage(self, i: int) -> None:
        frames: list[str | bytes] = [
            "{not json",
            "[1, 2, 3]",
            b"\x00\xffbinary\x01",
            '{"channel":"nope","type":"x"}',
            '{"channel":"webrtc-signaling","type":"webrtc-ice"}',
            "null",
            '{"channel":"webrtc-dashboard-rooms","type":"join-room","roomId":"../x"}',
        ]
        while True:
            ws = await self.connection()
            reader = asyncio.create_task(self.drain(ws))
            try:
                for n in itertools.count(i):
                    await ws.send(frames[n % len(frames)])
                    self.stats["frames_sent"] += 1
                    self.ready.set()
                    if n % 16 == 0:
                        await asyncio.sleep(0)
            except ConnectionClosed:
                self.closed(ws)
            finally:
                reader.cancel()
                await ws.close()

    # -- churn: more connections from one address than allowed

    async def _open(self, held: list[ClientConnection]) -> bool:
        try:
            ws = await _client(self.url)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self.refused(exc)
            return False
        self.stats["accepted"] += 1
        held.append(ws)
        return True

    async def churn(self) -> None:
        held: list[ClientConnection] = []
        try:
            while await self._open(held):  # fill the address's quota
                if len(held) > 2 * MAX_PER_IP:
                    raise RuntimeError("the per-address limit does not hold")
            self.stats["held_at_limit"] = len(held)
            self.ready.set()

            async def worker() -> None:
                while True:
                    if held:
                        await held.pop(0).close()
                        self.stats["closed_by_us"] += 1
                    for _ in range(3):  # the first usually takes the free place
                        await self._open(held)

            await asyncio.gather(*(worker() for _ in range(4)))
        finally:
            await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)

    # -- origin: upgrades from foreign pages

    async def origin(self, i: int) -> None:
        variants: list[dict[str, Any]] = [
            {"origin": Origin("https://evil.example")},
            {"origin": Origin("null")},
            {"origin": Origin("http://good.example.evil")},
            {"additional_headers": [("Origin", GOOD_ORIGIN), ("Origin", "https://evil.example")]},
        ]
        for n in itertools.count(i):
            try:
                ws = await _client(self.url, **variants[n % len(variants)])
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.refused(exc)
                self.ready.set()
                continue
            self.stats["accepted_foreign_origin"] += 1  # must stay 0
            await ws.close()

    # -- slow: a member of the pair's room that never reads

    async def slow(self) -> None:
        left: dict[str, asyncio.Event] = {}
        target: list[str] = []  # the current slow reader's id, while it is in the room
        joined = asyncio.Event()

        async def watch(ws: ClientConnection) -> None:
            with contextlib.suppress(ConnectionClosed):
                async for frame in ws:
                    if (
                        not isinstance(frame, str)
                        or '"channel":"webrtc-dashboard-rooms"' not in frame
                    ):
                        if isinstance(frame, str) and '"type":"error"' in frame:
                            self.stats["error_replies"] += 1
                        continue
                    obj = json.loads(frame)
                    user = obj.get("userId")
                    if obj.get("type") == "user-left-room" and user in left:
                        left[user].set()

        async def talker(k: int) -> None:
            user = f"abuse-talker{k}"
            sdp = "a=x-pad:" + "y" * 60_000
            chat = json.dumps(
                {"channel": CHAT_CHANNEL, "type": "chat-message", "text": f"hi from {k}"}
            )
            loop = asyncio.get_running_loop()
            while True:
                ws = await _client(self.url)
                reader = asyncio.create_task(watch(ws))
                try:
                    await ws.send(join_frame(self.room, user))
                    joined.set()
                    next_at = loop.time()
                    for n in itertools.count():
                        next_at += 1 / 40
                        await asyncio.sleep(max(0.0, next_at - loop.time()))
                        if n % 8 == 0:
                            await ws.send(chat)
                            self.stats["chat_sent"] += 1
                        if target:
                            offer = {"type": "offer", "sdp": sdp}
                            await ws.send(
                                json.dumps(
                                    {
                                        "channel": SIGNALING_CHANNEL,
                                        "type": "webrtc-offer",
                                        "toUserId": target[0],
                                        "offer": offer,
                                    }
                                )
                            )
                            self.stats["offers_sent"] += 1
                except ConnectionClosed:
                    self.closed(ws)
                finally:
                    reader.cancel()
                    await ws.close()

        talkers = [asyncio.create_task(talker(k)) for k in range(2)]
        try:
            await joined.wait()
            for n in itertools.count():
                user = f"abuse-slow{n}"
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (HOST, _port(self.url)))
                left[user] = asyncio.Event()
                async with asyncio.timeout(10):  # its own user-joined-room; no more reads
                    member = await Member.join(
                        self.url, self.room, user, sock=sock, max_queue=1, **QUICK
                    )
                self.stats["slow_joined"] += 1
                t0 = time.perf_counter()
                target[:] = [user]
                self.ready.set()
                try:
                    await asyncio.wait_for(left[user].wait(), 30)
                    self.stats["slow_dropped"] += 1
                    self.stats["slow_ms_total"] += round((time.perf_counter() - t0) * 1000)
                except TimeoutError:
                    self.stats["slow_not_dropped_in_30s"] += 1
                finally:
                    target.clear()
                    member.ws.transport.abort()  # it never reads: a closing handshake would hang
                    del left[user]
        finally:
            for task in talkers:
                task.cancel()
            await asyncio.gather(*talkers, return_exceptions=True)


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def abuser_process(kind: str, url: str) -> ServerProcess:
    """``bench_abuse.py --abuser KIND``: ready once it prints ``ready``; at SIGTERM it
    closes its connections and prints its tally as one JSON line (:func:`_tally`)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--abuser", kind, "--url", url]
    return ServerProcess(argv, name=f"abuser {kind}", ready=READY)


def _tally(out: str) -> dict[str, int]:
    """The last line an abuser printed, its tally (empty if it printed none)."""
    try:
        tally: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}
    return tally


# --------------------------------------------------------------------------- the pair


class Pair:
    """``pair-a`` and ``pair-b`` in ``pair-room``; ``a`` → ``b`` → ``a`` round trips."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rtts: dict[int, int] = {}  # seq → round trip, ns, of the current phase
        self.others: Counter[str] = Counter()  # frames that are not round trips, by type
        self.wrong = 0  # a reply from the wrong sender, or out of order
        self._last_seq = -1
        self._next_seq = 0
        self._all_back = asyncio.Event()
        self._expected = -1
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        async with asyncio.timeout(20):
            self.a = await Member.join(self.url, PAIR_ROOM, PAIR_A, **QUICK)
            self.b = await Member.join(self.url, PAIR_ROOM, PAIR_B, **QUICK)
            await self.a.wait_joined(PAIR_B)
        self._tasks = [asyncio.create_task(self._echo()), asyncio.create_task(self._read())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self.a.close(), self.b.close(), return_exceptions=True)

    def _other(self, who: str, frame: str | bytes) -> None:
        try:
            obj = json.loads(frame)
            kind = obj["code"] if obj.get("type") == "error" else obj["type"]
        except (ValueError, KeyError, TypeError):
            kind = "unparsable"
        self.others[f"{who}:{kind}"] += 1

    async def _echo(self) -> None:
        async for frame in self.b:
            if isinstance(frame, str) and '"abuse":' in frame:
                obj = json.loads(frame)
                if obj.get("fromUserId") != PAIR_A:
                    self.wrong += 1
                obj["toUserId"] = obj.pop("fromUserId")
                del obj["roomId"]
                await self.b.send(obj)
            else:
                self._other("b", frame)

    async def _read(self) -> None:
        async for frame in self.a:
            now = time.perf_counter_ns()
            match = ABUSE.search(frame) if isinstance(frame, str) else None
            if match is None:
                self._other("a", frame)
                continue
            seq, sent = int(match[1]), int(match[2])
            if f'"fromUserId":"{PAIR_B}"' not in frame or seq <= self._last_seq:
                self.wrong += 1
            self._last_seq = seq
            self.rtts[seq] = now - sent
            if len(self.rtts) == self._expected:
                self._all_back.set()

    async def measure(self, seconds: float, rate: float, drain: float) -> dict[str, Any]:
        """Round trips on schedule for ``seconds``; wait up to ``drain`` s for the last."""
        for task in self._tasks:
            if task.done():
                task.result()  # the pair lost its connection: raise why
                raise RuntimeError("the pair stopped")
        self.rtts = {}
        self._all_back.clear()
        self._expected = -1
        others0, wrong0 = Counter(self.others), self.wrong
        loop = asyncio.get_running_loop()
        interval = 1 / rate
        count = max(1, round(seconds * rate))
        head = (
            '{"channel":"webrtc-signaling","type":"webrtc-ice","toUserId":"'
            + PAIR_B
            + '",'
            + CANDIDATE
            + ',"epoch":1,"abuse":['
        )
        lags: list[int] = []
        seq0 = self._next_seq
        self._next_seq += count
        start = loop.time() + 0.01
        for k in range(count):
            at = start + k * interval
            await asyncio.sleep(max(0.0, at - loop.time()))
            lags.append(round((loop.time() - at) * 1e9))
            await self.a.send(f"{head}{seq0 + k},{time.perf_counter_ns()}]}}")
        self._expected = count
        if len(self.rtts) < count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_back.wait(), drain)
        rtts = sorted(self.rtts.values())
        lags.sort()
        return {
            "sent": count,
            "lost": count - len(rtts),
            "wrong": self.wrong - wrong0,
            "other_frames": dict(self.others - others0),
            "rtts_ns": rtts,
            "p50_ms": percentile(rtts, 50) / 1e6,
            "p99_ms": percentile(rtts, 99) / 1e6,
            "max_ms": (rtts[-1] if rtts else float("nan")) / 1e6,
            "send_lag_p99_ms": percentile(lags, 99) / 1e6,
            "send_lag_max_ms": lags[-1] / 1e6,
        }


# --------------------------------------------------------------------------- driver


def server_argv() -> list[str]:
    return serve_argv("--max-connections-per-ip", str(MAX_PER_IP), "--allowed-origin", GOOD_ORIGIN)


async def scrape(url: str) -> dict[str, float]:
    """``/metrics``: the ``refusals``, ``errors``, ``closes`` and ``frames_in`` counters,
    as ``kind:label`` → value."""
    out: dict[str, float] = {}
    for sample, value in (await asyncio.to_thread(scrape_metrics, url)).items():
        match = METRIC.match(sample)
        if match:
            out[f"{match[1]}:{match[2]}"] = value
    return out


async def settle(url: str, timeout: float = 15.0) -> float:
    """Wait until ``/healthz`` shows only the pair's connections; the seconds it took."""
    http = http_url(url, "healthz")
    t0 = time.perf_counter()
    while True:
        status, body = await asyncio.to_thread(http_get_json, http)
        if status == 200 and isinstance(body, dict) and body.get("connections") == 2:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"the server did not settle within {timeout:g} s: {body}")
        await asyncio.sleep(0.1)


async def run_phase(
    kind: str, server: ServerProcess, pair: Pair, args: argparse.Namespace
) -> dict[str, Any]:
    settle_s = await settle(server.url)
    before = await scrape(server.url)
    abuser = abuser_process(kind, server.url) if kind != "baseline" else None
    watched = [server] if abuser is None else [server, abuser]
    tally: dict[str, int] = {}
    t_start = time.perf_counter()
    try:
        if abuser is not None:
            await abuser.start()
            await asyncio.sleep(args.warmup)
        cpu0, t0 = CpuTimes.now(*watched), time.perf_counter()
        res = await pair.measure(args.seconds, args.rate, args.drain)
        cpu, t1 = CpuTimes.now(*watched) - cpu0, time.perf_counter()
    finally:
        if abuser is not None:
            tally = _tally(await abuser.stop())
    abuse_s = time.perf_counter() - t_start
    after = await scrape(server.url)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    refusals = {k.split(":", 1)[1]: int(v) for k, v in delta.items() if k.startswith("refusals:")}
    span = t1 - t0
    res |= {
        "scenario": kind,
        "expected_reasons": list(EXPECTED[kind]),
        "refusals": refusals,
        "expected_refusals": sum(refusals.get(r, 0) for r in EXPECTED[kind]),
        "other_refusals": sum(n for r, n in refusals.items() if r not in EXPECTED[kind]),
        "errors": {k[7:]: int(v) for k, v in delta.items() if k.startswith("errors:")},
        "closes": {k[7:]: int(v) for k, v in delta.items() if k.startswith("closes:")},
        "frames_in": {k[10:]: int(v) for k, v in delta.items() if k.startswith("frames_in:")},
        "abuser_tally": tally,
        "abuse_span_s": abuse_s if abuser else 0.0,
        "settle_s": settle_s,
        "server_cpu": cpu.processes[0] / span,
        "abuser_cpu": sum(cpu.processes[1:]) / span,
        "pair_cpu": cpu.own / span,
        "other_cpu": cpu.other / span,
    }
    return res


def _schedule(rounds: int, scenarios: list[str]) -> list[str]:
    """B S1 B S2 ... Sn B, then Sn B ... S1 B, ...: every scenario between two baselines."""
    order = ["baseline"]
    for r in range(rounds):
        for kind in scenarios if r % 2 == 0 else scenarios[::-1]:
            order += [kind, "baseline"]
    return order


def _compare(phases: list[dict[str, Any]]) -> None:
    """Ratios of every scenario phase against its two neighbouring baselines, pooled."""
    for i, p in enumerate(phases):
        if p["scenario"] == "baseline":
            continue
        pooled = sorted(phases[i - 1]["rtts_ns"] + phases[i + 1]["rtts_ns"])
        b50, b99 = percentile(pooled, 50) / 1e6, percentile(pooled, 99) / 1e6
        p["baseline_p50_ms"], p["baseline_p99_ms"] = b50, b99
        p["p50_ratio"] = p["p50_ms"] / b50
        p["p99_ratio"] = p["p99_ms"] / b99


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    t_begin = time.perf_counter()
    server = ServerProcess(server_argv())
    order = _schedule(args.rounds, args.scenarios)
    phases: list[dict[str, Any]] = []
    try:
        await server.start()
        pair = Pair(server.url)
        await pair.open()
        try:
            for n, kind in enumerate(order):
                if not args.json:
                    print(f"[{n + 1}/{len(order)}] {kind} ...", file=sys.stderr, flush=True)
                phases.append({"phase": n + 1} | await run_phase(kind, server, pair, args))
            alive = server.running
        finally:
            await pair.close()
    finally:
        await server.stop()
    _compare(phases)
    summary: dict[str, Any] = {}
    for kind in args.scenarios:
        mine = [p for p in phases if p["scenario"] == kind]
        summary[kind] = {
            "p50_ratio_median": statistics.median(p["p50_ratio"] for p in mine),
            "p99_ratio_median": statistics.median(p["p99_ratio"] for p in mine),
            "max_ms_max": max(p["max_ms"] for p in mine),
            "lost": sum(p["lost"] for p in mine),
            "expected_refusals": sum(p["expected_refusals"] for p in mine),
        }
    if not args.keep_samples:
        for p in phases:
            del p["rtts_ns"]
    return {
        "benchmark": "abuse",
        "server_argv": server_argv()[2:],
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "rate": args.rate,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "server_alive": alive,
        "phases": phases,
        "summary": summary,
        "lost_total": sum(p["lost"] for p in phases),
        "wrong_total": sum(p["wrong"] for p in phases),
        "total_s": time.perf_counter() - t_begin,
    }


# --------------------------------------------------------------------------- report


def _refusal_text(p: dict[str, Any]) -> str:
    if p["scenario"] == "baseline":
        return "—" if not p["refusals"] else json.dumps(p["refusals"])
    text = " ".join(f"{r}={p['refusals'].get(r, 0)}" for r in p["expected_reasons"])
    if p["other_refusals"]:
        text += f" (+{p['other_refusals']} other)"
    return text


PHASE_HEADERS = (
    "#",
    "scenario",
    "p50 ms",
    "p99 ms",
    "max ms",
    "p50 ×",
    "p99 ×",
    "lost",
    "CPU srv/abuser/other",
    "refusals (server's /metrics)",
)


def print_report(r: dict[str, Any]) -> None:
    print(
        f"abuse benchmark: one server ({' '.join(r['server_argv'])}), a well-behaved pair "
        f"doing {r['rate']:g} round trips/s for {r['seconds']:g} s per phase "
        f"(abusers: {r['warmup_s']:g} s warm-up first); {r['rounds']} round(s)"
    )
    print(
        f"NOTE: {r['cpus']} CPUs shared by the server, the pair (this process) and the "
        "abuser process; nothing is pinned."
    )
    print()
    print_table(
        PHASE_HEADERS,
        [
            [
                p["phase"],
                p["scenario"],
                f"{p['p50_ms']:.2f}",
                f"{p['p99_ms']:.2f}",
                f"{p['max_ms']:.1f}",
                f"{p['p50_ratio']:.2f}" if "p50_ratio" in p else "",
                f"{p['p99_ratio']:.2f}" if "p99_ratio" in p else "",
                p["lost"],
                f"{p['server_cpu']:.0%}/{p['abuser_cpu']:.0%}/{p['other_cpu']:.0%}",
                _refusal_text(p),
            ]
            for p in r["phases"]
        ],
        align="><>>>>>><<",
    )
    print(
        f"\nper scenario{' (medians of the rounds)' if r['rounds'] > 1 else ''}; "
        "ratios against the two neighbouring baselines, pooled:"
    )
    print_table(
        ["scenario", "p50 ×", "p99 ×", "max ms", "lost", "refusals of the expected kind"],
        [
            [
                kind,
                f"{s['p50_ratio_median']:.2f}",
                f"{s['p99_ratio_median']:.2f}",
                f"{s['max_ms_max']:.1f}",
                s["lost"],
                s["expected_refusals"],
            ]
            for kind, s in r["summary"].items()
        ],
        indent="  ",
    )
    print(
        "\nwhat each abuser did (its own tally), the frames the relay machine counted "
        "(frames_in_total: not those of connections it has already closed) and the "
        "server's closes, per phase:"
    )
    for p in r["phases"]:
        if p["scenario"] == "baseline":
            continue
        frames_in = sum(p["frames_in"].values())
        print(
            f"  #{p['phase']:<2} {p['scenario']:<9} {p['abuse_span_s']:.1f} s: "
            f"{json.dumps(p['abuser_tally'])}; frames_in {frames_in} "
            f"({frames_in / p['abuse_span_s']:.0f}/s), closes {json.dumps(p['closes'])}"
        )
    others = Counter[str]()
    for p in r["phases"]:
        others.update(p["other_frames"])
    print(
        f"\npair: lost {r['lost_total']}, wrong sender / out of order {r['wrong_total']}; "
        f"other frames it received while measuring: {json.dumps(dict(sorted(others.items())))}"
    )
    lag = max(p["send_lag_max_ms"] for p in r["phases"])
    print(f"pair's sends, latest against schedule: {lag:.1f} ms; total {r['total_s']:.0f} s")
    missing = [
        p["scenario"] for p in r["phases"] if p["expected_reasons"] and not p["expected_refusals"]
    ]
    if missing:
        print(f"WARNING: no refusal of the expected kind counted for {', '.join(missing)}")
    for p in r["phases"]:
        crashed = {k: n for k, n in p["abuser_tally"].items() if k.startswith("crashed_")}
        if crashed or (p["scenario"] != "baseline" and not p["abuser_tally"]):
            print(
                f"WARNING: abuser of phase {p['phase']} ({p['scenario']}): {crashed or 'no tally'}"
            )
    if r["lost_total"] or r["wrong_total"]:
        print("FAILED: the pair lost or misread frames")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What abuse costs a well-behaved client: round trips against a baseline."
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per phase (default 5)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="passes over the scenarios, alternating their order (default 1)",
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="the pair's round trips/s (default 20)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds between an abuser's start and the measurement (default 1)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=5.0,
        help="seconds to wait for the last round trips of a phase (default 5)",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="which scenarios, in this order (default: all)",
    )
    parser.add_argument(
        "--keep-samples", action="store_true", help="keep every round trip in the JSON output"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--abuser", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.abuser:
        if not args.url:
            parser.error("--abuser needs --url")
        asyncio.run(Abuser(args.url, PAIR_ROOM).run(args.abuser))
        return 0
    if not (args.seconds > 0 and args.rounds > 0 and args.rate > 0):
        parser.error("--seconds, --rounds and --rate must be > 0")
    if not (args.warmup >= 0 and args.drain > 0):
        parser.error("--warmup must be >= 0 and --drain > 0")
    results = asyncio.run(run_bench(args))
    print_results(results, print_report, as_json=args.json)
    return 0 if results["lost_total"] == 0 and results["wrong_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
