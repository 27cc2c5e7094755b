// Unit tests of machine.js that need no recorded Python behaviour (node's built-in
// runner, no npm). Everything the Python machines do is checked by vectors.test.mjs.
// Run: node --test tests/js/   (tests/test_browser_js.py runs it under pytest)
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ClientMachine,
  Deadline,
  Input,
  LocalProtocolError,
  PeerNegotiation,
  RemoteProtocolError,
  Timers,
  WireError,
  initiatorOf,
  negotiationTransitions,
  parseServerFrame,
  readPairFields,
  wireInt,
} from "../../adapters/static/machine.js";
import { SignalingClient } from "../../adapters/static/sansio-signal.js";

test("the lower id offers, in code-unit order as in Python", () => {
  assert.equal(initiatorOf("alice", "bob"), "alice");
  assert.equal(initiatorOf("B", "a"), "B");
});

test("integers: integral numbers whatever their spelling, within the safe range", () => {
  assert.equal(wireInt(JSON.parse("1.0")), 1);
  for (const bad of [true, -1, 0.5, "1", null, 2 ** 53]) assert.equal(wireInt(bad), null, String(bad));
  assert.deepEqual(readPairFields({ epoch: 2.0, rsid: null }), {
    epoch: 2, epochGiven: true, sid: null, rsid: null, seq: null, caps: null, reason: "",
  });
  assert.throws(() => readPairFields({ caps: [{}] }), WireError);
});

test("server frames the codec refuses", () => {
  const signal = (extra) => JSON.stringify({
    channel: "webrtc-signaling", type: "webrtc-renegotiate", toUserId: "a", fromUserId: "b", roomId: "r", ...extra,
  });
  assert.equal(parseServerFrame(signal({ epoch: 1.0 })).pair.epoch, 1);
  for (const extra of [{ epoch: "1" }, { caps: [[]] }, { seq: -1 }, { sid: 3 }, { fromUserId: "b c" }]) {
    assert.throws(() => parseServerFrame(signal(extra)), WireError, JSON.stringify(extra));
  }
  const deep = `{"channel":"webrtc-signaling","x":${"[".repeat(40)}${"]".repeat(40)}}`;
  assert.throws(() => parseServerFrame(deep), (e) => e instanceof WireError && e.code === "bad-json");
  assert.throws(() => parseServerFrame('{"channel":"webrtc-dashboard-chat","ts":1e400}'), (e) => e.code === "bad-json");
});

test("timers: earliest first, ties in the order scheduled, one live deadline per key", () => {
  const timers = new Timers();
  timers.schedule("b", 2);
  timers.schedule("a", 1);
  timers.schedule("c", 2);
  timers.schedule("a", 3);
  assert.equal(timers.nextDeadline(), 2);
  assert.deepEqual(timers.popDue(2.5), ["b", "c"]);
  assert.deepEqual(timers.popDue(10), ["a"]);
  assert.equal(timers.nextDeadline(), null);
});

test("misuse is the caller's error", () => {
  const machine = new ClientMachine("alice", { jitter: () => 0.5 });
  assert.throws(() => machine.handle({ type: "ChatRequested", text: "x" }, 0), LocalProtocolError);
  assert.throws(() => new ClientMachine("not an id", { jitter: () => 0 }), LocalProtocolError);
});

test("the driver holds no state of its own: its views are the machine's", () => {
  const client = new SignalingClient({ url: "ws://127.0.0.1:9/", userId: "alice", jitter: () => 0.5 });
  assert.equal(client.state, "offline");
  assert.equal(client.peers, client.machine.peers);
  assert.equal(client.room, null);
});

// ------------------------------------------------------------------ the negotiation's table

function negotiation(ourId, peerId) {
  let pcs = 0;
  return new PeerNegotiation({ ourId, peerId, newPc: () => pcs++, jitter: () => 0.5, session: `${ourId}.1` });
}

function signal(type, extra) {
  return parseServerFrame(JSON.stringify({
    channel: "webrtc-signaling", type, toUserId: "alice", fromUserId: "bob", roomId: "r", ...extra,
  }));
}

test("the negotiation's table: sorted (role, state, input) rows, every input and deadline in it", () => {
  const rows = negotiationTransitions();
  const keys = rows.map(([role, state, input]) => `${role}|${state}|${input}`);
  assert.equal(new Set(keys).size, keys.length);
  const byKey = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  assert.deepEqual(rows.map(([r, s, i]) => [r, s, i]), rows.map(([r, s, i]) => [r, s, i]).sort(
    (a, b) => byKey(a[0], b[0]) || byKey(a[1], b[1]) || byKey(a[2], b[2]),
  ));
  const inputs = new Set(rows.map((row) => row[2]));
  for (const input of Object.values(Input)) assert.ok(inputs.has(input), input);
  for (const deadline of Object.values(Deadline)) assert.ok(inputs.has(`${deadline}-timeout`), deadline);
  for (const [, , , next] of rows) assert.deepEqual(next, [...next].sort());
});

test("a key missing from the table: the peer's error for a frame, ours for our own input", () => {
  const alice = negotiation("alice", "bob"); // the initiator
  alice.start(0);
  assert.throws(
    () => alice.onSignal(signal("webrtc-offer", { offer: { type: "offer", sdp: "v=0" }, epoch: 3, sid: "b" }), 1),
    (e) => e instanceof RemoteProtocolError && /newer-epoch/.test(e.message) && /initiator/.test(e.message),
  );
  assert.throws(
    () => alice.onRemoteApplied(1),
    (e) => e instanceof LocalProtocolError && /remote-applied/.test(e.message) && /making-offer/.test(e.message),
  );
});

test("a deadline expires as its own input; before it, the clock is the input timer", () => {
  const bob = negotiation("bob", "alice"); // the polite side
  bob.start(0);
  assert.equal(bob.deadlineKind, "offer-wait");
  assert.deepEqual(bob.onTimer(1), []);
  const [ask] = bob.onTimer(bob.deadline);
  assert.equal(ask.kind, "SendToServer");
  assert.equal(ask.frame.type, "webrtc-renegotiate");
  assert.equal(ask.frame.reason, "no-offer");
  assert.equal(bob.attempts, 1);
});

test("every step is checked against the next states of its entry", () => {
  const alice = negotiation("alice", "bob");
  // A state that moves behind the handler's back: the entry (timer in idle) allows only
  // idle, so reaching anything else is the table's error, named in full.
  let reads = 0;
  Object.defineProperty(alice, "state", { get: () => (reads++ === 0 ? "idle" : "stable"), set() {} });
  assert.throws(
    () => alice.onTimer(0),
    (e) => e instanceof LocalProtocolError
      && e.message.includes("timer in idle on the initiator side led to stable"),
  );
});
