"""The per-address rules of the relay machine (``Connected.address``).

- ``Limits.max_per_address`` bounds open connections *plus held members* of one address:
  dropping sockets on purpose (each leaves a member held for a resume) does not escape it.
- A connection's rate bucket outlives it: the next connection from the same address
  starts from it, so reconnecting does not reset the rate limit.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from test_relay import _chat_burst as chats
from test_relay import make_harness

from sansio_signal import Limits
from sansio_signal.codes import CloseCode
from sansio_signal.testing.relay import RelayHarness

A, B = "192.0.2.1", "192.0.2.2"
REFUSED = (CloseCode.TRY_AGAIN_LATER, "too many connections from your address")


def joined_member(h: RelayHarness, address: str | None, room: str, user: str) -> int:
    conn = h.connect(address)
    h.join(conn, room, user)
    [frame] = h.take(conn)
    assert frame["type"] == "user-joined-room", frame
    return conn


def held_member(h: RelayHarness, address: str, room: str, user: str) -> str:
    """A member joined from ``address`` whose socket then drops: held for a resume.
    Returns its resume token."""
    conn = h.connect(address)
    h.join(conn, room, user)
    [frame] = h.take(conn)
    h.disconnect(conn, clean=False)
    token: str = frame["resumeToken"]
    return token


def test_connections_over_the_address_limit_are_closed_as_they_arrive() -> None:
    h = make_harness(Limits(max_per_address=2))
    first, second = h.connect(A), h.connect(A)
    third = h.connect(A)
    assert h.closed == {third: REFUSED}
    assert h.machine.address_load(A) == 2
    assert h.machine.stats.address_refusals == 1
    assert any("Refused connection 3 from 192.0.2.1" in line for line in h.logs)
    other = h.connect(B)  # another address is counted apart
    assert other not in h.closed and h.machine.address_load(B) == 1
    h.disconnect(first)
    fourth = h.connect(A)  # a place was freed
    assert fourth not in h.closed
    assert h.machine.address_load(A) == 2
    h.disconnect(second)
    h.disconnect(fourth)
    h.disconnect(other)
    assert (h.machine.address_load(A), h.machine.address_load(B)) == (0, 0)


def test_no_address_no_limit() -> None:
    h = make_harness(Limits(max_per_address=1))
    for _ in range(5):
        h.connect()
    assert h.closed == {}
    assert h.machine.connection_count == 5


def test_held_members_count_against_their_address_until_the_hold_ends() -> None:
    h = make_harness(Limits(max_per_address=2, resume_grace=10.0))
    one = joined_member(h, A, "r1", "u1")
    two = joined_member(h, A, "r2", "u2")
    h.disconnect(one, clean=False)  # held for a resume
    h.disconnect(two, clean=False)
    assert h.machine.held_count == 2
    assert h.machine.address_load(A) == 2
    refused = h.connect(A)  # two held members: no room for a third connection
    assert h.closed == {refused: REFUSED}
    assert h.machine.room_count == 2  # and no more held rooms
    h.advance(10.0)
    h.fire_timers()  # the graces pass: both leave, their places are free
    assert h.machine.held_count == 0
    assert h.machine.address_load(A) == 0
    assert h.connect(A) not in h.closed


def test_a_resume_moves_the_count_from_the_held_member_to_the_new_connection() -> None:
    h = make_harness(Limits(max_per_address=2, resume_grace=10.0))
    token = held_member(h, A, "r", "u")
    back = h.connect(A)  # held member + this connection: 2
    assert h.machine.address_load(A) == 2
    h.join(back, "r", "u", resume_token=token)
    assert h.take(back)[0]["type"] == "user-joined-room"
    assert h.machine.held_count == 0
    assert h.machine.address_load(A) == 1
    h.disconnect(back)
    assert h.machine.address_load(A) == 0


def test_a_member_resumed_from_another_address_frees_the_first() -> None:
    h = make_harness(Limits(max_per_address=1, resume_grace=10.0))
    token = held_member(h, A, "r", "u")
    assert h.connect(A) in h.closed  # the held member fills A's one place
    back = h.connect(B)  # a phone moving from Wi-Fi to mobile data
    h.join(back, "r", "u", resume_token=token)
    assert (h.machine.address_load(A), h.machine.address_load(B)) == (0, 1)


def test_reconnecting_does_not_reset_the_rate_limit() -> None:
    h = make_harness(Limits(rate_limit=50, rate_burst=200, abuse_errors=1_000))
    first = joined_member(h, A, "r", "u")  # the join spent one token
    assert chats(h, first, 200) == ["chat-message"] * 199 + ["rate-limited"]
    h.disconnect(first)
    second = h.connect(A)  # starts from the empty bucket
    h.join(second, "r", "u")
    assert [f["code"] for f in h.take(second)] == ["rate-limited"]
    h.advance(0.5)  # 25 tokens, as if it had stayed connected
    h.join(second, "r", "u")
    assert h.take(second)[0]["type"] == "user-joined-room"
    assert chats(h, second, 25) == ["chat-message"] * 24 + ["rate-limited"]
    # another address gets a full bucket
    other = joined_member(h, B, "r2", "v")
    assert chats(h, other, 199) == ["chat-message"] * 199


def test_many_reconnects_never_pass_the_rate() -> None:
    """A flood that reconnects after every burst gets the sustained rate and nothing
    more: 50 frames/s over 10 s of virtual time, plus the one burst."""
    h = make_harness(Limits(rate_limit=50, rate_burst=200, abuse_errors=1_000))
    delivered = 0
    for _ in range(100):
        conn = h.connect(A)
        delivered += chats(h, conn, 300).count("chat-message")
        h.disconnect(conn)
        h.advance(0.1)
    assert delivered <= 200 + 50 * 10 + 1


def test_parked_buckets_expire_once_full_again() -> None:
    h = make_harness(Limits(rate_limit=50, rate_burst=200, abuse_errors=1_000))
    conn = h.connect(A)
    chats_sent = chats(h, conn, 100)
    assert chats_sent.count("not-in-room") == 100  # each still spent a token
    h.disconnect(conn)
    assert h.machine.next_deadline() == h.now + 100 / 50  # when it is full again
    h.advance(2.0)
    h.fire_timers()
    assert h.machine.next_deadline() is None
    fresh = joined_member(h, A, "r", "u")
    assert chats(h, fresh, 199) == ["chat-message"] * 199


def test_a_full_bucket_is_not_parked() -> None:
    h = make_harness(Limits(rate_limit=50, rate_burst=200))
    h.disconnect(h.connect(A))
    assert h.machine.next_deadline() is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["connect", "join", "drop", "close", "wait"]),
            st.sampled_from([A, B]),
            st.integers(0, 5),
        ),
        max_size=60,
    )
)
def test_the_address_count_never_passes_the_limit_and_never_leaks(
    steps: list[tuple[str, str, int]],
) -> None:
    limit = 3
    h = make_harness(Limits(max_per_address=limit, resume_grace=5.0, rate_limit=50))
    open_: list[int] = []
    for kind, address, n in steps:
        if kind == "connect":
            conn = h.connect(address)
            if conn not in h.closed:
                open_.append(conn)
        elif open_ and kind == "join":
            conn = open_[n % len(open_)]
            h.join(conn, f"r{n}", f"u{conn}")
        elif open_ and kind in ("drop", "close"):
            conn = open_.pop(n % len(open_))
            if conn not in h.closed:
                h.disconnect(conn, clean=kind == "close")
        elif kind == "wait":
            h.advance(n)
            h.fire_timers()
        open_ = [c for c in open_ if c not in h.closed]
        assert h.machine.address_load(A) <= limit
        assert h.machine.address_load(B) <= limit
    for conn in open_:
        h.disconnect(conn, clean=False)
    h.advance(60.0)
    h.fire_timers()
    assert (h.machine.address_load(A), h.machine.address_load(B)) == (0, 0)
    assert h.machine.held_count == 0
    assert h.machine.next_deadline() is None
