/**
 * Reading a tokenize output: its token store per split (`<dir>/<split>/`, Parquet parts of
 * `input_ids`, `token_type_ids`, `length`, `label` and, for regression, `target`) and its
 * `labels.json`; rows padded into host batches.
 * @module
 */

import { join } from "node:path";
import type { HostBatch } from "../data/batch.ts";
import { exists } from "./fsutil.ts";
import { PartReader } from "./parquet.ts";
import type { TaskKind } from "../data/types.ts";

/** The label of an unlabeled row (cross-entropy's ignore index). */
export const UNLABELLED = -100;

/** The rows of `t` that carry a label (every row for regression, token and span tasks). */
export function labelledRows(t: TokenRows): number[] {
  const out: number[] = [];
  const plain = !t.targets && !t.tokenLabels && !t.startPositions;
  for (let r = 0; r < t.lengths.length; r++) if (!plain || t.labels[r] !== UNLABELLED) out.push(r);
  return out;
}

/** The given rows of `t`, in that order, as a token split of their own. */
export function selectRows(t: TokenRows, rows: readonly number[]): TokenRows {
  const pick = <T>(xs: T[] | undefined) => xs && rows.map((r) => xs[r]);
  const out: TokenRows = {
    ids: pick(t.ids)!,
    types: pick(t.types)!,
    lengths: Int32Array.from(rows, (r) => t.lengths[r]),
    labels: Int32Array.from(rows, (r) => t.labels[r]),
  };
  if (t.targets) out.targets = Float32Array.from(rows, (r) => t.targets![r]);
  if (t.tokenLabels) out.tokenLabels = pick(t.tokenLabels);
  if (t.wordTags) out.wordTags = pick(t.wordTags);
  if (t.startPositions) out.startPositions = Int32Array.from(rows, (r) => t.startPositions![r]);
  if (t.endPositions) out.endPositions = Int32Array.from(rows, (r) => t.endPositions![r]);
  if (t.tokenWords) out.tokenWords = pick(t.tokenWords);
  if (t.wordSpans) out.wordSpans = pick(t.wordSpans);
  if (t.contexts) out.contexts = pick(t.contexts);
  if (t.answers) out.answers = pick(t.answers);
  return out;
}

/** Every row of one split's token store, in row order. */
export interface TokenRows {
  ids: Int32Array[];
  types: Int32Array[];
  lengths: Int32Array;
  labels: Int32Array;
  /** Regression targets (regression datasets only). */
  targets?: Float32Array;
  /** Token classification: per token, the word's tag at its first piece, −100 elsewhere. */
  tokenLabels?: Int32Array[];
  /** Token classification: every word's gold tag (words cut by truncation included). */
  wordTags?: Int32Array[];
  /** Extractive QA: the answer's first and last token (0 = `[CLS]`: cut off or no answer). */
  startPositions?: Int32Array;
  endPositions?: Int32Array;
  /** Extractive QA: per token, its context word or −1; per word, `[start, end)` characters. */
  tokenWords?: Int32Array[];
  wordSpans?: Int32Array[];
  /** Extractive QA: the context and the gold answers of each row. */
  contexts?: string[];
  answers?: { text: string; start: number }[][];
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
  const has = (name: string) => reader.columns.some((c) => c.name === name);
  const regression = has("target");
  const targets = regression ? new Float32Array(reader.totalRows) : undefined;
  const tokenTask = has("token_labels"), qa = has("start_position");
  const out: Partial<TokenRows> = {};
  if (tokenTask) Object.assign(out, { tokenLabels: [], wordTags: [] });
  if (qa) {
    Object.assign(out, {
      startPositions: new Int32Array(reader.totalRows),
      endPositions: new Int32Array(reader.totalRows),
      tokenWords: [],
      wordSpans: [],
      contexts: [],
      answers: [],
    });
  }
  const cols = [
    "input_ids",
    "token_type_ids",
    "length",
    "label",
    ...(regression ? ["target"] : []),
    ...(tokenTask ? ["token_labels", "word_tags"] : []),
    ...(qa
      ? ["start_position", "end_position", "token_words", "word_spans", "context", "answers"]
      : []),
  ];
  for await (const part of reader.parts(cols)) {
    const c = part.columns;
    if (tokenTask) {
      out.tokenLabels!.push(...(c.token_labels as Int32Array[]));
      out.wordTags!.push(...(c.word_tags as Int32Array[]));
    }
    if (qa) {
      out.startPositions!.set(c.start_position as Int32Array, part.firstRow);
      out.endPositions!.set(c.end_position as Int32Array, part.firstRow);
      out.tokenWords!.push(...(c.token_words as Int32Array[]));
      out.wordSpans!.push(...(c.word_spans as Int32Array[]));
      out.contexts!.push(...(c.context as string[]));
      out.answers!.push(...(c.answers as string[]).map((a) => JSON.parse(a)));
    }
    ids.push(...(part.columns.input_ids as Int32Array[]));
    types.push(...(part.columns.token_type_ids as Int32Array[]));
    lengths.set(part.columns.length as Int32Array, part.firstRow);
    // an unlabeled row is −100 (stores written before that said −1): cross-entropy skips it
    (part.columns.label as Int32Array).forEach((l, i) =>
      labels[part.firstRow + i] = l < 0 ? UNLABELLED : l
    );
    if (targets) {
      (part.columns.target as Float32Array[]).forEach((t, i) => targets[part.firstRow + i] = t[0]);
    }
  }
  return { ids, types, lengths, labels, ...(targets ? { targets } : {}), ...out };
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
  const batch: HostBatch = {
    inputIds: { data: inputIds, shape: [b, S] },
    attentionMask: { data: mask, shape: [b, S] },
    tokenTypeIds: { data: tt, shape: [b, S] },
  };
  if (!withLabels) return batch;
  if (t.tokenLabels) {
    // per-token targets, padding ignored (−100)
    const tl = new Int32Array(b * S).fill(-100);
    rows.forEach((r, i) => tl.set(t.tokenLabels![r], i * S));
    batch.tokenLabels = { data: tl, shape: [b, S] };
  } else if (t.startPositions) {
    batch.startPositions = {
      data: Int32Array.from(rows, (r) => t.startPositions![r]),
      shape: [b],
    };
    batch.endPositions = { data: Int32Array.from(rows, (r) => t.endPositions![r]), shape: [b] };
  } else batch.labels = { data: labels, shape: [b] };
  return batch;
}

/** `labels.json` of a tokenize output. */
export interface TokenMeta {
  labels: string[] | null;
  /** `regression` for numeric targets, the token and span tasks; null for unlabeled text. */
  task?: TaskKind | null;
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
 * regression (`LABEL_0`, as transformers names it), none for QA (`[]`: labelled with spans);
 * null for unlabeled text.
 */
export function taskLabels(meta: TokenMeta): string[] | null {
  if (meta.task === "question-answering") return []; // labelled, but with spans, not classes
  return isRegression(meta) ? ["LABEL_0"] : meta.labels;
}
