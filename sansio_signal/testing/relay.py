"""A hand-driven harness around :class:`~sansio_signal.RelayMachine`.

It plays the adapter's part without sockets: it numbers connections, keeps two virtual
clocks (the monotonic ``now`` every call gets, and the ``wall_time`` every frame
carries), executes the machine's actions (frames go to per-connection inboxes, closes are
recorded and followed by ``Disconnected`` as a real adapter would) and keeps the log.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from ..actions import CloseConnection, Log, RelayAction, SendFrame
from ..events import Connected, ConnId, Disconnected, FrameReceived, RelayEvent
from ..limits import DEFAULT_LIMITS, Limits
from ..relay import RelayMachine
from ..wire import dumps


class counting_tokens:
    """A deterministic token source (``tok1``, ``tok2``, ...) for tests (an object, not a
    closure, so that copying a simulation copies its counter too)."""

    def __init__(self, prefix: str = "tok") -> None:
        self.prefix = prefix
        self.issued = 0

    def __call__(self) -> str:
        self.issued += 1
        return f"{self.prefix}{self.issued}"


DEFAULT_WALL_TIME = 1_764_100_000.0
"""Where the harness's wall clock starts (Unix seconds: late November 2025)."""


class RelayHarness:
    """Drive a relay machine by hand: ``connect()``, ``send()``, read ``inbox``.

    ``now`` is the machine's monotonic clock; ``wall_time`` the wall clock each frame
    carries (``FrameReceived.wall_time``: chat ``ts``, token expiry). :meth:`advance`
    moves both; assign ``wall_time`` to step the wall clock alone, as NTP would.
    """

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        *,
        machine: RelayMachine | None = None,
        now: float = 1_000.0,
        wall_time: float = DEFAULT_WALL_TIME,
    ) -> None:
        self.machine = machine or RelayMachine(limits=limits, new_token=counting_tokens())
        self.now = now
        self.wall_time = wall_time
        self.inbox: dict[ConnId, list[dict[str, Any]]] = {}
        self.closed: dict[ConnId, tuple[int, str]] = {}
        self.logs: list[str] = []
        self.actions: list[RelayAction] = []
        self._ids = itertools.count(1)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: both clocks move forward."""
        if seconds < 0:
            raise ValueError(f"time does not go back (advance({seconds!r}))")
        self.now += seconds
        self.wall_time += seconds

    def feed(self, event: RelayEvent) -> list[RelayAction]:
        """Feed one event and execute the resulting actions."""
        return self._execute(self.machine.handle(event, self.now))

    def fire_timers(self) -> list[RelayAction]:
        """Run the machine's deadlines due at the current virtual time (resume graces),
        as the adapter's timer would."""
        return self._execute(self.machine.handle_timer(self.now))

    def _execute(self, actions: list[RelayAction]) -> list[RelayAction]:
        self.actions += actions
        for action in actions:
            if isinstance(action, SendFrame):
                assert action.conn not in self.closed, "frame sent to a closed connection"
                self.inbox[action.conn].append(json.loads(action.text))
            elif isinstance(action, CloseConnection):
                self.closed[action.conn] = (action.code, action.reason)
            elif isinstance(action, Log):
                self.logs.append(action.text())
        for action in actions:
            if isinstance(action, CloseConnection):
                self.machine.handle(Disconnected(conn=action.conn, clean=True), self.now)
        return actions

    def connect(self, address: str | None = None) -> ConnId:
        """Open a new connection (from ``address``, if given) and return its id."""
        conn = next(self._ids)
        self.inbox[conn] = []
        self.feed(Connected(conn=conn, address=address))
        return conn

    def send(self, conn: ConnId, frame: Mapping[str, Any] | str | bytes) -> list[RelayAction]:
        """Send one frame from ``conn`` (a mapping is encoded as JSON)."""
        data = frame if isinstance(frame, str | bytes) else dumps(frame)
        return self.feed(FrameReceived(conn=conn, data=data, wall_time=self.wall_time))

    def disconnect(self, conn: ConnId, clean: bool = True) -> list[RelayAction]:
        """The client at ``conn`` went away."""
        return self.feed(Disconnected(conn=conn, clean=clean))

    def join(
        self, conn: ConnId, room_id: str, user_id: str, *, resume_token: str | None = None
    ) -> list[RelayAction]:
        """Send a ``join-room`` (with ``resumeToken`` when given)."""
        frame = {
            "channel": "webrtc-dashboard-rooms",
            "type": "join-room",
            "roomId": room_id,
            "userId": user_id,
        }
        if resume_token is not None:
            frame["resumeToken"] = resume_token
        return self.send(conn, frame)

    def take(self, conn: ConnId) -> list[dict[str, Any]]:
        """Return and clear what ``conn`` has received."""
        frames, self.inbox[conn] = self.inbox[conn], []
        return frames
