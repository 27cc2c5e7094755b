"""Scale-out end to end (issue 14): real ``sansio-signal serve --redis`` processes on one
real ``redis-server``, raw WebSocket clients speaking the wire protocol.

Membership, signaling and chat across processes; racing joins of one id on two processes
(one winner each round); a resume on another process after a dropped socket, with the
missed frames in order; a process killed (its members resume elsewhere, or leave once
within grace + node timeout); a process stopped with SIGTERM (1012, resume elsewhere);
Redis killed and restarted (``/healthz`` 503, ``unavailable``, recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from redisfix import RedisServer, redis_server  # noqa: F401 (a fixture)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from wsutil import line_of, reap, recv, send, spawn_serve

ROOMS, SIGNALING, CHAT = "webrtc-dashboard-rooms", "webrtc-signaling", "webrtc-dashboard-chat"
TIMEOUT = 10.0


def cluster_flags(redis: RedisServer, name: str) -> tuple[str, ...]:
    return (
        "--redis",
        redis.url,
        "--node-id",
        name,
        "--rate-limit",
        "0",
        "--node-timeout",
        "1.5",
        "--resume-grace",
        "3",
    )


async def closed_with(ws: ClientConnection) -> int | None:
    """The close code the server sent ``ws`` (frames before it are skipped)."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


async def recv_until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame = await recv(ws)
        if frame["type"] == kind:
            return frame


@asynccontextmanager
async def nodes(
    redis: RedisServer, tmp_path: Path, *names: str, flags: tuple[str, ...] = ()
) -> AsyncIterator[list[str]]:
    """``serve --redis`` processes named ``names``; their ws:// URLs."""
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    try:
        for name in names:
            proc, url = await spawn_serve(tmp_path, *cluster_flags(redis, name), *flags)
            procs.append(proc)
            urls.append(url)
            _PROCS[url] = proc
        yield urls
    finally:
        for url in urls:
            del _PROCS[url]
        await reap(*procs)


async def joined(url: str, room: str, user: str, token: str | None = None) -> ClientConnection:
    ws = await connect(url)
    frame: dict[str, Any] = {"channel": ROOMS, "type": "join-room", "roomId": room, "userId": user}
    if token is not None:
        frame["resumeToken"] = token
    await send(ws, frame)
    return ws


async def ice(ws: ClientConnection, to: str, **fields: Any) -> None:
    """A ``webrtc-ice`` (end of candidates) to ``to``, with ``fields`` of its own."""
    frame = {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": to, "candidate": None}
    await send(ws, {**frame, **fields})


def healthz(url: str) -> tuple[int, dict[str, Any]]:
    http_url = url.replace("ws://", "http://") + "healthz"
    try:
        with urllib.request.urlopen(http_url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric(url: str, name: str) -> float:
    http_url = url.replace("ws://", "http://") + "metrics"
    with urllib.request.urlopen(http_url, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


_PROCS: dict[str, asyncio.subprocess.Process] = {}
"""The serve process behind each ws:// URL of the running test (for its log)."""


async def logged(url: str, wanted: str) -> str:
    """Until the serve process at ``url`` logs a line containing ``wanted`` (the event
    the test waits for: a member held, a node swept, Redis lost or back)."""
    return await line_of(_PROCS[url].stderr, wanted, TIMEOUT)


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_members_on_two_processes_share_a_room(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    async def scenario() -> None:
        async with nodes(redis_server, tmp_path, "east", "west") as (east, west):
            alice = await joined(east, "demo", "alice")
            assert (await recv(alice))["existingParticipants"] == []
            bob = await joined(west, "demo", "bob")
            own = await recv(bob)
            assert own["existingParticipants"] == ["alice"] and "resumeToken" in own
            assert (await recv(alice))["userId"] == "bob"
            for i in range(20):
                await ice(alice, "bob", n=i)
            got = [await recv(bob) for _ in range(20)]
            assert [f["n"] for f in got] == list(range(20))
            assert {(f["fromUserId"], f["roomId"]) for f in got} == {("alice", "demo")}
            await send(bob, {"channel": CHAT, "type": "chat-message", "text": "hi"})
            for ws in (alice, bob):
                chat = await recv(ws)
                assert (chat["type"], chat["fromUserId"], chat["text"]) == (
                    "chat-message",
                    "bob",
                    "hi",
                )
            status, body = healthz(east)
            assert status == 200 and body["node"] == "east" and body["redis"] == "ok"
            assert metric(west, 'sansio_signal_node{node="west"}') == 1.0
            await bob.close()
            left = await recv(alice)
            assert (left["type"], left["userId"]) == ("user-left-room", "bob")
            await alice.close()

    run(scenario())


def test_racing_joins_of_one_id_on_two_processes(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    async def scenario() -> None:
        async with nodes(redis_server, tmp_path, "east", "west") as (east, west):
            for round_ in range(20):
                room = f"race-{round_}"
                a, b = await asyncio.gather(joined(east, room, "same"), joined(west, room, "same"))
                answers = [await recv(a), await recv(b)]
                kinds = sorted(f["type"] if f["type"] != "error" else f["code"] for f in answers)
                assert kinds == ["user-id-taken", "user-joined-room"], (round_, answers)
                await asyncio.gather(a.close(), b.close())

    run(scenario())


def test_racing_joins_over_the_room_size_on_two_processes(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """--max-room-size 3 holds across processes when 6 joins race on two of them."""

    async def scenario() -> None:
        async with nodes(
            redis_server, tmp_path, "east", "west", flags=("--max-room-size", "3")
        ) as (east, west):
            for round_ in range(5):
                room = f"full-{round_}"
                clients = await asyncio.gather(
                    *(joined((east, west)[i % 2], room, f"u{i}") for i in range(6))
                )
                answers = [await recv(ws) for ws in clients]
                kinds = sorted(f["type"] if f["type"] != "error" else f["code"] for f in answers)
                assert kinds == ["room-full"] * 3 + ["user-joined-room"] * 3, (round_, kinds)
                await asyncio.gather(*(ws.close() for ws in clients))

    run(scenario())


def test_a_dropped_member_resumes_on_the_other_process(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with nodes(redis_server, tmp_path, "east", "west") as (east, west):
            alice = await joined(east, "demo", "alice")
            await recv(alice)
            bob = await joined(east, "demo", "bob")
            token = (await recv(bob))["resumeToken"]
            await recv(alice)
            bob.transport.abort()  # the socket drops: held for a resume
            await logged(east, 'User "bob" dropped from room "demo"; held')
            for i in range(5):
                await ice(alice, "bob", n=i)
            bob2 = await joined(west, "demo", "bob", token=token)
            own = await recv(bob2)
            assert own["type"] == "user-joined-room" and own["existingParticipants"] == ["alice"]
            missed = [(await recv(bob2))["n"] for _ in range(5)]
            assert missed == list(range(5))
            await alice.close()
            await bob2.close()

    run(scenario())


@asynccontextmanager
async def east_and_west(
    redis: RedisServer, tmp_path: Path, *east_users: str
) -> AsyncIterator[EastWest]:
    """west, a steady process with alice; east, one the test kills, stops or restarts
    (``procs[0]``: whatever is there at the end is reaped), with ``east_users`` joined
    after alice (she has seen them join)."""
    east, east_url = await spawn_serve(tmp_path, *cluster_flags(redis, "east"))
    procs = [east]
    try:
        async with nodes(redis, tmp_path, "west") as (west,):
            alice = await joined(west, "demo", "alice")
            await recv(alice)
            members: dict[str, tuple[ClientConnection, str]] = {}
            for user in east_users:
                ws = await joined(east_url, "demo", user)
                members[user] = (ws, (await recv(ws))["resumeToken"])
                assert (await recv(alice))["userId"] == user
            yield EastWest(procs, east_url, west, alice, members)
            await alice.close()
    finally:
        await reap(*procs)


@attrs.define
class EastWest:
    procs: list[asyncio.subprocess.Process]
    east: str
    west: str
    alice: ClientConnection
    members: dict[str, tuple[ClientConnection, str]]
    """On east: user → (its connection, its resume token)."""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_process_that_dies_hands_its_members_over(
    how: str,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """bob and carol are on east; east dies. bob resumes on west with what he missed;
    carol does not come back and leaves, once, within grace + node timeout."""

    async def scenario() -> None:
        async with east_and_west(redis_server, tmp_path, "bob", "carol") as c:
            (east,), (bob, token) = c.procs, c.members["bob"]
            died = asyncio.get_running_loop().time()
            if how == "SIGKILL":
                east.kill()
            else:
                east.terminate()
                assert await closed_with(bob) == 1012
            await east.wait()
            await ice(c.alice, "bob", n=1)
            bob2 = await joined(c.west, "demo", "bob", token=token)
            own = await recv(bob2)
            assert own["type"] == "user-joined-room", own
            assert own["existingParticipants"] == ["alice", "carol"]
            # what it missed: maybe carol's join (if east died before taking it),
            # then alice's signal
            missed = await recv_until(bob2, "webrtc-ice")
            assert (missed["fromUserId"], missed["n"]) == ("alice", 1)
            left = await asyncio.wait_for(recv_until(c.alice, "user-left-room"), TIMEOUT)
            took = asyncio.get_running_loop().time() - died
            assert left["userId"] == "carol"
            print(f"\ncarol left {took:.2f} s after the {how} (bound: grace 3 + timeout 1.5)")
            # the bound (grace + node timeout), and slack for a loaded machine
            assert took <= 3.0 + 1.5 + 1.5
            await bob2.close()

    run(scenario())


def test_a_paused_process_sends_its_members_to_resume(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """east is paused (SIGSTOP) past its liveness; west sweeps bob. When east runs
    again it closes bob with 1012, and bob resumes on west with what he missed."""

    async def scenario() -> None:
        async with east_and_west(redis_server, tmp_path, "bob") as c:
            (east,), (bob, token) = c.procs, c.members["bob"]
            east.send_signal(signal.SIGSTOP)
            try:
                await logged(c.west, "is gone: holding its 1 members")
                await ice(c.alice, "bob", n=7)
            finally:
                east.send_signal(signal.SIGCONT)
            assert await closed_with(bob) == 1012
            bob2 = await joined(c.west, "demo", "bob", token=token)
            assert (await recv(bob2))["type"] == "user-joined-room"
            missed = await recv_until(bob2, "webrtc-ice")
            assert missed["n"] == 7
            await bob2.close()

    run(scenario())


def test_a_process_restarted_under_its_name_is_a_new_node(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """east is killed and started again at once with the same --node-id: its old
    members are the dead incarnation's, swept (carol leaves), not taken for its own."""

    async def scenario() -> None:
        async with east_and_west(redis_server, tmp_path, "carol") as c:
            c.procs[0].kill()
            await c.procs[0].wait()
            c.procs[0], _url = await spawn_serve(tmp_path, *cluster_flags(redis_server, "east"))
            left = await asyncio.wait_for(recv_until(c.alice, "user-left-room"), TIMEOUT)
            assert left["userId"] == "carol"

    run(scenario())


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_redis_down_is_503_and_unavailable_then_recovers(
    how: str,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Killed: connections refused. Frozen (SIGSTOP): it accepts and never answers —
    the relay's commands time out instead of holding joins forever. bob, joined before:
    a killed Redis without persistence comes back empty, the relay finds its place there
    lapsed and sends bob to rejoin (1012); a frozen one kept everything, bob stays."""

    async def scenario() -> None:
        async with nodes(redis_server, tmp_path, "east") as (east,):
            bob = await joined(east, "demo", "bob")
            token = (await recv(bob))["resumeToken"]
            if how == "killed":
                redis_server.kill()
            else:
                os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                await logged(east, "Redis cannot be reached")
                status, body = healthz(east)
                assert (status, body["redis"]) == (503, "down")
                ws = await joined(east, "demo", "alice")
                error = await recv(ws)
                assert (error["type"], error["code"]) == ("error", "unavailable")
            finally:
                if how == "killed":
                    redis_server.restart()
                else:
                    os.kill(redis_server.pid, signal.SIGCONT)
            await logged(east, "Redis answers again")
            assert healthz(east)[0] == 200
            if how == "killed":  # it came back empty: bob's place is gone with it
                assert await closed_with(bob) == 1012
                bob = await joined(east, "demo", "bob", token=token)  # now a fresh join
                assert (await recv(bob))["type"] == "user-joined-room"
            # frozen: nothing was lost (Redis kept its data): bob stays, untouched
            await send(
                ws, {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "alice"}
            )
            assert (await recv(ws))["type"] == "user-joined-room"
            assert (await recv(bob))["userId"] == "alice"
            await ws.close()
            await bob.close()

    run(scenario())


pytestmark = pytest.mark.timeout(120)
