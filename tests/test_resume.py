"""Resume in the relay machine (PROTOCOL.md, "Resume"): a member whose socket drops
without a clean close is held for the grace period; frames for it are queued; a join
with its resume token takes the place back and replays them; otherwise it leaves,
exactly once."""

from __future__ import annotations

from typing import Any

from conftest import CHAT, ROOMS, SIGNALING
from hypothesis import given
from hypothesis import strategies as st

from sansio_signal import Limits
from sansio_signal.events import ConnId
from sansio_signal.testing.relay import RelayHarness


def room_of(h: RelayHarness, users: list[str]) -> dict[str, ConnId]:
    conns = {}
    for user in users:
        conn = h.connect()
        h.join(conn, "r", user)
        conns[user] = conn
    for conn in conns.values():
        h.take(conn)
    return conns


def token_of(frames: list[dict[str, Any]]) -> str:
    (own,) = [f for f in frames if f["type"] == "user-joined-room" and "resumeToken" in f]
    token = own["resumeToken"]
    assert isinstance(token, str)
    return token


def joined(h: RelayHarness, conn: ConnId, room: str, user: str) -> str:
    h.join(conn, room, user)
    return token_of(h.take(conn))


def ice(to: str, n: int) -> dict[str, Any]:
    return {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": to, "candidate": None, "n": n}


def test_a_dropped_member_is_held_and_resumes_with_every_missed_frame_in_order() -> None:
    h = RelayHarness()
    a = h.connect()
    token = joined(h, a, "r", "alice")
    b, c = h.connect(), h.connect()
    h.join(b, "r", "bob")
    h.join(c, "r", "carol")
    h.take(a), h.take(b), h.take(c)

    h.disconnect(a, clean=False)
    assert h.take(b) == [] and h.take(c) == [], "the others see nothing"
    assert h.machine.held_count == 1
    h.send(b, ice("alice", 1))
    h.send(c, {"channel": CHAT, "type": "chat-message", "text": "anyone?"})
    h.send(b, ice("alice", 2))
    d = h.connect()
    h.join(d, "r", "dave")
    h.disconnect(c)  # carol leaves cleanly meanwhile
    h.take(b), h.take(d)

    a2 = h.connect()
    h.join(a2, "r", "alice", resume_token=token)
    frames = h.take(a2)
    assert frames[0]["type"] == "user-joined-room"
    assert frames[0]["userId"] == "alice"
    assert frames[0]["existingParticipants"] == ["bob", "dave"]
    assert frames[0]["resumeToken"] != token
    rest = [(f["type"], f.get("n"), f.get("fromUserId"), f.get("userId")) for f in frames[1:]]
    assert rest == [
        ("webrtc-ice", 1, "bob", None),
        ("chat-message", None, "carol", None),
        ("webrtc-ice", 2, "bob", None),
        ("user-joined-room", None, None, "dave"),
        ("user-left-room", None, None, "carol"),
    ]
    assert h.take(b) == [] and h.take(d) == [], "the others see nothing of the resume"
    assert h.machine.held_count == 0
    # live again: frames flow at once
    h.send(b, ice("alice", 3))
    assert [f["n"] for f in h.take(a2)] == [3]
    h.send(a2, ice("bob", 4))
    assert [(f["n"], f["fromUserId"]) for f in h.take(b)] == [(4, "alice")]


def test_the_grace_ends_with_exactly_one_user_left_room() -> None:
    h = RelayHarness(Limits(resume_grace=5.0))
    conns = room_of(h, ["alice", "bob"])
    h.disconnect(conns["alice"], clean=False)
    h.advance(4.9)
    h.fire_timers()
    assert h.take(conns["bob"]) == []
    assert h.machine.next_deadline() == 1_005.0
    h.advance(0.2)
    h.fire_timers()
    h.fire_timers()
    left = h.take(conns["bob"])
    assert [(f["type"], f["userId"]) for f in left] == [("user-left-room", "alice")]
    assert h.machine.held_count == 0 and h.machine.next_deadline() is None
    # the id is free again: a join (with the stale token) is a fresh join the others see
    a2 = h.connect()
    h.join(a2, "r", "alice", resume_token="tok1")
    assert [f["type"] for f in h.take(conns["bob"])] == ["user-joined-room"]


def test_wrong_or_missing_token_is_user_id_taken_and_an_old_token_is_void() -> None:
    h = RelayHarness()
    a = h.connect()
    token = joined(h, a, "r", "alice")
    h.disconnect(a, clean=False)
    for attempt in (None, "wrong", token + "x"):
        intruder = h.connect()
        h.join(intruder, "r", "alice", resume_token=attempt)
        (error,) = h.take(intruder)
        assert (error["type"], error["code"]) == ("error", "user-id-taken")
    a2 = h.connect()
    h.join(a2, "r", "alice", resume_token=token)
    assert h.take(a2)[0]["type"] == "user-joined-room"
    h.disconnect(a2, clean=False)
    a3 = h.connect()
    h.join(a3, "r", "alice", resume_token=token)  # the first token was used up
    assert h.take(a3)[0]["code"] == "user-id-taken"


def test_clean_close_and_leave_room_leave_at_once() -> None:
    h = RelayHarness()
    conns = room_of(h, ["alice", "bob", "carol"])
    h.disconnect(conns["alice"], clean=True)
    h.send(conns["carol"], {"channel": ROOMS, "type": "leave-room", "roomId": "r"})
    left = [f["userId"] for f in h.take(conns["bob"])]
    assert left == ["alice", "carol"]
    assert h.machine.held_count == 0


def test_a_resume_while_the_old_socket_is_open_replaces_it_with_4000() -> None:
    h = RelayHarness()
    conns = room_of(h, ["alice", "bob"])
    a = h.connect()
    token = joined(h, a, "r2", "alice")
    b = h.connect()
    h.join(b, "r2", "bob")
    h.take(a), h.take(b)
    a2 = h.connect()
    h.join(a2, "r2", "alice", resume_token=token)
    assert h.closed[a] == (4000, "replaced")
    assert h.take(b) == [], "the replaced socket's close removes nobody"
    assert h.take(a2)[0]["existingParticipants"] == ["bob"]
    h.send(b, ice("alice", 1))
    assert [f["n"] for f in h.take(a2)] == [1]
    assert h.take(a) == []
    assert h.machine.member(a2) == ("r2", "alice")
    del conns


def test_a_full_queue_ends_the_grace_early() -> None:
    h = RelayHarness(Limits(resume_queue_frames=3, rate_limit=0))
    conns = room_of(h, ["alice", "bob", "carol"])
    token = "tok1"
    h.disconnect(conns["alice"], clean=False)
    for n in range(3):
        h.send(conns["bob"], ice("alice", n))
    assert h.take(conns["carol"]) == []
    h.send(conns["bob"], ice("alice", 3))  # one too many
    assert [(f["type"], f["userId"]) for f in h.take(conns["carol"])] == [
        ("user-left-room", "alice")
    ]
    assert h.machine.held_count == 0 and h.machine.stats.holds_overflowed == 1
    a2 = h.connect()
    h.join(a2, "r", "alice", resume_token=token)
    assert h.take(a2)[0]["existingParticipants"] == ["bob", "carol"]  # a fresh join


def test_resume_off_when_the_grace_is_zero() -> None:
    h = RelayHarness(Limits(resume_grace=0))
    conns = room_of(h, ["alice", "bob"])
    h.disconnect(conns["alice"], clean=False)
    assert [f["type"] for f in h.take(conns["bob"])] == ["user-left-room"]


# One held member; the others do random things; then it resumes, or the grace passes.
ACTIONS = st.lists(
    st.tuples(st.sampled_from(["ice", "chat", "join", "leave", "drop"]), st.integers(0, 3)),
    max_size=30,
)


@given(ACTIONS, st.booleans())
def test_replay_is_exactly_what_was_addressed_to_the_held_member(
    actions: list[tuple[str, int]], resume: bool
) -> None:
    h = RelayHarness(Limits(rate_limit=0))
    conns = room_of(h, ["a-held", "p0", "p1"])
    present = {"p0": conns["p0"], "p1": conns["p1"]}
    dropped: dict[str, ConnId] = {}  # other members held too
    h.disconnect(conns["a-held"], clean=False)
    expected: list[tuple[str, str | None]] = []
    for n, (kind, who) in enumerate(actions):
        user = f"p{who}"
        if kind == "join" and user not in present and user not in dropped:
            conn = h.connect()
            h.join(conn, "r", user)
            present[user] = conn
            expected.append(("user-joined-room", user))
        elif kind == "leave" and user in present:
            h.disconnect(present.pop(user))
            expected.append(("user-left-room", user))
        elif kind == "drop" and user in present:
            dropped[user] = present.pop(user)
            h.disconnect(dropped[user], clean=False)  # held too: nobody is told
        elif kind == "ice" and user in present:
            h.send(present[user], ice("a-held", n))
            expected.append(("webrtc-ice", user))
        elif kind == "chat" and user in present:
            h.send(present[user], {"channel": CHAT, "type": "chat-message", "text": str(n)})
            expected.append(("chat-message", user))
    watchers = {u: h.take(c) for u, c in present.items()}
    assert all(f.get("userId") != "a-held" for frames in watchers.values() for f in frames), (
        "nobody hears of the held member"
    )
    if resume:
        back = h.connect()
        h.join(back, "r", "a-held", resume_token="tok1")
        frames = h.take(back)
        assert frames[0]["existingParticipants"] == sorted([*present, *dropped])
        got = [(f["type"], f.get("fromUserId") or f.get("userId")) for f in frames[1:]]
        assert got == expected
        for conn in present.values():
            assert h.take(conn) == []
    else:
        h.advance(Limits().resume_grace)
        h.fire_timers()
        for conn in present.values():
            lefts = [f["userId"] for f in h.take(conn) if f["type"] == "user-left-room"]
            assert sorted(lefts) == sorted(["a-held", *dropped])  # each exactly once
        assert h.machine.held_count == 0
