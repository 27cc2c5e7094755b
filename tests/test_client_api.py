"""The asyncio ``Client`` as an application sees it: how it starts, what it raises, how
its streams end and stay bounded. Real relay on loopback, real aiortc peers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect as ws_connect
from wsutil import connected_pair, free_port, run

from sansio_signal import ProtocolViolation
from sansio_signal.adapters import client as client_module
from sansio_signal.adapters.aiortc_peer import IceServer
from sansio_signal.adapters.client import (
    FROM_RELAY,
    Client,
    JoinRefusedError,
    ServerUnreachableError,
    config_url,
    connect,
    fetch_ice_servers,
)
from sansio_signal.adapters.server import RelayServer
from sansio_signal.turn import TurnConfig, turn_credentials

TIMEOUT = 20.0


pytestmark = pytest.mark.usefixtures("loopback")


def test_await_connect_and_every_stream_ends_on_close() -> None:
    async def scenario(server: RelayServer) -> None:
        alice = await connect(server.url, room_id="demo", user_id="alice")
        ended: list[str] = []

        async def drain(name: str, stream: object) -> None:
            async for _ in stream:  # type: ignore[attr-defined]
                pass
            ended.append(name)

        readers = [
            asyncio.get_running_loop().create_task(drain(name, stream))
            for name, stream in (
                ("messages", alice.messages()),
                ("chats", alice.chats()),
                ("events", alice.events()),
            )
        ]
        await alice.close()
        await asyncio.wait_for(asyncio.gather(*readers), TIMEOUT)
        assert sorted(ended) == ["chats", "events", "messages"]

    run(scenario)


def test_an_unreachable_server_fails_fast_with_its_own_exception() -> None:
    async def scenario() -> None:
        url = f"ws://127.0.0.1:{free_port()}/"  # nothing listens there
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError) as info:
            await Client(url, room_id="demo", user_id="alice").start(timeout=TIMEOUT)
        assert time.monotonic() - started < 2.0
        assert isinstance(info.value, TimeoutError)  # what earlier versions raised
        assert "cannot connect" in info.value.message

    asyncio.run(scenario())


def test_a_wrong_path_is_reported_with_its_http_status() -> None:
    async def scenario(server: RelayServer) -> None:
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError) as info:
            await Client(server.url + "nope", room_id="demo", user_id="alice").start()
        assert time.monotonic() - started < 2.0
        assert "404" in info.value.message

    run(scenario)


def test_a_refused_join_is_a_join_refused_error_with_its_code() -> None:
    async def scenario(server: RelayServer) -> None:
        async with connect(server.url, room_id="demo", user_id="alice"):
            with pytest.raises(JoinRefusedError) as info:
                await connect(server.url, room_id="demo", user_id="alice", reconnect=False)
            assert info.value.code == "user-id-taken"

    run(scenario)


def test_a_reader_that_falls_behind_loses_the_oldest_and_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "QUEUE_BOUND", 3)

    async def scenario(server: RelayServer) -> None:
        async with connected_pair(server.url, timeout=TIMEOUT) as (alice, bob):
            for i in range(10):
                alice.send("bob", f"m{i}")
            await bob.wait_until(lambda: bob.dropped.get("messages") == 7, TIMEOUT)
            got = []
            async for message in bob.messages():
                got.append(message.text)
                if len(got) == 3:
                    break
            assert got == ["m7", "m8", "m9"]

    run(scenario)


def test_violations_reach_the_application_as_events() -> None:
    """A member's malformed frame is a ProtocolViolation event naming that member."""

    async def scenario(server: RelayServer) -> None:
        offer = {
            "channel": "webrtc-signaling",
            "type": "webrtc-offer",
            "toUserId": "bob",
            "offer": {"type": "offer", "sdp": "v=0"},
            "caps": [[]],
        }

        async def violation(bob: Client) -> ProtocolViolation:
            async for event in bob.events():
                if isinstance(event, ProtocolViolation):
                    return event
            raise AssertionError("the stream ended")

        async with (
            connect(server.url, room_id="demo", user_id="bob") as bob,
            ws_connect(server.url) as raw,
        ):
            join = {"channel": "webrtc-dashboard-rooms", "type": "join-room"}
            await raw.send(json.dumps({**join, "roomId": "demo", "userId": "alice"}))
            await raw.recv()
            await raw.send(json.dumps(offer))
            seen = await asyncio.wait_for(violation(bob), TIMEOUT)
            assert seen.peer_id == "alice" and "caps" in seen.detail

    run(scenario)


def test_the_client_takes_its_ice_servers_from_the_relay() -> None:
    """``Client(ice_servers=FROM_RELAY)`` reads the relay's /config.json before each
    connection: its static servers, and TURN credentials made for this request."""
    turn = TurnConfig(urls=("turn:127.0.0.1:3478",), secret=b"s3cret-for-this-test", ttl=600)

    async def scenario(server: RelayServer) -> None:
        assert config_url(server.url) == server.url.replace("ws://", "http://") + "config.json"
        before = time.time()
        fetched = await fetch_ice_servers(server.url)
        assert fetched[0] == IceServer(urls="stun:127.0.0.1:3478")
        (relay,) = fetched[1:]
        assert relay.urls == "turn:127.0.0.1:3478" and relay.username is not None
        expiry = int(relay.username)
        assert before + 600 <= expiry <= time.time() + 601
        assert (relay.username, relay.credential) == turn_credentials(
            turn.secret, wall_time=expiry - 600, ttl=600
        )
        client = Client(server.url, room_id="demo", user_id="alice", ice_servers=FROM_RELAY)
        assert client.ice_servers == []
        await client.start(timeout=TIMEOUT)
        try:
            assert [s.urls for s in client.ice_servers] == [
                "stun:127.0.0.1:3478",
                "turn:127.0.0.1:3478",
            ]
        finally:
            await client.close()

    run(scenario, ice_servers=[{"urls": "stun:127.0.0.1:3478"}], turn=turn)


def chunked(*chunks: bytes) -> bytes:
    """A chunked HTTP/1.1 body of ``chunks``."""
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", []),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(b'{"iceServers": [{"ur', b'ls": ["stun:a", "stun:b"]}]}'),
            [IceServer(urls="stun:a"), IceServer(urls="stun:b")],
        ),
        (b"HTTP/1.1 500 Oops\r\n\r\n", "HTTP 500"),
        (b'HTTP/1.1 200 OK\r\n\r\n{"iceServers": 3}', "not an ICE server list"),
        (b'HTTP/1.1 200 OK\r\n\r\n{"iceServers": [{"urls": 3}]}', "not an ICE server list"),
        (
            b'HTTP/1.1 200 OK\r\n\r\n{"iceServers": [{"urls": "turn:t", "username": 1}]}',
            "not an ICE server list",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}", "broken chunked"),
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP answer"),
        (b"", "not an HTTP answer"),
        (None, "no answer within 0.5 s"),
    ],
    ids=[
        "404-none",
        "chunked",
        "500",
        "not-a-list",
        "urls-not-urls",
        "username-not-text",
        "broken-chunks",
        "not-http",
        "closed",
        "silent",
    ],
)
def test_fetching_ice_servers_from_what_answers_there(
    answer: bytes | None, expected: list[IceServer] | str
) -> None:
    """A relay without /config.json (mounted in an app) has none to give; anything
    else that is not a list of ICE servers is an OSError saying what came back."""

    async def scenario() -> None:
        async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if answer is None:
                await reader.read()  # never answers
            else:
                writer.write(answer)
            writer.close()

        server = await asyncio.start_server(reply, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            if isinstance(expected, list):
                assert await fetch_ice_servers(url, timeout=0.5) == expected
            else:
                with pytest.raises(OSError, match=expected):
                    await fetch_ice_servers(url, timeout=0.5)
        finally:
            server.close()

    asyncio.run(scenario())


def test_ice_servers_aiortc_would_not_use_are_said_to_be_unused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiortc takes the first STUN and the first TURN server only: the others are named
    in a warning instead of being silently left out."""
    servers = [
        IceServer(urls="stun:127.0.0.1:3478"),
        IceServer(urls="stun:127.0.0.1:3479"),
        IceServer(urls="turn:127.0.0.1:3478", username="u", credential="c"),
        IceServer(urls="turn:127.0.0.1:3479", username="u", credential="c"),
    ]
    with caplog.at_level("WARNING", logger="sansio_signal.aiortc"):
        client = Client("ws://127.0.0.1:1/", room_id="r", user_id="alice", ice_servers=servers)
    assert client.ice_servers == servers
    unused = [r.getMessage().split()[2] for r in caplog.records]
    assert unused == ["stun:127.0.0.1:3479", "turn:127.0.0.1:3479"]
