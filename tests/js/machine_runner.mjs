// The JS client machine behind a JSON-lines pipe, for tests/test_js_equal.py: each input
// line is `{"init": {...}}` (a new machine) or a step (`{"event": ..., "now": t}` /
// `{"timer": t}`); each output line is the outcome in the normal form of
// conformance.mjs.
import { createInterface } from "node:readline";

import { newClient, runStep, snapshot } from "./conformance.mjs";

let machine = null;
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const input = JSON.parse(line);
  let out;
  if ("init" in input) {
    machine = newClient(input.init);
    out = { snapshot: snapshot(machine) };
  } else {
    out = runStep(machine, input);
  }
  out.jitterUsed = machine.jitterUsed();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}
