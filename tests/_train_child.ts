/**
 * A small training run for the resume tests (tests/train_test.ts, tests/onnx_loop_test.ts):
 * `resumeRun` of `_train_data.ts` (phase `a`: steps 1–5, phase `b`: 6–9, checkpoints every 2
 * steps in `dir`). Prints `<phase>: <engine> engine` as each phase starts and
 * `step N` after every step, and at the end writes every weight to `final.safetensors` and the
 * loss curve to `curve.json` in `dir`, and prints `resumed <steps restored from a checkpoint>`.
 *
 * Arguments: `dir [replicas=1] [engine=tfjs] [stallAfter]` (engine `tfjs` runs the trainer's
 * graphs on tfjs' wasm backend, `onnx` on ONNX Runtime). With `stallAfter = k` it sleeps
 * (a minute) after printing `step k`, so that a parent killing it on that line kills it there
 * whatever the engine's speed (an ONNX step of this model takes a few milliseconds).
 */

import { join } from "node:path";
import { writeSafetensors } from "../pipeline/model/safetensors.ts";
import { train } from "../pipeline/train/loop.ts";
import type { EngineName } from "../pipeline/train/engine.ts";
import { resumeRun } from "./_train_data.ts";

const [dir, replicas = "1", engine = "tfjs", stallAfter = ""] = Deno.args;
if (!["tfjs", "onnx", "auto"].includes(engine)) throw new Error(`unknown engine '${engine}'`);
const opts = resumeRun(dir, { engine: engine as EngineName, replicas: Number(replicas) });
const res = await train({
  ...opts,
  log: (m) => {
    if (m.endsWith(" engine")) console.log(m);
  },
  afterStep: async (s) => {
    console.log(`step ${s}`);
    if (String(s) === stallAfter) await new Promise((r) => setTimeout(r, 60_000));
  },
});
await writeSafetensors(join(dir, "final.safetensors"), opts.model.params);
await Deno.writeTextFile(join(dir, "curve.json"), JSON.stringify(res.curve));
console.log(`resumed ${res.resumedAt}`);
