"""The relay's HTTP side under hand-written requests (issue 11, "Under attack"): a
malformed request is a 400 and no traceback, a method other than GET and HEAD is a 405
naming the allowed ones, and HEAD gets the GET's headers without the body.

Every request is sent byte for byte over a raw socket (``asyncio.open_connection``): an
HTTP client library would normalise what these tests need to send.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect
from wsutil import recv, run, send

from sansio_signal.adapters.server import RelayServer

TIMEOUT = 5.0
WS_HEADERS = (
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
)


async def exchange(port: int, method: str, path: str, *headers: str) -> bytes:
    """Send one request and read everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and whatever came after them."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response: {answer!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("path", ["/", "/healthz", "/nothing-here"])
@pytest.mark.parametrize(
    "upgrades",
    [
        ("Upgrade: websocket", "Upgrade: websocket"),
        ("Upgrade: websocket", "Upgrade: h2c"),
        ("Upgrade: a", "Upgrade: b"),
    ],
)
def test_repeated_upgrade_header_is_400_without_a_traceback(
    path: str, upgrades: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """It was an HTTP 500 with a traceback in the log for every such request."""
    headers = [h for h in WS_HEADERS if not h.startswith("Upgrade")]

    async def scenario(server: RelayServer) -> None:
        for _ in range(3):
            status, _headers, body = parse(
                await exchange(server.port, "GET", path, *upgrades, *headers)
            )
            assert (status, body) == (400, b"bad request\n")
        assert server.health()["connections"] == 0

    with caplog.at_level(logging.DEBUG):
        run(scenario)
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"G\xffT / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/2\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_unparseable_request_is_400(request_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """websockets closed such a connection without an answer."""

    async def scenario(server: RelayServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes)
        try:
            answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        finally:
            writer.close()
        status, headers, body = parse(answer)
        assert (status, body) == (400, b"bad request\n")
        assert int(headers["content-length"]) == len(body)

    with caplog.at_level(logging.DEBUG, logger="sansio_signal"):
        run(scenario)
    no_errors_logged(caplog)


def test_a_client_that_leaves_before_its_request_gets_nothing() -> None:
    async def scenario(server: RelayServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HT")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()

    run(scenario)


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get"]
)
@pytest.mark.parametrize("path", ["/", "/healthz", "/metrics", "/config.json", "/missing"])
def test_methods_other_than_get_and_head_are_405(
    method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every method was served like GET (a POST to /healthz answered the JSON)."""

    async def scenario(server: RelayServer) -> None:
        status, headers, body = parse(await exchange(server.port, method, path))
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        assert body == b"method not allowed\n"

    run(scenario)
    no_errors_logged(caplog)


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD"])
def test_only_a_get_upgrades(method: str) -> None:
    async def scenario(server: RelayServer) -> None:
        status, headers, _body = parse(await exchange(server.port, method, "/", *WS_HEADERS))
        assert status == (200 if method == "HEAD" else 405)
        assert "sec-websocket-accept" not in headers
        assert server.health()["connections"] == 0

    run(scenario)


def test_get_still_serves_and_upgrades() -> None:
    async def scenario(server: RelayServer) -> None:
        status, headers, body = parse(await exchange(server.port, "GET", "/healthz"))
        assert status == 200 and json.loads(body) == server.health()
        assert int(headers["content-length"]) == len(body)
        ws = await connect(server.url)
        await send(
            ws,
            {
                "channel": "webrtc-dashboard-rooms",
                "type": "join-room",
                "roomId": "demo",
                "userId": "a",
            },
        )
        assert (await recv(ws))["type"] == "user-joined-room"
        await ws.close()

    run(scenario)


# --------------------------------------------------------------------------- HEAD


@pytest.mark.parametrize("path", ["/", "/index.html", "/healthz", "/config.json", "/missing"])
def test_head_gets_the_get_headers_and_no_body(path: str) -> None:
    """HEAD returned the body too."""

    async def scenario(server: RelayServer) -> None:
        get_status, get_headers, get_body = parse(await exchange(server.port, "GET", path))
        status, headers, body = parse(await exchange(server.port, "HEAD", path))
        assert body == b""
        assert status == get_status
        assert headers == get_headers
        assert int(headers["content-length"]) == len(get_body) > 0

    run(scenario)


def test_head_on_metrics_has_no_body() -> None:
    async def scenario(server: RelayServer) -> None:
        status, headers, body = parse(await exchange(server.port, "HEAD", "/metrics"))
        assert (status, body) == (200, b"")
        assert headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) > 0

    run(scenario)
