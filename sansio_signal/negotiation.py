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

**The table decides.** Everything that can happen to a pair is an :class:`Input`, and
:data:`TRANSITIONS` says, for each ``(role, state, input)``, which handler runs and every
state the pair may be in afterwards: ``(handler, next states)``. It is written at the
end of this module as one literal, state by state, each input naming its handler and next
states for both roles at once or for each role apart — so the machine can be followed
from the table alone, as h11's ``_state.py`` is. Every input goes through :meth:`_dispatch`, which
looks the key up, runs the handler and checks the state reached against the entry (a
mismatch is a :class:`~.errors.LocalProtocolError`: the table is wrong). A key missing
from the table is an error naming role, state and input: a
:class:`~.errors.RemoteProtocolError` when the input came from the peer (the client
machine drops the frame and reports it), a :class:`~.errors.LocalProtocolError` when it
came from our own adapter (a bug). Handlers hold the side effects; they never ask which
state or role they run in — the key chose them — only about data: the connection state
reported, whether a remote description is in place, what the two sides can do.

Some steps are two transitions, and a handler says so by *raising* a follow-up input that
runs through the table right after it (a statechart's internal event): ``peer-restarted``
returns the pair to IDLE and raises ``start``; the polite side yielding in glare rolls
back to STABLE and raises ``remote-offer``; reaching STABLE raises the offer that waited
(``remote-offer``) or the renegotiation that was put off (``renegotiate-requested``); and
whatever costs an attempt — a failed connection or operation, a deadline that passed, the
peer reporting a failure — raises ``attempt-failed``, whose entries are the recovery
policy. :func:`diagram` draws the table (docs/negotiation.md embeds the drawings).

**Recovery shares the table.** Attempts, back-off, epochs and giving up could be a
machine of their own, but they move the same state as the exchange: closing the
connection sends the exchange back to IDLE (or WAITING), an ICE restart *is* an offer, and
a revived pair starts an exchange. Two tables would each own transitions of one variable
and neither check would see them all. So the split is in the inputs instead:
``attempt-failed`` and the deadlines carry recovery, and the diagrams draw it apart.

**Epochs.** Every signaling frame carries the pair's ``epoch``. The initiator owns it:
it starts at 0 and goes up by one each time the initiator replaces the peer connection
(close-and-recreate). Frames from an older epoch are stale and dropped before the table
is consulted; a newer *offer* is the input ``newer-epoch``: the polite side closes its
connection and follows (then takes the offer), the initiator refuses it. Results from our
own adapter name the connection by a handle (``pc``) that is never reused, so results
from a replaced connection are recognised by the client machine and dropped.

**Sessions.** Epochs restart at 0 when a member leaves and joins again, so frames the
old incarnation of a pair still had on the way could pass for current ones. Each
:class:`PeerNegotiation` therefore has a ``session`` name, sent as ``sid`` on every
frame, and echoes the peer's as ``rsid`` once known. A frame addressed to another
session of ours is dropped. A frame from a new session of theirs that names none of ours
(no ``rsid``) means their side started the pair over — it saw us leave and come back,
say, while we kept the pair through a resume — so we start over too: the input
``peer-restarted`` drops the connection and begins the pair again at their epoch.

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

Each peer has at most one deadline at a time (``deadline``, and ``deadline_kind``, a
:class:`Deadline`); the client machine keeps them in its :class:`~.timers.Timers` and
calls :meth:`on_timer`, which dispatches the deadline's own input
(``negotiation-timeout``, ``backoff-timeout``, ...) once it is due, and ``timer`` before.
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
    ReadSelectedPair,
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
"""What is assumed of a remote peer until it says what it can do."""
AIORTC = Capabilities(rollback=False, ice_restart=False, trickle=False)
"""aiortc 1.x: no rollback, no ICE restart, no outgoing trickle (see FIELD-NOTES)."""
BROWSER = Capabilities(rollback=True, ice_restart=True, trickle=True)
"""A current browser's RTCPeerConnection."""


def pair_kind(local_type: str, remote_type: str) -> str:
    """The kind of a candidate pair, by the farthest way round its two ends take:
    ``relay`` when either end is a TURN relay, else ``srflx`` when either is reflexive
    (``srflx``, or ``prflx``: learnt from a check), else ``host``."""
    types = {local_type, remote_type}
    if "relay" in types:
        return "relay"
    if types & {"srflx", "prflx"}:
        return "srflx"
    return "host"


@attrs.frozen(kw_only=True)
class NegotiationConfig:
    """Deadlines (seconds) and the retry policy."""

    negotiation_timeout: float = 20.0
    """From starting an offer (or applying a remote one) to a stable state. It covers
    both sides' gathering (aiortc waits up to 5 s for STUN/TURN) and the signaling round
    trip, which TCP retransmissions stretch on a lossy link (docs/networks.md: 10 s cut
    off exchanges that were still on their way at 30 % loss)."""
    connect_timeout: float = 30.0
    """From a stable state to ``connected``: the ICE checks and the DTLS handshake, both
    retransmitted on loss (15 s cut off DTLS handshakes still on their way at 30 % loss;
    browsers give up on ICE checks after about as long)."""
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


class Input(Enum):
    """Everything that can happen to a pair: one input of the table each."""

    # our side
    START = "start"
    CLOSE = "close"
    RENEGOTIATE_REQUESTED = "renegotiate-requested"
    # results from our peer connection
    LOCAL_DESCRIPTION = "local-description"
    REMOTE_APPLIED = "remote-applied"
    CANDIDATE_GATHERED = "candidate-gathered"
    CONNECTION_STATE = "connection-state"
    OPERATION_FAILED = "operation-failed"
    # frames from the peer
    REMOTE_OFFER = "remote-offer"
    REMOTE_ANSWER = "remote-answer"
    REMOTE_CANDIDATE = "remote-candidate"
    REMOTE_RENEGOTIATE = "remote-renegotiate"
    PEER_RESTARTED = "peer-restarted"
    """A frame from a new session of the peer that names none of ours."""
    NEWER_EPOCH = "newer-epoch"
    """An offer of an epoch after ours: the initiator started over."""
    # the clock: ``timer`` when nothing is due, else the due deadline's own input
    TIMER = "timer"
    NEGOTIATION_TIMEOUT = "negotiation-timeout"
    CONNECT_TIMEOUT = "connect-timeout"
    OFFER_WAIT_TIMEOUT = "offer-wait-timeout"
    RECOVERY_TIMEOUT = "recovery-timeout"
    BACKOFF_TIMEOUT = "backoff-timeout"
    DISCONNECTED_TIMEOUT = "disconnected-timeout"
    # raised by a handler, never fed from outside
    ATTEMPT_FAILED = "attempt-failed"
    """One attempt failed (its payload says why): the recovery policy decides."""

    @property
    def remote(self) -> bool:
        """Whether this input comes from the peer (a frame) rather than our side."""
        return self in _REMOTE_INPUTS


_REMOTE_INPUTS = frozenset(
    {
        Input.REMOTE_OFFER,
        Input.REMOTE_ANSWER,
        Input.REMOTE_CANDIDATE,
        Input.REMOTE_RENEGOTIATE,
        Input.PEER_RESTARTED,
        Input.NEWER_EPOCH,
    }
)


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

    @property
    def expired(self) -> Input:
        """The input dispatched when this deadline passes."""
        return _EXPIRED[self]


_EXPIRED = {
    Deadline.NEGOTIATION: Input.NEGOTIATION_TIMEOUT,
    Deadline.CONNECT: Input.CONNECT_TIMEOUT,
    Deadline.OFFER_WAIT: Input.OFFER_WAIT_TIMEOUT,
    Deadline.RECOVERY: Input.RECOVERY_TIMEOUT,
    Deadline.BACKOFF: Input.BACKOFF_TIMEOUT,
    Deadline.DISCONNECTED: Input.DISCONNECTED_TIMEOUT,
}
_ENDED_BY_CONNECTING = frozenset({Deadline.CONNECT, Deadline.DISCONNECTED, Deadline.RECOVERY})
"""The deadlines that a ``connected`` connection makes moot."""

_WHY_REFUSED: dict[tuple[Role, Input], str] = {
    (Role.POLITE, Input.REMOTE_RENEGOTIATE): (
        "webrtc-renegotiate from the initiator: only the polite side asks for offers"
    ),
    (Role.INITIATOR, Input.NEWER_EPOCH): (
        "an offer of epoch {payload}, ahead of the initiator's own: only the initiator "
        "moves the epoch on"
    ),
}
"""Why some inputs are missing from the table for a whole role, for the error message."""

Actions = list[ClientAction]
"""What a :class:`PeerNegotiation` returns from each call: actions, in order."""


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
        self._raised: tuple[Input, Any] | None = None
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
        self.exchanged = False
        """An offer/answer exchange completed on this connection (STABLE reached)."""

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

    def on_negotiation_needed(self, now: float) -> Actions:
        """The current connection asks for a new exchange (a browser's
        ``negotiationneeded``). Before its first exchange completed, that is the first
        offer itself (the initiator's data channel) and nothing more is needed; after
        it, the application changed what it sends: a renegotiation."""
        if not self.exchanged:
            return []
        return self.request_renegotiation(now)

    def on_timer(self, now: float) -> Actions:
        """The clock says ``now``: our deadline's own input if it is due, else ``timer``."""
        kind, when = self.deadline_kind, self.deadline
        if kind is not None and when is not None and now >= when:
            return self._dispatch(kind.expired, now, None)
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
        """A signaling frame from the peer (already known to come from ``peer_id``).

        Frames of another session or epoch are dropped first; a new session of the peer
        is the input ``peer-restarted``, an offer of a newer epoch ``newer-epoch``; then
        the frame itself is the input of its type."""
        pair = message.pair  # a malformed field raises WireError, a RemoteProtocolError
        if not pair.epoch_given:
            self.remote_epochless = True
        stale = self._stale(message, pair)
        if stale is not None:
            return [self._log(LogLevel.DEBUG, "dropped %s: %s", message.TYPE, stale)]
        actions: Actions = []
        if pair.sid is not None and self.remote_session not in (None, pair.sid):
            actions = self._dispatch(Input.PEER_RESTARTED, now, pair.epoch)
        elif isinstance(message, Offer) and pair.epoch > self.epoch:
            actions = self._dispatch(Input.NEWER_EPOCH, now, pair.epoch)
        if pair.sid is not None:
            self.remote_session = pair.sid
        if isinstance(message, Offer | Answer) and pair.caps is not None:
            self.remote_capabilities = Capabilities.from_wire(pair.caps)
        if isinstance(message, Offer):
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
        if sid is not None and self.remote_session not in (None, sid):
            if rsid is None:
                return None  # their side started the pair over: so do we (peer-restarted)
            return f"from their earlier session {sid}"
        if epoch < self.epoch:
            return f"stale epoch {epoch} (ours is {self.epoch})"
        if epoch > self.epoch and not isinstance(message, Offer):
            return f"future epoch {epoch} (ours is {self.epoch})"
        return None  # a newer offer is the table's to judge (newer-epoch)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, kind: Input, now: float, payload: Any) -> Actions:
        """Run ``kind`` through the table, then each input its handler raised."""
        step: tuple[Input, Any] | None = (kind, payload)
        actions: Actions = []
        try:
            while step is not None:
                actions += self._transition(step[0], now, step[1])
                step, self._raised = self._raised, None
        finally:
            self._raised = None
        return actions

    def _transition(self, kind: Input, now: float, payload: Any) -> Actions:
        """One entry of the table: refuse a missing key, run the handler, check where it
        led."""
        before = self.state
        entry = TRANSITIONS.get((self.role, before, kind))
        if entry is None:
            detail = (
                f"peer {self.peer_id!r}: input {kind.value} is not allowed in state "
                f"{before.value} on the {self.role.value} side"
            )
            why = _WHY_REFUSED.get((self.role, kind))
            if why is not None:
                detail += f" ({why.format(payload=payload)})"
            if kind.remote:
                raise RemoteProtocolError(detail)
            raise LocalProtocolError(detail)
        handler, next_states = entry
        actions = handler(self, now, payload)
        if self.state not in next_states:
            raise LocalProtocolError(  # the table below is wrong: a bug here, not a caller's
                f"peer {self.peer_id!r}: {kind.value} in {before.value} on the "
                f"{self.role.value} side led to {self.state.value}, which the transition "
                f"table does not list"
            )
        return actions

    def _raise(self, kind: Input, payload: Any = None) -> None:
        """Have ``kind`` run through the table right after the current input."""
        assert self._raised is None, "one follow-up input per step"
        self._raised = (kind, payload)

    # ------------------------------------------------------------------ helpers

    def _log(self, level: LogLevel, message: str, *args: Any) -> Log:
        return Log(level=level, message=f"[%s] {message}", args=(self.peer_id, *args))

    def _arm(self, kind: Deadline, when: float) -> None:
        self.deadline, self.deadline_kind = when, kind

    def _disarm(self) -> None:
        self.deadline, self.deadline_kind = None, None

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

    def _can_restart_ice(self) -> bool:
        """Whether a failure can be repaired on this connection by an ICE restart."""
        both = self.capabilities.ice_restart and self.remote_capabilities.ice_restart
        return self.pc is not None and self.has_remote and both

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

    def _make_offer(self, now: float, *, ice_restart: bool = False) -> Actions:
        actions = self._open_pc() if self.pc is None else []
        assert self.pc is not None
        self.pending_renegotiation = False
        self.state = NegState.MAKING_OFFER
        self._arm(Deadline.NEGOTIATION, now + self.config.negotiation_timeout)
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

    def _settle(self, now: float) -> None:
        """Reached STABLE: arm the connect deadline and raise what was put off (the offer
        that waited for our answer to be applied, or a renegotiation)."""
        self.state = NegState.STABLE
        self.exchanged = True
        if self.link is Link.CONNECTED:
            self._disarm()
        else:
            self._arm(Deadline.CONNECT, now + self.config.connect_timeout)
        if self.queued_offer is not None:
            offer, self.queued_offer = self.queued_offer, None
            self._raise(Input.REMOTE_OFFER, offer)
        elif self.pending_renegotiation:
            self._raise(Input.RENEGOTIATE_REQUESTED)

    def _count_failure(self, reason: str) -> Actions:
        self.attempts += 1
        return [self._log(LogLevel.WARNING, "attempt %d failed: %s", self.attempts, reason)]

    def _give_up(self, reason: str) -> Actions:
        actions = self._close_pc()
        self.state = NegState.FAILED
        self._disarm()
        return [*actions, PeerFailed(peer_id=self.peer_id, reason=reason)]

    def _close_and_back_off(self, now: float) -> Actions:
        """Initiator: close the connection; a fresh one follows the back-off."""
        actions = self._close_pc()
        self.state = NegState.WAITING
        self._arm(Deadline.BACKOFF, now + self.config.backoff(self.attempts, self._jitter()))
        return actions

    def _report_failure(self, now: float) -> Actions:
        """Polite side: tell the initiator, and wait a while for its new offer."""
        wait = self.config.offer_wait + self.config.backoff(self.attempts, self._jitter())
        self._arm(Deadline.RECOVERY, now + wait)
        return [self._ask_for_offer("failed")]

    # ------------------------------------------------------------------ handlers
    # Each takes ``(now, payload)``; the table says where each may lead.

    def _start_offering(self, now: float, _: None) -> Actions:
        return self._make_offer(now)

    def _start_waiting(self, now: float, _: None) -> Actions:
        self._arm(Deadline.OFFER_WAIT, now + self.config.offer_wait)
        return [self._log(LogLevel.INFO, "WAITING for WebRTC KEY from: %s", self.peer_id)]

    def _close(self, now: float, _: None) -> Actions:
        actions = self._close_pc()
        self.state = NegState.CLOSED
        self._disarm()
        return actions

    def _nothing_due(self, now: float, _: None) -> Actions:
        return []

    # our own descriptions

    def _send_offer(self, now: float, description: SessionDescription) -> Actions:
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
        return [
            self._send(offer),
            self._log(LogLevel.INFO, "Sending offer to: %s", self.peer_id),
            *self._flush_local(),
        ]

    def _send_answer(self, now: float, description: SessionDescription) -> Actions:
        answer = Answer(
            to_user_id=self.peer_id,
            fields=self._signal_fields(
                answer=description.to_json(), caps=self.capabilities.to_wire()
            ),
        )
        actions: Actions = [self._send(answer), *self._flush_local()]
        self._settle(now)
        return actions

    def _drop_abandoned_offer(self, now: float, payload: Any) -> Actions:
        """The result of an offer we rolled back: it no longer matters."""
        if self.abandoned_offers == 0:
            raise LocalProtocolError(
                f"peer {self.peer_id!r}: input local-description is not allowed in state "
                f"{self.state.value}"
            )
        self.abandoned_offers -= 1
        return []

    # the peer's descriptions

    def _apply_answer(self, now: float, description: SessionDescription) -> Actions:
        assert self.pc is not None
        self.state = NegState.APPLYING_ANSWER
        return [
            SetRemoteDescription(peer_id=self.peer_id, pc=self.pc, description=description),
            self._log(LogLevel.INFO, "Received answer from: %s", self.peer_id),
        ]

    def _answer_applied(self, now: float, _: None) -> Actions:
        actions = self._flush_remote()
        self._settle(now)
        return actions

    def _apply_offer(self, now: float, offer: RemoteOffer) -> Actions:
        if offer.key == self.last_remote_offer:
            return [self._log(LogLevel.DEBUG, "dropped a duplicate offer")]
        actions = self._open_pc() if self.pc is None else []
        assert self.pc is not None
        self.last_remote_offer = offer.key
        self.state = NegState.APPLYING_OFFER
        self._arm(Deadline.NEGOTIATION, now + self.config.negotiation_timeout)
        actions.append(
            SetRemoteDescription(peer_id=self.peer_id, pc=self.pc, description=offer.description)
        )
        actions.append(
            self._log(LogLevel.INFO, "Received offer from: %s (epoch %d)", self.peer_id, self.epoch)
        )
        return actions

    def _ignore_polite_offer(self, now: float, offer: RemoteOffer) -> Actions:
        """Offers crossed: the initiator's goes on."""
        return [self._log(LogLevel.INFO, "glare: ignoring the polite side's offer")]

    def _roll_back_sent_offer(self, now: float, offer: RemoteOffer) -> Actions:
        """Offers crossed: the polite side yields, and takes theirs once stable."""
        assert self.pc is not None and self.capabilities.rollback, "polite offers need rollback"
        self.pending_renegotiation = True  # our own change still needs an exchange
        self.local_buffer.clear()
        self.state = NegState.STABLE
        self._raise(Input.REMOTE_OFFER, offer)
        return [
            RollbackLocalDescription(peer_id=self.peer_id, pc=self.pc),
            self._log(LogLevel.INFO, "glare: rolling back our offer"),
        ]

    def _roll_back_unfinished_offer(self, now: float, offer: RemoteOffer) -> Actions:
        """As :meth:`_roll_back_sent_offer`, while our ``CreateOffer`` is still running:
        its result, when it comes, is ignored."""
        self.abandoned_offers += 1
        return self._roll_back_sent_offer(now, offer)

    def _queue_offer(self, now: float, offer: RemoteOffer) -> Actions:
        """An offer while we apply an answer (the peer answered, then offered at once):
        it is applied as soon as we are stable. Only one can wait."""
        queued = None if self.queued_offer is None else self.queued_offer.key
        if offer.key in (self.last_remote_offer, queued):
            return [self._log(LogLevel.DEBUG, "dropped a duplicate offer")]
        if self.queued_offer is not None:
            raise RemoteProtocolError(
                f"peer {self.peer_id!r}: input remote-offer is not allowed in state "
                f"{self.state.value}"
            )
        self.queued_offer = offer
        return []

    def _refuse_second_offer(self, now: float, offer: RemoteOffer) -> Actions:
        """An offer while we answer theirs: a duplicate, or an error."""
        queued = None if self.queued_offer is None else self.queued_offer.key
        if offer.key in (self.last_remote_offer, queued):
            return [self._log(LogLevel.DEBUG, "dropped a duplicate offer")]
        raise RemoteProtocolError(
            f"peer {self.peer_id!r}: input remote-offer is not allowed in state {self.state.value}"
        )

    def _offer_applied(self, now: float, _: None) -> Actions:
        assert self.pc is not None
        actions = self._flush_remote()
        self.state = NegState.MAKING_ANSWER
        actions.append(CreateAnswer(peer_id=self.peer_id, pc=self.pc))
        return actions

    # candidates

    def _buffer_candidate(self, now: float, candidate: IceCandidate | None) -> Actions:
        """No remote description is in place (or one is being applied): keep it."""
        self.remote_buffer.append(candidate)
        if len(self.remote_buffer) > MAX_BUFFERED_CANDIDATES:
            del self.remote_buffer[0]
        return []

    def _take_candidate(self, now: float, candidate: IceCandidate | None) -> Actions:
        """Apply it if the remote description is in place, else keep it."""
        if self.pc is not None and self.has_remote:
            return self._add_remote(self.pc, candidate)
        return self._buffer_candidate(now, candidate)

    def _drop_candidate(self, now: float, candidate: IceCandidate | None) -> Actions:
        return [self._log(LogLevel.DEBUG, "dropped a candidate: no connection")]

    def _hold_gathered(self, now: float, candidate: IceCandidate | None) -> Actions:
        """Our offer or answer is not out yet: the candidate follows it."""
        self.local_buffer.append(candidate)
        return []

    def _send_gathered(self, now: float, candidate: IceCandidate | None) -> Actions:
        return [self._send_candidate(candidate)]

    # requests for a new exchange

    def _put_off(self, now: float, _: Any) -> Actions:
        """An exchange is under way (or none can start yet): renegotiate once stable."""
        self.pending_renegotiation = True
        return []

    def _put_off_unless_failed(self, now: float, reason: str | None) -> Actions:
        """The peer's request during an exchange: a failure report, or a missing offer
        (ours crossed it on a slow link), is answered by the exchange itself; other
        requests run once it is done."""
        if reason not in ("failed", "no-offer"):
            self.pending_renegotiation = True
        return []

    def _moot(self, now: float, _: Any) -> Actions:
        """A fresh connection is on its way and negotiates everything anyway."""
        return []

    def _renegotiate(self, now: float, _: None) -> Actions:
        return self._make_offer(now)

    def _offer_or_ask(self, now: float, _: None) -> Actions:
        """Polite side: offer if we can roll back in glare, else ask the initiator."""
        if self.capabilities.rollback:
            return self._make_offer(now)
        self.pending_renegotiation = False
        return [self._ask_for_offer("renegotiate")]

    def _renegotiate_for_peer(self, now: float, reason: str | None) -> Actions:
        """The polite side asks for an offer: a failure it reports costs an attempt; a
        missing offer it reports crossed ours if we are connected."""
        if reason == "failed":
            self._raise(Input.ATTEMPT_FAILED, "the peer reported its connection failed")
            return []
        if reason == "no-offer" and self.link is Link.CONNECTED:
            return []
        return self._make_offer(now)

    # the connection

    def _link_changed(self, now: float, state: str) -> Actions:
        return self._track_link(now, state, grace=False)

    def _link_changed_when_stable(self, now: float, state: str) -> Actions:
        """As :meth:`_link_changed`; ``disconnected`` arms the grace deadline (during an
        exchange the negotiation deadline runs anyway)."""
        return self._track_link(now, state, grace=True)

    def _track_link(self, now: float, state: str, *, grace: bool) -> Actions:
        if state in ("connected", "completed"):
            # newly connected (first, or after an ICE restart): which pair does it use?
            actions: Actions = []
            if self.link is not Link.CONNECTED and self.pc is not None:
                actions.append(ReadSelectedPair(peer_id=self.peer_id, pc=self.pc))
            self.link = Link.CONNECTED
            self.attempts = 0
            if self.deadline_kind in _ENDED_BY_CONNECTING:
                self._disarm()
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
            if grace:
                self._arm(Deadline.DISCONNECTED, now + self.config.disconnected_grace)
            return []
        self.link = Link.FAILED  # "failed", or "closed" by the remote side
        self.notified_connected = False
        self._raise(Input.ATTEMPT_FAILED, f"connection {state}")
        return []

    def _operation_failed(self, now: float, failure: tuple[str, str]) -> Actions:
        operation, error = failure
        if operation == AddIceCandidate.__name__:
            # One candidate that cannot be added (a peer's malformed line, an mDNS name
            # that does not resolve) loses only itself: the others may still connect.
            return [self._log(LogLevel.WARNING, "candidate not added: %s", error)]
        self._raise(Input.ATTEMPT_FAILED, f"operation failed ({operation}: {error})")
        return []

    def _operation_failed_after_rollback(self, now: float, failure: tuple[str, str]) -> Actions:
        """As :meth:`_operation_failed`, but the failure may be the offer we rolled back
        (its ``CreateOffer`` was still running), which no longer matters."""
        if self.abandoned_offers and failure[0] != AddIceCandidate.__name__:
            self.abandoned_offers -= 1
            return []
        return self._operation_failed(now, failure)

    # deadlines

    def _negotiation_timed_out(self, now: float, _: None) -> Actions:
        self._disarm()
        self._raise(Input.ATTEMPT_FAILED, f"negotiation timed out in {self.state.value}")
        return []

    def _not_connected_in_time(self, now: float, _: None) -> Actions:
        self._disarm()
        self._raise(Input.ATTEMPT_FAILED, "not connected in time")
        return []

    def _disconnected_too_long(self, now: float, _: None) -> Actions:
        self._disarm()
        self._raise(Input.ATTEMPT_FAILED, "disconnected for too long")
        return []

    def _offer_on_fresh_connection(self, now: float, _: None) -> Actions:
        """The back-off is over: a fresh connection at the next epoch."""
        self._disarm()
        self._next_epoch()
        return self._make_offer(now)

    def _ask_for_offer_again(self, now: float, _: None) -> Actions:
        return self._ask_again(now, Deadline.OFFER_WAIT, "no-offer")

    def _report_failure_again(self, now: float, _: None) -> Actions:
        return self._ask_again(now, Deadline.RECOVERY, "failed")

    def _ask_again(self, now: float, kind: Deadline, reason: str) -> Actions:
        """Polite side: no offer came in time. Each unanswered request is an attempt."""
        self._disarm()
        self.attempts += 1
        if self.attempts > self.config.max_retries:
            return self._give_up("no offer from the initiator")
        wait = self.config.offer_wait + self.config.backoff(self.attempts, self._jitter())
        self._arm(kind, now + wait)
        return [self._ask_for_offer(reason)]

    # recovery: one attempt failed (the payload says why)

    def _recreate(self, now: float, reason: str) -> Actions:
        """Initiator, during an exchange: close, back off, then a fresh connection."""
        actions = self._count_failure(reason)
        if self.attempts > self.config.max_retries:
            return actions + self._give_up(reason)
        return actions + self._close_and_back_off(now)

    def _restart_or_recreate(self, now: float, reason: str) -> Actions:
        """Initiator, stable: restart ICE on this connection when both sides can, else
        as :meth:`_recreate`."""
        actions = self._count_failure(reason)
        if self.attempts > self.config.max_retries:
            return actions + self._give_up(reason)
        if self._can_restart_ice():
            return actions + self._make_offer(now, ice_restart=True)
        return actions + self._close_and_back_off(now)

    def _ask_afresh(self, now: float, reason: str) -> Actions:
        """Polite side, during an exchange: close, report, wait for a fresh offer."""
        actions = self._count_failure(reason)
        if self.attempts > self.config.max_retries:
            return actions + self._give_up(reason)
        actions += self._close_pc()
        self.state = NegState.IDLE
        return actions + self._report_failure(now)

    def _ask_in_place_or_afresh(self, now: float, reason: str) -> Actions:
        """Polite side, stable: keep the connection for an ICE restart when both sides
        can, else as :meth:`_ask_afresh`."""
        if not self._can_restart_ice():
            return self._ask_afresh(now, reason)
        actions = self._count_failure(reason)
        if self.attempts > self.config.max_retries:
            return actions + self._give_up(reason)
        return actions + self._report_failure(now)

    # giving up, reviving, starting over

    def _revive_offering(self, now: float, _: Any) -> Actions:
        """Initiator, given up: a fresh request starts over with a full retry budget."""
        self.attempts = 0
        self._next_epoch()
        return self._make_offer(now)

    def _revive_asking(self, now: float, _: None) -> Actions:
        """Polite side, given up: ask the initiator, with a full retry budget."""
        self.attempts = 0
        self.state = NegState.IDLE
        self._arm(Deadline.OFFER_WAIT, now + self.config.offer_wait)
        return [self._ask_for_offer("renegotiate")]

    def _revive_answering(self, now: float, offer: RemoteOffer) -> Actions:
        """Given up, an offer came: take it, with a full retry budget."""
        self.attempts = 0
        return self._apply_offer(now, offer)

    def _start_over(self, now: float, epoch: int) -> Actions:
        """The peer started our pair over (a new session of theirs, e.g. after the server
        let one of us go and took it back, or restarted): drop the connection and begin
        again as on ``start``, at their epoch."""
        actions = self._close_pc()
        self.epoch, self.attempts = epoch, 0
        self.pending_renegotiation = False
        self.state = NegState.IDLE
        self._disarm()
        self._raise(Input.START)
        return [*actions, self._log(LogLevel.INFO, "the peer started our pair over")]

    def _follow(self, now: float, epoch: int) -> Actions:
        """Polite side: the initiator started over on a fresh connection; its offer
        comes next."""
        actions = self._close_pc()
        self.epoch = epoch
        self.state = NegState.IDLE
        return [*actions, self._log(LogLevel.INFO, "following the initiator to epoch %d", epoch)]

    def _follow_after_giving_up(self, now: float, epoch: int) -> Actions:
        """As :meth:`_follow`, with a full retry budget: the initiator started over, so
        do we."""
        self.attempts = 0
        return self._follow(now, epoch)


_Handler = Callable[[PeerNegotiation, float, Any], Actions]
_Transition = tuple[_Handler, frozenset[NegState]]


# --------------------------------------------------------------------------- the table
#
# State by state, each input the state takes: ``(handler, {next states})`` when both roles
# do the same, else ``{_INITIATOR: ..., _POLITE: ...}`` with one entry per role that takes
# it. What is not listed is refused. Two templates stand for what many states share.

_PN = PeerNegotiation
_S = NegState
_I = Input
_INITIATOR, _POLITE = Role.INITIATOR, Role.POLITE

_Row = tuple[_Handler, set[NegState]]
_Entries = dict[Input, _Row | dict[Role, _Row]]


def _anywhere(state: NegState) -> _Entries:
    """What every live state takes alike."""
    return {
        _I.CLOSE: (_PN._close, {_S.CLOSED}),
        _I.PEER_RESTARTED: (_PN._start_over, {_S.IDLE}),  # raises start
        _I.TIMER: (_PN._nothing_due, {state}),
    }


def _during_an_exchange(state: NegState) -> _Entries:
    """What every state with an offer or answer under way takes alike."""
    return {
        _I.CONNECTION_STATE: (_PN._link_changed, {state}),  # failed: raises attempt-failed
        _I.OPERATION_FAILED: (_PN._operation_failed, {state}),  # raises attempt-failed
        _I.NEGOTIATION_TIMEOUT: (_PN._negotiation_timed_out, {state}),  # raises attempt-failed
        _I.ATTEMPT_FAILED: {
            _INITIATOR: (_PN._recreate, {_S.WAITING, _S.FAILED}),
            _POLITE: (_PN._ask_afresh, {_S.IDLE, _S.FAILED}),
        },
        _I.RENEGOTIATE_REQUESTED: (_PN._put_off, {state}),
        _I.REMOTE_RENEGOTIATE: {_INITIATOR: (_PN._put_off_unless_failed, {state})},
        _I.NEWER_EPOCH: {_POLITE: (_PN._follow, {_S.IDLE})},
        **_anywhere(state),
    }


_TABLE: dict[NegState, _Entries] = {
    _S.IDLE: {
        _I.START: {
            _INITIATOR: (_PN._start_offering, {_S.MAKING_OFFER}),
            _POLITE: (_PN._start_waiting, {_S.IDLE}),
        },
        _I.REMOTE_OFFER: (_PN._apply_offer, {_S.APPLYING_OFFER}),
        _I.REMOTE_CANDIDATE: (_PN._buffer_candidate, {_S.IDLE}),
        _I.RENEGOTIATE_REQUESTED: (_PN._put_off, {_S.IDLE}),
        _I.REMOTE_RENEGOTIATE: {_INITIATOR: (_PN._put_off_unless_failed, {_S.IDLE})},
        _I.NEWER_EPOCH: {_POLITE: (_PN._follow, {_S.IDLE})},
        _I.OFFER_WAIT_TIMEOUT: {_POLITE: (_PN._ask_for_offer_again, {_S.IDLE, _S.FAILED})},
        _I.RECOVERY_TIMEOUT: {_POLITE: (_PN._report_failure_again, {_S.IDLE, _S.FAILED})},
        **_anywhere(_S.IDLE),
    },
    _S.MAKING_OFFER: {
        _I.LOCAL_DESCRIPTION: (_PN._send_offer, {_S.HAVE_LOCAL_OFFER}),
        _I.REMOTE_OFFER: {  # glare
            _INITIATOR: (_PN._ignore_polite_offer, {_S.MAKING_OFFER}),
            _POLITE: (_PN._roll_back_unfinished_offer, {_S.STABLE}),  # raises remote-offer
        },
        _I.REMOTE_CANDIDATE: (_PN._take_candidate, {_S.MAKING_OFFER}),
        _I.CANDIDATE_GATHERED: (_PN._hold_gathered, {_S.MAKING_OFFER}),
        **_during_an_exchange(_S.MAKING_OFFER),
    },
    _S.HAVE_LOCAL_OFFER: {
        _I.REMOTE_ANSWER: (_PN._apply_answer, {_S.APPLYING_ANSWER}),
        _I.REMOTE_OFFER: {  # glare
            _INITIATOR: (_PN._ignore_polite_offer, {_S.HAVE_LOCAL_OFFER}),
            _POLITE: (_PN._roll_back_sent_offer, {_S.STABLE}),  # raises remote-offer
        },
        _I.REMOTE_CANDIDATE: (_PN._take_candidate, {_S.HAVE_LOCAL_OFFER}),
        _I.CANDIDATE_GATHERED: (_PN._send_gathered, {_S.HAVE_LOCAL_OFFER}),
        **_during_an_exchange(_S.HAVE_LOCAL_OFFER),
    },
    _S.APPLYING_ANSWER: {
        _I.REMOTE_APPLIED: (_PN._answer_applied, {_S.STABLE}),  # raises what was put off
        _I.REMOTE_OFFER: (_PN._queue_offer, {_S.APPLYING_ANSWER}),
        _I.REMOTE_CANDIDATE: (_PN._buffer_candidate, {_S.APPLYING_ANSWER}),
        _I.CANDIDATE_GATHERED: (_PN._send_gathered, {_S.APPLYING_ANSWER}),
        **_during_an_exchange(_S.APPLYING_ANSWER),
    },
    _S.APPLYING_OFFER: {
        _I.REMOTE_APPLIED: (_PN._offer_applied, {_S.MAKING_ANSWER}),
        _I.REMOTE_OFFER: (_PN._refuse_second_offer, {_S.APPLYING_OFFER}),
        _I.LOCAL_DESCRIPTION: {_POLITE: (_PN._drop_abandoned_offer, {_S.APPLYING_OFFER})},
        _I.REMOTE_CANDIDATE: (_PN._buffer_candidate, {_S.APPLYING_OFFER}),
        _I.CANDIDATE_GATHERED: (_PN._hold_gathered, {_S.APPLYING_OFFER}),
        **_during_an_exchange(_S.APPLYING_OFFER),
        _I.OPERATION_FAILED: {  # instead of the template's: the failure may be moot
            _INITIATOR: (_PN._operation_failed, {_S.APPLYING_OFFER}),
            _POLITE: (_PN._operation_failed_after_rollback, {_S.APPLYING_OFFER}),
        },
    },
    _S.MAKING_ANSWER: {
        _I.LOCAL_DESCRIPTION: (_PN._send_answer, {_S.STABLE}),  # raises what was put off
        _I.REMOTE_OFFER: (_PN._refuse_second_offer, {_S.MAKING_ANSWER}),
        _I.REMOTE_CANDIDATE: (_PN._take_candidate, {_S.MAKING_ANSWER}),
        _I.CANDIDATE_GATHERED: (_PN._hold_gathered, {_S.MAKING_ANSWER}),
        **_during_an_exchange(_S.MAKING_ANSWER),
    },
    _S.STABLE: {
        _I.REMOTE_OFFER: (_PN._apply_offer, {_S.APPLYING_OFFER, _S.STABLE}),  # or a duplicate
        _I.RENEGOTIATE_REQUESTED: {
            _INITIATOR: (_PN._renegotiate, {_S.MAKING_OFFER}),
            _POLITE: (_PN._offer_or_ask, {_S.MAKING_OFFER, _S.STABLE}),
        },
        _I.REMOTE_RENEGOTIATE: {
            _INITIATOR: (_PN._renegotiate_for_peer, {_S.MAKING_OFFER, _S.STABLE}),
        },
        _I.REMOTE_CANDIDATE: (_PN._take_candidate, {_S.STABLE}),
        _I.CANDIDATE_GATHERED: (_PN._send_gathered, {_S.STABLE}),
        _I.CONNECTION_STATE: (_PN._link_changed_when_stable, {_S.STABLE}),
        _I.OPERATION_FAILED: (_PN._operation_failed, {_S.STABLE}),
        _I.CONNECT_TIMEOUT: (_PN._not_connected_in_time, {_S.STABLE}),
        _I.DISCONNECTED_TIMEOUT: (_PN._disconnected_too_long, {_S.STABLE}),
        # a polite side that rolled back for a duplicate offer still has its deadline
        _I.NEGOTIATION_TIMEOUT: {_POLITE: (_PN._negotiation_timed_out, {_S.STABLE})},
        _I.RECOVERY_TIMEOUT: {_POLITE: (_PN._report_failure_again, {_S.STABLE, _S.FAILED})},
        _I.ATTEMPT_FAILED: {
            _INITIATOR: (_PN._restart_or_recreate, {_S.MAKING_OFFER, _S.WAITING, _S.FAILED}),
            _POLITE: (_PN._ask_in_place_or_afresh, {_S.STABLE, _S.IDLE, _S.FAILED}),
        },
        _I.NEWER_EPOCH: {_POLITE: (_PN._follow, {_S.IDLE})},
        **_anywhere(_S.STABLE),
    },
    _S.WAITING: {  # the initiator's only
        _I.BACKOFF_TIMEOUT: {_INITIATOR: (_PN._offer_on_fresh_connection, {_S.MAKING_OFFER})},
        _I.RENEGOTIATE_REQUESTED: {_INITIATOR: (_PN._moot, {_S.WAITING})},
        _I.REMOTE_RENEGOTIATE: {_INITIATOR: (_PN._moot, {_S.WAITING})},
        _I.REMOTE_CANDIDATE: {_INITIATOR: (_PN._drop_candidate, {_S.WAITING})},
        _I.CLOSE: {_INITIATOR: (_PN._close, {_S.CLOSED})},
        _I.PEER_RESTARTED: {_INITIATOR: (_PN._start_over, {_S.IDLE})},
        _I.TIMER: {_INITIATOR: (_PN._nothing_due, {_S.WAITING})},
    },
    _S.FAILED: {
        _I.REMOTE_OFFER: (_PN._revive_answering, {_S.APPLYING_OFFER}),
        _I.RENEGOTIATE_REQUESTED: {
            _INITIATOR: (_PN._revive_offering, {_S.MAKING_OFFER}),
            _POLITE: (_PN._revive_asking, {_S.IDLE}),
        },
        _I.REMOTE_RENEGOTIATE: {_INITIATOR: (_PN._revive_offering, {_S.MAKING_OFFER})},
        _I.REMOTE_CANDIDATE: (_PN._drop_candidate, {_S.FAILED}),
        _I.NEWER_EPOCH: {_POLITE: (_PN._follow_after_giving_up, {_S.IDLE})},
        **_anywhere(_S.FAILED),
    },
    _S.CLOSED: {},
}


def _flatten(table: dict[NegState, _Entries]) -> dict[tuple[Role, NegState, Input], _Transition]:
    flat: dict[tuple[Role, NegState, Input], _Transition] = {}
    for state, entries in table.items():
        for kind, entry in entries.items():
            per_role = entry if isinstance(entry, dict) else dict.fromkeys(Role, entry)
            for role, (handler, next_states) in per_role.items():
                flat[role, state, kind] = (handler, frozenset(next_states))
    return flat


TRANSITIONS: dict[tuple[Role, NegState, Input], _Transition] = _flatten(_TABLE)
"""``(role, state, input) → (handler, next states)``: the table, one entry per role
(treat as read-only). The handler does the side effects; the pair must be in one of the
next states once it returned. Every key not listed is a protocol error."""


# --------------------------------------------------------------------------- diagrams
#
# Drawn from TRANSITIONS (:func:`diagram`), per role, in two pictures each: the exchange,
# and recovery (the moves on attempt-failed and the deadlines, and those into or out of
# WAITING and FAILED). Self-loops are left out. An input that every live state takes to
# the same place is one edge from ``ANY``; in the recovery pictures the five states of an
# exchange under way, which fail alike, are one node, ``UNDER_WAY``.

_UNDER_WAY = (
    _S.MAKING_OFFER,
    _S.HAVE_LOCAL_OFFER,
    _S.APPLYING_ANSWER,
    _S.APPLYING_OFFER,
    _S.MAKING_ANSWER,
)
_RECOVERY_INPUTS = frozenset(
    {
        _I.ATTEMPT_FAILED,
        _I.TIMER,
        _I.NEGOTIATION_TIMEOUT,
        _I.CONNECT_TIMEOUT,
        _I.OFFER_WAIT_TIMEOUT,
        _I.RECOVERY_TIMEOUT,
        _I.BACKOFF_TIMEOUT,
        _I.DISCONNECTED_TIMEOUT,
    }
)
_RECOVERY_STATES = frozenset({_S.WAITING, _S.FAILED})
_Move = tuple[NegState, NegState, Input]
_Edges = dict[tuple[str, str, str], set[str]]  # (source, target, note) → input names


def _live_states(role: Role) -> list[NegState]:
    return [s for s in NegState if any((role, s, i) in TRANSITIONS for i in Input)]


def _moves(role: Role) -> set[_Move]:
    """Every ``(state, next state, input)`` of ``role``'s table, self-loops left out."""
    return {
        (state, target, kind)
        for (r, state, kind), entry in TRANSITIONS.items()
        if r is role
        for target in entry[1]
        if target is not state
    }


def _layout(role: Role) -> tuple[_Edges, _Edges, set[_Move]]:
    """The exchange and recovery edges of ``role``, and the moves they stand for."""
    live = _live_states(role)
    exchange: _Edges = {}
    recovery: _Edges = {}
    drawn: set[_Move] = set()
    everywhere: set[Input] = set()
    for kind in Input:
        entries = [TRANSITIONS.get((role, state, kind)) for state in live]
        targets = {e[1] for e in entries if e is not None}
        if None in entries or len(targets) != 1:
            continue
        everywhere.add(kind)
        for target in targets.pop():
            exchange.setdefault(("ANY", target.name, ""), set()).add(kind.value)
            drawn |= {(state, target, kind) for state in live if state is not target}
    for state, target, kind in _moves(role) - drawn:
        if kind in everywhere:
            continue
        if kind not in _RECOVERY_INPUTS and not {state, target} & _RECOVERY_STATES:
            exchange.setdefault((state.name, target.name, ""), set()).add(kind.value)
            drawn.add((state, target, kind))
            continue
        sources = _UNDER_WAY if state in _UNDER_WAY else (state,)
        source = "UNDER_WAY" if state in _UNDER_WAY else state.name
        key = (source, target.name, "")
        if target in _UNDER_WAY:
            key = (source, "UNDER_WAY", f" → {target.name}")
        recovery.setdefault(key, set()).add(kind.value)
        drawn |= {(s, target, kind) for s in sources}
    return exchange, recovery, drawn


def _node_order(name: str) -> int:
    names = [s.name for s in NegState]
    return names.index(name) if name in names else {"UNDER_WAY": 1, "ANY": len(names)}[name]


def _mermaid(head: list[str], edges: _Edges) -> str:
    lines = ["stateDiagram-v2", *(f"    {line}" for line in head)]
    for source, target, note in sorted(
        edges, key=lambda e: (_node_order(e[0]), _node_order(e[1]), e[2])
    ):
        kinds = ", ".join(sorted(edges[source, target, note]))
        lines.append(f"    {source} --> {target}: {kinds}{note}")
    return "\n".join(lines)


DIAGRAMS = ("initiator", "polite", "initiator-recovery", "polite-recovery")
"""The names of the diagrams :func:`diagram` draws."""


def diagram(name: str) -> str:
    """One diagram of the table, in Mermaid: ``initiator`` or ``polite`` (the exchange),
    ``initiator-recovery`` or ``polite-recovery`` (see :data:`DIAGRAMS`).
    docs/negotiation.md embeds each between ``<!-- diagram:NAME:begin -->`` and
    ``<!-- diagram:NAME:end -->``, and a test keeps them equal (``python
    docs/update_diagram.py`` rewrites them)."""
    role = Role(name.removesuffix("-recovery"))
    exchange, recovery, _ = _layout(role)
    if name.endswith("-recovery"):
        under_way = ", ".join(s.name for s in _UNDER_WAY)
        return _mermaid([f'state "under way: {under_way}" as UNDER_WAY'], recovery)
    return _mermaid(['state "any state" as ANY', "[*] --> IDLE"], exchange)
