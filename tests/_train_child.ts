/**
 * A small training run for the resume test (tests/train_test.ts): trains a tiny BERT for a fixed
 * number of steps with checkpoints every 2 steps in `Deno.args[0]`, prints `step N` after every
 * step, and at the end writes every weight to `final.safetensors` and the loss curve to
 * `curve.json` there, and prints `resumed <steps restored from a checkpoint>`.
 */

import { join } from "node:path";
import { setBackend } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { writeSafetensors } from "../pipeline/model/safetensors.ts";
import { train } from "../pipeline/train/loop.ts";
import { tinySource, TRAIN_CONFIG } from "./_train_data.ts";

await setBackend("wasm");
const dir = Deno.args[0];
const model = Bert.create(TRAIN_CONFIG, {}, 3);
const res = await train({
  model,
  phases: [
    {
      name: "a",
      objective: "classification",
      steps: 5,
      batchSize: 8,
      microBatchSize: 4,
      lr: 1e-3,
      warmup: 0.2,
      weightDecay: 0.01,
      maxGradNorm: 1,
    },
    {
      name: "b",
      objective: "classification",
      steps: 4,
      batchSize: 6,
      lr: 5e-4,
      warmup: 0,
      weightDecay: 0,
      maxGradNorm: 0,
    },
  ],
  source: tinySource(40),
  stateDir: dir,
  checkpointEvery: 2,
  seed: 7,
  replicas: Number(Deno.args[1] ?? 1),
  afterStep: (s) => console.log(`step ${s}`),
});
const weights = new Map(
  [...model.params].map((
    [name, v],
  ) => [name, { shape: v.shape, data: v.dataSync() as Float32Array }]),
);
await writeSafetensors(join(dir, "final.safetensors"), weights);
await Deno.writeTextFile(join(dir, "curve.json"), JSON.stringify(res.curve));
console.log(`resumed ${res.resumedAt}`);
