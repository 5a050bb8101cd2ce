/**
 * tinystill's BERT against an independent PyTorch implementation written from the math
 * (`tests/reference/bert_torch.py`, float64): every hidden state, every pre-softmax attention
 * score tensor, pooled output, classifier and MLM logits, the classification loss and its
 * gradient for every parameter, and the parameters after one AdamW step with weight decay and
 * gradient clipping — on the `cpu` and `wasm` backends.
 *
 * Error measure (per element): relErr(a, b) = max_i |a_i − b_i| / max(|b_i|, floor), with b the
 * torch value (see `tests/_util.ts`), so every entry is held to its own magnitude; the absolute
 * floor, chosen per kind of value below, bounds the denominator of entries near 0. Attention
 * scores are split: columns of real keys get that measure over those columns only; padded key
 * columns (≈ −10000 + score) get an absolute bound, since float32 resolves −10000 + s only to
 * ≈ 1e-3.
 *
 * Needs a python3 with torch and numpy (Debian: `apt-get install python3-torch python3-numpy`);
 * `TINYSTILL_PYTHON` may name the interpreter. Without one, the tests are skipped with a message.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type BackendName, setBackend, tf } from "../pipeline/tfjs/backend.ts";
import {
  Bert,
  type BertHeads,
  isNoDecay,
  MASK_VALUE,
  parameterShapes,
} from "../pipeline/model/bert.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { classification } from "../pipeline/train/objectives.ts";
import { AdamW } from "../pipeline/train/optim.ts";
import { computeGradients } from "../pipeline/train/parallel.ts";
import type { HostBatch } from "../pipeline/train/batch.ts";
import { OnnxTrainer } from "../pipeline/onnx/trainer.ts";
import {
  maxAbsErr,
  randomArray,
  realKeyMask,
  REL_FLOOR,
  relErr,
  rng,
  UNIT_FLOOR,
} from "./_util.ts";
import { type F64Tensor, type Inputs, PYTHON, runTorch as runReference } from "./_torch.ts";

const runTorch = (ckpt: string, inputs: Inputs, work: string) =>
  runReference(ckpt, inputs, work, { mlm: true, adamw: ADAMW });

/** Relative tolerance for everything compared with relErr. */
const TOL = 1e-4;
/**
 * relErr floor of the forward outputs and of the parameters (hidden states, scores, logits of
 * order one; parameters uniform ±0.3 and 1 ± 0.2): see UNIT_FLOOR.
 */
const VALUE_FLOOR = UNIT_FLOOR;
/**
 * relErr floor of the gradients: their largest entries are 4e-3 to 0.3 per tensor here, and
 * their float32 rounding is absolute like that of the forward values, so entries below 1e-3 are
 * held to TOL · 1e-3 = 1e-7.
 */
const GRAD_FLOOR = 1e-3;
/**
 * relErr floor of the AdamW update Δ, whose entries are ≈ lr = 5e-3 (Adam's first step) or, where
 * the gradient is exactly 0, lr·wd·|p| ≈ 1.5e-5 (pure decay): those are held to TOL · 1e-3.
 */
const DELTA_FLOOR = 1e-3;
/** Absolute tolerance on padded key columns of the attention scores (values ≈ −10000). */
const PADDED_ABS_TOL = 2e-3;
/**
 * Tolerance on the AdamW update Δ = p_after − p_before (relErr, floor DELTA_FLOOR), which unlike the
 * updated parameters themselves is sensitive to the weight-decay term (≈ wd·|p| ≈ 3e-3 of the
 * step here) and to bias correction. The first Adam step is lr·ĝ/(|ĝ| + eps), whose
 * sensitivity to ĝ is lr·eps/(|ĝ| + eps)²: float32 noise in gradients near eps is amplified up
 * to 1/eps, so Δ is compared only where the clipped torch gradient ĝ is exactly 0 (pure decay)
 * or |ĝ| ≥ 100·eps. The updated parameters are compared everywhere (at TOL).
 */
const DELTA_TOL = 1e-4;

const BACKENDS: BackendName[] = ["cpu", "wasm"];

const ADAMW = { lr: 5e-3, betas: [0.9, 0.999], eps: 1e-6, weight_decay: 0.01, max_grad_norm: 0.5 };

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// Test cases.

interface Case {
  name: string;
  config: Partial<BertConfig>;
  heads: BertHeads;
  /** Real-token count of each row; the rest of the row is padding (id 0, mask 0). */
  lengths: number[];
  seq: number;
}

const CASES: Case[] = [
  {
    name: "4 heads, 2 layers, classifier + MLM",
    config: {
      vocab_size: 60,
      hidden_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      intermediate_size: 48,
      max_position_embeddings: 16,
      id2label: { "0": "a", "1": "b", "2": "c" },
    },
    heads: { classifier: true, mlm: true },
    lengths: [10, 7, 4, 10],
    seq: 10,
  },
  {
    name: "1 head, odd sizes, 3 layers, eps 1e-5, classifier only",
    config: {
      vocab_size: 37,
      hidden_size: 19,
      num_hidden_layers: 3,
      num_attention_heads: 1,
      intermediate_size: 29,
      max_position_embeddings: 11,
      type_vocab_size: 3,
      layer_norm_eps: 1e-5,
      id2label: { "0": "neg", "1": "pos" },
    },
    heads: { classifier: true, mlm: false },
    lengths: [9, 3, 6],
    seq: 9,
  },
];

/** Dropout off: the classification objective runs forward with `training: true`. */
function configOf(c: Case): BertConfig {
  return makeConfig({ ...c.config, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 });
}

/**
 * A model whose every parameter is random (LayerNorm weights 1 ± 0.2, everything else
 * uniform ±0.3), so that biases and LayerNorm parameters matter and attention is far from
 * uniform.
 */
function randomModel(config: BertConfig, heads: BertHeads, seed: number): Bert {
  const tensors = new Map<string, tf.Tensor>();
  let i = 0;
  for (const [name, shape] of parameterShapes(config, heads)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const u = randomArray(n, seed * 1000 + ++i);
    const values = name.includes("LayerNorm.weight")
      ? u.map((x) => 1 + 0.2 * x)
      : u.map((x) => 0.3 * x);
    tensors.set(name, tf.tensor(values, shape));
  }
  return new Bert(config, heads, tensors);
}

function inputsOf(c: Case, config: BertConfig, seed: number): Inputs {
  const r = rng(seed);
  const V = config.vocab_size, T = config.type_vocab_size;
  const numLabels = Object.keys(config.id2label!).length;
  const input_ids: number[][] = [],
    attention_mask: number[][] = [],
    token_type_ids: number[][] = [];
  for (const len of c.lengths) {
    const split = Math.max(1, Math.floor(len / 2));
    const ids = [], mask = [], types = [];
    for (let j = 0; j < c.seq; j++) {
      const real = j < len;
      ids.push(real ? 1 + Math.floor(r() * (V - 1)) : 0);
      mask.push(real ? 1 : 0);
      // segment A then segment B (types 1.. up to type_vocab_size − 1); padding is type 0
      types.push(real && j >= split ? 1 + (j % (T - 1)) : 0);
    }
    input_ids.push(ids);
    attention_mask.push(mask);
    token_type_ids.push(types);
  }
  const labels = c.lengths.map(() => Math.floor(r() * numLabels));
  return { input_ids, attention_mask, token_type_ids, labels };
}

// ---------------------------------------------------------------------------------------------
// Comparison bookkeeping.

/** Worst error seen per category, for the report printed at the end of each test. */
class Errors {
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
    b: F64Tensor | undefined,
    floor = REL_FLOOR,
  ): void {
    assert.ok(b, `torch output ${what} is missing`);
    assert.equal(a.length, b.data.length, `${what}: size`);
    this.check(category, what, relErr(a, b.data, { floor }), TOL);
  }
}

function expectShape(t: tf.Tensor, ref: F64Tensor | undefined, what: string): void {
  assert.ok(ref, `torch output ${what} is missing`);
  assert.deepEqual(t.shape, ref.shape, `${what}: shape`);
}

/**
 * Scores of real key columns (relErr per element over them) and padded ones (absolute error):
 * the −10000 of a padded column must not set the scale of the others.
 */
function compareScores(
  errs: Errors,
  what: string,
  got: Float32Array,
  ref: F64Tensor,
  mask: number[][],
): void {
  const real = realKeyMask(mask, ref.shape[1]);
  const padded = real.map((r) => 1 - r);
  assert.equal(got.length, real.length, `${what}: size`);
  const realErr = relErr(got, ref.data, { floor: VALUE_FLOOR, where: real });
  errs.check("attention scores (real keys)", `${what} real keys`, realErr, TOL);
  if (padded.some((p) => p === 1)) {
    padded.forEach((p, k) =>
      p && assert.ok(Math.abs(ref.data[k] - MASK_VALUE) < 100, `${what}: torch padded column`)
    );
    const pad = maxAbsErr(got, ref.data, padded);
    errs.check("attention scores (padded keys, abs)", `${what} padded`, pad, PADDED_ABS_TOL);
  }
}

/** The torch inputs as a host batch (int32), as the training loop feeds an engine. */
function hostBatchOf(inputs: Inputs): HostBatch {
  const B = inputs.input_ids.length, S = inputs.input_ids[0].length;
  const int2 = (rows: number[][]) => ({ data: Int32Array.from(rows.flat()), shape: [B, S] });
  return {
    inputIds: int2(inputs.input_ids),
    attentionMask: int2(inputs.attention_mask),
    tokenTypeIds: int2(inputs.token_type_ids),
    labels: { data: Int32Array.from(inputs.labels), shape: [B] },
  };
}

/** What one engine computed for the training step. */
interface TrainingStep {
  loss: number;
  grads: Map<string, ArrayLike<number>>;
  gradNorm: number;
  /** Every parameter after the AdamW step. */
  after: Map<string, ArrayLike<number>>;
}

/** The torch side of the comparison. */
interface TorchStep {
  ref: Map<string, F64Tensor>;
  noGrad: Set<string>;
  zeroGrad: Set<string>;
  gradMax: number;
  gradNormRef: number;
  before: Map<string, Float32Array>;
}

/**
 * Loss, every gradient, the gradient norm, every parameter after AdamW and the update Δ of the
 * well-conditioned elements, against torch (see the tolerances at the top). Returns how many
 * elements Δ was compared on.
 */
function compareTraining(
  errs: Errors,
  mine: TrainingStep,
  t: TorchStep,
): { used: number; total: number } {
  errs.rel("loss", "loss", [mine.loss], t.ref.get("loss"));
  for (const name of t.before.keys()) {
    const g = mine.grads.get(name);
    if (t.noGrad.has(name)) {
      // The loss does not reach it (MLM head): no entry, as torch's `grad is None`.
      assert.equal(g, undefined, `${name}: gradient off the loss's path`);
      continue;
    }
    assert.ok(g, `${name}: no gradient`);
    const r = t.ref.get(`grad.${name}`)!;
    assert.equal(g.length, r.data.length, `grad.${name}: size`);
    if (t.zeroGrad.has(name)) {
      // Exactly 0 in exact arithmetic: both sides hold rounding noise only.
      const noise = maxAbs(g) / t.gradMax;
      errs.check("zero gradients (max|g| / largest gradient)", `grad.${name}`, noise, TOL);
      continue;
    }
    errs.rel("gradients", `grad.${name}`, g, r, GRAD_FLOOR);
  }
  const clipCoef = Math.min(1, ADAMW.max_grad_norm / (t.gradNormRef + 1e-6));
  const conditioned = { used: 0, total: 0 };
  errs.rel("grad norm", "grad norm", [mine.gradNorm], t.ref.get("grad_norm"));
  for (const [name, p0] of t.before) {
    const after = mine.after.get(name)!;
    const r = t.ref.get(`updated.${name}`)!;
    errs.rel("params after AdamW", `updated.${name}`, after, r, VALUE_FLOOR);
    if (t.noGrad.has(name)) {
      assert.ok(
        Array.from(after).every((x, k) => x === p0[k]),
        `${name}: changed without a gradient`,
      );
      continue;
    }
    if (t.zeroGrad.has(name)) continue; // Δ ≈ lr·noise/eps on both sides: not comparable
    // Δ = p_after − p_before on the well-conditioned elements (see DELTA_TOL).
    const g = t.ref.get(`grad.${name}`)!.data;
    const delta: number[] = [], deltaRef: number[] = [];
    for (let k = 0; k < g.length; k++) {
      if (g[k] !== 0 && Math.abs(g[k]) * clipCoef < 100 * ADAMW.eps) continue;
      delta.push(after[k] - p0[k]);
      deltaRef.push(r.data[k] - p0[k]);
    }
    conditioned.used += delta.length;
    conditioned.total += g.length;
    errs.check(
      "AdamW update Δ (conditioned elements)",
      `Δ${name}${isNoDecay(name) ? "" : " (decayed)"}`,
      relErr(delta, deltaRef, { floor: DELTA_FLOOR }),
      DELTA_TOL,
    );
  }
  return conditioned;
}

/** One engine's column of the printed report: its worst error per category, Δ elements used. */
function reportColumn(
  report: Record<string, Record<string, string>>,
  column: string,
  errs: Errors,
  conditioned: { used: number; total: number },
): void {
  for (const [category, err] of errs.worst) {
    (report[category] ??= {})[column] = err.toExponential(2);
  }
  (report["Δ elements compared"] ??= {})[column] = `${conditioned.used}/${conditioned.total}`;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * The largest torch gradient, and the parameters whose torch gradient is numerically zero
 * (max|g| ≤ 1e-12 × the largest): a relative error means nothing there, so the test checks
 * instead that tinystill's gradient is ≤ TOL × the largest gradient.
 */
function zeroGradients(ref: Map<string, F64Tensor>): { gradMax: number; zeroGrad: Set<string> } {
  const grads = [...ref].filter(([n]) => n.startsWith("grad."));
  const gradMax = Math.max(...grads.map(([, t]) => maxAbs(t.data)));
  const zeroGrad = new Set(
    grads.filter(([, t]) => maxAbs(t.data) <= 1e-12 * gradMax).map(([n]) => n.slice(5)),
  );
  return { gradMax, zeroGrad };
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_torch_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---------------------------------------------------------------------------------------------

for (const [ci, c] of CASES.entries()) {
  Deno.test({
    name:
      `torch reference: ${c.name}: forward, loss, gradients, AdamW on cpu, wasm and the ONNX engine`,
    ignore: !PYTHON,
    fn: () =>
      withTempDir(async (dir) => {
        const config = configOf(c);
        const ckpt = join(dir, "ckpt");
        await setBackend("cpu");
        const original = randomModel(config, c.heads, ci + 1);
        const before = new Map(
          [...original.params].map(([n, v]) => [n, Float32Array.from(v.dataSync())]),
        );
        await saveBert(original, ckpt);
        original.dispose();
        const inputs = inputsOf(c, config, 100 + ci);
        const { tensors: ref, metadata } = await runTorch(ckpt, inputs, dir);
        const noGrad = new Set(metadata.no_grad ? metadata.no_grad.split(",") : []);
        // The classification loss does not reach the MLM head.
        assert.deepEqual(
          [...noGrad].sort(),
          [...parameterShapes(config, c.heads).keys()]
            .filter((n) => n.startsWith("cls.predictions.")).sort(),
        );
        const { gradMax, zeroGrad } = zeroGradients(ref);
        // Only the key biases: softmax is invariant to adding q·b_k to a whole score row.
        assert.deepEqual(
          [...zeroGrad].sort(),
          Array.from({ length: config.num_hidden_layers }, (_, l) =>
            `encoder.layer.${l}.attention.self.key.bias`).sort(),
        );
        const gradNormRef = ref.get("grad_norm")!.data[0];
        assert.ok(
          gradNormRef > ADAMW.max_grad_norm,
          `gradient norm ${gradNormRef} must exceed max_grad_norm to exercise clipping`,
        );

        const report: Record<string, Record<string, string>> = {};
        const torchStep: TorchStep = { ref, noGrad, zeroGrad, gradMax, gradNormRef, before };
        for (const backend of BACKENDS) {
          await setBackend(backend);
          const errs = new Errors();
          const model = await loadBert(ckpt);
          assert.deepEqual(model.heads, c.heads);
          const batch = {
            inputIds: tf.tensor2d(inputs.input_ids, undefined, "int32"),
            attentionMask: tf.tensor2d(inputs.attention_mask, undefined, "int32"),
            tokenTypeIds: tf.tensor2d(inputs.token_type_ids, undefined, "int32"),
            labels: tf.tensor1d(inputs.labels, "int32"),
          };

          // Forward (eval).
          const out = model.forward(batch, { mlm: true });
          assert.equal(out.hiddenStates.length, config.num_hidden_layers + 1);
          assert.equal(out.attentionScores.length, config.num_hidden_layers);
          out.hiddenStates.forEach((h, i) => {
            expectShape(h, ref.get(`hidden_states.${i}`), `hidden_states.${i}`);
            errs.rel(
              "hidden states",
              `hidden_states.${i}`,
              h.dataSync(),
              ref.get(`hidden_states.${i}`),
              VALUE_FLOOR,
            );
          });
          out.attentionScores.forEach((s, l) => {
            const r = ref.get(`attention_scores.${l}`)!;
            expectShape(s, r, `attention_scores.${l}`);
            compareScores(
              errs,
              `attention_scores.${l}`,
              s.dataSync() as Float32Array,
              r,
              inputs.attention_mask,
            );
          });
          expectShape(out.pooled, ref.get("pooled"), "pooled");
          errs.rel("pooled", "pooled", out.pooled.dataSync(), ref.get("pooled"), VALUE_FLOOR);
          expectShape(out.logits!, ref.get("logits"), "logits");
          errs.rel("logits", "logits", out.logits!.dataSync(), ref.get("logits"), VALUE_FLOOR);
          if (c.heads.mlm) {
            expectShape(out.mlmLogits!, ref.get("mlm_logits"), "mlm_logits");
            errs.rel(
              "mlm logits",
              "mlm_logits",
              out.mlmLogits!.dataSync(),
              ref.get("mlm_logits"),
              VALUE_FLOOR,
            );
          } else {
            assert.equal(out.mlmLogits, undefined);
            assert.equal(ref.has("mlm_logits"), false);
          }
          tf.dispose([...out.hiddenStates, ...out.attentionScores, out.pooled, out.logits!]);
          out.mlmLogits?.dispose();

          // Loss and gradients (training mode, dropout 0), then one AdamW step with weight
          // decay and clipping on.
          const { loss, grads } = computeGradients(model, classification, batch);
          for (const [name, g] of grads) {
            assert.ok(g instanceof tf.Tensor, `grads of ${name}`);
          }
          const hostGrads = new Map([...grads].map(([n, g]) => [n, g.dataSync()]));
          const opt = new AdamW(model.params, {
            lr: ADAMW.lr,
            beta1: ADAMW.betas[0],
            beta2: ADAMW.betas[1],
            eps: ADAMW.eps,
            weightDecay: ADAMW.weight_decay,
            maxGradNorm: ADAMW.max_grad_norm,
          });
          const { gradNorm } = opt.step(grads);
          const after = new Map([...model.params].map(([n, p]) => [n, p.dataSync()]));
          const conditioned = compareTraining(
            errs,
            { loss, grads: hostGrads, gradNorm, after },
            torchStep,
          );
          opt.dispose();
          tf.dispose([...grads.values()]);
          tf.dispose(Object.values(batch));
          model.dispose();

          reportColumn(report, backend, errs, conditioned);
          assert.deepEqual(errs.failures, [], `${backend}: mismatches against torch`);
        }
        // The ONNX Runtime training engine: the same loss, gradients and AdamW step, computed
        // by tinystill's generated forward + backward + update graphs.
        {
          await setBackend("cpu");
          const errs = new Errors();
          const model = await loadBert(ckpt);
          const trainer = await OnnxTrainer.create(model, {
            objective: "classification",
            lr: () =>
              ADAMW.lr,
            beta1: ADAMW.betas[0],
            beta2: ADAMW.betas[1],
            eps: ADAMW.eps,
            weightDecay: ADAMW.weight_decay,
            maxGradNorm: ADAMW.max_grad_norm,
            threads: 1,
          });
          const batch = hostBatchOf(inputs);
          const { loss, grads } = await trainer.gradients(batch);
          const { gradNorm } = await trainer.step(batch);
          trainer.syncModel();
          const after = new Map([...model.params].map(([n, p]) => [n, p.dataSync()]));
          const conditioned = compareTraining(errs, { loss, grads, gradNorm, after }, torchStep);
          await trainer.close();
          model.dispose();
          reportColumn(report, "onnx engine", errs, conditioned);
          assert.deepEqual(errs.failures, [], `onnx engine: mismatches against torch`);
        }
        console.log(
          `max errors vs torch float64 (${c.name}; grad norm ${gradNormRef.toFixed(3)}):`,
        );
        console.table(report);
      }),
  });
}
