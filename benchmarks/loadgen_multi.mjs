#!/usr/bin/env node
// Load generator for WebSocket signaling relays speaking wire protocol v1
// (see ../shared/PROTOCOL.md). Single process, single thread, `ws` client.
//
// benchmarks/loadgen_multi.mjs: shared/bench/loadgen.mjs (kept pristine there) adapted
// for a relay of several processes (`serve --redis`, benchmarks/bench_scaleout.py):
//   * --url may be given several times: client i of every room connects to URL
//     i mod U, so each room's members are spread round-robin over the processes and
//     one generator sees the whole membership (K members per room, as with one URL);
//   * --cross: a client sends only to members connected to another URL than its own
//     (every frame crosses processes); without it, to any other member;
//   * --join-timeout S: the join phase ends the run after S s (status `join-timeout`,
//     the detail naming the first clients whose membership is incomplete);
//   * the report adds `urls`, `clients_per_url` and `cross_delivered` (frames
//     delivered whose sender and target were connected to different URLs).
// Everything else (phases, checks, JSON fields) is loadgen.mjs's.
//
// Phases:
//   connect  open R*K sockets (bounded handshake concurrency), each sends join-room
//   join     wait until every client has seen its own user-joined-room and its
//            tracked membership (user-joined-room / user-left-room) has K members
//   send     every client sends M webrtc-ice frames to random other members,
//            either paced (--rate F per client) or as fast as possible with a
//            bounded end-to-end in-flight window per client (--rate 0)
//   drain    wait for outstanding frames (until all accounted for, or no progress
//            for --drain-timeout seconds)
// A global --timeout always ends the run; partial results are reported then.
//
// Only client-side observations are reported; nothing is asked of the server.

import WebSocket from 'ws';
import { parseArgs } from 'node:util';
import { performance, monitorEventLoopDelay } from 'node:perf_hooks';

const USAGE = `usage: node loadgen_multi.mjs --url ws://127.0.0.1:PORT/ [--url ws://...] [options]
  --url U                 a relay process; repeat for several (client i of a room -> URL i mod U)
  --cross                 send only to members connected to another URL than the sender's
  --join-timeout S        end the run when the join phase lasts S s (default: only --timeout)
  --rooms R               rooms (default 10)
  --per-room K            clients per room (default 10; protocol default cap is 32)
  --frames M              webrtc-ice frames sent per client (default 100)
  --rate F                frames/s per client; 0 = as fast as possible, bounded by
                          --window in-flight frames per client (default 0)
  --window W              max in-flight (sent, not yet delivered/rejected) frames per
                          client (default 16 when --rate 0, unlimited otherwise).
                          With --rate 0, latency is mostly queueing: ~window*clients/throughput
  --timeout S             hard limit for the whole run in seconds (default 60)
  --stall-timeout S       during send/drain, give up after S s without any frame sent,
                          delivered or rejected (default 5; alias --drain-timeout)
  --connect-concurrency N concurrent WebSocket handshakes (default 100)
  --prefix P              roomId prefix (default: bench-<random>, fresh per run)
  --pad N                 add a "pad" field of N bytes to every signaling frame (default 0)
  --spoof                 put a forged "fromUserId" in every sent frame (server must overwrite)
  --deflate               offer permessage-deflate (off by default)
  --json                  print one JSON object on stdout (otherwise a readable summary)
  --quiet                 no progress lines on stderr
Exit status: 0 run completed (even with losses), 2 partial (timeout/stall/connect failure), 1 usage.`;

let args;
try {
  args = parseArgs({
    options: {
      url: { type: 'string', multiple: true, default: ['ws://127.0.0.1:8080/'] },
      cross: { type: 'boolean', default: false },
      'join-timeout': { type: 'string' },
      rooms: { type: 'string', default: '10' },
      'per-room': { type: 'string', default: '10' },
      frames: { type: 'string', default: '100' },
      rate: { type: 'string', default: '0' },
      window: { type: 'string' },
      timeout: { type: 'string', default: '60' },
      'stall-timeout': { type: 'string', default: '5' },
      'drain-timeout': { type: 'string' },
      'connect-concurrency': { type: 'string', default: '100' },
      prefix: { type: 'string' },
      pad: { type: 'string', default: '0' },
      spoof: { type: 'boolean', default: false },
      deflate: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(String(e.message || e));
  console.error(USAGE);
  process.exit(1);
}
if (args.help) { console.log(USAGE); process.exit(0); }

function num(name, { min = 0, int = true } = {}) {
  const v = Number(args[name]);
  if (!Number.isFinite(v) || v < min || (int && !Number.isInteger(v))) {
    console.error(`bad --${name}: ${args[name]}`);
    process.exit(1);
  }
  return v;
}
const URLS = args.url;
const URL_ = URLS.join(' ');
const CROSS = args.cross;
if (CROSS && URLS.length < 2) {
  console.error('--cross needs at least two --url');
  process.exit(1);
}
const R = num('rooms', { min: 1 });
const K = num('per-room', { min: 1 });
const M = num('frames', { min: 0 });
const RATE = num('rate', { min: 0, int: false });
const WINDOW = args.window !== undefined ? num('window', { min: 1 }) : (RATE > 0 ? Infinity : 16);
const TIMEOUT_S = num('timeout', { min: 1, int: false });
if (args['drain-timeout'] !== undefined) args['stall-timeout'] = args['drain-timeout'];
const STALL_S = num('stall-timeout', { min: 0.1, int: false });
const CONC = num('connect-concurrency', { min: 1 });
const PAD = num('pad', { min: 0 });
const PREFIX = args.prefix ?? `bench-${Math.random().toString(36).slice(2, 8)}`;
const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
if (!ID_RE.test(`${PREFIX}-r${R}`)) {
  console.error(`--prefix must keep roomIds within ${ID_RE}`);
  process.exit(1);
}
const N = R * K;
const JOIN_TIMEOUT_S = args['join-timeout'] !== undefined ? num('join-timeout', { min: 0.1, int: false }) : null;
const log = args.quiet ? () => {} : (...a) => console.error(`[loadgen +${((performance.now() - T0) / 1000).toFixed(2)}s]`, ...a);

// ---------------------------------------------------------------- state
const T0 = performance.now();
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

let phase = 'connect';
let status = null; // set by finish()
let tAllOpen = null, tAllJoined = null, tSendStart = null, tLastSend = null, tLastDelivery = null, tAllSent = null;
let openCount = 0, completeCount = 0, deadCount = 0, sentDoneCount = 0;
let framesSent = 0, delivered = 0, rejected = 0, crossDelivered = 0;
let reordered = 0, duplicates = 0, wrongSender = 0, wrongRoom = 0, misrouted = 0, malformed = 0, unknownSender = 0;
const errors = Object.create(null);
const closes = Object.create(null);
const checks = {
  connect_errors: 0,
  closed_before_end: 0,
  non_json_from_server: 0,
  binary_from_server: 0,
  other_frames: 0,
  join_missing_resume_token: 0,
  join_existing_unsorted: 0,
  join_existing_includes_self: 0,
  duplicate_self_join: 0,
  peer_join_before_own: 0,
  membership_over_k: 0,
  membership_changes_during_send: 0,
  clients_without_peers: 0,
};
const FRAMES_TARGET = K > 1 ? N * M : 0;
const lat = new Float64Array(Math.max(FRAMES_TARGET, 1));
let latN = 0;
const padField = PAD > 0 ? `,"pad":"${'x'.repeat(PAD)}"` : '';

class Client {
  constructor(room, idx) {
    this.room = room;
    this.roomId = `${PREFIX}-r${room}`;
    this.userId = `u${room}_${idx}`;
    this.urlIndex = idx % URLS.length;
    this.url = URLS[this.urlIndex];
    this.ws = null;
    this.open = false;
    this.dead = false;
    this.sawSelf = false;
    this.complete = false;
    this.members = new Set();
    this.others = [];
    this.sent = 0;
    this.inflight = 0;
    this.delivered = 0; // frames of this client that reached their target
    this.lastSeq = new Map(); // sender userId -> highest seq received
    this.offsetMs = 0; // pacing phase offset
    this.doneSending = false;
  }
}
const clients = [];
const byId = new Map();
for (let r = 0; r < R; r++) for (let i = 0; i < K; i++) {
  const c = new Client(r, i);
  clients.push(c);
  byId.set(c.userId, c);
}

// ---------------------------------------------------------------- connect + join
let nextToConnect = 0, handshaking = 0;
function connectMore() {
  while (phase === 'connect' && handshaking < CONC && nextToConnect < N) {
    connect(clients[nextToConnect++]);
  }
}

function connect(c) {
  handshaking++;
  let ws;
  try {
    ws = new WebSocket(c.url, { perMessageDeflate: args.deflate, handshakeTimeout: Math.ceil(TIMEOUT_S * 1000) });
  } catch (e) {
    handshaking--;
    checks.connect_errors++;
    finish('connect-failed', String(e.message || e));
    return;
  }
  c.ws = ws;
  ws.on('open', () => {
    handshaking--;
    c.open = true;
    openCount++;
    if (openCount === N) { tAllOpen = performance.now(); if (phase === 'connect') phase = 'join'; log(`all ${N} sockets open`); }
    ws.send(JSON.stringify({ channel: 'webrtc-dashboard-rooms', type: 'join-room', roomId: c.roomId, userId: c.userId }));
    connectMore();
  });
  ws.on('message', (data, isBinary) => onMessage(c, data, isBinary));
  ws.on('error', (err) => {
    if (!c.open) {
      checks.connect_errors++;
      handshaking--;
      c.dead = true;
      deadCount++;
      if (phase === 'connect' || phase === 'join') finish('connect-failed', `${c.userId}: ${err.code || err.message}`);
    }
  });
  ws.on('close', (code) => {
    closes[code] = (closes[code] || 0) + 1;
    if (!c.open) return;
    c.open = false;
    if (status === null) {
      checks.closed_before_end++;
      if (!c.dead) { c.dead = true; deadCount++; }
      if (phase === 'connect' || phase === 'join') finish('closed-during-join', `${c.userId} closed with ${code}`);
      else if (!c.doneSending) markDone(c);
      if (deadCount === N) finish('all-closed', 'every socket was closed by the server');
    }
  });
}

function updateOthers(c) {
  c.others = [];
  for (const m of c.members) {
    if (m === c.userId) continue;
    const peer = byId.get(m);
    if (CROSS && peer && peer.urlIndex === c.urlIndex) continue;
    c.others.push(m);
  }
}

function isSorted(a) {
  for (let i = 1; i < a.length; i++) if (!(a[i - 1] < a[i])) return false;
  return true;
}

function onJoined(c, msg) {
  if (msg.roomId !== c.roomId) wrongRoom++;
  if (msg.userId === c.userId) {
    if (c.sawSelf) checks.duplicate_self_join++;
    c.sawSelf = true;
    const ex = Array.isArray(msg.existingParticipants) ? msg.existingParticipants : [];
    if (typeof msg.resumeToken !== 'string') checks.join_missing_resume_token++;
    if (!isSorted(ex)) checks.join_existing_unsorted++;
    if (ex.includes(c.userId)) checks.join_existing_includes_self++;
    for (const u of ex) c.members.add(u);
    c.members.add(c.userId);
  } else {
    if (!c.sawSelf) checks.peer_join_before_own++;
    c.members.add(msg.userId);
    if (phase === 'send' || phase === 'drain') checks.membership_changes_during_send++;
  }
  if (c.members.size > K) checks.membership_over_k++;
  updateOthers(c);
  if (!c.complete && c.sawSelf && c.members.size === K) {
    c.complete = true;
    completeCount++;
    if (completeCount === N && (phase === 'connect' || phase === 'join')) startSend();
  }
}

function onLeft(c, msg) {
  if (msg.roomId !== c.roomId) wrongRoom++;
  c.members.delete(msg.userId);
  updateOthers(c);
  if (phase === 'send' || phase === 'drain') checks.membership_changes_during_send++;
}

// ---------------------------------------------------------------- messages
function onMessage(c, data, isBinary) {
  if (isBinary) { checks.binary_from_server++; return; }
  let msg;
  try { msg = JSON.parse(data.toString()); } catch { checks.non_json_from_server++; return; }
  if (msg === null || typeof msg !== 'object') { checks.non_json_from_server++; return; }
  switch (msg.type) {
    case 'webrtc-ice': onIce(c, msg); break;
    case 'user-joined-room': onJoined(c, msg); break;
    case 'user-left-room': onLeft(c, msg); break;
    case 'error': {
      const code = typeof msg.code === 'string' ? msg.code : '(none)';
      errors[code] = (errors[code] || 0) + 1;
      // Before the send phase a client has sent nothing but join-room: fail fast.
      if (phase === 'connect' || phase === 'join') { finish('join-rejected', `${c.userId}: ${code} ${msg.message ?? ''}`.trim()); break; }
      // An error during the send phase answers one of this client's frames:
      // that frame will never be delivered, so release its window slot.
      if ((phase === 'send' || phase === 'drain') && c.inflight > 0) {
        rejected++;
        c.inflight--;
        if (RATE === 0) schedulePump(c);
        maybeDrained();
      }
      break;
    }
    default: checks.other_frames++;
  }
}

function onIce(c, msg) {
  const now = performance.now();
  const cand = msg.candidate && msg.candidate.candidate;
  if (typeof cand !== 'string') { malformed++; return; }
  // candidate:<sender>:<seq>:<send_time_ns>; sender ids may not contain ':' here,
  // but parse from the right to be safe.
  const p2 = cand.lastIndexOf(':');
  const p1 = cand.lastIndexOf(':', p2 - 1);
  if (!cand.startsWith('candidate:') || p1 < 10 || p2 < 0) { malformed++; return; }
  const sender = cand.slice(10, p1);
  const seq = Number(cand.slice(p1 + 1, p2));
  const sentNs = Number(cand.slice(p2 + 1));
  delivered++;
  tLastDelivery = now;
  if (msg.fromUserId !== sender) wrongSender++;
  if (msg.roomId !== c.roomId) wrongRoom++;
  if (msg.toUserId !== c.userId) misrouted++;
  const last = c.lastSeq.get(sender);
  if (last !== undefined && seq <= last) {
    if (seq === last) duplicates++; else reordered++;
  } else {
    c.lastSeq.set(sender, seq);
  }
  if (latN < lat.length) lat[latN++] = now - sentNs / 1e6;
  const s = byId.get(sender);
  if (!s) { unknownSender++; return; }
  if (s.urlIndex !== c.urlIndex) crossDelivered++;
  s.delivered++;
  if (s.inflight > 0) s.inflight--;
  if (RATE === 0) schedulePump(s);
  maybeDrained();
}

// ---------------------------------------------------------------- send phase
function sendOne(c) {
  const others = c.others;
  const to = others[(Math.random() * others.length) | 0];
  const seq = c.sent;
  const t = performance.now();
  let spoof = '';
  if (args.spoof) {
    const fake = others[(seq + 1) % others.length];
    spoof = `,"fromUserId":"${fake === to && others.length > 1 ? others[(seq + 2) % others.length] : fake}"`;
  }
  c.ws.send(`{"channel":"webrtc-signaling","type":"webrtc-ice","toUserId":"${to}",` +
    `"candidate":{"candidate":"candidate:${c.userId}:${seq}:${Math.round(t * 1e6)}","sdpMid":"0","sdpMLineIndex":0}${padField}${spoof}}`);
  c.sent++;
  c.inflight++;
  framesSent++;
  tLastSend = t;
  if (c.sent >= M) markDone(c);
}

function markDone(c) {
  if (c.doneSending) return;
  c.doneSending = true;
  sentDoneCount++;
  if (sentDoneCount === N) {
    tAllSent = performance.now();
    phase = 'drain';
    log(`all frames sent (${framesSent}); draining`);
    maybeDrained();
  }
}

function canSend(c) {
  if (c.doneSending) return false;
  if (!c.open) { markDone(c); return false; }
  if (c.others.length === 0) { checks.clients_without_peers++; markDone(c); return false; }
  return true;
}

function pump(c) {
  if (phase !== 'send') return;
  while (c.inflight < WINDOW && canSend(c)) sendOne(c);
}

// Window refills are deferred to after the current I/O phase and written corked,
// so a client whose window freed several slots sends them in one writev (one
// syscall per socket per loop turn instead of one per frame: keeps the load
// generator cheap enough to saturate a server on a small machine).
const pendingPump = new Set();
let flushScheduled = false;
function schedulePump(c) {
  pendingPump.add(c);
  if (!flushScheduled) { flushScheduled = true; setImmediate(flushPumps); }
}
function flushPumps() {
  flushScheduled = false;
  for (const c of pendingPump) corked(c, pump);
  pendingPump.clear();
}
function corked(c, fn) {
  const sock = c.ws && c.ws._socket; // ws 8 internal; falls back to uncorked sends
  if (sock) sock.cork();
  try { fn(c); } finally { if (sock) sock.uncork(); }
}

let ticker = null;
function tick() {
  if (phase !== 'send') return;
  const el = performance.now() - tSendStart;
  for (const c of clients) {
    if (c.doneSending) continue;
    const due = Math.min(M, Math.floor(((el - c.offsetMs) / 1000) * RATE) + 1);
    if (c.sent >= due) continue;
    corked(c, (cl) => { while (cl.sent < due && cl.inflight < WINDOW && canSend(cl)) sendOne(cl); });
  }
}

function startSend() {
  tAllJoined = performance.now();
  phase = 'send';
  log(`all ${N} clients joined; rooms complete; sending ${M} frames/client ` +
      (RATE > 0 ? `at ${RATE}/s` : `as fast as possible (window ${WINDOW})`));
  tSendStart = performance.now();
  cpuAtSendStart = process.cpuUsage();
  armStallWatch();
  if (M === 0 || K < 2) {
    for (const c of clients) { if (K < 2 && M > 0) checks.clients_without_peers++; markDoneQuiet(c); }
    finish('ok');
    return;
  }
  if (RATE === 0) {
    // round-robin so every client gets its window filled fairly
    for (const c of clients) corked(c, pump);
  } else {
    const periodMs = 1000 / RATE;
    for (const c of clients) c.offsetMs = Math.random() * periodMs;
    ticker = setInterval(tick, Math.max(1, Math.min(5, periodMs / 4)));
    tick();
  }
}
function markDoneQuiet(c) { if (!c.doneSending) { c.doneSending = true; sentDoneCount++; } }

let cpuAtSendStart = null;
// Stall watchdog for the send and drain phases: no frame sent, delivered or
// rejected for --stall-timeout seconds ends the run with partial results (e.g. a
// relay that drops frames fills every in-flight window, then nothing moves).
let stallTimer = null, lastProgress = -1;
function armStallWatch() {
  lastProgress = framesSent + delivered + rejected;
  stallTimer = setInterval(() => {
    const p = framesSent + delivered + rejected;
    if (p === lastProgress) finish('stalled', `no progress for ${STALL_S}s in phase ${phase}`);
    lastProgress = p;
  }, STALL_S * 1000);
}

function maybeDrained() {
  if (phase === 'drain' && delivered + rejected >= framesSent) finish('ok');
}

// ---------------------------------------------------------------- report
function pct(sorted, q) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return round(sorted[i], 3);
}
function round(x, d = 3) { return x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d; }
const sec = (a, b) => (a === null || b === null ? null : round((b - a) / 1000, 3));

function report(reason, detail) {
  const now = performance.now();
  const l = lat.subarray(0, latN).slice().sort();
  let sum = 0;
  for (let i = 0; i < l.length; i++) sum += l[i];
  const sendEnd = tLastDelivery ?? now;
  const sendSpan = tSendStart !== null ? (sendEnd - tSendStart) / 1000 : null;
  const cpu = process.cpuUsage();
  const cpuS = (cpu.user + cpu.system) / 1e6;
  const epoch = (t) => (t === null ? null : Math.round(performance.timeOrigin + t));
  let sendCpuPct = null;
  if (cpuAtSendStart && now > tSendStart) {
    const d = process.cpuUsage(cpuAtSendStart);
    sendCpuPct = round((100 * (d.user + d.system) / 1e6) / ((now - tSendStart) / 1000), 1);
  }
  const wall = (now - T0) / 1000;
  const up = process.uptime(); // CPU% over the whole process lifetime (includes startup)
  return {
    tool: 'loadgen_multi.mjs',
    status: reason,
    detail: detail ?? null,
    phase_reached: phase,
    config: {
      url: URL_, urls: URLS, cross: CROSS, rooms: R, per_room: K, frames: M, rate: RATE,
      window: Number.isFinite(WINDOW) ? WINDOW : null,
      timeout_s: TIMEOUT_S, stall_timeout_s: STALL_S, pad: PAD, spoof: args.spoof,
      deflate: args.deflate, prefix: PREFIX,
    },
    connections: openCount,
    connections_target: N,
    connections_open_at_end: clients.filter((c) => c.open).length,
    connect_time_s: sec(T0, tAllOpen),
    join_time_s: sec(T0, tAllJoined),
    frames_target: FRAMES_TARGET,
    frames_sent: framesSent,
    frames_delivered: delivered,
    cross_delivered: crossDelivered,
    clients_per_url: URLS.map((_, i) => clients.filter((c) => c.urlIndex === i).length),
    lost: framesSent - delivered,
    rejected,
    reordered,
    duplicates,
    wrong_sender: wrongSender,
    wrong_room: wrongRoom,
    misrouted,
    malformed,
    unknown_sender: unknownSender,
    errors: { ...errors },
    closes: { ...closes },
    send_phase_s: sendSpan === null ? null : round(sendSpan, 3),
    send_duration_s: sec(tSendStart, tAllSent ?? tLastSend),
    send_start_epoch_ms: epoch(tSendStart),
    send_end_epoch_ms: tSendStart === null ? null : epoch(sendEnd),
    throughput_fps: sendSpan && sendSpan > 0 ? round(delivered / sendSpan, 1) : null,
    offered_fps: tSendStart !== null && tLastSend !== null && tLastSend > tSendStart
      ? round(framesSent / ((tLastSend - tSendStart) / 1000), 1) : null,
    latency_ms: {
      count: l.length,
      p50: pct(l, 0.5), p90: pct(l, 0.9), p99: pct(l, 0.99),
      max: l.length ? round(l[l.length - 1], 3) : null,
      mean: l.length ? round(sum / l.length, 3) : null,
    },
    checks: { ...checks },
    loadgen: {
      cpu_s: round(cpuS, 3),
      cpu_pct: round((100 * cpuS) / up, 1),
      send_phase_cpu_pct: sendCpuPct,
      max_rss_mb: round(process.resourceUsage().maxRSS / 1024, 1),
      event_loop_delay_p99_ms: round(loopDelay.percentile(99) / 1e6, 2),
      event_loop_delay_max_ms: round(loopDelay.max / 1e6, 2),
    },
    elapsed_s: round(wall, 3),
  };
}

function printHuman(r) {
  const L = r.latency_ms;
  const s = (x) => (x === null ? '-' : `${x}s`);
  const lines = [
    `status            ${r.status}${r.detail ? ` (${r.detail})` : ''}  [phase ${r.phase_reached}]`,
    `url               ${r.config.url}  rooms=${r.config.rooms} per_room=${r.config.per_room} frames=${r.config.frames} rate=${r.config.rate || 'max'} window=${r.config.window ?? '-'}`,
    `connections       ${r.connections}/${r.connections_target}  connect ${s(r.connect_time_s)}  joined ${s(r.join_time_s)}`,
    `frames            sent ${r.frames_sent}  delivered ${r.frames_delivered}  lost ${r.lost}  rejected ${r.rejected}`,
    `integrity         reordered ${r.reordered}  duplicates ${r.duplicates}  wrong_sender ${r.wrong_sender}  wrong_room ${r.wrong_room}  misrouted ${r.misrouted}`,
    `errors            ${JSON.stringify(r.errors)}  closes ${JSON.stringify(r.closes)}`,
    `throughput        ${r.throughput_fps} frames/s delivered over ${s(r.send_phase_s)} (offered ${r.offered_fps}/s)`,
    `latency ms        p50 ${L.p50}  p90 ${L.p90}  p99 ${L.p99}  max ${L.max}  (n=${L.count})`,
    `loadgen           cpu ${r.loadgen.cpu_s}s (${r.loadgen.cpu_pct}% overall, ${r.loadgen.send_phase_cpu_pct ?? '-'}% in send phase)  rss ${r.loadgen.max_rss_mb}MB  loop-delay p99 ${r.loadgen.event_loop_delay_p99_ms}ms`,
  ];
  const anomalies = Object.entries(r.checks).filter(([, v]) => v);
  if (anomalies.length) lines.push(`checks            ${anomalies.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  console.log(lines.join('\n'));
}

function finish(reason, detail) {
  if (status !== null) return;
  status = reason;
  const r = report(reason, detail);
  phase = 'done';
  if (ticker) clearInterval(ticker);
  if (stallTimer) clearInterval(stallTimer);
  clearTimeout(globalTimer);
  if (reason !== 'ok') log(`ending early: ${reason}${detail ? ` — ${detail}` : ''}`);
  if (args.json) process.stdout.write(JSON.stringify(r) + '\n');
  else printHuman(r);
  // Teardown: close politely, then force. Never hang here.
  for (const c of clients) {
    try {
      if (c.ws && c.ws.readyState === WebSocket.OPEN) c.ws.close(1000);
      else if (c.ws && c.ws.readyState === WebSocket.CONNECTING) c.ws.terminate();
    } catch { /* ignore */ }
  }
  const code = reason === 'ok' ? 0 : 2;
  const force = setTimeout(() => {
    for (const c of clients) { try { c.ws && c.ws.terminate(); } catch { /* ignore */ } }
    process.exit(code);
  }, 1500);
  force.unref();
  const poll = setInterval(() => {
    if (clients.every((c) => !c.ws || c.ws.readyState === WebSocket.CLOSED)) { clearInterval(poll); process.exit(code); }
  }, 50);
}

if (JOIN_TIMEOUT_S !== null) {
  setTimeout(() => {
    if (phase !== 'connect' && phase !== 'join') return;
    const stuck = clients.filter((c) => !c.complete);
    const some = stuck.slice(0, 5).map((c) => `${c.userId}@${c.urlIndex} sees ${c.members.size}/${K}${c.sawSelf ? '' : ' (no own join)'}`);
    finish('join-timeout', `${stuck.length} clients with incomplete membership after ${JOIN_TIMEOUT_S}s: ${some.join(', ')}`);
  }, JOIN_TIMEOUT_S * 1000).unref();
}
const globalTimer = setTimeout(() => finish('timeout', `--timeout ${TIMEOUT_S}s reached in phase ${phase}`), TIMEOUT_S * 1000);
process.on('SIGINT', () => finish('aborted', 'SIGINT'));
process.on('SIGTERM', () => finish('aborted', 'SIGTERM'));

log(`connecting ${N} clients (${R} rooms x ${K}) to ${URL_}, prefix ${PREFIX}`);
connectMore();
