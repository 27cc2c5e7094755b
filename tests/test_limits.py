"""Limits: the codec's (WireLimits) and the relay's policy on top of them (Limits)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_signal.limits import DEFAULT_LIMITS, DEFAULT_WIRE_LIMITS, Limits, WireLimits
from sansio_signal.relay import RelayMachine
from sansio_signal.testing import counting_tokens


def test_limits_defaults_match_protocol() -> None:
    limits = Limits()
    assert limits.max_frame_bytes == 65_536
    assert limits.max_room_size == 32
    assert limits.rate_limit == 50
    assert limits.rate_burst == 200
    assert limits.max_text_chars == 4096
    assert (limits.abuse_errors, limits.abuse_window) == (20, 10.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_frame_bytes": 0},
        {"max_room_size": 0},
        {"rate_burst": 0},
        {"rate_limit": -1.0},
        {"abuse_errors": 0},
        {"abuse_window": 0.0},
        {"max_text_chars": -5},
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_rate_limit_zero_is_allowed() -> None:
    assert Limits(rate_limit=0).rate_limit == 0


@pytest.mark.parametrize(
    ("data", "too_large"),
    [
        ("a" * 65_536, False),
        ("a" * 65_537, True),
        (b"a" * 65_536, False),
        (b"a" * 65_537, True),
        ("\u00e9" * 32_768, False),  # 2 bytes each: exactly 65,536
        ("\u00e9" * 32_768 + "a", True),
        ("\u20ac" * 21_845 + "a", False),  # 3 bytes each: 65,535 + 1
        ("\u20ac" * 21_845 + "ab", True),
        ("\u20ac" * 21_846, True),
        ("\U0001f600" * 16_384, False),  # 4 bytes each: exactly 65,536
        ("\U0001f600" * 16_384 + "a", True),
        ("\U0001f600" * 16_385, True),
        ("a" * 65_535 + "\u00e9", True),  # 65,536 characters but 65,537 bytes
        ("a" * 16_383 + "\U0001f600", False),  # fast path: 4 * length fits
        ("", False),
    ],
    ids=lambda v: repr(v)[:16] if not isinstance(v, bool) else str(v),
)
def test_too_large_counts_utf8_bytes(data: str | bytes, too_large: bool) -> None:
    assert WireLimits().too_large(data) is too_large


@given(st.text(alphabet="a\u00e9\u20ac\U0001f600", max_size=40), st.integers(1, 100))
def test_too_large_matches_utf8_length(text: str, limit: int) -> None:
    limits = WireLimits(max_frame_bytes=limit)
    assert limits.too_large(text) is (len(text.encode("utf-8")) > limit)


def test_the_codec_limits_are_a_part_of_the_relay_limits() -> None:
    wire_fields = {f.name for f in attrs.fields(WireLimits)}
    relay_policy = {f.name for f in attrs.fields(Limits)} - wire_fields
    assert wire_fields == {
        "max_frame_bytes",
        "max_text_chars",
        "id_pattern",
        "_id_re",
        "_known_ids",
    }
    assert relay_policy == {
        "max_room_size",
        "max_rooms",
        "rate_limit",
        "rate_burst",
        "abuse_errors",
        "abuse_window",
        "idle_timeout",
        "resume_grace",
        "max_per_address",
        "node_timeout",
        "resume_queue_frames",
        "resume_queue_bytes",
    }
    assert isinstance(DEFAULT_LIMITS, WireLimits)
    assert WireLimits() == DEFAULT_WIRE_LIMITS
    limits = Limits(max_text_chars=3, id_pattern="[a-z]+", rate_limit=0)
    assert limits.valid_id("abc") and not limits.valid_id("ABC")
    assert RelayMachine(limits=limits, new_token=counting_tokens()).limits is limits


def test_the_old_import_paths_still_work() -> None:
    from sansio_signal import wire

    assert (wire.Limits, wire.DEFAULT_LIMITS) == (Limits, DEFAULT_LIMITS)
