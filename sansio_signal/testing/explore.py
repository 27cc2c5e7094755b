"""A bounded exhaustive explorer of message orderings on a :class:`~.sim.SimNetwork`.

Starting from a network that a caller builds, :func:`explore` tries *every* order in
which the enabled queue heads can happen (deliveries on each WebSocket direction,
peer-connection operations, peer-connection notices), remembering states it has seen
(:meth:`~.sim.SimNetwork.fingerprint`) so that each distinct state is expanded once.

No deadline ever fires: in a run without faults every pair must connect on messages
alone, so a state where nothing can happen but a timer is reported as *stuck*, and a
final state where some pair is not connected (or state is left for a departed member)
is reported as a *deadlock*. Invariants (:meth:`~.sim.SimNetwork.problems`) are checked
in every state.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import attrs

from .sim import Move, SimNetwork


@attrs.define
class ExploreResult:
    """What an exploration found."""

    states: int = 0
    """Distinct states expanded."""
    transitions: int = 0
    """Moves taken (including those that led to an already seen state)."""
    final_states: int = 0
    """Distinct quiet states reached (each checked to be fully connected)."""
    max_depth: int = 0
    failures: list[tuple[str, tuple[Move, ...]]] = attrs.field(factory=list)
    """``(what went wrong, the moves that lead there)``, at most ``max_failures``."""
    truncated: bool = False
    """True when ``max_states`` stopped the search before it was complete."""


def explore(
    make: Callable[[], SimNetwork],
    *,
    max_states: int = 100_000,
    max_failures: int = 5,
    check: Callable[[SimNetwork], list[str]] = SimNetwork.problems,
    settled: Callable[[SimNetwork], list[str]] = SimNetwork.settled_problems,
) -> ExploreResult:
    """Explore every ordering reachable from ``make()``. See the module docstring."""
    result = ExploreResult()
    root = make()
    seen = {root.fingerprint()}
    stack: list[tuple[SimNetwork, tuple[Move, ...]]] = [(root, ())]
    while stack:
        if result.states >= max_states:
            result.truncated = True
            break
        sim, path = stack.pop()
        result.states += 1
        result.max_depth = max(result.max_depth, len(path))
        problems = check(sim)
        if problems:
            result.failures.append(("; ".join(problems), path))
        else:
            moves = sim.moves()
            if not moves:
                if sim.quiet():
                    result.final_states += 1
                    problems = settled(sim)
                    if problems:
                        result.failures.append(("deadlock: " + "; ".join(problems), path))
                else:
                    result.failures.append(("stuck: only a deadline could move on", path))
            # A pickle round trip copies the network several times faster than deepcopy.
            snapshot = pickle.dumps(sim, pickle.HIGHEST_PROTOCOL)
            for move in moves:
                child: SimNetwork = pickle.loads(snapshot)
                child.take(move)
                result.transitions += 1
                fingerprint = child.fingerprint()
                if fingerprint not in seen:
                    seen.add(fingerprint)
                    stack.append((child, (*path, move)))
        if len(result.failures) >= max_failures:
            break
    return result
