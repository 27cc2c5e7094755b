"""Issue 15, scenarios 5, 6 and 7: real ``sansio-signal chat`` peers, ``serve`` and coturn
in the network lab (tests/netlab.py), with faults made by nftables on a peer's link.

5. 10 % and 30 % random loss on A's link (both ways): a 3-peer mesh still forms and every
   pair's data channel carries a message, within a bound measured in the lab.
6. A's link cut (both ways, signaling included) mid-call until the pair fails, then
   restored: the pair recovers by itself and the data channel works both ways again.
7. The relay reachable only over a lossy link: join, a resume (the WebSocket killed with
   ``ss -K`` while the process lives) and negotiation all complete.

Topology: alice in A (the faulty link), bob in B, carol in T (scenario 5) or B (scenario
7); coturn and ``serve`` on T's service address. A and B meet only through TURN.

Every wait is on a line a process prints (``chat --log-level INFO``, ``serve``'s log),
bounded by a timeout (no sleeps). The bounds were measured in the lab (docs/networks.md,
"Measured in the lab") and carry headroom; each assertion names the measured figure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from labpeers import SERVE_PORT, ChatPeer, serve_in, turn_server_arg, wait_all, wait_any
from netlab import SERVICE, NetLab
from turnfix import TurnServer

from sansio_signal.turn import turn_credentials

SECRET = b"lab-turn-secret-0123456789abcdef"
LOG = ("--log-level", "INFO")


@pytest.fixture
def turn(lab: NetLab) -> Iterator[str]:
    """coturn in T; the ``--ice-server`` value with fresh credentials for it."""
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as server:
        username, credential = turn_credentials(SECRET, wall_time=time.time(), ttl=600)
        yield turn_server_arg(server.url, username, credential)


def chat(lab: NetLab, ns: str, user: str, server: str) -> ChatPeer:
    return ChatPeer(lab, ns, user, ice_servers=[server], extra=LOG)


# --------------------------------------------------------------------------- scenario 5

MESH_BOUND = {0.10: 45.0, 0.30: 150.0}
"""Seconds from starting the three chats to every pair's message delivered. Measured
(benchmarks/bench_networks.py, docs/networks.md, to the mesh formed): 10 %: median 4.5 s,
max 12.3 s (N=10); 30 %: median 21.6 s, max 50.3 s (N=10). aiortc's DTLS and SCTP
retransmission timers dominate: SCTP's starts at 3 s and doubles, and at 30 % both ways
its four-packet association setup succeeds one time in four by the odds (0.7**4), so a
rare run may take minutes (one run of scenario 7 with all of A's traffic lossy did not
open its data channel within 90 s): the bound at 30 % has that headroom."""


@pytest.mark.parametrize("loss", [0.10, 0.30], ids=["10pct", "30pct"])
def test_mesh_forms_over_a_lossy_link(lab: NetLab, turn: str, loss: float) -> None:
    """Issue 15, scenario 5: ``loss`` of the packets on A's link dropped, both ways
    (nftables ``numgen random``), signaling, TURN and media alike; alice (A), bob (B) and
    carol (T) all print ``connected to`` each other and a message goes over every pair's
    data channel, within :data:`MESH_BOUND`. Its time is aiortc's DTLS/SCTP
    retransmissions of lost handshake packets (seconds each)."""
    serve_in(lab)
    lab.drop("A", loss, both_ways=True)
    started = time.monotonic()
    peers = {user: chat(lab, ns, user, turn) for user, ns in (("alice", "A"), ("bob", "B"),
                                                               ("carol", "T"))}  # fmt: skip
    bound = MESH_BOUND[loss]
    for user, peer in peers.items():
        others = [o for o in peers if o != user]
        wait_all(peer.err, [f"connected to {o}" for o in others], bound)
    formed = time.monotonic() - started
    for user, peer in peers.items():
        peer.say(f"hello from {user}")
    for user, peer in peers.items():
        others = [o for o in peers if o != user]
        left = max(1.0, bound - (time.monotonic() - started))
        wait_all(peer.out, [f"{o}: hello from {o}" for o in others], left)
    delivered = time.monotonic() - started
    assert lab.dropped("A") > 0, "the loss dropped nothing: the test tested nothing"
    assert delivered < bound, f"mesh formed in {formed:.1f} s, messages in {delivered:.1f} s"
    for peer in peers.values():
        assert peer.finish(timeout=30) == 0


# --------------------------------------------------------------------------- scenario 6

RECOVERY_BOUND = 30.0
"""Seconds from restoring the link to messages both ways. Measured 1.3-1.4 s (pc
recreated over a surviving WebSocket) and 0.8 s (rejoin; up to ~6 s expected: the
client's reconnect back-off is at most 5 s, and its SYNs sent during the cut are
retransmitted at 1, 3, 7 s)."""


@pytest.mark.parametrize("signaling_lost", [False, True], ids=["pair-failed", "ws-lost-too"])
def test_a_cut_link_fails_the_pair_and_it_recovers_when_restored(
    lab: NetLab, turn: str, signaling_lost: bool
) -> None:
    """Issue 15, scenario 6: alice (A) and bob (B) connected through TURN; A's link cut
    both ways (signaling included) until bob's side says the pair failed (aiortc's consent
    checks give up: ``attempt 1 failed: connection closed`` ~31-33 s after the cut) or
    ended (the relay's keepalive let alice go first: ``alice left``) —
    and, with ``signaling_lost``, until alice's client also says its WebSocket to the
    relay is gone (keepalive ping timeout, at most ~40 s after the cut); then restored.
    The pair recovers by itself — the initiator recreates the peer connection (aiortc
    cannot restart ICE), or alice reconnects and joins again — and the data channel
    carries a message each way, within :data:`RECOVERY_BOUND`. The cut dominates
    the time: aiortc's consent expiry (~30 s) and the WebSocket keepalive (20 + 20 s)."""
    serve_in(lab)
    alice = chat(lab, "A", "alice", turn)
    bob = chat(lab, "B", "bob", turn)
    wait_all(alice.err, ["connected to bob"], 30)
    wait_all(bob.err, ["connected to alice"], 30)
    alice.say("before the cut")
    wait_all(bob.out, ["alice: before the cut"], 10)

    lab.cut("A", both_ways=True)
    cut = time.monotonic()
    # Whichever gives up first: aiortc's consent checks (the pair fails) or a keepalive
    # (the relay's pings time out and it lets alice go: bob closes the pair). Both race
    # at 20-40 s after the cut, by where the ping cycles stood.
    wait_any(bob.err, ["[alice] attempt 1 failed: connection closed", "alice left"], 60)
    failed_after = time.monotonic() - cut
    assert failed_after > 15, f"the pair ended {failed_after:.1f} s after the cut: not the cut"
    if signaling_lost:
        wait_all(alice.err, ["server connection lost"], 60)
    lab.restore("A")
    restored = time.monotonic()

    wait_all(alice.err, ["connected to bob"], RECOVERY_BOUND)
    wait_all(bob.err, ["connected to alice"], RECOVERY_BOUND)
    alice.say("after the cut, from alice")
    bob.say("after the cut, from bob")
    wait_all(bob.out, ["alice: after the cut, from alice"], RECOVERY_BOUND)
    wait_all(alice.out, ["bob: after the cut, from bob"], RECOVERY_BOUND)
    recovered = time.monotonic() - restored
    assert recovered < RECOVERY_BOUND, f"recovered {recovered:.1f} s after the restore"
    assert alice.finish(timeout=30) == 0
    assert bob.finish(timeout=30) == 0


# --------------------------------------------------------------------------- scenario 7

SIGNALING_LOSS = 0.30
SIGNALING_BOUND = 90.0
"""Seconds for each step (join, negotiation, resume, a later negotiation) over the lossy
signaling path. Measured at 30 % on all of A's traffic (N=7, with the earlier 10/15 s
deadlines): join median 1.8 s, max 7.0 s; negotiation median 11.6 s, max 15.4 s; resume
median 2.6 s, max 5.3 s; a later negotiation median 14.1 s, max 47.9 s (docs/networks.md).
The test drops only the signaling path's packets: TCP's retransmissions are what it is
about."""


def test_join_resume_and_negotiation_complete_over_a_lossy_signaling_link(
    lab: NetLab, turn: str
) -> None:
    """Issue 15, scenario 7: the relay reachable by alice only over a path with 30 % loss
    both ways (her TCP to the relay's port; TURN and media are scenario 5's). alice joins
    and negotiates with bob; her WebSocket is then killed (``ss -K`` in A: the kernel
    aborts the TCP connection, sending a RST, while chat lives) and she resumes (the
    relay says ``resumed``, chat says ``back in room``, the data channel carries a
    message each way) — or, when her reconnect took longer than the client's 8 s resume
    window, gives the room up, joins afresh and the pair starts over; then carol joins
    and negotiates with her. Each step within :data:`SIGNALING_BOUND`. TCP
    retransmission (200 ms doubling; SYNs at 1, 3, 7 s) dominates the time."""
    relay = serve_in(lab)
    # the signaling path only (TCP to the relay's port): the media's own retransmission
    # timers under loss are scenario 5's
    lab.drop("A", SIGNALING_LOSS, both_ways=True, tcp_port=SERVE_PORT)
    bob = chat(lab, "B", "bob", turn)
    wait_all(bob.err, ["joined room"], 15)
    alice = chat(lab, "A", "alice", turn)
    wait_all(alice.err, ["joined room room with ['bob']"], SIGNALING_BOUND)
    wait_all(alice.err, ["connected to bob"], SIGNALING_BOUND)
    wait_all(bob.err, ["connected to alice"], SIGNALING_BOUND)
    wait_all(relay, ['User "alice" joined room "room"'], 5)

    killed = lab.sh("A", "ss", "-K", "-t", "dst", SERVICE, "dport", "=", f":{SERVE_PORT}")
    assert f"{SERVICE}:{SERVE_PORT}" in killed.stdout, f"ss -K killed nothing: {killed.stdout}"
    wait_all(alice.err, ["server connection lost; keeping room room"], 10)
    # Connected again within the client's 8 s resume window: a resume (the relay says so;
    # its answer may come after the window, which a CI run once found the client giving
    # up on). Later (TCP's SYNs at 1, 3, 7 s can each be lost at 30 %): the window is given
    # up and the next join is fresh — then the relay says she joined, the pair starts over.
    back = wait_any(alice.err, ["back in room room", "room room given up"], SIGNALING_BOUND)
    if back == "back in room room":
        wait_all(relay, ['User "alice" resumed in room "room"'], 10)
    else:
        wait_all(alice.err, ["joined room room with ['bob']"], SIGNALING_BOUND)
        wait_all(relay, ['User "alice" joined room "room"'], 10)
        wait_all(alice.err, ["connected to bob"], SIGNALING_BOUND)
    bob.say("after the resume, from bob")
    wait_all(alice.out, ["bob: after the resume, from bob"], SIGNALING_BOUND)
    alice.say("after the resume, from alice")
    wait_all(bob.out, ["alice: after the resume, from alice"], SIGNALING_BOUND)

    carol = chat(lab, "B", "carol", turn)
    wait_all(alice.err, ["connected to carol"], SIGNALING_BOUND)
    wait_all(carol.err, ["connected to alice"], SIGNALING_BOUND)
    assert lab.dropped("A") > 0, "the loss dropped nothing: the test tested nothing"
    for peer in (alice, bob, carol):
        assert peer.finish(timeout=30) == 0
