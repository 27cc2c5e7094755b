// client.js — all of one client's signaling decisions: a port of `sansio_signal.client`
// and `sansio_signal.timers` (the Python module docstring is the theory of operation).
// Pure; see machine.js.

import { BROWSER, DEFAULT_CONFIG, PeerNegotiation, pairKind } from "./negotiation.js";
import {
  Channel,
  CloseCode,
  ID_PATTERN,
  LocalProtocolError,
  MAX_TEXT_CHARS,
  RemoteProtocolError,
  WireError,
  log,
  parseServerFrame,
  validId,
} from "./wire.js";

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

// ------------------------------------------------------------------ ClientMachine

/** The client's standing with the relay server (mirrors `client.ClientState`). */
export const ClientState = Object.freeze({
  OFFLINE: "offline",
  LOBBY: "lobby",
  JOINING: "joining",
  JOINED: "joined",
  RESUMING: "resuming",
  REJOINING: "rejoining",
  CLOSED: "closed",
});

/** Everything that can happen to a client machine (mirrors `client.ClientInput`). */
export const ClientInput = Object.freeze({
  CONNECT: "connect",
  CONNECT_FAILED: "connect-failed",
  CLOSE: "close",
  CONNECTED: "connected",
  DISCONNECTED: "disconnected",
  JOIN: "join",
  LEAVE: "leave",
  CHAT: "chat",
  RENEGOTIATE: "renegotiate",
  PEER_CONNECTION: "peer-connection",
  OWN_JOIN: "own-join",
  SERVER_ERROR: "server-error",
  ROOM_FRAME: "room-frame",
  UNREADABLE: "unreadable",
  RESUME_ENDED: "resume-ended",
  ABSENT_ENDED: "absent-ended",
  PEER_DEADLINE: "peer-deadline",
  RECONNECT_DUE: "reconnect-due",
});

/** When to try the server again (mirrors `client.ReconnectPolicy`): the first attempt
 * after a loss waits `delay(1)`, each failure in a row doubles it up to `maximum`,
 * jittered into [0.5, 1] of itself. */
export const DEFAULT_RECONNECT = Object.freeze({ base: 0.25, maximum: 5.0 });

/** Mirrors `ReconnectPolicy.delay`. */
export function reconnectDelay(policy, attempt, jitter) {
  const raw = Math.min(policy.maximum, policy.base * 2 ** Math.max(0, attempt - 1));
  return raw * (0.5 + jitter / 2);
}

const JOIN_REFUSALS = new Set(["user-id-taken", "room-full", "invalid-id", "unauthorized"]);

/** For how long after losing the server in a room a `user-id-taken` may be the relay
 * still holding our own place (mirrors `OWN_HOLD_HORIZON`). */
export const OWN_HOLD_HORIZON = 60.0;
/** Ends of the server connection after which our place may still be ours (mirrors
 * `client._RESUMABLE_CLOSES`; null: the socket dropped without a close frame). */
const RESUMABLE_CLOSES = new Set([null, CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.SERVICE_RESTART]);
/** The machine's own deadlines; a peer's deadline is keyed by its id (mirrors
 * `client.ClientTimer`; peer ids cannot contain a space). */
const RESUME_KEY = " resume";
const ABSENT_KEY = " absent";
const RECONNECT_KEY = " reconnect";

/** Our own id in a room's member list, a duplicate, ...: the view cannot be built
 * (mirrors `room.RoomView`). */
/** The most other members a room view takes (mirrors `room.DEFAULT_MAX_MEMBERS`). */
export const DEFAULT_MAX_MEMBERS = 64;

class RoomView {
  constructor(ourId, joined, maxMembers = DEFAULT_MAX_MEMBERS) {
    if (joined.userId !== ourId) throw new RemoteProtocolError(`a room view starts from our own join, not ${joined.userId}'s`);
    if (joined.existingParticipants.includes(ourId)) throw new RemoteProtocolError("existingParticipants lists the joiner itself");
    if (new Set(joined.existingParticipants).size !== joined.existingParticipants.length) {
      throw new RemoteProtocolError("existingParticipants lists a member twice");
    }
    if (joined.existingParticipants.length > maxMembers) {
      throw new RemoteProtocolError(`existingParticipants lists ${joined.existingParticipants.length} members; we take at most ${maxMembers}`);
    }
    this.maxMembers = maxMembers;
    this.ourId = ourId;
    this.roomId = joined.roomId;
    this.members = [...joined.existingParticipants];
  }

  has(userId) { return this.members.includes(userId); }

  apply(frame) {
    if (frame.roomId !== this.roomId) throw new RemoteProtocolError(`membership frame for room ${frame.roomId} while in ${this.roomId}`);
    if (frame.type === "user-joined-room") {
      if (frame.userId === this.ourId || this.members.includes(frame.userId)) throw new RemoteProtocolError(`${frame.userId} joined twice`);
      if (this.members.length >= this.maxMembers) throw new RemoteProtocolError(`${frame.userId} would be member ${this.members.length + 1}; we take at most ${this.maxMembers}`);
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

/** A trace record in the Python client's format (mirrors `ClientMachine._record`'s
 * fields): `t`, `dir`, `kind`, `user`, then the object's fields in snake_case; a
 * `SendToServer` carries the exact `text` sent. */
function traceRecord(t, dir, kind, userId, object) {
  const record = { t, dir, kind, user: userId };
  for (const [key, value] of Object.entries(object)) {
    if (key === "type" && dir === "in") continue;
    if (key === "kind" || value === undefined) continue;
    if (key === "frame") {
      record.text = JSON.stringify(value);
      continue;
    }
    record[key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = value;
  }
  return record;
}

/**
 * All of one client's signaling decisions (mirrors `client.ClientMachine`; its module
 * docstring is the theory of operation). `jitter` returns floats in [0, 1). `trace`,
 * when given, receives one record per event in and action out, made as the Python
 * machine makes them (the peer an event was about is the one it was dispatched to).
 */
export class ClientMachine {
  constructor(userId, { capabilities = BROWSER, jitter, config = DEFAULT_CONFIG, resumeWindow = 8.0, reconnect = DEFAULT_RECONNECT, maxPeers = DEFAULT_MAX_MEMBERS, trace = null } = {}) {
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
    this._trace = trace;
    this._touched = null; // the peer the current event was dispatched to (for the trace)
    this.resumeWindow = resumeWindow;
    this._resumeToken = null;
    this._lostPlace = null; // [room, when] we lost the server in it without leaving
    this.maxPeers = maxPeers; // the most other members we take in a room
    this.reconnect = reconnect; // the reconnect policy (null: connect only when asked, once)
    this._wantsServer = false;
    this._attempts = 0; // connection attempts since the last one that opened
    this._reached = false; // a connection has opened (until then a failure is ServerUnreachable)
    this._heldOut = [];
    this._reconciledAdded = new Set();
    this.absent = new Set();
  }

  // ---------------------------------------------------------------- public API

  /** When handleTimer must next be called, or null. */
  nextDeadline() { return this._timers.nextDeadline(); }

  /** Whether we hold a room for a resume (mirrors `resuming`). */
  get resuming() { return this.state === ClientState.RESUMING || this.state === ClientState.REJOINING; }

  /** Run every deadline that is due (mirrors `handle_timer`). */
  handleTimer(now) {
    const actions = [];
    for (const key of this._timers.popDue(now)) {
      if (key === RESUME_KEY) {
        actions.push(...this._dispatch(ClientInput.RESUME_ENDED, now, null));
        continue;
      }
      if (key === ABSENT_KEY) {
        actions.push(...this._dispatch(ClientInput.ABSENT_ENDED, now, null));
        continue;
      }
      if (key === RECONNECT_KEY) {
        actions.push(...this._dispatch(ClientInput.RECONNECT_DUE, now, null));
        continue;
      }
      const peer = this.peers.get(key);
      if (peer === undefined) continue;
      const before = [peer.state, peer.epoch];
      const out = this._dispatch(ClientInput.PEER_DEADLINE, now, peer);
      this._record(now, "in", "TimerFired", {}, peer, before);
      actions.push(...out);
    }
    this._recordOut(now, actions);
    return actions;
  }

  /** Feed one event; returns the actions to run, in order (mirrors `handle`). */
  handle(event, now) {
    if (this._trace === null) return this._handle(event, now);
    const states = new Map([...this.peers].map(([id, p]) => [id, [p.state, p.epoch]]));
    this._touched = null;
    const actions = this._handle(event, now);
    const peer = this._touched;
    const before = peer === null ? null : states.get(peer.peerId) ?? null;
    this._record(now, "in", event.type, event, peer, before);
    this._recordOut(now, actions);
    return actions;
  }

  /** Mirrors `_record`. */
  _record(now, dir, kind, fields, peer, before) {
    if (this._trace === null) return;
    const record = traceRecord(now, dir, kind, this.userId, fields);
    if (peer !== null) {
      record.peer = peer.peerId;
      record.epoch = peer.epoch;
      record.after = peer.state;
      if (before !== null) record.before = before[0];
    }
    this._trace(record);
  }

  /** Mirrors `_record_out`. */
  _recordOut(now, actions) {
    if (this._trace === null) return;
    for (const action of actions) {
      const record = traceRecord(now, "out", action.kind, this.userId, action);
      const peer = action.peerId == null ? undefined : this.peers.get(action.peerId);
      if (peer !== undefined) record.epoch = peer.epoch;
      this._trace(record);
    }
  }

  /** Mirrors `_handle`. */
  _handle(event, now) {
    if (event.type === "ServerFrameReceived") {
      const [input, payload] = this._classify(event.text);
      return this._dispatch(input, now, payload);
    }
    const input = EVENT_INPUTS[event.type];
    if (input === undefined) throw new LocalProtocolError(`ClientMachine cannot handle ${event.type}`);
    return this._dispatch(input, now, event);
  }

  /** What a server frame means, the codec's verdict included (mirrors `_classify`). */
  _classify(text) {
    let message;
    try {
      message = parseServerFrame(text);
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      return [ClientInput.UNREADABLE, error];
    }
    if (message.type === "error") return [ClientInput.SERVER_ERROR, message];
    if (message.type === "user-joined-room" && message.userId === this.userId) return [ClientInput.OWN_JOIN, message];
    return [ClientInput.ROOM_FRAME, message];
  }

  /** Mirrors `_dispatch`: the table says what runs and where it may lead. */
  _dispatch(input, now, payload) {
    const entry = TRANSITIONS.get(`${this.state}|${input}`);
    if (entry === undefined) throw new LocalProtocolError(`input ${input} is not allowed in state ${this.state}`);
    const before = this.state;
    const actions = entry.handler.call(this, now, payload);
    if (!entry.nextStates.includes(this.state)) {
      throw new LocalProtocolError(`${input} in ${before} led to ${this.state}, which the transition table does not list`);
    }
    return actions;
  }

  // ---------------------------------------------------------------- handlers

  _wantServer() {
    this._wantsServer = true; // connected already: this matters when it is lost
    return [];
  }

  _onConnect(now) {
    this._wantsServer = true;
    if (this._attempts || this._timers.deadlineOf(RECONNECT_KEY) !== null) return []; // on its way or due
    return this._attempt();
  }

  _attempt() {
    this._attempts += 1;
    return [{ kind: "ConnectToServer" }];
  }

  _onReconnectDue() { return this._attempt(); }

  _onConnectFailed(now, event) {
    const retry = this._retryLater(now);
    const never = this._reached || (event.timedOut && retry.length > 0) ? [] : [{ kind: "ServerUnreachable", reason: event.reason ?? "" }];
    return [log("info", `cannot reach the server: ${event.reason ?? ""}`), ...never, ...retry];
  }

  /** Schedule the next attempt, the policy permitting (mirrors `_retry_later`). */
  _retryLater(now) {
    if (this.reconnect === null || !this._wantsServer) {
      this._attempts = 0;
      return [];
    }
    const delay = reconnectDelay(this.reconnect, this._attempts + 1, this._jitter());
    this._timers.schedule(RECONNECT_KEY, now + delay);
    return [log("info", `reconnecting in ${delay.toFixed(2)}s`)];
  }

  _onClose(now) {
    const online = this.state !== ClientState.OFFLINE && this.state !== ClientState.RESUMING;
    const actions = this._onLeave(now);
    this._wantsServer = false;
    this._attempts = 0;
    this._timers.cancel(RECONNECT_KEY);
    this.state = ClientState.CLOSED;
    return online ? [...actions, { kind: "DisconnectFromServer" }] : actions;
  }

  _ignore() { return []; }

  _onConnectedAfterClose() { return [{ kind: "DisconnectFromServer" }]; } // an attempt on its way when we closed

  _onConnected(now) {
    this._attempts = 0;
    this._reached = true;
    this._timers.cancel(RECONNECT_KEY);
    if (this.state === ClientState.RESUMING) return this._sendJoin(); // with our resume token
    this.state = ClientState.LOBBY;
    return this.roomId !== null ? this._sendJoin() : [];
  }

  _onJoin(now, event) {
    if (!validId(event.roomId)) throw new LocalProtocolError(`room id ${JSON.stringify(event.roomId)} does not match ${ID_PATTERN}`);
    // The current room (if any) stays ours until the server confirms the new one.
    this.roomId = event.roomId;
    this._token = event.token ?? null;
    if (this.state === ClientState.OFFLINE || this.state === ClientState.RESUMING) return [];
    return this._sendJoin();
  }

  _onChat(now, event) {
    const length = codePoints(event.text);
    if (length > MAX_TEXT_CHARS) throw new LocalProtocolError(`chat text is ${length} characters; the limit is ${MAX_TEXT_CHARS}`);
    return [this._toServer({ channel: Channel.CHAT, type: "chat-message", text: event.text })];
  }

  _onRenegotiate(now, event) {
    const peer = this.peers.get(event.peerId);
    if (peer === undefined) throw new LocalProtocolError(`no peer ${event.peerId} in our room`);
    return this._run(peer, peer.requestRenegotiation(now));
  }

  _onResumeEnded(now) {
    const note = log("info", `no server within ${this.resumeWindow}s: room ${this.roomId} given up (the next join is fresh)`);
    return [note, ...this._giveUpResume(now)];
  }

  /** Mirrors `_on_resume_ended_rejoining`: the answer to our resuming join decides. */
  _onResumeEndedRejoining() {
    return [log("info", `resume window of ${this.resumeWindow}s passed with our resuming join on its way: its answer decides`)];
  }

  _onAbsentEnded(now) {
    const actions = [];
    for (const peerId of [...this.absent].sort()) actions.push(...this._removePeer(this.peers.get(peerId), now));
    return actions;
  }

  _onPeerDeadline(now, peer) { return this._run(peer, peer.onTimer(now)); }

  _onUnreadable(now, error) {
    return [{ kind: "ProtocolViolation", peerId: error.sender, detail: `unreadable server frame: ${error.message}` }];
  }

  // ---------------------------------------------------------------- the server

  _toServer(frame, peerId = null) { return { kind: "SendToServer", frame, peerId }; }

  _onDisconnected(now, event) {
    return this._loseServer(now, event).concat(this._retryLater(now));
  }

  _loseServer(now, event) {
    const closeCode = event.closeCode ?? null;
    this._joinsInFlight = 0; // their answers went with the connection
    if (this.state === ClientState.REJOINING) { // lost again before the resume went through
      this.state = ClientState.RESUMING;
      if (this._timers.deadlineOf(RESUME_KEY) === null) return this._onResumeEnded(now); // and the window is over
      return [];
    }
    const resumable = RESUMABLE_CLOSES.has(closeCode) && this.state === ClientState.JOINED
      && this.room !== null && this.room.roomId === this.roomId
      && this._resumeToken !== null && this.resumeWindow > 0;
    if (resumable) {
      this._lostPlace = [this.room.roomId, now];
      this.state = ClientState.RESUMING;
      this._timers.schedule(RESUME_KEY, now + this.resumeWindow);
      return [log("info", `server connection lost; keeping room ${this.roomId} for ${this.resumeWindow}s to resume`)];
    }
    const actions = this._leaveRoom(now);
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
    this.state = this.resuming ? ClientState.REJOINING : ClientState.JOINING;
    this._joinsInFlight += 1;
    const sameRoom = this.room !== null && this.room.roomId === this.roomId;
    const resume = this.resuming && sameRoom ? this._resumeToken : null;
    const frame = { channel: Channel.ROOMS, type: "join-room", roomId: this.roomId, userId: this.userId };
    if (this._token !== null) frame.token = this._token;
    if (resume !== null) frame.resumeToken = resume;
    return [this._toServer(frame), log("info", `Joining room: ${this.roomId} as ${this.userId}`)];
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
    const after = this.state === ClientState.RESUMING ? ClientState.OFFLINE : ClientState.JOINING;
    this._heldOut = [];
    this._timers.cancel(RESUME_KEY);
    this._timers.cancel(ABSENT_KEY);
    this.absent.clear();
    const actions = this._leaveRoom(now);
    this.state = after;
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
    this._touched = peer;
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
  _onPcEvent(now, event) {
    const owner = this._pcs.get(event.pc);
    const peer = owner === undefined ? undefined : this.peers.get(owner);
    if (peer === undefined || peer.pc !== event.pc) return [log("debug", `dropped ${event.type} for closed connection ${event.pc}`)];
    if (event.type === "IceGatheringDone") return this._onGathered(peer.peerId, event);
    if (event.type === "CandidatePairSelected") return this._onPairSelected(peer.peerId, event);
    let out;
    switch (event.type) {
      case "LocalDescriptionCreated": out = peer.onLocalDescription(event.description, now); break;
      case "RemoteDescriptionApplied": out = peer.onRemoteApplied(now); break;
      case "IceCandidateGathered": out = peer.onCandidateGathered(event.candidate, now); break;
      case "ConnectionStateChanged": out = peer.onConnectionState(event.state, now); break;
      case "NegotiationNeeded": out = peer.onNegotiationNeeded(now); break;
      default: out = peer.onOperationFailed(event.operation, event.error, now);
    }
    return this._run(peer, out);
  }

  /** What gathering found: the log only (mirrors `_on_gathered`). `event`: `{pc,
   * servers, candidateTypes, failures: [{url, error, code, username}]}`. */
  _onGathered(peerId, event) {
    const types = (event.candidateTypes ?? []).join(", ") || "no";
    const servers = (event.servers ?? []).join(", ") || "none";
    const out = [log("info", `[${peerId}] gathered ${types} candidates (ICE servers: ${servers})`)];
    for (const failure of event.failures ?? []) {
      out.push(log("warning", `[${peerId}] ICE server ${failure.url} gave no candidate: ${failure.error}`));
    }
    return out;
  }

  /** The selected candidate pair as a `PeerRoute` (mirrors `_on_pair_selected`). */
  _onPairSelected(peerId, event) {
    const kind = pairKind(event.localType, event.remoteType);
    const localAddress = event.localAddress ?? "";
    const remoteAddress = event.remoteAddress ?? "";
    return [
      log("info", `[${peerId}] connected over a ${kind} pair (local ${event.localType} ${localAddress}, remote ${event.remoteType} ${remoteAddress})`),
      { kind: "PeerRoute", peerId, pairType: kind, localType: event.localType, remoteType: event.remoteType, localAddress, remoteAddress },
    ];
  }

  // ---------------------------------------------------------------- server frames

  /** Membership, chat or signaling of our room (mirrors `_on_room_frame`). */
  _onRoomFrame(now, message) {
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
  _onError(now, error) {
    const actions = [{ kind: "ServerErrorReceived", channel: error.channel, code: error.code, message: error.message }];
    const refused = error.channel === Channel.ROOMS && JOIN_REFUSALS.has(error.code);
    if (error.channel === Channel.ROOMS && error.code === "unavailable"
        && (this.state === ClientState.JOINING || this.state === ClientState.REJOINING)) {
      // a cluster's server cannot reach its store: reconnect (back-off) and join again
      actions.push(log("info", `the server cannot decide our join now (${error.message}): reconnecting`));
      actions.push({ kind: "DisconnectFromServer" });
      return actions;
    }
    const lost = this._lostPlace;
    if (error.channel === Channel.ROOMS && error.code === "user-id-taken" && this.state === ClientState.JOINING
        && this._joinsInFlight <= 1 && lost !== null && lost[0] === this.roomId && now - lost[1] < OWN_HOLD_HORIZON) {
      // our own place, still held: reconnect (back-off) and join again until it lets go
      actions.push(log("info", `our place in room ${lost[0]} is still held (lost ${(now - lost[1]).toFixed(1)}s ago): reconnecting`));
      actions.push({ kind: "DisconnectFromServer" });
      return actions;
    }
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
  _onOwnJoin(now, joined) {
    this._joinsInFlight = Math.max(0, this._joinsInFlight - 1);
    const superseded = this._joinsInFlight > 0;
    const pending = this.state === ClientState.JOINING || this.state === ClientState.REJOINING;
    if (superseded || !pending || joined.roomId !== this.roomId) {
      return [log("debug", `dropped our join of room ${joined.roomId}: superseded`)];
    }
    let room;
    try {
      room = new RoomView(this.userId, joined, this.maxPeers);
    } catch (error) {
      if (!(error instanceof RemoteProtocolError)) throw error;
      return [{ kind: "ProtocolViolation", peerId: null, detail: error.message }];
    }
    this._resumeToken = joined.resumeToken;
    this._lostPlace = null;
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

// ------------------------------------------------------------------ the table

const EVENT_INPUTS = {
  ConnectRequested: ClientInput.CONNECT,
  ServerConnectFailed: ClientInput.CONNECT_FAILED,
  CloseRequested: ClientInput.CLOSE,
  ServerConnected: ClientInput.CONNECTED,
  ServerDisconnected: ClientInput.DISCONNECTED,
  JoinRequested: ClientInput.JOIN,
  LeaveRequested: ClientInput.LEAVE,
  ChatRequested: ClientInput.CHAT,
  RenegotiationRequested: ClientInput.RENEGOTIATE,
  LocalDescriptionCreated: ClientInput.PEER_CONNECTION,
  RemoteDescriptionApplied: ClientInput.PEER_CONNECTION,
  IceCandidateGathered: ClientInput.PEER_CONNECTION,
  ConnectionStateChanged: ClientInput.PEER_CONNECTION,
  NegotiationNeeded: ClientInput.PEER_CONNECTION,
  OperationFailed: ClientInput.PEER_CONNECTION,
  IceGatheringDone: ClientInput.PEER_CONNECTION,
  CandidatePairSelected: ClientInput.PEER_CONNECTION,
};

const C = ClientState;
const I = ClientInput;
const M = ClientMachine.prototype;
const ONLINE = [C.LOBBY, C.JOINING, C.JOINED, C.REJOINING];
const OFFLINE = [C.OFFLINE, C.RESUMING];
const FRAMES = [I.OWN_JOIN, I.SERVER_ERROR, I.ROOM_FRAME, I.UNREADABLE];
const entry = (state, input, handler, nextStates) => [`${state}|${input}`, { handler, nextStates }];
const stays = (input, handler, states = Object.values(C)) => states.map((s) => entry(s, input, handler, [s]));

/** `(state, input) → {handler, nextStates}` (mirrors `client.TRANSITIONS`; a Python test
 * compares the two). */
const TRANSITIONS = new Map([
  // the server connection: attempts, the reconnect policy, closing
  ...stays(I.CONNECT, M._onConnect, OFFLINE),
  ...stays(I.CONNECT, M._wantServer, ONLINE),
  ...stays(I.RECONNECT_DUE, M._onReconnectDue, OFFLINE),
  ...stays(I.CONNECT_FAILED, M._onConnectFailed, OFFLINE),
  ...[...OFFLINE, ...ONLINE].map((s) => entry(s, I.CLOSE, M._onClose, [C.CLOSED])),
  entry(C.CLOSED, I.CONNECTED, M._onConnectedAfterClose, [C.CLOSED]),
  ...stays(I.DISCONNECTED, M._ignore, [C.CLOSED]),
  ...stays(I.CLOSE, M._ignore, [C.CLOSED]), // closing twice is harmless
  ...stays(I.CONNECT_FAILED, M._ignore, [C.CLOSED]),
  ...FRAMES.map((input) => entry(C.CLOSED, input, M._ignore, [C.CLOSED])),
  // connected, lost
  entry(C.OFFLINE, I.CONNECTED, M._onConnected, [C.LOBBY, C.JOINING]),
  entry(C.RESUMING, I.CONNECTED, M._onConnected, [C.REJOINING]),
  entry(C.LOBBY, I.DISCONNECTED, M._onDisconnected, [C.OFFLINE]),
  entry(C.JOINING, I.DISCONNECTED, M._onDisconnected, [C.OFFLINE]),
  entry(C.JOINED, I.DISCONNECTED, M._onDisconnected, [C.OFFLINE, C.RESUMING]),
  entry(C.REJOINING, I.DISCONNECTED, M._onDisconnected, [C.RESUMING, C.OFFLINE]),
  entry(C.RESUMING, I.RESUME_ENDED, M._onResumeEnded, [C.OFFLINE]),
  entry(C.REJOINING, I.RESUME_ENDED, M._onResumeEndedRejoining, [C.REJOINING]),
  // what the application asks for
  entry(C.OFFLINE, I.JOIN, M._onJoin, [C.OFFLINE]),
  entry(C.RESUMING, I.JOIN, M._onJoin, [C.RESUMING]),
  entry(C.LOBBY, I.JOIN, M._onJoin, [C.JOINING]),
  entry(C.JOINING, I.JOIN, M._onJoin, [C.JOINING]),
  entry(C.JOINED, I.JOIN, M._onJoin, [C.JOINING]),
  entry(C.REJOINING, I.JOIN, M._onJoin, [C.REJOINING]),
  entry(C.OFFLINE, I.LEAVE, M._onLeave, [C.OFFLINE]),
  entry(C.RESUMING, I.LEAVE, M._onLeave, [C.OFFLINE]),
  entry(C.LOBBY, I.LEAVE, M._onLeave, [C.LOBBY]),
  entry(C.JOINING, I.LEAVE, M._onLeave, [C.LOBBY]),
  entry(C.JOINED, I.LEAVE, M._onLeave, [C.LOBBY]),
  entry(C.REJOINING, I.LEAVE, M._onLeave, [C.LOBBY]),
  entry(C.JOINED, I.CHAT, M._onChat, [C.JOINED]),
  ...stays(I.RENEGOTIATE, M._onRenegotiate),
  // the server's answers
  entry(C.JOINING, I.OWN_JOIN, M._onOwnJoin, [C.JOINING, C.JOINED]),
  entry(C.REJOINING, I.OWN_JOIN, M._onOwnJoin, [C.REJOINING, C.JOINED]),
  ...stays(I.OWN_JOIN, M._onOwnJoin, [C.LOBBY, C.JOINED]),
  entry(C.JOINING, I.SERVER_ERROR, M._onError, [C.JOINING, C.LOBBY, C.JOINED]),
  entry(C.REJOINING, I.SERVER_ERROR, M._onError, [C.REJOINING, C.LOBBY]),
  ...stays(I.SERVER_ERROR, M._onError, [C.LOBBY, C.JOINED]),
  // the room, the peers and their deadlines
  ...stays(I.ROOM_FRAME, M._onRoomFrame, ONLINE),
  ...stays(I.UNREADABLE, M._onUnreadable, ONLINE),
  ...stays(I.PEER_CONNECTION, M._onPcEvent),
  ...stays(I.PEER_DEADLINE, M._onPeerDeadline),
  ...stays(I.ABSENT_ENDED, M._onAbsentEnded),
]);

/** The table as sorted `[state, input, [next states]]` rows (for the Python test). */
export function clientTransitions() {
  return [...TRANSITIONS].map(([k, v]) => [...k.split("|"), [...v.nextStates].sort()]).sort();
}
