/** Cropping a batch's teacher outputs to per-example records, checked element by element. */

import assert from "node:assert/strict";
import { toRecords } from "../pipeline/distill/teacher_cache.ts";

function arange(shape: number[]) {
  const n = shape.reduce((a, b) => a * b, 1);
  return { data: Float32Array.from({ length: n }, (_, i) => i), shape };
}

Deno.test("records keep the mapped layers, cropped to each example's length", () => {
  const B = 2, S = 4, H = 3, nh = 2;
  const out = {
    logits: arange([B, 2]),
    hiddenStates: [arange([B, S, H]), arange([B, S, H]), arange([B, S, H])],
    attentionScores: [arange([B, nh, S, S]), arange([B, nh, S, S])],
  };
  out.hiddenStates[2].data.fill(7);
  const recs = toRecords(out, [3, 1], [0, 2], [1]);
  assert.equal(recs.length, 2);
  assert.deepEqual(Array.from(recs[1].logits!), [2, 3]);
  // hidden 0 of example 0: rows 0..2 of [4,3]
  assert.deepEqual(Array.from(recs[0].hidden[0]), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(Array.from(recs[0].hidden[1]), new Array(9).fill(7));
  // example 1 (offset 12) length 1: one row
  assert.deepEqual(Array.from(recs[1].hidden[0]), [12, 13, 14]);
  // scores of example 0, head 1, 3×3 block of a 4×4 map starting at (0*2+1)*16 = 16
  const s = recs[0].scores[0];
  assert.equal(s.length, 2 * 3 * 3);
  assert.deepEqual(Array.from(s.subarray(9, 18)), [16, 17, 18, 20, 21, 22, 24, 25, 26]);
  // example 1 head 0 starts at (1*2+0)*16 = 32; length 1: just [32]
  assert.deepEqual(Array.from(recs[1].scores[0]), [32, 48]);
});
