"""The relay's fast path (issue 13): the codec's two JSON readers agree.

``decode_object`` reads a frame with msgspec and lets the standard library's decoder
decide whenever msgspec refuses, so what is accepted and every error message must be
exactly what the stdlib decoder alone gave: :func:`stdlib_outcome` is that decoder, as
``decode_object`` was before the fast reader, and every test here compares against it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ice_frame, offer_frame
from hypothesis import example, given
from hypothesis import strategies as st

from sansio_signal import wire
from sansio_signal.errors import WireError
from sansio_signal.wire import FAST_MAX_DEPTH, decode_object

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


@pytest.mark.parametrize("depth", [FAST_MAX_DEPTH - 1, FAST_MAX_DEPTH, FAST_MAX_DEPTH + 1, 400])
def test_deep_frames_are_read_by_the_stdlib(depth: int, stdlib_calls: list[str]) -> None:
    # Long enough to be measured, deep by objects or by arrays: up to FAST_MAX_DEPTH
    # msgspec's tree is used, deeper the stdlib reads the text again.
    for data in (
        '{"a":' * (depth - 1) + '{"pad":"' + "x" * 600 + '"}' + "}" * (depth - 1),
        '{"a":' + "[" * (depth - 1) + '"' + "x" * 600 + '"' + "]" * (depth - 1) + "}",
    ):
        stdlib_calls.clear()
        assert_same(data)
        assert outcome(data)[0] == "ok"
        assert bool(stdlib_calls) == (depth > FAST_MAX_DEPTH)


def test_short_frames_cannot_nest_past_the_fast_depth() -> None:
    # The reason short texts are not measured: each level takes two characters.
    depth = FAST_MAX_DEPTH + 1
    shortest = "[" * depth + "]" * depth
    assert len(shortest) >= 2 * FAST_MAX_DEPTH


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
