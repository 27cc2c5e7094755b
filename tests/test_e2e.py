"""End to end: the real relay server and real aiortc peers on loopback.

Every wait is on a condition with a timeout (``wait_all_connected``, a message, a
frame); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import connect as ws_connect
from wsutil import connected_pair, reap, run

from sansio_signal import Limits, Link
from sansio_signal.adapters.client import Client, ClientError, connect
from sansio_signal.adapters.server import RelayServer

TIMEOUT = 20.0


pytestmark = pytest.mark.usefixtures("loopback")


async def next_message(client: Client) -> tuple[str, str]:
    async def first() -> tuple[str, str]:
        async for message in client.messages():
            return message.from_user_id, message.text
        raise AssertionError("no message")

    return await asyncio.wait_for(first(), TIMEOUT)


def forgot(client: Client, peer_id: str) -> Callable[[], bool]:
    return lambda: peer_id not in client.peers


def test_two_peers_talk_over_the_data_channel_and_the_chat() -> None:
    async def scenario(server: RelayServer) -> None:
        async with connected_pair(server.url, timeout=TIMEOUT) as (alice, bob):
            assert alice.machine.peers["bob"].link is Link.CONNECTED
            # alice is the lower id: she offered; each side used one frame for it
            assert (alice.peers["bob"].frames_sent, bob.peers["alice"].frames_sent) == (1, 1)
            alice.send("bob", "hi bob")
            assert await next_message(bob) == ("alice", "hi bob")
            bob.send("alice", "hi alice")
            assert await next_message(alice) == ("bob", "hi alice")
            pc = alice.peer_connection("bob")
            assert pc is not None and pc.connectionState == "connected"

            bob.chat("over the server")
            for client in (alice, bob):
                chat = await asyncio.wait_for(anext(aiter(client.chats())), TIMEOUT)
                assert (chat.from_user_id, chat.text) == ("bob", "over the server")

    run(scenario)


def test_a_mesh_of_four_and_a_member_who_leaves_and_comes_back() -> None:
    async def scenario(server: RelayServer) -> None:
        users = ["p0", "p1", "p2", "p3"]
        clients = {u: connect(server.url, room_id="mesh", user_id=u) for u in users}
        await asyncio.gather(*(c.start() for c in clients.values()))
        await asyncio.gather(
            *(c.wait_all_connected(expected=3, timeout=TIMEOUT) for c in clients.values())
        )
        assert clients["p0"].broadcast("from p0") == ["p1", "p2", "p3"]
        for u in ("p1", "p2", "p3"):
            assert await next_message(clients[u]) == ("p0", "from p0")

        # p2 leaves: the others close their connection with it; nothing is left over.
        old_pc = clients["p0"].peer_connection("p2")
        await clients["p2"].close()
        for u in ("p0", "p1", "p3"):
            await clients[u].wait_until(forgot(clients[u], "p2"), timeout=TIMEOUT)
        # p2 comes back with a fresh client: a fresh connection (new handle) forms.
        clients["p2"] = connect(server.url, room_id="mesh", user_id="p2")
        await clients["p2"].start()
        await asyncio.gather(
            *(c.wait_all_connected(expected=3, timeout=TIMEOUT) for c in clients.values())
        )
        assert clients["p0"].peer_connection("p2") is not old_pc
        clients["p2"].send("p0", "back")
        assert await next_message(clients["p0"]) == ("p2", "back")
        await asyncio.gather(*(c.close() for c in clients.values()))

    run(scenario)


def test_a_refused_join_raises() -> None:
    async def scenario(server: RelayServer) -> None:
        async with connect(server.url, room_id="demo", user_id="alice"):
            with pytest.raises(ClientError) as info:
                async with connect(server.url, room_id="demo", user_id="alice", reconnect=False):
                    pass
            assert info.value.code == "user-id-taken"

    run(scenario)


def test_demo_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sansio_signal",
            "demo",
            "--peers",
            "4",
            "--json",
            "--trace",
            str(tmp_path / "traces"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["peers"], summary["pairs"], summary["pairs_connected"]) == (4, 6, 6)
    assert summary["ok"] is True and 0 < summary["mesh_seconds"] < 30
    traces = sorted(p.name for p in (tmp_path / "traces").iterdir())
    assert traces == ["peer0.jsonl", "peer1.jsonl", "peer2.jsonl", "peer3.jsonl", "relay.jsonl"]
    records = [json.loads(line) for line in (tmp_path / "traces" / "peer0.jsonl").open()]
    assert any(r["kind"] == "PeerConnected" for r in records)


def test_a_mesh_of_eight() -> None:
    async def scenario(server: RelayServer) -> None:
        clients = [connect(server.url, room_id="eight", user_id=f"n{i}") for i in range(8)]
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.gather(*(c.wait_all_connected(expected=7, timeout=TIMEOUT) for c in clients))
        everyone = {f"n{i}" for i in range(8)}
        for client in clients:
            assert set(client.connected_peers()) == everyone - {client.user_id}
        await asyncio.gather(*(c.close() for c in clients))

    run(scenario)


def test_a_broken_peer_connection_is_replaced_with_a_new_epoch() -> None:
    """Close alice's RTCPeerConnection behind the machines' backs: both sides see it
    fail, the initiator makes a fresh one at the next epoch, and the channel works."""

    async def scenario(server: RelayServer) -> None:
        async with connected_pair(server.url, timeout=TIMEOUT) as (alice, bob):
            broken = alice.peer_connection("bob")
            assert broken is not None and alice.machine.peers["bob"].epoch == 0
            await broken.close()
            await alice.wait_until(lambda: alice.machine.peers["bob"].epoch == 1, timeout=TIMEOUT)
            await alice.wait_connected("bob", timeout=TIMEOUT)
            await bob.wait_until(lambda: bob.machine.peers["alice"].epoch == 1, timeout=TIMEOUT)
            await bob.wait_connected("alice", timeout=TIMEOUT)
            assert alice.peer_connection("bob") is not broken
            alice.send("bob", "after the repair")
            assert await next_message(bob) == ("alice", "after the repair")

    run(scenario)


def test_a_killed_peer_process_is_noticed_and_cleaned_up(tmp_path: Path) -> None:
    async def scenario(server: RelayServer) -> None:
        async with connect(server.url, room_id="demo", user_id="alice") as alice:
            victim = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sansio_signal",
                "chat",
                server.url,
                "--room",
                "demo",
                "--user",
                "zed",
                "--loopback-only",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=tmp_path,
            )
            try:
                await alice.wait_connected("zed", timeout=TIMEOUT)
                victim.kill()  # SIGKILL: no close frame, no goodbye
                await victim.wait()
                # The relay sees the socket drop, holds zed's place for its resume grace
                # (0.5 s here) and then tells alice (aiortc itself would only notice
                # after ~30 s of failed consent checks).
                await alice.wait_until(forgot(alice, "zed"), timeout=TIMEOUT)
                assert alice.peer_connection("zed") is None
                assert alice.machine.peers == {}
            finally:
                await reap(victim)

    run(scenario, limits=Limits(resume_grace=0.5))


def test_early_trickled_candidates_are_buffered_not_lost() -> None:
    """A trickling initiator (like a browser) sends its offer without candidates and
    the candidates right behind it. They reach bob while his aiortc connection is still
    applying the offer — aiortc would drop them; the machine holds them and adds them
    right after. The connection can only form if none was lost: the offer has none."""

    async def scenario(server: RelayServer) -> None:
        records: list[dict[str, Any]] = []
        bob = Client(server.url, room_id="r", user_id="bob", trace=_ListTrace(records))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            channel = pc.createDataChannel("chat")
            await pc.setLocalDescription(await pc.createOffer())
            lines = pc.localDescription.sdp.splitlines()
            mid = next(line[6:] for line in lines if line.startswith("a=mid:"))
            candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
            assert candidates
            bare = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of"))]
            async with ws_connect(server.url) as alice:
                await alice.send(
                    json.dumps(
                        {
                            "channel": "webrtc-dashboard-rooms",
                            "type": "join-room",
                            "roomId": "r",
                            "userId": "alice",
                        }
                    )
                )
                await asyncio.wait_for(alice.recv(), TIMEOUT)  # our own join
                await bob.start()
                await asyncio.wait_for(alice.recv(), TIMEOUT)  # bob joined
                frames: list[dict[str, Any]] = [
                    {
                        "type": "webrtc-offer",
                        "offer": {"type": "offer", "sdp": "\r\n".join(bare) + "\r\n"},
                    }
                ]
                frames += [
                    {
                        "type": "webrtc-ice",
                        "candidate": {"candidate": c, "sdpMid": mid, "sdpMLineIndex": 0},
                    }
                    for c in candidates
                ]
                frames.append({"type": "webrtc-ice", "candidate": None})
                for frame in frames:
                    await alice.send(
                        json.dumps(
                            {"channel": "webrtc-signaling", "toUserId": "bob", "epoch": 0, **frame}
                        )
                    )
                answer = json.loads(await asyncio.wait_for(alice.recv(), TIMEOUT))
                assert answer["type"] == "webrtc-answer"
                await pc.setRemoteDescription(RTCSessionDescription(**answer["answer"]))
                await bob.wait_connected("alice", timeout=TIMEOUT)
                channel.send("through trickled candidates")
                assert await next_message(bob) == ("alice", "through trickled candidates")
        finally:
            await pc.close()
            await bob.close()
        kinds = [(r["dir"], r["kind"]) for r in records]
        applied = kinds.index(("in", "RemoteDescriptionApplied"))
        added = [n for n, k in enumerate(kinds) if k == ("out", "AddIceCandidate")]
        received = [
            n
            for n, r in enumerate(records)
            if r["kind"] == "ServerFrameReceived" and '"webrtc-ice"' in r["text"]
        ]
        assert len(added) == len(candidates) + 1  # every candidate, and the end
        assert max(received) < applied < min(added)  # all arrived early, all added after

    run(scenario)


class _ListTrace(io.StringIO):
    """A trace file that keeps the records (the client writes JSON lines)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        super().__init__()
        self.records = records

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.records.append(json.loads(line))
        return len(text)


def test_the_client_reconnects_and_rejoins_after_the_server_restarts() -> None:
    async def main() -> None:
        first = RelayServer(port=0)
        await first.start()
        port = first.port
        async with connect(first.url, room_id="r", user_id="alice") as alice:
            await first.stop()  # every client gets 1001; alice keeps trying
            await alice.wait_until(lambda: alice.machine.state.value == "offline", TIMEOUT)
            async with RelayServer(port=port) as second:
                await alice.wait_until(lambda: alice.machine.state.value == "joined", TIMEOUT)
                assert second.machine.directory.members("r") == ["alice"]
                async with connect(second.url, room_id="r", user_id="bob") as bob:
                    await alice.wait_connected("bob", timeout=TIMEOUT)
                    bob.send("alice", "after the restart")
                    assert await next_message(alice) == ("bob", "after the restart")

    asyncio.run(asyncio.wait_for(main(), 60))
