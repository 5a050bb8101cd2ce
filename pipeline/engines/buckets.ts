/**
 * Sequence-length buckets: on WebGPU the first run of a shape compiles its shaders (seconds on a
 * software Vulkan), so batches are padded to a few lengths and each compiles once. Padding adds
 * tokens whose attention mask is 0: the attention of real tokens, the per-token outputs and every
 * loss are those of the unpadded batch (padded keys score −10000, whose exp is 0 in float32), and
 * outputs are cut back to the batch's own length. Training with dropout draws its masks for the
 * padded shape (the same distribution, other draws than an unpadded step).
 * @module
 */

import type { HostArray, HostBatch } from "../data/batch.ts";

/** The default buckets (capped at the model's positions, which is always a bucket). */
export const DEFAULT_BUCKETS: readonly number[] = [16, 32, 64, 128, 256, 512];

/** The smallest bucket ≥ `seq` among `buckets` and `max` (`seq` itself when above all). */
export function bucketFor(seq: number, buckets: readonly number[], max: number): number {
  let best = Infinity;
  for (const b of [...buckets, max]) if (b >= seq && b <= max && b < best) best = b;
  return Number.isFinite(best) ? best : seq;
}

/** Rows `[B, S]` padded to `[B, S2]` with `fill`. */
export function padRows<T extends Int32Array | BigInt64Array | Float32Array>(
  a: T,
  B: number,
  S: number,
  S2: number,
  fill: T extends BigInt64Array ? bigint : number,
): T {
  if (S2 === S) return a;
  const inner = a.length / (B * S);
  const out = new (a.constructor as new (n: number) => T)(B * S2 * inner);
  (out as { fill(v: unknown): unknown }).fill(fill);
  for (let b = 0; b < B; b++) {
    (out as { set(x: unknown, o: number): void }).set(
      a.subarray(b * S * inner, (b + 1) * S * inner),
      b * S2 * inner,
    );
  }
  return out;
}

/** `x` with each axis in `axes` (of size S2) cut to its first `S` entries. */
export function cutAxes(x: Float32Array, dims: number[], axes: number[], S: number): {
  data: Float32Array;
  dims: number[];
} {
  if (axes.length === 0) return { data: x, dims };
  const out = dims.map((d, i) => (axes.includes(i) ? S : d));
  const data = new Float32Array(out.reduce((a, b) => a * b, 1));
  const strides = dims.map((_, i) => dims.slice(i + 1).reduce((a, b) => a * b, 1));
  const idx = new Array(out.length).fill(0);
  const last = out.length - 1;
  const run = out[last]; // copy the innermost axis as runs
  for (let o = 0; o < data.length; o += run) {
    let src = 0;
    for (let i = 0; i < last; i++) src += idx[i] * strides[i];
    data.set(x.subarray(src, src + run), o);
    for (let i = last - 1; i >= 0; i--) {
      if (++idx[i] < out[i]) break;
      idx[i] = 0;
    }
  }
  return { data, dims: out };
}

/** Fill values of the batch entries that are padded along tokens (ids 0, labels −100, …). */
const FILL: Record<string, number> = { tokenLabels: -100, mlmLabels: -100 };

/**
 * A training batch padded from its length `S` to `S2` tokens: every `[B, S, …]` entry (inputs,
 * per-token labels, teacher hidden states and per-token logits) along axis 1, teacher scores
 * `[B, h, S, S]` along axes 2 and 3, teacher values `[B, h, S, d]` along axis 2.
 */
export function padBatch(b: HostBatch, S2: number): HostBatch {
  const [B, S] = b.inputIds.shape;
  if (S2 === S) return b;
  const out: HostBatch = {};
  for (const [k, v] of Object.entries(b)) {
    out[k] = padEntry(k, v, B, S, S2);
  }
  return out;
}

function padEntry(k: string, v: HostArray, B: number, S: number, S2: number): HostArray {
  const fill = FILL[k] ?? 0;
  const s = v.shape;
  if (k.startsWith("t_scores_")) {
    // [B, h, S, S]: pad keys, then queries (as rows of [B·h, S, S2])
    const [, h] = s;
    const keys = padRows(v.data, B * h * S, S, S2, fill);
    return { data: padRows(keys, B * h, S, S2, fill), shape: [B, h, S2, S2] };
  }
  if (k.startsWith("t_values_")) {
    const [, h, , d] = s;
    return { data: padRows(v.data, B * h, S, S2, fill), shape: [B, h, S2, d] };
  }
  const perToken = k === "t_logits" ? s.length === 3 : s.length >= 2 && s[1] === S;
  if (!perToken) return v;
  return { data: padRows(v.data, B, S, S2, fill), shape: [B, S2, ...s.slice(2)] };
}
