"""The relay server on ``websockets``' asyncio implementation.

Everything protocol-related is decided by :class:`sansio_signal.RelayMachine`; this
module only moves bytes and time:

- one task per connection reads frames and feeds them to the machine with
  ``now = time.time()``; the machine's actions are executed at once;
- each connection has an outgoing queue bounded in bytes, drained by its own writer
  task, so a client that stops reading fills its own queue and is closed (1013) instead of
  growing server memory or slowing anybody else;
- exactly one ``asyncio`` timer is armed for :meth:`RelayMachine.next_deadline`,
  re-armed after every call into the machine;
- HTTP: ``GET /healthz`` (JSON), ``GET /metrics`` (Prometheus text), a plain ``GET /``
  (the page); a WebSocket upgrade is accepted on ``/`` only.

Use it as ``async with RelayServer(port=0) as server: ...`` or through
``sansio-signal serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import logging
import secrets
import time
from collections.abc import Iterator
from importlib import resources
from types import TracebackType
from typing import TextIO

import attrs
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sansio_signal import (
    CloseCode,
    CloseConnection,
    Connected,
    ConnId,
    Disconnected,
    FrameReceived,
    Limits,
    Log,
    RelayAction,
    RelayEvent,
    RelayMachine,
    SendFrame,
    is_clean_close,
)
from sansio_signal.trace import record_line

logger = logging.getLogger("sansio_signal.relay")

DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
"""Bytes queued for one connection before it counts as a slow consumer. Bytes, not
frames: a healthy client in a full room can be sent room size × burst small frames at
once, while a few large frames are what actually costs memory."""


@attrs.define(eq=False)
class _Close:
    code: int
    reason: str


@attrs.define(eq=False)
class _Link:
    """What the adapter keeps per connection."""

    ws: ServerConnection
    queue: asyncio.Queue[tuple[str, float] | _Close] = attrs.field(factory=asyncio.Queue)
    queued_bytes: int = 0
    closing: bool = False
    known_to_machine: bool = True
    server_closed: bool = False


class _StatsCollector(Collector):
    """Exports the machine's own counters at scrape time."""

    def __init__(self, server: RelayServer) -> None:
        self._server = server

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._server.machine.stats
        for name, doc, label, counter in (
            ("sansio_signal_frames_in", "Frames received, by type.", "type", stats.frames_in),
            ("sansio_signal_frames_out", "Frames sent, by type.", "type", stats.frames_out),
            ("sansio_signal_errors", "Error replies sent, by code.", "code", stats.errors),
            (
                "sansio_signal_closes",
                "Connections closed by the server, by code.",
                "code",
                self._server.closes,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in sorted(counter.items(), key=lambda kv: str(kv[0])):
                family.add_metric([str(key)], value)
            yield family


class RelayServer:
    """A running relay: a :class:`RelayMachine` behind a ``websockets`` server.

    ``port=0`` binds any free port; read :attr:`port` / :attr:`url` after start.
    ``trace`` receives one JSON line per event in and action out.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        limits: Limits | None = None,
        send_buffer: int = DEFAULT_SEND_BUFFER,
        close_timeout: float = 5.0,
        trace: TextIO | None = None,
        machine: RelayMachine | None = None,
        page: bytes | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self.machine = machine or RelayMachine(
            limits=self.limits, new_token=lambda: secrets.token_urlsafe(18)
        )
        self.host = host
        self.port = port
        self.send_buffer = send_buffer
        self.close_timeout = close_timeout
        self.trace = trace
        self.closes: dict[int, int] = {}
        self._page = page
        self._links: dict[ConnId, _Link] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self.registry = CollectorRegistry()
        Gauge(
            "sansio_signal_connections", "Open WebSocket connections.", registry=self.registry
        ).set_function(lambda: len(self._links))
        Gauge(
            "sansio_signal_rooms", "Rooms with at least one member.", registry=self.registry
        ).set_function(lambda: self.machine.room_count)
        self._latency = Histogram(
            "sansio_signal_relay_latency_seconds",
            "From a frame's arrival to each resulting frame handed to the socket.",
            buckets=(
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
            ),
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await serve(
            self._handle_connection,
            self.host,
            self.port,
            process_request=self._process_request,
            # The machine answers frames up to the limit and a bit beyond with
            # frame-too-large + 1009; websockets cuts off anything larger itself (1009).
            max_size=2 * self.limits.max_frame_bytes,
            close_timeout=self.close_timeout,
            server_header="sansio-signal",
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection with 1001 (going away) and stop listening."""
        if self._server is None:
            return
        self._server.close(close_connections=True, code=CloseCode.GOING_AWAY)
        await self._server.wait_closed()
        self._server = None
        if self._timer is not None:
            self._timer.cancel()
        if self.trace is not None:
            self.trace.flush()

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def health(self) -> dict[str, int]:
        """The ``/healthz`` body."""
        return {"connections": len(self._links), "rooms": self.machine.room_count}

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == "/healthz":
            return _response(
                ws, http.HTTPStatus.OK, json.dumps(self.health()).encode(), "application/json"
            )
        if path == "/metrics":
            return _response(
                ws, http.HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST
            )
        if path == "/" and not upgrade:
            return _response(ws, http.HTTPStatus.OK, self._index(), "text/html; charset=utf-8")
        if path != "/":
            return _response(
                ws, http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8"
            )
        return None

    def _index(self) -> bytes:
        if self._page is None:
            self._page = (
                resources.files("sansio_signal.adapters").joinpath("static/index.html").read_bytes()
            )
        return self._page

    # ------------------------------------------------------------------ connections

    async def _handle_connection(self, ws: ServerConnection) -> None:
        conn = next(self._ids)
        link = _Link(ws=ws)
        self._links[conn] = link
        self._feed(Connected(conn=conn))
        writer = asyncio.create_task(self._write(conn, link))
        try:
            async for data in ws:
                if link.known_to_machine:  # false once dropped as a slow consumer
                    self._feed(FrameReceived(conn=conn, data=data))
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            del self._links[conn]
            if link.known_to_machine:
                link.known_to_machine = False
                self._feed(Disconnected(conn=conn, clean=self._clean(link)))

    @staticmethod
    def _clean(link: _Link) -> bool:
        protocol = link.ws.protocol
        by_server = link.server_closed or (
            protocol.close_sent is not None and not protocol.close_rcvd_then_sent
        )
        code = protocol.close_rcvd.code if protocol.close_rcvd is not None else None
        return is_clean_close(code, by_server=by_server)

    async def _write(self, conn: ConnId, link: _Link) -> None:
        ws, queue = link.ws, link.queue
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Close):
                    await ws.close(item.code, item.reason)
                    return
                text, arrived = item
                link.queued_bytes -= len(text)
                await ws.send(text)
                self._latency.observe(time.perf_counter() - arrived)
        except ConnectionClosed:
            return

    # ------------------------------------------------------------------ the machine

    def _feed(self, event: RelayEvent) -> None:
        arrived = time.perf_counter()
        now = time.time()
        actions = self.machine.handle(event, now)
        if self.trace is not None:
            self._trace(now, event, actions)
        self._execute(actions, arrived)
        self._rearm()

    def _on_timer(self) -> None:
        self._timer = self._armed_for = None
        now = time.time()
        actions = self.machine.handle_timer(now)
        if self.trace is not None:
            self.trace.write(f'{{"t":{now!r},"dir":"in","kind":"TimerFired"}}\n')
            self._trace(now, None, actions)
        self._execute(actions, time.perf_counter())
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline == self._armed_for:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = deadline
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(
                loop.time() + max(0.0, deadline - time.time()), self._on_timer
            )

    def _trace(self, now: float, event: RelayEvent | None, actions: list[RelayAction]) -> None:
        assert self.trace is not None
        lines = [] if event is None else [record_line(now, "in", event)]
        lines += [record_line(now, "out", action) for action in actions]
        self.trace.write("\n".join(lines) + "\n")
        self.trace.flush()

    def _execute(self, actions: list[RelayAction], arrived: float) -> None:
        overflowed: list[ConnId] = []
        for action in actions:
            if isinstance(action, SendFrame):
                link = self._links.get(action.conn)
                if link is None or link.closing:
                    continue
                size = len(action.text)  # ASCII JSON: characters are bytes
                if link.queued_bytes + size > self.send_buffer:
                    overflowed.append(action.conn)
                    self._close(link, CloseCode.TRY_AGAIN_LATER, "slow consumer", flush=False)
                    continue
                link.queued_bytes += size
                link.queue.put_nowait((action.text, arrived))
            elif isinstance(action, CloseConnection):
                link = self._links.get(action.conn)
                if link is not None:
                    self._close(link, action.code, action.reason, flush=True)
            elif isinstance(action, Log) and logger.isEnabledFor(action.level):
                logger.log(action.level, action.message, *action.args)
        # A slow consumer leaves only after this batch is out, so the others see the
        # batch's frames before its user-left-room, in the order the machine decided.
        for conn in overflowed:
            link = self._links.get(conn)
            if link is not None and link.known_to_machine:
                link.known_to_machine = False
                logger.warning("Closing connection %s: slow consumer", conn)
                self._feed(Disconnected(conn=conn, clean=True))

    def _close(self, link: _Link, code: int, reason: str, *, flush: bool) -> None:
        """Close after the queued frames (``flush``) or at once (a full queue)."""
        if link.closing:
            return
        link.closing = link.server_closed = True
        self.closes[code] = self.closes.get(code, 0) + 1
        if flush:
            link.queue.put_nowait(_Close(code, reason))
        else:
            asyncio.get_running_loop().create_task(link.ws.close(code, reason))


def _response(
    ws: ServerConnection, status: http.HTTPStatus, body: bytes, content_type: str
) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    return Response(status.value, status.phrase, headers, body)
