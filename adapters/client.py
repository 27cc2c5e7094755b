"""The bundled asyncio client: a room of aiortc peers in one ``async with``.

::

    async with connect("ws://127.0.0.1:8765/", room_id="demo", user_id="alice") as client:
        await client.wait_all_connected(timeout=10)
        client.broadcast("hello")
        async for message in client.messages():
            print(message.from_user_id, message.text)

The :class:`~sansio_signal.client.ClientMachine` decides everything; this module feeds
it the WebSocket's frames, aiortc's results and the time (``loop.time()``), keeps the one
timer it asks for, and runs its actions. The WebSocket is reconnected with back-off
after a drop; the machine then joins its room again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Generic, Literal, TextIO, TypeVar

import attrs
from aiortc import RTCDataChannel, RTCPeerConnection
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from sansio_signal.actions import (
    ChatReceived,
    ClientAction,
    ConnectToServer,
    DisconnectFromServer,
    JoinRefused,
    Log,
    PeerConnected,
    PeerConnectionAction,
    PeerFailed,
    PeerJoined,
    PeerLeft,
    PeerRoute,
    RoomJoined,
    RoomLeft,
    SendToServer,
    ServerErrorReceived,
    ServerUnreachable,
)
from sansio_signal.client import ClientMachine, ReconnectPolicy
from sansio_signal.events import (
    ChatRequested,
    ClientEvent,
    CloseRequested,
    ConnectRequested,
    JoinRequested,
    RenegotiationRequested,
    ServerConnected,
    ServerConnectFailed,
    ServerDisconnected,
    ServerFrameReceived,
)
from sansio_signal.negotiation import NegotiationConfig
from sansio_signal.room import DEFAULT_MAX_MEMBERS
from sansio_signal.trace import WALL_TIME
from sansio_signal.wire import JSONValue, dumps

from .aiortc_peer import AiortcPeers, IceServer

logger = logging.getLogger("sansio_signal.client")

DEFAULT_URL = "ws://127.0.0.1:8765/"
"""Where :func:`connect` goes without a URL: ``sansio-signal serve``'s default address."""

FROM_RELAY: Final = "from-relay"
"""``Client(ice_servers=FROM_RELAY)``: use the ICE servers the relay hands out at its
``/config.json`` (``serve --ice-server``, and TURN credentials made fresh for each
request with ``serve --turn-url``), fetched again before each connection to the relay."""


@attrs.frozen
class Message:
    """A data-channel message from a peer."""

    from_user_id: str
    text: str


@attrs.frozen
class Chat:
    """A chat message relayed by the server."""

    from_user_id: str
    text: str
    ts: float


@attrs.frozen
class DataChannelOpened:
    """The data channel with ``peer_id`` is open: :meth:`Client.send` works now."""

    peer_id: str


ClientNotice = ClientAction | DataChannelOpened
"""What :meth:`Client.events` yields."""


@attrs.define
class PeerInfo:
    """What the client knows of one peer."""

    peer_id: str
    channel: RTCDataChannel | None = None
    connected_at: float | None = None
    """``loop.time()`` when the peer connection first reported ``connected``."""
    channel_at: float | None = None
    """``loop.time()`` when the data channel was first open."""
    frames_sent: int = 0
    """Signaling frames we sent to this peer."""
    route: PeerRoute | None = None
    """The candidate pair the connection travels on (``route.pair_type``: ``host``, ``srflx``
    or ``relay``), once it is connected."""


class ClientError(Exception):
    """Something the client could not do; ``code`` says what (a protocol error code for
    a refusal by the server)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JoinRefusedError(ClientError):
    """The server refused our join (``code``: ``user-id-taken``, ``room-full``,
    ``invalid-id``, ``unauthorized``; ``message`` says more, e.g. how long a held id
    stays held)."""


class ServerUnreachableError(ClientError, TimeoutError):
    """The first connection to the server failed (refused, no such host, an HTTP error
    such as 403, 404 or 429, a timeout); ``message`` says how. A ``TimeoutError`` too,
    for code written against earlier versions."""

    def __init__(self, message: str) -> None:
        super().__init__("unreachable", message)


QUEUE_BOUND = 1024
"""How many undelivered messages, chats or events a :class:`Client` keeps per stream;
past that the oldest is dropped and counted in :attr:`Client.dropped`."""

T = TypeVar("T")


class _Stream(Generic[T]):
    """A bounded queue the application reads with ``async for``: when full, the oldest
    item goes (counted); after :meth:`close` the iterator ends."""

    def __init__(self, name: str, dropped: dict[str, int]) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._name = name
        self._dropped = dropped

    def put(self, item: T) -> None:
        if len(self._items) >= QUEUE_BOUND:
            self._items.popleft()
            self._dropped[self._name] = self._dropped.get(self._name, 0) + 1
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> T:
        """The next item, or ``StopAsyncIteration`` once closed and empty."""
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __aiter__(self) -> _Stream[T]:
        return self

    async def __anext__(self) -> T:
        return await self.get()


class Client:
    """One member of a room, with an aiortc peer connection to every other member."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        room_id: str,
        user_id: str,
        ice_servers: Sequence[IceServer | str] | Literal["from-relay"] = (),
        config: NegotiationConfig | None = None,
        trace: TextIO | None = None,
        reconnect: bool = True,
        token: str | None = None,
        resume_window: float = 8.0,
        max_peers: int = DEFAULT_MAX_MEMBERS,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        """Extra HTTP headers of every WebSocket handshake: a session cookie, for a relay
        mounted in a web app whose own auth decides joins (:mod:`.asgi`)."""
        self.token = token
        self.room_id = room_id
        self.user_id = user_id
        self._from_relay = ice_servers == FROM_RELAY
        servers = (
            []
            if isinstance(ice_servers, str)
            else [s if isinstance(s, IceServer) else IceServer(urls=s) for s in ice_servers]
        )
        self._trace_file = trace
        self.peers: dict[str, PeerInfo] = {}
        """Every other member of the room, by user id."""
        self._rtc = AiortcPeers(
            ice_servers=servers, on_event=self._feed, on_channel=self._on_channel
        )
        self.machine = ClientMachine(
            user_id,
            capabilities=self._rtc.capabilities,
            jitter=random.random,
            config=config,
            trace=self._write_trace if trace is not None else None,
            resume_window=resume_window if reconnect else 0.0,
            reconnect=ReconnectPolicy() if reconnect else None,
            max_peers=max_peers,
        )
        self._ws: ClientConnection | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self.dropped: dict[str, int] = {}
        """Items dropped from full streams, by stream (``messages``, ``chats``,
        ``events``): a reader that falls :data:`QUEUE_BOUND` behind loses the oldest."""
        self._messages: _Stream[Message] = _Stream("messages", self.dropped)
        self._chats: _Stream[Chat] = _Stream("chats", self.dropped)
        self._events: _Stream[ClientNotice] = _Stream("events", self.dropped)
        self._changed = asyncio.Event()
        self._joined = asyncio.Event()
        self._error: ClientError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._hang_up: asyncio.Task[None] | None = None
        self.server_connected_at: float | None = None
        """``loop.time()`` when the WebSocket last opened (the join goes out then)."""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    def __await__(self) -> Generator[Any, None, Client]:
        """``client = await connect(...)``: started; call :meth:`close` when done."""
        return self.__aenter__().__await__()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self, timeout: float = 30.0) -> None:
        """Connect, join the room, and return once the server confirmed the join.

        Raises :class:`ServerUnreachableError` at once when the first connection fails
        (refused, an HTTP error; one that only timed out is tried again),
        :class:`JoinRefusedError` when the server refuses the join, ``TimeoutError`` when
        the server does not answer within ``timeout`` (30 s: a lossy link's TCP
        retransmissions need seconds); the client is closed then."""
        self._feed(JoinRequested(room_id=self.room_id, token=self.token))
        self._feed(ConnectRequested())
        try:
            await asyncio.wait_for(self._joined.wait(), timeout)
        except TimeoutError:
            await self.close()
            raise
        if self._error is not None:
            await self.close()
            raise self._error

    async def close(self) -> None:
        """Leave the room, close every peer connection and the WebSocket."""
        if self._closing:
            return
        self._closing = True
        self._feed(CloseRequested())  # leave-room if in a room, then DisconnectFromServer
        if self._hang_up is not None:
            await self._hang_up
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            await self._ws.close()
        if self._timer is not None:
            self._timer.cancel()
        await self._rtc.close()
        for stream in (self._messages, self._chats, self._events):
            stream.close()
        if self._trace_file is not None:
            self._trace_file.flush()

    # ------------------------------------------------------------------ the API

    @property
    def ice_servers(self) -> list[IceServer]:
        """The STUN/TURN servers new peer connections use (with ``FROM_RELAY``: the ones
        fetched from the relay before the latest connection to it)."""
        return list(self._rtc.ice_servers)

    def connected_peers(self) -> list[str]:
        """Peers whose data channel is open."""
        return sorted(
            p
            for p, info in self.peers.items()
            if info.channel is not None and info.channel.readyState == "open"
        )

    async def wait_connected(self, peer_id: str, timeout: float = 10.0) -> None:
        """Until the data channel with ``peer_id`` is open."""
        await asyncio.wait_for(self._wait_for(lambda: peer_id in self.connected_peers()), timeout)

    async def wait_all_connected(self, expected: int | None = None, timeout: float = 10.0) -> None:
        """Until every member (at least ``expected`` others, if given) has an open channel."""

        def done() -> bool:
            open_ = set(self.connected_peers())
            others = set(self.peers)
            return bool(others) and open_ >= others and (expected is None or len(open_) >= expected)

        await asyncio.wait_for(self._wait_for(done), timeout)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``condition()`` is true; it is checked after every change of state."""
        await asyncio.wait_for(self._wait_for(condition), timeout)

    def send(self, peer_id: str, text: str) -> None:
        """Send ``text`` to ``peer_id`` over the data channel."""
        info = self.peers.get(peer_id)
        if info is None or info.channel is None or info.channel.readyState != "open":
            raise ClientError("not-connected", f"no open data channel with {peer_id!r}")
        info.channel.send(text)

    def broadcast(self, text: str) -> list[str]:
        """Send ``text`` to every peer with an open channel; returns who got it."""
        targets = self.connected_peers()
        for peer_id in targets:
            self.send(peer_id, text)
        return targets

    def messages(self) -> AsyncIterator[Message]:
        """Data-channel messages from any peer, as they arrive; ends when the client
        closes (at most :data:`QUEUE_BOUND` wait unread: see :attr:`dropped`)."""
        return self._messages

    def events(self) -> AsyncIterator[ClientNotice]:
        """What the machine told the application (``RoomJoined``, ``PeerJoined``,
        ``PeerConnected``, ``PeerLeft``, ``PeerFailed``, ``ProtocolViolation``, ...) and
        :class:`DataChannelOpened`, in order; ends when the client closes."""
        return self._events

    def chats(self) -> AsyncIterator[Chat]:
        """The room's server-relayed chat; ends when the client closes."""
        return self._chats

    def chat(self, text: str) -> None:
        """Send ``text`` on the room's chat channel (relayed by the server)."""
        self._feed(ChatRequested(text=text))

    def renegotiate(self, peer_id: str) -> None:
        """After adding a track or channel to :meth:`peer_connection`, renegotiate."""
        self._feed(RenegotiationRequested(peer_id=peer_id))

    def peer_connection(self, peer_id: str) -> RTCPeerConnection | None:
        """The current RTCPeerConnection with ``peer_id`` (for adding media)."""
        handle = self._handle(peer_id)
        return None if handle is None else self._rtc.connection(handle)

    def _handle(self, peer_id: str) -> int | None:
        """The machine's current connection handle for ``peer_id``."""
        negotiation = self.machine.peers.get(peer_id)
        return None if negotiation is None else negotiation.pc

    # ------------------------------------------------------------------ the machine

    def _feed(self, event: ClientEvent) -> None:
        loop = asyncio.get_running_loop()
        actions = self.machine.handle(event, loop.time())
        self._execute(actions)
        self._rearm()

    def _on_timer(self) -> None:
        self._timer = None
        self._execute(self.machine.handle_timer(asyncio.get_running_loop().time()))
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.machine.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _execute(self, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, ConnectToServer):
                self._tasks.append(asyncio.get_running_loop().create_task(self._connection()))
            elif isinstance(action, DisconnectFromServer):
                self._hang_up = asyncio.get_running_loop().create_task(self._disconnect())
            elif isinstance(action, SendToServer):
                info = None if action.peer_id is None else self.peers.get(action.peer_id)
                if info is not None:
                    info.frames_sent += 1
                self._outbox.put_nowait(action.text)
            elif isinstance(action, PeerConnectionAction):
                self._rtc.execute(action)
            elif isinstance(action, Log):
                if logger.isEnabledFor(action.level):
                    logger.log(action.level, action.message, *action.args)
            else:
                self._notify(action)
        self._changed.set()

    def _notify(self, action: ClientAction) -> None:
        loop = asyncio.get_running_loop()
        self._events.put(action)
        if isinstance(action, RoomJoined):
            self._joined.set()
        elif isinstance(action, RoomLeft):
            self.peers.clear()
        elif isinstance(action, PeerJoined):
            self.peers[action.peer_id] = PeerInfo(peer_id=action.peer_id)
        elif isinstance(action, PeerConnected):
            if action.peer_id in self.peers:
                self.peers[action.peer_id].connected_at = loop.time()
        elif isinstance(action, PeerRoute):
            if action.peer_id in self.peers:
                self.peers[action.peer_id].route = action
        elif isinstance(action, PeerFailed):
            logger.warning("gave up on %s: %s", action.peer_id, action.reason)
        elif isinstance(action, PeerLeft):
            self.peers.pop(action.peer_id, None)
        elif isinstance(action, ChatReceived):
            self._chats.put(Chat(action.from_user_id, action.text, action.ts))
        elif isinstance(action, JoinRefused):
            self._error = JoinRefusedError(action.code, action.message)
            self._joined.set()  # start() raises it
        elif isinstance(action, ServerUnreachable):
            if self._error is None:  # start() raises it (the first one)
                self._error = ServerUnreachableError(action.reason)
                self._joined.set()
        elif isinstance(action, ServerErrorReceived):
            logger.warning("server error %s: %s", action.code, action.message)
        else:
            logger.info("%s", action)

    def _on_channel(self, peer_id: str, handle: int, channel: RTCDataChannel) -> None:
        info = self.peers.get(peer_id)
        if info is None or self._handle(peer_id) != handle:
            return  # a channel of a connection the machine has replaced since
        info.channel = channel
        if info.channel_at is None:
            info.channel_at = asyncio.get_running_loop().time()
        self._events.put(DataChannelOpened(peer_id))

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            self._messages.put(Message(peer_id, text))
            self._changed.set()

        self._changed.set()

    async def _wait_for(self, check: Callable[[], bool]) -> None:
        while not check():
            self._changed.clear()
            await self._changed.wait()

    async def _drain(self) -> None:
        await self._outbox.join()

    # ------------------------------------------------------------------ the WebSocket

    async def _connection(self) -> None:
        """One WebSocket, opened because the machine asked (``ConnectToServer``); when
        and how often to try again is the machine's call."""
        loop = asyncio.get_running_loop()
        if self._from_relay:
            try:
                self._rtc.ice_servers = await fetch_ice_servers(self.url, headers=self.headers)
            except OSError as exc:  # the connection below fails too, or works without
                logger.warning("no ICE servers from %s: %s", self.url, exc)
        try:
            # No permessage-deflate: signaling frames are small, and compressing them
            # costs both ends CPU for nothing on the latency path.
            ws = await ws_connect(
                self.url,
                open_timeout=10,
                compression=None,
                additional_headers=self.headers or None,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            # a timeout (no answer: a slow or lossy link) is worth another attempt
            self._feed(
                ServerConnectFailed(
                    reason=f"cannot connect to {self.url}: {exc}",
                    timed_out=isinstance(exc, TimeoutError),
                )
            )
            return
        self._ws = ws
        self.server_connected_at = loop.time()
        self._feed(ServerConnected())
        writer = loop.create_task(self._write(ws))
        try:
            async for data in ws:
                if isinstance(data, str):
                    self._feed(ServerFrameReceived(text=data))
        except ConnectionClosed as exc:
            logger.info("connection to %s lost: %r", self.url, exc)
        finally:
            writer.cancel()
        received = ws.protocol.close_rcvd
        # Frames not yet written belong to the lost connection: the new one starts with
        # its join (a resume sends what the machine held back after it).
        while not self._outbox.empty():
            self._outbox.get_nowait()
            self._outbox.task_done()
        self._ws = None
        self._feed(ServerDisconnected(close_code=None if received is None else received.code))

    async def _disconnect(self) -> None:
        """The machine is done with the server: send what is queued (the leave), close."""
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
            await asyncio.wait_for(self._drain(), 2.0)
        await ws.close()

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await ws.send(text)
            finally:
                self._outbox.task_done()

    def _write_trace(self, record: dict[str, JSONValue]) -> None:
        # Each record reaches the file as it is made (a killed process leaves its trace
        # up to the kill), with the wall time that lines it up with other machines'
        # traces (benchmarks/README.md: the flush costs a few µs per record).
        assert self._trace_file is not None
        record[WALL_TIME] = time.time()
        self._trace_file.write(dumps(record) + "\n")
        self._trace_file.flush()


def config_url(url: str) -> str:
    """The relay's ``/config.json`` for the WebSocket URL ``url`` (beside it: ``ws://h/``
    → ``http://h/config.json``)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    http_url = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))
    return urllib.parse.urljoin(http_url, "config.json")


async def fetch_ice_servers(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> list[IceServer]:
    """The ICE servers the relay at ``url`` (its WebSocket URL) hands out at
    ``/config.json``: none when it has no such page (a relay mounted in an app). Raises
    ``OSError`` when the relay cannot be asked, or answers something else. A plain
    asyncio request: cancelling it (Ctrl-C while connecting) stops it at once."""
    target = config_url(url)
    try:
        status, body = await asyncio.wait_for(_get(target, headers or {}), timeout)
    except TimeoutError as exc:
        raise OSError(f"{target}: no answer within {timeout:g} s") from exc
    if status == 404:
        return []
    if status != 200:
        raise OSError(f"{target}: HTTP {status}")
    try:
        return [s for entry in json.loads(body)["iceServers"] for s in IceServer.from_json(entry)]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OSError(f"{target}: not an ICE server list ({exc!r})") from exc


async def _get(target: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """``GET target`` over HTTP/1.1 (``Connection: close``): its status and body."""
    parts = urllib.parse.urlsplit(target)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl.create_default_context() if secure else None
    )
    try:
        lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["Accept: application/json", "Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1"))
        response = await reader.read(1 << 20)
        while chunk := await reader.read(1 << 16):
            response += chunk
            if len(response) > 1 << 20:
                raise OSError(f"{target}: answer larger than 1 MiB")
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError) as exc:
        raise OSError(f"{target}: not an HTTP answer ({status_line[:80]!r})") from exc
    if any(h.lower().replace(" ", "") == "transfer-encoding:chunked" for h in header_lines):
        try:
            body = _unchunked(body)
        except ValueError as exc:
            raise OSError(f"{target}: a broken chunked body ({exc})") from exc
    return status, body


def _unchunked(body: bytes) -> bytes:
    """The body of a chunked answer; ``ValueError`` when a chunk size is not hex."""
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2 :]
    return out


connect = Client
"""``async with connect(url, room_id=..., user_id=...) as client:`` — the :class:`Client`
itself (an async context manager), under the name the examples use; it takes every
argument the class does."""
