/**
 * Child process of `gpu_test.ts` (run on SwiftShader): the same steps on ONNX Runtime's CPU and
 * WebGPU providers, printing `@@result <json>`: per train step the loss and the largest gradient
 * error, then the weights after 3 AdamW steps; the inference graph's every output and argmax
 * labels at two bucket lengths; and the WebGPU compile (first run of a shape) vs step times.
 */

import { Bert, parameterShapes } from "../pipeline/model/bert.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { randomArray, rng } from "./_util.ts";

const cfg = makeConfig({
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 24,
  max_position_embeddings: 32,
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  id2label: { "0": "a", "1": "b", "2": "c" },
});
const heads = { classifier: true, mlm: false };

function model(): Bert {
  const params = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(cfg, heads)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), 7000 + ++i);
    const v = name.includes("LayerNorm.weight") ? u.map((x) => 1 + 0.2 * x) : u.map((x) => 0.3 * x);
    params.set(name, { data: v, shape });
  }
  return new Bert(cfg, heads, params);
}

function batch(lengths: number[], S: number, seed: number): HostBatch {
  const r = rng(seed), B = lengths.length;
  const ids = new Int32Array(B * S), mask = new Int32Array(B * S), types = new Int32Array(B * S);
  lengths.forEach((len, b) => {
    for (let j = 0; j < len; j++) {
      ids[b * S + j] = 1 + Math.floor(r() * 39);
      mask[b * S + j] = 1;
      types[b * S + j] = j >= len / 2 ? 1 : 0;
    }
  });
  return {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: types, shape: [B, S] },
    labels: { data: Int32Array.from(lengths, (_, b) => b % 3), shape: [B] },
  };
}

const maxDiff = (a: Float32Array, b: Float32Array) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

const result: Record<string, unknown> = {};
// --- training: 3 steps on each device, gradients compared before each step --------------------
const devices = ["cpu", "webgpu"] as const;
const models = devices.map(() => model());
const trainers = await Promise.all(devices.map((device, k) =>
  Trainer.create(models[k], {
    objective: "classification",
    lr: () => 1e-2,
    weightDecay: 0.01,
    threads: 1,
    engine: { kind: "onnxruntime", device },
  })
));
const steps: { loss: number[]; lossDiff: number; gradMaxDiff: number; grads: number }[] = [];
const times: number[] = [];
for (let s = 0; s < 3; s++) {
  const b = batch([16, 11, 7, 3], 16, 10 + s);
  const g = [];
  for (const t of trainers) g.push(await t.gradients(b, s));
  let gm = 0;
  for (const [name, a] of g[0].grads) gm = Math.max(gm, maxDiff(a, g[1].grads.get(name)!));
  steps.push({
    loss: [g[0].loss, g[1].loss],
    lossDiff: Math.abs(g[0].loss - g[1].loss),
    gradMaxDiff: gm,
    grads: g[0].grads.size,
  });
  await trainers[0].step(b, s);
  const t0 = performance.now();
  await trainers[1].step(b, s);
  times.push(performance.now() - t0);
}
for (const t of trainers) t.syncModel();
let wm = 0;
for (const [name, p] of models[0].params) {
  wm = Math.max(wm, maxDiff(p.data, models[1].params.get(name)!.data));
}
result.train = { steps, weightsMaxDiff: wm, webgpuStepMs: times };
for (const t of trainers) await t.close();

// --- inference: every output and the labels, at two lengths (buckets 16 and 32) ----------------
const bert = model();
const inf = await Promise.all(
  devices.map((device) => openInference(bert, { outputs: "all", device })),
);
const infRes: Record<string, unknown>[] = [];
for (const S of [16, 32, 16]) {
  const b = batch([S, S - 5, 4, 9, 1, S - 1, 2, 6], S, 100 + S);
  const inputs = {
    inputIds: b.inputIds.data as Int32Array,
    attentionMask: b.attentionMask.data as Int32Array,
    tokenTypeIds: b.tokenTypeIds.data as Int32Array,
    batch: 8,
    seq: S,
  };
  const cpu = await inf[0].run(inputs);
  const t0 = performance.now();
  const gpu = await inf[1].run(inputs);
  const ms = performance.now() - t0;
  let m = 0;
  for (const [name, o] of Object.entries(cpu)) m = Math.max(m, maxDiff(o.data, gpu[name].data));
  const argmax = (d: Float32Array) =>
    Array.from({ length: 8 }, (_, r) => {
      const row = d.subarray(r * 3, r * 3 + 3);
      return row.indexOf(Math.max(...row));
    });
  infRes.push({
    seq: S,
    outputs: Object.keys(cpu).length,
    maxDiff: m,
    labelsCpu: argmax(cpu.logits.data),
    labelsGpu: argmax(gpu.logits.data),
    webgpuMs: ms,
  });
}
result.inference = { runs: infRes, engines: inf.map((i) => i.engine), adapter: inf[1].adapter };
for (const i of inf) await i.close();
console.log(`@@result ${JSON.stringify(result)}`);
