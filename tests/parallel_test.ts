/** Data-parallel replicas: same gradients as one replica, weights stay in sync, errors surface. */

import assert from "node:assert/strict";
import { setBackend, tf } from "../pipeline/backend.ts";
import { Bert } from "../pipeline/bert.ts";
import { classification } from "../pipeline/objectives.ts";
import { AdamW } from "../pipeline/optim.ts";
import { computeGradients, DataParallel, type HostBatch, toTensors } from "../pipeline/parallel.ts";
import { assertClose, rng } from "./_util.ts";

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
