// negotiation.js — the negotiation with one remote peer: a port of
// `sansio_signal.negotiation` (its module docstring is the theory of operation). Pure;
// see machine.js.

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
  negotiationTimeout: 10.0,
  connectTimeout: 15.0,
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

/** Everything that can happen to a pair (mirrors `negotiation.Input`; same values). */
export const Input = Object.freeze({
  START: "start",
  REMOTE_OFFER: "remote-offer",
  REMOTE_ANSWER: "remote-answer",
  REMOTE_CANDIDATE: "remote-candidate",
  REMOTE_RENEGOTIATE: "remote-renegotiate",
  LOCAL_DESCRIPTION: "local-description",
  REMOTE_APPLIED: "remote-applied",
  CANDIDATE_GATHERED: "candidate-gathered",
  CONNECTION_STATE: "connection-state",
  OPERATION_FAILED: "operation-failed",
  RENEGOTIATE_REQUESTED: "renegotiate-requested",
  TIMER: "timer",
  CLOSE: "close",
});

const REMOTE_INPUTS = new Set([
  Input.REMOTE_OFFER,
  Input.REMOTE_ANSWER,
  Input.REMOTE_CANDIDATE,
  Input.REMOTE_RENEGOTIATE,
]);
const HOLD_LOCAL = new Set([NegState.MAKING_OFFER, NegState.APPLYING_OFFER, NegState.MAKING_ANSWER]);


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
    this.isInitiator = initiatorOf(ourId, peerId) === ourId;
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
    this.link = "new";
    this.attempts = 0;
    this.deadline = null;
    this.deadlineKind = null;
    this.pendingRenegotiation = false;
    this.remoteBuffer = [];
    this.offersSent = 0; // offers sent in this session; each carries its number as `seq`
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
  }

  // ---------------------------------------------------------------- inputs

  start(now) { return this._dispatch(Input.START, now, null); }
  close(now) { return this._dispatch(Input.CLOSE, now, null); }
  requestRenegotiation(now) { return this._dispatch(Input.RENEGOTIATE_REQUESTED, now, null); }
  onTimer(now) { return this._dispatch(Input.TIMER, now, null); }
  onLocalDescription(description, now) { return this._dispatch(Input.LOCAL_DESCRIPTION, now, description); }
  onRemoteApplied(now) { return this._dispatch(Input.REMOTE_APPLIED, now, null); }
  onCandidateGathered(candidate, now) { return this._dispatch(Input.CANDIDATE_GATHERED, now, candidate); }
  onConnectionState(state, now) { return this._dispatch(Input.CONNECTION_STATE, now, state); }
  onOperationFailed(operation, error, now) { return this._dispatch(Input.OPERATION_FAILED, now, [operation, error]); }

  /** A parsed signaling frame from the peer (mirrors `PeerNegotiation.on_signal`). */
  onSignal(message, now) {
    const { pair } = message;
    if (message.epochless) this.remoteEpochless = true;
    const stale = this._stale(message, pair);
    if (stale !== null) return [this._log("debug", `dropped ${message.type}: ${stale}`)];
    let actions = [];
    const { sid, epoch } = pair;
    if (sid !== null && sid !== this.remoteSession) {
      const restarted = this.remoteSession !== null;
      this.remoteSession = sid;
      if (restarted) actions = this._startOver(epoch, now); // a new session of theirs
    }
    const isOffer = message.type === "webrtc-offer";
    if ((isOffer || message.type === "webrtc-answer") && pair.caps !== null) {
      this.remoteCapabilities = capsFromWire(pair.caps);
    }
    if (isOffer) {
      if (epoch > this.epoch) actions.push(...this._follow(epoch, `epoch ${epoch}`));
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
    const newSession = sid !== null && sid !== this.remoteSession;
    if (newSession && this.remoteSession !== null) {
      if (rsid === null) return null; // their side started the pair over: so do we (_startOver)
      return `from their earlier session ${sid}`;
    }
    if (epoch < this.epoch) return `stale epoch ${epoch} (ours is ${this.epoch})`;
    if (epoch > this.epoch) {
      if (message.type !== "webrtc-offer") return `future epoch ${epoch} (ours is ${this.epoch})`;
      if (this.isInitiator) {
        throw new RemoteProtocolError(
          `offer of epoch ${epoch} from ${this.peerId}, ahead of the initiator's epoch ${this.epoch}`,
        );
      }
    }
    return null;
  }

  // ---------------------------------------------------------------- dispatch

  _dispatch(input, now, payload) {
    const handler = TABLE.get(key(this.state, input));
    if (handler === undefined) {
      const detail = `peer ${this.peerId}: input ${input} is not allowed in state ${this.state}`;
      throw REMOTE_INPUTS.has(input) ? new RemoteProtocolError(detail) : new LocalProtocolError(detail);
    }
    return handler.call(this, now, payload);
  }

  // ---------------------------------------------------------------- helpers

  _log(level, text) { return log(level, `[${this.peerId}] ${text}`); }
  _setDeadline(when, kind) { this.deadline = when; this.deadlineKind = kind; }
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
  _bothRestart() { return this.capabilities.iceRestart && this.remoteCapabilities.iceRestart; }
  _mayOffer() { return this.isInitiator || this.capabilities.rollback; }

  /** A fresh peer connection for the current epoch (mirrors `_open_pc`). */
  _openPc() {
    this.pc = this._newPc();
    this.link = "new";
    this._resetConnectionState();
    return [
      { kind: "CreatePeer", peerId: this.peerId, pc: this.pc, initiator: this.isInitiator },
      { kind: "PeerConnecting", peerId: this.peerId, epoch: this.epoch },
    ];
  }

  /** Mirrors `_close_pc`. */
  _closePc() {
    const pc = this.pc;
    this.pc = null;
    this._resetConnectionState();
    this.remoteBuffer = [];
    return pc === null ? [] : [{ kind: "ClosePeer", peerId: this.peerId, pc }];
  }

  /** The peer started our pair over: drop the connection and begin again as on start,
   * at their epoch (mirrors `_start_over`). */
  _startOver(epoch, now) {
    const actions = this._closePc();
    this.epoch = epoch;
    this.attempts = 0;
    this.pendingRenegotiation = false;
    this.state = NegState.IDLE;
    this._setDeadline(null, null);
    actions.push(this._log("info", "the peer started our pair over"));
    return actions.concat(this._dispatch(Input.START, now, null));
  }

  /** Polite side: the initiator started over with a fresh connection (mirrors `_follow`). */
  _follow(epoch, why) {
    const actions = this._closePc();
    this.epoch = epoch;
    if (this.state === NegState.FAILED) this.attempts = 0;
    this.state = NegState.IDLE;
    actions.push(this._log("info", `following the initiator to ${why}`));
    return actions;
  }

  /** Mirrors `_make_offer`. */
  _makeOffer(now, iceRestart = false) {
    const actions = this.pc === null ? this._openPc() : [];
    this.pendingRenegotiation = false;
    this.state = NegState.MAKING_OFFER;
    this._setDeadline(now + this.config.negotiationTimeout, "negotiation");
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

  /** Reached STABLE: arm the connect deadline and run what was put off (mirrors `_after_stable`). */
  _afterStable(now) {
    this.state = NegState.STABLE;
    if (this.link === "connected") this._setDeadline(null, null);
    else this._setDeadline(now + this.config.connectTimeout, "connect");
    if (this.queuedOffer !== null) {
      const offer = this.queuedOffer;
      this.queuedOffer = null;
      return this._onRemoteOffer(now, offer);
    }
    if (!this.pendingRenegotiation) return [];
    if (this._mayOffer()) return this._makeOffer(now);
    this.pendingRenegotiation = false;
    return [this._askForOffer("renegotiate")];
  }

  /** One attempt failed: retry (restart, recreate or ask) or give up (mirrors `_failure`). */
  _failure(now, reason) {
    this.attempts += 1;
    const actions = [this._log("warning", `attempt ${this.attempts} failed: ${reason}`)];
    if (this.attempts > this.config.maxRetries) return actions.concat(this._giveUp(reason));
    const keepPc = this.state === NegState.STABLE && this.pc !== null && this.hasRemote && this._bothRestart();
    if (this.isInitiator) {
      if (keepPc) return actions.concat(this._makeOffer(now, true));
      actions.push(...this._closePc());
      this.state = NegState.WAITING;
      this._setDeadline(now + backoff(this.config, this.attempts, this._jitter()), "backoff");
      return actions;
    }
    if (!keepPc) {
      actions.push(...this._closePc());
      this.state = NegState.IDLE;
    }
    actions.push(this._askForOffer("failed"));
    const wait = this.config.offerWait + backoff(this.config, this.attempts, this._jitter());
    this._setDeadline(now + wait, "recovery");
    return actions;
  }

  _giveUp(reason) {
    const actions = this._closePc();
    this.state = NegState.FAILED;
    this._setDeadline(null, null);
    return [...actions, { kind: "PeerFailed", peerId: this.peerId, reason }];
  }

  /** From FAILED, on a fresh request: start over with a full budget (mirrors `_revive`). */
  _revive(now) {
    this.attempts = 0;
    if (this.isInitiator) {
      this._nextEpoch();
      return this._makeOffer(now);
    }
    this.state = NegState.IDLE;
    this._setDeadline(now + this.config.offerWait, "offer-wait");
    return [this._askForOffer("renegotiate")];
  }

  // ---------------------------------------------------------------- handlers

  _onStart(now) {
    if (this.isInitiator) return this._makeOffer(now);
    this._setDeadline(now + this.config.offerWait, "offer-wait");
    return [];
  }

  _onLocalOffer(now, description) {
    this.state = NegState.HAVE_LOCAL_OFFER;
    this.offersSent += 1;
    const offer = this._send("webrtc-offer", this._signalFields({
      offer: { type: description.type, sdp: description.sdp }, caps: capsToWire(this.capabilities), seq: this.offersSent,
    }));
    return [offer, ...this._flushLocal()];
  }

  _onLocalAnswer(now, description) {
    const answer = this._send("webrtc-answer", this._signalFields({
      answer: { type: description.type, sdp: description.sdp }, caps: capsToWire(this.capabilities),
    }));
    return [answer, ...this._flushLocal(), ...this._afterStable(now)];
  }

  /** The result of an offer we rolled back: it no longer matters. */
  _onAbandonedResult() {
    if (this.abandonedOffers === 0) {
      throw new LocalProtocolError(`peer ${this.peerId}: input local-description is not allowed in state ${this.state}`);
    }
    this.abandonedOffers -= 1;
    return [];
  }

  _onRemoteAnswer(now, description) {
    this.state = NegState.APPLYING_ANSWER;
    return [
      { kind: "SetRemoteDescription", peerId: this.peerId, pc: this.pc, description },
      this._log("info", `Received answer from: ${this.peerId}`),
    ];
  }

  _onAnswerApplied(now) { return this._flushRemote().concat(this._afterStable(now)); }

  _onRemoteOffer(now, offer) {
    const { description } = offer;
    if (offer.key === this.lastRemoteOffer) return [this._log("debug", "dropped a duplicate offer")];
    const actions = [];
    if (this.state === NegState.FAILED) this.attempts = 0;
    if (this.pc === null) actions.push(...this._openPc());
    this.lastRemoteOffer = offer.key;
    this.state = NegState.APPLYING_OFFER;
    this._setDeadline(now + this.config.negotiationTimeout, "negotiation");
    actions.push({ kind: "SetRemoteDescription", peerId: this.peerId, pc: this.pc, description });
    actions.push(this._log("info", `Received offer from: ${this.peerId} (epoch ${this.epoch})`));
    return actions;
  }

  /** Offers crossed: the initiator ignores theirs, the polite side yields (mirrors `_on_glare`). */
  _onGlare(now, offer) {
    if (this.isInitiator) return [this._log("info", "glare: ignoring the polite side's offer")];
    if (this.state === NegState.MAKING_OFFER) this.abandonedOffers += 1;
    this.pendingRenegotiation = true; // our own change still needs an exchange
    const rollback = { kind: "RollbackLocalDescription", peerId: this.peerId, pc: this.pc };
    this.localBuffer = [];
    this.state = NegState.STABLE;
    return [rollback, this._log("info", "glare: rolling back our offer"), ...this._onRemoteOffer(now, offer)];
  }

  /** Mirrors `_on_offer_while_busy`. */
  _onOfferWhileBusy(now, offer) {
    const queued = this.queuedOffer === null ? null : this.queuedOffer.key;
    if (offer.key === this.lastRemoteOffer || offer.key === queued) {
      return [this._log("debug", "dropped a duplicate offer")];
    }
    if (this.state !== NegState.APPLYING_ANSWER || this.queuedOffer !== null) {
      throw new RemoteProtocolError(`peer ${this.peerId}: input remote-offer is not allowed in state ${this.state}`);
    }
    this.queuedOffer = offer;
    return [];
  }

  _onOfferApplied(now) {
    const actions = this._flushRemote();
    this.state = NegState.MAKING_ANSWER;
    actions.push({ kind: "CreateAnswer", peerId: this.peerId, pc: this.pc });
    return actions;
  }

  /** Mirrors `_on_remote_candidate`: apply, or buffer until a remote description is in place. */
  _onRemoteCandidate(now, candidate) {
    const ready = this.pc !== null && this.hasRemote
      && this.state !== NegState.APPLYING_OFFER && this.state !== NegState.APPLYING_ANSWER;
    if (ready) return this._addRemote(this.pc, candidate);
    if (this.state === NegState.WAITING || this.state === NegState.FAILED) {
      return [this._log("debug", "dropped a candidate: no connection")];
    }
    this.remoteBuffer.push(candidate);
    if (this.remoteBuffer.length > MAX_BUFFERED_CANDIDATES) this.remoteBuffer.shift();
    return [];
  }

  /** Mirrors `_on_remote_renegotiate`. */
  _onRemoteRenegotiate(now, reason) {
    if (!this.isInitiator) {
      throw new RemoteProtocolError(`peer ${this.peerId}: webrtc-renegotiate from the initiator (state ${this.state})`);
    }
    if (this.state === NegState.FAILED) return this._revive(now);
    if (this.state === NegState.WAITING) return [];
    if (this.state === NegState.STABLE) {
      if (reason === "failed") return this._failure(now, "the peer reported its connection failed");
      if (reason === "no-offer" && this.link === "connected") return [];
      return this._makeOffer(now);
    }
    if (reason !== "failed") this.pendingRenegotiation = true;
    return [];
  }

  _onGathered(now, candidate) {
    if (HOLD_LOCAL.has(this.state)) {
      this.localBuffer.push(candidate);
      return [];
    }
    return [this._sendCandidate(candidate)];
  }

  /** Mirrors `_on_connection_state`. */
  _onConnectionState(now, state) {
    if (state === "connected" || state === "completed") {
      this.link = "connected";
      this.attempts = 0;
      const actions = [];
      if (["connect", "disconnected", "recovery"].includes(this.deadlineKind)) this._setDeadline(null, null);
      if (!this.notifiedConnected) {
        this.notifiedConnected = true;
        actions.push({ kind: "PeerConnected", peerId: this.peerId, epoch: this.epoch });
        actions.push(this._log("info", `Connection established with: ${this.peerId}`));
      }
      return actions;
    }
    if (state === "new" || state === "connecting" || state === "checking") {
      this.link = "connecting";
      return [];
    }
    if (state === "disconnected") {
      this.link = "disconnected";
      if (this.state === NegState.STABLE) this._setDeadline(now + this.config.disconnectedGrace, "disconnected");
      return [];
    }
    this.link = "failed"; // "failed", or "closed" by the remote side
    this.notifiedConnected = false;
    return this._failure(now, `connection ${state}`);
  }

  /** Mirrors `_on_operation_failed`. */
  _onOperationFailed(now, [operation, error]) {
    if (operation === "AddIceCandidate") {
      // One candidate that cannot be added (a peer's malformed line, an mDNS name that
      // does not resolve) loses only itself: the others may still connect.
      return [this._log("warning", `candidate not added: ${error}`)];
    }
    const detail = `${operation}: ${error}`;
    if (this.abandonedOffers && this.state === NegState.APPLYING_OFFER) {
      this.abandonedOffers -= 1; // the offer we rolled back failed; irrelevant
      return [];
    }
    return this._failure(now, `operation failed (${detail})`);
  }

  _onRenegotiateRequested(now) {
    if (this.state === NegState.FAILED) return this._revive(now);
    if (this.state === NegState.WAITING) return [];
    if (this.state === NegState.STABLE) {
      if (this._mayOffer()) return this._makeOffer(now);
      return [this._askForOffer("renegotiate")];
    }
    this.pendingRenegotiation = true;
    return [];
  }

  /** Mirrors `_on_timer`. */
  _onTimer(now) {
    const kind = this.deadlineKind;
    if (this.deadline === null || now < this.deadline) return [];
    this._setDeadline(null, null);
    if (kind === "backoff") {
      this._nextEpoch();
      return this._makeOffer(now);
    }
    if (kind === "offer-wait" || kind === "recovery") {
      this.attempts += 1;
      if (this.attempts > this.config.maxRetries) return this._giveUp("no offer from the initiator");
      this._setDeadline(now + (this.config.offerWait + backoff(this.config, this.attempts, this._jitter())), kind);
      return [this._askForOffer(kind === "offer-wait" ? "no-offer" : "failed")];
    }
    if (kind === "negotiation") return this._failure(now, `negotiation timed out in ${this.state}`);
    if (kind === "connect") return this._failure(now, "not connected in time");
    if (kind === "disconnected") return this._failure(now, "disconnected for too long");
    throw new LocalProtocolError(`peer ${this.peerId}: unknown deadline ${kind}`);
  }

  _onClose() {
    const actions = this._closePc();
    this.state = NegState.CLOSED;
    this._setDeadline(null, null);
    return actions;
  }
}

// The transition table (mirrors `negotiation._TABLE`).
function key(state, input) { return `${state}|${input}`; }
const S = NegState;
const P = PeerNegotiation.prototype;
const WITH_PC = [S.MAKING_OFFER, S.HAVE_LOCAL_OFFER, S.APPLYING_ANSWER, S.APPLYING_OFFER, S.MAKING_ANSWER, S.STABLE];
const ALIVE = [S.IDLE, ...WITH_PC, S.WAITING, S.FAILED];
const TABLE = new Map([
  [key(S.IDLE, Input.START), P._onStart],
  // our own descriptions
  [key(S.MAKING_OFFER, Input.LOCAL_DESCRIPTION), P._onLocalOffer],
  [key(S.MAKING_ANSWER, Input.LOCAL_DESCRIPTION), P._onLocalAnswer],
  [key(S.APPLYING_OFFER, Input.LOCAL_DESCRIPTION), P._onAbandonedResult],
  [key(S.APPLYING_ANSWER, Input.REMOTE_APPLIED), P._onAnswerApplied],
  [key(S.APPLYING_OFFER, Input.REMOTE_APPLIED), P._onOfferApplied],
  // the peer's descriptions
  [key(S.HAVE_LOCAL_OFFER, Input.REMOTE_ANSWER), P._onRemoteAnswer],
  [key(S.IDLE, Input.REMOTE_OFFER), P._onRemoteOffer],
  [key(S.STABLE, Input.REMOTE_OFFER), P._onRemoteOffer],
  [key(S.FAILED, Input.REMOTE_OFFER), P._onRemoteOffer],
  [key(S.MAKING_OFFER, Input.REMOTE_OFFER), P._onGlare],
  [key(S.HAVE_LOCAL_OFFER, Input.REMOTE_OFFER), P._onGlare],
  [key(S.APPLYING_ANSWER, Input.REMOTE_OFFER), P._onOfferWhileBusy],
  [key(S.APPLYING_OFFER, Input.REMOTE_OFFER), P._onOfferWhileBusy],
  [key(S.MAKING_ANSWER, Input.REMOTE_OFFER), P._onOfferWhileBusy],
  // requests for a new exchange
  ...ALIVE.map((s) => [key(s, Input.REMOTE_RENEGOTIATE), P._onRemoteRenegotiate]),
  ...ALIVE.map((s) => [key(s, Input.RENEGOTIATE_REQUESTED), P._onRenegotiateRequested]),
  // candidates, connection state, failures
  ...ALIVE.map((s) => [key(s, Input.REMOTE_CANDIDATE), P._onRemoteCandidate]),
  ...WITH_PC.map((s) => [key(s, Input.CANDIDATE_GATHERED), P._onGathered]),
  ...WITH_PC.map((s) => [key(s, Input.CONNECTION_STATE), P._onConnectionState]),
  ...WITH_PC.map((s) => [key(s, Input.OPERATION_FAILED), P._onOperationFailed]),
  // time and the end
  ...ALIVE.map((s) => [key(s, Input.TIMER), P._onTimer]),
  ...ALIVE.map((s) => [key(s, Input.CLOSE), P._onClose]),
]);

/** The (state, input) pairs of the table, as "state|input" strings (for tests). */
export function transitionKeys() {
  return [...TABLE.keys()].sort();
}
