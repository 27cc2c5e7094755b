// Replays the conformance vectors recorded from the Python client machine
// (tests/vectors/, written by tests/make_vectors.py) on the JS client machine: after
// every input, the same actions, the same error class, the same state and deadlines.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";

import { newClient, newNegotiation, runNegotiationStep, runStep } from "./conformance.mjs";

const dir = new URL("../vectors/", import.meta.url);
const files = readdirSync(dir).filter((name) => name.endsWith(".jsonl")).sort();

test("there are vectors to replay", () => {
  assert.ok(files.length >= 2, `no vector files in ${dir}`);
});

for (const file of files) {
  const vectors = readFileSync(new URL(file, dir), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
  test(`${file}: ${vectors.length} recorded machines replay identically`, () => {
    assert.ok(vectors.length > 0);
    for (const vector of vectors) {
      const negotiation = file.startsWith("negotiation");
      const machine = negotiation ? newNegotiation(vector.init) : newClient(vector.init);
      vector.steps.forEach((step, i) => {
        const { expect, ...input } = step;
        const got = negotiation ? runNegotiationStep(machine, input) : runStep(machine, input);
        assert.deepStrictEqual(got, expect, `${vector.name}, step ${i}: ${JSON.stringify(input)}`);
      });
      const drawn = negotiation ? machine.drawn() : [machine.jitterUsed()];
      const recorded = negotiation ? [vector.init.jitter.length, vector.init.newPc.length] : [vector.init.jitter.length];
      assert.deepStrictEqual(drawn, recorded, `${vector.name}: jitter (and handle) draws`);
    }
  });
}
