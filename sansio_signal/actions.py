"""Actions: what a machine asks its adapter to do (imperative, frozen).

The list a machine returns is in execution order.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypeAlias

import attrs

from .events import ConnId


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


RelayAction: TypeAlias = SendFrame | CloseConnection | Log
