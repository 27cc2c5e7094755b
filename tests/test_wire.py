"""The wire codec: round trips, every decode error with its channel, limits, properties."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest
from conftest import (
    CHAT,
    ROOMS,
    SIGNALING,
    answer_frame,
    chat_frame,
    ice_frame,
    join_frame,
    leave_frame,
    offer_frame,
    renegotiate_frame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_signal.codes import Channel, ErrorCode
from sansio_signal.errors import WireError
from sansio_signal.limits import WireLimits
from sansio_signal.wire import (
    Answer,
    ChatMessage,
    ClientMessage,
    Error,
    Ice,
    IceCandidate,
    JoinRoom,
    LeaveRoom,
    Offer,
    Renegotiate,
    ServerMessage,
    SessionDescription,
    UserJoinedRoom,
    UserLeftRoom,
    decode_object,
    dumps,
    encode,
    parse_client_frame,
    parse_server_frame,
    to_json,
)


def _raise_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity (what a browser's JSON.parse accepts)."""
    return json.loads(text, parse_constant=_raise_constant)


def wire_error(data: str | bytes, *, server: bool = False) -> WireError:
    parse = parse_server_frame if server else parse_client_frame
    with pytest.raises(WireError) as info:
        parse(data)
    return info.value


# --------------------------------------------------------------------------- round trips

CLIENT_MESSAGES: list[ClientMessage] = [
    JoinRoom(room_id="demo", user_id="user_abc"),
    JoinRoom(room_id="demo", user_id="u", token="t.k.n"),
    JoinRoom(room_id="demo", user_id="u", resume_token="r3sume"),
    LeaveRoom(room_id="demo"),
    Offer.new(to_user_id="b", description=SessionDescription(type="offer", sdp="v=0\r\n")),
    Answer.new(to_user_id="a", description=SessionDescription(type="answer", sdp="v=0"), epoch=2),
    Ice.new(
        to_user_id="b",
        candidate=IceCandidate(
            candidate="candidate:1 1 UDP 1 1.2.3.4 5 typ host",
            sdp_mid="0",
            sdp_mline_index=0,
            username_fragment="uf",
        ),
    ),
    Ice.new(to_user_id="b", candidate=IceCandidate(candidate="")),
    Ice.new(to_user_id="b", candidate=None),
    Renegotiate.new(to_user_id="a", epoch=7),
    Renegotiate(to_user_id="a"),
    ChatMessage(text="hello"),
    ChatMessage(text=""),
    ChatMessage(text="\u0000\u202e\u05d0\U0001f600\ud800"),
]


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_client_message_round_trip(message: ClientMessage) -> None:
    text = encode(message)
    assert text.isascii()
    assert parse_client_frame(text) == message


SERVER_MESSAGES: list[ServerMessage] = [
    UserJoinedRoom(room_id="demo", user_id="x", existing_participants=()),
    UserJoinedRoom(
        room_id="demo", user_id="x", existing_participants=("a", "b"), resume_token="tok"
    ),
    UserLeftRoom(room_id="demo", user_id="x"),
    attrs.evolve(
        Offer.new(to_user_id="b", description=SessionDescription(type="offer", sdp="v=0")),
        from_user_id="a",
        room_id="demo",
    ),
    attrs.evolve(
        Answer.new(to_user_id="a", description=SessionDescription(type="answer", sdp="v")),
        from_user_id="b",
        room_id="demo",
    ),
    attrs.evolve(Ice.new(to_user_id="b", candidate=None), from_user_id="a", room_id="r"),
    attrs.evolve(Renegotiate.new(to_user_id="a"), from_user_id="b", room_id="r"),
    ChatMessage(text="hi", room_id="demo", from_user_id="a", ts=1764100000.123),
    Error(channel="system", code=ErrorCode.BAD_JSON, message="nope"),
    Error(channel=CHAT, code=ErrorCode.NOT_IN_ROOM, message="join first"),
]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_server_message_round_trip(message: ServerMessage) -> None:
    text = encode(message)
    assert text.isascii()
    assert parse_server_frame(text) == message


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_round_trips(code: ErrorCode) -> None:
    message = Error(channel=ROOMS, code=code, message="m")
    assert parse_server_frame(encode(message)) == message


def test_wire_forms_match_protocol_examples() -> None:
    assert to_json(JoinRoom(room_id="demo", user_id="user_abc")) == join_frame("demo", "user_abc")
    assert to_json(LeaveRoom(room_id="demo")) == leave_frame("demo")
    assert to_json(
        UserJoinedRoom(room_id="demo", user_id="user_xyz", existing_participants=("user_abc",))
    ) == {
        "channel": ROOMS,
        "type": "user-joined-room",
        "roomId": "demo",
        "userId": "user_xyz",
        "existingParticipants": ["user_abc"],
    }
    assert to_json(UserLeftRoom(room_id="demo", user_id="user_xyz")) == {
        "channel": ROOMS,
        "type": "user-left-room",
        "roomId": "demo",
        "userId": "user_xyz",
    }
    assert to_json(
        ChatMessage(text="hello", room_id="demo", from_user_id="user_abc", ts=1764100000.123)
    ) == {
        "channel": CHAT,
        "type": "chat-message",
        "roomId": "demo",
        "fromUserId": "user_abc",
        "text": "hello",
        "ts": 1764100000.123,
    }
    assert to_json(Error(channel="system", code=ErrorCode.BAD_JSON, message="m")) == {
        "channel": "system",
        "type": "error",
        "code": "bad-json",
        "message": "m",
    }
    assert to_json(Ice.new(to_user_id="x", candidate=None, epoch=0)) == ice_frame("x", epoch=0)


def test_encode_is_compact_ascii() -> None:
    text = encode(ChatMessage(text="h\u00e9 \U0001f600 \ud800"))
    assert text == (
        '{"channel":"webrtc-dashboard-chat","type":"chat-message",'
        '"text":"h\\u00e9 \\ud83d\\ude00 \\ud800"}'
    )


def test_protocol_examples_parse() -> None:
    examples: list[tuple[dict[str, Any], ClientMessage]] = [
        (join_frame("demo", "user_abc"), JoinRoom(room_id="demo", user_id="user_abc")),
        (join_frame("demo", "u", token="abc"), JoinRoom(room_id="demo", user_id="u", token="abc")),
        (join_frame("demo", "u", token=None), JoinRoom(room_id="demo", user_id="u")),
        (leave_frame("demo"), LeaveRoom(room_id="demo")),
        (chat_frame("hello"), ChatMessage(text="hello")),
        (renegotiate_frame("user_abc"), Renegotiate(to_user_id="user_abc")),
    ]
    for frame, expected in examples:
        assert parse_client_frame(json.dumps(frame)) == expected


def test_typed_views_of_signals() -> None:
    offer = parse_client_frame(json.dumps(offer_frame("b", sdp="v=0 x")))
    assert isinstance(offer, Offer)
    assert offer.description == SessionDescription(type="offer", sdp="v=0 x")
    answer = parse_client_frame(json.dumps(answer_frame("a", sdp="v=0 y")))
    assert isinstance(answer, Answer)
    assert answer.description == SessionDescription(type="answer", sdp="v=0 y")
    cand = {"candidate": "candidate:1", "sdpMid": "0", "sdpMLineIndex": 1}
    ice = parse_client_frame(json.dumps(ice_frame("b", cand)))
    assert isinstance(ice, Ice)
    assert ice.candidate == IceCandidate(candidate="candidate:1", sdp_mid="0", sdp_mline_index=1)
    assert ice.candidate.to_json() == cand
    end = parse_client_frame(json.dumps(ice_frame("b", None)))
    assert isinstance(end, Ice)
    assert end.candidate is None


def test_unknown_fields_preserved_in_signal_fields() -> None:
    extra: dict[str, Any] = {
        "epoch": 3,
        "x-custom": {"nested": [1, "\u00fc", None, True, 2.5]},
        "n": None,
    }
    msg = parse_client_frame(json.dumps(offer_frame("b", **extra)))
    assert isinstance(msg, Offer)
    assert dict(msg.fields) == {"offer": {"type": "offer", "sdp": "v=0 offer"}, **extra}
    assert msg.epoch == 3
    # addressing fields never end up in ``fields``
    spoofed = parse_client_frame(
        json.dumps(renegotiate_frame("b", fromUserId="evil", roomId="other", keep=1))
    )
    assert isinstance(spoofed, Renegotiate)
    assert dict(spoofed.fields) == {"keep": 1}
    assert strict_loads(encode(msg)) == offer_frame("b", **extra)


@pytest.mark.parametrize(("epoch", "expected"), [(5, 5), (1.0, 1), (None, 0), (0, 0)])
def test_epoch_view(epoch: Any, expected: int) -> None:
    msg = parse_client_frame(json.dumps(renegotiate_frame("b", epoch=epoch)))
    assert isinstance(msg, Renegotiate)
    assert msg.epoch == expected


@pytest.mark.parametrize("epoch", ["5", True, 1.5, -2, 2**53])
def test_a_malformed_epoch_is_relayed_but_not_read(epoch: Any) -> None:
    """The relay passes peers' own fields unchanged; a client reading one that is not a
    non-negative integer refuses the frame (``bad-frame``)."""
    msg = parse_client_frame(json.dumps(renegotiate_frame("b", epoch=epoch)))
    assert isinstance(msg, Renegotiate)
    assert msg.fields["epoch"] == epoch
    with pytest.raises(WireError) as caught:
        _ = msg.epoch
    assert caught.value.code is ErrorCode.BAD_FRAME


def test_epoch_absent_counts_as_zero() -> None:
    msg = parse_client_frame(json.dumps(renegotiate_frame("b")))
    assert isinstance(msg, Renegotiate)
    assert msg.epoch == 0


# --------------------------------------------------------------------------- decode errors

BAD_JSON = [
    "",
    " ",
    "{",
    "nope",
    "{'single': 1}",
    '{"a":1,}',
    '{"a":1} trailing',
    "NaN",
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":-Infinity}',
    '{"a":1e999}',
    '{"a":-1e999}',
    "[" * 100_000,
    '{"a":' * 100_000,
    "[" * 5_000 + "]" * 5_000,
    '{"a":1' + "0" * 5_000 + "}",
]


@pytest.mark.parametrize("text", BAD_JSON, ids=lambda t: repr(t[:24]))
def test_bad_json(text: str) -> None:
    error = wire_error(text)
    assert (error.code, error.channel) == (ErrorCode.BAD_JSON, "system")
    assert isinstance(error.message, str) and error.message


@pytest.mark.parametrize(
    "data", [b"", b"{}", json.dumps(chat_frame("hi")).encode(), b"\xff\xfe"], ids=repr
)
def test_binary_is_bad_frame(data: bytes) -> None:
    error = wire_error(data)
    assert (error.code, error.channel) == (ErrorCode.BAD_FRAME, "system")


@pytest.mark.parametrize("text", ["[]", "[{}]", "1", "-0.5", '"str"', "null", "true", "false"])
def test_non_object_is_bad_frame(text: str) -> None:
    error = wire_error(text)
    assert (error.code, error.channel) == (ErrorCode.BAD_FRAME, "system")


@pytest.mark.parametrize(
    "frame",
    [
        {},
        {"type": "join-room", "roomId": "r", "userId": "u"},
        {"channel": None, "type": "join-room"},
        {"channel": 5, "type": "join-room"},
        {"channel": [ROOMS], "type": "join-room"},
    ],
)
def test_missing_or_wrong_channel_is_bad_frame_on_system(frame: dict[str, Any]) -> None:
    error = wire_error(json.dumps(frame))
    assert (error.code, error.channel) == (ErrorCode.BAD_FRAME, "system")


@pytest.mark.parametrize(
    "channel", ["nope", "", "WEBRTC-SIGNALING", "webrtc-signaling ", "\u202erooms"]
)
def test_unknown_channel_answered_on_system(channel: str) -> None:
    error = wire_error(json.dumps({"channel": channel, "type": "error"}))
    assert (error.code, error.channel) == (ErrorCode.UNKNOWN_CHANNEL, "system")


@pytest.mark.parametrize("channel", [ROOMS, SIGNALING, CHAT])
@pytest.mark.parametrize("type_", [None, 5, {"t": 1}])
def test_missing_or_wrong_type_is_bad_frame_on_channel(channel: str, type_: Any) -> None:
    frame: dict[str, Any] = {"channel": channel}
    if type_ is not None:
        frame["type"] = type_
    error = wire_error(json.dumps(frame))
    assert (error.code, error.channel) == (ErrorCode.BAD_FRAME, channel)


@pytest.mark.parametrize(
    ("channel", "type_"),
    [
        (ROOMS, "nope"),
        (ROOMS, "chat-message"),
        (ROOMS, "JOIN-ROOM"),
        (SIGNALING, "webrtc-bye"),
        (SIGNALING, "join-room"),
        (CHAT, "chat"),
        (CHAT, "webrtc-offer"),
    ],
)
def test_unknown_type_answered_on_its_channel(channel: str, type_: str) -> None:
    error = wire_error(json.dumps({"channel": channel, "type": type_, "roomId": "r"}))
    assert (error.code, error.channel) == (ErrorCode.UNKNOWN_TYPE, channel)


@pytest.mark.parametrize(
    "frame",
    [
        {
            "channel": ROOMS,
            "type": "user-joined-room",
            "roomId": "r",
            "userId": "u",
            "existingParticipants": [],
        },
        {"channel": ROOMS, "type": "user-left-room", "roomId": "r", "userId": "u"},
        {"channel": ROOMS, "type": "error", "code": "bad-json", "message": "m"},
        {"channel": SIGNALING, "type": "error", "code": "bad-json", "message": "m"},
        {"channel": CHAT, "type": "error", "code": "bad-json", "message": "m"},
    ],
    ids=lambda f: f"{f['channel']}/{f['type']}",
)
def test_server_types_from_a_client_are_unknown_type(frame: dict[str, Any]) -> None:
    error = wire_error(json.dumps(frame))
    assert (error.code, error.channel) == (ErrorCode.UNKNOWN_TYPE, frame["channel"])


_ROOMS_BAD_FRAME: list[dict[str, Any]] = [
    {"channel": ROOMS, "type": "join-room", "userId": "u"},
    {"channel": ROOMS, "type": "join-room", "roomId": "r"},
    {"channel": ROOMS, "type": "join-room", "roomId": 5, "userId": "u"},
    {"channel": ROOMS, "type": "join-room", "roomId": "r", "userId": None},
    {"channel": ROOMS, "type": "join-room", "roomId": "r", "userId": ["u"]},
    join_frame("r", "u", token=5),
    join_frame("r", "u", token={"t": 1}),
    join_frame("r", "u", resumeToken=5),
    {"channel": ROOMS, "type": "leave-room"},
    {"channel": ROOMS, "type": "leave-room", "roomId": 1},
]
_SIGNALING_BAD_FRAME: list[dict[str, Any]] = [
    {"channel": SIGNALING, "type": "webrtc-renegotiate"},
    {"channel": SIGNALING, "type": "webrtc-renegotiate", "toUserId": 3},
    {"channel": SIGNALING, "type": "webrtc-offer", "toUserId": "b"},
    {"channel": SIGNALING, "type": "webrtc-offer", "toUserId": "b", "offer": "v=0"},
    {"channel": SIGNALING, "type": "webrtc-offer", "toUserId": "b", "offer": {"type": "offer"}},
    {"channel": SIGNALING, "type": "webrtc-offer", "toUserId": "b", "offer": {"sdp": "v=0"}},
    {
        "channel": SIGNALING,
        "type": "webrtc-offer",
        "toUserId": "b",
        "offer": {"type": "offer", "sdp": 0},
    },
    {"channel": SIGNALING, "type": "webrtc-answer", "toUserId": "b"},
    {"channel": SIGNALING, "type": "webrtc-answer", "toUserId": "b", "answer": None},
    offer_frame("b") | {"type": "webrtc-answer"},  # an answer carrying "offer", not "answer"
    {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": "b"},
    ice_frame("b") | {"candidate": "candidate:1"},
    ice_frame("b", {"sdpMid": "0"}),
    ice_frame("b", {"candidate": 5}),
    ice_frame("b", {"candidate": "c", "sdpMid": 0}),
    ice_frame("b", {"candidate": "c", "usernameFragment": 1}),
    ice_frame("b", {"candidate": "c", "sdpMLineIndex": -1}),
    ice_frame("b", {"candidate": "c", "sdpMLineIndex": True}),
    ice_frame("b", {"candidate": "c", "sdpMLineIndex": 0.5}),
    ice_frame("b", {"candidate": "c", "sdpMLineIndex": 10**30}),
    ice_frame("b", {"candidate": "c", "sdpMLineIndex": "0"}),
]
_CHAT_BAD_FRAME: list[dict[str, Any]] = [
    {"channel": CHAT, "type": "chat-message"},
    chat_frame("") | {"text": None},
    chat_frame("") | {"text": 5},
    chat_frame("") | {"text": ["hi"]},
    chat_frame("x" * 4097),
    chat_frame("\U0001f600" * 4097),
]


@pytest.mark.parametrize(
    "frame",
    _ROOMS_BAD_FRAME + _SIGNALING_BAD_FRAME + _CHAT_BAD_FRAME,
    ids=lambda f: f"{f['type']}",
)
def test_missing_or_wrong_typed_field_is_bad_frame_on_channel(frame: dict[str, Any]) -> None:
    error = wire_error(json.dumps(frame))
    assert (error.code, error.channel) == (ErrorCode.BAD_FRAME, frame["channel"])


@pytest.mark.parametrize(
    "frame",
    [
        ice_frame("b", {"candidate": "c", "sdpMid": None, "sdpMLineIndex": None}),
        ice_frame("b", {"candidate": "c", "sdpMLineIndex": 1.0}),
        ice_frame("b", {"candidate": ""}),
        ice_frame("b", None),
        chat_frame("x" * 4096),
        chat_frame("\U0001f600" * 4096),
        join_frame("r", "u", token=None, resumeToken=None),
    ],
    ids=lambda f: f["type"],
)
def test_edge_cases_that_are_accepted(frame: dict[str, Any]) -> None:
    msg = parse_client_frame(json.dumps(frame))
    assert frame["type"] == msg.TYPE


def test_chat_limit_is_exactly_4096_characters() -> None:
    assert parse_client_frame(json.dumps(chat_frame("a" * 4096))) == ChatMessage(text="a" * 4096)
    error = wire_error(json.dumps(chat_frame("a" * 4097)))
    assert (error.code, error.channel) == (ErrorCode.BAD_FRAME, CHAT)


def test_chat_limit_follows_limits() -> None:
    limits = WireLimits(max_text_chars=3)
    assert parse_client_frame(json.dumps(chat_frame("abc")), limits) == ChatMessage(text="abc")
    with pytest.raises(WireError) as info:
        parse_client_frame(json.dumps(chat_frame("abcd")), limits)
    assert info.value.code is ErrorCode.BAD_FRAME


INVALID_IDS = ["", " ", "a b", "x" * 65, "\u00e9", "a\n", "\na", "a/b", "a\u0000", "ü", "\u0661"]


@pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
@pytest.mark.parametrize(
    "make",
    [
        lambda bad: join_frame(bad, "u"),
        lambda bad: join_frame("r", bad),
        lambda bad: leave_frame(bad),
        lambda bad: offer_frame(bad),
        lambda bad: renegotiate_frame(bad),
        lambda bad: ice_frame(bad, None),
    ],
    ids=["join.roomId", "join.userId", "leave.roomId", "offer.to", "reneg.to", "ice.to"],
)
def test_invalid_id(bad: str, make: Any) -> None:
    frame = make(bad)
    error = wire_error(json.dumps(frame))
    assert (error.code, error.channel) == (ErrorCode.INVALID_ID, frame["channel"])


@pytest.mark.parametrize("good", ["a", "x" * 64, "A-z_0.9:-", "10", "_", ".", ":"])
def test_valid_ids(good: str) -> None:
    assert parse_client_frame(json.dumps(join_frame(good, good))) == JoinRoom(
        room_id=good, user_id=good
    )
    assert WireLimits().valid_id(good)


def test_decode_object_directly() -> None:
    assert decode_object('{"a":[1,2.5,null]}') == {"a": [1, 2.5, None]}
    with pytest.raises(WireError) as info:
        decode_object(b"{}")
    assert info.value.code is ErrorCode.BAD_FRAME


# --------------------------------------------------------------------------- server frames


@pytest.mark.parametrize(
    "frame",
    [
        {"channel": "system", "type": "error", "code": "no-such-code", "message": "m"},
        {"channel": "system", "type": "error", "code": "bad-json"},
        {"channel": 5, "type": "error", "code": "bad-json", "message": "m"},
        {"channel": CHAT, "type": "chat-message", "roomId": "r", "fromUserId": "u", "text": "t"},
        {
            "channel": CHAT,
            "type": "chat-message",
            "roomId": "r",
            "fromUserId": "u",
            "text": "t",
            "ts": True,
        },
        {"channel": ROOMS, "type": "user-joined-room", "roomId": "r", "userId": "u"},
        {
            "channel": ROOMS,
            "type": "user-joined-room",
            "roomId": "r",
            "userId": "u",
            "existingParticipants": [1],
        },
        offer_frame("b"),  # a relayed signal must carry fromUserId and roomId
    ],
)
def test_malformed_server_frames_are_rejected(frame: dict[str, Any]) -> None:
    error = wire_error(json.dumps(frame), server=True)
    assert error.code in {ErrorCode.BAD_FRAME, ErrorCode.INVALID_ID}


def test_server_frame_integer_ts_becomes_float() -> None:
    text = json.dumps(
        {"channel": CHAT, "type": "chat-message", "roomId": "r", "fromUserId": "u", "text": "t"}
        | {"ts": 17}
    )
    msg = parse_server_frame(text)
    assert msg == ChatMessage(text="t", room_id="r", from_user_id="u", ts=17.0)
    assert isinstance(msg, ChatMessage)
    assert isinstance(msg.ts, float)


# --------------------------------------------------------------------------- properties

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
_IDS = st.text(_ID_ALPHABET, min_size=1, max_size=64)
_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON: st.SearchStrategy[Any] = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_ADDRESSING = {"channel", "type", "toUserId", "fromUserId", "roomId"}
_EXTRA = st.dictionaries(
    _TEXT.filter(lambda k: k not in _ADDRESSING | {"offer", "answer", "candidate"}),
    _JSON,
    max_size=3,
)
_DESCRIPTION = st.fixed_dictionaries({"type": _TEXT, "sdp": _TEXT}, optional={"x": _JSON})
_CANDIDATE = st.none() | st.fixed_dictionaries(
    {"candidate": _TEXT},
    optional={
        "sdpMid": st.none() | _TEXT,
        "sdpMLineIndex": st.none() | st.integers(0, 2**40),
        "usernameFragment": st.none() | _TEXT,
    },
)


@st.composite
def client_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid client frame as a JSON object, with extra fields where they are kept."""
    kind = draw(st.sampled_from(["join", "leave", "offer", "answer", "ice", "reneg", "chat"]))
    extra = draw(_EXTRA)
    if kind == "join":
        frame = join_frame(draw(_IDS), draw(_IDS))
        if draw(st.booleans()):
            frame["token"] = draw(_TEXT)
        if draw(st.booleans()):
            frame["resumeToken"] = draw(_TEXT)
        return frame
    if kind == "leave":
        return leave_frame(draw(_IDS))
    if kind == "chat":
        return chat_frame(draw(st.text(st.characters(exclude_categories=()), max_size=80)))
    to = draw(_IDS)
    spoof = draw(st.fixed_dictionaries({}, optional={"fromUserId": _JSON, "roomId": _JSON}))
    if kind == "offer":
        return offer_frame(to, **extra, **spoof) | {"offer": draw(_DESCRIPTION)}
    if kind == "answer":
        return answer_frame(to, **extra, **spoof) | {"answer": draw(_DESCRIPTION)}
    if kind == "ice":
        return ice_frame(to, draw(_CANDIDATE), **extra, **spoof)
    return renegotiate_frame(to, **extra, **spoof)


def _dump(frame: Any, ensure_ascii: bool, indent: int | None) -> str:
    text = json.dumps(frame, ensure_ascii=ensure_ascii, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel escaped
        text = json.dumps(frame, indent=indent)
    return text


@settings(max_examples=300, deadline=None)
@given(client_frames(), st.booleans(), st.sampled_from([None, 0, 2]))
def test_property_encode_parse_round_trip(
    frame: dict[str, Any], ensure_ascii: bool, indent: int | None
) -> None:
    message = parse_client_frame(_dump(frame, ensure_ascii, indent))
    text = encode(message)
    assert text.isascii()
    again = parse_client_frame(text)
    assert again == message
    assert encode(again) == text
    if isinstance(message, Offer | Answer | Ice | Renegotiate):
        expected = {k: v for k, v in frame.items() if k not in _ADDRESSING}
        assert strict_loads(dumps(dict(message.fields))) == strict_loads(dumps(expected))


@st.composite
def server_messages(draw: st.DrawFn) -> ServerMessage:
    frame = draw(client_frames())
    message = parse_client_frame(json.dumps(frame))
    room, user = draw(_IDS), draw(_IDS)
    if isinstance(message, Offer | Answer | Ice | Renegotiate):
        # a client reads the peers' own fields (epoch, sid, ...) only when well-formed
        pair_keys = {"epoch", "sid", "rsid", "seq", "caps", "reason"}
        fields = {k: v for k, v in message.fields.items() if k not in pair_keys}
        message = attrs.evolve(message, fields=fields)
        return attrs.evolve(message, from_user_id=user, room_id=room)
    if isinstance(message, ChatMessage):
        ts = draw(st.floats(0, 2e9, allow_nan=False))
        return attrs.evolve(message, room_id=room, from_user_id=user, ts=ts)
    kind = draw(st.sampled_from(["joined", "left", "error"]))
    if kind == "joined":
        return UserJoinedRoom(
            room_id=room,
            user_id=user,
            existing_participants=tuple(sorted(draw(st.lists(_IDS, max_size=5)))),
            resume_token=draw(st.none() | _TEXT),
        )
    if kind == "left":
        return UserLeftRoom(room_id=room, user_id=user)
    return Error(
        channel=draw(st.sampled_from([c.value for c in Channel])),
        code=draw(st.sampled_from(list(ErrorCode))),
        message=draw(_TEXT),
    )


@settings(max_examples=200, deadline=None)
@given(server_messages())
def test_property_server_round_trip(message: ServerMessage) -> None:
    text = encode(message)
    assert text.isascii()
    assert parse_server_frame(text) == message


_KNOWN_TYPES = [
    "join-room",
    "leave-room",
    "user-joined-room",
    "user-left-room",
    "webrtc-offer",
    "webrtc-answer",
    "webrtc-ice",
    "webrtc-renegotiate",
    "chat-message",
    "error",
]


@st.composite
def envelope_like(draw: st.DrawFn) -> dict[str, Any]:
    """An object that gets past the envelope often, with random (often wrong) fields."""
    obj: dict[str, Any] = draw(st.dictionaries(_TEXT, _JSON, max_size=3))
    obj["channel"] = draw(st.sampled_from([c.value for c in Channel]) | _JSON)
    obj["type"] = draw(st.sampled_from(_KNOWN_TYPES) | _JSON)
    for key in ("roomId", "userId", "toUserId", "text", "offer", "answer", "candidate"):
        if draw(st.booleans()):
            obj[key] = draw(_IDS | _JSON | _DESCRIPTION | _CANDIDATE)
    return obj


_ANY_INPUT = st.one_of(
    st.text(st.characters(exclude_categories=())),
    st.binary(),
    _JSON.map(lambda v: json.dumps(v)),
    envelope_like().map(lambda v: json.dumps(v)),
    client_frames().map(lambda v: json.dumps(v)),
    st.sampled_from(BAD_JSON[:13]),
)


def _check_message_output(message: Any) -> None:
    text = encode(message)
    assert text.isascii()
    obj = strict_loads(text)
    assert isinstance(obj, dict)
    assert isinstance(obj["channel"], str) and isinstance(obj["type"], str)


@settings(max_examples=300, deadline=None)
@given(_ANY_INPUT)
def test_property_parse_client_frame_returns_message_or_wire_error(data: str | bytes) -> None:
    try:
        message = parse_client_frame(data)
    except WireError as error:
        assert isinstance(error.code, ErrorCode)
        assert error.channel in {c.value for c in Channel}
        assert isinstance(error.message, str)
        return
    _check_message_output(message)


@settings(max_examples=150, deadline=None)
@given(_ANY_INPUT)
def test_property_parse_server_frame_returns_message_or_wire_error(data: str | bytes) -> None:
    try:
        message = parse_server_frame(data)
    except WireError as error:
        assert isinstance(error.code, ErrorCode)
        return
    _check_message_output(message)


@given(st.text(st.characters(exclude_categories=()), max_size=50))
def test_property_dumps_escapes_every_string(text: str) -> None:
    out = dumps({"s": text, text: [text]})
    assert out.isascii()
    out.encode("utf-8")  # always encodable: lone surrogates travel as \\uXXXX escapes
    assert strict_loads(out) == {"s": text, text: [text]}


def test_lone_surrogate_escapes_survive_a_round_trip() -> None:
    raw = '{"channel":"webrtc-dashboard-chat","type":"chat-message","text":"\\ud800x\\udfff"}'
    message = parse_client_frame(raw)
    assert message == ChatMessage(text="\ud800x\udfff")
    assert encode(message) == raw


def test_floats_in_extra_fields_stay_finite() -> None:
    msg = parse_client_frame(json.dumps(renegotiate_frame("b", x=1e308, y=-0.0, z=5e-324)))
    assert isinstance(msg, Renegotiate)
    values = strict_loads(encode(msg))
    assert values["x"] == 1e308 and values["z"] == 5e-324
    assert math.copysign(1.0, values["y"]) == -1.0


def test_the_system_channel_has_no_client_types() -> None:
    # PROTOCOL.md: a client sending a server → client type (``error``) gets unknown-type;
    # ``system`` is the server's channel for errors, so it is known but closed to clients.
    error = wire_error(json.dumps({"channel": "system", "type": "error"}))
    assert (error.code, error.channel) == (ErrorCode.UNKNOWN_TYPE, "system")
