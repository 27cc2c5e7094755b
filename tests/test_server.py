"""Integration: the real relay server on loopback, real ``websockets`` clients.

Every wait is on a frame or a close with a timeout; "nothing was delivered" is shown
with a barrier (a later frame on the same connection arrives first).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsutil import recv, run, send

from sansio_signal import Limits
from sansio_signal.adapters.server import RelayServer

ROOMS = "webrtc-dashboard-rooms"
SIGNALING = "webrtc-signaling"
CHAT = "webrtc-dashboard-chat"
TIMEOUT = 5.0


async def closed_code(ws: ClientConnection) -> int | None:
    """Read until the server closes ``ws``; the close code it sent."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


async def joined(server: RelayServer, room: str, *users: str) -> list[ClientConnection]:
    """Connect and join ``users`` in order; drain the membership frames they cause."""
    clients: list[ClientConnection] = []
    for user in users:
        ws = await connect(server.url)
        await send(ws, {"channel": ROOMS, "type": "join-room", "roomId": room, "userId": user})
        for c in [*clients, ws]:
            frame = await recv(c)
            assert frame["type"] == "user-joined-room" and frame["userId"] == user
        clients.append(ws)
    return clients


def incompressible(n: int) -> str:
    """``n`` bytes of text that permessage-deflate cannot shrink (seeded, repeatable)."""
    return base64.b64encode(random.Random(n).randbytes(n * 3 // 4)).decode()


def http_get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def http_url(server: RelayServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


# --------------------------------------------------------------------------- membership


def test_join_relay_chat_leave() -> None:
    async def scenario(server: RelayServer) -> None:
        bob = await connect(server.url)
        await send(
            bob, {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "user_b"}
        )
        own = await recv(bob)
        assert isinstance(own.pop("resumeToken"), str)
        assert own == {
            "channel": ROOMS,
            "type": "user-joined-room",
            "roomId": "demo",
            "userId": "user_b",
            "existingParticipants": [],
        }

        alice = await connect(server.url)
        await send(
            alice, {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "user_a"}
        )
        mine = await recv(alice)
        assert "resumeToken" in mine and mine["existingParticipants"] == ["user_b"]
        theirs = await recv(bob)
        assert theirs == {
            "channel": ROOMS,
            "type": "user-joined-room",
            "roomId": "demo",
            "userId": "user_a",
            "existingParticipants": ["user_b"],
        }

        offer = {
            "channel": SIGNALING,
            "type": "webrtc-offer",
            "toUserId": "user_b",
            "offer": {"type": "offer", "sdp": "v=0\r\n"},
            "epoch": 2,
            "fromUserId": "mallory",
            "roomId": "elsewhere",
        }
        await send(alice, offer)
        assert await recv(bob) == {**offer, "fromUserId": "user_a", "roomId": "demo"}

        before = time.time()
        await send(bob, {"channel": CHAT, "type": "chat-message", "text": "héllo ✓"})
        for ws in (alice, bob):
            chat = await recv(ws)
            ts = chat.pop("ts")
            assert before - 1 <= ts <= time.time() + 1
            assert chat == {
                "channel": CHAT,
                "type": "chat-message",
                "roomId": "demo",
                "fromUserId": "user_b",
                "text": "héllo ✓",
            }

        await send(bob, {"channel": ROOMS, "type": "leave-room", "roomId": "demo"})
        assert await recv(alice) == {
            "channel": ROOMS,
            "type": "user-left-room",
            "roomId": "demo",
            "userId": "user_b",
        }
        await alice.close()
        await bob.close()

    run(scenario)


def test_one_info_log_line_per_relayed_frame(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11: serve at INFO wrote two lines per relayed frame; operations.md says one,
    in the seed's words."""
    offers = 10

    async def scenario(server: RelayServer) -> None:
        alice, bob = await joined(server, "demo", "alice", "bob")
        caplog.clear()
        for n in range(offers):
            await send(
                alice,
                {
                    "channel": SIGNALING,
                    "type": "webrtc-offer",
                    "toUserId": "bob",
                    "offer": {"type": "offer", "sdp": f"v={n}"},
                },
            )
        await send(bob, {"channel": CHAT, "type": "chat-message", "text": "hi"})
        for _ in range(offers + 1):
            await recv(bob)
        await recv(alice)  # the chat
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert lines == [
            'Relaying message type "webrtc-offer" on channel "webrtc-signaling".'
            " Message relayed to 1 clients"
        ] * offers + [
            'Relaying message type "chat-message" on channel "webrtc-dashboard-chat".'
            " Message relayed to 2 clients"
        ]
        await alice.close()
        await bob.close()

    with caplog.at_level(logging.INFO):
        run(scenario)


def test_disconnect_leaves_at_once_and_rooms_are_isolated() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "r1", "a", "b")
        (x,) = await joined(server, "r2", "x")
        # x cannot reach a: a is in another room; nothing is delivered to anyone.
        await send(
            x, {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": "a", "candidate": None}
        )
        error = await recv(x)
        assert (error["channel"], error["code"]) == (SIGNALING, "peer-not-found")
        await send(b, {"channel": SIGNALING, "type": "webrtc-renegotiate", "toUserId": "a"})
        first = await recv(a)  # the barrier: b's frame is the first thing a sees
        assert (first["type"], first["fromUserId"]) == ("webrtc-renegotiate", "b")

        await b.close()
        assert await recv(a) == {
            "channel": ROOMS,
            "type": "user-left-room",
            "roomId": "r1",
            "userId": "b",
        }
        await a.close()
        await x.close()

    run(scenario)


@pytest.mark.parametrize("wait_for_join", [True, False])
@pytest.mark.parametrize("await_close", [True, False])
def test_clean_close_then_immediate_rejoin_never_finds_the_id_taken(
    await_close: bool, wait_for_join: bool
) -> None:
    """Issue 11: a clean close followed at once by a rejoin with the same id got
    user-id-taken 6-16 times in 20: websockets answered the close frame as it arrived,
    before the relay had read the frames ahead of it and heard of the close. Now the
    close is handled after every frame received before it, then answered. The client
    runs on its own event loop (as another process would); it awaits its close, or, like
    a browser's ``close()``, does not; it waits for its join's answer, or closes with
    the join still unread by the server."""
    tries = 20
    join = {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "alice"}

    async def client(url: str) -> list[str]:
        outcomes: list[str] = []
        for _ in range(tries):
            ws = await connect(url)
            await send(ws, join)
            if wait_for_join:
                assert (await recv(ws))["type"] == "user-joined-room"
            closing = asyncio.create_task(ws.close())  # 1000: leaves at once
            if await_close:
                await closing
            else:
                await asyncio.sleep(0)  # the close frame is written; go on at once
            again = await connect(url)
            await send(again, join)
            outcomes.append((await recv(again)).get("code") or "joined")
            await again.close()
            await closing
        return outcomes

    async def scenario(server: RelayServer) -> None:
        outcomes = await asyncio.to_thread(asyncio.run, client(server.url))
        assert outcomes == ["joined"] * tries
        await server.wait_until(lambda: server.machine.room_count == 0)

    run(scenario)


def test_ordering_per_pair_over_real_sockets() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "order", "a", "b")
        for seq in range(300):
            await send(
                a,
                {
                    "channel": SIGNALING,
                    "type": "webrtc-ice",
                    "toUserId": "b",
                    "candidate": {
                        "candidate": f"candidate:{seq} 1 udp 1 127.0.0.1 9 typ host",
                        "sdpMid": "0",
                        "sdpMLineIndex": 0,
                    },
                    "seq": seq,
                },
            )
        got = [(await recv(b))["seq"] for _ in range(300)]
        assert got == list(range(300))
        await a.close()
        await b.close()

    run(scenario, limits=Limits(rate_limit=0))


# --------------------------------------------------------------------------- errors


def test_bad_input_gets_errors_and_the_connection_keeps_working() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "demo", "a", "b")
        await a.send("{not json")
        assert (await recv(a))["code"] == "bad-json"
        await a.send(b"\x00\x01binary")
        error = await recv(a)
        assert (error["channel"], error["code"]) == ("system", "bad-frame")
        await send(a, {"channel": "nope", "type": "x"})
        assert (await recv(a))["code"] == "unknown-channel"
        await send(
            a,
            {
                "channel": ROOMS,
                "type": "user-joined-room",
                "roomId": "demo",
                "userId": "a",
                "existingParticipants": [],
            },
        )
        error = await recv(a)
        assert (error["channel"], error["code"]) == (ROOMS, "unknown-type")
        await send(a, {"channel": CHAT, "type": "chat-message", "text": "x" * 4097})
        assert (await recv(a))["code"] == "bad-frame"
        # Still a member, still relaying.
        await send(a, {"channel": CHAT, "type": "chat-message", "text": "still here"})
        assert (await recv(b))["text"] == "still here"
        assert (await recv(a))["text"] == "still here"
        await a.close()
        await b.close()

    run(scenario)


def test_not_in_room_and_taken_id() -> None:
    async def scenario(server: RelayServer) -> None:
        (a,) = await joined(server, "demo", "a")
        lobby = await connect(server.url)
        await send(lobby, {"channel": CHAT, "type": "chat-message", "text": "hi"})
        error = await recv(lobby)
        assert (error["channel"], error["code"]) == (CHAT, "not-in-room")
        await send(lobby, {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "a"})
        assert (await recv(lobby))["code"] == "user-id-taken"
        await send(
            lobby, {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "bad id!"}
        )
        assert (await recv(lobby))["code"] == "invalid-id"
        await a.close()
        await lobby.close()

    run(scenario)


def test_non_ascii_resume_token_is_user_id_taken_and_the_connection_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 11: a non-ASCII resumeToken raised TypeError in compare_digest: close 1011
    and a traceback. It is a wrong token; the refusal is logged at INFO, and for a held
    id says for how long it is held."""

    async def scenario(server: RelayServer) -> None:
        (alice,) = await joined(server, "demo", "alice")
        other = await connect(server.url)
        join = {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "alice"}
        for token in ("tök", "\ud800", "😀" * 100):
            await send(other, {**join, "resumeToken": token})
            assert (await recv(other))["code"] == "user-id-taken"
        alice.transport.abort()  # dropped: held for a resume
        await server.wait_until(lambda: server.machine.held_count == 1)
        await send(other, {**join, "resumeToken": "tök"})
        error = await recv(other)
        assert error["code"] == "user-id-taken"
        assert "is held for a resume in room 'demo' for " in error["message"]
        await send(other, {"channel": CHAT, "type": "chat-message", "text": "still here"})
        assert (await recv(other))["code"] == "not-in-room"  # open, in no room
        await other.close()

    with caplog.at_level(logging.INFO):
        run(scenario, limits=Limits(resume_grace=10.0))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    refused = [
        r.getMessage() for r in caplog.records if "refused (user-id-taken)" in r.getMessage()
    ]
    assert len(refused) == 4 and "held for a resume" in refused[-1]


def test_room_full() -> None:
    async def scenario(server: RelayServer) -> None:
        clients = await joined(server, "small", "a", "b")
        c = await connect(server.url)
        await send(c, {"channel": ROOMS, "type": "join-room", "roomId": "small", "userId": "c"})
        error = await recv(c)
        assert (error["channel"], error["code"]) == (ROOMS, "room-full")
        for ws in [*clients, c]:
            await ws.close()

    run(scenario, limits=Limits(max_room_size=2))


def test_oversize_frame_closes_1009_and_the_member_leaves() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "demo", "a", "b")
        await send(a, {"channel": CHAT, "type": "chat-message", "text": "x" * 1100})
        error = await recv(a)
        assert error["code"] == "frame-too-large"
        assert await closed_code(a) == 1009
        assert (await recv(b))["type"] == "user-left-room"
        # Far beyond the limit, websockets itself refuses the frame, also with 1009.
        c = await connect(server.url)
        await c.send("x" * 10_000)
        assert await closed_code(c) == 1009
        await b.close()

    run(scenario, limits=Limits(max_frame_bytes=1024))


def test_invalid_utf8_closes_1007() -> None:
    async def scenario(server: RelayServer) -> None:
        (b,) = await joined(server, "demo", "b")
        a = await connect(server.url)
        await a.send(b"\xff\xfe not utf-8", text=True)
        assert await closed_code(a) == 1007
        # The server and the other connection carry on.
        await send(b, {"channel": CHAT, "type": "chat-message", "text": "ok"})
        assert (await recv(b))["text"] == "ok"
        await b.close()

    run(scenario)


def test_persistent_bad_input_closes_1008() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "demo", "a", "b")
        for _ in range(20):
            await a.send("[]")
        codes = [(await recv(a))["code"] for _ in range(20)]
        assert codes == ["bad-frame"] * 20
        assert await closed_code(a) == 1008
        assert (await recv(b)) == {
            "channel": ROOMS,
            "type": "user-left-room",
            "roomId": "demo",
            "userId": "a",
        }
        await b.close()

    run(scenario)


def test_rate_limit() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "demo", "a", "b")  # the join used one token
        for i in range(5):
            await send(a, {"channel": CHAT, "type": "chat-message", "text": str(i)})
        replies = [await recv(a) for _ in range(5)]
        assert [r.get("text", r.get("code")) for r in replies] == [
            "0",
            "1",
            "2",
            "3",
            "rate-limited",
        ]
        assert [(await recv(b))["text"] for _ in range(4)] == ["0", "1", "2", "3"]
        await a.close()
        await b.close()

    # A sustained rate this low cannot refill a token within the test.
    run(scenario, limits=Limits(rate_limit=0.001, rate_burst=5))


def test_slow_consumer_is_closed_while_others_are_served() -> None:
    async def scenario(server: RelayServer) -> None:
        sender, fast = await joined(server, "demo", "sender", "fast")
        # A client with a small receive window, so the server's buffers fill quickly
        # (loopback otherwise autotunes receive buffers up to tens of megabytes).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        slow = await connect(server.url, sock=sock, max_queue=1)
        await send(
            slow, {"channel": ROOMS, "type": "join-room", "roomId": "demo", "userId": "slow"}
        )
        for ws in (sender, fast, slow):
            assert (await recv(ws))["userId"] == "slow"
        big = {
            "channel": SIGNALING,
            "type": "webrtc-offer",
            "toUserId": "slow",
            "offer": {"type": "offer", "sdp": incompressible(45_000)},
        }
        # "slow" never reads. Its queue (200 kB) fills once the socket buffers are
        # full; then the server drops it, and "fast" is told.
        told = asyncio.create_task(fast.recv())  # the next frame "fast" gets
        offers = server.machine.stats.frames_in

        def handled(n: int) -> Callable[[], bool]:
            """The relay has handled ``n`` offers (handed on, or found slow gone)."""
            return lambda: offers["webrtc-offer"] >= n

        for sent in range(1, 2_001):
            await send(sender, big)
            await server.wait_until(handled(sent), TIMEOUT)
            if told.done():
                break
        assert told.done(), "the slow consumer was never dropped"
        notice = await told
        left = json.loads(notice)
        assert left == {
            "channel": ROOMS,
            "type": "user-left-room",
            "roomId": "demo",
            "userId": "slow",
        }
        assert server.closes == {1013: 1}
        # Others are still served, and the slow one is gone from the room.
        await send(sender, {"channel": SIGNALING, "type": "webrtc-renegotiate", "toUserId": "fast"})
        assert (await recv(fast))["type"] == "webrtc-renegotiate"
        assert json.loads(notice) == await recv(sender)
        await send(sender, {"channel": SIGNALING, "type": "webrtc-renegotiate", "toUserId": "slow"})
        error = await recv(sender)
        assert error["code"] == "peer-not-found"
        assert server.machine.directory.members("demo") == ["fast", "sender"]
        slow.transport.abort()  # it never reads, so a closing handshake would only time out
        for ws in (sender, fast):
            await ws.close()

    run(scenario, limits=Limits(rate_limit=0), send_buffer=200_000, close_timeout=0.5)


# --------------------------------------------------------------------------- HTTP


def test_healthz_metrics_page_and_paths() -> None:
    async def scenario(server: RelayServer) -> None:
        a, b = await joined(server, "demo", "a", "b")
        await a.send("nope")
        await recv(a)
        await send(
            a, {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": "b", "candidate": None}
        )
        await recv(b)

        status, ctype, body = await asyncio.to_thread(http_get, http_url(server, "/healthz"))
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == {"connections": 2, "rooms": 1}

        status, ctype, body = await asyncio.to_thread(http_get, http_url(server, "/metrics"))
        assert status == 200 and ctype.startswith("text/plain")
        text = body.decode()
        assert "sansio_signal_connections 2.0" in text
        assert "sansio_signal_rooms 1.0" in text
        assert 'sansio_signal_frames_in_total{type="webrtc-ice"} 1.0' in text
        assert 'sansio_signal_frames_in_total{type="join-room"} 2.0' in text
        assert 'sansio_signal_frames_out_total{type="user-joined-room"} 3.0' in text
        assert 'sansio_signal_errors_total{code="bad-json"} 1.0' in text
        count = next(
            line
            for line in text.splitlines()
            if line.startswith("sansio_signal_relay_latency_seconds_count")
        )
        assert float(count.split()[1]) >= 4

        status, ctype, body = await asyncio.to_thread(http_get, http_url(server, "/"))
        assert status == 200 and ctype == "text/html; charset=utf-8"
        assert b"<html" in body
        status, _, _ = await asyncio.to_thread(http_get, http_url(server, "/nowhere"))
        assert status == 404
        with pytest.raises(InvalidStatus):
            await connect(server.url + "other")
        await a.close()
        await b.close()

    run(scenario)


def test_stop_closes_clients_with_1001() -> None:
    async def main() -> None:
        server = RelayServer(port=0)
        await server.start()
        (a,) = await joined(server, "demo", "a")
        await server.stop()
        assert await closed_code(a) == 1001

    asyncio.run(main())


@pytest.mark.parametrize(("code", "clean"), [(1012, False), (1001, True)])
def test_stop_code_and_how_the_machine_sees_it(code: int, clean: bool) -> None:
    """1012 (restart) is not a clean close: the machine sees a dropped socket (resume);
    1001 (going away) is clean: the member leaves at once."""
    trace = io.StringIO()

    async def main() -> None:
        server = RelayServer(port=0, trace=trace)
        await server.start()
        (a,) = await joined(server, "demo", "a")
        await server.stop(code, "bye")
        assert await closed_code(a) == code
        assert a.protocol.close_rcvd is not None
        assert a.protocol.close_rcvd.reason == "bye"

    asyncio.run(main())
    records = [json.loads(line) for line in trace.getvalue().splitlines()]
    assert [r["clean"] for r in records if r["kind"] == "Disconnected"] == [clean]


def test_stop_does_not_wait_for_a_socket_that_never_sent_its_request() -> None:
    async def main() -> None:
        server = RelayServer(port=0, open_timeout=60)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        (a,) = await joined(server, "demo", "a")  # the silent socket is in by now
        await asyncio.wait_for(server.stop(), TIMEOUT)
        assert await closed_code(a) == 1001
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- static files


async def raw_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET sent byte for byte (no client-side path normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode().split("\r\n")
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), TIMEOUT)
    writer.close()
    return int(lines[0].split()[1]), headers, body


STATIC = {
    "index.html": ("<!doctype html><html>page</html>", "text/html; charset=utf-8"),
    "sansio-signal.js": ("export const x = 1;", "text/javascript; charset=utf-8"),
    "demo.css": ("body {}", "text/css; charset=utf-8"),
    "logo.png": ("\x89PNG", "image/png"),
    "icon.svg": ("<svg/>", "image/svg+xml"),
    "data.json": ('{"a": 1}', "application/json"),
}


def test_static_files_with_their_types_and_nothing_else(tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    for name, (text, _) in STATIC.items():
        (static / name).write_text(text, encoding="utf-8")
    (static / "notes.txt").write_text("not served")
    (static / ".hidden.js").write_text("not served")
    (static / "sub").mkdir()
    (static / "sub" / "inner.js").write_text("not served")
    (tmp_path / "secret.js").write_text("outside")

    async def scenario(server: RelayServer) -> None:
        for name, (text, content_type) in STATIC.items():
            status, headers, body = await raw_get(server.port, f"/{name}")
            assert (status, headers["content-type"], body) == (200, content_type, text.encode())
            assert headers["x-content-type-options"] == "nosniff"
        status, headers, body = await raw_get(server.port, "/")
        assert (status, body) == (200, STATIC["index.html"][0].encode())
        status, _, _ = await raw_get(server.port, "/demo.css?v=2")
        assert status == 200
        for path in (
            "/notes.txt",
            "/.hidden.js",
            "/sub/inner.js",
            "/sub",
            "/../secret.js",
            "/%2e%2e/secret.js",
            "/..%2fsecret.js",
            "//secret.js",
            "/static/index.html",
            "/missing.js",
            "/index.html/",
        ):
            status, headers, _ = await raw_get(server.port, path)
            assert (status, headers["content-type"]) == (404, "text/plain; charset=utf-8"), path

    run(scenario, static_dir=static)


def test_the_packaged_page_and_default_config() -> None:
    async def scenario(server: RelayServer) -> None:
        status, headers, body = await raw_get(server.port, "/")
        assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert b"<html" in body
        status, headers, body = await raw_get(server.port, "/config.json")
        assert (status, headers["content-type"]) == (200, "application/json")
        assert json.loads(body) == {"iceServers": []}

    run(scenario)


def test_config_json_lists_the_ice_servers() -> None:
    servers = [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": "turn:turn.example.org:3478?transport=udp", "username": "u", "credential": "p"},
    ]

    async def scenario(server: RelayServer) -> None:
        status, _, body = await raw_get(server.port, "/config.json")
        assert status == 200
        assert json.loads(body) == {"iceServers": servers}

    run(scenario, ice_servers=servers)
    with pytest.raises(ValueError, match="ICE server"):
        RelayServer(ice_servers=[{"url": "stun:x"}])


@pytest.mark.parametrize(
    "header",
    [
        "Upgrade",  # Chromium, websockets
        "keep-alive, Upgrade",  # Firefox
    ],
)
def test_an_offered_extension_is_declined_and_firefox_upgrades(header: str) -> None:
    """Browsers always offer permessage-deflate: the relay declines it (two zlib streams
    per connection, ~40 KiB, for frames that are mostly small JSON) and the connection
    works uncompressed. Firefox's ``Connection: keep-alive, Upgrade`` upgrades too."""

    async def scenario(server: RelayServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: {header}\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.close()
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's example accept key
        assert b"sec-websocket-extensions" not in head.lower()
        async with connect(server.url, compression="deflate") as ws:
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await send(
                ws,
                {
                    "channel": "webrtc-dashboard-rooms",
                    "type": "join-room",
                    "roomId": "r",
                    "userId": "a" * 40,
                },
            )
            assert (await recv(ws))["type"] == "user-joined-room"

    run(scenario)
