"""Exceptions of the core.

Two families, as in h11: a :class:`LocalProtocolError` means *our caller* misused a
machine (fed an event for a connection it never announced, say); a
:class:`RemoteProtocolError` means the other side sent something the protocol does not
allow. Wire-level problems with one frame are :class:`WireError`, a remote error that
carries the exact PROTOCOL.md error code and the channel to answer on.
"""

from __future__ import annotations

from .codes import ErrorCode


class SignalError(Exception):
    """Base class of every exception raised by :mod:`sansio_signal`."""


class LocalProtocolError(SignalError):
    """The caller used a machine in a way its contract forbids."""


class RemoteProtocolError(SignalError):
    """The remote side sent something the protocol does not allow."""


class WireError(RemoteProtocolError):
    """One frame could not be accepted.

    ``code`` is the protocol error code, ``channel`` the channel the error reply goes on
    (the bad frame's channel when it is a known one, else ``"system"``). ``sender`` is
    who sent a frame a client refused, when the frame names it (the relay stamps
    ``fromUserId``, so it can be trusted): the client reports the violation against
    that member.
    """

    def __init__(self, code: ErrorCode, message: str, channel: str = "system") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.channel = channel
        self.sender: str | None = None

    def __repr__(self) -> str:
        return f"WireError({self.code.value!r}, {self.message!r}, channel={self.channel!r})"
