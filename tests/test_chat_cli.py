"""Two ``sansio-signal chat`` processes talking through a ``sansio-signal serve``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from wsutil import spawn_serve

TIMEOUT = 20.0
EXE = [sys.executable, "-m", "sansio_signal"]
PIPE = asyncio.subprocess.PIPE


async def line_of(stream: asyncio.StreamReader | None, wanted: str) -> str:
    """Read lines until one contains ``wanted``."""
    assert stream is not None
    while True:
        line = (await asyncio.wait_for(stream.readline(), TIMEOUT)).decode()
        assert line, f"stream ended before {wanted!r}"
        if wanted in line:
            return line.rstrip("\n")


def test_two_chat_processes_through_serve(tmp_path: Path) -> None:
    async def main() -> None:
        server, url = await spawn_serve(tmp_path)
        procs = [server]
        try:

            async def chat(user: str) -> asyncio.subprocess.Process:
                proc = await asyncio.create_subprocess_exec(
                    *EXE,
                    "chat",
                    url,
                    "--room",
                    "r",
                    "--user",
                    user,
                    "--loopback-only",
                    cwd=tmp_path,
                    stdin=PIPE,
                    stdout=PIPE,
                    stderr=PIPE,
                )
                procs.append(proc)
                return proc

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
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    asyncio.run(main())
