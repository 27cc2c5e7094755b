"""``sansio-signal serve`` as a user runs it: a real process, real signals, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10.0
EXE = [sys.executable, "-m", "sansio_signal"]


async def start_serve(*args: str, cwd: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *EXE,
        "serve",
        "--port",
        "0",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
    assert line.startswith("listening on ws://127.0.0.1:") and line.endswith("/\n"), line
    return proc, line.removeprefix("listening on ").strip()


async def join(url: str, user: str) -> object:
    ws = await connect(url)
    await ws.send(
        json.dumps(
            {
                "channel": "webrtc-dashboard-rooms",
                "type": "join-room",
                "roomId": "demo",
                "userId": user,
            }
        )
    )
    return ws


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_relays_traces_and_shuts_down_gracefully(
    tmp_path: Path, signum: signal.Signals
) -> None:
    trace = tmp_path / "relay.jsonl"

    async def main() -> None:
        proc, url = await start_serve("--trace", str(trace), cwd=tmp_path)
        try:
            a = await connect(url)
            b = await connect(url)
            for ws, user in ((a, "a"), (b, "b")):
                await ws.send(
                    json.dumps(
                        {
                            "channel": "webrtc-dashboard-rooms",
                            "type": "join-room",
                            "roomId": "demo",
                            "userId": user,
                        }
                    )
                )
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            await asyncio.wait_for(a.recv(), TIMEOUT)  # b joined
            await a.send(
                json.dumps(
                    {
                        "channel": "webrtc-signaling",
                        "type": "webrtc-offer",
                        "toUserId": "b",
                        "offer": {"type": "offer", "sdp": "v=0"},
                    }
                )
            )
            relayed = json.loads(await asyncio.wait_for(b.recv(), TIMEOUT))
            assert (relayed["fromUserId"], relayed["roomId"]) == ("a", "demo")

            proc.send_signal(signum)
            for ws in (a, b):
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert ws.protocol.close_rcvd is not None
                assert ws.protocol.close_rcvd.code == 1001
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert 'Relaying message type "webrtc-offer" on channel "webrtc-signaling"' in log
        assert "Message relayed to 1 clients" in log

    asyncio.run(main())
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = {(r["dir"], r["kind"]) for r in records}
    assert {
        ("in", "Connected"),
        ("in", "FrameReceived"),
        ("out", "SendFrame"),
        ("out", "Log"),
        ("in", "Disconnected"),
    } <= kinds
    offer_in = next(
        r for r in records if r["kind"] == "FrameReceived" and "webrtc-offer" in r["data"]
    )
    assert isinstance(offer_in["t"], float) and isinstance(offer_in["conn"], int)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        import subprocess

        result = subprocess.run(
            [*EXE, "serve", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("sansio-signal serve: ")
    assert "address already in use" in result.stderr
    assert result.stdout == ""


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    import subprocess

    for bad in (["--rate-limit", "-1"], ["--max-frame-bytes", "0"], ["--port", "70000"]):
        result = subprocess.run(
            [*EXE, "serve", *bad], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 2, bad
        assert "error:" in result.stderr


def test_console_script_and_help(tmp_path: Path) -> None:
    import shutil
    import subprocess

    script = shutil.which("sansio-signal", path=os.path.dirname(sys.executable))
    assert script is not None
    result = subprocess.run(
        [script, "serve", "--help"], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path
    )
    assert result.returncode == 0
    for flag in (
        "--max-frame-bytes",
        "--max-room-size",
        "--rate-limit",
        "--rate-burst",
        "--log-level",
        "--trace",
        "--host",
        "--port",
    ):
        assert flag in result.stdout
