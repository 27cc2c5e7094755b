"""Record the network lab's failing-pair traces into tests/traces/lab/ (root only).

Three rooms at once, as ``test_netlab_turn.py::test_failing_pairs_are_explained_by_diagnose``
runs them: two ``sansio-signal chat`` peers in namespaces A and B that cannot reach each
other, coturn and ``serve`` in T, and no ICE server (``no-turn``), a TURN credential made
with another secret (``turn-wrong-secret``), or one that expired ten minutes ago
(``turn-expired``). Each peer's ``--trace`` is kept; tests/test_diagnose.py checks what
``diagnose`` says of them, and that docs/networks.md shows it, without root.

    python tests/record_lab_traces.py        # rewrite tests/traces/lab/*/
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from labpeers import ChatPeer, serve_in, turn_server_arg
from netlab import SERVICE, NetLab
from turnfix import TurnServer

from sansio_signal.turn import turn_credentials

SECRET = b"lab-turn-secret-0123456789abcdef"
OUT = Path(__file__).resolve().parent / "traces" / "lab"


ROOMS = ("no-turn", "turn-wrong-secret", "turn-expired")


def run_failing_rooms(lab: NetLab, turn: TurnServer, traces: Path) -> dict[str, list[str]]:
    """The three rooms at once, each pair until the initiator's first attempt runs out
    (its 30 s connect deadline), then ended; ``traces/ROOM/USER.jsonl`` are their traces.
    Returns each initiator's stderr lines up to its failure."""
    now = time.time()
    other = b"not-the-lab-secret-0000000000000"
    servers = {
        "no-turn": [],
        "turn-wrong-secret": [
            turn_server_arg(turn.url, *turn_credentials(other, wall_time=now, ttl=600))
        ],
        "turn-expired": [
            turn_server_arg(turn.url, *turn_credentials(SECRET, wall_time=now - 1200, ttl=600))
        ],
    }
    peers: dict[str, list[ChatPeer]] = {}
    for room in ROOMS:
        (traces / room).mkdir(parents=True, exist_ok=True)
        peers[room] = []
        for ns, user in (("A", "alice"), ("B", "bob")):
            trace = ["--trace", str(traces / room / f"{user}.jsonl"), "--log-level", "INFO"]
            peers[room].append(
                ChatPeer(lab, ns, user, room=room, ice_servers=servers[room], extra=trace)
            )
    seen = {room: pair[0].wait_err("[bob] attempt 1 failed", 60) for room, pair in peers.items()}
    for pair in peers.values():
        for peer in pair:
            assert peer.finish() == 0
    return seen


def main() -> int:
    with NetLab() as lab, TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_in(lab)
        with tempfile.TemporaryDirectory() as scratch:
            run_failing_rooms(lab, turn, Path(scratch))
            for room in ROOMS:
                (OUT / room).mkdir(parents=True, exist_ok=True)
                for user in ("alice", "bob"):
                    name = f"{user}.jsonl"
                    (OUT / room / name).write_bytes((Path(scratch) / room / name).read_bytes())
                print(f"wrote {OUT / room}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
