"""Reading traces: where did each pair stop, and why?

:func:`diagnose` takes the trace records of any number of clients (each record has a
``user``) and, optionally, of the relay (records without ``user``), and answers the
seed's debug list for every pair of users it saw: did they connect, and if not, the
step where the flow stopped and the likely cause. It reads only what the machines
recorded; it never guesses past the first missing step.

The steps, in order (``i`` is the initiator, the lower id; ``p`` the polite side):

1. both admitted by the server (else: *rejected by the server with code X*);
2. both in the same room at once (else: *the target never joined the room*);
3. ``i`` sent an offer to ``p`` (else: *offer never sent*);
4. the relay delivered it (else: *offer not relayed: target not in the room*, or
   *dropped by the relay*);
5. ``p`` sent an answer, and ``i`` received and applied it (else: *answer never
   sent* / *answer never arrived* / *answer never applied*);
6. both sides had candidates (else: *no candidates from X: no usable address and no
   STUN/TURN server*) and none were dropped;
7. ICE connected (else: *no usable candidate pair*, or *connection failed after ICE*),
   unless the peer left first (*peer left mid-way*).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

Record = Mapping[str, Any]


@attrs.frozen
class Finding:
    """What the traces say about one pair."""

    pair: tuple[str, str]
    connected: bool
    step: str
    cause: str

    def line(self) -> str:
        """One readable line."""
        a, b = self.pair
        if self.connected:
            return f"{a} ↔ {b}: connected"
        return f"{a} ↔ {b}: stopped at {self.step}: {self.cause}"


def _frame(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@attrs.define
class _User:
    """What one client's trace says."""

    name: str
    rooms: list[str] = attrs.field(factory=list)
    seen: set[str] = attrs.field(factory=set)
    left: set[str] = attrs.field(factory=set)
    connected: set[str] = attrs.field(factory=set)
    failed_states: dict[str, list[str]] = attrs.field(factory=dict)
    refused: list[str] = attrs.field(factory=list)
    peer_not_found: list[str] = attrs.field(factory=list)
    sent: dict[tuple[str, str], list[dict[str, Any]]] = attrs.field(factory=dict)
    received: dict[tuple[str, str], list[dict[str, Any]]] = attrs.field(factory=dict)
    answers_applied: set[str] = attrs.field(factory=set)
    dropped: dict[str, list[str]] = attrs.field(factory=dict)


def _read(records: Iterable[Record]) -> tuple[dict[str, _User], list[Record]]:
    users: dict[str, _User] = {}
    relay: list[Record] = []
    for r in records:
        name = r.get("user")
        if not isinstance(name, str):
            relay.append(r)
            continue
        u = users.setdefault(name, _User(name))
        kind, peer = r.get("kind"), r.get("peer_id", r.get("peer"))
        if kind == "RoomJoined":
            u.rooms.append(str(r.get("room_id")))
        elif kind == "PeerJoined":
            u.seen.add(str(peer))
        elif kind == "PeerLeft":
            u.left.add(str(peer))
        elif kind == "PeerConnected":
            u.connected.add(str(peer))
        elif kind == "ConnectionStateChanged" and isinstance(peer, str):
            u.failed_states.setdefault(peer, []).append(str(r.get("state")))
        elif kind == "ServerErrorReceived":
            if r.get("channel") == "webrtc-dashboard-rooms":
                u.refused.append(str(r.get("code")))
            elif r.get("code") == "peer-not-found":
                u.peer_not_found.append(str(r.get("message")))
        elif kind == "SendToServer":
            f = _frame(r.get("text"))
            if isinstance(f.get("toUserId"), str):
                u.sent.setdefault((f["toUserId"], str(f.get("type"))), []).append(f)
        elif kind == "ServerFrameReceived":
            f = _frame(r.get("text"))
            if isinstance(f.get("fromUserId"), str) and f.get("channel") == "webrtc-signaling":
                u.received.setdefault((f["fromUserId"], str(f.get("type"))), []).append(f)
        elif kind == "RemoteDescriptionApplied" and r.get("before") == "applying-answer":
            u.answers_applied.add(str(peer))
        elif kind == "Log" and "dropped" in str(r.get("message")):
            args = r.get("args") or []
            if args and isinstance(args[0], str):
                u.dropped.setdefault(args[0], []).append(str(r.get("message")) % tuple(args))
    return users, relay


def _relay_dropped(relay: list[Record], sender: str, target: str, type_: str) -> bool | None:
    """Whether the relay received a ``type_`` from ``sender`` to ``target`` and sent it
    nowhere; ``None`` without a relay trace."""
    if not relay:
        return None
    got = sum(
        1
        for r in relay
        if r.get("kind") == "FrameReceived"
        and (f := _frame(r.get("data"))).get("type") == type_
        and f.get("toUserId") == target
    )
    sent = sum(
        1
        for r in relay
        if r.get("kind") == "SendFrame"
        and (f := _frame(r.get("text"))).get("type") == type_
        and f.get("fromUserId") == sender
        and f.get("toUserId") == target
    )
    return got > 0 and sent == 0


def _candidates(frames: list[dict[str, Any]], key: str) -> int:
    return sum(str((f.get(key) or {}).get("sdp", "")).count("a=candidate:") for f in frames)


def _pair(i: _User, p: _User, relay: list[Record]) -> tuple[str, str]:
    """``(step, cause)`` where the pair (initiator ``i``, polite ``p``) stopped."""
    for u in (i, p):
        if u.refused:
            return "join", f"{u.name} was rejected by the server with code {u.refused[-1]}"
    if p.name not in i.seen and i.name not in p.seen:
        rooms = f"{i.name} joined {i.rooms or 'no room'}, {p.name} joined {p.rooms or 'no room'}"
        return "room", f"the target never joined the room ({rooms})"
    offers = i.sent.get((p.name, "webrtc-offer"), [])
    if not offers:
        return "offer", f"offer never sent: {i.name} never made an offer for {p.name}"
    received = p.received.get((i.name, "webrtc-offer"), [])
    if not received:
        if i.peer_not_found:
            return "offer relay", f"offer not relayed: {p.name} was not in {i.name}'s room"
        if _relay_dropped(relay, i.name, p.name, "webrtc-offer"):
            return "offer relay", "offer dropped by the relay (received, never forwarded)"
        return "offer relay", f"offer sent by {i.name} never reached {p.name}"
    answers = p.sent.get((i.name, "webrtc-answer"), [])
    if not answers:
        return "answer", f"answer never sent: {p.name} got the offer but did not answer"
    if not i.received.get((p.name, "webrtc-answer")):
        if _relay_dropped(relay, p.name, i.name, "webrtc-answer"):
            return "answer relay", "answer dropped by the relay (received, never forwarded)"
        return "answer relay", f"answer sent by {p.name} never reached {i.name}"
    if p.name not in i.answers_applied:
        return "answer", f"answer never applied by {i.name}"
    for u, frames, key in ((i, offers, "offer"), (p, answers, "answer")):
        trickled = sum(
            1
            for f in u.sent.get((p.name if u is i else i.name, "webrtc-ice"), [])
            if f.get("candidate")
        )
        if _candidates(frames, key) == 0 and trickled == 0:
            return "candidates", (
                f"no candidates from {u.name}: no usable address and no STUN/TURN server"
            )
    for u, other in ((i, p), (p, i)):
        if u.dropped.get(other.name) and any("candidate" in d for d in u.dropped[other.name]):
            return "candidates", f"candidates from {other.name} arrived and were dropped"
    for u, other in ((i, p), (p, i)):
        if other.name in u.left and other.name not in u.connected:
            return "peer left", f"peer left mid-way: {other.name} left before connecting"
    for u, other in ((i, p), (p, i)):
        states = u.failed_states.get(other.name, [])
        if "failed" in states or "closed" in states:
            if "connected" in states:
                return "ice", "connection failed after ICE had connected"
            return "ice", "no usable candidate pair: ICE failed"
    return "ice", "ICE never finished (no failure recorded before the trace ends)"


def diagnose(records: Iterable[Record]) -> list[Finding]:
    """Findings for every pair of users in the traces."""
    users, relay = _read(records)
    findings = []
    for a, b in itertools.combinations(sorted(users), 2):
        ua, ub = users[a], users[b]
        if b in ua.connected and a in ub.connected:
            findings.append(Finding((a, b), True, "connected", "connected"))
            continue
        stop = _pair(ua, ub, relay)  # a < b: a is the initiator
        findings.append(Finding((a, b), False, stop[0], stop[1]))
    return findings
