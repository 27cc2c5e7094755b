"""The server's WebSocket layer (picows behind the adapter's own HTTP front) under frames
a library client would never send: fragments, a first frame pipelined with the upgrade
request, a close without a code, handshakes that are not quite right.

Frames are written byte for byte on a raw socket (a client library would normalise what
these tests need to send); the server is the real one on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any

import pytest
from wsutil import run

from sansio_signal.adapters.server import RelayServer

TIMEOUT = 5.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example
TEXT, BINARY, CONTINUATION, CLOSE = 0x1, 0x2, 0x0, 0x8


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade(*extra: str, version: str = "13", key: str = KEY) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def join(room: str, user: str) -> bytes:
    return json.dumps(
        {"channel": "webrtc-dashboard-rooms", "type": "join-room", "roomId": room, "userId": user}
    ).encode()


class Raw:
    """A hand-written WebSocket client: frames in, frames out, nothing normalised."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: RelayServer, *first: bytes) -> Raw:
        """Upgrade, with ``first`` frames written in the same packet as the request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade() + b"".join(first))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 ") and ACCEPT in head, head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self) -> tuple[int, bytes]:
        """The next frame from the server: opcode and payload."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        assert second & 0x80 == 0, "a server frame is never masked"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.recv()
        assert opcode == TEXT, (opcode, payload)
        decoded: dict[str, Any] = json.loads(payload)
        return decoded

    async def close_code(self) -> int | None:
        """The code of the server's close frame (skipping data frames before it)."""
        while True:
            opcode, payload = await self.recv()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if payload else None

    async def ended(self) -> bytes:
        """Whatever the server still sends until it closes the TCP connection."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)


def test_a_join_pipelined_with_the_upgrade_request_is_handled() -> None:
    async def scenario(server: RelayServer) -> None:
        ws = await Raw.open(server, frame(TEXT, join("r", "a")))
        assert (await ws.json())["userId"] == "a"
        ws.writer.close()

    run(scenario)


def test_a_fragmented_message_is_reassembled() -> None:
    async def scenario(server: RelayServer) -> None:
        ws = await Raw.open(server)
        data = join("r", "a")
        ws.send(frame(TEXT, data[:10], fin=False))
        ws.send(frame(CONTINUATION, data[10:20], fin=False))
        ws.send(frame(CONTINUATION, data[20:]))
        assert (await ws.json())["userId"] == "a"
        # and a fragmented binary message is still binary: bad-frame
        ws.send(frame(BINARY, b"{}", fin=False) + frame(CONTINUATION, b""))
        error = await ws.json()
        assert (error["type"], error["code"]) == ("error", "bad-frame")
        ws.writer.close()

    run(scenario)


def test_a_fragmented_message_over_the_limit_is_closed_1009() -> None:
    async def scenario(server: RelayServer) -> None:
        ws = await Raw.open(server)
        chunk = b"x" * 60_000
        ws.send(frame(TEXT, chunk, fin=False))
        for _ in range(3):  # 240 kB in all, over twice the 64 KiB limit
            ws.send(frame(CONTINUATION, chunk, fin=False))
        assert await ws.close_code() == 1009
        assert server.refusal_counts()["frame-too-large"] == 1

    run(scenario)


@pytest.mark.parametrize(
    "frames",
    [
        [frame(CONTINUATION, b"{}")],  # a continuation of nothing
        [frame(TEXT, b"{", fin=False), frame(TEXT, b"}")],  # a new message inside one
    ],
)
def test_broken_fragmentation_is_a_protocol_error(frames: list[bytes]) -> None:
    async def scenario(server: RelayServer) -> None:
        ws = await Raw.open(server)
        ws.send(b"".join(frames))
        assert await ws.close_code() == 1002

    run(scenario)


def test_invalid_utf8_in_a_text_frame_is_closed_1007() -> None:
    async def scenario(server: RelayServer) -> None:
        ws = await Raw.open(server)
        ws.send(frame(TEXT, b'{"a":"\xff"}'))
        assert await ws.close_code() == 1007

    run(scenario)


@pytest.mark.parametrize("payload", [b"", struct.pack("!H", 1000) + b"bye"])
def test_a_client_close_is_answered_after_its_member_left(payload: bytes) -> None:
    """With a code or without one (an empty close frame is answered with an empty one).
    1000 is a clean close: the member leaves. No code (1005) is not: it is held for a
    resume, as a dropped socket is."""

    async def scenario(server: RelayServer) -> None:
        a = await Raw.open(server, frame(TEXT, join("r", "a")))
        assert (await a.json())["userId"] == "a"
        b = await Raw.open(server, frame(TEXT, join("r", "b")))
        assert (await b.json())["userId"] == "b"
        assert (await a.json())["userId"] == "b"
        b.send(frame(CLOSE, payload))
        opcode, answer = await b.recv()
        assert (opcode, answer) == (CLOSE, payload[:2])
        assert await b.ended() == b""
        if payload:
            left = await a.json()
            assert (left["type"], left["userId"]) == ("user-left-room", "b")
        else:
            assert server.machine.held_count == 1  # decided before the answer was sent
        a.writer.close()

    run(scenario)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade(version="8"), 426),
        (upgrade(key="short"), 400),
        (upgrade("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="), 400),  # two keys
        (upgrade().replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400),
    ],
)
def test_a_bad_upgrade_is_refused_before_any_websocket(request_bytes: bytes, status: int) -> None:
    async def scenario(server: RelayServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes)
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
        if status == 426:
            assert b"Sec-WebSocket-Version: 13" in answer
        assert server.health()["connections"] == 0

    run(scenario)
