"""ModelPeerConnection: the JSEP model raises InvalidStateError exactly where the spec
(W3C webrtc-pc, signalingState table) does, and happy offer/answer cycles work with
and without trickle ICE. A hypothesis test drives random call sequences against an
independent table of what JSEP allows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_signal.testing.model import InvalidStateError, ModelPeerConnection, OperationError
from sansio_signal.wire import IceCandidate, SessionDescription

SIGNALING_STATES = frozenset({"stable", "have-local-offer", "have-remote-offer", "closed"})


def pc(name: str = "a", *, rollback: bool = True, trickle: bool = True) -> ModelPeerConnection:
    return ModelPeerConnection(name, rollback=rollback, trickle=trickle)


def offer_of(name: str = "z", ufrag: str | None = None) -> SessionDescription:
    """A remote offer as another model connection would write it (trickle style)."""
    return SessionDescription(type="offer", sdp=f"model ufrag={ufrag or name + '.g0'}")


def answer_of(name: str = "z", ufrag: str | None = None) -> SessionDescription:
    return SessionDescription(type="answer", sdp=f"model ufrag={ufrag or name + '.g0'}")


def have_local_offer(conn: ModelPeerConnection) -> SessionDescription:
    offer = conn.create_offer()
    conn.set_local_description(offer)
    assert conn.signaling_state == "have-local-offer"
    return offer


def have_remote_offer(conn: ModelPeerConnection) -> None:
    conn.set_remote_description(offer_of())
    assert conn.signaling_state == "have-remote-offer"


def negotiated_pair(*, trickle: bool) -> tuple[ModelPeerConnection, ModelPeerConnection]:
    """``a`` offers, ``b`` answers; candidates exchanged when trickling."""
    a, b = pc("a", trickle=trickle), pc("b", trickle=trickle)
    offer = a.create_offer()
    a.set_local_description(offer)
    b.set_remote_description(offer)
    answer = b.create_answer()
    b.set_local_description(answer)
    a.set_remote_description(answer)
    for src, dst in ((a, b), (b, a)):
        for candidate in src.take_gathered():
            dst.add_ice_candidate(candidate)
    return a, b


# ----------------------------------------------------------------------- InvalidStateError


@pytest.mark.parametrize("setup", ["stable", "have-local-offer"])
def test_create_answer_outside_have_remote_offer(setup: str) -> None:
    conn = pc()
    if setup == "have-local-offer":
        have_local_offer(conn)
    with pytest.raises(InvalidStateError, match=setup):
        conn.create_answer()
    assert conn.signaling_state == setup


def test_create_answer_in_have_remote_offer_is_fine() -> None:
    conn = pc()
    have_remote_offer(conn)
    assert conn.create_answer().type == "answer"


def test_create_offer_in_have_remote_offer() -> None:
    conn = pc()
    have_remote_offer(conn)
    with pytest.raises(InvalidStateError, match="have-remote-offer"):
        conn.create_offer()


def test_set_remote_offer_in_have_local_offer() -> None:
    """The glare case: aiortc's exact message (FIELD-NOTES)."""
    conn = pc(rollback=False)
    have_local_offer(conn)
    with pytest.raises(
        InvalidStateError, match='Cannot handle offer in signaling state "have-local-offer"'
    ):
        conn.set_remote_description(offer_of())
    assert conn.signaling_state == "have-local-offer"


def test_set_remote_offer_again_in_have_remote_offer_is_fine() -> None:
    conn = pc()
    have_remote_offer(conn)
    conn.set_remote_description(offer_of("y"))
    assert conn.signaling_state == "have-remote-offer"
    assert conn.remote_ufrag == "y.g0"


@pytest.mark.parametrize("setup", ["stable", "have-remote-offer"])
def test_set_remote_answer_outside_have_local_offer(setup: str) -> None:
    conn = pc()
    if setup == "have-remote-offer":
        have_remote_offer(conn)
    with pytest.raises(InvalidStateError, match=setup):
        conn.set_remote_description(answer_of())
    assert conn.signaling_state == setup


@pytest.mark.parametrize("setup", ["stable", "have-local-offer"])
def test_set_local_answer_outside_have_remote_offer(setup: str) -> None:
    conn = pc()
    if setup == "have-local-offer":
        have_local_offer(conn)
    with pytest.raises(InvalidStateError, match=setup):
        conn.set_local_description(SessionDescription(type="answer", sdp="model ufrag=a.g0"))
    assert conn.signaling_state == setup


def test_set_local_offer_in_have_remote_offer() -> None:
    conn = pc()
    have_remote_offer(conn)
    with pytest.raises(InvalidStateError, match="have-remote-offer"):
        conn.set_local_description(SessionDescription(type="offer", sdp="model ufrag=a.g0"))


def test_rollback_in_stable() -> None:
    conn = pc(rollback=True)
    with pytest.raises(InvalidStateError, match="stable"):
        conn.rollback()
    assert conn.signaling_state == "stable"


@pytest.mark.parametrize("setup", ["have-local-offer", "have-remote-offer"])
def test_rollback_without_support(setup: str) -> None:
    """aiortc ignores rollback and corrupts its state; the model refuses instead."""
    conn = pc(rollback=False)
    if setup == "have-local-offer":
        have_local_offer(conn)
    else:
        have_remote_offer(conn)
    with pytest.raises(InvalidStateError, match="cannot roll back"):
        conn.rollback()
    assert conn.signaling_state == setup


def test_rollback_of_local_offer() -> None:
    conn = pc(rollback=True)
    have_local_offer(conn)
    conn.rollback()
    assert conn.signaling_state == "stable"
    assert conn.pending_local is None
    assert conn.take_gathered() == []  # the abandoned offer's candidates are gone
    conn.set_remote_description(offer_of())  # the glare resolution: now an offer is fine
    assert conn.signaling_state == "have-remote-offer"


def test_rollback_of_remote_offer_restores_the_remote_ufrag() -> None:
    a, _ = negotiated_pair(trickle=True)
    a.set_remote_description(offer_of(ufrag="b.g9"))
    assert a.remote_ufrag == "b.g9"
    a.rollback()
    assert a.signaling_state == "stable"
    assert a.pending_remote is None
    assert a.remote_ufrag == "b.g0"


def test_rollback_undoes_an_ice_restart_offer() -> None:
    a, _ = negotiated_pair(trickle=True)
    restart = a.create_offer(ice_restart=True)
    assert "a.g1" in restart.sdp
    a.set_local_description(restart)
    a.rollback()
    assert a.local_ufrag == "a.g0"
    assert a.credentials() == ("a.g0", "b.g0")


def test_add_ice_candidate_before_any_remote_description() -> None:
    """Browsers raise; aiortc drops silently (FIELD-NOTES): the model raises."""
    conn = pc()
    have_local_offer(conn)
    candidate = IceCandidate(candidate="candidate:z.g0#0", sdp_mid="0", sdp_mline_index=0)
    with pytest.raises(InvalidStateError, match="before any remote description"):
        conn.add_ice_candidate(candidate)
    with pytest.raises(InvalidStateError):
        conn.add_ice_candidate(None)
    assert conn.remote_candidates == set()


def test_add_ice_candidate_with_a_pending_remote_offer_is_fine() -> None:
    conn = pc()
    have_remote_offer(conn)
    conn.add_ice_candidate(IceCandidate(candidate="candidate:z.g0#0"))
    assert conn.remote_candidates == {"z.g0#0"}


@pytest.mark.parametrize("end", [None, IceCandidate(candidate="")])
def test_add_ice_candidate_after_end_of_candidates(end: IceCandidate | None) -> None:
    conn = pc()
    have_remote_offer(conn)
    conn.add_ice_candidate(IceCandidate(candidate="candidate:z.g0#0"))
    conn.add_ice_candidate(end)
    assert conn.remote_ended
    with pytest.raises(InvalidStateError, match="after end-of-candidates"):
        conn.add_ice_candidate(IceCandidate(candidate="candidate:z.g0#1"))
    with pytest.raises(InvalidStateError):
        conn.add_ice_candidate(None)
    assert conn.remote_candidates == {"z.g0#0"}


def test_add_ice_candidate_of_another_ufrag_is_an_operation_error() -> None:
    conn = pc()
    have_remote_offer(conn)
    with pytest.raises(OperationError, match="does not match"):
        conn.add_ice_candidate(IceCandidate(candidate="candidate:y.g0#0"))


def test_unreadable_descriptions_are_operation_errors() -> None:
    conn = pc()
    with pytest.raises(OperationError):
        conn.set_remote_description(SessionDescription(type="offer", sdp="v=0 real sdp"))
    with pytest.raises(OperationError):
        conn.set_remote_description(SessionDescription(type="offer", sdp="model cands=x"))
    with pytest.raises(OperationError):
        conn.set_remote_description(SessionDescription(type="pranswer", sdp="model ufrag=z"))
    with pytest.raises(OperationError):
        conn.set_local_description(SessionDescription(type="rollback", sdp="model ufrag=a"))
    assert conn.signaling_state == "stable"


CALLS_AFTER_CLOSE: dict[str, Callable[[ModelPeerConnection], object]] = {
    "createOffer": lambda c: c.create_offer(),
    "createAnswer": lambda c: c.create_answer(),
    "setLocalDescription": lambda c: c.set_local_description(offer_of("a")),
    "setRemoteDescription": lambda c: c.set_remote_description(offer_of()),
    "rollback": lambda c: c.rollback(),
    "addIceCandidate": lambda c: c.add_ice_candidate(None),
}


@pytest.mark.parametrize("call", sorted(CALLS_AFTER_CLOSE))
@pytest.mark.parametrize("setup", ["stable", "have-local-offer", "have-remote-offer"])
def test_anything_after_close(call: str, setup: str) -> None:
    conn = pc()
    if setup == "have-local-offer":
        have_local_offer(conn)
    elif setup == "have-remote-offer":
        have_remote_offer(conn)
    conn.close()
    assert (conn.signaling_state, conn.connection_state) == ("closed", "closed")
    with pytest.raises(InvalidStateError, match="closed"):
        CALLS_AFTER_CLOSE[call](conn)
    assert conn.signaling_state == "closed"


# ----------------------------------------------------------------------- happy cycles


def test_trickle_offer_answer_cycle() -> None:
    a, b = pc("a", trickle=True), pc("b", trickle=True)
    offer = a.create_offer()
    assert offer == SessionDescription(type="offer", sdp="model v=1 ufrag=a.g0")
    assert a.signaling_state == "stable"  # createOffer alone changes nothing
    a.set_local_description(offer)
    assert a.signaling_state == "have-local-offer"
    a_cands = a.take_gathered()
    assert a_cands == [
        IceCandidate(candidate="candidate:a.g0#0", sdp_mid="0", sdp_mline_index=0),
        IceCandidate(candidate="candidate:a.g0#1", sdp_mid="0", sdp_mline_index=0),
        None,
    ]
    assert a.take_gathered() == []  # handed over once

    b.set_remote_description(offer)
    assert b.signaling_state == "have-remote-offer"
    answer = b.create_answer()
    assert answer == SessionDescription(type="answer", sdp="model v=1 ufrag=b.g0")
    b.set_local_description(answer)
    assert b.signaling_state == "stable"
    b_cands = b.take_gathered()
    assert len(b_cands) == 3 and b_cands[-1] is None

    assert not a.ice_ready()  # no answer yet
    a.set_remote_description(answer)
    assert a.signaling_state == "stable"
    assert not a.ice_ready()  # no remote candidate yet
    for candidate in b_cands:
        a.add_ice_candidate(candidate)
    for candidate in a_cands:
        b.add_ice_candidate(candidate)
    assert a.ice_ready() and b.ice_ready()
    assert a.credentials() == ("a.g0", "b.g0")
    assert b.credentials() == ("b.g0", "a.g0")
    assert a.remote_candidates == {"b.g0#0", "b.g0#1"}
    assert a.remote_ended and b.remote_ended
    # like a real SDP's session version: the next description differs
    assert a.create_offer().sdp == "model v=2 ufrag=a.g0"


def test_non_trickle_offer_answer_cycle() -> None:
    a, b = pc("a", trickle=False), pc("b", trickle=False)
    offer = a.create_offer()
    assert offer.sdp == "model v=1 ufrag=a.g0 cands=a.g0#0,a.g0#1 eoc"
    a.set_local_description(offer)
    assert a.take_gathered() == []  # every candidate is in the description
    b.set_remote_description(offer)
    answer = b.create_answer()
    b.set_local_description(answer)
    a.set_remote_description(answer)
    assert b.take_gathered() == []
    assert a.ice_ready() and b.ice_ready()
    assert a.remote_candidates == {"b.g0#0", "b.g0#1"}
    assert a.remote_ended  # a=end-of-candidates was in the SDP
    with pytest.raises(InvalidStateError):
        a.add_ice_candidate(IceCandidate(candidate="candidate:b.g0#7"))


def test_renegotiation_keeps_the_ufrag() -> None:
    a, b = negotiated_pair(trickle=True)
    offer = a.create_offer()
    assert "a.g0" in offer.sdp
    a.set_local_description(offer)
    assert a.take_gathered() == []  # same ICE generation: no new gathering
    b.set_remote_description(offer)
    answer = b.create_answer()
    assert "b.g0" in answer.sdp
    b.set_local_description(answer)
    a.set_remote_description(answer)
    assert a.credentials() == ("a.g0", "b.g0")
    assert a.ice_ready() and b.ice_ready()


@pytest.mark.parametrize("trickle", [True, False])
def test_ice_restart_changes_the_ufrag_on_both_sides(trickle: bool) -> None:
    a, b = negotiated_pair(trickle=trickle)
    restart = a.create_offer(ice_restart=True)
    assert "ufrag=a.g1" in restart.sdp
    a.set_local_description(restart)
    b.set_remote_description(restart)
    answer = b.create_answer()
    assert "ufrag=b.g1" in answer.sdp  # the answerer restarts too
    b.set_local_description(answer)
    a.set_remote_description(answer)
    assert a.credentials() == ("a.g1", "b.g1")
    assert b.credentials() == ("b.g1", "a.g1")
    if trickle:
        assert not a.ice_ready()  # the old generation's candidates do not count
        assert not a.remote_ended
        fresh = b.take_gathered()
        assert [c.candidate if c else None for c in fresh] == [
            "candidate:b.g1#0",
            "candidate:b.g1#1",
            None,
        ]
        for candidate in fresh:
            a.add_ice_candidate(candidate)
        with pytest.raises(OperationError):  # an old-generation candidate no longer fits
            b.add_ice_candidate(IceCandidate(candidate="candidate:a.g0#0"))
    assert a.ice_ready()
    assert a.remote_candidates == {"b.g1#0", "b.g1#1"}


# ----------------------------------------------------------------------- hypothesis

ALLOWED: dict[str, frozenset[str]] = {
    # W3C webrtc-pc: where each call is allowed (elsewhere: InvalidStateError)
    "create_offer": frozenset({"stable", "have-local-offer"}),
    "create_answer": frozenset({"have-remote-offer"}),
    "sld_offer": frozenset({"stable", "have-local-offer"}),
    "sld_answer": frozenset({"have-remote-offer"}),
    "srd_offer": frozenset({"stable", "have-remote-offer"}),
    "srd_answer": frozenset({"have-local-offer"}),
    "rollback": frozenset({"have-local-offer", "have-remote-offer"}),
}
NEXT_STATE = {
    "sld_offer": "have-local-offer",
    "sld_answer": "stable",
    "srd_offer": "have-remote-offer",
    "srd_answer": "stable",
    "rollback": "stable",
}

ufrags = st.sampled_from(["z.g0", "z.g1", "a.g0"])
sdps = st.one_of(
    ufrags.map(lambda u: f"model ufrag={u}"),
    ufrags.map(lambda u: f"model ufrag={u} cands={u}#0 eoc"),
    st.sampled_from(["", "v=0", "model cands=x"]),  # unreadable
)
candidates = st.one_of(
    st.none(),
    st.just(IceCandidate(candidate="")),
    st.builds(lambda u, i: IceCandidate(candidate=f"candidate:{u}#{i}"), ufrags, st.integers(0, 2)),
)
calls = st.one_of(
    st.tuples(st.just("create_offer"), st.booleans()),
    st.tuples(st.just("create_answer"), st.none()),
    st.tuples(st.just("sld_offer"), st.none()),
    st.tuples(st.just("sld_answer"), st.none()),
    st.tuples(st.just("srd_offer"), sdps),
    st.tuples(st.just("srd_answer"), sdps),
    st.tuples(st.just("rollback"), st.none()),
    st.tuples(st.just("add_ice_candidate"), candidates),
    st.tuples(st.just("take_gathered"), st.none()),
    st.tuples(st.just("close"), st.none()),
)


def run_call(conn: ModelPeerConnection, name: str, arg: object) -> None:
    if name == "create_offer":
        assert isinstance(arg, bool)
        conn.create_offer(ice_restart=arg)
    elif name == "create_answer":
        conn.create_answer()
    elif name == "sld_offer":
        conn.set_local_description(SessionDescription(type="offer", sdp=f"model ufrag={conn.name}"))
    elif name == "sld_answer":
        conn.set_local_description(
            SessionDescription(type="answer", sdp=f"model ufrag={conn.name}")
        )
    elif name in ("srd_offer", "srd_answer"):
        assert isinstance(arg, str)
        conn.set_remote_description(SessionDescription(type=name[4:], sdp=arg))
    elif name == "rollback":
        conn.rollback()
    elif name == "add_ice_candidate":
        assert arg is None or isinstance(arg, IceCandidate)
        conn.add_ice_candidate(arg)
    elif name == "take_gathered":
        conn.take_gathered()
    else:
        conn.close()


@settings(max_examples=400, deadline=None)
@given(
    rollback=st.booleans(),
    trickle=st.booleans(),
    sequence=st.lists(calls, max_size=30),
)
def test_random_call_sequences_follow_the_jsep_table(
    rollback: bool, trickle: bool, sequence: list[tuple[str, object]]
) -> None:
    conn = ModelPeerConnection("a", rollback=rollback, trickle=trickle)
    for name, arg in sequence:
        before = conn.signaling_state
        had_remote = conn.current_remote is not None or conn.pending_remote is not None
        ended = conn.remote_ended
        try:
            run_call(conn, name, arg)
        except InvalidStateError:
            assert conn.signaling_state == before, "a refused call changed the state"
            must_refuse = (
                before == "closed"
                or (name in ALLOWED and before not in ALLOWED[name])
                or (name == "rollback" and not rollback)
                or (name == "add_ice_candidate" and (not had_remote or ended))
            )
            assert must_refuse, f"{name}({arg!r}) refused in {before}"
        except OperationError:
            assert conn.signaling_state == before, "a failed call changed the state"
            assert before != "closed"
            assert name in ("srd_offer", "srd_answer", "add_ice_candidate")
        else:
            assert name in ("take_gathered", "close") or before != "closed"
            if name in ALLOWED:
                assert before in ALLOWED[name], f"{name} accepted in {before}"
            if name == "rollback":
                assert rollback
            if name == "add_ice_candidate":
                assert had_remote and not ended
            if name == "close":
                assert conn.signaling_state == "closed"
            elif name in NEXT_STATE:
                assert conn.signaling_state == NEXT_STATE[name]
            else:
                assert conn.signaling_state == before
        assert conn.signaling_state in SIGNALING_STATES
