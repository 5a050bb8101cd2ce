/**
 * How big a teacher-output cache will be, before any of it is computed.
 *
 * Per example the cache holds the logits, the mapped hidden states and the mapped pre-softmax
 * attention scores, cropped to the example's real length `len` (padding is not stored):
 * `C + |hidden|·len·H + |attention|·heads·len²` values of 2 (F16) or 4 (F32) bytes. Attention
 * dominates: a 12-head layer at len 128 is 196,608 values per example.
 * @module
 */

import { InputError } from "./errors.ts";

/** What the cache stores per example. */
export interface CacheShape {
  numLabels: number;
  hiddenSize: number;
  heads: number;
  /** Number of teacher hidden states kept (embedding output included if mapped). */
  hiddenLayers: number;
  /** Number of teacher attention-score layers kept. */
  attentionLayers: number;
  dtype: "F16" | "F32";
}

/** Bytes of the float payload for examples of these real lengths (row metadata not counted). */
export function estimateCacheBytes(lengths: ArrayLike<number>, s: CacheShape): number {
  const width = s.dtype === "F16" ? 2 : 4;
  let values = 0;
  for (let i = 0; i < lengths.length; i++) {
    const len = lengths[i];
    values += s.numLabels + s.hiddenLayers * len * s.hiddenSize +
      s.attentionLayers * s.heads * len * len;
  }
  return values * width;
}

/** `1.23 GB`-style figure (decimal units, as disks are sold). */
export function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}

/** Refuse a cache above `limit` bytes, saying how big it would be and what to change. */
export function checkCacheLimit(bytes: number, limit: number, field: string): void {
  if (bytes <= limit) return;
  throw new InputError("the teacher-output cache would exceed its size limit", {
    field,
    expected: `≤ ${formatBytes(limit)}`,
    got: formatBytes(bytes),
    hint: `Raise ${field}, store F16 instead of F32, map fewer layers, shorten ` +
      `max_seq_length, or set cache: false to run the teacher online during distillation.`,
  });
}
