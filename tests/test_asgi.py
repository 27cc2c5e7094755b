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
from wsutil import message_from, start_listening

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

    def held_members(self) -> float:
        """``sansio_signal_held_members`` from ``/signal/metrics``."""
        _, _, body = self.request("GET", "/signal/metrics")
        for line in body.decode().splitlines():
            if line.startswith("sansio_signal_held_members "):
                return float(line.split()[1])
        raise AssertionError("no sansio_signal_held_members in /metrics")

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
    # not the checkout: sansio_signal/ there would shadow the installed package
    proc, url = start_listening([sys.executable, str(EXAMPLE), "--port", "0"], tmp, "http")
    return App(proc, url)


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
        while app.held_members() < 1:  # the server has seen the drop (each a round trip)
            pass
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


# ---------------------------------------------------------------- the app, driven directly


class Socket:
    """One WebSocket scope driven by hand: what the app sent, and its inbox."""

    def __init__(self, app: RelayApp, *, stuck: bool = False) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.stuck = stuck
        """Every ``websocket.send`` blocks: a client that does not read."""
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        scope = {"type": "websocket", "path": "/", "client": ("10.0.0.1", 5000), "headers": []}
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self._send))

    async def _send(self, message: Any) -> None:
        if self.stuck and message["type"] == "websocket.send":
            await asyncio.Event().wait()
        self.sent.append(dict(message))
        self.changed.set()

    async def until(self, kind: str) -> dict[str, Any]:
        """The first message of type ``kind`` the app sent (waiting for it)."""
        while True:
            found = [m for m in self.sent if m["type"] == kind]
            if found:
                return found[0]
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)

    def receive(self, frame: Frame) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})


def test_a_connection_the_machine_refuses_at_once_is_closed_before_the_accept() -> None:
    from sansio_signal import Limits

    async def scenario() -> None:
        app = relay_app(limits=Limits(max_per_address=1))
        first, second = Socket(app), Socket(app)
        first.start()
        await first.until("websocket.accept")
        second.start()
        close = await second.until("websocket.close")  # before any accept: HTTP 403
        assert not [m for m in second.sent if m["type"] == "websocket.accept"]
        assert close["code"] == 1013
        assert second.task is not None
        await second.task
        assert app.health()["connections"] == 1
        first.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        assert first.task is not None
        await first.task
        assert app.health()["connections"] == 0

    asyncio.run(scenario())


def test_a_client_that_does_not_read_is_closed_1013_past_the_send_buffer() -> None:
    async def scenario() -> None:
        app = relay_app(send_buffer=2000)
        reader, stuck = Socket(app), Socket(app, stuck=True)
        reader.start()
        stuck.start()
        await reader.until("websocket.accept")
        await stuck.until("websocket.accept")
        stuck.receive(join_frame("slow", "zed"))
        reader.receive(join_frame("slow", "amy"))
        await reader.until("websocket.send")  # amy's own user-joined-room
        n = 0
        while app.refusal_counts()["slow-consumer"] == 0:  # each chat reaches zed too
            n += 1
            reader.receive(chat_frame(f"message {n} " + "x" * 100))
            while not any(f"message {n} " in m.get("text", "") for m in reader.sent):
                reader.changed.clear()
                await asyncio.wait_for(reader.changed.wait(), 5)
        assert 5 < n < 12  # about 2000 bytes of ~230-byte chat frames queued for zed
        assert app.closes[1013] == 1, (app.closes, app.machine.stats)
        # the others see it leave, once
        while not any('"user-left-room"' in m.get("text", "") for m in reader.sent):
            reader.changed.clear()
            await asyncio.wait_for(reader.changed.wait(), 5)
        stuck.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
        reader.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        assert stuck.task is not None and reader.task is not None
        await asyncio.gather(stuck.task, reader.task)
        assert app.health() == {"connections": 0, "rooms": 0}

    asyncio.run(scenario())


def test_two_aiortc_peers_connect_through_the_mounted_relay(app: App) -> None:
    from sansio_signal.adapters.client import connect as client

    async def scenario() -> None:
        async with (
            client(
                app.ws_url,
                room_id="peers",
                user_id="alice",
                headers={"Cookie": app.login("alice")},
            ) as alice,
            client(
                app.ws_url, room_id="peers", user_id="bob", headers={"Cookie": app.login("bob")}
            ) as bob,
        ):
            await alice.wait_connected("bob", timeout=20)
            await bob.wait_connected("alice", timeout=20)
            alice.send("bob", "over the data channel")
            await message_from(bob, "alice", "over the data channel", timeout=10)

    asyncio.run(scenario())


CHROMIUM = "/usr/bin/chromium"

BROWSER_PEER = """
async ([url, userId, roomId]) => {
  const m = await import("/static/sansio-signal.js");
  const c = new m.SignalingClient({ url, userId });
  window.c = c;
  window.messages = [];
  c.addEventListener("message", (e) => window.messages.push([e.detail.from, e.detail.text]));
  await c.connect();
  c.join(roomId);
}
"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_two_browser_pages_connect_through_the_mounted_relay(app: App) -> None:
    """Each page logs in through the app's form (its cookie rides on the WebSocket) and
    runs the bundled browser client from /static against /signal."""
    from playwright.async_api import async_playwright

    base = f"http://{app.host}:{app.port}/"

    async def scenario() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--disable-gpu", "--allow-loopback-in-peer-connection"],
            )
            try:
                pages = {}
                for user in ("ann", "ben"):
                    page = await (await browser.new_context()).new_page()
                    await page.goto(base)
                    await page.fill("input[name=user]", user)
                    await page.click("button")
                    await page.wait_for_selector("#log")  # the chat page: logged in
                    await page.evaluate(BROWSER_PEER, [app.ws_url, user, "browsers"])
                    pages[user] = page
                for user, other in (("ann", "ben"), ("ben", "ann")):
                    await pages[user].wait_for_function(
                        "(p) => window.c.channel(p) !== null", arg=other, timeout=20_000
                    )
                await pages["ann"].wait_for_function(
                    "() => window.c.channel('ben').readyState === 'open'", timeout=20_000
                )
                await pages["ann"].evaluate("window.c.send('ben', 'hi from ann')")
                await pages["ben"].wait_for_function(
                    "() => window.messages.some(([f, t]) => f === 'ann' && t === 'hi from ann')",
                    timeout=20_000,
                )
            finally:
                await browser.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_lifespan_shutdown_closes_every_connection_with_1012() -> None:
    async def scenario() -> None:
        app = relay_app()
        member = Socket(app)
        member.start()
        await member.until("websocket.accept")
        member.receive(join_frame("restart", "amy"))
        await member.until("websocket.send")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        answers: list[dict[str, Any]] = []

        async def answer(message: Any) -> None:
            answers.append(dict(message))

        events.put_nowait({"type": "lifespan.startup"})
        events.put_nowait({"type": "lifespan.shutdown"})
        lifespan = asyncio.create_task(app({"type": "lifespan"}, events.get, answer))
        close = await member.until("websocket.close")
        assert close["code"] == 1012
        assert not lifespan.done()  # waits for the connection to end
        member.inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})
        await asyncio.wait_for(lifespan, 5)
        assert [a["type"] for a in answers] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert app.machine.held_count == 1  # a restart: amy is held for her resume

    asyncio.run(scenario())
