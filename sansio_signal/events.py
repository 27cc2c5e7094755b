"""Events: what happened, fed into a machine (past tense, frozen)."""

from __future__ import annotations

from typing import TypeAlias

import attrs

ConnId: TypeAlias = int
"""The adapter's name for one client connection (any int, unique while it is open)."""


@attrs.frozen(kw_only=True)
class Connected:
    """A client connection was accepted."""

    conn: ConnId


@attrs.frozen(kw_only=True)
class FrameReceived:
    """A frame arrived on ``conn``: ``str`` for a text frame, ``bytes`` for binary."""

    conn: ConnId
    data: str | bytes


@attrs.frozen(kw_only=True)
class Disconnected:
    """``conn`` is gone. ``clean`` is true for a close with code 1000/1001 and for every
    close the server itself initiated; false when the socket dropped any other way."""

    conn: ConnId
    clean: bool = True


RelayEvent: TypeAlias = Connected | FrameReceived | Disconnected
