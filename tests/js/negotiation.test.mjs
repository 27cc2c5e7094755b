// Unit tests of the pure half of sansio-signal.js (node's built-in runner, no npm).
// Run: node --test tests/js/   (tests/test_browser_js.py runs it under pytest)
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BROWSER,
  DEFAULT_CONFIG,
  NegState,
  PeerNegotiation,
  RemoteProtocolError,
  backoff,
  capsFromWire,
  capsToWire,
  epochOf,
  initiatorOf,
} from "../../adapters/static/sansio-signal.js";

const AIORTC = { rollback: false, iceRestart: false, trickle: false };

function machine(ourId, peerId, capabilities = BROWSER) {
  let next = 1;
  return new PeerNegotiation({
    ourId, peerId, capabilities, config: DEFAULT_CONFIG,
    newPc: () => next++, jitter: () => 0.5, session: `${ourId}.${peerId}.1`,
  });
}

/** Two machines and a model of their connections: operations succeed at once, frames
 * are delivered in order when `pump` runs. Records every action by kind. */
function pair(a, b) {
  const queues = new Map([[a, []], [b, []]]);
  const other = (m) => (m === a ? b : a);
  const seen = { [a.ourId]: [], [b.ourId]: [] };
  const sdpSeq = { n: 0 };
  const run = (m, actions, t) => {
    for (const action of actions) {
      seen[m.ourId].push(action.kind);
      if (action.kind === "send") queues.get(other(m)).push({ ...action.frame, fromUserId: m.ourId });
      else if (action.kind === "create-offer") run(m, m.onLocalDescription({ type: "offer", sdp: `offer ${++sdpSeq.n}` }, t), t);
      else if (action.kind === "create-answer") run(m, m.onLocalDescription({ type: "answer", sdp: `answer ${++sdpSeq.n}` }, t), t);
      else if (action.kind === "set-remote") run(m, m.onRemoteApplied(t), t);
    }
  };
  const pump = (t = 0) => {
    let moved = true;
    while (moved) {
      moved = false;
      for (const m of [a, b]) {
        const q = queues.get(m);
        if (q.length) {
          moved = true;
          run(m, m.onSignal(q.shift(), t), t);
        }
      }
    }
  };
  return { run, pump, seen, queues };
}

test("the lower id offers", () => {
  assert.equal(initiatorOf("alice", "bob"), "alice");
  assert.equal(initiatorOf("bob", "alice"), "alice");
  assert.equal(initiatorOf("B", "a"), "B"); // code-unit order, as in Python
  assert.equal(machine("a", "b").isInitiator, true);
  assert.equal(machine("b", "a").isInitiator, false);
});

test("caps and epochs read like the Python wire module", () => {
  assert.deepEqual(capsToWire(BROWSER), ["rollback", "ice-restart", "trickle"]);
  assert.deepEqual(capsFromWire(["trickle", 7]), { rollback: false, iceRestart: false, trickle: true });
  assert.deepEqual(capsFromWire("rollback"), { rollback: false, iceRestart: false, trickle: false });
  assert.equal(epochOf({ epoch: 3 }), 3);
  assert.equal(epochOf({ epoch: "3" }), 0);
  assert.equal(epochOf({ epoch: 1.5 }), 0);
  assert.equal(epochOf({}), 0);
});

test("back-off doubles up to the cap, jittered into [0.5, 1.0] of it", () => {
  assert.equal(backoff(DEFAULT_CONFIG, 1, 0), 0.125);
  assert.equal(backoff(DEFAULT_CONFIG, 3, 1), 1.0);
  assert.equal(backoff(DEFAULT_CONFIG, 20, 1), DEFAULT_CONFIG.backoffMax);
});

test("a pair negotiates to stable and reports connected", () => {
  const a = machine("a", "b");
  const b = machine("b", "a");
  const { run, pump, seen } = pair(a, b);
  run(a, a.start(0), 0);
  run(b, b.start(0), 0);
  pump();
  assert.equal(a.state, NegState.STABLE);
  assert.equal(b.state, NegState.STABLE);
  assert.equal(a.remoteSession, b.session);
  assert.equal(b.remoteSession, a.session);
  const connected = a.onConnectionState("connected", 1);
  assert.deepEqual(connected.map((x) => x.kind), ["peer-connected", "log"]);
  assert.match(connected[1].text, /Connection established with: b/);
  assert.equal(seen.b.filter((k) => k === "create-offer").length, 0, "the polite side never offered");
});

test("early remote candidates are buffered until the offer is applied", () => {
  const b = machine("b", "a");
  b.start(0);
  const c = { candidate: "candidate:1 1 UDP 1 127.0.0.1 5000 typ host", sdpMid: "0", sdpMLineIndex: 0 };
  assert.deepEqual(b.onSignal({ type: "webrtc-ice", candidate: c, epoch: 0, sid: "x" }, 0), []);
  const applying = b.onSignal({ type: "webrtc-offer", offer: { type: "offer", sdp: "o" }, epoch: 0, sid: "x" }, 0);
  assert.ok(applying.some((x) => x.kind === "set-remote"));
  assert.ok(!applying.some((x) => x.kind === "add-candidate"));
  const applied = b.onRemoteApplied(0);
  assert.deepEqual(applied.map((x) => x.kind), ["add-candidate", "create-answer"]);
  assert.equal(applied[0].candidate, c);
});

test("glare between two browsers: the polite side rolls back, answers, then offers", () => {
  const a = machine("a", "b");
  const b = machine("b", "a");
  const { run, pump, seen } = pair(a, b);
  run(a, a.start(0), 0);
  run(b, b.start(0), 0);
  pump();
  // Both ask for a new exchange before either offer arrives.
  run(a, a.requestRenegotiation(1), 1);
  run(b, b.requestRenegotiation(1), 1);
  assert.equal(a.state, NegState.HAVE_LOCAL_OFFER);
  assert.equal(b.state, NegState.HAVE_LOCAL_OFFER);
  pump(1);
  assert.equal(seen.b.filter((k) => k === "rollback").length, 1);
  assert.equal(seen.a.filter((k) => k === "rollback").length, 0);
  assert.equal(a.state, NegState.STABLE);
  assert.equal(b.state, NegState.STABLE);
  assert.equal(b.pendingRenegotiation, false, "the polite side's own change was offered after");
});

test("a polite peer that cannot roll back asks instead of offering", () => {
  const b = machine("b", "a", AIORTC);
  b.start(0);
  b.onSignal({ type: "webrtc-offer", offer: { type: "offer", sdp: "o" }, epoch: 0, sid: "x" }, 0);
  b.onRemoteApplied(0);
  b.onLocalDescription({ type: "answer", sdp: "ans" }, 0);
  const out = b.requestRenegotiation(1);
  assert.deepEqual(out.map((x) => x.kind), ["send"]);
  assert.equal(out[0].frame.type, "webrtc-renegotiate");
  assert.equal(out[0].frame.reason, "renegotiate");
});

test("frames of an older epoch or another session are dropped", () => {
  const b = machine("b", "a");
  b.start(0);
  b.onSignal({ type: "webrtc-offer", offer: { type: "offer", sdp: "o1" }, epoch: 2, sid: "x" }, 0);
  assert.equal(b.epoch, 2);
  const stale = b.onSignal({ type: "webrtc-ice", candidate: null, epoch: 1, sid: "x" }, 0);
  assert.match(stale[0].text, /stale epoch 1/);
  const wrong = b.onSignal({ type: "webrtc-ice", candidate: null, epoch: 2, sid: "x", rsid: "someone else" }, 0);
  assert.match(wrong[0].text, /addressed to our earlier session/);
});

test("numbered offers are new even when the SDP is the same (aiortc renegotiating)", () => {
  const b = machine("b", "a");
  b.start(0);
  const offer = (seq) => ({ type: "webrtc-offer", offer: { type: "offer", sdp: "same" }, epoch: 0, sid: "x", seq });
  b.onSignal(offer(1), 0);
  b.onRemoteApplied(0);
  b.onLocalDescription({ type: "answer", sdp: "ans" }, 0);
  assert.match(b.onSignal(offer(1), 1)[0].text, /duplicate/);
  assert.ok(b.onSignal(offer(2), 2).some((x) => x.kind === "set-remote"));
});

test("our offers are numbered", () => {
  const a = machine("a", "b");
  a.start(0);
  const out = a.onLocalDescription({ type: "offer", sdp: "o" }, 0);
  assert.equal(out[0].frame.seq, 1);
});

test("a peer that starts the pair over (a new session naming none of ours) is followed", () => {
  const a = machine("a", "b");
  const b = machine("b", "a");
  const { run, pump } = pair(a, b);
  run(a, a.start(0), 0);
  run(b, b.start(0), 0);
  pump();
  const fresh = { type: "webrtc-renegotiate", reason: "no-offer", epoch: 0, sid: "b.2" };
  const out = a.onSignal(fresh, 1);
  assert.deepEqual(out.filter((x) => x.kind !== "log").map((x) => x.kind), ["close-peer", "create-peer", "peer-connecting", "create-offer"]);
  assert.equal(a.remoteSession, "b.2");
  const stale = { type: "webrtc-ice", candidate: null, epoch: 0, sid: "b.1", rsid: a.session };
  assert.match(a.onSignal(stale, 2)[0].text, /earlier session/);
});

test("webrtc-renegotiate sent to the polite side is a protocol error", () => {
  const b = machine("b", "a");
  b.start(0);
  assert.throws(
    () => b.onSignal({ type: "webrtc-renegotiate", epoch: 0, sid: "x" }, 0),
    RemoteProtocolError,
  );
});

test("the initiator recreates on failure when ICE restart is not shared", () => {
  const a = machine("a", "b");
  const b = machine("b", "a", AIORTC);
  const { run, pump } = pair(a, b);
  run(a, a.start(0), 0);
  run(b, b.start(0), 0);
  pump();
  const failed = a.onConnectionState("failed", 2);
  assert.ok(failed.some((x) => x.kind === "close-peer"));
  assert.equal(a.state, NegState.WAITING);
  const retry = a.onTimer(a.deadline);
  assert.equal(a.epoch, 1);
  assert.ok(retry.some((x) => x.kind === "create-peer"));
});

test("ICE restart on the same connection when both sides can", () => {
  const a = machine("a", "b");
  const b = machine("b", "a");
  const { run, pump } = pair(a, b);
  run(a, a.start(0), 0);
  run(b, b.start(0), 0);
  pump();
  const out = a.onConnectionState("failed", 2);
  const offer = out.find((x) => x.kind === "create-offer");
  assert.equal(offer.iceRestart, true);
  assert.ok(!out.some((x) => x.kind === "close-peer"));
});
