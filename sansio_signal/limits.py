"""Limits: what a frame may be, and what the relay allows.

Two objects, one per concern:

- :class:`WireLimits` — the codec's: how large a frame may be (``max_frame_bytes``), how
  long a chat text (``max_text_chars``), what a room or user id looks like
  (``id_pattern``). The codec (:mod:`.wire`) and the client machine need these and
  nothing else.
- :class:`Limits` — the relay's policy on top of them: room sizes and counts, the rate
  limit, the abuse rule, the idle timeout and resume. It *is* a :class:`WireLimits` (a
  subclass: a relay's limits include those of the frames it parses), so it stays the one
  object a user configures — ``RelayMachine(limits=...)``, ``RelayServer(limits=...)``,
  the flags of ``sansio-signal serve`` — and the relay hands it to the codec as it is.

Defaults are PROTOCOL.md's. This module imports nothing of the package.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

DEFAULT_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
"""What a room or user id must match in full, unless :attr:`Limits.id_pattern` says otherwise."""


_KNOWN_IDS = 4096
_KNOWN_ID_CHARS = 128
"""``valid_id`` remembers its answer for up to ``_KNOWN_IDS`` ids of at most
``_KNOWN_ID_CHARS`` characters (then starts over): under 1 MB however ids are chosen."""


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class WireLimits:
    """The limits of the codec: frame size, chat text length, the id pattern."""

    max_frame_bytes: int = attrs.field(default=65_536, validator=_positive)
    """The largest frame, in UTF-8 bytes (:meth:`too_large`)."""
    max_text_chars: int = attrs.field(default=4_096, validator=_positive)
    """The longest chat text, in characters."""
    id_pattern: str = DEFAULT_ID_PATTERN
    """What a ``roomId`` / ``userId`` must match (whole)."""
    _id_re: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)
    _known_ids: dict[str, bool] = attrs.field(init=False, repr=False, eq=False, factory=dict)
    """:meth:`valid_id`'s recent answers: the relay checks the ``toUserId`` of every
    signaling frame, and a member signals the same few peers over and over."""

    @_id_re.default
    def _compile(self) -> re.Pattern[str]:
        return re.compile(self.id_pattern)

    def valid_id(self, value: str) -> bool:
        """Whether ``value`` is an acceptable ``roomId`` / ``userId``."""
        known = self._known_ids.get(value)
        if known is None:
            known = self._id_re.fullmatch(value) is not None
            if len(value) <= _KNOWN_ID_CHARS:  # bounded: at most so many, so long
                if len(self._known_ids) >= _KNOWN_IDS:
                    self._known_ids.clear()
                self._known_ids[value] = known
        return known

    def too_large(self, data: str | bytes) -> bool:
        """Whether a frame is over ``max_frame_bytes`` (counted as UTF-8 bytes)."""
        n = len(data)
        if n > self.max_frame_bytes:
            return True
        if isinstance(data, bytes) or n * 4 <= self.max_frame_bytes:
            return False
        return len(data.encode("utf-8", "surrogatepass")) > self.max_frame_bytes


@attrs.frozen(kw_only=True)
class Limits(WireLimits):
    """Every limit of the relay, in one object: the codec's (:class:`WireLimits`) and the
    relay's policy.

    ``rate_limit`` is frames per second sustained per connection; ``0`` turns rate
    limiting off. A connection's bucket outlives it: when it ends half-empty, the next
    connection from the same address starts from that bucket (refilled for the time in
    between) instead of a full one, so reconnecting does not reset the limit.
    ``abuse_errors`` error replies within ``abuse_window`` seconds close the
    connection with 1008. ``max_rooms`` caps the rooms of the whole server: a join that
    would open one more is refused with ``room-full``. ``resume_grace`` and the
    ``resume_queue_*`` bounds govern resume (PROTOCOL.md, "Resume"). Every duration is
    seconds of the machine's monotonic ``now``.
    """

    max_room_size: int = attrs.field(default=32, validator=_positive)
    max_rooms: int = attrs.field(default=10_000, validator=_positive)
    rate_limit: float = attrs.field(default=50.0, validator=_non_negative)
    rate_burst: int = attrs.field(default=200, validator=_positive)
    abuse_errors: int = attrs.field(default=20, validator=_positive)
    abuse_window: float = attrs.field(default=10.0, validator=_positive)
    idle_timeout: float = attrs.field(default=0.0, validator=_non_negative)
    """Seconds a connection may send no frame before it is closed with 1001 (``0``: no
    limit; pings do not count, any client library answers them)."""
    resume_grace: float = attrs.field(default=10.0, validator=_non_negative)
    """Seconds a member whose socket dropped (no clean close) is held for a resume;
    ``0`` turns resume off (every disconnect leaves at once)."""
    max_per_address: int = attrs.field(default=0, validator=_non_negative)
    """Connections plus held members one address may have at a time (``0``: no limit).
    One more connection is closed as it arrives (:attr:`~.codes.CloseCode.TRY_AGAIN_LATER`;
    an HTTP adapter answers it 429 before the handshake). A held member counts until
    its grace ends, so dropping sockets on purpose does not escape the limit."""
    node_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Scale-out: seconds a node's heartbeat lasts. Every node looks for dead nodes
    each third of it and holds a dead node's members for a resume (PROTOCOL.md,
    "Scale-out"), so they are noticed within it."""
    resume_queue_frames: int = attrs.field(default=512, validator=_positive)
    resume_queue_bytes: int = attrs.field(default=1_048_576, validator=_positive)
    """Frames addressed to a held member are queued up to these bounds; one more ends
    the grace at once (the member leaves)."""


DEFAULT_WIRE_LIMITS = WireLimits()
"""The protocol's codec limits (what the codec uses when given none)."""
DEFAULT_LIMITS = Limits()
"""The protocol's limits, relay policy included (a relay's default)."""
