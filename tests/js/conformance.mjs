// Replays Python-recorded steps on the JS client machine (adapters/static/machine.js),
// shared by the vector tests (vectors.test.mjs) and the differential runner
// (machine_runner.mjs). The normal form of actions and snapshots is the one
// tests/conformance.py gives the Python machine: what one side says the other must say.
import {
  ClientMachine,
  LocalProtocolError,
  PeerNegotiation,
  RemoteProtocolError,
  parseServerFrame,
} from "../../adapters/static/machine.js";

/** A jitter source that hands out `values` in order, and fails when they run out (the
 * Python machine consumed exactly these). */
function replayJitter(values, what = "jitter") {
  let i = 0;
  const jitter = () => {
    if (i >= values.length) throw new Error(`${what} asked ${i + 1} times; Python asked ${values.length}`);
    return values[i++];
  };
  jitter.used = () => i;
  return jitter;
}

/** A client machine as `init` describes it (see tests/conformance.py `client_init`). */
export function newClient(init) {
  const jitter = replayJitter(init.jitter);
  const machine = new ClientMachine(init.userId, {
    capabilities: init.capabilities,
    config: init.config,
    resumeWindow: init.resumeWindow,
    reconnect: init.reconnect,
    maxPeers: init.maxPeers,
    jitter,
    trace: init.trace ? (record) => machine.traced.push(traceWho(record)) : null,
  });
  machine.traced = init.trace ? [] : null; // who each trace record is about, when traced
  machine.jitterUsed = jitter.used;
  return machine;
}

/** What a trace record says about who and where (see tests/conformance.py `trace_who`). */
export function traceWho(record) {
  return [record.dir, record.kind, record.peer ?? null, record.epoch ?? null, record.before ?? null, record.after ?? null];
}

/** Actions in the normal form: logs left out (wording is free), violations by peer only. */
export function normalise(actions) {
  const out = [];
  for (const action of actions) {
    if (action.kind === "Log") continue;
    if (action.kind === "ProtocolViolation") out.push({ kind: action.kind, peerId: action.peerId });
    else out.push(JSON.parse(JSON.stringify(action)));
  }
  return out;
}

/** What the machine holds after a step, in the normal form. */
export function snapshot(machine) {
  const peers = {};
  for (const [peerId, peer] of [...machine.peers].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    peers[peerId] = { state: peer.state, epoch: peer.epoch, pc: peer.pc, deadline: peer.deadline };
  }
  return {
    state: machine.state,
    roomId: machine.roomId,
    resuming: machine.resuming,
    absent: [...machine.absent].sort(),
    nextDeadline: machine.nextDeadline(),
    peers,
  };
}

/** Run `call`, catching the errors the normal form names. */
function outcome(call) {
  let actions = [];
  let raised = null;
  try {
    actions = call();
  } catch (error) {
    if (error instanceof LocalProtocolError) raised = "LocalProtocolError";
    else if (error instanceof RemoteProtocolError) raised = "RemoteProtocolError";
    else raised = `${error.name}: ${error.message}`;
  }
  return { actions: normalise(actions), raised };
}

/** Run one recorded input: `{event, now}` or `{timer: now}`. */
export function runStep(machine, input) {
  const result = outcome(() => ("timer" in input ? machine.handleTimer(input.timer) : machine.handle(input.event, input.now)));
  const trace = machine.traced === null ? {} : { trace: machine.traced.splice(0) };
  return { ...result, snapshot: snapshot(machine), ...trace };
}

/** A negotiation as `init` describes it (see tests/conformance.py `negotiation_init`). */
export function newNegotiation(init) {
  const jitter = replayJitter(init.jitter);
  const newPc = replayJitter(init.newPc, "newPc");
  const peer = new PeerNegotiation({
    ourId: init.ourId,
    peerId: init.peerId,
    capabilities: init.capabilities,
    config: init.config,
    session: init.session,
    newPc,
    jitter,
  });
  peer.drawn = () => [jitter.used(), newPc.used()];
  return peer;
}

export function negotiationSnapshot(peer) {
  return { state: peer.state, epoch: peer.epoch, pc: peer.pc, deadline: peer.deadline, link: peer.link, attempts: peer.attempts };
}

/** The JS name of each Python input method. */
const METHODS = {
  start: "start",
  close: "close",
  request_renegotiation: "requestRenegotiation",
  on_timer: "onTimer",
  on_local_description: "onLocalDescription",
  on_remote_applied: "onRemoteApplied",
  on_candidate_gathered: "onCandidateGathered",
  on_connection_state: "onConnectionState",
  on_operation_failed: "onOperationFailed",
  on_signal: "onSignal",
};

/** Run one recorded call: `{call, args, now}`; a frame argument (`{frame}`) is read by
 * the codec first, as the client machine would (the recorded frames may lack the
 * fields the server stamps). */
export function runNegotiationStep(peer, input) {
  const result = outcome(() => {
    const args = input.args.map((arg) => {
      if (arg === null || typeof arg !== "object" || !("frame" in arg)) return arg;
      const frame = { fromUserId: peer.peerId, roomId: "room", ...arg.frame };
      return parseServerFrame(JSON.stringify(frame));
    });
    return peer[METHODS[input.call]](...args, input.now);
  });
  return { ...result, snapshot: negotiationSnapshot(peer) };
}
