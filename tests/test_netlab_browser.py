"""Issue 15 with a real browser: headless Chromium in the network lab's namespace A
(tests/netlab.py) meets an aiortc ``sansio-signal chat`` peer in B, which it cannot
reach, through coturn in T; ``serve`` in T hands both fresh TURN credentials
(``--turn-url``/``--turn-secret-file``, ``/config.json``).

Chromium really lives in A: this file is also the browser's driver (run as a script,
``python tests/test_netlab_browser.py URL ROOM USER PEER``), started with
``lab.run_in("A", ...)``; ``ip netns exec`` execs it in A, and playwright's node driver
and every Chromium process it starts inherit the namespace, so each socket the browser
opens is in A (the page itself is loaded from T's service address, which only the lab
reaches). The driver uses the relay's own demo page — the form, the page's fetch of
``/config.json``, its log — and reports what it sees as JSON lines on stdout; the test
reads them with timeouts (no sleeps).

Chromium needs no special flag inside the namespace: only test_browser.py's
``--disable-gpu --disable-quic``. Not ``--allow-loopback-in-peer-connection`` (nothing
here is on loopback), and not mDNS hiding off either: measured both ways, the browser's
candidates are the same, because A has no default route and Chromium then offers no host
candidate at all (it cannot tell its "default" local address: its candidates are a
``srflx`` with ``raddr 0.0.0.0`` — A's own address, as coturn saw it — and a ``relay``),
so there is no host name to hide.

What Chromium gathers is a race, so the test does not insist on a relay candidate of the
browser's own: Chromium stops gathering as soon as one pair is writable, and a pair from
its srflx candidate to the aiortc peer's relay candidate can be writable before its own
TURN allocation (two round trips) is done — then its IceGatheringDone lists no
``relay``, and the pair is still a relay pair (the remote end is the allocation). Both
roles run: the browser answering (``web`` > ``bob``: aiortc offers) and offering
(``a-web`` < ``bob``). A second test gives ``serve`` a secret coturn does not share: no
pair can form, gathering runs to its end, and the browser reports coturn's 401.
"""

from __future__ import annotations

import json
import os
import queue
import sys
from pathlib import Path
from typing import Any

import pytest
from labpeers import SERVE_PORT, ChatPeer, serve_in, spawn_piped
from netlab import ADDRESSES, SERVICE, NetLab
from turnfix import TurnServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic"]
PAGE_URL = f"http://{SERVICE}:{SERVE_PORT}/"
SECRET = b"lab-browser-turn-secret-0123456789"
TIMEOUT = 30.0
"""Every wait, in the test and in the driver."""


# ---------------------------------------------------------------- the driver (in A)

# Installed once the page's client exists (the demo sets window.sansioClient): every
# "peer-route", "ice-gathered" and "message" the client emits is kept in window.lab.
WATCH = """
() => {
  const c = window.sansioClient;
  window.lab = { routes: [], gathered: [], messages: [] };
  c.addEventListener("peer-route", (e) => window.lab.routes.push(e.detail));
  c.addEventListener("ice-gathered", (e) => window.lab.gathered.push(e.detail));
  c.addEventListener("message", (e) => window.lab.messages.push(e.detail));
}
"""


def drive(url: str, room: str, user: str, peer: str) -> int:
    """The browser side: join ``room`` as ``user`` on the demo page, then report (one JSON
    object a line): ``joined`` (with the ICE servers the page fetched), ``gathered`` and
    ``route`` (the client's events for ``peer``), ``sent`` (a line to ``peer`` over the
    data channel, once it is open), ``message`` (the first line from ``peer``) and
    ``page`` (the demo's log and participant line); ``error`` and exit 1 on a timeout.
    With ``--gather-only`` it stops after ``gathered``. Exits when stdin closes."""
    from playwright.sync_api import Error, sync_playwright

    def say(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    ms = TIMEOUT * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#room", room)
            page.fill("#name", user)
            page.click("#join")
            page.wait_for_function("window.sansioClient?.state === 'joined'", timeout=ms)
            page.evaluate(WATCH)
            say(joined=page.evaluate("window.sansioClient.iceServers"))
            page.wait_for_function(
                "(p) => window.lab.gathered.some((g) => g.peerId === p)", arg=peer, timeout=ms
            )
            say(gathered=page.evaluate("window.lab.gathered"))
            if "--gather-only" not in sys.argv:
                page.wait_for_function(
                    "(p) => window.lab.routes.some((r) => r.peerId === p)", arg=peer, timeout=ms
                )
                say(route=page.evaluate("window.lab.routes"))
                page.wait_for_function(
                    "(p) => window.sansioClient.channel(p) !== null", arg=peer, timeout=ms
                )
                text = f"hello from {user} in chromium"
                page.fill("#p2p-text", text)
                page.click("#p2p-send")
                say(sent=text)
                page.wait_for_function(
                    "(p) => window.lab.messages.some((m) => m.from === p)", arg=peer, timeout=ms
                )
                say(message=page.evaluate("window.lab.messages"))
                say(
                    page={
                        "log": page.locator("#log li").all_inner_texts(),
                        "participant": page.locator(
                            f'#participants li[data-peer="{peer}"] .state'
                        ).inner_text(),
                    }
                )
        except Error as exc:
            say(error=str(exc).splitlines()[0])
            return 1
        sys.stdin.read()  # until the test is done with us
        browser.close()
    return 0


# ---------------------------------------------------------------- the test side


@pytest.fixture(autouse=True)
def chromium() -> None:
    """Chromium is installed (like require_turnserver: CI must run these tests)."""
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} not found: install the Debian package 'chromium'"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


class BrowserInA:
    """This file's driver, run inside namespace A: its JSON lines, one ``expect`` each."""

    def __init__(self, lab: NetLab, room: str, user: str, peer: str, *extra: str) -> None:
        argv = [sys.executable, __file__, PAGE_URL, room, user, peer, *extra]
        self.proc, self.lines, self.err = spawn_piped(lab, "A", argv)

    def expect(self, key: str, timeout: float = TIMEOUT + 5) -> Any:
        """The value of the next report, which must be ``key``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the browser said nothing within {timeout} s ({key!r}): {self.stderr()}")
        report = json.loads(line)
        assert key in report, f"wanted {key!r}, the browser said {report}; {self.stderr()}"
        return report[key]

    def stderr(self) -> list[str]:
        lines: list[str] = []
        while not self.err.empty():
            lines.append(self.err.get_nowait())
        return lines[-20:]

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=15)


def turn_of(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The TURN entry of an ICE server list (the one /config.json's TURN flags add)."""
    turns = [s for s in servers if str(s["urls"][0]).startswith("turn:")]
    assert len(turns) == 1, servers
    return turns[0]


def serve_with_turn(lab: NetLab, turn: TurnServer, secret_file: Path) -> None:
    serve_in(
        lab, "T", "--turn-url", turn.url, "--turn-secret-file", str(secret_file),
        "--turn-ttl", "600",
    )  # fmt: skip


@pytest.mark.parametrize("user", ["web", "a-web"], ids=["browser-answers", "browser-offers"])
def test_chromium_in_a_and_aiortc_in_b_meet_only_through_turn(
    lab: NetLab, tmp_path: Path, user: str
) -> None:
    secret_file = tmp_path / "turn-secret"
    secret_file.write_bytes(SECRET + b"\n")
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_with_turn(lab, turn, secret_file)
        web = BrowserInA(lab, "lab", user, "bob")
        servers = web.expect("joined")
        assert turn_of(servers)["urls"] == [turn.url]  # the page fetched /config.json
        # no --ice-server: chat fetches /config.json itself
        bob = ChatPeer(lab, "B", "bob", room="lab")

        (gathered,) = web.expect("gathered")
        assert gathered["servers"] == [turn.url]
        types = gathered["candidateTypes"]
        assert types, gathered
        assert types == [t for t in ("host", "srflx", "prflx", "relay") if t in types], gathered
        assert not [f for f in gathered["failures"] if f["code"] == 401], gathered

        routes = web.expect("route")
        assert [r["peerId"] for r in routes] == ["bob"]
        route = routes[0]
        # from the browser's own getStats: at least one end is a TURN allocation in T
        assert route["pairType"] == "relay", route
        assert "relay" in (route["localType"], route["remoteType"]), route
        ends = [(route["localType"], route["localAddress"]),
                (route["remoteType"], route["remoteAddress"])]  # fmt: skip
        # a relay end is an allocation on T's service address; any other end is the
        # peer's own address (A's for the browser: its sockets really are in A)
        for (kind, address), own in zip(ends, (ADDRESSES["A"], ADDRESSES["B"]), strict=True):
            assert address.startswith(f"{SERVICE if kind == 'relay' else own}:"), route

        seen = bob.wait_err(f"connection with {user} uses", TIMEOUT)
        assert f"connection with {user} uses a relay pair (" in seen[-1], seen
        sent = web.expect("sent")
        assert bob.wait_out(f"{user}:", TIMEOUT)[-1] == f"{user}: {sent}"
        bob.say("hello from bob in B")
        messages = web.expect("message")
        assert messages == [{"from": "bob", "text": "hello from bob in B"}]

        shown = web.expect("page")
        assert any("connection with bob uses a relay pair (local " in x for x in shown["log"])
        assert shown["participant"].endswith(" · relay"), shown
        assert bob.finish() == 0
        assert web.finish() == 0


def test_chromium_reports_the_turn_server_that_refused_its_credential(
    lab: NetLab, tmp_path: Path
) -> None:
    """serve signs with a secret coturn does not share: the browser's gathering has no
    relay candidate, and its IceGatheringDone names the server, the 401 and the username
    it was refused with (never the credential)."""
    secret_file = tmp_path / "turn-secret"
    secret_file.write_bytes(b"not-the-secret-coturn-was-given-000\n")
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_with_turn(lab, turn, secret_file)
        web = BrowserInA(lab, "refused", "web", "bob", "--gather-only")
        given = turn_of(web.expect("joined"))
        ChatPeer(lab, "B", "bob", room="refused")
        (gathered,) = web.expect("gathered")
        assert gathered["servers"] == [turn.url]
        assert "relay" not in gathered["candidateTypes"], gathered
        refused = [f for f in gathered["failures"] if f["code"] == 401]
        assert refused, gathered
        assert refused[0]["url"].startswith(turn.url), refused
        assert refused[0]["error"].startswith("401 "), refused
        assert refused[0]["username"] == given["username"], (refused, given)
        assert given["credential"] not in json.dumps(gathered)
        assert web.finish() == 0


if __name__ == "__main__":
    url_, room_, user_, peer_ = sys.argv[1:5]
    sys.exit(drive(url_, room_, user_, peer_))
