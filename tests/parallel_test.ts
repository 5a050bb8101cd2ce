/** Data-parallel replicas: same gradients as one replica, weights stay in sync, errors surface. */

import assert from "node:assert/strict";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { classification } from "../pipeline/train/objectives.ts";
import { AdamW } from "../pipeline/train/optim.ts";
import {
  computeGradients,
  DataParallel,
  forwardToHost,
  GradLayout,
  readGradients,
  writeGradients,
} from "../pipeline/train/parallel.ts";
import { type HostBatch, sliceBatch, toTensors } from "../pipeline/train/batch.ts";
import { assertClose, rng } from "./_util.ts";
import { assertSameBytes } from "./_train_data.ts";

const CONFIG = {
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 24,
  max_position_embeddings: 16,
  id2label: { "0": "a", "1": "b" },
  // no dropout: shards then see exactly what a single replica sees
  hidden_dropout_prob: 0,
  attention_probs_dropout_prob: 0,
};

function makeBatch(rows: number, seq: number, seed: number): HostBatch {
  const r = rng(seed);
  const ids = Int32Array.from({ length: rows * seq }, () => 1 + Math.floor(r() * 39));
  const mask = Int32Array.from({ length: rows * seq }, (_, i) => (i % seq) < seq - (i % 3) ? 1 : 0);
  return {
    inputIds: { data: ids, shape: [rows, seq] },
    attentionMask: { data: mask, shape: [rows, seq] },
    labels: { data: Int32Array.from({ length: rows }, (_, i) => i % 2), shape: [rows] },
  };
}

function gradsOn(bert: Bert, batch: HostBatch) {
  const t = toTensors(batch);
  const res = computeGradients(bert, classification, t);
  tf.dispose(Object.values(t));
  return res;
}

Deno.test("2 replicas give the mean loss and gradients of one replica on the whole batch", async () => {
  await setBackend("wasm");
  const bert = Bert.create(CONFIG, {}, 4);
  const dp = await DataParallel.create(bert, { replicas: 2, objective: "classification" });
  try {
    assert.equal(dp.replicas, 2);
    const batch = makeBatch(7, 8, 1); // odd: shards of 4 and 3, weighted by size
    const single = gradsOn(bert, batch);
    const par = await dp.gradients(batch);
    assert.ok(Math.abs(par.loss - single.loss) < 1e-5, `${par.loss} vs ${single.loss}`);
    for (const [name, g] of single.grads) {
      assertClose(par.grads.get(name)!.dataSync(), g.dataSync(), 1e-4, name);
    }
    tf.dispose([...single.grads.values(), ...par.grads.values()]);

    // after an optimiser step here, syncWeights makes the worker compute with the new weights
    const opt = new AdamW(bert.params, { lr: 0.05 });
    const g1 = await dp.gradients(batch);
    opt.step(g1.grads);
    tf.dispose([...g1.grads.values()]);
    await dp.syncWeights();
    const after = gradsOn(bert, batch);
    const par2 = await dp.gradients(batch);
    assert.ok(Math.abs(par2.loss - after.loss) < 1e-5, `${par2.loss} vs ${after.loss}`);
    assert.ok(Math.abs(par2.loss - par.loss) > 1e-4, "the step changed the loss");
    tf.dispose([...after.grads.values(), ...par2.grads.values()]);
    opt.dispose();
  } finally {
    dp.close();
    bert.dispose();
  }
});

/**
 * The row-weighted mean of shard gradients, rounded to float32 term by term in shard order: the
 * sum {@link DataParallel} forms in its shared buffer.
 */
function shardMean(shards: Map<string, tf.Tensor>[], weights: number[]): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  for (const [name, g0] of shards[0]) {
    const sum = new Float32Array(g0.size);
    shards.forEach((s, i) => {
      const g = s.get(name)!.dataSync();
      for (let j = 0; j < sum.length; j++) {
        sum[j] = i === 0 ? g[j] * weights[i] : sum[j] + g[j] * weights[i];
      }
    });
    out.set(name, tf.tensor(sum, g0.shape));
  }
  return out;
}

// Not bit-identical to one replica on the whole batch: the shards' gradients are summed in
// another order than one batch's (the test above compares those within float rounding), and
// AdamW, normalising each entry, amplifies that rounding where a gradient is tiny.
Deno.test("replicated optimiser steps: every replica bit-identical to one replica stepping on the shards' mean gradient", async () => {
  await setBackend("wasm");
  const single = Bert.create(CONFIG, {}, 6);
  const bert = Bert.create(CONFIG, {}, 6);
  const dp = await DataParallel.create(bert, { replicas: 2, objective: "classification" });
  const optA = new AdamW(single.params, { lr: 0.01, maxGradNorm: 1 });
  const optB = new AdamW(bert.params, { lr: 0.01, maxGradNorm: 1 });
  try {
    for (let s = 0; s < 3; s++) {
      const batch = makeBatch(7, 8, 10 + s);
      // DataParallel's split of 7 rows on 2 replicas: rows 0-3 here, 4-6 on the worker
      const shards = [sliceBatch(batch, 0, 4), sliceBatch(batch, 4, 7)].map((b) =>
        gradsOn(single, b)
      );
      const mean = shardMean(shards.map((g) => g.grads), [4 / 7, 3 / 7]);
      optA.step(mean);
      const res = await dp.step(batch, optB, s);
      assert.equal(
        res.loss,
        shards[0].loss * (4 / 7) + shards[1].loss * (3 / 7),
        `step ${s} loss: ${res.loss}`,
      );
      tf.dispose([...mean.values(), ...shards.flatMap((g) => [...g.grads.values()])]);
    }
    // every parameter, biases and LayerNorm included, on the lead; the worker's hash to the same
    for (const [name, v] of single.params) {
      const got = bert.params.get(name)!.dataSync() as Float32Array;
      assertSameBytes(got, v.dataSync() as Float32Array, name);
    }
    const [lead, worker] = await dp.weightDigests();
    assert.equal(worker, lead, "worker weights drifted from the lead's");
    // a custom decay rule cannot be replicated: refused, not silently different
    const custom = new AdamW(bert.params, { lr: 0.01, decay: () => true });
    await assert.rejects(() => dp.step(makeBatch(2, 8, 1), custom), /custom decay rule/);
    custom.dispose();
  } finally {
    dp.close();
    optA.dispose();
    optB.dispose();
    single.dispose();
    bert.dispose();
  }
});

Deno.test("gradient layout: slots tile one flat buffer; tensors copy out of it", async () => {
  await setBackend("wasm");
  const params = new Map([
    ["a", { shape: [2, 3], size: 6 }],
    ["b", { shape: [4], size: 4 }],
  ]);
  const layout = new GradLayout(params);
  assert.equal(layout.total, 10);
  const buf = new Float32Array(new SharedArrayBuffer(40));
  const grads = new Map([["b", tf.tensor1d([1, 2, 3, 4])]]);
  assert.deepEqual(writeGradients(layout, buf, grads), ["b"]);
  assert.deepEqual(Array.from(buf), [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
  const back = readGradients(layout, buf, ["b"]);
  buf.fill(9); // the tensor owns a copy
  assert.deepEqual(Array.from(back.get("b")!.dataSync()), [1, 2, 3, 4]);
  tf.dispose([...grads.values(), ...back.values()]);
});

Deno.test("forward across replicas returns the same outputs, in batch order", async () => {
  await setBackend("wasm");
  const bert = Bert.create(CONFIG, {}, 4);
  const dp = await DataParallel.create(bert, { replicas: 2, objective: "classification" });
  try {
    const batch = makeBatch(5, 8, 3);
    const t = toTensors(batch);
    const ref = forwardToHost(bert, t, ["logits", "hiddenStates", "attentionScores"]);
    tf.dispose(Object.values(t));
    const par = await dp.forward(batch, ["logits", "hiddenStates", "attentionScores"]);
    assert.deepEqual(par.logits!.shape, [5, 2]);
    assertClose(par.logits!.data, ref.logits!.data, 1e-5, "logits");
    assert.equal(par.hiddenStates!.length, 3);
    par.hiddenStates!.forEach((h, i) =>
      assertClose(h.data, ref.hiddenStates![i].data, 1e-5, `h${i}`)
    );
    par.attentionScores!.forEach((a, i) => {
      assert.deepEqual(a.shape, [5, 2, 8, 8]);
      assertClose(a.data, ref.attentionScores![i].data, 1e-5, `scores ${i}`);
    });
  } finally {
    dp.close();
    bert.dispose();
  }
});

Deno.test("a failing replica surfaces its error", async () => {
  await setBackend("wasm");
  const bert = Bert.create(CONFIG, {}, 4);
  const dp = await DataParallel.create(bert, { replicas: 2, objective: "classification" });
  try {
    const bad = makeBatch(4, 8, 2);
    (bad.inputIds.data as Int32Array)[31] = 999; // out of vocabulary, in the worker's shard
    await assert.rejects(() => dp.gradients(bad), /replica worker: .*index value 999/);
  } finally {
    dp.close();
    bert.dispose();
  }
  await assert.rejects(
    () => DataParallel.create(Bert.create(CONFIG), { replicas: 2, objective: "nope" }),
    /unknown objective 'nope'/,
  );
});
