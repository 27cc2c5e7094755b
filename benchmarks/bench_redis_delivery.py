"""Delivery between ``serve`` processes over Redis: pub/sub against streams, measured.

Issue 14 makes many ``serve`` processes on one Redis one relay; a frame whose sender and
target sit on different processes crosses Redis. Two candidates for the crossing:

* ``pubsub``: the sender's process ``PUBLISH``es to the target process's channel, the
  target process is ``SUBSCRIBE``d to it;
* ``stream``: the sender's process ``XADD``s to the target process's stream (``MAXLEN ~
  cap``), the target process reads it with ``XREAD BLOCK`` from the last id it saw.

Every delivery run starts a fresh ``redis-server`` (as the tests' ``redisfix`` fixture
does; or uses ``--redis-url``), a consumer process and producer processes
(``multiprocessing``, forked; each its own event loop — uvloop when installed — and
``redis.asyncio`` client). A message is an ICE frame of about 320 bytes behind a header
``PRODUCER SEQ T_NS|``; the consumer checks the order per producer, counts what is lost
or duplicated, and (paced runs) the latency from the message's scheduled send time to its
arrival (both processes read ``CLOCK_MONOTONIC``). Redis CPU per message is
``/proc/PID/stat`` utime+stime of ``redis-server`` over the run ÷ messages; client CPU is
each process's own ``time.process_time()`` ÷ messages.

Runs:

* ``thru-*``: one producer → one consumer, flat out. Producer ``each``: one awaited
  command per message (a round trip each); ``pipe100``: 100 commands per pipeline. The
  consumer reads with ``XREAD COUNT 1`` or ``COUNT 100`` (pub/sub has no such knob).
  Here the stream's cap is the run's size, so that a consumer slower than its producer
  is measured rather than trimmed; every other run caps at ``MAXLEN ~ 10000``.
* ``lat-*``: paced (``--rate``, default 5,000/s) one → one; producer ``each`` or ``turn``
  (everything due in one event-loop turn in one pipeline).
* ``reconnect-*``: paced 2,000/s; after a third of the messages the consumer drops its
  connection, stays away ``--gap`` seconds and reconnects (pub/sub: SUBSCRIBE again;
  stream: XREAD from the last id). Pub/sub loses what was published meanwhile.
* ``fanin-*``: three producers paced into one consumer: the order holds per producer.
* ``memory``: a stream capped with ``MAXLEN ~ 10000`` after 50,000 XADDs (MEMORY USAGE,
  entries kept, bytes per entry).
* ``cas-*``: a room's membership committed with compare-and-set and fanned out to K
  process inboxes in one atomic step, by ``watch`` (WATCH version; GET version + HGETALL
  members to decide; MULTI; HSET member; INCR version; XADD ×K; EXEC) or ``lua`` (GET +
  HGETALL in one pipeline to decide; one EVALSHA of a generic script: check the version,
  apply HSETs/HDELs, XADD to streams with a cap, INCR). One process uncontended, and two
  processes committing to the same room (conflicts are retried, counted per commit).

Every run is repeated ``--repeats`` times (default 3); the table shows medians.

    python benchmarks/bench_redis_delivery.py            # ~4 minutes
    python benchmarks/bench_redis_delivery.py --quick    # seconds, for the smoke test
    python benchmarks/bench_redis_delivery.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import queue
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import redis
import redis.asyncio
from redis.exceptions import WatchError

if not __package__:  # run as a script: benchmarks/ is on sys.path, the project root is not
    sys.path.append(str(Path(__file__).resolve().parent.parent))
# the tests' redis-server fixture module (tests/ is not a package)
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

from redisfix import RedisServer, redis_server_executable

from benchmarks.harness import ICE_CANDIDATE, percentile, print_results, print_table

T = TypeVar("T")
R = TypeVar("R")

FRAME = json.dumps(
    {
        "channel": "webrtc-signaling",
        "type": "webrtc-ice",
        "toUserId": "user_b",
        "candidate": ICE_CANDIDATE,
        "fromUserId": "user_a",
        "roomId": "demo",
    },
    separators=(",", ":"),
).encode()
"""A relayed ICE frame as the target receives it (stamped), about 320 bytes."""
END = b"END"
CAP = 10_000
"""``MAXLEN ~`` of every stream: a process inbox keeps about this many frames."""
FIELD = b"d"

Transport = Literal["pubsub", "stream"]


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (as ``serve`` does) when installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@dataclass(frozen=True)
class Worker:
    """A worker process's place in a run: its ``role`` and ``index`` (the key of its result
    in ``results``), the ``ready`` event it sets, and ``go``, which starts every worker."""

    role: str
    index: int
    ready: multiprocessing.synchronize.Event
    go: multiprocessing.synchronize.Event
    results: multiprocessing.Queue[tuple[str, int, dict[str, Any]]]

    def ready_then_wait(self) -> None:
        """Signal ready, then wait (at most 60 s) for the go."""
        self.ready.set()
        if not self.go.wait(60):
            raise RuntimeError("no go within 60 s")


def worker_main(
    work: Callable[[str, R, str, Worker], Coroutine[Any, Any, dict[str, Any]]],
    url: str,
    run: R,
    key: str,
    worker: Worker,
) -> None:
    """A worker process's target: ``work(url, run, key, worker)`` on an event loop; its
    result, or the error it raised, goes to ``worker.results``."""
    try:
        out = run_loop(work(url, run, key, worker))
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    worker.results.put((worker.role, worker.index, out))


# --------------------------------------------------------------------------- delivery runs


@dataclass(frozen=True)
class Delivery:
    """One delivery run: producers → one consumer through one channel or stream."""

    name: str
    transport: Transport
    messages: int
    """Per producer."""
    producers: int = 1
    batch: int = 1
    """Producer: 1 = one awaited command per message; n > 1 = up to n per pipeline (flat
    out: n per pipeline; paced: whatever is due in the loop turn, at most n)."""
    count: int = 100
    """Consumer: ``XREAD COUNT`` (streams)."""
    rate: float = 0.0
    """Per producer, messages/s; 0 = flat out."""
    drop_at: int = 0
    """The consumer drops its connection after this many messages (0: never)."""
    gap: float = 0.0
    """Seconds the consumer stays away before reconnecting."""
    cap: int = CAP
    idle: float = 3.0
    """The consumer stops after this long without a message (an END that was lost)."""

    @property
    def producer_mode(self) -> str:
        if self.batch == 1:
            return "each"
        return "turn" if self.rate else f"pipe{self.batch}"

    @property
    def consumer_mode(self) -> str:
        return f"COUNT {self.count}" if self.transport == "stream" else "subscribe"


def payload(producer: int, seq: int, t_ns: int) -> bytes:
    return b"%d %d %d|" % (producer, seq, t_ns) + FRAME


async def _send(client: redis.asyncio.Redis, run: Delivery, key: str, items: list[bytes]) -> None:
    """``items`` to the channel or stream: one awaited command each, or one pipeline."""
    if len(items) == 1 or run.batch == 1:
        for item in items:
            if run.transport == "pubsub":
                await client.publish(key, item)
            else:
                await client.xadd(key, {FIELD: item}, maxlen=run.cap, approximate=True)
        return
    pipe = client.pipeline(transaction=False)
    for item in items:
        if run.transport == "pubsub":
            pipe.publish(key, item)
        else:
            pipe.xadd(key, {FIELD: item}, maxlen=run.cap, approximate=True)
    await pipe.execute()


async def _produce(url: str, run: Delivery, key: str, worker: Worker) -> dict[str, Any]:
    index = worker.index
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()
        worker.ready_then_wait()
        cpu0 = time.process_time()
        t_first = time.monotonic_ns()
        sent = 0
        if run.rate <= 0:
            while sent < run.messages:
                n = min(run.batch, run.messages - sent)
                now = time.monotonic_ns()
                await _send(client, run, key, [payload(index, sent + i, now) for i in range(n)])
                sent += n
        else:
            period = 1e9 / run.rate
            while sent < run.messages:
                now = time.monotonic_ns()
                due = min(run.messages, int((now - t_first) / period) + 1)
                if due <= sent:
                    await asyncio.sleep((t_first + sent * period - now) / 1e9)
                    continue
                n = min(due - sent, run.batch) if run.batch > 1 else due - sent
                # stamped with the scheduled time: a producer running late counts as latency
                items = [
                    payload(index, s, int(t_first + s * period)) for s in range(sent, sent + n)
                ]
                await _send(client, run, key, items)
                sent += n
        t_last = time.monotonic_ns()
        cpu = time.process_time() - cpu0
        await _send(client, replace(run, batch=1), key, [b"%d -1 0|" % index + END])
        return {"sent": sent, "cpu_s": cpu, "t_first_ns": t_first, "t_last_ns": t_last}
    finally:
        await client.aclose()


class Tally:
    """What the consumer saw: order per producer, losses, duplicates, latency."""

    def __init__(self, run: Delivery) -> None:
        self.run = run
        self.last = [-1] * run.producers
        self.seen = [bytearray(run.messages) for _ in range(run.producers)]
        self.received = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.ended = 0
        self.t_last_ns = 0
        self.latencies_ns: list[int] = []

    def add(self, data: bytes, now_ns: int) -> None:
        header, _, _ = data.partition(b"|")
        p_text, s_text, t_text = header.split(b" ")
        producer, seq = int(p_text), int(s_text)
        if seq < 0:
            self.ended += 1
            return
        self.received += 1
        self.t_last_ns = now_ns
        if self.seen[producer][seq]:
            self.duplicates += 1
        self.seen[producer][seq] = 1
        if seq <= self.last[producer]:
            self.out_of_order += 1
        else:
            self.last[producer] = seq
        if self.run.rate > 0:
            self.latencies_ns.append(now_ns - int(t_text))

    @property
    def finished(self) -> bool:
        return self.ended >= self.run.producers

    def summary(self) -> dict[str, Any]:
        distinct = sum(sum(s) for s in self.seen)
        lat = sorted(self.latencies_ns)
        return {
            "received": self.received,
            "distinct": distinct,
            "lost": self.run.producers * self.run.messages - distinct,
            "out_of_order": self.out_of_order,
            "duplicates": self.duplicates,
            "ended": self.finished,
            "t_last_ns": self.t_last_ns,
            "p50_ms": percentile(lat, 50) / 1e6 if lat else None,
            "p99_ms": percentile(lat, 99) / 1e6 if lat else None,
            "max_ms": lat[-1] / 1e6 if lat else None,
        }


async def _consume_pubsub(
    url: str, run: Delivery, key: str, tally: Tally, ready: multiprocessing.synchronize.Event
) -> float:
    """Subscribe, signal ready, read until every END (or idle); the reconnect time, ms."""
    reconnect_ms = 0.0

    async def subscribe() -> tuple[redis.asyncio.Redis, Any]:
        client = redis.asyncio.Redis.from_url(url)
        pubsub = client.pubsub()
        await pubsub.subscribe(key)
        while True:  # the confirmation: from here on, nothing published is missed
            message = await pubsub.get_message(timeout=5.0)
            if message is None:
                raise RuntimeError("no subscribe confirmation within 5 s")
            if message["type"] == "subscribe":
                return client, pubsub

    client, pubsub = await subscribe()
    ready.set()
    idle_since = time.monotonic()
    try:
        while not tally.finished:
            message = await pubsub.get_message(timeout=0.5)
            now = time.monotonic_ns()
            if message is None:
                if time.monotonic() - idle_since > run.idle:
                    break
                continue
            idle_since = time.monotonic()
            if message["type"] != "message":
                continue
            tally.add(message["data"], now)
            if run.drop_at and tally.received == run.drop_at and not reconnect_ms:
                t0 = time.monotonic()
                await pubsub.aclose()
                await client.aclose()
                await asyncio.sleep(run.gap)  # the scenario: away for a while
                client, pubsub = await subscribe()
                reconnect_ms = (time.monotonic() - t0) * 1e3
    finally:
        await pubsub.aclose()
        await client.aclose()
    return reconnect_ms


async def _consume_stream(
    url: str, run: Delivery, key: str, tally: Tally, ready: multiprocessing.synchronize.Event
) -> float:
    """Read from id 0 (the key is new), signal ready, until every END (or idle)."""
    reconnect_ms = 0.0
    client = redis.asyncio.Redis.from_url(url)
    await client.ping()
    ready.set()
    last: bytes = b"0-0"
    idle_since = time.monotonic()
    try:
        while not tally.finished:
            reply = await client.xread({key: last}, count=run.count, block=500)
            now = time.monotonic_ns()
            if not reply:
                if time.monotonic() - idle_since > run.idle:
                    break
                continue
            idle_since = time.monotonic()
            for _key, entries in cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply
            ):
                for entry_id, fields in entries:
                    last = entry_id
                    tally.add(fields[FIELD], now)
            if run.drop_at and tally.received >= run.drop_at and not reconnect_ms:
                t0 = time.monotonic()
                await client.aclose()
                await asyncio.sleep(run.gap)  # the scenario: away for a while
                client = redis.asyncio.Redis.from_url(url)
                await client.ping()
                reconnect_ms = (time.monotonic() - t0) * 1e3
    finally:
        await client.aclose()
    return reconnect_ms


def consumer_main(
    url: str,
    run: Delivery,
    key: str,
    ready: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[tuple[str, int, dict[str, Any]]],
) -> None:
    tally = Tally(run)
    cpu0 = time.process_time()
    try:
        consume = _consume_pubsub if run.transport == "pubsub" else _consume_stream
        reconnect_ms = run_loop(consume(url, run, key, tally, ready))
        out = tally.summary() | {"cpu_s": time.process_time() - cpu0, "reconnect_ms": reconnect_ms}
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    results.put(("consumer", 0, out))


# --------------------------------------------------------------------------- Redis


def worker_context() -> multiprocessing.context.ForkContext | multiprocessing.context.SpawnContext:
    """Fork where there is fork (a worker is ready in milliseconds; this process runs no
    event loop and no thread when it forks), else spawn."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def redis_for_run(url: str | None) -> Iterator[str]:
    """``url`` as it is, or a fresh ``redis-server`` (stopped afterwards) for one run."""
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def redis_cpu_seconds(client: redis.Redis) -> float:
    """utime+stime of the server: ``/proc/PID/stat`` when local, else ``INFO cpu``."""
    info = client.info("server")
    stat_path = Path(f"/proc/{info['process_id']}/stat")
    try:
        stat = stat_path.read_text()
    except OSError:
        cpu = client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Join each process; one still running after 10 s is terminated, then killed."""
    for proc in processes:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _collect(
    results: multiprocessing.Queue[tuple[str, int, dict[str, Any]]],
    expected: int,
    timeout: float,
    processes: list[multiprocessing.process.BaseProcess],
) -> dict[tuple[str, int], dict[str, Any]]:
    """``expected`` results from the workers, or an error when one died or time ran out."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(out) < expected:
        try:
            role, index, result = results.get(timeout=0.5)
        except queue.Empty:
            dead = [p.name for p in processes if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"worker(s) died: {dead}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{expected - len(out)} worker result(s) missing") from None
            continue
        if "error" in result:
            raise RuntimeError(f"{role} {index}: {result['error']}")
        out[role, index] = result
    return out


def run_delivery(url: str, run: Delivery, timeout: float) -> dict[str, Any]:
    """One delivery run against the server at ``url``: its figures."""
    ctx = worker_context()
    key = f"bench:{uuid.uuid4().hex}:inbox"
    results: multiprocessing.Queue[tuple[str, int, dict[str, Any]]] = ctx.Queue()
    consumer_ready = ctx.Event()
    go = ctx.Event()
    producer_ready = [ctx.Event() for _ in range(run.producers)]
    processes: list[multiprocessing.process.BaseProcess] = []
    sync = redis.Redis.from_url(url)
    try:
        consumer = ctx.Process(
            target=consumer_main,
            args=(url, run, key, consumer_ready, results),
            name="consumer",
            daemon=True,
        )
        consumer.start()
        processes.append(consumer)
        for i, ready in enumerate(producer_ready):
            producer = ctx.Process(
                target=worker_main,
                args=(_produce, url, run, key, Worker("producer", i, ready, go, results)),
                name=f"producer-{i}",
                daemon=True,
            )
            producer.start()
            processes.append(producer)
        for event in (consumer_ready, *producer_ready):
            if not event.wait(60):
                raise RuntimeError(f"{run.name}: a worker was not ready within 60 s")
        cpu0 = redis_cpu_seconds(sync)
        go.set()
        got = _collect(results, run.producers + 1, timeout, processes)
        redis_cpu = redis_cpu_seconds(sync) - cpu0
        length = sync.xlen(key) if run.transport == "stream" else 0
        sync.delete(key)
    finally:
        _stop(processes)
        sync.close()
    cons = got["consumer", 0]
    prods = [got["producer", i] for i in range(run.producers)]
    sent = sum(p["sent"] for p in prods)
    t_first = min(p["t_first_ns"] for p in prods)
    span_s = max(1e-9, (cons["t_last_ns"] - t_first) / 1e9)
    distinct = cons["distinct"]
    return {
        "name": run.name,
        "transport": run.transport,
        "producer": run.producer_mode,
        "consumer": run.consumer_mode,
        "producers": run.producers,
        "rate": run.rate * run.producers,
        "sent": sent,
        "delivered": distinct,
        "lost": cons["lost"],
        "out_of_order": cons["out_of_order"],
        "duplicates": cons["duplicates"],
        "ended": cons["ended"],
        "msgs_per_s": distinct / span_s,
        "p50_ms": cons["p50_ms"],
        "p99_ms": cons["p99_ms"],
        "max_ms": cons["max_ms"],
        "reconnect_ms": cons["reconnect_ms"],
        "redis_us_per_msg": redis_cpu / max(1, sent) * 1e6,
        "producer_us_per_msg": sum(p["cpu_s"] for p in prods) / max(1, sent) * 1e6,
        "consumer_us_per_msg": cons["cpu_s"] / max(1, distinct) * 1e6,
        "stream_len": length,
    }


# --------------------------------------------------------------------------- memory


def stream_memory(url: str, entries: int, cap: int) -> dict[str, Any]:
    """``entries`` XADDs of one message each with ``MAXLEN ~ cap``: what the stream keeps."""
    client = redis.Redis.from_url(url)
    key = f"bench:{uuid.uuid4().hex}:memory"
    try:
        before = int(client.info("memory")["used_memory"])
        for start in range(0, entries, 1000):
            pipe = client.pipeline(transaction=False)
            for seq in range(start, min(entries, start + 1000)):
                pipe.xadd(key, {FIELD: payload(0, seq, 0)}, maxlen=cap, approximate=True)
            pipe.execute()
        kept = client.xlen(key)
        usage = int(cast(int, client.memory_usage(key, samples=0)))
        after = int(client.info("memory")["used_memory"])
        client.delete(key)
    finally:
        client.close()
    return {
        "cap": cap,
        "added": entries,
        "kept": kept,
        "message_bytes": len(payload(0, entries - 1, time.monotonic_ns())),
        "memory_usage_bytes": usage,
        "used_memory_delta_bytes": after - before,
        "bytes_per_entry": usage / max(1, kept),
    }


# --------------------------------------------------------------------------- CAS commits

CAS_SCRIPT = """
-- A generic compare-and-set commit (no relay rules in here):
-- KEYS[1] the version key; KEYS[2..] the keys the writes name by index.
-- ARGV: expected version, then
--   n, n × (key index, field, value)   HSET
--   n, n × (key index, field)          HDEL
--   n, cap, n × (key index, payload)   XADD key MAXLEN ~ cap * d payload
-- Returns {1, new version} when committed, {0, current version} on a conflict.
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
if version ~= tonumber(ARGV[1]) then return {0, version} end
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]); i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', KEYS[tonumber(ARGV[i])], ARGV[i + 1]); i = i + 2
end
n = tonumber(ARGV[i]); local cap = ARGV[i + 1]; i = i + 2
for _ = 1, n do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', cap, '*', 'd', ARGV[i + 1])
  i = i + 2
end
return {1, redis.call('INCR', KEYS[1])}
"""

MEMBERS_PER_ROOM = 50
"""Commits cycle through this many member ids: the room's hash stays room-sized."""


@dataclass(frozen=True)
class Cas:
    name: str
    method: Literal["watch", "lua"]
    fanout: int
    commits: int
    """Per process."""
    procs: int = 1


async def _cas(url: str, run: Cas, prefix: str, worker: Worker) -> dict[str, Any]:
    client = redis.asyncio.Redis.from_url(url)
    vkey, mkey = f"{prefix}:version", f"{prefix}:members"
    inboxes = [f"{prefix}:inbox:{k}" for k in range(run.fanout)]
    script = client.register_script(CAS_SCRIPT)
    frame = FRAME.replace(b"webrtc-ice", b"user-joined-room")
    conflicts = 0
    latencies: list[int] = []
    try:
        await client.ping()
        await script(keys=[vkey], args=[-1, 0, 0, 0, CAP])  # loads it: EVALSHA from here on
        worker.ready_then_wait()
        cpu0 = time.process_time()
        t0 = time.monotonic_ns()
        for i in range(run.commits):
            member = f"u{worker.index}_{i % MEMBERS_PER_ROOM}"
            start = time.monotonic_ns()
            while True:
                if run.method == "watch":
                    async with client.pipeline(transaction=True) as pipe:
                        try:
                            await pipe.watch(vkey)
                            await pipe.get(vkey)
                            await pipe.hgetall(mkey)  # the machine decides from these
                            pipe.multi()  # type: ignore[no-untyped-call]
                            pipe.hset(mkey, member, "1")
                            pipe.incr(vkey)
                            for inbox in inboxes:
                                pipe.xadd(inbox, {FIELD: frame}, maxlen=CAP, approximate=True)
                            await pipe.execute()
                            break
                        except WatchError:
                            conflicts += 1
                else:
                    read = client.pipeline(transaction=False)
                    read.get(vkey)
                    read.hgetall(mkey)  # the machine decides from these
                    version, _members = await read.execute()
                    args: list[Any] = [int(version or 0), 1, 2, member, "1", 0, run.fanout, CAP]
                    for k in range(run.fanout):
                        args += [3 + k, frame]
                    ok, _ = await script(keys=[vkey, mkey, *inboxes], args=args)
                    if ok:
                        break
                    conflicts += 1
            latencies.append(time.monotonic_ns() - start)
        elapsed = (time.monotonic_ns() - t0) / 1e9
        cpu = time.process_time() - cpu0
    finally:
        await client.aclose()
    return {
        "commits": run.commits,
        "conflicts": conflicts,
        "cpu_s": cpu,
        "elapsed_s": elapsed,
        "latencies_ns": latencies,
    }


def run_cas(url: str, run: Cas, timeout: float) -> dict[str, Any]:
    ctx = worker_context()
    prefix = f"bench:{uuid.uuid4().hex}:room"
    results: multiprocessing.Queue[tuple[str, int, dict[str, Any]]] = ctx.Queue()
    go = ctx.Event()
    ready = [ctx.Event() for _ in range(run.procs)]
    processes: list[multiprocessing.process.BaseProcess] = []
    sync = redis.Redis.from_url(url)
    try:
        for i in range(run.procs):
            proc = ctx.Process(
                target=worker_main,
                args=(_cas, url, run, prefix, Worker("cas", i, ready[i], go, results)),
                name=f"cas-{i}",
                daemon=True,
            )
            proc.start()
            processes.append(proc)
        for event in ready:
            if not event.wait(60):
                raise RuntimeError(f"{run.name}: a worker was not ready within 60 s")
        cpu0 = redis_cpu_seconds(sync)
        go.set()
        got = _collect(results, run.procs, timeout, processes)
        redis_cpu = redis_cpu_seconds(sync) - cpu0
        version = int(cast(bytes, sync.get(f"{prefix}:version")) or 0)
        inbox_len = sync.xlen(f"{prefix}:inbox:0")
        sync.delete(
            f"{prefix}:version",
            f"{prefix}:members",
            *(f"{prefix}:inbox:{k}" for k in range(run.fanout)),
        )
    finally:
        _stop(processes)
        sync.close()
    workers = list(got.values())
    commits = sum(w["commits"] for w in workers)
    lat = sorted(x for w in workers for x in w["latencies_ns"])
    return {
        "name": run.name,
        "method": run.method,
        "fanout": run.fanout,
        "procs": run.procs,
        "commits": commits,
        "committed_version": version,
        "inbox_len": inbox_len,
        "commits_per_s": commits / max(w["elapsed_s"] for w in workers),
        "p50_us": percentile(lat, 50) / 1e3,
        "p99_us": percentile(lat, 99) / 1e3,
        "conflicts_per_commit": sum(w["conflicts"] for w in workers) / max(1, commits),
        "redis_us_per_commit": redis_cpu / max(1, commits) * 1e6,
        "client_us_per_commit": sum(w["cpu_s"] for w in workers) / max(1, commits) * 1e6,
    }


# --------------------------------------------------------------------------- the runs


def delivery_runs(args: argparse.Namespace) -> list[Delivery]:
    n = args.messages
    paced = max(1, int(args.rate * args.paced_seconds))
    slow = max(1, int(2000 * args.paced_seconds))
    runs: list[Delivery] = []
    transports: tuple[Transport, ...] = ("pubsub", "stream")
    for t in transports:
        short = "ps" if t == "pubsub" else "xs"
        # flat out, the stream holds the whole run: a consumer slower than its producer
        # is measured, not trimmed (with the relay's cap it would lose the oldest)
        whole = max(CAP, n)
        runs.append(Delivery(f"thru-{short}-each", t, n, batch=1, count=100, cap=whole))
        if t == "stream":
            runs.append(Delivery(f"thru-{short}-pipe-c1", t, n, batch=100, count=1, cap=whole))
        runs.append(Delivery(f"thru-{short}-pipe", t, n, batch=100, count=100, cap=whole))
        runs.append(Delivery(f"lat-{short}-each", t, paced, batch=1, rate=args.rate))
        runs.append(Delivery(f"lat-{short}-turn", t, paced, batch=100, rate=args.rate))
        runs.append(
            Delivery(
                f"reconnect-{short}",
                t,
                slow,
                batch=100,
                rate=2000,
                drop_at=slow // 3,
                gap=args.gap,
            )
        )
        runs.append(Delivery(f"fanin-{short}", t, slow, producers=3, batch=100, rate=2000))
    return runs


def cas_runs(args: argparse.Namespace) -> list[Cas]:
    runs: list[Cas] = []
    for procs in (1, 2):
        methods: tuple[Literal["watch", "lua"], ...] = ("watch", "lua")
        for m in methods:
            runs.append(Cas(f"cas-{m}-p{procs}", m, args.fanout, args.commits, procs))
    return runs


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key: the median of the numbers over the repeats (the first value otherwise);
    ``lost``, ``out_of_order`` and ``duplicates`` are the worst (max) instead."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        if key in ("lost", "out_of_order", "duplicates", "conflicts_per_commit_max"):
            out[key] = max(values)
        elif isinstance(first, bool) or not isinstance(first, int | float):
            out[key] = first if all(v == first for v in values) else values
        elif any(v is None for v in values):
            out[key] = None
        else:
            out[key] = statistics.median(values)
    return out


def problems_of(medians: dict[str, dict[str, Any]]) -> list[str]:
    """What breaks the relay's rules: reordering anywhere, stream loss anywhere."""
    out: list[str] = []
    for name, m in medians.items():
        if m.get("out_of_order"):
            out.append(f"{name}: {m['out_of_order']} out of order")
        if m.get("transport") == "stream" and m["lost"]:
            out.append(f"{name}: stream lost {m['lost']}")
        if "committed_version" in m and m["committed_version"] != m["commits"]:
            out.append(f"{name}: version {m['committed_version']} != {m['commits']} commits")
    return out


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    all_runs: list[dict[str, Any]] = []
    deliveries = delivery_runs(args)
    cases = cas_runs(args)
    memory: list[dict[str, Any]] = []
    redis_version = ""
    for repeat in range(args.repeats):
        for run in deliveries:
            with redis_for_run(args.redis_url) as url:
                result = run_delivery(url, run, args.timeout) | {"repeat": repeat}
            runs.setdefault(run.name, []).append(result)
            all_runs.append(result)
            log(
                args,
                f"{run.name} #{repeat + 1}: {result['msgs_per_s']:,.0f}/s lost {result['lost']}",
            )
        for cas in cases:
            with redis_for_run(args.redis_url) as url:
                result = run_cas(url, cas, args.timeout) | {"repeat": repeat}
            runs.setdefault(cas.name, []).append(result)
            all_runs.append(result)
            log(args, f"{cas.name} #{repeat + 1}: {result['commits_per_s']:,.0f} commits/s")
        with redis_for_run(args.redis_url) as url:
            memory.append(stream_memory(url, args.memory_entries, CAP))
            if not redis_version:
                client = redis.Redis.from_url(url)
                redis_version = str(client.info("server")["redis_version"])
                client.close()
    medians = {name: median_of(rs) for name, rs in runs.items()}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "redis_version": redis_version,
        "redis_py": redis.__version__,
        "message_bytes": len(payload(0, 0, time.monotonic_ns())),
        "repeats": args.repeats,
        "medians": medians,
        "memory": median_of(memory),
        "runs": all_runs,
        "problems": problems_of(medians),
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def log(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _rows(
    medians: dict[str, dict[str, Any]], kind: str, row: Callable[[dict[str, Any]], list[object]]
) -> list[list[object]]:
    """The report rows of the runs of one kind: of each median that has the key ``kind``."""
    return [row(m) for m in medians.values() if kind in m]


def _delivery_row(m: dict[str, Any]) -> list[object]:
    return [
        m["name"],
        m["producer"],
        m["consumer"],
        fmt(m["rate"] or None, ",.0f"),
        f"{m['sent']:,.0f}",
        f"{m['msgs_per_s']:,.0f}",
        f"{m['lost']:,}",
        f"{m['out_of_order']}",
        fmt(m["p50_ms"], ".2f"),
        fmt(m["p99_ms"], ".2f"),
        f"{m['redis_us_per_msg']:.1f}",
        f"{m['producer_us_per_msg']:.1f}",
        f"{m['consumer_us_per_msg']:.1f}",
    ]


def _cas_row(m: dict[str, Any]) -> list[object]:
    return [
        m["name"],
        m["fanout"],
        m["procs"],
        f"{m['commits_per_s']:,.0f}",
        f"{m['p50_us']:.0f}",
        f"{m['p99_us']:.0f}",
        f"{m['conflicts_per_commit']:.2f}",
        f"{m['redis_us_per_commit']:.1f}",
        f"{m['client_us_per_commit']:.0f}",
    ]


def report(results: dict[str, Any]) -> None:
    print(
        f"{results['date']}; {results['machine']}; Redis {results['redis_version']}, "
        f"redis-py {results['redis_py']}; message {results['message_bytes']} B; "
        f"medians of {results['repeats']}"
    )
    print()
    print_table(
        [
            "run",
            "producer",
            "consumer",
            "rate/s",
            "msgs",
            "delivered/s",
            "lost",
            "disorder",
            "p50 ms",
            "p99 ms",
            "redis µs/msg",
            "prod µs/msg",
            "cons µs/msg",
        ],
        _rows(results["medians"], "transport", _delivery_row),
        align="<<<",
    )
    print()
    print_table(
        [
            "commit",
            "K",
            "procs",
            "commits/s",
            "p50 µs",
            "p99 µs",
            "conflicts/commit",
            "redis µs/commit",
            "client µs/commit",
        ],
        _rows(results["medians"], "method", _cas_row),
    )
    mem = results["memory"]
    print()
    print(
        f"stream MAXLEN ~ {mem['cap']:,} after {mem['added']:,} XADDs of "
        f"{mem['message_bytes']} B: {mem['kept']:,.0f} entries kept, MEMORY USAGE "
        f"{mem['memory_usage_bytes'] / 2**20:.2f} MiB ({mem['bytes_per_entry']:.0f} B/entry)"
    )
    if results["problems"]:
        print("\nPROBLEMS:\n  " + "\n  ".join(results["problems"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one short repeat of everything")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every run (3)")
    parser.add_argument("--messages", type=int, default=100_000, help="per flat-out run (1e5)")
    parser.add_argument("--rate", type=float, default=5000.0, help="paced runs, msgs/s (5000)")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="per paced run (3)")
    parser.add_argument("--gap", type=float, default=0.2, help="reconnect: s away (0.2)")
    parser.add_argument("--commits", type=int, default=5000, help="per CAS process (5000)")
    parser.add_argument("--fanout", type=int, default=3, help="CAS: inboxes per commit (3)")
    parser.add_argument("--memory-entries", type=int, default=50_000, help="XADDs (50,000)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, s (120)")
    parser.add_argument(
        "--redis-url", help="use this server (keys bench:*) instead of a fresh one per run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
        args.messages = min(args.messages, 5000)
        args.paced_seconds = min(args.paced_seconds, 0.6)
        args.gap = min(args.gap, 0.1)
        args.commits = min(args.commits, 300)
        args.memory_entries = min(args.memory_entries, 25_000)
        args.timeout = min(args.timeout, 30.0)
    if not args.redis_url and redis_server_executable() is None:
        parser.error("redis-server not found (Debian package redis-server); or give --redis-url")
    results = run_all(args)
    print_results(results, report, as_json=args.json)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
