"""Events: what happened, fed into a machine (past tense, frozen).

The relay machine takes :data:`RelayEvent`; the client machine :data:`ClientEvent`.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from .wire import IceCandidate, SessionDescription

ConnId: TypeAlias = int
"""The adapter's name for one client connection (any int, unique while it is open)."""


@attrs.frozen(kw_only=True)
class Connected:
    """A client connection was accepted.

    ``address`` is the client's network address (its IP, as the adapter saw the socket):
    the key of the per-address rules (:attr:`~.limits.Limits.max_per_address`, and a rate
    bucket that outlives the connection). ``None`` when the transport cannot say; then
    no per-address rule applies to it. Adapters feed this event as early as they can —
    at TCP accept, before the HTTP request is read — so that half-open sockets count.
    """

    conn: ConnId
    address: str | None = None


@attrs.frozen(kw_only=True)
class FrameReceived:
    """A frame arrived on ``conn``: ``str`` for a text frame, ``bytes`` for binary.

    ``wall_time`` is the wall clock when it arrived, in Unix seconds (``time.time()``):
    the relay's one input that is calendar time. The relay's ``now`` is monotonic and
    runs every deadline; the wall time is used only where the protocol speaks calendar
    time — a chat's ``ts`` and a join token's expiry (the ``authorize`` callable). It
    travels with the frame rather than being read by the machine, so that it is an input
    like any other: in the trace, replayed with it. Adapters always pass it; a frame that
    needs it and comes without it (a chat, a join on a relay with ``authorize``) raises
    :class:`~.errors.LocalProtocolError`.
    """

    conn: ConnId
    data: str | bytes
    wall_time: float | None = None


@attrs.frozen(kw_only=True)
class Disconnected:
    """``conn`` is gone. ``clean`` is true for a close with code 1000/1001 and for every
    close the server itself initiated; false when the socket dropped any other way."""

    conn: ConnId
    clean: bool = True


RelayEvent: TypeAlias = Connected | FrameReceived | Disconnected
"""Every event :meth:`~sansio_signal.RelayMachine.handle` takes."""


# --------------------------------------------------------------------------- client side


@attrs.frozen(kw_only=True)
class ServerConnected:
    """The client's WebSocket to the relay is open (again)."""


@attrs.frozen(kw_only=True)
class ConnectRequested:
    """The application wants the relay server: the machine asks for a connection
    (:class:`~.actions.ConnectToServer`) and, when it is lost, for new ones."""


@attrs.frozen(kw_only=True)
class ServerConnectFailed:
    """A connection attempt the machine asked for failed before it opened (refused,
    timed out, an HTTP error); ``reason`` says how, for logs. ``timed_out``: it got no
    answer in time — on a slow or lossy link the next attempt may well succeed, so it
    does not make the server unreachable while another attempt is due."""

    reason: str = ""
    timed_out: bool = False


@attrs.frozen(kw_only=True)
class CloseRequested:
    """The application is done: leave the room, close the server connection and never
    reconnect (the machine is ``CLOSED`` for good)."""


@attrs.frozen(kw_only=True)
class ServerDisconnected:
    """The client's WebSocket to the relay is gone.

    ``close_code`` is the code of the server's close frame, ``None`` when the socket
    simply dropped. It says whether our place may still be ours: after a drop (or a
    server that went away or restarts: 1001, 1012) the machine tries to resume; after a
    close that removed us (1007, 1008, 1009, 1011, 1013, 4000) it joins afresh.
    """

    close_code: int | None = None


@attrs.frozen(kw_only=True)
class ServerFrameReceived:
    """A text frame arrived from the relay server."""

    text: str


@attrs.frozen(kw_only=True)
class JoinRequested:
    """The application wants to be in ``room_id`` (leaving any other room); ``token``
    is sent with the join when the server requires one."""

    room_id: str
    token: str | None = None


@attrs.frozen(kw_only=True)
class LeaveRequested:
    """The application wants to leave its room."""


@attrs.frozen(kw_only=True)
class ChatRequested:
    """The application wants to send ``text`` on the room's chat channel."""

    text: str


@attrs.frozen(kw_only=True)
class RenegotiationRequested:
    """The application changed what it sends to ``peer_id`` (a track, a data channel)
    and needs a fresh offer/answer exchange with it."""

    peer_id: str


@attrs.frozen(kw_only=True)
class LocalDescriptionCreated:
    """``CreateOffer`` / ``CreateAnswer`` on peer connection ``pc`` finished: the
    description was created *and* set as local description. Without trickle ICE it
    already holds every candidate."""

    pc: int
    description: SessionDescription


@attrs.frozen(kw_only=True)
class RemoteDescriptionApplied:
    """``SetRemoteDescription`` on ``pc`` finished."""

    pc: int


@attrs.frozen(kw_only=True)
class IceCandidateGathered:
    """``pc`` gathered a local candidate (trickle ICE); ``None`` means gathering ended."""

    pc: int
    candidate: IceCandidate | None


@attrs.frozen(kw_only=True)
class NegotiationNeeded:
    """``pc`` says it needs a new offer/answer exchange (a browser's
    ``negotiationneeded``: a track or data channel was added). Whether that calls for
    one is the machine's call: before the connection's first exchange it is the first
    offer itself being prepared, and is ignored."""

    pc: int


@attrs.frozen(kw_only=True)
class ConnectionStateChanged:
    """``pc``'s ``connectionState`` changed (``new``, ``connecting``, ``connected``,
    ``disconnected``, ``failed``, ``closed``)."""

    pc: int
    state: str


@attrs.frozen(kw_only=True)
class OperationFailed:
    """An operation the machine asked for on ``pc`` raised."""

    pc: int
    operation: str
    error: str


@attrs.frozen(kw_only=True)
class IceServerFailure:
    """A STUN or TURN server that gave a peer connection no candidate when it gathered."""

    url: str
    error: str
    """What went wrong, as the adapter learnt it (``401 Unauthorized``, no answer, ...)."""
    code: int | None = None
    """The STUN error code the server answered with (401: the credentials were refused),
    or ``None`` when it did not answer."""
    username: str | None = None
    """The username the TURN server was asked with (never the credential): with
    short-lived credentials it carries their expiry (:mod:`sansio_signal.turn`)."""


@attrs.frozen(kw_only=True)
class IceGatheringDone:
    """``pc`` finished gathering its local candidates: the ICE servers it was configured
    with (their URLs), the types of the candidates it gathered (``host``, ``srflx``,
    ``relay``; each once) and every server that gave none. The machine logs it, and
    :func:`~sansio_signal.diagnose` reads it from the trace: it tells a missing TURN
    server from a refused credential."""

    pc: int
    servers: tuple[str, ...] = ()
    candidate_types: tuple[str, ...] = ()
    failures: tuple[IceServerFailure, ...] = ()


@attrs.frozen(kw_only=True)
class CandidatePairSelected:
    """``pc`` is connected over this candidate pair: each end's type (``host``,
    ``srflx``, ``prflx``, ``relay``) and ``ip:port``."""

    pc: int
    local_type: str
    remote_type: str
    local_address: str = ""
    remote_address: str = ""


ClientEvent: TypeAlias = (
    ConnectRequested
    | ServerConnectFailed
    | CloseRequested
    | ServerConnected
    | ServerDisconnected
    | ServerFrameReceived
    | JoinRequested
    | LeaveRequested
    | ChatRequested
    | RenegotiationRequested
    | LocalDescriptionCreated
    | RemoteDescriptionApplied
    | IceCandidateGathered
    | ConnectionStateChanged
    | NegotiationNeeded
    | OperationFailed
    | IceGatheringDone
    | CandidatePairSelected
)
"""Every event :meth:`~sansio_signal.ClientMachine.handle` takes."""
PeerConnectionEvent: TypeAlias = (
    LocalDescriptionCreated
    | RemoteDescriptionApplied
    | IceCandidateGathered
    | ConnectionStateChanged
    | NegotiationNeeded
    | OperationFailed
    | IceGatheringDone
    | CandidatePairSelected
)
"""The results of peer-connection operations, reported by the adapter that ran them."""
