/**
 * The trainer (`Trainer`), one for every engine, on both executors of its gradient graph
 * (ONNX Runtime and tfjs-wasm; tfjs-cpu where cheap), checked against invariants and a
 * hand-written AdamW rather than against another engine: a step is the gradients followed by
 * AdamW (clipping, decay only where it belongs, unreached parameters untouched); micro-batches
 * accumulate to the whole batch's loss and gradients; dropout masks follow the seed; a NaN/Inf
 * loss applies nothing; the optimiser state round-trips; objectives the heads cannot serve are
 * refused on every engine; one graph serves every sequence length. The numerical oracle of the
 * graphs themselves (forward, losses, gradients against float64 PyTorch) is
 * `torch_reference_test.ts`; replicas are in `parallel_test.ts`.
 */

import assert from "node:assert/strict";
import {
  Bert,
  type BertHeads,
  dropoutKeep,
  dropoutSeed,
  parameterShapes,
} from "../pipeline/model/bert.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { Trainer, type TrainerOptions } from "../pipeline/train/trainer.ts";
import { buildGradGraph } from "../pipeline/graph/train_graph.ts";
import { GraphBuildError } from "../pipeline/graph/tape.ts";
import { type HostBatch, sliceBatch } from "../pipeline/data/batch.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import { NonFiniteLossError } from "../pipeline/errors.ts";
import { resolveEngine } from "../pipeline/train/engine.ts";
import { assertSameBytes } from "./_train_data.ts";
import { randomArray, relErr, rng } from "./_util.ts";

/** The executors every training test runs on. */
const EXECUTORS: { label: string; engine: EngineRef }[] = [
  { label: "onnxruntime", engine: { kind: "onnxruntime" } },
  { label: "tfjs-wasm", engine: { kind: "tfjs", backend: "wasm" } },
];

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

const SEQUENCE_HEADS: BertHeads = { classifier: true, mlm: false };
const TOKEN_HEADS: BertHeads = { classifier: true, tokenClassifier: true, mlm: false };
const QA_HEADS: BertHeads = { classifier: false, qa: true, mlm: false };

/**
 * Every parameter random (LayerNorm weights 1 ± 0.2, the rest uniform ±0.3): gradients of order
 * 1e-2 to 1, far above float32 noise (a fresh N(0, 0.02) model's are near it).
 */
function randomModel(config: Partial<BertConfig>, heads: BertHeads, seed: number): Bert {
  const cfg = makeConfig(config);
  const params = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(cfg, heads)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + ++i);
    const v = name.includes("LayerNorm.weight") ? u.map((x) => 1 + 0.2 * x) : u.map((x) => 0.3 * x);
    params.set(name, { data: v, shape });
  }
  return new Bert(cfg, heads, params);
}

/**
 * Rows of lengths `lengths` padded to `S` (ids 0, mask 0), two segments, class labels, and the
 * per-token gold: `tokenLabels` (a tag on about two thirds of the real tokens, −100 elsewhere),
 * `startPositions ≤ endPositions` inside each row.
 */
function batchOf(lengths: number[], S: number, seed: number): HostBatch {
  const r = rng(seed), B = lengths.length;
  const ids = new Int32Array(B * S), mask = new Int32Array(B * S), types = new Int32Array(B * S);
  const tags = new Int32Array(B * S).fill(-100);
  const starts = new Int32Array(B), ends = new Int32Array(B);
  lengths.forEach((len, b) => {
    for (let j = 0; j < len; j++) {
      ids[b * S + j] = 1 + Math.floor(r() * 39);
      mask[b * S + j] = 1;
      types[b * S + j] = j >= len / 2 ? 1 : 0;
      if (r() < 0.67) tags[b * S + j] = Math.floor(r() * 3);
    }
    const x = Math.floor(r() * len), y = Math.floor(r() * len);
    [starts[b], ends[b]] = [Math.min(x, y), Math.max(x, y)];
  });
  return {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: types, shape: [B, S] },
    labels: { data: Int32Array.from(lengths, (_, b) => b % 3), shape: [B] },
    tokenLabels: { data: tags, shape: [B, S] },
    startPositions: { data: starts, shape: [B] },
    endPositions: { data: ends, shape: [B] },
  };
}

/** A trainer on `engine`, one thread (deterministic), learning rate `lr` throughout. */
function trainerOn(
  model: Bert,
  engine: EngineRef,
  opts: Partial<TrainerOptions> & { objective: string },
): Promise<Trainer> {
  return Trainer.create(model, { lr: () => 1e-3, weightDecay: 0, threads: 1, engine, ...opts });
}

/** Every weight of a trainer, or of a model, as a name → bytes map. */
function snapshot(model: Bert): Map<string, Float32Array> {
  return new Map([...model.params].map(([n, p]) => [n, Float32Array.from(p.data)]));
}

Deno.test("dropoutKeep: mulberry32 draws kept where u ≥ rate; bits and scaled masks agree; dropoutSeed", () => {
  for (const [rate, seed] of [[0.1, 7], [0.5, dropoutSeed(123456, 3)], [0.9, -5]]) {
    const n = 1000;
    // the test's own mulberry32 (tests/_util.ts): entry i is kept when the i-th 32-bit draw is at
    // least floor(rate·2³²)
    const r = rng(seed >>> 0), threshold = Math.floor(rate * 2 ** 32);
    const expected = Array.from({ length: n }, () => Math.round(r() * 2 ** 32) >= threshold);
    const bits = dropoutKeep(n, rate, seed, new Uint8Array(n));
    assert.deepEqual(Array.from(bits), expected.map((k) => (k ? 1 : 0)), `rate ${rate}`);
    const scaled = dropoutKeep(n, rate, seed, new Float32Array(n + 5), 1 / (1 - rate));
    assert.deepEqual(
      Array.from(scaled.subarray(0, n)),
      expected.map((k) => (k ? Math.fround(1 / (1 - rate)) : 0)),
    );
    assert.deepEqual(Array.from(scaled.subarray(n)), [0, 0, 0, 0, 0], "wrote past n");
    const dropped = bits.filter((b) => b === 0).length / n;
    assert.ok(Math.abs(dropped - rate) < 0.06, `dropped ${dropped}, rate ${rate}`);
  }
  // site k of a forward seeded s draws from s·100003 + k: sites and steps get different masks
  assert.equal(dropoutSeed(2, 3), 200009);
  assert.equal(dropoutSeed(0, 1), 1);
  assert.throws(() => dropoutKeep(10, 0.1, 1, new Uint8Array(9)), /9 entries for 10/);
});

/**
 * AdamW's first step written out independently of `train/optim.ts` (torch.optim.AdamW with
 * clip_grad_norm_ applied first): m = (1 − β1)·c·g, v = (1 − β2)·(c·g)², and
 * p − lr·(m/(1 − β1)) / (√(v/(1 − β2)) + ε) − lr·wd·p, wd only for weights that are neither a
 * bias nor a LayerNorm parameter.
 */
function firstAdamStep(
  p: Float32Array,
  g: Float32Array,
  o: { lr: number; wd: number; clip: number; decay: boolean },
): Float64Array {
  const b1 = 0.9, b2 = 0.999, eps = 1e-6;
  return Float64Array.from(p, (x, j) => {
    const cg = o.clip * g[j];
    const m = (1 - b1) * cg, v = (1 - b2) * cg * cg;
    return x - (o.lr * (m / (1 - b1))) / (Math.sqrt(v / (1 - b2)) + eps) -
      (o.decay ? o.lr * o.wd * x : 0);
  });
}

for (const { label, engine } of EXECUTORS) {
  Deno.test(`trainer (${label}): a step is the gradients, clipped by their global norm, then AdamW; decay only on weights; unreached parameters untouched`, async () => {
    // a token-classification model: the pooler exists but nothing reads it. Dropout on.
    const model = randomModel(STUDENT, TOKEN_HEADS, 1);
    const before = snapshot(model);
    const batch = batchOf([9, 5, 3, 9], 9, 2);
    const hyper = { lr: 1e-2, wd: 0.3, maxGradNorm: 0.05 };
    const probe = await trainerOn(model, engine, { objective: "token_classification" });
    const { loss, grads } = await probe.gradients(batch, 5);
    await probe.close();
    const trainer = await trainerOn(model, engine, {
      objective: "token_classification",
      lr: () => hyper.lr,
      weightDecay: hyper.wd,
      maxGradNorm: hyper.maxGradNorm,
    });
    try {
      const res = await trainer.step(batch, 5);
      assert.equal(res.loss, loss, "the step's loss is the gradients' loss");
      assert.equal(res.lr, hyper.lr);
      assert.equal(trainer.stepCount, 1);
      let sq = 0;
      for (const g of grads.values()) for (const x of g) sq += x * x;
      // the graph sums the squares in float32: agreement to float32 rounding
      assert.ok(relErr([res.gradNorm], [Math.sqrt(sq)]) < 1e-5, `|g| ${res.gradNorm}`);
      const clip = hyper.maxGradNorm / (Math.sqrt(sq) + 1e-6);
      assert.ok(clip < 0.5, `clipping is active (factor ${clip})`);
      assert.ok(!grads.has("pooler.dense.weight") && grads.has("classifier.weight"));
      const after = trainer.weights();
      assert.deepEqual(Object.keys(after), [...model.params.keys()]);
      for (const [name, w0] of before) {
        const g = grads.get(name);
        if (!g) {
          // no gradient: neither updated nor decayed (weight decay is on)
          assertSameBytes(after[name], w0, `${name} (unreached)`);
          continue;
        }
        const decay = !(name.endsWith(".bias") || name.includes("LayerNorm"));
        const want = firstAdamStep(w0, g, { lr: hyper.lr, wd: hyper.wd, clip, decay });
        // compare the updates (|Δ| ≤ lr(1 + wd·|w|)): float32 storage and the float32 norm
        const got = Float64Array.from(after[name], (x, j) => x - w0[j]);
        // floor lr/10: a tiny update (a gradient that is 0 up to rounding, the key biases') is held
        // to 1e-5·lr absolute, above the float32 rounding of the stored weight (≤ 6e-8 here)
        const e = relErr(got, want.map((x, j) => x - w0[j]), { floor: hyper.lr / 10 });
        assert.ok(e < 1e-4, `${name}: update differs by ${e.toExponential(2)} (relative)`);
      }
      // the model's own arrays follow only at syncModel (a checkpoint, an evaluation, close)
      assertSameBytes(model.p("classifier.weight").data, before.get("classifier.weight")!, "early");
      trainer.syncModel();
      for (const [name, p] of model.params) assertSameBytes(p.data, after[name], `synced ${name}`);
    } finally {
      await trainer.close();
    }
  });
}

Deno.test("trainer: micro-batches accumulate to the whole batch's loss and every gradient, on every executor", async () => {
  // no dropout (micro-batch k draws its own masks). 8 rows of lengths 2..12 cut 3 + 3 + 2, each
  // micro-batch padded to its own longest row: a plain mean or a sum of the pieces' losses and
  // gradients is wrong, the row-weighted mean is the whole batch's (classification and
  // regression are means over rows). Per element, relErr floor 1e-3 (gradients here are
  // 1e-2..1; float32 rounding of an entry is absolute, ~1e-7 × the terms it sums).
  const lengths = [9, 2, 12, 5, 7, 3, 12, 4];
  const whole = batchOf(lengths, 12, 11);
  const targets = { data: randomArray(8, 12), shape: [8] };
  /** Rows [a, b) of `batch`, re-padded to their own longest row. */
  const rows = (batch: HostBatch, a: number, b: number): HostBatch => {
    const S = Math.max(...lengths.slice(a, b)), cut = sliceBatch(batch, a, b);
    for (const [k, v] of Object.entries(cut)) {
      if (v.shape.length !== 2) continue;
      const data = v.data.slice(0, (b - a) * S);
      for (let r = 0; r < b - a; r++) data.set(v.data.subarray(r * 12, r * 12 + S), r * S);
      cut[k] = { data, shape: [b - a, S] };
    }
    return cut;
  };
  const pieces = (batch: HostBatch) => [[0, 3], [3, 6], [6, 8]].map(([a, b]) => rows(batch, a, b));
  const executors = [...EXECUTORS, { label: "tfjs-cpu", engine: { kind: "tfjs", backend: "cpu" } }];
  for (const { label, engine } of executors as typeof EXECUTORS) {
    // (tfjs-cpu, the slow pure-JS backend: classification only)
    for (
      const objective of ["classification", "regression"].slice(0, label === "tfjs-cpu" ? 1 : 2)
    ) {
      const cfg = objective === "regression" ? { ...STUDENT, id2label: { "0": "score" } } : STUDENT;
      const model = randomModel(cfg, SEQUENCE_HEADS, 3);
      const batch = objective === "regression" ? { ...whole, labels: targets } : whole;
      const trainer = await trainerOn(model, engine, { objective, dropout: false });
      try {
        const full = await trainer.gradients(batch, 1);
        const acc = await trainer.gradients(pieces(batch), 1);
        const what = `${label}, ${objective}`;
        assert.ok(relErr([acc.loss], [full.loss]) < 1e-5, `${what}: ${acc.loss} vs ${full.loss}`);
        assert.deepEqual([...acc.grads.keys()], [...full.grads.keys()]);
        for (const [name, g] of full.grads) {
          const e = relErr(acc.grads.get(name)!, g, { floor: 1e-3 });
          assert.ok(e < 1e-4, `${what}: ${name}: ${e.toExponential(2)}`);
        }
      } finally {
        await trainer.close();
      }
    }
  }
});

for (const { label, engine } of EXECUTORS) {
  Deno.test(`trainer (${label}): dropout masks follow the seed: the same seed gives the same step, another seed another; none without dropout`, async () => {
    const batch = batchOf([9, 5, 3, 9], 9, 21);
    const run = async (seed: number, dropout = true) => {
      const model = randomModel(STUDENT, SEQUENCE_HEADS, 4);
      const trainer = await trainerOn(model, engine, { objective: "classification", dropout });
      try {
        const { loss } = await trainer.step(batch, seed);
        return { loss, weights: trainer.weights() };
      } finally {
        await trainer.close();
      }
    };
    const a = await run(5), b = await run(5), c = await run(6);
    for (const name of Object.keys(a.weights)) {
      assertSameBytes(b.weights[name], a.weights[name], `same seed: ${name}`);
    }
    assert.equal(b.loss, a.loss);
    assert.notEqual(c.loss, a.loss, "another seed, the same masks");
    const moved = Object.keys(a.weights).filter((n) =>
      a.weights[n].some((x, j) => x !== c.weights[n][j])
    );
    assert.ok(moved.includes("encoder.layer.0.attention.self.query.weight"), `${moved}`);
    // without dropout the seed changes nothing, and the loss is not a masked one
    const d = await run(5, false), e = await run(6, false);
    for (const name of Object.keys(d.weights)) {
      assertSameBytes(e.weights[name], d.weights[name], `no dropout: ${name}`);
    }
    assert.ok(d.loss !== a.loss && d.loss !== c.loss);
  });
}

for (const { label, engine } of EXECUTORS) {
  Deno.test(`trainer (${label}): a NaN or Inf loss throws before anything is applied; the next step is unaffected`, async () => {
    const cfg = { ...STUDENT, id2label: { "0": "score" } };
    const good = batchOf([7, 4, 6], 7, 31);
    good.labels = { data: Float32Array.of(0.5, -1, 2), shape: [3] };
    for (const poison of [NaN, Infinity]) {
      const model = randomModel(cfg, SEQUENCE_HEADS, 5);
      const trainer = await trainerOn(model, engine, { objective: "regression", weightDecay: 0.1 });
      const ref = await trainerOn(randomModel(cfg, SEQUENCE_HEADS, 5), engine, {
        objective: "regression",
        weightDecay: 0.1,
      });
      try {
        await trainer.step(good, 1);
        await ref.step(good, 1);
        const weights = trainer.weights(), state = trainer.getState();
        const bad = { ...good, labels: { data: Float32Array.of(0.5, poison, 2), shape: [3] } };
        // two micro-batches: the poisoned row in the second
        await assert.rejects(
          () => trainer.step([good, bad], 2),
          (e: unknown) => {
            assert.ok(e instanceof NonFiniteLossError, String(e));
            assert.ok(Object.is(e.loss, poison), `loss ${e.loss}`);
            assert.equal(e.step, 2);
            return true;
          },
        );
        assert.equal(trainer.stepCount, 1);
        const now = trainer.weights(), s = trainer.getState();
        for (const name of Object.keys(weights)) {
          assertSameBytes(now[name], weights[name], `${poison}: ${name}`);
          assertSameBytes(s.m[name], state.m[name], `${poison}: m ${name}`);
          assertSameBytes(s.v[name], state.v[name], `${poison}: v ${name}`);
        }
        // the next good step is the one a trainer that never saw the poison takes
        await trainer.step([good, good], 3);
        await ref.step([good, good], 3);
        const mine = trainer.weights(), theirs = ref.weights();
        for (const name of Object.keys(mine)) assertSameBytes(mine[name], theirs[name], name);
      } finally {
        await trainer.close();
        await ref.close();
      }
    }
  });
}

for (const { label, engine } of EXECUTORS) {
  Deno.test(`trainer (${label}): the optimiser state round-trips: 2 steps, then a fresh trainer from getState, equal 4 steps straight, bit for bit`, async () => {
    const batches = [0, 1, 2, 3].map((s) => batchOf([8, 5, 6], 8, 40 + s));
    const opts = {
      objective: "classification",
      lr: (s: number) => 1e-2 / s,
      weightDecay: 0.01,
      maxGradNorm: 1,
    };
    const straight = randomModel(STUDENT, SEQUENCE_HEADS, 6);
    const a = await trainerOn(straight, engine, opts);
    for (let s = 0; s < 4; s++) await a.step(batches[s], s);
    const want = a.weights();
    await a.close();
    const model = randomModel(STUDENT, SEQUENCE_HEADS, 6);
    const b = await trainerOn(model, engine, opts);
    for (let s = 0; s < 2; s++) await b.step(batches[s], s);
    const state = b.getState();
    await b.close(); // syncs the weights into the model
    assert.equal(state.step, 2);
    const c = await trainerOn(model, engine, opts);
    try {
      c.setState(state);
      assert.equal(c.stepCount, 2);
      assert.equal(c.currentLr(), 1e-2 / 3, "the schedule continues at step 3");
      for (let s = 2; s < 4; s++) await c.step(batches[s], s);
      const got = c.weights();
      for (const name of Object.keys(want)) assertSameBytes(got[name], want[name], name);
      // a state of another model is refused, naming the parameter
      const other = { ...state, m: { ...state.m, "classifier.bias": new Float32Array(2) } };
      assert.throws(() => c.setState(other), /state for classifier\.bias .*wrong size/);
    } finally {
      await c.close();
    }
  });
}

for (const { label, engine } of EXECUTORS) {
  Deno.test(`trainer (${label}): per-token heads: no labelled token gives loss 0 and zero gradients; the pooler is not trained`, async () => {
    for (
      const [objective, heads] of [["token_classification", TOKEN_HEADS], [
        "span",
        QA_HEADS,
      ]] as const
    ) {
      const model = randomModel(STUDENT, heads, 7);
      const trainer = await trainerOn(model, engine, { objective });
      try {
        const { grads } = await trainer.gradients(batchOf([6, 4], 6, 8), 1);
        assert.ok(!grads.has("pooler.dense.weight"), `${objective}: the pooler is trained`);
        assert.ok(grads.has(heads.qa ? "qa_outputs.weight" : "classifier.weight"));
        if (objective !== "token_classification") continue;
        const none = batchOf([4, 2], 4, 9);
        none.tokenLabels = { data: new Int32Array(8).fill(-100), shape: [2, 4] };
        const empty = await trainer.gradients(none, 1);
        assert.equal(empty.loss, 0);
        for (const [name, g] of empty.grads) assert.ok(g.every((x) => x === 0), `${name} ≠ 0`);
      } finally {
        await trainer.close();
      }
    }
  });
}

Deno.test("trainer: objectives a model's heads cannot serve are refused by name, on every engine; no fallback", async () => {
  const cfg = makeConfig(STUDENT);
  const graph = (objective: string, heads: BertHeads) =>
    buildGradGraph({
      config: cfg,
      heads,
      params: parameterShapes(cfg, heads),
      objective,
      dropout: false,
    });
  const refusals: [string, BertHeads, RegExp][] = [
    ["contrastive", SEQUENCE_HEADS, /objective 'contrastive' has no ONNX graph \(known: /],
    ["mlm", SEQUENCE_HEADS, /objective 'mlm' needs a model with an MLM head/],
    ["span", TOKEN_HEADS, /objective 'span' needs a model with a QA head/],
    ["classification", TOKEN_HEADS, /needs a sequence classifier \(this model's labels tokens\)/],
    ["token_classification", SEQUENCE_HEADS, /'token_classification' needs a token classifier/],
    ["token_classification", QA_HEADS, /'token_classification' needs a token classifier/],
  ];
  for (const [objective, heads, message] of refusals) {
    assert.throws(() => graph(objective, heads), (e: Error) => {
      assert.ok(e instanceof GraphBuildError, String(e));
      assert.match(e.message, message);
      return true;
    });
    for (const name of ["auto", "onnx", "tfjs"] as const) {
      await assert.rejects(() => resolveEngine(name, objective, heads), message, name);
    }
  }
  // what the heads serve runs where it is asked to (auto: ONNX Runtime, which loads here)
  const served: [string, BertHeads][] = [
    ["classification", SEQUENCE_HEADS],
    ["token_classification", TOKEN_HEADS],
    ["span", QA_HEADS],
    ["distillation", TOKEN_HEADS],
    ["mlm", { classifier: false, mlm: true }],
  ];
  for (const [objective, heads] of served) {
    assert.equal((await resolveEngine("auto", objective, heads)).name, "onnx", objective);
    assert.equal((await resolveEngine("tfjs", objective, heads)).name, "tfjs", objective);
  }
  // a distillation batch without the teacher output its term reads
  const trainer = await trainerOn(randomModel(STUDENT, SEQUENCE_HEADS, 12), EXECUTORS[0].engine, {
    objective: "distillation",
    objectiveOptions: {
      terms: [{ name: "soft_ce", weight: 1 }],
      layerMap: [0, 1, 2],
      embeddings: true,
      projection: "shared",
    },
  });
  await assert.rejects(
    () => trainer.step(batchOf([4, 3], 4, 1)),
    (e: Error) =>
      e instanceof GraphBuildError && /distillation batch has no t_logits/.test(e.message),
  );
  await trainer.close();
});

Deno.test("trainer: one gradient graph serves every batch size and sequence length; a new one only when the teacher's shape changes", async () => {
  const opts = {
    terms: [{ name: "attention_mse", weight: 1 }, { name: "hidden_mse", weight: 1 }, {
      name: "soft_ce",
      weight: 1,
    }],
    layerMap: [0, 1, 2],
    embeddings: true,
    projection: "shared",
  };
  /** A batch with teacher targets of an `h`-head, 24-wide, 3-class teacher (values arbitrary). */
  const withTargets = (lengths: number[], S: number, h: number, seed: number): HostBatch => {
    const H = 24;
    const b = batchOf(lengths, S, seed), B = lengths.length;
    const t = (shape: number[], k: number) => ({
      data: randomArray(shape.reduce((x, y) => x * y, 1), seed * 10 + k),
      shape,
    });
    return {
      ...b,
      t_hidden_0: t([B, S, H], 1),
      t_hidden_1: t([B, S, H], 2),
      t_hidden_2: t([B, S, H], 3),
      t_scores_0: t([B, h, S, S], 4),
      t_scores_1: t([B, h, S, S], 5),
      t_logits: t([B, 3], 6),
    };
  };
  const student = randomModel(STUDENT, SEQUENCE_HEADS, 13);
  for (const name of ["distill.fit_dense.weight", "distill.fit_dense.bias"]) {
    student.addExtra(name, {
      data: randomArray(name.endsWith("weight") ? 24 * 16 : 24, 14),
      shape: name.endsWith("weight") ? [24, 16] : [24],
    });
  }
  const trainer = await trainerOn(student, EXECUTORS[0].engine, {
    objective: "distillation",
    objectiveOptions: opts,
  });
  try {
    await trainer.step([withTargets([8, 6, 2], 8, 4, 1), withTargets([5, 3], 5, 4, 2)], 1);
    await trainer.step(withTargets([4, 4, 4, 4, 4], 4, 4, 3), 2);
    assert.equal(trainer.gradGraphBuilds, 1, "one graph for every batch shape");
    // a teacher with 8 heads (grouped into the student's 4): another graph
    await trainer.gradients(withTargets([3, 2], 3, 8, 4), 3);
    assert.equal(trainer.gradGraphBuilds, 2);
    await trainer.gradients(withTargets([6], 6, 4, 5), 4);
    assert.equal(trainer.gradGraphBuilds, 3, "back to another signature: rebuilt (one is kept)");
  } finally {
    await trainer.close();
  }
});
