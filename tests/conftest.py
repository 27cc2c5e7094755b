"""Shared fixtures and frame builders for the test suite.

The builders return plain JSON objects (``dict``), exactly as a client would put them on
the wire; ``RelayHarness.send`` encodes a mapping for us. Import them with
``from conftest import join_frame`` (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from sansio_signal.testing.relay import RelayHarness

if TYPE_CHECKING:
    from netlab import NetLab

# Every run of the suite tries the same examples (CI must be deterministic); set
# HYPOTHESIS_PROFILE=explore to hunt for new ones with fresh randomness and more examples.
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOMS = "webrtc-dashboard-rooms"
SIGNALING = "webrtc-signaling"
CHAT = "webrtc-dashboard-chat"

Frame = dict[str, Any]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """A fresh network lab (tests/netlab.py): skipped where namespaces cannot be made,
    failing instead when ``CI`` is set; no namespace of it outlives the test."""
    from netlab import NetLab, namespaces, require_netns

    require_netns()
    with NetLab() as made:
        assert set(made.ns.values()) <= namespaces()
        yield made
    assert not {n for n in namespaces() if n.startswith(made.prefix)}, "a namespace outlived"


@pytest.fixture
def loopback() -> Iterator[None]:
    """ICE gathers candidates on 127.0.0.1 only, for a module's aiortc peers: the module
    says ``pytestmark = pytest.mark.usefixtures("loopback")``."""
    from sansio_signal.adapters.aiortc_peer import loopback_only  # aiortc only when used

    with loopback_only():
        yield


@pytest.fixture
def harness() -> RelayHarness:
    """A relay harness with default limits and a virtual clock at ``now=1000.0``."""
    return RelayHarness()


def join_frame(room_id: str, user_id: str, **extra: Any) -> Frame:
    """A client's ``join-room``."""
    return {"channel": ROOMS, "type": "join-room", "roomId": room_id, "userId": user_id, **extra}


def leave_frame(room_id: str, **extra: Any) -> Frame:
    """A client's ``leave-room``."""
    return {"channel": ROOMS, "type": "leave-room", "roomId": room_id, **extra}


def chat_frame(text: str, **extra: Any) -> Frame:
    """A client's ``chat-message``."""
    return {"channel": CHAT, "type": "chat-message", "text": text, **extra}


def offer_frame(to_user_id: str, sdp: str = "v=0 offer", **extra: Any) -> Frame:
    """A client's ``webrtc-offer``."""
    return {
        "channel": SIGNALING,
        "type": "webrtc-offer",
        "toUserId": to_user_id,
        "offer": {"type": "offer", "sdp": sdp},
        **extra,
    }


def answer_frame(to_user_id: str, sdp: str = "v=0 answer", **extra: Any) -> Frame:
    """A client's ``webrtc-answer``."""
    return {
        "channel": SIGNALING,
        "type": "webrtc-answer",
        "toUserId": to_user_id,
        "answer": {"type": "answer", "sdp": sdp},
        **extra,
    }


def ice_frame(to_user_id: str, candidate: Frame | None = None, **extra: Any) -> Frame:
    """A client's ``webrtc-ice`` (``candidate=None`` is end-of-candidates)."""
    return {
        "channel": SIGNALING,
        "type": "webrtc-ice",
        "toUserId": to_user_id,
        "candidate": candidate,
        **extra,
    }


def renegotiate_frame(to_user_id: str, **extra: Any) -> Frame:
    """A client's ``webrtc-renegotiate``."""
    return {"channel": SIGNALING, "type": "webrtc-renegotiate", "toUserId": to_user_id, **extra}


def error_frame(channel: str, code: str) -> Frame:
    """The parts of a server ``error`` frame a test can predict (``message`` is free text)."""
    return {"channel": channel, "type": "error", "code": code}


def strip_message(frames: list[Frame]) -> list[Frame]:
    """``frames`` with every error frame's free-text ``message`` checked and removed."""
    out: list[Frame] = []
    for frame in frames:
        if frame.get("type") == "error":
            frame = dict(frame)
            assert isinstance(frame.pop("message"), str)
        out.append(frame)
    return out
