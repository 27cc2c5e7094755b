"""A user's property test, built on ``sansio_signal.testing``.

Run it with ``pytest docs/examples/property_test_mesh.py``. It checks, for any seed,
room size, mix of browser-like and aiortc-like peers, and signaling loss, that every
member of the room ends up connected to every other and that the application was told
so exactly once per peer.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_signal.actions import PeerConnected, PeerJoined
from sansio_signal.negotiation import AIORTC, BROWSER
from sansio_signal.testing import SimNetwork


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    size=st.integers(min_value=2, max_value=5),
    browsers=st.integers(min_value=0, max_value=5),
    loss=st.sampled_from([0.0, 0.2]),
)
def test_everyone_meets_everyone(seed: int, size: int, browsers: int, loss: float) -> None:
    sim = SimNetwork(seed=seed, loss=loss, fault_budget=2)
    for i in range(size):
        user = f"peer{i}"
        sim.add_client(user, BROWSER if i < browsers else AIORTC)
        sim.connect(user)
        sim.join(user, "lobby")
    sim.run()

    assert sim.settled_problems() == []
    for client in sim.clients.values():
        others = set(sim.members("lobby")) - {client.user_id}
        joined = [n.peer_id for n in client.notes if isinstance(n, PeerJoined)]
        connected = [n.peer_id for n in client.notes if isinstance(n, PeerConnected)]
        assert sorted(joined) == sorted(others)
        # Lost frames may cost a fresh connection, but the application hears of the
        # first success of each connection only once.
        assert set(connected) == others
