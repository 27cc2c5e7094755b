"""Real runs that fail in known ways, each leaving its traces in a directory.

Every run goes through a real relay on loopback (``RelayServer`` in this process, or
a ``sansio-signal serve`` process where the relay itself must die), real aiortc peers
(the asyncio ``Client``, or a ``sansio-signal chat`` process where the peer must be
killed), and breaks in one place, the way a deployment does: a proxy that drops or
rewrites frames (tests/faultproxy.py), a raw client, a kill, a limit. Each waits for
the fault to have happened (an event or a line, with a timeout), never for time.

``tests/test_diagnose.py`` runs them and checks what ``diagnose`` says; run this file
to print the output of every run (``python tests/diagnose_runs.py [DIR]``), which is
how docs/debugging.md got its examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from conftest import join_frame
from faultproxy import FaultProxy, Rule, drop, edit_candidates, fault_proxy, to_port
from test_chat_cli import spawn_chat
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from wsutil import free_port, line_of, reap, recv, send, spawn_serve

from sansio_signal import RelayMachine
from sansio_signal.adapters.aiortc_peer import loopback_only
from sansio_signal.adapters.client import Client, JoinRefusedError
from sansio_signal.adapters.server import RelayServer
from sansio_signal.limits import Limits
from sansio_signal.negotiation import NegotiationConfig
from sansio_signal.testing import counting_tokens
from sansio_signal.tokens import TokenAuthority, issue_token

TIMEOUT = 20.0
ROOM = "demo"
PATIENT = NegotiationConfig(negotiation_timeout=60, connect_timeout=60, offer_wait=60)
"""Deadlines far beyond a run: the first attempt's failure is what the trace shows."""
QUICK_ICE = NegotiationConfig(
    negotiation_timeout=60, connect_timeout=1.0, offer_wait=60, max_retries=0
)
"""Give up on a connection that is not up 1 s after the exchange (ICE checks to a dead
address would take aioice over 30 s to fail)."""


def trace_file(where: Path, name: str) -> TextIO:
    return (where / f"{name}.jsonl").open("w", encoding="utf-8")


def client(
    url: str,
    where: Path,
    user: str,
    room: str = ROOM,
    config: NegotiationConfig = PATIENT,
    **kw: Any,
) -> Client:
    return Client(
        url, room_id=room, user_id=user, trace=trace_file(where, user), config=config, **kw
    )


@contextlib.asynccontextmanager
async def relay(where: Path, **kw: Any) -> AsyncIterator[RelayServer]:
    with trace_file(where, "relay") as trace:
        async with RelayServer(port=0, trace=trace, **kw) as server:
            yield server


async def alice_and_bob(
    where: Path, url: str, proxy: FaultProxy | None = None, behind: tuple[str, ...] = (), **kw: Any
) -> tuple[Client, Client]:
    """alice and bob, started in that order; those named in ``behind`` connect through
    ``proxy``."""
    alice, bob = (
        client(proxy.url if proxy is not None and user in behind else url, where, user, **kw)
        for user in ("alice", "bob")
    )
    await alice.start()
    await bob.start()
    return alice, bob


async def close_all(*clients: Client) -> None:
    for c in clients:
        await c.close()


async def raw_member(url: str, user: str, room: str = ROOM) -> ClientConnection:
    """A client that joins and then ignores every frame (it has no trace)."""
    ws = await ws_connect(url)
    await send(ws, join_frame(room, user))
    await frame_where(ws, type="user-joined-room", userId=user)
    return ws


async def frame_where(ws: ClientConnection, **fields: str) -> None:
    """Until the raw client ``ws`` receives a frame with these ``fields``."""
    while True:
        frame = await recv(ws)
        if all(frame.get(key) == value for key, value in fields.items()):
            return


def traced(where: Path, name: str, kind: str) -> Callable[[], bool]:
    """Whether ``name``'s trace has a record of ``kind`` yet (checked by a client's
    ``wait_until`` after each of its steps)."""
    path = where / f"{name}.jsonl"
    return lambda: f'"kind":"{kind}"' in path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the runs


async def healthy(where: Path) -> None:
    """Three peers, every pair connects."""
    async with relay(where) as server:
        peers = [client(server.url, where, u) for u in ("alice", "bob", "carol")]
        for p in peers:
            await p.start()
        for p in peers:
            await p.wait_all_connected(expected=2, timeout=TIMEOUT)
        await close_all(*peers)


async def room_typo(where: Path) -> None:
    """bob types the room's name wrong."""
    async with relay(where) as server:
        alice = client(server.url, where, "alice")
        bob = client(server.url, where, "bob", room="dmeo")
        await alice.start()
        await bob.start()
        await close_all(alice, bob)


async def id_taken(where: Path) -> None:
    """A stale connection holds the id bob; bob's own join is refused."""
    async with relay(where) as server:
        holder = await raw_member(server.url, "bob")
        bob = client(server.url, where, "bob")
        with contextlib.suppress(JoinRefusedError):
            await bob.start()
        alice = client(server.url, where, "alice")
        await alice.start()
        await frame_where(holder, fromUserId="alice", type="webrtc-offer")
        await close_all(alice, bob)
        await holder.close()


async def room_full(where: Path) -> None:
    """A relay with rooms of two: carol is the third."""
    async with relay(where, limits=Limits(max_room_size=2)) as server:
        alice, bob = await alice_and_bob(where, server.url)
        await alice.wait_connected("bob", timeout=TIMEOUT)
        await bob.wait_connected("alice", timeout=TIMEOUT)
        carol = client(server.url, where, "carol")
        with contextlib.suppress(JoinRefusedError):
            await carol.start()
        await close_all(alice, bob, carol)


SECRET = b"diagnose-test-secret-0123456789abcdef"


async def unauthorized(where: Path) -> None:
    """A relay that wants join tokens; bob has none."""
    machine = RelayMachine(new_token=counting_tokens(), authorize=TokenAuthority(SECRET))
    async with relay(where, machine=machine) as server:
        token = issue_token(SECRET, user_id="alice", room=ROOM, ttl=600, wall_time=time.time())
        alice = client(server.url, where, "alice", token=token)
        await alice.start()
        bob = client(server.url, where, "bob")
        with contextlib.suppress(JoinRefusedError):
            await bob.start()
        await close_all(alice, bob)


async def offer_lost(where: Path) -> None:
    """A proxy in front of bob loses every offer on its way to him."""
    await _lost_on_the_way(where, "webrtc-offer", "bob")


async def answer_lost(where: Path) -> None:
    """A proxy in front of alice loses every answer on its way to her."""
    await _lost_on_the_way(where, "webrtc-answer", "alice")


async def _lost_on_the_way(where: Path, type_: str, behind: str) -> None:
    """alice and bob, ``behind`` through a proxy that drops every ``type_`` coming to
    it, until it dropped one."""
    async with relay(where) as server, fault_proxy(server.url, drop(type_, up=False)) as proxy:
        alice, bob = await alice_and_bob(where, server.url, proxy, (behind,))
        await proxy.wait_for(lambda: bool(proxy.dropped))
        await close_all(alice, bob)


async def silent_peer(where: Path) -> None:
    """bob joins and never answers anything; only alice, carol and the relay trace."""
    async with relay(where) as server:
        bob = await raw_member(server.url, "bob")
        asking = NegotiationConfig(negotiation_timeout=60, connect_timeout=60, offer_wait=0.3)
        alice = client(server.url, where, "alice")
        carol = client(server.url, where, "carol", config=asking)
        await alice.start()
        await carol.start()
        await alice.wait_connected("carol", timeout=TIMEOUT)
        # carol waited for bob's offer
        await frame_where(bob, fromUserId="carol", type="webrtc-renegotiate")
        await close_all(alice, carol)
        await bob.close()


async def candidates_stripped(where: Path) -> None:
    """A proxy in front of both peers removes every ICE candidate from the SDP."""
    await _ice_through(where, edit_candidates(lambda c: None))


async def candidates_dead_port(where: Path) -> None:
    """A proxy in front of both peers rewrites every candidate to a port nobody
    listens on: ICE checks go nowhere."""
    await _ice_through(where, edit_candidates(to_port(free_port())))


async def _ice_through(where: Path, rule: Rule) -> None:
    """alice and bob behind one proxy applying ``rule``, until alice gives up."""
    async with relay(where) as server, fault_proxy(server.url, rule) as proxy:
        alice, bob = await alice_and_bob(
            where, server.url, proxy, ("alice", "bob"), config=QUICK_ICE
        )
        await alice.wait_until(traced(where, "alice", "PeerFailed"), timeout=TIMEOUT)
        await close_all(alice, bob)


async def peer_killed(where: Path) -> None:
    """bob (a ``sansio-signal chat`` process) is killed as alice's offer reaches him:
    the proxy in front of him kills him when his answer to it comes out (and drops it),
    so the kill always lands between the offer and the answer leaving his machine."""
    bob: asyncio.subprocess.Process | None = None

    def kill_on_answer(link: Any, up: bool, frame: dict[str, Any]) -> dict[str, Any] | None:
        if up and frame.get("type") == "webrtc-answer" and bob is not None:
            if bob.returncode is None:
                os.kill(bob.pid, signal.SIGKILL)
            return None
        return frame

    async with (
        relay(where, limits=Limits(resume_grace=0.5)) as server,
        fault_proxy(server.url, kill_on_answer) as proxy,
    ):
        trace = ["--trace", str(where / "bob.jsonl")]
        # spawn_chat's room is "r": the later --room wins
        bob = await spawn_chat(
            where, proxy.url, "bob", "--room", ROOM, "--log-level", "INFO", *trace
        )
        try:
            await line_of(bob.stderr, "joined room")
            alice = client(server.url, where, "alice")
            await alice.start()
            await asyncio.wait_for(bob.wait(), TIMEOUT)
            await alice.wait_until(traced(where, "alice", "PeerLeft"), timeout=TIMEOUT)
            await alice.close()
        finally:
            await reap(bob)


async def relay_killed(where: Path) -> None:
    """The relay (a ``sansio-signal serve`` process) dies as bob's answer is on its way
    to it; reconnecting fails (the proxy in front of bob answers 502 from then on)."""
    await _relay_killed_on(where, "webrtc-answer", "bob")


async def relay_killed_early(where: Path) -> None:
    """The same, earlier: the relay dies as alice's offer is on its way to it."""
    await _relay_killed_on(where, "webrtc-offer", "alice")


async def _relay_killed_on(where: Path, type_: str, behind: str) -> None:
    """alice and bob, ``behind`` through a proxy that kills the relay (SIGKILL) when a
    ``type_`` from it is on its way up, and drops that frame."""
    proc, url = await spawn_serve(where, "--trace", str(where / "relay.jsonl"))
    try:

        def kill(link: Any, up: bool, frame: dict[str, Any]) -> dict[str, Any] | None:
            if up and frame.get("type") == type_ and proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                return None
            return frame

        async with fault_proxy(url, kill) as proxy:
            alice, bob = await alice_and_bob(where, url, proxy, (behind,))
            await proxy.wait_for(lambda: bool(proxy.dropped))
            await proc.wait()
            for c in (alice, bob):
                await c.wait_until(traced(where, c.user_id, "ServerConnectFailed"), timeout=TIMEOUT)
            await close_all(alice, bob)
    finally:
        await reap(proc)


async def oversize_offer(where: Path) -> None:
    """A relay whose frame limit is below the size of an offer."""
    async with relay(where, limits=Limits(max_frame_bytes=600)) as server:
        alice, bob = await alice_and_bob(where, server.url)
        await alice.wait_until(traced(where, "alice", "ServerDisconnected"), timeout=TIMEOUT)
        await close_all(alice, bob)


RUNS: dict[str, Callable[[Path], Awaitable[None]]] = {
    "healthy": healthy,
    "room-typo": room_typo,
    "user-id-taken": id_taken,
    "room-full": room_full,
    "unauthorized": unauthorized,
    "offer-lost": offer_lost,
    "answer-lost": answer_lost,
    "silent-peer": silent_peer,
    "candidates-stripped": candidates_stripped,
    "candidates-dead-port": candidates_dead_port,
    "peer-killed": peer_killed,
    "relay-killed": relay_killed,
    "relay-killed-early": relay_killed_early,
    "oversize-offer": oversize_offer,
}


def run(name: str, where: Path) -> None:
    """Run one scenario into ``where`` (loopback ICE only)."""
    with loopback_only():
        asyncio.run(asyncio.wait_for(RUNS[name](where), 60))


def main() -> int:
    from sansio_signal.adapters.cli import run_diagnose

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    names = sys.argv[2:] or list(RUNS)
    for name in names:
        where = root / name
        where.mkdir(parents=True, exist_ok=True)
        run(name, where)
        print(f"$ sansio-signal diagnose {name}/")
        run_diagnose([str(where)])
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
