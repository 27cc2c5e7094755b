"""Resume, restart and crash with the real relay and real aiortc peers on loopback.

A small TCP proxy stands between one client and the relay so that the test can cut the
connection the way a network does — both sockets aborted, no close frame — and hold new
connections until it is restored. Every wait is on a condition checked after each event
(``Client.wait_until``, ``RelayServer.wait_until``) with a timeout.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from netproxy import proxied
from wsutil import free_port, message_from, reap_blocking, start_serve

from sansio_signal import Limits
from sansio_signal.actions import PeerLeft, RoomResumed
from sansio_signal.adapters.client import Client, ClientNotice, connect
from sansio_signal.adapters.server import RelayServer
from sansio_signal.negotiation import NegState

TIMEOUT = 20.0


pytestmark = pytest.mark.usefixtures("loopback")


def resuming(client: Client) -> Callable[[], bool]:
    return lambda: client.machine.resuming


def back_in_full(client: Client) -> Callable[[], bool]:
    """Its resume went through and every member it had is back."""
    return lambda: not client.machine.resuming and not client.machine.absent


class Recorder:
    """Everything a client told the application, in order."""

    def __init__(self, client: Client) -> None:
        self.events: list[ClientNotice] = []
        self._task = asyncio.get_running_loop().create_task(self._run(client))

    async def _run(self, client: Client) -> None:
        async for event in client.events():
            self.events.append(event)

    def left(self, peer_id: str) -> int:
        return sum(isinstance(e, PeerLeft) and e.peer_id == peer_id for e in self.events)


async def next_message(client: Client, sender: str, text: str) -> None:
    await message_from(client, sender, text, TIMEOUT)


def test_a_dropped_connection_resumes_mid_negotiation_and_misses_nothing() -> None:
    async def main() -> None:
        async with (
            RelayServer(port=0) as server,
            proxied(server.port) as proxy,
            connect(server.url, room_id="r", user_id="alice") as alice,
            connect(proxy.url, room_id="r", user_id="bob") as bob,
        ):
            seen_by_alice, seen_by_bob = Recorder(alice), Recorder(bob)
            await alice.wait_connected("bob", timeout=TIMEOUT)
            await bob.wait_connected("alice", timeout=TIMEOUT)
            pc_before = bob.peer_connection("alice")

            proxy.cut()
            await server.wait_until(lambda: server.machine.held_count == 1, TIMEOUT)
            # While bob is away: room chat, a renegotiation (alice's new offer waits at
            # the relay: bob resumes mid-negotiation) and a newcomer.
            alice.chat("one")
            alice.chat("two")
            alice.renegotiate("bob")
            alice.send("bob", "peer-to-peer, meanwhile")  # the data channel never stopped
            await next_message(bob, "alice", "peer-to-peer, meanwhile")
            async with connect(server.url, room_id="r", user_id="carol") as carol:
                await carol.wait_connected("alice", timeout=TIMEOUT)
                proxy.restore()
                texts = []
                async for chat in bob.chats():
                    texts.append(chat.text)
                    if len(texts) == 2:
                        break
                assert texts == ["one", "two"]  # in order, after the resume
                await bob.wait_all_connected(expected=2, timeout=TIMEOUT)
                await carol.wait_connected("bob", timeout=TIMEOUT)
                await alice.wait_until(
                    lambda: alice.machine.peers["bob"].state is NegState.STABLE, TIMEOUT
                )
            assert bob.peer_connection("alice") is pc_before, "the connection was kept"
            assert seen_by_alice.left("bob") == 0, "alice never saw bob leave"
            assert sum(isinstance(e, RoomResumed) for e in seen_by_bob.events) == 1
            assert server.machine.stats.resumes == 1
            alice.send("bob", "after")
            await next_message(bob, "alice", "after")

    asyncio.run(main())


def test_without_a_resume_the_grace_ends_with_exactly_one_leave() -> None:
    async def main() -> None:
        async with (
            RelayServer(port=0, limits=Limits(resume_grace=0.5)) as server,
            proxied(server.port) as proxy,
            connect(server.url, room_id="r", user_id="alice") as alice,
            connect(proxy.url, room_id="r", user_id="bob", reconnect=False),
        ):
            seen = Recorder(alice)
            await alice.wait_connected("bob", timeout=TIMEOUT)
            proxy.cut()
            await server.wait_until(lambda: server.machine.held_count == 1, TIMEOUT)
            assert seen.left("bob") == 0
            await alice.wait_until(lambda: "bob" not in alice.peers, TIMEOUT)
            assert server.machine.stats.holds_expired == 1
            # a round trip through the relay after the expiry: still one leave
            alice.chat("barrier")
            await asyncio.wait_for(anext(aiter(alice.chats())), TIMEOUT)
            assert seen.left("bob") == 1

    asyncio.run(main())


# ------------------------------------------------------------------ restart and crash


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_peer_connections_survive_a_relay_restart_and_the_mesh_reforms(
    tmp_path: Path, how: signal.Signals
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    users = ["p0", "p1", "p2"]

    async def main() -> None:
        server, _ = start_serve(tmp_path, port=port)
        try:
            clients = {u: connect(url, room_id="r", user_id=u) for u in users}
            await asyncio.gather(*(c.start() for c in clients.values()))
            recorders = {u: Recorder(c) for u, c in clients.items()}
            await asyncio.gather(
                *(c.wait_all_connected(expected=2, timeout=TIMEOUT) for c in clients.values())
            )
            before = {(u, p): c.peer_connection(p) for u, c in clients.items() for p in c.peers}

            server.send_signal(how)
            await asyncio.to_thread(server.wait, 10)  # the loop keeps answering closes
            if how == signal.SIGTERM:
                assert server.returncode == 0
            for client in clients.values():
                await client.wait_until(resuming(client), TIMEOUT)
            # The relay is gone; the peers still talk directly.
            clients["p0"].send("p1", "while the relay is down")
            await next_message(clients["p1"], "p0", "while the relay is down")

            server, _ = start_serve(tmp_path, port=port)
            for client in clients.values():
                await client.wait_until(back_in_full(client), TIMEOUT)
                await client.wait_all_connected(expected=2, timeout=TIMEOUT)
            after = {(u, p): c.peer_connection(p) for u, c in clients.items() for p in c.peers}
            assert after == before, "every established connection was kept"
            for user, recorder in recorders.items():
                assert all(recorder.left(p) == 0 for p in users), user
            # signaling works again: a renegotiation goes through the new relay
            clients["p0"].renegotiate("p2")
            await clients["p0"].wait_until(
                lambda: clients["p0"].machine.peers["p2"].state is NegState.STABLE, TIMEOUT
            )
            clients["p2"].chat("the relay is back")
            await asyncio.wait_for(anext(aiter(clients["p1"].chats())), TIMEOUT)
            for client in clients.values():
                await client.close()
        finally:
            reap_blocking(server)

    asyncio.run(main())
