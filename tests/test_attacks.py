"""Attacks on the transport, as regression tests on a real server on loopback.

- A client that stops reading while its queue stays under ``--send-buffer``: its close
  (idle timeout, ping timeout) must not wait behind the data it does not read; the
  connection is aborted and its memory reclaimed within the timeout's bound.
- Slowloris: half-open sockets count against their address from accept, the ones over
  ``--max-connections-per-ip`` are refused at once (no traceback), the handshake timeout
  frees the others, and a client from another address connects meanwhile.
- Held members: sockets dropped on purpose leave members held for a resume; they count
  against their address, so one address cannot fill the server with held rooms.
- Reconnecting to reset the rate limit: the next connection from the address starts
  from the bucket the last one left; a victim receives no more than the rate allows.

Times are printed (``pytest -s``): they are the figures docs/security.md quotes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

import pytest
from conftest import join_frame
from test_server_limits import Bystander, incompressible, joined, refusals
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from wsutil import recv, run, send

from sansio_signal import Limits
from sansio_signal.adapters.server import RelayServer

SIGNALING = "webrtc-signaling"


async def stalled_reader(server: RelayServer, room: str) -> tuple[ClientConnection, int]:
    """A member of ``room`` that reads nothing once joined (a tiny receive window, a
    one-frame queue, no pings of its own), and its server-side connection id."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    before = set(server._links)
    slow = await connect(server.url, sock=sock, max_queue=1, ping_interval=None)
    (conn,) = set(server._links) - before
    await send(slow, join_frame(room, "slow"))
    assert (await recv(slow))["userId"] == "slow"
    return slow, conn


async def flood_until_stalled(server: RelayServer, sender: ClientConnection, conn: int) -> None:
    """Send offers to ``slow`` until the server cannot write to it any more (its socket
    buffer is full), while its queue stays well under the send buffer."""
    big = {
        "channel": SIGNALING,
        "type": "webrtc-offer",
        "toUserId": "slow",
        "offer": {"type": "offer", "sdp": incompressible(45_000)},
    }
    link = server._links[conn]
    stats = server.machine.stats

    def relayed(offers: int) -> Callable[[], bool]:
        return lambda: stats.frames_out["webrtc-offer"] >= offers

    deadline = time.perf_counter() + 20
    started = time.perf_counter()
    # Until the socket takes no more and frames wait in the queue (or the close does).
    while not (link.paused and (link.unsent_bytes() > 100_000 or link.closing)):
        if conn not in server._links:
            pytest.fail(
                f"the slow reader's connection closed after {time.perf_counter() - started:.2f} s"
                " of flood, before the server stalled on it: nothing was tested"
            )
        assert time.perf_counter() < deadline, "the server never stalled on the slow reader"
        offers = stats.frames_out["webrtc-offer"] + 1
        await send(sender, big)
        # One offer at a time: the next goes once the relay has handed this one to slow's
        # socket (synchronously), so the check above sees its effect and the queue grows
        # by a frame per round, never past the send buffer's slow-consumer bound.
        await server.wait_until(relayed(offers), 5)
    assert link.unsent_bytes() < server.send_buffer // 2  # not a slow-consumer close
    print(f"\nstalled after {time.perf_counter() - started:.2f} s of flood", end="")


async def flooded_stalled_reader(
    server: RelayServer,
) -> tuple[ClientConnection, ClientConnection, int]:
    """``sender`` and ``slow`` in room demo, ``sender`` flooding ``slow`` until the server
    stalls on it (:func:`flood_until_stalled`): sender, slow, slow's connection id."""
    (sender,) = await joined(server, "demo", "sender")
    slow, conn = await stalled_reader(server, "demo")
    assert (await recv(sender))["userId"] == "slow"
    await flood_until_stalled(server, sender, conn)
    return sender, slow, conn


async def gone(server: RelayServer, conn: int, bound: float) -> float:
    """Seconds until connection ``conn`` is gone from the server (at most ``bound``)."""
    started = time.perf_counter()
    await server.wait_until(lambda: conn not in server._links, bound)
    return time.perf_counter() - started


def test_a_reader_that_stops_is_reclaimed_by_the_idle_timeout() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "stalled reader, idle timeout"):
            sender, slow, conn = await flooded_stalled_reader(server)
            # Idle close decided 3 s after slow's join (the flood stalls it within a second),
            # sent or aborted ≤ 1 s later.
            took = await gone(server, conn, 6.0)
            print(f"\nstalled reader reclaimed {took:.2f} s after the flood (idle 3 s)")
            slow.transport.abort()
            await sender.close()
        counts = await refusals(server)
        assert counts["idle-timeout"] >= 1  # slow (the sender may go idle too)
        assert counts["slow-consumer"] == 0

    run(
        scenario,
        limits=Limits(rate_limit=0, abuse_errors=100_000, idle_timeout=3.0),
        ping_interval=None,
        close_timeout=1.0,
    )


def test_a_reader_that_stops_is_reclaimed_by_the_ping_timeout() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "stalled reader, ping timeout"):
            sender, slow, conn = await flooded_stalled_reader(server)
            # Next ping ≤ 0.5 s, its timeout 1 s, the close's bound 1 s.
            took = await gone(server, conn, 6.0)
            print(f"\nstalled reader reclaimed {took:.2f} s after the flood (ping 0.5 + 1 s)")
            left = await recv(sender)
            assert (left["type"], left["userId"]) == ("user-left-room", "slow")
            slow.transport.abort()
            await sender.close()
        counts = await refusals(server)
        assert counts["ping-timeout"] == 1
        assert counts["slow-consumer"] == 0
        assert sum(counts.values()) == 1

    run(
        scenario,
        limits=Limits(rate_limit=0, abuse_errors=100_000),
        ping_interval=0.5,
        ping_timeout=1.0,
        close_timeout=1.0,
    )


def test_slowloris_is_refused_at_accept_and_others_still_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # what ``serve`` logs by default

    async def scenario(server: RelayServer) -> None:
        opened = time.perf_counter()
        half_open = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(50)]
        await server.wait_until(lambda: server.machine.address_load("127.0.0.1") == 5, 2)

        async def received(reader: asyncio.StreamReader) -> tuple[bytes, float]:
            """All a half-open socket received until the server closed it, and when."""
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b"<reset>"
            return data, time.perf_counter() - opened

        # Read them from now on: the refusals come while the next client joins.
        reading = asyncio.gather(*(received(r) for r, _ in half_open))

        # A client from another loopback address is counted apart and gets in meanwhile.
        started = time.perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.2", 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        legit = await asyncio.wait_for(connect(server.url, sock=sock), 5)
        await send(legit, join_frame("room", "legit"))
        assert (await asyncio.wait_for(recv(legit), 5))["type"] == "user-joined-room"
        print(f"\nlegit client joined in {time.perf_counter() - started:.3f} s")
        assert server.machine.address_load("127.0.0.2") == 1
        assert server.machine.address_load("127.0.0.1") <= 5  # never over the limit

        # Refused at accept (429) or freed by the handshake timeout (1 s): all closed
        # within a generous bound of opening them.
        try:
            outcomes = await asyncio.wait_for(reading, opened + 6.0 - time.perf_counter())
        except TimeoutError:
            pytest.fail("the 50 half-open sockets were not all closed 6 s after opening them")
        refused = [t for data, t in outcomes if data.startswith(b"HTTP/1.1 429 ")]
        dropped = [t for data, t in outcomes if data == b""]
        print(
            f"{len(refused)} refused within {max(refused, default=0):.2f} s,"
            f" {len(dropped)} dropped within {max(dropped, default=0):.2f} s"
        )
        assert (len(refused), len(dropped)) == (45, 5), [data[:40] for data, _ in outcomes]
        for _, writer in half_open:
            writer.close()
        await server.wait_until(lambda: server.machine.address_load("127.0.0.1") == 0, 2)

        await send(
            legit, {"channel": "webrtc-dashboard-chat", "type": "chat-message", "text": "hi"}
        )
        await legit.close()
        counts = await refusals(server)
        assert counts["per-ip-limit"] == 45
        assert counts["handshake-timeout"] == 5
        assert sum(counts.values()) == 50

    run(scenario, max_connections_per_ip=5, open_timeout=1.0)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_held_members_count_against_their_address() -> None:
    """Join, then drop the socket (no close): each drop leaves a member held for a
    resume. With two places per address, the third connection is refused (429) while
    two members are held, and no third room opens."""

    async def scenario(server: RelayServer) -> None:
        rooms: list[str] = []
        for n in range(2):
            rooms.append(f"held-{n}")
            ws = await connect(server.url)
            await send(ws, join_frame(rooms[-1], "squatter"))
            assert (await recv(ws))["type"] == "user-joined-room"
            ws.transport.abort()  # gone without a close: held
            await server.wait_until(lambda: server.machine.held_count == len(rooms), 5)
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.url)
            assert refused.value.response.status_code == 429
        assert server.machine.room_count == 2
        assert server.machine.address_load("127.0.0.1") == 2
        assert server.refusal_counts()["per-ip-limit"] == 3
        # the graces pass: the places are free again
        await server.wait_until(lambda: server.machine.held_count == 0, 5)
        back = await connect(server.url)
        await back.close()

    run(scenario, max_connections_per_ip=2, limits=Limits(resume_grace=1.0))


def test_reconnecting_does_not_reset_the_rate_limit() -> None:
    """An attacker floods a victim with offers, reconnecting as soon as it is rate
    limited: the victim gets the burst once, then the sustained rate."""

    async def scenario(server: RelayServer) -> None:
        (victim,) = await joined(server, "v", "victim")
        got = 0
        arrived = asyncio.Event()

        async def count() -> None:
            nonlocal got
            while True:
                frame = await recv(victim)
                got += frame["type"] == "webrtc-offer"
                arrived.set()

        counting = asyncio.create_task(count())
        started = time.perf_counter()
        reconnects = 0
        while time.perf_counter() - started < 1.5:
            # max_queue=None: the rate-limited replies it never reads must not stop it
            # reading the answer to its close (websockets pauses a full reader).
            attacker = await connect(server.url, max_queue=None)
            await send(attacker, join_frame("v", f"atk{reconnects}"))
            for _ in range(250):  # more than a fresh burst
                await send(
                    attacker,
                    {
                        "channel": SIGNALING,
                        "type": "webrtc-offer",
                        "toUserId": "victim",
                        "offer": {"type": "offer", "sdp": "x"},
                    },
                )
            await attacker.close()
            reconnects += 1
        elapsed = time.perf_counter() - started
        await server.wait_until(lambda: server.machine.connection_count == 1, 5)
        # every offer the relay let through reaches the victim
        relayed = server.machine.stats.frames_out["webrtc-offer"]
        while got < relayed:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        assert got == relayed
        counting.cancel()
        print(f"\n{reconnects} reconnects in {elapsed:.2f} s: {got} offers reached the victim")
        assert reconnects >= 3, "the attack did not reconnect: nothing was tested"
        assert got <= 200 + 50 * elapsed + 5

    run(scenario, limits=Limits(rate_limit=50, rate_burst=200, abuse_errors=100_000))
