"""The relay machine on trio + wsproto: sans-I/O all the way down.

:class:`sansio_signal.RelayMachine` makes every decision of the relay (rooms, routing,
limits) but never touches a socket or a clock. The bundled adapter runs it on
``websockets``; this file runs the very same machine on a second, unrelated stack to
show that an adapter is only glue. Here even the WebSocket protocol is sans-I/O:
wsproto turns bytes into WebSocket events and back, so this file is the only place that
reads a socket, writes a socket or looks at the time.

What it shows, in order of appearance:

- the machine boundary (:meth:`TrioRelay.feed`): events in with
  ``now=trio.current_time()`` (monotonic, as every machine's ``now``; each frame also
  carries ``wall_time=time.time()``, the calendar time its chat ``ts`` is stamped with),
  actions out, executed at once and in order; ``SendFrame`` lands in the target's
  bounded outbox (a trio memory channel drained by that connection's writer task), so
  one slow client fills only its own outbox and is then dropped (never blocks others);
- one timer per machine (:meth:`TrioRelay.run_timer`), re-armed after every call from
  :meth:`RelayMachine.next_deadline`;
- per connection: the wsproto handshake (WebSocket on ``/`` only, 404 elsewhere), a
  reader that reassembles fragmented messages and feeds text as ``str`` and binary as
  ``bytes``, and exactly one ``Disconnected(clean=...)`` when the connection ends.

Run it with ``python docs/examples/trio_wsproto_relay.py --port 0``; it prints one line,
``listening on ws://127.0.0.1:PORT/``, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import secrets
import signal
import time

import trio
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws
from wsproto.connection import ConnectionState
from wsproto.utilities import RemoteProtocolError

from sansio_signal import (
    CloseConnection,
    Connected,
    ConnId,
    Disconnected,
    FrameReceived,
    Log,
    RelayAction,
    RelayEvent,
    RelayMachine,
    SendFrame,
    is_clean_close,
)

log = logging.getLogger("trio_wsproto_relay")

OUTBOX_SIZE = 256  # frames queued for one client before it counts as a slow consumer
CLOSE_TIMEOUT = 5.0  # seconds to flush and finish a closing handshake
HANDSHAKE_TIMEOUT = 10.0
READ_SIZE = 65_536
NOT_FOUND = ws.RejectConnection(
    status_code=404,
    headers=[(b"content-type", b"text/plain"), (b"content-length", b"10")],
    has_body=True,
)
NOT_FOUND_BODY = ws.RejectData(data=b"not found\n", body_finished=True)


class _Client:
    """One accepted WebSocket: its wsproto state, its outbox and how it ended."""

    def __init__(self, conn: ConnId, stream: trio.SocketStream, wsconn: WSConnection) -> None:
        self.conn, self.stream, self.ws = conn, stream, wsconn
        self.outbox, self.outbox_reader = trio.open_memory_channel[ws.Event](OUTBOX_SIZE)
        self.scope = trio.CancelScope()  # cancelling it aborts this connection
        self.closing = False  # a close frame is queued (or the socket is dropped)
        self.server_closed = False  # we initiated the close
        self.remote_code: int | None = None  # the code of the client's own close frame
        self.text: list[str] = []  # fragments of the message being received
        self.binary: list[bytes] = []
        self.size = 0

    @property
    def clean(self) -> bool:
        """The core's rule: a 1000/1001 close or any close we initiated."""
        return is_clean_close(self.remote_code, by_server=self.server_closed)


class TrioRelay:
    """Glue between a :class:`RelayMachine` and trio streams speaking wsproto."""

    def __init__(self, machine: RelayMachine) -> None:
        self.machine = machine
        self.clients: dict[ConnId, _Client] = {}
        self._ids = itertools.count(1)
        self._timer_moved = trio.Event()
        self._armed_for: float | None = None

    # ------------------------------------------------------------- the machine boundary

    def feed(self, event: RelayEvent) -> None:
        """Hand one event to the machine and run what it decides (never blocks)."""
        self._execute(self.machine.handle(event, trio.current_time()))

    def _execute(self, actions: list[RelayAction]) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                client = self.clients.get(action.conn)
                if client is not None:
                    self._enqueue(client, ws.TextMessage(data=action.text))
            elif isinstance(action, CloseConnection):
                client = self.clients.get(action.conn)
                if client is not None:
                    close = ws.CloseConnection(code=action.code, reason=action.reason)
                    self._close_by_server(client, close)
            elif isinstance(action, Log):
                log.log(action.level, action.message, *action.args)
        # Re-arm the one timer: wake the timer task if the next deadline moved.
        if self.machine.next_deadline() != self._armed_for:
            self._timer_moved.set()

    async def run_timer(self) -> None:
        """The machine's one timer: sleep until its deadline, or until it moves."""
        while True:
            self._timer_moved = trio.Event()
            self._armed_for = deadline = self.machine.next_deadline()
            now = trio.current_time()
            if deadline is not None and deadline <= now:
                self._execute(self.machine.handle_timer(now))
                await trio.lowlevel.checkpoint()
                continue
            # The machine runs on trio's clock: its deadline is a trio deadline.
            with trio.move_on_at(float("inf") if deadline is None else deadline):
                await self._timer_moved.wait()

    def _enqueue(self, client: _Client, event: ws.Event) -> None:
        """Queue a wsproto event for the client's writer; a full outbox drops it."""
        if client.closing:
            return  # nothing may follow a close frame
        client.closing = isinstance(event, ws.CloseConnection)
        try:
            client.outbox.send_nowait(event)
        except trio.WouldBlock:
            log.warning("Dropping connection %s: slow consumer", client.conn)
            client.closing = client.server_closed = True
            client.scope.cancel()  # not even a close frame fits: drop the TCP connection

    def _close_by_server(self, client: _Client, close: ws.CloseConnection) -> None:
        if not client.closing:
            client.server_closed = True  # the client leaves at once, like a clean close
            self._enqueue(client, close)

    # ------------------------------------------------------------- one connection

    async def handle_stream(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection from handshake to ``Disconnected``."""
        try:
            wsconn = WSConnection(ConnectionType.SERVER)
            if not await self._handshake(stream, wsconn):
                return
            client = _Client(next(self._ids), stream, wsconn)
            self.clients[client.conn] = client
            self.feed(Connected(conn=client.conn))
            try:
                with client.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer, client)
                        await self._reader(client)
                        # Let the writer flush what is queued (a close reply, say), briefly.
                        client.closing = True
                        client.outbox.close()
                        deadline = trio.current_time() + CLOSE_TIMEOUT
                        client.scope.deadline = min(client.scope.deadline, deadline)
            finally:  # the one place that ends a connection: Disconnected exactly once
                del self.clients[client.conn]
                self.feed(Disconnected(conn=client.conn, clean=client.clean))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away during the handshake
        except Exception:  # a bug here must cost one connection, not the server
            log.exception("Connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _handshake(self, stream: trio.SocketStream, wsconn: WSConnection) -> bool:
        """Run the HTTP upgrade; ``True`` once a WebSocket on ``/`` is accepted."""
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            while data := await stream.receive_some(READ_SIZE):
                try:
                    wsconn.receive_data(data)
                    requests = [e for e in wsconn.events() if isinstance(e, ws.Request)]
                except RemoteProtocolError as exc:  # plain HTTP, bad headers: 400 as advised
                    if isinstance(exc.event_hint, ws.RejectConnection):
                        await stream.send_all(wsconn.send(exc.event_hint))
                    return False
                if not requests:
                    continue  # the request is not complete yet
                if requests[0].target.partition("?")[0] != "/":  # WebSocket on / only
                    await stream.send_all(wsconn.send(NOT_FOUND) + wsconn.send(NOT_FOUND_BODY))
                    return False
                await stream.send_all(wsconn.send(ws.AcceptConnection()))
                return True
        return False

    async def _reader(self, client: _Client) -> None:
        """Feed the client's messages to the machine until its close frame or EOF."""
        limit = self.machine.limits.max_frame_bytes
        while True:
            try:
                data = await client.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # a reset is a dropped socket, like EOF
            client.ws.receive_data(data or None)  # None: EOF, wsproto reports close 1006
            for event in client.ws.events():
                if isinstance(event, ws.TextMessage | ws.BytesMessage):
                    self._on_fragment(client, event, limit)
                    await trio.lowlevel.checkpoint()  # let writers drain between messages
                elif isinstance(event, ws.Ping):
                    self._enqueue(client, event.response())
                elif isinstance(event, ws.CloseConnection):
                    if client.ws.state is ConnectionState.REMOTE_CLOSING:
                        client.remote_code = event.code  # the client closes: echo it
                        self._enqueue(client, event.response())
                    elif client.ws.state is ConnectionState.OPEN:
                        # No close frame arrived: wsproto found the input broken (1007 for
                        # invalid UTF-8, 1002 ...) and hands us the close to send.
                        self._close_by_server(client, event)
                    return  # CLOSED: our close was answered, or the socket dropped

    def _on_fragment(
        self, client: _Client, event: ws.TextMessage | ws.BytesMessage, limit: int
    ) -> None:
        """Reassemble one message; binary stays ``bytes`` (the machine says bad-frame)."""
        if isinstance(event, ws.TextMessage):
            client.text.append(event.data)
        else:
            client.binary.append(bytes(event.data))
        client.size += len(event.data)
        # Past the limit the machine answers frame-too-large and closes 1009 whatever the
        # rest holds, so hand it over now instead of buffering an unbounded message.
        if not (event.message_finished or client.size > limit):
            return
        data: str | bytes = "".join(client.text) if client.text else b"".join(client.binary)
        client.text, client.binary, client.size = [], [], 0
        if not client.closing:
            self.feed(FrameReceived(conn=client.conn, data=data, wall_time=time.time()))

    async def _writer(self, client: _Client) -> None:
        """Drain the outbox onto the socket, in order; the only task that writes it."""
        try:
            async for event in client.outbox_reader:
                out = bytearray()
                while True:  # take all that is queued: one write however many frames
                    closing = isinstance(event, ws.CloseConnection)
                    if closing or client.ws.state is ConnectionState.OPEN:
                        out += client.ws.send(event)  # (no data after the client's close)
                    if closing:
                        break
                    try:
                        event = client.outbox_reader.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await client.stream.send_all(out)
                if closing:  # our close is out: the client has CLOSE_TIMEOUT to answer it
                    deadline = trio.current_time() + CLOSE_TIMEOUT
                    client.scope.deadline = min(client.scope.deadline, deadline)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            client.scope.cancel()  # the socket is gone; the reader would wait forever


async def serve(host: str, port: int) -> None:
    """Listen, print the URL, and serve until SIGINT or SIGTERM."""
    relay = TrioRelay(RelayMachine(new_token=lambda: secrets.token_urlsafe(16)))
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    print(f"listening on ws://{host}:{bound_port}/", flush=True)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run_timer)
            nursery.start_soon(trio.serve_listeners, relay.handle_stream, listeners)
            async for signum in signals:
                log.info("Got %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    trio.run(serve, args.host, args.port)


if __name__ == "__main__":
    main()
