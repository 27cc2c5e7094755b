"""``sansio-signal serve`` as a user runs it: a real process, real signals, real sockets."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsutil import reap, spawn_serve

from sansio_signal.adapters.cli import build_parser, parse_ice_server

TIMEOUT = 10.0
EXE = [sys.executable, "-m", "sansio_signal"]


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
        proc, url = await spawn_serve(tmp_path, "--trace", str(trace))
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
            # SIGTERM is a restart (1012: clients come back and resume); SIGINT going away.
            expected = 1012 if signum == signal.SIGTERM else 1001
            for ws in (a, b):
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert ws.protocol.close_rcvd is not None
                assert ws.protocol.close_rcvd.code == expected
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        finally:
            await reap(proc)
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

    for bad in (
        ["--rate-limit", "-1"],
        ["--max-frame-bytes", "0"],
        ["--port", "70000"],
        ["--max-rooms", "0"],
        ["--max-connections-per-ip", "-1"],
        ["--handshake-timeout", "0"],
        ["--idle-timeout", "-1"],
        ["--allowed-origin", "app.example.org"],
        ["--allowed-origin", "https://app.example.org/path"],
        ["--ice-server", "stun.example.org"],
        ["--ice-server", "turn:turn.example.org"],
        ["--ice-server", "turn:turn.example.org,username=u"],
        ["--ice-server", "stun:s.example.org,password=p"],
    ):
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
        "--max-rooms",
        "--max-connections-per-ip",
        "--allowed-origin",
        "--handshake-timeout",
        "--idle-timeout",
        "--ping-interval",
        "--ping-timeout",
        "--ice-server",
    ):
        assert flag in result.stdout


def test_ice_server_syntax() -> None:
    assert parse_ice_server("stun:stun.example.org:3478") == {"urls": "stun:stun.example.org:3478"}
    assert parse_ice_server(
        "turns:turn.example.org:5349?transport=tcp,username=1700000000:alice,credential=a+b/c=="
    ) == {
        "urls": "turns:turn.example.org:5349?transport=tcp",
        "username": "1700000000:alice",
        "credential": "a+b/c==",
    }
    # Options in either order.
    assert parse_ice_server("turn:t.example.org,credential=p,username=u") == {
        "urls": "turn:t.example.org",
        "username": "u",
        "credential": "p",
    }
    for bad in ("", "http://x", "stun:", "turn:t,username=u,username=v,credential=p"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_ice_server(bad)


def test_chat_takes_turn_credentials_as_serve_does() -> None:
    """``chat --ice-server URL,username=...,credential=...``: what a TURN server with
    short-lived credentials needs (the relay's /config.json hands them out)."""
    pytest.importorskip("aiortc")
    from sansio_signal.adapters.chat import ice_servers_of

    args = build_parser().parse_args(
        [
            "chat",
            "ws://127.0.0.1:1/",
            "--room",
            "room",
            "--user",
            "alice",
            "--ice-server",
            "stun:127.0.0.1:3478",
            "--ice-server",
            "turn:127.0.0.1:3478,username=1700000000,credential=a+b/c==",
        ]
    )
    servers = [server for s in args.ice_server for server in ice_servers_of(s)]
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        ("stun:127.0.0.1:3478", None, None),
        ("turn:127.0.0.1:3478", "1700000000", "a+b/c=="),
    ]
    with pytest.raises(SystemExit):  # a TURN URL without its credentials
        build_parser().parse_args(
            ["chat", "ws://x/", "--room", "r", "--user", "u", "--ice-server", "turn:t"]
        )


def test_serve_flags_reach_the_server(tmp_path: Path) -> None:
    """One real process with the transport flags: /config.json, 403, 429, the rooms limit."""

    async def main() -> None:
        proc, url = await spawn_serve(
            tmp_path,
            "--ice-server",
            "stun:stun.example.org",
            "--ice-server",
            "turn:turn.example.org:3478?transport=udp,username=u,credential=p",
            "--allowed-origin",
            "https://app.example.org",
            "--max-connections-per-ip",
            "2",
            "--max-rooms",
            "1",
        )
        try:
            port = int(url.rsplit(":", 1)[1].strip("/"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /config.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
            assert json.loads(response.partition(b"\r\n\r\n")[2]) == {
                "iceServers": [
                    {"urls": "stun:stun.example.org"},
                    {
                        "urls": "turn:turn.example.org:3478?transport=udp",
                        "username": "u",
                        "credential": "p",
                    },
                ]
            }
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, origin="https://evil.example")  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403
            a = await connect(url, origin="https://app.example.org")  # type: ignore[arg-type]
            b = await connect(url)
            with pytest.raises(InvalidStatus) as refused:
                await connect(url)
            assert refused.value.response.status_code == 429
            await a.send(join_text("one", "a"))
            assert json.loads(await asyncio.wait_for(a.recv(), TIMEOUT))["roomId"] == "one"
            await b.send(join_text("two", "b"))
            error = json.loads(await asyncio.wait_for(b.recv(), TIMEOUT))
            assert error["code"] == "room-full"
            proc.send_signal(signal.SIGINT)
            for ws in (a, b):
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        finally:
            await reap(proc)

    asyncio.run(main())


def join_text(room: str, user: str) -> str:
    return json.dumps(
        {"channel": "webrtc-dashboard-rooms", "type": "join-room", "roomId": room, "userId": user}
    )
