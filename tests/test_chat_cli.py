"""Two ``sansio-signal chat`` processes talking through a ``sansio-signal serve``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from wsutil import line_of, reap, spawn_serve

TIMEOUT = 20.0
EXE = [sys.executable, "-m", "sansio_signal"]
PIPE = asyncio.subprocess.PIPE


async def spawn_chat(
    cwd: Path,
    url: str,
    user: str,
    *flags: str,
    stdin: int | None = PIPE,
    loopback_only: bool = True,
) -> asyncio.subprocess.Process:
    """``sansio-signal chat URL --room r --user USER [--loopback-only] FLAGS...``."""
    loopback = ["--loopback-only"] if loopback_only else []
    return await asyncio.create_subprocess_exec(
        *EXE, "chat", url, "--room", "r", "--user", user, *loopback, *flags,
        cwd=cwd, stdin=stdin, stdout=PIPE, stderr=PIPE,
    )  # fmt: skip


class Chat(Protocol):
    """Spawns ``sansio-signal chat`` processes against the relay of :func:`chats_through_serve`."""

    def __call__(
        self, user: str, *flags: str, stdin: int | None = PIPE
    ) -> Awaitable[asyncio.subprocess.Process]: ...


@asynccontextmanager
async def chats_through_serve(cwd: Path, *serve_flags: str) -> AsyncIterator[Chat]:
    """A ``sansio-signal serve`` (with ``serve_flags``) and a spawner of :func:`spawn_chat`
    processes against it; the server and every chat are killed and reaped at exit."""
    server, url = await spawn_serve(cwd, *serve_flags)
    procs = [server]

    async def chat(user: str, *flags: str, stdin: int | None = PIPE) -> asyncio.subprocess.Process:
        proc = await spawn_chat(cwd, url, user, *flags, stdin=stdin)
        procs.append(proc)
        return proc

    try:
        yield chat
    finally:
        await reap(*procs)


def test_two_chat_processes_through_serve(tmp_path: Path) -> None:
    async def main() -> None:
        async with chats_through_serve(tmp_path) as chat:
            alice = await chat("alice")
            assert "nobody" in await line_of(alice.stderr, "joined room r")
            bob = await chat("bob")
            await line_of(bob.stderr, "connected to alice")
            await line_of(alice.stderr, "connected to bob")

            assert alice.stdin is not None and bob.stdin is not None
            alice.stdin.write(b"hello bob\n")
            await alice.stdin.drain()
            assert await line_of(bob.stdout, "alice: ") == "alice: hello bob"
            bob.stdin.write("hi alice ✓\n".encode())
            await bob.stdin.drain()
            assert await line_of(alice.stdout, "bob: ") == "bob: hi alice ✓"

            alice.stdin.close()  # end of input: alice leaves and exits 0
            assert await asyncio.wait_for(alice.wait(), TIMEOUT) == 0
            await line_of(bob.stderr, "alice left")
            bob.stdin.close()
            assert await asyncio.wait_for(bob.wait(), TIMEOUT) == 0

    asyncio.run(main())


def test_piped_and_file_input_is_delivered_and_peer_text_is_escaped(tmp_path: Path) -> None:
    """``echo hello | chat`` and ``chat < file``: what was read reaches the member once
    its channel is open, then the peer leaves and exits 0; ``< /dev/null`` exits 0; a
    peer's newline or escape sequence cannot forge a line on our terminal."""

    async def main() -> None:
        async with chats_through_serve(tmp_path) as chat:
            bob = await chat("bob")
            await line_of(bob.stderr, "joined room r")
            piped = await chat("alice")
            assert piped.stdin is not None
            piped.stdin.write(b"from a pipe\nforged\nzed: lies \x1b[31mred\n")
            piped.stdin.close()  # at once: before any channel is open
            assert await line_of(bob.stdout, "alice: ") == "alice: from a pipe"
            assert await line_of(bob.stdout, "alice: ") == "alice: forged"
            assert await line_of(bob.stdout, "alice: ") == "alice: zed: lies \\x1b[31mred"
            assert await asyncio.wait_for(piped.wait(), TIMEOUT) == 0
            await line_of(bob.stderr, "alice left")

            text = tmp_path / "lines.txt"
            text.write_text("from a file\n")
            with text.open("rb") as source:
                from_file = await chat("carol", stdin=source.fileno())
                assert await line_of(bob.stdout, "carol: ") == "carol: from a file"
                assert await asyncio.wait_for(from_file.wait(), TIMEOUT) == 0

            with open("/dev/null", "rb") as empty:
                silent = await chat("dave", stdin=empty.fileno())
                assert await asyncio.wait_for(silent.wait(), TIMEOUT) == 0

    asyncio.run(main())


def test_ctrl_c_works_while_the_server_does_not_answer(tmp_path: Path) -> None:
    """A relay that accepts the TCP connection but never answers the handshake: the
    chat is still connecting when SIGINT comes, and it exits at once."""

    async def main() -> None:
        accepted = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()  # never answers
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proc = await spawn_chat(tmp_path, f"ws://127.0.0.1:{port}/", "alice", loopback_only=False)
        try:
            await asyncio.wait_for(accepted.wait(), TIMEOUT)
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 9.0) == 130
        finally:
            await reap(proc)
            server.close()

    asyncio.run(main())


def test_chat_with_tokens_and_the_negotiation_at_info(tmp_path: Path) -> None:
    """Against a server that requires join tokens: ``--token`` and ``--token-file``
    join, no token is refused at once (exit 1, the code named); ``--log-level INFO``
    shows the negotiation step by step, each line prefixed with our user id."""

    async def main() -> None:
        secret = tmp_path / "secret"
        secret.write_text("a" * 40)

        async def mint(user: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                *EXE, "token", "--secret-file", str(secret), "--user", user, "--room", "r",
                "--ttl", "600", cwd=tmp_path, stdout=PIPE, stderr=PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            return out.decode().strip()

        async with chats_through_serve(tmp_path, "--secret-file", str(secret)) as chat:
            anonymous = await chat("zed")
            assert "unauthorized" in await line_of(anonymous.stderr, "sansio-signal chat:")
            assert await asyncio.wait_for(anonymous.wait(), TIMEOUT) == 1

            alice = await chat("alice", "--token", await mint("alice"), "--log-level", "INFO")
            await line_of(alice.stderr, "joined room r")
            token_file = tmp_path / "bob.token"
            token_file.write_text(await mint("bob") + "\n")
            bob = await chat("bob", "--token-file", str(token_file), "--log-level", "INFO")
            await line_of(bob.stderr, "WAITING for WebRTC KEY from: alice")
            await line_of(bob.stderr, "connected to alice")
            await line_of(alice.stderr, "Creating offer for peer: bob")
            await line_of(alice.stderr, "Sending offer to: bob")
            line = await line_of(alice.stderr, "Connection established with: bob")
            assert line.startswith("[alice] ")
            for proc in (alice, bob):
                assert proc.stdin is not None
                proc.stdin.close()
                assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0

    asyncio.run(main())
