"""The bounded exhaustive explorer: every ordering of deliveries, for small rooms.

With no faults, every interleaving of WebSocket deliveries (each direction of each
client in order, the directions of different clients in any order), peer-connection
operations and peer-connection notices must end with every pair connected — on messages
alone, without a single deadline firing — and no invariant may break on the way. The
state counts are printed (run with ``-s``) and asserted to be what a complete search
of these scenarios reaches, so a change that shrinks the search shows up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from sansio_signal.negotiation import AIORTC, BROWSER, Capabilities
from sansio_signal.testing import SimNetwork
from sansio_signal.testing.explore import ExploreResult, explore

ROOM = "room"


def joining(caps: Sequence[Capabilities]) -> Callable[[], SimNetwork]:
    """Everyone connects and asks to join at once; nothing has been delivered yet."""

    def make() -> SimNetwork:
        sim = SimNetwork(seed=0, candidates=1)
        for i, c in enumerate(caps):
            user = f"u{i}"
            sim.add_client(user, c)
            sim.connect(user)
            sim.join(user, ROOM)
        return sim

    return make


def rejoining(caps: Sequence[Capabilities]) -> Callable[[], SimNetwork]:
    """A settled mesh; then u1 leaves and asks to join again at once."""

    def make() -> SimNetwork:
        sim = joining(caps)()
        sim.run()
        assert sim.settled_problems() == []
        sim.leave("u1")
        sim.join("u1", ROOM)
        return sim

    return make


def check(result: ExploreResult, label: str) -> None:
    print(
        f"\n{label}: {result.states} states, {result.transitions} transitions, "
        f"{result.final_states} final states, depth {result.max_depth}"
    )
    assert result.failures == []
    assert not result.truncated
    assert result.final_states >= 1


@pytest.mark.parametrize(
    ("label", "caps", "at_least"),
    [
        ("2 aiortc peers", [AIORTC, AIORTC], 30),
        ("2 browser peers", [BROWSER, BROWSER], 900),
        ("browser + aiortc", [BROWSER, AIORTC], 150),
        ("3 aiortc peers", [AIORTC, AIORTC, AIORTC], 9_000),
    ],
)
def test_every_ordering_of_a_join_connects(
    label: str, caps: list[Capabilities], at_least: int
) -> None:
    result = explore(joining(caps), max_states=50_000)
    check(result, label)
    assert result.states >= at_least


def test_every_ordering_of_a_leave_and_rejoin_connects() -> None:
    result = explore(rejoining([AIORTC, AIORTC, AIORTC]), max_states=50_000)
    check(result, "3 aiortc peers, u1 leaves and rejoins")
    assert result.states >= 900


def test_the_explorer_reports_a_pair_that_cannot_connect() -> None:
    """With ICE between two peers broken, no ordering of messages connects them: the
    search must say so, with the moves that lead there."""

    def make() -> SimNetwork:
        sim = joining([AIORTC, AIORTC])()
        sim.block("u0", "u1")
        return sim

    result = explore(make, max_states=5_000)
    assert result.failures
    what, path = result.failures[0]
    assert what.startswith("stuck: only a deadline could move on")
    assert len(path) > 5
