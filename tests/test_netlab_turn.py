"""Issue 15, scenarios 2–4, in the network lab (tests/netlab.py): peers in namespaces A
and B that cannot reach each other, coturn and ``serve`` in T.

- without TURN, or with a TURN credential that is wrong or expired, the pair fails and
  ``sansio-signal diagnose`` says why from the peers' traces: no TURN server to relay,
  or the TURN server refusing the credential (wrong: not made with its secret; expired:
  when);
- a 3-peer mesh where one peer (in B) is reachable only through TURN forms completely:
  the two peers in A meet directly, each meets the third over a relay pair. Their TURN
  credentials come from ``serve --turn-url --turn-secret-file``'s ``/config.json``,
  which ``chat`` fetches by itself.

Every wait is on a line a process prints, with a timeout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from labpeers import ChatPeer, serve_in, wait_all
from netlab import SERVICE, NetLab
from record_lab_traces import ROOMS, SECRET, run_failing_rooms
from turnfix import TurnServer


def diagnose(*traces: Path) -> str:
    """What ``sansio-signal diagnose`` prints of ``traces`` (files or directories; it
    exits 1: a pair failed)."""
    done = subprocess.run(
        [sys.executable, "-m", "sansio_signal", "diagnose", *map(str, traces)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout


def test_failing_pairs_are_explained_by_diagnose(lab: NetLab, tmp_path: Path) -> None:
    """Scenarios 2 and 3, three rooms at once (tests/record_lab_traces.py, which also
    records tests/traces/lab/ this way): no ICE server at all, a TURN credential made with
    another secret, and one that expired ten minutes ago. Each pair fails (the
    initiator's first attempt runs out of its 30 s connect deadline: that dominates the
    test's time), and diagnose names the cause from the two client traces."""
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_in(lab)  # no --turn-url: its /config.json hands out no ICE server
        seen = run_failing_rooms(lab, turn, tmp_path)
    for room in ("turn-wrong-secret", "turn-expired"):
        assert any("gave no candidate: 401 Unauthorized" in line for line in seen[room])
    said = {room: diagnose(tmp_path / room) for room in ROOMS}
    for room in ROOMS:
        assert said[room].startswith("alice ↔ bob: stopped at ice: no usable candidate pair")
    assert (
        "none of the candidate pairs (alice: host; bob: host) worked, and no TURN server "
        "was configured to relay (ICE servers alice: none; bob: none)"
    ) in said["no-turn"], said["no-turn"]
    refused = f"the TURN server {turn.url} refused alice's and bob's credential (401"
    for room in ("turn-wrong-secret", "turn-expired"):
        assert refused in said[room], said[room]
    assert "not expired (valid until" in said["turn-wrong-secret"]
    assert "not made with the TURN server's secret" in said["turn-wrong-secret"]
    assert "it had expired at" in said["turn-expired"]
    assert "s before it was used" in said["turn-expired"]


def test_a_mesh_with_one_peer_reachable_only_through_turn(lab: NetLab, tmp_path: Path) -> None:
    """Scenario 4: alice and bob in A, carol in B. ``serve`` hands out fresh TURN
    credentials at /config.json (``--turn-url``, ``--turn-secret-file``) and every chat
    fetches them itself (no ``--ice-server``): alice and bob meet over a host pair, each
    of them meets carol over a relay pair, and a message crosses every pair."""
    secret_file = tmp_path / "turn-secret"
    secret_file.write_bytes(SECRET + b"\n")
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_in(lab, "T", "--turn-url", turn.url, "--turn-secret-file", str(secret_file))
        users = {"alice": "A", "bob": "A", "carol": "B"}
        peers = {user: ChatPeer(lab, ns, user) for user, ns in users.items()}
        expected = {
            frozenset(("alice", "bob")): "host",
            frozenset(("alice", "carol")): "relay",
            frozenset(("bob", "carol")): "relay",
        }
        for user, peer in peers.items():
            others = [u for u in users if u != user]
            routes: dict[str, str] = {}
            lines = wait_all(peer.err, [f"connected to {other}" for other in others], 30)
            for line in lines:
                for other in others:
                    if line.startswith(f"connection with {other} uses a "):
                        routes[other] = line.split(" uses a ", 1)[1].split()[0]
            assert routes == {o: expected[frozenset((user, o))] for o in others}, lines
        for user, peer in peers.items():
            peer.say(f"hello from {user}")
        for user, peer in peers.items():
            got = set()
            for _ in range(len(users) - 1):
                got.add(peer.wait_out("hello from", 15)[-1])
            assert got == {f"{o}: hello from {o}" for o in users if o != user}
        for peer in peers.values():
            assert peer.finish() == 0
