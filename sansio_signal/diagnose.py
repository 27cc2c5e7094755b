"""Reading traces: where did each pair stop, and why?

:func:`diagnose` takes whatever traces exist — any number of client traces (Python or
browser: records with a ``user``), the relay's (records without), or any subset — and
answers, for every pair of users any of them mentions, the seed's question: did they
connect, and if not, at which step the flow stopped and what stopped it.

Theory of operation
-------------------
*Time.* Each trace keeps its machine's monotonic ``t``; the ``wall_time`` of its
records (see :mod:`sansio_signal.trace`) gives the offset that puts every trace on one
clock, so "before" and "after" mean the same thing across traces. A trace without any
wall time is assumed to share the clock of the others (Python processes on one host).

*Who.* Pairs come from every user any trace names: a client's own id, the members its
room view showed, the peers it sent frames to or got frames from, and the relay's
membership (each connection's ``join-room`` and what the relay answered). So a peer
without a trace of its own — a raw client that never answers, a process whose trace
was lost — is still diagnosed, from what the others and the relay saw of it.

*The walk.* For a pair that did not connect, the flow is walked in the order it
happens — both admitted (else the refusal, by its code), in one room, the offer sent,
received by the relay, forwarded, delivered, the answer likewise, applied, candidates
on both sides and intact, ICE — each hop checked in every trace that would show it.
The first hop that a trace shows missing is where the flow stopped; the first thing
that went wrong in time decides, never a later consequence (ICE failed before the
peer quit: ICE). A missing hop is then explained by what broke its path after the last
hop that did happen: a relay connection lost (the relay itself, when every client lost
it and could not reconnect), a process that died (a client trace ending without a
close, the relay seeing its socket drop), a peer that left, a frame the relay refused
(``frame-too-large`` and every other code, by name); failing those, a frame that
vanished on a path that stayed up was lost in transit between the two hops named.

*Missing traces.* A hop no trace can show is unknown, not missing: the walk goes past
it and the finding says which traces would have told ("no trace from bob: from
alice's side, the offer was delivered and no answer came"). With the relay's trace
alone, a pair whose offer and answer were both relayed is *signaled*: as far as
signaling goes it worked (ICE is not in the relay's trace).
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import itertools
import json
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .actions import LogLevel
from .codes import Channel, CloseCode, ErrorCode
from .trace import WALL_TIME
from .turn import candidate_type_from, credential_expiry, is_turn_url
from .wire import (
    Answer,
    Error,
    Ice,
    JoinRoom,
    Offer,
    Renegotiate,
    UserJoinedRoom,
    UserLeftRoom,
    wire_int,
)

Record = Mapping[str, Any]
"""One record of a trace: a JSON line, decoded."""

OFFER, ANSWER, ICE, RENEGOTIATE = Offer.TYPE, Answer.TYPE, Ice.TYPE, Renegotiate.TYPE


# --------------------------------------------------------------------------- results


@attrs.frozen
class Event:
    """One line of a pair's timeline: when (seconds since the first record of any
    trace), whose trace, and what happened, in the seed's words where there are some."""

    at: float
    who: str
    text: str

    def line(self) -> str:
        """``+1.234s  alice    text``."""
        return f"+{self.at:.3f}s  {self.who:<8} {self.text}"


@attrs.frozen
class Finding:
    """What the traces say about one pair (or one user alone: ``pair`` has one name).

    ``verdict`` is ``"connected"``, ``"signaled"`` (the relay's trace alone: offer and
    answer relayed; ICE is not in it) or ``"stopped"`` (then ``step`` and ``cause``
    say where and why). ``missing`` names the traces that would have told more.
    """

    pair: tuple[str, ...]
    verdict: str
    step: str
    cause: str
    missing: tuple[str, ...] = ()
    timeline: tuple[Event, ...] = ()

    @property
    def connected(self) -> bool:
        """Whether the pair connected."""
        return self.verdict == "connected"

    @property
    def ok(self) -> bool:
        """Nothing went wrong as far as the traces show."""
        return self.verdict != "stopped"

    def line(self) -> str:
        """One readable line."""
        who = " ↔ ".join(self.pair)
        if self.verdict == "stopped":
            return f"{who}: stopped at {self.step}: {self.cause}"
        return f"{who}: {self.verdict}" + ("" if not self.cause else f" ({self.cause})")

    def to_json(self) -> dict[str, Any]:
        """The finding as plain JSON values."""
        return {
            "pair": list(self.pair),
            "verdict": self.verdict,
            "connected": self.connected,
            "step": self.step,
            "cause": self.cause,
            "missing": list(self.missing),
            "timeline": [
                {"at": round(e.at, 6), "who": e.who, "text": e.text} for e in self.timeline
            ],
        }


@attrs.frozen
class TraceSummary:
    """One trace as diagnose read it."""

    name: str
    kind: str
    """``"client"`` or ``"relay"``."""
    user: str | None
    records: int
    start: float
    end: float
    closed: bool | None
    """For a client: whether the trace ends with the client closing (``False``: it ends
    mid-way — the process was killed, or the trace was taken while it ran)."""

    def line(self) -> str:
        """``# NAME: client alice, 42 records, +0.000s to +1.234s, closed``."""
        who = f"client {self.user}" if self.kind == "client" else "relay"
        ending = {True: ", closed", False: ", ends without a close", None: ""}[self.closed]
        return (
            f"# {self.name}: {who}, {self.records} records, "
            f"+{self.start:.3f}s to +{self.end:.3f}s{ending}"
        )

    def to_json(self) -> dict[str, Any]:
        """The summary as plain JSON values."""
        return {
            "name": self.name,
            "kind": self.kind,
            "user": self.user,
            "records": self.records,
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "closed": self.closed,
        }


@attrs.frozen
class Report:
    """Every finding, and the traces they come from."""

    findings: tuple[Finding, ...]
    traces: tuple[TraceSummary, ...]

    @property
    def ok(self) -> bool:
        """Some pair was found and none stopped."""
        return bool(self.findings) and all(f.ok for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values (``sansio-signal diagnose --json``)."""
        return {
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
            "traces": [t.to_json() for t in self.traces],
        }


# --------------------------------------------------------------------------- reading


def _frame(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _epoch(frame: Mapping[str, Any]) -> int:
    """The frame's ``epoch`` as the machines read it (absent or malformed: 0)."""
    return wire_int(frame.get("epoch")) or 0


def _log_text(r: Record) -> str:
    """A Log record's line: Python's ``message % args``, the browser's ``text``."""
    message = r.get("message")
    if not isinstance(message, str):
        return str(r.get("text", ""))
    args = r.get("args") or []
    try:
        return message % tuple(args)
    except (TypeError, ValueError):
        return f"{message} {args}"


def _log_peer(r: Record) -> str | None:
    """The peer a client Log record is about: its first argument (``[%s] ...``) in
    Python, the ``[peer]`` prefix of the browser's text."""
    args, message = r.get("args"), r.get("message")
    if isinstance(message, str):
        ok = message.startswith("[%s]") and isinstance(args, list) and args
        return str(args[0]) if ok and isinstance(args, list) else None
    text = r.get("text")
    if isinstance(text, str) and text.startswith("[") and "]" in text:
        return text[1 : text.index("]")]
    return None


_LEVELS = {level.name.lower(): int(level) for level in LogLevel}
"""The browser's level names (``LogLevel``'s, lower case)."""


def _handle(value: Any) -> int | str | None:
    """A record's ``pc`` or ``conn`` handle, or ``None`` when it is not one (a damaged
    trace)."""
    return value if isinstance(value, int | str) else None


def _listed(value: Any) -> list[Any]:
    """A record's list field, or nothing when it is not a list (a damaged trace)."""
    return value if isinstance(value, list) else []


def _level(r: Record) -> int:
    level = r.get("level")
    if isinstance(level, int):
        return level
    return _LEVELS.get(str(level), LogLevel.INFO)


def _candidates(frame: Mapping[str, Any]) -> list[str]:
    """The ``ip:port`` of every candidate a signaling frame carries (in its SDP or
    trickled)."""
    found: list[str] = []
    lines: list[str] = []
    for key in ("offer", "answer"):
        description = frame.get(key)
        if isinstance(description, dict):
            sdp = description.get("sdp")
            if isinstance(sdp, str):
                lines += [
                    line[len("a=") :]
                    for line in sdp.splitlines()
                    if line.startswith("a=candidate:")
                ]
    candidate = frame.get("candidate")
    if isinstance(candidate, dict) and isinstance(candidate.get("candidate"), str):
        lines.append(candidate["candidate"])
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[0].startswith("candidate:"):
            found.append(f"{parts[4]}:{parts[5]}")
    return found


@attrs.frozen
class _Frame:
    """A signaling frame as one trace saw it: when, what, and its size in characters
    (0 where the trace does not tell)."""

    at: float
    frame: dict[str, Any]
    size: int = 0


def _matching(frames: Iterable[_Frame], types: tuple[str, ...], epoch: int | None) -> list[_Frame]:
    """The frames of one of ``types`` and of ``epoch`` (any epoch: ``None``)."""
    return [
        x
        for x in frames
        if x.frame.get("type") in types and (epoch is None or _epoch(x.frame) == epoch)
    ]


@attrs.frozen
class _Gathering:
    """What one gathering of a client's connection to a peer found (IceGatheringDone)."""

    at: float
    wall: float | None
    servers: tuple[str, ...]
    types: tuple[str, ...]
    failures: tuple[Mapping[str, Any], ...]


@attrs.define
class _Client:
    """What one client trace says, on the common clock."""

    name: str
    user: str
    end: float
    """When its last record was made."""
    admitted: list[tuple[float, str]] = attrs.field(factory=list)
    wanted_rooms: list[str] = attrs.field(factory=list)
    refused: list[tuple[float, str, str]] = attrs.field(factory=list)
    errors: list[tuple[float, str, str]] = attrs.field(factory=list)
    seen: dict[str, float] = attrs.field(factory=dict)
    left: dict[str, float] = attrs.field(factory=dict)
    closed_at: float | None = None
    sent: list[_Frame] = attrs.field(factory=list)
    received: list[_Frame] = attrs.field(factory=list)
    frames_in: list[float] = attrs.field(factory=list)
    pcs: dict[Any, str] = attrs.field(factory=dict)
    states: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    connected: dict[str, list[float]] = attrs.field(factory=dict)
    gave_up: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    attempts_failed: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    answers_applied: dict[str, float] = attrs.field(factory=dict)
    ops_failed: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    gathered: dict[str, list[_Gathering]] = attrs.field(factory=dict)
    routes: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    """The pair type (host, srflx, relay) of each connection to a peer that connected."""
    lost: list[tuple[float, Any]] = attrs.field(factory=list)
    connect_failed: list[tuple[float, str]] = attrs.field(factory=list)
    server_up: list[float] = attrs.field(factory=list)
    timeline: list[tuple[float, str | None, str]] = attrs.field(factory=list)
    """(time, the peer it is about or None for the whole client, text)."""

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def received_from(self, peer: str, *types: str, epoch: int | None = None) -> list[_Frame]:
        return _matching(
            (x for x in self.received if x.frame.get("fromUserId") == peer), types, epoch
        )

    def sent_to(self, peer: str, *types: str, epoch: int | None = None) -> list[_Frame]:
        return _matching((x for x in self.sent if x.frame.get("toUserId") == peer), types, epoch)

    def rooms(self) -> list[str]:
        return [room for _, room in self.admitted] or self.wanted_rooms


def _read_client(name: str, user: str, records: list[tuple[float, Record]]) -> _Client:
    c = _Client(name, user, end=records[-1][0])
    pending_remote: dict[Any, str] = {}
    for at, r in records:
        kind = r.get("kind")
        pc = _handle(r.get("pc"))
        peer = r.get("peer_id", r.get("peer"))
        if kind == "JoinRequested":
            c.wanted_rooms.append(str(r.get("room_id")))
        elif kind in ("RoomJoined", "RoomResumed"):
            c.admitted.append((at, str(r.get("room_id"))))
            for other in _listed(r.get("participants")):
                c.seen.setdefault(str(other), at)
            c.timeline.append((at, None, f"joined room {r.get('room_id')}"))
        elif kind == "JoinRefused":
            c.refused.append((at, str(r.get("code")), str(r.get("message"))))
            c.timeline.append((at, None, f"join refused: {r.get('code')}: {r.get('message')}"))
        elif kind == "ServerErrorReceived":
            if r.get("channel") == Channel.ROOMS and not any(x[0] == at for x in c.refused):
                c.refused.append((at, str(r.get("code")), str(r.get("message"))))
            c.errors.append((at, str(r.get("code")), str(r.get("message"))))
            c.timeline.append((at, None, f"server error {r.get('code')}: {r.get('message')}"))
        elif kind == "PeerJoined" and isinstance(peer, str):
            c.seen.setdefault(peer, at)
            c.timeline.append((at, peer, f"User joined: {peer}"))
        elif kind == "PeerLeft" and isinstance(peer, str):
            if c.closed_at is None:
                c.left.setdefault(peer, at)
                c.timeline.append((at, peer, f"User left: {peer}"))
        elif kind in ("CloseRequested", "LeaveRequested") and r.get("dir") == "in":
            if c.closed_at is None:
                c.closed_at = at
                c.timeline.append((at, None, "closed" if kind == "CloseRequested" else "left"))
        elif kind == "PeerConnected" and isinstance(peer, str):
            c.connected.setdefault(peer, []).append(at)
        elif kind == "PeerFailed" and isinstance(peer, str):
            reason = str(r.get("reason"))
            c.gave_up.setdefault(peer, []).append((at, reason))
            c.timeline.append((at, peer, f"gave up on {peer}: {reason}"))
        elif kind == "CreatePeer" and isinstance(peer, str):
            c.pcs[pc] = peer
        elif kind == "SetRemoteDescription":
            description = r.get("description")
            if isinstance(description, dict):
                pending_remote[pc] = str(description.get("type"))
        elif kind == "RemoteDescriptionApplied":
            pc_peer = c.pcs.get(pc, peer)
            if pending_remote.pop(pc, None) == "answer" and isinstance(pc_peer, str):
                c.answers_applied.setdefault(pc_peer, at)
        elif kind == "OperationFailed":
            pc_peer = c.pcs.get(pc, peer)
            if isinstance(pc_peer, str):
                text = f"{r.get('operation')}: {r.get('error')}"
                c.ops_failed.setdefault(pc_peer, []).append((at, text))
                c.timeline.append((at, pc_peer, f"operation failed: {text}"))
        elif kind == "IceGatheringDone":
            pc_peer = c.pcs.get(pc, peer)
            if isinstance(pc_peer, str):
                wall = r.get(WALL_TIME)
                c.gathered.setdefault(pc_peer, []).append(
                    _Gathering(
                        at,
                        float(wall) if isinstance(wall, int | float) else None,
                        tuple(str(x) for x in _listed(r.get("servers"))),
                        tuple(str(x) for x in _listed(r.get("candidate_types"))),
                        tuple(f for f in _listed(r.get("failures")) if isinstance(f, dict)),
                    )
                )
        elif kind == "PeerRoute" and isinstance(peer, str):
            c.routes.setdefault(peer, []).append((at, str(r.get("pair_type"))))
        elif kind == "ConnectionStateChanged":
            pc_peer = c.pcs.get(pc, peer)
            if isinstance(pc_peer, str):
                state = str(r.get("state"))
                c.states.setdefault(pc_peer, []).append((at, state))
                c.timeline.append((at, pc_peer, f"connection state with {pc_peer}: {state}"))
        elif kind == "SendToServer":
            sent_text = r.get("text")
            f = _frame(sent_text)
            if isinstance(f.get("toUserId"), str):
                size = len(sent_text) if isinstance(sent_text, str) else 0
                c.sent.append(_Frame(at, f, size))
                if f.get("type") in (ANSWER, RENEGOTIATE):  # the seed logs no line for these
                    to, epoch = f["toUserId"], _epoch(f)
                    c.timeline.append((at, to, f"Sending {f.get('type')} to: {to} (epoch {epoch})"))
        elif kind == "ServerFrameReceived":
            c.frames_in.append(at)
            f = _frame(r.get("text"))
            if f.get("channel") == Channel.SIGNALING and isinstance(f.get("fromUserId"), str):
                c.received.append(_Frame(at, f))
        elif kind == "ServerConnected":
            c.server_up.append(at)
        elif kind == "ServerDisconnected":
            code = r.get("close_code")
            if c.closed_at is None:
                c.lost.append((at, code))
                c.timeline.append((at, None, f"server connection lost (close {code})"))
        elif kind == "ServerConnectFailed":  # the machine logs it (timeline: the Log)
            if c.closed_at is None:
                c.connect_failed.append((at, str(r.get("reason"))))
        elif kind == "Log":
            text = _log_text(r)
            about = _log_peer(r)
            if text.startswith("[") and about is not None and text.startswith(f"[{about}] "):
                text = text[len(about) + 3 :]
            if "attempt" in text and "failed:" in text and about is not None:
                c.attempts_failed.setdefault(about, []).append(
                    (at, text.split("failed:", 1)[1].strip())
                )
            if _level(r) >= LogLevel.INFO:
                c.timeline.append((at, about, text))
    return c


@attrs.define
class _Conn:
    """One relay connection."""

    user: str | None = None
    room: str | None = None
    admitted: float | None = None
    refused: list[tuple[float, str, str]] = attrs.field(factory=list)
    gone: float | None = None
    clean: bool | None = None


@attrs.define
class _Relay:
    """What the relay traces say, on the common clock."""

    names: list[str] = attrs.field(factory=list)
    conns: dict[tuple[str, Any], _Conn] = attrs.field(factory=dict)
    got: list[tuple[float, _Conn, dict[str, Any], int]] = attrs.field(factory=list)
    forwarded: list[tuple[float, _Conn, dict[str, Any]]] = attrs.field(factory=list)
    errors: list[tuple[float, _Conn, str, str]] = attrs.field(factory=list)
    left: list[tuple[float, str, str]] = attrs.field(factory=list)
    """(time, room, user) of each user-left-room the relay sent."""
    end: float = 0.0

    by_route: dict[tuple[Any, Any], list[_Frame]] = attrs.field(factory=dict)
    """The frames the relay got, by (sender, target): filled by :meth:`index`."""
    forwarded_by: dict[tuple[Any, Any], list[_Frame]] = attrs.field(factory=dict)
    by_user: dict[str, list[_Conn]] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.names)

    def index(self) -> None:
        """Index what was read by user and route (a busy relay's trace has many)."""
        for at, c, f, size in self.got:
            self.by_route.setdefault((c.user, f.get("toUserId")), []).append(_Frame(at, f, size))
        for at, _, f in self.forwarded:
            route = (f.get("fromUserId"), f.get("toUserId"))
            self.forwarded_by.setdefault(route, []).append(_Frame(at, f))
        for c in self.conns.values():
            if c.user is not None:
                self.by_user.setdefault(c.user, []).append(c)

    def route(self, sender: str, target: str | None) -> list[_Frame]:
        """Every frame ``sender`` sent the relay for ``target`` (``None``: unreadable)."""
        return self.by_route.get((sender, target), [])

    def of(self, user: str) -> list[_Conn]:
        return self.by_user.get(user, [])

    def admitted(self, user: str) -> list[_Conn]:
        return [c for c in self.of(user) if c.admitted is not None]

    def got_from(
        self, sender: str, target: str, *types: str, epoch: int | None = None
    ) -> list[_Frame]:
        return _matching(self.route(sender, target), types, epoch)

    def forwarded_of(
        self, sender: str, target: str, *types: str, epoch: int | None = None
    ) -> list[_Frame]:
        return _matching(self.forwarded_by.get((sender, target), []), types, epoch)


def _read_relay(relay: _Relay, name: str, records: list[tuple[float, Record]]) -> None:
    relay.names.append(name)
    relay.end = max(relay.end, records[-1][0])
    last_in: tuple[float, _Conn, dict[str, Any], int] | None = None
    for at, r in records:
        kind = r.get("kind")
        conn = _handle(r.get("conn"))
        if conn is None:
            continue
        key = (name, conn)
        if kind == "Connected" or key not in relay.conns:  # (a trace may begin mid-way)
            relay.conns[key] = _Conn()
        c = relay.conns[key]
        if kind == "FrameReceived":
            data = r.get("data")
            f = _frame(data)
            size = len(data) if isinstance(data, str) else 0
            last_in = (at, c, f, size)
            claims = f.get("channel") == Channel.ROOMS and f.get("type") == JoinRoom.TYPE
            if claims and isinstance(f.get("userId"), str) and c.admitted is None:
                c.user = f["userId"]
                c.room = str(f.get("roomId"))
            if f.get("channel") == Channel.SIGNALING or (size and not f):
                relay.got.append(last_in)
        elif kind == "SendFrame":
            f = _frame(r.get("text"))
            type_ = f.get("type", r.get("frame_type"))
            if type_ == UserJoinedRoom.TYPE and f.get("userId") == c.user and "resumeToken" in f:
                c.admitted = at
                c.room = str(f.get("roomId"))
            elif type_ == UserLeftRoom.TYPE:
                entry = (at, str(f.get("roomId")), str(f.get("userId")))
                if entry not in relay.left:
                    relay.left.append(entry)
            elif type_ == Error.TYPE:
                code, message = str(f.get("code")), str(f.get("message"))
                relay.errors.append((at, c, code, message))
                if f.get("channel") == Channel.ROOMS and last_in is not None and last_in[1] is c:
                    joined = last_in[2]
                    if joined.get("type") == JoinRoom.TYPE:
                        c.refused.append((at, code, message))
                        if c.admitted is None and isinstance(joined.get("userId"), str):
                            c.user = joined["userId"]
                            c.room = str(joined.get("roomId"))
            elif f.get("channel") == Channel.SIGNALING:
                relay.forwarded.append((at, c, f))
        elif kind == "Disconnected":
            c.gone = at
            c.clean = bool(r.get("clean", True))


# --------------------------------------------------------------------------- the walk


def _when(at: float) -> str:
    return f"+{at:.3f}s"


@attrs.define
class _World:
    clients: dict[str, list[_Client]]
    relay: _Relay
    origin: float
    walking: tuple[str, ...] = ()
    """The pair being walked."""
    notes: list[str] = attrs.field(factory=list)
    """What the walk of the current pair found the traces disagree on."""

    def client(self, user: str) -> _Client | None:
        """The trace of ``user`` that got into a room (else its last one)."""
        traces = self.clients.get(user, [])
        admitted = [c for c in traces if c.admitted]
        chosen = admitted or traces
        return chosen[-1] if chosen else None

    def rel(self, at: float) -> str:
        return _when(at - self.origin)

    def left_at(self, user: str, after: float) -> tuple[float, str] | None:
        """When ``user`` was gone from the room after ``after``, and who saw it."""
        seen: list[tuple[float, str]] = []
        for traces in self.clients.values():
            for c in traces:
                at = c.left.get(user)
                if at is not None and at >= after:
                    seen.append((at, f"{c.user} saw {user} leave"))
        own = self.client(user)
        if own is not None and own.closed_at is not None and own.closed_at >= after:
            seen.append((own.closed_at, f"{user} closed"))
        for at, _, who in self.relay.left:
            if who == user and at >= after:
                seen.append((at, f"the relay announced {user} left"))
        return min(seen) if seen else None

    def lost_text(self, lost: tuple[float, str]) -> str:
        at, users = lost
        return (
            f"the relay was lost at {self.rel(at)} ({users}: connection dropped, reconnects failed)"
        )

    def relay_lost(self, after: float) -> tuple[float, str] | None:
        """The relay gone: a client lost its connection (after ``after``) and could not
        reconnect."""
        hits: list[tuple[float, str]] = []
        for traces in self.clients.values():
            for c in traces:
                for at, _ in c.lost:
                    if at < after:
                        continue
                    failed = [f for f, _ in c.connect_failed if f >= at]
                    back = [u for u in c.server_up if u > at]
                    if failed and (not back or back[0] > failed[0]):
                        hits.append((at, c.user))
                        break
        if not hits:
            return None
        users = sorted({u for _, u in hits})
        return min(at for at, _ in hits), ", ".join(users)

    def connection_lost(self, user: str, after: float) -> tuple[float, str] | None:
        """``user``'s own connection to the relay lost after ``after``."""
        found: list[tuple[float, str]] = []
        own = self.client(user)
        if own is not None:
            for at, code in own.lost:
                if at >= after:
                    found.append((at, f"{user}'s connection to the relay dropped (close {code})"))
                    break
        for c in self.relay.of(user):
            if c.gone is not None and c.gone >= after and not c.clean:
                found.append((c.gone, f"the relay saw {user}'s connection drop"))
        return min(found) if found else None

    def killed(self, user: str, after: float) -> tuple[float, str] | None:
        """``user``'s trace ends without a close (after ``after``)."""
        own = self.client(user)
        if own is None or own.closed or own.end < after:
            return None
        detail = f"{user}'s trace ends at {self.rel(own.end)} without a close"
        drops = [c.gone for c in self.relay.of(user) if c.gone is not None and not c.clean]
        if drops:
            detail += f" and the relay saw its connection drop at {self.rel(min(drops))}"
        return own.end, detail + ": the process died (killed?)"

    def relay_ended(self, users: tuple[str, ...], after: float) -> str | None:
        """The relay's trace ends (after ``after``) with these users' connections still
        open: the relay stopped there (killed?), or the trace was taken while it ran."""
        if not self.relay or self.relay.end < after:
            return None
        open_ = [u for u in users if any(c.gone is None for c in self.relay.admitted(u))]
        if not open_ or any(self.client(u) is not None for u in users):
            return None
        return (
            f"the relay's trace ends at {self.rel(self.relay.end)} with {' and '.join(open_)} "
            "still connected (the relay died there, or its trace was taken while it ran)"
        )

    def explain_absence(self, actor: str, after: float) -> str | None:
        """Why ``actor`` did nothing after ``after``: the first thing that broke."""
        lost, killed = self.relay_lost(after), self.killed(actor, after)
        others = [self.connection_lost(actor, after), self.left_at(actor, after)]
        options = [x for x in (lost, killed, *others) if x is not None]
        if not options:
            return self.relay_ended(self.walking, after)
        at, _ = min(options)
        if lost is not None and lost[0] == at:
            return self.lost_text(lost)
        if killed is not None and killed[0] <= at + 1.0:
            return killed[1]
        what = next(x[1] for x in others if x is not None and x[0] == at)
        return f"{what} at {self.rel(at)}"

    def explain_transit(self, carriers: tuple[str, ...], after: float, hop: str) -> str:
        """A frame that vanished after ``after`` on its way over the relay connections
        of ``carriers``: the first of them to break, unless frames still came through
        it first (then it was lost in transit)."""
        breaks: list[tuple[float, int, str]] = []  # (when, rank on a tie, what)
        lost = self.relay_lost(after)
        if lost is not None:
            breaks.append((lost[0], 0, self.lost_text(lost)))
        for user in carriers:
            dropped = self.connection_lost(user, after)
            if dropped is not None:
                breaks.append((dropped[0], 1, f"{dropped[1]} at {self.rel(dropped[0])}"))
            died = self.killed(user, after)
            if died is not None:
                breaks.append((died[0], 2, died[1]))
        for at, _, text in sorted(breaks):
            if not any(self.frames_through(user, after, at) for user in carriers):
                return text
        return f"lost in transit {hop} (the connections stayed up)"

    def frames_through(self, user: str, after: float, until: float) -> bool:
        """Whether ``user``'s relay connection carried a frame between the two times."""
        own = self.client(user)
        if own is not None:
            return any(after < at < until for at in own.frames_in + [s.at for s in own.sent])
        return False


def _refusal(world: _World, user: str) -> tuple[float, str, str] | None:
    """A refused join of ``user`` that kept it out."""
    traces = world.clients.get(user, [])
    for c in traces:
        if c.refused and not c.admitted:
            return c.refused[0]
    conns = world.relay.of(user)
    refused = [r for c in conns for r in c.refused]
    if refused and (not traces or not any(c.admitted for c in traces)):
        return min(refused)
    return None


def _rooms_of(world: _World, user: str) -> list[str]:
    rooms: list[str] = []
    for c in world.clients.get(user, []):
        rooms += c.rooms()
    rooms += [c.room for c in world.relay.of(user) if c.room is not None]
    return list(dict.fromkeys(rooms))


def _together(world: _World, a: str, b: str) -> float | None:
    """When ``a`` and ``b`` were first seen in one room."""
    times: list[float] = []
    for user, other in ((a, b), (b, a)):
        for c in world.clients.get(user, []):
            if other in c.seen:
                times.append(c.seen[other])
    ca, cb = world.relay.admitted(a), world.relay.admitted(b)
    for x in ca:
        for y in cb:
            if (
                x.room == y.room
                and x.admitted is not None
                and y.admitted is not None
                and (x.gone is None or x.gone >= y.admitted)
                and (y.gone is None or y.gone >= x.admitted)
            ):
                times.append(max(x.admitted, y.admitted))
    return min(times) if times else None


@attrs.define
class _Hop:
    label: str
    at: float | None
    known: bool


def _exchange(
    world: _World, type_: str, sender: str, receiver: str, epoch: int | None
) -> list[_Hop]:
    """The hops of one signaling frame, each as far as a trace shows it."""
    s, r, relay = world.client(sender), world.client(receiver), world.relay
    sent = s.sent_to(receiver, type_, epoch=epoch) if s is not None else []
    got = relay.got_from(sender, receiver, type_, epoch=epoch) if relay else []
    forwarded = relay.forwarded_of(sender, receiver, type_, epoch=epoch) if relay else []
    received = r.received_from(sender, type_, epoch=epoch) if r is not None else []
    return [
        _Hop(f"{sender} sent", sent[0].at if sent else None, s is not None),
        _Hop("the relay got", _first(got), bool(relay)),
        _Hop("the relay forwarded", _first(forwarded), bool(relay)),
        _Hop(f"{receiver} got", _first(received), r is not None),
    ]


def _first(frames: list[_Frame]) -> float | None:
    return min(x.at for x in frames) if frames else None


def _first_epoch(world: _World, i: str, p: str, since: float | None) -> int | None:
    """The epoch of the first offer from ``i`` to ``p`` any trace shows."""
    s, r = world.client(i), world.client(p)
    offers = s.sent_to(p, OFFER) if s is not None else []
    offers += world.relay.got_from(i, p, OFFER) if world.relay else []
    offers += r.received_from(i, OFFER) if r is not None else []
    seen = [(x.at, _epoch(x.frame)) for x in offers]
    if since is not None:
        later = [x for x in seen if x[0] >= since - 1.0]
        seen = later or seen
    return min(seen)[1] if seen else None


class _Stop(Exception):
    """Where a pair's walk ended: the step and the cause."""

    def __init__(self, step: str, cause: str) -> None:
        super().__init__(step, cause)
        self.step = step
        self.cause = cause


def _walk_exchange(
    world: _World, what: str, hops: list[_Hop], sender: str, receiver: str, together: float
) -> float:
    """Raise :class:`_Stop` where the frame's hops stop; the time it arrived (or the
    last time a trace saw it, when the rest is unknown). Some hop is known: a pair
    always has the relay's trace or one of its two users' behind it."""
    seen = [k for k, h in enumerate(hops) if h.at is not None]
    last = seen[-1] if seen else -1
    for hop in hops[:last]:
        if hop.known and hop.at is None:  # a later hop happened: this trace missed it
            world.notes.append(
                f"{hops[last].label} the {what}, but no trace shows {hop.label} it: "
                "traces disagree, or one is incomplete"
            )
    gap = next((k for k in range(last + 1, len(hops)) if hops[k].known), None)
    if gap == 0:
        raise _Stop(what, _absent(world, what, sender, receiver, together))
    if last < 0:  # no trace shows it sent (the sender has none)
        where = receiver if gap == 3 else "the relay"
        because = world.explain_absence(sender, together)
        raise _Stop(
            what, f"no {what} from {sender} reached {where}" + (f": {because}" if because else "")
        )
    step, seen_at = f"{what} relay", hops[last].at
    assert seen_at is not None
    since: float = seen_at
    if last == 0:  # only its sender shows it: did the relay answer with a refusal?
        refused = _refused_by_relay(world, what, sender, since)
        if refused is not None:
            raise _Stop(step, f"the relay refused {sender}'s {what}: {refused}")
    if gap is None:
        return since
    if gap == 2:  # the relay got it and did not forward it
        refusals = [
            (code, message)
            for at, c, code, message in world.relay.errors
            if c.user == sender and 0 <= at - since < 0.5
        ]
        if refusals:
            code, message = refusals[0]
            sizes = [x.size for x in world.relay.route(sender, receiver) if x.at == since]
            of = f"; the {what} was {sizes[0]:,} bytes" if sizes else ""
            raise _Stop(step, f"the relay refused {sender}'s {what}: {code} ({message}{of})")
        if not world.relay.admitted(receiver):
            raise _Stop(step, f"{what} not relayed: {receiver} was not in {sender}'s room")
        raise _Stop(
            step, f"{what} dropped by the relay (received at {world.rel(since)}, never forwarded)"
        )
    if gap == 1:
        carriers: tuple[str, ...] = (sender,)
        where, path = "the relay", f"between {sender} and the relay"
    elif last >= 1:
        where, path, carriers = receiver, f"between the relay and {receiver}", (receiver,)
    else:
        where, path = receiver, f"between {sender} and {receiver}"
        carriers = (sender, receiver)
    cause = world.explain_transit(carriers, since, path)
    raise _Stop(
        step,
        f"{sender}'s {what} never reached {where} ({hops[last].label} it at "
        f"{world.rel(since)}): {cause}",
    )


def _refused_by_relay(world: _World, what: str, sender: str, since: float | None) -> str | None:
    """The refusal the relay answered a frame ``sender`` sent at ``since`` with, as
    ``sender``'s trace shows it (an error within a second, or a close 1009: too big)."""
    s = world.client(sender)
    if s is None or since is None:
        return None
    sizes = [x.size for x in s.sent if x.at == since]
    of = f"; the {what} was {sizes[-1]:,} bytes" if sizes else ""
    for at, code, message in s.errors:
        if 0 <= at - since < 1.0:
            return f"{code} ({message}{of})"
    for at, close in s.lost:
        if 0 <= at - since < 1.0 and close == CloseCode.TOO_BIG:
            return f"{ErrorCode.FRAME_TOO_LARGE} (close {CloseCode.TOO_BIG}{of})"
    return None


def _absent(world: _World, what: str, actor: str, other: str, since: float) -> str:
    """``actor`` has a trace and it shows no ``what`` sent after ``since``."""
    because = world.explain_absence(actor, since)
    base = f"{what} never sent: {actor} made no {what} for {other}"
    return f"{base}: {because}" if because else base


def _pair(world: _World, i: str, p: str) -> tuple[str, str, str]:
    """``(verdict, step, cause)`` for the pair of initiator ``i`` and polite ``p``."""
    ci, cp = world.client(i), world.client(p)
    # connected?
    views = [(c, other) for c, other in ((ci, p), (cp, i)) if c is not None]
    if views:
        sides = [c.connected.get(other, []) for c, other in views]
        if all(sides):
            broke = [
                (at, reason)
                for c, other in views
                for at, reason in c.gave_up.get(other, [])
                if at > max(c.connected[other])
            ]
            if not broke:
                note = "" if len(views) == 2 else f"from {views[0][0].user}'s side"
                routes = {r for c, other in views for _, r in c.routes.get(other, [])[-1:]}
                if routes:
                    note = (note + "; " if note else "") + f"over a {'/'.join(sorted(routes))} pair"
                return "connected", "connected", note
    try:
        return "stopped", *_walk(world, i, p)
    except _Stop as stop:
        if stop.step == "signaled":
            return "signaled", "signaled", stop.cause
        return "stopped", stop.step, stop.cause


def _walk(world: _World, i: str, p: str) -> tuple[str, str]:
    ci, cp = world.client(i), world.client(p)
    # 1. admitted
    for user in (i, p):
        refused = _refusal(world, user)
        if refused is not None:
            at, code, message = refused
            held = [
                c for c in world.relay.admitted(user) if c.admitted is not None and c.admitted < at
            ]
            more = (
                f"; another connection held the id {user}"
                if held and code == ErrorCode.USER_ID_TAKEN
                else ""
            )
            raise _Stop(
                "join",
                f"{user}'s join was refused by the server at {world.rel(at)}: {code} ({message})"
                + more,
            )
    # 2. in one room
    together = _together(world, i, p)
    if together is None:
        ri, rp = _rooms_of(world, i), _rooms_of(world, p)
        if ri and rp:
            joined = f"{i} joined {', '.join(map(repr, ri))}, {p} joined {', '.join(map(repr, rp))}"
            raise _Stop("room", f"the target never joined the room: {joined}")
        absent, present, rooms = (p, i, ri) if not rp else (i, p, rp)
        not_found = [
            x
            for c in (ci, cp)
            if c is not None
            for x in c.errors
            if x[1] == ErrorCode.PEER_NOT_FOUND
        ]
        detail = f"; the relay answered {ErrorCode.PEER_NOT_FOUND}" if not_found else ""
        raise _Stop("room", f"{absent} never joined {present}'s room {rooms}{detail}")
    # 3. the offer
    epoch = _first_epoch(world, i, p, together)
    if epoch is None:
        return _no_offer(world, i, p, together)
    offer_hops = _exchange(world, OFFER, i, p, epoch)
    offer_at = _walk_exchange(world, "offer", offer_hops, i, p, together)
    answer_hops = _exchange(world, ANSWER, p, i, epoch)
    if cp is None and all(h.at is None for h in answer_hops):
        # nothing of the answer anywhere, and no trace from the answering side
        delivered = "delivered" if _delivered(world, OFFER, i, p, epoch) else "sent"
        because = world.explain_absence(p, offer_at)
        raise _Stop(
            "answer",
            f"no answer from {p}: {i}'s offer was {delivered} at {world.rel(offer_at)} and "
            "nothing came back" + (f"; {because}" if because else ""),
        )
    if cp is not None and not cp.sent_to(i, ANSWER, epoch=epoch):
        got = cp.received_from(i, OFFER, epoch=epoch)
        since = got[0].at if got else offer_at
        failed = [x for x in cp.ops_failed.get(i, []) if x[0] >= since]
        if failed:
            raise _Stop("answer", f"answer never sent: {p} could not answer: {failed[0][1]}")
        because = world.explain_absence(p, since)
        raise _Stop(
            "answer",
            f"answer never sent: {p} got the offer at {world.rel(since)} and did not answer"
            + (f": {because}" if because else ""),
        )
    answer_at = _walk_exchange(world, "answer", answer_hops, p, i, together)
    if ci is not None and p not in ci.answers_applied:
        failed = [x for x in ci.ops_failed.get(p, []) if x[0] >= answer_at]
        detail = f": {failed[0][1]}" if failed else ""
        raise _Stop("answer", f"answer never applied by {i}{detail}")
    if ci is None and cp is None:
        raise _Stop(
            "signaled",
            f"offer and answer relayed by {world.rel(answer_at)}; ICE is not in the relay's trace",
        )
    # 4. candidates
    _check_candidates(world, i, p, epoch)
    # 5. ICE
    return _ice(world, i, p, answer_at)


def _delivered(world: _World, type_: str, sender: str, receiver: str, epoch: int | None) -> bool:
    return bool(world.relay and world.relay.forwarded_of(sender, receiver, type_, epoch=epoch))


def _no_offer(world: _World, i: str, p: str, together: float) -> tuple[str, str]:
    ci, cp = world.client(i), world.client(p)
    if ci is not None:
        if p not in ci.seen:
            raise _Stop("room", f"{i} never saw {p} join its room")
        raise _Stop("offer", _absent(world, "offer", i, p, ci.seen[p]))
    asked = 0
    if cp is not None:
        asked = len(cp.sent_to(i, RENEGOTIATE))
    elif world.relay:
        asked = len(world.relay.got_from(p, i, RENEGOTIATE))
    detail = f"; {p} asked for it {asked} time{'s' if asked > 1 else ''}" if asked else ""
    relay = "" if not world.relay else ", and the relay got none"
    because = world.explain_absence(i, together)
    raise _Stop(
        "offer",
        f"no offer from {i}: {p} waited from {world.rel(together)}{detail}{relay}"
        + (f"; {because}" if because else ""),
    )


def _describe(addresses: list[str]) -> str:
    return (
        ", ".join(addresses[:3]) + (" ..." if len(addresses) > 3 else "") if addresses else "none"
    )


def _carried(frames: list[_Frame], type_: str) -> list[str] | None:
    """The ``ip:port`` of every candidate ``frames`` carry; ``None`` when the ``type_``
    frame (the description) is not among them: the trace did not see it."""
    if not any(x.frame.get("type") == type_ for x in frames):
        return None
    return [a for x in frames for a in _candidates(x.frame)]


def _check_candidates(world: _World, i: str, p: str, epoch: int | None) -> None:
    """Stop where a side's candidates were missing, or changed on their way."""
    for sender, receiver, type_ in ((i, p, OFFER), (p, i, ANSWER)):
        s, r = world.client(sender), world.client(receiver)
        sent = relayed = received = None
        if s is not None:  # the description's candidates first, then the trickled ones
            frames = s.sent_to(receiver, type_, epoch=epoch) + s.sent_to(receiver, ICE, epoch=epoch)
            sent = _carried(frames, type_)
        if world.relay:
            relayed = _carried(
                world.relay.got_from(sender, receiver, type_, ICE, epoch=epoch), type_
            )
        if r is not None:
            received = _carried(r.received_from(sender, type_, ICE, epoch=epoch), type_)
        what = type_.removeprefix("webrtc-")
        first = sent if sent is not None else relayed
        if first is not None and not first:
            raise _Stop(
                "candidates",
                f"no candidates from {sender}: its {what} carried none (no usable address and "
                "no STUN/TURN server?)" + _ice_outcome(world, i, p),
            )
        if first is None and received is not None and not received:
            raise _Stop(
                "candidates",
                f"{receiver} got {sender}'s {what} without candidates (stripped in transit, or "
                f"{sender} had none)" + _ice_outcome(world, i, p),
            )
        if first is None or received is None or sorted(first) == sorted(received):
            continue
        if relayed is not None and sorted(relayed) == sorted(first):
            where = f"between the relay and {receiver}"
        elif relayed is not None and sent is not None:
            where = f"between {sender} and the relay"
        else:
            where = f"between {'the relay' if sent is None else sender} and {receiver}"
        change = "stripped" if not received else "rewritten"
        raise _Stop(
            "candidates",
            f"{sender}'s candidates were {change} in transit {where}: {sender} sent "
            f"{_describe(first)}, {receiver} got {_describe(received)}" + _ice_outcome(world, i, p),
        )


def _ice_outcome(world: _World, i: str, p: str) -> str:
    failures = _ice_failures(world, i, p)
    if failures:
        at, who, why = failures[0]
        return f"; ICE failed at {world.rel(at)} ({who}: {why})"
    return ""


def _ice_failures(world: _World, i: str, p: str) -> list[tuple[float, str, str]]:
    out: list[tuple[float, str, str]] = []
    for user, other in ((i, p), (p, i)):
        c = world.client(user)
        if c is None:
            continue
        connected = c.connected.get(other, [])
        for at, state in c.states.get(other, []):
            if state == "failed":
                out.append((at, user, "connection failed"))
        for at, reason in c.attempts_failed.get(other, []):
            if "connect" in reason or "disconnected" in reason:
                out.append((at, user, reason))
        for at, reason in c.gave_up.get(other, []):
            out.append((at, user, f"gave up: {reason}"))
        if connected:
            out = [x for x in out if x[1] != user or x[0] > connected[0]]
    return sorted(out)


def _ice(world: _World, i: str, p: str, since: float) -> tuple[str, str]:
    failures = _ice_failures(world, i, p)
    fault_at = failures[0][0] if failures else None
    # something that broke the pair before ICE could fail: the earliest (on a tie: the
    # relay, then a death, a dropped connection, a departure)
    broke: list[tuple[float, int, str, str]] = []
    lost = world.relay_lost(since)
    if lost is not None:
        broke.append((lost[0], 0, "ice", f"not connected: {world.lost_text(lost)}"))
    for actor in (p, i):
        died = world.killed(actor, since)
        if died is not None:
            broke.append((died[0], 1, "ice", f"not connected: {died[1]}"))
        dropped = world.connection_lost(actor, since)
        if dropped is not None:
            at = dropped[0]
            broke.append((at, 2, "ice", f"not connected: {dropped[1]} at {world.rel(at)}"))
        left = world.left_at(actor, since)
        if left is not None:
            at, who = left
            cause = f"peer left mid-way: {who} at {world.rel(at)}, before connecting"
            broke.append((at, 3, "peer left", cause))
    broke.sort()
    if broke and (fault_at is None or broke[0][0] < fault_at):
        _, _, step, cause = broke[0]
        raise _Stop(step, cause + _unconfirmed(world, i, p))
    if failures:
        at, who, why = failures[0]
        connected = any(
            c is not None and c.connected.get(o)
            for c, o in ((world.client(i), p), (world.client(p), i))
        )
        if connected:
            raise _Stop(
                "ice",
                f"connection failed after ICE had connected ({who} at {world.rel(at)}: {why})",
            )
        raise _Stop(
            "ice",
            f"no usable candidate pair: ICE failed ({who} at {world.rel(at)}: {why})"
            + _why_no_pair(world, i, p, at),
        )
    return "ice", "ICE never finished (no failure recorded before the trace ends)" + _unconfirmed(
        world, i, p
    )


def _last_gathering(world: _World, user: str, other: str, before: float) -> _Gathering | None:
    """The gathering of ``user``'s connection to ``other`` that was current at ``before``
    (else its first: a report may come after the failure it explains)."""
    c = world.client(user)
    reports = c.gathered.get(other, []) if c is not None else []
    found = [g for g in reports if g.at <= before]
    return found[-1] if found else (reports[0] if reports else None)


def _server_failure(failure: Mapping[str, Any], wall: float | None) -> tuple[str, str]:
    """One ICE server's failure as ``(what, why)``, with ``{who}`` for whose it was: a
    refused TURN credential is told wrong from expired by the expiry its username
    carries."""
    url, error = failure.get("url"), failure.get("error")
    code, username = failure.get("code"), failure.get("username")
    if code != 401:
        return f"{{who}} ICE server {url} gave no candidate ({error})", ""
    what = f"the TURN server {url} refused {{who}} credential ({error})"
    expiry = credential_expiry(username) if isinstance(username, str) else None
    if expiry is None or wall is None:
        return what, "the username or credential is wrong, or expired"
    when = _utc(expiry)
    if expiry <= wall:
        return what, f"it had expired at {when}, {wall - expiry:.0f} s before it was used"
    return what, (
        f"not expired (valid until {when}), so not made with the TURN server's secret "
        "(a wrong --turn-secret-file, or a changed credential)"
    )


def _utc(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _why_no_pair(world: _World, i: str, p: str, failed_at: float) -> str:
    """What the gathering reports say of why no candidate pair worked: a TURN server that
    refused a credential or did not answer, or no TURN server at all."""
    reports = {u: _last_gathering(world, u, o, failed_at) for u, o in ((i, p), (p, i))}
    known = {u: g for u, g in reports.items() if g is not None}
    if not known:
        return ""
    told: dict[tuple[str, str], list[str]] = {}
    for user, gathering in known.items():
        for failure in gathering.failures:
            # a server whose kind of candidate came anyway failed only for some local
            # address (Chromium's 701s): not why the pair failed
            if candidate_type_from(str(failure.get("url"))) not in gathering.types:
                told.setdefault(_server_failure(failure, gathering.wall), []).append(user)
    if told:
        return "".join(
            "; "
            + what.format(who=" and ".join(f"{u}'s" for u in users))
            + (f": {why}" if why else "")
            for (what, why), users in told.items()
        )
    if any("relay" in g.types for g in known.values()):
        return ""
    shared = _shared_network(world, i, p)
    if shared is not None:
        return (
            f"; their candidates share a network ({shared}), so no relay was needed: the "
            "connectivity checks were lost between them (a firewall, or a candidate that "
            "does not lead to its peer)"
        )
    types = "; ".join(f"{u}: {', '.join(g.types) or 'none'}" for u, g in known.items())
    turn = [s for g in known.values() for s in g.servers if is_turn_url(s)]
    if turn:
        return f"; no relay candidate on either side ({types})"
    unknown = [u for u in (i, p) if u not in known]
    configured = "; ".join(
        f"{u}: {', '.join(g.servers) or 'none'}" for u, g in known.items()
    ) + "".join(f"; {u}: no trace" for u in unknown)
    return (
        f"; none of the candidate pairs ({types}) worked, and no TURN server was configured "
        f"to relay (ICE servers {configured}): peers whose networks cannot reach each other "
        "meet only through a TURN server (docs/networks.md)"
    )


def _sent_addresses(world: _World, sender: str, receiver: str) -> set[str]:
    """The IP addresses of the candidates ``sender`` sent ``receiver``, as any trace saw
    them."""
    frames: list[_Frame] = []
    s, r = world.client(sender), world.client(receiver)
    if s is not None:
        frames += s.sent_to(receiver, OFFER, ANSWER, ICE)
    if r is not None:
        frames += r.received_from(sender, OFFER, ANSWER, ICE)
    if world.relay:
        frames += world.relay.got_from(sender, receiver, OFFER, ANSWER, ICE)
    return {a.rpartition(":")[0] for x in frames for a in _candidates(x.frame)}


def _shared_network(world: _World, i: str, p: str) -> str | None:
    """A network both sides had a candidate on (the same IPv4 /24, or both on loopback):
    then ICE needed no relay."""
    sides = []
    for sender, receiver in ((i, p), (p, i)):
        nets = set()
        for text in _sent_addresses(world, sender, receiver):
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue  # an mDNS name
            if address.is_loopback:
                nets.add("loopback")
            elif address.version == 4:
                nets.add(str(ipaddress.ip_network(f"{address}/24", strict=False)))
        sides.append(nets)
    common = sorted(sides[0] & sides[1])
    return common[0] if common else None


def _unconfirmed(world: _World, i: str, p: str) -> str:
    """What no trace can confirm when the initiator's trace and the relay's are both
    missing: whether the answer ever arrived."""
    if world.client(i) is None and not world.relay:
        return f"; whether {i} got the answer is unknown (no trace from {i} or the relay)"
    return ""


# --------------------------------------------------------------------------- timelines


def _timeline(world: _World, i: str, p: str) -> tuple[Event, ...]:
    events: list[tuple[float, str, str]] = []
    for user, other in ((i, p), (p, i)):
        for trace in world.clients.get(user, []):
            for at, about, text in trace.timeline:
                if about is None or about == other:
                    events.append((at, user, text))
    relay = world.relay
    users = {i, p}
    for sender, target in ((i, p), (p, i)):
        for said, frames in (
            ("got {}", relay.route(sender, target)),
            ('Relaying message type "{}"', relay.forwarded_by.get((sender, target), [])),
        ):
            for x in frames:
                if x.frame.get("type") != ICE:
                    route = f"{sender} → {target} (epoch {_epoch(x.frame)})"
                    events.append((x.at, "relay", f"{said.format(x.frame.get('type'))} {route}"))
    for user in (i, p):
        for x in relay.route(user, None):  # an unreadable frame
            events.append((x.at, "relay", f"got a frame of {x.size} bytes from {user}"))
    for conn in relay.of(i) + relay.of(p):
        if conn.admitted is not None:
            events.append((conn.admitted, "relay", f'User "{conn.user}" joined room "{conn.room}"'))
        for at, code, _ in conn.refused:
            events.append((at, "relay", f"refused {conn.user}'s join: {code}"))
        if conn.gone is not None:
            how = "closed" if conn.clean else "dropped"
            events.append((conn.gone, "relay", f"{conn.user}'s connection {how}"))
    for at, conn, code, message in relay.errors:
        if conn.user in users and (at, code) not in {(x[0], x[1]) for x in conn.refused}:
            events.append((at, "relay", f"error {code} to {conn.user}: {message}"))
    for at, room, user in relay.left:
        if user in users:
            events.append((at, "relay", f'User "{user}" left room "{room}"'))
    events.sort(key=lambda e: e[0])
    return tuple(Event(at - world.origin, who, _short(text)) for at, who, text in events)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- the entry point


def _aligned(
    traces: Mapping[str, Iterable[Record]],
) -> list[tuple[str, list[Record], float | None]]:
    """Each trace's records and the offset from its ``t`` to wall time (``None`` when
    it has no wall time)."""
    out: list[tuple[str, list[Record], float | None]] = []
    for name, records in traces.items():
        rows = [
            r for r in records if isinstance(r, Mapping) and isinstance(r.get("t"), int | float)
        ]
        offsets = [
            float(r[WALL_TIME]) - float(r["t"])
            for r in rows
            if isinstance(r.get(WALL_TIME), int | float)
        ]
        out.append((name, rows, statistics.median(offsets) if offsets else None))
    return out


def diagnose(traces: Mapping[str, Iterable[Record]]) -> Report:
    """Findings for every pair of users the traces mention.

    ``traces`` maps a trace's name (its file, say) to its records; a client trace and a
    relay trace may be given in any number and any combination.
    """
    aligned = _aligned(traces)
    known = [offset for _, _, offset in aligned if offset is not None]
    fallback = statistics.median(known) if known else 0.0
    clients: dict[str, list[_Client]] = {}
    relay = _Relay()
    summaries: list[TraceSummary] = []
    for name, rows, offset in aligned:
        shift = fallback if offset is None else offset
        by_user: dict[str | None, list[tuple[float, Record]]] = {}
        for r in rows:
            user = r.get("user")
            by_user.setdefault(user if isinstance(user, str) else None, []).append(
                (float(r["t"]) + shift, r)
            )
        for user, recs in by_user.items():  # each has a record at least
            recs.sort(key=lambda x: x[0])
            closed = None
            if user is None:
                _read_relay(relay, name, recs)
            else:
                c = _read_client(name, user, recs)
                clients.setdefault(user, []).append(c)
                closed = c.closed
            kind = "relay" if user is None else "client"
            summaries.append(
                TraceSummary(name, kind, user, len(recs), recs[0][0], recs[-1][0], closed)
            )
    origin = min((s.start for s in summaries), default=0.0)
    summaries = [attrs.evolve(s, start=s.start - origin, end=s.end - origin) for s in summaries]
    relay.index()
    world = _World(clients, relay, origin)
    findings = [_finding(world, a, b) for a, b in _pairs(world)]
    paired = {u for f in findings for u in f.pair}
    for user in sorted(_traced_or_admitted(world) - paired):
        findings.append(_alone(world, user))
    return Report(tuple(findings), tuple(summaries))


def _finding(world: _World, a: str, b: str) -> Finding:
    world.walking, world.notes = (a, b), []
    verdict, step, cause = _pair(world, a, b)  # a < b: a is the initiator
    for note in dict.fromkeys(world.notes):
        cause += ("; " if cause else "") + note
    missing = tuple(u for u in (a, b) if u not in world.clients)
    if not world.relay:
        missing += ("relay",)
    if verdict == "stopped":
        absent = [u for u in (a, b) if u not in world.clients]
        if absent and "no trace from" not in cause:
            cause += f" (no trace from {' or '.join(absent)})"
    return Finding((a, b), verdict, step, cause, missing, _timeline(world, a, b))


def _traced_or_admitted(world: _World) -> set[str]:
    users = set(world.clients)
    users |= {c.user for c in world.relay.conns.values() if c.user is not None}
    return users


def _mentioned(world: _World) -> dict[str, set[str]]:
    """For each user, the users some trace puts in contact with it."""
    contact: dict[str, set[str]] = {}

    def link(a: str, b: str) -> None:
        if a != b:
            contact.setdefault(a, set()).add(b)
            contact.setdefault(b, set()).add(a)

    for user, traces in world.clients.items():
        contact.setdefault(user, set())
        for c in traces:
            for other in c.seen:
                link(user, other)
            for sent in c.sent:
                link(user, str(sent.frame.get("toUserId")))
            for got in c.received:
                link(user, str(got.frame.get("fromUserId")))
    by_room: dict[str, list[_Conn]] = {}
    for conn in world.relay.conns.values():
        # in one room (or refused while trying to join it)
        if conn.user and conn.room is not None and (conn.admitted is not None or conn.refused):
            by_room.setdefault(conn.room, []).append(conn)
    for members in by_room.values():
        for x, y in itertools.combinations(members, 2):
            if x.user and y.user:
                link(x.user, y.user)
    for sender, target in world.relay.by_route:
        if sender and isinstance(target, str):
            link(sender, target)
    return contact


def _pairs(world: _World) -> list[tuple[str, str]]:
    contact = _mentioned(world)
    pairs = {tuple(sorted((a, b))) for a, others in contact.items() for b in others}
    traced = sorted(world.clients)
    pairs |= {(a, b) for a, b in itertools.combinations(traced, 2)}
    # users alone in their rooms whose room names look alike (a typo): pair them too
    alone = sorted(u for u in _traced_or_admitted(world) if not contact.get(u))
    for a, b in itertools.combinations(alone, 2):
        ra, rb = _rooms_of(world, a), _rooms_of(world, b)
        if ra and rb and _similar(ra[0], rb[0]):
            pairs.add((a, b))
    return sorted((a, b) for a, b in pairs)


def _similar(a: str, b: str) -> bool:
    return a.casefold() == b.casefold() or difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def _alone(world: _World, user: str) -> Finding:
    c = world.client(user)
    rooms = _rooms_of(world, user)
    missing = () if c is not None else (user,)
    refused = _refusal(world, user)
    if refused is not None:
        at, code, message = refused
        return Finding(
            (user,),
            "stopped",
            "join",
            f"{user}'s join was refused by the server at {world.rel(at)}: {code} ({message})",
            missing,
        )
    if c is not None and not c.admitted and c.connect_failed and not c.server_up:
        return Finding(
            (user,),
            "stopped",
            "join",
            f"{user} never reached the relay: {c.connect_failed[0][1]}",
            missing,
        )
    where = f"room {rooms[0]!r}" if rooms else "no room"
    return Finding((user,), "stopped", "room", f"nobody else was in {where} with {user}", missing)
