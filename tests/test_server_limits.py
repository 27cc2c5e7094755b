"""Abuse limits on the real server: each refusal happens as documented, is counted in
``/metrics``, and a well-behaved pair of clients keeps full service meanwhile.

The well-behaved pair (:class:`Bystander`) sits in its own room and keeps bouncing a
signaling frame between its two members for the whole abuse; every round trip is timed,
and the median and maximum are printed (``pytest -s``) and checked against a generous
ceiling. Waits are on frames, closes and events with timeouts, never on sleeps; the only
``wait_for`` with a short timeout paces the bystander.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import socket
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from types import TracebackType

import pytest
from conftest import join_frame
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsutil import Frame, recv, run, send

from sansio_signal import Limits
from sansio_signal.adapters.server import REFUSAL_REASONS, RelayServer
from sansio_signal.testing import RelayHarness

ROOMS = "webrtc-dashboard-rooms"
SIGNALING = "webrtc-signaling"
CHAT = "webrtc-dashboard-chat"
TIMEOUT = 5.0
MAX_RTT = 2.0
"""Ceiling for one bystander round trip during abuse: generous, the machine is shared."""


async def read_until_closed(ws: ClientConnection) -> list[Frame]:
    """Every frame until the server closes ``ws``."""
    frames: list[Frame] = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
    return frames


def close_code(ws: ClientConnection) -> int | None:
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


async def joined(
    server: RelayServer, room: str, *users: str, source: str | None = None
) -> list[ClientConnection]:
    """Connect and join ``users`` in order; drain the membership frames they cause.
    ``source``: the loopback address the clients connect from (the relay keeps a rate
    bucket per address across reconnects: attackers that must each start with a full
    bucket come from addresses of their own)."""
    clients: list[ClientConnection] = []
    for user in users:
        if source is None:
            ws = await connect(server.url)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            ws = await connect(server.url, sock=sock)
        await send(ws, join_frame(room, user))
        for c in [*clients, ws]:
            frame = await recv(c)
            assert frame["type"] == "user-joined-room" and frame["userId"] == user, frame
        clients.append(ws)
    return clients


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def refusals(server: RelayServer) -> dict[str, float]:
    """``sansio_signal_refusals_total`` by reason, scraped over HTTP like Prometheus does."""
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    prefix = 'sansio_signal_refusals_total{reason="'
    counts: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            label, _, value = line.removeprefix(prefix).partition('"} ')
            counts[label] = float(value)
    return counts


def incompressible(n: int) -> str:
    """``n`` bytes of text that permessage-deflate cannot shrink (seeded, repeatable)."""
    return base64.b64encode(random.Random(n).randbytes(n * 3 // 4)).decode()


class Bystander:
    """Two well-behaved members of room ``calm`` bouncing a frame between them.

    ``x`` sends ``webrtc-renegotiate`` to ``y``, ``y`` answers with one to ``x``; each
    round trip is timed. ``pace`` seconds pass between round trips (so the pair stays
    under any rate limit a test sets). Leaving the ``async with`` waits for at least
    ``min_samples`` round trips, stops, checks that every frame was the expected one and
    prints the latency.
    """

    def __init__(
        self, server: RelayServer, label: str, *, pace: float = 0.02, min_samples: int = 10
    ) -> None:
        self.server = server
        self.label = label
        self.pace = pace
        self.min_samples = min_samples
        self.rtts: list[float] = []
        self._enough = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.during: tuple[int, int] | None = None
        """The round trips made while :meth:`sustain` repeated the abuse."""

    async def __aenter__(self) -> Bystander:
        self.x, self.y = await joined(self.server, "calm", "calm-x", "calm-y")
        self._tasks = [asyncio.create_task(self._echo()), asyncio.create_task(self._ping())]
        return self

    async def _echo(self) -> None:
        while True:
            frame = await self.y.recv()
            got = json.loads(frame)
            assert (got["type"], got["fromUserId"]) == ("webrtc-renegotiate", "calm-x"), got
            await send(
                self.y,
                {
                    "channel": SIGNALING,
                    "type": "webrtc-renegotiate",
                    "toUserId": "calm-x",
                    "seq": got["seq"],
                },
            )

    async def _ping(self) -> None:
        seq = 0
        while not self._stop.is_set():
            started = time.perf_counter()
            await send(
                self.x,
                {
                    "channel": SIGNALING,
                    "type": "webrtc-renegotiate",
                    "toUserId": "calm-y",
                    "seq": seq,
                },
            )
            reply = await recv(self.x)
            assert (reply["type"], reply["fromUserId"], reply["seq"]) == (
                "webrtc-renegotiate",
                "calm-y",
                seq,
            ), reply
            self.rtts.append(time.perf_counter() - started)
            seq += 1
            if len(self.rtts) >= self.min_samples:
                self._enough.set()
            # Pacing, not synchronisation: the stop event ends it early.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pace)

    async def sustain(self, abuse: Callable[[], Awaitable[None]]) -> int:
        """Repeat ``abuse`` until the pair has made ``min_samples`` round trips while it
        went on (those are the ones reported); the number of rounds."""
        ping = self._tasks[1]
        start = len(self.rtts)
        rounds = 0
        while rounds == 0 or len(self.rtts) - start < self.min_samples:
            await abuse()
            rounds += 1
            if ping.done():
                ping.result()  # the pair lost service: raise what went wrong
                raise AssertionError("the pair stopped")
        self.during = (start, len(self.rtts))
        return rounds

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        echo, ping = self._tasks
        if t is None:
            done, _ = await asyncio.wait(
                {ping, asyncio.create_task(self._enough.wait())},
                timeout=TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ping in done:
                ping.result()  # the pair lost service: raise what went wrong
        self._stop.set()
        await asyncio.wait_for(ping, TIMEOUT)
        echo.cancel()
        await asyncio.gather(echo, return_exceptions=True)
        await self.x.close()
        await self.y.close()
        if t is None:
            assert len(self.rtts) >= self.min_samples
            rtts = self.rtts if self.during is None else self.rtts[slice(*self.during)]
            median, worst = statistics.median(rtts), max(rtts)
            print(
                f"\n[{self.label}] well-behaved pair during the abuse: {len(rtts)} round "
                f"trips, median {median * 1000:.2f} ms, max {worst * 1000:.2f} ms"
            )
            assert worst < MAX_RTT, f"{self.label}: a round trip took {worst:.3f} s"


# --------------------------------------------------------------------------- metrics


def test_every_refusal_reason_is_exported_from_zero() -> None:
    async def scenario(server: RelayServer) -> None:
        assert await refusals(server) == dict.fromkeys(REFUSAL_REASONS, 0.0)

    run(scenario)


# --------------------------------------------------------------------------- frames


def test_flood_is_rate_limited_then_closed_1008() -> None:
    async def scenario(server: RelayServer) -> None:
        attackers = itertools.count()

        async def flood() -> None:
            n = next(attackers)
            user = f"f{n}"
            # The join costs a token; each attacker comes from an address (and so a rate
            # bucket) of its own: the relay does not refill a bucket on reconnect.
            source = f"127.0.{1 + n // 250}.{1 + n % 250}"
            (ws,) = await joined(server, f"flood-{user}", user, source=source)
            for i in range(100):
                await send(ws, {"channel": CHAT, "type": "chat-message", "text": str(i)})
            frames = await read_until_closed(ws)
            assert close_code(ws) == 1008
            errors = [f for f in frames if f["type"] == "error"]
            assert {(f["channel"], f["code"]) for f in errors} == {(CHAT, "rate-limited")}
            assert len(errors) == 20  # --abuse-errors
            assert all(f["type"] == "chat-message" for f in frames if f["type"] != "error")

        async def wave() -> None:
            await asyncio.gather(flood(), flood(), flood(), flood())

        async with Bystander(server, "flood", pace=0.03) as pair:
            rounds = await pair.sustain(wave)
        counts = await refusals(server)
        assert counts["rate-limited"] == rounds * 4 * 20
        assert counts["abuse-close"] == rounds * 4
        assert sum(counts.values()) == rounds * 4 * 21

    run(scenario, limits=Limits(rate_limit=50, rate_burst=50))


def test_oversized_frames_close_1009() -> None:
    async def scenario(server: RelayServer) -> None:
        async def oversize() -> None:
            # Over the limit: the machine answers frame-too-large, then closes 1009.
            near = await connect(server.url)
            await send(near, {"channel": CHAT, "type": "chat-message", "text": "x" * 1100})
            frames = await read_until_closed(near)
            assert [(f["channel"], f["code"]) for f in frames] == [(CHAT, "frame-too-large")]
            assert close_code(near) == 1009
            # Over twice the limit: websockets cuts it off itself, 1009 alone.
            far = await connect(server.url)
            await far.send("x" * 10_000)
            assert await read_until_closed(far) == []
            assert close_code(far) == 1009

        async with Bystander(server, "oversize") as pair:
            rounds = await pair.sustain(oversize)
        counts = await refusals(server)
        assert counts["frame-too-large"] == 2 * rounds
        assert sum(counts.values()) == 2 * rounds

    run(scenario, limits=Limits(max_frame_bytes=1024))


def test_slow_reader_is_closed_1013() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "slow reader"):
            (sender,) = await joined(server, "demo", "sender")
            # A small receive window and a one-frame queue: the server's buffers fill fast.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            slow = await connect(server.url, sock=sock, max_queue=1)
            await send(slow, join_frame("demo", "slow"))
            assert (await recv(slow))["userId"] == "slow"
            assert (await recv(sender))["userId"] == "slow"
            big = {
                "channel": SIGNALING,
                "type": "webrtc-offer",
                "toUserId": "slow",
                "offer": {"type": "offer", "sdp": incompressible(45_000)},
            }
            stop = asyncio.Event()

            async def pump() -> None:
                while not stop.is_set():
                    await send(sender, big)
                    await asyncio.sleep(0)  # a yield, so the server gets to run

            pumping = asyncio.create_task(pump())
            # "slow" never reads; the first frame "sender" gets is slow's departure.
            left = await asyncio.wait_for(sender.recv(), 20)
            stop.set()
            await pumping
            assert json.loads(left) == {
                "channel": ROOMS,
                "type": "user-left-room",
                "roomId": "demo",
                "userId": "slow",
            }
            slow.transport.abort()  # it never reads: a closing handshake would only time out
            await sender.close()
        assert server.closes.get(1013) == 1
        counts = await refusals(server)
        assert counts["slow-consumer"] == 1
        assert sum(counts.values()) == 1

    run(
        scenario,
        limits=Limits(rate_limit=0, abuse_errors=100_000),
        send_buffer=200_000,
        close_timeout=0.5,
    )


# --------------------------------------------------------------------------- handshake


def test_too_many_connections_from_one_address_get_429() -> None:
    async def scenario(server: RelayServer) -> None:
        async def too_many() -> None:
            for _ in range(3):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(server.url)
                assert refused.value.response.status_code == 429

        async with Bystander(server, "per-ip") as pair:  # two connections of the four
            first = await connect(server.url)
            second = await connect(server.url)
            rounds = await pair.sustain(too_many)
            # Every TCP connection counts from accept, plain HTTP too: at the limit, 429.
            status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/healthz")
            assert status == 429
            # A closed connection frees its place (the server releases it before the
            # client sees the TCP connection end).
            await first.close()
            third = await connect(server.url)
            await send(third, join_frame("other", "third"))
            assert (await recv(third))["type"] == "user-joined-room"
            await second.close()
            await third.close()
        counts = await refusals(server)
        assert counts["per-ip-limit"] == 3 * rounds + 1
        assert sum(counts.values()) == 3 * rounds + 1

    run(scenario, max_connections_per_ip=4)


def test_origin_allow_list() -> None:
    async def scenario(server: RelayServer) -> None:
        async def bad_origins() -> None:
            for origin in ("https://evil.example", "null", "https://app.example.org.evil"):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(server.url, origin=origin)  # type: ignore[arg-type]
                assert refused.value.response.status_code == 403
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    server.url,
                    additional_headers=[
                        ("Origin", "https://app.example.org"),
                        ("Origin", "https://evil.example"),
                    ],
                )
            assert refused.value.response.status_code == 403

        # The pair sends no Origin header: not a browser, allowed.
        async with Bystander(server, "origin") as pair:
            rounds = await pair.sustain(bad_origins)
            for origin in ("https://app.example.org", "HTTPS://App.Example.org"):
                ok = await connect(server.url, origin=origin)  # type: ignore[arg-type]
                await send(ok, join_frame("r", "ok"))
                assert (await recv(ok))["type"] == "user-joined-room"
                await ok.close()
            # Plain GETs are not affected.
            status, _ = await asyncio.to_thread(
                http_get,
                f"http://127.0.0.1:{server.port}/healthz",
                {"Origin": "https://evil.example"},
            )
            assert status == 200
        counts = await refusals(server)
        assert counts["bad-origin"] == 4 * rounds
        assert sum(counts.values()) == 4 * rounds

    run(scenario, allowed_origins=["https://app.example.org/"])


def test_a_silent_socket_is_dropped_after_the_handshake_timeout() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "handshake timeout"):
            silent = await asyncio.open_connection("127.0.0.1", server.port)
            slowloris = await asyncio.open_connection("127.0.0.1", server.port)
            slowloris[1].write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            started = time.perf_counter()
            for reader, writer in (silent, slowloris):
                # An abort may arrive as a reset: dropped all the same.
                with contextlib.suppress(ConnectionResetError):
                    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
                writer.close()
            assert time.perf_counter() - started >= 0.4
        counts = await refusals(server)
        assert counts["handshake-timeout"] == 2
        assert sum(counts.values()) == 2

    run(scenario, open_timeout=0.5)


# --------------------------------------------------------------------------- liveness


def test_idle_timeout_closes_1001_even_when_pings_are_answered() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "idle", pace=0.05, min_samples=20):
            # websockets answers the server's pings (every 0.1 s) by itself, but sends no
            # frame: only frames count as activity.
            silent, other = await joined(server, "quiet", "silent", "other")
            started = time.perf_counter()
            ticking = asyncio.create_task(keep_talking(other))
            heard = await read_until_closed(silent)
            assert {(f["type"], f["fromUserId"]) for f in heard} <= {("chat-message", "other")}
            assert close_code(silent) == 1001
            assert silent.protocol.close_rcvd is not None
            assert silent.protocol.close_rcvd.reason == "idle timeout"
            assert time.perf_counter() - started >= 1.15
            ticking.cancel()
            # The silent member left at once; the talking one stayed past the timeout.
            assert await next_non_chat(other) == {
                "channel": ROOMS,
                "type": "user-left-room",
                "roomId": "quiet",
                "userId": "silent",
            }
            await other.close()
        counts = await refusals(server)
        assert counts["idle-timeout"] == 1
        assert sum(counts.values()) == 1

    # The talker speaks every 0.1 s against a 1.2 s timeout: a wide margin for a busy CI.
    run(scenario, limits=Limits(idle_timeout=1.2), ping_interval=0.1, ping_timeout=2.0)


async def keep_talking(ws: ClientConnection) -> None:
    """Send a chat frame every 0.1 s (pacing) until cancelled."""
    while True:
        await send(ws, {"channel": CHAT, "type": "chat-message", "text": "tick"})
        await asyncio.sleep(0.1)


async def next_non_chat(ws: ClientConnection) -> Frame:
    while True:
        frame = await recv(ws)
        if frame["type"] != "chat-message":
            return frame


def test_a_client_that_never_answers_pings_is_dropped() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "ping timeout"):  # answers pings: stays
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            key = base64.b64encode(b"0123456789abcdef").decode()
            writer.write(
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 101 ")
            rest = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server hangs up
            writer.close()
            opcodes, close = parse_server_frames(rest)
            assert opcodes[0] == 0x9 and opcodes[-1] == 0x8  # pinged, then closed
            assert close == (1011, "keepalive ping timeout")
        counts = await refusals(server)
        assert counts["ping-timeout"] == 1
        assert sum(counts.values()) == 1

    # The bystander's pongs get a whole second, so a busy machine does not drop it too.
    run(scenario, ping_interval=0.2, ping_timeout=1.0)


def parse_server_frames(data: bytes) -> tuple[list[int], tuple[int, str] | None]:
    """Opcodes of unmasked short server frames, and the close frame's code and reason."""
    opcodes: list[int] = []
    close: tuple[int, str] | None = None
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert length < 126 and not data[1] & 0x80
        payload, data = data[2 : 2 + length], data[2 + length :]
        opcodes.append(opcode)
        if opcode == 0x8:
            close = (int.from_bytes(payload[:2], "big"), payload[2:].decode())
    return opcodes, close


# --------------------------------------------------------------------------- rooms


def test_rooms_limit() -> None:
    async def scenario(server: RelayServer) -> None:
        async with Bystander(server, "rooms limit"):  # room 1 of 3: "calm"
            (a,) = await joined(server, "r1", "a")
            (b,) = await joined(server, "r2", "b")
            c = await connect(server.url)
            await send(c, join_frame("r3", "c"))
            error = await recv(c)
            assert (error["channel"], error["type"], error["code"]) == (ROOMS, "error", "room-full")
            assert "room limit" in error["message"]
            # An existing room takes joins as usual.
            await send(c, join_frame("r1", "c"))
            assert (await recv(c))["existingParticipants"] == ["a"]
            assert (await recv(a))["userId"] == "c"
            # b alone in r2 may move to a new room: r2 closes as r4 opens.
            await send(b, join_frame("r4", "b"))
            assert (await recv(b))["roomId"] == "r4"
            # a is not alone in r1: a new room would be a fourth. a stays in r1.
            await send(a, join_frame("r5", "a"))
            assert (await recv(a))["code"] == "room-full"
            await send(a, {"channel": CHAT, "type": "chat-message", "text": "still here"})
            for ws in (a, c):
                chat = await recv(ws)
                assert (chat["roomId"], chat["fromUserId"], chat["text"]) == (
                    "r1",
                    "a",
                    "still here",
                )
            for ws in (a, b, c):
                await ws.close()
        counts = await refusals(server)
        assert counts["rooms-limit"] == 2
        assert counts["room-full"] == 0
        assert sum(counts.values()) == 2

    run(scenario, limits=Limits(max_rooms=3))


def test_room_size_refusal_is_counted_apart_from_the_rooms_limit() -> None:
    async def scenario(server: RelayServer) -> None:
        clients = await joined(server, "small", "a", "b")
        c = await connect(server.url)
        await send(c, join_frame("small", "c"))
        assert (await recv(c))["code"] == "room-full"
        for ws in [*clients, c]:
            await ws.close()
        counts = await refusals(server)
        assert (counts["room-full"], counts["rooms-limit"]) == (1, 0)

    run(scenario, limits=Limits(max_room_size=2, max_rooms=5))


_OPS = st.lists(
    st.tuples(
        st.integers(0, 4),  # connection
        st.sampled_from(["join", "leave", "drop"]),
        st.sampled_from(["r0", "r1", "r2", "r3", "r4"]),
    ),
    max_size=40,
)


@given(ops=_OPS)
def test_rooms_never_exceed_max_rooms_and_a_refused_join_changes_nothing(
    ops: list[tuple[int, str, str]],
) -> None:
    h = RelayHarness(Limits(max_rooms=2, rate_limit=0, abuse_errors=1_000))
    conns = [h.connect() for _ in range(5)]
    for index, op, room in ops:
        conn = conns[index]
        before = h.machine.member(conn)
        if op == "join":
            h.join(conn, room, f"u{index}")
            frames = h.take(conn)
            if frames and frames[-1]["type"] == "error":
                assert frames[-1]["code"] == "room-full"
                assert h.machine.member(conn) == before
                assert h.machine.directory.size(room) == 0  # only new rooms are refused
        elif op == "leave" and before is not None:
            h.send(conn, {"channel": ROOMS, "type": "leave-room", "roomId": before[0]})
        elif op == "drop":
            h.disconnect(conn)
            conns[index] = h.connect()
        assert h.machine.room_count <= 2
        for c in conns:
            h.take(c)
