// sansio-signal.js — the browser client of sansio-signal (wire protocol v1).
//
// One ES module and its pure half (machine.js), no build step, no dependencies. Import
// it from the page the relay serves (`import { SignalingClient } from
// "/sansio-signal.js"`) or copy both files next to your own page.
//
// Theory of operation
// -------------------
// Like the Python package, the client has two halves:
//
// * machine.js decides everything: `ClientMachine` (the room, who is in it, resume) and
//   one `PeerNegotiation` per other member (who offers, JSEP, trickle ICE, glare,
//   epochs, recovery, deadlines). It is a port of `sansio_signal.client` and
//   `sansio_signal.negotiation`, held equal to them by recorded vectors and a
//   differential test (tests/test_js_equal.py), and it is pure: events in, actions out.
// * `SignalingClient` (this file) is its driver and decides nothing: it owns the
//   WebSocket and the RTCPeerConnections, feeds what happens to the machine as events,
//   runs the actions it gets back — one promise chain per connection, so operations on
//   one connection never interleave — keeps the one timer the machine asks for, and
//   turns notifications into DOM events.
//
// The rules that make peers interoperate are PROTOCOL.md's "Peer conventions"; see
// docs/negotiation.md and docs/browser.md.

import { BROWSER, CHANNEL_LABEL, ClientMachine, DEFAULT_CONFIG, DEFAULT_RECONNECT } from "./machine.js";

export * from "./machine.js";

/**
 * A browser client: one WebSocket to the relay, one room, one RTCPeerConnection per
 * other member. Events (an EventTarget; each event is a CustomEvent with `detail`):
 *
 *   "open" / "close"         the WebSocket to the relay ({code} on close)
 *   "unreachable"            {reason}: an attempt failed before the server was ever reached
 *                            (connect() rejects with the first; the client keeps trying)
 *   "room-joined"            {roomId, participants}
 *   "room-resumed"           {roomId, participants}: back in the room after a lost connection
 *   "room-left"              {roomId}
 *   "join-refused"           {roomId, code, message}
 *   "peer-joined"            {peerId}
 *   "peer-state"             {peerId, state, link, epoch}: after every change (for UIs)
 *   "peer-connecting"        {peerId, epoch}
 *   "peer-connected"         {peerId, epoch}
 *   "peer-failed"            {peerId, reason}
 *   "peer-route"             {peerId, pairType, localType, remoteType, localAddress,
 *                            remoteAddress}: the candidate pair a connection uses, from
 *                            the browser's getStats when it connects (pairType: "host",
 *                            "srflx" or "relay"; the machine's PeerRoute)
 *   "ice-gathered"           {peerId, servers, candidateTypes, failures}: what one ICE
 *                            gathering found, as fed to the machine (IceGatheringDone)
 *   "peer-left"              {peerId}
 *   "channel-open"           {peerId}: the `chat` data channel with this peer is open
 *   "message"                {from, text}: a message on a `chat` data channel
 *   "chat"                   {from, text, ts}: server chat (relayed to the whole room)
 *   "server-error"           {channel, code, message}
 *   "violation"              {peerId, detail}: a frame that made no sense, dropped
 *   "log"                    {level, text}: the seed-style log lines and more
 *
 * Options: `url` (ws://... of the relay), `iceServers` (RTCIceServer list; default none;
 * or a function returning one, or a promise of one, called before each connection to the
 * relay — `relayIceServers` fetches the relay's `/config.json`, whose TURN credentials
 * expire), `config` (deadlines), `reconnect` (default true),
 * `resumeWindow` (seconds the room and peers are kept after losing the server, default
 * 8; 0 when `reconnect` is false), `trace` (default false: true records every event in
 * and action out, read with `trace()`; a number is about how many of the latest records
 * to keep — `true` keeps about TRACE_LIMIT). Resume, reconciliation and every other
 * decision are the machine's (`ClientMachine` in machine.js).
 */
/** The ICE servers the relay hands out at `/config.json` (beside the page, or at `base`):
 * `serve --ice-server`, and TURN credentials made fresh for each request with
 * `serve --turn-url`. None when the relay has no such page. Pass the function itself as
 * `iceServers` to fetch them again before each connection. */
export async function relayIceServers(base = "") {
  const response = await fetch(`${base}/config.json`, { cache: "no-store" });
  if (response.status === 404) return [];
  if (!response.ok) throw new Error(`/config.json: HTTP ${response.status}`);
  return (await response.json()).iceServers ?? [];
}

export class SignalingClient extends EventTarget {
  constructor({ url, userId, iceServers = [], config = DEFAULT_CONFIG, reconnect = true, resumeWindow = 8, jitter = Math.random, trace = false } = {}) {
    super();
    this.url = url;
    this.userId = userId;
    this._iceSource = typeof iceServers === "function" ? iceServers : null;
    this.iceServers = this._iceSource === null ? iceServers : [];
    this._records = trace ? [] : null; // trace lines (JSON), when tracing
    this._traceLimit = typeof trace === "number" ? trace : TRACE_LIMIT;
    this.machine = new ClientMachine(userId, {
      capabilities: BROWSER,
      jitter,
      config,
      resumeWindow: reconnect ? resumeWindow : 0,
      reconnect: reconnect ? DEFAULT_RECONNECT : null,
      trace: trace ? (record) => this._keep(record) : null, // the machine makes the records
    });
    this._conns = new Map(); // pc handle → {peerId, pc, chain, channel}
    this._shown = new Map(); // peerId → the last "peer-state" detail, as JSON
    this._ws = null;
    this._timer = null;
    this._first = null; // the promise of connect(), settled by the first attempt
  }

  // ---------------------------------------------------------------- the machine's view

  /** "offline", "lobby", "joining" or "joined". */
  get state() { return this.machine.state; }
  /** The room we are in ({roomId, members}) or null. */
  get room() { return this.machine.room; }
  /** peerId → its negotiation ({state, link, epoch, pc, ...}), read-only. */
  get peers() { return this.machine.peers; }

  // ---------------------------------------------------------------- public API

  /** Ask for the server: resolves when the first connection opens, rejects if that
   * attempt fails. When to try (again) is the machine's call: it reconnects on its own,
   * with a jittered back-off, until close(). */
  connect() {
    return new Promise((resolve, reject) => {
      this._first = { resolve, reject };
      this.feed({ type: "ConnectRequested" });
    });
  }

  /** Join `roomId` (leaving any current room once the server confirms). */
  join(roomId, { token = null } = {}) {
    this.feed({ type: "JoinRequested", roomId, token });
  }

  /** Leave the room: every peer connection is closed. */
  leave() { this.feed({ type: "LeaveRequested" }); }

  /** Leave the room, close every peer connection and the WebSocket (no reconnect). */
  close() {
    this.feed({ type: "CloseRequested" }); // leave-room if in a room, then DisconnectFromServer
    clearTimeout(this._timer);
    for (const conn of this._conns.values()) conn.pc.close();
    this._conns.clear();
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
  chat(text) { this.feed({ type: "ChatRequested", text }); }

  /** Ask for a new offer/answer exchange with `peerId` (after adding a track, say). */
  renegotiate(peerId) { this.feed({ type: "RenegotiationRequested", peerId }); }

  /** The current RTCPeerConnection with `peerId`, or null. */
  peerConnection(peerId) {
    const peer = this.peers.get(peerId);
    if (peer === undefined || peer.pc === null) return null;
    return this._conns.get(peer.pc)?.pc ?? null;
  }

  /** {peerId: {state, link, epoch}} for every member of the room. */
  peerStates() {
    const out = {};
    for (const [peerId, peer] of this.peers) out[peerId] = peerState(peer);
    return out;
  }

  /** Feed one event to the machine and run what it decides (the driver's only way in;
   * public for tests and custom transports). Events are machine.js's: `{type:
   * "ConnectionStateChanged", pc, state}` and so on. */
  feed(event) {
    return this._execute(this.machine.handle(event, now()));
  }

  /** The trace, as JSON lines (one record per line, each ending in a newline): the
   * format of the Python client's `--trace` files, so that `sansio-signal diagnose`
   * reads a browser's trace with Python clients' and the relay's. Empty unless the
   * client was made with `trace`. */
  trace() {
    return this._records === null ? "" : this._records.map((line) => line + "\n").join("");
  }

  // ---------------------------------------------------------------- running actions

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  _log(level, text) { this._emit("log", { level, text }); }

  /** One WebSocket, opened because the machine asked (`ConnectToServer`); first the ICE
   * servers, when they come from a function (fresh TURN credentials for each connection). */
  _open() {
    if (this._iceSource === null) return this._openSocket();
    Promise.resolve()
      .then(() => this._iceSource())
      .then(
        (servers) => { this.iceServers = servers ?? []; },
        (error) => this._log("warning", `no ICE servers: ${error?.message ?? error}`),
      )
      .then(() => this._openSocket());
  }

  _openSocket() {
    const ws = new WebSocket(this.url);
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._emit("open", {});
      this.feed({ type: "ServerConnected" });
      this._settle(true);
    };
    ws.onmessage = (event) => this.feed({ type: "ServerFrameReceived", text: String(event.data) });
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._emit("close", { code: event.code });
      if (opened) {
        this.feed({ type: "ServerDisconnected", closeCode: event.code });
      } else {
        this.feed({ type: "ServerConnectFailed", reason: `cannot connect to ${this.url} (close ${event.code})` });
      }
    };
  }

  /** Resolve (the server is reached) or reject (it is unreachable) `connect()`'s promise. */
  _settle(ok, value) {
    const first = this._first;
    this._first = null;
    if (first !== null) (ok ? first.resolve : first.reject)(value);
  }

  _execute(actions) {
    for (const action of actions) this._run(action);
    for (const [peerId, peer] of this.peers) {
      const detail = { peerId, ...peerState(peer) };
      const shown = JSON.stringify(detail);
      if (this._shown.get(peerId) !== shown) {
        this._shown.set(peerId, shown);
        this._emit("peer-state", detail);
      }
    }
    for (const peerId of [...this._shown.keys()]) if (!this.peers.has(peerId)) this._shown.delete(peerId);
    this._rearm();
  }

  _run(action) {
    switch (action.kind) {
      case "ConnectToServer": return this._open();
      case "DisconnectFromServer":
        if (this._ws !== null) this._ws.close(1000, "bye"); // after what is queued (the leave)
        return undefined;
      case "SendToServer":
        if (this._ws !== null && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(action.frame));
        return;
      case "Log": return this._log(action.level, action.text);
      case "RoomJoined":
        this._log("info", `Joined room: ${action.roomId} with ${action.participants.length} other participant(s)`);
        return this._emit("room-joined", { roomId: action.roomId, participants: action.participants });
      case "RoomResumed":
        this._log("info", `Resumed room: ${action.roomId} with ${action.participants.length} other participant(s)`);
        return this._emit("room-resumed", { roomId: action.roomId, participants: action.participants });
      case "RoomLeft": return this._emit("room-left", { roomId: action.roomId });
      case "ServerUnreachable":
        this._settle(false, new Error(action.reason));
        return this._emit("unreachable", { reason: action.reason });
      case "JoinRefused": return this._emit("join-refused", { roomId: action.roomId, code: action.code, message: action.message });
      case "PeerJoined":
        this._log("info", `User joined: ${action.peerId}`);
        return this._emit("peer-joined", { peerId: action.peerId });
      case "PeerLeft":
        this._log("info", `User left: ${action.peerId}`);
        return this._emit("peer-left", { peerId: action.peerId });
      case "PeerConnecting": return this._emit("peer-connecting", { peerId: action.peerId, epoch: action.epoch });
      case "PeerConnected": return this._emit("peer-connected", { peerId: action.peerId, epoch: action.epoch });
      case "PeerFailed": return this._emit("peer-failed", { peerId: action.peerId, reason: action.reason });
      case "PeerRoute": {
        const { peerId, pairType, localType, remoteType, localAddress, remoteAddress } = action;
        return this._emit("peer-route", { peerId, pairType, localType, remoteType, localAddress, remoteAddress });
      }
      case "ChatReceived": return this._emit("chat", { from: action.fromUserId, text: action.text, ts: action.ts });
      case "ServerErrorReceived":
        this._log("warning", `server error ${action.code}: ${action.message}`);
        return this._emit("server-error", { channel: action.channel, code: action.code, message: action.message });
      case "ProtocolViolation":
        this._log("warning", `dropped a frame: ${action.detail}`);
        return this._emit("violation", { peerId: action.peerId, detail: action.detail });
      case "CreatePeer": return this._createPeer(action);
      case "ClosePeer": {
        const conn = this._conns.get(action.pc);
        this._conns.delete(action.pc);
        if (conn !== undefined) conn.pc.close();
        return undefined;
      }
      default: return this._enqueue(action);
    }
  }

  /** The one timer: at the machine's next deadline, let it run what is due. */
  _rearm() {
    clearTimeout(this._timer);
    const next = this.machine.nextDeadline();
    if (next === null) return;
    this._timer = setTimeout(() => this._onTimer(), Math.max(0, (next - now()) * 1000));
  }

  _onTimer() {
    this._execute(this.machine.handleTimer(now()));
  }

  // ---------------------------------------------------------------- the trace

  _keep(record) {
    record.wall_time = Date.now() / 1000; // lines traces of different machines up
    this._records.push(JSON.stringify(record));
    // Over the limit by a tenth: the oldest go, in one splice rather than one per record.
    if (this._records.length > this._traceLimit * 1.1) this._records.splice(0, this._records.length - this._traceLimit);
  }

  /** A result of connection `handle`, unless the client closed it meanwhile (the machine
   * drops results of connections it replaced). */
  _result(handle, event) {
    if (!this._conns.has(handle)) return;
    try {
      this.feed({ ...event, pc: handle });
    } catch (error) {
      this._log("error", `${event.type}: ${error.message}`); // a bug: nothing to hand it to
    }
  }

  _createPeer(action) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const handle = action.pc;
    const { peerId } = action;
    // types/failures: what the current ICE gathering found (see _gathered)
    const conn = { peerId, pc, chain: Promise.resolve(), channel: null, types: new Set(), failures: [] };
    this._conns.set(handle, conn);
    pc.onicecandidate = (event) => {
      // Browsers end with a null candidate; some also send an empty one: one end only.
      const c = event.candidate;
      if (c !== null && c.candidate === "") return;
      if (c !== null) conn.types.add(c.type ?? candidateType(c.candidate));
      this._result(handle, { type: "IceCandidateGathered", candidate: c === null ? null : c.toJSON() });
    };
    pc.onicecandidateerror = (event) => this._candidateError(conn, event);
    pc.onicegatheringstatechange = () => this._gathered(handle, conn);
    pc.onconnectionstatechange = () => this._result(handle, { type: "ConnectionStateChanged", state: pc.connectionState });
    pc.onnegotiationneeded = () => this._result(handle, { type: "NegotiationNeeded" });
    pc.ondatachannel = (event) => { if (event.channel.label === CHANNEL_LABEL) this._adoptChannel(peerId, handle, event.channel); };
    if (action.initiator) this._adoptChannel(peerId, handle, pc.createDataChannel(CHANNEL_LABEL));
  }

  /** `icecandidateerror`: a STUN or TURN server gave no candidate (or an address could
   * not reach it: Chromium reports 701 for those too). Kept as reported, once each, for
   * the gathering's IceGatheringDone; the username of the configured server it names
   * goes with it (its expiry, for short-lived credentials), never the credential. */
  _candidateError(conn, event) {
    const code = typeof event.errorCode === "number" ? event.errorCode : null;
    const text = String(event.errorText ?? "").trim();
    const error = code === null || text.startsWith(String(code)) ? text || "failed" : `${code} ${text}`.trim();
    const url = String(event.url ?? "");
    const username = serverFor(this.iceServers, url)?.username ?? null;
    const failure = { url, error, code, username };
    const same = (f) => f.url === url && f.error === error && f.code === code;
    if (!conn.failures.some(same)) conn.failures.push(failure); // one per local address otherwise
  }

  /** `icegatheringstatechange`: a gathering starts (the first, or an ICE restart's) or
   * completes. Reported once per gathering, not once per connection: an ICE restart
   * gathers again, perhaps with credentials that have expired meanwhile, and what it
   * finds is news. */
  _gathered(handle, conn) {
    const state = conn.pc.iceGatheringState;
    if (state === "gathering") {
      conn.types = new Set();
      conn.failures = [];
    } else if (state === "complete") {
      const event = {
        type: "IceGatheringDone",
        servers: serverUrls(this.iceServers),
        candidateTypes: TYPE_ORDER.filter((t) => conn.types.has(t)).concat([...conn.types].filter((t) => !TYPE_ORDER.includes(t))),
        failures: conn.failures,
      };
      conn.failures = [];
      if (this._conns.get(handle) !== conn) return;
      this._emit("ice-gathered", { peerId: conn.peerId, servers: event.servers, candidateTypes: event.candidateTypes, failures: event.failures });
      this._result(handle, event);
    }
  }

  /** `ReadSelectedPair` (the machine asks when the connection becomes connected): the
   * candidate pair it uses, from its stats, goes to the machine as CandidatePairSelected
   * (it answers with PeerRoute). */
  async _reportPair(handle, conn) {
    let stats;
    try {
      stats = await conn.pc.getStats();
    } catch (error) {
      this._log("warning", `[${conn.peerId}] no stats for the candidate pair: ${error?.message ?? error}`);
      return;
    }
    const pair = selectedPair(stats);
    if (pair === null) {
      this._log("warning", `[${conn.peerId}] connected, but getStats names no selected candidate pair`);
      return;
    }
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    if (local === undefined || remote === undefined) return;
    this._result(handle, {
      type: "CandidatePairSelected",
      localType: local.candidateType,
      remoteType: remote.candidateType,
      localAddress: addressOf(local),
      remoteAddress: addressOf(remote),
    });
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

  /** Operations on one connection run one after another, like aiortc_peer's queue; a
   * failure goes back to the machine as `OperationFailed`, named by the action. */
  _enqueue(action) {
    const conn = this._conns.get(action.pc);
    if (conn === undefined) return;
    conn.chain = conn.chain.then(() => this._operate(action, conn)).catch((error) => {
      this._result(action.pc, { type: "OperationFailed", operation: action.kind, error: String(error?.message ?? error) });
    });
  }

  async _operate(action, conn) {
    const { pc } = conn;
    const handle = action.pc;
    if (this._conns.get(handle) !== conn) return;
    switch (action.kind) {
      case "CreateOffer":
      case "CreateAnswer": {
        const description = action.kind === "CreateOffer"
          ? await pc.createOffer(action.iceRestart ? { iceRestart: true } : {})
          : await pc.createAnswer();
        await pc.setLocalDescription(description);
        const local = pc.localDescription;
        this._result(handle, { type: "LocalDescriptionCreated", description: { type: local.type, sdp: local.sdp } });
        return;
      }
      case "SetRemoteDescription":
        await pc.setRemoteDescription(action.description);
        this._result(handle, { type: "RemoteDescriptionApplied" });
        return;
      case "RollbackLocalDescription":
        if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
        return;
      case "AddIceCandidate": {
        const c = action.candidate;
        await pc.addIceCandidate(c === null || c.candidate === "" ? null : c);
        return;
      }
      case "ReadSelectedPair":
        return this._reportPair(handle, conn);
      default:
        throw new Error(`unexpected action ${action.kind}`);
    }
  }
}

/** About how many records a client made with `trace: true` keeps (the oldest go
 * first): a few hundred pairs' negotiations, some megabytes. */
export const TRACE_LIMIT = 20000;

/** What a UI shows of one pair: its negotiation's state, link and epoch. */
function peerState(peer) {
  return { state: peer.state, link: peer.link, epoch: peer.epoch };
}

/** Candidate types in the order IceGatheringDone lists them. */
const TYPE_ORDER = ["host", "srflx", "prflx", "relay"];

/** The `typ` of an SDP candidate line (for browsers without RTCIceCandidate.type). */
function candidateType(line) {
  const words = String(line).split(" ");
  const at = words.indexOf("typ");
  return at >= 0 && at + 1 < words.length ? words[at + 1] : "unknown";
}

/** Every URL of an RTCIceServer list (`urls` is a string or an array). */
function serverUrls(iceServers) {
  return (iceServers ?? []).flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls])).map(String);
}

/** The configured server that `url` (as icecandidateerror reports it, e.g.
 * "turn:10.0.0.1:3478?transport=udp") names, or undefined. */
function serverFor(iceServers, url) {
  const key = serverKey(url);
  return (iceServers ?? []).find((s) => (Array.isArray(s.urls) ? s.urls : [s.urls]).some((u) => u === url || serverKey(u) === key));
}

/** scheme:host:port of an ICE server URL, the default port filled in, no query. */
function serverKey(url) {
  const [scheme, rest = ""] = String(url).toLowerCase().split("?")[0].split(/:(.*)/s);
  const secure = scheme === "stuns" || scheme === "turns";
  const hasPort = rest.startsWith("[") ? /\]:\d+$/.test(rest) : /:\d+$/.test(rest);
  return `${scheme}:${hasPort ? rest : `${rest}:${secure ? 5349 : 3478}`}`;
}

/** The candidate-pair report a connection uses: its transport's selected pair, or (no
 * transport report says) the nominated pair that succeeded; null if neither. */
function selectedPair(stats) {
  for (const report of stats.values()) {
    if (report.type === "transport" && report.selectedCandidatePairId) {
      const pair = stats.get(report.selectedCandidatePairId);
      if (pair !== undefined) return pair;
    }
  }
  for (const report of stats.values()) {
    if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") return report;
  }
  return null;
}

/** "address:port" of a candidate report ("[v6]:port" for IPv6). */
function addressOf(candidate) {
  const address = candidate.address ?? candidate.ip ?? "";
  return `${address.includes(":") ? `[${address}]` : address}:${candidate.port}`;
}

function now() {
  return performance.now() / 1000;
}
