"""sansio-signal: WebRTC signaling as pure state machines.

The core (this package) does no I/O: it parses and encodes the wire protocol and makes
every relay decision in :class:`RelayMachine`. Adapters that run it on real sockets live
in :mod:`sansio_signal.adapters`.
"""

from .actions import CloseConnection, Log, LogLevel, RelayAction, SendFrame
from .codes import Channel, CloseCode, ErrorCode
from .directory import Directory, MemoryDirectory
from .errors import LocalProtocolError, RemoteProtocolError, SignalError, WireError
from .events import Connected, ConnId, Disconnected, FrameReceived, RelayEvent
from .limits import DEFAULT_LIMITS, Limits, WireLimits
from .relay import Authorize, Phase, RelayMachine, RelayStats, is_clean_close
from .timers import Timers
from .wire import (
    Answer,
    ChatMessage,
    ClientMessage,
    Error,
    Ice,
    IceCandidate,
    JoinRoom,
    LeaveRoom,
    Message,
    Offer,
    Renegotiate,
    ServerMessage,
    SessionDescription,
    Signal,
    UserJoinedRoom,
    UserLeftRoom,
    encode,
    parse_client_frame,
    parse_server_frame,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "Answer",
    "Authorize",
    "Channel",
    "ChatMessage",
    "ClientMessage",
    "CloseCode",
    "CloseConnection",
    "ConnId",
    "Connected",
    "Directory",
    "Disconnected",
    "Error",
    "ErrorCode",
    "FrameReceived",
    "Ice",
    "IceCandidate",
    "JoinRoom",
    "LeaveRoom",
    "Limits",
    "LocalProtocolError",
    "Log",
    "LogLevel",
    "MemoryDirectory",
    "Message",
    "Offer",
    "Phase",
    "RelayAction",
    "RelayEvent",
    "RelayMachine",
    "RelayStats",
    "RemoteProtocolError",
    "Renegotiate",
    "SendFrame",
    "ServerMessage",
    "SessionDescription",
    "Signal",
    "SignalError",
    "Timers",
    "UserJoinedRoom",
    "UserLeftRoom",
    "WireError",
    "WireLimits",
    "__version__",
    "encode",
    "is_clean_close",
    "parse_client_frame",
    "parse_server_frame",
]
