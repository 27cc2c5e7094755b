"""Signed join tokens: who may join which room, until when.

A token is a standard JWT (RFC 7519) signed with HS256 (HMAC-SHA256) and the server's
secret, so an application's backend can mint one with any JWT library (PyJWT,
``jsonwebtoken``, ``jose``). Claims:

``sub``  the user id the token is for (exact; required);
``room`` the room id, or a pattern where ``*`` matches any run of id characters
         (``team-*``); nothing else in a pattern is special (required);
``exp``  expiry, a NumericDate (Unix seconds; required);
``nbf``  optional: not valid before this NumericDate;
``iat``  optional: when it was issued (a token issued in the future is refused);
``max``  optional, ours: the most members the room may have when this token joins.

``exp``, ``nbf`` and ``iat`` are checked with :data:`LEEWAY` seconds of clock skew. The
header's ``alg`` must be ``HS256``: any other (``none`` included) is refused.

The signature, the encoding and the header are checked by PyJWT; the time claims are
checked here, because PyJWT's own checks read the clock. (PyJWT 2.15 still calls
``datetime.now()`` in ``decode`` with those checks off, as they are here, and discards
the value: the outcome depends on the arguments only.)

:func:`issue_token` makes one (for app backends written in Python);
:class:`TokenAuthority` checks ``join-room`` frames against one secret and plugs into
:class:`~sansio_signal.RelayMachine` as its ``authorize`` callable. Time always comes
in as an argument, and it is the wall time (Unix seconds, ``wall_time``): an expiry is
calendar time shared with the backend that issued the token, unlike the machines'
monotonic ``now``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import jwt

if TYPE_CHECKING:
    from jwt.types import Options  # not in older PyJWT; at run time, a plain dict

from .wire import JoinRoom

LEEWAY = 30.0
"""Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""

ALGORITHM = "HS256"
"""The one signing algorithm accepted."""

REQUIRED_CLAIMS = ("exp", "sub", "room")
"""The claims every join token must carry: expiry, user (``sub``) and room."""

MIN_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key has at least as many bytes as the hash (shorter warns)."""

# Recent PyJWT warns with this at every use of a short key; older versions do not.
_WEAK_KEY: type[Warning] = getattr(jwt, "InsecureKeyLengthWarning", UserWarning)

_JWT = jwt.PyJWT()  # our own instance: nothing can change the options of the global one
_DECODE_OPTIONS: Options = {
    "require": list(REQUIRED_CLAIMS),
    # Time claims are checked against wall_time below, not against PyJWT's clock.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


def _check_key(secret: bytes) -> None:
    """Refuse a secret PyJWT would refuse at every verification (empty, or shaped like
    a PEM/SSH/DER key or a JSON Web Key: algorithm-confusion guards)."""
    try:
        jwt.get_algorithm_by_name(ALGORITHM).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        raise ValueError(f"the secret cannot be an HS256 key: {exc}") from None


def load_secret(data: bytes) -> bytes:
    """A secret from a file's bytes: trailing whitespace removed; must not be empty."""
    secret = data.rstrip()
    if not secret:
        raise ValueError("the secret is empty")
    _check_key(secret)
    return secret


def room_matches(pattern: str, room_id: str) -> bool:
    """Whether ``room_id`` matches ``pattern``: ``*`` matches any run (possibly empty) of
    characters, every other character only itself (``?`` and ``[`` included).

    Room ids are checked against the id pattern by the codec before they get here, so a
    run is a run of id characters. Linear in the lengths: leftmost-first placement of
    each literal part between the first and the last is exact for ``*``-only patterns.
    """
    first, *rest = pattern.split("*")
    if not rest:
        return room_id == pattern
    *middle, last = rest
    if len(room_id) < len(first) + len(last):
        return False
    if not room_id.startswith(first) or not room_id.endswith(last):
        return False
    position, end = len(first), len(room_id) - len(last)
    for part in middle:
        found = room_id.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


@attrs.frozen(kw_only=True)
class Claims:
    """What a token grants."""

    user_id: str
    room: str
    """A room id, or a pattern with ``*``."""
    expires: float
    """``exp``, Unix seconds."""
    max_room_size: int | None = None
    not_before: float | None = None
    """``nbf``, Unix seconds, if the token has one."""
    issued_at: float | None = None
    """``iat``, Unix seconds, if the token has one."""

    def allows(self, user_id: str, room_id: str) -> bool:
        """Whether these claims cover ``user_id`` joining ``room_id``."""
        return user_id == self.user_id and room_matches(self.room, room_id)


def valid_ttl(ttl: float) -> bool:
    """Whether ``ttl`` is a lifetime a token may have: a finite number of seconds > 0
    (a token must expire)."""
    return isinstance(ttl, int | float) and not isinstance(ttl, bool) and 0 < ttl < math.inf


def issue_token(
    secret: bytes,
    *,
    user_id: str,
    room: str,
    ttl: float,
    wall_time: float,
    max_room_size: int | None = None,
) -> str:
    """A JWT letting ``user_id`` join ``room`` (an id or a ``*`` pattern) until
    ``wall_time + ttl`` (``wall_time``: now, in Unix seconds; ``ttl`` finite and
    positive). ``iat`` is ``wall_time`` rounded down and ``exp`` ``wall_time + ttl``
    rounded up, both whole seconds as most JWT libraries write them."""
    if not valid_ttl(ttl):
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    if not math.isfinite(wall_time):
        raise ValueError(f"wall_time must be finite, got {wall_time!r}")
    if max_room_size is not None and (isinstance(max_room_size, bool) or max_room_size < 1):
        raise ValueError(f"max_room_size must be a positive integer, got {max_room_size!r}")
    claims: dict[str, Any] = {
        "sub": user_id,
        "room": room,
        "iat": math.floor(wall_time),
        "exp": math.ceil(wall_time + ttl),
    }
    if max_room_size is not None:
        claims["max"] = max_room_size
    return _JWT.encode(claims, secret, algorithm=ALGORITHM)


class InvalidToken(ValueError):
    """A token that is malformed, forged, expired, not yet valid or for someone else."""


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The NumericDate claim ``name`` (a finite JSON number), ``None`` when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} must be a NumericDate (a number)")
    if isinstance(value, float) and not math.isfinite(value):
        # json.loads reads NaN and Infinity; a NaN exp would never compare as expired.
        raise InvalidToken(f"{name} must be finite")
    return value


def verify_token(secret: bytes, token: str, *, wall_time: float) -> Claims:
    """The claims of a genuine HS256 token valid at ``wall_time`` (Unix seconds), or
    :class:`InvalidToken`; never another exception, whatever ``token`` holds."""
    if not isinstance(token, str) or not token.isascii():
        raise InvalidToken("a token is ASCII")
    try:
        with warnings.catch_warnings():
            # A short secret makes PyJWT warn at every verification; TokenAuthority
            # warns once, when it is made.
            warnings.simplefilter("ignore", _WEAK_KEY)
            claims = _JWT.decode(token, secret, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise InvalidToken("bad signature") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken(f"the algorithm must be {ALGORITHM}") from None
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidToken(f"unreadable or incomplete token: {exc}") from None
    user, room, most = claims.get("sub"), claims.get("room"), claims.get("max")
    if not isinstance(user, str) or not isinstance(room, str):
        raise InvalidToken("sub and room must be strings")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        raise InvalidToken("max must be a positive integer")
    expires = _numeric_date(claims, "exp")
    not_before = _numeric_date(claims, "nbf")
    issued_at = _numeric_date(claims, "iat")
    assert expires is not None  # required above
    # Compared as written (an int exp may be beyond float range; adding would overflow).
    if wall_time - LEEWAY >= expires:
        raise InvalidToken("expired")
    if not_before is not None and wall_time + LEEWAY < not_before:
        raise InvalidToken("not yet valid (nbf)")
    if issued_at is not None and wall_time + LEEWAY < issued_at:
        raise InvalidToken("issued in the future (iat)")
    return Claims(
        user_id=user,
        room=room,
        expires=expires,
        max_room_size=most,
        not_before=not_before,
        issued_at=issued_at,
    )


class TokenAuthority:
    """Checks joins against one secret: the relay machine's ``authorize``.

    ``room_size`` (optional) tells it the current size of a room, so that a token's
    ``max`` claim can be enforced. Making one with a secret shorter than
    :data:`MIN_SECRET_BYTES` warns once (PyJWT's ``InsecureKeyLengthWarning``); a secret
    that cannot be an HS256 key raises :class:`ValueError`.
    """

    def __init__(self, secret: bytes, room_size: Callable[[str], int] | None = None) -> None:
        _check_key(secret)
        if len(secret) < MIN_SECRET_BYTES:
            warnings.warn(
                f"the secret is {len(secret)} bytes long, shorter than the "
                f"{MIN_SECRET_BYTES} bytes RFC 7518 §3.2 asks of an HS256 key "
                "(make one with `head -c 32 /dev/urandom | base64`)",
                _WEAK_KEY,
                stacklevel=2,
            )
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
