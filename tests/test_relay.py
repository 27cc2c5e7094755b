"""The relay machine, rule by rule (PROTOCOL.md: Transport, Envelope, Room membership,
Signaling, Chat, Errors), as scripts: event in, frames out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import (
    CHAT,
    ROOMS,
    SIGNALING,
    Frame,
    answer_frame,
    chat_frame,
    error_frame,
    ice_frame,
    join_frame,
    leave_frame,
    offer_frame,
    renegotiate_frame,
    strip_message,
)

from sansio_signal.actions import CloseConnection, Log, LogLevel, SendFrame
from sansio_signal.errors import LocalProtocolError
from sansio_signal.events import Connected, ConnId, Disconnected, FrameReceived
from sansio_signal.limits import Limits
from sansio_signal.relay import Phase, RelayMachine, is_clean_close
from sansio_signal.testing.relay import RelayHarness, counting_tokens
from sansio_signal.wire import JoinRoom


def take(h: RelayHarness, conn: ConnId) -> list[Frame]:
    """What ``conn`` received since the last call, error messages checked and dropped."""
    return strip_message(h.take(conn))


def take_joined(h: RelayHarness, conn: ConnId) -> list[Frame]:
    """Like :func:`take`, but also checks and drops the joiner's ``resumeToken``."""
    frames = take(h, conn)
    for frame in frames:
        if frame.get("type") == "user-joined-room" and "resumeToken" in frame:
            assert isinstance(frame.pop("resumeToken"), str)
    return frames


def joined(room: str, user: str, existing: list[str]) -> Frame:
    return {
        "channel": ROOMS,
        "type": "user-joined-room",
        "roomId": room,
        "userId": user,
        "existingParticipants": existing,
    }


def left(room: str, user: str) -> Frame:
    return {"channel": ROOMS, "type": "user-left-room", "roomId": room, "userId": user}


def chat_out(room: str, user: str, text: str, ts: float) -> Frame:
    return {
        "channel": CHAT,
        "type": "chat-message",
        "roomId": room,
        "fromUserId": user,
        "text": text,
        "ts": ts,
    }


def in_room(h: RelayHarness, room: str, *users: str) -> list[ConnId]:
    """Connect one client per user id, join them all to ``room``, clear every inbox."""
    conns = []
    for user in users:
        conn = h.connect()
        h.join(conn, room, user)
        conns.append(conn)
    for conn in h.inbox:
        h.take(conn)
    return conns


def all_quiet(h: RelayHarness, *conns: ConnId) -> bool:
    return all(h.inbox[c] == [] for c in conns)


def make_harness(limits: Limits | None = None, **machine_kwargs: Any) -> RelayHarness:
    machine = RelayMachine(limits=limits or Limits(), new_token=counting_tokens(), **machine_kwargs)
    return RelayHarness(machine=machine)


# --------------------------------------------------------------------------- membership


def test_join_alone(harness: RelayHarness) -> None:
    a = harness.connect()
    harness.join(a, "demo", "user_abc")
    [frame] = harness.take(a)
    assert isinstance(frame.pop("resumeToken"), str)
    assert frame == joined("demo", "user_abc", [])
    assert harness.machine.member(a) == ("demo", "user_abc")
    assert harness.machine.phase(a) is Phase.JOINED
    assert harness.machine.room_count == 1


def test_join_tells_everyone_including_the_joiner(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "user_abc", "user_lmn")
    c = harness.connect()
    harness.join(c, "demo", "user_xyz")
    own = harness.take(c)
    assert len(own) == 1
    assert isinstance(own[0]["resumeToken"], str)
    assert own[0] == joined("demo", "user_xyz", ["user_abc", "user_lmn"]) | {
        "resumeToken": own[0]["resumeToken"]
    }
    for other in (a, b):
        frames = harness.take(other)
        assert frames == [joined("demo", "user_xyz", ["user_abc", "user_lmn"])]
        assert "resumeToken" not in frames[0]


def test_resume_tokens_differ_between_joins(harness: RelayHarness) -> None:
    a, b = harness.connect(), harness.connect()
    harness.join(a, "demo", "a")
    harness.join(b, "demo", "b")
    token_a = harness.take(a)[0]["resumeToken"]
    token_b = harness.take(b)[0]["resumeToken"]
    assert token_a != token_b


def test_existing_participants_sorted_by_code_point(harness: RelayHarness) -> None:
    ids = ["B", "a", "_", "10", "9"]
    conns: list[ConnId] = []
    for i, user in enumerate(ids):
        conn = harness.connect()
        harness.join(conn, "demo", user)
        conns.append(conn)
        [own] = take_joined(harness, conn)
        assert own == joined("demo", user, sorted(ids[:i]))
        assert user not in own["existingParticipants"]
    z = harness.connect()
    harness.join(z, "demo", "Z")
    assert take_joined(harness, z) == [joined("demo", "Z", ["10", "9", "B", "_", "a"])]


def test_joined_reaches_members_before_later_frames(harness: RelayHarness) -> None:
    (a,) = in_room(harness, "demo", "a")
    b = harness.connect()
    harness.join(b, "demo", "b")
    harness.send(b, chat_frame("hi"))
    harness.send(b, offer_frame("a"))
    frames = harness.take(a)
    assert [f["type"] for f in frames] == ["user-joined-room", "chat-message", "webrtc-offer"]


def test_joining_a_second_room_leaves_the_first(harness: RelayHarness) -> None:
    a, b = in_room(harness, "one", "a", "b")
    (c,) = in_room(harness, "two", "c")
    harness.join(a, "two", "a")
    assert take(harness, b) == [left("one", "a")]
    assert take(harness, c) == [joined("two", "a", ["c"])]
    assert take_joined(harness, a) == [joined("two", "a", ["c"])]
    assert harness.machine.member(a) == ("two", "a")
    assert harness.machine.directory.members("one") == ["b"]
    # b is alone in "one" now: a chat there reaches b only
    harness.send(b, chat_frame("still here?"))
    assert [f["roomId"] for f in take(harness, b)] == ["one"]
    assert all_quiet(harness, a, c)


def test_joining_a_second_room_under_another_id(harness: RelayHarness) -> None:
    a, b = in_room(harness, "one", "a", "b")
    harness.join(a, "two", "alias")
    assert take(harness, b) == [left("one", "a")]
    assert take_joined(harness, a) == [joined("two", "alias", [])]
    assert harness.machine.member(a) == ("two", "alias")


def test_last_member_leaving_removes_the_room(harness: RelayHarness) -> None:
    (a,) = in_room(harness, "one", "a")
    harness.join(a, "two", "a")
    assert harness.machine.room_count == 1
    assert harness.machine.directory.members("one") == []


def test_rejoin_same_room_same_id(harness: RelayHarness) -> None:
    # PROTOCOL.md does not say what this means; whatever the machine does, the joiner
    # gets a fresh user-joined-room for itself and every member's view stays right.
    a, b = in_room(harness, "demo", "a", "b")
    harness.join(a, "demo", "a")
    assert take_joined(harness, a) == [joined("demo", "a", ["b"])]
    view = {"a", "b"}
    for frame in take(harness, b):
        assert frame["roomId"] == "demo" and frame["userId"] == "a"
        if frame["type"] == "user-left-room":
            view.remove("a")
        else:
            assert frame["type"] == "user-joined-room"
            view.add("a")
    assert view == {"a", "b"}
    assert harness.machine.member(a) == ("demo", "a")
    assert harness.machine.directory.members("demo") == ["a", "b"]


def test_rejoin_same_room_under_a_new_id(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.join(a, "demo", "a2")
    assert take(harness, b) == [left("demo", "a"), joined("demo", "a2", ["b"])]
    assert take_joined(harness, a) == [joined("demo", "a2", ["b"])]
    assert harness.machine.directory.members("demo") == ["a2", "b"]


def test_rejoin_after_leave(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, leave_frame("demo"))
    harness.join(a, "demo", "a")
    assert take_joined(harness, a) == [joined("demo", "a", ["b"])]
    assert take(harness, b) == [left("demo", "a"), joined("demo", "a", ["b"])]


def test_same_user_id_in_different_rooms(harness: RelayHarness) -> None:
    (a,) = in_room(harness, "one", "u")
    b = harness.connect()
    harness.join(b, "two", "u")
    assert take_joined(harness, b) == [joined("two", "u", [])]
    assert all_quiet(harness, a)


def test_user_id_taken(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    c = harness.connect()
    harness.join(c, "demo", "a")
    assert take(harness, c) == [error_frame(ROOMS, "user-id-taken")]
    assert all_quiet(harness, a, b)
    assert harness.machine.member(c) is None
    assert harness.machine.directory.lookup("demo", "a") == a


@pytest.mark.parametrize(
    "token", ["tök1", "\u00e9", "\ud800", "tok1\u0000", "", "t" * 4096, "\U0001f600"]
)
@pytest.mark.parametrize("clean", [True, False])
def test_malformed_resume_token_is_user_id_taken(token: str, clean: bool) -> None:
    """Issue 11: a non-ASCII resumeToken crashed the token comparison (TypeError in
    hmac.compare_digest); any token but the right one is a wrong one: user-id-taken."""
    h = make_harness(Limits(resume_grace=10.0))
    a, b = in_room(h, "demo", "a", "b")  # a's token is tok1
    if not clean:
        h.disconnect(a, clean=False)  # held: the token is compared with the held one
    c = h.connect()
    h.join(c, "demo", "a", resume_token=token)
    assert take(h, c) == [error_frame(ROOMS, "user-id-taken")]
    assert all_quiet(h, b)
    assert h.machine.member(c) is None
    h.join(c, "demo", "a", resume_token="tok1")  # the right one still works
    assert take_joined(h, c)[0] == joined("demo", "a", ["b"])


def test_user_id_taken_by_a_held_member_says_held_and_for_how_long() -> None:
    """Issue 11: a peer killed cannot rejoin under its name during the resume grace; the
    refusal says the id is held for a resume and how many seconds remain (rounded up)."""
    h = make_harness(Limits(resume_grace=10.0))
    a, _b = in_room(h, "demo", "alice", "b")
    h.disconnect(a, clean=False)
    h.advance(2.5)
    c = h.connect()
    h.join(c, "demo", "alice")
    [error] = h.take(c)
    assert (error["code"], error["message"]) == (
        "user-id-taken",
        "user id 'alice' is held for a resume in room 'demo' for 8 s more",
    )
    h.advance(7.9)
    h.join(c, "demo", "alice", resume_token="wrong")
    assert h.take(c)[0]["message"].endswith("is held for a resume in room 'demo' for 1 s more")
    h.advance(0.1)
    h.fire_timers()  # the grace passed: the id is free
    h.join(c, "demo", "alice")
    assert take_joined(h, c) == [joined("demo", "alice", ["b"])]


def test_refused_joins_are_logged_at_info_with_the_code() -> None:
    h = make_harness(Limits(max_room_size=2), authorize=_deny_room_other)
    in_room(h, "demo", "a", "b")
    c = h.connect()
    start = len(h.actions)
    h.join(c, "demo", "a")
    h.join(c, "demo", "c")
    h.join(c, "other", "c")
    infos = [x.text() for x in h.actions[start:] if isinstance(x, Log) and x.level is LogLevel.INFO]
    assert infos == [
        'Join of user "a" to room "demo" refused (user-id-taken):'
        " user id 'a' is taken in room 'demo'",
        'Join of user "c" to room "demo" refused (room-full): room \'demo\' is full (2 members)',
        'Join of user "c" to room "other" refused (unauthorized):'
        " join refused: missing or invalid token",
    ]


def test_user_id_is_free_again_after_leave_and_disconnect(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, leave_frame("demo"))
    harness.disconnect(b)
    c, d = harness.connect(), harness.connect()
    harness.join(c, "demo", "a")
    harness.join(d, "demo", "b")
    assert take_joined(harness, c) == [joined("demo", "a", []), joined("demo", "b", ["a"])]
    assert take_joined(harness, d) == [joined("demo", "b", ["a"])]


def _deny_room_other(join: JoinRoom, now: float) -> bool:
    return join.room_id != "other"


@pytest.mark.parametrize("failure", ["user-id-taken", "invalid-id", "room-full", "unauthorized"])
def test_failed_join_leaves_current_room_untouched(failure: str) -> None:
    h = make_harness(Limits(max_room_size=2), authorize=_deny_room_other)
    x, y = in_room(h, "home", "x", "y")
    if failure == "user-id-taken":
        in_room(h, "full", "dup")
        h.join(x, "full", "dup")
    elif failure == "invalid-id":
        h.join(x, "bad room", "x")
    elif failure == "room-full":
        in_room(h, "full", "p", "q")
        h.join(x, "full", "x")
    else:
        h.join(x, "other", "x")
    assert take(h, x) == [error_frame(ROOMS, failure)]
    assert all(frames == [] for frames in h.inbox.values())
    assert h.machine.member(x) == ("home", "x")
    assert h.machine.directory.members("home") == ["x", "y"]
    # x is still a working member of "home"
    h.send(x, renegotiate_frame("y"))
    assert [f["fromUserId"] for f in take(h, y)] == ["x"]


def test_authorize_sees_the_join_and_its_wall_time() -> None:
    calls: list[tuple[JoinRoom, float]] = []

    def authorize(join: JoinRoom, wall_time: float) -> bool:
        calls.append((join, wall_time))
        return join.token == "good"

    h = make_harness(authorize=authorize)
    h.now, h.wall_time = 3.0, 1234.5
    a = h.connect()
    h.join(a, "demo", "a")
    assert take(h, a) == [error_frame(ROOMS, "unauthorized")]
    h.send(a, join_frame("demo", "a", token="good"))
    assert take_joined(h, a) == [joined("demo", "a", [])]
    assert calls == [
        (JoinRoom(room_id="demo", user_id="a"), 1234.5),
        (JoinRoom(room_id="demo", user_id="a", token="good"), 1234.5),
    ]


def test_room_full_at_max_room_size() -> None:
    h = make_harness(Limits(max_room_size=3))
    members = in_room(h, "demo", "a", "b", "c")
    d = h.connect()
    h.join(d, "demo", "d")
    assert take(h, d) == [error_frame(ROOMS, "room-full")]
    assert all_quiet(h, *members)
    assert h.machine.directory.size("demo") == 3
    # a place frees up: the join now succeeds
    h.send(members[0], leave_frame("demo"))
    h.join(d, "demo", "d")
    assert take_joined(h, d) == [joined("demo", "d", ["b", "c"])]


def test_member_of_a_full_room_may_rejoin_it_under_a_new_id() -> None:
    h = make_harness(Limits(max_room_size=2))
    a, _b = in_room(h, "demo", "a", "b")
    h.join(a, "demo", "a2")
    assert take_joined(h, a) == [joined("demo", "a2", ["b"])]
    assert h.machine.directory.members("demo") == ["a2", "b"]


def test_default_room_size_is_32(harness: RelayHarness) -> None:
    in_room(harness, "demo", *[f"u{i}" for i in range(32)])
    late = harness.connect()
    harness.join(late, "demo", "late")
    assert take(harness, late) == [error_frame(ROOMS, "room-full")]


def test_leave_room(harness: RelayHarness) -> None:
    a, b, c = in_room(harness, "demo", "a", "b", "c")
    harness.send(a, leave_frame("demo"))
    assert take(harness, b) == [left("demo", "a")]
    assert take(harness, c) == [left("demo", "a")]
    assert harness.take(a) == []
    assert harness.machine.member(a) is None
    assert harness.machine.phase(a) is Phase.LOBBY


def test_leave_room_twice_is_not_in_room(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, leave_frame("demo"))
    harness.take(b)
    harness.send(a, leave_frame("demo"))
    assert take(harness, a) == [error_frame(ROOMS, "not-in-room")]
    assert all_quiet(harness, b)


def test_leave_a_room_one_is_not_in(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, leave_frame("elsewhere"))
    assert take(harness, a) == [error_frame(ROOMS, "not-in-room")]
    assert all_quiet(harness, b)
    assert harness.machine.member(a) == ("demo", "a")


def test_disconnect_leaves_at_once(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.disconnect(a)
    assert take(harness, b) == [left("demo", "a")]
    assert harness.machine.directory.members("demo") == ["b"]
    assert harness.machine.connection_count == 1
    assert harness.machine.next_deadline() is None


def test_disconnect_from_the_lobby_is_silent(harness: RelayHarness) -> None:
    (b,) = in_room(harness, "demo", "b")
    a = harness.connect()
    assert harness.disconnect(a) == []
    assert all_quiet(harness, b)


# --------------------------------------------------------------------------- signaling


@pytest.mark.parametrize(
    "frame",
    [
        offer_frame("b"),
        answer_frame("b"),
        ice_frame("b", {"candidate": "candidate:1 1 UDP 1 1.2.3.4 5 typ host", "sdpMid": "0"}),
        ice_frame("b", None),
        renegotiate_frame("b"),
    ],
    ids=lambda f: f"{f['type']}",
)
def test_signal_forwarded_to_target_only(harness: RelayHarness, frame: Frame) -> None:
    a, b, c = in_room(harness, "demo", "a", "b", "c")
    harness.send(a, frame)
    assert harness.take(b) == [frame | {"fromUserId": "a", "roomId": "demo"}]
    assert all_quiet(harness, a, c)


def test_signal_fromuserid_and_roomid_overwritten(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, offer_frame("b", fromUserId="b", roomId="elsewhere"))
    assert harness.take(b) == [offer_frame("b", fromUserId="a", roomId="demo")]


def test_signal_extra_fields_relayed_unchanged(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    extra: dict[str, Any] = {
        "epoch": 3,
        "x": {"nested": [1, 2.5, None, True, "\u05d0\u202e\u0000"]},
        "big": 10**40,
        "lone": "\ud800",
    }
    actions = harness.send(a, answer_frame("b", **extra))
    [frame] = harness.take(b)
    assert frame == answer_frame("b", **extra) | {"fromUserId": "a", "roomId": "demo"}
    # the relayed text is the sender's (ASCII: the harness escapes) plus the stamp
    [send] = [x for x in actions if isinstance(x, SendFrame)]
    assert send.conn == b
    assert send.text.isascii()
    assert json.loads(send.text)["epoch"] == 3


def test_signal_to_user_in_another_room_is_peer_not_found(harness: RelayHarness) -> None:
    a, b = in_room(harness, "one", "a", "b")
    c, d = in_room(harness, "two", "c", "d")
    harness.send(a, offer_frame("c"))
    assert take(harness, a) == [error_frame(SIGNALING, "peer-not-found")]
    assert all_quiet(harness, b, c, d)


def test_signal_to_unknown_user_is_peer_not_found(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, ice_frame("ghost", None))
    assert take(harness, a) == [error_frame(SIGNALING, "peer-not-found")]
    assert all_quiet(harness, b)


def test_signal_to_user_that_left_is_peer_not_found(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.disconnect(b)
    harness.take(a)
    harness.send(a, renegotiate_frame("b"))
    assert take(harness, a) == [error_frame(SIGNALING, "peer-not-found")]


@pytest.mark.parametrize(
    ("frame", "channel"),
    [
        (offer_frame("b"), SIGNALING),
        (answer_frame("b"), SIGNALING),
        (ice_frame("b", None), SIGNALING),
        (renegotiate_frame("b"), SIGNALING),
        (chat_frame("hi"), CHAT),
        (leave_frame("demo"), ROOMS),
    ],
    ids=lambda v: v["type"] if isinstance(v, dict) else v,
)
def test_not_in_room(harness: RelayHarness, frame: Frame, channel: str) -> None:
    (b,) = in_room(harness, "demo", "b")
    a = harness.connect()
    harness.send(a, frame)
    assert take(harness, a) == [error_frame(channel, "not-in-room")]
    assert all_quiet(harness, b)


def test_signals_from_one_sender_to_one_target_keep_order(harness: RelayHarness) -> None:
    a, b, c = in_room(harness, "demo", "a", "b", "c")
    for seq in range(30):
        harness.send(a, ice_frame("b", {"candidate": f"c{seq}"}, seq=seq))
        harness.send(c, ice_frame("b", None, seq=100 + seq))
    frames = harness.take(b)
    assert [f["seq"] for f in frames if f["fromUserId"] == "a"] == list(range(30))
    assert [f["seq"] for f in frames if f["fromUserId"] == "c"] == list(range(100, 130))


def test_signal_log_records(harness: RelayHarness) -> None:
    a, _b = in_room(harness, "demo", "a", "b")
    harness.logs.clear()
    actions = harness.send(a, offer_frame("b"))
    # One line per relayed frame (issue 11: there were two), in the seed's words.
    assert harness.logs == [
        'Relaying message type "webrtc-offer" on channel "webrtc-signaling".'
        " Message relayed to 1 clients",
    ]
    assert [type(x) for x in actions] == [SendFrame, Log]
    assert all(x.level is LogLevel.INFO for x in actions if isinstance(x, Log))


def test_send_frame_action_fields(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    actions = harness.send(a, renegotiate_frame("b"))
    sends = [x for x in actions if isinstance(x, SendFrame)]
    assert len(sends) == 1
    assert sends[0].conn == b
    assert sends[0].frame_type == "webrtc-renegotiate"
    assert json.loads(sends[0].text) == renegotiate_frame("b", fromUserId="a", roomId="demo")


# --------------------------------------------------------------------------- chat


def test_chat_relayed_to_every_member_including_sender(harness: RelayHarness) -> None:
    a, b, c = in_room(harness, "demo", "user_abc", "b", "c")
    (other,) = in_room(harness, "elsewhere", "x")
    harness.wall_time = 1764100000.123
    harness.send(a, chat_frame("hello"))
    expected = [chat_out("demo", "user_abc", "hello", 1764100000.123)]
    for conn in (a, b, c):
        assert harness.take(conn) == expected
    assert all_quiet(harness, other)


def test_chat_ts_is_the_wall_time_of_the_frame(harness: RelayHarness) -> None:
    (a,) = in_room(harness, "demo", "a")
    for wall_time in (1764100000.0, 1764100000.987654, 1764100002.25):
        harness.wall_time = wall_time
        harness.send(a, chat_frame("t"))
        [frame] = harness.take(a)
        assert frame["ts"] == wall_time
        assert isinstance(frame["ts"], float)


def test_chat_ignores_client_supplied_stamps(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, chat_frame("hi", fromUserId="b", roomId="x", ts=0.0, extra=1))
    assert harness.take(b) == [chat_out("demo", "a", "hi", harness.wall_time)]


def test_chat_text_limit(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    harness.send(a, chat_frame("x" * 4096))
    assert harness.take(b) == [chat_out("demo", "a", "x" * 4096, harness.wall_time)]
    harness.take(a)
    harness.send(a, chat_frame("x" * 4097))
    assert take(harness, a) == [error_frame(CHAT, "bad-frame")]
    assert all_quiet(harness, b)


def test_chat_unicode_edge_cases_relayed_verbatim(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    text = '\u0000 \u202e\u05e9\u05dc\u05d5\u05dd \U0001f600 \ud800 \udfff \ufeff \\ "'
    actions = harness.send(a, chat_frame(text))
    assert harness.take(b) == [chat_out("demo", "a", text, harness.wall_time)]
    for action in actions:
        if isinstance(action, SendFrame):
            assert action.text.isascii()


def test_chat_log_records(harness: RelayHarness) -> None:
    a, _b = in_room(harness, "demo", "a", "b")
    harness.logs.clear()
    harness.send(a, chat_frame("hi"))
    assert harness.logs == [
        'Relaying message type "chat-message" on channel "webrtc-dashboard-chat".'
        " Message relayed to 2 clients",
    ]


def test_one_info_line_per_relayed_frame() -> None:
    """Issue 11: at INFO, every relayed frame (signaling, to a live or a held member,
    and chat) writes exactly one line, and nothing else is logged while relaying."""
    h = make_harness(Limits(resume_grace=10.0))
    a, b, c = in_room(h, "demo", "a", "b", "c")
    h.disconnect(c, clean=False)  # held: frames for it are queued, and logged alike
    start = len(h.actions)
    frames = [offer_frame("b"), answer_frame("b"), ice_frame("c", None), renegotiate_frame("b")]
    for frame in frames:
        h.send(a, frame)
    h.send(b, chat_frame("hi"))
    infos = [x.text() for x in h.actions[start:] if isinstance(x, Log) and x.level >= LogLevel.INFO]
    assert len(infos) == len(frames) + 1
    assert all(line.startswith("Relaying message type ") for line in infos)
    assert infos[2] == (
        'Relaying message type "webrtc-ice" on channel "webrtc-signaling".'
        " Message relayed to 1 clients"
    )


# --------------------------------------------------------------------------- bad input


_ERROR_ERROR = {"channel": ROOMS, "type": "error", "code": "bad-json", "message": ""}
_BINARY_CHAT = json.dumps(chat_frame("x")).encode()
BAD_INPUT: list[tuple[str | bytes, str, str]] = [
    (_BINARY_CHAT, "system", "bad-frame"),
    ("not json", "system", "bad-json"),
    ('{"a":NaN}', "system", "bad-json"),
    ('{"a":Infinity}', "system", "bad-json"),
    ('{"a":1e999}', "system", "bad-json"),
    ("[" * 60_000, "system", "bad-json"),
    ("[1,2]", "system", "bad-frame"),
    ("null", "system", "bad-frame"),
    ('{"type":"chat-message","text":"x"}', "system", "bad-frame"),
    ('{"channel":"nope","type":"chat-message"}', "system", "unknown-channel"),
    ('{"channel":"system","type":"error"}', "system", "unknown-type"),
    (json.dumps({"channel": CHAT, "type": "shout"}), CHAT, "unknown-type"),
    (json.dumps({"channel": CHAT}), CHAT, "bad-frame"),
    (json.dumps(chat_frame("") | {"text": 1}), CHAT, "bad-frame"),
    (
        json.dumps({"channel": SIGNALING, "type": "webrtc-offer", "toUserId": "b"}),
        SIGNALING,
        "bad-frame",
    ),
    (json.dumps(ice_frame("b c", None)), SIGNALING, "invalid-id"),
    (json.dumps(join_frame("demo", "x" * 65)), ROOMS, "invalid-id"),
    (json.dumps(join_frame("demo", "")), ROOMS, "invalid-id"),
    (json.dumps(joined("demo", "z", [])), ROOMS, "unknown-type"),
    (json.dumps(left("demo", "b")), ROOMS, "unknown-type"),
    (json.dumps(_ERROR_ERROR), ROOMS, "unknown-type"),
    (
        json.dumps(chat_out("demo", "b", "x", 1.0) | {"type": "user-joined-room"}),
        CHAT,
        "unknown-type",
    ),
]


@pytest.mark.parametrize(
    ("data", "channel", "code"), BAD_INPUT, ids=[repr(d[:30]) for d, _, _ in BAD_INPUT]
)
def test_bad_input_gets_an_error_and_changes_nothing(
    harness: RelayHarness, data: str | bytes, channel: str, code: str
) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    (c,) = in_room(harness, "other", "c")
    harness.send(a, data)
    assert take(harness, a) == [error_frame(channel, code)]
    assert all_quiet(harness, b, c)
    assert harness.closed == {}
    assert harness.machine.member(a) == ("demo", "a")
    assert harness.machine.directory.members("demo") == ["a", "b"]
    # and the connection keeps working
    harness.send(a, renegotiate_frame("b"))
    assert [f["type"] for f in harness.take(b)] == ["webrtc-renegotiate"]


def test_bad_input_from_the_lobby(harness: RelayHarness) -> None:
    a = harness.connect()
    harness.send(a, b"\x00\x01")
    harness.send(a, "{")
    assert take(harness, a) == [
        error_frame("system", "bad-frame"),
        error_frame("system", "bad-json"),
    ]
    assert harness.machine.phase(a) is Phase.LOBBY


def test_error_frame_has_exactly_the_protocol_fields(harness: RelayHarness) -> None:
    a = harness.connect()
    harness.send(a, "{")
    [frame] = harness.take(a)
    assert set(frame) == {"channel", "type", "code", "message"}
    assert isinstance(frame["message"], str) and frame["message"]


# --------------------------------------------------------------------------- frame size


def test_frame_over_limit_closes_1009_and_removes_member_at_once() -> None:
    h = make_harness(Limits(max_frame_bytes=1000))
    a, b = in_room(h, "demo", "a", "b")
    actions = h.send(a, chat_frame("x" * 1000))
    sends = [x for x in actions if isinstance(x, SendFrame)]
    closes = [x for x in actions if isinstance(x, CloseConnection)]
    assert [(s.conn, s.frame_type) for s in sends] == [(a, "error"), (b, "user-left-room")]
    assert [(c.conn, c.code) for c in closes] == [(a, 1009)]
    # the error frame comes before the close
    assert actions.index(sends[0]) < actions.index(closes[0])
    [err] = take(h, a)
    assert err["code"] == "frame-too-large"
    assert err["channel"] in {"system", CHAT}  # PROTOCOL.md: "may precede"; channel unspecified
    assert take(h, b) == [left("demo", "a")]
    assert h.closed[a][0] == 1009
    assert h.machine.directory.members("demo") == ["b"]
    assert h.machine.stats.closes[1009] == 1


def test_binary_frame_over_limit_closes_1009() -> None:
    h = make_harness(Limits(max_frame_bytes=10))
    a = h.connect()
    h.send(a, b"x" * 11)
    assert h.closed[a][0] == 1009


def test_frame_of_exactly_the_limit_in_utf8_bytes_is_accepted() -> None:
    limit = 200
    h = make_harness(Limits(max_frame_bytes=limit))
    a, b = in_room(h, "demo", "a", "b")
    base = json.dumps(chat_frame(""), ensure_ascii=False)
    pad = limit - len(base.encode())
    text = "\U0001f600" * (pad // 4) + "\u00e9" * ((pad % 4) // 2) + "x" * (pad % 2)
    data = json.dumps(chat_frame(text), ensure_ascii=False)
    assert len(data.encode()) == limit and len(data) < limit
    h.send(a, data)
    assert h.take(b) == [chat_out("demo", "a", text, h.wall_time)]
    # one byte more is too much
    assert data.endswith('"}')
    h.send(a, data[:-2] + "x" + data[-2:])
    assert h.closed[a][0] == 1009


def test_frames_after_the_machine_closed_the_connection_are_ignored() -> None:
    machine = RelayMachine(limits=Limits(max_frame_bytes=100), new_token=counting_tokens())
    machine.handle(Connected(conn=1), 0.0)
    machine.handle(Connected(conn=2), 0.0)
    machine.handle(FrameReceived(conn=1, data=json.dumps(join_frame("r", "a"))), 0.0)
    machine.handle(FrameReceived(conn=2, data=json.dumps(join_frame("r", "b"))), 0.0)
    actions = machine.handle(FrameReceived(conn=1, data="x" * 101), 1.0)
    assert [(x.conn, x.code) for x in actions if isinstance(x, CloseConnection)] == [(1, 1009)]
    assert machine.phase(1) is Phase.CLOSED
    assert machine.member(1) is None
    assert machine.connection_count == 1
    # still in flight when the machine closed it: nothing happens, nothing is decided
    for data in [json.dumps(join_frame("r", "a")), json.dumps(chat_frame("x")), "{", "x" * 500]:
        assert machine.handle(FrameReceived(conn=1, data=data), 2.0) == []
    assert machine.directory.members("r") == ["b"]
    assert machine.handle(Disconnected(conn=1), 3.0) == []
    with pytest.raises(LocalProtocolError):
        machine.phase(1)


# --------------------------------------------------------------------------- rate limit


def _chat_burst(h: RelayHarness, conn: ConnId, n: int) -> list[str]:
    """Send ``n`` chats; return what each one produced for the (solo) sender."""
    out = []
    for _ in range(n):
        h.send(conn, chat_frame("x"))
        [frame] = h.take(conn)
        out.append(frame.get("code", frame["type"]))
    return out


def test_rate_limit_burst_then_refill_over_virtual_time() -> None:
    h = make_harness(Limits(rate_limit=50, rate_burst=200))
    (a,) = in_room(h, "demo", "a")  # the join spent one token
    assert _chat_burst(h, a, 199) == ["chat-message"] * 199
    assert _chat_burst(h, a, 1) == ["rate-limited"]
    h.advance(0.5)  # 25 tokens
    assert _chat_burst(h, a, 26) == ["chat-message"] * 25 + ["rate-limited"]
    h.advance(1000.0)  # the bucket holds at most the burst
    assert _chat_burst(h, a, 201) == ["chat-message"] * 200 + ["rate-limited"]
    assert h.closed == {}
    assert h.machine.stats.errors["rate-limited"] == 3


def test_rate_limited_frame_is_dropped() -> None:
    h = make_harness(Limits(rate_limit=1, rate_burst=2))
    a, b = in_room(h, "demo", "a", "b")  # each spent its one join token of two
    h.send(a, chat_frame("one"))
    h.send(a, chat_frame("two"))
    assert [f["text"] for f in h.take(b)] == ["one"]
    [err] = take(h, a)[1:]
    assert err["code"] == "rate-limited"
    assert err["channel"] in {"system", CHAT}  # PROTOCOL.md leaves this channel open


def test_rate_limit_zero_is_off() -> None:
    h = make_harness(Limits(rate_limit=0, rate_burst=1))
    (a,) = in_room(h, "demo", "a")
    assert _chat_burst(h, a, 1000) == ["chat-message"] * 1000


def test_persistent_rate_limit_excess_closes_1008() -> None:
    h = make_harness(Limits(rate_limit=50, rate_burst=200))
    a, b = in_room(h, "demo", "a", "b")
    for _ in range(199):
        h.send(a, renegotiate_frame("b"))
    h.take(b)
    for i in range(20):
        assert a not in h.closed, i
        h.send(a, renegotiate_frame("b"))
    assert h.closed[a][0] == 1008
    assert take(h, b) == [left("demo", "a")]


def test_the_relay_runs_on_a_monotonic_now_and_stamps_ts_from_the_wall_time() -> None:
    # now starts near zero (a monotonic clock's origin is arbitrary); the wall clock is
    # stepped back an hour and then forward a day (NTP) while now runs steadily on.
    h = RelayHarness(
        Limits(rate_limit=1, rate_burst=2, idle_timeout=5.0, abuse_errors=3, abuse_window=10),
        now=0.25,
        wall_time=1764100000.0,
    )
    a, b = in_room(h, "demo", "a", "b")
    stamps = []
    for step in (-3600.0, 86400.0, 0.0):
        h.advance(1.0)
        h.wall_time += step
        h.send(a, chat_frame("tick"))
        [frame] = take(h, b)
        stamps.append(frame["ts"])
        h.send(b, renegotiate_frame("a"))  # b stays under the idle timeout
        take(h, a)
    assert stamps == [1764096401.0, 1764182802.0, 1764182803.0]
    # The token bucket and the idle timeout follow now alone: two frames in one instant
    # drain a's bucket (1/s, burst 2) whatever the wall clock did meanwhile...
    h.wall_time -= 86400.0
    h.send(a, renegotiate_frame("b"))
    h.send(a, renegotiate_frame("b"))
    assert [f.get("code") for f in take(h, a)] == ["rate-limited"]
    assert [f["type"] for f in take(h, b)] == ["webrtc-renegotiate"]
    h.advance(1.0)  # ...and one second of now refills one token
    h.send(a, renegotiate_frame("b"))
    assert [f["type"] for f in take(h, b)] == ["webrtc-renegotiate"]
    h.advance(5.0)
    h.fire_timers()
    assert h.closed == {a: (1001, "idle timeout"), b: (1001, "idle timeout")}


def test_now_going_back_is_the_adapters_bug() -> None:
    machine = RelayMachine(new_token=counting_tokens())
    machine.handle(Connected(conn=1), 100.0)
    with pytest.raises(LocalProtocolError, match="monotonic"):
        machine.handle(Connected(conn=2), 99.0)
    with pytest.raises(LocalProtocolError, match="monotonic"):
        machine.handle_timer(99.0)
    machine.handle(Connected(conn=2), 100.0)  # the same instant again is fine


def test_a_frame_that_needs_the_wall_time_without_it_is_the_adapters_bug() -> None:
    machine = RelayMachine(new_token=counting_tokens(), authorize=lambda join, wall: True)
    machine.handle(Connected(conn=1), 0.0)
    join = json.dumps(join_frame("r", "a", token="t"))
    with pytest.raises(LocalProtocolError, match="wall_time"):
        machine.handle(FrameReceived(conn=1, data=join), 0.0)
    machine.handle(FrameReceived(conn=1, data=join, wall_time=1764100000.0), 0.0)
    with pytest.raises(LocalProtocolError, match="wall_time"):
        machine.handle(FrameReceived(conn=1, data=json.dumps(chat_frame("x"))), 0.0)
    # a frame that needs no calendar time goes without
    actions = machine.handle(FrameReceived(conn=1, data=json.dumps(leave_frame("r"))), 0.0)
    assert machine.member(1) is None and actions


# --------------------------------------------------------------------------- abuse


def test_twenty_errors_within_ten_seconds_close_1008(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    for i in range(19):
        harness.send(a, "{")
        harness.advance(0.5)
        assert a not in harness.closed, i
    actions = harness.send(a, "{")  # the 20th, 9.5 s after the first
    assert [type(x) for x in actions if not isinstance(x, Log)] == [
        SendFrame,  # the 20th error reply
        SendFrame,  # user-left-room to b
        CloseConnection,
    ]
    assert harness.closed[a][0] == 1008
    errors = take(harness, a)
    assert errors == [error_frame("system", "bad-json")] * 20
    assert take(harness, b) == [left("demo", "a")]
    assert harness.machine.directory.members("demo") == ["b"]
    assert harness.machine.connection_count == 1
    assert harness.machine.stats.closes[1008] == 1


def test_twenty_errors_spread_over_more_than_ten_seconds_do_not_close(
    harness: RelayHarness,
) -> None:
    (a,) = in_room(harness, "demo", "a")
    for _ in range(19):
        harness.send(a, "{")
        harness.advance(0.5625)  # exact in binary: 19 steps = 10.6875 s
    harness.send(a, "{")
    assert harness.closed == {}
    assert len(take(harness, a)) == 20
    assert harness.machine.member(a) == ("demo", "a")


def test_nineteen_quick_errors_do_not_close(harness: RelayHarness) -> None:
    (a,) = in_room(harness, "demo", "a")
    for _ in range(19):
        harness.send(a, "{")
    assert harness.closed == {}
    harness.send(a, "{")
    assert harness.closed[a][0] == 1008


def test_every_kind_of_error_reply_counts_towards_abuse(harness: RelayHarness) -> None:
    a, _b = in_room(harness, "demo", "a", "b")
    bad: list[Frame | str | bytes] = [
        renegotiate_frame("ghost"),
        "{",
        b"x",
        leave_frame("other"),
        join_frame("demo", "b"),
    ]
    for i in range(20):
        harness.send(a, bad[i % len(bad)])
    assert harness.closed[a][0] == 1008


def test_good_frames_do_not_reset_the_abuse_count(harness: RelayHarness) -> None:
    a, _b = in_room(harness, "demo", "a", "b")
    for _ in range(19):
        harness.send(a, "{")
        harness.send(a, renegotiate_frame("b"))
    assert harness.closed == {}
    harness.send(a, "{")
    assert harness.closed[a][0] == 1008


def test_abuse_close_of_one_connection_does_not_affect_another(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    for _ in range(19):
        harness.send(a, "{")
        harness.send(b, "{")
    harness.send(a, "{")  # a's 20th: b stays one error behind
    assert harness.closed == {a: (1008, harness.closed[a][1])}
    assert take(harness, b)[-1] == left("demo", "a")
    assert harness.machine.member(b) == ("demo", "b")


# --------------------------------------------------------------------------- caller errors


def test_local_protocol_errors() -> None:
    machine = RelayMachine(new_token=counting_tokens())
    with pytest.raises(LocalProtocolError):
        machine.handle(FrameReceived(conn=7, data="{}"), 0.0)
    with pytest.raises(LocalProtocolError):
        machine.handle(Disconnected(conn=7), 0.0)
    machine.handle(Connected(conn=7), 0.0)
    with pytest.raises(LocalProtocolError):
        machine.handle(Connected(conn=7), 0.0)
    machine.handle(Disconnected(conn=7), 0.0)
    with pytest.raises(LocalProtocolError):
        machine.handle(Disconnected(conn=7), 0.0)
    with pytest.raises(LocalProtocolError):
        machine.member(7)
    with pytest.raises(LocalProtocolError):
        machine.handle("not an event", 0.0)  # type: ignore[arg-type]
    machine.handle(Connected(conn=7), 0.0)  # an id may be reused once it has ended
    assert machine.phase(7) is Phase.LOBBY


def test_connected_produces_no_actions() -> None:
    machine = RelayMachine(new_token=counting_tokens())
    assert machine.handle(Connected(conn=1), 0.0) == []
    assert machine.connection_count == 1
    assert machine.member(1) is None


# --------------------------------------------------------------------------- stats, timers


def test_stats_counters(harness: RelayHarness) -> None:
    a, b = in_room(harness, "demo", "a", "b")
    stats = harness.machine.stats
    assert stats.frames_in["join-room"] == 2
    assert stats.frames_out["user-joined-room"] == 3
    harness.send(a, offer_frame("b"))
    harness.send(a, chat_frame("hi"))
    harness.send(a, "{")
    harness.send(a, b"bin")
    harness.send(a, renegotiate_frame("ghost"))
    harness.send(b, leave_frame("demo"))
    assert stats.frames_in["webrtc-offer"] == 1
    assert stats.frames_in["chat-message"] == 1
    assert stats.frames_in["webrtc-renegotiate"] == 1
    assert stats.frames_in["leave-room"] == 1
    assert stats.frames_in["invalid"] == 2
    assert stats.frames_out["webrtc-offer"] == 1
    assert stats.frames_out["chat-message"] == 2
    assert stats.frames_out["error"] == 3
    assert stats.frames_out["user-left-room"] == 1
    assert stats.errors == {"bad-json": 1, "bad-frame": 1, "peer-not-found": 1}
    assert sum(stats.closes.values()) == 0


def test_frames_out_counts_every_send_frame(harness: RelayHarness) -> None:
    a, b, _c = in_room(harness, "demo", "a", "b", "c")
    harness.send(a, chat_frame("x"))
    harness.send(b, "{")
    sent = [x for x in harness.actions if isinstance(x, SendFrame)]
    assert sum(harness.machine.stats.frames_out.values()) == len(sent)
    for action in sent:
        assert json.loads(action.text)["type"] == action.frame_type


def test_no_timers_before_resume(harness: RelayHarness) -> None:
    a, _b = in_room(harness, "demo", "a", "b")
    assert harness.machine.next_deadline() is None
    harness.disconnect(a, clean=True)
    assert harness.machine.next_deadline() is None
    assert harness.machine.handle_timer(harness.now + 100.0) == []


@pytest.mark.parametrize(
    ("code", "by_server", "server_code", "clean"),
    [
        (1000, False, None, True),  # the client said goodbye
        (1001, False, None, True),  # a page going away
        (None, False, None, False),  # the socket dropped: held for a resume
        (4001, False, None, False),  # any other client code: held too
        (None, True, 1008, True),  # closed by the server for its behaviour: gone at once
        (None, True, 1013, True),
        (None, True, 1001, True),  # the server shutting down
        (None, True, 1012, False),  # the server restarting: its clients come back
    ],
)
def test_which_ends_of_a_socket_are_clean(
    code: int | None, by_server: bool, server_code: int | None, clean: bool
) -> None:
    assert is_clean_close(code, by_server=by_server, server_code=server_code) is clean


def test_idle_timeout_closes_a_silent_connection_and_frames_keep_one_open() -> None:
    h = RelayHarness(Limits(idle_timeout=5.0))
    quiet, talker = h.connect(), h.connect()
    h.join(quiet, "r", "quiet")
    h.join(talker, "r", "talker")
    h.take(quiet), h.take(talker)
    for _ in range(3):  # the talker sends a frame every 2 s; the deadline moves lazily
        h.advance(2.0)
        h.fire_timers()
        h.send(talker, {"channel": CHAT, "type": "chat-message", "text": "tick"})
    assert h.closed == {quiet: (1001, "idle timeout")}
    assert [f["type"] for f in h.take(talker)][-2:] == ["user-left-room", "chat-message"]
    h.advance(4.9)
    h.fire_timers()
    assert talker not in h.closed
    h.advance(0.2)
    h.fire_timers()
    assert h.closed[talker] == (1001, "idle timeout")
    assert h.machine.stats.idle_closes == 2 and h.machine.next_deadline() is None


def test_no_idle_timeout_by_default() -> None:
    h = RelayHarness()
    h.connect()
    assert h.machine.next_deadline() is None
