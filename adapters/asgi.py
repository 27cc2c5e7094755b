"""The relay as an ASGI application: mount it inside the web app you already run.

::

    app = FastAPI()
    app.mount("/signal", relay_app(authorize=my_check))

Plain ASGI 3 (``scope``, ``receive``, ``send``): no framework is imported, so it runs
under uvicorn, hypercorn or daphne, mounted in FastAPI, Starlette or any router that
passes the scope through. Everything protocol-related is decided by
:class:`sansio_signal.RelayMachine`, exactly as under ``serve``
(:mod:`sansio_signal.adapters.server`); this module only moves frames and time:

- one machine per app, shared by every connection, with one ``asyncio`` timer armed for
  :meth:`RelayMachine.next_deadline` and re-armed after every call into the machine;
- a WebSocket scope (on the mount's own path, ``/``): the machine hears ``Connected``
  with ``scope["client"]``'s host when the ASGI server reports the connection
  (``websocket.connect``). When the machine refuses it at once (the per-address limit) the
  app sends ``websocket.close`` before accepting, which the ASGI server answers with HTTP
  403 (ASGI has no other status for a refused WebSocket; ``serve`` answers 429). Then
  every message is fed as ``FrameReceived`` (text as ``str``, bytes as ``bytes``: the
  machine answers bad-frame), and ``websocket.disconnect`` as ``Disconnected`` with the
  protocol's clean rule (:func:`sansio_signal.is_clean_close`);
- ``SendFrame`` goes to the connection's send queue, drained by one task per connection.
  ASGI has no transport buffer to measure, so the queue is the bound: past ``send_buffer``
  bytes waiting the client is a slow consumer and is closed with 1013, as ``serve`` does;
- ``CloseConnection`` queues ``websocket.close`` with the machine's code behind the
  frames already queued.

**The application's own auth decides joins.** ``authorize(scope, join)`` sees the ASGI
scope of the connection asking (its headers, cookies, ``scope["session"]``,
``scope["user"]``...) and the :class:`~sansio_signal.JoinRoom`; it answers ``True`` to let
the join go ahead, ``False`` for ``unauthorized``. It runs inside the machine, as the
machine's ``authorize`` hook, and next to JWT join tokens (``secret``: both must allow).
The machine calls its hook while it handles that connection's frame, so the app passes it
the scope of the connection whose frame is being handled.

HTTP scopes (when mounted): ``GET /healthz`` (JSON) and ``GET /metrics`` (the same
Prometheus metrics as ``serve``), 404 otherwise. Lifespan: startup is answered at once;
shutdown closes every connection with 1012 (a restart: clients resume), as SIGTERM on
``serve``. A router does not pass lifespan events to a mounted app (Starlette's ``Mount``
does not): call :meth:`RelayApp.shutdown` from the application's own lifespan.

What ASGI does not let this adapter do (``serve`` does): see the refused handshake above
(403, not 429); the ``Origin`` allow-list, the handshake timeout, WebSocket pings and
the maximum message size are the ASGI server's (uvicorn: ``--ws-ping-interval``,
``--ws-max-size``); a client that stops reading cannot be aborted, only sent a close
(its connection ends when the ASGI server gives up on it); no scale-out (``--redis``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sansio_signal import (
    CloseCode,
    CloseConnection,
    Connected,
    ConnId,
    Disconnected,
    FrameReceived,
    JoinRoom,
    Limits,
    Log,
    RelayAction,
    RelayEvent,
    RelayMachine,
    SendFrame,
    is_clean_close,
)
from sansio_signal.tokens import TokenAuthority

from .onetimer import OneTimer
from .server import (
    DEFAULT_SEND_BUFFER,
    count_refusals,
    new_latency_histogram,
    relay_registry,
)

logger = logging.getLogger("sansio_signal.relay")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ScopeAuthorize = Callable[[Scope, JoinRoom], bool]
"""``authorize(scope, join)``: may the connection of this ASGI ``scope`` make this join?"""

CLOSE_TIMEOUT = 5.0
"""Seconds a close may wait for the connection's sender (a client that does not read)."""


class _Link:
    """One accepted WebSocket: its scope, send queue and how it is closing."""

    def __init__(self, conn: ConnId, scope: Scope) -> None:
        self.conn = conn
        self.scope = scope
        self.queue: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue()
        self.queued_bytes = 0
        self.closing: tuple[int, str] | None = None
        """The server's close (code, reason), once queued."""
        self.known_to_machine = True


class RelayApp:
    """An ASGI 3 application running one :class:`RelayMachine` (see the module)."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        authorize: ScopeAuthorize | None = None,
        secret: bytes | None = None,
        machine: RelayMachine | None = None,
        send_buffer: int = DEFAULT_SEND_BUFFER,
        new_token: Callable[[], str] | None = None,
    ) -> None:
        if machine is not None and (authorize is not None or secret is not None):
            raise ValueError("authorize and secret are the machine's: pass them, or a machine")
        if send_buffer <= 0:
            raise ValueError(f"send_buffer must be > 0, got {send_buffer}")
        self._scope_authorize = authorize
        self._deciding: Scope | None = None
        if machine is None:
            tokens = None
            if secret is not None:
                tokens = TokenAuthority(secret, room_size=lambda room: self.machine.room_size(room))
            hook = self._authorize if (authorize is not None or tokens is not None) else None
            self._tokens = tokens
            machine = RelayMachine(
                limits=limits if limits is not None else Limits(),
                authorize=hook,
                new_token=new_token or (lambda: secrets.token_urlsafe(18)),
            )
        self.machine = machine
        self.send_buffer = send_buffer
        self.refusals: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.latency = new_latency_histogram()
        self.registry = relay_registry(self, lambda: len(self._links))
        self._links: dict[ConnId, _Link] = {}
        self._ids = itertools.count(1)
        self._timer = OneTimer(self._on_timer)
        self._refused: dict[ConnId, tuple[int, str]] = {}
        self._connecting: ConnId | None = None
        """The connection whose ``Connected`` the machine is handling."""
        self._gone = asyncio.Event()

    # ------------------------------------------------------------------ the machine

    def _authorize(self, join: JoinRoom, wall_time: float) -> bool:
        """The machine's hook: the app's scope check, then the join token (if any)."""
        if self._scope_authorize is not None:
            scope = self._deciding
            if scope is None or not self._scope_authorize(scope, join):
                return False
        return self._tokens is None or self._tokens(join, wall_time)

    def _feed(self, event: RelayEvent, scope: Scope | None = None) -> None:
        arrived = time.perf_counter()
        now = asyncio.get_running_loop().time()
        self._deciding = scope
        try:
            actions = self.machine.handle(event, now)
        finally:
            self._deciding = None
        self._execute(actions, arrived)
        self._rearm()

    def _on_timer(self) -> None:
        actions = self.machine.handle_timer(asyncio.get_running_loop().time())
        self._execute(actions, time.perf_counter())
        self._rearm()

    def _rearm(self) -> None:
        self._timer.arm(self.machine.next_deadline())

    def _execute(self, actions: list[RelayAction], arrived: float) -> None:
        overflowed: list[_Link] = []
        for action in actions:
            if isinstance(action, SendFrame):
                link = self._links.get(action.conn)
                if link is None or link.closing is not None:
                    continue
                size = len(action.text.encode())
                if link.queued_bytes + size > self.send_buffer:
                    self.refusals["slow-consumer"] += 1
                    self._close(link, CloseCode.TRY_AGAIN_LATER, "slow consumer", drop=True)
                    overflowed.append(link)
                    continue
                link.queued_bytes += size
                link.queue.put_nowait(action.text)
                self.latency.observe(time.perf_counter() - arrived)
            elif isinstance(action, CloseConnection):
                link = self._links.get(action.conn)
                if link is not None:
                    self._close(link, action.code, action.reason)
                elif action.conn == self._connecting:  # refused at once: before the accept
                    self._refused[action.conn] = (action.code, action.reason)
            elif isinstance(action, Log):
                logger.log(action.level, action.message, *action.args)
        # A slow consumer leaves after this batch, so the others see the batch's frames
        # before its user-left-room, in the order the machine decided.
        for link in overflowed:
            if link.known_to_machine:
                link.known_to_machine = False
                self._feed(Disconnected(conn=link.conn, clean=True))

    def _close(self, link: _Link, code: int, reason: str, *, drop: bool = False) -> None:
        """Queue the server's close behind the frames already queued (``drop``: instead of
        them: a slow consumer's queue is what it does not read)."""
        if link.closing is not None:
            return
        link.closing = (code, reason)
        self.closes[code] += 1
        if drop:
            while not link.queue.empty():
                link.queue.get_nowait()
            link.queued_bytes = 0
        link.queue.put_nowait((code, reason))

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self, code: int = CloseCode.SERVICE_RESTART, timeout: float = 5.0) -> None:
        """Close every connection with ``code`` (1012: a restart, clients resume) and wait
        up to ``timeout`` seconds for them to end."""
        for link in list(self._links.values()):
            self._close(link, code, "server restart")
        if self._links:
            self._gone.clear()
            try:
                await asyncio.wait_for(self._gone.wait(), timeout)
            except TimeoutError:
                logger.warning("%d connections still open at shutdown", len(self._links))
        self._timer.cancel()

    def health(self) -> dict[str, int | str]:
        """The ``/healthz`` body."""
        return {"connections": len(self._links), "rooms": self.machine.room_count}

    def refusal_counts(self) -> dict[str, int]:
        """Every refusal so far by reason, as ``serve`` counts them."""
        return count_refusals(self.machine, self.refusals)

    async def _http(self, scope: Scope, send: Send) -> None:
        path = _local_path(scope)
        status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        if scope.get("method") in ("GET", "HEAD"):
            if path == "/healthz":
                status, content_type = 200, "application/json"
                body = json.dumps(self.health()).encode()
            elif path == "/metrics":
                status, content_type = 200, CONTENT_TYPE_LATEST
                body = generate_latest(self.registry)
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if _local_path(scope) not in ("", "/"):
            await send({"type": "websocket.close", "code": 1008})  # HTTP 403
            return
        conn: ConnId = next(self._ids)
        client = scope.get("client")
        self._connecting = conn
        try:
            self._feed(Connected(conn=conn, address=str(client[0]) if client else None))
        finally:
            self._connecting = None
        refused = self._refused.pop(conn, None)
        if refused is not None:
            await send({"type": "websocket.close", "code": refused[0], "reason": refused[1]})
            self._feed(Disconnected(conn=conn, clean=True))
            return
        await send({"type": "websocket.accept"})
        link = _Link(conn, scope)
        self._links[conn] = link
        sender = asyncio.create_task(self._sender(link, send))
        client_code: int | None = None
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    if link.closing is not None or not link.known_to_machine:
                        continue
                    text = message.get("text")
                    data: str | bytes = text if text is not None else message.get("bytes") or b""
                    self._feed(FrameReceived(conn=conn, data=data, wall_time=time.time()), scope)
                elif kind == "websocket.disconnect":
                    client_code = message.get("code")
                    break
        finally:
            self._links.pop(conn, None)
            if link.known_to_machine:
                link.known_to_machine = False
                closing = link.closing
                clean = is_clean_close(
                    None if closing is not None else client_code,
                    by_server=closing is not None,
                    server_code=closing[0] if closing is not None else None,
                )
                self._feed(Disconnected(conn=conn, clean=clean))
            sender.cancel()
            if not self._links:
                self._gone.set()

    async def _sender(self, link: _Link, send: Send) -> None:
        """Drain ``link``'s queue into ``send``, in order, up to the server's close."""
        try:
            while True:
                item = await link.queue.get()
                if isinstance(item, tuple):
                    code, reason = item
                    await asyncio.wait_for(
                        send({"type": "websocket.close", "code": code, "reason": reason}),
                        CLOSE_TIMEOUT,
                    )
                    return
                link.queued_bytes -= len(item.encode())
                await send({"type": "websocket.send", "text": item})
        except Exception as exc:  # the client went away (each ASGI server says it its way)
            logger.debug("Connection %s: send failed: %r", link.conn, exc)


def _local_path(scope: Scope) -> str:
    """The request's path below the mount point (``root_path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def relay_app(
    *,
    limits: Limits | None = None,
    authorize: ScopeAuthorize | None = None,
    secret: bytes | None = None,
    machine: RelayMachine | None = None,
    send_buffer: int = DEFAULT_SEND_BUFFER,
) -> RelayApp:
    """An ASGI app running one relay (see the module): ``app.mount("/signal", relay_app())``.

    ``authorize(scope, join)`` is the application's own check of each join, with the
    connection's ASGI scope; ``secret`` also requires a JWT join token (both must allow).
    ``machine``: a machine of your own instead (its ``authorize`` decides then).
    ``send_buffer``: bytes queued for one client before it is closed (1013).
    """
    return RelayApp(
        limits=limits, authorize=authorize, secret=secret, machine=machine, send_buffer=send_buffer
    )


__all__ = ["RelayApp", "ScopeAuthorize", "relay_app"]
