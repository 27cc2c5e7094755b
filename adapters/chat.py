"""``sansio-signal chat``: an interactive peer on the terminal (or a pipe).

Every line read from stdin goes to every connected peer over its data channel; every
message received is printed to stdout as ``FROM: TEXT`` (a peer's control characters
escaped, so its text can neither forge another line nor drive the terminal);
membership and connection events go to stderr. Stdin may be a terminal, a pipe or a
file: at its end, what was read is delivered to the members once their channels are
open (waiting at most ``DELIVERY_WAIT`` seconds), then the peer leaves and exits 0.
Ctrl-C leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TextIO

from sansio_signal.actions import (
    PeerConnected,
    PeerFailed,
    PeerJoined,
    PeerLeft,
    PeerRoute,
    RoomJoined,
    RoomResumed,
    ServerErrorReceived,
)

from .aiortc_peer import IceServer, loopback_only
from .client import FROM_RELAY, Client, ClientError, ClientNotice, DataChannelOpened

START_TIMEOUT = 30.0
"""How long to wait for the first join to be answered (connection attempts included)."""

DELIVERY_WAIT = 10.0
"""At the end of input, how long to wait for the members' data channels to open."""

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_CONTROL.update({0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: str) -> str:
    """``text`` with every control character (newlines, escape sequences, ...) written as
    an escape, so that a peer's message is one line of plain text on the terminal."""
    return text.translate(_CONTROL)


def describe(action: ClientNotice) -> str | None:
    """The stderr line for an event, or ``None`` for events not worth a line."""
    if isinstance(action, RoomJoined):
        return f"joined room {action.room_id} with {list(action.participants) or 'nobody'}"
    if isinstance(action, RoomResumed):
        return f"back in room {action.room_id} (peer connections kept)"
    if isinstance(action, PeerJoined):
        return f"{action.peer_id} is here"
    if isinstance(action, PeerConnected):
        return f"ICE connected with {action.peer_id}"
    if isinstance(action, PeerRoute):
        return (
            f"connection with {action.peer_id} uses a {action.pair_type} pair (local "
            f"{action.local_type} {action.local_address}, remote {action.remote_type} "
            f"{action.remote_address})"
        )
    if isinstance(action, DataChannelOpened):
        return f"connected to {action.peer_id}"
    if isinstance(action, PeerLeft):
        return f"{action.peer_id} left"
    if isinstance(action, PeerFailed):
        return f"gave up on {action.peer_id}: {action.reason}"
    if isinstance(action, ServerErrorReceived):
        return f"server error {action.code}: {action.message}"
    return None


async def run_chat(
    url: str,
    room: str,
    user: str,
    ice_servers: Sequence[IceServer] | None,
    trace: TextIO | None,
    token: str | None = None,
) -> int:
    """Run one chat peer until end of input or a signal. ``ice_servers``: ``None`` for
    the relay's (its ``/config.json``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    client = Client(
        url,
        room_id=room,
        user_id=user,
        ice_servers=FROM_RELAY if ice_servers is None else ice_servers,
        trace=trace,
        token=token,
    )
    starting = loop.create_task(client.start(START_TIMEOUT))
    interrupted = loop.create_task(stop.wait())
    await asyncio.wait({starting, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # Ctrl-C while connecting or joining
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await client.close()
        return 130
    interrupted.cancel()
    try:
        starting.result()
    except (ClientError, TimeoutError) as exc:
        said = str(exc) or f"no answer from the server within {START_TIMEOUT:g} s"
        print(f"sansio-signal chat: {said}", file=sys.stderr)
        return 1

    async def show_events() -> None:
        async for action in client.events():
            line = describe(action)
            if line is not None:
                print(line, file=sys.stderr, flush=True)

    async def show_messages() -> None:
        async for message in client.messages():
            print(f"{message.from_user_id}: {printable(message.text)}", flush=True)

    unsent: list[str] = []

    async def read_input() -> None:
        async for line in _lines(loop):
            text = line.rstrip("\r\n")
            if not text:
                continue
            if client.connected_peers():
                client.broadcast(text)
            else:
                unsent.append(text)
                print("(nobody connected yet; sent once someone is)", file=sys.stderr, flush=True)
        # End of input: deliver what was read before leaving.
        if unsent:
            with contextlib.suppress(TimeoutError):
                await client.wait_all_connected(timeout=DELIVERY_WAIT)
        for text in unsent:
            client.broadcast(text)

    tasks = [loop.create_task(t) for t in (show_events(), show_messages())]
    reading = loop.create_task(read_input())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (*tasks, reading, stopping):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await client.close()
    return 0


async def _lines(loop: asyncio.AbstractEventLoop) -> AsyncIterator[str]:
    """Stdin's lines: from a terminal or a pipe as they come, from a file at once."""
    if not _is_pipe_like():
        for line in sys.stdin:
            yield line
        return
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode("utf-8", "replace")


def _is_pipe_like() -> bool:
    """A terminal, pipe or socket (what the event loop can watch); a file or a device
    such as /dev/null is read as it is."""
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def ice_servers_of(value: str | Mapping[str, str]) -> list[IceServer]:
    """A ``--ice-server`` value (a URL, or the dictionary ``parse_ice_server`` makes of
    ``URL,username=...,credential=...``) as :class:`IceServer`\\ s."""
    return IceServer.from_json({"urls": value} if isinstance(value, str) else value)


def main_chat(
    url: str,
    room: str,
    user: str,
    ice_servers: Sequence[str | Mapping[str, str]],
    trace: str | None,
    on_loopback: bool,
    *,
    token: str | None = None,
) -> int:
    """Entry point of ``sansio-signal chat``. ``ice_servers``: URLs, or RTCIceServer
    dictionaries (``urls`` and, for TURN, ``username`` and ``credential``); none: the
    relay's own, from its ``/config.json``."""
    for stream in (sys.stdout, sys.stderr):  # messages are UTF-8, whatever the locale
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")
    servers = [server for s in ice_servers for server in ice_servers_of(s)] or None
    with contextlib.ExitStack() as stack:
        if on_loopback:
            stack.enter_context(loopback_only())
        trace_file = stack.enter_context(open(trace, "w", encoding="utf-8")) if trace else None
        return asyncio.run(run_chat(url, room, user, servers, trace_file, token))
