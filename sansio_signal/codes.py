"""The protocol's constants: channels, error codes and close codes.

The bottom of the package: it imports nothing of it, so that every other module (the
exceptions in :mod:`.errors`, the codec in :mod:`.wire`, the machines) can name a code
without importing the codec.
"""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    """The channels of the envelope."""

    ROOMS = "webrtc-dashboard-rooms"
    SIGNALING = "webrtc-signaling"
    CHAT = "webrtc-dashboard-chat"
    SYSTEM = "system"
    """Used only by the server, for errors about frames whose channel is unknown."""


class ErrorCode(StrEnum):
    """Every error code of protocol v1."""

    BAD_JSON = "bad-json"
    BAD_FRAME = "bad-frame"
    UNKNOWN_CHANNEL = "unknown-channel"
    UNKNOWN_TYPE = "unknown-type"
    INVALID_ID = "invalid-id"
    FRAME_TOO_LARGE = "frame-too-large"
    NOT_IN_ROOM = "not-in-room"
    PEER_NOT_FOUND = "peer-not-found"
    USER_ID_TAKEN = "user-id-taken"
    ROOM_FULL = "room-full"
    RATE_LIMITED = "rate-limited"
    UNAUTHORIZED = "unauthorized"
    UNAVAILABLE = "unavailable"
    """Scale-out: the shared store cannot be reached (try again)."""


class CloseCode:
    """WebSocket close codes the server uses (RFC 6455 and the protocol's own)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    """Not sent: what WebSocket libraries report for a socket that ended without one."""
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    REPLACED = 4000
