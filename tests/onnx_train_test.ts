/**
 * The ONNX Runtime training engine against the tfjs engine, one gradient step at a time: the loss
 * and every parameter gradient of each objective (`classification`, `regression`, `mlm`) and of
 * every distillation loss term — with dropout on (the same seeded masks), padded rows, teacher
 * tensors holding NaN at padded positions, head counts that differ both ways, a projection to a
 * wider teacher (shared and per layer) and micro-batch accumulation. Errors are per element
 * (`relErr`, tests/_util.ts). The float64 PyTorch comparison of the engine is in
 * `torch_reference_test.ts`.
 */

import assert from "node:assert/strict";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import {
  Bert,
  type BertHeads,
  dropoutKeep,
  dropoutMask,
  dropoutSeed,
  parameterShapes,
} from "../pipeline/model/bert.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { OnnxTrainer } from "../pipeline/onnx/trainer.ts";
import { buildGradGraph } from "../pipeline/onnx/train_graph.ts";
import { GraphBuildError } from "../pipeline/onnx/autodiff.ts";
import { DataParallel } from "../pipeline/train/parallel.ts";
import { AdamW } from "../pipeline/train/optim.ts";
import type { HostBatch } from "../pipeline/train/batch.ts";
import {
  addProjections,
  type DistillObjectiveOptions,
  type LossTermName,
} from "../pipeline/distill/objective.ts";
import { resolveEngine } from "../pipeline/train/engine.ts";
import { randomArray, relErr, rng } from "./_util.ts";

await setBackend("cpu");

/** Per-element relative tolerance (relErr, floor below) of the loss and every gradient. */
const TOL = 1e-4;
/**
 * relErr floor of the gradients: the models are uniform ±0.3 (see {@link randomModel}), so
 * gradients reach 1e-2 to 1; float32 rounding of a gradient entry is absolute, about 1e-7 × the
 * terms it sums, so entries below 1e-3 are held to TOL · 1e-3 = 1e-7 absolute.
 */
const FLOOR = 1e-3;

const STUDENT: Partial<BertConfig> = {
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 24,
  max_position_embeddings: 12,
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  id2label: { "0": "a", "1": "b", "2": "c" },
};

/** Every parameter random (LayerNorm weights 1 ± 0.2, the rest uniform ±0.3). */
function randomModel(config: Partial<BertConfig>, heads: BertHeads, seed: number): Bert {
  const cfg = makeConfig(config);
  const tensors = new Map<string, tf.Tensor>();
  let i = 0;
  for (const [name, shape] of parameterShapes(cfg, heads)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + ++i);
    const v = name.includes("LayerNorm.weight") ? u.map((x) => 1 + 0.2 * x) : u.map((x) => 0.3 * x);
    tensors.set(name, tf.tensor(v, shape));
  }
  return new Bert(cfg, heads, tensors);
}

/** Rows of lengths `lengths` padded to `S` (ids 0, mask 0), two segments, labels. */
function batchOf(lengths: number[], S: number, seed: number, vocab = 40): HostBatch {
  const r = rng(seed), B = lengths.length;
  const ids = new Int32Array(B * S), mask = new Int32Array(B * S), types = new Int32Array(B * S);
  const mlm = new Int32Array(B * S).fill(-100);
  lengths.forEach((len, b) => {
    for (let j = 0; j < len; j++) {
      ids[b * S + j] = 1 + Math.floor(r() * (vocab - 1));
      mask[b * S + j] = 1;
      types[b * S + j] = j >= len / 2 ? 1 : 0;
      if (j > 0 && r() < 0.3) mlm[b * S + j] = 1 + Math.floor(r() * (vocab - 1));
    }
  });
  return {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: types, shape: [B, S] },
    labels: { data: Int32Array.from(lengths, (_, b) => b % 3), shape: [B] },
    mlmLabels: { data: mlm, shape: [B, S] },
  };
}

/** Loss and gradients on the tfjs engine (one replica: the reference). */
async function tfjsGradients(
  model: Bert,
  objective: string,
  batch: HostBatch | HostBatch[],
  seed: number,
  objectiveOptions?: unknown,
) {
  const dp = await DataParallel.create(model, { replicas: 1, objective, objectiveOptions });
  try {
    const { loss, grads } = await dp.gradients(batch, seed);
    const host = new Map([...grads].map(([n, g]) => [n, Float32Array.from(g.dataSync())]));
    tf.dispose([...grads.values()]);
    return { loss, grads: host };
  } finally {
    dp.close();
  }
}

/** The ONNX engine's loss and gradients equal the tfjs engine's (per element, see TOL/FLOOR). */
async function assertSameStep(
  model: Bert,
  objective: string,
  batch: HostBatch | HostBatch[],
  seed: number,
  objectiveOptions?: unknown,
): Promise<{ loss: number; grad: number }> {
  const ref = await tfjsGradients(model, objective, batch, seed, objectiveOptions);
  const trainer = await OnnxTrainer.create(model, {
    objective,
    objectiveOptions,
    lr: () => 1e-3,
    weightDecay: 0,
    threads: 1,
  });
  try {
    const mine = await trainer.gradients(batch, seed);
    const lossErr = relErr([mine.loss], [ref.loss]);
    assert.ok(lossErr <= TOL, `${objective}: loss ${mine.loss} vs tfjs ${ref.loss}`);
    assert.deepEqual([...mine.grads.keys()].sort(), [...ref.grads.keys()].sort(), "trained set");
    let worst = 0;
    for (const [name, g] of ref.grads) {
      const e = relErr(mine.grads.get(name)!, g, { floor: FLOOR });
      assert.ok(e <= TOL, `${objective}: grad ${name}: relative error ${e.toExponential(3)}`);
      worst = Math.max(worst, e);
    }
    return { loss: lossErr, grad: worst };
  } finally {
    await trainer.close();
  }
}

Deno.test("dropoutKeep draws dropoutMask's masks (the engines share dropout)", () => {
  for (const [rate, seed] of [[0.1, 7], [0.5, dropoutSeed(123456, 3)], [0.9, -5]]) {
    const n = 1000;
    const ref = dropoutMask([n], rate, seed);
    const expected = ref.dataSync();
    ref.dispose();
    const got = dropoutKeep(n, rate, seed, new Float32Array(n), 1 / (1 - rate));
    assert.deepEqual(Array.from(got), Array.from(expected), `rate ${rate}`);
    const bits = dropoutKeep(n, rate, seed, new Uint8Array(n));
    assert.deepEqual(Array.from(bits), Array.from(expected, (x) => (x > 0 ? 1 : 0)));
    const dropped = bits.filter((b) => b === 0).length / n;
    assert.ok(Math.abs(dropped - rate) < 0.06, `dropped ${dropped}, rate ${rate}`);
  }
});

Deno.test("onnx engine = tfjs engine: classification, regression, mlm; dropout on, padding", async () => {
  const errs: Record<string, string> = {};
  const batch = batchOf([9, 5, 3, 9], 9, 1);
  {
    const m = randomModel(STUDENT, { classifier: true, mlm: true }, 1);
    for (const objective of ["classification", "mlm"]) {
      const e = await assertSameStep(m, objective, batch, 11);
      errs[objective] = `${e.grad.toExponential(2)}`;
    }
    m.dispose();
  }
  {
    const m = randomModel({ ...STUDENT, id2label: { "0": "score" } }, {
      classifier: true,
      mlm: false,
    }, 2);
    const reg = {
      ...batch,
      labels: { data: Float32Array.of(0.5, -1.2, 2, 0.1), shape: [4] },
    };
    errs.regression = (await assertSameStep(m, "regression", reg, 12)).grad.toExponential(2);
    m.dispose();
  }
  {
    // micro-batches 3 + 1 accumulate as the tfjs engine does (row-weighted)
    const m = randomModel(STUDENT, { classifier: true, mlm: false }, 3);
    const pieces = [batchOf([9, 5, 3], 9, 4), batchOf([7], 7, 5)];
    errs["classification, micro-batches"] = (await assertSameStep(
      m,
      "classification",
      pieces,
      13,
    )).grad.toExponential(2);
    m.dispose();
  }
  console.log("worst gradient relErr (onnx vs tfjs):", errs);
});

/** Teacher outputs for a batch, as the cache holds them, NaN at padded positions. */
function teacherTargets(teacher: Bert, b: HostBatch): HostBatch {
  const out: HostBatch = { ...b };
  const B = b.inputIds.shape[0], S = b.inputIds.shape[1];
  const mask = b.attentionMask.data;
  tf.tidy(() => {
    const o = teacher.forward({
      inputIds: tf.tensor2d(b.inputIds.data as Int32Array, [B, S], "int32"),
      attentionMask: tf.tensor2d(mask as Int32Array, [B, S], "int32"),
      tokenTypeIds: tf.tensor2d(b.tokenTypeIds.data as Int32Array, [B, S], "int32"),
    }, { values: true });
    const put = (key: string, t: tf.Tensor, poison: (idx: number[]) => boolean) => {
      const data = Float32Array.from(t.dataSync());
      const shape = t.shape;
      const strides = shape.map((_, i) => shape.slice(i + 1).reduce((x, y) => x * y, 1));
      for (let k = 0; k < data.length; k++) {
        const idx = strides.map((s, i) => Math.floor(k / s) % shape[i]);
        if (poison(idx)) data[k] = NaN;
      }
      out[key] = { data, shape };
    };
    const pad = (bi: number, j: number) => mask[bi * S + j] === 0;
    o.hiddenStates.forEach((h, i) => put(`t_hidden_${i}`, h, ([bi, j]) => pad(bi, j)));
    o.attentionScores.forEach((s, l) =>
      put(`t_scores_${l}`, s, ([bi, , i, j]) => pad(bi, i) || pad(bi, j))
    );
    o.values!.forEach((v, l) => put(`t_values_${l}`, v, ([bi, , j]) => pad(bi, j)));
    put("t_logits", o.logits!, () => false);
  });
  return out;
}

Deno.test("onnx engine = tfjs engine: every distillation loss term, heads and widths that differ", async () => {
  // teacher: 3 layers, 24 wide, 8 heads (2× the student's 4); a second student with 8 heads
  // against a 4-head teacher exercises head grouping on the student side
  const teacher = randomModel(
    {
      ...STUDENT,
      hidden_size: 24,
      num_attention_heads: 8,
      num_hidden_layers: 3,
      intermediate_size: 30,
    },
    { classifier: true, mlm: false },
    7,
  );
  const narrowTeacher = randomModel({ ...STUDENT, num_hidden_layers: 3 }, {
    classifier: true,
    mlm: false,
  }, 8);
  const batch = batchOf([8, 6, 2], 8, 9);
  const wide = teacherTargets(teacher, batch);
  const narrow = teacherTargets(narrowTeacher, batch);
  const all: LossTermName[] = [
    "attention_mse",
    "hidden_mse",
    "soft_ce",
    "kl",
    "cosine",
    "attention_kl",
    "value_relation",
    "logit_mse",
    "hard_ce",
  ];
  const errs: Record<string, string> = {};
  const layerMap = [0, 2, 3];
  for (const name of all) {
    // cosine compares equal widths: against the narrow (16-wide) teacher
    const widthsDiffer = name !== "cosine";
    const cases: { label: string; opts: DistillObjectiveOptions; t: HostBatch; heads: number }[] = [
      {
        label: name,
        opts: {
          terms: [{ name, weight: 1.5, temperature: 2 }],
          layerMap,
          embeddings: true,
          projection: "shared",
        },
        t: widthsDiffer ? wide : narrow,
        heads: 4,
      },
    ];
    if (name === "hidden_mse") {
      cases.push({
        label: "hidden_mse per-layer, no embeddings",
        opts: {
          terms: [{ name, weight: 1 }],
          layerMap,
          embeddings: false,
          projection: "per-layer",
        },
        t: wide,
        heads: 4,
      });
    }
    if (name === "attention_mse" || name === "attention_kl" || name === "value_relation") {
      cases.push({
        label: `${name}, student 8 heads vs teacher 4`,
        opts: { terms: [{ name, weight: 1 }], layerMap, embeddings: true, projection: "shared" },
        t: narrow,
        heads: 8,
      });
    }
    for (const c of cases) {
      const student = randomModel({ ...STUDENT, num_attention_heads: c.heads }, {
        classifier: true,
        mlm: false,
      }, 10);
      addProjections(student, c.t.t_hidden_0.shape[2], c.opts, 3);
      const e = await assertSameStep(student, "distillation", c.t, 21, c.opts);
      errs[c.label] = `loss ${e.loss.toExponential(1)}, grads ${e.grad.toExponential(2)}`;
      student.dispose();
    }
  }
  {
    // the whole TinyBERT recipe in one objective
    const opts: DistillObjectiveOptions = {
      terms: [
        { name: "attention_mse", weight: 1 },
        { name: "hidden_mse", weight: 1 },
        { name: "soft_ce", weight: 1, temperature: 1 },
      ],
      layerMap,
      embeddings: true,
      projection: "shared",
    };
    const student = randomModel(STUDENT, { classifier: true, mlm: false }, 11);
    addProjections(student, 24, opts, 4);
    const e = await assertSameStep(student, "distillation", wide, 22, opts);
    errs["attention_mse + hidden_mse + soft_ce"] = `grads ${e.grad.toExponential(2)}`;
    student.dispose();
  }
  teacher.dispose();
  narrowTeacher.dispose();
  console.table(errs);
});

Deno.test("onnx engine: clear errors for what it cannot build or run", async () => {
  const heads = { classifier: true, mlm: false };
  const spec = {
    config: makeConfig(STUDENT),
    heads,
    params: parameterShapes(makeConfig(STUDENT), heads),
    dropout: false,
  };
  assert.throws(
    () => buildGradGraph({ ...spec, objective: "contrastive" }),
    (e: Error) =>
      e instanceof GraphBuildError && /objective 'contrastive' has no ONNX graph/.test(e.message),
  );
  assert.throws(
    () => buildGradGraph({ ...spec, objective: "mlm" }),
    (e: Error) => e instanceof GraphBuildError && /needs a model with an MLM head/.test(e.message),
  );
  // a distillation batch without the teacher output its loss reads
  const student = randomModel(STUDENT, { classifier: true, mlm: false }, 12);
  const trainer = await OnnxTrainer.create(student, {
    objective: "distillation",
    objectiveOptions: {
      terms: [{ name: "soft_ce", weight: 1 }],
      layerMap: [0, 1, 2],
      embeddings: true,
      projection: "shared",
    },
    lr: () => 1e-3,
    weightDecay: 0,
  });
  await assert.rejects(
    () => trainer.step(batchOf([4, 3], 4, 1)),
    (e: Error) =>
      e instanceof GraphBuildError && /distillation batch has no t_logits/.test(e.message),
  );
  await trainer.close();
  student.dispose();
  await assert.rejects(
    () => resolveEngine("onnx", "contrastive"),
    /engine: onnx has no training graph for objective 'contrastive'/,
  );
  assert.equal((await resolveEngine("auto", "contrastive")).name, "tfjs");
  assert.equal((await resolveEngine("auto", "mlm")).name, "onnx");
});

Deno.test("onnx engine, 2 replicas: the tfjs engine's 2-replica steps; replicas bit-identical", async () => {
  const steps = 4;
  const pieces = (
    s: number,
  ) => [batchOf([9, 5, 3, 9, 7], 9, 30 + s), batchOf([6, 4, 2], 6, 40 + s)];
  const opts = { weightDecay: 0.01, maxGradNorm: 0.5 };
  // tfjs: DataParallel (2 replicas) + AdamW
  const ref = randomModel(STUDENT, { classifier: true, mlm: false }, 13);
  const dp = await DataParallel.create(ref, { replicas: 2, objective: "classification" });
  const opt = new AdamW(ref.params, { lr: 1e-2, ...opts });
  const refLosses: number[] = [];
  for (let s = 1; s <= steps; s++) refLosses.push((await dp.step(pieces(s), opt, s)).loss);
  dp.close();
  opt.dispose();
  // onnx: 2 replicas of one thread each
  const model = randomModel(STUDENT, { classifier: true, mlm: false }, 13);
  const trainer = await OnnxTrainer.create(model, {
    objective: "classification",
    lr: () => 1e-2,
    ...opts,
    threads: 1,
    replicas: 2,
  });
  try {
    for (let s = 1; s <= steps; s++) {
      const { loss } = await trainer.step(pieces(s), s);
      assert.ok(
        relErr([loss], [refLosses[s - 1]]) <= TOL,
        `step ${s}: loss ${loss} vs tfjs ${refLosses[s - 1]}`,
      );
    }
    const [lead, worker] = await trainer.replicaWeights();
    for (const name of Object.keys(lead)) {
      const a = lead[name], b = worker[name];
      for (let j = 0; j < a.length; j++) {
        if (!Object.is(a[j], b[j])) assert.fail(`${name}[${j}]: lead ${a[j]}, worker ${b[j]}`);
      }
    }
    trainer.syncModel();
    let worst = 0;
    for (const [name, v] of model.params) {
      // the key biases' gradient is 0 in exact arithmetic (softmax ignores a constant per row):
      // Adam turns both engines' rounding noise into lr-sized steps, so they are not comparable
      if (/attention\.self\.key\.bias$/.test(name)) continue;
      const e = relErr(v.dataSync(), ref.params.get(name)!.dataSync(), { floor: 0.1 });
      worst = Math.max(worst, e);
      assert.ok(e <= TOL, `${name}: relative error ${e.toExponential(3)} after ${steps} steps`);
    }
    console.log(
      `2 replicas, ${steps} steps: worst weight relErr vs tfjs ${worst.toExponential(2)}`,
    );
  } finally {
    await trainer.close();
    model.dispose();
    ref.dispose();
  }
});

// --- per-token heads: token classification and extractive QA ------------------------------------

const TOKEN_HEADS: BertHeads = { classifier: true, tokenClassifier: true, mlm: false };
const QA_HEADS: BertHeads = { classifier: false, qa: true, mlm: false };

/**
 * {@link batchOf} plus the per-token gold: `tokenLabels [B, S]` (a tag on about two thirds of the
 * real tokens, −100 on the rest and on padding) and `startPositions`/`endPositions [B]` inside
 * each row's real tokens (start ≤ end).
 */
function tokenBatchOf(lengths: number[], S: number, seed: number): HostBatch {
  const b = batchOf(lengths, S, seed);
  const r = rng(seed + 500), B = lengths.length;
  const tags = new Int32Array(B * S).fill(-100);
  const starts = new Int32Array(B), ends = new Int32Array(B);
  lengths.forEach((len, i) => {
    for (let j = 0; j < len; j++) if (r() < 0.67) tags[i * S + j] = Math.floor(r() * 3);
    const a = Math.floor(r() * len), e = Math.floor(r() * len);
    [starts[i], ends[i]] = [Math.min(a, e), Math.max(a, e)];
  });
  return {
    ...b,
    tokenLabels: { data: tags, shape: [B, S] },
    startPositions: { data: starts, shape: [B] },
    endPositions: { data: ends, shape: [B] },
  };
}

/**
 * A per-token teacher's `t_logits` for a batch, as the cache holds them: `[B, S, C]` token logits
 * or `[B, S, 2]` start/end logits, NaN at padded positions.
 */
function tokenTeacherTargets(teacher: Bert, b: HostBatch): HostBatch {
  const [B, S] = b.inputIds.shape;
  const mask = b.attentionMask.data;
  const logits = tf.tidy(() => {
    const o = teacher.forward({
      inputIds: tf.tensor2d(b.inputIds.data as Int32Array, [B, S], "int32"),
      attentionMask: tf.tensor2d(mask as Int32Array, [B, S], "int32"),
      tokenTypeIds: tf.tensor2d(b.tokenTypeIds.data as Int32Array, [B, S], "int32"),
    });
    return (o.tokenLogits ?? o.spanLogits)!;
  });
  const data = Float32Array.from(logits.dataSync());
  const K = logits.shape[2];
  logits.dispose();
  for (let i = 0; i < B * S; i++) if (mask[i] === 0) data.fill(NaN, i * K, (i + 1) * K);
  return { ...b, t_logits: { data, shape: [B, S, K] } };
}

/**
 * One AdamW step on both engines from the same weights: the weights after it agree (and the
 * parameters the loss does not reach, the pooler here, stay as they were on both). Adam's first
 * step is `lr · g / (|g| + eps)`, which turns float32 noise on a gradient entry near eps into
 * an lr-sized difference; eps = 1 makes it ≈ `lr · g` so the comparison measures the gradients'
 * agreement, and lr = 0.5 makes a wrong or missing update show at the 1e-2 level.
 */
async function assertSameUpdate(
  make: () => Bert,
  objective: string,
  batch: HostBatch | HostBatch[],
  seed: number,
  objectiveOptions?: unknown,
): Promise<number> {
  const hyper = { weightDecay: 0.01, maxGradNorm: 1, eps: 1 };
  const ref = make();
  const before = new Map([...ref.params].map(([n, v]) => [n, Float32Array.from(v.dataSync())]));
  const dp = await DataParallel.create(ref, { replicas: 1, objective, objectiveOptions });
  const opt = new AdamW(ref.params, { lr: 0.5, ...hyper });
  const refLoss = (await dp.step(batch, opt, seed)).loss;
  dp.close();
  opt.dispose();
  const model = make();
  const trainer = await OnnxTrainer.create(model, {
    objective,
    objectiveOptions,
    lr: () => 0.5,
    ...hyper,
    threads: 1,
  });
  let worst = 0;
  try {
    const { loss } = await trainer.step(batch, seed);
    assert.ok(relErr([loss], [refLoss]) <= TOL, `${objective}: step loss ${loss} vs ${refLoss}`);
    trainer.syncModel();
    for (const [name, v] of model.params) {
      const mine = v.dataSync(), theirs = ref.params.get(name)!.dataSync();
      if (name.startsWith("pooler.")) {
        assert.deepEqual(Array.from(mine), Array.from(before.get(name)!), `${name} moved`);
        assert.deepEqual(Array.from(theirs), Array.from(before.get(name)!), `${name} moved`);
      }
      const e = relErr(mine, theirs, { floor: 0.1 });
      worst = Math.max(worst, e);
      assert.ok(
        e <= TOL,
        `${objective}: ${name} after a step: relative error ${e.toExponential(3)}`,
      );
    }
  } finally {
    await trainer.close();
    model.dispose();
    ref.dispose();
  }
  return worst;
}

Deno.test("onnx engine = tfjs engine: token_classification and span; dropout on, padding, micro-batches, a step", async () => {
  const errs: Record<string, string> = {};
  const batch = tokenBatchOf([9, 5, 3, 9], 9, 61);
  const cases: [string, BertHeads, string][] = [
    ["token_classification", TOKEN_HEADS, "token_classification"],
    ["span", QA_HEADS, "span"],
  ];
  for (const [label, heads, objective] of cases) {
    const m = randomModel(STUDENT, heads, 62);
    const e = await assertSameStep(m, objective, batch, 15);
    // the pooler exists but nothing reads it: no gradient, as on tfjs
    const trainer = await OnnxTrainer.create(m, { objective, lr: () => 1e-3, weightDecay: 0 });
    const { grads } = await trainer.gradients(batch, 15);
    await trainer.close();
    assert.ok(!grads.has("pooler.dense.weight"), `${label}: the pooler is not trained`);
    assert.ok(grads.has(heads.qa ? "qa_outputs.weight" : "classifier.weight"));
    const pieces = [tokenBatchOf([9, 5, 3], 9, 63), tokenBatchOf([7, 2], 7, 64)];
    const em = await assertSameStep(m, objective, pieces, 16);
    m.dispose();
    const step = await assertSameUpdate(
      () => randomModel(STUDENT, heads, 62),
      objective,
      batch,
      17,
    );
    errs[label] = `loss ${e.loss.toExponential(1)}, grads ${e.grad.toExponential(2)}, ` +
      `micro-batches ${em.grad.toExponential(2)}, weights after a step ${step.toExponential(2)}`;
  }
  {
    // no labelled token at all: loss 0, every reached gradient 0 (as tfjs' sum·0)
    const m = randomModel(STUDENT, TOKEN_HEADS, 65);
    const none = tokenBatchOf([4, 2], 4, 66);
    none.tokenLabels = { data: new Int32Array(8).fill(-100), shape: [2, 4] };
    const trainer = await OnnxTrainer.create(m, {
      objective: "token_classification",
      lr: () => 1e-3,
      weightDecay: 0,
    });
    const { loss, grads } = await trainer.gradients(none, 1);
    await trainer.close();
    assert.equal(loss, 0);
    for (const [name, g] of grads) assert.ok(g.every((x) => x === 0), `${name}: nonzero`);
    m.dispose();
  }
  console.table(errs);
});

Deno.test("onnx engine = tfjs engine: distillation prediction terms on token-classification and QA students", async () => {
  // teachers of the same head, wider and deeper; padded rows, NaN at padded positions
  const wideCfg = {
    ...STUDENT,
    hidden_size: 24,
    num_attention_heads: 8,
    num_hidden_layers: 3,
    intermediate_size: 30,
  };
  const batch = tokenBatchOf([8, 6, 2], 8, 71);
  const errs: Record<string, string> = {};
  const teachers: Bert[] = [];
  const sameEncoderOf = () => {
    const m = randomModel(wideCfg, { classifier: true, mlm: false }, 72);
    teachers.push(m);
    return m;
  };
  const tokenTargetsOf = (heads: BertHeads, b: HostBatch) => {
    const m = randomModel(wideCfg, heads, 72);
    const out = tokenTeacherTargets(m, b);
    m.dispose();
    return out;
  };
  for (const [kind, heads] of [["token", TOKEN_HEADS], ["qa", QA_HEADS]] as const) {
    const teacher = randomModel(wideCfg, heads, 72);
    const b = tokenTeacherTargets(teacher, batch);
    teacher.dispose();
    if (kind === "token") {
      // a student with both per-token heads: the prediction terms read the token classifier
      // (as predictionRows does); qa_outputs gets no gradient
      const both = randomModel(STUDENT, { ...TOKEN_HEADS, qa: true }, 75);
      const opts: DistillObjectiveOptions = {
        terms: [{ name: "soft_ce", weight: 1 }, { name: "hard_ce", weight: 1 }],
        layerMap: [0, 2, 3],
        embeddings: true,
        projection: "shared",
      };
      const e = await assertSameStep(both, "distillation", b, 26, opts);
      errs["token + QA heads: soft_ce + hard_ce"] = `grads ${e.grad.toExponential(2)}`;
      both.dispose();
    }
    const termCases: [string, DistillObjectiveOptions["terms"]][] = [
      ["soft_ce", [{ name: "soft_ce", weight: 1.5, temperature: 2 }]],
      ["soft_ce T=1", [{ name: "soft_ce", weight: 1 }]],
      ["kl", [{ name: "kl", weight: 1.5, temperature: 2 }]],
      ["logit_mse", [{ name: "logit_mse", weight: 1.5 }]],
      ["hard_ce", [{ name: "hard_ce", weight: 1.5 }]],
      ["soft_ce + hard_ce", [
        { name: "soft_ce", weight: 0.5, temperature: 1 },
        { name: "hard_ce", weight: 0.5 },
      ]],
    ];
    for (const [label, terms] of termCases) {
      const opts: DistillObjectiveOptions = {
        terms,
        layerMap: [0, 2, 3],
        embeddings: true,
        projection: "shared",
      };
      const student = randomModel(STUDENT, heads, 73);
      const e = await assertSameStep(student, "distillation", b, 23, opts);
      errs[`${kind}: ${label}`] = `loss ${e.loss.toExponential(1)}, grads ${
        e.grad.toExponential(2)
      }`;
      student.dispose();
    }
    {
      // the TinyBERT recipe on a per-token student (intermediate + prediction terms), one step
      const opts: DistillObjectiveOptions = {
        terms: [
          { name: "attention_mse", weight: 1 },
          { name: "hidden_mse", weight: 1 },
          { name: "soft_ce", weight: 1 },
        ],
        layerMap: [0, 2, 3],
        embeddings: true,
        projection: "shared",
      };
      // attention and hidden targets from a sequence-classification teacher with the same encoder
      // (randomModel seeds parameters by position, and every head's come after the encoder's)
      const tb = tokenTargetsOf(heads, batch);
      const full = teacherTargets(sameEncoderOf(), batch);
      const mixed: HostBatch = { ...full, ...tb };
      const make = () => {
        const s = randomModel(STUDENT, heads, 74);
        addProjections(s, 24, opts, 5);
        return s;
      };
      const student = make();
      const e = await assertSameStep(student, "distillation", mixed, 24, opts);
      const step = await assertSameUpdate(make, "distillation", mixed, 25, opts);
      // micro-batches padded to different lengths share one graph (S is symbolic)
      const shorter = tokenBatchOf([5, 3], 5, 76);
      const pieces = [
        mixed,
        { ...teacherTargets(sameEncoderOf(), shorter), ...tokenTargetsOf(heads, shorter) },
      ];
      const em = await assertSameStep(student, "distillation", pieces, 27, opts);
      const trainer = await OnnxTrainer.create(student, {
        objective: "distillation",
        objectiveOptions: opts,
        lr: () => 1e-3,
        weightDecay: 0,
      });
      await trainer.gradients(pieces, 1);
      await trainer.gradients(pieces.toReversed(), 2);
      assert.equal(trainer.gradGraphBuilds, 1, "one graph for every sequence length");
      await trainer.close();
      student.dispose();
      errs[`${kind}: attention_mse + hidden_mse + soft_ce`] = `grads ${e.grad.toExponential(2)}, ` +
        `micro-batches S = 8, 5 ${em.grad.toExponential(2)}, ` +
        `weights after a step ${step.toExponential(2)}`;
    }
  }
  for (const m of teachers) m.dispose();
  console.table(errs);
});

Deno.test("resolveEngine: token and QA heads train on onnx when the objective has a graph", async () => {
  const auto = async (objective: string, heads: BertHeads) =>
    (await resolveEngine("auto", objective, heads)).name;
  assert.equal(await auto("token_classification", TOKEN_HEADS), "onnx");
  assert.equal(await auto("span", QA_HEADS), "onnx");
  assert.equal(await auto("distillation", TOKEN_HEADS), "onnx");
  assert.equal(await auto("distillation", QA_HEADS), "onnx");
  assert.equal(await auto("classification", { classifier: true, mlm: false }), "onnx");
  // heads the objective cannot use: tfjs (which reports it), with the reason
  const r = await resolveEngine("auto", "span", TOKEN_HEADS);
  assert.equal(r.name, "tfjs");
  assert.match(r.reason, /needs a model with a QA head/);
  assert.equal(await auto("classification", TOKEN_HEADS), "tfjs");
  assert.equal(await auto("token_classification", { classifier: true, mlm: false }), "tfjs");
  await assert.rejects(
    () => resolveEngine("onnx", "token_classification", QA_HEADS),
    /engine: onnx: objective 'token_classification' needs a token classifier/,
  );
  // and the graph builder says the same
  const cfg = makeConfig(STUDENT);
  assert.throws(
    () =>
      buildGradGraph({
        config: cfg,
        heads: TOKEN_HEADS,
        params: parameterShapes(cfg, TOKEN_HEADS),
        objective: "classification",
        dropout: false,
      }),
    (e: Error) => e instanceof GraphBuildError && /needs a sequence classifier/.test(e.message),
  );
});
