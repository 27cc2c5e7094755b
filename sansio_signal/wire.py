"""The wire codec: every frame of protocol v1 as a typed, frozen message.

Theory of operation
-------------------
A frame is one JSON object in one WebSocket text frame. Decoding happens in three
steps, each of which fails with a precise :class:`~sansio_signal.errors.WireError`:

1. *bytes to object* (:func:`decode_object`): a binary frame is ``bad-frame``; text that
   is not JSON, holds ``NaN``/``Infinity``, numbers too large for a float, or nests deeper
   than the interpreter can follow is ``bad-json``; JSON that is not an object is
   ``bad-frame``. The standard library's decoder defines these rules; msgspec reads
   the frames first, four times as fast, and hands every text it refuses (or could read
   differently: see :data:`FAST_MAX_DEPTH`) to the stdlib decoder, whose answer stands.
2. *envelope*: ``channel`` and ``type`` must be strings; an unknown channel is
   ``unknown-channel`` (answered on channel ``system``), an unknown type on a known
   channel is ``unknown-type`` (answered on that channel).
3. *fields*: each type's fields are checked for presence and type (``bad-frame``) and
   ids against the id pattern (``invalid-id``).

The two directions have their own parsers: :func:`parse_client_frame` accepts exactly
the frames a client may send (a client that sends ``user-joined-room`` gets
``unknown-type``), :func:`parse_server_frame` the frames a server sends.

Signaling frames keep every field other than the envelope and the addressing fields
verbatim in ``fields``: fields a peer does not know (a newer peer's, say) survive a
parse and an :func:`encode`. Typed views (``description``, ``candidate``, ``epoch``)
read from it. The relay builds no message for a signal: it checks the decoded object
(:func:`check_signal`) and relays the sender's text itself.

What the codec encodes is always ASCII JSON (non-ASCII characters escaped): a JSON
string may carry a lone surrogate escape (``"\\ud800"``), which cannot be encoded as
UTF-8; escaping keeps every frame we send valid. (A relayed signal is not encoded: it
is the sender's own text with :func:`signal_stamp` in place of its closing brace.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

import attrs
import msgspec

from .codes import Channel as Channel
from .codes import CloseCode as CloseCode
from .codes import ErrorCode as ErrorCode
from .errors import WireError
from .limits import DEFAULT_LIMITS as DEFAULT_LIMITS
from .limits import DEFAULT_WIRE_LIMITS, WireLimits
from .limits import Limits as Limits

# ``Channel``, ``CloseCode`` and ``ErrorCode`` live in :mod:`.codes` (the bottom of the
# package), the limits in :mod:`.limits`; the codec reads only :class:`WireLimits`. The
# other names are re-exported here for code that still imports them from the codec.

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
"""A decoded JSON value. Typed, not ``Any``: code that reads a value from the wire must
check what it is first (the codec does, once, for every field it reads)."""


# --------------------------------------------------------------------------- messages


@attrs.frozen(kw_only=True)
class JoinRoom:
    """Client → server: join ``room_id`` as ``user_id`` (leaves any current room)."""

    CHANNEL: ClassVar[Channel] = Channel.ROOMS
    TYPE: ClassVar[str] = "join-room"
    room_id: str
    user_id: str
    token: str | None = None
    resume_token: str | None = None


@attrs.frozen(kw_only=True)
class LeaveRoom:
    """Client → server: leave ``room_id``."""

    CHANNEL: ClassVar[Channel] = Channel.ROOMS
    TYPE: ClassVar[str] = "leave-room"
    room_id: str


@attrs.frozen(kw_only=True)
class UserJoinedRoom:
    """Server → client: ``user_id`` joined; ``existing_participants`` were there before.

    ``resume_token`` is set only on the joiner's own copy.
    """

    CHANNEL: ClassVar[Channel] = Channel.ROOMS
    TYPE: ClassVar[str] = "user-joined-room"
    room_id: str
    user_id: str
    existing_participants: tuple[str, ...]
    resume_token: str | None = None


@attrs.frozen(kw_only=True)
class UserLeftRoom:
    """Server → client: ``user_id`` left the room."""

    CHANNEL: ClassVar[Channel] = Channel.ROOMS
    TYPE: ClassVar[str] = "user-left-room"
    room_id: str
    user_id: str


@attrs.frozen(kw_only=True)
class SessionDescription:
    """An RTCSessionDescriptionInit: ``type`` (``offer``, ``answer``, ...) and ``sdp``."""

    type: str
    sdp: str

    def to_json(self) -> dict[str, JSONValue]:
        """The wire form."""
        return {"type": self.type, "sdp": self.sdp}


@attrs.frozen(kw_only=True)
class IceCandidate:
    """An RTCIceCandidateInit as browsers send it (``candidate`` may be ``""``: end)."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None

    def to_json(self) -> dict[str, JSONValue]:
        """The wire form (camelCase keys, ``None`` fields left out)."""
        out: dict[str, JSONValue] = {"candidate": self.candidate}
        if self.sdp_mid is not None:
            out["sdpMid"] = self.sdp_mid
        if self.sdp_mline_index is not None:
            out["sdpMLineIndex"] = self.sdp_mline_index
        if self.username_fragment is not None:
            out["usernameFragment"] = self.username_fragment
        return out


MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer every JSON peer reads exactly (JavaScript's ``Number``)."""


def wire_int(value: JSONValue) -> int | None:
    """``value`` as a non-negative integer, or ``None`` when it is not one.

    A JSON number with no fractional part counts, whatever its spelling: ``1.0`` is 1
    (JavaScript cannot tell the two apart, so neither may we). Booleans, fractions,
    negative numbers and numbers past :data:`MAX_SAFE_INTEGER` are not integers here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        return None
    return number if 0 <= number <= MAX_SAFE_INTEGER else None


@attrs.frozen(kw_only=True)
class PairFields:
    """The fields peers add to signaling frames for their own negotiation (the relay
    passes them unchanged; PROTOCOL.md "Peer conventions"), validated and typed.

    A field that is absent or ``null`` takes its default. ``epoch`` (default 0) numbers
    the pair's peer connection; ``sid`` names the sender's
    incarnation of the pair and ``rsid`` the one it expects of us (absent or ``null``:
    none); ``seq`` numbers offers; ``caps`` lists what the sender's peer connection can
    do (unknown names are kept, for newer peers); ``reason`` says why a
    ``webrtc-renegotiate`` was sent. :func:`read_pair_fields` reads them.
    """

    epoch: int = 0
    epoch_given: bool = False
    """Whether the sender numbers its connections at all (``epoch`` present and not
    ``null``): a peer that does not could never follow a bump."""
    sid: str | None = None
    rsid: str | None = None
    seq: int | None = None
    caps: tuple[str, ...] | None = None
    reason: str = ""


def _pair_error(key: str, rule: str, value: JSONValue) -> WireError:
    return WireError(
        ErrorCode.BAD_FRAME,
        f"field {key!r} must be {rule} ({_kind(value)} given)",
        "webrtc-signaling",
    )


def read_pair_fields(fields: Mapping[str, JSONValue]) -> PairFields:
    """The :class:`PairFields` of a signaling frame's ``fields``, or ``WireError``
    (``bad-frame``) naming the first malformed one. Every value a peer supplies is
    checked here, once, so that nothing past the codec meets an untyped value."""
    epoch = fields.get("epoch")
    if epoch is not None and wire_int(epoch) is None:
        raise _pair_error("epoch", "a non-negative integer or absent", epoch)
    seq = fields.get("seq")
    if seq is not None and wire_int(seq) is None:
        raise _pair_error("seq", "a non-negative integer or absent", seq)
    strings: dict[str, str | None] = {}
    for key in ("sid", "rsid", "reason"):
        value = fields.get(key)
        if value is not None and not isinstance(value, str):
            raise _pair_error(key, "a string or absent", value)
        strings[key] = value
    caps = fields.get("caps")
    if caps is not None and (
        not isinstance(caps, list) or not all(isinstance(name, str) for name in caps)
    ):
        raise _pair_error("caps", "an array of strings", caps)
    return PairFields(
        epoch=0 if epoch is None else wire_int(epoch) or 0,
        epoch_given=epoch is not None,
        sid=strings["sid"],
        rsid=strings["rsid"],
        seq=None if seq is None else wire_int(seq),
        caps=None if caps is None else tuple(name for name in caps if isinstance(name, str)),
        reason=strings["reason"] or "",
    )


def _frozen_fields(value: Mapping[str, JSONValue]) -> Mapping[str, JSONValue]:
    return dict(value)


@attrs.frozen(kw_only=True)
class _Signal:
    """Common shape of the four signaling frames.

    ``fields`` holds every wire field except ``channel``, ``type``, ``toUserId``,
    ``fromUserId`` and ``roomId``, exactly as sent — the server relays it unchanged.
    ``from_user_id`` and ``room_id`` are set by the server on delivery.
    """

    CHANNEL: ClassVar[Channel] = Channel.SIGNALING
    TYPE: ClassVar[str] = ""
    to_user_id: str
    fields: Mapping[str, JSONValue] = attrs.field(factory=dict, converter=_frozen_fields)
    from_user_id: str | None = None
    room_id: str | None = None

    @property
    def pair(self) -> PairFields:
        """The peers' own fields of this frame, validated (``WireError`` if malformed)."""
        return read_pair_fields(self.fields)

    @property
    def epoch(self) -> int:
        """The per-pair ``epoch`` peers agree on (absent counts as 0)."""
        return self.pair.epoch


@attrs.frozen(kw_only=True)
class Offer(_Signal):
    """``webrtc-offer``: ``fields["offer"]`` is the session description."""

    TYPE: ClassVar[str] = "webrtc-offer"

    @property
    def description(self) -> SessionDescription:
        """The offer as a typed description."""
        return _read_description(self.fields, "offer")

    @classmethod
    def new(cls, *, to_user_id: str, description: SessionDescription, epoch: int = 0) -> Offer:
        """An offer for a client to send."""
        return cls(to_user_id=to_user_id, fields={"offer": description.to_json(), "epoch": epoch})


@attrs.frozen(kw_only=True)
class Answer(_Signal):
    """``webrtc-answer``: ``fields["answer"]`` is the session description."""

    TYPE: ClassVar[str] = "webrtc-answer"

    @property
    def description(self) -> SessionDescription:
        """The answer as a typed description."""
        return _read_description(self.fields, "answer")

    @classmethod
    def new(cls, *, to_user_id: str, description: SessionDescription, epoch: int = 0) -> Answer:
        """An answer for a client to send."""
        return cls(to_user_id=to_user_id, fields={"answer": description.to_json(), "epoch": epoch})


@attrs.frozen(kw_only=True)
class Ice(_Signal):
    """``webrtc-ice``: ``fields["candidate"]`` is a candidate, or ``None`` (end)."""

    TYPE: ClassVar[str] = "webrtc-ice"

    @property
    def candidate(self) -> IceCandidate | None:
        """The candidate, ``None`` for end-of-candidates."""
        return _read_candidate(self.fields)

    @classmethod
    def new(cls, *, to_user_id: str, candidate: IceCandidate | None, epoch: int = 0) -> Ice:
        """A candidate (or end-of-candidates) for a client to send."""
        wire = None if candidate is None else candidate.to_json()
        return cls(to_user_id=to_user_id, fields={"candidate": wire, "epoch": epoch})


@attrs.frozen(kw_only=True)
class Renegotiate(_Signal):
    """``webrtc-renegotiate``: asks the peer to make a fresh offer."""

    TYPE: ClassVar[str] = "webrtc-renegotiate"

    @classmethod
    def new(cls, *, to_user_id: str, epoch: int = 0) -> Renegotiate:
        """A renegotiation request for a client to send."""
        return cls(to_user_id=to_user_id, fields={"epoch": epoch})


@attrs.frozen(kw_only=True)
class ChatMessage:
    """``chat-message``. Client → server carries ``text`` only; the server's copy adds
    ``room_id``, ``from_user_id`` and ``ts`` (Unix seconds)."""

    CHANNEL: ClassVar[Channel] = Channel.CHAT
    TYPE: ClassVar[str] = "chat-message"
    text: str
    room_id: str | None = None
    from_user_id: str | None = None
    ts: float | None = None


@attrs.frozen(kw_only=True)
class Error:
    """Server → client: the offender's frame was refused."""

    TYPE: ClassVar[str] = "error"
    channel: str
    code: ErrorCode
    message: str


Signal: TypeAlias = Offer | Answer | Ice | Renegotiate
"""The four signaling frames (relayed between peers)."""
ClientMessage: TypeAlias = JoinRoom | LeaveRoom | Offer | Answer | Ice | Renegotiate | ChatMessage
"""Every frame a client sends (what :func:`parse_client_frame` returns)."""
ServerMessage: TypeAlias = (
    UserJoinedRoom | UserLeftRoom | Offer | Answer | Ice | Renegotiate | ChatMessage | Error
)
"""Every frame a server sends (what :func:`parse_server_frame` returns)."""
Message: TypeAlias = ClientMessage | ServerMessage
"""Any frame of the protocol (what :func:`encode` takes)."""

# --------------------------------------------------------------------------- decoding


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
"""The decoder that defines what a frame may be: the standard library's, with the two
hooks above. Every frame it refuses is refused with its words."""

FAST_MAX_DEPTH = 8
"""How deep a frame the fast reader (:data:`_fast_decode`) takes: the top-level object
is level 1, and protocol frames nest 3 levels. A deeper frame goes to :data:`_decoder`."""


def _shallow_json(levels: int) -> Any:
    """The type of a JSON value holding at most ``levels`` levels of arrays and objects,
    as msgspec reads types: it refuses anything deeper, in C, while it decodes."""
    value: Any = str | int | float | bool | None
    for _ in range(levels):
        value = str | int | float | bool | None | list[value] | dict[str, value]
    return value


_fast_decode = msgspec.json.Decoder(dict[str, _shallow_json(FAST_MAX_DEPTH - 1)]).decode  # type: ignore[misc]
"""A faster reader of the same JSON (4x on a signaling frame): a JSON object of at most
:data:`FAST_MAX_DEPTH` levels, decoded exactly as :data:`_decoder` decodes it. It is
stricter: it refuses lone surrogate escapes (``"\\ud800"``), numbers out of a float's
range, integers past ``sys.get_int_max_str_digits()``, any JSON that is not an object
and anything deeper. Where it refuses, :data:`_decoder` decides, so what is accepted
and every error message stay the stdlib's.

The depth bound keeps the two equal at the recursion limit too: the stdlib decoder
refuses a frame nested deeper than the interpreter can follow from the caller's stack
(``JSON nested too deeply``), a few levels before msgspec's own recursion check would;
no caller is that close to the limit at depth 8. (Building the type costs 2^depth
steps — typing hashes nested types without memo — about 1.5 ms at import for 8.)"""


def decode_object(data: str | bytes) -> dict[str, JSONValue]:
    """Decode one frame to a JSON object, or raise ``WireError`` (channel ``system``)."""
    if not isinstance(data, str):
        raise WireError(ErrorCode.BAD_FRAME, "binary frames are not accepted; send JSON text")
    try:
        return _fast_decode(data)  # type: ignore[no-any-return]
    except Exception:  # any refusal (msgspec's, an encoding's, a recursion's): see below
        pass
    # The fast reader refused the text: the stdlib decoder decides (it is the
    # definition), with its own messages.
    try:
        obj = _decoder.decode(data)
    except RecursionError:
        raise WireError(ErrorCode.BAD_JSON, "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and our hooks' errors
        raise WireError(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError(ErrorCode.BAD_FRAME, f"a frame must be a JSON object, not {_kind(obj)}")
    return obj


def _kind(value: JSONValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _str(obj: Mapping[str, JSONValue], key: str, channel: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        what = "missing" if value is None and key not in obj else f"{_kind(value)}"
        raise WireError(
            ErrorCode.BAD_FRAME, f"field {key!r} must be a string ({what} given)", channel
        )
    return value


def _opt_str(obj: Mapping[str, JSONValue], key: str, channel: str) -> str | None:
    if obj.get(key) is None:
        return None
    return _str(obj, key, channel)


def _id(obj: Mapping[str, JSONValue], key: str, channel: str, limits: WireLimits) -> str:
    value = _str(obj, key, channel)
    if not limits.valid_id(value):
        raise WireError(
            ErrorCode.INVALID_ID,
            f"field {key!r} must match {limits.id_pattern} (got {value[:80]!r})",
            channel,
        )
    return value


def _read_description(obj: Mapping[str, JSONValue], key: str) -> SessionDescription:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise WireError(
            ErrorCode.BAD_FRAME,
            f"field {key!r} must be an object with string 'type' and 'sdp'",
            Channel.SIGNALING,
        )
    return SessionDescription(
        type=_str(value, "type", Channel.SIGNALING), sdp=_str(value, "sdp", Channel.SIGNALING)
    )


def _candidate_fields(obj: Mapping[str, JSONValue]) -> dict[str, JSONValue] | None:
    """The checked ``candidate`` object of a ``webrtc-ice`` frame (``None``: end of
    candidates), or ``WireError``. The relay stops here (no object per frame)."""
    if "candidate" not in obj:
        raise WireError(
            ErrorCode.BAD_FRAME,
            "field 'candidate' is missing (use null for end-of-candidates)",
            Channel.SIGNALING,
        )
    value = obj["candidate"]
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WireError(
            ErrorCode.BAD_FRAME,
            f"field 'candidate' must be an object or null, not {_kind(value)}",
            Channel.SIGNALING,
        )
    _str(value, "candidate", Channel.SIGNALING)
    _opt_str(value, "sdpMid", Channel.SIGNALING)
    _opt_str(value, "usernameFragment", Channel.SIGNALING)
    index = value.get("sdpMLineIndex")
    if index is not None and wire_int(index) is None:
        raise WireError(
            ErrorCode.BAD_FRAME,
            "field 'candidate.sdpMLineIndex' must be a non-negative integer or null",
            Channel.SIGNALING,
        )
    return value


def _read_candidate(obj: Mapping[str, JSONValue]) -> IceCandidate | None:
    value = _candidate_fields(obj)
    if value is None:
        return None
    sdp_mid, fragment = value.get("sdpMid"), value.get("usernameFragment")
    return IceCandidate(
        candidate=str(value["candidate"]),
        sdp_mid=sdp_mid if isinstance(sdp_mid, str) else None,
        sdp_mline_index=wire_int(value.get("sdpMLineIndex")),
        username_fragment=fragment if isinstance(fragment, str) else None,
    )


_SIGNAL_CLASSES: dict[str, type[Offer | Answer | Ice | Renegotiate]] = {
    cls.TYPE: cls for cls in (Offer, Answer, Ice, Renegotiate)
}
_ADDRESSING = frozenset({"channel", "type", "toUserId", "fromUserId", "roomId"})
_KNOWN_CHANNELS = frozenset(c.value for c in Channel if c is not Channel.SYSTEM)


def _envelope(obj: Mapping[str, JSONValue]) -> tuple[str, str]:
    channel = obj.get("channel")
    if not isinstance(channel, str):
        raise WireError(ErrorCode.BAD_FRAME, "field 'channel' must be a string")
    if channel not in _KNOWN_CHANNELS:
        raise WireError(ErrorCode.UNKNOWN_CHANNEL, f"unknown channel {channel[:80]!r}")
    return channel, _str(obj, "type", channel)


def _unknown_type(channel: str, type_: str) -> WireError:
    return WireError(
        ErrorCode.UNKNOWN_TYPE, f"unknown type {type_[:80]!r} on channel {channel!r}", channel
    )


def _signal_fields(obj: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    return {k: v for k, v in obj.items() if k not in _ADDRESSING}


def parse_client_frame(
    data: str | bytes, limits: WireLimits = DEFAULT_WIRE_LIMITS
) -> ClientMessage:
    """Parse a frame a client sent to the server, or raise ``WireError``.

    Does not check the frame size: that is the caller's first step
    (:meth:`~.limits.WireLimits.too_large`), because an oversize frame closes the connection.
    """
    return _parse_client_object(decode_object(data), limits)


_SIGNALING: str = Channel.SIGNALING.value
"""The channel's name as a plain str (an enum member's ``.value`` costs a lookup)."""
_ICE, _RENEGOTIATE = Ice.TYPE, Renegotiate.TYPE
_DESCRIPTION_KEYS = {Offer.TYPE: "offer", Answer.TYPE: "answer"}
"""The field holding the session description, by signaling type."""


def check_signal(obj: Mapping[str, JSONValue], type_: str, limits: WireLimits) -> str:
    """Check the fields of a signaling frame of ``type_``; return its ``toUserId``.

    The relay calls this and relays the sender's text, so that every field it does not
    check passes unchanged (and no message object is built per frame).

    It runs for every relayed frame, so each rule is tested first in one expression
    that only ever accepts what the precise check (:func:`_id`,
    :func:`_candidate_fields`, :func:`_read_description`) accepts; anything else goes
    to that check, which raises the error naming the fault (in the same order as
    ever) or accepts a rarer spelling (``"sdpMLineIndex": 0.0``).
    """
    to_user_id = obj.get("toUserId")
    if not (isinstance(to_user_id, str) and limits.valid_id(to_user_id)):
        to_user_id = _id(obj, "toUserId", _SIGNALING, limits)
    if type_ == _ICE:
        value = obj.get("candidate")
        if type(value) is dict:
            index = value.get("sdpMLineIndex")
            mid = value.get("sdpMid")
            fragment = value.get("usernameFragment")
            plain = (
                type(value.get("candidate")) is str
                and (mid is None or type(mid) is str)
                and (fragment is None or type(fragment) is str)
                and (index is None or (type(index) is int and 0 <= index <= MAX_SAFE_INTEGER))
            )
        else:
            plain = value is None and "candidate" in obj  # end of candidates
        if not plain:
            _candidate_fields(obj)
    elif (key := _DESCRIPTION_KEYS.get(type_)) is not None:
        value = obj.get(key)
        if not (
            type(value) is dict and type(value.get("type")) is str and type(value.get("sdp")) is str
        ):
            _read_description(obj, key)
    elif type_ != _RENEGOTIATE:
        raise _unknown_type(_SIGNALING, type_)
    return to_user_id


def parse_join_room(obj: Mapping[str, JSONValue], limits: WireLimits) -> JoinRoom:
    """The ``join-room`` in ``obj`` (its envelope already checked)."""
    channel = Channel.ROOMS.value
    room_id = _id(obj, "roomId", channel, limits)
    user_id = _id(obj, "userId", channel, limits)
    return JoinRoom(
        room_id=room_id,
        user_id=user_id,
        token=_opt_str(obj, "token", channel),
        resume_token=_opt_str(obj, "resumeToken", channel),
    )


def parse_leave_room(obj: Mapping[str, JSONValue], limits: WireLimits) -> LeaveRoom:
    """The ``leave-room`` in ``obj`` (its envelope already checked)."""
    return LeaveRoom(room_id=_id(obj, "roomId", Channel.ROOMS.value, limits))


def parse_chat(obj: Mapping[str, JSONValue], limits: WireLimits) -> ChatMessage:
    """The client's ``chat-message`` in ``obj`` (its envelope already checked)."""
    channel = Channel.CHAT.value
    text = _str(obj, "text", channel)
    if len(text) > limits.max_text_chars:
        raise WireError(
            ErrorCode.BAD_FRAME,
            f"chat text is {len(text)} characters; the limit is {limits.max_text_chars}",
            channel,
        )
    return ChatMessage(text=text)


CLIENT_TYPES: Mapping[str, frozenset[str]] = {
    Channel.ROOMS.value: frozenset({JoinRoom.TYPE, LeaveRoom.TYPE}),
    Channel.SIGNALING.value: frozenset(_SIGNAL_CLASSES),
    Channel.CHAT.value: frozenset({ChatMessage.TYPE}),
    Channel.SYSTEM.value: frozenset(),
}
"""The frame types a client may send, per channel. ``system`` is a channel only the
server sends on, so any client frame on it is ``unknown-type``."""
_NO_TYPES: frozenset[str] = frozenset()


def client_envelope(obj: Mapping[str, JSONValue]) -> tuple[str, str]:
    """``(channel, type)`` of a client frame, or ``WireError`` (``bad-frame``,
    ``unknown-channel``, or ``unknown-type`` for a type a client may not send)."""
    channel, type_ = obj.get("channel"), obj.get("type")
    if (
        isinstance(channel, str)
        and isinstance(type_, str)
        and type_ in CLIENT_TYPES.get(channel, _NO_TYPES)
    ):
        return channel, type_  # the common case, in one test
    return _checked_envelope(obj)


def _checked_envelope(obj: Mapping[str, JSONValue]) -> tuple[str, str]:
    """:func:`client_envelope`, rule by rule: the first that fails names the error."""
    channel = obj.get("channel")
    if not isinstance(channel, str):
        raise WireError(ErrorCode.BAD_FRAME, "field 'channel' must be a string")
    allowed = CLIENT_TYPES.get(channel)
    if allowed is None:
        raise WireError(ErrorCode.UNKNOWN_CHANNEL, f"unknown channel {channel[:80]!r}")
    type_ = _str(obj, "type", channel)
    if type_ not in allowed:
        raise _unknown_type(channel, type_)
    return channel, type_


def _parse_signal(obj: dict[str, JSONValue], type_: str, limits: WireLimits) -> Signal:
    to_user_id = check_signal(obj, type_, limits)
    return _SIGNAL_CLASSES[type_](to_user_id=to_user_id, fields=_signal_fields(obj))


def _parse_client_object(obj: dict[str, JSONValue], limits: WireLimits) -> ClientMessage:
    channel, type_ = client_envelope(obj)
    if channel == Channel.SIGNALING:
        return _parse_signal(obj, type_, limits)
    if type_ == JoinRoom.TYPE:
        return parse_join_room(obj, limits)
    if type_ == LeaveRoom.TYPE:
        return parse_leave_room(obj, limits)
    return parse_chat(obj, limits)


MAX_FRAME_DEPTH = 32
"""How deep a frame a client reads may nest (the top-level object is depth 1)."""


def _check_tree(obj: JSONValue) -> None:
    """What a client accepts must read the same in every language: nesting deeper than
    :data:`MAX_FRAME_DEPTH` and integers past a double's range (which JavaScript reads as
    ``Infinity``) are ``bad-json``, wherever they are in the frame."""
    stack: list[tuple[JSONValue, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                raise WireError(ErrorCode.BAD_JSON, "a number is out of range") from None
        elif isinstance(value, dict | list):
            if depth > MAX_FRAME_DEPTH:
                raise WireError(ErrorCode.BAD_JSON, "JSON nested too deeply")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def parse_server_frame(
    data: str | bytes, limits: WireLimits = DEFAULT_WIRE_LIMITS
) -> ServerMessage:
    """Parse a frame the server sent to a client, or raise ``WireError``.

    Stricter than the relay's parser where a browser must read a frame exactly as we do
    (the browser client's ``parseServerFrame`` is held equal by shared vectors): see
    :func:`_check_tree` and :func:`read_pair_fields`."""
    obj = decode_object(data)
    _check_tree(obj)
    try:
        return _parse_server_object(obj, limits)
    except WireError as exc:
        sender = obj.get("fromUserId")
        exc.sender = sender if isinstance(sender, str) and limits.valid_id(sender) else None
        raise


def _parse_server_object(obj: dict[str, JSONValue], limits: WireLimits) -> ServerMessage:
    type_ = obj.get("type")
    if type_ == Error.TYPE:
        code = _str(obj, "code", "system")
        try:
            error_code = ErrorCode(code)
        except ValueError:
            raise WireError(ErrorCode.BAD_FRAME, f"unknown error code {code[:80]!r}") from None
        return Error(
            channel=_str(obj, "channel", "system"),
            code=error_code,
            message=_str(obj, "message", "system"),
        )
    channel, type_ = _envelope(obj)
    if channel == Channel.SIGNALING:
        signal = _parse_signal(obj, type_, limits)
        read_pair_fields(signal.fields)
        return attrs.evolve(
            signal,
            from_user_id=_id(obj, "fromUserId", channel, limits),
            room_id=_id(obj, "roomId", channel, limits),
        )
    if channel == Channel.ROOMS:
        room_id = _id(obj, "roomId", channel, limits)
        user_id = _id(obj, "userId", channel, limits)
        if type_ == UserJoinedRoom.TYPE:
            existing = obj.get("existingParticipants")
            if not isinstance(existing, list) or not all(
                isinstance(u, str) and limits.valid_id(u) for u in existing
            ):
                raise WireError(
                    ErrorCode.BAD_FRAME,
                    "field 'existingParticipants' must be an array of user ids",
                    channel,
                )
            return UserJoinedRoom(
                room_id=room_id,
                user_id=user_id,
                existing_participants=tuple(u for u in existing if isinstance(u, str)),
                resume_token=_opt_str(obj, "resumeToken", channel),
            )
        if type_ == UserLeftRoom.TYPE:
            return UserLeftRoom(room_id=room_id, user_id=user_id)
        raise _unknown_type(channel, type_)
    if type_ != ChatMessage.TYPE:
        raise _unknown_type(channel, type_)
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise WireError(ErrorCode.BAD_FRAME, "field 'ts' must be a number", channel)
    return ChatMessage(
        text=_str(obj, "text", channel),
        room_id=_id(obj, "roomId", channel, limits),
        from_user_id=_id(obj, "fromUserId", channel, limits),
        ts=float(ts),
    )


# --------------------------------------------------------------------------- encoding

_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def dumps(obj: Mapping[str, JSONValue]) -> str:
    """Encode one frame object: compact, ASCII-only JSON."""
    return _encoder.encode(obj)


def signal_stamp(from_user_id: str, room_id: str) -> str:
    """The end of a signaling frame relayed from ``from_user_id`` in ``room_id``: the two
    fields the relay stamps, then the object's closing brace. The relay replaces the
    closing brace of the sender's text with it (see ``RelayMachine``, relaying)."""
    return f',"fromUserId":{_encoder.encode(from_user_id)},"roomId":{_encoder.encode(room_id)}}}'


def to_json(message: Message) -> dict[str, JSONValue]:
    """The wire object of ``message`` (before serialization)."""
    if isinstance(message, _Signal):
        out: dict[str, JSONValue] = {
            "channel": Channel.SIGNALING.value,
            "type": message.TYPE,
            "toUserId": message.to_user_id,
        }
        out.update(message.fields)
        if message.from_user_id is not None:
            out["fromUserId"] = message.from_user_id
        if message.room_id is not None:
            out["roomId"] = message.room_id
        return out
    if isinstance(message, Error):
        return {
            "channel": message.channel,
            "type": "error",
            "code": message.code.value,
            "message": message.message,
        }
    if isinstance(message, JoinRoom):
        out = {"roomId": message.room_id, "userId": message.user_id}
        if message.token is not None:
            out["token"] = message.token
        if message.resume_token is not None:
            out["resumeToken"] = message.resume_token
    elif isinstance(message, LeaveRoom):
        out = {"roomId": message.room_id}
    elif isinstance(message, UserJoinedRoom):
        out = {
            "roomId": message.room_id,
            "userId": message.user_id,
            "existingParticipants": list(message.existing_participants),
        }
        if message.resume_token is not None:
            out["resumeToken"] = message.resume_token
    elif isinstance(message, UserLeftRoom):
        out = {"roomId": message.room_id, "userId": message.user_id}
    else:
        out = {}
        if message.room_id is not None:
            out["roomId"] = message.room_id
        if message.from_user_id is not None:
            out["fromUserId"] = message.from_user_id
        out["text"] = message.text
        if message.ts is not None:
            out["ts"] = message.ts
    return {"channel": message.CHANNEL.value, "type": message.TYPE, **out}


def encode(message: Message) -> str:
    """Encode ``message`` as the text of one WebSocket frame."""
    return dumps(to_json(message))
