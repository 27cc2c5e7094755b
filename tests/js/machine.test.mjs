// Unit tests of machine.js that need no recorded Python behaviour (node's built-in
// runner, no npm). Everything the Python machines do is checked by vectors.test.mjs.
// Run: node --test tests/js/   (tests/test_browser_js.py runs it under pytest)
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ClientMachine,
  LocalProtocolError,
  Timers,
  WireError,
  initiatorOf,
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
    epoch: 2, sid: null, rsid: null, seq: null, caps: null, reason: "",
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
