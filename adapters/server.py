"""The relay server on ``websockets``' asyncio implementation.

Everything protocol-related is decided by :class:`sansio_signal.RelayMachine`; this
module only moves bytes and time:

- one task per connection reads frames and feeds them to the machine with ``now =
  loop.time()`` (monotonic, as every machine's ``now``) and each frame's
  ``wall_time = time.time()`` (for chat ``ts`` and token expiry only); the machine's
  actions are executed at once; a close frame from the client is handled after every
  frame received before it (the member leaves), and only then answered, so a client that
  closed cleanly and rejoins at once never finds its id taken;
- frames the machine sends are handed to the connection's transport at once (no
  writer task, no queue per connection: an idle connection costs the least memory);
  what a client has not read waits in its transport's buffer, bounded in bytes, so a
  client that stops reading fills its own buffer and is closed (1013) instead of growing
  server memory or slowing anybody else;
- exactly one ``asyncio`` timer is armed for :meth:`RelayMachine.next_deadline`,
  re-armed after every call into the machine;
- HTTP: ``GET /healthz`` (JSON), ``GET /metrics`` (Prometheus text), ``GET
  /config.json`` (the ICE servers for the browser page), ``GET /`` and ``GET /NAME`` (the
  files of the static directory); a WebSocket upgrade is accepted on ``/`` only. ``HEAD``
  gets the ``GET``'s headers and no body, other methods 405, a malformed request 400.

Transport-level abuse limits live here, because they are about sockets rather than
frames: the ``Origin`` allow-list (403) at the HTTP handshake, the per-address limit
(429; the machine's rule, fed from accept), the handshake timeout, WebSocket ping
keep-alive and the bounded send buffer (1013); pings and closes never wait behind data
a client does not read (past :data:`CLOSE_DRAIN_TIMEOUT` such a connection is aborted).
Limits on frames and time between them (size, rate, idle timeout) are the machine's.
Every refusal, here or in the machine, is counted in
``sansio_signal_refusals_total{reason=...}`` (see :data:`REFUSAL_REASONS`).

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
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from types import TracebackType
from typing import Any, ClassVar, TextIO, cast

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
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.http11 import Request, Response
from websockets.protocol import State

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
"""Bytes waiting for one connection (unsent in its transport) before it counts as a slow
consumer. Bytes, not frames: a healthy client in a full room can be sent room size ×
burst small frames at once, while a few large frames are what actually costs memory."""


@attrs.define(eq=False, slots=True)
class _Link:
    """What the adapter keeps per open WebSocket connection."""

    ws: _Connection
    known_to_machine: bool = True
    closer: asyncio.Task[None] | None = None
    """Our close of this connection (the handler waits for it before it returns, or
    websockets would close with 1000 first)."""

    @property
    def closing(self) -> bool:
        """The server closes this connection (the machine, the adapter's limits)."""
        return self.closer is not None


FAIR_SHARE = 16
"""Frames handled from one connection before the others get a turn (websockets hands out
every frame it has already read without suspending)."""

SERVICE_RESTART = CloseCode.SERVICE_RESTART
"""Close code of a graceful restart (``stop(code=SERVICE_RESTART)``, SIGTERM on ``serve``):
the server is going away and coming back, so clients reconnect and resume."""

DEFAULT_OPEN_TIMEOUT = 10.0
"""Seconds a new TCP connection has to complete its HTTP request / WebSocket handshake."""

DEFAULT_PING_INTERVAL = 20.0
"""Seconds between WebSocket pings (``None`` / 0 turns keep-alive off)."""

DEFAULT_PING_TIMEOUT = 20.0
"""Seconds to wait for a pong before dropping the connection (close 1011)."""

CLOSE_DRAIN_TIMEOUT = 2.0
"""Seconds a close may wait behind data the client has not read (or the server's own
``close_timeout`` if shorter). A client that stops reading would otherwise hold its
close, and its memory, forever: past this bound the TCP connection is aborted."""

REFUSAL_REASONS = (
    "rate-limited",
    "frame-too-large",
    "slow-consumer",
    "room-full",
    "rooms-limit",
    "per-ip-limit",
    "bad-origin",
    "handshake-timeout",
    "idle-timeout",
    "ping-timeout",
    "abuse-close",
    "unauthorized",
)
"""The ``reason`` labels of ``sansio_signal_refusals_total``: every one is exported, from 0.

``rate-limited``, ``room-full`` (room size), ``rooms-limit`` (rooms per server),
``unauthorized`` and ``frame-too-large`` count error replies (the latter also frames the
WebSocket layer cut off); ``abuse-close`` counts 1008 closes; the others count refused
handshakes (``per-ip-limit`` 429, ``bad-origin`` 403, ``handshake-timeout``) and
connections closed (``slow-consumer`` 1013, ``idle-timeout`` 1001 by the machine,
``ping-timeout`` 1011)."""

STATIC_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
"""The files of the static directory that are served, by suffix, with their type."""

_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A servable file name: a plain name, no dot first (no ``..``, no hidden files)."""

_ICE_KEYS = frozenset({"urls", "username", "credential"})

HTTP_METHODS = ("GET", "HEAD")
"""The HTTP methods served (a WebSocket upgrade is a GET); any other is answered 405
with ``Allow: GET, HEAD``."""


class _Connection(ServerConnection):
    """A ``ServerConnection`` that reports to its :class:`RelayServer` what websockets
    keeps to itself: the TCP connection's accept (the machine hears ``Connected`` then,
    with the client's address, before any HTTP request: half-open sockets count), a
    handshake that timed out, and the end of a connection that never reached the
    handler."""

    relay: ClassVar[RelayServer]
    conn: ConnId | None = None
    """The machine's id of this connection, from accept."""
    close_held: bool = False
    """A close frame from the client arrived and its answer is not sent yet: the relay
    first handles every frame received before it, then the close
    (:meth:`RelayServer._finish_close`), so a client that saw its close answered finds
    its id free at once."""
    _receiving: bool = False
    _bad_request: bool = False

    awaiting_pong: float | None = None
    """When the relay's keep-alive pinged this connection and no pong came yet."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        relay = self.relay
        self.conn = conn = next(relay._ids)
        relay._opening[conn] = self
        address = _address(transport.get_extra_info("peername"))
        relay._feed(Connected(conn=conn, address=address))

    def refuse(self, code: int, reason: str) -> None:
        """The machine closed this connection before its handshake completed: an HTTP
        answer (429 for "try again later", read by a client that sends a request) and
        the socket closed at once, so many half-open sockets cost no file descriptors."""
        status = (
            http.HTTPStatus.TOO_MANY_REQUESTS
            if code == CloseCode.TRY_AGAIN_LATER
            else http.HTTPStatus.SERVICE_UNAVAILABLE
        )
        if not self.transport.is_closing():
            cast(asyncio.WriteTransport, self.transport).write(_closing_response(status, reason))
            self.transport.close()

    def keepalive_ping(self, now: float) -> None:
        """The relay's keep-alive: a ping handed to the transport at once, behind
        whatever the client has not read yet (it never waits for that data to drain: a
        client that stopped reading would hold it there forever, and never time out).
        The pong timeout runs from the first unanswered ping."""
        if self.protocol.state is not State.OPEN or self.transport.is_closing():
            return
        if self.awaiting_pong is None:
            self.awaiting_pong = now
        self.protocol.send_ping(b"")
        try:
            self.send_data()
        except Exception as exc:  # as websockets' own send path treats it
            self.set_connection_exc(exc)

    async def fail(self, code: int, reason: str) -> None:
        """Close with ``code`` and drop the TCP connection without waiting for the
        client's answer (what websockets does on a keep-alive timeout: a client that
        does not answer pings will not answer a close either)."""
        with contextlib.suppress(ConnectionClosed):
            async with self.send_context():
                self.protocol.fail(code, reason)

    def acknowledge_pings(self, data: bytes) -> None:
        self.awaiting_pong = None  # any pong: the client reads and answers
        super().acknowledge_pings(data)

    async def drain(self) -> None:
        if self.protocol.state is State.OPEN or not self.paused:
            await super().drain()
            return
        # A close (ours, the keep-alive's 1011, the server stopping) behind unsent data:
        # waited for a short while only, then the connection is aborted.
        try:
            async with asyncio.timeout(_close_bound(self.close_timeout)):
                await super().drain()
        except TimeoutError:
            self.abort_stalled()

    def abort_stalled(self) -> None:
        """Abort a connection whose client does not read (its close cannot be sent)."""
        if self.transport.is_closing() and self.protocol.state is State.CLOSED:
            return
        logger.info(
            "Aborting connection %s from %s: the client does not read",
            self.conn,
            _peer(self.remote_address),
        )
        self.set_connection_exc(TimeoutError("the client does not read: close not sent"))
        self.transport.abort()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        except asyncio.CancelledError:
            # websockets cancels the handshake when open_timeout expires.
            if self.request is None:
                self.relay._refuse("handshake-timeout", self.remote_address)
            raise

    def data_received(self, data: bytes) -> None:
        # websockets answers a close frame as it parses it, before the frames ahead of it
        # reach the reader: send_data() below keeps that answer back (close_held).
        self._receiving = self.protocol.close_rcvd is None
        try:
            super().data_received(data)
        finally:
            self._receiving = False
        if self.close_held:  # the frames ahead of the close are queued now
            self.relay._finish_close(self)

    def send_data(self) -> None:
        protocol = self.protocol
        if (
            self.request is None
            and not self._bad_request
            and isinstance(protocol.handshake_exc, InvalidMessage)
        ):
            # websockets closes on a request it cannot parse without a word; it is a 400
            # (unless the client left before sending one).
            self._bad_request = True
            if not isinstance(protocol.handshake_exc.__cause__, EOFError):
                self.transport.write(_BAD_REQUEST)
        if (
            self._receiving
            and protocol.close_rcvd is not None
            and protocol.close_rcvd_then_sent
            and self.relay._holds_close(self)
        ):
            self.close_held = True
        if not self.close_held:
            super().send_data()

    def send_now(self, text: str) -> None:
        """Hand one text frame to the transport at once (what ``send()`` does, without
        a coroutine: the relay's sends never wait; unread data waits in the transport,
        bounded by the relay's send buffer). Dropped once the connection is closing."""
        if self.protocol.state is not State.OPEN or self.transport.is_closing():
            return
        self.protocol.send_text(text.encode())
        try:
            self.send_data()
        except Exception as exc:  # as websockets' own send path treats it
            self.set_connection_exc(exc)

    def unsent_bytes(self) -> int:
        """Bytes handed to this connection and not yet taken by the client's socket."""
        return self.transport.get_write_buffer_size()

    def pending_frames(self) -> int:
        """Frames received and not read by the handler yet."""
        return len(self.recv_messages.frames)

    def release_close(self) -> None:
        """Send the answer to the client's close (and what else waits behind it)."""
        if not self.close_held:
            return
        self.close_held = False
        try:
            super().send_data()
        except Exception as exc:  # as websockets' data_received() treats it
            self.set_connection_exc(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_held = False
        super().connection_lost(exc)
        relay, conn = self.relay, self.conn
        if conn is not None and relay._opening.pop(conn, None) is not None:
            # It never reached the handler (an HTTP request, a refused or failed
            # handshake): the machine hears its end here.
            relay._feed(Disconnected(conn=conn, clean=True))


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
        family = CounterMetricFamily(
            "sansio_signal_resume",
            "Held members, by outcome: resumed, expired (grace passed), overflowed.",
            labels=["outcome"],
        )
        family.add_metric(["resumed"], stats.resumes)
        family.add_metric(["expired"], stats.holds_expired)
        family.add_metric(["overflowed"], stats.holds_overflowed)
        yield family
        family = CounterMetricFamily(
            "sansio_signal_refusals",
            "Requests, frames and connections refused by an abuse limit, by reason.",
            labels=["reason"],
        )
        for reason, value in self._server.refusal_counts().items():
            family.add_metric([reason], value)
        yield family


class RelayServer:
    """A running relay: a :class:`RelayMachine` behind a ``websockets`` server.

    ``port=0`` binds any free port; read :attr:`port` / :attr:`url` after start.
    ``trace`` receives one JSON line per event in and action out.

    Transport limits: ``max_connections_per_ip`` (0 = unlimited; it sets
    ``Limits.max_per_address``, the machine's rule: connections plus held members per
    address) refuses further TCP connections from one address as they are accepted
    (HTTP 429, then closed);
    ``allowed_origins`` (empty = any) refuses an upgrade whose ``Origin`` is not listed
    with HTTP 403 (no ``Origin`` is allowed: not a browser); ``open_timeout`` drops a
    connection that has not sent its request in time; ``ping_interval`` /
    ``ping_timeout`` are the keep-alive (``None`` = off): one sweep of the relay pings
    every connection each ``ping_interval`` and closes (1011) those that have not
    answered within ``ping_timeout`` — one timer for all of them, not a task each.
    ``compression`` accepts permessage-deflate when a client offers it (browsers always
    do); off by default, as in Node's ``ws``: it costs ~40 KiB more memory per
    connection, for frames that are mostly small.
    The idle timeout is the machine's (``Limits.idle_timeout``).

    HTTP: ``static_dir`` (default: the package's ``static/``) is served at ``/NAME``
    (``/`` is ``index.html``; ``page`` overrides it); ``ice_servers`` (RTCIceServer
    dictionaries: ``urls`` and optional ``username``/``credential``) at ``/config.json``.
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
        static_dir: Traversable | None = None,
        ice_servers: Sequence[Mapping[str, str]] = (),
        max_connections_per_ip: int = 0,
        allowed_origins: Sequence[str] = (),
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        compression: bool = False,
    ) -> None:
        if max_connections_per_ip < 0:
            raise ValueError(f"max_connections_per_ip must be >= 0, got {max_connections_per_ip}")
        limits = limits if limits is not None else Limits()
        if max_connections_per_ip:
            limits = attrs.evolve(limits, max_per_address=max_connections_per_ip)
        if not open_timeout > 0:
            raise ValueError(f"open_timeout must be > 0, got {open_timeout}")
        self.ice_config = _ice_config(ice_servers)
        self.allowed_origins = frozenset(normalize_origin(o) for o in allowed_origins)
        self.open_timeout = open_timeout
        self.compression = compression
        self.ping_interval = ping_interval or None
        self.ping_timeout = ping_timeout or None
        self.refusals: Counter[str] = Counter()
        """Refusals decided here (the machine's are in its stats); see refusal_counts()."""
        self._static_dir = (
            static_dir
            if static_dir is not None
            else resources.files("sansio_signal.adapters").joinpath("static")
        )
        self._static: dict[str, tuple[bytes, str]] | None = None
        self.limits = limits
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
        self._opening: dict[ConnId, _Connection] = {}
        """Connections accepted whose WebSocket handler has not started yet (HTTP
        request, handshake)."""
        self._timer: asyncio.TimerHandle | None = None
        self._pinger: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._changed = asyncio.Event()
        self.registry = CollectorRegistry()
        Gauge(
            "sansio_signal_connections", "Open WebSocket connections.", registry=self.registry
        ).set_function(lambda: len(self._links))
        Gauge(
            "sansio_signal_rooms", "Rooms with at least one member.", registry=self.registry
        ).set_function(lambda: self.machine.room_count)
        Gauge(
            "sansio_signal_held_members",
            "Members whose socket dropped, held for a resume.",
            registry=self.registry,
        ).set_function(lambda: self.machine.held_count)
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
        server = self

        class Connection(_Connection):
            relay = server  # the hooks report to this server

        self._server = await serve(
            self._handle_connection,
            self.host,
            self.port,
            process_request=self._process_request,
            # The machine answers frames up to the limit and a bit beyond with
            # frame-too-large + 1009; websockets cuts off anything larger itself (1009).
            max_size=2 * self.limits.max_frame_bytes,
            open_timeout=self.open_timeout,
            ping_interval=None,  # the relay's own sweep (_keepalive), not a task each
            close_timeout=self.close_timeout,
            server_header="sansio-signal",
            # permessage-deflate keeps two zlib streams per connection: ~56 KiB instead
            # of ~15 (benchmarks/README.md), for frames that are mostly small JSON.
            compression="deflate" if self.compression else None,
            create_connection=Connection,
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        if self.ping_interval is not None:
            self._pinger = asyncio.get_running_loop().call_later(
                self.ping_interval, self._keepalive
            )

    def _keepalive(self) -> None:
        """Ping every open connection; ``ping_timeout`` later, close those that have
        not answered a ping since (1011, as websockets' own keep-alive would)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for link in self._links.values():
            if not link.closing:
                link.ws.keepalive_ping(now)
        if self.ping_timeout is not None:
            loop.call_later(self.ping_timeout, self._check_pongs, now)
        assert self.ping_interval is not None
        self._pinger = loop.call_later(self.ping_interval, self._keepalive)

    def _check_pongs(self, pinged: float) -> None:
        for link in list(self._links.values()):
            since = link.ws.awaiting_pong
            if since is not None and since <= pinged and not link.closing:
                self._refuse("ping-timeout", link.ws.remote_address)
                self._close(link, CloseCode.INTERNAL_ERROR, "keepalive ping timeout", fail=True)

    async def stop(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop listening and close every connection with ``code``.

        1001 (going away, the default) is a clean close: members leave at once.
        :data:`SERVICE_RESTART` (1012) says the server is restarting: not a clean close,
        so the machine treats each member like a dropped socket (resume) and the clients
        reconnect.
        """
        if self._server is None:
            return
        self._server.close(close_connections=True, code=code, reason=reason)
        # websockets answers 503 to a request that arrives now, but it would wait out the
        # handshake timeout for a socket that never sends one: drop those at once.
        for connection in list(self._opening.values()):
            if connection.request is None:
                connection.transport.abort()
        await self._server.wait_closed()
        self._server = None
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
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

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``condition()`` holds; it is checked after every event the machine
        handles (for tests and tools that watch the relay's state)."""

        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def health(self) -> dict[str, int]:
        """The ``/healthz`` body."""
        return {"connections": len(self._links), "rooms": self.machine.room_count}

    def refusal_counts(self) -> dict[str, int]:
        """Every refusal so far by reason (:data:`REFUSAL_REASONS`): the adapter's own
        and those the machine's counters record."""
        stats = self.machine.stats
        counts = dict.fromkeys(REFUSAL_REASONS, 0)
        counts.update(self.refusals)
        rooms_limit = stats.rooms_limit_refusals
        counts["rate-limited"] = stats.errors["rate-limited"]
        counts["unauthorized"] = stats.errors["unauthorized"]
        counts["room-full"] = stats.errors["room-full"] - rooms_limit
        counts["rooms-limit"] = rooms_limit
        counts["frame-too-large"] = (
            stats.errors["frame-too-large"] + self.refusals["frame-too-large"]
        )
        counts["abuse-close"] = stats.closes[CloseCode.POLICY]
        counts["idle-timeout"] = stats.idle_closes
        counts["per-ip-limit"] = stats.address_refusals
        return counts

    def _refuse(self, reason: str, address: object = None) -> None:
        self.refusals[reason] += 1
        logger.info("Refused (%s) %s", reason, _peer(address))

    def _holds_close(self, ws: _Connection) -> bool:
        """Whether a close frame arriving now on ``ws`` waits for the frames ahead of it:
        yes while its handler feeds the machine and nobody is closing it yet."""
        link = self._links.get(ws.conn) if ws.conn is not None else None
        return link is not None and link.known_to_machine and not link.closing

    def _finish_close(self, ws: _Connection) -> None:
        """Once every frame received before the client's close has been fed to the
        machine, the close is: the member leaves (or is held) before the client sees its
        close answered, and a rejoin under the same id can never race the leave."""
        if not ws.close_held or ws.pending_frames():
            return
        link = self._links.get(ws.conn) if ws.conn is not None else None
        if link is not None and link.known_to_machine and ws.conn is not None:
            link.known_to_machine = False
            self._feed(Disconnected(conn=ws.conn, clean=self._clean(link)))
        ws.release_close()

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if request.method not in HTTP_METHODS:
            response = _text_response(http.HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
            response.headers["Allow"] = ", ".join(HTTP_METHODS)
            return response
        upgrades = request.headers.get_all("Upgrade")
        if len(upgrades) > 1:
            # websockets reads headers with headers[name], which raises on a repeated one
            # (and answered 500 with a traceback): a repeated Upgrade is a malformed request.
            logger.debug("Bad request from %s: repeated Upgrade header", _peer(ws.remote_address))
            return _text_response(http.HTTPStatus.BAD_REQUEST, "bad request")
        if request.method == "HEAD":
            return _head(self._http_get(path))
        upgrade = bool(upgrades) and upgrades[0].strip().lower() == "websocket"
        if not upgrade:
            return self._http_get(path)
        if path != "/":
            return _text_response(http.HTTPStatus.NOT_FOUND, "not found")
        if self.allowed_origins:
            origins = request.headers.get_all("Origin")
            # No Origin: not a browser, so not a cross-site page; the check protects users'
            # browsers from other sites, not the server from programs (that is the tokens').
            if origins and (
                len(origins) > 1 or normalize_origin(origins[0]) not in self.allowed_origins
            ):
                self._refuse("bad-origin", ws.remote_address)
                return _text_response(http.HTTPStatus.FORBIDDEN, "origin not allowed")
        # The per-address limit is the machine's, from accept (_Connection.connection_made).
        return None

    def _http_get(self, path: str) -> Response:
        if path == "/healthz":
            return _response(
                http.HTTPStatus.OK, json.dumps(self.health()).encode(), "application/json"
            )
        if path == "/metrics":
            return _response(
                http.HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST
            )
        if path == "/config.json":
            return _response(http.HTTPStatus.OK, self.ice_config, "application/json")
        name = "index.html" if path == "/" else path[1:]
        found = self._static_files().get(name)
        if found is None:
            return _text_response(http.HTTPStatus.NOT_FOUND, "not found")
        return _response(http.HTTPStatus.OK, *found)

    def _static_files(self) -> dict[str, tuple[bytes, str]]:
        """Every servable file of the static directory, read once (they are small)."""
        if self._static is None:
            files: dict[str, tuple[bytes, str]] = {}
            if self._static_dir.is_dir():
                for entry in self._static_dir.iterdir():
                    suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
                    content_type = STATIC_TYPES.get(suffix.lower())
                    if content_type and _STATIC_NAME.fullmatch(entry.name) and entry.is_file():
                        files[entry.name] = (entry.read_bytes(), content_type)
            if self._page is not None:
                files["index.html"] = (self._page, STATIC_TYPES[".html"])
            self._static = files
        return self._static

    # ------------------------------------------------------------------ connections

    async def _handle_connection(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _Connection) and ws.conn is not None
        own, conn = ws, ws.conn
        if self._opening.pop(conn, None) is None:
            return  # the socket ended before its handler started (connection_lost said so)
        link = _Link(ws=own)
        self._links[conn] = link
        received = 0
        try:
            async for data in ws:
                if link.closing:
                    # Closed by us (abuse, oversize, idle, slow reader): read no more.
                    # websockets stops reading the socket once its small queue is full,
                    # so a flooding client costs nothing more until the close completes.
                    break
                if link.known_to_machine:  # false once dropped as a slow consumer
                    self._feed(FrameReceived(conn=conn, data=data, wall_time=time.time()))
                if own.close_held:
                    self._finish_close(own)  # the client's close, after this frame
                received += 1
                if received % FAIR_SHARE == 0:
                    # websockets hands out frames already read without suspending: let
                    # the other connections run between bursts of this one.
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            own.release_close()
            if link.closer is not None:
                await link.closer  # bounded: close_timeout, or the unread-data bound
            del self._links[conn]
            self._count_library_close(link)
            if link.known_to_machine:
                link.known_to_machine = False
                self._feed(Disconnected(conn=conn, clean=self._clean(link)))

    def _count_library_close(self, link: _Link) -> None:
        """Count the refusal websockets made on its own: a frame far over the size limit
        (1009)."""
        protocol = link.ws.protocol
        sent = protocol.close_sent
        if link.closing or sent is None or protocol.close_rcvd_then_sent:
            return
        if sent.code == CloseCode.TOO_BIG:
            self.refusals["frame-too-large"] += 1

    @staticmethod
    def _clean(link: _Link) -> bool:
        protocol = link.ws.protocol
        sent = protocol.close_sent
        by_server = link.closing or (sent is not None and not protocol.close_rcvd_then_sent)
        code = protocol.close_rcvd.code if protocol.close_rcvd is not None else None
        server_code = sent.code if by_server and sent is not None else None
        return is_clean_close(code, by_server=by_server, server_code=server_code)

    # ------------------------------------------------------------------ the machine

    def _feed(self, event: RelayEvent) -> None:
        arrived = time.perf_counter()
        now = asyncio.get_running_loop().time()
        actions = self.machine.handle(event, now)
        if self.trace is not None:
            self._trace(now, event, actions)
        self._execute(actions, arrived)
        self._rearm()
        self._changed.set()

    def _on_timer(self) -> None:
        self._timer = self._armed_for = None
        now = asyncio.get_running_loop().time()
        actions = self.machine.handle_timer(now)
        if self.trace is not None:
            self.trace.write(f'{{"t":{now!r},"dir":"in","kind":"TimerFired"}}\n')
            self._trace(now, None, actions)
        self._execute(actions, time.perf_counter())
        self._rearm()
        self._changed.set()

    def _rearm(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline == self._armed_for:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = deadline
        if deadline is not None:  # the machine runs on the loop's clock
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

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
                if link.ws.unsent_bytes() + size > self.send_buffer:
                    overflowed.append(action.conn)
                    self._refuse("slow-consumer", link.ws.remote_address)
                    self._close(link, CloseCode.TRY_AGAIN_LATER, "slow consumer")
                    continue
                link.ws.send_now(action.text)
                self._latency.observe(time.perf_counter() - arrived)
            elif isinstance(action, CloseConnection):
                link = self._links.get(action.conn)
                if link is not None:
                    self._close(link, action.code, action.reason)
                elif (opening := self._opening.get(action.conn)) is not None:
                    opening.refuse(action.code, action.reason)
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

    def _close(self, link: _Link, code: int, reason: str, *, fail: bool = False) -> None:
        """Close ``link`` with ``code``: the close frame goes behind the frames already
        handed to its transport. A client that does not read them cannot hold the close
        (and its memory) for long: the close waits for unsent data a short while only
        (:meth:`_Connection.drain`), then the connection is aborted. ``fail``: do not
        wait for the client's answer to the close (:meth:`_Connection.fail`)."""
        if link.closing:
            return
        self.closes[code] = self.closes.get(code, 0) + 1
        closing = link.ws.fail(code, reason) if fail else link.ws.close(code, reason)
        link.closer = asyncio.get_running_loop().create_task(closing)


def _close_bound(close_timeout: float | None) -> float:
    """How long a close may wait behind frames the client has not read."""
    return min(close_timeout or CLOSE_DRAIN_TIMEOUT, CLOSE_DRAIN_TIMEOUT)


def normalize_origin(origin: str) -> str:
    """An ``Origin`` as compared with the allow-list: lower case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


def _ice_config(ice_servers: Sequence[Mapping[str, str]]) -> bytes:
    """The ``/config.json`` body: ``{"iceServers": [...]}`` as RTCConfiguration wants it."""
    servers: list[dict[str, str]] = []
    for server in ice_servers:
        if not isinstance(server.get("urls"), str) or not set(server) <= _ICE_KEYS:
            raise ValueError(
                f"an ICE server is {{'urls': str, 'username'?: str, 'credential'?: str}}, "
                f"got {dict(server)!r}"
            )
        servers.append(dict(server))
    return json.dumps({"iceServers": servers}).encode()


def _address(remote: object) -> str:
    """The host part of a socket's peer address."""
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return str(remote)


def _peer(remote: object) -> str:
    if isinstance(remote, tuple) and len(remote) >= 2:
        return f"{remote[0]}:{remote[1]}"
    return str(remote)


def _closing_response(status: http.HTTPStatus, text: str) -> bytes:
    """A plain-text answer written straight to a socket we close at once (before, or
    instead of, websockets' own request handling)."""
    response = _text_response(status, text)
    response.headers["Connection"] = "close"
    return response.serialize()


def _head(response: Response) -> Response:
    """The answer to a HEAD: the GET's status and headers (``Content-Length`` included),
    no body."""
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["X-Content-Type-Options"] = "nosniff"
    return Response(status.value, status.phrase, headers, body)


def _text_response(status: http.HTTPStatus, text: str) -> Response:
    return _response(status, f"{text}\n".encode(), "text/plain; charset=utf-8")


_BAD_REQUEST = _closing_response(http.HTTPStatus.BAD_REQUEST, "bad request")
"""The answer to a request websockets could not parse (it would close without one)."""
