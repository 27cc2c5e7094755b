"""``sansio-signal diagnose`` on traces of real runs that fail in known ways.

Each run uses the real relay server and real aiortc peers, broken on purpose in one
place; the diagnosis must name that place.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import aioice.ice
import pytest

from sansio_signal import RelayMachine
from sansio_signal.actions import RelayAction, SendFrame
from sansio_signal.adapters.aiortc_peer import loopback_only
from sansio_signal.adapters.cli import run_diagnose
from sansio_signal.adapters.client import Client
from sansio_signal.adapters.server import RelayServer
from sansio_signal.events import RelayEvent
from sansio_signal.negotiation import NegotiationConfig, NegState
from sansio_signal.testing import counting_tokens

TIMEOUT = 20.0
# Long deadlines: the failure is diagnosed from the first attempt's trace.
PATIENT = NegotiationConfig(negotiation_timeout=60, connect_timeout=60, offer_wait=60)


@pytest.fixture(autouse=True)
def _loopback() -> Iterator[None]:
    with loopback_only():
        yield


class AnswerDroppingRelay(RelayMachine):
    """A faulty relay: it never forwards a webrtc-answer."""

    def handle(self, event: RelayEvent, now: float) -> list[RelayAction]:
        actions = super().handle(event, now)
        return [
            a for a in actions if not (isinstance(a, SendFrame) and a.frame_type == "webrtc-answer")
        ]


def diagnosis(tmp_path: Path) -> tuple[int, str]:
    out = io.StringIO()
    status = run_diagnose([str(tmp_path)], out)
    return status, out.getvalue()


def open_trace(tmp_path: Path, name: str) -> TextIO:
    return (tmp_path / f"{name}.jsonl").open("w", encoding="utf-8")


async def pair(url: str, tmp_path: Path, rooms: tuple[str, str] = ("r", "r")) -> list[Client]:
    clients = [
        Client(url, room_id=room, user_id=user, trace=open_trace(tmp_path, user), config=PATIENT)
        for user, room in zip(("alice", "bob"), rooms, strict=True)
    ]
    for client in clients:
        await client.start()
    return clients


def test_a_working_pair_is_connected(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayServer(port=0) as server:
            alice, bob = await pair(server.url, tmp_path)
            await alice.wait_connected("bob", timeout=TIMEOUT)
            await bob.wait_connected("alice", timeout=TIMEOUT)
            await alice.close()
            await bob.close()

    asyncio.run(main())
    assert diagnosis(tmp_path) == (0, "alice ↔ bob: connected\n")


def test_the_target_never_joined(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayServer(port=0) as server:
            alice, bob = await pair(server.url, tmp_path, rooms=("r", "elsewhere"))
            await alice.close()
            await bob.close()

    asyncio.run(main())
    status, text = diagnosis(tmp_path)
    assert status == 1
    assert "stopped at room: the target never joined the room" in text
    assert "alice joined ['r'], bob joined ['elsewhere']" in text


def test_an_answer_dropped_by_a_faulty_relay(tmp_path: Path) -> None:
    async def main() -> None:
        relay_trace = open_trace(tmp_path, "relay")
        machine = AnswerDroppingRelay(new_token=counting_tokens())
        async with RelayServer(port=0, machine=machine, trace=relay_trace) as server:
            alice, bob = await pair(server.url, tmp_path)
            # bob answered (he is stable on his side); alice waits for it in vain
            await bob.wait_until(
                lambda: bob.machine.peers["alice"].state is NegState.STABLE, timeout=TIMEOUT
            )
            await alice.close()
            await bob.close()
        relay_trace.close()

    asyncio.run(main())
    status, text = diagnosis(tmp_path)
    assert status == 1
    assert "stopped at answer relay: answer dropped by the relay" in text


def test_no_candidates_and_no_stun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A host with no usable address for ICE, and no STUN/TURN server configured.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [])

    async def main() -> None:
        async with RelayServer(port=0) as server:
            alice, bob = await pair(server.url, tmp_path)
            await alice.wait_until(
                lambda: alice.machine.peers["bob"].state is NegState.STABLE, timeout=TIMEOUT
            )
            await alice.close()
            await bob.close()

    asyncio.run(main())
    status, text = diagnosis(tmp_path)
    assert status == 1
    assert "stopped at candidates: no candidates from alice" in text
