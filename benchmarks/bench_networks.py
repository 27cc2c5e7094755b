"""Real networks, measured in the network lab (tests/netlab.py; root only).

coturn and ``sansio-signal serve`` in namespace T; ``sansio-signal chat`` peers (aiortc)
in A and B, which reach T but not each other; TURN credentials fresh for each run. Three
measurements, each run ``--repeat`` times, reported as median and max:

- **connect**: two peers, *direct* (both in A: a host pair) against *via TURN* (A and B:
  a relay pair), both with the TURN server configured. Timed from the second peer's
  join being answered (its ``joined room`` line) to both printing ``connected to`` (the
  data channel open at both ends), and from starting the second process (Python
  start-up included).
- **mesh under loss**: alice (A), bob (B), carol (T); nftables drops a share of the
  packets on A's link both ways (signaling, TURN and media alike). Timed from starting
  the three processes until every peer printed ``connected to`` both others; a run that
  does not form within ``--give-up`` seconds counts as failed.
- **recovery after a cut**: alice (A) and bob (B) connected through TURN; A's link cut
  both ways until the pair fails (bob's ``attempt 1 failed``: aiortc's consent checks
  give up) or ends (``alice left``: the relay's keepalive gave up on her first), then
  restored; timed from the restore until both print ``connected to`` again and a
  message crosses.

Run as root: ``python benchmarks/bench_networks.py [--repeat 10] [--cuts 3] [--json]``.
The figures are in benchmarks/README.md and docs/networks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from labpeers import ChatPeer, serve_in, turn_server_arg, wait_all, wait_any
from netlab import SERVICE, NetLab, netns_unavailable
from turnfix import TurnServer

from sansio_signal.turn import turn_credentials

SECRET = b"bench-turn-secret-0123456789abcd"
_ids = itertools.count()


@contextmanager
def lab_with_turn() -> Iterator[tuple[NetLab, Callable[[], str]]]:
    """A lab with coturn and serve in T; yields it and a maker of fresh ``--ice-server``
    values for the TURN server."""
    with NetLab() as lab, TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_in(lab)

        def server() -> str:
            return turn_server_arg(
                turn.url, *turn_credentials(SECRET, wall_time=time.time(), ttl=600)
            )

        yield lab, server


def finish(*peers: ChatPeer) -> None:
    for peer in peers:
        if peer.proc.stdin is not None and not peer.proc.stdin.closed:
            peer.proc.stdin.close()
    for peer in peers:
        try:
            peer.proc.wait(timeout=30)
        except Exception:
            peer.proc.kill()
            peer.proc.wait()


def connect_once(lab: NetLab, server: str, where: tuple[str, str]) -> tuple[float, float, str]:
    """One pair: (seconds from the second join, from its process start, pair type)."""
    n = next(_ids)
    room, first, second = f"c{n}", f"a{n}", f"b{n}"
    one = ChatPeer(lab, where[0], first, room=room, ice_servers=[server])
    wait_all(one.err, ["joined room"], 30)
    started = time.monotonic()
    two = ChatPeer(lab, where[1], second, room=room, ice_servers=[server])
    try:
        wait_all(two.err, ["joined room"], 30)
        joined = time.monotonic()
        seen = wait_all(two.err, [f"connected to {first}"], 60)
        wait_all(one.err, [f"connected to {second}"], 60)
        done = time.monotonic()
    finally:
        finish(one, two)
    kind = next(
        (line.split(" uses a ", 1)[1].split()[0] for line in seen if " uses a " in line), "?"
    )
    return done - joined, done - started, kind


def mesh_once(lab: NetLab, server: str, loss: float, give_up: float) -> float | None:
    """Three peers with ``loss`` on A's link: seconds to the full mesh, or None."""
    n = next(_ids)
    users = {f"alice{n}": "A", f"bob{n}": "B", f"carol{n}": "T"}
    lab.drop("A", loss, both_ways=True)
    started = time.monotonic()
    peers = {u: ChatPeer(lab, ns, u, room=f"m{n}", ice_servers=[server]) for u, ns in users.items()}
    try:
        for user, peer in peers.items():
            left = give_up - (time.monotonic() - started)
            wait_all(peer.err, [f"connected to {o}" for o in users if o != user], max(0.1, left))
        return time.monotonic() - started
    except BaseException as exc:  # pytest.fail's Failed: not formed in time
        if type(exc).__name__ != "Failed":
            raise
        return None
    finally:
        lab.restore("A")
        finish(*peers.values())


def cut_once(lab: NetLab, server: str) -> tuple[float, float, str]:
    """(seconds from the cut to the pair failing, from the restore to messages again,
    which gave up first: ``consent`` or ``keepalive``)."""
    n = next(_ids)
    alice = ChatPeer(lab, "A", f"alice{n}", room=f"x{n}", ice_servers=[server],
                     extra=["--log-level", "INFO"])  # fmt: skip
    bob = ChatPeer(lab, "B", f"bob{n}", room=f"x{n}", ice_servers=[server],
                   extra=["--log-level", "INFO"])  # fmt: skip
    try:
        wait_all(alice.err, [f"connected to bob{n}"], 30)
        wait_all(bob.err, [f"connected to alice{n}"], 30)
        lab.cut("A", both_ways=True)
        cut = time.monotonic()
        # the pair fails (consent checks) or ends (the relay's keepalive lets alice go)
        first = wait_any(bob.err, [f"[alice{n}] attempt 1 failed", f"alice{n} left"], 90)
        failed = time.monotonic()
        lab.restore("A")
        wait_all(alice.err, [f"connected to bob{n}"], 90)
        wait_all(bob.err, [f"connected to alice{n}"], 90)
        alice.say("back")
        wait_all(bob.out, [f"alice{n}: back"], 30)
        path = "keepalive" if first.endswith(" left") else "consent"
        return failed - cut, time.monotonic() - failed, path
    finally:
        lab.restore("A")
        finish(alice, bob)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2) if values else None,
        "max": round(max(values), 2) if values else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--cuts", type=int, default=3, help="runs of the cut (each ~40 s)")
    parser.add_argument("--losses", type=float, nargs="*", default=[0.0, 0.10, 0.30])
    parser.add_argument("--give-up", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason is not None:
        print(f"bench_networks: {reason}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with lab_with_turn() as (lab, server):
        for name, where in (("direct", ("A", "A")), ("turn", ("A", "B"))) if args.repeat else ():
            runs = [connect_once(lab, server(), where) for _ in range(args.repeat)]
            result[f"connect_{name}"] = {
                "from_join": summary([r[0] for r in runs]),
                "from_start": summary([r[1] for r in runs]),
                "pair_types": sorted({r[2] for r in runs}),
            }
        for loss in args.losses:
            times = [mesh_once(lab, server(), loss, args.give_up) for _ in range(args.repeat)]
            formed = [t for t in times if t is not None]
            result[f"mesh_{round(loss * 100)}pct"] = {
                **summary(formed),
                "failed": len(times) - len(formed),
            }
        cuts = [cut_once(lab, server()) for _ in range(args.cuts)]
        result["cut"] = {
            "to_failure": summary([c[0] for c in cuts]),
            "recovery": summary([c[1] for c in cuts]),
            "first_to_give_up": [c[2] for c in cuts],
        }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"bench_networks, {result['date']}")
    for name in ("direct", "turn") if args.repeat else ():
        r = result[f"connect_{name}"]
        print(
            f"connect {name:6} ({'/'.join(r['pair_types'])} pair): from join median "
            f"{r['from_join']['median']} s, max {r['from_join']['max']} s; from start median "
            f"{r['from_start']['median']} s (N={r['from_join']['n']})"
        )
    for loss in args.losses:
        r = result[f"mesh_{round(loss * 100)}pct"]
        print(
            f"mesh, {loss:.0%} loss on A: median {r['median']} s, max {r['max']} s "
            f"(N={r['n']}, {r['failed']} not formed within {args.give_up:g} s)"
        )
    c = result["cut"]
    print(
        f"cut: failed {c['to_failure']['median']} s after the cut (max "
        f"{c['to_failure']['max']}); recovered {c['recovery']['median']} s after the restore "
        f"(max {c['recovery']['max']}, N={c['recovery']['n']}); first to give up: "
        f"{', '.join(c['first_to_give_up'])}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
