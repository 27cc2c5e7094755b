"""Hypothesis stateful tests: 2–6 clients on a SimNetwork under random schedules.

Each run joins, leaves, rejoins, drops and restores WebSocket connections (clean
closes, drops that may be resumed, relay restarts), asks for
renegotiations from either side, makes ICE fail between pairs for a while, loses or
duplicates signaling frames (within a budget), and interleaves message deliveries in
orders hypothesis picks. After every step the invariants hold (the model peer
connection never raised, one initiator per pair, never two offers in flight without
rollback); at the end, with every fault lifted, the network goes quiet with every pair
of members connected at matching epochs and no state for anyone who left.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sansio_signal.client import ClientState
from sansio_signal.negotiation import AIORTC, BROWSER, NegotiationConfig
from sansio_signal.testing import SimNetwork

ROOM = "room"
CAPS = {"browser": BROWSER, "aiortc": AIORTC}
# Generous retries: a fault the test lifts later must not make a pair give up first
# (giving up after max_retries is tested in the scripted negotiation tests).
CONFIG = NegotiationConfig(max_retries=100, backoff_max=1.0)


class Mesh(RuleBasedStateMachine):
    """A room of simulated clients and the faults that can hit it."""

    sim: SimNetwork
    users: list[str]

    @initialize(
        size=st.integers(min_value=2, max_value=6),
        mode=st.sampled_from(["browser", "aiortc", "mixed"]),
        seed=st.integers(min_value=0, max_value=2**32),
        loss=st.sampled_from([0.0, 0.0, 0.1, 0.3]),
        duplication=st.sampled_from([0.0, 0.1]),
    )
    def start(self, size: int, mode: str, seed: int, loss: float, duplication: float) -> None:
        self.sim = SimNetwork(
            seed=seed, loss=loss, duplication=duplication, fault_budget=4, config=CONFIG
        )
        self.users = [f"user{i}" for i in range(size)]
        for i, user in enumerate(self.users):
            caps = CAPS[mode] if mode != "mixed" else (BROWSER if i % 2 else AIORTC)
            self.sim.add_client(user, caps)
            self.sim.connect(user)
            self.sim.join(user, ROOM)

    def _user(self, index: int) -> str:
        return self.users[index % len(self.users)]

    @rule(steps=st.integers(min_value=1, max_value=40))
    def run_in_time_order(self, steps: int) -> None:
        for _ in range(steps):
            if not self.sim.step():
                break

    @rule(choices=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=30))
    def deliver_in_chosen_order(self, choices: list[int]) -> None:
        for choice in choices:
            moves = self.sim.moves()
            if not moves:
                break
            self.sim.take(moves[choice % len(moves)])

    @rule(index=st.integers(min_value=0, max_value=5))
    def leave(self, index: int) -> None:
        self.sim.leave(self._user(index))

    @rule(index=st.integers(min_value=0, max_value=5))
    def join(self, index: int) -> None:
        user = self._user(index)
        if self.sim.clients[user].machine.room_id is None:
            self.sim.join(user, ROOM)

    @rule(index=st.integers(min_value=0, max_value=5), clean=st.booleans())
    def drop_connection(self, index: int, clean: bool) -> None:
        self.sim.disconnect(self._user(index), clean=clean)

    @rule()
    def restart_relay(self) -> None:
        self.sim.restart_relay()

    @rule(index=st.integers(min_value=0, max_value=5))
    def restore_connection(self, index: int) -> None:
        user = self._user(index)
        if self.sim.clients[user].conn is None:
            self.sim.connect(user)

    @rule(a=st.integers(min_value=0, max_value=5), b=st.integers(min_value=0, max_value=5))
    def renegotiate(self, a: int, b: int) -> None:
        self.sim.renegotiate(self._user(a), self._user(b))

    @rule(a=st.integers(min_value=0, max_value=5), b=st.integers(min_value=0, max_value=5))
    def break_ice(self, a: int, b: int) -> None:
        if self._user(a) != self._user(b):
            self.sim.block(self._user(a), self._user(b))

    @precondition(lambda self: bool(self.sim.blocked))
    @rule()
    def mend_ice(self) -> None:
        for pair in list(self.sim.blocked):
            self.sim.unblock(*sorted(pair))

    @invariant()
    def nothing_illegal_ever(self) -> None:
        assert self.sim.problems() == []

    def teardown(self) -> None:
        if not hasattr(self, "sim"):
            return
        for pair in list(self.sim.blocked):
            self.sim.unblock(*sorted(pair))
        self.sim.run(max_steps=200_000)
        assert self.sim.settled_problems() == []
        members = set(self.sim.members(ROOM))
        joined = {u for u, c in self.sim.clients.items() if c.machine.state is ClientState.JOINED}
        assert members == joined


Mesh.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_mesh = Mesh.TestCase
