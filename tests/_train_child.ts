/**
 * A small training run for the resume tests (tests/train_test.ts, tests/onnx_loop_test.ts):
 * trains a tiny BERT for a fixed number of steps (phase `a`: steps 1–5, phase `b`: 6–9) with
 * checkpoints every 2 steps in `dir`. Prints `<phase>: <engine> engine` as each phase starts and
 * `step N` after every step, and at the end writes every weight to `final.safetensors` and the
 * loss curve to `curve.json` in `dir`, and prints `resumed <steps restored from a checkpoint>`.
 *
 * Arguments: `dir [replicas=1] [engine=tfjs] [stallAfter]`. With `stallAfter = k` it sleeps
 * (a minute) after printing `step k`, so that a parent killing it on that line kills it there
 * whatever the engine's speed (an ONNX step of this model takes a few milliseconds).
 */

import { join } from "node:path";
import { setBackend } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { writeSafetensors } from "../pipeline/model/safetensors.ts";
import { train } from "../pipeline/train/loop.ts";
import type { EngineName } from "../pipeline/train/engine.ts";
import { tinySource, TRAIN_CONFIG } from "./_train_data.ts";

await setBackend("wasm");
const [dir, replicas = "1", engine = "tfjs", stallAfter = ""] = Deno.args;
if (!["tfjs", "onnx", "auto"].includes(engine)) throw new Error(`unknown engine '${engine}'`);
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
  replicas: Number(replicas),
  engine: engine as EngineName,
  log: (m) => {
    if (m.endsWith(" engine")) console.log(m);
  },
  afterStep: async (s) => {
    console.log(`step ${s}`);
    if (String(s) === stallAfter) await new Promise((r) => setTimeout(r, 60_000));
  },
});
const weights = new Map(
  [...model.params].map((
    [name, v],
  ) => [name, { shape: v.shape, data: v.dataSync() as Float32Array }]),
);
await writeSafetensors(join(dir, "final.safetensors"), weights);
await Deno.writeTextFile(join(dir, "curve.json"), JSON.stringify(res.curve));
console.log(`resumed ${res.resumedAt}`);
