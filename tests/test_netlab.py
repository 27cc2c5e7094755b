"""The network lab (tests/netlab.py) does what issue 15's scenarios need of it: A and B
reach T and not each other, nftables drops a share of packets or all of them and lets
them pass again, coturn inside T answers both peers, and no namespace outlives a test.

Every wait is on an answer, bounded by a timeout (no sleeps).
"""

from __future__ import annotations

import secrets
import socket
import struct
import time

import pytest
from labpeers import ChatPeer, serve_in, turn_server_arg
from netlab import ADDRESSES, LINKS, SERVICE, NetLab, namespaces, require_netns
from turnfix import TurnServer, _stun_answers

from sansio_signal.turn import turn_credentials

SECRET = b"lab-turn-secret-0123456789abcdef"


def reaches(lab: NetLab, src: str, dst: str, address: str, timeout: float = 1.0) -> bool:
    """Whether a UDP datagram from ``src`` gets to ``address`` (a socket in ``dst``) and
    its echo gets back."""
    with lab.socket(dst) as server, lab.socket(src) as client:
        server.bind((address, 0))
        server.settimeout(timeout)
        client.settimeout(timeout)
        probe = secrets.token_bytes(8)
        try:
            client.sendto(probe, (address, server.getsockname()[1]))
            data, sender = server.recvfrom(64)
            server.sendto(data, sender)
            return client.recv(64) == probe
        except OSError:  # a timeout, or no route
            return False


def test_a_and_b_reach_t_and_not_each_other(lab: NetLab) -> None:
    for peer in ("A", "B"):
        assert reaches(lab, peer, "T", SERVICE), f"{peer} does not reach T's service address"
        assert reaches(lab, peer, "T", LINKS[peer][1]), f"{peer} does not reach its gateway"
    # both route 10.77.0.0/16 via T, and T does not forward
    assert not reaches(lab, "A", "B", ADDRESSES["B"], timeout=0.5)
    assert not reaches(lab, "B", "A", ADDRESSES["A"], timeout=0.5)
    # nothing outside the lab: no default route in a peer namespace
    for peer in ("A", "B", "T"):
        assert "default" not in lab.sh(peer, "ip", "route").stdout


def test_a_cut_link_is_cut_until_restored(lab: NetLab) -> None:
    assert reaches(lab, "A", "T", SERVICE)
    lab.cut("A")
    assert not reaches(lab, "A", "T", SERVICE, timeout=0.5)
    assert reaches(lab, "B", "T", SERVICE), "a cut in A must not cut B"
    lab.restore("A")
    assert reaches(lab, "A", "T", SERVICE)
    lab.restore("A")  # idempotent


def test_a_30_percent_drop_loses_about_that_share() -> None:
    require_netns()
    with NetLab() as lab:
        assert reaches(lab, "A", "T", SERVICE)  # the neighbour entries are resolved
        lab.drop("A", 0.30)
        count = 200
        with lab.socket("A") as receiver, lab.socket("T") as sender:
            receiver.bind((ADDRESSES["A"], 0))
            receiver.settimeout(1.0)
            port = receiver.getsockname()[1]
            for seq in range(count):
                sender.sendto(struct.pack("!I", seq), (ADDRESSES["A"], port))
            seen: set[int] = set()
            while len(seen) < count:
                try:
                    seen.add(struct.unpack("!I", receiver.recv(64))[0])
                except TimeoutError:  # a second with nothing more: the rest were dropped
                    break
        lost = count - len(seen)
        # binomial(200, 0.3): mean 60, sd 6.5; the bound is about ±4.5 sd
        assert 30 <= lost <= 90, f"lost {lost} of {count} with a 30 % drop"
        assert lab.dropped("A") >= lost
        lab.restore("A")
        assert reaches(lab, "A", "T", SERVICE)
        prefix = lab.prefix
    assert not {n for n in namespaces() if n.startswith(prefix)}


def test_coturn_in_t_answers_a_and_b(lab: NetLab) -> None:
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as server:
        assert server.url == f"turn:{SERVICE}:3478"
        for peer in ("A", "B"):
            assert _stun_answers(server.port, timeout=1.0, host=SERVICE, netns=lab.ns[peer])
        lab.cut("B")
        assert not _stun_answers(server.port, timeout=0.3, host=SERVICE, netns=lab.ns["B"])
        assert _stun_answers(server.port, timeout=1.0, host=SERVICE, netns=lab.ns["A"])


def test_namespaces_are_deleted_when_the_test_fails() -> None:
    require_netns()
    with pytest.raises(RuntimeError, match="boom"), NetLab() as lab:
        proc = lab.run_in("T", ["sleep", "60"])
        raise RuntimeError("boom")
    assert proc.poll() is not None, "the lab's process outlived it"
    assert not {n for n in namespaces() if n.startswith(lab.prefix)}


def test_socket_in_a_namespace_is_not_on_the_host() -> None:
    require_netns()
    with NetLab() as lab, lab.socket("A") as s:
        s.bind((ADDRESSES["A"], 0))  # the address exists in A only
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host, pytest.raises(OSError):
        host.bind((ADDRESSES["A"], 0))


def test_chat_peers_in_a_and_b_meet_only_through_turn_in_t(lab: NetLab) -> None:
    """Issue 15, scenario 1: two ``sansio-signal chat`` peers in namespaces that cannot
    reach each other, TURN credentials from ``turn_credentials`` for the coturn in T,
    ``serve`` in T: they connect over a relay pair (as each peer connection reports it),
    a message goes through, and packets reached coturn's relay ports."""
    lab.sh("T", "nft", "add", "table", "inet", "count")
    lab.sh("T", "nft", "add chain inet count input { type filter hook input priority 0; }")
    # packets arriving at a relay port: peer data an allocation relays (coturn's ports)
    lab.sh("T", "nft", "add rule inet count input udp dport 49152-65000 counter")
    with TurnServer(SECRET, host=SERVICE, netns=lab.ns["T"]) as turn:
        serve_in(lab)
        started = time.monotonic()
        username, credential = turn_credentials(SECRET, wall_time=time.time(), ttl=600)
        server = turn_server_arg(turn.url, username, credential)
        alice = ChatPeer(lab, "A", "alice", ice_servers=[server])
        bob = ChatPeer(lab, "B", "bob", ice_servers=[server])
        for peer, other in ((alice, "bob"), (bob, "alice")):
            seen = peer.wait_err(f"connected to {other}", 30)
            routes = [line for line in seen if f"connection with {other} uses" in line]
            assert routes, f"no candidate pair reported: {seen}"
            assert f"connection with {other} uses a relay pair (" in routes[-1]
        connected = time.monotonic() - started
        alice.say("hello through the relay")
        assert bob.wait_out("alice:", 15)[-1] == "alice: hello through the relay"
        assert alice.finish() == 0
        assert bob.finish() == 0
    counted = lab.sh("T", "nft", "list", "table", "inet", "count").stdout.split()
    relayed = int(counted[counted.index("packets") + 1])
    assert relayed > 0, "no packet reached a TURN allocation's relay port"
    assert connected < 30
