# mypy: no-strict-equality
# (machines change state inside method calls; strict equality would narrow across them)
"""PeerNegotiation, transition by transition: inputs in, actions out, read as scripts.

``alice`` < ``bob``, so a negotiation built as ``alice`` (``initiator()``) makes the
offers and one built as ``bob`` (``polite()``) is the polite side. Clocks are plain
numbers; jitter is always 0, so a back-off is exactly half its nominal value.
The last tests check that the scripts above reach every ``(state, input)`` pair of
``TRANSITIONS``, and that every other pair is refused with the right error.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from sansio_signal.actions import (
    AddIceCandidate,
    ClientAction,
    ClosePeer,
    CreateAnswer,
    CreateOffer,
    CreatePeer,
    Log,
    PeerConnected,
    PeerConnecting,
    PeerFailed,
    ReadSelectedPair,
    RollbackLocalDescription,
    SendToServer,
    SetRemoteDescription,
)
from sansio_signal.errors import LocalProtocolError, RemoteProtocolError, SignalError
from sansio_signal.negotiation import (
    AIORTC,
    BROWSER,
    DIAGRAMS,
    MAX_BUFFERED_CANDIDATES,
    NO_CAPABILITIES,
    TRANSITIONS,
    Capabilities,
    Deadline,
    Input,
    Link,
    NegotiationConfig,
    NegState,
    PeerNegotiation,
    Role,
    _layout,
    _moves,
    diagram,
    initiator_of,
)
from sansio_signal.wire import (
    Answer,
    Ice,
    IceCandidate,
    JSONValue,
    Offer,
    Renegotiate,
    SessionDescription,
    to_json,
)

ALICE, BOB, ROOM = "alice", "bob", "demo"
CONFIG = NegotiationConfig(
    negotiation_timeout=10.0,
    connect_timeout=15.0,
    offer_wait=5.0,
    disconnected_grace=3.0,
    backoff_base=1.0,
    backoff_max=8.0,
    max_retries=2,
)
LOCAL_OFFER = SessionDescription(type="offer", sdp="local-offer")
LOCAL_ANSWER = SessionDescription(type="answer", sdp="local-answer")
S = NegState
WITH_PC = (  # the states that have a peer connection
    S.MAKING_OFFER,
    S.HAVE_LOCAL_OFFER,
    S.APPLYING_ANSWER,
    S.APPLYING_OFFER,
    S.MAKING_ANSWER,
    S.STABLE,
)
ALIVE = (S.IDLE, *WITH_PC, S.WAITING, S.FAILED)  # every state but CLOSED
ANSWERING = (S.APPLYING_OFFER, S.MAKING_ANSWER)

# ----------------------------------------------------------------------- helpers


def negotiation(
    our_id: str, peer_id: str, caps: Capabilities = AIORTC, config: NegotiationConfig = CONFIG
) -> PeerNegotiation:
    return PeerNegotiation(
        our_id=our_id,
        peer_id=peer_id,
        capabilities=caps,
        config=config,
        new_pc=itertools.count(1).__next__,
        jitter=lambda: 0.0,
        session=f"{our_id}.s1",
    )


def initiator(caps: Capabilities = AIORTC, config: NegotiationConfig = CONFIG) -> PeerNegotiation:
    """We are alice, talking to bob: we offer."""
    return negotiation(ALICE, BOB, caps, config)


def polite(caps: Capabilities = AIORTC, config: NegotiationConfig = CONFIG) -> PeerNegotiation:
    """We are bob, talking to alice: we answer."""
    return negotiation(BOB, ALICE, caps, config)


def cand(n: int) -> IceCandidate:
    return IceCandidate(
        candidate=f"candidate:{n} 1 udp 2122260223 10.0.0.{n} 5000{n} typ host",
        sdp_mid="0",
        sdp_mline_index=0,
    )


def _fields(
    neg: PeerNegotiation, epoch: int | None, caps: Capabilities | None, **extra: JSONValue
) -> dict[str, JSONValue]:
    fields = dict(extra)
    fields["epoch"] = neg.epoch if epoch is None else epoch
    if caps is not None:
        fields["caps"] = caps.to_wire()
    return fields


def offer(
    neg: PeerNegotiation,
    sdp: str = "their-offer",
    *,
    epoch: int | None = None,
    caps: Capabilities | None = None,
) -> Offer:
    """The peer's offer to ``neg``, as the server delivers it (epoch: ``neg``'s own)."""
    return Offer(
        to_user_id=neg.our_id,
        fields=_fields(neg, epoch, caps, offer={"type": "offer", "sdp": sdp}),
        from_user_id=neg.peer_id,
        room_id=ROOM,
    )


def answer(
    neg: PeerNegotiation,
    sdp: str = "their-answer",
    *,
    epoch: int | None = None,
    caps: Capabilities | None = None,
) -> Answer:
    return Answer(
        to_user_id=neg.our_id,
        fields=_fields(neg, epoch, caps, answer={"type": "answer", "sdp": sdp}),
        from_user_id=neg.peer_id,
        room_id=ROOM,
    )


def ice(neg: PeerNegotiation, candidate: IceCandidate | None, *, epoch: int | None = None) -> Ice:
    wire = None if candidate is None else candidate.to_json()
    return Ice(
        to_user_id=neg.our_id,
        fields=_fields(neg, epoch, None, candidate=wire),
        from_user_id=neg.peer_id,
        room_id=ROOM,
    )


def renegotiate(
    neg: PeerNegotiation, reason: str | None = None, *, epoch: int | None = None
) -> Renegotiate:
    extra: dict[str, JSONValue] = {} if reason is None else {"reason": reason}
    return Renegotiate(
        to_user_id=neg.our_id,
        fields=_fields(neg, epoch, None, **extra),
        from_user_id=neg.peer_id,
        room_id=ROOM,
    )


def their_desc(kind: str, sdp: str) -> SessionDescription:
    return SessionDescription(type=kind, sdp=sdp)


def ops(actions: list[ClientAction]) -> list[ClientAction]:
    """Everything but log records, which are free text."""
    return [a for a in actions if not isinstance(a, Log)]


def logs(actions: list[ClientAction]) -> str:
    return "\n".join(a.text() for a in actions if isinstance(a, Log))


def frames(actions: list[ClientAction]) -> list[dict[str, Any]]:
    """The frames sent to the server, as wire objects, without the session fields
    (``sid`` is always ours; ``rsid`` appears only once the peer named its session,
    which the frames of these scripts never do)."""
    out = []
    for action in actions:
        if isinstance(action, SendToServer):
            frame = to_json(action.message)
            assert frame.pop("sid") in (f"{ALICE}.s1", f"{BOB}.s1")
            assert "rsid" not in frame
            out.append(frame)
    return out


def ice_frame(to: str, candidate: IceCandidate | None, epoch: int = 0) -> dict[str, Any]:
    return {
        "channel": "webrtc-signaling",
        "type": "webrtc-ice",
        "toUserId": to,
        "candidate": None if candidate is None else candidate.to_json(),
        "epoch": epoch,
    }


def renegotiate_frame(to: str, reason: str, epoch: int = 0) -> dict[str, Any]:
    return {
        "channel": "webrtc-signaling",
        "type": "webrtc-renegotiate",
        "toUserId": to,
        "reason": reason,
        "epoch": epoch,
    }


def deadline(neg: PeerNegotiation) -> tuple[float | None, str | None]:
    return neg.deadline, neg.deadline_kind


# Machines brought to a state by real inputs ----------------------------------------


def offering(neg: PeerNegotiation, now: float = 0.0) -> PeerNegotiation:
    """Initiator: started and offer sent (HAVE_LOCAL_OFFER)."""
    neg.start(now)
    neg.on_local_description(LOCAL_OFFER, now)
    assert neg.state is S.HAVE_LOCAL_OFFER
    return neg


def stable_initiator(
    caps: Capabilities = AIORTC,
    their_caps: Capabilities | None = None,
    config: NegotiationConfig = CONFIG,
) -> PeerNegotiation:
    """Offer sent at t=0, answer (with ``their_caps``) applied at t=2."""
    neg = offering(initiator(caps, config))
    neg.on_signal(answer(neg, caps=their_caps), 1.0)
    neg.on_remote_applied(2.0)
    assert neg.state is S.STABLE
    return neg


def stable_polite(
    caps: Capabilities = AIORTC,
    their_caps: Capabilities | None = None,
    config: NegotiationConfig = CONFIG,
) -> PeerNegotiation:
    """Offer (with ``their_caps``) received at t=1, answer sent at t=2."""
    neg = polite(caps, config)
    neg.start(0.0)
    neg.on_signal(offer(neg, caps=their_caps), 1.0)
    neg.on_remote_applied(1.5)
    neg.on_local_description(LOCAL_ANSWER, 2.0)
    assert neg.state is S.STABLE
    return neg


def exhausted_initiator() -> PeerNegotiation:
    """Three failed attempts with max_retries=2: given up (FAILED) at epoch 2."""
    neg = initiator()
    neg.start(0.0)
    for _ in range(CONFIG.max_retries):
        neg.on_operation_failed("CreateOffer", "boom", 0.0)
        assert neg.state is S.WAITING and neg.deadline is not None
        neg.on_timer(neg.deadline)
    neg.on_operation_failed("CreateOffer", "boom", 10.0)
    assert neg.state is S.FAILED
    return neg


def exhausted_polite() -> PeerNegotiation:
    """No offer ever came: given up after the offer-wait retries."""
    neg = polite()
    neg.start(0.0)
    while neg.state is not S.FAILED:
        assert neg.deadline is not None
        neg.on_timer(neg.deadline)
    return neg


def reach(state: NegState, role: Role) -> PeerNegotiation:
    """A negotiation in ``state`` on the ``role`` side, reached by real inputs (BROWSER
    capabilities on both sides where only a polite offer leads there)."""
    ini = role is Role.INITIATOR
    if state is S.IDLE:
        neg = initiator() if ini else polite()
        if not ini:
            neg.start(0.0)
    elif state is S.STABLE:
        neg = stable_initiator(BROWSER, BROWSER) if ini else stable_polite(BROWSER, BROWSER)
    elif state is S.WAITING:
        assert ini, "only the initiator waits"
        neg = stable_initiator()
        neg.on_connection_state("failed", 3.0)
    elif state is S.FAILED:
        neg = exhausted_initiator() if ini else exhausted_polite()
    elif state is S.CLOSED:
        neg = stable_initiator() if ini else stable_polite()
        neg.close(3.0)
    elif (state in (S.MAKING_OFFER, S.HAVE_LOCAL_OFFER, S.APPLYING_ANSWER)) == ini:
        # the side's natural first exchange: the initiator offers, the polite answers
        neg = initiator(BROWSER) if ini else polite(BROWSER)
        neg.start(0.0)
        steps: list[Callable[[PeerNegotiation], object]] = (
            [
                lambda n: n.on_local_description(LOCAL_OFFER, 0.1),
                lambda n: n.on_signal(answer(n, caps=BROWSER), 0.2),
            ]
            if ini
            else [
                lambda n: n.on_signal(offer(n, caps=BROWSER), 0.1),
                lambda n: n.on_remote_applied(0.2),
            ]
        )
        for step in steps:
            if neg.state is state:
                break
            step(neg)
    else:
        # the other side's offer (initiator) or our own (polite, with rollback)
        neg = reach(S.STABLE, role)
        if ini:
            neg.on_signal(offer(neg, "polite-offer"), 3.0)
            if state is S.MAKING_ANSWER:
                neg.on_remote_applied(3.1)
        else:
            neg.request_renegotiation(3.0)
            if state is not S.MAKING_OFFER:
                neg.on_local_description(LOCAL_OFFER, 3.1)
            if state is S.APPLYING_ANSWER:
                neg.on_signal(answer(neg, "answer-2"), 3.2)
    assert neg.state is state, (state, role, neg.state)
    return neg


def roles_reaching(state: NegState) -> list[Role]:
    return [Role.INITIATOR] if state is S.WAITING else [Role.INITIATOR, Role.POLITE]


# ----------------------------------------------------------------------- basics


def test_initiator_rule_is_plain_string_comparison() -> None:
    assert initiator_of("alice", "bob") == "alice"
    assert initiator_of("bob", "alice") == "alice"
    assert initiator_of("Zed", "alice") == "Zed"  # code points: uppercase sorts first
    assert initiator_of("user_10", "user_9") == "user_10"  # not numeric
    assert initiator().role is Role.INITIATOR and initiator().is_initiator
    assert polite().role is Role.POLITE and not polite().is_initiator


def test_a_negotiation_with_ourselves_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="ourselves"):
        negotiation(ALICE, ALICE)


def test_capabilities_on_the_wire() -> None:
    assert BROWSER.to_wire() == ["rollback", "ice-restart", "trickle"]
    assert AIORTC.to_wire() == []
    assert Capabilities.from_wire(["trickle", "ice-restart", "rollback"]) == BROWSER
    assert Capabilities.from_wire(["ice-restart", "teleport"]) == Capabilities(
        rollback=False, ice_restart=True, trickle=False
    )
    assert Capabilities.from_wire("rollback") == NO_CAPABILITIES
    assert Capabilities.from_wire(None) == NO_CAPABILITIES


def test_backoff_doubles_up_to_the_cap_and_jitters_down_to_half() -> None:
    cfg = NegotiationConfig(backoff_base=0.25, backoff_max=8.0)
    assert [cfg.backoff(n, 0.0) for n in (1, 2, 3)] == [0.125, 0.25, 0.5]
    assert cfg.backoff(100, 0.0) == 4.0
    assert cfg.backoff(1, 0.999999) == pytest.approx(0.25, rel=1e-5)
    assert cfg.backoff(0, 0.0) == 0.125


# ----------------------------------------------------------------------- first exchange


def test_initiator_start_creates_the_peer_and_offers() -> None:
    neg = initiator()
    assert ops(neg.start(0.0)) == [
        CreatePeer(peer_id=BOB, pc=1, initiator=True),
        PeerConnecting(peer_id=BOB, epoch=0),
        CreateOffer(peer_id=BOB, pc=1, ice_restart=False),
    ]
    assert neg.state is S.MAKING_OFFER
    assert neg.pc == 1
    assert deadline(neg) == (10.0, "negotiation")


def test_polite_start_waits_for_an_offer() -> None:
    neg = polite()
    actions = neg.start(0.0)
    assert ops(actions) == []
    assert logs(actions) == "[alice] WAITING for WebRTC KEY from: alice"
    assert neg.state is S.IDLE
    assert neg.pc is None
    assert deadline(neg) == (5.0, "offer-wait")


@pytest.mark.parametrize("caps", [AIORTC, BROWSER])
def test_local_offer_is_sent_with_epoch_and_caps(caps: Capabilities) -> None:
    neg = initiator(caps)
    neg.start(0.0)
    out = neg.on_local_description(LOCAL_OFFER, 1.0)
    assert len(ops(out)) == 1
    assert logs(out) == f"[{BOB}] Sending offer to: {BOB}"
    assert frames(out) == [
        {
            "channel": "webrtc-signaling",
            "type": "webrtc-offer",
            "toUserId": BOB,
            "offer": {"type": "offer", "sdp": "local-offer"},
            "caps": caps.to_wire(),
            "seq": 1,
            "epoch": 0,
        }
    ]
    assert neg.state is S.HAVE_LOCAL_OFFER
    assert deadline(neg) == (10.0, "negotiation")  # still running from the start


def test_answer_applied_flushes_buffered_candidates_in_order_then_stable() -> None:
    neg = offering(initiator())
    assert neg.on_signal(ice(neg, cand(1)), 0.5) == []  # no remote description yet
    assert neg.on_signal(ice(neg, cand(2)), 0.6) == []
    assert ops(neg.on_signal(answer(neg), 1.0)) == [
        SetRemoteDescription(peer_id=BOB, pc=1, description=their_desc("answer", "their-answer"))
    ]
    assert neg.state is S.APPLYING_ANSWER
    assert neg.on_signal(ice(neg, cand(3)), 1.5) == []  # SetRemoteDescription in flight
    assert neg.on_remote_applied(2.0) == [
        AddIceCandidate(peer_id=BOB, pc=1, candidate=cand(1)),
        AddIceCandidate(peer_id=BOB, pc=1, candidate=cand(2)),
        AddIceCandidate(peer_id=BOB, pc=1, candidate=cand(3)),
    ]
    assert neg.state is S.STABLE
    assert deadline(neg) == (17.0, "connect")
    assert neg.on_signal(ice(neg, cand(4)), 3.0) == [
        AddIceCandidate(peer_id=BOB, pc=1, candidate=cand(4))
    ]


def test_polite_offer_then_answer_then_stable() -> None:
    neg = polite()
    neg.start(0.0)
    assert ops(neg.on_signal(offer(neg, "offer-1"), 1.0)) == [
        CreatePeer(peer_id=ALICE, pc=1, initiator=False),
        PeerConnecting(peer_id=ALICE, epoch=0),
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("offer", "offer-1")),
    ]
    assert neg.state is S.APPLYING_OFFER
    assert deadline(neg) == (11.0, "negotiation")
    assert neg.on_remote_applied(1.5) == [CreateAnswer(peer_id=ALICE, pc=1)]
    assert neg.state is S.MAKING_ANSWER
    out = neg.on_local_description(LOCAL_ANSWER, 2.0)
    assert frames(out) == [
        {
            "channel": "webrtc-signaling",
            "type": "webrtc-answer",
            "toUserId": ALICE,
            "answer": {"type": "answer", "sdp": "local-answer"},
            "caps": [],
            "epoch": 0,
        }
    ]
    assert len(ops(out)) == 1
    assert neg.state is S.STABLE
    assert deadline(neg) == (17.0, "connect")


def test_an_offer_without_epoch_counts_as_epoch_0() -> None:
    neg = polite()
    neg.start(0.0)
    bare = Offer(
        to_user_id=BOB,
        fields={"offer": {"type": "offer", "sdp": "o"}},
        from_user_id=ALICE,
        room_id=ROOM,
    )
    assert SetRemoteDescription(
        peer_id=ALICE, pc=1, description=their_desc("offer", "o")
    ) in neg.on_signal(bare, 1.0)
    assert neg.epoch == 0
    assert neg.remote_capabilities == NO_CAPABILITIES  # no caps field: "cannot"


def test_polite_buffers_early_candidates_until_the_offer_is_applied() -> None:
    neg = polite()
    neg.start(0.0)
    assert neg.on_signal(ice(neg, cand(1)), 0.5) == []  # not even a connection yet
    neg.on_signal(offer(neg), 1.0)
    assert neg.on_signal(ice(neg, cand(2)), 1.1) == []  # SetRemoteDescription in flight
    assert neg.on_remote_applied(1.5) == [
        AddIceCandidate(peer_id=ALICE, pc=1, candidate=cand(1)),
        AddIceCandidate(peer_id=ALICE, pc=1, candidate=cand(2)),
        CreateAnswer(peer_id=ALICE, pc=1),
    ]
    # once the remote description is in place, candidates go straight through
    assert neg.on_signal(ice(neg, cand(3)), 1.6) == [
        AddIceCandidate(peer_id=ALICE, pc=1, candidate=cand(3))
    ]


def test_remote_candidate_buffer_is_bounded() -> None:
    neg = polite()
    neg.start(0.0)
    for n in range(MAX_BUFFERED_CANDIDATES + 2):
        neg.on_signal(ice(neg, IceCandidate(candidate=f"candidate:{n}")), 0.1)
    neg.on_signal(offer(neg), 1.0)
    out = neg.on_remote_applied(1.5)
    added = [a.candidate for a in out if isinstance(a, AddIceCandidate)]
    assert len(added) == MAX_BUFFERED_CANDIDATES
    assert added[0] == IceCandidate(candidate="candidate:2")  # the oldest were dropped
    assert added[-1] == IceCandidate(candidate=f"candidate:{MAX_BUFFERED_CANDIDATES + 1}")


def test_initiator_holds_local_candidates_until_the_offer_is_sent() -> None:
    neg = initiator(BROWSER)
    neg.start(0.0)
    assert neg.on_candidate_gathered(cand(1), 0.1) == []
    assert neg.on_candidate_gathered(cand(2), 0.2) == []
    out = neg.on_local_description(LOCAL_OFFER, 0.3)
    assert [f["type"] for f in frames(out)] == ["webrtc-offer", "webrtc-ice", "webrtc-ice"]
    assert frames(out)[1:] == [ice_frame(BOB, cand(1)), ice_frame(BOB, cand(2))]
    # after the offer: straight out, end-of-candidates as null
    assert frames(neg.on_candidate_gathered(cand(3), 0.4)) == [ice_frame(BOB, cand(3))]
    assert frames(neg.on_candidate_gathered(None, 0.5)) == [ice_frame(BOB, None)]


def test_polite_holds_local_candidates_until_the_answer_is_sent() -> None:
    neg = polite(BROWSER)
    neg.start(0.0)
    neg.on_signal(offer(neg), 1.0)
    assert neg.on_candidate_gathered(cand(1), 1.1) == []  # APPLYING_OFFER
    neg.on_remote_applied(1.2)
    assert neg.on_candidate_gathered(cand(2), 1.3) == []  # MAKING_ANSWER
    out = neg.on_local_description(LOCAL_ANSWER, 1.4)
    assert [f["type"] for f in frames(out)] == ["webrtc-answer", "webrtc-ice", "webrtc-ice"]
    assert frames(out)[1:] == [ice_frame(ALICE, cand(1)), ice_frame(ALICE, cand(2))]
    assert frames(neg.on_candidate_gathered(None, 1.5)) == [ice_frame(ALICE, None)]


@pytest.mark.parametrize("end", [None, IceCandidate(candidate="", sdp_mid="0")])
def test_a_candidate_after_end_of_candidates_is_dropped(end: IceCandidate | None) -> None:
    neg = stable_initiator()
    assert neg.on_signal(ice(neg, cand(1)), 3.0) == [
        AddIceCandidate(peer_id=BOB, pc=1, candidate=cand(1))
    ]
    assert neg.on_signal(ice(neg, end), 3.1) == [AddIceCandidate(peer_id=BOB, pc=1, candidate=end)]
    out = neg.on_signal(ice(neg, cand(2)), 3.2)
    assert ops(out) == []
    assert "after end-of-candidates" in logs(out)


def test_end_of_candidates_inside_the_buffer_cuts_the_flush() -> None:
    neg = offering(initiator())
    for c in (cand(1), None, cand(2)):
        neg.on_signal(ice(neg, c), 0.5)
    neg.on_signal(answer(neg), 1.0)
    out = neg.on_remote_applied(2.0)
    assert ops(out) == [
        AddIceCandidate(peer_id=BOB, pc=1, candidate=cand(1)),
        AddIceCandidate(peer_id=BOB, pc=1, candidate=None),
    ]
    assert "after end-of-candidates" in logs(out)


# ----------------------------------------------------------------------- epochs


def test_stale_epoch_frames_are_dropped() -> None:
    neg = stable_initiator()
    neg.on_connection_state("failed", 3.0)
    neg.on_timer(3.5)  # a fresh connection, epoch 1
    neg.on_local_description(LOCAL_OFFER, 3.6)
    assert (neg.epoch, neg.pc, neg.state) == (1, 2, S.HAVE_LOCAL_OFFER)
    for stale in (
        answer(neg, epoch=0),
        ice(neg, cand(1), epoch=0),
        renegotiate(neg, "failed", epoch=0),
        offer(neg, epoch=0),
    ):
        out = neg.on_signal(stale, 4.0)
        assert ops(out) == []
        assert "stale" in logs(out)
    assert (neg.epoch, neg.pc, neg.state) == (1, 2, S.HAVE_LOCAL_OFFER)
    # the current epoch's answer goes through
    assert ops(neg.on_signal(answer(neg, epoch=1), 4.1)) == [
        SetRemoteDescription(peer_id=BOB, pc=2, description=their_desc("answer", "their-answer"))
    ]


def test_future_epoch_non_offers_are_dropped() -> None:
    neg = offering(initiator())
    for future in (answer(neg, epoch=3), ice(neg, cand(1), epoch=3), renegotiate(neg, epoch=3)):
        out = neg.on_signal(future, 1.0)
        assert ops(out) == []
        assert "future epoch" in logs(out)
    assert (neg.epoch, neg.state) == (0, S.HAVE_LOCAL_OFFER)


def test_newer_epoch_offer_makes_the_polite_side_start_over() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(offer(neg, "offer-1"), 1.0)
    neg.on_signal(ice(neg, cand(1)), 1.1)  # buffered for the epoch-0 connection
    out = neg.on_signal(offer(neg, "offer-2", epoch=1), 2.0)
    assert ops(out) == [
        ClosePeer(peer_id=ALICE, pc=1),
        CreatePeer(peer_id=ALICE, pc=2, initiator=False),
        PeerConnecting(peer_id=ALICE, epoch=1),
        SetRemoteDescription(peer_id=ALICE, pc=2, description=their_desc("offer", "offer-2")),
    ]
    assert "following the initiator to epoch 1" in logs(out)
    assert (neg.epoch, neg.pc, neg.state) == (1, 2, S.APPLYING_OFFER)
    # the old epoch's candidate is not applied to the new connection
    assert neg.on_remote_applied(2.5) == [CreateAnswer(peer_id=ALICE, pc=2)]
    out = neg.on_local_description(LOCAL_ANSWER, 3.0)
    assert frames(out)[0]["epoch"] == 1


def test_newer_epoch_offer_from_stable() -> None:
    neg = stable_polite()
    out = neg.on_signal(offer(neg, "offer-2", epoch=4), 5.0)
    assert ops(out)[:2] == [
        ClosePeer(peer_id=ALICE, pc=1),
        CreatePeer(peer_id=ALICE, pc=2, initiator=False),
    ]
    assert (neg.epoch, neg.state, neg.link) == (4, S.APPLYING_OFFER, Link.NEW)


def test_initiator_refuses_an_offer_ahead_of_its_epoch() -> None:
    neg = stable_initiator()
    with pytest.raises(RemoteProtocolError, match="epoch 1"):
        neg.on_signal(offer(neg, epoch=1), 3.0)
    assert (neg.epoch, neg.state, neg.pc) == (0, S.STABLE, 1)


# ----------------------------------------------------------------------- glare


def test_glare_initiator_ignores_the_polite_offer() -> None:
    for make_offer in (False, True):
        neg = initiator(BROWSER)
        neg.start(0.0)
        if make_offer:
            neg.on_local_description(LOCAL_OFFER, 0.1)
        state = neg.state
        out = neg.on_signal(offer(neg, "polite-offer", caps=BROWSER), 0.2)
        assert ops(out) == []
        assert "glare" in logs(out)
        assert (neg.state, neg.pc) == (state, 1)
    # our offer goes on as if nothing happened
    assert ops(neg.on_signal(answer(neg), 0.3)) == [
        SetRemoteDescription(peer_id=BOB, pc=1, description=their_desc("answer", "their-answer"))
    ]


def test_glare_polite_rolls_back_a_sent_offer_and_reoffers_later() -> None:
    neg = stable_polite(BROWSER, BROWSER)
    assert ops(neg.request_renegotiation(3.0)) == [CreateOffer(peer_id=ALICE, pc=1)]
    assert neg.state is S.MAKING_OFFER
    assert deadline(neg) == (13.0, "negotiation")
    out = neg.on_local_description(LOCAL_OFFER, 3.1)
    assert [(f["type"], f["caps"]) for f in frames(out)] == [("webrtc-offer", BROWSER.to_wire())]
    # offers cross: the initiator's arrives while ours is out
    out = neg.on_signal(offer(neg, "offer-2", caps=BROWSER), 3.2)
    assert ops(out) == [
        RollbackLocalDescription(peer_id=ALICE, pc=1),
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("offer", "offer-2")),
    ]
    assert "rolling back" in logs(out)
    assert neg.state is S.APPLYING_OFFER
    assert neg.on_remote_applied(3.3) == [CreateAnswer(peer_id=ALICE, pc=1)]
    out = neg.on_local_description(LOCAL_ANSWER, 3.4)
    # the answer goes out, then our own change is offered again
    assert [f["type"] for f in frames(out)] == ["webrtc-answer"]
    assert ops(out)[1:] == [CreateOffer(peer_id=ALICE, pc=1)]
    assert neg.state is S.MAKING_OFFER


def test_glare_polite_rolls_back_while_making_the_offer_and_ignores_its_result() -> None:
    neg = stable_polite(BROWSER, BROWSER)
    neg.request_renegotiation(3.0)
    assert neg.on_candidate_gathered(cand(9), 3.05) == []  # held for our offer
    out = neg.on_signal(offer(neg, "offer-2"), 3.1)
    assert ops(out) == [
        RollbackLocalDescription(peer_id=ALICE, pc=1),
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("offer", "offer-2")),
    ]
    # the adapter ran our CreateOffer before the rollback: its result no longer matters
    assert neg.on_local_description(LOCAL_OFFER, 3.2) == []
    assert neg.state is S.APPLYING_OFFER
    assert neg.on_remote_applied(3.3) == [CreateAnswer(peer_id=ALICE, pc=1)]
    out = neg.on_local_description(LOCAL_ANSWER, 3.4)
    assert [f["type"] for f in frames(out)] == ["webrtc-answer"]  # no offer, no held cand
    assert CreateOffer(peer_id=ALICE, pc=1) in out


def test_glare_the_abandoned_offer_failing_is_not_a_failure() -> None:
    neg = stable_polite(BROWSER, BROWSER)
    neg.request_renegotiation(3.0)
    neg.on_signal(offer(neg, "offer-2"), 3.1)
    assert neg.on_operation_failed("CreateOffer", "rolled back", 3.2) == []
    assert (neg.state, neg.attempts, neg.pc) == (S.APPLYING_OFFER, 0, 1)
    # a second failure is real
    out = neg.on_operation_failed("SetRemoteDescription", "bad sdp", 3.3)
    assert neg.attempts == 1
    assert ClosePeer(peer_id=ALICE, pc=1) in out


def test_a_local_description_nobody_asked_for_is_our_bug() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(offer(neg), 1.0)
    with pytest.raises(LocalProtocolError, match=r"local-description.*applying-offer"):
        neg.on_local_description(LOCAL_OFFER, 1.1)


# ----------------------------------------------------------------------- renegotiation


def test_polite_without_rollback_asks_instead_of_offering() -> None:
    neg = stable_polite()
    out = neg.request_renegotiation(3.0)
    assert frames(out) == [renegotiate_frame(ALICE, "renegotiate")]
    assert len(ops(out)) == 1  # no CreateOffer
    assert neg.state is S.STABLE


def test_polite_without_rollback_asks_once_its_answer_is_out() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(offer(neg), 1.0)
    assert neg.request_renegotiation(1.1) == []  # APPLYING_OFFER: put off
    neg.on_remote_applied(1.2)
    out = neg.on_local_description(LOCAL_ANSWER, 1.3)
    assert [f["type"] for f in frames(out)] == ["webrtc-answer", "webrtc-renegotiate"]
    assert frames(out)[1]["reason"] == "renegotiate"


def test_polite_with_rollback_offers_itself() -> None:
    neg = stable_polite(BROWSER, BROWSER)
    assert ops(neg.request_renegotiation(3.0)) == [CreateOffer(peer_id=ALICE, pc=1)]
    neg.on_local_description(LOCAL_OFFER, 3.1)
    # the initiator answers our offer
    assert ops(neg.on_signal(answer(neg, "answer-2"), 3.2)) == [
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("answer", "answer-2"))
    ]
    assert neg.on_remote_applied(3.3) == []
    assert neg.state is S.STABLE


def test_initiator_offers_again_on_renegotiate_in_stable() -> None:
    for reason in (None, "renegotiate"):
        neg = stable_initiator()
        out = neg.on_signal(renegotiate(neg, reason), 3.0)
        assert ops(out) == [CreateOffer(peer_id=BOB, pc=1, ice_restart=False)]  # same pc
        assert (neg.state, neg.epoch) == (S.MAKING_OFFER, 0)
        assert deadline(neg) == (13.0, "negotiation")
        out = neg.on_local_description(SessionDescription(type="offer", sdp="offer-2"), 3.1)
        assert frames(out)[0]["offer"]["sdp"] == "offer-2"


def test_initiator_answers_a_polite_offer_in_stable() -> None:
    neg = stable_initiator(BROWSER, BROWSER)
    assert ops(neg.on_signal(offer(neg, "polite-offer"), 3.0)) == [
        SetRemoteDescription(peer_id=BOB, pc=1, description=their_desc("offer", "polite-offer"))
    ]
    assert neg.on_remote_applied(3.1) == [CreateAnswer(peer_id=BOB, pc=1)]
    out = neg.on_local_description(LOCAL_ANSWER, 3.2)
    assert frames(out)[0]["type"] == "webrtc-answer"
    assert neg.state is S.STABLE


def test_initiator_defers_renegotiate_during_a_negotiation() -> None:
    for state in (S.MAKING_OFFER, S.HAVE_LOCAL_OFFER, S.APPLYING_ANSWER):
        neg = reach(state, Role.INITIATOR)
        assert neg.on_signal(renegotiate(neg, "renegotiate"), 1.0) == []
        assert neg.pending_renegotiation
        assert neg.state is state
    # the deferred offer follows the stable state, on the same connection
    neg = offering(initiator())
    neg.on_signal(renegotiate(neg), 0.5)
    neg.on_signal(answer(neg), 1.0)
    assert ops(neg.on_remote_applied(2.0)) == [CreateOffer(peer_id=BOB, pc=1, ice_restart=False)]
    assert not neg.pending_renegotiation
    assert neg.state is S.MAKING_OFFER


def test_initiator_defers_renegotiate_while_answering() -> None:
    for state in (S.APPLYING_OFFER, S.MAKING_ANSWER):
        neg = reach(state, Role.INITIATOR)
        assert neg.on_signal(renegotiate(neg), 3.5) == []
        assert neg.pending_renegotiation
    out = neg.on_local_description(LOCAL_ANSWER, 4.0)
    assert [f["type"] for f in frames(out)] == ["webrtc-answer"]
    assert CreateOffer(peer_id=BOB, pc=1) in out


def test_a_failure_report_during_a_negotiation_is_answered_by_it() -> None:
    neg = offering(initiator())
    assert neg.on_signal(renegotiate(neg, "failed"), 0.5) == []
    assert not neg.pending_renegotiation
    assert neg.attempts == 0


def test_a_no_offer_request_crossing_our_offer_is_answered_by_it() -> None:
    """On a slow link the polite side's request for an offer (after its offer wait) can
    cross the offer on its way: that offer answers it, with no second exchange after
    (which on aiortc would renegotiate a connection still being set up). Any other
    request waits for the exchange to end."""
    for state in (S.MAKING_OFFER, S.HAVE_LOCAL_OFFER):
        neg = initiator()
        neg.start(0.0)
        if state is S.HAVE_LOCAL_OFFER:
            neg.on_local_description(LOCAL_OFFER, 0.2)
        assert neg.state is state
        assert neg.on_signal(renegotiate(neg, "no-offer"), 5.5) == []
        assert not neg.pending_renegotiation, state
        assert neg.attempts == 0
        assert neg.on_signal(renegotiate(neg, "renegotiate"), 5.6) == []
        assert neg.pending_renegotiation, state


def test_no_offer_request_crossing_our_offer_while_connected_is_ignored() -> None:
    neg = stable_initiator()
    neg.on_connection_state("connected", 3.0)
    assert neg.on_signal(renegotiate(neg, "no-offer"), 3.1) == []
    assert neg.state is S.STABLE
    # not connected: the offer is made again
    neg = stable_initiator()
    assert ops(neg.on_signal(renegotiate(neg, "no-offer"), 3.1)) == [
        CreateOffer(peer_id=BOB, pc=1, ice_restart=False)
    ]


def test_initiator_renegotiation_requests_from_the_application() -> None:
    neg = stable_initiator()
    assert ops(neg.request_renegotiation(3.0)) == [CreateOffer(peer_id=BOB, pc=1)]
    assert neg.request_renegotiation(3.1) == []  # in flight: put off
    assert neg.pending_renegotiation
    neg.on_local_description(LOCAL_OFFER, 3.2)
    neg.on_signal(answer(neg), 3.3)
    assert ops(neg.on_remote_applied(3.4)) == [CreateOffer(peer_id=BOB, pc=1)]


def test_renegotiation_requests_are_deferred_in_every_negotiating_state() -> None:
    for state in (S.IDLE, S.MAKING_OFFER, S.HAVE_LOCAL_OFFER, S.APPLYING_ANSWER, *ANSWERING):
        for role in roles_reaching(state):
            neg = reach(state, role)
            assert neg.request_renegotiation(5.0) == [], (state, role)
            assert neg.pending_renegotiation
            assert neg.state is state


def test_renegotiation_requests_while_waiting_for_a_fresh_connection_are_moot() -> None:
    neg = reach(S.WAITING, Role.INITIATOR)
    assert neg.request_renegotiation(3.1) == []
    assert neg.on_signal(renegotiate(neg), 3.2) == []
    assert neg.state is S.WAITING
    assert deadline(neg) == (3.5, "backoff")


def test_polite_refuses_webrtc_renegotiate_in_every_state() -> None:
    for state in ALIVE:
        if state is S.WAITING:
            continue  # the polite side never waits
        neg = reach(state, Role.POLITE)
        with pytest.raises(RemoteProtocolError, match="from the initiator"):
            neg.on_signal(renegotiate(neg, "renegotiate"), 9.0)
        assert neg.state is state


def test_duplicate_offers_are_dropped() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(offer(neg, "offer-1"), 1.0)
    for step in (lambda: None, lambda: neg.on_remote_applied(1.5)):
        step()  # APPLYING_OFFER, then MAKING_ANSWER
        state = neg.state
        out = neg.on_signal(offer(neg, "offer-1"), 1.6)
        assert ops(out) == []
        assert "duplicate" in logs(out)
        assert neg.state is state
    neg.on_local_description(LOCAL_ANSWER, 2.0)
    out = neg.on_signal(offer(neg, "offer-1"), 2.1)  # STABLE
    assert ops(out) == [] and "duplicate" in logs(out)
    assert neg.state is S.STABLE


def test_numbered_offers_are_told_apart_by_number_not_sdp() -> None:
    # aiortc renegotiating without a change makes a byte-equal offer: still a new one.
    neg = polite()
    neg.start(0.0)
    first = attrs.evolve(offer(neg, "same-sdp"), fields={**offer(neg, "same-sdp").fields, "seq": 1})
    again = attrs.evolve(first, fields={**first.fields, "seq": 2})
    neg.on_signal(first, 1.0)
    neg.on_remote_applied(1.1)
    neg.on_local_description(LOCAL_ANSWER, 1.2)
    assert ops(neg.on_signal(first, 1.3)) == []  # the same frame twice: a duplicate
    out = neg.on_signal(again, 1.4)
    assert [type(op).__name__ for op in ops(out)] == ["SetRemoteDescription"]
    assert neg.state is S.APPLYING_OFFER


def test_a_second_offer_while_answering_is_a_remote_error() -> None:
    for state in ANSWERING:
        neg = reach(state, Role.POLITE)
        with pytest.raises(RemoteProtocolError, match=rf"remote-offer.*{state.value}"):
            neg.on_signal(offer(neg, "another-offer"), 5.0)
        assert neg.state is state


def test_an_offer_during_answer_application_is_queued_until_stable() -> None:
    neg = reach(S.APPLYING_ANSWER, Role.INITIATOR)
    assert neg.on_signal(offer(neg, "polite-offer"), 0.3) == []
    with pytest.raises(RemoteProtocolError, match=r"remote-offer.*applying-answer"):
        neg.on_signal(offer(neg, "polite-offer-2"), 0.4)  # only one can wait
    out = neg.on_remote_applied(0.5)
    assert ops(out) == [
        SetRemoteDescription(peer_id=BOB, pc=1, description=their_desc("offer", "polite-offer"))
    ]
    assert neg.state is S.APPLYING_OFFER
    assert deadline(neg) == (10.5, "negotiation")


# ----------------------------------------------------------------------- connection state


def test_connected_notifies_once_and_clears_the_connect_deadline() -> None:
    neg = stable_initiator()
    assert neg.on_connection_state("connecting", 2.5) == []
    assert (neg.link, deadline(neg)) == (Link.CONNECTING, (17.0, "connect"))
    # the adapter is asked which candidate pair it uses (PeerRoute follows its answer)
    assert ops(neg.on_connection_state("connected", 3.0)) == [
        ReadSelectedPair(peer_id=BOB, pc=1),
        PeerConnected(peer_id=BOB, epoch=0),
    ]
    assert (neg.link, deadline(neg), neg.attempts) == (Link.CONNECTED, (None, None), 0)
    assert ops(neg.on_connection_state("completed", 3.1)) == []  # aiortc's ICE state name


def test_connection_progress_in_every_state_with_a_connection() -> None:
    for state in WITH_PC:
        for role in roles_reaching(state):
            neg = reach(state, role)
            before = deadline(neg)
            assert neg.on_connection_state("checking", 5.0) == []
            assert (neg.state, neg.link, deadline(neg)) == (state, Link.CONNECTING, before)


def test_stable_when_already_connected_needs_no_connect_deadline() -> None:
    neg = stable_initiator()
    neg.on_connection_state("connected", 3.0)
    neg.request_renegotiation(4.0)
    neg.on_local_description(LOCAL_OFFER, 4.1)
    neg.on_signal(answer(neg, "answer-2"), 4.2)
    neg.on_remote_applied(4.3)
    assert neg.state is S.STABLE
    assert deadline(neg) == (None, None)


def test_aiortc_initiator_recovers_by_close_and_recreate() -> None:
    neg = stable_initiator()
    neg.on_connection_state("connected", 2.5)
    out = neg.on_connection_state("failed", 3.0)
    assert ops(out) == [ClosePeer(peer_id=BOB, pc=1)]
    assert "attempt 1 failed: connection failed" in logs(out)
    assert (neg.state, neg.pc, neg.attempts, neg.epoch) == (S.WAITING, None, 1, 0)
    assert deadline(neg) == (3.5, "backoff")  # backoff_base * 2**0 * (0.5 + 0/2)
    assert neg.on_signal(ice(neg, cand(1)), 3.2) != []  # dropped, with a log
    assert neg.on_timer(3.4) == []  # not yet
    assert neg.state is S.WAITING
    assert ops(neg.on_timer(3.5)) == [
        CreatePeer(peer_id=BOB, pc=2, initiator=True),
        PeerConnecting(peer_id=BOB, epoch=1),
        CreateOffer(peer_id=BOB, pc=2, ice_restart=False),
    ]
    assert (neg.state, neg.epoch) == (S.MAKING_OFFER, 1)
    assert deadline(neg) == (13.5, "negotiation")
    assert frames(neg.on_local_description(LOCAL_OFFER, 3.6))[0]["epoch"] == 1
    # once connected again, PeerConnected names the new epoch
    neg.on_signal(answer(neg), 3.7)
    neg.on_remote_applied(3.8)
    assert ops(neg.on_connection_state("connected", 3.9)) == [
        ReadSelectedPair(peer_id=BOB, pc=2),
        PeerConnected(peer_id=BOB, epoch=1),
    ]


def test_remote_closing_counts_as_a_failure() -> None:
    neg = stable_initiator()
    assert ops(neg.on_connection_state("closed", 3.0)) == [ClosePeer(peer_id=BOB, pc=1)]
    assert neg.state is S.WAITING


def test_browser_pair_restarts_ice_on_the_same_connection() -> None:
    neg = stable_initiator(BROWSER, their_caps=BROWSER)  # caps learnt from the answer
    assert neg.remote_capabilities == BROWSER
    out = neg.on_connection_state("failed", 3.0)
    assert ops(out) == [CreateOffer(peer_id=BOB, pc=1, ice_restart=True)]
    assert "ICE restart" in logs(out)
    assert (neg.state, neg.epoch, neg.pc, neg.attempts) == (S.MAKING_OFFER, 0, 1, 1)
    assert frames(neg.on_local_description(LOCAL_OFFER, 3.1))[0]["epoch"] == 0


@pytest.mark.parametrize(
    ("ours", "theirs"), [(BROWSER, AIORTC), (AIORTC, BROWSER), (BROWSER, None)]
)
def test_no_ice_restart_unless_both_sides_can(
    ours: Capabilities, theirs: Capabilities | None
) -> None:
    neg = stable_initiator(ours, their_caps=theirs)
    assert ops(neg.on_connection_state("failed", 3.0)) == [ClosePeer(peer_id=BOB, pc=1)]
    assert neg.state is S.WAITING


def test_polite_reports_a_failure_and_waits() -> None:
    neg = stable_polite()
    out = neg.on_connection_state("failed", 20.0)
    assert ops(out)[0] == ClosePeer(peer_id=ALICE, pc=1)
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]
    assert (neg.state, neg.pc, neg.attempts) == (S.IDLE, None, 1)
    assert deadline(neg) == (25.5, "recovery")  # offer_wait + backoff(1)
    # nothing came: ask again, with a longer wait
    out = neg.on_timer(25.5)
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]
    assert deadline(neg) == (31.5, "recovery")
    assert neg.attempts == 2
    # the initiator's fresh connection arrives
    out = neg.on_signal(offer(neg, "offer-2", epoch=1), 26.0)
    assert CreatePeer(peer_id=ALICE, pc=2, initiator=False) in out
    assert neg.epoch == 1


def test_polite_browser_pair_keeps_the_connection_for_an_ice_restart() -> None:
    neg = stable_polite(BROWSER, their_caps=BROWSER)  # caps learnt from the offer
    out = neg.on_connection_state("failed", 20.0)
    assert len(ops(out)) == 1
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]
    assert ClosePeer(peer_id=ALICE, pc=1) not in out
    assert (neg.state, neg.pc) == (S.STABLE, 1)
    # the restart offer is applied on the same connection
    out = neg.on_signal(offer(neg, "restart-offer"), 20.5)
    assert ops(out) == [
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("offer", "restart-offer"))
    ]


def test_initiator_treats_a_failure_report_as_a_failure() -> None:
    neg = stable_initiator()
    out = neg.on_signal(renegotiate(neg, "failed"), 3.0)
    assert ops(out) == [ClosePeer(peer_id=BOB, pc=1)]
    assert "the peer reported its connection failed" in logs(out)
    assert neg.state is S.WAITING
    neg = stable_initiator(BROWSER, BROWSER)
    assert ops(neg.on_signal(renegotiate(neg, "failed"), 3.0)) == [
        CreateOffer(peer_id=BOB, pc=1, ice_restart=True)
    ]


def test_operation_failure_in_every_state_with_a_connection() -> None:
    for state in WITH_PC:
        for role in roles_reaching(state):
            neg = reach(state, role)
            pc = neg.pc
            out = neg.on_operation_failed("SomeOp", "boom", 7.0)
            assert "operation failed (SomeOp: boom)" in logs(out)
            assert neg.attempts == 1
            if role is Role.INITIATOR and state is S.STABLE:  # BROWSER pair: ICE restart
                assert ops(out) == [CreateOffer(peer_id=BOB, pc=pc or 0, ice_restart=True)]
                assert neg.state is S.MAKING_OFFER
            elif role is Role.INITIATOR:
                assert ops(out) == [ClosePeer(peer_id=BOB, pc=pc or 0)], state
                assert neg.state is S.WAITING
            elif state is S.STABLE:  # BROWSER pair: keeps the connection
                assert frames(out) == [renegotiate_frame(ALICE, "failed")]
                assert neg.state is S.STABLE
            else:
                assert ClosePeer(peer_id=ALICE, pc=pc or 0) in out
                assert frames(out) == [renegotiate_frame(ALICE, "failed")]
                assert neg.state is S.IDLE


# ----------------------------------------------------------------------- deadlines


def test_negotiation_timeout_at_the_initiator() -> None:
    neg = offering(initiator())
    assert neg.on_timer(9.9) == []
    out = neg.on_timer(10.0)
    assert ops(out) == [ClosePeer(peer_id=BOB, pc=1)]
    assert "negotiation timed out in have-local-offer" in logs(out)
    assert (neg.state, deadline(neg)) == (S.WAITING, (10.5, "backoff"))


def test_negotiation_timeout_at_the_polite_side() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(offer(neg), 1.0)
    out = neg.on_timer(11.0)
    assert ops(out)[0] == ClosePeer(peer_id=ALICE, pc=1)
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]
    assert (neg.state, deadline(neg)) == (S.IDLE, (16.5, "recovery"))


def test_connect_timeout() -> None:
    neg = stable_initiator()
    neg.on_connection_state("connecting", 3.0)
    assert neg.on_timer(16.9) == []
    out = neg.on_timer(17.0)
    assert ops(out) == [ClosePeer(peer_id=BOB, pc=1)]
    assert "not connected in time" in logs(out)
    assert neg.state is S.WAITING


def test_offer_wait_asks_for_an_offer_then_gives_up() -> None:
    neg = polite()
    neg.start(0.0)
    assert neg.on_timer(4.9) == []
    out = neg.on_timer(5.0)
    assert frames(out) == [renegotiate_frame(ALICE, "no-offer")]
    assert (neg.attempts, deadline(neg)) == (1, (10.5, "offer-wait"))
    assert frames(neg.on_timer(10.5)) == [renegotiate_frame(ALICE, "no-offer")]
    assert (neg.attempts, deadline(neg)) == (2, (16.5, "offer-wait"))
    out = neg.on_timer(16.5)
    assert ops(out) == [PeerFailed(peer_id=ALICE, reason="no offer from the initiator")]
    assert (neg.state, deadline(neg)) == (S.FAILED, (None, None))


def test_disconnected_grace() -> None:
    neg = stable_initiator()
    neg.on_connection_state("connected", 3.0)
    assert neg.on_connection_state("disconnected", 30.0) == []
    assert (neg.link, deadline(neg)) == (Link.DISCONNECTED, (33.0, "disconnected"))
    # back within the grace: no failure, no second PeerConnected; the pair is read again
    # (it may have changed)
    assert ops(neg.on_connection_state("connected", 31.0)) == [ReadSelectedPair(peer_id=BOB, pc=1)]
    assert deadline(neg) == (None, None)
    neg.on_connection_state("disconnected", 40.0)
    assert neg.on_timer(42.9) == []
    out = neg.on_timer(43.0)
    assert ops(out) == [ClosePeer(peer_id=BOB, pc=1)]
    assert "disconnected for too long" in logs(out)
    assert neg.state is S.WAITING


def test_timer_in_every_live_state() -> None:
    for state in ALIVE:
        for role in roles_reaching(state):
            neg = reach(state, role)
            when, kind = deadline(neg)
            if when is None:
                assert neg.on_timer(1e9) == []
                assert neg.state is state
                continue
            assert neg.on_timer(when - 0.01) == []  # early: nothing
            assert deadline(neg) == (when, kind)
            out = neg.on_timer(when)
            assert out != [], (state, role)
            assert deadline(neg) != (when, kind)


# ----------------------------------------------------------------------- giving up, reviving


def test_initiator_gives_up_after_max_retries() -> None:
    neg = initiator()
    neg.start(0.0)
    assert ops(neg.on_operation_failed("CreateOffer", "boom", 0.0)) == [
        ClosePeer(peer_id=BOB, pc=1)
    ]
    assert deadline(neg) == (0.5, "backoff")
    neg.on_timer(0.5)
    neg.on_operation_failed("CreateOffer", "boom", 0.6)
    assert deadline(neg) == (1.6, "backoff")  # backoff(2) = 1.0
    neg.on_timer(1.6)
    assert (neg.epoch, neg.pc) == (2, 3)
    out = neg.on_operation_failed("CreateOffer", "boom", 1.7)
    assert ops(out) == [
        ClosePeer(peer_id=BOB, pc=3),
        PeerFailed(peer_id=BOB, reason="operation failed (CreateOffer: boom)"),
    ]
    assert (neg.state, neg.pc, deadline(neg)) == (S.FAILED, None, (None, None))


def test_a_connection_resets_the_retry_budget() -> None:
    neg = stable_initiator()
    neg.on_connection_state("failed", 3.0)
    neg.on_timer(3.5)
    assert neg.attempts == 1
    neg.on_local_description(LOCAL_OFFER, 3.6)
    neg.on_signal(answer(neg), 3.7)
    neg.on_remote_applied(3.8)
    neg.on_connection_state("connected", 3.9)
    assert neg.attempts == 0


def test_failed_initiator_is_revived_by_a_renegotiate_request() -> None:
    neg = exhausted_initiator()
    assert neg.epoch == 2
    assert ops(neg.on_signal(ice(neg, cand(1)), 20.0)) == []  # no connection: dropped
    out = neg.on_signal(renegotiate(neg, "renegotiate"), 20.0)
    assert ops(out) == [
        CreatePeer(peer_id=BOB, pc=4, initiator=True),
        PeerConnecting(peer_id=BOB, epoch=3),
        CreateOffer(peer_id=BOB, pc=4, ice_restart=False),
    ]
    assert (neg.state, neg.epoch, neg.attempts) == (S.MAKING_OFFER, 3, 0)


def test_failed_initiator_is_revived_by_the_application() -> None:
    neg = exhausted_initiator()
    assert CreateOffer(peer_id=BOB, pc=4) in neg.request_renegotiation(20.0)
    assert (neg.state, neg.epoch, neg.attempts) == (S.MAKING_OFFER, 3, 0)


def test_failed_polite_is_revived_by_an_offer() -> None:
    neg = exhausted_polite()
    assert neg.attempts == CONFIG.max_retries + 1
    out = neg.on_signal(offer(neg), 30.0)
    assert ops(out) == [
        CreatePeer(peer_id=ALICE, pc=1, initiator=False),
        PeerConnecting(peer_id=ALICE, epoch=0),
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("offer", "their-offer")),
    ]
    assert (neg.state, neg.attempts) == (S.APPLYING_OFFER, 0)


def test_failed_polite_is_revived_by_the_application() -> None:
    neg = exhausted_polite()
    out = neg.request_renegotiation(30.0)
    assert frames(out) == [renegotiate_frame(ALICE, "renegotiate")]
    assert (neg.state, neg.attempts, deadline(neg)) == (S.IDLE, 0, (35.0, "offer-wait"))


def test_failed_polite_revived_by_a_newer_epoch_offer_gets_a_full_budget() -> None:
    neg = exhausted_polite()
    neg.on_signal(offer(neg, "offer-2", epoch=1), 30.0)
    assert neg.epoch == 1
    neg.on_remote_applied(30.1)
    neg.on_local_description(LOCAL_ANSWER, 30.2)
    out = neg.on_timer(45.2)  # connect timeout: one failed attempt
    assert not any(isinstance(a, PeerFailed) for a in out)
    assert neg.state is S.IDLE


def test_a_peer_without_epochs_keeps_epoch_zero_across_recreates() -> None:
    """PROTOCOL.md: a frame without ``epoch`` counts as epoch 0. A peer that never sends
    one could not follow a bump, so the initiator keeps such a pair at epoch 0."""
    neg = offering(initiator(AIORTC, CONFIG))
    bare = Answer(
        to_user_id=ALICE,
        fields={"answer": {"type": "answer", "sdp": "a"}},
        from_user_id=BOB,
        room_id=ROOM,
    )
    neg.on_signal(bare, 1.0)
    neg.on_remote_applied(2.0)
    neg.on_connection_state("failed", 3.0)
    neg.on_timer(3.5)
    assert neg.epoch == 0 and neg.state is S.MAKING_OFFER
    neg.on_local_description(LOCAL_OFFER, 3.6)
    applied = neg.on_signal(bare, 4.0)
    assert SetRemoteDescription(peer_id=BOB, pc=2, description=their_desc("answer", "a")) in applied


def test_a_peer_with_epochs_moves_to_the_next_epoch_on_recreate() -> None:
    neg = stable_initiator()
    neg.on_connection_state("failed", 3.0)
    neg.on_timer(3.5)
    assert neg.epoch == 1


# ----------------------------------------------------------------------- candidates everywhere


def test_remote_candidates_in_every_live_state() -> None:
    # what happens to a remote candidate: applied now, buffered, or dropped
    expected = {
        (S.IDLE, Role.INITIATOR): "buffer",
        (S.MAKING_OFFER, Role.INITIATOR): "buffer",  # the first offer: no remote yet
        (S.HAVE_LOCAL_OFFER, Role.INITIATOR): "buffer",
        (S.APPLYING_ANSWER, Role.INITIATOR): "buffer",
        (S.STABLE, Role.INITIATOR): "apply",
        (S.APPLYING_OFFER, Role.INITIATOR): "buffer",
        (S.MAKING_ANSWER, Role.INITIATOR): "apply",
        (S.WAITING, Role.INITIATOR): "drop",
        (S.FAILED, Role.INITIATOR): "drop",
        (S.IDLE, Role.POLITE): "buffer",
        (S.APPLYING_OFFER, Role.POLITE): "buffer",
        (S.MAKING_ANSWER, Role.POLITE): "apply",
        (S.STABLE, Role.POLITE): "apply",
        (S.MAKING_OFFER, Role.POLITE): "apply",  # a renegotiation: the remote is in place
        (S.HAVE_LOCAL_OFFER, Role.POLITE): "apply",
        (S.APPLYING_ANSWER, Role.POLITE): "buffer",
        (S.FAILED, Role.POLITE): "drop",
    }
    for (state, role), fate in expected.items():
        neg = reach(state, role)
        out = neg.on_signal(ice(neg, cand(7)), 9.0)
        if fate == "apply":
            assert neg.pc is not None
            assert out == [AddIceCandidate(peer_id=neg.peer_id, pc=neg.pc, candidate=cand(7))]
        elif fate == "buffer":
            assert out == [], (state, role)
            assert neg.remote_buffer[-1] == cand(7)
        else:
            assert ops(out) == [] and "dropped" in logs(out), (state, role)
            assert neg.remote_buffer == []
        assert neg.state is state


def test_local_candidates_in_every_state_with_a_connection() -> None:
    held = {S.MAKING_OFFER, S.APPLYING_OFFER, S.MAKING_ANSWER}
    for state in WITH_PC:
        for role in roles_reaching(state):
            neg = reach(state, role)
            out = neg.on_candidate_gathered(cand(5), 9.0)
            if state in held:
                assert out == [], (state, role)
            else:
                assert frames(out) == [ice_frame(neg.peer_id, cand(5))], (state, role)


# ----------------------------------------------------------------------- close


def test_close_in_every_live_state() -> None:
    for state in ALIVE:
        for role in roles_reaching(state):
            neg = reach(state, role)
            pc = neg.pc
            out = neg.close(50.0)
            expected = [] if pc is None else [ClosePeer(peer_id=neg.peer_id, pc=pc)]
            assert ops(out) == expected, (state, role)
            assert (neg.state, neg.pc, deadline(neg)) == (S.CLOSED, None, (None, None))
            with pytest.raises(LocalProtocolError, match=r"close.*closed"):
                neg.close(51.0)


def test_closed_is_terminal() -> None:
    neg = stable_initiator()
    assert ops(neg.close(3.0)) == [ClosePeer(peer_id=BOB, pc=1)]
    with pytest.raises(RemoteProtocolError, match="closed"):
        neg.on_signal(offer(neg), 4.0)
    with pytest.raises(LocalProtocolError, match=r"timer.*closed"):
        neg.on_timer(4.0)
    assert neg.state is S.CLOSED


# ----------------------------------------------------------------------- the table itself

# Which inputs come from the peer, as the module docstring defines it: a frame (or what
# a frame says: a new session of the peer, an offer of a newer epoch).
PEER_INPUTS = frozenset(
    {
        Input.REMOTE_OFFER,
        Input.REMOTE_ANSWER,
        Input.REMOTE_CANDIDATE,
        Input.REMOTE_RENEGOTIATE,
        Input.PEER_RESTARTED,
        Input.NEWER_EPOCH,
    }
)
ILLEGAL = sorted(
    (
        (r, s, i)
        for s in NegState
        for r in roles_reaching(s)
        for i in Input
        if (r, s, i) not in TRANSITIONS
    ),
    key=lambda k: (k[0].value, k[1].value, k[2].value),
)


def _illegal_params() -> list[Any]:
    return [
        pytest.param(role, state, kind, id=f"{role.value}+{state.value}+{kind.value}")
        for role, state, kind in ILLEGAL
    ]


@pytest.mark.parametrize(("role", "state", "kind"), _illegal_params())
def test_every_key_missing_from_the_table_is_refused(
    role: Role, state: NegState, kind: Input
) -> None:
    """Each missing key, on a side that can be in the state (reached by real inputs),
    raises an error naming role, state and input, and changes nothing."""
    neg = reach(state, role)
    before = (neg.state, neg.pc, neg.epoch, deadline(neg), neg.attempts)
    with pytest.raises(SignalError) as info:
        neg._dispatch(kind, 99.0, None)
    message = str(info.value)
    assert f"state {state.value}" in message
    assert f"input {kind.value} " in message
    assert f"{role.value} side" in message
    assert (neg.state, neg.pc, neg.epoch, deadline(neg), neg.attempts) == before
    expected = RemoteProtocolError if kind in PEER_INPUTS else LocalProtocolError
    assert type(info.value) is expected


def test_the_table_has_missing_keys_of_both_kinds() -> None:
    keys = sum(len(roles_reaching(s)) for s in NegState) * len(Input)
    assert len(ILLEGAL) == keys - len(TRANSITIONS) > 0
    assert any(k in PEER_INPUTS for _, _, k in ILLEGAL)
    assert any(k not in PEER_INPUTS for _, _, k in ILLEGAL)
    assert all(s is not S.CLOSED for _, s, _ in TRANSITIONS)
    assert all(s is not S.WAITING for r, s, _ in TRANSITIONS if r is Role.POLITE)


def test_input_remote_flags_exactly_the_peer_inputs() -> None:
    assert {i for i in Input if i.remote} == PEER_INPUTS


def test_each_deadline_expires_as_its_own_input() -> None:
    inputs = {kind.expired for kind in Deadline}
    assert len(inputs) == len(Deadline)
    assert not inputs & PEER_INPUTS
    assert all(i.value.endswith("-timeout") for i in inputs)


def test_a_step_the_table_does_not_list_is_our_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check after each handler: a handler that leads where its entry does not say
    is refused, naming role, input, the state before and the state reached."""
    key = (Role.INITIATOR, S.IDLE, Input.START)
    handler, _ = TRANSITIONS[key]
    monkeypatch.setitem(TRANSITIONS, key, (handler, frozenset({S.IDLE})))
    with pytest.raises(LocalProtocolError, match="start in idle on the initiator side led to"):
        initiator()._dispatch(Input.START, 0.0, None)


def test_the_scripts_cover_every_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-run every plain scripted test above while recording each ``(role, state,
    input)`` that goes through the table (follow-up inputs included): together they must
    reach every entry of ``TRANSITIONS``."""
    seen: set[tuple[Role, NegState, Input]] = set()
    original = PeerNegotiation._transition

    def recording(
        self: PeerNegotiation, kind: Input, now: float, payload: Any
    ) -> list[ClientAction]:
        seen.add((self.role, self.state, kind))
        return original(self, kind, now, payload)

    monkeypatch.setattr(PeerNegotiation, "_transition", recording)
    scripts = [
        fn
        for name, fn in globals().items()
        if name.startswith("test_")
        and fn is not test_the_scripts_cover_every_transition
        and not inspect.signature(fn).parameters
        and not any(m.name == "xfail" for m in getattr(fn, "pytestmark", []))
    ]
    assert len(scripts) > 40
    for script in scripts:
        script()
    missing = sorted(f"{r.value}+{s.value}+{i.value}" for r, s, i in set(TRANSITIONS) - seen)
    assert missing == []


def with_session(message: Offer | Ice | Renegotiate, sid: str) -> Any:
    return attrs.evolve(message, fields={**message.fields, "sid": sid})


def test_the_initiator_starts_over_when_the_peer_does() -> None:
    # The polite side let us go and met us again (a fresh session that names none of
    # ours): after its first frame we drop our connection and offer afresh at epoch 0.
    neg = stable_initiator()
    neg.on_signal(with_session(ice(neg, cand(1)), "bob.s1"), 2.5)  # its session, known
    neg.on_connection_state("failed", 3.0)  # one failed attempt: a new epoch
    assert neg.state is S.WAITING
    assert neg.deadline is not None
    neg.on_timer(neg.deadline)
    assert neg.epoch == 1 and neg.pc == 2
    out = neg.on_signal(with_session(renegotiate(neg, "no-offer", epoch=0), "bob.s2"), 5.0)
    kinds = [type(a).__name__ for a in ops(out)]
    assert kinds == ["ClosePeer", "CreatePeer", "PeerConnecting", "CreateOffer"]
    assert neg.epoch == 0 and neg.attempts == 0 and neg.remote_session == "bob.s2"
    assert "started our pair over" in logs(out)
    # it asked for an offer: the one we are making answers it (no second exchange after)
    assert not neg.pending_renegotiation


def test_the_polite_side_starts_over_on_an_offer_from_a_new_session() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(with_session(offer(neg, "first"), "alice.s1"), 1.0)
    neg.on_remote_applied(1.1)
    neg.on_local_description(LOCAL_ANSWER, 1.2)
    out = neg.on_signal(with_session(offer(neg, "second"), "alice.s2"), 2.0)
    kinds = [type(a).__name__ for a in ops(out)]
    assert kinds == ["ClosePeer", "CreatePeer", "PeerConnecting", "SetRemoteDescription"]
    assert neg.remote_session == "alice.s2" and neg.state is S.APPLYING_OFFER


def test_a_frame_from_an_earlier_session_that_names_ours_is_dropped() -> None:
    neg = polite()
    neg.start(0.0)
    neg.on_signal(with_session(offer(neg, "first"), "alice.s2"), 1.0)
    stale = attrs.evolve(
        with_session(ice(neg, cand(1)), "alice.s1"),
        fields={**with_session(ice(neg, cand(1)), "alice.s1").fields, "rsid": neg.session},
    )
    out = neg.on_signal(stale, 1.5)
    assert ops(out) == [] and "earlier session" in logs(out)


def test_a_new_session_of_the_peer_starts_the_pair_over_in_every_live_state() -> None:
    for state in ALIVE:
        for role in roles_reaching(state):
            neg = reach(state, role)
            neg.on_signal(with_session(ice(neg, cand(0)), f"{neg.peer_id}.s1"), 49.0)
            pc, attempts_before = neg.pc, neg.attempts
            out = neg.on_signal(with_session(ice(neg, cand(1), epoch=0), f"{neg.peer_id}.s2"), 50.0)
            closed = [] if pc is None else [ClosePeer(peer_id=neg.peer_id, pc=pc)]
            assert ops(out)[: len(closed)] == closed, (state, role)
            assert "started our pair over" in logs(out)
            assert (neg.epoch, neg.attempts, neg.remote_session) == (0, 0, f"{neg.peer_id}.s2")
            if role is Role.INITIATOR:  # begins again as on start: an offer
                assert isinstance(ops(out)[-1], CreateOffer), (state, attempts_before)
                assert neg.state is S.MAKING_OFFER
            else:  # waits for the initiator's offer
                assert (neg.state, deadline(neg)) == (S.IDLE, (55.0, "offer-wait"))
            assert neg.remote_buffer == [cand(1)]  # the frame itself, for the new epoch


def test_an_offer_of_a_newer_epoch_in_every_polite_state() -> None:
    for state in ALIVE:
        if state is S.WAITING:
            continue  # the polite side never waits
        neg = reach(state, Role.POLITE)
        pc, epoch, attempts = neg.pc, neg.epoch, neg.attempts
        out = neg.on_signal(offer(neg, "fresh", epoch=epoch + 1), 50.0)
        closed = [] if pc is None else [ClosePeer(peer_id=ALICE, pc=pc)]
        assert ops(out)[: len(closed)] == closed, state
        assert f"following the initiator to epoch {epoch + 1}" in logs(out)
        assert (neg.state, neg.epoch) == (S.APPLYING_OFFER, epoch + 1), state
        assert neg.attempts == (0 if state is S.FAILED else attempts), state


def test_requests_and_offers_before_the_initiator_started() -> None:
    # The table takes them in IDLE on either side: a request is put off, an offer taken.
    neg = initiator()
    assert neg.on_signal(renegotiate(neg), 0.0) == []
    assert neg.pending_renegotiation and neg.state is S.IDLE
    neg = initiator()
    assert ops(neg.on_signal(offer(neg, "early"), 0.0)) == [
        CreatePeer(peer_id=BOB, pc=1, initiator=True),
        PeerConnecting(peer_id=BOB, epoch=0),
        SetRemoteDescription(peer_id=BOB, pc=1, description=their_desc("offer", "early")),
    ]
    assert neg.state is S.APPLYING_OFFER


def test_a_failed_initiator_takes_an_offer_with_a_full_budget() -> None:
    neg = exhausted_initiator()
    out = neg.on_signal(offer(neg, "polite-offer"), 20.0)
    assert [type(a).__name__ for a in ops(out)] == [
        "CreatePeer",
        "PeerConnecting",
        "SetRemoteDescription",
    ]
    assert (neg.state, neg.attempts) == (S.APPLYING_OFFER, 0)


def test_a_second_offer_while_the_initiator_answers_is_a_remote_error() -> None:
    for state in ANSWERING:
        neg = reach(state, Role.INITIATOR)
        out = neg.on_signal(offer(neg, "polite-offer"), 5.0)  # the same one again
        assert ops(out) == [] and "duplicate" in logs(out)
        with pytest.raises(RemoteProtocolError, match=rf"remote-offer.*{state.value}"):
            neg.on_signal(offer(neg, "another-offer"), 5.1)
        assert neg.state is state


def test_the_initiators_offer_waits_while_the_polite_side_applies_its_answer() -> None:
    neg = reach(S.APPLYING_ANSWER, Role.POLITE)
    assert neg.on_signal(offer(neg, "offer-3"), 3.3) == []
    out = neg.on_remote_applied(3.4)
    assert ops(out) == [
        SetRemoteDescription(peer_id=ALICE, pc=1, description=their_desc("offer", "offer-3"))
    ]
    assert neg.state is S.APPLYING_OFFER


def test_polite_disconnected_grace() -> None:
    neg = stable_polite()
    neg.on_connection_state("connected", 3.0)
    neg.on_connection_state("disconnected", 30.0)
    assert deadline(neg) == (33.0, "disconnected")
    out = neg.on_timer(33.0)
    assert "disconnected for too long" in logs(out)
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]
    assert neg.state is S.IDLE


def test_polite_asks_again_for_the_ice_restart_it_waits_for() -> None:
    neg = stable_polite(BROWSER, their_caps=BROWSER)
    neg.on_connection_state("failed", 20.0)
    assert (neg.state, deadline(neg)) == (S.STABLE, (25.5, "recovery"))
    out = neg.on_timer(25.5)
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]
    assert (neg.state, neg.attempts, deadline(neg)) == (S.STABLE, 2, (31.5, "recovery"))


def test_glare_with_a_duplicate_of_the_answered_offer_keeps_our_deadline() -> None:
    # A duplicated frame of the offer we already answered arrives while we make our own:
    # we roll back (the offers crossed), the duplicate is dropped, and the deadline of
    # the offer we gave up still runs; when it passes, it costs an attempt.
    neg = stable_polite(BROWSER, BROWSER)
    neg.request_renegotiation(3.0)
    out = neg.on_signal(offer(neg), 3.1)  # "their-offer" again
    assert ops(out) == [RollbackLocalDescription(peer_id=ALICE, pc=1)]
    assert "duplicate" in logs(out)
    assert (neg.state, deadline(neg)) == (S.STABLE, (13.0, "negotiation"))
    out = neg.on_timer(13.0)
    assert "negotiation timed out in stable" in logs(out)
    assert frames(out) == [renegotiate_frame(ALICE, "failed")]  # an ICE restart, asked for
    assert (neg.state, neg.attempts) == (S.STABLE, 1)


# ----------------------------------------------------------------------- diagrams


def test_the_diagrams_draw_every_move_of_the_table() -> None:
    """Each move ``(state, next state, input)`` of each role, self-loops aside, is drawn
    (as itself, from ANY, or from the group UNDER_WAY), and nothing else is."""
    for role in Role:
        _, _, drawn = _layout(role)
        assert drawn == _moves(role), role


def test_the_diagrams_are_legible_and_all_in_the_docs() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "negotiation.md").read_text()
    assert DIAGRAMS == ("initiator", "polite", "initiator-recovery", "polite-recovery")
    for name in DIAGRAMS:
        chart = diagram(name)
        assert chart.count("-->") < 20, name
        assert f"<!-- diagram:{name}:begin -->\n```mermaid\n{chart}\n```" in doc, name
