/**
 * What the training and evaluation stages share: reading token shards into padded batches,
 * resolving which model a stage reads (a checkpoint directory or an earlier stage's `model/`),
 * building a model from a pipeline's `teacher`/`student` section, the training params schema,
 * dev-set evaluation and writing a model folder in the Hugging Face layout.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import { Bert, type BertHeads } from "../model/bert.ts";
import { architectureOf, loadBert, saveBert } from "../model/checkpoint.ts";
import { bestSpan, IGNORE_INDEX, spanText } from "../model/align.ts";
import type { TaskKind } from "../data/types.ts";
import { type BertConfig, labelNames, makeConfig, numLabels } from "../model/config.ts";
import { InputError } from "../errors.ts";
import { writeJsonAtomic } from "../store/fsutil.ts";
import { limitModelMaxLength } from "../graph/export.ts";
import {
  isRegression,
  padRows,
  taskLabels,
  type TokenMeta,
  type TokenRows,
} from "../store/tokens.ts";
import {
  classificationMetrics,
  entityF1,
  regressionMetrics,
  squadMetrics,
  tokenAccuracy,
} from "../report/metrics.ts";
import { batchInputs, type Inference, openInference } from "../engines/inference.ts";
import type { AdapterInfo } from "../engines/device.ts";
import { headLogits, headOutputNames } from "../graph/export.ts";
import type { Pipeline } from "../run/spec.ts";
import type { CurvePoint, EvalPoint, Phase, TrainResult } from "../train/loop.ts";
import type { StageResult } from "../run/runner.ts";

/** The `device` param of every stage that runs ONNX Runtime (`auto`, `cpu`, `webgpu`). */
export const deviceParam = z.enum(["auto", "cpu", "webgpu"]).default("auto");

/**
 * What the manifest records (its `device` entry) of where ONNX Runtime ran: `device`, and the WebGPU adapter seen
 * (`adapter_vendor`, `adapter_device`: its description and PCI ids, `adapter_driver`,
 * `adapter_software`) when one was looked for.
 */
export function deviceMetrics(
  device: string,
  adapter: AdapterInfo | null,
): Record<string, string> {
  if (!adapter) return { device };
  return {
    device,
    adapter_vendor: adapter.vendor,
    adapter_device: `${adapter.description} (${adapter.vendorId}:${adapter.deviceId})`,
    adapter_driver: adapter.driver,
    adapter_software: String(adapter.software),
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

/** The longest row of some token rows (0 for none). */
export function longestRow(...rows: (TokenRows | null)[]): number {
  let n = 0;
  for (const r of rows) if (r) { for (const len of r.lengths) n = Math.max(n, len); }
  return n;
}

/**
 * Refuse rows longer than a model's position table before any compute (otherwise the embedding
 * lookup fails mid-run): `field` names the setting that made them (e.g. the tokenize stage's
 * `max_seq_length`).
 */
export function checkSeqLength(
  longest: number,
  config: BertConfig,
  where: { file: string; field: string; model: string },
): void {
  if (longest <= config.max_position_embeddings) return;
  throw new InputError(`rows are longer than the ${where.model}'s max_position_embeddings`, {
    file: where.file,
    field: where.field,
    expected: `≤ ${config.max_position_embeddings} tokens (the ${where.model}'s positions)`,
    got: `${longest} tokens`,
    hint: `Lower ${where.field}, or use a model with more positions.`,
  });
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
  return Bert.create(config, taskHeads(meta.task, labels), seed);
}

/** The heads a model for a task needs (`labels`: the task's class or tag names). */
export function taskHeads(task: TaskKind | null | undefined, labels: string[] | null): BertHeads {
  if (task === "question-answering") return { classifier: false, mlm: false, qa: true };
  if (task === "token-classification") {
    return { classifier: true, mlm: false, tokenClassifier: true };
  }
  return { classifier: !!labels?.length, mlm: false };
}

/** The training objective on a task's labels (see `train/objectives.ts`). */
export function taskObjective(task: TaskKind | null | undefined): string {
  return {
    "regression": "regression",
    "token-classification": "token_classification",
    "question-answering": "span",
    "classification": "classification",
  }[task ?? "classification"];
}

/** The dev metric that picks the best checkpoint by default. */
export function taskMetric(task: TaskKind | null | undefined): DevMetric {
  if (task === "regression") return "pearson";
  if (task === "question-answering") return "f1";
  return "accuracy";
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
  task: TaskKind | null | undefined = labels ? "classification" : null,
) {
  if (!labels) return await loadBert(dir, { seed });
  const heads = taskHeads(task, labels);
  const probe = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  const theirs = probe.id2label
    ? Object.keys(probe.id2label).sort((a, b) => +a - +b).map((k) => probe.id2label[k])
    : [];
  const arch = Array.isArray(probe.architectures) ? probe.architectures[0] : undefined;
  const same = theirs.join("\u0000") === labels.join("\u0000") &&
    arch === architectureOf(heads);
  if (same) return await loadBert(dir, { seed, heads });
  // a different head: load the encoder only, then add a fresh head
  const enc = await loadBert(dir, {
    seed,
    heads: { classifier: false, mlm: false, qa: false, tokenClassifier: false },
  });
  const { id2label: _i, label2id: _l, problem_type: _p, ...rest } = enc.config;
  const config = makeConfig({
    ...rest,
    ...(task === "regression" ? { problem_type: "regression" as const } : {}),
    ...(labels.length
      ? {
        id2label: id2labelOf(labels),
        label2id: Object.fromEntries(labels.map((l, i) => [l, i])),
      }
      : {}),
  });
  const fresh = Bert.create(config, heads, seed);
  for (const [name, v] of fresh.params) {
    const from = enc.params.get(name);
    if (from) v.data.set(from.data);
  }
  return fresh;
}

/**
 * The defaults of a training stage's optimiser settings (each stage states its own; the default
 * length is {@link withLength}'s).
 */
export interface OptimDefaults {
  batch_size: number;
  lr: number;
  warmup: number;
  weight_decay: number;
  max_grad_norm: number;
}

/** Optimiser settings whose unset fields come from elsewhere (a `distill` phase: its stage). */
export const PhaseOptimParams = {
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
  /** Evaluate on the dev split every this many steps (and at the end); 0: only at the end. */
  eval_every: z.number().int().min(0).optional(),
};

/**
 * Optimiser settings for a params schema, with a stage's `defaults` filled in. Wrap the schema in
 * {@link withLength} for the `epochs`/`steps` rule and the default length.
 */
export function optimParams(d: OptimDefaults) {
  return {
    ...PhaseOptimParams,
    batch_size: PhaseOptimParams.batch_size.unwrap().default(d.batch_size),
    lr: PhaseOptimParams.lr.unwrap().default(d.lr),
    warmup: PhaseOptimParams.warmup.unwrap().default(d.warmup),
    weight_decay: PhaseOptimParams.weight_decay.unwrap().default(d.weight_decay),
    max_grad_norm: PhaseOptimParams.max_grad_norm.unwrap().default(d.max_grad_norm),
    eval_every: PhaseOptimParams.eval_every.unwrap().default(0),
  };
}

/**
 * A training params schema with the length rule: `epochs` or `steps`, not both; `epochs`
 * defaults to `epochs` when neither is given.
 */
export function withLength<T extends { epochs?: number; steps?: number }>(
  schema: z.ZodType<T>,
  epochs: number,
) {
  return schema
    .refine((p) => !(p.epochs !== undefined && p.steps !== undefined), {
      message: "give `epochs` or `steps`, not both",
    })
    .transform((p) => (p.steps === undefined && p.epochs === undefined ? { ...p, epochs } : p));
}

/** Optimiser settings as validated (every default filled in). */
export interface OptimSettings {
  epochs?: number;
  steps?: number;
  batch_size: number;
  micro_batch_size?: number;
  lr: number;
  warmup: number;
  weight_decay: number;
  max_grad_norm: number;
  eval_every: number;
}

/** A training-loop phase from validated optimiser settings (the one place they are mapped). */
export function phaseFromParams(
  name: string,
  objective: string,
  p: OptimSettings,
  more: Pick<Phase, "evaluate" | "objectiveOptions" | "source"> = {},
): Phase {
  return {
    name,
    objective,
    epochs: p.steps === undefined ? p.epochs : undefined,
    steps: p.steps,
    batchSize: p.batch_size,
    microBatchSize: p.micro_batch_size,
    lr: p.lr,
    warmup: p.warmup,
    weightDecay: p.weight_decay,
    maxGradNorm: p.max_grad_norm,
    evalEvery: p.eval_every,
    ...more,
  };
}

/** Dev metrics a stage can select checkpoints by. */
export const DEV_METRICS = [
  "accuracy",
  "macro_f1",
  "mcc",
  "pearson",
  "spearman",
  "entity_f1",
  "exact_match",
  "f1",
] as const;
/** A dev metric name. */
export type DevMetric = typeof DEV_METRICS[number];

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
  /**
   * Training engine, i.e. who runs the gradient graph: `onnx` (ONNX Runtime), `tfjs` (tfjs on the
   * pipeline's `backend`, one replica per core) or `auto` (default: onnx when ONNX Runtime loads).
   */
  engine: z.enum(["auto", "onnx", "tfjs"]).default("auto"),
  /**
   * ONNX Runtime's device: `auto` (default: webgpu on a real GPU adapter, else cpu), `cpu` or
   * `webgpu` (docs/gpu.md). The manifest records the device and the adapter.
   */
  device: deviceParam,
  /** Data-parallel replicas (default: one per core on tfjs, 1 on onnx). */
  replicas: z.number().int().positive().optional(),
  /** Intra-op threads per replica (default: the cores shared among replicas). */
  threads: z.number().int().positive().optional(),
  /**
   * Dev-set metric that picks the best checkpoint (default accuracy; pearson for regression; f1
   * for QA). Token classification: accuracy (over words) or entity_f1 (BIO tags).
   */
  metric: z.enum(DEV_METRICS).optional(),
  /** Batch size for dev evaluation. */
  eval_batch_size: z.number().int().positive().default(64),
};

/**
 * Predictions of `model` on token rows (its inference graph on ONNX Runtime): class indices or
 * regression values per row; for token classification each row's predicted word tags (−1 for
 * words cut by `max_seq_length`); for QA each row's answer text.
 */
export async function predictRows(
  model: Bert,
  rows: TokenRows,
  batchSize: number,
): Promise<Int32Array | Float32Array | number[][] | string[]> {
  const engine = await openInference(model, { outputs: "logits", mlm: false });
  try {
    return await predictWith(engine, model, rows, batchSize);
  } finally {
    await engine.close();
  }
}

/**
 * {@link predictRows} on an open inference session of `model` (or of its exported file): rows
 * sorted by length into batches of `batchSize`, so batches carry little padding.
 */
export async function predictWith(
  engine: Inference,
  model: Bert,
  rows: TokenRows,
  batchSize: number,
): Promise<Int32Array | Float32Array | number[][] | string[]> {
  const n = rows.lengths.length;
  const C = numLabels(model.config);
  const pred = rows.targets ? new Float32Array(n) : new Int32Array(n);
  const words: number[][] = new Array(n), answers: string[] = new Array(n);
  const order = range(0, n).sort((a, b) => rows.lengths[a] - rows.lengths[b]);
  for (let s = 0; s < n; s += batchSize) {
    const idx = order.slice(s, s + batchSize);
    const batch = padRows(rows, idx, false);
    const S = batch.inputIds.shape[1];
    const res = await engine.run(batchInputs(batch), headOutputNames(model));
    const logits = headLogits(model, res).data;
    if (rows.tokenLabels || rows.startPositions) {
      decodeBatch(logits, rows, idx, S, C, words, answers);
      continue;
    }
    const best = argmaxRows(logits, C);
    idx.forEach((r, i) => pred[r] = rows.targets ? logits[i * C] : best[i]);
  }
  if (rows.tokenLabels) return words;
  if (rows.startPositions) return answers;
  return pred;
}

/**
 * Decode per-token outputs `[batch, S, K]` of the rows `idx`: token classification (`K` = tags)
 * into each row's predicted word tags (−1 for words cut by `max_seq_length`) in `words`; QA
 * (`K` = 2: start, end) into each row's answer text in `answers` (best span, see `bestSpan`).
 */
export function decodeBatch(
  out: Float32Array,
  rows: TokenRows,
  idx: number[],
  S: number,
  C: number,
  words: number[][],
  answers: string[],
): void {
  idx.forEach((r, i) => {
    if (rows.tokenLabels) {
      const best = argmaxRows(out.subarray(i * S * C, (i + 1) * S * C), C);
      const tags = rows.tokenLabels[r], got: number[] = [];
      for (let k = 0; k < tags.length; k++) if (tags[k] !== IGNORE_INDEX) got.push(best[k]);
      const all = rows.wordTags![r].length;
      words[r] = [...got, ...new Array(all - got.length).fill(-1)];
    } else {
      const st = new Float32Array(S), en = new Float32Array(S);
      for (let k = 0; k < S; k++) {
        st[k] = out[(i * S + k) * 2];
        en[k] = out[(i * S + k) * 2 + 1];
      }
      const tw = rows.tokenWords![r];
      const span = bestSpan(st, en, tw);
      answers[r] = spanText(rows.contexts![r], tw, rows.wordSpans![r], span.start, span.end);
    }
  });
}

/**
 * The metrics of predictions (as {@link predictRows} returns them) against the rows' gold:
 * classification / regression metrics; token classification: word accuracy (cut words count
 * as wrong) and entity F1 (conlleval chunks, when the tags are BIO); QA: exact match and F1.
 */
export function rowMetrics(
  pred: Int32Array | Float32Array | number[][] | string[],
  rows: TokenRows,
  labels: string[],
): Record<string, number> {
  if (rows.tokenLabels) {
    const p = pred as number[][], g = rows.wordTags!.map((t) => [...t]);
    const name = (i: number) => (i < 0 ? "O" : labels[i]);
    const out: Record<string, number> = { accuracy: tokenAccuracy(p, g) };
    if (labels.some((l) => /^[BI]-/.test(l))) {
      out.entity_f1 = entityF1(g.map((s) => s.map(name)), p.map((s) => s.map(name))).f1;
    }
    return out;
  }
  if (rows.startPositions) {
    const m = squadMetrics(pred as string[], rows.answers!.map((a) => a.map((x) => x.text)));
    return { exact_match: m.exactMatch, f1: m.f1 };
  }
  return rows.targets
    ? { ...regressionMetrics(pred as Float32Array, rows.targets) }
    : { ...classificationMetrics(pred as Int32Array, rows.labels, labels.length) };
}

/** Dev-set metrics of `model` (see {@link predictRows} and {@link rowMetrics}). */
export async function evaluateRows(
  model: Bert,
  rows: TokenRows,
  batchSize: number,
): Promise<Record<string, number>> {
  return rowMetrics(await predictRows(model, rows, batchSize), rows, labelNames(model.config));
}

/** What a training stage reports in its manifest: steps, examples, size, time, final and dev metrics. */
export function trainingResult(res: TrainResult, model: Bert): StageResult {
  return {
    counts: { steps: res.steps, examples: res.examples, parameters: model.numParameters() },
    metrics: {
      seconds: res.seconds,
      final_loss: res.curve.at(-1)?.loss ?? NaN,
      ...(res.best
        ? Object.fromEntries(Object.entries(res.best.metrics).map(([k, v]) => [`dev_${k}`, v]))
        : {}),
    },
    ...(res.device ? { device: deviceMetrics(res.device.device, res.device.adapter) } : {}),
  };
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
  // the length it was trained at (transformers.js truncates to model_max_length)
  const meta = JSON.parse(await Deno.readTextFile(join(tokensDir, "labels.json")));
  await limitModelMaxLength(dir, model.config.max_position_embeddings, meta.max_seq_length);
  await writeJsonAtomic(join(out, "curve.json"), curve);
}
