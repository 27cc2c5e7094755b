"""Issue 10, end to end: a room member that sends junk in any field of any signaling frame
cannot stop a Python or a browser client from talking to the other members.

A real ``sansio-signal serve`` relays for three members of one room:

* ``a-junk``, a raw WebSocket speaking the protocol by hand. It has the lowest id, so it
  is the pair's initiator ("the one who offers") for both honest members, and what it
  sends is exactly what they must take from an initiator: a battery of malformed pair
  fields, descriptions and candidates, frames out of order, offers of junk SDP, and 200
  frames of seeded random junk, to each of them;
* ``b-py``, the bundled Python aiortc ``Client``;
* ``c-web``, the browser client in headless Chromium (the launch flags of
  tests/test_browser.py).

The relay runs without its rate limit and with a high abuse threshold: the junk is meant
for the clients, and the relay must not close the junk member before it has all gone
out (the frames the relay itself refuses are counted, not needed).

After the last junk frame has reached both honest members (a chat the junk member sends
last arrives after everything it sent before: one sender, one relay, one connection), the
honest pair must have its data channel open and carry a message each way, a room chat
from the browser must reach the Python client (its reader task is alive), and each of
them must have reported the junk as protocol violations: ``Client.events()`` yields
``ProtocolViolation``, the page's client fires ``"violation"`` events. Every wait is on a
condition with a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from conftest import SIGNALING, Frame, chat_frame, join_frame
from playwright.async_api import Browser, Page
from test_browser import http_url, pytestmark, run, serving
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from wsutil import message_from

from sansio_signal.actions import PeerLeft, ProtocolViolation
from sansio_signal.adapters.client import Chat, Client, ClientNotice, connect

ROOM = "junk-room"
JUNK, PY, WEB = "a-junk", "b-py", "c-web"  # the junk member is the lower id of both pairs
TIMEOUT = 20.0
DONE = "junk: that was all"
RANDOM_FRAMES = 200
SEED = 10

T = TypeVar("T")

__all__ = ["pytestmark"]  # test_browser's: skipped without chromium, ICE on loopback


# ------------------------------------------------------------------ the junk


class Junk:
    """One frame of the battery: its text, and what must become of it."""

    VIOLATION = "violation"
    """The relay passes it on; the honest client must report it as a violation."""
    REFUSED = "refused"
    """The relay answers it with an error; nobody else sees it."""
    ANY = "any"
    """Either, or a frame the receiving machine may act on (and then fail)."""

    def __init__(self, label: str, text: str, expect: str) -> None:
        self.label, self.text, self.expect = label, text, expect


SIGNAL_TYPES = {
    "offer": ("webrtc-offer", "offer"),
    "answer": ("webrtc-answer", "answer"),
    "ice": ("webrtc-ice", None),
    "renegotiate": ("webrtc-renegotiate", None),
}
JUNK_SDP = "v=0 junk"


def signal_frame(kind: str, to: str, **fields: Any) -> Frame:
    """A signaling frame of ``kind`` for ``to``, shaped as the relay accepts it, with
    ``fields`` on top (``fields`` may replace the payload)."""
    type_, payload = SIGNAL_TYPES[kind]
    frame: Frame = {"channel": SIGNALING, "type": type_, "toUserId": to}
    if payload is not None:
        frame[payload] = {"type": payload, "sdp": JUNK_SDP}
    if kind == "ice":
        frame["candidate"] = {
            "candidate": "candidate:1 1 UDP 2122260223 127.0.0.1 9 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
    frame.update(fields)
    return frame


def battery(to: str) -> list[Junk]:
    """The hand-written junk for ``to``."""
    out: list[Junk] = []

    def add(label: str, frame: Frame, expect: str) -> None:
        out.append(Junk(label, json.dumps(frame), expect))

    bad_pair_fields: list[tuple[str, Any]] = [
        ("caps", [[]]),
        ("caps", [{}]),
        ("caps", "rollback"),
        ("caps", {"rollback": True}),
        ("epoch", -1),
        ("epoch", "1"),
        ("epoch", 2**60),
        ("epoch", 0.5),
        ("epoch", True),
        ("seq", "x"),
        ("seq", -3),
        ("sid", 7),
        ("rsid", [1]),
        ("reason", {}),
    ]
    for kind in SIGNAL_TYPES:
        for field, value in bad_pair_fields:
            add(f"{kind} {field}={value!r}", signal_frame(kind, to, **{field: value}), "violation")
        # 10,000 levels of nesting in caps, written by hand (json.dumps would recurse):
        # the relay may refuse it (bad-json); if it relays it, it is a violation.
        text = json.dumps(signal_frame(kind, to))[:-1]
        out.append(
            Junk(
                f"{kind} caps 10k deep",
                text + ', "caps": ' + "[" * 10_000 + "]" * 10_000 + "}",
                "any",
            )
        )
        # an epoch spelled 1.0 is epoch 1 (valid: the initiator moved on); then junk SDP
        add(f"{kind} epoch=1.0", signal_frame(kind, to, epoch=1.0), "any")
        add(f"{kind} fromUserId spoofed", signal_frame(kind, to, fromUserId=to), "any")
        add(f"{kind} unknown fields", signal_frame(kind, to, x={"y": [1, None]}, z="w"), "any")

    # descriptions and candidates the relay refuses
    add(
        "offer missing",
        {k: v for k, v in signal_frame("offer", to).items() if k != "offer"},
        "refused",
    )
    add("offer type 1", signal_frame("offer", to, offer={"type": 1}), "refused")
    add("answer type 1", signal_frame("answer", to, answer={"type": 1, "sdp": JUNK_SDP}), "refused")
    add("offer a string", signal_frame("offer", to, offer="v=0"), "refused")
    add(
        "ice sdpMLineIndex -1",
        signal_frame("ice", to, candidate={"candidate": "garbage", "sdpMLineIndex": -1}),
        "refused",
    )
    add("ice candidate a number", signal_frame("ice", to, candidate=5), "refused")
    # well-formed, but nonsense to a peer connection (the pair with the junk member fails
    # and retries; that is its business)
    add("ice garbage", signal_frame("ice", to, candidate={"candidate": "garbage"}), "any")
    add(
        "ice unknown mid",
        signal_frame("ice", to, candidate={"candidate": "garbage", "sdpMid": "zz"}),
        "any",
    )
    add("ice end", signal_frame("ice", to, candidate=None), "any")
    add("answer before any offer", signal_frame("answer", to, epoch=0), "any")
    add("offer junk sdp", signal_frame("offer", to, epoch=0, sid="junk-1", seq=1), "any")
    add("answer out of order", signal_frame("answer", to, epoch=0, sid="junk-1"), "any")
    add(
        "offer empty sdp",
        signal_frame("offer", to, offer={"type": "offer", "sdp": ""}, seq=2),
        "any",
    )
    add(
        "offer typed answer",
        signal_frame("offer", to, offer={"type": "answer", "sdp": JUNK_SDP}, seq=3),
        "any",
    )
    add(
        "offer of a huge sdp",
        signal_frame("offer", to, offer={"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 5000}),
        "any",
    )
    add("offer with a lone surrogate", signal_frame("offer", to, sid="\ud800", seq=4), "any")
    add("renegotiate from the initiator", signal_frame("renegotiate", to, reason="failed"), "any")
    add("ice for an old epoch", signal_frame("ice", to, epoch=0, rsid="nobody"), "any")
    # numbers no JSON peer can read the same way
    out.append(
        Junk("epoch 1e400", json.dumps(signal_frame("offer", to))[:-1] + ', "epoch": 1e400}', "any")
    )
    out.append(
        Junk("epoch NaN", json.dumps(signal_frame("offer", to))[:-1] + ', "epoch": NaN}', "any")
    )
    out.append(
        Junk(
            "seq 10**400",
            json.dumps(signal_frame("offer", to))[:-1] + ', "seq": 1' + "0" * 400 + "}",
            "any",
        )
    )
    return out


SCALARS: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 2.0, 0.5, -0.0, 2**53 - 1, 2**53, 2**60, -(2**70), 1e308,
    "", "x", "rollback", "ice-restart", "trickle", "offer", "answer", "rollback ", JUNK, PY,
    WEB, ROOM, "v=0", "\u00e9\u4e2d\U0001f600", "\ud800", "__proto__", "constructor",
]  # fmt: skip
FIELDS = ["epoch", "seq", "sid", "rsid", "caps", "reason", "__proto__", "toString", "pair"]
NESTED = {
    "offer": ["type", "sdp", "__proto__"],
    "answer": ["type", "sdp"],
    "candidate": ["candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"],
}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3 and roll < 0.25:
        keys = rng.sample([*FIELDS, "type", "sdp", "candidate"], rng.randint(0, 3))
        return {k: random_value(rng, depth + 1) for k in keys}
    if roll < 0.4:
        return rng.randint(0, 3)  # an epoch or seq the machine may take seriously
    if roll < 0.5:
        return "".join(rng.choice('abcxyz-_ \n"\\{}[]') for _ in range(rng.randint(0, 12)))
    return rng.choice(SCALARS)


def random_junk(rng: random.Random, to: str, count: int) -> list[Junk]:
    """``count`` frames for ``to``, each with 1-4 random values put in random fields (or
    fields removed). Addressing stays valid so that most of it reaches ``to``."""
    out = []
    for i in range(count):
        frame = signal_frame(rng.choice(list(SIGNAL_TYPES)), to)
        if rng.random() < 0.5:  # plausible pair fields, so that the junk gets past the codec
            frame.update(
                epoch=rng.randint(0, 3), sid=rng.choice(["s1", "s2"]), seq=rng.randint(0, 9)
            )
        for _ in range(rng.randint(1, 4)):
            parent = rng.choice([None, *NESTED])
            target = frame if parent is None else frame.get(parent)
            if not isinstance(target, dict):
                continue
            key = rng.choice(FIELDS if parent is None else NESTED[parent])
            if rng.random() < 0.15:
                target.pop(key, None)
            else:
                target[key] = random_value(rng)
        out.append(Junk(f"random #{i}", json.dumps(frame), "any"))
    return out


# ------------------------------------------------------------------ waiting on things


class Seen(Generic[T]):
    """What arrived so far, and a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def add(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    async def until(self, condition: Callable[[list[T]], bool], what: str) -> None:
        async def loop() -> None:
            while not condition(self.items):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def collecting(source: AsyncIterator[T]) -> AsyncIterator[Seen[T]]:
    """``source`` drained into a :class:`Seen` by a task, while the block runs."""
    seen: Seen[T] = Seen()

    async def drain() -> None:
        async for item in source:
            seen.add(item)

    task = asyncio.get_running_loop().create_task(drain())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def raw_member(url: str, inbox: Seen[Frame]) -> tuple[ClientConnection, asyncio.Task[None]]:
    """``a-junk``: a plain WebSocket in the room, every frame it receives in ``inbox``."""
    ws = await ws_connect(url, compression=None)

    async def read() -> None:
        async for data in ws:
            inbox.add(json.loads(data))

    reader = asyncio.get_running_loop().create_task(read())
    await ws.send(json.dumps(join_frame(ROOM, JUNK)))
    return ws, reader


def joined(user: str) -> Callable[[list[Frame]], bool]:
    return lambda frames: any(
        f.get("type") == "user-joined-room" and f.get("userId") == user for f in frames
    )


BOOT = """
async ([url, userId, roomId]) => {
  const m = await import("/sansio-signal.js");
  const c = new m.SignalingClient({ url, userId });
  window.c = c;
  window.seen = { messages: [], chats: [], violations: [], left: [], errors: [] };
  c.addEventListener("message", (e) => window.seen.messages.push([e.detail.from, e.detail.text]));
  c.addEventListener("chat", (e) => window.seen.chats.push([e.detail.from, e.detail.text]));
  c.addEventListener("violation", (e) => {
    window.seen.violations.push([e.detail.peerId, e.detail.detail]);
  });
  c.addEventListener("peer-left", (e) => window.seen.left.push(e.detail.peerId));
  c.addEventListener("log", (e) => {
    if (e.detail.level === "error") window.seen.errors.push(e.detail.text);
  });
  await c.connect();
  c.join(roomId);
}
"""


async def page_until(page: Page, condition: str, arg: Any = None) -> None:
    await page.wait_for_function(condition, arg=arg, timeout=TIMEOUT * 1000)


# ------------------------------------------------------------------ the test


def mentions(details: list[str], field: str) -> bool:
    return any(f"'{field}'" in d for d in details)


PAIR_FIELDS = ("caps", "epoch", "seq", "sid", "rsid", "reason")


def test_a_member_sending_junk_cannot_stop_the_others_from_talking(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    junk = {to: battery(to) + random_junk(rng, to, RANDOM_FRAMES) for to in (PY, WEB)}
    must_violate = {
        to: sum(j.expect == Junk.VIOLATION for j in frames) for to, frames in junk.items()
    }
    refused = sum(j.expect == Junk.REFUSED for frames in junk.values() for j in frames)

    async def scenario(browser: Browser) -> None:
        inbox: Seen[Frame] = Seen()
        ws, reader = await raw_member(url, inbox)
        await inbox.until(joined(JUNK), "the junk member's own join")
        async with (
            connect(url, room_id=ROOM, user_id=PY) as py,
            collecting(py.events()) as events,
            collecting(py.chats()) as chats,
        ):
            await run_room(browser, py, ws, inbox, events, chats)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()

    async def run_room(
        browser: Browser,
        py: Client,
        ws: ClientConnection,
        inbox: Seen[Frame],
        events: Seen[ClientNotice],
        chats: Seen[Chat],
    ) -> None:
        page = await browser.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        await page.goto(http_url(url))
        await page.evaluate(BOOT, [url, WEB, ROOM])
        await inbox.until(lambda f: joined(PY)(f) and joined(WEB)(f), "both honest members")

        # The junk, to each honest member, while their own pair is negotiating.
        for to in (PY, WEB):
            for item in junk[to]:
                await ws.send(item.text)
        await ws.send(json.dumps(chat_frame(DONE)))
        await chats.until(
            lambda cs: any(c.text == DONE for c in cs), "the end of the junk (Python)"
        )
        await page_until(page, "(t) => window.seen.chats.some(([f, x]) => x === t)", DONE)

        # Every junk frame was relayed or refused before that chat; the honest pair talks.
        await py.wait_connected(WEB, timeout=TIMEOUT)
        await page_until(page, "(p) => window.c.channel(p) !== null", PY)
        py.send(WEB, "after the junk, from Python")
        await page_until(
            page,
            "(t) => window.seen.messages.some(([f, x]) => f === 'b-py' && x === t)",
            "after the junk, from Python",
        )
        assert await page.evaluate(
            "(p) => window.c.send(p, 'after the junk, from the browser')", PY
        )
        await message_from(py, WEB, "after the junk, from the browser", TIMEOUT)
        # The Python client still reads its WebSocket: a chat sent now arrives.
        await page.evaluate("window.c.chat('room chat after the junk')")
        await chats.until(
            lambda cs: any(
                (c.from_user_id, c.text) == (WEB, "room chat after the junk") for c in cs
            ),
            "the browser's chat at the Python client",
        )

        # The junk was seen, and reported, by both.
        await inbox.until(
            lambda fs: any(f.get("text") == DONE for f in fs), "the end of the junk (its echo)"
        )
        errors = [f for f in inbox.items if f.get("type") == "error"]
        assert len(errors) >= refused, [f.get("code") for f in errors]
        py_violations = [e for e in events.items if isinstance(e, ProtocolViolation)]
        web_violations: list[list[Any]] = await page.evaluate("window.seen.violations")
        assert len(py_violations) >= must_violate[PY], len(py_violations)
        assert len(web_violations) >= must_violate[WEB], len(web_violations)
        for field in PAIR_FIELDS:
            assert mentions([v.detail for v in py_violations], field), field
            assert mentions([str(detail) for _, detail in web_violations], field), field
        # Nobody left, nobody crashed.
        assert not [e for e in events.items if isinstance(e, PeerLeft)]
        assert await page.evaluate("window.seen.left") == []
        assert page_errors == []
        assert await page.evaluate("window.seen.errors") == []
        assert ws.close_code is None, "the relay kept the junk member"
        report(py_violations, web_violations, errors)

    # The scenario above reads ``url``, the relay's, started here.
    with serving(tmp_path, "--rate-limit", "0", "--abuse-errors", "1000000") as url:
        run(scenario)


def report(py: list[ProtocolViolation], web: list[list[Any]], errors: list[Frame]) -> None:
    """What happened, for ``pytest -s`` (counts vary with timing; the asserts do not)."""
    print(
        f"\nrelay refused {len(errors)} frames; Python reported {len(py)} violations "
        f"({sum(v.peer_id is None for v in py)} naming no peer); browser {len(web)} "
        f"({sum(p is None for p, _ in web)} naming no peer)"
    )
