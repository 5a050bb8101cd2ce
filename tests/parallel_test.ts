/**
 * Data-parallel replicas of the trainer (`Trainer` with `replicas: 2`: this thread and a
 * worker, each its own session, gradients averaged through shared memory, the same host AdamW on
 * both), on both executors of the gradient graph (ONNX Runtime, tfjs-wasm):
 *
 * - a replicated step is exactly (bit for bit) the row-weighted float32 mean of the shards'
 *   gradients — each shard's taken by a one-replica trainer with the dropout seed the replica
 *   draws (`s·R + i`) — followed by AdamW, and the lead and the worker hold the same bytes;
 * - without dropout, 2 replicas train as 1 replica on the whole batch, to float32 rounding;
 * - a restored optimiser state reaches the worker (a resumed run continues bit for bit);
 * - a failing replica's error surfaces, and what cannot cross to a worker is refused.
 */

import assert from "node:assert/strict";
import { Bert, type BertHeads, isNoDecay, parameterShapes } from "../pipeline/model/bert.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { Trainer, type TrainerOptions } from "../pipeline/train/trainer.ts";
import { type HostBatch, sliceBatch } from "../pipeline/data/batch.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import { ADAMW_DEFAULTS, adamwUpdate, clipFactor } from "../pipeline/train/optim.ts";
import { assertSameBytes } from "./_train_data.ts";
import { randomArray, relErr, rng } from "./_util.ts";

const EXECUTORS: { label: string; engine: EngineRef }[] = [
  { label: "onnxruntime", engine: { kind: "onnxruntime" } },
  { label: "tfjs-wasm", engine: { kind: "tfjs", backend: "wasm" } },
];

const CONFIG: Partial<BertConfig> = {
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 24,
  max_position_embeddings: 16,
  id2label: { "0": "a", "1": "b" },
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
};
const HEADS: BertHeads = { classifier: true, mlm: false };

/** Parameters uniform ±0.3 (LayerNorm weights 1 ± 0.2): gradients well above float32 noise. */
function randomModel(seed: number): Bert {
  const cfg = makeConfig(CONFIG);
  const params = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(cfg, HEADS)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + ++i);
    const v = name.includes("LayerNorm.weight") ? u.map((x) => 1 + 0.2 * x) : u.map((x) => 0.3 * x);
    params.set(name, { data: v, shape });
  }
  return new Bert(cfg, HEADS, params);
}

/** `rows` rows of `seq` tokens, the last (row % 3) of each padded, labels alternating. */
function makeBatch(rows: number, seq: number, seed: number): HostBatch {
  const r = rng(seed);
  const ids = Int32Array.from({ length: rows * seq }, () => 1 + Math.floor(r() * 39));
  const mask = Int32Array.from(
    { length: rows * seq },
    (_, i) => (i % seq) < seq - (Math.floor(i / seq) % 3) ? 1 : 0,
  );
  return {
    inputIds: { data: ids, shape: [rows, seq] },
    attentionMask: { data: mask, shape: [rows, seq] },
    tokenTypeIds: { data: new Int32Array(rows * seq), shape: [rows, seq] },
    labels: { data: Int32Array.from({ length: rows }, (_, i) => i % 2), shape: [rows] },
  };
}

const HYPER = { lr: 1e-2, weightDecay: 0.01, maxGradNorm: 0.5 };

function trainerOn(
  model: Bert,
  engine: EngineRef,
  extra: Partial<TrainerOptions> = {},
): Promise<Trainer> {
  return Trainer.create(model, {
    objective: "classification",
    lr: () => HYPER.lr,
    weightDecay: HYPER.weightDecay,
    maxGradNorm: HYPER.maxGradNorm,
    threads: 1,
    engine,
    ...extra,
  });
}

/** A model holding `weights` (the reference replica's state after a step). */
function modelWith(weights: Map<string, Float32Array>): Bert {
  const cfg = makeConfig(CONFIG);
  const params = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [name, shape] of parameterShapes(cfg, HEADS)) {
    params.set(name, { data: Float32Array.from(weights.get(name)!), shape });
  }
  return new Bert(cfg, HEADS, params);
}

/** The lead's and the worker's weights hold the same bytes. */
async function assertReplicasIdentical(trainer: Trainer, what: string): Promise<void> {
  const all = await trainer.replicaWeights();
  assert.equal(all.length, 2, "lead and one worker");
  const [lead, worker] = all;
  for (const name of Object.keys(lead)) {
    assertSameBytes(worker[name], lead[name], `${what}: worker ${name}`);
  }
}

for (const { label, engine } of EXECUTORS) {
  Deno.test(`replicas (${label}): a 2-replica step is the shards' gradients (seeds s·R + i) averaged by rows in float32, then AdamW, bit for bit; lead and worker identical`, async () => {
    const model = randomModel(4);
    // the reference replica's state: weights and AdamW moments on the host
    const w = new Map([...model.params].map(([n, p]) => [n, Float32Array.from(p.data)]));
    const m = new Map([...w].map(([n, a]) => [n, new Float32Array(a.length)]));
    const v = new Map([...w].map(([n, a]) => [n, new Float32Array(a.length)]));
    const trainer = await trainerOn(model, engine, { replicas: 2 });
    try {
      // micro-batches of 7 rows (shards of 4 and 3) and 1 row (the lead alone)
      const steps = [
        { seed: 3, pieces: [makeBatch(7, 8, 1), makeBatch(1, 6, 2)] },
        { seed: 4, pieces: [makeBatch(5, 6, 3), makeBatch(4, 8, 4)] },
      ];
      for (const [t, { seed, pieces }] of steps.entries()) {
        const R = 2, total = pieces.reduce((n, b) => n + b.labels.shape[0], 0);
        const ref = await trainerOn(modelWith(w), engine);
        const avg = new Map<string, Float32Array>();
        let loss = 0;
        for (const [k, piece] of pieces.entries()) {
          const n = piece.labels.shape[0], r = Math.min(R, n);
          const bounds = Array.from({ length: r + 1 }, (_, i) => Math.round((i * n) / r));
          for (let i = 0; i < r; i++) {
            const shard = sliceBatch(piece, bounds[i], bounds[i + 1]);
            const g = await ref.gradients(shard, (seed * pieces.length + k) * R + i);
            // (n/total)·rows/n: the piece's share of the batch, the shard's of the piece
            const weight = (n / total) * (bounds[i + 1] - bounds[i]) / n;
            loss += g.loss * weight;
            for (const [name, gi] of g.grads) {
              if (!avg.has(name)) avg.set(name, new Float32Array(gi.length));
              const acc = avg.get(name)!;
              const first = k === 0 && i === 0;
              for (let j = 0; j < acc.length; j++) {
                acc[j] = first ? gi[j] * weight : acc[j] + gi[j] * weight;
              }
            }
          }
        }
        await ref.close();
        let sq = 0;
        for (const g of avg.values()) {
          let s = 0;
          for (let j = 0; j < g.length; j++) s += g[j] * g[j];
          sq += s;
        }
        const hyper = { ...ADAMW_DEFAULTS, ...HYPER };
        const clip = clipFactor(Math.sqrt(sq), HYPER.maxGradNorm);
        for (const [name, g] of avg) {
          adamwUpdate(w.get(name)!, g, m.get(name)!, v.get(name)!, {
            lr: HYPER.lr,
            t: t + 1,
            clip,
            decay: !isNoDecay(name),
            hyper,
          });
        }
        const res = await trainer.step(pieces, seed);
        assert.equal(res.loss, loss, `step ${t + 1}: loss`);
        assert.equal(res.gradNorm, Math.sqrt(sq), `step ${t + 1}: gradient norm`);
        const got = trainer.weights();
        for (const [name, want] of w) assertSameBytes(got[name], want, `step ${t + 1}: ${name}`);
        await assertReplicasIdentical(trainer, `step ${t + 1}`);
      }
      const state = trainer.getState();
      for (const [name, want] of m) assertSameBytes(state.m[name], want, `moment m ${name}`);
      for (const [name, want] of v) assertSameBytes(state.v[name], want, `moment v ${name}`);
    } finally {
      await trainer.close();
    }
  });
}

// Not bit-identical to one replica: the shards' gradients are summed in another order than one
// batch's, and AdamW, normalising each entry, turns that rounding into lr-sized steps where a
// gradient is 0 up to rounding (the attention key biases: softmax ignores a constant per row;
// skipped). Measured after 3 steps: ≤ 9e-6 per element (relative, floor 0.1); held to 1e-4, while
// a shard weighted by 1/2 instead of by its rows gives ~1e-3.
for (const { label, engine } of EXECUTORS) {
  Deno.test(`replicas (${label}): without dropout, 2 replicas train as 1 replica on the whole batch, to float32 rounding; a restored state reaches the worker`, async () => {
    const batches = [1, 2, 3, 4].map((s) => [makeBatch(7, 8, 10 + s), makeBatch(3, 6, 20 + s)]);
    const noDropout = { dropout: false };
    const one = await trainerOn(randomModel(6), engine, noDropout);
    const two = await trainerOn(randomModel(6), engine, { ...noDropout, replicas: 2 });
    let worst = 0;
    try {
      for (let s = 0; s < 3; s++) {
        const a = await one.step(batches[s], s), b = await two.step(batches[s], s);
        assert.ok(relErr([b.loss], [a.loss]) < 1e-6, `step ${s + 1}: loss ${b.loss} vs ${a.loss}`);
        assert.ok(relErr([b.gradNorm], [a.gradNorm]) < 1e-5, `step ${s + 1}: |g|`);
      }
      const w1 = one.weights(), w2 = two.weights();
      for (const name of Object.keys(w1)) {
        if (/attention\.self\.key\.bias$/.test(name)) continue;
        const e = relErr(w2[name], w1[name], { floor: 0.1 });
        worst = Math.max(worst, e);
        assert.ok(e < 1e-4, `${name}: 2 replicas vs 1: ${e.toExponential(2)}`);
      }
      await assertReplicasIdentical(two, "after 3 steps");
      // resume: a fresh 2-replica trainer from the weights and the optimiser state continues
      // exactly as the one that never stopped (the state must reach its worker)
      const state = two.getState();
      const resumed = await trainerOn(modelWith(new Map(Object.entries(w2))), engine, {
        ...noDropout,
        replicas: 2,
      });
      try {
        resumed.setState(state);
        await two.step(batches[3], 3);
        await resumed.step(batches[3], 3);
        const want = two.weights(), got = resumed.weights();
        for (const name of Object.keys(want)) assertSameBytes(got[name], want[name], name);
        await assertReplicasIdentical(resumed, "resumed");
      } finally {
        await resumed.close();
      }
    } finally {
      await one.close();
      await two.close();
    }
    console.log(
      `${label}: 2 replicas vs 1 after 3 steps: worst weight relErr ${worst.toExponential(2)}`,
    );
  });
}

for (const { label, engine } of EXECUTORS) {
  Deno.test(`replicas (${label}): a failing replica surfaces its error; a custom decay rule is refused`, async () => {
    const trainer = await trainerOn(randomModel(4), engine, { replicas: 2 });
    try {
      const bad = makeBatch(4, 8, 2);
      bad.inputIds.data[31] = 999; // out of vocabulary, in the worker's shard (rows 2-3)
      await assert.rejects(() => trainer.step(bad, 1), /replica worker: .*999/);
    } finally {
      await trainer.close();
    }
    await assert.rejects(
      () => trainerOn(randomModel(4), engine, { replicas: 2, decay: () => true }),
      /a custom decay rule cannot cross to replicas/,
    );
  });
}
