"""Scale-out meshes (issue 14): many clients on several ``serve --redis`` processes of one
real ``redis-server`` act as one relay.

- 30 raw WebSocket clients on 3 processes join one room (in racing waves of one join per
  process) and every one sends :data:`ROUNDS` numbered ``webrtc-ice`` frames to every
  other, all at once: nothing lost, duplicated, misrouted or reordered per sender →
  target, and every member's view of the room is the one a single global order of joins
  gives; then a third of them leave and the rest hear each leave once.
- 30 joins of one room at once on 3 processes are all admitted (a bound of 16 on the
  retries of a room change refused some with ``unavailable``; found here).
- 6 aiortc peers (the asyncio ``Client``) on 3 processes form the full mesh.
- ``sansio-signal demo --nodes 3`` starts its own Redis and 3 processes, reports the full
  mesh, and leaves no process behind (also when interrupted); without ``redis-server`` it
  names the Debian package.

Every wait is on frames or events with a timeout; every process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redisfix import RedisServer, redis_server, require_redis_server  # noqa: F401 (a fixture)
from websockets.asyncio.client import ClientConnection, connect
from wsutil import reap, send

ROOMS, SIGNALING = "webrtc-dashboard-rooms", "webrtc-signaling"
ROOM = "mesh"
CLIENTS = 30
NODES = 3
ROUNDS = 10
"""``webrtc-ice`` frames each client sends to each other one (30 × 29 × 10 = 8,700)."""
TIMEOUT = 15.0
"""How long one wait on frames may take (a round trip here takes milliseconds)."""


@asynccontextmanager
async def nodes(
    redis: RedisServer, tmp_path: Path, count: int, *flags: str
) -> AsyncIterator[list[str]]:
    """``count`` ``serve --redis`` processes (``node0``…), their logs in
    ``tmp_path/node*.log`` (a pipe nobody reads would fill and stall them); their ws://
    URLs. Killed and reaped by PID at exit, whatever happened."""
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    try:
        for i in range(count):
            with (tmp_path / f"node{i}.log").open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sansio_signal", "serve", "--port", "0",
                    "--redis", redis.url, "--node-id", f"node{i}", "--rate-limit", "0", *flags,
                    cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=log,
                )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line.startswith("listening on ws://127.0.0.1:"), line
            urls.append(line.removeprefix("listening on ").strip())
        yield urls
    finally:
        for proc in procs:  # every one killed before any wait that could be interrupted
            if proc.returncode is None:
                proc.kill()
        await reap(*procs)


def join(user: str, room: str = ROOM) -> dict[str, Any]:
    return {"channel": ROOMS, "type": "join-room", "roomId": room, "userId": user}


@dataclass
class Member:
    """One raw WebSocket client and everything it received."""

    user: str
    ws: ClientConnection
    existing: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    """``userId`` of each ``user-joined-room`` notice about another member, in order."""
    left: list[str] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    """Any frame that is neither a membership notice nor a signal (an error...)."""
    signals: list[dict[str, Any]] = field(default_factory=list)
    own: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> set[str]:
        return (set(self.existing) | set(self.joined)) - set(self.left)

    def last_from(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for frame in self.signals:
            last[frame["fromUserId"]] = frame["n"]
        return last

    async def read(self) -> None:
        """Every frame until the socket closes, sorted into the lists above."""
        async for text in self.ws:
            frame = json.loads(text)
            kind = frame.get("type")
            if kind == "user-joined-room" and frame.get("userId") == self.user:
                self.existing = list(frame["existingParticipants"])
                self.own.set()
            elif kind == "user-joined-room":
                self.joined.append(frame["userId"])
            elif kind == "user-left-room":
                self.left.append(frame["userId"])
            elif kind == "webrtc-ice":
                self.signals.append(frame)
            else:
                self.others.append(frame)
            self.changed.set()

    async def until(self, condition: Callable[[Member], bool], what: str) -> None:
        """Until ``condition(self)`` holds, woken by each frame (fails after ``TIMEOUT``)."""

        async def wait() -> None:
            while not condition(self):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"{self.user}: {what} not within {TIMEOUT} s; existing {self.existing}, "
                f"joined {self.joined}, left {self.left}, others {self.others[:3]}, "
                f"{len(self.signals)} signals; socket {self.ws.state.name} "
                f"{self.ws.close_code} {self.ws.close_reason!r}"
            ) from None


def check_membership(members: list[Member]) -> None:
    """Every view is the whole room, and the views agree on one order of joins: ``a`` is
    in ``b``'s ``existingParticipants`` exactly when ``b`` was announced to ``a``; of two
    members exactly one came first; "came first" is transitive; nobody is announced twice
    or left."""
    everyone = {m.user for m in members}
    before: dict[str, set[str]] = {m.user: set(m.existing) for m in members}
    for m in members:
        assert m.view() == everyone - {m.user}, (m.user, sorted(everyone - m.view()))
        assert not m.left and not m.others, (m.user, m.left, m.others)
        assert len(m.joined) == len(set(m.joined)), (m.user, Counter(m.joined).most_common(3))
        assert len(m.existing) == len(set(m.existing)), m.user
        announced = {other.user for other in members if m.user in before[other.user]}
        assert set(m.joined) == announced, (m.user, sorted(set(m.joined) ^ announced))
    for a in everyone:
        for b in everyone - {a}:
            assert (a in before[b]) != (b in before[a]), (a, b)
    # A strict total order: sorting by how many came before gives 0, 1, ..., n-1, and
    # everyone before a member also came before every member after it.
    order = sorted(everyone, key=lambda u: len(before[u]))
    assert [len(before[u]) for u in order] == list(range(len(order)))
    for i, user in enumerate(order):
        assert before[user] == set(order[:i]), user


async def mesh_of(
    redis: RedisServer, tmp_path: Path, body: Callable[[list[Member]], Awaitable[None]]
) -> None:
    """:data:`CLIENTS` raw WebSocket clients, client ``i`` on process ``i % NODES``, each
    read by a task; ``body`` runs on them. Sockets, readers and processes are stopped
    whatever happens (the processes by PID, outside the scenario's own time limit)."""
    async with nodes(redis, tmp_path, NODES) as urls:
        users = [f"u{i:02d}" for i in range(CLIENTS)]
        sockets = await asyncio.gather(
            *(connect(urls[i % NODES], max_queue=None, close_timeout=1) for i in range(CLIENTS))
        )
        members = [Member(u, ws) for u, ws in zip(users, sockets, strict=True)]
        readers = [asyncio.create_task(m.read()) for m in members]
        try:
            await asyncio.wait_for(body(members), 60)
        finally:
            for m in members:
                m.ws.transport.abort()
            await asyncio.gather(*readers, return_exceptions=True)


def delivery_report(members: list[Member]) -> str:
    """Per sender, how many of its signals arrived anywhere (for a failure message)."""
    arrived = Counter(f["src"] for m in members for f in m.signals)
    return ", ".join(f"{m.user}: {arrived[m.user]}" for m in members)


def test_thirty_clients_on_three_processes_signal_without_loss_or_reordering(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def body(members: list[Member]) -> None:
        users = [m.user for m in members]
        everyone = set(users)
        # They join in waves of one per process, each wave at once: the joins race on
        # the three processes. (All 30 at once trips the bound on retries of a room
        # change: test_a_burst_of_thirty_joins_on_three_processes_is_all_admitted.)
        for wave in range(0, CLIENTS, NODES):
            batch = members[wave : wave + NODES]
            await asyncio.gather(*(send(m.ws, join(m.user)) for m in batch))
            await asyncio.gather(*(m.until(lambda m: m.own.is_set(), "its join") for m in batch))
        await asyncio.gather(
            *(m.until(lambda m: m.view() == everyone - {m.user}, "the whole room") for m in members)
        )
        check_membership(members)

        # Every client sends ROUNDS numbered frames to every other, each round to the
        # others in a random order; all clients at once.
        rng = random.Random(14)

        async def talk(m: Member) -> None:
            targets = [u for u in users if u != m.user]
            for n in range(ROUNDS):
                for target in rng.sample(targets, len(targets)):
                    frame = {
                        "channel": SIGNALING,
                        "type": "webrtc-ice",
                        "toUserId": target,
                        "candidate": None,
                        "src": m.user,
                        "n": n,
                    }
                    await m.ws.send(json.dumps(frame))

        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(talk(m) for m in members))
        last = ROUNDS - 1
        try:
            await asyncio.gather(
                *(
                    m.until(
                        lambda m: (
                            len(m.last_from()) == CLIENTS - 1
                            and set(m.last_from().values()) == {last}
                        ),
                        f"round {last} from every other member",
                    )
                    for m in members
                )
            )
        except AssertionError as exc:
            report = delivery_report(members)
            raise AssertionError(f"{exc}; signals arrived per sender: {report}") from None
        took = loop.time() - started

        # Per sender → target the numbers are 0..ROUNDS-1, once each, in order (anything
        # lost, repeated or swapped shows), every frame stamped with its true sender and
        # the room, and addressed to its receiver.
        lost = misrouted = reordered = 0
        for m in members:
            per_sender: dict[str, list[int]] = defaultdict(list)
            for frame in m.signals:
                stamp = (frame["fromUserId"], frame["roomId"], frame["toUserId"])
                misrouted += stamp != (frame["src"], ROOM, m.user)
                per_sender[frame["src"]].append(frame["n"])
            assert set(per_sender) <= everyone - {m.user}, m.user
            for sender in everyone - {m.user}:
                got = per_sender.get(sender, [])
                lost += ROUNDS - len(set(got))
                reordered += got != list(range(ROUNDS))
        total = sum(len(m.signals) for m in members)
        assert (lost, misrouted, reordered) == (0, 0, 0)
        assert total == CLIENTS * (CLIENTS - 1) * ROUNDS
        check_membership(members)  # nothing changed while they talked
        print(f"{total} signals between {CLIENTS} clients on {NODES} processes: {took:.2f} s")

        # The members on node0 leave: every other member hears each leave, once.
        gone = {m.user for m in members[::NODES]}
        await asyncio.gather(*(m.ws.close() for m in members[::NODES]))
        stay = [m for m in members if m.user not in gone]
        await asyncio.gather(
            *(m.until(lambda m: len(m.left) >= len(gone), "every leave") for m in stay)
        )
        for m in stay:
            assert sorted(m.left) == sorted(gone), m.user
            assert m.view() == everyone - gone - {m.user}

    asyncio.run(mesh_of(redis_server, tmp_path, body))


def test_a_burst_of_thirty_joins_on_three_processes_is_all_admitted(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def body(members: list[Member]) -> None:
        everyone = {m.user for m in members}
        await asyncio.gather(*(send(m.ws, join(m.user)) for m in members))
        for m in members:
            await m.until(lambda m: m.own.is_set() or bool(m.others), "an answer to its join")
        refused = {m.user: m.others[0].get("code") for m in members if not m.own.is_set()}
        assert refused == {}, f"{len(refused)} of {CLIENTS} joins refused: {refused}"
        await asyncio.gather(
            *(m.until(lambda m: m.view() == everyone - {m.user}, "the whole room") for m in members)
        )
        check_membership(members)

    asyncio.run(mesh_of(redis_server, tmp_path, body))


def test_six_aiortc_peers_on_three_processes_form_the_full_mesh(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The ``demo`` set-up across processes: peer ``i`` signals through process ``i % 3``;
    every data channel opens and a message crosses every pair both ways."""
    from sansio_signal.adapters.aiortc_peer import loopback_only
    from sansio_signal.adapters.client import Client

    peers = 6

    async def scenario() -> None:
        async with nodes(redis_server, tmp_path, NODES) as urls:
            clients = [
                Client(urls[i % NODES], room_id="demo", user_id=f"peer{i}") for i in range(peers)
            ]
            try:
                await asyncio.wait_for(self_check(clients), 90)
            finally:
                await asyncio.gather(*(c.close() for c in clients))

    async def self_check(clients: list[Client]) -> None:
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.gather(
            *(c.wait_all_connected(expected=peers - 1, timeout=60) for c in clients)
        )
        for client in clients:
            assert len(client.connected_peers()) == peers - 1, client.user_id
            for peer_id in client.connected_peers():
                client.send(peer_id, f"{client.user_id}->{peer_id}")

        async def receive(client: Client) -> set[str]:
            heard: set[str] = set()
            async for message in client.messages():
                if message.text == f"{message.from_user_id}->{client.user_id}":
                    heard.add(message.from_user_id)
                if len(heard) == peers - 1:
                    break
            return heard

        heard = await asyncio.wait_for(asyncio.gather(*(receive(c) for c in clients)), 30)
        for client, got in zip(clients, heard, strict=True):
            assert got == {c.user_id for c in clients} - {client.user_id}

    with loopback_only():
        asyncio.run(scenario())


def demo(*flags: str) -> list[str]:
    """The argv of ``sansio-signal demo`` (run it outside the checkout: ``cwd=tmp_path``)."""
    return [sys.executable, "-m", "sansio_signal", "demo", *flags]


def running(pid: int, name: str) -> bool:
    """Whether process ``pid`` exists and is still the ``name`` (``redis-server`` or a
    ``serve``) the demo started (a PID reused since by something else is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    word = b"redis-server" if name == "redis-server" else b"serve"
    return word in cmdline


def test_demo_on_three_processes_forms_the_full_mesh_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    require_redis_server()
    done = subprocess.run(
        demo("--nodes", "3", "--peers", "4", "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["nodes"], summary["peers"], summary["pairs"]) == (3, 4, 6)
    assert summary["pairs_connected"] == 6 and summary["ok"] is True
    assert summary["placement"] == {
        "peer0": "node0",
        "peer1": "node1",
        "peer2": "node2",
        "peer3": "node0",
    }
    assert all(p["messages_exchanged"] for p in summary["pair_details"])
    assert summary["redis"].startswith("redis://127.0.0.1:")
    pids = summary["processes"]
    assert sorted(pids) == ["node0", "node1", "node2", "redis-server"]
    assert [name for name, pid in pids.items() if running(pid, name)] == []


def test_demo_interrupted_stops_its_redis_and_relays(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the demo alone, not its process group) while the mesh forms:
    the demo stops every process it started, by PID, and exits 130."""
    require_redis_server()
    proc = subprocess.Popen(
        demo("--nodes", "2", "--peers", "6"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    pids: dict[str, int] = {}
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first line names the processes, then peers start
        assert line.startswith("redis-server on 127.0.0.1:"), line
        pids["redis-server"] = int(line.split("(pid ", 1)[1].split(",")[0])
        for part in line.split("relay processes: ", 1)[1].split(", "):
            node, _, number = part.strip().partition(" pid ")
            pids[node] = int(number)
        assert sorted(pids) == ["node0", "node1", "redis-server"]
        assert all(running(pid, name) for name, pid in pids.items())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert "interrupted" in proc.stderr.read()
        assert [name for name, pid in pids.items() if running(pid, name)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for name, pid in pids.items():  # whatever the demo failed to stop
            if running(pid, name):
                os.kill(pid, signal.SIGKILL)


def test_demo_nodes_without_redis_server_names_the_debian_package(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_SERVER"}
    env["PATH"] = str(tmp_path)  # nothing there: no redis-server to find
    done = subprocess.run(
        demo("--nodes", "2", "--peers", "2"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "apt-get install redis-server" in done.stderr
    assert "Traceback" not in done.stderr


pytestmark = pytest.mark.timeout(180)
