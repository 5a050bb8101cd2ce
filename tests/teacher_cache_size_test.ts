/** Cache size estimates, by hand, and the refusal message. */

import assert from "node:assert/strict";
import {
  checkCacheLimit,
  estimateCacheBytes,
  formatBytes,
} from "../pipeline/distill/teacher_cache.ts";
import { assertInputError } from "./_util.ts";

const SHAPE = {
  numLabels: 2,
  hiddenSize: 312,
  heads: 12,
  hiddenLayers: 5,
  attentionLayers: 4,
  dtype: "F16" as const,
};

Deno.test("estimate = Σ (C + |hidden|·len·H + |attention|·heads·len²) × bytes", () => {
  // len 10: 2 + 5·10·312 + 4·12·100 = 2 + 15,600 + 4,800 = 20,402 values
  // len 3:  2 + 5·3·312 + 4·12·9 = 2 + 4,680 + 432 = 5,114 values
  assert.equal(estimateCacheBytes([10, 3], SHAPE), (20402 + 5114) * 2);
  assert.equal(estimateCacheBytes([10, 3], { ...SHAPE, dtype: "F32" }), (20402 + 5114) * 4);
  assert.equal(estimateCacheBytes([], SHAPE), 0);
});

Deno.test("a cache over the limit is refused with the figure and the knobs", async () => {
  // 6,000 examples at len 128: (2 + 199,680 + 786,432) values × 2 bytes each
  const bytes = estimateCacheBytes(new Array(6000).fill(128), SHAPE);
  assert.equal(bytes, 986114 * 2 * 6000);
  assert.equal(formatBytes(bytes), "11.83 GB");
  await assertInputError(
    () => checkCacheLimit(bytes, 5e9, "stages[2].teacher-forward.max_cache_bytes"),
    [
      "stages[2].teacher-forward.max_cache_bytes: the teacher-output cache would exceed",
      "(expected ≤ 5.00 GB, got 11.83 GB)",
      "store F16",
      "cache: false",
    ],
  );
  checkCacheLimit(bytes, 12e9, "x"); // under the limit: no error
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(1500), "1.50 kB");
});
