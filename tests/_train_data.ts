/** Tiny labelled data, a model config and a bitwise check shared by the training tests. */

import { padRows, type TokenRows } from "../pipeline/store/tokens.ts";
import type { BatchSource } from "../pipeline/train/loop.ts";
import { rng } from "./_util.ts";

/** A 2-layer BERT small enough to train in milliseconds; dropout on (as in real training). */
export const TRAIN_CONFIG = {
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 24,
  max_position_embeddings: 16,
  id2label: { "0": "a", "1": "b" },
};

/** `n` token rows of length 3..12 whose label is whether token 7 occurs (learnable). */
export function tinyRows(n: number, seed = 1): TokenRows {
  const r = rng(seed);
  const ids: Int32Array[] = [], types: Int32Array[] = [];
  const lengths = new Int32Array(n), labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const len = 3 + Math.floor(r() * 10);
    const row = Int32Array.from({ length: len }, () => 1 + Math.floor(r() * 39));
    row[0] = 2;
    if (i % 2 === 0) row[1 + Math.floor(r() * (len - 1))] = 7;
    else for (let k = 1; k < len; k++) if (row[k] === 7) row[k] = 8;
    ids.push(row);
    types.push(new Int32Array(len));
    lengths[i] = len;
    labels[i] = i % 2 === 0 ? 1 : 0;
  }
  return { ids, types, lengths, labels };
}

/** A batch source over {@link tinyRows} in groups of 16 rows. */
export function tinySource(n: number, seed = 1): BatchSource {
  const rows = tinyRows(n, seed);
  const groups = [];
  for (let s = 0; s < n; s += 16) groups.push({ start: s, end: Math.min(n, s + 16) });
  return { groups, load: (_g, r) => Promise.resolve(padRows(rows, r)) };
}

/** Assert that `actual` holds exactly the bytes of `expected`, naming the first element that differs. */
export function assertSameBytes(actual: Float32Array, expected: Float32Array, what: string): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: ${actual.length} elements, expected ${expected.length}`);
  }
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const b = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  const i = a.findIndex((x, j) => x !== b[j]);
  if (i >= 0) throw new Error(`${what}[${i}]: ${actual[i]}, expected ${expected[i]} (bit for bit)`);
}
