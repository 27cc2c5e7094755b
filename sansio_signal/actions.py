"""Actions: what a machine asks its adapter to do (imperative, frozen).

The relay machine returns :data:`RelayAction`; the client machine :data:`ClientAction`
(peer-connection operations, frames for the server, and notifications for the
application).

The list a machine returns is in execution order.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypeAlias

import attrs

from .events import ConnId
from .store import StoreOp
from .wire import ClientMessage, IceCandidate, SessionDescription, encode


class LogLevel(IntEnum):
    """Log levels, numerically equal to :mod:`logging`'s."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


@attrs.frozen(kw_only=True)
class SendFrame:
    """Send ``text`` as one text frame on ``conn``. ``frame_type`` is the frame's
    ``type`` (for metrics; the adapter need not parse ``text``)."""

    conn: ConnId
    text: str
    frame_type: str


_new_object = object.__new__
_set_conn = SendFrame.__dict__["conn"].__set__
_set_text = SendFrame.__dict__["text"].__set__
_set_frame_type = SendFrame.__dict__["frame_type"].__set__


def send_frame(conn: ConnId, text: str, frame_type: str) -> SendFrame:
    """``SendFrame(conn=conn, text=text, frame_type=frame_type)``, in half the time: the
    relay makes one per relayed frame. Calling a class with keywords first packs them
    in a dict, and attrs' frozen ``__init__`` goes through ``object.__setattr__`` for
    each field; this fills the three slots directly. The result is the same frozen
    object (``SendFrame`` has no default, validator or converter to run, which a test
    checks)."""
    frame: SendFrame = _new_object(SendFrame)
    _set_conn(frame, conn)
    _set_text(frame, text)
    _set_frame_type(frame, frame_type)
    return frame


@attrs.frozen(kw_only=True)
class CloseConnection:
    """Close ``conn`` with WebSocket close ``code`` and ``reason``, after the frames
    already queued for it. The member has already left its room; frames still arriving
    on ``conn`` are ignored. Feed ``Disconnected(conn)`` once the socket is gone, as
    for any other connection."""

    conn: ConnId
    code: int
    reason: str


@attrs.frozen(kw_only=True)
class Log:
    """A log record: ``message % args`` at ``level`` (formatted only if it is emitted)."""

    level: LogLevel
    message: str
    args: tuple[Any, ...] = ()

    def text(self) -> str:
        """The formatted message."""
        return self.message % self.args if self.args else self.message


RelayAction: TypeAlias = SendFrame | CloseConnection | Log | StoreOp
"""What the relay machine asks for: frames, closes, log lines — and, in a cluster
(``RelayMachine(node=...)``), operations on the shared store (:mod:`.store`)."""


# --------------------------------------------------------------------------- client side
#
# Peer-connection operations name the peer connection by ``pc``, a handle the client
# machine allocates (unique for the machine's lifetime), so that a result arriving
# from a connection the machine has already replaced is recognised as stale.


@attrs.frozen(kw_only=True)
class ConnectToServer:
    """Open a WebSocket to the relay server now; report ``ServerConnected`` when it
    opens or ``ServerConnectFailed`` when it cannot. When and how often is the
    machine's call (its reconnect policy), never the adapter's."""


@attrs.frozen(kw_only=True)
class ServerUnreachable:
    """An attempt to reach the server failed before any connection to it ever opened
    (refused, no such host, an HTTP error, a timeout): the application hears of it at
    once instead of waiting out retries that may never work; ``reason`` says how. The
    reconnect policy keeps trying unless the application closes the client."""

    reason: str


@attrs.frozen(kw_only=True)
class DisconnectFromServer:
    """Close the WebSocket to the relay server (the application closed the client)."""


@attrs.frozen(kw_only=True)
class SendToServer:
    """Send ``message`` as one text frame to the relay server. ``peer_id`` names the peer
    a signaling frame is for (``None`` for room and chat frames), so that an adapter can
    count or log per peer without parsing anything.

    ``text`` is the frame to send: ``message`` encoded, here and nowhere else, once, when
    the action is made (machines build messages; only the frame's text leaves the core).
    It is a field so that traces record the frame as it went out."""

    message: ClientMessage
    peer_id: str | None = None
    text: str = attrs.field(init=False, eq=False, repr=False)

    @text.default
    def _encode(self) -> str:
        return encode(self.message)


@attrs.frozen(kw_only=True)
class CreatePeer:
    """Create peer connection ``pc`` for ``peer_id``. When ``initiator`` is true the
    adapter also creates the data channel labelled ``chat`` before the first offer
    (the peer convention of PROTOCOL.md)."""

    peer_id: str
    pc: int
    initiator: bool


@attrs.frozen(kw_only=True)
class CreateOffer:
    """``createOffer`` then ``setLocalDescription`` on ``pc``; report
    ``LocalDescriptionCreated`` (or ``OperationFailed``)."""

    peer_id: str
    pc: int
    ice_restart: bool = False


@attrs.frozen(kw_only=True)
class CreateAnswer:
    """``createAnswer`` then ``setLocalDescription`` on ``pc``; report
    ``LocalDescriptionCreated`` (or ``OperationFailed``)."""

    peer_id: str
    pc: int


@attrs.frozen(kw_only=True)
class SetRemoteDescription:
    """``setRemoteDescription(description)`` on ``pc``; report
    ``RemoteDescriptionApplied`` (or ``OperationFailed``)."""

    peer_id: str
    pc: int
    description: SessionDescription


@attrs.frozen(kw_only=True)
class RollbackLocalDescription:
    """``setLocalDescription({type: "rollback"})`` on ``pc`` if it has a local offer
    (perfect negotiation's polite side; only asked of implementations that declare
    rollback). Executed after the operations asked before it on ``pc``: the machine may
    ask while its ``CreateOffer`` still runs, and if that one failed (reported as
    ``OperationFailed``) there is no offer to roll back, so nothing is done."""

    peer_id: str
    pc: int


@attrs.frozen(kw_only=True)
class AddIceCandidate:
    """``addIceCandidate`` on ``pc``; ``None`` is end-of-candidates. Only issued once
    the matching remote description is applied."""

    peer_id: str
    pc: int
    candidate: IceCandidate | None


@attrs.frozen(kw_only=True)
class ReadSelectedPair:
    """Read the candidate pair ``pc`` now uses (its stats; aiortc: the nominated pair)
    and report it as :class:`~sansio_signal.events.CandidatePairSelected`. Asked each time
    the connection becomes connected."""

    peer_id: str
    pc: int


@attrs.frozen(kw_only=True)
class ClosePeer:
    """Close peer connection ``pc`` and forget it; no more results are expected."""

    peer_id: str
    pc: int


# Notifications for the application ---------------------------------------------------


@attrs.frozen(kw_only=True)
class RoomJoined:
    """We are in ``room_id``; ``participants`` were there before us."""

    room_id: str
    participants: tuple[str, ...]


@attrs.frozen(kw_only=True)
class RoomResumed:
    """The server connection came back and we took our place in ``room_id`` back
    (resume): established peer connections were kept; ``participants`` are the members
    now (peers that left meanwhile are reported with ``PeerLeft``, newcomers with
    ``PeerJoined``)."""

    room_id: str
    participants: tuple[str, ...]


@attrs.frozen(kw_only=True)
class RoomLeft:
    """We are no longer in ``room_id`` (we left, joined another room, or lost the
    server connection)."""

    room_id: str


@attrs.frozen(kw_only=True)
class PeerJoined:
    """``peer_id`` is in our room (already there when we joined, or new)."""

    peer_id: str


@attrs.frozen(kw_only=True)
class PeerConnecting:
    """A negotiation with ``peer_id`` started (``epoch`` is the pair's epoch)."""

    peer_id: str
    epoch: int


@attrs.frozen(kw_only=True)
class PeerConnected:
    """The peer connection with ``peer_id`` is connected."""

    peer_id: str
    epoch: int


@attrs.frozen(kw_only=True)
class PeerRoute:
    """The candidate pair the connection with ``peer_id`` travels on. ``pair_type`` is the
    pair's kind (:func:`~sansio_signal.negotiation.pair_kind`): ``relay`` when either end
    is a TURN relay, else ``srflx`` when either is reflexive, else ``host``."""

    peer_id: str
    pair_type: str
    local_type: str
    remote_type: str
    local_address: str
    remote_address: str


@attrs.frozen(kw_only=True)
class PeerFailed:
    """The machine gave up on ``peer_id`` after its retries; ``reason`` says why. A
    later offer or renegotiation request from the peer starts over."""

    peer_id: str
    reason: str


@attrs.frozen(kw_only=True)
class PeerLeft:
    """``peer_id`` left the room; its peer connection is closed."""

    peer_id: str


@attrs.frozen(kw_only=True)
class ChatReceived:
    """A chat message relayed by the server."""

    from_user_id: str
    text: str
    ts: float


@attrs.frozen(kw_only=True)
class ServerErrorReceived:
    """The server refused one of our frames."""

    channel: str
    code: str
    message: str


@attrs.frozen(kw_only=True)
class JoinRefused:
    """The server refused our latest ``join-room`` for ``room_id`` with ``code``
    (``user-id-taken``, ``room-full``, ``invalid-id``, ``unauthorized``); we are still
    where we were before asking."""

    room_id: str
    code: str
    message: str


@attrs.frozen(kw_only=True)
class ProtocolViolation:
    """A frame from the server or a peer made no sense in the current state; it was
    dropped. ``detail`` names the state and the input."""

    peer_id: str | None
    detail: str


ClientAction: TypeAlias = (
    ConnectToServer
    | ServerUnreachable
    | DisconnectFromServer
    | SendToServer
    | CreatePeer
    | CreateOffer
    | CreateAnswer
    | SetRemoteDescription
    | RollbackLocalDescription
    | AddIceCandidate
    | ReadSelectedPair
    | ClosePeer
    | RoomJoined
    | RoomResumed
    | RoomLeft
    | PeerJoined
    | PeerConnecting
    | PeerConnected
    | PeerRoute
    | PeerFailed
    | PeerLeft
    | ChatReceived
    | ServerErrorReceived
    | JoinRefused
    | ProtocolViolation
    | Log
)
"""Every action the client machine (:class:`ClientMachine`) and its negotiations return."""
PeerConnectionAction: TypeAlias = (
    CreatePeer
    | CreateOffer
    | CreateAnswer
    | SetRemoteDescription
    | RollbackLocalDescription
    | AddIceCandidate
    | ReadSelectedPair
    | ClosePeer
)
"""The actions addressed to one peer connection (an ``RTCPeerConnection``)."""
