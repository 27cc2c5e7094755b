"""The relay server on ``picows`` (WebSocket framing in Cython, for asyncio).

Everything protocol-related is decided by :class:`sansio_signal.RelayMachine`; this
module only moves bytes and time:

- a TCP connection starts as an HTTP request (:class:`_Front`): the machine hears
  ``Connected`` at accept, with the client's address (half-open sockets count), before any
  byte of the request; the request is read and answered here (pages, ``/healthz``,
  ``/metrics``, ``/config.json``, 400/403/404/405/426/429), and a valid WebSocket upgrade
  on ``/`` hands the socket to a ``picows`` protocol, which answers 101 and frames from
  then on;
- every frame picows parses is fed to the machine at once, in order, with ``now =
  loop.time()`` (monotonic, as every machine's ``now``) and ``wall_time = time.time()``
  (for chat ``ts`` and token expiry only): no task, queue or coroutine per frame or per
  connection; the machine's actions are executed before the next frame is parsed. A close
  frame from the client is therefore handled after every frame it sent before it (the
  member leaves), and only then answered, so a client that closed cleanly and rejoins at
  once never finds its id taken;
- frames the machine sends are handed to the connection's transport at once; what a
  client has not read waits in its transport's buffer, bounded in bytes, so a client that
  stops reading fills its own buffer and is closed (1013) instead of growing server memory
  or slowing anybody else;
- exactly one ``asyncio`` timer is armed for :meth:`RelayMachine.next_deadline`,
  re-armed after every call into the machine; one more sweeps keep-alive pings for every
  connection.

HTTP: ``GET /healthz`` (JSON), ``GET /metrics`` (Prometheus text), ``GET /config.json``
(the ICE servers for the browser page), ``GET /`` and ``GET /NAME`` (the files of the
static directory); a WebSocket upgrade is accepted on ``/`` only. ``HEAD`` gets the
``GET``'s headers and no body, other methods 405, a malformed request 400. Every HTTP
answer closes its connection. No WebSocket extension is negotiated (permessage-deflate
costs ~40 KiB per connection for frames that are mostly small JSON; Node's ``ws``
leaves it off too).

Transport-level abuse limits live here, because they are about sockets rather than
frames: the ``Origin`` allow-list (403) at the HTTP request, the per-address limit
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
import base64
import binascii
import bisect
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
from typing import TYPE_CHECKING, Any, Protocol, TextIO, cast

import attrs
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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
from sansio_signal.store import NodeLapsed, StoreFailed, StoreOp, StoreResult
from sansio_signal.trace import record_line
from sansio_signal.turn import TurnConfig, with_turn

from .loglines import LogLines
from .onetimer import OneTimer

if TYPE_CHECKING:  # redis-py is the optional 'redis' extra
    from .redis_store import RedisStore

logger = logging.getLogger("sansio_signal.relay")

DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
"""Bytes waiting for one connection (unsent in its transport) before it counts as a slow
consumer. Bytes, not frames: a healthy client in a full room can be sent room size ×
burst small frames at once, while a few large frames are what actually costs memory."""

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

DEFAULT_NODE_TIMEOUT = Limits().node_timeout
"""Scale-out: seconds a dead node goes unnoticed at most (``Limits.node_timeout``)."""

MAX_REQUEST_HEAD = 16 * 1024
"""Bytes of an HTTP request line and headers; a longer head is a 400."""

READ_BUFFER = 2048
"""Initial bytes of a connection's read buffer (picows grows it for larger frames): an
idle connection costs little, and signaling frames are mostly a few hundred bytes."""

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

LATENCY_BUCKETS = (
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
)
"""Upper bounds (seconds) of ``sansio_signal_relay_latency_seconds``' buckets."""

_PROTOCOL_ERROR = 1002
"""Close code of a WebSocket protocol violation (RFC 6455), ours for fragments."""

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG


# --------------------------------------------------------------------------- HTTP


class _BadRequest(Exception):
    """The request cannot be parsed (400)."""


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


@attrs.frozen
class _Request:
    """An HTTP request head: method, path (no query) and headers by lower-case name."""

    method: str
    path: str
    headers: Mapping[str, list[str]]

    def get_all(self, name: str) -> list[str]:
        return self.headers.get(name, [])

    def get(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def _parse_request(head: bytes) -> _Request:
    """Parse an HTTP/1.1 request head (up to its blank line), or raise ``_BadRequest``.
    Strict: one space between the parts, token method, origin-form target, no folded
    lines, no body (a relay has nothing to post to)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target) or version != b"HTTP/1.1":
        raise _BadRequest("malformed request line")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _BadRequest("malformed header")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise _BadRequest("malformed header value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    if "transfer-encoding" in headers:
        raise _BadRequest("a request body is not accepted")
    lengths = headers.get("content-length", [])
    if len(lengths) > 1 or (lengths and lengths[0].strip("0")):
        raise _BadRequest("a request body is not accepted")
    path = target.decode("ascii").partition("?")[0]
    return _Request(method=method.decode("ascii"), path=path, headers=headers)


def _has_token(values: list[str], token: str) -> bool:
    """Whether a comma-separated header (``Connection: keep-alive, Upgrade``) has
    ``token``, case-insensitively."""
    return any(part.strip().lower() == token for value in values for part in value.split(","))


def _websocket_key(request: _Request) -> str | None:
    """The ``Sec-WebSocket-Key`` of a valid upgrade request, or ``None``."""
    keys = request.get_all("sec-websocket-key")
    if len(keys) != 1:
        return None
    try:
        if len(base64.b64decode(keys[0].encode("ascii"), validate=True)) != 16:
            return None
    except (binascii.Error, UnicodeEncodeError):
        return None
    return keys[0]


@attrs.frozen
class _Response:
    """An HTTP response: sent whole, then the connection is closed."""

    status: http.HTTPStatus
    body: bytes
    headers: tuple[tuple[str, str], ...]

    def serialize(self, *, head: bool = False) -> bytes:
        """The bytes of this response (``head``: the same headers, no body)."""
        lines = [f"HTTP/1.1 {self.status.value} {self.status.phrase}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return out if head else out + self.body


def _response(
    status: http.HTTPStatus, body: bytes, content_type: str, *extra: tuple[str, str]
) -> _Response:
    return _Response(
        status=status,
        body=body,
        headers=(
            ("Server", "sansio-signal"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
            ("Connection", "close"),
        ),
    )


def _text_response(status: http.HTTPStatus, text: str, *extra: tuple[str, str]) -> _Response:
    return _response(status, f"{text}\n".encode(), "text/plain; charset=utf-8", *extra)


_BAD_REQUEST = _text_response(http.HTTPStatus.BAD_REQUEST, "bad request")
_NOT_FOUND = _text_response(http.HTTPStatus.NOT_FOUND, "not found")
_METHOD_NOT_ALLOWED = _text_response(
    http.HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", ("Allow", ", ".join(HTTP_METHODS))
)
_UPGRADE_REQUIRED = _text_response(
    http.HTTPStatus.UPGRADE_REQUIRED,
    "WebSocket version 13 only",
    ("Sec-WebSocket-Version", "13"),
)


def _upgrade_request(key: str) -> bytes:
    """The request picows reads once this module has checked the client's: picows
    answers it (101 and ``Sec-WebSocket-Accept`` for ``key``), and takes every rule of
    the request from here (it would refuse ``Connection: keep-alive, Upgrade``, which
    Firefox sends)."""
    return (
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")


class _Front(asyncio.Protocol):
    """A TCP connection until it is a WebSocket: its HTTP request, answered here or
    handed to picows as an upgrade (:meth:`RelayServer._upgrade`)."""

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay
        self.conn: ConnId = next(relay._ids)
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.buffer = bytearray()
        self.done = False
        """Answered, refused or upgraded: read nothing more."""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        relay = self.relay
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not one
        self.peer = transport.get_extra_info("peername")
        relay._opening[self.conn] = self
        self.timer = asyncio.get_running_loop().call_later(relay.open_timeout, self._timed_out)
        relay._feed(Connected(conn=self.conn, address=_address(self.peer)))

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_REQUEST_HEAD:
                self.answer(_BAD_REQUEST)
            return
        if end > MAX_REQUEST_HEAD:
            self.answer(_BAD_REQUEST)
            return
        head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end + 4 :])
        self.buffer = bytearray()
        try:
            request = _parse_request(head)
        except _BadRequest as exc:
            logger.debug("Bad request from %s: %s", _peer(self.peer), exc)
            self.answer(_BAD_REQUEST)
            return
        self.relay._route(self, request, rest)

    def answer(self, response: _Response, *, head: bool = False) -> None:
        """Send ``response`` and close the connection."""
        self.finish()
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(response.serialize(head=head))
            self.transport.close()

    def refuse(self, code: int, reason: str) -> None:
        """The machine closed this connection before its handshake completed: an HTTP
        answer (429 for "try again later", read by a client that sends a request) and
        the socket closed at once, so many half-open sockets cost no file descriptors."""
        status = (
            http.HTTPStatus.TOO_MANY_REQUESTS
            if code == CloseCode.TRY_AGAIN_LATER
            else http.HTTPStatus.SERVICE_UNAVAILABLE
        )
        self.answer(_text_response(status, reason))

    def abort(self) -> None:
        self.finish()
        if self.transport is not None:
            self.transport.abort()

    def finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if not self.done:
            self.relay._refuse("handshake-timeout", self.peer)
            self.abort()

    def eof_received(self) -> bool:
        return False  # close: a request cut short gets no answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()
        relay = self.relay
        if relay._opening.pop(self.conn, None) is not None:
            # It never became a WebSocket: the machine hears its end here.
            relay._feed(Disconnected(conn=self.conn, clean=True))


# --------------------------------------------------------------------------- WebSocket


class _Member(WSListener):
    """One WebSocket connection: what the relay keeps for it, and picows' callbacks."""

    __slots__ = (
        "awaiting_pong",
        "closer",
        "closing",
        "conn",
        "known_to_machine",
        "out",
        "out_size",
        "parts",
        "parts_size",
        "paused",
        "peer",
        "relay",
        "transport",
    )

    def __init__(self, relay: RelayServer, conn: ConnId, peer: object) -> None:
        self.relay = relay
        self.conn = conn
        self.peer = peer
        self.transport: WSTransport | None = None
        self.known_to_machine = True
        """False once the machine heard this connection's end."""
        self.closing = False
        """The server closes this connection (the machine, the adapter's limits)."""
        self.closer: asyncio.TimerHandle | None = None
        """The bound on our close: the connection is aborted if still open then."""
        self.paused = False
        """The transport's buffer is over its high-water mark (the client reads slowly)."""
        self.awaiting_pong: float | None = None
        """When the relay's keep-alive pinged this connection and no pong came yet."""
        self.parts: list[bytes] | None = None
        """A fragmented message being reassembled (first frame's type first)."""
        self.parts_size = 0
        self.out: list[bytes] | None = None
        """Frames for this connection in this turn of the event loop, written at its end
        in one system call (:meth:`RelayServer._flush`)."""
        self.out_size = 0

    # picows' callbacks ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        relay = self.relay
        relay._opening.pop(self.conn, None)
        relay._links[self.conn] = self

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _TEXT and frame.fin and self.parts is None:
            if self.closing:
                return  # closed by us: read no more
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self.relay._close(self, CloseCode.INVALID_DATA, "invalid UTF-8")
                return
            self.relay._frame(self, text)
            return
        self._other_frame(frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.relay._disconnected(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # the rest ----------------------------------------------------------------------

    def _other_frame(self, frame: WSFrame) -> None:
        """Every frame but a whole text frame: close, pong, binary, fragments."""
        kind = frame.msg_type
        relay = self.relay
        if kind is _CLOSE:
            relay._close_received(self)
            return
        if kind is _PONG:
            self.awaiting_pong = None  # any pong: the client reads and answers
            return
        if self.closing:
            return
        if kind is _CONTINUATION:
            if self.parts is None:
                relay._close(self, _PROTOCOL_ERROR, "continuation without a start")
                return
            self._add_part(frame.get_payload_as_bytes())
        elif kind is _TEXT or kind is _BINARY:
            if self.parts is not None:
                relay._close(self, _PROTOCOL_ERROR, "a new message inside a fragmented one")
                return
            self.parts = [b"t" if kind is _TEXT else b"b"]
            self.parts_size = 0
            self._add_part(frame.get_payload_as_bytes())
        else:
            return  # a ping: picows answered it
        if frame.fin and self.parts is not None:
            parts, self.parts = self.parts, None
            data = b"".join(parts[1:])
            if parts[0] == b"b":
                relay._message(self, data)
                return
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                relay._close(self, CloseCode.INVALID_DATA, "invalid UTF-8")
                return
            relay._message(self, text)

    def _add_part(self, payload: bytes) -> None:
        assert self.parts is not None
        self.parts_size += len(payload)
        if self.parts_size > self.relay.max_message:
            self.parts = None
            self.relay._too_big(self)
            return
        self.parts.append(payload)

    def unsent_bytes(self) -> int:
        """Bytes handed to this connection and not yet taken by the client's socket
        (waiting in its transport, or for the end of this turn of the event loop)."""
        if self.transport is None:
            return 0
        size: int = self.transport.underlying_transport.get_write_buffer_size()
        return size + self.out_size


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows' own log lines at DEBUG: what it reports (a client's protocol error, a
    connection accepted) is about one client, not the server's health."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            kwargs.pop("exc_info", None)
            self.logger.log(logging.DEBUG, msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        enabled: bool = self.logger.isEnabledFor(logging.DEBUG)
        return enabled


_PICOWS_LOG = _PicowsLog(logging.getLogger("sansio_signal.relay.ws"), {})


class _LatencyHistogram:
    """``sansio_signal_relay_latency_seconds``: counts per bucket, kept cheap enough to
    observe every frame sent (prometheus_client's Histogram takes a lock and walks the
    buckets in Python per observation)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative = list(itertools.accumulate(self.counts))
        buckets = [(repr(b), n) for b, n in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        return HistogramMetricFamily(
            "sansio_signal_relay_latency_seconds",
            "From a frame's arrival to each resulting frame handed to the socket.",
            buckets=buckets,
            sum_value=self.sum,
        )


class MetricsSource(Protocol):
    """What the relay's metrics are read from at scrape time: a running relay adapter
    (:class:`RelayServer`, or the ASGI app of :mod:`sansio_signal.adapters.asgi`)."""

    @property
    def machine(self) -> RelayMachine: ...
    @property
    def closes(self) -> Counter[int]: ...
    @property
    def latency(self) -> _LatencyHistogram: ...
    def refusal_counts(self) -> dict[str, int]:
        """Every refusal so far by ``reason`` label: the adapter's own and the machine's."""
        ...


class _StatsCollector(Collector):
    """Exports the machine's own counters at scrape time."""

    def __init__(self, server: MetricsSource) -> None:
        self._server = server

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
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
        yield self._server.latency.family()


def new_latency_histogram() -> _LatencyHistogram:
    """An empty ``sansio_signal_relay_latency_seconds`` (observe seconds per frame sent)."""
    return _LatencyHistogram(LATENCY_BUCKETS)


def relay_registry(source: MetricsSource, connections: Callable[[], int]) -> CollectorRegistry:
    """A Prometheus registry with the relay's metrics read off ``source`` at scrape time
    (``connections``: how many WebSockets are open now). Shared by every adapter that
    runs a relay, so that ``/metrics`` is the same wherever the machine runs."""
    registry = CollectorRegistry()
    Gauge(
        "sansio_signal_connections", "Open WebSocket connections.", registry=registry
    ).set_function(connections)
    Gauge("sansio_signal_rooms", "Rooms with at least one member.", registry=registry).set_function(
        lambda: source.machine.room_count
    )
    Gauge(
        "sansio_signal_held_members",
        "Members whose socket dropped, held for a resume.",
        registry=registry,
    ).set_function(lambda: source.machine.held_count)
    registry.register(_StatsCollector(source))
    return registry


def count_refusals(machine: RelayMachine, own: Mapping[str, int]) -> dict[str, int]:
    """Every refusal so far by reason (:data:`REFUSAL_REASONS`): the adapter's ``own``
    and those the machine's counters record."""
    stats = machine.stats
    counts = dict.fromkeys(REFUSAL_REASONS, 0)
    counts.update(own)
    rooms_limit = stats.rooms_limit_refusals
    counts["rate-limited"] = stats.errors["rate-limited"]
    counts["unauthorized"] = stats.errors["unauthorized"]
    counts["room-full"] = stats.errors["room-full"] - rooms_limit
    counts["rooms-limit"] = rooms_limit
    counts["frame-too-large"] += stats.errors["frame-too-large"]  # and the adapter's own
    counts["abuse-close"] = stats.closes[CloseCode.POLICY]
    counts["idle-timeout"] = stats.idle_closes
    counts["per-ip-limit"] = stats.address_refusals
    return counts


class RelayServer:
    """A running relay: a :class:`RelayMachine` behind a picows WebSocket server.

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
    The idle timeout is the machine's (``Limits.idle_timeout``).

    ``log_lines``: the machine's log lines go straight to this handler (``serve``'s, which
    also handles every other record) rather than through ``logging`` one record each: a
    relayed frame's INFO line then costs a fraction of a LogRecord. Leave it out to have
    every line go through your own logging configuration.

    HTTP: ``static_dir`` (default: the package's ``static/``) is served at ``/NAME``
    (``/`` is ``index.html``; ``page`` overrides it); ``ice_servers`` (RTCIceServer
    dictionaries: ``urls`` and optional ``username``/``credential``) at ``/config.json``,
    and ``turn``'s servers with credentials made for each request (TURN REST API:
    valid for ``turn.ttl`` seconds, checked by a TURN server sharing ``turn.secret``).
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
        turn: TurnConfig | None = None,
        max_connections_per_ip: int = 0,
        allowed_origins: Sequence[str] = (),
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        log_lines: LogLines | None = None,
        store: RedisStore | None = None,
        node_id: str | None = None,
    ) -> None:
        if max_connections_per_ip < 0:
            raise ValueError(f"max_connections_per_ip must be >= 0, got {max_connections_per_ip}")
        limits = limits if limits is not None else Limits()
        if max_connections_per_ip:
            limits = attrs.evolve(limits, max_per_address=max_connections_per_ip)
        if not open_timeout > 0:
            raise ValueError(f"open_timeout must be > 0, got {open_timeout}")
        self._ice_servers = _ice_servers(ice_servers)
        self.turn = turn
        """TURN servers whose credentials are made fresh for each ``/config.json``."""
        self.ice_config = json.dumps({"iceServers": self._ice_servers}).encode()
        self.allowed_origins = frozenset(normalize_origin(o) for o in allowed_origins)
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval or None
        self.ping_timeout = ping_timeout or None
        self.log_lines = log_lines
        self.refusals: Counter[str] = Counter()
        """Refusals decided here (the machine's are in its stats); see refusal_counts()."""
        self._static_dir = (
            static_dir
            if static_dir is not None
            else resources.files("sansio_signal.adapters").joinpath("static")
        )
        self._static: dict[str, tuple[bytes, str]] | None = None
        self.limits = limits
        self.max_message = 2 * limits.max_frame_bytes
        """Bytes of one message the WebSocket layer reads at most: the machine answers
        frames up to its limit and a bit beyond with frame-too-large + 1009; anything
        larger is cut off here (1009)."""
        self.store = store
        self.node_name = node_id or (machine.node if machine is not None else None)
        """Scale-out: this process's name (``--node-id``) in /healthz and /metrics."""
        node = None
        if store is not None:
            self.node_name = self.node_name or secrets.token_hex(4)
            node = incarnation(self.node_name)
        self.machine = machine or RelayMachine(
            limits=self.limits, new_token=lambda: secrets.token_urlsafe(18), node=node
        )
        if store is not None and self.machine.node is None:
            raise ValueError("a relay with a store needs a machine with a node id")
        self.node_timeout = self.machine.limits.node_timeout
        """Scale-out: the heartbeat's period is a third of it (the machine sweeps for
        dead nodes as often)."""
        self.redis_ok = True
        """With a store: whether Redis answered the last time it was asked."""
        self._store_ops: list[StoreOp] = []
        self._pump: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self.host = host
        self.port = port
        self.send_buffer = send_buffer
        self.close_timeout = close_timeout
        self.trace = trace
        self.closes: Counter[int] = Counter()
        self._page = page
        self._links: dict[ConnId, _Member] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._opening: dict[ConnId, _Front] = {}
        """Connections accepted that are not WebSockets yet (HTTP request)."""
        self._timer = OneTimer(self._on_timer)
        self._pinger: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._gone = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[_Member] = []
        """Connections with frames waiting for the end of this turn (:meth:`_flush`)."""
        self.latency = _LatencyHistogram(LATENCY_BUCKETS)
        self.registry = relay_registry(self, lambda: len(self._links))
        if self.machine.node is not None:
            Gauge(
                "sansio_signal_node",
                "This process in a cluster (always 1; the label is its node id).",
                ["node"],
                registry=self.registry,
            ).labels(node=self.node_name or self.machine.node).set(1)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Front(self), self.host, self.port, backlog=1024
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        if self.ping_interval is not None:
            self._pinger = loop.call_later(self.ping_interval, self._keepalive)
        if self.store is not None:
            self._listener = loop.create_task(self._listen())
            self._heart = loop.create_task(self._heartbeat())

    # ------------------------------------------------------------------ the store

    def _queue_store(self, op: StoreOp) -> None:
        """One store operation the machine asked for: sent with the others of this turn
        in one round trip, in order (:meth:`_run_store`)."""
        self._store_ops.append(op)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run_store())

    async def _run_store(self) -> None:
        assert self.store is not None
        try:
            while self._store_ops:
                batch, self._store_ops = self._store_ops, []
                results = await self.store.apply_many(batch)
                failed = any(isinstance(r, StoreFailed) for r in results)
                self._set_redis(not failed)
                for result in results:
                    self._feed(result)
        finally:
            self._pump = None

    async def _listen(self) -> None:
        """The notices of this node (mail for its members, tells), fed to the machine."""
        assert self.store is not None and self.machine.node is not None
        while True:
            try:
                notices = await self.store.notices(self.machine.node, block_ms=1000)
            except self.store.errors as exc:
                self._set_redis(False, exc)
                await asyncio.sleep(min(1.0, self.node_timeout / 3))
                continue
            self._set_redis(True)
            for notice in notices:
                self._feed(notice)

    async def _heartbeat(self) -> None:
        """This node's liveness key, refreshed every node timeout / 3 (its machine's
        ``Limits.node_timeout`` is the same figure: serve sets both)."""
        assert self.store is not None and self.machine.node is not None
        # Beats every third of the timeout, each good for two thirds: one late beat is
        # forgiven, and a dead node's key is gone within 2/3 of the timeout — the other
        # nodes' sweeps (every third) notice it within the timeout.
        ttl_ms = int(self.node_timeout * 2000 / 3)
        first = True
        while True:
            try:
                alive = await self.store.heartbeat(self.machine.node, ttl_ms)
                self._set_redis(True)
                if not alive and not first:  # the others may have taken our members
                    self._feed(NodeLapsed())
                first = False
            except self.store.errors as exc:
                self._set_redis(False, exc)
            await asyncio.sleep(self.node_timeout / 3)

    def _set_redis(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok != self.redis_ok:
            if ok:
                logger.warning("Redis answers again")
            else:
                logger.warning("Redis cannot be reached: %s", exc or "an operation failed")
        self.redis_ok = ok

    def _keepalive(self) -> None:
        """Ping every open connection; ``ping_timeout`` later, close those that have
        not answered a ping since (1011)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for link in self._links.values():
            if not link.closing and link.transport is not None:
                if link.awaiting_pong is None:
                    link.awaiting_pong = now  # the timeout runs from the first unanswered
                link.transport.send_ping()
        if self.ping_timeout is not None:
            loop.call_later(self.ping_timeout, self._check_pongs, now)
        assert self.ping_interval is not None
        self._pinger = loop.call_later(self.ping_interval, self._keepalive)

    def _check_pongs(self, pinged: float) -> None:
        for link in list(self._links.values()):
            since = link.awaiting_pong
            if since is not None and since <= pinged and not link.closing:
                self._refuse("ping-timeout", link.peer)
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
        server, self._server = self._server, None
        server.close()
        for front in list(self._opening.values()):
            front.abort()  # not a WebSocket yet: nothing to close cleanly
        for link in list(self._links.values()):
            self._close(link, code, reason)
        # Each close is bounded (close_timeout, or CLOSE_DRAIN_TIMEOUT behind unread data).
        while self._links:
            self._gone.clear()
            try:
                await asyncio.wait_for(self._gone.wait(), self.close_timeout + 1.0)
            except TimeoutError:
                for link in list(self._links.values()):
                    self._abort(link)
                break
        await server.wait_closed()
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        for task in (self._listener, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._heart = None
        if self._pump is not None:  # the last leaves and holds, recorded
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), self.close_timeout)
        if self.store is not None:
            assert self.machine.node is not None
            with contextlib.suppress(*self.store.errors):  # then they wait for the timeout
                await self.store.retire(self.machine.node)  # held members: swept at once
            await self.store.redis.aclose()
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

    def health(self) -> dict[str, int | str]:
        """The ``/healthz`` body (with a store: this node's id, and whether Redis answers;
        the rooms are those with members on this node)."""
        body: dict[str, int | str] = {
            "connections": len(self._links),
            "rooms": self.machine.room_count,
        }
        if self.store is not None:
            assert self.node_name is not None
            body["node"] = self.node_name
            body["redis"] = "ok" if self.redis_ok else "down"
        return body

    def refusal_counts(self) -> dict[str, int]:
        """Every refusal so far by reason (:data:`REFUSAL_REASONS`): the adapter's own
        and those the machine's counters record."""
        return count_refusals(self.machine, self.refusals)

    def _refuse(self, reason: str, address: object = None) -> None:
        self.refusals[reason] += 1
        logger.info("Refused (%s) %s", reason, _peer(address))

    # ------------------------------------------------------------------ HTTP

    def _route(self, front: _Front, request: _Request, rest: bytes) -> None:
        """Answer one HTTP request, or upgrade it."""
        if request.method not in HTTP_METHODS:
            front.answer(_METHOD_NOT_ALLOWED)
            return
        upgrades = request.get_all("upgrade")
        if len(upgrades) > 1:
            logger.debug("Bad request from %s: repeated Upgrade header", _peer(front.peer))
            front.answer(_BAD_REQUEST)
            return
        if request.method == "HEAD":
            front.answer(self._http_get(request.path), head=True)
            return
        if not (upgrades and upgrades[0].strip().lower() == "websocket"):
            front.answer(self._http_get(request.path))
            return
        if request.path != "/":
            front.answer(_NOT_FOUND)
            return
        if self.allowed_origins:
            origins = request.get_all("origin")
            # No Origin: not a browser, so not a cross-site page; the check protects users'
            # browsers from other sites, not the server from programs (that is the tokens').
            if origins and (
                len(origins) > 1 or normalize_origin(origins[0]) not in self.allowed_origins
            ):
                self._refuse("bad-origin", front.peer)
                front.answer(_text_response(http.HTTPStatus.FORBIDDEN, "origin not allowed"))
                return
        if request.get_all("sec-websocket-version") != ["13"]:
            front.answer(_UPGRADE_REQUIRED)
            return
        key = _websocket_key(request)
        if key is None or not _has_token(request.get_all("connection"), "upgrade"):
            front.answer(_BAD_REQUEST)
            return
        # The per-address limit is the machine's, from accept (_Front.connection_made).
        self._upgrade(front, key, rest)

    def _upgrade(self, front: _Front, key: str, rest: bytes) -> None:
        """Hand the socket to picows: it answers 101 and frames from now on."""
        front.finish()
        transport = front.transport
        assert transport is not None
        member = _Member(self, front.conn, front.peer)
        protocol = WSProtocol(
            None,  # host:port (client side only)
            None,  # path (client side only)
            False,  # server side
            lambda _request: member,
            _PICOWS_LOG,
            True,  # disconnect on an exception in a callback (a bug: logged)
            None,  # handshake timeout: ours (_Front)
            False,  # picows' keep-alive: ours (_keepalive), one sweep for all
            self.ping_interval or 20.0,
            self.ping_timeout or 20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # answer pings
            self.max_message,
            None,  # extra headers
            READ_BUFFER,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        _feed_protocol(protocol, _upgrade_request(key) + rest)
        if member.transport is None and self._opening.pop(front.conn, None) is not None:
            # picows refused what this module accepted (it cannot: a bug, or the socket
            # went away meanwhile): drop it, the machine hears its end.
            logger.warning("Upgrade of connection %s failed", front.conn)
            transport.abort()
            self._feed(Disconnected(conn=front.conn, clean=True))

    def _http_get(self, path: str) -> _Response:
        if path == "/healthz":
            status = http.HTTPStatus.OK if self.redis_ok else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, json.dumps(self.health()).encode(), "application/json")
        if path == "/metrics":
            return _response(
                http.HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST
            )
        if path == "/config.json":
            body = self.ice_config
            if self.turn is not None:  # fresh credentials, valid for the TURN ttl
                servers = with_turn(self._ice_servers, self.turn, time.time())
                body = json.dumps({"iceServers": servers}).encode()
            return _response(http.HTTPStatus.OK, body, "application/json")
        name = "index.html" if path == "/" else path[1:]
        found = self._static_files().get(name)
        if found is None:
            return _NOT_FOUND
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

    def _frame(self, link: _Member, text: str) -> None:
        """A whole text frame (the hot path)."""
        self._feed(FrameReceived(conn=link.conn, data=text, wall_time=time.time()))

    def _message(self, link: _Member, data: str | bytes) -> None:
        """A reassembled message, or a binary one (the machine answers bad-frame)."""
        if not link.closing:
            self._feed(FrameReceived(conn=link.conn, data=data, wall_time=time.time()))

    def _close_received(self, link: _Member) -> None:
        """The client's close frame, after every frame it sent before it: the member
        leaves (or is held) before the client sees its close answered, so a rejoin under
        the same id can never race the leave."""
        if link.known_to_machine:
            link.known_to_machine = False
            self._feed(Disconnected(conn=link.conn, clean=self._clean(link)))
        transport = link.transport
        assert transport is not None
        self._flush_link(link)
        if not transport.is_close_frame_sent:
            handshake = transport.close_handshake
            received = handshake.recv if handshake is not None else None
            if received is None or received.code is WSCloseCode.NO_INFO:
                transport.send(_CLOSE, b"")  # a close without a code is answered so
            else:
                transport.send_close(received.code)
        transport.disconnect()

    def _disconnected(self, link: _Member) -> None:
        """The TCP connection of ``link`` is gone."""
        self._links.pop(link.conn, None)
        link.out, link.out_size = None, 0
        if link.closer is not None:
            link.closer.cancel()
            link.closer = None
        self._count_library_close(link)
        if link.known_to_machine:
            link.known_to_machine = False
            self._feed(Disconnected(conn=link.conn, clean=self._clean(link)))
        if not self._links:
            self._gone.set()

    def _too_big(self, link: _Member) -> None:
        """A fragmented message grew past :attr:`max_message` (what picows does for one
        frame, here for a message): 1009, counted as picows' are."""
        self._count_too_big()
        self._close(link, CloseCode.TOO_BIG, "message too big")

    def _count_too_big(self) -> None:
        """A message cut off by the WebSocket layer, counted with the machine's
        frame-too-large replies."""
        self.refusals["frame-too-large"] += 1

    def _count_library_close(self, link: _Member) -> None:
        """Count the refusal picows made on its own: a frame far over the size limit
        (1009)."""
        transport = link.transport
        handshake = transport.close_handshake if transport is not None else None
        if link.closing or handshake is None or handshake.sent is None:
            return
        if not handshake.recv_then_sent and handshake.sent.code is WSCloseCode.MESSAGE_TOO_BIG:
            self._count_too_big()

    @staticmethod
    def _clean(link: _Member) -> bool:
        transport = link.transport
        handshake = transport.close_handshake if transport is not None else None
        received = handshake.recv if handshake is not None else None
        sent = handshake.sent if handshake is not None else None
        by_server = link.closing or (
            sent is not None and handshake is not None and not handshake.recv_then_sent
        )
        code = _code(received.code) if received is not None else None
        server_code = _code(sent.code) if by_server and sent is not None else None
        return is_clean_close(code, by_server=by_server, server_code=server_code)

    # ------------------------------------------------------------------ the machine

    def _feed(self, event: RelayEvent | StoreResult) -> None:
        arrived = time.perf_counter()
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        actions = self.machine.handle(event, now)
        if self.trace is not None:
            self._trace(now, event, actions)
        self._execute(actions, arrived)
        self._rearm()
        self._changed.set()

    def _on_timer(self) -> None:
        now = asyncio.get_running_loop().time()
        actions = self.machine.handle_timer(now)
        if self.trace is not None:
            self.trace.write(f'{{"t":{now!r},"dir":"in","kind":"TimerFired"}}\n')
            self._trace(now, None, actions)
        self._execute(actions, time.perf_counter())
        self._rearm()
        self._changed.set()

    def _rearm(self) -> None:
        self._timer.arm(self.machine.next_deadline())

    def _trace(
        self, now: float, event: RelayEvent | StoreResult | None, actions: list[RelayAction]
    ) -> None:
        assert self.trace is not None
        lines = [] if event is None else [record_line(now, "in", event)]
        lines += [record_line(now, "out", action) for action in actions]
        self.trace.write("\n".join(lines) + "\n")
        self.trace.flush()

    def _execute(self, actions: list[RelayAction], arrived: float) -> None:
        overflowed: list[ConnId] = []
        links = self._links
        lines = self.log_lines
        for action in actions:
            if type(action) is SendFrame:
                link = links.get(action.conn)
                if link is None or link.closing:
                    continue
                data = action.text.encode()
                if link.unsent_bytes() + len(data) > self.send_buffer:
                    overflowed.append(action.conn)
                    self._refuse("slow-consumer", link.peer)
                    self._close(link, CloseCode.TRY_AGAIN_LATER, "slow consumer")
                    continue
                size = len(data)
                out = link.out
                if out is None:
                    link.out = [_text_header(size), data]
                    link.out_size = size
                    self._dirty.append(link)
                    if len(self._dirty) == 1:
                        (self._loop or asyncio.get_running_loop()).call_soon(self._flush)
                else:
                    out.append(_text_header(size))
                    out.append(data)
                    link.out_size += size
                self.latency.observe(time.perf_counter() - arrived)
            elif isinstance(action, Log):
                if logger.isEnabledFor(action.level):
                    if lines is None:
                        logger.log(action.level, action.message, *action.args)
                    else:  # the same line, without a LogRecord (a relayed frame's)
                        lines.action_line(action, logger.name)
            elif isinstance(action, CloseConnection):
                link = links.get(action.conn)
                if link is not None:
                    self._close(link, action.code, action.reason)
                elif (opening := self._opening.get(action.conn)) is not None:
                    opening.refuse(action.code, action.reason)
            elif not isinstance(action, SendFrame):  # a store operation (a cluster)
                self._queue_store(action)
        # A slow consumer leaves only after this batch is out, so the others see the
        # batch's frames before its user-left-room, in the order the machine decided.
        for conn in overflowed:
            link = links.get(conn)
            if link is not None and link.known_to_machine:
                link.known_to_machine = False
                logger.warning("Closing connection %s: slow consumer", conn)
                self._feed(Disconnected(conn=conn, clean=True))

    def _flush(self) -> None:
        """Write every connection's frames of this turn of the event loop: one system
        call per connection however many frames it got (a member of a busy room gets
        several per turn), instead of one per frame."""
        dirty, self._dirty = self._dirty, []
        for link in dirty:
            self._flush_link(link)

    @staticmethod
    def _flush_link(link: _Member) -> None:
        out, link.out, link.out_size = link.out, None, 0
        transport = link.transport
        if out and transport is not None and not transport.is_close_frame_sent:
            transport.underlying_transport.writelines(out)

    def _close(self, link: _Member, code: int, reason: str, *, fail: bool = False) -> None:
        """Close ``link`` with ``code``: the close frame goes behind the frames already
        handed to its transport. A client that does not read them cannot hold the close
        (and its memory) for long: past :data:`CLOSE_DRAIN_TIMEOUT` with data unsent the
        connection is aborted, and past ``close_timeout`` without the client's answer it
        is closed. ``fail``: do not wait for the client's answer (a client that does not
        answer pings will not answer a close either)."""
        if link.closing:
            return
        link.closing = True
        link.parts = None
        self._flush_link(link)  # the close goes behind the frames already sent
        self.closes[code] += 1
        transport = link.transport
        assert transport is not None
        transport.send_close(WSCloseCode(code), reason.encode())
        if fail:
            transport.disconnect()  # once the unsent data is out (bounded below)
        link.closer = asyncio.get_running_loop().call_later(
            _close_bound(self.close_timeout), self._close_expired, link, True
        )

    def _close_expired(self, link: _Member, draining: bool) -> None:
        link.closer = None
        if link.transport is None or link.transport.is_disconnected:
            return
        if draining and link.unsent_bytes():
            logger.info(
                "Aborting connection %s from %s: the client does not read",
                link.conn,
                _peer(link.peer),
            )
            self._abort(link)
            return
        remaining = self.close_timeout - _close_bound(self.close_timeout)
        if draining and remaining > 0:
            link.closer = asyncio.get_running_loop().call_later(
                remaining, self._close_expired, link, False
            )
            return
        link.transport.disconnect()  # the client never answered our close

    @staticmethod
    def _abort(link: _Member) -> None:
        if link.transport is not None:
            link.transport.underlying_transport.abort()


_SMALL_HEADERS = [bytes([0x81, size]) for size in range(126)]


def _text_header(size: int) -> bytes:
    """The header of a server's text frame (final, unmasked) of ``size`` bytes."""
    if size < 126:
        return _SMALL_HEADERS[size]
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


def _feed_protocol(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Give ``data`` to a buffered protocol as if it had been read from its socket."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        if size == 0:
            raise RuntimeError("the protocol offered no buffer")
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


def _code(code: object) -> int:
    """A picows close code as an int (it reports codes it has no name for as ints)."""
    return int(code.value) if isinstance(code, WSCloseCode) else int(code)  # type: ignore[call-overload]


def incarnation(name: str) -> str:
    """The id a process named ``name`` has in the store: the name and a random part, so
    that a process restarted under the same ``--node-id`` is a new node — the old one's
    members are swept, not taken for its own."""
    return f"{name}.{secrets.token_hex(3)}"


def _close_bound(close_timeout: float | None) -> float:
    """How long a close may wait behind frames the client has not read."""
    return min(close_timeout or CLOSE_DRAIN_TIMEOUT, CLOSE_DRAIN_TIMEOUT)


def normalize_origin(origin: str) -> str:
    """An ``Origin`` as compared with the allow-list: lower case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


def _ice_servers(ice_servers: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The static ICE servers of ``/config.json`` (``{"iceServers": [...]}``, as
    RTCConfiguration wants it), checked."""
    servers: list[dict[str, str]] = []
    for server in ice_servers:
        if not isinstance(server.get("urls"), str) or not set(server) <= _ICE_KEYS:
            raise ValueError(
                f"an ICE server is {{'urls': str, 'username'?: str, 'credential'?: str}}, "
                f"got {dict(server)!r}"
            )
        servers.append(dict(server))
    return servers


def _address(remote: object) -> str:
    """The host part of a socket's peer address."""
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return str(remote)


def _peer(remote: object) -> str:
    if isinstance(remote, tuple) and len(remote) >= 2:
        return f"{remote[0]}:{remote[1]}"
    return str(remote)
