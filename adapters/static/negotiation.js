// negotiation.js — the negotiation with one remote peer: a port of
// `sansio_signal.negotiation` (its module docstring is the theory of operation). Pure;
// see machine.js.
//
// As in Python, the table decides: everything that can happen to a pair is an `Input`,
// and the table at the end of this module says, for each (role, state, input), which
// handler runs and every state the pair may be in afterwards. `_dispatch` looks the key
// up, runs the handler and checks the state reached against the entry (a mismatch is a
// LocalProtocolError: the table is wrong). A missing key is a RemoteProtocolError when
// the input came from the peer, a LocalProtocolError when it came from our own side.
// Handlers never ask which state or role they run in; a step that is two transitions
// raises its follow-up input (`_raise`), which runs through the table right after it.
// `negotiationTransitions()` lists the table; a Python test compares it with
// `negotiation.TRANSITIONS`.

import {
  CHANNEL_LABEL,
  Channel,
  LocalProtocolError,
  MAX_BUFFERED_CANDIDATES,
  RemoteProtocolError,
  candidateToWire,
  log,
} from "./wire.js";


// ------------------------------------------------------------------ capabilities

/** The user id that makes the offer for the pair (a, b): the lower one (mirrors
 * `negotiation.initiator_of`; valid ids are ASCII, so UTF-16 order is code-point order). */
export function initiatorOf(a, b) {
  return a < b ? a : b;
}

/** The kind of a candidate pair: `relay` when either end is a TURN relay, else `srflx`
 * when either is reflexive (`srflx` or `prflx`), else `host` (mirrors
 * `negotiation.pair_kind`). */
export function pairKind(localType, remoteType) {
  const types = [localType, remoteType];
  if (types.includes("relay")) return "relay";
  if (types.includes("srflx") || types.includes("prflx")) return "srflx";
  return "host";
}

/** What a current browser's RTCPeerConnection can do (mirrors `negotiation.BROWSER`). */
export const BROWSER = Object.freeze({ rollback: true, iceRestart: true, trickle: true });
/** aiortc 1.x (mirrors `negotiation.AIORTC`). */
export const AIORTC = Object.freeze({ rollback: false, iceRestart: false, trickle: false });
/** What a peer that declared nothing can do (mirrors `negotiation.NO_CAPABILITIES`). */
export const NO_CAPABILITIES = Object.freeze({ rollback: false, iceRestart: false, trickle: false });

/** The `caps` field of offers and answers (mirrors `Capabilities.to_wire`). */
export function capsToWire(caps) {
  const names = [];
  if (caps.rollback) names.push("rollback");
  if (caps.iceRestart) names.push("ice-restart");
  if (caps.trickle) names.push("trickle");
  return names;
}

/** Read a validated `caps` list; a missing name means "cannot" (mirrors
 * `Capabilities.from_wire`). */
export function capsFromWire(names) {
  const set = new Set(names ?? []);
  return { rollback: set.has("rollback"), iceRestart: set.has("ice-restart"), trickle: set.has("trickle") };
}

// ------------------------------------------------------------------ configuration

/** Deadlines (seconds) and retry policy (mirrors `negotiation.NegotiationConfig`). */
export const DEFAULT_CONFIG = Object.freeze({
  negotiationTimeout: 20.0,
  connectTimeout: 30.0,
  offerWait: 5.0,
  disconnectedGrace: 5.0,
  backoffBase: 0.25,
  backoffMax: 8.0,
  maxRetries: 5,
});

/** Delay before retry number `attempt` (1-based); `jitter` in [0, 1)
 * (mirrors `NegotiationConfig.backoff`). */
export function backoff(config, attempt, jitter) {
  const raw = Math.min(config.backoffMax, config.backoffBase * 2 ** Math.max(0, attempt - 1));
  return raw * (0.5 + jitter / 2);
}

// ------------------------------------------------------------------ states and inputs

/** Where a pair's negotiation stands (mirrors `negotiation.NegState`; same values). */
export const NegState = Object.freeze({
  IDLE: "idle",
  MAKING_OFFER: "making-offer",
  HAVE_LOCAL_OFFER: "have-local-offer",
  APPLYING_ANSWER: "applying-answer",
  APPLYING_OFFER: "applying-offer",
  MAKING_ANSWER: "making-answer",
  STABLE: "stable",
  WAITING: "waiting",
  FAILED: "failed",
  CLOSED: "closed",
});

/** Our side of a pair (mirrors `negotiation.Role`; same values). */
export const Role = Object.freeze({ INITIATOR: "initiator", POLITE: "polite" });

/** The current peer connection's `connectionState`, as far as we care (mirrors
 * `negotiation.Link`; same values). */
export const Link = Object.freeze({
  NEW: "new",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  DISCONNECTED: "disconnected",
  FAILED: "failed",
});

/** Everything that can happen to a pair: one input of the table each (mirrors
 * `negotiation.Input`; same values). */
export const Input = Object.freeze({
  // our side
  START: "start",
  CLOSE: "close",
  RENEGOTIATE_REQUESTED: "renegotiate-requested",
  // results from our peer connection
  LOCAL_DESCRIPTION: "local-description",
  REMOTE_APPLIED: "remote-applied",
  CANDIDATE_GATHERED: "candidate-gathered",
  CONNECTION_STATE: "connection-state",
  OPERATION_FAILED: "operation-failed",
  // frames from the peer
  REMOTE_OFFER: "remote-offer",
  REMOTE_ANSWER: "remote-answer",
  REMOTE_CANDIDATE: "remote-candidate",
  REMOTE_RENEGOTIATE: "remote-renegotiate",
  PEER_RESTARTED: "peer-restarted", // a frame from a new session of the peer that names none of ours
  NEWER_EPOCH: "newer-epoch", // an offer of an epoch after ours: the initiator started over
  // the clock: `timer` when nothing is due, else the due deadline's own input
  TIMER: "timer",
  NEGOTIATION_TIMEOUT: "negotiation-timeout",
  CONNECT_TIMEOUT: "connect-timeout",
  OFFER_WAIT_TIMEOUT: "offer-wait-timeout",
  RECOVERY_TIMEOUT: "recovery-timeout",
  BACKOFF_TIMEOUT: "backoff-timeout",
  DISCONNECTED_TIMEOUT: "disconnected-timeout",
  // raised by a handler, never fed from outside
  ATTEMPT_FAILED: "attempt-failed", // one attempt failed (its payload says why)
});

/** The inputs that come from the peer (a frame) rather than our side (mirrors
 * `Input.remote`). */
const REMOTE_INPUTS = new Set([
  Input.REMOTE_OFFER,
  Input.REMOTE_ANSWER,
  Input.REMOTE_CANDIDATE,
  Input.REMOTE_RENEGOTIATE,
  Input.PEER_RESTARTED,
  Input.NEWER_EPOCH,
]);

/** What a pair's one deadline is for (mirrors `negotiation.Deadline`; same values). */
export const Deadline = Object.freeze({
  NEGOTIATION: "negotiation", // an exchange started must be stable by then
  CONNECT: "connect", // stable, the connection must be connected by then
  OFFER_WAIT: "offer-wait", // polite side: the initiator's offer is due by then
  RECOVERY: "recovery", // polite side, after reporting a failure: the new offer is due by then
  BACKOFF: "backoff", // initiator: the back-off before a fresh connection ends then
  DISCONNECTED: "disconnected", // a disconnected connection must be back by then
});

/** The input dispatched when a deadline passes (mirrors `Deadline.expired`). */
const EXPIRED = Object.freeze({
  [Deadline.NEGOTIATION]: Input.NEGOTIATION_TIMEOUT,
  [Deadline.CONNECT]: Input.CONNECT_TIMEOUT,
  [Deadline.OFFER_WAIT]: Input.OFFER_WAIT_TIMEOUT,
  [Deadline.RECOVERY]: Input.RECOVERY_TIMEOUT,
  [Deadline.BACKOFF]: Input.BACKOFF_TIMEOUT,
  [Deadline.DISCONNECTED]: Input.DISCONNECTED_TIMEOUT,
});

/** The deadlines that a `connected` connection makes moot. */
const ENDED_BY_CONNECTING = new Set([Deadline.CONNECT, Deadline.DISCONNECTED, Deadline.RECOVERY]);

/** Why some inputs are missing from the table for a whole role, for the error message
 * (mirrors `_WHY_REFUSED`). */
const WHY_REFUSED = new Map([
  [`${Role.POLITE}|${Input.REMOTE_RENEGOTIATE}`, () => "webrtc-renegotiate from the initiator: only the polite side asks for offers"],
  [`${Role.INITIATOR}|${Input.NEWER_EPOCH}`, (epoch) => (
    `an offer of epoch ${epoch}, ahead of the initiator's own: only the initiator moves the epoch on`
  )],
]);


// ------------------------------------------------------------------ PeerNegotiation

/**
 * The negotiation with one remote peer (mirrors `negotiation.PeerNegotiation`).
 * Every method takes `now` (seconds) and returns a list of actions.
 */
export class PeerNegotiation {
  constructor({ ourId, peerId, capabilities = BROWSER, config = DEFAULT_CONFIG, newPc, jitter, session }) {
    if (ourId === peerId) throw new LocalProtocolError(`a peer negotiation with ourselves (${ourId})`);
    this.ourId = ourId;
    this.peerId = peerId;
    this.role = initiatorOf(ourId, peerId) === ourId ? Role.INITIATOR : Role.POLITE;
    this.capabilities = capabilities;
    this.remoteCapabilities = NO_CAPABILITIES;
    this.session = session;
    this.remoteSession = null;
    this.remoteEpochless = false;
    this.config = config;
    this._newPc = newPc;
    this._jitter = jitter;
    this.state = NegState.IDLE;
    this.epoch = 0;
    this.pc = null;
    this.link = Link.NEW;
    this.attempts = 0;
    this.deadline = null;
    this.deadlineKind = null;
    this.pendingRenegotiation = false;
    this.remoteBuffer = [];
    this.offersSent = 0; // offers sent in this session; each carries its number as `seq`
    this._raised = null;
    this._resetConnectionState();
  }

  /** Everything that belongs to one peer connection (mirrors `_reset_connection_state`). */
  _resetConnectionState() {
    this.hasRemote = false;
    this.remoteEnded = false;
    this.localBuffer = [];
    this.abandonedOffers = 0;
    this.lastRemoteOffer = null;
    this.queuedOffer = null;
    this.notifiedConnected = false;
    this.exchanged = false; // an offer/answer exchange completed on this connection
  }

  // ---------------------------------------------------------------- inputs

  /** Whether we make the offers for this pair. */
  get isInitiator() { return this.role === Role.INITIATOR; }

  start(now) { return this._dispatch(Input.START, now, null); }
  close(now) { return this._dispatch(Input.CLOSE, now, null); }
  requestRenegotiation(now) { return this._dispatch(Input.RENEGOTIATE_REQUESTED, now, null); }
  /** The connection asks for a new exchange: before its first one completed that is the
   * first offer itself, nothing more (mirrors `on_negotiation_needed`). */
  onNegotiationNeeded(now) { return this.exchanged ? this.requestRenegotiation(now) : []; }

  /** The clock says `now`: our deadline's own input if it is due, else `timer` (mirrors
   * `on_timer`). */
  onTimer(now) {
    const kind = this.deadlineKind;
    const when = this.deadline;
    if (kind !== null && when !== null && now >= when) return this._dispatch(EXPIRED[kind], now, null);
    return this._dispatch(Input.TIMER, now, null);
  }

  onLocalDescription(description, now) { return this._dispatch(Input.LOCAL_DESCRIPTION, now, description); }
  onRemoteApplied(now) { return this._dispatch(Input.REMOTE_APPLIED, now, null); }
  onCandidateGathered(candidate, now) { return this._dispatch(Input.CANDIDATE_GATHERED, now, candidate); }
  onConnectionState(state, now) { return this._dispatch(Input.CONNECTION_STATE, now, state); }
  onOperationFailed(operation, error, now) { return this._dispatch(Input.OPERATION_FAILED, now, [operation, error]); }

  /** A parsed signaling frame from the peer (mirrors `PeerNegotiation.on_signal`): frames
   * of another session or epoch are dropped first; a new session of the peer is the input
   * `peer-restarted`, an offer of a newer epoch `newer-epoch`; then the frame itself is
   * the input of its type. */
  onSignal(message, now) {
    const { pair } = message;
    if (!message.pair.epochGiven) this.remoteEpochless = true;
    const stale = this._stale(message, pair);
    if (stale !== null) return [this._log("debug", `dropped ${message.type}: ${stale}`)];
    const isOffer = message.type === "webrtc-offer";
    let actions = [];
    if (pair.sid !== null && this.remoteSession !== null && this.remoteSession !== pair.sid) {
      actions = this._dispatch(Input.PEER_RESTARTED, now, pair.epoch);
    } else if (isOffer && pair.epoch > this.epoch) {
      actions = this._dispatch(Input.NEWER_EPOCH, now, pair.epoch);
    }
    if (pair.sid !== null) this.remoteSession = pair.sid;
    if ((isOffer || message.type === "webrtc-answer") && pair.caps !== null) {
      this.remoteCapabilities = capsFromWire(pair.caps);
    }
    if (isOffer) {
      // Duplicates are told apart by the sender's offer number when it sends one: aiortc
      // makes byte-equal offers when renegotiating without a change (mirrors `RemoteOffer`).
      const key = pair.seq !== null ? `#${pair.seq}` : message.description.sdp;
      return actions.concat(this._dispatch(Input.REMOTE_OFFER, now, { description: message.description, key }));
    }
    if (message.type === "webrtc-answer") return actions.concat(this._dispatch(Input.REMOTE_ANSWER, now, message.description));
    if (message.type === "webrtc-ice") return actions.concat(this._dispatch(Input.REMOTE_CANDIDATE, now, message.candidate));
    return actions.concat(this._dispatch(Input.REMOTE_RENEGOTIATE, now, pair.reason));
  }

  /** Why `message` belongs to another session or epoch, or null (mirrors `_stale`). */
  _stale(message, pair) {
    const { rsid, sid, epoch } = pair;
    if (rsid !== null && rsid !== this.session) return `addressed to our earlier session ${rsid}`;
    if (sid !== null && this.remoteSession !== null && this.remoteSession !== sid) {
      if (rsid === null) return null; // their side started the pair over: so do we (peer-restarted)
      return `from their earlier session ${sid}`;
    }
    if (epoch < this.epoch) return `stale epoch ${epoch} (ours is ${this.epoch})`;
    if (epoch > this.epoch && message.type !== "webrtc-offer") return `future epoch ${epoch} (ours is ${this.epoch})`;
    return null; // a newer offer is the table's to judge (newer-epoch)
  }

  // ---------------------------------------------------------------- dispatch

  /** Run `input` through the table, then each input its handler raised (mirrors
   * `_dispatch`). */
  _dispatch(input, now, payload) {
    let step = [input, payload];
    const actions = [];
    try {
      while (step !== null) {
        actions.push(...this._transition(step[0], now, step[1]));
        step = this._raised;
        this._raised = null;
      }
    } finally {
      this._raised = null;
    }
    return actions;
  }

  /** One entry of the table: refuse a missing key, run the handler, check where it led
   * (mirrors `_transition`). */
  _transition(input, now, payload) {
    const before = this.state;
    const entry = TRANSITIONS.get(`${this.role}|${before}|${input}`);
    if (entry === undefined) {
      let detail = `peer ${this.peerId}: input ${input} is not allowed in state ${before} on the ${this.role} side`;
      const why = WHY_REFUSED.get(`${this.role}|${input}`);
      if (why !== undefined) detail += ` (${why(payload)})`;
      throw REMOTE_INPUTS.has(input) ? new RemoteProtocolError(detail) : new LocalProtocolError(detail);
    }
    const actions = entry.handler.call(this, now, payload);
    if (!entry.nextStates.has(this.state)) {
      // the table below is wrong: a bug here, not a caller's
      throw new LocalProtocolError(
        `peer ${this.peerId}: ${input} in ${before} on the ${this.role} side led to ${this.state}, `
        + "which the transition table does not list",
      );
    }
    return actions;
  }

  /** Have `input` run through the table right after the current one (mirrors `_raise`). */
  _raise(input, payload = null) {
    if (this._raised !== null) throw new Error("one follow-up input per step");
    this._raised = [input, payload];
  }

  // ---------------------------------------------------------------- helpers

  _log(level, text) { return log(level, `[${this.peerId}] ${text}`); }
  _arm(kind, when) { this.deadline = when; this.deadlineKind = kind; }
  _disarm() { this.deadline = null; this.deadlineKind = null; }
  _send(type, fields) {
    return { kind: "SendToServer", frame: { channel: Channel.SIGNALING, type, toUserId: this.peerId, ...fields }, peerId: this.peerId };
  }

  /** Mirrors `_signal_fields`: every frame carries the epoch and our session. */
  _signalFields(extra = {}) {
    const fields = { ...extra, epoch: this.epoch, sid: this.session };
    if (this.remoteSession !== null) fields.rsid = this.remoteSession;
    return fields;
  }

  /** Mirrors `_next_epoch`: a peer that sends no epochs keeps every connection at 0. */
  _nextEpoch() { this.epoch = this.remoteEpochless ? 0 : this.epoch + 1; }

  /** Whether a failure can be repaired on this connection by an ICE restart (mirrors
   * `_can_restart_ice`). */
  _canRestartIce() {
    const both = this.capabilities.iceRestart && this.remoteCapabilities.iceRestart;
    return this.pc !== null && this.hasRemote && both;
  }

  /** A fresh peer connection for the current epoch (mirrors `_open_pc`). */
  _openPc() {
    this.pc = this._newPc();
    this.link = Link.NEW;
    this._resetConnectionState();
    return [
      { kind: "CreatePeer", peerId: this.peerId, pc: this.pc, initiator: this.isInitiator },
      { kind: "PeerConnecting", peerId: this.peerId, epoch: this.epoch },
    ];
  }

  /** Close the current connection; candidates held for it go with it (mirrors `_close_pc`). */
  _closePc() {
    const pc = this.pc;
    this.pc = null;
    this._resetConnectionState();
    this.remoteBuffer = [];
    return pc === null ? [] : [{ kind: "ClosePeer", peerId: this.peerId, pc }];
  }

  /** Mirrors `_make_offer`. */
  _makeOffer(now, iceRestart = false) {
    const actions = this.pc === null ? this._openPc() : [];
    this.pendingRenegotiation = false;
    this.state = NegState.MAKING_OFFER;
    this._arm(Deadline.NEGOTIATION, now + this.config.negotiationTimeout);
    actions.push({ kind: "CreateOffer", peerId: this.peerId, pc: this.pc, iceRestart });
    actions.push(this._log("info", `Creating offer for peer: ${this.peerId} (epoch ${this.epoch}${iceRestart ? ", ICE restart" : ""})`));
    return actions;
  }

  _askForOffer(reason) { return this._send("webrtc-renegotiate", this._signalFields({ reason })); }

  /** Mirrors `_flush_remote`. */
  _flushRemote() {
    const pc = this.pc;
    const buffered = this.remoteBuffer;
    this.remoteBuffer = [];
    this.hasRemote = true;
    this.remoteEnded = false;
    const actions = [];
    for (const candidate of buffered) actions.push(...this._addRemote(pc, candidate));
    return actions;
  }

  /** Mirrors `_add_remote`: `null` or `""` ends the candidates of this description. */
  _addRemote(pc, candidate) {
    if (this.remoteEnded) return [this._log("debug", "dropped a candidate after end-of-candidates")];
    if (candidate === null || candidate.candidate === "") this.remoteEnded = true;
    return [{ kind: "AddIceCandidate", peerId: this.peerId, pc, candidate }];
  }

  _flushLocal() {
    const buffered = this.localBuffer;
    this.localBuffer = [];
    return buffered.map((c) => this._sendCandidate(c));
  }

  _sendCandidate(candidate) {
    return this._send("webrtc-ice", this._signalFields({ candidate: candidate === null ? null : candidateToWire(candidate) }));
  }

  /** Reached STABLE: arm the connect deadline and raise what was put off (the offer that
   * waited for our answer to be applied, or a renegotiation) (mirrors `_settle`). */
  _settle(now) {
    this.state = NegState.STABLE;
    this.exchanged = true;
    if (this.link === Link.CONNECTED) this._disarm();
    else this._arm(Deadline.CONNECT, now + this.config.connectTimeout);
    if (this.queuedOffer !== null) {
      const offer = this.queuedOffer;
      this.queuedOffer = null;
      this._raise(Input.REMOTE_OFFER, offer);
    } else if (this.pendingRenegotiation) {
      this._raise(Input.RENEGOTIATE_REQUESTED);
    }
  }

  _countFailure(reason) {
    this.attempts += 1;
    return [this._log("warning", `attempt ${this.attempts} failed: ${reason}`)];
  }

  _giveUp(reason) {
    const actions = this._closePc();
    this.state = NegState.FAILED;
    this._disarm();
    return [...actions, { kind: "PeerFailed", peerId: this.peerId, reason }];
  }

  /** Initiator: close the connection; a fresh one follows the back-off (mirrors
   * `_close_and_back_off`). */
  _closeAndBackOff(now) {
    const actions = this._closePc();
    this.state = NegState.WAITING;
    this._arm(Deadline.BACKOFF, now + backoff(this.config, this.attempts, this._jitter()));
    return actions;
  }

  /** Polite side: tell the initiator, and wait a while for its new offer (mirrors
   * `_report_failure`). */
  _reportFailure(now) {
    const wait = this.config.offerWait + backoff(this.config, this.attempts, this._jitter());
    this._arm(Deadline.RECOVERY, now + wait);
    return [this._askForOffer("failed")];
  }

  // ---------------------------------------------------------------- handlers
  // Each takes `(now, payload)`; the table says where each may lead.

  _startOffering(now) { return this._makeOffer(now); }

  _startWaiting(now) {
    this._arm(Deadline.OFFER_WAIT, now + this.config.offerWait);
    return [this._log("info", `WAITING for WebRTC KEY from: ${this.peerId}`)];
  }

  _close() {
    const actions = this._closePc();
    this.state = NegState.CLOSED;
    this._disarm();
    return actions;
  }

  _nothingDue() { return []; }

  // our own descriptions

  _sendOffer(now, description) {
    this.state = NegState.HAVE_LOCAL_OFFER;
    this.offersSent += 1;
    const offer = this._send("webrtc-offer", this._signalFields({
      offer: { type: description.type, sdp: description.sdp }, caps: capsToWire(this.capabilities), seq: this.offersSent,
    }));
    return [offer, this._log("info", `Sending offer to: ${this.peerId}`), ...this._flushLocal()];
  }

  _sendAnswer(now, description) {
    const answer = this._send("webrtc-answer", this._signalFields({
      answer: { type: description.type, sdp: description.sdp }, caps: capsToWire(this.capabilities),
    }));
    const actions = [answer, ...this._flushLocal()];
    this._settle(now);
    return actions;
  }

  /** The result of an offer we rolled back: it no longer matters. */
  _dropAbandonedOffer() {
    if (this.abandonedOffers === 0) {
      throw new LocalProtocolError(`peer ${this.peerId}: input local-description is not allowed in state ${this.state}`);
    }
    this.abandonedOffers -= 1;
    return [];
  }

  // the peer's descriptions

  _applyAnswer(now, description) {
    this.state = NegState.APPLYING_ANSWER;
    return [
      { kind: "SetRemoteDescription", peerId: this.peerId, pc: this.pc, description },
      this._log("info", `Received answer from: ${this.peerId}`),
    ];
  }

  _answerApplied(now) {
    const actions = this._flushRemote();
    this._settle(now);
    return actions;
  }

  _applyOffer(now, offer) {
    if (offer.key === this.lastRemoteOffer) return [this._log("debug", "dropped a duplicate offer")];
    const actions = this.pc === null ? this._openPc() : [];
    this.lastRemoteOffer = offer.key;
    this.state = NegState.APPLYING_OFFER;
    this._arm(Deadline.NEGOTIATION, now + this.config.negotiationTimeout);
    actions.push({ kind: "SetRemoteDescription", peerId: this.peerId, pc: this.pc, description: offer.description });
    actions.push(this._log("info", `Received offer from: ${this.peerId} (epoch ${this.epoch})`));
    return actions;
  }

  /** Offers crossed: the initiator's goes on. */
  _ignorePoliteOffer() { return [this._log("info", "glare: ignoring the polite side's offer")]; }

  /** Offers crossed: the polite side yields, and takes theirs once stable. */
  _rollBackSentOffer(now, offer) {
    this.pendingRenegotiation = true; // our own change still needs an exchange
    this.localBuffer = [];
    this.state = NegState.STABLE;
    this._raise(Input.REMOTE_OFFER, offer);
    return [
      { kind: "RollbackLocalDescription", peerId: this.peerId, pc: this.pc },
      this._log("info", "glare: rolling back our offer"),
    ];
  }

  /** As `_rollBackSentOffer`, while our CreateOffer is still running: its result, when it
   * comes, is ignored. */
  _rollBackUnfinishedOffer(now, offer) {
    this.abandonedOffers += 1;
    return this._rollBackSentOffer(now, offer);
  }

  /** An offer while we apply an answer (the peer answered, then offered at once): it is
   * applied as soon as we are stable. Only one can wait. */
  _queueOffer(now, offer) {
    const queued = this.queuedOffer === null ? null : this.queuedOffer.key;
    if (offer.key === this.lastRemoteOffer || offer.key === queued) return [this._log("debug", "dropped a duplicate offer")];
    if (this.queuedOffer !== null) {
      throw new RemoteProtocolError(`peer ${this.peerId}: input remote-offer is not allowed in state ${this.state}`);
    }
    this.queuedOffer = offer;
    return [];
  }

  /** An offer while we answer theirs: a duplicate, or an error. */
  _refuseSecondOffer(now, offer) {
    const queued = this.queuedOffer === null ? null : this.queuedOffer.key;
    if (offer.key === this.lastRemoteOffer || offer.key === queued) return [this._log("debug", "dropped a duplicate offer")];
    throw new RemoteProtocolError(`peer ${this.peerId}: input remote-offer is not allowed in state ${this.state}`);
  }

  _offerApplied() {
    const actions = this._flushRemote();
    this.state = NegState.MAKING_ANSWER;
    actions.push({ kind: "CreateAnswer", peerId: this.peerId, pc: this.pc });
    return actions;
  }

  // candidates

  /** No remote description is in place (or one is being applied): keep it. */
  _bufferCandidate(now, candidate) {
    this.remoteBuffer.push(candidate);
    if (this.remoteBuffer.length > MAX_BUFFERED_CANDIDATES) this.remoteBuffer.shift();
    return [];
  }

  /** Apply it if the remote description is in place, else keep it. */
  _takeCandidate(now, candidate) {
    if (this.pc !== null && this.hasRemote) return this._addRemote(this.pc, candidate);
    return this._bufferCandidate(now, candidate);
  }

  _dropCandidate() { return [this._log("debug", "dropped a candidate: no connection")]; }

  /** Our offer or answer is not out yet: the candidate follows it. */
  _holdGathered(now, candidate) {
    this.localBuffer.push(candidate);
    return [];
  }

  _sendGathered(now, candidate) { return [this._sendCandidate(candidate)]; }

  // requests for a new exchange

  /** An exchange is under way (or none can start yet): renegotiate once stable. */
  _putOff() {
    this.pendingRenegotiation = true;
    return [];
  }

  /** The peer's request during an exchange: a failure report, or a missing offer (ours
   * crossed it on a slow link), is answered by the exchange itself; other requests run
   * once it is done (mirrors `_put_off_unless_failed`). */
  _putOffUnlessFailed(now, reason) {
    if (reason !== "failed" && reason !== "no-offer") this.pendingRenegotiation = true;
    return [];
  }

  /** A fresh connection is on its way and negotiates everything anyway. */
  _moot() { return []; }

  _renegotiate(now) { return this._makeOffer(now); }

  /** Polite side: offer if we can roll back in glare, else ask the initiator. */
  _offerOrAsk(now) {
    if (this.capabilities.rollback) return this._makeOffer(now);
    this.pendingRenegotiation = false;
    return [this._askForOffer("renegotiate")];
  }

  /** The polite side asks for an offer: a failure it reports costs an attempt; a missing
   * offer it reports crossed ours if we are connected. */
  _renegotiateForPeer(now, reason) {
    if (reason === "failed") {
      this._raise(Input.ATTEMPT_FAILED, "the peer reported its connection failed");
      return [];
    }
    if (reason === "no-offer" && this.link === Link.CONNECTED) return [];
    return this._makeOffer(now);
  }

  // the connection

  _linkChanged(now, state) { return this._trackLink(now, state, false); }

  /** As `_linkChanged`; `disconnected` arms the grace deadline (during an exchange the
   * negotiation deadline runs anyway). */
  _linkChangedWhenStable(now, state) { return this._trackLink(now, state, true); }

  /** Mirrors `_track_link`. */
  _trackLink(now, state, grace) {
    if (state === "connected" || state === "completed") {
      // newly connected (first, or after an ICE restart): which pair does it use?
      const actions = [];
      if (this.link !== Link.CONNECTED && this.pc !== null) actions.push({ kind: "ReadSelectedPair", peerId: this.peerId, pc: this.pc });
      this.link = Link.CONNECTED;
      this.attempts = 0;
      if (ENDED_BY_CONNECTING.has(this.deadlineKind)) this._disarm();
      if (!this.notifiedConnected) {
        this.notifiedConnected = true;
        actions.push({ kind: "PeerConnected", peerId: this.peerId, epoch: this.epoch });
        actions.push(this._log("info", `Connection established with: ${this.peerId}`));
      }
      return actions;
    }
    if (state === "new" || state === "connecting" || state === "checking") {
      this.link = Link.CONNECTING;
      return [];
    }
    if (state === "disconnected") {
      this.link = Link.DISCONNECTED;
      if (grace) this._arm(Deadline.DISCONNECTED, now + this.config.disconnectedGrace);
      return [];
    }
    this.link = Link.FAILED; // "failed", or "closed" by the remote side
    this.notifiedConnected = false;
    this._raise(Input.ATTEMPT_FAILED, `connection ${state}`);
    return [];
  }

  /** Mirrors `_operation_failed`. */
  _operationFailed(now, [operation, error]) {
    if (operation === "AddIceCandidate") {
      // One candidate that cannot be added (a peer's malformed line, an mDNS name that
      // does not resolve) loses only itself: the others may still connect.
      return [this._log("warning", `candidate not added: ${error}`)];
    }
    this._raise(Input.ATTEMPT_FAILED, `operation failed (${operation}: ${error})`);
    return [];
  }

  /** As `_operationFailed`, but the failure may be the offer we rolled back (its
   * CreateOffer was still running), which no longer matters. */
  _operationFailedAfterRollback(now, failure) {
    if (this.abandonedOffers && failure[0] !== "AddIceCandidate") {
      this.abandonedOffers -= 1;
      return [];
    }
    return this._operationFailed(now, failure);
  }

  // deadlines

  _negotiationTimedOut() {
    this._disarm();
    this._raise(Input.ATTEMPT_FAILED, `negotiation timed out in ${this.state}`);
    return [];
  }

  _notConnectedInTime() {
    this._disarm();
    this._raise(Input.ATTEMPT_FAILED, "not connected in time");
    return [];
  }

  _disconnectedTooLong() {
    this._disarm();
    this._raise(Input.ATTEMPT_FAILED, "disconnected for too long");
    return [];
  }

  /** The back-off is over: a fresh connection at the next epoch. */
  _offerOnFreshConnection(now) {
    this._disarm();
    this._nextEpoch();
    return this._makeOffer(now);
  }

  _askForOfferAgain(now) { return this._askAgain(now, Deadline.OFFER_WAIT, "no-offer"); }
  _reportFailureAgain(now) { return this._askAgain(now, Deadline.RECOVERY, "failed"); }

  /** Polite side: no offer came in time. Each unanswered request is an attempt (mirrors
   * `_ask_again`). */
  _askAgain(now, kind, reason) {
    this._disarm();
    this.attempts += 1;
    if (this.attempts > this.config.maxRetries) return this._giveUp("no offer from the initiator");
    const wait = this.config.offerWait + backoff(this.config, this.attempts, this._jitter());
    this._arm(kind, now + wait);
    return [this._askForOffer(reason)];
  }

  // recovery: one attempt failed (the payload says why)

  /** Initiator, during an exchange: close, back off, then a fresh connection. */
  _recreate(now, reason) {
    const actions = this._countFailure(reason);
    if (this.attempts > this.config.maxRetries) return actions.concat(this._giveUp(reason));
    return actions.concat(this._closeAndBackOff(now));
  }

  /** Initiator, stable: restart ICE on this connection when both sides can, else as
   * `_recreate`. */
  _restartOrRecreate(now, reason) {
    const actions = this._countFailure(reason);
    if (this.attempts > this.config.maxRetries) return actions.concat(this._giveUp(reason));
    if (this._canRestartIce()) return actions.concat(this._makeOffer(now, true));
    return actions.concat(this._closeAndBackOff(now));
  }

  /** Polite side, during an exchange: close, report, wait for a fresh offer. */
  _askAfresh(now, reason) {
    const actions = this._countFailure(reason);
    if (this.attempts > this.config.maxRetries) return actions.concat(this._giveUp(reason));
    actions.push(...this._closePc());
    this.state = NegState.IDLE;
    return actions.concat(this._reportFailure(now));
  }

  /** Polite side, stable: keep the connection for an ICE restart when both sides can,
   * else as `_askAfresh`. */
  _askInPlaceOrAfresh(now, reason) {
    if (!this._canRestartIce()) return this._askAfresh(now, reason);
    const actions = this._countFailure(reason);
    if (this.attempts > this.config.maxRetries) return actions.concat(this._giveUp(reason));
    return actions.concat(this._reportFailure(now));
  }

  // giving up, reviving, starting over

  /** Initiator, given up: a fresh request starts over with a full retry budget. */
  _reviveOffering(now) {
    this.attempts = 0;
    this._nextEpoch();
    return this._makeOffer(now);
  }

  /** Polite side, given up: ask the initiator, with a full retry budget. */
  _reviveAsking(now) {
    this.attempts = 0;
    this.state = NegState.IDLE;
    this._arm(Deadline.OFFER_WAIT, now + this.config.offerWait);
    return [this._askForOffer("renegotiate")];
  }

  /** Given up, an offer came: take it, with a full retry budget. */
  _reviveAnswering(now, offer) {
    this.attempts = 0;
    return this._applyOffer(now, offer);
  }

  /** The peer started our pair over (a new session of theirs): drop the connection and
   * begin again as on `start`, at their epoch (mirrors `_start_over`). */
  _startOver(now, epoch) {
    const actions = this._closePc();
    this.epoch = epoch;
    this.attempts = 0;
    this.pendingRenegotiation = false;
    this.state = NegState.IDLE;
    this._disarm();
    this._raise(Input.START);
    return [...actions, this._log("info", "the peer started our pair over")];
  }

  /** Polite side: the initiator started over on a fresh connection; its offer comes next
   * (mirrors `_follow`). */
  _follow(now, epoch) {
    const actions = this._closePc();
    this.epoch = epoch;
    this.state = NegState.IDLE;
    return [...actions, this._log("info", `following the initiator to epoch ${epoch}`)];
  }

  /** As `_follow`, with a full retry budget: the initiator started over, so do we. */
  _followAfterGivingUp(now, epoch) {
    this.attempts = 0;
    return this._follow(now, epoch);
  }
}


// ------------------------------------------------------------------ the table
//
// State by state, each input the state takes: `[handler, [next states]]` when both roles
// do the same, else `{initiator: ..., polite: ...}` with one entry per role that takes it.
// What is not listed is refused. Two templates stand for what many states share. (Mirrors
// `negotiation._TABLE`, entry for entry; a Python test compares the flattened tables.)

const S = NegState;
const I = Input;
const P = PeerNegotiation.prototype;
const INITIATOR = Role.INITIATOR;
const POLITE = Role.POLITE;

/** What every live state takes alike. */
function anywhere(state) {
  return {
    [I.CLOSE]: [P._close, [S.CLOSED]],
    [I.PEER_RESTARTED]: [P._startOver, [S.IDLE]], // raises start
    [I.TIMER]: [P._nothingDue, [state]],
  };
}

/** What every state with an offer or answer under way takes alike. */
function duringAnExchange(state) {
  return {
    [I.CONNECTION_STATE]: [P._linkChanged, [state]], // failed: raises attempt-failed
    [I.OPERATION_FAILED]: [P._operationFailed, [state]], // raises attempt-failed
    [I.NEGOTIATION_TIMEOUT]: [P._negotiationTimedOut, [state]], // raises attempt-failed
    [I.ATTEMPT_FAILED]: {
      [INITIATOR]: [P._recreate, [S.WAITING, S.FAILED]],
      [POLITE]: [P._askAfresh, [S.IDLE, S.FAILED]],
    },
    [I.RENEGOTIATE_REQUESTED]: [P._putOff, [state]],
    [I.REMOTE_RENEGOTIATE]: { [INITIATOR]: [P._putOffUnlessFailed, [state]] },
    [I.NEWER_EPOCH]: { [POLITE]: [P._follow, [S.IDLE]] },
    ...anywhere(state),
  };
}

const TABLE = {
  [S.IDLE]: {
    [I.START]: {
      [INITIATOR]: [P._startOffering, [S.MAKING_OFFER]],
      [POLITE]: [P._startWaiting, [S.IDLE]],
    },
    [I.REMOTE_OFFER]: [P._applyOffer, [S.APPLYING_OFFER]],
    [I.REMOTE_CANDIDATE]: [P._bufferCandidate, [S.IDLE]],
    [I.RENEGOTIATE_REQUESTED]: [P._putOff, [S.IDLE]],
    [I.REMOTE_RENEGOTIATE]: { [INITIATOR]: [P._putOffUnlessFailed, [S.IDLE]] },
    [I.NEWER_EPOCH]: { [POLITE]: [P._follow, [S.IDLE]] },
    [I.OFFER_WAIT_TIMEOUT]: { [POLITE]: [P._askForOfferAgain, [S.IDLE, S.FAILED]] },
    [I.RECOVERY_TIMEOUT]: { [POLITE]: [P._reportFailureAgain, [S.IDLE, S.FAILED]] },
    ...anywhere(S.IDLE),
  },
  [S.MAKING_OFFER]: {
    [I.LOCAL_DESCRIPTION]: [P._sendOffer, [S.HAVE_LOCAL_OFFER]],
    [I.REMOTE_OFFER]: { // glare
      [INITIATOR]: [P._ignorePoliteOffer, [S.MAKING_OFFER]],
      [POLITE]: [P._rollBackUnfinishedOffer, [S.STABLE]], // raises remote-offer
    },
    [I.REMOTE_CANDIDATE]: [P._takeCandidate, [S.MAKING_OFFER]],
    [I.CANDIDATE_GATHERED]: [P._holdGathered, [S.MAKING_OFFER]],
    ...duringAnExchange(S.MAKING_OFFER),
  },
  [S.HAVE_LOCAL_OFFER]: {
    [I.REMOTE_ANSWER]: [P._applyAnswer, [S.APPLYING_ANSWER]],
    [I.REMOTE_OFFER]: { // glare
      [INITIATOR]: [P._ignorePoliteOffer, [S.HAVE_LOCAL_OFFER]],
      [POLITE]: [P._rollBackSentOffer, [S.STABLE]], // raises remote-offer
    },
    [I.REMOTE_CANDIDATE]: [P._takeCandidate, [S.HAVE_LOCAL_OFFER]],
    [I.CANDIDATE_GATHERED]: [P._sendGathered, [S.HAVE_LOCAL_OFFER]],
    ...duringAnExchange(S.HAVE_LOCAL_OFFER),
  },
  [S.APPLYING_ANSWER]: {
    [I.REMOTE_APPLIED]: [P._answerApplied, [S.STABLE]], // raises what was put off
    [I.REMOTE_OFFER]: [P._queueOffer, [S.APPLYING_ANSWER]],
    [I.REMOTE_CANDIDATE]: [P._bufferCandidate, [S.APPLYING_ANSWER]],
    [I.CANDIDATE_GATHERED]: [P._sendGathered, [S.APPLYING_ANSWER]],
    ...duringAnExchange(S.APPLYING_ANSWER),
  },
  [S.APPLYING_OFFER]: {
    [I.REMOTE_APPLIED]: [P._offerApplied, [S.MAKING_ANSWER]],
    [I.REMOTE_OFFER]: [P._refuseSecondOffer, [S.APPLYING_OFFER]],
    [I.LOCAL_DESCRIPTION]: { [POLITE]: [P._dropAbandonedOffer, [S.APPLYING_OFFER]] },
    [I.REMOTE_CANDIDATE]: [P._bufferCandidate, [S.APPLYING_OFFER]],
    [I.CANDIDATE_GATHERED]: [P._holdGathered, [S.APPLYING_OFFER]],
    ...duringAnExchange(S.APPLYING_OFFER),
    [I.OPERATION_FAILED]: { // instead of the template's: the failure may be moot
      [INITIATOR]: [P._operationFailed, [S.APPLYING_OFFER]],
      [POLITE]: [P._operationFailedAfterRollback, [S.APPLYING_OFFER]],
    },
  },
  [S.MAKING_ANSWER]: {
    [I.LOCAL_DESCRIPTION]: [P._sendAnswer, [S.STABLE]], // raises what was put off
    [I.REMOTE_OFFER]: [P._refuseSecondOffer, [S.MAKING_ANSWER]],
    [I.REMOTE_CANDIDATE]: [P._takeCandidate, [S.MAKING_ANSWER]],
    [I.CANDIDATE_GATHERED]: [P._holdGathered, [S.MAKING_ANSWER]],
    ...duringAnExchange(S.MAKING_ANSWER),
  },
  [S.STABLE]: {
    [I.REMOTE_OFFER]: [P._applyOffer, [S.APPLYING_OFFER, S.STABLE]], // or a duplicate
    [I.RENEGOTIATE_REQUESTED]: {
      [INITIATOR]: [P._renegotiate, [S.MAKING_OFFER]],
      [POLITE]: [P._offerOrAsk, [S.MAKING_OFFER, S.STABLE]],
    },
    [I.REMOTE_RENEGOTIATE]: {
      [INITIATOR]: [P._renegotiateForPeer, [S.MAKING_OFFER, S.STABLE]],
    },
    [I.REMOTE_CANDIDATE]: [P._takeCandidate, [S.STABLE]],
    [I.CANDIDATE_GATHERED]: [P._sendGathered, [S.STABLE]],
    [I.CONNECTION_STATE]: [P._linkChangedWhenStable, [S.STABLE]],
    [I.OPERATION_FAILED]: [P._operationFailed, [S.STABLE]],
    [I.CONNECT_TIMEOUT]: [P._notConnectedInTime, [S.STABLE]],
    [I.DISCONNECTED_TIMEOUT]: [P._disconnectedTooLong, [S.STABLE]],
    // a polite side that rolled back for a duplicate offer still has its deadline
    [I.NEGOTIATION_TIMEOUT]: { [POLITE]: [P._negotiationTimedOut, [S.STABLE]] },
    [I.RECOVERY_TIMEOUT]: { [POLITE]: [P._reportFailureAgain, [S.STABLE, S.FAILED]] },
    [I.ATTEMPT_FAILED]: {
      [INITIATOR]: [P._restartOrRecreate, [S.MAKING_OFFER, S.WAITING, S.FAILED]],
      [POLITE]: [P._askInPlaceOrAfresh, [S.STABLE, S.IDLE, S.FAILED]],
    },
    [I.NEWER_EPOCH]: { [POLITE]: [P._follow, [S.IDLE]] },
    ...anywhere(S.STABLE),
  },
  [S.WAITING]: { // the initiator's only
    [I.BACKOFF_TIMEOUT]: { [INITIATOR]: [P._offerOnFreshConnection, [S.MAKING_OFFER]] },
    [I.RENEGOTIATE_REQUESTED]: { [INITIATOR]: [P._moot, [S.WAITING]] },
    [I.REMOTE_RENEGOTIATE]: { [INITIATOR]: [P._moot, [S.WAITING]] },
    [I.REMOTE_CANDIDATE]: { [INITIATOR]: [P._dropCandidate, [S.WAITING]] },
    [I.CLOSE]: { [INITIATOR]: [P._close, [S.CLOSED]] },
    [I.PEER_RESTARTED]: { [INITIATOR]: [P._startOver, [S.IDLE]] },
    [I.TIMER]: { [INITIATOR]: [P._nothingDue, [S.WAITING]] },
  },
  [S.FAILED]: {
    [I.REMOTE_OFFER]: [P._reviveAnswering, [S.APPLYING_OFFER]],
    [I.RENEGOTIATE_REQUESTED]: {
      [INITIATOR]: [P._reviveOffering, [S.MAKING_OFFER]],
      [POLITE]: [P._reviveAsking, [S.IDLE]],
    },
    [I.REMOTE_RENEGOTIATE]: { [INITIATOR]: [P._reviveOffering, [S.MAKING_OFFER]] },
    [I.REMOTE_CANDIDATE]: [P._dropCandidate, [S.FAILED]],
    [I.NEWER_EPOCH]: { [POLITE]: [P._followAfterGivingUp, [S.IDLE]] },
    ...anywhere(S.FAILED),
  },
  [S.CLOSED]: {},
};

/** `(role, state, input) → {handler, nextStates}`, keyed `role|state|input`: the table,
 * one entry per role (mirrors `negotiation.TRANSITIONS`, flattened as `_flatten` does).
 * The handler does the side effects; the pair must be in one of the next states once it
 * returned. Every key not listed is a protocol error. */
const TRANSITIONS = new Map();
for (const [state, entries] of Object.entries(TABLE)) {
  for (const [input, entry] of Object.entries(entries)) {
    const perRole = Array.isArray(entry) ? { [INITIATOR]: entry, [POLITE]: entry } : entry;
    for (const [role, [handler, nextStates]] of Object.entries(perRole)) {
      if (typeof handler !== "function") throw new Error(`no handler for ${role}|${state}|${input}`);
      TRANSITIONS.set(`${role}|${state}|${input}`, Object.freeze({ handler, nextStates: new Set(nextStates) }));
    }
  }
}

/** The table as sorted `[role, state, input, [sorted next states]]` rows (for the Python
 * test that compares it with `negotiation.TRANSITIONS`). */
export function negotiationTransitions() {
  const rows = [...TRANSITIONS].map(([k, { nextStates }]) => [...k.split("|"), [...nextStates].sort()]);
  const order = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  return rows.sort((a, b) => order(a[0], b[0]) || order(a[1], b[1]) || order(a[2], b[2]));
}
