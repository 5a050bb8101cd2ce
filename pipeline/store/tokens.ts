/**
 * Reading a tokenize output: its token store per split (`<dir>/<split>/`, Parquet parts of
 * `input_ids`, `token_type_ids`, `length`, `label` and, for regression, `target`) and its
 * `labels.json`; rows padded into host batches.
 * @module
 */

import { join } from "node:path";
import type { HostBatch } from "../train/batch.ts";
import { exists } from "./fsutil.ts";
import { PartReader } from "./parquet.ts";

/** Every row of one split's token store, in row order. */
export interface TokenRows {
  ids: Int32Array[];
  types: Int32Array[];
  lengths: Int32Array;
  labels: Int32Array;
  /** Regression targets (regression datasets only). */
  targets?: Float32Array;
}

/** Read a split of a tokenize output (`<dir>/<split>/`); null when the split is empty. */
export async function readTokenSplit(tokensDir: string, split: string): Promise<TokenRows | null> {
  const dir = join(tokensDir, split);
  if (!(await exists(dir))) return null;
  return readTokenRows(await PartReader.open(dir));
}

/** Every row of a token store (ids, types, lengths, labels), in row order. */
export async function readTokenRows(reader: PartReader): Promise<TokenRows> {
  const ids: Int32Array[] = [], types: Int32Array[] = [];
  const lengths = new Int32Array(reader.totalRows), labels = new Int32Array(reader.totalRows);
  const regression = reader.columns.some((c) => c.name === "target");
  const targets = regression ? new Float32Array(reader.totalRows) : undefined;
  const cols = [
    "input_ids",
    "token_type_ids",
    "length",
    "label",
    ...(regression ? ["target"] : []),
  ];
  for await (const part of reader.parts(cols)) {
    ids.push(...(part.columns.input_ids as Int32Array[]));
    types.push(...(part.columns.token_type_ids as Int32Array[]));
    lengths.set(part.columns.length as Int32Array, part.firstRow);
    labels.set(part.columns.label as Int32Array, part.firstRow);
    if (targets) {
      (part.columns.target as Float32Array[]).forEach((t, i) => targets[part.firstRow + i] = t[0]);
    }
  }
  return { ids, types, lengths, labels, ...(targets ? { targets } : {}) };
}

/** The given rows of a token split as one host batch, padded to their longest. */
export function padRows(t: TokenRows, rows: number[], withLabels = true): HostBatch {
  const b = rows.length;
  let S = 1;
  for (const r of rows) S = Math.max(S, t.lengths[r]);
  const inputIds = new Int32Array(b * S), mask = new Int32Array(b * S), tt = new Int32Array(b * S);
  // class indices, or float targets for regression
  const labels = t.targets ? new Float32Array(b) : new Int32Array(b);
  rows.forEach((r, i) => {
    inputIds.set(t.ids[r], i * S);
    tt.set(t.types[r], i * S);
    mask.fill(1, i * S, i * S + t.lengths[r]);
    labels[i] = t.targets ? t.targets[r] : t.labels[r];
  });
  return {
    inputIds: { data: inputIds, shape: [b, S] },
    attentionMask: { data: mask, shape: [b, S] },
    tokenTypeIds: { data: tt, shape: [b, S] },
    ...(withLabels ? { labels: { data: labels, shape: [b] } } : {}),
  };
}

/** `labels.json` of a tokenize output. */
export interface TokenMeta {
  labels: string[] | null;
  /** `regression` for numeric targets; null for unlabeled text. */
  task?: "classification" | "regression" | null;
  vocab_size: number;
  max_seq_length?: number;
}

export async function readTokenMeta(tokensDir: string): Promise<TokenMeta> {
  return JSON.parse(await Deno.readTextFile(join(tokensDir, "labels.json")));
}

/** True for a regression dataset (numeric targets, one output). */
export function isRegression(meta: TokenMeta): boolean {
  return meta.task === "regression";
}

/**
 * The output labels a model for this data needs: the class names, or one unnamed output for
 * regression (`LABEL_0`, as transformers names it); null for unlabeled text.
 */
export function taskLabels(meta: TokenMeta): string[] | null {
  return isRegression(meta) ? ["LABEL_0"] : meta.labels;
}
