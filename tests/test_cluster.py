"""Relay machines of several nodes on one shared store (issue 14): scripted cases and a
property test over random interleavings.

Each node is a ``RelayMachine(node=...)``; the store is the reference ``SimStore``. The
harness decides when each node's store operations run, when their answers and the
store's notices reach the node, and when time passes — so hypothesis explores orders a
real cluster would produce (one node's operations run in the order it issued them, its
answers come back in that order; notices come on their own path, in their own order).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_signal import (
    CloseConnection,
    Connected,
    Disconnected,
    FrameReceived,
    Limits,
    RelayMachine,
    SendFrame,
)
from sansio_signal.store import (
    MailNotice,
    NodeLapsed,
    NodeMessage,
    StoreFailed,
    StoreOp,
    StoreResult,
)
from sansio_signal.testing.store import SimStore
from sansio_signal.tokens import TokenAuthority, issue_token

ROOMS, SIGNALING, CHAT = "webrtc-dashboard-rooms", "webrtc-signaling", "webrtc-dashboard-chat"
LIMITS = Limits(rate_limit=0, max_room_size=3, resume_grace=5.0)


@attrs.define
class Client:
    conn: int
    node: str
    frames: list[dict[str, Any]] = attrs.field(factory=list)
    closed: bool = False
    seq: int = 0
    token: dict[tuple[str, str], str] = attrs.field(factory=dict)
    resumed: bool = False
    """It sent a join with a resume token: the frames it missed follow its own
    user-joined-room, and may repeat a change that list already shows (the client
    machine skips those, as on one process)."""


@attrs.define
class Node:
    machine: RelayMachine
    ops: deque[StoreOp] = attrs.field(factory=deque)
    answers: deque[StoreResult] = attrs.field(factory=deque)
    notices: deque[MailNotice | NodeMessage] = attrs.field(factory=deque)


class Cluster:
    def __init__(
        self,
        nodes: int = 3,
        mailbox_cap: int = LIMITS.resume_queue_frames,
        secret: bytes | None = None,
    ) -> None:
        tokens = itertools.count()
        self.store = SimStore(mailbox_cap=mailbox_cap)
        self.nodes: dict[str, Node] = {}
        for i in range(nodes):
            authority = None if secret is None else TokenAuthority(secret)
            machine = RelayMachine(
                limits=LIMITS,
                new_token=lambda: f"tok{next(tokens)}",
                node=f"n{i}",
                authorize=authority,
            )
            if authority is not None:  # as serve wires it
                authority.room_size = machine.room_size
            self.nodes[f"n{i}"] = Node(machine)
        for name in self.nodes:
            self.store.heartbeat(name)
        self.clients: dict[int, Client] = {}
        self.pending_close: list[Client] = []
        """Clients the machines closed, whose sockets the harness ends next."""
        self.conns = itertools.count(1)
        self.now = 0.0

    # ------------------------------------------------------------------ driving

    def feed(self, name: str, event: Any) -> None:
        self.run(name, self.nodes[name].machine.handle(event, self.now))

    def run(self, name: str, actions: list[Any]) -> None:
        """What the adapter does with a node's actions."""
        node = self.nodes[name]
        for action in actions:
            if isinstance(action, SendFrame):
                self.clients[action.conn].frames.append(json.loads(action.text))
            elif isinstance(action, CloseConnection):
                client = self.clients[action.conn]
                if not client.closed:
                    client.closed = True
                    self.pending_close.append(client)
            elif not hasattr(action, "level"):  # a store operation
                node.ops.append(action)

    def connect(self, name: str) -> Client:
        client = Client(conn=next(self.conns), node=name)
        self.clients[client.conn] = client
        self.feed(name, Connected(conn=client.conn, address=f"10.0.0.{client.conn}"))
        return client

    def send(self, client: Client, frame: dict[str, Any]) -> None:
        if not client.closed:
            self.feed(
                client.node,
                FrameReceived(conn=client.conn, data=json.dumps(frame), wall_time=1e9 + self.now),
            )

    def join(
        self,
        client: Client,
        room: str,
        user: str,
        *,
        resume: bool = False,
        token: str | None = None,
    ) -> None:
        """``join-room``; ``resume``: with the last token the room gave ``user``, or
        ``token``."""
        frame = {"channel": ROOMS, "type": "join-room", "roomId": room, "userId": user}
        if resume and (room, user) in self.tokens:
            frame["resumeToken"] = self.tokens[(room, user)]
        if token is not None:
            frame["resumeToken"] = token
        client.resumed |= "resumeToken" in frame
        self.send(client, frame)

    def ice(self, client: Client, to: str, **fields: Any) -> None:
        """A ``webrtc-ice`` (end of candidates) to ``to``, with ``fields`` of its own."""
        frame = {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": to, "candidate": None}
        self.send(client, {**frame, **fields})

    def end(self, client: Client, *, clean: bool) -> None:
        if not client.closed:
            client.closed = True
            self.feed(client.node, Disconnected(conn=client.conn, clean=clean))

    def kill(self, name: str) -> None:
        """Node ``name`` dies (SIGKILL): it stops beating and answering; what it had not
        sent to the store is lost; its clients' sockets are gone."""
        self.store.kill(name)
        del self.nodes[name]
        for client in self.clients.values():
            if client.node == name:
                client.closed = True

    store_down = False
    """While true, every store operation fails (Redis unreachable)."""

    def step_store(self, name: str) -> bool:
        node = self.nodes[name]
        if not node.ops:
            return False
        op = node.ops.popleft()
        if self.store_down:
            node.answers.append(StoreFailed(op=op.op, reason="down"))
            return True
        node.answers.append(self.store.apply(op))
        for other, n in self.nodes.items():
            n.notices.extend(self.store.notices(other))
        for gone in set(self.store.alive) - set(self.nodes):
            self.store.notices(gone)  # nobody reads a dead node's notices
        return True

    def step_answer(self, name: str) -> bool:
        node = self.nodes[name]
        if not node.answers:
            return False
        self.feed(name, node.answers.popleft())
        return True

    def step_notice(self, name: str) -> bool:
        node = self.nodes[name]
        if not node.notices:
            return False
        self.feed(name, node.notices.popleft())
        return True

    def closes(self) -> None:
        """The adapter's side of a machine's close: the socket ends (cleanly)."""
        while self.pending_close:
            client = self.pending_close.pop()
            self.feed(client.node, Disconnected(conn=client.conn, clean=True))

    def settle(self) -> None:
        """Run every store operation, answer and notice until nothing moves."""
        moved = True
        while moved:
            self.closes()
            moved = False
            for name in self.nodes:
                moved |= self.step_store(name)
                moved |= self.step_answer(name)
                moved |= self.step_notice(name)

    def advance(self, dt: float) -> None:
        self.now += dt
        for name, node in self.nodes.items():
            deadline = node.machine.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.run(name, node.machine.handle_timer(self.now))

    @property
    def tokens(self) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for client in self.clients.values():
            for frame in client.frames:
                if frame.get("type") == "user-joined-room" and "resumeToken" in frame:
                    out[(frame["roomId"], frame["userId"])] = frame["resumeToken"]
        return out


def types(client: Client) -> list[str]:
    return [f["type"] for f in client.frames]


def new_cluster(mailbox_cap: int = LIMITS.resume_queue_frames) -> Cluster:
    return Cluster(mailbox_cap=mailbox_cap)


def alice_and_bob(cl: Cluster, bob_node: str = "n1") -> tuple[Client, Client]:
    """alice on n0 and bob on ``bob_node``, joined to room r in that order."""
    a, b = cl.connect("n0"), cl.connect(bob_node)
    cl.join(a, "r", "alice")
    cl.settle()
    cl.join(b, "r", "bob")
    cl.settle()
    return a, b


# --------------------------------------------------------------------------- scripted


def test_members_on_two_nodes_see_each_other_and_relay() -> None:
    cl = new_cluster()
    a, b = alice_and_bob(cl)
    assert a.frames[0]["existingParticipants"] == [] and "resumeToken" in a.frames[0]
    assert b.frames[0]["existingParticipants"] == ["alice"] and "resumeToken" in b.frames[0]
    assert a.frames[1] == {
        "channel": ROOMS,
        "type": "user-joined-room",
        "roomId": "r",
        "userId": "bob",
        "existingParticipants": ["alice"],
    }
    cl.ice(a, "bob")
    cl.send(b, {"channel": CHAT, "type": "chat-message", "text": "hi"})
    cl.settle()
    assert b.frames[1]["fromUserId"] == "alice" and b.frames[1]["roomId"] == "r"
    assert [f["text"] for f in a.frames + b.frames if f["type"] == "chat-message"] == ["hi"] * 2
    cl.ice(a, "zed")
    cl.settle()
    assert a.frames[-1]["code"] == "peer-not-found"
    cl.end(b, clean=True)
    cl.settle()
    assert a.frames[-1] == {
        "channel": ROOMS,
        "type": "user-left-room",
        "roomId": "r",
        "userId": "bob",
    }


def test_mail_noticed_before_the_joins_own_answer_is_delivered() -> None:
    """The notice of a frame posted right after bob's commit reaches bob's node before
    the commit's own answer (they travel apart): bob still gets the frame."""
    cl = new_cluster()
    a, b = cl.connect("n0"), cl.connect("n1")
    cl.join(a, "r", "alice")
    cl.settle()
    cl.join(b, "r", "bob")
    cl.step_store("n1")  # bob's read
    cl.step_answer("n1")  # → bob's commit
    cl.step_store("n1")  # committed; its answer waits
    cl.ice(a, "bob")
    cl.step_store("n0")  # posted into bob's mailbox: a notice for n1
    assert cl.step_notice("n1")  # ... which arrives first
    cl.settle()
    assert types(b) == ["user-joined-room", "webrtc-ice"]


def test_a_leave_while_the_store_is_down_happens_once_it_is_back() -> None:
    cl = new_cluster()
    a, b = alice_and_bob(cl)
    cl.store_down = True
    cl.end(b, clean=True)
    cl.settle()
    assert "user-left-room" not in types(a)
    cl.store_down = False
    cl.advance(1.0)  # the retry
    cl.settle()
    assert [f["userId"] for f in a.frames if f["type"] == "user-left-room"] == ["bob"]


def test_a_node_whose_heartbeat_lapsed_sends_its_members_to_resume() -> None:
    """n1 was paused past its liveness: n0 swept bob. When n1 runs again it closes bob
    (1012); bob resumes — here on n2 — with what he missed; nobody left."""
    cl = new_cluster()
    a, b = alice_and_bob(cl)
    token = b.frames[0]["resumeToken"]
    cl.store.kill("n1")  # n1 stops beating...
    paused = cl.nodes.pop("n1")  # ... and runs nothing
    cl.advance(LIMITS.node_timeout / 3 + 0.01)
    cl.settle()
    assert cl.store.members("r")["bob"].held  # swept
    cl.ice(a, "bob")
    cl.settle()
    cl.nodes["n1"] = paused  # it runs again; its next beat finds it lapsed
    cl.store.heartbeat("n1")
    cl.feed("n1", NodeLapsed())
    cl.closes()
    assert b.closed
    b2 = cl.connect("n2")
    cl.join(b2, "r", "bob", token=token)
    cl.settle()
    assert types(b2) == ["user-joined-room", "webrtc-ice"]
    assert "user-left-room" not in types(a)


def test_a_tokens_own_room_cap_holds_across_nodes() -> None:
    """A token's ``max`` claim is checked on the room as the store answered, inside the
    join's transaction: three joins racing on three nodes with max 2 — two get in."""
    secret = b"s" * 32
    cl = Cluster(secret=secret)
    clients = [cl.connect(f"n{i}") for i in range(3)]
    for i, client in enumerate(clients):
        token = issue_token(
            secret, user_id=f"u{i}", room="r", ttl=600, wall_time=1e9, max_room_size=2
        )
        frame = {"channel": ROOMS, "type": "join-room", "roomId": "r", "userId": f"u{i}"}
        cl.send(client, {**frame, "token": token})
    for name in cl.nodes:  # every read before any commit: they race
        cl.step_store(name)
    cl.settle()
    outcomes = sorted(
        "joined" if c.frames[0]["type"] == "user-joined-room" else c.frames[0]["code"]
        for c in clients
    )
    assert outcomes == ["joined", "joined", "unauthorized"]
    assert len(cl.store.members("r")) == 2


def test_racing_joins_of_one_id_on_two_nodes_have_one_winner() -> None:
    cl = new_cluster()
    a, b = cl.connect("n0"), cl.connect("n1")
    cl.join(a, "r", "same")
    cl.join(b, "r", "same")
    # both read the empty room before either commits
    cl.step_store("n0")
    cl.step_store("n1")
    cl.step_answer("n0")
    cl.step_answer("n1")
    cl.settle()
    outcomes = sorted(
        "joined" if c.frames[0]["type"] == "user-joined-room" else c.frames[0]["code"]
        for c in (a, b)
    )
    assert outcomes == ["joined", "user-id-taken"]
    assert list(cl.store.members("r")) == ["same"]


def test_a_dropped_member_resumes_on_another_node_with_what_it_missed() -> None:
    cl = new_cluster()
    a, b = alice_and_bob(cl)
    token = b.frames[0]["resumeToken"]
    cl.end(b, clean=False)
    cl.settle()
    for i in range(3):
        cl.ice(a, "bob", x=i)
    cl.settle()
    b2 = cl.connect("n2")
    cl.join(b2, "r", "bob", token=token)
    cl.settle()
    assert types(b2) == ["user-joined-room"] + ["webrtc-ice"] * 3
    assert [f["x"] for f in b2.frames[1:]] == [0, 1, 2]
    assert types(a).count("user-left-room") == 0  # the others saw nothing
    cl.advance(10.0)  # the old hold's grace passes on n1: nobody leaves
    cl.settle()
    assert types(a).count("user-left-room") == 0
    assert cl.store.members("r")["bob"].node == "n2"


def test_a_hold_that_is_not_resumed_leaves_once() -> None:
    cl = new_cluster()
    a, b = alice_and_bob(cl)
    cl.end(b, clean=False)
    cl.settle()
    cl.advance(LIMITS.resume_grace + 0.1)
    cl.settle()
    assert types(a).count("user-left-room") == 1
    assert list(cl.store.members("r")) == ["alice"]


def test_a_held_members_full_mailbox_ends_its_hold() -> None:
    """As one process's resume queue overflowing: the member leaves at once, once."""
    cl = new_cluster(mailbox_cap=3)
    a, b = alice_and_bob(cl)
    cl.end(b, clean=False)
    cl.settle()
    for _ in range(4):
        cl.ice(a, "bob")
    cl.settle()
    assert [f["userId"] for f in a.frames if f["type"] == "user-left-room"] == ["bob"]
    assert cl.nodes["n1"].machine.stats.holds_overflowed == 1
    cl.advance(LIMITS.resume_grace + 1)
    cl.settle()
    assert [f["userId"] for f in a.frames if f["type"] == "user-left-room"] == ["bob"]


def test_a_resume_while_the_old_socket_is_open_on_another_node_replaces_it() -> None:
    cl = new_cluster()
    a = cl.connect("n0")
    cl.join(a, "r", "alice")
    cl.settle()
    a2 = cl.connect("n1")
    cl.join(a2, "r", "alice", resume=True)
    cl.settle()
    assert a2.frames[0]["type"] == "user-joined-room"
    assert a.closed  # closed with 4000 on its own node
    cl.settle()
    assert list(cl.store.members("r")) == ["alice"]
    assert cl.store.members("r")["alice"].node == "n1"


def test_a_dead_nodes_members_resume_elsewhere_or_leave_once() -> None:
    cl = new_cluster()
    a, b, c = cl.connect("n0"), cl.connect("n1"), cl.connect("n1")
    for client, user in ((a, "alice"), (b, "bob"), (c, "carol")):
        cl.join(client, "r", user)
        cl.settle()
    bob_token = b.frames[0]["resumeToken"]
    cl.ice(a, "bob")
    cl.kill("n1")  # before it took bob's mail
    cl.settle()
    cl.advance(LIMITS.node_timeout / 3 + 0.01)  # the sweeps run on n0 and n2
    cl.settle()
    records = cl.store.members("r")
    assert records["bob"].held and records["carol"].held
    assert {records["bob"].node, records["carol"].node} <= {"n0", "n2"}
    b2 = cl.connect("n2")
    cl.join(b2, "r", "bob", token=bob_token)
    cl.settle()
    assert types(b2) == ["user-joined-room", "webrtc-ice"]  # what it missed
    cl.advance(LIMITS.resume_grace)
    cl.settle()
    assert [f["userId"] for f in a.frames if f["type"] == "user-left-room"] == ["carol"]
    assert sorted(cl.store.members("r")) == ["alice", "bob"]


def test_two_sweepers_one_claim_and_a_resume_first_is_not_swept() -> None:
    cl = new_cluster()
    a, b = alice_and_bob(cl)
    token = b.frames[0]["resumeToken"]
    cl.kill("n1")
    cl.advance(LIMITS.node_timeout / 3 + 0.01)  # n0 and n2 both look; one claims
    b2 = cl.connect("n2")  # bob resumes before the claimant commits its take-over
    cl.join(b2, "r", "bob", token=token)
    cl.settle()
    assert b2.frames[0]["type"] == "user-joined-room"
    record = cl.store.members("r")["bob"]
    assert (record.node, record.held) == ("n2", False)
    cl.advance(LIMITS.resume_grace + 1)
    cl.settle()
    assert "user-left-room" not in types(a)


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_interleavings_keep_the_rules(data: st.DataObject) -> None:
    """Joins (fresh and resuming), leaves, drops, closes, signals and chat on three
    nodes, with store operations, answers and notices delivered in random orders and
    time passing: ids stay unique per room, rooms never pass their size, every frame a
    member gets is of its room, each sender's signals reach each target in order, and a
    member's view of its room is consistent (nobody joins twice or leaves without
    having joined)."""
    cl = new_cluster()
    users = ["u1", "u2", "u3", "u4"]
    rooms = ["r1", "r1", "r1", "r2"]  # mostly one room: members meet
    for _ in range(data.draw(st.integers(min_value=5, max_value=60))):
        live = [c for c in cl.clients.values() if not c.closed]
        kind = data.draw(
            st.sampled_from(
                ["connect", "join", "join", "resume", "leave", "drop", "close", "chat"]
                + ["signal"] * 4
                + ["store", "answer", "notice"] * 3
                + ["time", "die"]
            )
        )
        name = data.draw(st.sampled_from(sorted(cl.nodes)))
        if kind == "connect" or (not live and kind in {"join", "resume", "leave"}):
            cl.connect(name)
        elif kind in {"join", "resume"}:
            client = data.draw(st.sampled_from(live))
            cl.join(
                client,
                data.draw(st.sampled_from(rooms)),
                data.draw(st.sampled_from(users)),
                resume=kind == "resume",
            )
        elif kind == "leave" and live:
            client = data.draw(st.sampled_from(live))
            room = data.draw(st.sampled_from(rooms))
            cl.send(client, {"channel": ROOMS, "type": "leave-room", "roomId": room})
        elif kind in {"drop", "close"} and live:
            cl.end(data.draw(st.sampled_from(live)), clean=kind == "close")
        elif kind == "signal" and live:
            client = data.draw(st.sampled_from(live))
            target = data.draw(st.sampled_from(users))
            for _ in range(data.draw(st.integers(min_value=1, max_value=3))):  # a burst
                client.seq += 1
                cl.ice(client, target, seq=[client.conn, client.seq])
        elif kind == "chat" and live:
            cl.send(
                data.draw(st.sampled_from(live)),
                {"channel": CHAT, "type": "chat-message", "text": "x"},
            )
        elif kind == "store":
            cl.step_store(name)
        elif kind == "answer":
            cl.step_answer(name)
        elif kind == "notice":
            cl.step_notice(name)
        elif kind == "time":
            cl.advance(data.draw(st.sampled_from([0.5, 3.0, 6.0])))
        elif kind == "die" and len(cl.nodes) == 3:
            cl.kill(name)
            continue
        cl.closes()
        for room in rooms:
            assert len(cl.store.members(room)) <= LIMITS.max_room_size
    cl.settle()
    cl.advance(LIMITS.node_timeout)  # every dead node swept
    cl.settle()
    cl.advance(LIMITS.resume_grace + 1)  # every hold ended
    cl.settle()
    check_views(cl)
    for room in rooms:  # nobody is left behind for a dead node
        assert all(record.node in cl.nodes for record in cl.store.members(room).values())
        assert not any(record.held for record in cl.store.members(room).values())


def check_views(cl: Cluster) -> None:
    owners: dict[tuple[str, str], int] = {}
    for client in cl.clients.values():
        room: str | None = None
        view: set[str] = set()
        last_seq: dict[int, int] = {}
        for frame in client.frames:
            kind = frame["type"]
            if kind == "error":
                continue
            if kind == "user-joined-room" and "resumeToken" in frame:
                room = frame["roomId"]
                view = set(frame["existingParticipants"]) | {frame["userId"]}
                continue
            assert frame["roomId"] == room, (client.conn, frame, room)
            if kind == "user-joined-room":
                assert client.resumed or frame["userId"] not in view, (client.conn, frame, view)
                view.add(frame["userId"])
            elif kind == "user-left-room":
                assert client.resumed or frame["userId"] in view, (client.conn, frame, view)
                view.discard(frame["userId"])
            elif kind == "webrtc-ice":
                sender, seq = frame["seq"]
                assert seq > last_seq.get(sender, 0), (client.conn, frame)
                last_seq[sender] = seq
        if not client.closed and room is not None:
            mine = [f for f in client.frames if "resumeToken" in f]
            key = (mine[-1]["roomId"], mine[-1]["userId"])
            machine = cl.nodes[client.node].machine
            if machine.member(client.conn) == key:
                assert key not in owners, (key, owners[key], client.conn)
                owners[key] = client.conn
    for (room, user), conn in owners.items():
        record = cl.store.members(room).get(user)
        assert record is not None and record.conn == conn, (room, user, record, conn)
