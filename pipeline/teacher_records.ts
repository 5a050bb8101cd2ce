/**
 * Per-example teacher outputs as the cache stores them: the logits, the mapped hidden states and
 * the mapped pre-softmax attention scores, each cropped to the example's real length (padded
 * positions are neither stored nor used by the losses; the −10000 key offset is re-created from
 * the length when a batch is rebuilt).
 * @module
 */

import type { HostArray, HostOutputs } from "./parallel.ts";

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
