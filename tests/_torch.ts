/**
 * The independent PyTorch reference (`tests/reference/bert_torch.py`) for tests: finds a python3
 * that can `import torch, numpy`, runs the reference on a checkpoint directory (forward outputs of
 * every head; per job an objective's loss, terms, gradients and one AdamW step), and compares
 * tinystill's numbers with it on every executor ({@link EXECUTORS}).
 *
 * Without such an interpreter the tests that use it are skipped with a message, unless
 * `TINYSTILL_REQUIRE_TORCH=1` (CI), where that is an error.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Bert, type BertHeads, isNoDecay, parameterShapes } from "../pipeline/model/bert.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import type { LossTermSpec } from "../pipeline/graph/losses.ts";
import { writeSafetensors } from "../pipeline/model/safetensors.ts";
import { randomArray, REL_FLOOR, relErr, rng } from "./_util.ts";
import { Trainer } from "../pipeline/train/trainer.ts";

const SCRIPT = fileURLToPath(new URL("./reference/bert_torch.py", import.meta.url));

// Finding a python3 with torch.

async function importsTorch(python: string): Promise<boolean> {
  try {
    const r = await new Deno.Command(python, {
      args: ["-c", "import torch, numpy"],
      stdout: "null",
      stderr: "null",
    }).output();
    return r.success;
  } catch {
    return false; // interpreter not found
  }
}

async function findTorchPython(): Promise<string | undefined> {
  const candidates = [Deno.env.get("TINYSTILL_PYTHON"), "python3", "/usr/bin/python3"];
  for (const py of candidates) if (py && await importsTorch(py)) return py;
  return undefined;
}

export const PYTHON = await findTorchPython();
if (!PYTHON && Deno.env.get("TINYSTILL_REQUIRE_TORCH") === "1") {
  // CI installs torch: there a missing interpreter is a failure, not a skip
  throw new Error("TINYSTILL_REQUIRE_TORCH=1 but no python3 can `import torch, numpy`");
}
if (!PYTHON) {
  console.warn(
    "torch reference tests: SKIPPED — no python3 that can `import torch, numpy`. Install them " +
      "with `apt-get install python3-torch python3-numpy` (or set TINYSTILL_PYTHON).",
  );
}

// ---------------------------------------------------------------------------------------------
// The torch side: inputs out, a float64 safetensors file back.

/** The reference's batch (JSON). Padding must follow each row's real tokens. */
export interface Inputs {
  input_ids: number[][];
  attention_mask: number[][];
  token_type_ids: number[][];
  /** Class labels [B] (classification, `hard_ce` on a sequence classifier). */
  labels?: number[];
  /** Regression targets [B]. */
  float_labels?: number[];
  /** Token labels [B][S], −100 where a token has none. */
  token_labels?: number[][];
  /** QA gold spans [B]. */
  start_positions?: number[];
  end_positions?: number[];
  /** MLM targets [B][S], −100 where a position is not masked. */
  mlm_labels?: number[][];
}

export interface F64Tensor {
  shape: number[];
  data: Float64Array;
}

/** Parse a safetensors file of F64 tensors (what the reference writes). */
export function parseF64Safetensors(
  bytes: Uint8Array,
): { tensors: Map<string, F64Tensor>; metadata: Record<string, string> } {
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  const data = bytes.subarray(8 + headerLen);
  const tensors = new Map<string, F64Tensor>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: [start, end] } = e as {
      dtype: string;
      shape: number[];
      data_offsets: [number, number];
    };
    assert.equal(dtype, "F64", `${name}: reference output dtype`);
    tensors.set(name, { shape, data: new Float64Array(data.slice(start, end).buffer) });
  }
  return { tensors, metadata: header.__metadata__ ?? {} };
}

/**
 * Run the reference on checkpoint `ckpt` with `inputs` (and `extra` keys of its INPUTS_JSON:
 * `jobs`, `tensors`, `mlm`, `adamw`; see the script's doc), in float64.
 */
export async function runTorch(
  ckpt: string,
  inputs: Inputs,
  work: string,
  extra: Record<string, unknown> = {},
) {
  const inPath = join(work, "inputs.json"), outPath = join(work, "torch_out.safetensors");
  await Deno.writeTextFile(
    inPath,
    JSON.stringify({ ...inputs, dtype: "float64", ...extra }),
  );
  const r = await new Deno.Command(PYTHON!, {
    args: [SCRIPT, ckpt, inPath, outPath],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) {
    throw new Error(
      `bert_torch.py failed (${r.code}):\n${new TextDecoder().decode(r.stderr)}` +
        new TextDecoder().decode(r.stdout),
    );
  }
  return parseF64Safetensors(await Deno.readFile(outPath));
}

// ---------------------------------------------------------------------------------------------
// Test models, batches and jobs.

/** The executors every parity test runs on: ONNX Runtime, and tfjs on wasm and cpu. */
export const EXECUTORS: readonly { label: string; ref: EngineRef }[] = [
  { label: "onnxruntime", ref: { kind: "onnxruntime" } },
  { label: "tfjs/wasm", ref: { kind: "tfjs", backend: "wasm" } },
  { label: "tfjs/cpu", ref: { kind: "tfjs", backend: "cpu" } },
];

/** `config` with dropout off (parity runs without dropout; the masks are tested on their own). */
export function noDropout(config: Partial<BertConfig>): BertConfig {
  return makeConfig({ ...config, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 });
}

/**
 * A model whose every parameter is random (LayerNorm weights 1 ± 0.2, everything else
 * uniform ±0.3), so that biases and LayerNorm parameters matter and attention is far from
 * uniform.
 */
export function randomModel(config: BertConfig, heads: BertHeads, seed: number): Bert {
  const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(config, heads)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const u = randomArray(n, seed * 1000 + ++i);
    const data = name.includes("LayerNorm.weight")
      ? u.map((x) => 1 + 0.2 * x)
      : u.map((x) => 0.3 * x);
    tensors.set(name, { data, shape });
  }
  return new Bert(config, heads, tensors);
}

/**
 * A padded batch: rows of real lengths `lengths` (ids 1..V−1, segment A then B) padded to `seq`
 * (id 0, mask 0, type 0), with every kind of label: classes, regression targets, token labels
 * (none on [CLS], the last real token, every third token and padding), QA spans inside each row,
 * MLM targets on about a quarter of the real positions.
 */
export function makeInputs(
  config: BertConfig,
  lengths: number[],
  seq: number,
  seed: number,
  numLabels = 3,
): Inputs {
  const r = rng(seed);
  const V = config.vocab_size, T = config.type_vocab_size;
  const int = (n: number) => Math.floor(r() * n);
  const inputs: Required<Inputs> = {
    input_ids: [],
    attention_mask: [],
    token_type_ids: [],
    labels: [],
    float_labels: [],
    token_labels: [],
    start_positions: [],
    end_positions: [],
    mlm_labels: [],
  };
  for (const len of lengths) {
    const split = Math.max(1, Math.floor(len / 2));
    const row = (f: (j: number) => number) => Array.from({ length: seq }, (_, j) => f(j));
    inputs.input_ids.push(row((j) => (j < len ? 1 + int(V - 1) : 0)));
    inputs.attention_mask.push(row((j) => (j < len ? 1 : 0)));
    inputs.token_type_ids.push(row((j) => (j < len && j >= split ? 1 + (j % (T - 1 || 1)) : 0)));
    inputs.token_labels.push(
      row((j) => (j > 0 && j < len - 1 && j % 3 !== 2 ? int(numLabels) : -100)),
    );
    inputs.mlm_labels.push(row((j) => (j < len && (j === 1 || r() < 0.25) ? int(V) : -100)));
    const start = 1 + int(Math.max(1, len - 2));
    inputs.start_positions.push(Math.min(start, len - 1));
    inputs.end_positions.push(Math.min(start + int(3), len - 1));
    inputs.labels.push(int(numLabels));
    inputs.float_labels.push(r() * 2 - 1);
  }
  return inputs;
}

/** The inputs as a host batch (what the trainer feeds an executor), plus `extra` entries. */
export function hostBatchOf(inputs: Inputs, extra: HostBatch = {}): HostBatch {
  const B = inputs.input_ids.length, S = inputs.input_ids[0].length;
  const int2 = (rows: number[][]) => ({ data: Int32Array.from(rows.flat()), shape: [B, S] });
  const b: HostBatch = {
    inputIds: int2(inputs.input_ids),
    attentionMask: int2(inputs.attention_mask),
    tokenTypeIds: int2(inputs.token_type_ids),
  };
  if (inputs.labels) b.labels = { data: Int32Array.from(inputs.labels), shape: [B] };
  if (inputs.token_labels) b.tokenLabels = int2(inputs.token_labels);
  if (inputs.start_positions) {
    b.startPositions = { data: Int32Array.from(inputs.start_positions), shape: [B] };
    b.endPositions = { data: Int32Array.from(inputs.end_positions!), shape: [B] };
  }
  if (inputs.mlm_labels) b.mlmLabels = int2(inputs.mlm_labels);
  return { ...b, ...extra };
}

/** A regression batch: `labels` are the float targets. */
export function regressionBatch(inputs: Inputs): HostBatch {
  const b = hostBatchOf(inputs);
  b.labels = {
    data: Float32Array.from(inputs.float_labels!),
    shape: [inputs.float_labels!.length],
  };
  return b;
}

/** AdamW hyperparameters of the parity steps (torch names); clipping on at 0.5. */
export const ADAMW = {
  lr: 5e-3,
  betas: [0.9, 0.999],
  eps: 1e-6,
  weight_decay: 0.01,
  max_grad_norm: 0.5,
};

/** One objective to compare: its loss, terms, every gradient and (optionally) an AdamW step. */
export interface Job {
  name: string;
  objective: string;
  /** Distillation: the terms, the layer map and the options of `DistillObjectiveOptions`. */
  terms?: LossTermSpec[];
  layerMap?: number[];
  embeddings?: boolean;
  projection?: "shared" | "per-layer";
  /** The tensor set (teacher targets `t_*`, projections `distill.*`) the job reads. */
  set?: string;
  /** Also one AdamW step ({@link ADAMW}). */
  adamw?: boolean;
}

/** A job as the reference's JSON spells it. */
export function torchJob(j: Job): Record<string, unknown> {
  return {
    name: j.name,
    objective: j.objective,
    terms: j.terms?.map((t) => ({
      name: t.name,
      weight: t.weight,
      temperature: t.temperature ?? 1,
    })),
    layer_map: j.layerMap,
    embeddings: j.embeddings ?? true,
    projection: j.projection ?? "shared",
    set: j.set,
    adamw: j.adamw ? ADAMW : undefined,
  };
}

/** Write named float32 tensors (`<set>.<key>`) as the reference's job tensors file. */
export async function writeJobTensors(
  path: string,
  sets: Record<string, Record<string, { data: Float32Array; shape: number[] }>>,
): Promise<void> {
  const all = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [set, tensors] of Object.entries(sets)) {
    for (const [k, v] of Object.entries(tensors)) all.set(`${set}.${k}`, v);
  }
  await writeSafetensors(path, all);
}

// ---------------------------------------------------------------------------------------------
// Comparison.

/** Per-element relative tolerance of every comparison with the reference. */
export const TOL = 1e-4;

/**
 * relErr floor of forward values and parameters (hidden states, scores, logits of order one;
 * parameters uniform ±0.3 and 1 ± 0.2): `UNIT_FLOOR` of `_util.ts`.
 */
export const VALUE_FLOOR = 0.1;

/**
 * relErr floor of a gradient, relative to the largest torch gradient entry of its job: float32
 * rounding of a gradient entry is absolute, about 1e-7 × the terms it sums, which scale with the
 * job's gradients, so entries below 1e-2 of the largest are held to TOL · 1e-2 of it (for
 * classification, whose largest entries are ≈ 0.1–0.3, that is the absolute floor ≈ 1e-3 the
 * test used before).
 */
export const GRAD_FLOOR_REL = 1e-2;

/**
 * relErr floor of the AdamW update Δ, whose entries are ≈ lr = 5e-3 (Adam's first step) or, where
 * the gradient is exactly 0, lr·wd·|p| ≈ 1.5e-5 (pure decay): those are held to TOL · 1e-3.
 */
const DELTA_FLOOR = 1e-3;

/** Absolute tolerance on padded key columns of the attention scores (values ≈ −10000). */
export const PADDED_ABS_TOL = 2e-3;

/** Worst error seen per category, and the failures, of one executor. */
export class Errors {
  readonly worst = new Map<string, number>();
  readonly failures: string[] = [];

  check(category: string, what: string, err: number, tol: number): void {
    this.worst.set(category, Math.max(this.worst.get(category) ?? 0, err));
    if (!(err <= tol)) this.failures.push(`${what}: ${err.toExponential(3)} > ${tol}`);
  }

  /** relErr (per element, with `floor`; the default suits scalars) against torch at TOL. */
  rel(
    category: string,
    what: string,
    a: ArrayLike<number>,
    b: F64Tensor | ArrayLike<number> | undefined,
    floor = REL_FLOOR,
    where?: ArrayLike<number | boolean>,
  ): void {
    assert.ok(b, `torch output ${what} is missing`);
    const ref = "data" in b ? b.data : b;
    assert.equal(a.length, ref.length, `${what}: size`);
    this.check(category, what, relErr(a, ref, { floor, where }), TOL);
  }
}

/** The printed report: worst error per category (rows) and executor (columns). */
export class Report {
  readonly rows: Record<string, Record<string, string>> = {};
  add(column: string, errs: Errors): void {
    for (const [category, err] of errs.worst) {
      (this.rows[category] ??= {})[column] = err.toExponential(2);
    }
  }
  print(title: string): void {
    console.log(`max errors vs torch float64 (${title}):`);
    console.table(this.rows);
  }
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** What the reference computed for one job. */
export interface TorchJob {
  name: string;
  ref: Map<string, F64Tensor>;
  /** Parameters the loss does not reach (no gradient, untouched by AdamW). */
  noGrad: Set<string>;
  /** Parameters whose gradient is numerically 0 (≤ 1e-12 × the largest). */
  zeroGrad: Set<string>;
  /** The largest gradient entry. */
  gradMax: number;
  get(key: string): F64Tensor;
}

/** The job `name`'s entries of a reference run. */
export function torchJobOf(
  run: { tensors: Map<string, F64Tensor>; metadata: Record<string, string> },
  name: string,
): TorchJob {
  const prefix = `${name}.`;
  const ref = new Map<string, F64Tensor>();
  for (const [k, v] of run.tensors) if (k.startsWith(prefix)) ref.set(k.slice(prefix.length), v);
  const noGradText = run.metadata[`${name}.no_grad`];
  assert.ok(noGradText !== undefined && ref.has("loss"), `the reference ran no job '${name}'`);
  const noGrad = new Set(noGradText ? noGradText.split(",") : []);
  const grads = [...ref].filter(([n]) => n.startsWith("grad."));
  const gradMax = Math.max(...grads.map(([, t]) => maxAbs(t.data)));
  const zeroGrad = new Set(
    grads.filter(([, t]) => maxAbs(t.data) <= 1e-12 * gradMax).map(([n]) => n.slice(5)),
  );
  return {
    name,
    ref,
    noGrad,
    zeroGrad,
    gradMax,
    get(key) {
      const v = ref.get(key);
      assert.ok(v, `the reference's job '${name}' has no ${key}`);
      return v;
    },
  };
}

/**
 * The loss and every gradient of a job against torch: the same set of parameters gets a gradient
 * (torch's `grad is None` ⇔ no entry), each gradient per element (floor {@link GRAD_FLOOR_REL} ×
 * the job's largest), gradients that are 0 in exact arithmetic (the key biases under a softmax)
 * at ≤ TOL × the largest gradient.
 */
export function compareGradients(
  errs: Errors,
  job: TorchJob,
  loss: number,
  grads: Map<string, Float32Array>,
  params: Iterable<string>,
): void {
  errs.rel("loss", `${job.name}: loss`, [loss], job.get("loss"));
  for (const name of params) {
    const g = grads.get(name);
    // torch's `grad is None`, or a parameter the checkpoint does not store (the pooler of a
    // per-token model): no gradient
    if (job.noGrad.has(name) || !job.ref.has(`grad.${name}`)) {
      errs.check(
        "gradient set",
        `${job.name}: ${name} has a gradient off the loss's path`,
        g ? 1 : 0,
        0,
      );
      continue;
    }
    if (!g) {
      errs.check("gradient set", `${job.name}: ${name} has no gradient`, 1, 0);
      continue;
    }
    const r = job.get(`grad.${name}`);
    assert.equal(g.length, r.data.length, `${job.name}: grad.${name}: size`);
    if (job.zeroGrad.has(name)) {
      // exactly 0 in exact arithmetic: both sides hold rounding noise only
      const noise = maxAbs(g) / job.gradMax;
      errs.check("zero gradients (max|g| / largest)", `${job.name}: grad.${name}`, noise, TOL);
      continue;
    }
    errs.rel("gradients", `${job.name}: grad.${name}`, g, r, GRAD_FLOOR_REL * job.gradMax);
  }
}

/**
 * One AdamW step against torch's: the gradient norm, every parameter after the step, parameters
 * without a gradient untouched, and the update Δ = after − before of the well-conditioned
 * elements.
 *
 * The first Adam step moves an element by lr·ĝ/(|ĝ| + eps) (ĝ the clipped gradient), whose
 * sensitivity to ĝ is lr·eps/(|ĝ| + eps)²: float32 noise in gradients near eps (and in gradients
 * that are 0 in exact arithmetic) is amplified up to lr/eps. So a parameter after the step is
 * held to TOL · max(|p|, VALUE_FLOOR) plus that sensitivity times the error the gradient test
 * accepts for its gradient entry (TOL · max(|g|, GRAD_FLOOR_REL · largest), clipped); away from
 * eps the second part is negligible. Δ (sensitive to the weight-decay term, ≈ wd·|p| ≈ 3e-3 of the
 * step, and to bias correction) is compared at TOL only where ĝ is exactly 0 (pure decay) or
 * |ĝ| ≥ 100·eps. Returns how many elements Δ was compared on.
 */
export function compareAdamW(
  errs: Errors,
  job: TorchJob,
  gradNorm: number,
  before: Map<string, Float32Array>,
  after: Record<string, Float32Array>,
): { used: number; total: number } {
  const gradNormRef = job.get("grad_norm").data[0];
  errs.rel("grad norm", `${job.name}: grad norm`, [gradNorm], [gradNormRef]);
  const clipCoef = Math.min(1, ADAMW.max_grad_norm / (gradNormRef + 1e-6));
  const conditioned = { used: 0, total: 0 };
  for (const [name, p0] of before) {
    const got = after[name];
    if (job.noGrad.has(name) || !job.ref.has(`grad.${name}`)) {
      const same = Array.from(got).every((x, k) => x === p0[k]);
      errs.check("untouched without gradient", `${job.name}: ${name} changed`, same ? 0 : 1, 0);
      continue;
    }
    const r = job.get(`updated.${name}`).data;
    const g = job.get(`grad.${name}`).data;
    let worst = 0;
    for (let k = 0; k < g.length; k++) {
      const gk = Math.abs(g[k]) * clipCoef;
      const gradTol = TOL * Math.max(Math.abs(g[k]), GRAD_FLOOR_REL * job.gradMax) * clipCoef;
      const sensitivity = (ADAMW.lr * ADAMW.eps) / (gk + ADAMW.eps) ** 2;
      const scale = Math.max(Math.abs(r[k]), VALUE_FLOOR) + (sensitivity * gradTol) / TOL;
      const e = Math.abs(got[k] - r[k]) / scale;
      worst = Number.isNaN(e) ? NaN : Math.max(worst, e);
    }
    errs.check("params after AdamW", `${job.name}: updated.${name}`, worst, TOL);
    if (job.zeroGrad.has(name)) continue; // Δ ≈ lr·noise/eps on both sides: not comparable
    const delta: number[] = [], deltaRef: number[] = [];
    for (let k = 0; k < g.length; k++) {
      if (g[k] !== 0 && Math.abs(g[k]) * clipCoef < 100 * ADAMW.eps) continue;
      delta.push(got[k] - p0[k]);
      deltaRef.push(r[k] - p0[k]);
    }
    conditioned.used += delta.length;
    conditioned.total += g.length;
    errs.check(
      "AdamW update Δ (conditioned elements)",
      `${job.name}: Δ${name}${isNoDecay(name) ? "" : " (decayed)"}`,
      relErr(delta, deltaRef, { floor: DELTA_FLOOR }),
      TOL,
    );
  }
  return conditioned;
}

/**
 * One torch job on tinystill's trainer: the loss and every gradient of `objective` on `batch`
 * (dropout off, ADAMW's hyperparameters, one thread, on `engine`), then, for a job with `adamw`,
 * one step, each compared with the reference (see {@link compareGradients}, {@link compareAdamW}).
 */
export async function checkTrainerJob(
  errs: Errors,
  job: TorchJob,
  model: Bert,
  batch: HostBatch,
  o: {
    objective: string;
    objectiveOptions?: unknown;
    engine: EngineRef;
    adamw: boolean;
    before: Map<string, Float32Array>;
  },
): Promise<void> {
  const trainer = await Trainer.create(model, {
    objective: o.objective,
    objectiveOptions: o.objectiveOptions,
    lr: () => ADAMW.lr,
    beta1: ADAMW.betas[0],
    beta2: ADAMW.betas[1],
    eps: ADAMW.eps,
    weightDecay: ADAMW.weight_decay,
    maxGradNorm: ADAMW.max_grad_norm,
    dropout: false,
    threads: 1,
    engine: o.engine,
  });
  try {
    const { loss, grads } = await trainer.gradients(batch);
    compareGradients(errs, job, loss, grads, model.params.keys());
    if (o.adamw) {
      const { gradNorm } = await trainer.step(batch);
      compareAdamW(errs, job, gradNorm, o.before, trainer.weights());
    }
  } finally {
    await trainer.close();
  }
}
