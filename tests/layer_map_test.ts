/** TinyBERT's layer mapping: uniform, last, explicit, and the errors. */

import assert from "node:assert/strict";
import {
  resolveLayerMap,
  teacherAttentionLayers,
  teacherHiddenIndices,
} from "../pipeline/distill/layer_map.ts";
import { assertInputError } from "./_util.ts";

Deno.test("uniform maps student m to teacher m·N/M (TinyBERT4 of BERT-base: 3, 6, 9, 12)", () => {
  assert.deepEqual(resolveLayerMap("uniform", 12, 4), [0, 3, 6, 9, 12]);
  assert.deepEqual(resolveLayerMap("uniform", 6, 2), [0, 3, 6]);
  assert.deepEqual(resolveLayerMap("uniform", 4, 4), [0, 1, 2, 3, 4]);
  assert.deepEqual(resolveLayerMap("last", 12, 4), [0, 9, 10, 11, 12]);
  assert.deepEqual(resolveLayerMap([2, 4, 4], 6, 3), [0, 2, 4, 4]);
});

Deno.test("cached layers are exactly those the map reads", () => {
  const map = resolveLayerMap("uniform", 12, 4);
  assert.deepEqual(teacherHiddenIndices(map), [0, 3, 6, 9, 12]);
  assert.deepEqual(teacherAttentionLayers(map), [2, 5, 8, 11]);
  assert.deepEqual(teacherAttentionLayers([0, 2, 4, 4]), [1, 3]);
});

Deno.test("bad maps are clear errors", async () => {
  await assertInputError(() => resolveLayerMap("uniform", 12, 5), [
    "needs the student's layers to divide",
    "expected a divisor of 12",
    "got 5 student layers",
  ]);
  await assertInputError(() => resolveLayerMap("uniform", 4, 6), ["more layers than the teacher"]);
  await assertInputError(() => resolveLayerMap([3, 13], 12, 2), [
    "layer_map[1]: teacher layer out of range (expected integer in 1..12, got 13)",
  ]);
  await assertInputError(() => resolveLayerMap([6, 3], 12, 2), [
    "layer_map[1]: teacher layers must not decrease",
  ]);
  await assertInputError(() => resolveLayerMap([1, 2, 3], 12, 2), ["wrong length"]);
});
