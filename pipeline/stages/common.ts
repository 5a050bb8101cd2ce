/**
 * What the training and evaluation stages share: reading token shards into padded batches,
 * resolving which model a stage reads (a checkpoint directory or an earlier stage's `model/`),
 * building a model from a pipeline's `teacher`/`student` section, the training params schema,
 * dev-set evaluation and writing a model folder in the Hugging Face layout.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import { tf } from "../tfjs/backend.ts";
import { Bert } from "../model/bert.ts";
import { loadBert, saveBert } from "../model/checkpoint.ts";
import { type BertConfig, makeConfig, numLabels } from "../model/config.ts";
import { InputError } from "../errors.ts";
import { exists, writeJsonAtomic } from "../store/fsutil.ts";
import { classificationMetrics, regressionMetrics } from "../report/metrics.ts";
import type { DataParallel } from "../train/parallel.ts";
import { type HostBatch, inputTensors } from "../train/batch.ts";
import { PartReader } from "../store/parquet.ts";
import type { Pipeline } from "../run/spec.ts";
import type { CurvePoint, EvalPoint } from "../train/loop.ts";

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

/** The index of each row's largest logit (`logits` is `[rows × C]`, row-major). */
export function argmaxRows(logits: Float32Array, C: number): Int32Array {
  const n = logits.length / C, out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (logits[i * C + c] > logits[i * C + best]) best = c;
    out[i] = best;
  }
  return out;
}

/** Rows `[start, end)` as a list. */
export function range(start: number, end: number): number[] {
  return Array.from({ length: end - start }, (_, i) => start + i);
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

/** A param that takes one stage key or a list of them, as a list. */
export const asList = (t: string | string[]): string[] => (Array.isArray(t) ? t : [t]);

/** A reference to a model: an earlier stage's key (its `model/`), or a pipeline section. */
export const ModelRef = z.string().min(1);

/**
 * The directory of the model a stage reads: `ctx.inputs[ref]/model` when `ref` names an earlier
 * stage, else the pipeline's `<role>.checkpoint`.
 */
export function modelDirOf(
  p: Pipeline,
  inputs: Record<string, string>,
  resolve: (s: string) => string,
  ref: string | undefined,
  role: "teacher" | "student",
  field: string,
): string {
  if (ref) {
    const dir = inputs[ref];
    if (!dir) throw new Error(`${field}: stage "${ref}" is not among this stage's inputs`);
    return join(dir, "model");
  }
  const ckpt = p[role]?.checkpoint;
  if (!ckpt) {
    throw new InputError(`no ${role} model to read`, {
      file: p.file,
      field,
      hint: `Name the stage that trains it (e.g. ${field}: finetune@${role}), ` +
        `or set ${role}.checkpoint.`,
    });
  }
  return resolve(ckpt);
}

/** id2label from a label list. */
export function id2labelOf(labels: string[]): Record<string, string> {
  return Object.fromEntries(labels.map((l, i) => [String(i), l]));
}

/**
 * A new model from a pipeline section's `config`, sized to the tokenizer's vocabulary, with a
 * classifier over `labels` (when given).
 */
export function modelFromConfig(
  p: Pipeline,
  role: "teacher" | "student",
  meta: TokenMeta,
  seed: number,
  /** The architecture to use when the section has no `config` (e.g. a checkpoint's). */
  base?: Partial<BertConfig>,
): Bert {
  const section = p[role];
  if (!section?.config && !base) {
    throw new InputError(`${role}.config is needed to build the ${role}`, {
      file: p.file,
      field: `${role}.config`,
    });
  }
  const given = (section?.config ?? base) as Partial<BertConfig>;
  if (given.vocab_size !== undefined && given.vocab_size !== meta.vocab_size) {
    throw new InputError(`${role}.config.vocab_size differs from the tokenizer's`, {
      file: p.file,
      field: `${role}.config.vocab_size`,
      expected: String(meta.vocab_size),
      got: String(given.vocab_size),
    });
  }
  const labels = taskLabels(meta) ?? [];
  let config: BertConfig;
  try {
    config = makeConfig({
      ...given,
      vocab_size: meta.vocab_size,
      ...(isRegression(meta) ? { problem_type: "regression" as const } : {}),
      ...(labels.length
        ? {
          id2label: id2labelOf(labels),
          label2id: Object.fromEntries(labels.map((l, i) => [l, i])),
        }
        : {}),
    });
  } catch (e) {
    throw new InputError(`${role}.config: ${(e as Error).message}`, {
      file: p.file,
      field: `${role}.config`,
    });
  }
  return Bert.create(config, { classifier: labels.length > 0 }, seed);
}

/**
 * Load a checkpoint for training on a labelled task: the classifier is built for `labels`
 * (kept when the checkpoint's labels are the same, else freshly initialised as
 * `from_pretrained(num_labels=…)` does).
 */
export async function loadForTask(
  dir: string,
  labels: string[] | null,
  seed: number,
  regression = false,
) {
  if (!labels) return await loadBert(dir, { seed });
  const probe = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  const theirs = probe.id2label
    ? Object.keys(probe.id2label).sort((a, b) => +a - +b).map((k) => probe.id2label[k])
    : null;
  const same = theirs && theirs.join("\u0000") === labels.join("\u0000");
  if (same) return await loadBert(dir, { seed, heads: { classifier: true } });
  // a different head: load the encoder only, then add a fresh classifier
  const enc = await loadBert(dir, { seed, heads: { classifier: false, mlm: false } });
  const config = makeConfig({
    ...enc.config,
    ...(regression ? { problem_type: "regression" as const } : {}),
    id2label: id2labelOf(labels),
    label2id: Object.fromEntries(labels.map((l, i) => [l, i])),
  });
  const fresh = Bert.create(config, { classifier: true, mlm: false }, seed);
  const tensors = new Map<string, tf.Tensor>();
  for (const [name, v] of fresh.params) {
    tensors.set(name, enc.params.has(name) ? tf.clone(enc.params.get(name)!) : tf.clone(v));
  }
  fresh.dispose();
  enc.dispose();
  return new Bert(config, { classifier: true, mlm: false }, tensors);
}

/** Training settings shared by `finetune` and each `distill` phase. */
export const OptimParams = {
  /** Whole epochs over the training split… */
  epochs: z.number().positive().optional(),
  /** …or a number of optimiser steps. */
  steps: z.number().int().positive().optional(),
  batch_size: z.number().int().positive().optional(),
  /** Examples per forward/backward pass; gradients accumulate up to `batch_size`. */
  micro_batch_size: z.number().int().positive().optional(),
  lr: z.number().positive().optional(),
  /** Warmup as a fraction of the steps, then linear decay to 0. */
  warmup: z.number().min(0).max(1).optional(),
  weight_decay: z.number().min(0).optional(),
  max_grad_norm: z.number().min(0).optional(),
  /** Evaluate on the dev split every this many steps (and at the end). */
  eval_every: z.number().int().min(0).optional(),
};

/** Run-level training settings. */
export const LoopParams = {
  /**
   * Seed of this stage's fresh weights, data order and dropout (default: the pipeline's `seed`).
   * Repeating a stage with other seeds measures the run-to-run spread.
   */
  seed: z.number().int().optional(),
  /** Write a resumable checkpoint every this many steps. */
  checkpoint_every: z.number().int().min(0).default(50),
  /** Restore the best dev checkpoint at the end. */
  keep_best: z.boolean().default(true),
  /** Model replicas (one per core by default). */
  replicas: z.number().int().positive().optional(),
  /** Dev-set metric that picks the best checkpoint (default accuracy; pearson for regression). */
  metric: z.enum(["accuracy", "macro_f1", "mcc", "pearson", "spearman"]).optional(),
  /** Batch size for dev evaluation. */
  eval_batch_size: z.number().int().positive().default(64),
};

/** Dev-set classification metrics of `model` (tfjs forward on `dp`'s replicas). */
export async function evaluateRows(
  dp: DataParallel | null,
  model: Bert,
  rows: TokenRows,
  batchSize: number,
): Promise<Record<string, number>> {
  const n = rows.lengths.length;
  const C = numLabels(model.config);
  const pred = rows.targets ? new Float32Array(n) : new Int32Array(n);
  // sorted by length, so batches carry little padding
  const order = range(0, n).sort((a, b) => rows.lengths[a] - rows.lengths[b]);
  for (let s = 0; s < n; s += batchSize) {
    const idx = order.slice(s, s + batchSize);
    const batch = padRows(rows, idx, false);
    let logits: Float32Array;
    if (dp) logits = (await dp.forward(batch, ["logits"])).logits!.data as Float32Array;
    else {
      logits = tf.tidy(() =>
        model.forward(inputTensors(batch), { hiddenStates: false, attentionScores: false })
          .logits!.dataSync() as Float32Array
      );
    }
    const best = argmaxRows(logits, C);
    idx.forEach((r, i) => pred[r] = rows.targets ? logits[i * C] : best[i]);
  }
  return rows.targets
    ? { ...regressionMetrics(pred, rows.targets) }
    : { ...classificationMetrics(pred, rows.labels, C) };
}

/** Write `model/` (HF layout: config, weights, tokenizer) plus the training curve. */
export async function writeTrainedModel(
  out: string,
  model: Bert,
  tokensDir: string,
  curve: { curve: CurvePoint[]; evals: EvalPoint[]; best?: EvalPoint },
): Promise<void> {
  const dir = join(out, "model");
  await saveBert(model, dir, { dtype: "F32" });
  for (const f of ["vocab.txt", "tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(join(tokensDir, "tokenizer", f), join(dir, f));
  }
  await writeJsonAtomic(join(out, "curve.json"), curve);
}
