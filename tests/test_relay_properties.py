"""The relay machine against an independent model, driven by hypothesis.

A rule-based state machine opens up to six connections, sends them random frames —
valid joins, leaves, signals and chats, malformed JSON, wrong types, oversize and
binary frames, deep nesting, unicode edge cases — disconnects them and moves the
virtual clock. A plain model keeps the truth (who is in which room, token buckets,
error counts) and predicts, for every step, exactly which frames every connection
receives and which connection is closed with which code. After every step the
invariants are checked, among them: every member's view of its room, replayed only from
the membership frames it received, equals the model's truth.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict, deque
from typing import Any, ClassVar

import attrs
from conftest import (
    CHAT,
    ROOMS,
    SIGNALING,
    Frame,
    chat_frame,
    join_frame,
    leave_frame,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sansio_signal.events import ConnId
from sansio_signal.limits import Limits
from sansio_signal.testing.relay import RelayHarness

ROOM_IDS = ["red", "blue", "r.3"]
ROOMS_BIASED = st.sampled_from(["red", "red", "red", "blue", "r.3"])  # crowd one room
USER_IDS = ["B", "a", "_", "10", "9"]  # code-point order: 10 9 B _ a
KNOWN_CHANNELS = [ROOMS, SIGNALING, CHAT]
SIGNAL_TYPES = ["webrtc-offer", "webrtc-answer", "webrtc-ice", "webrtc-renegotiate"]
MAX_CONNS = 6
SERVER_TYPES = {"user-joined-room", "user-left-room", "chat-message", "error", *SIGNAL_TYPES}

# --------------------------------------------------------------------------- frames


@attrs.frozen
class Spec:
    """One frame to send.

    ``obj`` is a valid client frame (serialized when sent; signals get a ``seq``);
    otherwise ``data`` is sent as is and must be answered with ``code`` on ``channel``.
    """

    obj: Frame | None = None
    data: str | bytes | None = None
    code: str = ""
    channel: str = "system"


_EDGE_CHARS = [
    "\u0000",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u05d0",  # Hebrew alef
    "\u0627",  # Arabic alef
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "\U0010ffff",
    "\u00e9",
    "\u0301",  # a combining accent
    '"',
    "\\",
    "\n",
    "/",
    "a",
]
EDGE_TEXT = st.text(
    st.sampled_from(_EDGE_CHARS) | st.characters(exclude_categories=()), max_size=24
)
_JSON_LEAF: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    EDGE_TEXT,
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(EDGE_TEXT, inner, max_size=3),
    max_leaves=8,
)


def _nested(depth: int) -> Any:
    value: Any = "core"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


EXTRA_VALUES = JSON_VALUES | st.integers(1, 60).map(_nested)
_RESERVED = {"channel", "type", "toUserId", "fromUserId", "roomId", "seq"}
_PAYLOAD = {"offer", "answer", "candidate"}
EXTRA_FIELDS = st.dictionaries(
    EDGE_TEXT.filter(lambda k: k not in _RESERVED | _PAYLOAD), EXTRA_VALUES, max_size=3
)
SPOOF = st.fixed_dictionaries(
    {}, optional={"fromUserId": st.sampled_from(USER_IDS), "roomId": st.sampled_from(ROOM_IDS)}
)


@st.composite
def signal_objs(draw: st.DrawFn) -> Frame:
    type_ = draw(st.sampled_from(SIGNAL_TYPES))
    to = draw(st.sampled_from([*USER_IDS, "ghost"]))
    obj: Frame = {"channel": SIGNALING, "type": type_, "toUserId": to}
    if type_ == "webrtc-offer":
        obj["offer"] = {"type": "offer", "sdp": draw(EDGE_TEXT)}
    elif type_ == "webrtc-answer":
        obj["answer"] = {"type": "answer", "sdp": draw(EDGE_TEXT)}
    elif type_ == "webrtc-ice":
        obj["candidate"] = draw(
            st.none()
            | st.fixed_dictionaries(
                {"candidate": EDGE_TEXT},
                optional={"sdpMid": st.none() | EDGE_TEXT, "sdpMLineIndex": st.integers(0, 9)},
            )
        )
    if draw(st.booleans()):
        obj["epoch"] = draw(st.integers(0, 5))
    obj.update(draw(EXTRA_FIELDS))
    obj.update(draw(SPOOF))
    return obj


@st.composite
def chat_objs(draw: st.DrawFn) -> Frame:
    text = draw(EDGE_TEXT | st.sampled_from(["x" * 64, "x" * 65, "x" * 4096, "x" * 4097]))
    spoof: dict[str, Any] = draw(SPOOF)
    if draw(st.booleans()):
        spoof["ts"] = draw(st.floats(0, 10, allow_nan=False))
    return chat_frame(text, **spoof)


JOIN_OBJS = st.builds(join_frame, ROOMS_BIASED, st.sampled_from(USER_IDS))
JOIN_OBJS = JOIN_OBJS | st.builds(
    lambda room, user, token: join_frame(room, user, token=token),
    ROOMS_BIASED,
    st.sampled_from(USER_IDS),
    EDGE_TEXT,
)
LEAVE_OBJS = st.builds(leave_frame, ROOMS_BIASED)
VALID_OBJS = st.one_of(JOIN_OBJS, LEAVE_OBJS, signal_objs(), signal_objs(), chat_objs())


def _d(obj: Any) -> str:
    return json.dumps(obj)


INVALID: list[tuple[str, str, str]] = [
    # (data, code, channel)
    ("", "bad-json", "system"),
    ("{", "bad-json", "system"),
    ("nope", "bad-json", "system"),
    ("{'a': 1}", "bad-json", "system"),
    ('{"a":NaN}', "bad-json", "system"),
    ('{"a":Infinity}', "bad-json", "system"),
    ('{"a":-1e999}', "bad-json", "system"),
    ('{"a":1' + "0" * 5000 + "}", "bad-json", "system"),
    # Far past any recursion limit (hypothesis raises the interpreter's while it runs).
    ("[" * 20_000, "bad-json", "system"),
    ("[" * 20_000 + "]" * 20_000, "bad-json", "system"),
    ('{"a":' * 20_000, "bad-json", "system"),
    ("[" * 60_000, "bad-json", "system"),
    (_d(chat_frame("x"))[:-1], "bad-json", "system"),
    ("\u0000", "bad-json", "system"),
    ("[]", "bad-frame", "system"),
    ("1", "bad-frame", "system"),
    ("null", "bad-frame", "system"),
    ('"\\ud800"', "bad-frame", "system"),
    ("[" * 50 + "]" * 50, "bad-frame", "system"),
    (_d({"type": "join-room", "roomId": "red", "userId": "a"}), "bad-frame", "system"),
    (_d({"channel": 5, "type": "chat-message"}), "bad-frame", "system"),
    (_d({"channel": "nope", "type": "join-room"}), "unknown-channel", "system"),
    (_d({"channel": "system", "type": "error"}), "unknown-type", "system"),
    (_d({"channel": "\u202e" + CHAT, "type": "chat-message"}), "unknown-channel", "system"),
    (_d({"channel": ROOMS}), "bad-frame", ROOMS),
    (_d({"channel": CHAT, "type": None}), "bad-frame", CHAT),
    (_d({"channel": SIGNALING, "type": 1}), "bad-frame", SIGNALING),
    (
        _d(
            {
                "channel": ROOMS,
                "type": "user-joined-room",
                "roomId": "red",
                "userId": "a",
                "existingParticipants": [],
            }
        ),
        "unknown-type",
        ROOMS,
    ),
    (_d({"channel": ROOMS, "type": "user-left-room", "roomId": "red"}), "unknown-type", ROOMS),
    (_d({"channel": CHAT, "type": "error", "code": "bad-json"}), "unknown-type", CHAT),
    (_d({"channel": SIGNALING, "type": "error"}), "unknown-type", SIGNALING),
    (_d({"channel": SIGNALING, "type": "chat-message"}), "unknown-type", SIGNALING),
    (_d({"channel": CHAT, "type": "join-room"}), "unknown-type", CHAT),
    (_d({"channel": ROOMS, "type": "join-room", "roomId": "red"}), "bad-frame", ROOMS),
    (_d(join_frame("red", "a") | {"userId": 5}), "bad-frame", ROOMS),
    (_d(join_frame("red", "a", token=7)), "bad-frame", ROOMS),
    (_d(leave_frame("red") | {"roomId": None}), "bad-frame", ROOMS),
    (_d(chat_frame("x") | {"text": 5}), "bad-frame", CHAT),
    (_d({"channel": SIGNALING, "type": "webrtc-offer", "toUserId": "a"}), "bad-frame", SIGNALING),
    (_d({"channel": SIGNALING, "type": "webrtc-ice", "toUserId": "a"}), "bad-frame", SIGNALING),
    (
        _d(
            {
                "channel": SIGNALING,
                "type": "webrtc-ice",
                "toUserId": "a",
                "candidate": {"candidate": "c", "sdpMLineIndex": -1},
            }
        ),
        "bad-frame",
        SIGNALING,
    ),
    (_d(join_frame("red", "a b")), "invalid-id", ROOMS),
    (_d(join_frame("red", "x" * 65)), "invalid-id", ROOMS),
    (_d(join_frame("r\u00e9d", "a")), "invalid-id", ROOMS),
    (_d(join_frame("red", "a\n")), "invalid-id", ROOMS),
    (_d(leave_frame("")), "invalid-id", ROOMS),
    (
        _d({"channel": SIGNALING, "type": "webrtc-renegotiate", "toUserId": "no way"}),
        "invalid-id",
        SIGNALING,
    ),
]


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(text)
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def reference_label(text: str) -> tuple[str, str] | None:
    """What the protocol says about a text frame that is not a JSON object (else None)."""
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except (ValueError, RecursionError):
        return ("bad-json", "system")
    return None if isinstance(value, dict) else ("bad-frame", "system")


def _labelled_text(text: str) -> Spec:
    label = reference_label(text)
    assert label is not None
    return Spec(data=text, code=label[0], channel=label[1])


INVALID_SPECS = st.one_of(
    st.sampled_from(INVALID).map(lambda t: Spec(data=t[0], code=t[1], channel=t[2])),
    st.binary(max_size=40).map(lambda b: Spec(data=b, code="bad-frame")),
    st.builds(lambda obj: Spec(data=json.dumps(obj).encode(), code="bad-frame"), VALID_OBJS),
    st.text(max_size=20).filter(lambda t: reference_label(t) is not None).map(_labelled_text),
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: Spec(data=json.dumps(v), code="bad-frame")
    ),
)


def serialize(obj: Frame, ensure_ascii: bool) -> str:
    text = json.dumps(obj, ensure_ascii=ensure_ascii)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates only travel escaped
        text = json.dumps(obj)
    return text


def utf8_size(data: str | bytes) -> int:
    return len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- the model


@attrs.frozen
class ErrorExpected:
    codes: frozenset[str]
    channels: frozenset[str]


Expected = Frame | ErrorExpected
ANY_CHANNEL = frozenset(["system", *KNOWN_CHANNELS])


@attrs.define
class ConnModel:
    tokens: float
    refilled_at: float
    room: str | None = None
    user: str | None = None
    errors: deque[float] = attrs.Factory(deque)
    view: set[str] | None = None  # replayed from received membership frames
    last_seq: dict[tuple[str, str], int] = attrs.Factory(dict)


@attrs.define
class StepExpectation:
    out: defaultdict[ConnId, list[Expected]] = attrs.Factory(lambda: defaultdict(list))
    closes: dict[ConnId, int] = attrs.Factory(dict)


class RelayModel(RuleBasedStateMachine):
    """See the module docstring."""

    LIMITS: ClassVar[Limits] = Limits()

    def __init__(self) -> None:
        super().__init__()
        self.h = RelayHarness(self.LIMITS)
        self.limits = self.LIMITS
        self.conns: dict[ConnId, ConnModel] = {}
        self.seq = itertools.count(1)

    # ------------------------------------------------------------ model operations

    def members(self, room: str) -> dict[str, ConnId]:
        return {m.user: c for c, m in self.conns.items() if m.room == room and m.user}

    def model_leave(self, step: StepExpectation, conn: ConnId) -> None:
        m = self.conns[conn]
        if m.room is None or m.user is None:
            return
        room, user = m.room, m.user
        m.room = m.user = None
        m.view = None
        for other in self.members(room).values():
            step.out[other].append(
                {"channel": ROOMS, "type": "user-left-room", "roomId": room, "userId": user}
            )

    def model_close(self, step: StepExpectation, conn: ConnId, code: int) -> None:
        self.model_leave(step, conn)
        step.closes[conn] = code
        del self.conns[conn]

    def model_error(
        self,
        step: StepExpectation,
        conn: ConnId,
        codes: set[str],
        channels: frozenset[str] | set[str],
    ) -> None:
        step.out[conn].append(ErrorExpected(frozenset(codes), frozenset(channels)))
        m = self.conns[conn]
        now = self.h.now
        m.errors.append(now)
        while m.errors and m.errors[0] <= now - self.limits.abuse_window:
            m.errors.popleft()
        if len(m.errors) >= self.limits.abuse_errors:
            self.model_close(step, conn, 1008)

    def model_bucket_allows(self, m: ConnModel) -> bool:
        limits = self.limits
        if limits.rate_limit == 0:
            return True
        now = self.h.now
        m.tokens = min(
            float(limits.rate_burst), m.tokens + (now - m.refilled_at) * limits.rate_limit
        )
        m.refilled_at = now
        if m.tokens < 1:
            return False
        m.tokens -= 1
        return True

    def expect(self, conn: ConnId, data: str | bytes, spec: Spec) -> StepExpectation:
        """Advance the model by one frame from ``conn``; return what must come out."""
        step = StepExpectation()
        m = self.conns[conn]
        if utf8_size(data) > self.limits.max_frame_bytes:  # closes 1009, whatever else
            step.out[conn].append(ErrorExpected(frozenset({"frame-too-large"}), ANY_CHANNEL))
            self.model_close(step, conn, 1009)
            return step
        if not self.model_bucket_allows(m):
            self.model_error(step, conn, {"rate-limited"}, ANY_CHANNEL)
            return step
        if spec.obj is None:
            self.model_error(step, conn, {spec.code}, {spec.channel})
            return step
        assert isinstance(data, str)
        obj = json.loads(data)  # what the server sees (surrogate pairs merged, etc.)
        channel, type_ = obj["channel"], obj["type"]
        if type_ == "chat-message" and len(obj["text"]) > self.limits.max_text_chars:
            self.model_error(step, conn, {"bad-frame"}, {CHAT})
            return step
        if type_ == "join-room":
            self.expect_join(step, conn, obj["roomId"], obj["userId"])
            return step
        if m.room is None or m.user is None:
            self.model_error(step, conn, {"not-in-room"}, {channel})
            return step
        room, user = m.room, m.user
        if type_ == "leave-room":
            if obj["roomId"] != room:
                self.model_error(step, conn, {"not-in-room"}, {ROOMS})
            else:
                self.model_leave(step, conn)
            return step
        if type_ == "chat-message":
            out = {
                "channel": CHAT,
                "type": "chat-message",
                "roomId": room,
                "fromUserId": user,
                "text": obj["text"],
                "ts": self.h.wall_time,
            }
            for member in self.members(room).values():
                step.out[member].append(out)
            return step
        target = self.members(room).get(obj["toUserId"])
        if target is None:
            self.model_error(step, conn, {"peer-not-found"}, {SIGNALING})
            return step
        step.out[target].append(obj | {"fromUserId": user, "roomId": room})
        return step

    def expect_join(self, step: StepExpectation, conn: ConnId, room: str, user: str) -> None:
        m = self.conns[conn]
        members = self.members(room)
        holder = members.get(user)
        size = len(members) - (1 if m.room == room else 0)
        failures = set()
        if holder is not None and holder != conn:
            failures.add("user-id-taken")
        if size >= self.limits.max_room_size:
            failures.add("room-full")
        if failures:  # when both apply, either answer is right
            self.model_error(step, conn, failures, {ROOMS})
            return
        self.model_leave(step, conn)
        others = self.members(room)
        frame = {
            "channel": ROOMS,
            "type": "user-joined-room",
            "roomId": room,
            "userId": user,
            "existingParticipants": sorted(others),
        }
        m.room, m.user = room, user
        step.out[conn].append(frame | {"resumeToken": "<any string>"})
        for other in others.values():
            step.out[other].append(frame)

    # ------------------------------------------------------------ running a step

    def run(self, conn: ConnId, data: str | bytes, spec: Spec) -> None:
        before = dict(self.conns)
        sender = self.conns[conn]
        sender_at_send = (sender.room, sender.user)
        closed_before = dict(self.h.closed)
        step = self.expect(conn, data, spec)
        self.h.send(conn, data)
        received = self.check_step(before, step, closed_before)
        # the main invariants once more, stated on their own
        for recipient, frames in received.items():
            for frame in frames:
                assert frame["type"] in SERVER_TYPES
                if frame["type"] == "error":
                    assert recipient == conn
                    continue
                recipient_model = self.conns.get(recipient)
                assert recipient_model is not None
                assert frame["roomId"] == recipient_model.room  # nothing outside the room
                if frame["channel"] in (SIGNALING, CHAT):
                    assert (frame["roomId"], frame["fromUserId"]) == sender_at_send

    def check_step(
        self,
        before: dict[ConnId, ConnModel],
        step: StepExpectation,
        closed_before: dict[ConnId, Any],
    ) -> dict[ConnId, list[Frame]]:
        """Compare what every connection received with the model's prediction."""
        received: dict[ConnId, list[Frame]] = {}
        for conn, model in before.items():
            actual = self.h.take(conn)
            received[conn] = [dict(frame) for frame in actual]
            expected = step.out.get(conn, [])
            assert len(actual) == len(expected), (conn, actual, expected)
            for got, want in zip(actual, expected, strict=True):
                if isinstance(want, ErrorExpected):
                    assert set(got) == {"channel", "type", "code", "message"}, got
                    assert got["type"] == "error"
                    assert got["code"] in want.codes, (got, want)
                    assert got["channel"] in want.channels, (got, want)
                    assert isinstance(got["message"], str)
                    continue
                own_copy = "resumeToken" in got
                if want["type"] == "user-joined-room" and "resumeToken" in want:
                    assert isinstance(got.get("resumeToken"), str), got
                    got = {k: v for k, v in got.items() if k != "resumeToken"}
                    want = {k: v for k, v in want.items() if k != "resumeToken"}
                assert got == want
                self.replay(model, got, own_copy)
        for frames in self.h.inbox.values():
            assert frames == []
        new_closes = {c: v[0] for c, v in self.h.closed.items() if c not in closed_before}
        assert new_closes == step.closes
        assert set(new_closes.values()) <= {1008, 1009}
        return received

    def replay(self, model: ConnModel, frame: Frame, own_copy: bool) -> None:
        """Update one connection's view of its room (and its per-sender sequence numbers)
        from a frame it received, the way a client would."""
        type_ = frame["type"]
        if type_ == "user-joined-room":
            own = frame["userId"] == model.user and frame["roomId"] == model.room
            assert own == own_copy  # only the joiner's own copy carries a resumeToken
            if own:
                assert model.user not in frame["existingParticipants"]
                model.view = {*frame["existingParticipants"], frame["userId"]}
            else:
                assert model.view is not None and frame["userId"] not in model.view
                model.view.add(frame["userId"])
        elif type_ == "user-left-room":
            assert model.view is not None and frame["userId"] in model.view
            model.view.remove(frame["userId"])
        elif type_ in SIGNAL_TYPES:
            key = (frame["roomId"], frame["fromUserId"])
            assert frame["seq"] > model.last_seq.get(key, 0)  # per-pair send order
            model.last_seq[key] = frame["seq"]

    # ------------------------------------------------------------ rules

    @initialize(n=st.integers(2, MAX_CONNS))
    def open_connections(self, n: int) -> None:
        for _ in range(n):
            self.connect()

    @precondition(lambda self: len(self.conns) < MAX_CONNS)
    @rule()
    def connect(self) -> None:
        conn = self.h.connect()
        self.conns[conn] = ConnModel(tokens=float(self.limits.rate_burst), refilled_at=self.h.now)

    def pick(self, index: int) -> ConnId:
        live = sorted(self.conns)
        return live[index % len(live)]

    def send_obj(self, conn: ConnId, obj: Frame, ensure_ascii: bool) -> None:
        obj = dict(obj)
        if obj["type"] in SIGNAL_TYPES:
            obj["seq"] = next(self.seq)
        self.run(conn, serialize(obj, ensure_ascii), Spec(obj=obj))

    # Hypothesis picks among the enabled rules uniformly: most rules send valid frames.

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_CONNS - 1), obj=JOIN_OBJS, ascii=st.booleans())
    def send_join(self, index: int, obj: Frame, ascii: bool) -> None:
        self.send_obj(self.pick(index), obj, ascii)

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_CONNS - 1), obj=VALID_OBJS, ascii=st.booleans())
    def send_valid(self, index: int, obj: Frame, ascii: bool) -> None:
        self.send_obj(self.pick(index), obj, ascii)

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_CONNS - 1), obj=signal_objs() | chat_objs(), ascii=st.booleans())
    def send_signal_or_chat(self, index: int, obj: Frame, ascii: bool) -> None:
        self.send_obj(self.pick(index), obj, ascii)

    @precondition(lambda self: any(m.room for m in self.conns.values()))
    @rule(index=st.integers(0, MAX_CONNS - 1), obj=signal_objs(), to=st.integers(0, 9))
    def send_signal_to_a_member(self, index: int, obj: Frame, to: int) -> None:
        """A signal from a member to someone in its room (random targets mostly miss)."""
        senders = sorted(c for c, m in self.conns.items() if m.room)
        conn = senders[index % len(senders)]
        room = self.conns[conn].room
        assert room is not None
        members = sorted(self.members(room))
        self.send_obj(conn, obj | {"toUserId": members[to % len(members)]}, True)

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_CONNS - 1), spec=INVALID_SPECS)
    def send_invalid(self, index: int, spec: Spec) -> None:
        assert spec.data is not None
        self.run(self.pick(index), spec.data, spec)

    @precondition(lambda self: bool(self.conns))
    @rule(
        index=st.integers(0, MAX_CONNS - 1),
        obj=chat_objs() | signal_objs(),
        filler=st.sampled_from(["x", "\u00e9", "\u20ac", "\U0001f600"]),
        delta=st.sampled_from([-2, -1, 0, 0, 1, 1000]),
        garbage=st.sampled_from([None, None, None, "text", "binary"]),
    )
    def send_sized(
        self, index: int, obj: Frame, filler: str, delta: int, garbage: str | None
    ) -> None:
        """A valid frame padded to the size limit plus ``delta`` UTF-8 bytes, or garbage
        of about that size."""
        conn = self.pick(index)
        target = self.limits.max_frame_bytes + delta
        if garbage is not None:
            data: str | bytes = b"\x00" * target if garbage == "binary" else "{" * target
            code = "bad-frame" if garbage == "binary" else "bad-json"
            self.run(conn, data, Spec(data=data, code=code))
            return
        obj = dict(obj)
        if obj["type"] in SIGNAL_TYPES:
            obj["seq"] = next(self.seq)
        obj["pad"] = ""
        if any("\ud800" <= ch <= "\udfff" for ch in json.dumps(obj, ensure_ascii=False)):
            filler = "x"  # lone surrogates: the frame travels ASCII-escaped
        missing = target - utf8_size(serialize(obj, False))
        if missing < 0:
            return
        width = len(filler.encode())
        obj["pad"] = filler * (missing // width) + "x" * (missing % width)
        data = serialize(obj, False)
        assert utf8_size(data) == target
        self.run(conn, data, Spec(obj=obj))

    @precondition(lambda self: bool(self.conns))
    @rule(index=st.integers(0, MAX_CONNS - 1))
    def disconnect(self, index: int) -> None:
        conn = self.pick(index)
        before = dict(self.conns)
        closed_before = dict(self.h.closed)
        step = StepExpectation()
        self.model_leave(step, conn)
        del self.conns[conn]
        self.h.disconnect(conn)
        self.check_step({c: m for c, m in before.items() if c != conn}, step, closed_before)

    @rule(quarters=st.integers(1, 48))
    def advance(self, quarters: int) -> None:
        self.h.advance(quarters / 4)  # exact in binary: the model's arithmetic matches

    # ------------------------------------------------------------ invariants

    @invariant()
    def machine_agrees_with_model(self) -> None:
        machine = self.h.machine
        assert machine.connection_count == len(self.conns)
        rooms = {m.room for m in self.conns.values() if m.room is not None}
        assert machine.room_count == len(rooms)
        for conn, m in self.conns.items():
            assert machine.member(conn) == (None if m.room is None else (m.room, m.user))
        for room in rooms:
            assert machine.directory.members(room) == sorted(self.members(room))
        assert machine.next_deadline() is None

    @invariant()
    def every_view_is_the_truth(self) -> None:
        for m in self.conns.values():
            if m.room is None:
                assert m.view is None
            else:
                assert m.view == set(self.members(m.room))


# --------------------------------------------------------------------------- the tests

_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class TightLimits(RelayModel):
    """Small rooms, a small frame limit, a slow bucket and a short fuse."""

    LIMITS = Limits(
        max_frame_bytes=24_000,
        max_room_size=3,
        max_text_chars=64,
        rate_limit=4.0,
        rate_burst=6,
        abuse_errors=5,
        abuse_window=10.0,
    )


class DefaultLimits(RelayModel):
    """Protocol defaults, except a room size the six connections can fill."""

    LIMITS = Limits(max_room_size=4)


class NoRateLimit(RelayModel):
    """``rate_limit=0`` turns the bucket off."""

    LIMITS = Limits(max_frame_bytes=4096, max_room_size=5, rate_limit=0, abuse_errors=8)


def test_relay_against_model_tight_limits() -> None:
    run_state_machine_as_test(TightLimits, settings=_SETTINGS)


def test_relay_against_model_default_limits() -> None:
    run_state_machine_as_test(DefaultLimits, settings=_SETTINGS)


def test_relay_against_model_without_rate_limit() -> None:
    run_state_machine_as_test(NoRateLimit, settings=_SETTINGS)
