/**
 * The training loop on the ONNX Runtime engine (`engine: "onnx"`): resume after SIGKILL to the
 * same bytes, NaN/Inf divergence (1 and 2 replicas); checkpoints written by one engine resume on
 * the other; and an objective the model's heads cannot serve refused before anything runs, on
 * every engine name (there is no tfjs-only objective to fall back to anymore).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { type CurvePoint, train } from "../pipeline/train/loop.ts";
import {
  assertSameBytes,
  assertSameRun,
  checkDivergence,
  childResult,
  killAndResume,
  resumeRun,
  runChild,
  tinySource,
  TRAIN_CONFIG,
  TRAIN_PHASE,
} from "./_train_data.ts";
import { relErr, withTempDir } from "./_util.ts";

Deno.test("train (onnx engine): a run killed with SIGKILL resumes to the same weights, bit for bit", async () => {
  await withTempDir(async (dir) => {
    const a = join(dir, "a");
    const want = await childResult(a, await runChild(a, { engine: "onnx" }));
    assert.equal(want.resumedAt, 0);
    assert.deepEqual(want.engines, [["a", "onnx"], ["b", "onnx"]]);
    // killed mid phase a (after step 3: resumes at 2 with moments and step count), at its end (5)
    // and mid phase b (7: resumes at 6)
    await killAndResume(
      dir,
      { replicas: 1, engine: "onnx", kills: [3, 5, 7] },
      (k, got) => assertSameRun(got, want, `killed after step ${k}`),
    );
  });
});

/** The worst per-step relative loss difference of `a` against `b` over steps `[lo, hi)`. */
function worstLossDiff(a: CurvePoint[], b: CurvePoint[], lo = 0, hi = a.length) {
  let err = 0, step = 0;
  for (let i = lo; i < hi; i++) {
    const e = Math.abs(a[i].loss - b[i].loss) / Math.abs(b[i].loss);
    if (Number.isNaN(e)) return { err: e, step: a[i].globalStep }; // fails every bound
    if (e > err) [err, step] = [e, a[i].globalStep];
  }
  return { err, step };
}

/** The worst tensor of `a` against `b`: per-element relative error with an absolute floor. */
function worstWeightDiff(
  a: Map<string, { data: Float32Array }>,
  b: Map<string, { data: Float32Array }>,
  floor: number,
) {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  let err = 0, name = "";
  for (const [n, t] of b) {
    const e = relErr(a.get(n)!.data, t.data, { floor });
    if (Number.isNaN(e)) return { err: e, name: n };
    if (e > err) [err, name] = [e, n];
  }
  return { err, name };
}

/**
 * Cross-engine resume. Both engines run the same gradient graph with the same dropout masks,
 * accumulation and host AdamW, so they differ only by their kernels' float32 rounding: over these
 * 9 steps the losses of the two uninterrupted runs differ by ≤ 1.7e-7 relative and the final
 * weights by ≤ 2.3e-6 (per element, relative above |w| = 1e-2, absolute below; measured), and a
 * resumed run is no further from the uninterrupted one on its engine. Held to 2e-5 and 1e-4. A
 * lost optimiser state is far outside that (measured by mutating `setState`): moments not
 * restored → the loss differs by 4.2e-4 at the second step after the resume; the AdamW step
 * count not restored → another learning rate (checked exactly).
 */
const CROSS_LOSS_TOL = 2e-5, CROSS_WEIGHT_TOL = 1e-4, WEIGHT_FLOOR = 1e-2;

/**
 * {@link resumeRun} in this process: stopped by an exception right after global step `stopAfter`
 * (after its checkpoint, when one was due: what a kill there leaves), or run to the end.
 */
async function runHere(dir: string, engine: "onnx" | "tfjs", stopAfter?: number) {
  const opts = resumeRun(dir, { engine });
  const logs: string[] = [];
  const run = train({
    ...opts,
    log: (m) => void logs.push(m),
    afterStep: (s) => {
      if (s === stopAfter) throw new Error(`stopped after step ${s}`);
    },
  });
  if (stopAfter !== undefined) {
    await assert.rejects(run, new RegExp(`stopped after step ${stopAfter}`));
    return null;
  }
  const res = await run;
  const engines = logs.filter((m) => m.endsWith(" engine"));
  return { curve: res.curve, resumedAt: res.resumedAt, weights: opts.model.params, engines };
}

Deno.test("train: a checkpoint written by the tfjs engine resumes on onnx and vice versa", async () => {
  await withTempDir(async (dir) => {
    const whole = {
      tfjs: (await runHere(join(dir, "tfjs"), "tfjs"))!,
      onnx: (await runHere(join(dir, "onnx"), "onnx"))!,
    };
    const base = worstLossDiff(whole.onnx.curve, whole.tfjs.curve);
    const baseW = worstWeightDiff(whole.onnx.weights, whole.tfjs.weights, WEIGHT_FLOOR);
    console.log(
      `uninterrupted onnx vs tfjs: loss ${base.err.toExponential(2)} (step ${base.step}), ` +
        `weights ${baseW.err.toExponential(2)} (${baseW.name})`,
    );
    // stopped mid phase a (after step 3: resumes at 2, micro-batches) and mid phase b (after 7:
    // resumes at 6)
    for (const [from, to, k, at] of [["tfjs", "onnx", 3, 2], ["onnx", "tfjs", 7, 6]] as const) {
      const d = join(dir, `${from}-${to}-${k}`);
      await runHere(d, from, k);
      assert.equal(
        JSON.parse(await Deno.readTextFile(join(d, "ckpt", "state.json"))).step,
        at - (k > 5 ? 5 : 0),
        "the checkpoint's step within its phase",
      );
      const got = (await runHere(d, to))!;
      const what = `${from} → ${to}, stopped after ${k}`;
      assert.equal(got.resumedAt, at, what);
      assert.deepEqual(got.engines, (at < 5 ? ["a", "b"] : ["b"]).map((p) => `${p}: ${to} engine`));
      // the steps before the checkpoint are the writing engine's, restored as written
      assert.deepEqual(got.curve.slice(0, at), whole[from].curve.slice(0, at), what);
      // the rest continues the run on `to`: same steps, learning rates (AdamW's step count
      // restored), and losses to rounding
      const want = whole[to].curve;
      assert.deepEqual(
        got.curve.map((p) => [p.phase, p.step]),
        want.map((p) => [p.phase, p.step]),
      );
      assert.deepEqual(got.curve.map((p) => p.lr), want.map((p) => p.lr), `${what}: lr`);
      const loss = worstLossDiff(got.curve, want, at);
      const w = worstWeightDiff(got.weights, whole[to].weights, WEIGHT_FLOOR);
      console.log(
        `${what}: loss ${loss.err.toExponential(2)} (step ${loss.step}), ` +
          `weights ${w.err.toExponential(2)} (${w.name})`,
      );
      assert.ok(
        loss.err <= CROSS_LOSS_TOL,
        `${what}: loss differs by ${loss.err} at step ${loss.step}`,
      );
      assert.ok(w.err <= CROSS_WEIGHT_TOL, `${what}: ${w.name} differs by ${w.err}`);
    }
  });
});

for (const [poison, replicas] of [[NaN, 1], [Infinity, 1], [Infinity, 2]]) {
  Deno.test(`train (onnx engine, ${replicas} replica(s)): a loss of ${poison} stops with the phase and step named, the update not applied, the last checkpoint intact`, async () => {
    await checkDivergence(poison, { replicas, engine: "onnx" });
  });
}

Deno.test("train: an objective the model's heads cannot serve is refused before anything runs, on every engine", async () => {
  // TRAIN_CONFIG has a sequence classifier and no MLM, token or QA head
  const model = Bert.create(TRAIN_CONFIG, {}, 6);
  const before = new Map([...model.params].map(([n, p]) => [n, Float32Array.from(p.data)]));
  const cases: [string, RegExp][] = [
    ["mlm", /objective 'mlm' needs a model with an MLM head/],
    ["span", /objective 'span' needs a model with a QA head/],
    ["token_classification", /objective 'token_classification' needs a token classifier/],
    ["contrastive", /objective 'contrastive' has no .*graph \(known: classification, /],
  ];
  await withTempDir(async (dir) => {
    for (const engine of ["onnx", "tfjs", "auto"] as const) {
      for (const [objective, message] of cases) {
        const stateDir = join(dir, `${engine}-${objective}`);
        await assert.rejects(
          train({
            model,
            phases: [{ ...TRAIN_PHASE, objective, steps: 2 }],
            source: tinySource(32),
            stateDir,
            checkpointEvery: 1,
            seed: 1,
            replicas: 1,
            engine,
            backend: "wasm",
          }),
          message,
          `${engine}: ${objective}`,
        );
        assert.deepEqual(
          [...Deno.readDirSync(stateDir)],
          [],
          `${engine}: ${objective}: a step ran`,
        );
      }
    }
  });
  for (const [name, w] of before) assertSameBytes(model.params.get(name)!.data, w, name);
});
