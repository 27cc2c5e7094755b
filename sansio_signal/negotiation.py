"""Per-peer negotiation: one state machine per remote peer.

Theory of operation
-------------------
Two peers in a room agree, without talking, on who does what: the **initiator** is the
lower ``userId`` (plain string comparison, :func:`initiator_of`) and makes the offers;
the other side is **polite**. This is the seed's rule and the "impolite/polite" split of
W3C perfect negotiation at once.

A :class:`PeerNegotiation` drives one RTCPeerConnection at a time through JSEP. Its
state (:class:`NegState`) is the signaling state we *asked* for plus what we wait for:

``IDLE``            nothing negotiated on this connection yet (polite: waiting for an offer)
``MAKING_OFFER``    ``CreateOffer`` issued; waiting for the local description
``HAVE_LOCAL_OFFER`` offer sent; waiting for the answer
``APPLYING_ANSWER`` ``SetRemoteDescription(answer)`` issued
``APPLYING_OFFER``  ``SetRemoteDescription(offer)`` issued
``MAKING_ANSWER``   ``CreateAnswer`` issued
``STABLE``          offer/answer done; ICE connects (or is connected) on its own
``WAITING``         initiator only: the connection was closed after a failure, a fresh
                    one is made when the back-off deadline passes
``FAILED``          retries exhausted; a new request from either side starts over
``CLOSED``          the peer left (terminal)

Every input is one of :class:`Input`, and ``_TABLE`` maps ``(state, input)`` to the
handler. A pair missing from the table is an error naming both: a
:class:`~.errors.RemoteProtocolError` when the input came from the peer (the client
machine drops the frame and reports it), a :class:`~.errors.LocalProtocolError` when it
came from our own adapter (a bug).

**Epochs.** Every signaling frame carries the pair's ``epoch``. The initiator owns it:
it starts at 0 and goes up by one each time the initiator replaces the peer connection
(close-and-recreate). Before the table is consulted, frames from another epoch are
filtered: older ones are stale and dropped; a newer *offer* tells the polite side that
the initiator started over, so it closes its connection and follows. Results from our
own adapter name the connection by a handle (``pc``) that is never reused, so results
from a replaced connection are recognised by the client machine and dropped.

**Sessions.** Epochs restart at 0 when a member leaves and joins again, so frames the
old incarnation of a pair still had on the way could pass for current ones. Each
:class:`PeerNegotiation` therefore has a ``session`` name, sent as ``sid`` on every
frame, and echoes the peer's as ``rsid`` once known. A frame addressed to another
session of ours is dropped. A frame from a new session of theirs that names none of ours
(no ``rsid``) means their side started the pair over — it saw us leave and come back,
say, while we kept the pair through a resume — so we start over too: the connection
goes and the pair begins again at their epoch (``_start_over``).

**Trickle ICE.** Remote candidates are applied only when a remote description is in
place and no ``SetRemoteDescription`` is in flight; otherwise they are buffered and
flushed, in order, right after the description is applied (aiortc silently drops
early candidates). Local candidates gathered before our offer or answer is sent are
held back and sent right after it.

**Glare and renegotiation.** Only the initiator offers, unless this side can roll
back (browsers): then the polite side may offer too, and when offers cross, the
initiator ignores the polite offer while the polite side rolls back and answers —
perfect negotiation. A polite side that cannot roll back (aiortc) never offers; it sends
``webrtc-renegotiate`` and the initiator makes the offer.

**Recovery.** A failed connection, a negotiation or connection attempt past its
deadline, or a failed operation counts as one attempt. The initiator restarts ICE when
both sides can (capabilities travel with offers and answers as ``caps``); otherwise it
closes the connection, waits a jittered exponential back-off, and offers on a fresh
connection with the next epoch. The polite side reports the failure with
``webrtc-renegotiate`` (``reason: "failed"``) and waits. After ``max_retries``
attempts without a connection the peer is given up (:class:`~.actions.PeerFailed`).
A polite side that hears no offer in time asks for one (``reason: "no-offer"``).

Each peer has at most one deadline at a time (``deadline``, ``deadline_kind``); the
client machine keeps them in its :class:`~.timers.Timers` and calls :meth:`on_timer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum, StrEnum
from typing import Any

import attrs

from .actions import (
    AddIceCandidate,
    ClientAction,
    ClosePeer,
    CreateAnswer,
    CreateOffer,
    CreatePeer,
    Log,
    LogLevel,
    PeerConnected,
    PeerConnecting,
    PeerFailed,
    RollbackLocalDescription,
    SendToServer,
    SetRemoteDescription,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .wire import (
    Answer,
    Ice,
    IceCandidate,
    JSONValue,
    Offer,
    PairFields,
    Renegotiate,
    SessionDescription,
    Signal,
)

MAX_BUFFERED_CANDIDATES = 512
"""Remote candidates held for one peer before the oldest are dropped."""


@attrs.frozen
class RemoteOffer:
    """An offer from the peer and its duplicate-detection ``key``: ``#SEQ`` when the
    sender numbers its offers (``seq``), else the SDP itself. (aiortc makes byte-equal
    offers when renegotiating without a change, so the SDP alone cannot tell a
    duplicated frame from a new offer.)"""

    description: SessionDescription
    key: str


def initiator_of(a: str, b: str) -> str:
    """The user id that makes the offer for the pair ``(a, b)``: the lower one."""
    return a if a < b else b


class Role(Enum):
    """Our side of a pair."""

    INITIATOR = "initiator"
    POLITE = "polite"


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a peer-connection implementation can do (declared by its adapter)."""

    rollback: bool
    ice_restart: bool
    trickle: bool

    def to_wire(self) -> list[JSONValue]:
        """The ``caps`` field sent with offers and answers."""
        names = (
            ("rollback", self.rollback),
            ("ice-restart", self.ice_restart),
            ("trickle", self.trickle),
        )
        return [name for name, has in names if has]

    @classmethod
    def from_wire(cls, value: Iterable[str] | None) -> Capabilities:
        """Read a (validated) ``caps`` field; a missing name means "cannot"."""
        names = set(value or ())
        return cls(
            rollback="rollback" in names,
            ice_restart="ice-restart" in names,
            trickle="trickle" in names,
        )


NO_CAPABILITIES = Capabilities(rollback=False, ice_restart=False, trickle=False)
AIORTC = Capabilities(rollback=False, ice_restart=False, trickle=False)
"""aiortc 1.x: no rollback, no ICE restart, no outgoing trickle (see FIELD-NOTES)."""
BROWSER = Capabilities(rollback=True, ice_restart=True, trickle=True)
"""A current browser's RTCPeerConnection."""


@attrs.frozen(kw_only=True)
class NegotiationConfig:
    """Deadlines (seconds) and the retry policy."""

    negotiation_timeout: float = 10.0
    """From starting an offer (or applying a remote one) to a stable state."""
    connect_timeout: float = 15.0
    """From a stable state to ``connected``."""
    offer_wait: float = 5.0
    """Polite side: how long to wait for an offer before asking for one."""
    disconnected_grace: float = 5.0
    """How long ``disconnected`` may last before it counts as a failure."""
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_retries: int = 5

    def backoff(self, attempt: int, jitter: float) -> float:
        """Delay before retry number ``attempt`` (1-based); ``jitter`` in [0, 1)."""
        raw = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempt - 1))
        return float(raw * (0.5 + jitter / 2))


class NegState(Enum):
    """Where a pair's negotiation stands (see the module docstring)."""

    IDLE = "idle"
    MAKING_OFFER = "making-offer"
    HAVE_LOCAL_OFFER = "have-local-offer"
    APPLYING_ANSWER = "applying-answer"
    APPLYING_OFFER = "applying-offer"
    MAKING_ANSWER = "making-answer"
    STABLE = "stable"
    WAITING = "waiting"
    FAILED = "failed"
    CLOSED = "closed"


class Link(Enum):
    """The current peer connection's ``connectionState``, as far as we care."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


class Deadline(StrEnum):
    """What a pair's one deadline is for (its value is the name traces and the browser
    client use)."""

    NEGOTIATION = "negotiation"
    """An exchange started (offer made or taken) must be stable by then."""
    CONNECT = "connect"
    """Stable, the connection must be ``connected`` by then."""
    OFFER_WAIT = "offer-wait"
    """Polite side: the initiator's offer is due by then (else we ask for one)."""
    RECOVERY = "recovery"
    """Polite side: after reporting a failure, the initiator's new offer is due by then."""
    BACKOFF = "backoff"
    """Initiator: the back-off before offering on a fresh connection ends then."""
    DISCONNECTED = "disconnected"
    """A ``disconnected`` connection must be back by then."""


class Input(Enum):
    """Everything that can happen to a pair."""

    START = "start"
    REMOTE_OFFER = "remote-offer"
    REMOTE_ANSWER = "remote-answer"
    REMOTE_CANDIDATE = "remote-candidate"
    REMOTE_RENEGOTIATE = "remote-renegotiate"
    LOCAL_DESCRIPTION = "local-description"
    REMOTE_APPLIED = "remote-applied"
    CANDIDATE_GATHERED = "candidate-gathered"
    CONNECTION_STATE = "connection-state"
    OPERATION_FAILED = "operation-failed"
    RENEGOTIATE_REQUESTED = "renegotiate-requested"
    TIMER = "timer"
    CLOSE = "close"

    @property
    def remote(self) -> bool:
        """Whether this input comes from the peer (a frame) rather than our side."""
        return self in _REMOTE_INPUTS


_REMOTE_INPUTS = frozenset(
    {Input.REMOTE_OFFER, Input.REMOTE_ANSWER, Input.REMOTE_CANDIDATE, Input.REMOTE_RENEGOTIATE}
)
_HOLD_LOCAL = (NegState.MAKING_OFFER, NegState.APPLYING_OFFER, NegState.MAKING_ANSWER)

Actions = list[ClientAction]


class PeerNegotiation:
    """The negotiation with one remote peer. See the module docstring.

    ``new_pc`` hands out fresh peer-connection handles; ``jitter`` returns a float in
    [0, 1) for back-off (inject a seeded source for replayable runs); ``session`` names
    this incarnation of the pair on our side (unique for the client's lifetime).
    """

    def __init__(
        self,
        *,
        our_id: str,
        peer_id: str,
        capabilities: Capabilities,
        config: NegotiationConfig,
        new_pc: Callable[[], int],
        jitter: Callable[[], float],
        session: str,
    ) -> None:
        if our_id == peer_id:
            raise LocalProtocolError(f"a peer negotiation with ourselves ({our_id!r})")
        self.our_id = our_id
        self.peer_id = peer_id
        self.role = Role.INITIATOR if initiator_of(our_id, peer_id) == our_id else Role.POLITE
        self.capabilities = capabilities
        self.remote_capabilities = NO_CAPABILITIES
        self.session = session
        self.remote_session: str | None = None
        self.remote_epochless = False
        self.config = config
        self._new_pc = new_pc
        self._jitter = jitter
        self.state = NegState.IDLE
        self.epoch = 0
        self.pc: int | None = None
        self.link = Link.NEW
        self.attempts = 0
        self.deadline: float | None = None
        self.deadline_kind: Deadline | None = None
        self.pending_renegotiation = False
        self.remote_buffer: list[IceCandidate | None] = []
        self.offers_sent = 0
        """Offers sent in this session; each carries its number as ``seq``."""
        self._reset_connection_state()

    def _reset_connection_state(self) -> None:
        """Everything that belongs to one peer connection (remote candidates that
        arrived before it was made are kept: they belong to the same epoch)."""
        self.has_remote = False
        self.remote_ended = False
        self.local_buffer: list[IceCandidate | None] = []
        self.abandoned_offers = 0
        self.last_remote_offer: str | None = None
        self.queued_offer: RemoteOffer | None = None
        self.notified_connected = False

    # ------------------------------------------------------------------ inputs

    @property
    def is_initiator(self) -> bool:
        """Whether we make the offers for this pair."""
        return self.role is Role.INITIATOR

    def start(self, now: float) -> Actions:
        """The peer is in our room: begin."""
        return self._dispatch(Input.START, now, None)

    def close(self, now: float) -> Actions:
        """The peer left (or we did): close everything."""
        return self._dispatch(Input.CLOSE, now, None)

    def request_renegotiation(self, now: float) -> Actions:
        """The application changed what it sends to this peer."""
        return self._dispatch(Input.RENEGOTIATE_REQUESTED, now, None)

    def on_timer(self, now: float) -> Actions:
        """Our deadline passed."""
        return self._dispatch(Input.TIMER, now, None)

    def on_local_description(self, description: SessionDescription, now: float) -> Actions:
        """``CreateOffer``/``CreateAnswer`` finished on the current connection."""
        return self._dispatch(Input.LOCAL_DESCRIPTION, now, description)

    def on_remote_applied(self, now: float) -> Actions:
        """``SetRemoteDescription`` finished on the current connection."""
        return self._dispatch(Input.REMOTE_APPLIED, now, None)

    def on_candidate_gathered(self, candidate: IceCandidate | None, now: float) -> Actions:
        """The current connection gathered a local candidate (``None``: done)."""
        return self._dispatch(Input.CANDIDATE_GATHERED, now, candidate)

    def on_connection_state(self, state: str, now: float) -> Actions:
        """The current connection's ``connectionState`` changed."""
        return self._dispatch(Input.CONNECTION_STATE, now, state)

    def on_operation_failed(self, operation: str, error: str, now: float) -> Actions:
        """An operation on the current connection raised."""
        return self._dispatch(Input.OPERATION_FAILED, now, (operation, error))

    def on_signal(self, message: Signal, now: float) -> Actions:
        """A signaling frame from the peer (already known to come from ``peer_id``)."""
        pair = message.pair  # a malformed field raises WireError, a RemoteProtocolError
        if message.fields.get("epoch") is None:  # absent or null: a peer without epochs
            self.remote_epochless = True
        stale = self._stale(message, pair)
        if stale is not None:
            return [self._log(LogLevel.DEBUG, "dropped %s: %s", message.TYPE, stale)]
        actions: Actions = []
        sid = pair.sid
        epoch = pair.epoch
        if sid is not None and sid != self.remote_session:
            restarted = self.remote_session is not None
            self.remote_session = sid
            if restarted:  # a new session of theirs, which knows none of ours
                actions = self._start_over(epoch, now)
        if isinstance(message, Offer | Answer) and pair.caps is not None:
            self.remote_capabilities = Capabilities.from_wire(pair.caps)
        if isinstance(message, Offer):
            if epoch > self.epoch:
                actions += self._follow(epoch, f"epoch {epoch}")
            key = f"#{pair.seq}" if pair.seq is not None else message.description.sdp
            offer = RemoteOffer(message.description, key)
            return actions + self._dispatch(Input.REMOTE_OFFER, now, offer)
        if isinstance(message, Answer):
            return actions + self._dispatch(Input.REMOTE_ANSWER, now, message.description)
        if isinstance(message, Ice):
            return actions + self._dispatch(Input.REMOTE_CANDIDATE, now, message.candidate)
        return actions + self._dispatch(Input.REMOTE_RENEGOTIATE, now, pair.reason)

    def _stale(self, message: Signal, pair: PairFields) -> str | None:
        """Why ``message`` belongs to another session or epoch (``None``: it is current).

        Sessions tell apart the incarnations of a pair: when a member leaves and joins
        again, both sides start a fresh negotiation at epoch 0, and frames the old
        incarnation still had on the way would otherwise look current. Each side sends
        its own ``sid`` and, once known, the ``rsid`` it expects of the other.
        """
        rsid, sid, epoch = pair.rsid, pair.sid, pair.epoch
        if rsid is not None and rsid != self.session:
            return f"addressed to our earlier session {rsid}"
        new_session = sid is not None and sid != self.remote_session
        if new_session and self.remote_session is not None:
            if rsid is None:
                return None  # their side started the pair over: so do we (_start_over)
            return f"from their earlier session {sid}"
        if epoch < self.epoch:
            return f"stale epoch {epoch} (ours is {self.epoch})"
        if epoch > self.epoch:
            if not isinstance(message, Offer):
                return f"future epoch {epoch} (ours is {self.epoch})"
            if self.is_initiator:
                raise RemoteProtocolError(
                    f"offer of epoch {epoch} from {self.peer_id!r}, ahead of the "
                    f"initiator's epoch {self.epoch}"
                )
        return None

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, kind: Input, now: float, payload: Any) -> Actions:
        handler = _TABLE.get((self.state, kind))
        if handler is None:
            detail = (
                f"peer {self.peer_id!r}: input {kind.value} is not allowed in state "
                f"{self.state.value}"
            )
            if kind.remote:
                raise RemoteProtocolError(detail)
            raise LocalProtocolError(detail)
        before = self.state
        actions = handler(self, now, payload)
        if self.state not in NEXT_STATES[(before, kind)]:
            raise LocalProtocolError(  # the table below is wrong: a bug here, not a caller's
                f"peer {self.peer_id!r}: {kind.value} in {before.value} led to "
                f"{self.state.value}, which the transition table does not list"
            )
        return actions

    # ------------------------------------------------------------------ helpers

    def _log(self, level: LogLevel, message: str, *args: Any) -> Log:
        return Log(level=level, message=f"[%s] {message}", args=(self.peer_id, *args))

    def _set_deadline(self, when: float | None, kind: Deadline | None) -> None:
        self.deadline, self.deadline_kind = when, kind

    def _send(self, message: Signal) -> SendToServer:
        return SendToServer(message=message, peer_id=self.peer_id)

    def _signal_fields(self, **extra: JSONValue) -> dict[str, JSONValue]:
        fields: dict[str, JSONValue] = {**extra, "epoch": self.epoch, "sid": self.session}
        if self.remote_session is not None:
            fields["rsid"] = self.remote_session
        return fields

    def _next_epoch(self) -> None:
        """Initiator: the epoch of a fresh connection. A peer that sends no epochs
        (PROTOCOL.md: absent counts as 0) could never follow a bump, so with it every
        connection stays at epoch 0."""
        self.epoch = 0 if self.remote_epochless else self.epoch + 1

    def _both_restart(self) -> bool:
        return self.capabilities.ice_restart and self.remote_capabilities.ice_restart

    def _may_offer(self) -> bool:
        return self.is_initiator or self.capabilities.rollback

    def _open_pc(self) -> Actions:
        """A fresh peer connection for the current epoch."""
        self.pc = self._new_pc()
        self.link = Link.NEW
        self._reset_connection_state()
        return [
            CreatePeer(peer_id=self.peer_id, pc=self.pc, initiator=self.is_initiator),
            PeerConnecting(peer_id=self.peer_id, epoch=self.epoch),
        ]

    def _close_pc(self) -> Actions:
        """Close the current connection; candidates held for it go with it."""
        pc, self.pc = self.pc, None
        self._reset_connection_state()
        self.remote_buffer = []
        return [] if pc is None else [ClosePeer(peer_id=self.peer_id, pc=pc)]

    def _start_over(self, epoch: int, now: float) -> Actions:
        """The peer started our pair over (a new session of theirs, e.g. after the server
        let one of us go and took it back, or restarted): drop the connection and begin
        again as on ``start``, at their epoch."""
        actions = self._close_pc()
        self.epoch, self.attempts = epoch, 0
        self.pending_renegotiation = False
        self.state = NegState.IDLE
        self._set_deadline(None, None)
        actions.append(self._log(LogLevel.INFO, "the peer started our pair over"))
        return actions + self._dispatch(Input.START, now, None)

    def _follow(self, epoch: int, why: str) -> Actions:
        """Polite side: the initiator started over with a fresh connection."""
        actions = self._close_pc()
        self.epoch = epoch
        if self.state is NegState.FAILED:
            self.attempts = 0  # the initiator started over: so do we
        self.state = NegState.IDLE
        actions.append(self._log(LogLevel.INFO, "following the initiator to %s", why))
        return actions

    def _make_offer(self, now: float, *, ice_restart: bool = False) -> Actions:
        actions = self._open_pc() if self.pc is None else []
        assert self.pc is not None
        self.pending_renegotiation = False
        self.state = NegState.MAKING_OFFER
        self._set_deadline(now + self.config.negotiation_timeout, Deadline.NEGOTIATION)
        actions.append(CreateOffer(peer_id=self.peer_id, pc=self.pc, ice_restart=ice_restart))
        actions.append(
            self._log(
                LogLevel.INFO,
                "Creating offer for peer: %s (epoch %d%s)",
                self.peer_id,
                self.epoch,
                ", ICE restart" if ice_restart else "",
            )
        )
        return actions

    def _ask_for_offer(self, reason: str) -> SendToServer:
        return self._send(
            Renegotiate(to_user_id=self.peer_id, fields=self._signal_fields(reason=reason))
        )

    def _flush_remote(self) -> Actions:
        assert self.pc is not None
        pc, buffered, self.remote_buffer = self.pc, self.remote_buffer, []
        self.has_remote, self.remote_ended = True, False
        actions: Actions = []
        for candidate in buffered:
            actions += self._add_remote(pc, candidate)
        return actions

    def _add_remote(self, pc: int, candidate: IceCandidate | None) -> Actions:
        if self.remote_ended:
            return [self._log(LogLevel.DEBUG, "dropped a candidate after end-of-candidates")]
        if candidate is None or candidate.candidate == "":
            self.remote_ended = True
        return [AddIceCandidate(peer_id=self.peer_id, pc=pc, candidate=candidate)]

    def _flush_local(self) -> Actions:
        buffered, self.local_buffer = self.local_buffer, []
        return [self._send_candidate(c) for c in buffered]

    def _send_candidate(self, candidate: IceCandidate | None) -> SendToServer:
        wire = None if candidate is None else candidate.to_json()
        return self._send(Ice(to_user_id=self.peer_id, fields=self._signal_fields(candidate=wire)))

    def _after_stable(self, now: float) -> Actions:
        """Reached STABLE: arm the connect deadline and run what was put off."""
        self.state = NegState.STABLE
        if self.link is Link.CONNECTED:
            self._set_deadline(None, None)
        else:
            self._set_deadline(now + self.config.connect_timeout, Deadline.CONNECT)
        if self.queued_offer is not None:
            offer, self.queued_offer = self.queued_offer, None
            return self._on_remote_offer(now, offer)
        if not self.pending_renegotiation:
            return []
        if self._may_offer():
            return self._make_offer(now)
        self.pending_renegotiation = False
        return [self._ask_for_offer("renegotiate")]

    def _failure(self, now: float, reason: str) -> Actions:
        """One attempt failed: retry (restart, recreate or ask) or give up."""
        self.attempts += 1
        actions: Actions = [
            self._log(LogLevel.WARNING, "attempt %d failed: %s", self.attempts, reason)
        ]
        if self.attempts > self.config.max_retries:
            return actions + self._give_up(reason)
        keep_pc = (
            self.state is NegState.STABLE
            and self.pc is not None
            and self.has_remote
            and self._both_restart()
        )
        if self.is_initiator:
            if keep_pc:
                return actions + self._make_offer(now, ice_restart=True)
            actions += self._close_pc()
            self.state = NegState.WAITING
            self._set_deadline(
                now + self.config.backoff(self.attempts, self._jitter()), Deadline.BACKOFF
            )
            return actions
        if not keep_pc:
            actions += self._close_pc()
            self.state = NegState.IDLE
        actions.append(self._ask_for_offer("failed"))
        wait = self.config.offer_wait + self.config.backoff(self.attempts, self._jitter())
        self._set_deadline(now + wait, Deadline.RECOVERY)
        return actions

    def _give_up(self, reason: str) -> Actions:
        actions = self._close_pc()
        self.state = NegState.FAILED
        self._set_deadline(None, None)
        return [*actions, PeerFailed(peer_id=self.peer_id, reason=reason)]

    def _revive(self, now: float) -> Actions:
        """From FAILED, on a fresh request: start over with a full retry budget."""
        self.attempts = 0
        if self.is_initiator:
            self._next_epoch()
            return self._make_offer(now)
        self.state = NegState.IDLE
        self._set_deadline(now + self.config.offer_wait, Deadline.OFFER_WAIT)
        return [self._ask_for_offer("renegotiate")]

    # ------------------------------------------------------------------ handlers

    def _on_start(self, now: float, _: None) -> Actions:
        if self.is_initiator:
            return self._make_offer(now)
        self._set_deadline(now + self.config.offer_wait, Deadline.OFFER_WAIT)
        return []

    def _on_local_offer(self, now: float, description: SessionDescription) -> Actions:
        self.state = NegState.HAVE_LOCAL_OFFER
        self.offers_sent += 1
        offer = Offer(
            to_user_id=self.peer_id,
            fields=self._signal_fields(
                offer=description.to_json(),
                caps=self.capabilities.to_wire(),
                seq=self.offers_sent,
            ),
        )
        return [self._send(offer), *self._flush_local()]

    def _on_local_answer(self, now: float, description: SessionDescription) -> Actions:
        answer = Answer(
            to_user_id=self.peer_id,
            fields=self._signal_fields(
                answer=description.to_json(), caps=self.capabilities.to_wire()
            ),
        )
        actions: Actions = [self._send(answer), *self._flush_local()]
        return actions + self._after_stable(now)

    def _on_abandoned_result(self, now: float, payload: Any) -> Actions:
        """The result of an offer we rolled back: it no longer matters."""
        if self.abandoned_offers == 0:
            raise LocalProtocolError(
                f"peer {self.peer_id!r}: input local-description is not allowed in state "
                f"{self.state.value}"
            )
        self.abandoned_offers -= 1
        return []

    def _on_remote_answer(self, now: float, description: SessionDescription) -> Actions:
        assert self.pc is not None
        self.state = NegState.APPLYING_ANSWER
        return [
            SetRemoteDescription(peer_id=self.peer_id, pc=self.pc, description=description),
            self._log(LogLevel.INFO, "Received answer from: %s", self.peer_id),
        ]

    def _on_answer_applied(self, now: float, _: None) -> Actions:
        return self._flush_remote() + self._after_stable(now)

    def _on_remote_offer(self, now: float, offer: RemoteOffer) -> Actions:
        description = offer.description
        if offer.key == self.last_remote_offer:
            return [self._log(LogLevel.DEBUG, "dropped a duplicate offer")]
        actions: Actions = []
        if self.state is NegState.FAILED:
            self.attempts = 0
        if self.pc is None:
            actions += self._open_pc()
        assert self.pc is not None
        self.last_remote_offer = offer.key
        self.state = NegState.APPLYING_OFFER
        self._set_deadline(now + self.config.negotiation_timeout, Deadline.NEGOTIATION)
        actions.append(
            SetRemoteDescription(peer_id=self.peer_id, pc=self.pc, description=description)
        )
        actions.append(
            self._log(LogLevel.INFO, "Received offer from: %s (epoch %d)", self.peer_id, self.epoch)
        )
        return actions

    def _on_glare(self, now: float, offer: RemoteOffer) -> Actions:
        """Offers crossed: the initiator ignores theirs, the polite side yields."""
        if self.is_initiator:
            return [self._log(LogLevel.INFO, "glare: ignoring the polite side's offer")]
        assert self.pc is not None and self.capabilities.rollback, "polite offers need rollback"
        if self.state is NegState.MAKING_OFFER:
            self.abandoned_offers += 1
        self.pending_renegotiation = True  # our own change still needs an exchange
        rollback = RollbackLocalDescription(peer_id=self.peer_id, pc=self.pc)
        self.local_buffer.clear()
        self.state = NegState.STABLE
        return [
            rollback,
            self._log(LogLevel.INFO, "glare: rolling back our offer"),
            *self._on_remote_offer(now, offer),
        ]

    def _on_offer_while_busy(self, now: float, offer: RemoteOffer) -> Actions:
        """An offer while we apply an answer (the peer answered, then offered at once):
        it is applied as soon as we are stable. During our own answer it is an error."""
        queued = None if self.queued_offer is None else self.queued_offer.key
        if offer.key in (self.last_remote_offer, queued):
            return [self._log(LogLevel.DEBUG, "dropped a duplicate offer")]
        if self.state is not NegState.APPLYING_ANSWER or self.queued_offer is not None:
            raise RemoteProtocolError(
                f"peer {self.peer_id!r}: input remote-offer is not allowed in state "
                f"{self.state.value}"
            )
        self.queued_offer = offer
        return []

    def _on_offer_applied(self, now: float, _: None) -> Actions:
        assert self.pc is not None
        actions = self._flush_remote()
        self.state = NegState.MAKING_ANSWER
        actions.append(CreateAnswer(peer_id=self.peer_id, pc=self.pc))
        return actions

    def _on_remote_candidate(self, now: float, candidate: IceCandidate | None) -> Actions:
        ready = (
            self.pc is not None
            and self.has_remote
            and self.state not in (NegState.APPLYING_OFFER, NegState.APPLYING_ANSWER)
        )
        if ready:
            assert self.pc is not None
            return self._add_remote(self.pc, candidate)
        if self.state in (NegState.WAITING, NegState.FAILED):
            return [self._log(LogLevel.DEBUG, "dropped a candidate: no connection")]
        self.remote_buffer.append(candidate)
        if len(self.remote_buffer) > MAX_BUFFERED_CANDIDATES:
            del self.remote_buffer[0]
        return []

    def _on_remote_renegotiate(self, now: float, reason: str) -> Actions:
        if not self.is_initiator:
            raise RemoteProtocolError(
                f"peer {self.peer_id!r}: webrtc-renegotiate from the initiator "
                f"(state {self.state.value})"
            )
        if self.state is NegState.FAILED:
            return self._revive(now)
        if self.state is NegState.WAITING:
            return []  # a fresh connection is already on its way
        if self.state is NegState.STABLE:
            if reason == "failed":
                return self._failure(now, "the peer reported its connection failed")
            if reason == "no-offer" and self.link is Link.CONNECTED:
                return []  # crossed our offer; we are connected
            return self._make_offer(now)
        # A negotiation is in flight: it answers a failure report; other requests run
        # once it is done.
        if reason != "failed":
            self.pending_renegotiation = True
        return []

    def _on_gathered(self, now: float, candidate: IceCandidate | None) -> Actions:
        if self.state in _HOLD_LOCAL:
            self.local_buffer.append(candidate)
            return []
        return [self._send_candidate(candidate)]

    def _on_connection_state(self, now: float, state: str) -> Actions:
        if state in ("connected", "completed"):
            self.link = Link.CONNECTED
            self.attempts = 0
            actions: Actions = []
            if self.deadline_kind in (Deadline.CONNECT, Deadline.DISCONNECTED, Deadline.RECOVERY):
                self._set_deadline(None, None)
            if not self.notified_connected:
                self.notified_connected = True
                actions += [
                    PeerConnected(peer_id=self.peer_id, epoch=self.epoch),
                    self._log(LogLevel.INFO, "Connection established with: %s", self.peer_id),
                ]
            return actions
        if state in ("new", "connecting", "checking"):
            self.link = Link.CONNECTING
            return []
        if state == "disconnected":
            self.link = Link.DISCONNECTED
            if self.state is NegState.STABLE:
                self._set_deadline(now + self.config.disconnected_grace, Deadline.DISCONNECTED)
            return []
        self.link = Link.FAILED  # "failed", or "closed" by the remote side
        self.notified_connected = False
        return self._failure(now, f"connection {state}")

    def _on_operation_failed(self, now: float, failure: tuple[str, str]) -> Actions:
        operation, error = failure
        if operation == AddIceCandidate.__name__:
            # One candidate that cannot be added (a peer's malformed line, an mDNS name
            # that does not resolve) loses only itself: the others may still connect.
            return [self._log(LogLevel.WARNING, "candidate not added: %s", error)]
        detail = f"{operation}: {error}"
        if self.abandoned_offers and self.state is NegState.APPLYING_OFFER:
            self.abandoned_offers -= 1  # the offer we rolled back failed; irrelevant
            return []
        return self._failure(now, f"operation failed ({detail})")

    def _on_renegotiate_requested(self, now: float, _: None) -> Actions:
        if self.state is NegState.FAILED:
            return self._revive(now)
        if self.state is NegState.WAITING:
            return []  # the fresh connection negotiates everything anyway
        if self.state is NegState.STABLE:
            if self._may_offer():
                return self._make_offer(now)
            return [self._ask_for_offer("renegotiate")]
        self.pending_renegotiation = True
        return []

    def _on_timer(self, now: float, _: None) -> Actions:
        kind = self.deadline_kind
        if self.deadline is None or now < self.deadline:
            return []
        self._set_deadline(None, None)
        if kind is Deadline.BACKOFF:
            self._next_epoch()
            return self._make_offer(now)
        if kind in (Deadline.OFFER_WAIT, Deadline.RECOVERY):
            self.attempts += 1
            if self.attempts > self.config.max_retries:
                return self._give_up("no offer from the initiator")
            wait = self.config.offer_wait + self.config.backoff(self.attempts, self._jitter())
            self._set_deadline(now + wait, kind)
            return [self._ask_for_offer("no-offer" if kind is Deadline.OFFER_WAIT else "failed")]
        if kind is Deadline.NEGOTIATION:
            return self._failure(now, f"negotiation timed out in {self.state.value}")
        if kind is Deadline.CONNECT:
            return self._failure(now, "not connected in time")
        if kind is Deadline.DISCONNECTED:
            return self._failure(now, "disconnected for too long")
        raise LocalProtocolError(f"peer {self.peer_id!r}: unknown deadline {kind!r}")

    def _on_close(self, now: float, _: None) -> Actions:
        actions = self._close_pc()
        self.state = NegState.CLOSED
        self._set_deadline(None, None)
        return actions


_Handler = Callable[[PeerNegotiation, float, Any], Actions]
_S = NegState
_I = Input
_WITH_PC = (
    _S.MAKING_OFFER,
    _S.HAVE_LOCAL_OFFER,
    _S.APPLYING_ANSWER,
    _S.APPLYING_OFFER,
    _S.MAKING_ANSWER,
    _S.STABLE,
)
_ALIVE = (_S.IDLE, *_WITH_PC, _S.WAITING, _S.FAILED)

_TABLE: dict[tuple[NegState, Input], _Handler] = {
    (_S.IDLE, _I.START): PeerNegotiation._on_start,
    # our own descriptions
    (_S.MAKING_OFFER, _I.LOCAL_DESCRIPTION): PeerNegotiation._on_local_offer,
    (_S.MAKING_ANSWER, _I.LOCAL_DESCRIPTION): PeerNegotiation._on_local_answer,
    (_S.APPLYING_OFFER, _I.LOCAL_DESCRIPTION): PeerNegotiation._on_abandoned_result,
    (_S.APPLYING_ANSWER, _I.REMOTE_APPLIED): PeerNegotiation._on_answer_applied,
    (_S.APPLYING_OFFER, _I.REMOTE_APPLIED): PeerNegotiation._on_offer_applied,
    # the peer's descriptions
    (_S.HAVE_LOCAL_OFFER, _I.REMOTE_ANSWER): PeerNegotiation._on_remote_answer,
    (_S.IDLE, _I.REMOTE_OFFER): PeerNegotiation._on_remote_offer,
    (_S.STABLE, _I.REMOTE_OFFER): PeerNegotiation._on_remote_offer,
    (_S.FAILED, _I.REMOTE_OFFER): PeerNegotiation._on_remote_offer,
    (_S.MAKING_OFFER, _I.REMOTE_OFFER): PeerNegotiation._on_glare,
    (_S.HAVE_LOCAL_OFFER, _I.REMOTE_OFFER): PeerNegotiation._on_glare,
    (_S.APPLYING_ANSWER, _I.REMOTE_OFFER): PeerNegotiation._on_offer_while_busy,
    (_S.APPLYING_OFFER, _I.REMOTE_OFFER): PeerNegotiation._on_offer_while_busy,
    (_S.MAKING_ANSWER, _I.REMOTE_OFFER): PeerNegotiation._on_offer_while_busy,
    # requests for a new exchange
    **{(s, _I.REMOTE_RENEGOTIATE): PeerNegotiation._on_remote_renegotiate for s in _ALIVE},
    **{(s, _I.RENEGOTIATE_REQUESTED): PeerNegotiation._on_renegotiate_requested for s in _ALIVE},
    # candidates, connection state, failures
    **{(s, _I.REMOTE_CANDIDATE): PeerNegotiation._on_remote_candidate for s in _ALIVE},
    **{(s, _I.CANDIDATE_GATHERED): PeerNegotiation._on_gathered for s in _WITH_PC},
    **{(s, _I.CONNECTION_STATE): PeerNegotiation._on_connection_state for s in _WITH_PC},
    **{(s, _I.OPERATION_FAILED): PeerNegotiation._on_operation_failed for s in _WITH_PC},
    # time and the end
    **{(s, _I.TIMER): PeerNegotiation._on_timer for s in _ALIVE},
    **{(s, _I.CLOSE): PeerNegotiation._on_close for s in _ALIVE},
}
"""``(state, input) → handler``; every pair not listed is a protocol error."""

TRANSITIONS = _TABLE
"""The table, public for documentation and tests (treat as read-only)."""


def _recover(state: NegState) -> set[NegState]:
    """Where a failed attempt in ``state`` can lead (see ``_failure``): giving up, the
    initiator's wait before a fresh connection, the polite side's wait for an offer, or
    — from STABLE, when both sides can — an ICE restart offer or a polite wait in place.
    """
    targets = {_S.FAILED, _S.WAITING, _S.IDLE}
    if state is _S.STABLE:
        targets |= {_S.MAKING_OFFER, _S.STABLE}
    return targets


def _next_states(state: NegState, kind: Input) -> frozenset[NegState]:
    """Where ``kind`` may take a pair in ``state`` (each handler picks one)."""
    stay = {state}
    after_stable = {_S.STABLE, _S.MAKING_OFFER, _S.APPLYING_OFFER}  # run what was put off
    if kind is _I.START:
        targets = {_S.MAKING_OFFER, _S.IDLE}
    elif kind is _I.CLOSE:
        targets = {_S.CLOSED}
    elif kind is _I.LOCAL_DESCRIPTION:
        targets = {_S.MAKING_OFFER: {_S.HAVE_LOCAL_OFFER}, _S.MAKING_ANSWER: after_stable}.get(
            state, stay
        )
    elif kind is _I.REMOTE_APPLIED:
        targets = after_stable if state is _S.APPLYING_ANSWER else {_S.MAKING_ANSWER}
    elif kind is _I.REMOTE_ANSWER:
        targets = {_S.APPLYING_ANSWER}
    elif kind is _I.REMOTE_OFFER:
        targets = stay
        if state in (_S.IDLE, _S.STABLE, _S.FAILED):
            targets = stay | {_S.APPLYING_OFFER}
        elif state in (_S.MAKING_OFFER, _S.HAVE_LOCAL_OFFER):  # glare
            targets = stay | {_S.APPLYING_OFFER, _S.STABLE}
    elif kind in (_I.REMOTE_RENEGOTIATE, _I.RENEGOTIATE_REQUESTED):
        targets = stay
        if state is _S.FAILED:
            targets = {_S.MAKING_OFFER, _S.IDLE}
        elif state is _S.STABLE:
            targets = {_S.STABLE, _S.MAKING_OFFER}
            if kind is _I.REMOTE_RENEGOTIATE:
                targets |= _recover(state)
    elif kind in (_I.CONNECTION_STATE, _I.OPERATION_FAILED):
        targets = stay | _recover(state)
    elif kind is _I.TIMER:
        if state is _S.WAITING:
            targets = {_S.WAITING, _S.MAKING_OFFER}
        elif state in (_S.IDLE, _S.FAILED):
            targets = {state, _S.FAILED}
        else:
            targets = stay | _recover(state)
    else:  # candidates both ways
        targets = stay
    return frozenset(targets)


NEXT_STATES: dict[tuple[NegState, Input], frozenset[NegState]] = {
    key: _next_states(*key) for key in _TABLE
}
"""``(state, input) → the states it may lead to``, for every pair of the table. Every
dispatch checks its outcome against it, so the diagram drawn from it is the truth."""


def diagram() -> str:
    """The transition table as a Mermaid state diagram (docs/negotiation.md embeds it;
    a test keeps the two equal)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for (state, kind), targets in NEXT_STATES.items():
        for target in targets:
            if target is not state:
                edges.setdefault((state.name, target.name), []).append(kind.value)
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    for (state_name, target_name), kinds in sorted(edges.items()):
        lines.append(f"    {state_name} --> {target_name}: {', '.join(sorted(kinds))}")
    lines.append("    CLOSED --> [*]")
    return "\n".join(lines)
