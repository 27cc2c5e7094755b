"""The trio + wsproto example relay, run as a real process and spoken to over real sockets.

``docs/examples/trio_wsproto_relay.py`` embeds :class:`sansio_signal.RelayMachine` in a
stack unrelated to the bundled adapter; these tests hold it to the wire protocol with the
``websockets`` asyncio client. Every wait is bounded by ``asyncio.wait_for`` and nothing
sleeps: to show that nothing *else* arrived, a test sends a chat (a frame every member
gets) and checks that it is the next frame, since each connection's frames keep order.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from wsutil import reap_blocking

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "trio_wsproto_relay.py"
TIMEOUT = 5.0
ROOMS = "webrtc-dashboard-rooms"
SIGNALING = "webrtc-signaling"
CHAT = "webrtc-dashboard-chat"


def _start() -> tuple[subprocess.Popen[str], str]:
    """Start the example on a free port; return the process and its ``ws://`` URL."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    if not ready:
        reap_blocking(proc)
        pytest.fail("the example printed nothing within 10 s")
    line = proc.stdout.readline()
    prefix = "listening on ws://127.0.0.1:"
    assert line.startswith(prefix) and line.endswith("/\n"), line
    return proc, line.removeprefix("listening on ").strip()


def _stop(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Signal the process and check that it was still alive and exits cleanly."""
    try:
        assert proc.poll() is None, f"the example died early (exit {proc.returncode})"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == "", "stdout must hold exactly the listening line"
    finally:
        reap_blocking(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def example_url() -> Iterator[str]:
    proc, ws_url = _start()
    try:
        yield ws_url
    finally:
        _stop(proc, signal.SIGINT)


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run one async scenario (pytest-asyncio is not a dependency)."""

    async def bounded() -> None:
        await asyncio.wait_for(test(), 4 * TIMEOUT)

    asyncio.run(bounded())


async def recv(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(raw, str), raw
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def join(ws: ClientConnection, room: str, user: str) -> dict[str, Any]:
    """Join and return the joiner's own ``user-joined-room``."""
    await send(ws, {"channel": ROOMS, "type": "join-room", "roomId": room, "userId": user})
    frame = await recv(ws)
    assert frame["type"] == "user-joined-room" and frame["userId"] == user, frame
    return frame


async def chat_barrier(sender: ClientConnection, *members: ClientConnection) -> None:
    """Send a chat and check it is the next frame everyone gets (nothing else queued)."""
    marker = f"barrier-{time.monotonic_ns()}"
    await send(sender, {"channel": CHAT, "type": "chat-message", "text": marker})
    for ws in (sender, *members):
        frame = await recv(ws)
        assert (frame["type"], frame["text"]) == ("chat-message", marker), frame


def test_join_sends_user_joined_room_to_everyone(example_url: str) -> None:
    async def scenario() -> None:
        async with (
            connect(example_url) as zed,
            connect(example_url) as amy,
            connect(example_url) as bob,
        ):
            own = await join(zed, "join", "zed")
            assert own["existingParticipants"] == []
            assert isinstance(own["resumeToken"], str) and own["resumeToken"]

            own = await join(amy, "join", "amy")
            assert own["existingParticipants"] == ["zed"]
            seen = await recv(zed)
            assert seen == {
                "channel": ROOMS,
                "type": "user-joined-room",
                "roomId": "join",
                "userId": "amy",
                "existingParticipants": ["zed"],
            }

            own = await join(bob, "join", "bob")
            assert own["existingParticipants"] == ["amy", "zed"]  # sorted, not join order
            for other in (zed, amy):
                seen = await recv(other)
                assert seen["userId"] == "bob" and seen["existingParticipants"] == ["amy", "zed"]
                assert "resumeToken" not in seen
            await chat_barrier(zed, amy, bob)

    run(scenario)


def test_offer_is_relayed_with_sender_and_room_stamped(example_url: str) -> None:
    async def scenario() -> None:
        async with connect(example_url) as alice, connect(example_url) as bob:
            await join(alice, "sig", "alice")
            await join(bob, "sig", "bob")
            await recv(alice)  # bob joined
            offer = {
                "channel": SIGNALING,
                "type": "webrtc-offer",
                "toUserId": "bob",
                "fromUserId": "mallory",  # never trusted: overwritten
                "offer": {"type": "offer", "sdp": "v=0\r\n"},
                "epoch": 7,
                "note": {"nested": [1, 2.5, None]},
            }
            await send(alice, offer)
            assert await recv(bob) == {**offer, "fromUserId": "alice", "roomId": "sig"}
            await chat_barrier(alice, bob)  # alice got nothing back

    run(scenario)


def test_chat_is_relayed_to_the_whole_room_with_ts(example_url: str) -> None:
    async def scenario() -> None:
        async with connect(example_url) as alice, connect(example_url) as bob:
            await join(alice, "chat", "alice")
            await join(bob, "chat", "bob")
            await recv(alice)  # bob joined
            before = time.time()
            await send(bob, {"channel": CHAT, "type": "chat-message", "text": "héllo"})
            for ws in (alice, bob):
                frame = await recv(ws)
                ts = frame.pop("ts")
                assert isinstance(ts, float) and before - 1 <= ts <= time.time() + 1
                assert frame == {
                    "channel": CHAT,
                    "type": "chat-message",
                    "roomId": "chat",
                    "fromUserId": "bob",
                    "text": "héllo",
                }

    run(scenario)


def test_bad_input_gets_an_error_and_the_connection_keeps_working(example_url: str) -> None:
    async def scenario() -> None:
        async with connect(example_url) as alice, connect(example_url) as bob:
            await join(alice, "bad", "alice")
            await join(bob, "bad", "bob")
            await recv(alice)  # bob joined
            await alice.send("{not json")
            error = await recv(alice)
            assert (error["channel"], error["type"], error["code"]) == (
                "system",
                "error",
                "bad-json",
            )
            assert isinstance(error["message"], str)
            await alice.send(b"\x00binary")  # binary reaches the machine as bytes
            error = await recv(alice)
            assert (error["type"], error["code"]) == ("error", "bad-frame")
            await chat_barrier(alice, bob)  # still in the room, nobody else saw anything

    run(scenario)


def test_invalid_utf8_closes_1007_and_the_server_survives(example_url: str) -> None:
    async def scenario() -> None:
        async with connect(example_url) as alice, connect(example_url) as bob:
            await join(alice, "utf8", "alice")
            await join(bob, "utf8", "bob")
            await recv(alice)  # bob joined
            await bob.send(b"\xff\xfe", text=True)  # a text frame that is not UTF-8
            with pytest.raises(ConnectionClosedError) as closed:
                await recv(bob)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
            left = await recv(alice)  # a server-initiated close leaves at once
            assert left == {
                "channel": ROOMS,
                "type": "user-left-room",
                "roomId": "utf8",
                "userId": "bob",
            }
            await chat_barrier(alice)

    run(scenario)


def test_disconnect_tells_the_others(example_url: str) -> None:
    async def scenario() -> None:
        async with connect(example_url) as alice:
            await join(alice, "bye", "alice")
            async with connect(example_url) as bob:
                await join(bob, "bye", "bob")
                await recv(alice)  # bob joined
            # bob's socket is closed (1000) here
            assert await recv(alice) == {
                "channel": ROOMS,
                "type": "user-left-room",
                "roomId": "bye",
                "userId": "bob",
            }
            await chat_barrier(alice)

    run(scenario)


def test_websocket_only_on_root_path(example_url: str) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as rejected:
            async with connect(example_url + "elsewhere"):
                pass
        assert rejected.value.response.status_code == 404

    run(scenario)


def test_sigterm_stops_the_server() -> None:
    proc, ws_url = _start()
    try:

        async def scenario() -> None:
            async with connect(ws_url) as alice:
                await join(alice, "term", "alice")

        run(scenario)
    finally:
        _stop(proc, signal.SIGTERM)
