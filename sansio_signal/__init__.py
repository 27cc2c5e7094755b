"""sansio-signal: WebRTC signaling as pure state machines.

The core (this package) does no I/O: it parses and encodes the wire protocol, makes
every relay decision in :class:`RelayMachine` and every client decision in
:class:`ClientMachine` (one :class:`PeerNegotiation` per peer). Adapters that run them
on real sockets live in :mod:`sansio_signal.adapters`.

Everything a user of the machines needs is importable from here: both machines, their
events and actions, the wire messages, the limits, the codes and the exceptions.
Narrower tools keep their own namespace: :mod:`sansio_signal.tokens` (signed join
tokens), :mod:`sansio_signal.trace` and :mod:`sansio_signal.diagnose` (traces and what
they say), :mod:`sansio_signal.testing` (the harness, the JSEP model, the simulator);
:mod:`sansio_signal.wire` also holds the codec's lower-level helpers and
:mod:`sansio_signal.negotiation` the vocabulary of its transition table. The deadline
queue the machines keep (``timers.Timers``) is internal.
"""

from .actions import (
    AddIceCandidate,
    ChatReceived,
    ClientAction,
    CloseConnection,
    ClosePeer,
    ConnectToServer,
    CreateAnswer,
    CreateOffer,
    CreatePeer,
    DisconnectFromServer,
    JoinRefused,
    Log,
    LogLevel,
    PeerConnected,
    PeerConnecting,
    PeerConnectionAction,
    PeerFailed,
    PeerJoined,
    PeerLeft,
    PeerRoute,
    ProtocolViolation,
    ReadSelectedPair,
    RelayAction,
    RollbackLocalDescription,
    RoomJoined,
    RoomLeft,
    RoomResumed,
    SendFrame,
    SendToServer,
    ServerErrorReceived,
    ServerUnreachable,
    SetRemoteDescription,
)
from .client import ClientMachine, ClientState, ReconnectPolicy
from .codes import Channel, CloseCode, ErrorCode
from .directory import Directory, MemoryDirectory
from .errors import LocalProtocolError, RemoteProtocolError, SignalError, WireError
from .events import (
    CandidatePairSelected,
    ChatRequested,
    ClientEvent,
    CloseRequested,
    Connected,
    ConnectionStateChanged,
    ConnectRequested,
    ConnId,
    Disconnected,
    FrameReceived,
    IceCandidateGathered,
    IceGatheringDone,
    IceServerFailure,
    JoinRequested,
    LeaveRequested,
    LocalDescriptionCreated,
    NegotiationNeeded,
    OperationFailed,
    PeerConnectionEvent,
    RelayEvent,
    RemoteDescriptionApplied,
    RenegotiationRequested,
    ServerConnected,
    ServerConnectFailed,
    ServerDisconnected,
    ServerFrameReceived,
)
from .limits import DEFAULT_LIMITS, Limits, WireLimits
from .negotiation import (
    AIORTC,
    BROWSER,
    Capabilities,
    Deadline,
    Link,
    NegotiationConfig,
    NegState,
    PeerNegotiation,
    Role,
    initiator_of,
    pair_kind,
)
from .relay import Authorize, Phase, RelayMachine, RelayStats, is_clean_close
from .room import RoomView
from .wire import (
    Answer,
    ChatMessage,
    ClientMessage,
    Error,
    Ice,
    IceCandidate,
    JoinRoom,
    JSONValue,
    LeaveRoom,
    Message,
    Offer,
    PairFields,
    Renegotiate,
    ServerMessage,
    SessionDescription,
    Signal,
    UserJoinedRoom,
    UserLeftRoom,
    encode,
    parse_client_frame,
    parse_server_frame,
    read_pair_fields,
)

__version__ = "0.1.0"
"""The package's version."""


def _find_adapters_in_the_checkout() -> None:
    """Let ``sansio_signal.adapters`` resolve when this package is the checkout's folder.

    Installed (wheel or editable), ``adapters/`` is inside the package (setuptools'
    package-dir mapping). A script or ``python -m sansio_signal`` run from the repository
    root imports the checkout's ``sansio_signal/`` instead (the current directory comes
    first on ``sys.path``), which has no ``adapters`` folder: a finder answering for that
    one name then loads the top-level ``adapters/`` beside it, lazily, as the subpackage.
    """
    import importlib.abc
    import importlib.util
    import os
    import sys
    from importlib.machinery import ModuleSpec

    if any(os.path.isdir(os.path.join(entry, "adapters")) for entry in __path__):
        return  # an installed layout
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adapters")
    init = os.path.join(folder, "__init__.py")
    name = f"{__name__}.adapters"
    if not os.path.isfile(init) or any(getattr(f, "answers", "") == name for f in sys.meta_path):
        return  # no checkout beside us, or already done (a reload)

    class Finder(importlib.abc.MetaPathFinder):
        answers = name

        def find_spec(
            self, fullname: str, path: object, target: object = None
        ) -> ModuleSpec | None:
            if fullname != name:
                return None
            return importlib.util.spec_from_file_location(
                fullname, init, submodule_search_locations=[folder]
            )

    sys.meta_path.append(Finder())


_find_adapters_in_the_checkout()

__all__ = [
    "AIORTC",
    "BROWSER",
    "DEFAULT_LIMITS",
    "AddIceCandidate",
    "Answer",
    "Authorize",
    "CandidatePairSelected",
    "Capabilities",
    "Channel",
    "ChatMessage",
    "ChatReceived",
    "ChatRequested",
    "ClientAction",
    "ClientEvent",
    "ClientMachine",
    "ClientMessage",
    "ClientState",
    "CloseCode",
    "CloseConnection",
    "ClosePeer",
    "CloseRequested",
    "ConnId",
    "ConnectRequested",
    "ConnectToServer",
    "Connected",
    "ConnectionStateChanged",
    "CreateAnswer",
    "CreateOffer",
    "CreatePeer",
    "Deadline",
    "Directory",
    "DisconnectFromServer",
    "Disconnected",
    "Error",
    "ErrorCode",
    "FrameReceived",
    "Ice",
    "IceCandidate",
    "IceCandidateGathered",
    "IceGatheringDone",
    "IceServerFailure",
    "JSONValue",
    "JoinRefused",
    "JoinRequested",
    "JoinRoom",
    "LeaveRequested",
    "LeaveRoom",
    "Limits",
    "Link",
    "LocalDescriptionCreated",
    "LocalProtocolError",
    "Log",
    "LogLevel",
    "MemoryDirectory",
    "Message",
    "NegState",
    "NegotiationConfig",
    "NegotiationNeeded",
    "Offer",
    "OperationFailed",
    "PairFields",
    "PeerConnected",
    "PeerConnecting",
    "PeerConnectionAction",
    "PeerConnectionEvent",
    "PeerFailed",
    "PeerJoined",
    "PeerLeft",
    "PeerNegotiation",
    "PeerRoute",
    "Phase",
    "ProtocolViolation",
    "ReadSelectedPair",
    "ReconnectPolicy",
    "RelayAction",
    "RelayEvent",
    "RelayMachine",
    "RelayStats",
    "RemoteDescriptionApplied",
    "RemoteProtocolError",
    "Renegotiate",
    "RenegotiationRequested",
    "Role",
    "RollbackLocalDescription",
    "RoomJoined",
    "RoomLeft",
    "RoomResumed",
    "RoomView",
    "SendFrame",
    "SendToServer",
    "ServerConnectFailed",
    "ServerConnected",
    "ServerDisconnected",
    "ServerErrorReceived",
    "ServerFrameReceived",
    "ServerMessage",
    "ServerUnreachable",
    "SessionDescription",
    "SetRemoteDescription",
    "Signal",
    "SignalError",
    "UserJoinedRoom",
    "UserLeftRoom",
    "WireError",
    "WireLimits",
    "__version__",
    "encode",
    "initiator_of",
    "is_clean_close",
    "pair_kind",
    "parse_client_frame",
    "parse_server_frame",
    "read_pair_fields",
]
