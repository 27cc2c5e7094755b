// machine.js — the pure half of the browser client of sansio-signal.
//
// Theory of operation
// -------------------
// This module is a port of the Python package's client-side core: the codec for frames
// the server sends (`sansio_signal.wire.parse_server_frame`, `read_pair_fields`), the
// per-peer negotiation (`sansio_signal.negotiation.PeerNegotiation`) and the client
// machine (`sansio_signal.client.ClientMachine`). It does no I/O and reads no clock: no
// DOM, no WebSocket, no timers, no randomness — time comes in as `now` (seconds), and
// random numbers through the `jitter` function given to the constructor.
//
// Events in, actions out, with the Python names: an event is a plain object whose
// `type` is the Python event class (`{type: "ServerFrameReceived", text}`), an action
// one whose `kind` is the Python action class (`{kind: "CreateOffer", peerId, pc,
// iceRestart}`); fields are the Python fields in camelCase. `SendToServer` carries the
// frame object (`frame`); the driver serialises it.
//
// The two implementations are kept equal by tests, not by care: conformance vectors
// recorded from the Python machines (tests/vectors/) are replayed here under node, and
// a differential test feeds the same generated event sequences to both and allows no
// difference (tests/test_js_equal.py). Where a function mirrors a Python one, its
// comment names it; the theory of each machine is in the Python module's docstring.

// ------------------------------------------------------------------ protocol constants

/** The channels of the envelope (mirrors `wire.Channel`). */
export const Channel = Object.freeze({
  ROOMS: "webrtc-dashboard-rooms",
  SIGNALING: "webrtc-signaling",
  CHAT: "webrtc-dashboard-chat",
  SYSTEM: "system",
});

/** Every error code of the protocol (mirrors `wire.ErrorCode`). */
export const ERROR_CODES = Object.freeze([
  "bad-json", "bad-frame", "unknown-channel", "unknown-type", "invalid-id",
  "frame-too-large", "not-in-room", "peer-not-found", "user-id-taken", "room-full",
  "rate-limited", "unauthorized",
]);

/** WebSocket close codes (mirrors `wire.CloseCode`). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  REPLACED: 4000,
});

/** The ids the server accepts (mirrors `wire.DEFAULT_ID_PATTERN`). */
export const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

/** The longest chat text (mirrors `Limits.max_text_chars`), in code points. */
export const MAX_TEXT_CHARS = 4096;

/** The largest integer every JSON peer reads exactly (mirrors `wire.MAX_SAFE_INTEGER`). */
export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

/** How deep a server frame may nest (mirrors `wire.MAX_FRAME_DEPTH`). */
export const MAX_FRAME_DEPTH = 32;

/** Label of the data channel the initiator creates before its first offer. */
export const CHANNEL_LABEL = "chat";

/** Remote candidates held for one peer before the oldest are dropped
 * (mirrors `negotiation.MAX_BUFFERED_CANDIDATES`). */
export const MAX_BUFFERED_CANDIDATES = 512;

// ------------------------------------------------------------------ errors

/** The peer or the server sent something the protocol does not allow (mirrors
 * `errors.RemoteProtocolError`): the machine drops the frame and reports it. */
export class RemoteProtocolError extends Error {}
/** A frame could not be read (mirrors `errors.WireError`). */
export class WireError extends RemoteProtocolError {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
/** Our caller used a machine out of order: a bug (mirrors `errors.LocalProtocolError`). */
export class LocalProtocolError extends Error {}

// ------------------------------------------------------------------ the codec

function kindOf(value) {
  if (value === null) return "null";
  if (typeof value === "boolean") return "a boolean";
  if (typeof value === "number") return "a number";
  if (typeof value === "string") return "a string";
  if (Array.isArray(value)) return "an array";
  return "an object";
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** `value` as a non-negative integer, or null (mirrors `wire.wire_int`). */
export function wireInt(value) {
  if (typeof value !== "number" || !Number.isInteger(value)) return null;
  return value >= 0 && value <= MAX_SAFE_INTEGER ? value : null;
}

/** Whether `value` is an acceptable user or room id (mirrors `Limits.valid_id`). */
export function validId(value) {
  return typeof value === "string" && ID_PATTERN.test(value);
}

function badFrame(message) { return new WireError("bad-frame", message); }

function str(obj, key) {
  const value = obj[key];
  if (typeof value !== "string") throw badFrame(`field '${key}' must be a string (${key in obj ? kindOf(value) : "missing"} given)`);
  return value;
}

function optStr(obj, key) {
  return obj[key] == null ? null : str(obj, key);
}

function id(obj, key) {
  const value = str(obj, key);
  if (!ID_PATTERN.test(value)) throw new WireError("invalid-id", `field '${key}' must match ${ID_PATTERN}`);
  return value;
}

/** Nesting deeper than MAX_FRAME_DEPTH, or a number past a double's range, is bad-json
 * (mirrors `wire._check_tree`). */
function checkTree(value, depth) {
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new WireError("bad-json", "a number is out of range");
    return;
  }
  if (value === null || typeof value !== "object") return;
  if (depth > MAX_FRAME_DEPTH) throw new WireError("bad-json", "JSON nested too deeply");
  for (const child of Array.isArray(value) ? value : Object.values(value)) checkTree(child, depth + 1);
}

/** Decode one frame to a JSON object (mirrors `wire.decode_object` with the client's
 * checks). */
function decodeObject(text) {
  if (typeof text !== "string") throw badFrame("binary frames are not accepted");
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (error) {
    throw new WireError("bad-json", `invalid JSON: ${error.message}`);
  }
  checkTree(obj, 1);
  if (!isObject(obj)) throw badFrame(`a frame must be a JSON object, not ${kindOf(obj)}`);
  return obj;
}

function pairError(key, rule, value) {
  return badFrame(`field '${key}' must be ${rule} (${kindOf(value)} given)`);
}

/** The peers' own fields of a signaling frame, validated (mirrors
 * `wire.read_pair_fields`): {epoch, sid, rsid, seq, caps, reason}. */
export function readPairFields(fields) {
  const epoch = fields.epoch ?? null;
  if (epoch !== null && wireInt(epoch) === null) throw pairError("epoch", "a non-negative integer or absent", epoch);
  const seq = fields.seq ?? null;
  if (seq !== null && wireInt(seq) === null) throw pairError("seq", "a non-negative integer or absent", seq);
  const strings = {};
  for (const key of ["sid", "rsid", "reason"]) {
    const value = fields[key] ?? null;
    if (value !== null && typeof value !== "string") throw pairError(key, "a string or absent", value);
    strings[key] = value;
  }
  const caps = fields.caps ?? null;
  if (caps !== null && (!Array.isArray(caps) || !caps.every((name) => typeof name === "string"))) {
    throw pairError("caps", "an array of strings", caps);
  }
  return {
    epoch: epoch === null ? 0 : epoch,
    sid: strings.sid,
    rsid: strings.rsid,
    seq,
    caps,
    reason: strings.reason ?? "",
  };
}

function readDescription(obj, key) {
  const value = obj[key];
  if (!isObject(value)) throw badFrame(`field '${key}' must be an object with string 'type' and 'sdp'`);
  return { type: str(value, "type"), sdp: str(value, "sdp") };
}

/** The candidate of a `webrtc-ice` frame in its wire form, null fields left out
 * (mirrors `wire._read_candidate` and `IceCandidate.to_json`). */
function readCandidate(obj) {
  if (!("candidate" in obj)) throw badFrame("field 'candidate' is missing (use null for end-of-candidates)");
  const value = obj.candidate;
  if (value === null) return null;
  if (!isObject(value)) throw badFrame(`field 'candidate' must be an object or null, not ${kindOf(value)}`);
  const index = value.sdpMLineIndex ?? null;
  if (index !== null && wireInt(index) === null) {
    throw badFrame("field 'candidate.sdpMLineIndex' must be a non-negative integer or null");
  }
  return candidateToWire({
    candidate: str(value, "candidate"),
    sdpMid: optStr(value, "sdpMid"),
    sdpMLineIndex: index,
    usernameFragment: optStr(value, "usernameFragment"),
  });
}

/** An RTCIceCandidateInit in the wire form: null or absent fields left out (mirrors
 * `IceCandidate.to_json`). */
export function candidateToWire(c) {
  const out = { candidate: c.candidate };
  if (c.sdpMid != null) out.sdpMid = c.sdpMid;
  if (c.sdpMLineIndex != null) out.sdpMLineIndex = c.sdpMLineIndex;
  if (c.usernameFragment != null) out.usernameFragment = c.usernameFragment;
  return out;
}

const SIGNAL_TYPES = new Set(["webrtc-offer", "webrtc-answer", "webrtc-ice", "webrtc-renegotiate"]);
const KNOWN_CHANNELS = new Set([Channel.ROOMS, Channel.SIGNALING, Channel.CHAT]);

/**
 * Parse a frame the server sent (mirrors `wire.parse_server_frame`). Returns a message:
 *   {type: "error", channel, code, message}
 *   {type: "user-joined-room", roomId, userId, existingParticipants, resumeToken}
 *   {type: "user-left-room", roomId, userId}
 *   {type: "chat-message", roomId, fromUserId, text, ts}
 *   {type: "webrtc-offer" | ..., fromUserId, roomId, toUserId, pair, description |
 *    candidate}
 * or throws a WireError.
 */
export function parseServerFrame(text) {
  const obj = decodeObject(text);
  if (obj.type === "error") {
    const code = str(obj, "code");
    if (!ERROR_CODES.includes(code)) throw badFrame(`unknown error code ${code.slice(0, 80)}`);
    return { type: "error", code, channel: str(obj, "channel"), message: str(obj, "message") };
  }
  const channel = obj.channel;
  if (typeof channel !== "string") throw badFrame("field 'channel' must be a string");
  if (!KNOWN_CHANNELS.has(channel)) throw new WireError("unknown-channel", `unknown channel ${channel.slice(0, 80)}`);
  const type = str(obj, "type");
  const unknownType = () => new WireError("unknown-type", `unknown type ${type.slice(0, 80)} on channel ${channel}`);
  if (channel === Channel.SIGNALING) {
    if (!SIGNAL_TYPES.has(type)) throw unknownType();
    const toUserId = id(obj, "toUserId");
    const message = { type, toUserId };
    if (type === "webrtc-offer") message.description = readDescription(obj, "offer");
    else if (type === "webrtc-answer") message.description = readDescription(obj, "answer");
    else if (type === "webrtc-ice") message.candidate = readCandidate(obj);
    message.pair = readPairFields(obj);
    message.epochless = obj.epoch == null;
    message.fromUserId = id(obj, "fromUserId");
    message.roomId = id(obj, "roomId");
    return message;
  }
  if (channel === Channel.ROOMS) {
    const roomId = id(obj, "roomId");
    const userId = id(obj, "userId");
    if (type === "user-joined-room") {
      const existing = obj.existingParticipants;
      if (!Array.isArray(existing) || !existing.every(validId)) {
        throw badFrame("field 'existingParticipants' must be an array of user ids");
      }
      return { type, roomId, userId, existingParticipants: existing, resumeToken: optStr(obj, "resumeToken") };
    }
    if (type === "user-left-room") return { type, roomId, userId };
    throw unknownType();
  }
  if (type !== "chat-message") throw unknownType();
  const ts = obj.ts;
  if (typeof ts !== "number") throw badFrame("field 'ts' must be a number");
  return { type, text: str(obj, "text"), roomId: id(obj, "roomId"), fromUserId: id(obj, "fromUserId"), ts };
}

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

// ------------------------------------------------------------------ timers

/** Deadlines keyed by string, one live deadline per key; due keys come out earliest
 * first, ties in the order they were scheduled (mirrors `timers.Timers`). */
export class Timers {
  constructor() {
    this._live = new Map(); // key → [deadline, seq]
    this._seq = 0;
  }

  schedule(key, deadline) { this._live.set(key, [deadline, this._seq++]); }
  cancel(key) { this._live.delete(key); }
  deadlineOf(key) { return this._live.get(key)?.[0] ?? null; }

  _sorted() {
    return [...this._live.entries()].sort((a, b) => a[1][0] - b[1][0] || a[1][1] - b[1][1]);
  }

  nextDeadline() {
    const first = this._sorted()[0];
    return first === undefined ? null : first[1][0];
  }

  popDue(now) {
    const due = this._sorted().filter(([, [deadline]]) => deadline <= now).map(([key]) => key);
    for (const key of due) this._live.delete(key);
    return due;
  }
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

/** Log levels (mirrors `actions.LogLevel`, by name). */
function log(level, text) { return { kind: "Log", level, text }; }

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

// ------------------------------------------------------------------ ClientMachine

/** The client's standing with the relay server (mirrors `client.ClientState`). */
export const ClientState = Object.freeze({
  OFFLINE: "offline",
  LOBBY: "lobby",
  JOINING: "joining",
  JOINED: "joined",
});

const JOIN_REFUSALS = new Set(["user-id-taken", "room-full", "invalid-id", "unauthorized"]);
/** Ends of the server connection after which our place may still be ours (mirrors
 * `client._RESUMABLE_CLOSES`; null: the socket dropped without a close frame). */
const RESUMABLE_CLOSES = new Set([null, CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.SERVICE_RESTART]);
const RESUME_KEY = " resume"; // peer ids cannot contain a space
const ABSENT_KEY = " absent";

/** Our own id in a room's member list, a duplicate, ...: the view cannot be built
 * (mirrors `room.RoomView`). */
class RoomView {
  constructor(ourId, joined) {
    if (joined.userId !== ourId) throw new RemoteProtocolError(`a room view starts from our own join, not ${joined.userId}'s`);
    if (joined.existingParticipants.includes(ourId)) throw new RemoteProtocolError("existingParticipants lists the joiner itself");
    if (new Set(joined.existingParticipants).size !== joined.existingParticipants.length) {
      throw new RemoteProtocolError("existingParticipants lists a member twice");
    }
    this.ourId = ourId;
    this.roomId = joined.roomId;
    this.members = [...joined.existingParticipants];
  }

  has(userId) { return this.members.includes(userId); }

  apply(frame) {
    if (frame.roomId !== this.roomId) throw new RemoteProtocolError(`membership frame for room ${frame.roomId} while in ${this.roomId}`);
    if (frame.type === "user-joined-room") {
      if (frame.userId === this.ourId || this.members.includes(frame.userId)) throw new RemoteProtocolError(`${frame.userId} joined twice`);
      this.members.push(frame.userId);
    } else {
      if (!this.members.includes(frame.userId)) throw new RemoteProtocolError(`${frame.userId} left but was not here`);
      this.members.splice(this.members.indexOf(frame.userId), 1);
    }
  }
}

/** The number of code points of `text` (Python's `len`). */
function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

/**
 * All of one client's signaling decisions (mirrors `client.ClientMachine`; its module
 * docstring is the theory of operation). `jitter` returns floats in [0, 1).
 */
export class ClientMachine {
  constructor(userId, { capabilities = BROWSER, jitter, config = DEFAULT_CONFIG, resumeWindow = 8.0 } = {}) {
    if (!validId(userId)) throw new LocalProtocolError(`user id ${JSON.stringify(userId)} does not match ${ID_PATTERN}`);
    this.userId = userId;
    this.capabilities = capabilities;
    this.config = config;
    this.state = ClientState.OFFLINE;
    this.roomId = null; // the room we want to be in (kept across reconnects)
    this.room = null;
    this.peers = new Map();
    this._pcs = new Map();
    this._pcIds = 1;
    this._sessions = new Map();
    this._instance = Math.floor(jitter() * 0xffffffff).toString(16).padStart(8, "0");
    this._joinsInFlight = 0;
    this._token = null;
    this._jitter = jitter;
    this._timers = new Timers();
    this.resumeWindow = resumeWindow;
    this._resumeToken = null;
    this.resuming = false;
    this._heldOut = [];
    this._reconciledAdded = new Set();
    this.absent = new Set();
  }

  // ---------------------------------------------------------------- public API

  /** When handleTimer must next be called, or null. */
  nextDeadline() { return this._timers.nextDeadline(); }

  /** Run every deadline that is due (mirrors `handle_timer`). */
  handleTimer(now) {
    const actions = [];
    for (const key of this._timers.popDue(now)) {
      if (key === RESUME_KEY) {
        actions.push(...this._giveUpResume(now));
        continue;
      }
      if (key === ABSENT_KEY) {
        for (const peerId of [...this.absent].sort()) actions.push(...this._removePeer(this.peers.get(peerId), now));
        continue;
      }
      const peer = this.peers.get(key);
      if (peer === undefined) continue;
      actions.push(...this._run(peer, peer.onTimer(now)));
    }
    return actions;
  }

  /** Feed one event; returns the actions to run, in order (mirrors `handle`). */
  handle(event, now) {
    switch (event.type) {
      case "ServerFrameReceived":
        if (this.state === ClientState.OFFLINE) throw new LocalProtocolError("a server frame while offline (no ServerConnected)");
        return this._onFrame(event.text, now);
      case "LocalDescriptionCreated":
      case "RemoteDescriptionApplied":
      case "IceCandidateGathered":
      case "ConnectionStateChanged":
      case "OperationFailed":
        return this._onPcEvent(event, now);
      case "ServerConnected":
        if (this.state !== ClientState.OFFLINE) throw new LocalProtocolError(`ServerConnected in state ${this.state}`);
        this.state = ClientState.LOBBY;
        return this.roomId !== null ? this._sendJoin() : [];
      case "ServerDisconnected":
        return this._onServerDisconnected(event.closeCode ?? null, now);
      case "JoinRequested": {
        if (!validId(event.roomId)) throw new LocalProtocolError(`room id ${JSON.stringify(event.roomId)} does not match ${ID_PATTERN}`);
        // The current room (if any) stays ours until the server confirms the new one.
        this.roomId = event.roomId;
        this._token = event.token ?? null;
        if (this.state === ClientState.OFFLINE) return [];
        return this._sendJoin();
      }
      case "LeaveRequested":
        return this._onLeave(now);
      case "ChatRequested": {
        if (this.state !== ClientState.JOINED) throw new LocalProtocolError(`chat needs a room (state ${this.state})`);
        const length = codePoints(event.text);
        if (length > MAX_TEXT_CHARS) {
          throw new LocalProtocolError(`chat text is ${length} characters; the limit is ${MAX_TEXT_CHARS}`);
        }
        return [this._toServer({ channel: Channel.CHAT, type: "chat-message", text: event.text })];
      }
      case "RenegotiationRequested": {
        const peer = this.peers.get(event.peerId);
        if (peer === undefined) throw new LocalProtocolError(`no peer ${event.peerId} in our room`);
        return this._run(peer, peer.requestRenegotiation(now));
      }
      default:
        throw new LocalProtocolError(`ClientMachine cannot handle ${event.type}`);
    }
  }

  // ---------------------------------------------------------------- the server

  _toServer(frame, peerId = null) { return { kind: "SendToServer", frame, peerId }; }

  _onServerDisconnected(closeCode, now) {
    if (this.state === ClientState.OFFLINE) throw new LocalProtocolError("ServerDisconnected while offline");
    this._joinsInFlight = 0; // their answers went with the connection
    if (this.resuming) { // lost again before the resume went through: keep trying
      this.state = ClientState.OFFLINE;
      return [];
    }
    const resumable = RESUMABLE_CLOSES.has(closeCode) && this.state === ClientState.JOINED
      && this.room !== null && this.room.roomId === this.roomId
      && this._resumeToken !== null && this.resumeWindow > 0;
    if (resumable) {
      this.state = ClientState.OFFLINE;
      this.resuming = true;
      this._timers.schedule(RESUME_KEY, now + this.resumeWindow);
      return [log("info", `server connection lost; keeping room ${this.roomId} for ${this.resumeWindow}s to resume`)];
    }
    const actions = this._giveUpResume(now).concat(this._leaveRoom(now));
    this.state = ClientState.OFFLINE;
    return actions;
  }

  /** Mirrors the `LeaveRequested` branch of `_handle`. */
  _onLeave(now) {
    const givenUp = this._giveUpResume(now);
    const target = this.roomId;
    this.roomId = null;
    if (this.state === ClientState.OFFLINE || this.state === ClientState.LOBBY || target === null) return givenUp;
    const rooms = [target];
    if (this.room !== null && this.room.roomId !== target) rooms.unshift(this.room.roomId);
    const actions = this._leaveRoom(now);
    this.state = ClientState.LOBBY;
    const frames = rooms.map((roomId) => this._toServer({ channel: Channel.ROOMS, type: "leave-room", roomId }));
    return givenUp.concat(frames, actions);
  }

  _sendJoin() {
    this.state = ClientState.JOINING;
    this._joinsInFlight += 1;
    const sameRoom = this.room !== null && this.room.roomId === this.roomId;
    const resume = this.resuming && sameRoom ? this._resumeToken : null;
    const frame = { channel: Channel.ROOMS, type: "join-room", roomId: this.roomId, userId: this.userId };
    if (this._token !== null) frame.token = this._token;
    if (resume !== null) frame.resumeToken = resume;
    return [this._toServer(frame)];
  }

  /** While resuming, frames for the server wait until the room is ours again (mirrors
   * `_hold_back`). */
  _holdBack(actions) {
    if (!this.resuming) return actions;
    const kept = [];
    for (const action of actions) {
      if (action.kind === "SendToServer") this._heldOut.push(action);
      else kept.push(action);
    }
    return kept;
  }

  /** Frames for absent peers could not be delivered (mirrors `_drop_to_absent`). */
  _dropToAbsent(actions) {
    return actions.filter((a) => !(a.kind === "SendToServer" && a.peerId !== null && this.absent.has(a.peerId)));
  }

  /** No resume after all: the room and its peers go (mirrors `_give_up_resume`). */
  _giveUpResume(now) {
    if (!this.resuming) return [];
    this.resuming = false;
    this._heldOut = [];
    this._timers.cancel(RESUME_KEY);
    this._timers.cancel(ABSENT_KEY);
    this.absent.clear();
    const state = this.state;
    const actions = this._leaveRoom(now);
    this.state = state;
    return actions;
  }

  /** Close every peer and forget the room view (mirrors `_leave_room`). */
  _leaveRoom(now) {
    const actions = [];
    for (const peer of [...this.peers.values()]) actions.push(...this._removePeer(peer, now));
    if (this.room !== null) {
      actions.push({ kind: "RoomLeft", roomId: this.room.roomId });
      this.room = null;
    }
    if (this.state === ClientState.JOINED) this.state = ClientState.LOBBY;
    return actions;
  }

  // ---------------------------------------------------------------- peers

  /** Mirrors `_run`. */
  _run(peer, actions) {
    let out = this._holdBack(actions);
    if (this.absent.size) out = this._dropToAbsent(out);
    this._afterPeer(peer);
    return out;
  }

  /** Keep the handle map and the timers in step with what `peer` just did (mirrors
   * `_after_peer`). */
  _afterPeer(peer) {
    if (peer.pc !== null) this._pcs.set(peer.pc, peer.peerId);
    for (const [pc, owner] of [...this._pcs]) if (owner === peer.peerId && pc !== peer.pc) this._pcs.delete(pc);
    if (peer.deadline === null) this._timers.cancel(peer.peerId);
    else if (this._timers.deadlineOf(peer.peerId) !== peer.deadline) this._timers.schedule(peer.peerId, peer.deadline);
  }

  /** Mirrors `_new_session`. */
  _newSession(peerId) {
    const count = (this._sessions.get(peerId) ?? 0) + 1;
    this._sessions.set(peerId, count);
    return `${this._instance}.${peerId}.${count}`;
  }

  _newNegotiation(peerId) {
    const peer = new PeerNegotiation({
      ourId: this.userId,
      peerId,
      capabilities: this.capabilities,
      config: this.config,
      newPc: () => this._pcIds++,
      jitter: this._jitter,
      session: this._newSession(peerId),
    });
    this.peers.set(peerId, peer);
    return peer;
  }

  _addPeer(peerId, now) {
    const peer = this._newNegotiation(peerId);
    return [{ kind: "PeerJoined", peerId }, ...this._run(peer, peer.start(now))];
  }

  _removePeer(peer, now) {
    if (this.absent.has(peer.peerId)) {
      this.absent.delete(peer.peerId);
      if (this.absent.size === 0) this._timers.cancel(ABSENT_KEY);
    }
    const actions = this._run(peer, peer.close(now)); // a closed peer has no deadline left
    this.peers.delete(peer.peerId);
    return [...actions, { kind: "PeerLeft", peerId: peer.peerId }];
  }

  /** Mirrors `_on_pc_event`. */
  _onPcEvent(event, now) {
    const owner = this._pcs.get(event.pc);
    const peer = owner === undefined ? undefined : this.peers.get(owner);
    if (peer === undefined || peer.pc !== event.pc) return [log("debug", `dropped ${event.type} for closed connection ${event.pc}`)];
    let out;
    switch (event.type) {
      case "LocalDescriptionCreated": out = peer.onLocalDescription(event.description, now); break;
      case "RemoteDescriptionApplied": out = peer.onRemoteApplied(now); break;
      case "IceCandidateGathered": out = peer.onCandidateGathered(event.candidate, now); break;
      case "ConnectionStateChanged": out = peer.onConnectionState(event.state, now); break;
      default: out = peer.onOperationFailed(event.operation, event.error, now);
    }
    return this._run(peer, out);
  }

  // ---------------------------------------------------------------- server frames

  /** Mirrors `_on_frame`. */
  _onFrame(text, now) {
    let message;
    try {
      message = parseServerFrame(text);
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      return [{ kind: "ProtocolViolation", peerId: null, detail: `unreadable server frame: ${error.message}` }];
    }
    if (message.type === "error") return this._onError(message, now);
    if (message.type === "user-joined-room" && message.userId === this.userId) return this._onOwnJoin(message, now);
    if (this.room === null || message.roomId !== this.room.roomId) return [log("debug", `dropped ${message.type}: not for our room`)];
    try {
      if (message.type === "user-joined-room" || message.type === "user-left-room") return this._onMembership(message, now);
      if (message.type === "chat-message") {
        return [{ kind: "ChatReceived", fromUserId: message.fromUserId, text: message.text, ts: message.ts }];
      }
      const peer = this.peers.get(message.fromUserId);
      if (peer === undefined) throw new RemoteProtocolError(`${message.type} from ${message.fromUserId}, who is not in our room`);
      return this._run(peer, peer.onSignal(message, now));
    } catch (error) {
      if (!(error instanceof RemoteProtocolError)) throw error;
      return [{ kind: "ProtocolViolation", peerId: message.fromUserId ?? message.userId ?? null, detail: error.message }];
    }
  }

  /** Mirrors `_on_error`. */
  _onError(error, now) {
    const actions = [{ kind: "ServerErrorReceived", channel: error.channel, code: error.code, message: error.message }];
    const refused = error.channel === Channel.ROOMS && JOIN_REFUSALS.has(error.code);
    if (refused) this._joinsInFlight = Math.max(0, this._joinsInFlight - 1);
    if (refused && this.resuming && this._joinsInFlight === 0) actions.push(...this._giveUpResume(now));
    if (refused && this.state === ClientState.JOINING && this._joinsInFlight === 0) {
      actions.push({ kind: "JoinRefused", roomId: this.roomId, code: error.code, message: error.message });
      if (this.room !== null) {
        this.state = ClientState.JOINED;
        this.roomId = this.room.roomId;
      } else {
        this.state = ClientState.LOBBY;
        this.roomId = null;
      }
    }
    return actions;
  }

  /** Only the answer to our last join counts (mirrors `_on_own_join`). */
  _onOwnJoin(joined, now) {
    this._joinsInFlight = Math.max(0, this._joinsInFlight - 1);
    const superseded = this._joinsInFlight > 0;
    if (superseded || this.state !== ClientState.JOINING || joined.roomId !== this.roomId) {
      return [log("debug", `dropped our join of room ${joined.roomId}: superseded`)];
    }
    let room;
    try {
      room = new RoomView(this.userId, joined);
    } catch (error) {
      if (!(error instanceof RemoteProtocolError)) throw error;
      return [{ kind: "ProtocolViolation", peerId: null, detail: error.message }];
    }
    this._resumeToken = joined.resumeToken;
    if (this.resuming && this.room !== null && this.room.roomId === joined.roomId) return this._onResumed(room, now);
    const actions = this._giveUpResume(now);
    actions.push(...this._leaveRoom(now)); // the server has moved us out of the old room
    this.room = room;
    this.state = ClientState.JOINED;
    this._reconciledAdded.clear();
    this.absent.clear();
    this._timers.cancel(ABSENT_KEY);
    actions.push({ kind: "RoomJoined", roomId: joined.roomId, participants: [...room.members] });
    for (const peerId of room.members) actions.push(...this._addPeer(peerId, now));
    return actions;
  }

  /** In our room again after a resume or a fresh join we cannot tell from one: reconcile
   * (mirrors `_on_resumed`). */
  _onResumed(room, now) {
    this.resuming = false;
    this._timers.cancel(RESUME_KEY);
    this.room = room;
    this.state = ClientState.JOINED;
    const nowMembers = new Set(room.members);
    const actions = [];
    this._reconciledAdded.clear();
    this.absent = new Set([...this.peers.keys()].filter((p) => !nowMembers.has(p)));
    if (this.absent.size) this._timers.schedule(ABSENT_KEY, now + Math.max(this.resumeWindow, 1.0));
    const held = this._heldOut;
    this._heldOut = [];
    actions.push(...held.filter((a) => a.peerId === null || nowMembers.has(a.peerId)));
    actions.push({ kind: "RoomResumed", roomId: room.roomId, participants: [...room.members] });
    for (const peerId of room.members) {
      if (!this.peers.has(peerId)) {
        this._reconciledAdded.add(peerId);
        actions.push(...this._addPeer(peerId, now));
      }
    }
    return actions;
  }

  /** Mirrors `_on_membership`. */
  _onMembership(frame, now) {
    const { userId } = frame;
    if (frame.type === "user-joined-room" && this._reconciledAdded.has(userId)) {
      this._reconciledAdded.delete(userId);
      if (this.room.has(userId)) return [];
    }
    if (this.absent.has(userId)) {
      if (frame.type === "user-left-room") return this._removePeer(this.peers.get(userId), now); // it had left while we were away
      this.absent.delete(userId);
      if (this.absent.size === 0) this._timers.cancel(ABSENT_KEY);
      this.room.apply(frame); // back: its negotiation (and connection) carry on
      return [log("info", `${userId} is back in the room`)];
    }
    this._reconciledAdded.delete(userId);
    this.room.apply(frame);
    if (frame.type === "user-joined-room") return this._addPeer(userId, now);
    return this._removePeer(this.peers.get(userId), now);
  }
}
