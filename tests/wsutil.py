"""Helpers shared by the tests that talk to real servers and clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection

from sansio_signal.adapters.server import RelayServer

if TYPE_CHECKING:
    from sansio_signal.adapters.client import Client

RECV_TIMEOUT = 5.0
Frame = dict[str, Any]


def run(scenario: Callable[[RelayServer], Awaitable[None]], **server_args: Any) -> None:
    """Start a server on a free loopback port, run ``scenario`` against it, stop it."""

    async def main() -> None:
        async with RelayServer(port=0, **server_args) as server:
            await asyncio.wait_for(scenario(server), 60)

    asyncio.run(main())


async def recv(ws: ClientConnection) -> Frame:
    """The next frame on ``ws``, decoded (fails after ``RECV_TIMEOUT``)."""
    frame: Frame = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
    return frame


async def send(ws: ClientConnection, frame: Frame) -> None:
    await ws.send(json.dumps(frame))


async def message_from(client: Client, sender: str, text: str, timeout: float) -> None:
    """Until ``client`` receives ``text`` from ``sender`` on a data channel."""

    async def first() -> None:
        async for message in client.messages():
            if (message.from_user_id, message.text) == (sender, text):
                return

    await asyncio.wait_for(first(), timeout)


def free_port() -> int:
    """A loopback port nobody listens on now (for a server restarted on the same port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_listening(
    argv: Sequence[str], cwd: Path, scheme: str = "ws"
) -> tuple[subprocess.Popen[str], str]:
    """``argv`` started in ``cwd``, and the URL it prints first (``listening on
    SCHEME://...``), once it prints it."""
    proc = subprocess.Popen(
        list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(f"listening on {scheme}://"), line
    return proc, line.removeprefix("listening on ").strip()


def start_serve(cwd: Path, *flags: str, port: int = 0) -> tuple[subprocess.Popen[str], str]:
    """A real ``sansio-signal serve`` process and its ws:// URL, once it listens.

    ``cwd`` must not be the checkout: there ``sansio_signal/`` would shadow the installed
    package (whose ``adapters`` live elsewhere)."""
    return start_listening(
        [sys.executable, "-m", "sansio_signal", "serve", "--port", str(port), *flags], cwd
    )


async def spawn_serve(cwd: Path, *flags: str) -> tuple[asyncio.subprocess.Process, str]:
    """:func:`start_serve` for async tests: the process (stdout and stderr piped) and its
    ws:// URL, once it listens on a free port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sansio_signal",
        "serve",
        "--port",
        "0",
        *flags,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    assert line.startswith("listening on ws://127.0.0.1:") and line.endswith("/\n"), line
    return proc, line.removeprefix("listening on ").strip()


async def line_of(stream: asyncio.StreamReader | None, wanted: str, timeout: float = 20.0) -> str:
    """Read lines of a process's output until one contains ``wanted`` (waiting at most
    ``timeout`` for each line); that line, without its newline."""
    assert stream is not None
    while True:
        line = (await asyncio.wait_for(stream.readline(), timeout)).decode()
        assert line, f"stream ended before {wanted!r}"
        if wanted in line:
            return line.rstrip("\n")


async def reap(*procs: asyncio.subprocess.Process) -> None:
    """Kill each of ``procs`` that is still running and wait for every one (a test's
    cleanup, whatever state the test left them in)."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def terminate(
    proc: subprocess.Popen[Any], timeout: float = 5.0, first: int = signal.SIGTERM
) -> None:
    """``first`` (SIGTERM) to ``proc`` if it still runs, up to ``timeout`` to exit, then
    SIGKILL; reaped either way."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(first)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)


def reap_blocking(*procs: subprocess.Popen[Any]) -> None:
    """:func:`reap` for processes started with :class:`subprocess.Popen`."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@asynccontextmanager
async def connected_pair(
    url: str, room_id: str = "demo", timeout: float = 20.0
) -> AsyncIterator[tuple[Client, Client]]:
    """alice and bob, aiortc clients joined to ``room_id`` through the relay at ``url``,
    once each sees the peer connection to the other up; both closed at exit."""
    from sansio_signal.adapters.client import connect  # aiortc only for the tests using it

    async with (
        connect(url, room_id=room_id, user_id="alice") as alice,
        connect(url, room_id=room_id, user_id="bob") as bob,
    ):
        await alice.wait_connected("bob", timeout=timeout)
        await bob.wait_connected("alice", timeout=timeout)
        yield alice, bob
