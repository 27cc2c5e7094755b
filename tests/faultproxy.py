"""A WebSocket proxy for tests that breaks signaling the way a deployment's middlebox
can: it sits between clients and the relay, reads every frame, and a rule decides what
passes — unchanged, rewritten, or not at all.

``rule(link, up, frame)`` gets the connection (``link.user`` is the id its
``join-room`` claimed), the direction (``up``: client → relay) and the decoded frame,
and returns the frame to pass on or ``None`` to drop it. The proxy keeps the relay's
close codes; a relay connection that ends without a close frame (the relay died) is cut
on the client's side the same way, and while the relay is unreachable the proxy answers
HTTP 502, as a reverse proxy in front of a dead backend does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

Frame = dict[str, Any]


class Link:
    """One proxied connection."""

    def __init__(self, client: ServerConnection, relay: ClientConnection) -> None:
        self.client = client
        self.relay = relay
        self.user: str | None = None


Rule = Callable[[Link, bool, Frame], Frame | None]


class FaultProxy:
    """Clients connect to :attr:`url`; frames go to and from ``upstream`` through
    ``rule``. :attr:`dropped` lists ``(user, up, type)`` of every frame the rule
    dropped; :meth:`wait_for` waits until a check on it holds."""

    def __init__(self, upstream: str, rule: Rule) -> None:
        self.upstream = upstream
        self.rule = rule
        self.port = 0
        self.dropped: list[tuple[str | None, bool, str]] = []
        self._changed = asyncio.Event()
        self._pending: dict[ServerConnection, ClientConnection] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def wait_for(self, check: Callable[[], bool], timeout: float = 20.0) -> None:
        """Until ``check()`` holds, checked after each frame the rule drops."""

        async def until() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._open_upstream,
            max_size=None,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _open_upstream(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        try:
            relay = await ws_connect(self.upstream, max_size=None, compression=None, open_timeout=5)
        except (OSError, TimeoutError):
            return connection.respond(HTTPStatus.BAD_GATEWAY, "relay unreachable\n")
        self._pending[connection] = relay
        return None

    async def _handle(self, client: ServerConnection) -> None:
        link = Link(client, self._pending.pop(client))
        up = asyncio.get_running_loop().create_task(self._pipe(link, True))
        down = asyncio.get_running_loop().create_task(self._pipe(link, False))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._end(link)

    async def _end(self, link: Link) -> None:
        """Carry the end of one side to the other, as it happened."""
        relay_close = link.relay.protocol.close_rcvd
        client_close = link.client.protocol.close_rcvd
        if client_close is not None:
            await link.relay.close(client_close.code, client_close.reason)
        elif relay_close is not None:
            await link.client.close(relay_close.code, relay_close.reason)
        else:  # one side vanished without a close frame: so does the other
            link.client.transport.abort()
            link.relay.transport.abort()

    async def _pipe(self, link: Link, up: bool) -> None:
        src, dst = (link.client, link.relay) if up else (link.relay, link.client)
        with contextlib.suppress(ConnectionClosed):
            async for data in src:
                frame = _json_object(data)
                if frame is None:  # binary, or not a JSON object: passed on as it is
                    await dst.send(data)
                    continue
                if up and frame.get("type") == "join-room" and link.user is None:
                    link.user = frame.get("userId")
                out = self.rule(link, up, frame)
                if out is None:
                    self.dropped.append((link.user, up, str(frame.get("type"))))
                    self._changed.set()
                    continue
                await dst.send(data if out is frame else json.dumps(out))


def _json_object(data: str | bytes) -> Frame | None:
    if isinstance(data, bytes):
        return None
    try:
        frame = json.loads(data)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


@contextlib.asynccontextmanager
async def fault_proxy(upstream: str, rule: Rule) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(upstream, rule)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def drop(type_: str, *, up: bool) -> Rule:
    """Drop every frame of ``type_`` going ``up`` (client → relay) or down."""

    def rule(link: Link, going_up: bool, frame: Frame) -> Frame | None:
        return None if going_up == up and frame.get("type") == type_ else frame

    return rule


def edit_candidates(edit: Callable[[str], str | None]) -> Rule:
    """Pass every candidate line of every offer and answer going down through ``edit``
    (``None`` removes it), and trickled candidates likewise."""

    def rule(link: Link, up: bool, frame: Frame) -> Frame | None:
        if up:
            return frame
        for key in ("offer", "answer"):
            description = frame.get(key)
            if isinstance(description, dict) and isinstance(description.get("sdp"), str):
                lines = []
                for line in description["sdp"].split("\r\n"):
                    if line.startswith("a=candidate:"):
                        edited = edit(line[len("a=") :])
                        if edited is None:
                            continue
                        line = "a=" + edited
                    lines.append(line)
                frame = {**frame, key: {**description, "sdp": "\r\n".join(lines)}}
        candidate = frame.get("candidate")
        if isinstance(candidate, dict) and candidate.get("candidate"):
            edited = edit(str(candidate["candidate"]))
            if edited is None:
                return None
            frame = {**frame, "candidate": {**candidate, "candidate": edited}}
        return frame

    return rule


def to_port(port: int) -> Callable[[str], str]:
    """An ``edit`` for :func:`edit_candidates`: every candidate's port becomes ``port``."""

    def edit(candidate: str) -> str:
        parts = candidate.split()
        if len(parts) >= 6:
            parts[5] = str(port)
        return " ".join(parts)

    return edit
