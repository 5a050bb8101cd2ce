/**
 * The teacher-output cache, in one place: what it holds, how big it will be, how a batch's
 * forward outputs become per-example records (written by `teacher-forward`), and how those
 * records become distillation batches again (read by `distill`), along with the same batches
 * computed by the teacher online.
 *
 * Per example the cache holds the logits, the mapped hidden states and the mapped pre-softmax
 * attention scores, each cropped to the example's real length `len` (padded positions are neither
 * stored nor used by the losses; the −10000 key offset is re-created from the length when a batch
 * is rebuilt): `C + |hidden|·len·H + |attention|·heads·len²` values of 2 (F16) or 4 (F32) bytes.
 * Attention dominates: a 12-head layer at len 128 is 196,608 values per example.
 * @module
 */

import { InputError } from "../errors.ts";
import type { HostArray } from "../train/batch.ts";
import type { HostOutputs } from "../train/parallel.ts";

/** One example's cached teacher outputs. */
export interface TeacherRecord {
  /** Real (unpadded) length. */
  length: number;
  logits?: Float32Array;
  /** One `[length, H]` array per kept hidden state. */
  hidden: Float32Array[];
  /** One `[heads, length, length]` array per kept attention layer. */
  scores: Float32Array[];
}

/** Rows `0..len` of example `b` of a `[B, S, H]` array. */
function cropHidden(h: HostArray, b: number, len: number): Float32Array {
  const [, S, H] = h.shape;
  const base = b * S * H;
  return h.data.slice(base, base + len * H) as Float32Array;
}

/** The top-left `len × len` block of every head of example `b` of a `[B, heads, S, S]` array. */
function cropScores(s: HostArray, b: number, len: number): Float32Array {
  const [, nh, S] = s.shape;
  const out = new Float32Array(nh * len * len);
  for (let h = 0; h < nh; h++) {
    for (let q = 0; q < len; q++) {
      const src = ((b * nh + h) * S + q) * S;
      out.set(s.data.subarray(src, src + len), (h * len + q) * len);
    }
  }
  return out;
}

/**
 * Split a batch's forward outputs into per-example records, keeping hidden states
 * `hiddenIndices` (0 = embeddings) and attention layers `attentionLayers` (0-based).
 */
export function toRecords(
  out: HostOutputs,
  lengths: ArrayLike<number>,
  hiddenIndices: number[],
  attentionLayers: number[],
): TeacherRecord[] {
  const records: TeacherRecord[] = [];
  for (let b = 0; b < lengths.length; b++) {
    const len = lengths[b];
    const rec: TeacherRecord = {
      length: len,
      hidden: hiddenIndices.map((i) => cropHidden(out.hiddenStates![i], b, len)),
      scores: attentionLayers.map((l) => cropScores(out.attentionScores![l], b, len)),
    };
    if (out.logits) {
      const C = out.logits.shape[1];
      rec.logits = out.logits.data.slice(b * C, (b + 1) * C) as Float32Array;
    }
    records.push(rec);
  }
  return records;
}

// ---------------------------------------------------------------------------------------------
// size, before any of it is computed

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
