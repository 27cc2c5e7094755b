"""Signed join tokens: who may join which room, until when.

A token is ``BODY.SIG``: ``BODY`` is the base64url (unpadded) of a compact JSON object
of claims, ``SIG`` the base64url of HMAC-SHA256(secret, ``BODY``). Claims:

``u``    the user id the token is for (exact);
``r``    the room id, or a pattern where ``*`` matches any run of id characters
         (``team-*``);
``exp``  expiry, Unix seconds (checked with :data:`LEEWAY` seconds of clock skew);
``max``  optional: the most members the room may have when this token joins.

:func:`issue_token` makes one (for app backends); :class:`TokenAuthority` checks
``join-room`` frames against one secret and plugs into
:class:`~sansio_signal.RelayMachine` as its ``authorize`` callable. Time always comes
in as an argument, and it is the wall time (Unix seconds, ``wall_time``): an expiry is
calendar time shared with the backend that issued the token, unlike the machines'
monotonic ``now``. Nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import attrs

from .wire import JoinRoom

LEEWAY = 30.0
"""Seconds a token is still accepted after its expiry (clock skew between machines)."""


def load_secret(data: bytes) -> bytes:
    """A secret from a file's bytes: trailing whitespace removed; must not be empty."""
    secret = data.rstrip()
    if not secret:
        raise ValueError("the secret is empty")
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())


@attrs.frozen(kw_only=True)
class Claims:
    """What a token grants."""

    user_id: str
    room: str
    """A room id, or a pattern with ``*``."""
    expires: float
    max_room_size: int | None = None

    def allows(self, user_id: str, room_id: str) -> bool:
        """Whether these claims cover ``user_id`` joining ``room_id``."""
        return user_id == self.user_id and fnmatchcase(room_id, self.room)


def issue_token(
    secret: bytes,
    *,
    user_id: str,
    room: str,
    ttl: float,
    wall_time: float,
    max_room_size: int | None = None,
) -> str:
    """A token letting ``user_id`` join ``room`` (an id or a ``*`` pattern) until
    ``wall_time + ttl`` (``wall_time``: now, in Unix seconds)."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    claims: dict[str, Any] = {"u": user_id, "r": room, "exp": round(wall_time + ttl, 3)}
    if max_room_size is not None:
        claims["max"] = max_room_size
    body = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return f"{body}.{_sign(secret, body)}"


class InvalidToken(ValueError):
    """A token that is malformed, forged, expired or for someone else."""


def verify_token(secret: bytes, token: str, *, wall_time: float) -> Claims:
    """The claims of a genuine token unexpired at ``wall_time`` (Unix seconds), or
    :class:`InvalidToken`."""
    if not token.isascii():
        raise InvalidToken("a token is ASCII")
    body, dot, signature = token.partition(".")
    if not dot or not body or not signature:
        raise InvalidToken("not BODY.SIGNATURE")
    if not hmac.compare_digest(_sign(secret, body), signature):
        raise InvalidToken("bad signature")
    try:
        claims = json.loads(_unb64(body))
    except (ValueError, binascii.Error) as exc:
        raise InvalidToken(f"unreadable claims: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidToken("claims are not an object")
    user, room, exp, most = claims.get("u"), claims.get("r"), claims.get("exp"), claims.get("max")
    if not isinstance(user, str) or not isinstance(room, str):
        raise InvalidToken("claims need string u and r")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise InvalidToken("claims need a numeric exp")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        raise InvalidToken("max must be a positive integer")
    if wall_time > exp + LEEWAY:
        raise InvalidToken("expired")
    return Claims(user_id=user, room=room, expires=float(exp), max_room_size=most)


class TokenAuthority:
    """Checks joins against one secret: the relay machine's ``authorize``.

    ``room_size`` (optional) tells it the current size of a room, so that a token's
    ``max`` claim can be enforced.
    """

    def __init__(self, secret: bytes, room_size: Callable[[str], int] | None = None) -> None:
        self._secret = secret
        self.room_size = room_size

    def __call__(self, join: JoinRoom, wall_time: float) -> bool:
        """Whether ``join`` carries a token valid at ``wall_time`` (Unix seconds: the
        join frame's ``FrameReceived.wall_time``) for its user and room."""
        if join.token is None:
            return False
        try:
            claims = verify_token(self._secret, join.token, wall_time=wall_time)
        except InvalidToken:
            return False
        if not claims.allows(join.user_id, join.room_id):
            return False
        if claims.max_room_size is not None and self.room_size is not None:
            return self.room_size(join.room_id) < claims.max_room_size
        return True
