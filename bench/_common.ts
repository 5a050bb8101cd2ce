/**
 * What the benchmarks share: seeded random batches and medians.
 * @module
 */

import type { HostBatch } from "../pipeline/data/batch.ts";

/**
 * A seeded batch of `batch × seq` random token ids in `[min(1000, vocab − 1), vocab)`, no padding,
 * segment 0, labels alternating 0/1.
 */
export function randomBatch(batch: number, seq: number, vocab: number, seed: number): HostBatch {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const lo = Math.min(1000, vocab - 1);
  return {
    inputIds: {
      data: Int32Array.from({ length: batch * seq }, () => lo + Math.floor(next() * (vocab - lo))),
      shape: [batch, seq],
    },
    attentionMask: { data: new Int32Array(batch * seq).fill(1), shape: [batch, seq] },
    tokenTypeIds: { data: new Int32Array(batch * seq), shape: [batch, seq] },
    labels: { data: Int32Array.from({ length: batch }, (_, i) => i % 2), shape: [batch] },
  };
}

/** The middle value (the upper one of an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
