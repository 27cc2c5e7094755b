// sansio-signal.js — the browser client of sansio-signal (wire protocol v1).
//
// One ES module, no build step, no dependencies. Import it from the page the relay
// serves (`import { SignalingClient } from "/sansio-signal.js"`) or copy it next to
// your own page.
//
// Theory of operation
// -------------------
// The module has two halves, like the Python package:
//
// * `PeerNegotiation` is the decision-maker for one remote peer. It is pure: inputs in
//   (frames from the peer, results of our RTCPeerConnection, time), actions out (frames
//   to send, operations to run on the connection, notifications). It is a port of
//   `sansio_signal.negotiation.PeerNegotiation`: the same states, the same transition
//   table (a Python test compares the two), the same frame fields (`epoch`, `sid`,
//   `rsid`, `caps`, `reason`), so a browser and a Python/aiortc peer agree on every step.
//   Where a function mirrors a Python one, its comment names it.
// * `SignalingClient` owns the WebSocket and the RTCPeerConnections: it follows the room
//   (like `sansio_signal.client.ClientMachine`), gives each other member a
//   `PeerNegotiation`, and runs the actions it gets back — one promise chain per
//   connection, so operations on one connection never interleave.
//
// The rules that make peers interoperate (PROTOCOL.md, "Peer conventions"):
// * the lower userId offers (`initiatorOf`) and creates the data channel labelled `chat`;
// * a browser can roll back, so when offers cross ("glare") the initiator ignores the
//   polite side's offer and the polite side rolls back, answers, then offers again;
// * a peer that cannot roll back (aiortc) never offers unless it is the initiator: it
//   sends `webrtc-renegotiate` and we offer;
// * ICE restart when both sides declare `ice-restart` in `caps`; otherwise a failed
//   connection is closed and the initiator offers on a fresh one at the next epoch.
//
// Times in the pure half are seconds (floats) passed in as `now`; the driver uses
// `performance.now() / 1000`.

export const Channel = Object.freeze({
  ROOMS: "webrtc-dashboard-rooms",
  SIGNALING: "webrtc-signaling",
  CHAT: "webrtc-dashboard-chat",
  SYSTEM: "system",
});

/** Label of the data channel the initiator creates before its first offer. */
export const CHANNEL_LABEL = "chat";

/** Remote candidates held for one peer before the oldest are dropped
 * (mirrors `negotiation.MAX_BUFFERED_CANDIDATES`). */
export const MAX_BUFFERED_CANDIDATES = 512;

/** Join refusals: the server keeps us where we were (mirrors `client._JOIN_REFUSALS`). */
const JOIN_REFUSALS = new Set(["user-id-taken", "room-full", "invalid-id", "unauthorized"]);

/** Ends of the server connection after which our place may still be ours: a drop
 * (browsers report 1006), a server going away or restarting (mirrors
 * `client._RESUMABLE_CLOSES`). */
const RESUMABLE_CLOSES = new Set([1001, 1006, 1012]);

/** The ids the server accepts (PROTOCOL.md: `^[A-Za-z0-9_.:-]{1,64}$`). */
export const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * The user id that makes the offer for the pair (a, b): the lower one.
 * Mirrors `negotiation.initiator_of`. Valid ids are ASCII, so comparing UTF-16 code
 * units here is the same as Python's code-point comparison.
 */
export function initiatorOf(a, b) {
  return a < b ? a : b;
}

// ------------------------------------------------------------------ capabilities

/** What a current browser's RTCPeerConnection can do (mirrors `negotiation.BROWSER`). */
export const BROWSER = Object.freeze({ rollback: true, iceRestart: true, trickle: true });
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

/** Read a `caps` field; anything missing or malformed means "cannot"
 * (mirrors `Capabilities.from_wire`). */
export function capsFromWire(value) {
  const names = new Set(Array.isArray(value) ? value : []);
  return {
    rollback: names.has("rollback"),
    iceRestart: names.has("ice-restart"),
    trickle: names.has("trickle"),
  };
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

/** The per-pair epoch of a frame: absent or not an integer counts as 0
 * (mirrors `wire._Signal.epoch`). */
export function epochOf(frame) {
  return Number.isInteger(frame.epoch) ? frame.epoch : 0;
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

/** The peer sent something the protocol does not allow now (mirrors
 * `errors.RemoteProtocolError`): the client drops the frame and reports it. */
export class RemoteProtocolError extends Error {}
/** Our own side did something out of order: a bug (mirrors `errors.LocalProtocolError`). */
export class LocalProtocolError extends Error {}

// ------------------------------------------------------------------ the machine

/**
 * The negotiation with one remote peer (mirrors `negotiation.PeerNegotiation`).
 *
 * Every method takes `now` (seconds) and returns a list of actions, plain objects with
 * a `kind`:
 *   {kind: "create-peer", pc, initiator}      make an RTCPeerConnection (handle `pc`)
 *   {kind: "create-offer", pc, iceRestart}    createOffer + setLocalDescription
 *   {kind: "create-answer", pc}               createAnswer + setLocalDescription
 *   {kind: "set-remote", pc, description}     setRemoteDescription
 *   {kind: "rollback", pc}                    setLocalDescription({type: "rollback"})
 *   {kind: "add-candidate", pc, candidate}    addIceCandidate (null: end of candidates)
 *   {kind: "close-peer", pc}                  close the connection
 *   {kind: "send", frame}                     a signaling frame for the server
 *   {kind: "peer-connecting", epoch} / {kind: "peer-connected", epoch} /
 *   {kind: "peer-failed", reason}             notifications for the application
 *   {kind: "log", level, text}                a log line ("info", "debug", "warning")
 * Results of operations come back through onLocalDescription, onRemoteApplied,
 * onCandidateGathered, onConnectionState and onOperationFailed.
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
  onOperationFailed(operation, error, now) {
    return this._dispatch(Input.OPERATION_FAILED, now, `${operation}: ${error}`);
  }

  /** A signaling frame from the peer (mirrors `PeerNegotiation.on_signal`). */
  onSignal(frame, now) {
    if (!("epoch" in frame)) this.remoteEpochless = true;
    const stale = this._stale(frame);
    if (stale !== null) return [this._log("debug", `dropped ${frame.type}: ${stale}`)];
    let actions = [];
    const sid = frame.sid;
    const epoch = epochOf(frame);
    if (typeof sid === "string" && sid !== this.remoteSession) {
      const restarted = this.remoteSession !== null;
      this.remoteSession = sid;
      if (restarted) actions = this._startOver(epoch, now); // a new session of theirs
    }
    const isOffer = frame.type === "webrtc-offer";
    if ((isOffer || frame.type === "webrtc-answer") && "caps" in frame) {
      this.remoteCapabilities = capsFromWire(frame.caps);
    }
    if (isOffer) {
      if (epoch > this.epoch) actions.push(...this._follow(epoch, `epoch ${epoch}`));
      // Duplicates are told apart by the sender's offer number when it sends one: aiortc
      // makes byte-equal offers when renegotiating without a change (mirrors `RemoteOffer`).
      const key = Number.isInteger(frame.seq) ? `#${frame.seq}` : frame.offer.sdp;
      return actions.concat(this._dispatch(Input.REMOTE_OFFER, now, { description: frame.offer, key }));
    }
    if (frame.type === "webrtc-answer") return actions.concat(this._dispatch(Input.REMOTE_ANSWER, now, frame.answer));
    if (frame.type === "webrtc-ice") return actions.concat(this._dispatch(Input.REMOTE_CANDIDATE, now, frame.candidate));
    const reason = typeof frame.reason === "string" ? frame.reason : "";
    return actions.concat(this._dispatch(Input.REMOTE_RENEGOTIATE, now, reason));
  }

  /** Why `frame` belongs to another session or epoch, or null (mirrors `_stale`). */
  _stale(frame) {
    const rsid = frame.rsid;
    if (typeof rsid === "string" && rsid !== this.session) return `addressed to our earlier session ${rsid}`;
    const sid = frame.sid;
    const isOffer = frame.type === "webrtc-offer";
    const newSession = typeof sid === "string" && sid !== this.remoteSession;
    if (newSession && this.remoteSession !== null) {
      if (rsid == null) return null; // their side started the pair over: so do we (_startOver)
      return `from their earlier session ${sid}`;
    }
    const epoch = epochOf(frame);
    if (epoch < this.epoch) return `stale epoch ${epoch} (ours is ${this.epoch})`;
    if (epoch > this.epoch) {
      if (!isOffer) return `future epoch ${epoch} (ours is ${this.epoch})`;
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

  _log(level, text) { return { kind: "log", level, text: `[${this.peerId}] ${text}` }; }
  _setDeadline(when, kind) { this.deadline = when; this.deadlineKind = kind; }
  _send(type, fields) { return { kind: "send", frame: { channel: Channel.SIGNALING, type, toUserId: this.peerId, ...fields } }; }

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
      { kind: "create-peer", pc: this.pc, initiator: this.isInitiator },
      { kind: "peer-connecting", epoch: this.epoch },
    ];
  }

  /** Mirrors `_close_pc`. */
  _closePc() {
    const pc = this.pc;
    this.pc = null;
    this._resetConnectionState();
    this.remoteBuffer = [];
    return pc === null ? [] : [{ kind: "close-peer", pc }];
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
    actions.push({ kind: "create-offer", pc: this.pc, iceRestart });
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
    return [{ kind: "add-candidate", pc, candidate }];
  }

  _flushLocal() {
    const buffered = this.localBuffer;
    this.localBuffer = [];
    return buffered.map((c) => this._sendCandidate(c));
  }

  _sendCandidate(candidate) { return this._send("webrtc-ice", this._signalFields({ candidate })); }

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
    return [...actions, { kind: "peer-failed", reason }];
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
    const offer = this._send("webrtc-offer", this._signalFields({ offer: description, caps: capsToWire(this.capabilities), seq: this.offersSent }));
    return [offer, ...this._flushLocal()];
  }

  _onLocalAnswer(now, description) {
    const answer = this._send("webrtc-answer", this._signalFields({ answer: description, caps: capsToWire(this.capabilities) }));
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
      { kind: "set-remote", pc: this.pc, description },
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
    actions.push({ kind: "set-remote", pc: this.pc, description });
    actions.push(this._log("info", `Received offer from: ${this.peerId} (epoch ${this.epoch})`));
    return actions;
  }

  /** Offers crossed: the initiator ignores theirs, the polite side yields (mirrors `_on_glare`). */
  _onGlare(now, offer) {
    if (this.isInitiator) return [this._log("info", "glare: ignoring the polite side's offer")];
    if (this.state === NegState.MAKING_OFFER) this.abandonedOffers += 1;
    this.pendingRenegotiation = true; // our own change still needs an exchange
    const rollback = { kind: "rollback", pc: this.pc };
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
    actions.push({ kind: "create-answer", pc: this.pc });
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
        actions.push({ kind: "peer-connected", epoch: this.epoch });
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

  _onOperationFailed(now, detail) {
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
      this._setDeadline(now + this.config.offerWait + backoff(this.config, this.attempts, this._jitter()), kind);
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

// The transition table (mirrors `negotiation._TABLE`; tests/test_browser_js.py checks
// that both list the same (state, input) pairs).
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

// ------------------------------------------------------------------ frames

/**
 * Read one server frame; returns the object, or throws an Error saying what is wrong.
 * Checks only what this client relies on (the server has validated the rest).
 */
export function parseServerFrame(text) {
  const frame = JSON.parse(text);
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) throw new Error("not a JSON object");
  if (typeof frame.channel !== "string" || typeof frame.type !== "string") throw new Error("no channel/type");
  return frame;
}

/** Whether a signaling frame carries what its type needs. */
function wellFormedSignal(frame) {
  if (typeof frame.fromUserId !== "string") return false;
  switch (frame.type) {
    case "webrtc-offer": return isDescription(frame.offer);
    case "webrtc-answer": return isDescription(frame.answer);
    case "webrtc-ice": return frame.candidate === null || (typeof frame.candidate === "object" && typeof frame.candidate.candidate === "string");
    case "webrtc-renegotiate": return true;
    default: return false;
  }
}

function isDescription(value) {
  return value !== null && typeof value === "object" && typeof value.type === "string" && typeof value.sdp === "string";
}

// ------------------------------------------------------------------ the driver

/**
 * A browser client: one WebSocket to the relay, one room, one RTCPeerConnection per
 * other member. Events (an EventTarget; each event is a CustomEvent with `detail`):
 *
 *   "open" / "close"         the WebSocket to the relay ({code} on close)
 *   "room-joined"            {roomId, participants}
 *   "room-resumed"           {roomId, participants}: back in the room after a lost connection
 *   "room-left"              {roomId}
 *   "join-refused"           {roomId, code, message}
 *   "peer-joined"            {peerId}
 *   "peer-state"             {peerId, state, link, epoch}: after every change (for UIs)
 *   "peer-connecting"        {peerId, epoch}
 *   "peer-connected"         {peerId, epoch}
 *   "peer-failed"            {peerId, reason}
 *   "peer-left"              {peerId}
 *   "channel-open"           {peerId}: the `chat` data channel with this peer is open
 *   "message"                {from, text}: a message on a `chat` data channel
 *   "chat"                   {from, text, ts}: server chat (relayed to the whole room)
 *   "server-error"           {channel, code, message}
 *   "violation"              {peerId, detail}: a frame that made no sense, dropped
 *   "log"                    {level, text}: the seed-style log lines and more
 *
 * Options: `url` (ws://... of the relay), `iceServers` (RTCIceServer list; default none
 * — pass the server's `/config.json`), `config` (deadlines), `reconnect` (default true),
 * `resumeWindow` (seconds the room and peers are kept after losing the server, default
 * 8; see "Resume" below, which mirrors `sansio_signal.client.ClientMachine`).
 *
 * Resume: when the WebSocket drops (or the server restarts), the room and every peer
 * connection are kept for `resumeWindow` seconds; frames the negotiations want to send
 * wait; the reconnect sends `join-room` with the `resumeToken` of our last
 * `user-joined-room`. The answer is reconciled with what we have: newcomers are added,
 * members missing from the server's list are kept "absent" for the window (after a
 * restart they come back one by one), replayed membership frames that repeat a change
 * are skipped, and a peer that starts our pair over is followed. Event: "room-resumed"
 * {roomId, participants}.
 */
export class SignalingClient extends EventTarget {
  constructor({ url, userId, iceServers = [], config = DEFAULT_CONFIG, reconnect = true, resumeWindow = 8, jitter = Math.random } = {}) {
    super();
    if (!ID_PATTERN.test(userId ?? "")) throw new Error(`user id ${JSON.stringify(userId)} does not match ${ID_PATTERN}`);
    this.url = url;
    this.userId = userId;
    this.iceServers = iceServers;
    this.config = config;
    this.reconnect = reconnect;
    this._jitter = jitter;
    this.state = "offline"; // offline, lobby, joining, joined (mirrors `ClientState`)
    this.roomId = null; // the room we want (kept across reconnects)
    this.room = null; // {roomId, members: Set} once joined
    this.peers = new Map(); // peerId → PeerNegotiation
    this._conns = new Map(); // pc handle → {peerId, pc, chain, channel}
    this._sessions = new Map();
    this._instance = Math.floor(jitter() * 0xffffffff).toString(16).padStart(8, "0");
    this._nextPc = 1;
    this._joinsInFlight = 0;
    this._token = null;
    this._ws = null;
    this._timer = null;
    this._closed = false;
    this._retry = 0;
    this.resumeWindow = reconnect ? resumeWindow : 0;
    this.resuming = false; // the server connection was lost while in a room
    this.absent = new Set(); // peers kept after a rejoin although the server's list lacks them
    this._resumeToken = null;
    this._heldOut = []; // frames held back while resuming
    this._reconciledAdded = new Set();
    this._resumeDeadline = null;
    this._absentDeadline = null;
  }

  // ---------------------------------------------------------------- public API

  /** Open the WebSocket (resolves when open; reconnects on its own afterwards). */
  connect() {
    this._closed = false;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this._retry = 0;
        this.state = "lobby";
        this._emit("open", {});
        if (this.roomId !== null) this._sendJoin();
        resolve();
      };
      ws.onmessage = (event) => this._onFrame(event.data);
      ws.onclose = (event) => {
        if (this._ws !== ws) return;
        this._ws = null;
        this._emit("close", { code: event.code });
        this._onServerLost(event.code);
        if (!opened) reject(new Error(`cannot connect to ${this.url} (close ${event.code})`));
        if (!this._closed && this.reconnect) this._scheduleReconnect();
      };
    });
  }

  /** Join `roomId` (leaving any current room once the server confirms). */
  join(roomId, { token = null } = {}) {
    if (!ID_PATTERN.test(roomId ?? "")) throw new Error(`room id ${JSON.stringify(roomId)} does not match ${ID_PATTERN}`);
    this.roomId = roomId;
    this._token = token;
    if (this.state !== "offline") this._sendJoin();
  }

  /** Leave the room: every peer connection is closed. */
  leave() {
    const target = this.roomId;
    this.roomId = null;
    this._giveUpResume(); // a resume in progress ends here (its resuming join, if sent, is left below)
    if (this.state === "offline" || this.state === "lobby" || target === null) return;
    const rooms = [target];
    if (this.room !== null && this.room.roomId !== target) rooms.unshift(this.room.roomId);
    this._leaveRoom();
    this.state = "lobby";
    for (const roomId of rooms) this._sendFrame({ channel: Channel.ROOMS, type: "leave-room", roomId });
  }

  /** Close everything (no reconnect). */
  close() {
    this._closed = true;
    this._leaveRoom();
    if (this._ws !== null) this._ws.close(1000, "bye");
    clearTimeout(this._timer);
  }

  /** The open `chat` data channel of our current connection with `peerId`, or null. */
  channel(peerId) {
    const peer = this.peers.get(peerId);
    const channel = peer?.pc == null ? null : this._conns.get(peer.pc)?.channel ?? null;
    return channel?.readyState === "open" ? channel : null;
  }

  /** Send `text` to one peer over the `chat` data channel; false if it is not open. */
  send(peerId, text) {
    const channel = this.channel(peerId);
    if (channel === null) return false;
    channel.send(text);
    return true;
  }

  /** Send `text` to every peer with an open channel; returns how many got it. */
  broadcast(text) {
    let sent = 0;
    for (const peerId of this.peers.keys()) if (this.send(peerId, text)) sent += 1;
    return sent;
  }

  /** Server chat: relayed to every member of the room (us included). */
  chat(text) {
    if (this.state !== "joined") throw new Error(`chat needs a room (state ${this.state})`);
    this._sendFrame({ channel: Channel.CHAT, type: "chat-message", text });
  }

  /** Ask for a new offer/answer exchange with `peerId` (after adding a track, say). */
  renegotiate(peerId) {
    const peer = this.peers.get(peerId);
    if (peer === undefined) throw new Error(`no peer ${peerId} in our room`);
    this._run(peer, peer.requestRenegotiation(now()));
  }

  /** The current RTCPeerConnection with `peerId`, or null. */
  peerConnection(peerId) {
    const peer = this.peers.get(peerId);
    if (peer === undefined || peer.pc === null) return null;
    return this._conns.get(peer.pc)?.pc ?? null;
  }

  /** {peerId: {state, link, epoch}} for every member of the room. */
  peerStates() {
    const out = {};
    for (const [peerId, peer] of this.peers) out[peerId] = { state: peer.state, link: peer.link, epoch: peer.epoch };
    return out;
  }

  // ---------------------------------------------------------------- the server

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  _log(level, text) { this._emit("log", { level, text }); }

  _sendFrame(frame) {
    if (this._ws !== null && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(frame));
  }

  _sendJoin() {
    this.state = "joining";
    this._joinsInFlight += 1;
    const frame = { channel: Channel.ROOMS, type: "join-room", roomId: this.roomId, userId: this.userId };
    if (this._token !== null) frame.token = this._token;
    const sameRoom = this.room !== null && this.room.roomId === this.roomId;
    if (this.resuming && sameRoom && this._resumeToken !== null) frame.resumeToken = this._resumeToken;
    this._sendFrame(frame);
    this._log("info", `Joining room: ${this.roomId} as ${this.userId}`);
  }

  _scheduleReconnect() {
    this._retry += 1;
    const delay = backoff({ ...this.config, backoffBase: 0.5, backoffMax: 10 }, this._retry, this._jitter());
    this._log("info", `Reconnecting in ${delay.toFixed(1)} s`);
    setTimeout(() => { if (!this._closed) this.connect().catch(() => {}); }, delay * 1000);
  }

  /** The WebSocket is gone (mirrors the `ServerDisconnected` branch of
   * `ClientMachine._handle`): keep the room for a resume, or let it go. */
  _onServerLost(code) {
    this._joinsInFlight = 0;
    if (this.resuming) {
      this.state = "offline"; // lost again before the resume went through: keep trying
      return;
    }
    const resumable = RESUMABLE_CLOSES.has(code) && this.state === "joined" && this.room !== null
      && this.room.roomId === this.roomId && this._resumeToken !== null && this.resumeWindow > 0;
    if (resumable) {
      this.state = "offline";
      this.resuming = true;
      this._resumeDeadline = now() + this.resumeWindow;
      this._log("info", `Server connection lost; keeping room ${this.roomId} for ${this.resumeWindow} s to resume`);
      this._rearm();
      return;
    }
    this._giveUpResume();
    this._leaveRoom();
    this.state = "offline";
  }

  /** No resume after all: the room and its peers go (mirrors `_give_up_resume`). */
  _giveUpResume() {
    if (!this.resuming) return;
    this.resuming = false;
    this._heldOut = [];
    this._resumeDeadline = this._absentDeadline = null;
    this.absent.clear();
    const state = this.state;
    this._leaveRoom();
    this.state = state;
  }

  /** Close every peer and forget the room (mirrors `ClientMachine._leave_room`). */
  _leaveRoom() {
    for (const peer of [...this.peers.values()]) this._removePeer(peer);
    if (this.room !== null) {
      this._emit("room-left", { roomId: this.room.roomId });
      this.room = null;
    }
    if (this.state === "joined") this.state = "lobby";
  }

  /** Mirrors `ClientMachine._on_frame`. */
  _onFrame(text) {
    let frame;
    try {
      frame = parseServerFrame(text);
    } catch (error) {
      this._emit("violation", { peerId: null, detail: `unreadable server frame: ${error.message}` });
      return;
    }
    if (frame.type === "error") return this._onError(frame);
    if (frame.type === "user-joined-room" && frame.userId === this.userId) return this._onOwnJoin(frame);
    if (this.room === null || frame.roomId !== this.room.roomId) {
      this._log("debug", `dropped ${frame.type}: not for our room`);
      return;
    }
    try {
      if (frame.type === "user-joined-room") return this._onMemberJoined(frame.userId);
      if (frame.type === "user-left-room") return this._onMemberLeft(frame.userId);
      if (frame.type === "chat-message") {
        this._emit("chat", { from: frame.fromUserId, text: frame.text, ts: frame.ts });
        return;
      }
      if (frame.channel !== Channel.SIGNALING || !wellFormedSignal(frame)) {
        throw new RemoteProtocolError(`unexpected ${frame.type} frame`);
      }
      const peer = this.peers.get(frame.fromUserId);
      if (peer === undefined) throw new RemoteProtocolError(`${frame.type} from ${frame.fromUserId}, who is not in our room`);
      this._run(peer, peer.onSignal(frame, now()));
    } catch (error) {
      if (!(error instanceof RemoteProtocolError)) throw error;
      this._emit("violation", { peerId: frame.fromUserId ?? frame.userId ?? null, detail: error.message });
      this._log("warning", `dropped a frame: ${error.message}`);
    }
  }

  /** Mirrors `ClientMachine._on_error`. */
  _onError(frame) {
    this._emit("server-error", { channel: frame.channel, code: frame.code, message: frame.message });
    this._log("warning", `server error ${frame.code}: ${frame.message}`);
    const refused = frame.channel === Channel.ROOMS && JOIN_REFUSALS.has(frame.code);
    if (refused) this._joinsInFlight = Math.max(0, this._joinsInFlight - 1);
    if (refused && this.resuming && this._joinsInFlight === 0) this._giveUpResume();
    if (refused && this.state === "joining" && this._joinsInFlight === 0) {
      this._emit("join-refused", { roomId: this.roomId, code: frame.code, message: frame.message });
      if (this.room !== null) {
        this.state = "joined";
        this.roomId = this.room.roomId;
      } else {
        this.state = "lobby";
        this.roomId = null;
      }
    }
  }

  /** Only the answer to our last join counts (mirrors `ClientMachine._on_own_join`). */
  _onOwnJoin(frame) {
    this._joinsInFlight = Math.max(0, this._joinsInFlight - 1);
    if (this._joinsInFlight > 0 || this.state !== "joining" || frame.roomId !== this.roomId) {
      this._log("debug", `dropped our join of room ${frame.roomId}: superseded`);
      return;
    }
    const participants = Array.isArray(frame.existingParticipants) ? frame.existingParticipants.filter((p) => typeof p === "string" && p !== this.userId) : [];
    this._resumeToken = typeof frame.resumeToken === "string" ? frame.resumeToken : null;
    if (this.resuming && this.room !== null && this.room.roomId === frame.roomId) return this._onResumed(frame.roomId, participants);
    this._giveUpResume();
    this._leaveRoom();
    this.room = { roomId: frame.roomId, members: new Set(participants) };
    this.state = "joined";
    this._reconciledAdded.clear();
    this.absent.clear();
    this._absentDeadline = null;
    this._log("info", `Joined room: ${frame.roomId} with ${participants.length} other participant(s)`);
    this._emit("room-joined", { roomId: frame.roomId, participants });
    for (const peerId of participants) this._addPeer(peerId);
  }

  /** In our room again after a resume or a fresh join we cannot tell from one: reconcile
   * (mirrors `ClientMachine._on_resumed`). */
  _onResumed(roomId, participants) {
    this.resuming = false;
    this._resumeDeadline = null;
    this.room = { roomId, members: new Set(participants) };
    this.state = "joined";
    this._reconciledAdded.clear();
    this.absent = new Set([...this.peers.keys()].filter((p) => !this.room.members.has(p)));
    this._absentDeadline = this.absent.size ? now() + Math.max(this.resumeWindow, 1) : null;
    const held = this._heldOut;
    this._heldOut = [];
    for (const frame of held) if (this.room.members.has(frame.toUserId)) this._sendFrame(frame);
    this._log("info", `Resumed room: ${roomId} with ${participants.length} other participant(s)`);
    this._emit("room-resumed", { roomId, participants });
    for (const peerId of participants) {
      if (!this.peers.has(peerId)) {
        this._reconciledAdded.add(peerId);
        this._addPeer(peerId);
      }
    }
    this._rearm();
  }

  /** Membership frames that a rejoin already accounted for (mirrors
   * `ClientMachine._on_membership`); true when the frame is handled. */
  _reconciled(type, peerId) {
    if (type === "user-joined-room" && this._reconciledAdded.has(peerId)) {
      this._reconciledAdded.delete(peerId);
      if (this.room.members.has(peerId)) return true;
    }
    if (this.absent.has(peerId)) {
      if (type === "user-left-room") {
        this._removePeer(this.peers.get(peerId)); // it had left while we were away
      } else {
        this.absent.delete(peerId);
        if (this.absent.size === 0) this._absentDeadline = null;
        this.room.members.add(peerId); // back: its negotiation (and connection) carry on
        this._log("info", `${peerId} is back in the room`);
      }
      return true;
    }
    this._reconciledAdded.delete(peerId);
    return false;
  }

  _onMemberJoined(peerId) {
    if (this._reconciled("user-joined-room", peerId)) return;
    if (this.room.members.has(peerId)) throw new RemoteProtocolError(`${peerId} joined twice`);
    this.room.members.add(peerId);
    this._log("info", `User joined: ${peerId}`);
    this._addPeer(peerId);
  }

  _onMemberLeft(peerId) {
    if (this._reconciled("user-left-room", peerId)) return;
    if (!this.room.members.has(peerId)) throw new RemoteProtocolError(`${peerId} left but was not in the room`);
    this.room.members.delete(peerId);
    this._log("info", `User left: ${peerId}`);
    this._removePeer(this.peers.get(peerId));
  }

  // ---------------------------------------------------------------- peers

  /** Mirrors `ClientMachine._new_session`. */
  _newSession(peerId) {
    const count = (this._sessions.get(peerId) ?? 0) + 1;
    this._sessions.set(peerId, count);
    return `${this._instance}.${peerId}.${count}`;
  }

  _addPeer(peerId) {
    const peer = new PeerNegotiation({
      ourId: this.userId,
      peerId,
      capabilities: BROWSER,
      config: this.config,
      newPc: () => this._nextPc++,
      jitter: this._jitter,
      session: this._newSession(peerId),
    });
    this.peers.set(peerId, peer);
    this._emit("peer-joined", { peerId });
    this._run(peer, peer.start(now()));
  }

  _removePeer(peer) {
    if (this.absent.delete(peer.peerId) && this.absent.size === 0) this._absentDeadline = null;
    this._run(peer, peer.close(now()));
    this.peers.delete(peer.peerId);
    this._emit("peer-left", { peerId: peer.peerId });
  }

  /** Run what `peer` decided, then re-arm the one timer (mirrors `_after_peer`). */
  _run(peer, actions) {
    for (const action of actions) {
      if (action.kind === "send" && this.resuming) this._heldOut.push(action.frame);
      else if (action.kind === "send" && this.absent.has(peer.peerId)) continue; // in no room
      else this._execute(peer, action);
    }
    this._emit("peer-state", { peerId: peer.peerId, state: peer.state, link: peer.link, epoch: peer.epoch });
    this._rearm();
  }

  _rearm() {
    clearTimeout(this._timer);
    let next = null;
    for (const when of [this._resumeDeadline, this._absentDeadline]) {
      if (when !== null && (next === null || when < next)) next = when;
    }
    for (const peer of this.peers.values()) {
      if (peer.deadline !== null && (next === null || peer.deadline < next)) next = peer.deadline;
    }
    if (next !== null) this._timer = setTimeout(() => this._onTimer(), Math.max(0, (next - now()) * 1000));
  }

  _onTimer() {
    const t = now();
    if (this._resumeDeadline !== null && this._resumeDeadline <= t) this._giveUpResume();
    if (this._absentDeadline !== null && this._absentDeadline <= t) {
      this._absentDeadline = null;
      for (const peerId of [...this.absent].sort()) this._removePeer(this.peers.get(peerId));
    }
    for (const peer of [...this.peers.values()]) {
      if (peer.deadline !== null && peer.deadline <= t) this._run(peer, peer.onTimer(t));
    }
    this._rearm();
  }

  /** A result of connection `handle`: to its peer, unless the connection was replaced. */
  _result(handle, method, ...args) {
    const conn = this._conns.get(handle);
    if (conn === undefined) return;
    const peer = this.peers.get(conn.peerId);
    if (peer === undefined || peer.pc !== handle) return;
    try {
      this._run(peer, peer[method](...args, now()));
    } catch (error) {
      this._log("error", `${conn.peerId}: ${error.message}`);
    }
  }

  _execute(peer, action) {
    switch (action.kind) {
      case "send": return this._sendFrame(action.frame);
      case "log": return this._log(action.level, action.text);
      case "peer-connecting": return this._emit("peer-connecting", { peerId: peer.peerId, epoch: action.epoch });
      case "peer-connected": return this._emit("peer-connected", { peerId: peer.peerId, epoch: action.epoch });
      case "peer-failed": return this._emit("peer-failed", { peerId: peer.peerId, reason: action.reason });
      case "create-peer": return this._createPeer(peer.peerId, action);
      case "close-peer": {
        const conn = this._conns.get(action.pc);
        this._conns.delete(action.pc);
        if (conn !== undefined) conn.pc.close();
        return undefined;
      }
      default: return this._enqueue(action);
    }
  }

  _createPeer(peerId, action) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const handle = action.pc;
    const conn = { peerId, pc, chain: Promise.resolve(), channel: null, exchanged: false };
    this._conns.set(handle, conn);
    pc.onicecandidate = (event) => {
      // Browsers end with a null candidate; some also send an empty one: one end only.
      const c = event.candidate;
      if (c !== null && c.candidate === "") return;
      this._result(handle, "onCandidateGathered", c === null ? null : c.toJSON());
    };
    pc.onconnectionstatechange = () => this._result(handle, "onConnectionState", pc.connectionState);
    pc.onnegotiationneeded = () => {
      // The first exchange is started by the machine itself; later changes (a track
      // added, the first data channel of a peer that had none) ask for a new one.
      if (conn.exchanged && this._conns.get(handle) === conn) this.renegotiate(peerId);
    };
    pc.ondatachannel = (event) => { if (event.channel.label === CHANNEL_LABEL) this._adoptChannel(peerId, handle, event.channel); };
    if (action.initiator) this._adoptChannel(peerId, handle, pc.createDataChannel(CHANNEL_LABEL));
  }

  _adoptChannel(peerId, handle, channel) {
    const conn = this._conns.get(handle);
    if (conn === undefined) return;
    conn.channel = channel;
    const opened = () => {
      if (this._conns.get(handle) === conn) this._emit("channel-open", { peerId });
    };
    channel.onmessage = (event) => {
      if (this._conns.get(handle) === conn) this._emit("message", { from: peerId, text: String(event.data) });
    };
    if (channel.readyState === "open") opened();
    else channel.onopen = opened;
  }

  /** Operations on one connection run one after another, like aiortc_peer's queue. */
  _enqueue(action) {
    const conn = this._conns.get(action.pc);
    if (conn === undefined) return;
    conn.chain = conn.chain.then(() => this._operate(action, conn)).catch((error) => {
      this._result(action.pc, "onOperationFailed", action.kind, String(error && error.message ? error.message : error));
    });
  }

  async _operate(action, conn) {
    const { pc } = conn;
    const handle = action.pc;
    if (this._conns.get(handle) !== conn) return;
    switch (action.kind) {
      case "create-offer": {
        const offer = await pc.createOffer(action.iceRestart ? { iceRestart: true } : {});
        await pc.setLocalDescription(offer);
        const local = pc.localDescription;
        this._result(handle, "onLocalDescription", { type: local.type, sdp: local.sdp });
        return;
      }
      case "create-answer": {
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        const local = pc.localDescription;
        conn.exchanged = true;
        this._result(handle, "onLocalDescription", { type: local.type, sdp: local.sdp });
        return;
      }
      case "set-remote": {
        await pc.setRemoteDescription(action.description);
        if (action.description.type === "answer") conn.exchanged = true;
        this._result(handle, "onRemoteApplied");
        return;
      }
      case "rollback":
        if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
        return;
      case "add-candidate": {
        const c = action.candidate;
        try {
          await pc.addIceCandidate(c === null || c.candidate === "" ? null : c);
        } catch (error) {
          // One bad candidate (an mDNS name that does not resolve, say) is not a failure
          // of the connection: the others may still work.
          this._log("debug", `${conn.peerId}: candidate not added: ${error.message}`);
        }
        return;
      }
      default:
        throw new LocalProtocolError(`unexpected action ${action.kind}`);
    }
  }
}

function now() {
  return performance.now() / 1000;
}
