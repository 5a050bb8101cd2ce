/**
 * A small training run for the resume test (tests/train_test.ts): trains a tiny BERT for a fixed
 * number of steps with checkpoints every 2 steps in `Deno.args[0]`, prints `step N` after every
 * step, and at the end prints `digest <weights digest> loss <last loss>`.
 */

import { setBackend } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { digestWeights } from "../pipeline/train/parallel.ts";
import { train } from "../pipeline/train/loop.ts";
import { tinySource, TRAIN_CONFIG } from "./_train_data.ts";

await setBackend("wasm");
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
  stateDir: Deno.args[0],
  checkpointEvery: 2,
  seed: 7,
  replicas: Number(Deno.args[1] ?? 1),
  afterStep: (s) => console.log(`step ${s}`),
});
console.log(
  `digest ${digestWeights(model)} loss ${res.curve.at(-1)!.loss} resumed ${res.resumedAt}`,
);
