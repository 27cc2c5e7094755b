"""The ASGI adapter under a real uvicorn process: docs/examples/fastapi_app.py, a FastAPI
app with its own cookie login that mounts the relay at ``/signal``.

The wire protocol through the mount (join, relay and stamping, chat, errors, resume after
a dropped socket), the app's own auth admitting one user and refusing others, the HTTP
endpoints below the mount, and SIGTERM closing clients with 1012.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_frame, join_frame, offer_frame
from websockets.asyncio.client import ClientConnection, connect

from sansio_signal.adapters.asgi import RelayApp, relay_app

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "fastapi_app.py"

pytestmark = pytest.mark.usefixtures("loopback")

Frame = dict[str, Any]


class App:
    """The example app running under uvicorn: its address and a login helper."""

    def __init__(self, proc: subprocess.Popen[str], base: str) -> None:
        self.proc = proc
        self.host, port = base.removeprefix("http://").rstrip("/").split(":")
        self.port = int(port)
        self.ws_url = f"ws://{self.host}:{self.port}/signal/"

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def login(self, user: str) -> str:
        """The ``Cookie`` header of a fresh session of ``user``."""
        status, headers, _ = self.request(
            "POST",
            "/login",
            body=f"user={user}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 303
        return headers["set-cookie"].split(";")[0]


def _start(tmp: Path) -> App:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0"],
        cwd=tmp,  # not the checkout: sansio_signal/ there would shadow the installed package
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on http://"), line
    return App(proc, line.removeprefix("listening on ").strip())


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    running = _start(tmp_path_factory.mktemp("asgi"))
    try:
        yield running
    finally:
        _stop(running.proc)


async def recv(ws: ClientConnection) -> Frame:
    frame: Frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return frame


async def send(ws: ClientConnection, frame: Frame) -> None:
    await ws.send(json.dumps(frame))


async def joined(app: App, room: str, user: str) -> tuple[ClientConnection, Frame]:
    """A connection of ``user``'s session, joined to ``room`` (its own user-joined-room)."""
    ws = await connect(app.ws_url, additional_headers={"Cookie": app.login(user)})
    await send(ws, join_frame(room, user))
    frame = await recv(ws)
    assert frame["type"] == "user-joined-room" and frame["userId"] == user, frame
    return ws, frame


def test_healthz_metrics_and_404_below_the_mount(app: App) -> None:
    status, headers, body = app.request("GET", "/signal/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    assert set(json.loads(body)) == {"connections", "rooms"}
    status, _, body = app.request("GET", "/signal/metrics")
    assert status == 200
    text = body.decode()
    for name in ("sansio_signal_connections", "sansio_signal_refusals_total", "latency"):
        assert name in text
    assert app.request("GET", "/signal/nothing")[0] == 404


def test_the_apps_own_auth_admits_its_user_and_refuses_others(app: App) -> None:
    async def scenario() -> None:
        alice, frame = await joined(app, "auth", "alice")
        assert frame["existingParticipants"] == [] and isinstance(frame["resumeToken"], str)
        # no session at all
        async with connect(app.ws_url) as anonymous:
            await send(anonymous, join_frame("auth", "mallory"))
            refused = await recv(anonymous)
            assert (refused["type"], refused["code"]) == ("error", "unauthorized")
        # a session of bob's, asking to be someone else
        async with connect(app.ws_url, additional_headers={"Cookie": app.login("bob")}) as bob:
            await send(bob, join_frame("auth", "carol"))
            assert (await recv(bob))["code"] == "unauthorized"
            await send(bob, join_frame("auth", "bob"))  # under its own name: admitted
            frame = await recv(bob)
            assert frame["type"] == "user-joined-room"
            assert frame["existingParticipants"] == ["alice"]
        await alice.close()

    asyncio.run(scenario())


def test_relay_stamps_and_chat_reaches_the_room(app: App) -> None:
    async def scenario() -> None:
        alice, _ = await joined(app, "relay", "alice")
        bob, _ = await joined(app, "relay", "bob")
        assert (await recv(alice))["userId"] == "bob"  # the newcomer, seen by alice
        await send(alice, offer_frame("bob", fromUserId="mallory", epoch=3))
        offer = await recv(bob)
        assert offer["type"] == "webrtc-offer"
        assert (offer["fromUserId"], offer["roomId"], offer["epoch"]) == ("alice", "relay", 3)
        await send(bob, chat_frame("hello"))
        for ws in (alice, bob):
            chat = await recv(ws)
            assert (chat["fromUserId"], chat["text"], chat["roomId"]) == ("bob", "hello", "relay")
            assert isinstance(chat["ts"], float)
        await alice.close()
        await bob.close()

    asyncio.run(scenario())


def test_bad_input_gets_error_frames(app: App) -> None:
    async def scenario() -> None:
        alice, _ = await joined(app, "errors", "alice")
        await send(alice, {"channel": "nope", "type": "x"})
        error = await recv(alice)
        assert (error["channel"], error["code"]) == ("system", "unknown-channel")
        await alice.send(b"\x00binary")
        assert (await recv(alice))["code"] == "bad-frame"
        await send(alice, offer_frame("nobody"))
        assert (await recv(alice))["code"] == "peer-not-found"
        await alice.close()

    asyncio.run(scenario())


def test_resume_after_a_dropped_socket(app: App) -> None:
    async def scenario() -> None:
        alice, _ = await joined(app, "resume", "alice")
        cookie = app.login("bob")
        bob = await connect(app.ws_url, additional_headers={"Cookie": cookie})
        await send(bob, join_frame("resume", "bob"))
        token = (await recv(bob))["resumeToken"]
        assert (await recv(alice))["userId"] == "bob"
        bob.transport.abort()  # no close frame: held for the resume grace
        await bob.wait_closed()
        await send(alice, chat_frame("while you were away"))
        assert (await recv(alice))["text"] == "while you were away"  # no user-left-room
        async with connect(app.ws_url, additional_headers={"Cookie": cookie}) as again:
            await send(again, join_frame("resume", "bob", resumeToken=token))
            back = await recv(again)
            assert back["type"] == "user-joined-room" and back["existingParticipants"] == ["alice"]
            assert back["resumeToken"] != token
            missed = await recv(again)
            assert (missed["type"], missed["text"]) == ("chat-message", "while you were away")
            await send(again, chat_frame("back"))
            assert (await recv(alice))["text"] == "back"  # alice saw nothing of the resume
        await alice.close()

    asyncio.run(scenario())


def test_sigterm_closes_clients_with_1012(tmp_path: Path) -> None:
    running = _start(tmp_path)
    try:

        async def scenario() -> None:
            alice, _ = await joined(running, "restart", "alice")
            running.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(alice.wait_closed(), 10)
            assert alice.close_code == 1012

        asyncio.run(scenario())
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert running.proc.wait(timeout=10) in (0, -signal.SIGTERM)
    finally:
        _stop(running.proc)


def test_relay_app_takes_its_hooks_or_a_machine() -> None:
    from sansio_signal import RelayMachine

    assert isinstance(relay_app(), RelayApp)
    with pytest.raises(ValueError):
        relay_app(machine=RelayMachine(new_token=lambda: "t"), authorize=lambda s, j: True)
    with pytest.raises(ValueError):
        relay_app(send_buffer=0)
