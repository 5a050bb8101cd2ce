/**
 * Sequence-length buckets (`engines/buckets.ts`, on by default on webgpu): a batch padded to its
 * bucket gives what the unpadded batch gives — every inference output (cut back to the batch's
 * length, MLM rows at remapped positions) and the trainer's loss and every gradient (token
 * labels, MLM labels and teacher targets padded too). Checked on the CPU, buckets forced.
 */

import assert from "node:assert/strict";
import { Bert, type BertHeads, parameterShapes } from "../pipeline/model/bert.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { bucketFor, cutAxes, padRows } from "../pipeline/engines/buckets.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { randomArray, rng } from "./_util.ts";

const cfg = makeConfig({
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 24,
  max_position_embeddings: 24,
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  id2label: { "0": "a", "1": "b", "2": "c" },
});

function model(heads: BertHeads): Bert {
  const params = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(cfg, heads)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), 500 + ++i);
    const v = name.includes("LayerNorm.weight") ? u.map((x) => 1 + 0.2 * x) : u.map((x) => 0.3 * x);
    params.set(name, { data: v, shape });
  }
  return new Bert(cfg, heads, params);
}

const B = 3, S = 11;
function batch(): HostBatch {
  const r = rng(9), lengths = [11, 6, 2];
  const ids = new Int32Array(B * S), mask = new Int32Array(B * S), types = new Int32Array(B * S);
  const tags = new Int32Array(B * S).fill(-100), mlm = new Int32Array(B * S).fill(-100);
  lengths.forEach((len, b) => {
    for (let j = 0; j < len; j++) {
      ids[b * S + j] = 1 + Math.floor(r() * 39);
      mask[b * S + j] = 1;
      types[b * S + j] = j >= len / 2 ? 1 : 0;
      tags[b * S + j] = Math.floor(r() * 3);
      if (j % 3 === 1) mlm[b * S + j] = 1 + Math.floor(r() * 39);
    }
  });
  const f = (n: number, seed: number) => randomArray(n, seed);
  return {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: types, shape: [B, S] },
    labels: { data: Int32Array.from([0, 2, 1]), shape: [B] },
    tokenLabels: { data: tags, shape: [B, S] },
    mlmLabels: { data: mlm, shape: [B, S] },
    t_logits: { data: f(B * 3, 1), shape: [B, 3] },
    t_hidden_0: { data: f(B * S * 16, 2), shape: [B, S, 16] },
    t_hidden_2: { data: f(B * S * 16, 3), shape: [B, S, 16] },
    t_scores_1: { data: f(B * 4 * S * S, 4), shape: [B, 4, S, S] },
  };
}

const maxDiff = (a: Float32Array, b: Float32Array) => {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

Deno.test("buckets: bucketFor, padRows and cutAxes", () => {
  assert.equal(bucketFor(11, [16, 32], 24), 16);
  assert.equal(bucketFor(17, [16, 32], 24), 24); // the model's positions are the last bucket
  assert.equal(bucketFor(16, [16, 32], 512), 16);
  assert.equal(bucketFor(600, [16, 32], 512), 600);
  const p = padRows(Int32Array.from([1, 2, 3, 4]), 2, 2, 3, -1);
  assert.deepEqual([...p], [1, 2, -1, 3, 4, -1]);
  const x = Float32Array.from({ length: 2 * 3 * 3 }, (_, i) => i); // [2, 3, 3], axes 1, 2 → 2
  assert.deepEqual([...cutAxes(x, [2, 3, 3], [1, 2], 2).data], [0, 1, 3, 4, 9, 10, 12, 13]);
});

Deno.test("buckets: inference padded to a bucket gives every output of the unpadded batch", async () => {
  const bert = model({ classifier: true, mlm: true });
  const b = batch();
  const inputs = {
    inputIds: b.inputIds.data as Int32Array,
    attentionMask: b.attentionMask.data as Int32Array,
    tokenTypeIds: b.tokenTypeIds.data as Int32Array,
    batch: B,
    seq: S,
    mlmPositions: Int32Array.from([1, 4, 12, 14, 23]),
  };
  const opts = { outputs: "all" as const, values: true, mlmRows: true, threads: 1 };
  const plain = await openInference(bert, { ...opts, buckets: false, device: "cpu" });
  const padded = await openInference(bert, { ...opts, buckets: [16], device: "cpu" });
  try {
    const a = await plain.run(inputs), p = await padded.run(inputs);
    assert.deepEqual(Object.keys(p).sort(), Object.keys(a).sort());
    for (const name of Object.keys(a)) {
      assert.deepEqual(p[name].dims, a[name].dims, name);
      assert.ok(maxDiff(a[name].data, p[name].data) <= 1e-5, name);
    }
  } finally {
    await plain.close();
    await padded.close();
  }
});

Deno.test("buckets: a trainer's padded micro-batch gives the loss and every gradient", async () => {
  const cases: { objective: string; heads: BertHeads; objectiveOptions?: unknown }[] = [
    { objective: "classification", heads: { classifier: true, mlm: false } },
    {
      objective: "token_classification",
      heads: { classifier: true, tokenClassifier: true, mlm: false },
    },
    { objective: "mlm", heads: { classifier: false, mlm: true } },
    {
      objective: "distillation",
      heads: { classifier: true, mlm: false },
      objectiveOptions: {
        terms: [
          { name: "attention_mse", weight: 1 },
          { name: "hidden_mse", weight: 1 },
          { name: "soft_ce", weight: 1 },
        ],
        layerMap: [0, 2],
        embeddings: true,
        projection: "shared",
      },
    },
  ];
  for (const c of cases) {
    const results = [];
    for (const buckets of [false, [16]] as const) {
      const t = await Trainer.create(model(c.heads), {
        objective: c.objective,
        objectiveOptions: c.objectiveOptions,
        lr: () => 1e-3,
        weightDecay: 0,
        threads: 1,
        dropout: false,
        engine: { kind: "onnxruntime", device: "cpu" },
        buckets,
      });
      try {
        results.push(await t.gradients(batch(), 1));
      } finally {
        await t.close();
      }
    }
    const [a, p] = results;
    assert.ok(Math.abs(a.loss - p.loss) <= 1e-5, `${c.objective}: loss ${a.loss} vs ${p.loss}`);
    assert.deepEqual([...p.grads.keys()], [...a.grads.keys()]);
    for (const [name, g] of a.grads) {
      assert.ok(maxDiff(g, p.grads.get(name)!) <= 1e-5, `${c.objective} ${name}`);
    }
  }
});
