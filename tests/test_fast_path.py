"""The relay's fast path (issue 13): the codec's two JSON readers agree, and a relayed
signal is the sender's text itself with the two stamped fields.

``decode_object`` reads a frame with msgspec and lets the standard library's decoder
decide whenever msgspec refuses, so what is accepted and every error message must be
exactly what the stdlib decoder alone gave: :func:`stdlib_outcome` is that decoder, as
``decode_object`` was before the fast reader, and every test here compares against it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SIGNALING, Frame, ice_frame, offer_frame
from hypothesis import example, given
from hypothesis import strategies as st

from sansio_signal import wire
from sansio_signal.actions import SendFrame
from sansio_signal.errors import WireError
from sansio_signal.limits import Limits
from sansio_signal.testing.relay import RelayHarness
from sansio_signal.wire import FAST_MAX_DEPTH, decode_object, dumps, signal_stamp

# --------------------------------------------------------------------------- the readers

Outcome = tuple[str, ...]
STDLIB = wire._decoder


def stdlib_outcome(data: str) -> Outcome:
    """What the stdlib decoder alone makes of ``data`` (``decode_object`` before msgspec):
    ``("ok", repr)`` — repr tells 1 from 1.0 from True and keeps key order — or
    ``("error", code, channel, message)``."""
    try:
        obj = STDLIB.decode(data)
    except RecursionError:
        return ("error", "bad-json", "system", "JSON nested too deeply")
    except ValueError as exc:
        return ("error", "bad-json", "system", f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        kind = wire._kind(obj)
        return ("error", "bad-frame", "system", f"a frame must be a JSON object, not {kind}")
    return ("ok", repr(obj))


def outcome(data: str) -> Outcome:
    """What ``decode_object`` makes of ``data``, in the same form."""
    try:
        return ("ok", repr(decode_object(data)))
    except WireError as exc:
        return ("error", exc.code.value, exc.channel, exc.message)


def assert_same(data: str) -> None:
    assert outcome(data) == stdlib_outcome(data), data[:200]


@pytest.fixture
def stdlib_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts ``decode_object`` handed to the stdlib decoder."""
    calls: list[str] = []
    real = wire._decoder

    class Spy:
        def decode(self, data: str) -> Any:
            calls.append(data)
            return real.decode(data)

    monkeypatch.setattr(wire, "_decoder", Spy())
    yield calls


# --------------------------------------------------------------------------- strategies

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),  # lone surrogates included: json.dumps escapes them
)
_VALUES: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """A JSON text of a generated value, in one of the spellings a client might use."""
    value = draw(st.dictionaries(st.text(max_size=6), _VALUES, max_size=5) | _VALUES)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\n")]))
    indent = draw(st.sampled_from([None, None, 0, 2, "\t"]))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), separators=separators, indent=indent)
    around = st.text(alphabet=" \t\n\r", max_size=3)
    return draw(around) + text + draw(around)


NUMBERS = st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,4})?\Z")
"""Number literals as the JSON grammar spells them: long mantissas, tiny and huge
exponents (out of a float's range included)."""

_PIECES = st.sampled_from(
    [
        "a",
        "\u00e9",
        "\U0001f600",
        "\\n",
        "\\/",
        '\\"',
        "\\\\",
        "\\u0000",
        "\\u00e9",
        "\\ud800",
        "\\udfff",
        "\\ud83d\\ude00",
        "\\ud83d",
        "\\ude00",
        "\\x",
        "\\u12",
        "\x00",
        "\x1f",
        "\x7f",
        "\ud800",
    ]
)
STRINGS = st.lists(_PIECES, max_size=6).map(lambda parts: '"' + "".join(parts) + '"')
"""String literals built from escapes, valid and not (lone and paired surrogate escapes,
control characters, a raw lone surrogate a str can hold)."""

GARBAGE = st.text(
    alphabet=st.sampled_from(list('{}[]",:-+.0123456789eEtrufalsn \t\n\r\f\v\\u\ufeff\x00a')),
    max_size=30,
)
"""Text from JSON's alphabet and a few characters close to it (form feed, vertical tab,
a byte-order mark, NUL): mostly not JSON."""


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid frame with one character inserted, deleted or replaced."""
    text = draw(json_texts())
    at = draw(st.integers(0, len(text)))
    char = draw(st.sampled_from(list('{}[]",:-.0e \ufeff\x00\\')))
    how = draw(st.sampled_from(["insert", "delete", "replace"]))
    if how == "insert":
        return text[:at] + char + text[at:]
    if how == "delete":
        return text[:at] + text[at + 1 :]
    return text[:at] + char + text[at + 1 :]


# --------------------------------------------------------------------------- equivalence


@given(json_texts())
def test_decoders_agree_on_json_texts(data: str) -> None:
    assert_same(data)


@given(NUMBERS)
@example("1e400")
@example("-1e400")
@example("1.7976931348623159e308")  # rounds to infinity: out of range
@example("1.7976931348623157e308")
@example("4.9e-324")
@example("2.4703282292062328e-324")  # rounds to the smallest subnormal
@example("1e-400")
@example("-0")
@example("-0.0")
@example("0.1000000000000000055511151231257827021181583404541015625")
def test_decoders_agree_on_numbers(number: str) -> None:
    assert_same(number)
    assert_same('{"n":' + number + "}")
    assert_same('{"n":[' + number + "," + number + "]}")


@given(STRINGS)
def test_decoders_agree_on_string_escapes(literal: str) -> None:
    assert_same(literal)
    assert_same('{"s":' + literal + "}")
    assert_same("{" + literal + ":1}")


@given(GARBAGE)
@example("\ufeff{}")
@example("{}\f")
@example("\v{}")
@example('{"a":1,}')
@example('{"a":1}{"b":2}')
@example("NaN")
@example('{"a":NaN}')
@example('{"a":Infinity}')
@example('{"a":-Infinity}')
@example("")
def test_decoders_agree_on_garbage(data: str) -> None:
    assert_same(data)


@given(mutated())
def test_decoders_agree_on_damaged_frames(data: str) -> None:
    assert_same(data)


@pytest.mark.parametrize("sign", ["", "-"])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_decoders_agree_on_integers_at_the_digit_limit(sign: str, extra: int) -> None:
    digits = sys.get_int_max_str_digits() + extra
    assert_same('{"n":' + sign + "7" * digits + "}")


def test_decoders_agree_on_duplicate_keys() -> None:
    data = '{"a":1,"b":2,"a":3}'
    assert_same(data)
    assert list(decode_object(data).items()) == [("a", 3), ("b", 2)]


def test_decoders_agree_on_a_str_holding_a_lone_surrogate(stdlib_calls: list[str]) -> None:
    data = '{"s":"\ud800"}'  # a character, not an escape: msgspec cannot encode it
    assert_same(data)
    assert decode_object(data) == {"s": "\ud800"}
    assert stdlib_calls[-1] == data


@pytest.mark.parametrize("depth", [2, FAST_MAX_DEPTH - 1, FAST_MAX_DEPTH, FAST_MAX_DEPTH + 1, 40])
def test_deep_frames_are_read_by_the_stdlib(depth: int, stdlib_calls: list[str]) -> None:
    # Deep by objects, by arrays, or both: up to FAST_MAX_DEPTH levels msgspec reads the
    # frame, deeper the stdlib does (and both read it the same).
    for data in (
        '{"a":' * (depth - 1) + '{"pad":"x"}' + "}" * (depth - 1),
        '{"a":' + "[" * (depth - 1) + '"x"' + "]" * (depth - 1) + "}",
        '{"a":' + "[{}," * (depth - 2) + "[1]" + "]" * (depth - 2) + ',"b":{}}',
    ):
        stdlib_calls.clear()
        assert outcome(data)[0] == "ok"
        assert bool(stdlib_calls) == (depth > FAST_MAX_DEPTH), data
        assert_same(data)


@pytest.mark.parametrize("data", ["[1]", '"x"', "1", "null", "[{}]"])
def test_json_other_than_an_object_is_read_by_the_stdlib(
    data: str, stdlib_calls: list[str]
) -> None:
    assert outcome(data)[:2] == ("error", "bad-frame")
    assert stdlib_calls == [data]
    assert_same(data)


def test_too_deep_for_the_interpreter_is_bad_json() -> None:
    depth = sys.getrecursionlimit() + 10
    for data in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        assert_same(data)
        assert outcome(data)[:2] == ("error", "bad-json")


def test_a_plain_frame_never_reaches_the_stdlib(stdlib_calls: list[str]) -> None:
    for frame in (ice_frame("b", {"candidate": "c", "sdpMLineIndex": 0}), offer_frame("b")):
        assert decode_object(json.dumps(frame)) == frame
    assert stdlib_calls == []


def test_the_fast_reader_keeps_big_integers_exact() -> None:
    obj = decode_object('{"n":123456789012345678901234567890,"f":1.5,"z":-0.0}')
    assert obj["n"] == 123456789012345678901234567890 and isinstance(obj["n"], int)
    assert obj["f"] == 1.5
    assert isinstance(obj["z"], float) and math.copysign(1.0, obj["z"]) == -1.0


# --------------------------------------------------------------------------- stamping

STAMP = ',"fromUserId":"a","roomId":"demo"}'


def pair(limits: Limits | None = None) -> tuple[RelayHarness, int, int]:
    """A harness with ``a`` and ``b`` in ``demo`` (inboxes cleared)."""
    h = RelayHarness(limits=limits) if limits is not None else RelayHarness()
    a, b = h.connect(), h.connect()
    h.join(a, "demo", "a")
    h.join(b, "demo", "b")
    h.take(a)
    h.take(b)
    return h, a, b


def relayed(h: RelayHarness, sender: int, data: str) -> str:
    """The one text relayed for ``data`` from ``sender``."""
    sends = [x for x in h.send(sender, data) if isinstance(x, SendFrame)]
    assert len(sends) == 1, sends
    return sends[0].text


def no_duplicate_keys(text: str) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        assert len(keys) == len(set(keys)), keys
        return dict(items)

    obj: dict[str, Any] = json.loads(text, object_pairs_hook=pairs)
    return obj


def test_signal_stamp() -> None:
    assert signal_stamp("a", "demo") == STAMP
    assert signal_stamp('q"\u00e9', "r\\") == ',"fromUserId":"q\\"\\u00e9","roomId":"r\\\\"}'


def test_relayed_signal_is_the_senders_text_byte_for_byte() -> None:
    h, a, _b = pair()
    data = (
        '{"channel": "webrtc-signaling",\t"type":"webrtc-ice" ,\n "toUserId":"b",'
        '"candidate":{"candidate":"candidate:1 1 UDP 1 10.0.0.1 9 typ host",'
        '"sdpMLineIndex":0.0},"x":"\u00e9\\u00e9\U0001f600\\/","n":1.50,"e":1E2,'
        '"big":123456789012345678901234567890,"z":-0 }'
    )
    assert relayed(h, a, data) == data[:-1] + STAMP


def test_trailing_whitespace_after_the_brace_is_dropped() -> None:
    h, a, _b = pair()
    body = json.dumps(ice_frame("b", None, epoch=2))
    assert relayed(h, a, " \n" + body + " \t\r\n ") == " \n" + body[:-1] + STAMP


def test_a_forged_from_user_id_is_overwritten_and_the_frame_re_encoded() -> None:
    h, a, b = pair()
    for forged in (
        {"fromUserId": "b"},
        {"roomId": "elsewhere"},
        {"fromUserId": "b", "roomId": "elsewhere"},
        {"fromUserId": None},
    ):
        frame = ice_frame("b", None, **forged, epoch=1)
        text = relayed(h, a, json.dumps(frame, indent=1))
        assert text == dumps({**frame, "fromUserId": "a", "roomId": "demo"})
    h.take(b)


def test_a_forged_from_user_id_spelled_with_escapes_is_overwritten() -> None:
    h, a, _b = pair()
    data = '{"channel":"webrtc-signaling","type":"webrtc-renegotiate","toUserId":"b",'
    text = relayed(h, a, data + '"from\\u0055serId":"b","room\\u0049d":"x"}')
    assert no_duplicate_keys(text)["fromUserId"] == "a"
    assert no_duplicate_keys(text)["roomId"] == "demo"


def test_duplicate_keys_pass_verbatim_and_read_as_the_relay_read_them() -> None:
    h, a, b = pair()
    c = h.connect()
    h.join(c, "demo", "c")
    h.take(a), h.take(b), h.take(c)
    data = (
        '{"channel":"webrtc-signaling","type":"webrtc-renegotiate",'
        '"toUserId":"c","toUserId":"b","epoch":1,"epoch":2}'
    )
    sends = [x for x in h.send(a, data) if isinstance(x, SendFrame)]
    # routed by the last toUserId, as every JSON reader here reads it
    assert [(s.conn, s.text) for s in sends] == [(b, data[:-1] + STAMP)]
    assert json.loads(sends[0].text)["epoch"] == 2
    assert h.take(c) == []


def test_duplicate_from_user_ids_are_overwritten_once() -> None:
    h, a, _b = pair()
    data = (
        '{"channel":"webrtc-signaling","type":"webrtc-renegotiate","toUserId":"b",'
        '"fromUserId":"x","fromUserId":"y"}'
    )
    assert no_duplicate_keys(relayed(h, a, data))["fromUserId"] == "a"


def test_a_str_holding_a_lone_surrogate_is_re_encoded_with_escapes() -> None:
    h, a, _b = pair()
    frame = ice_frame("b", None, note="\ud800")
    text = relayed(h, a, json.dumps(frame, ensure_ascii=False))
    assert text == dumps({**frame, "fromUserId": "a", "roomId": "demo"})
    assert text.isascii()


def test_a_lone_surrogate_escape_passes_verbatim() -> None:
    h, a, _b = pair()
    data = json.dumps(ice_frame("b", None, note="\ud800"))
    assert "\\ud800" in data
    assert relayed(h, a, data) == data[:-1] + STAMP


def test_ids_are_stamped_as_json_strings() -> None:
    limits = Limits(id_pattern=r"[^\x00-\x1f]{1,64}")
    h = RelayHarness(limits=limits)
    a, b = h.connect(), h.connect()
    h.join(a, 'r"\u00e9', 'u\\"')
    h.join(b, 'r"\u00e9', "b")
    text = relayed(h, a, json.dumps(ice_frame("b", None)))
    assert json.loads(text)["fromUserId"] == 'u\\"'
    assert json.loads(text)["roomId"] == 'r"\u00e9'


def test_a_member_who_moves_is_stamped_anew() -> None:
    h, a, _b = pair()
    h.join(a, "other", "z")
    c = h.connect()
    h.join(c, "other", "c")
    text = relayed(h, a, dumps(ice_frame("c", None)))
    assert text == dumps(ice_frame("c", None))[:-1] + ',"fromUserId":"z","roomId":"other"}'


def test_a_held_member_gets_the_spliced_text_on_resume() -> None:
    h = RelayHarness()
    a, b = h.connect(), h.connect()
    h.join(a, "demo", "a")
    h.join(b, "demo", "b")
    [own] = [f for f in h.take(b) if f.get("userId") == "b"]
    token = own["resumeToken"]
    h.disconnect(b, clean=False)
    data = '{"channel":"webrtc-signaling","type":"webrtc-ice","toUserId":"b","candidate":null} '
    assert [x for x in h.send(a, data) if isinstance(x, SendFrame)] == []
    b2 = h.connect()
    actions = h.join(b2, "demo", "b", resume_token=token)
    texts = [x.text for x in actions if isinstance(x, SendFrame) and x.conn == b2]
    assert texts[1:] == [data.rstrip()[:-1] + STAMP]


_EXTRA_KEYS = st.text(max_size=6).filter(
    lambda k: k not in {"channel", "type", "toUserId", "fromUserId", "roomId", "candidate"}
)


@given(
    extra=st.dictionaries(_EXTRA_KEYS, _VALUES, max_size=4),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 1, "\t"]),
    tail=st.text(alphabet=" \t\n\r", max_size=3),
)
def test_any_signal_is_relayed_verbatim_plus_the_stamp(
    extra: Frame, ensure_ascii: bool, indent: int | str | None, tail: str
) -> None:
    h, a, _b = pair()
    frame: Frame = {"channel": SIGNALING, "type": "webrtc-ice", "toUserId": "b"}
    frame |= {"candidate": None, **extra}
    data = json.dumps(frame, ensure_ascii=ensure_ascii, indent=indent) + tail
    try:
        data.encode()
    except UnicodeEncodeError:
        data = json.dumps(frame, indent=indent) + tail  # no socket carries a lone surrogate
    text = relayed(h, a, data)
    assert text == data.rstrip(" \t\n\r")[:-1] + STAMP
    assert json.loads(text) == {**frame, "fromUserId": "a", "roomId": "demo"}


# --------------------------------------------------------------------------- field checks
#
# check_signal and client_envelope test the common case in one expression and hand
# anything else to the precise checks; both must answer exactly as the precise checks
# alone did (the functions below are check_signal and client_envelope as they were).


def precise_check_signal(obj: Frame, type_: str, limits: Limits) -> str:
    to_user_id = wire._id(obj, "toUserId", SIGNALING, limits)
    if type_ == "webrtc-ice":
        wire._candidate_fields(obj)
    elif type_ == "webrtc-offer":
        wire._read_description(obj, "offer")
    elif type_ == "webrtc-answer":
        wire._read_description(obj, "answer")
    elif type_ != "webrtc-renegotiate":
        raise wire._unknown_type(SIGNALING, type_)
    return to_user_id


def answer_of(check: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", check(*args))
    except WireError as exc:
        return ("error", exc.code.value, str(exc.channel), exc.message)


_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**53 - 1, 2**53, 10**30, 0.0, 1.0, 1.5, -1.0]),
    st.sampled_from(["", "b", "0", "bob", "not an id!", "x" * 65, "\u00e9"]),
    st.just([]),
    st.just({}),
)
_ABSENT = object()


@st.composite
def field_objs(draw: st.DrawFn, keys: list[str], value: st.SearchStrategy[Any]) -> Frame:
    """An object with each of ``keys`` absent or set to a drawn value."""
    out: Frame = {}
    for key in keys:
        item = draw(st.one_of(st.just(_ABSENT), value))
        if item is not _ABSENT:
            out[key] = item
    return out


_CANDIDATES = st.one_of(
    _ODD_VALUES,
    field_objs(["candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"], _ODD_VALUES),
)
_DESCRIPTIONS = st.one_of(_ODD_VALUES, field_objs(["type", "sdp"], _ODD_VALUES))


@given(
    type_=st.sampled_from(
        ["webrtc-ice", "webrtc-offer", "webrtc-answer", "webrtc-renegotiate", "webrtc-x"]
    ),
    to=st.one_of(st.just(_ABSENT), _ODD_VALUES),
    candidate=st.one_of(st.just(_ABSENT), _CANDIDATES),
    offer=st.one_of(st.just(_ABSENT), _DESCRIPTIONS),
    answer=st.one_of(st.just(_ABSENT), _DESCRIPTIONS),
)
def test_check_signal_answers_as_the_precise_checks(
    type_: str, to: Any, candidate: Any, offer: Any, answer: Any
) -> None:
    obj: Frame = {"channel": SIGNALING, "type": type_}
    for key, value in (("toUserId", to), ("candidate", candidate), ("offer", offer)):
        if value is not _ABSENT:
            obj[key] = value
    if answer is not _ABSENT:
        obj["answer"] = answer
    limits = Limits()
    assert answer_of(wire.check_signal, obj, type_, limits) == answer_of(
        precise_check_signal, obj, type_, limits
    )


@given(
    channel=st.one_of(
        st.just(_ABSENT),
        _ODD_VALUES,
        st.sampled_from([SIGNALING, "webrtc-dashboard-rooms", "webrtc-dashboard-chat", "system"]),
    ),
    type_=st.one_of(
        st.just(_ABSENT),
        _ODD_VALUES,
        st.sampled_from(["webrtc-ice", "join-room", "chat-message", "error", "leave-room"]),
    ),
)
def test_client_envelope_answers_as_the_precise_checks(channel: Any, type_: Any) -> None:
    obj: Frame = {}
    if channel is not _ABSENT:
        obj["channel"] = channel
    if type_ is not _ABSENT:
        obj["type"] = type_
    assert answer_of(wire.client_envelope, obj) == answer_of(wire._checked_envelope, obj)


# --------------------------------------------------------------------------- the rest


def test_send_frame_is_a_send_frame() -> None:
    import attrs

    from sansio_signal.actions import send_frame

    fields = attrs.fields(SendFrame)
    assert [f.name for f in fields] == ["conn", "text", "frame_type"]
    # send_frame fills the slots itself: nothing of attrs' __init__ may be skipped
    assert all(
        f.default is attrs.NOTHING and f.validator is None and f.converter is None for f in fields
    )
    frame = send_frame(7, "{}", "webrtc-ice")
    assert type(frame) is SendFrame
    assert frame == SendFrame(conn=7, text="{}", frame_type="webrtc-ice")
    assert hash(frame) == hash(SendFrame(conn=7, text="{}", frame_type="webrtc-ice"))
    assert repr(frame) == repr(SendFrame(conn=7, text="{}", frame_type="webrtc-ice"))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        frame.text = "x"  # type: ignore[misc]


@given(st.lists(st.sampled_from(["bob", "b b", "", "x" * 64, "x" * 65, "\u00e9", "a:b"])))
def test_valid_id_remembers_the_same_answers(ids: list[str]) -> None:
    limits = Limits()
    for value in ids + ids:
        assert limits.valid_id(value) is (re.fullmatch(limits.id_pattern, value) is not None)


def test_valid_id_memory_is_bounded() -> None:
    limits = Limits()
    for i in range(10_000):
        assert limits.valid_id(f"user{i}")
    assert not limits.valid_id("y" * 1000)
    known = limits._known_ids
    assert 0 < len(known) <= 4096
    assert all(len(value) <= 128 for value in known)
