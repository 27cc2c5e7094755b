"""The shared store's semantics (sansio_signal.store), on the reference SimStore.

Every test speaks only the store's operations and results, so that the Redis store can be
run through the same tests (issue 14)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_signal.store import (
    CommitRoom,
    MailNotice,
    MemberRecord,
    NodeMessage,
    Post,
    Posted,
    ReadRoom,
    RoomCommitted,
    RoomRead,
    Take,
    Taken,
)
from sansio_signal.testing.store import SimStore

A = MemberRecord(node="n1", conn=1, token="ta")
B = MemberRecord(node="n2", conn=7, token="tb")


def commit(store: SimStore, expected: int, **kw: object) -> RoomCommitted:
    result = store.apply(CommitRoom(op=1, room="r", expected=expected, **kw))  # type: ignore[arg-type]
    assert isinstance(result, RoomCommitted)
    return result


def take(store: SimStore, user: str, record: MemberRecord) -> tuple[str, ...]:
    result = store.apply(Take(op=2, room="r", user=user, node=record.node, conn=record.conn))
    assert isinstance(result, Taken)
    return result.frames


def test_a_commit_applies_only_at_the_expected_version() -> None:
    store = SimStore()
    first = commit(store, 0, put={"a": A})
    assert (first.ok, first.version, dict(first.members)) == (True, 1, {"a": A})
    stale = commit(store, 0, put={"b": B})
    assert (stale.ok, stale.version, dict(stale.members)) == (False, 1, {"a": A})
    read = store.apply(ReadRoom(op=3, room="r"))
    assert isinstance(read, RoomRead) and (read.version, dict(read.members)) == (1, {"a": A})
    second = commit(store, 1, put={"b": B}, delete=("a",))
    assert (second.ok, second.version, dict(second.members)) == (True, 2, {"b": B})


def test_posts_go_to_the_room_as_written_with_one_notice_per_filling() -> None:
    store = SimStore()
    commit(store, 0, put={"a": A})
    commit(store, 1, put={"b": B}, post=(("a", "b joined"), ("b", "own"), ("x", "nobody")))
    assert store.notices("n1") == [MailNotice(room="r", user="a")]
    assert store.notices("n2") == [MailNotice(room="r", user="b")]
    assert store.apply(Post(op=4, room="r", user="a", text="ice")) == Posted(op=4, count=1)
    assert store.notices("n1") == []  # the mailbox was not empty: one notice is enough
    assert take(store, "a", A) == ("b joined", "ice")
    assert store.apply(Post(op=5, room="r", user=None, text="chat")) == Posted(op=5, count=2)
    assert store.notices("n1") == [MailNotice(room="r", user="a")]  # empty again: noticed
    assert store.apply(Post(op=6, room="r", user="zed", text="x")) == Posted(op=6, count=0)


def test_a_mailbox_is_taken_only_by_the_socket_its_record_names() -> None:
    store = SimStore()
    commit(store, 0, put={"a": A}, post=(("a", "f1"),))
    assert take(store, "a", B) == ()  # another node
    assert take(store, "a", MemberRecord(node="n1", conn=2, token="")) == ()  # another conn
    held = MemberRecord(node="n1", conn=1, token="ta", held=True)
    commit(store, 1, put={"a": held}, post=(("a", "f2"),))
    assert take(store, "a", A) == ()  # held: nobody's until it resumes
    assert store.notices("n1") == [MailNotice(room="r", user="a")]  # only the first, live
    moved = MemberRecord(node="n2", conn=9, token="t2")
    commit(store, 2, put={"a": moved}, tell=(("n1", "replaced"),))
    assert store.notices("n1") == [NodeMessage(text="replaced")]
    assert take(store, "a", moved) == ("f1", "f2")  # the resume takes what it missed


def test_a_leave_drops_the_mailbox_and_the_cap_drops_the_oldest() -> None:
    store = SimStore(mailbox_cap=3)
    commit(store, 0, put={"a": A, "b": B})
    for i in range(5):
        store.apply(Post(op=i, room="r", user="a", text=str(i)))
    assert store.mailbox("r", "a") == ["2", "3", "4"]
    commit(store, 1, delete=("a",))
    assert store.mailbox("r", "a") == []
    commit(store, 2, put={"a": A})
    assert take(store, "a", A) == ()  # a new member starts with an empty mailbox


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["a", "b"])),
        max_size=60,
    ),
    st.lists(st.integers(min_value=0, max_value=59), max_size=5),
)
def test_each_posters_frames_keep_their_order(
    posts: list[tuple[str, str]], takes_at: list[int]
) -> None:
    """Interleaved posters and takes: every member receives each poster's frames in the
    order they were posted, none twice and none lost."""
    store = SimStore()
    commit(store, 0, put={"a": A, "b": B})
    received: dict[str, list[str]] = {"a": [], "b": []}
    sent: dict[tuple[str, str], list[str]] = {}
    for i, (poster, user) in enumerate(posts):
        text = f"{poster}:{i}"
        store.apply(Post(op=i, room="r", user=user, text=text))
        sent.setdefault((poster, user), []).append(text)
        if i in takes_at:
            for name, record in (("a", A), ("b", B)):
                received[name] += take(store, name, record)
    for name, record in (("a", A), ("b", B)):
        received[name] += take(store, name, record)
    for (poster, user), texts in sent.items():
        assert [t for t in received[user] if t.startswith(poster + ":")] == texts
    assert sum(map(len, received.values())) == len(posts)
