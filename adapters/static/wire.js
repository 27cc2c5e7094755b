// wire.js — the codec of the browser client: a port of `sansio_signal.wire` (frames the
// server sends), `sansio_signal.codes` and `sansio_signal.errors`. Pure; see machine.js.

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
  "rate-limited", "unauthorized", "unavailable",
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
    this.sender = null; // who sent a refused frame, when it names a valid fromUserId
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
    epochGiven: epoch !== null, // the sender numbers its connections at all
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
  try {
    return parseServerObject(obj);
  } catch (error) {
    if (error instanceof WireError) error.sender = validId(obj.fromUserId) ? obj.fromUserId : null;
    throw error;
  }
}

function parseServerObject(obj) {
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

/** A log action (mirrors `actions.Log`; levels by name). */
export function log(level, text) { return { kind: "Log", level, text }; }
