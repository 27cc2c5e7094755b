"""The shared store's semantics (sansio_signal.store): the reference SimStore and the
Redis store (on a real ``redis-server``) pass the same tests.

Every test speaks only the store's operations and results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redisfix import RedisServer, require_redis_server

from sansio_signal.adapters.redis_store import RedisStore
from sansio_signal.store import (
    ClaimNode,
    CommitRoom,
    DeadNodes,
    FindDeadNodes,
    MailNotice,
    MemberRecord,
    NodeClaimed,
    NodeMessage,
    Post,
    Posted,
    ReadRoom,
    RoomCommitted,
    RoomRead,
    StoreOp,
    StoreResult,
    Take,
    Taken,
)
from sansio_signal.testing.store import SimStore

A = MemberRecord(node="n1", conn=1, token="ta")
B = MemberRecord(node="n2", conn=7, token="tb")


class Store(Protocol):
    def apply(self, op: StoreOp) -> StoreResult: ...
    def notices(self, node: str) -> list[MailNotice | NodeMessage]: ...
    def heartbeat(self, node: str) -> None: ...
    def kill(self, node: str) -> None: ...


class SyncRedis:
    """A :class:`RedisStore` driven from synchronous tests (its own event loop)."""

    def __init__(self, url: str, mailbox_cap: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = RedisStore.from_url(url, mailbox_cap=mailbox_cap)
        self.loop.run_until_complete(self.store.redis.flushall())

    def apply(self, op: StoreOp) -> StoreResult:
        return self.loop.run_until_complete(self.store.apply(op))

    def notices(self, node: str) -> list[MailNotice | NodeMessage]:
        return self.loop.run_until_complete(self.store.notices(node))

    def heartbeat(self, node: str) -> None:
        self.loop.run_until_complete(self.store.heartbeat(node, 60_000))

    def kill(self, node: str) -> None:
        self.loop.run_until_complete(self.store.retire(node))

    def close(self) -> None:
        self.loop.run_until_complete(self.store.redis.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    require_redis_server()
    with RedisServer() as server:
        yield server.url


MakeStore = Callable[..., Store]


@pytest.fixture(params=["sim", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """A function making a fresh, empty store (``mailbox_cap=``) of each kind."""
    if request.param == "sim":
        yield lambda mailbox_cap=512: SimStore(mailbox_cap=mailbox_cap)
        return
    url: str = request.getfixturevalue("redis_url")
    made: list[SyncRedis] = []

    def make(mailbox_cap: int = 512) -> Store:
        made.append(SyncRedis(url, mailbox_cap))
        return made[-1]

    yield make
    for store in made:
        store.close()


def commit(store: Store, expected: int, **kw: object) -> RoomCommitted:
    result = store.apply(CommitRoom(op=1, room="r", expected=expected, **kw))  # type: ignore[arg-type]
    assert isinstance(result, RoomCommitted)
    return result


def take(store: Store, user: str, record: MemberRecord) -> tuple[str, ...]:
    result = store.apply(Take(op=2, room="r", user=user, node=record.node, conn=record.conn))
    assert isinstance(result, Taken)
    return result.frames


def test_a_commit_applies_only_at_the_expected_version(make_store: MakeStore) -> None:
    store = make_store()
    first = commit(store, 0, put={"a": A})
    assert (first.ok, first.version, dict(first.members)) == (True, 1, {"a": A})
    stale = commit(store, 0, put={"b": B})
    assert (stale.ok, stale.version, dict(stale.members)) == (False, 1, {"a": A})
    read = store.apply(ReadRoom(op=3, room="r"))
    assert isinstance(read, RoomRead) and (read.version, dict(read.members)) == (1, {"a": A})
    second = commit(store, 1, put={"b": B}, delete=("a",))
    assert (second.ok, second.version, dict(second.members)) == (True, 2, {"b": B})


def test_posts_go_to_the_room_as_written_with_one_notice_per_filling(make_store: MakeStore) -> None:
    store = make_store()
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


def test_a_mailbox_is_taken_only_by_the_socket_its_record_names(make_store: MakeStore) -> None:
    store = make_store()
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


def test_a_leave_drops_the_mailbox_and_a_full_one_refuses_and_says_so(
    make_store: MakeStore,
) -> None:
    store = make_store(mailbox_cap=3)
    commit(store, 0, put={"a": A, "b": B})
    store.notices("n1")
    for i in range(5):
        store.apply(Post(op=i, room="r", user="a", text=str(i)))
    assert store.notices("n1") == [
        MailNotice(room="r", user="a"),
        MailNotice(room="r", user="a", full=True),  # once, at the first refused frame
    ]
    assert take(store, "a", A) == ("0", "1", "2")
    store.apply(Post(op=8, room="r", user="a", text="3"))  # room again: taken, then noticed
    assert take(store, "a", A) == ("3",)
    store.apply(Post(op=9, room="r", user="a", text="left behind"))
    commit(store, 1, delete=("a",))
    commit(store, 2, put={"a": A})
    assert take(store, "a", A) == ()  # a new member starts with an empty mailbox
    # the emptied room keeps its version: a read before it emptied cannot match again
    commit(store, 3, delete=("a", "b"))
    assert commit(store, 1, put={"a": A}).ok is False
    assert commit(store, 4, put={"a": A}).version == 5


def test_a_dead_nodes_members_go_to_the_first_that_claims_them(make_store: MakeStore) -> None:
    store = make_store()
    for node in ("n1", "n2", "n3"):
        store.heartbeat(node)
    commit(store, 0, put={"a": A, "b": B, "c": MemberRecord(node="n2", conn=8, token="tc")})
    assert store.apply(FindDeadNodes(op=1)) == DeadNodes(op=1, nodes=())
    store.kill("n2")
    assert store.apply(FindDeadNodes(op=2)) == DeadNodes(op=2, nodes=("n2",))
    claim = ClaimNode(op=3, node="n2", ttl_ms=60_000)
    assert store.apply(claim) == NodeClaimed(op=3, node="n2", members=(("r", "b"), ("r", "c")))
    assert store.apply(claim) == NodeClaimed(op=3, node="n2", members=None)  # claimed
    # the claimant holds them: the records name it, the dead node has none left
    moved = {
        u: MemberRecord(node="n1", conn=-1 - i, token="t", held=True) for i, u in enumerate("bc")
    }
    commit(store, 1, put=moved)
    store.kill("n3")  # dead, but without records: forgotten, not reported
    assert store.apply(FindDeadNodes(op=4)) == DeadNodes(op=4, nodes=())


@pytest.mark.parametrize("kind", ["sim", "redis"])
@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["a", "b"])),
        max_size=60,
    ),
    st.lists(st.integers(min_value=0, max_value=59), max_size=5),
)
def test_each_posters_frames_keep_their_order(
    kind: str, request: pytest.FixtureRequest, posts: list[tuple[str, str]], takes_at: list[int]
) -> None:
    """Interleaved posters and takes: every member receives each poster's frames in the
    order they were posted, none twice and none lost."""
    if kind == "sim":
        store: Store = SimStore()
    else:
        store = SyncRedis(request.getfixturevalue("redis_url"), 10_000)
    try:
        check_order(store, posts, takes_at)
    finally:
        if isinstance(store, SyncRedis):
            store.close()


def check_order(store: Store, posts: list[tuple[str, str]], takes_at: list[int]) -> None:
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
