// machine.js — the pure half of the browser client of sansio-signal.
//
// Theory of operation
// -------------------
// These modules are a port of the Python package's client-side core: the codec for frames
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

// The modules mirror the Python ones: wire.js (the codec), negotiation.js
// (PeerNegotiation), client.js (ClientMachine, Timers). This one gathers them.

export * from "./wire.js";
export * from "./negotiation.js";
export * from "./client.js";
