/**
 * The training loop on the ONNX engine (`engine: "onnx"`, OnnxTrainer): resume after SIGKILL to
 * the same bytes, checkpoints that resume across engines, NaN/Inf divergence, 200 steps that
 * track the tfjs engine's loss curve, no tfjs tensor leaks, and which engine a phase runs on.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { classification, OBJECTIVES } from "../pipeline/train/objectives.ts";
import { type CurvePoint, train } from "../pipeline/train/loop.ts";
import {
  assertSameBytes,
  checkDivergence,
  childResult,
  killAndResume,
  runChild,
  tinySource,
  TRAIN_CONFIG,
  TRAIN_PHASE,
} from "./_train_data.ts";
import { relErr, withTempDir } from "./_util.ts";

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

Deno.test("train (onnx engine): a run killed with SIGKILL resumes to the same weights, bit for bit", async () => {
  await withTempDir(async (dir) => {
    const a = join(dir, "a");
    const want = await childResult(a, await runChild(a, { engine: "onnx" }));
    assert.equal(want.resumedAt, 0);
    assert.deepEqual(want.engines, [["a", "onnx"], ["b", "onnx"]]);
    // killed mid phase a (after step 3: resumes at 2 with moments and step count), at its end (5)
    // and mid phase b (7: resumes at 6)
    await killAndResume(dir, { replicas: 1, engine: "onnx", kills: [3, 5, 7] }, (k, got) => {
      assert.deepEqual([...got.weights.keys()], [...want.weights.keys()]);
      for (const [name, t] of want.weights) {
        assertSameBytes(got.weights.get(name)!.data, t.data, `killed at ${k}: ${name}`);
      }
      assert.deepEqual(got.curve, want.curve, `killed at ${k}: the loss curve`);
    });
  });
});

/**
 * Cross-engine resume. The engines agree to float32 rounding (the same masks and arithmetic):
 * over these 9 steps the losses of the two uninterrupted runs differ by ≤ 4.3e-8 relative and
 * the final weights by ≤ 8e-6 (per element, relative above |w| = 1e-2, absolute below; measured),
 * and a resumed run is no further from the uninterrupted one on its engine. Held to 2e-5 and
 * 1e-4. A lost or misread optimiser state is far outside that (measured by mutating the ONNX
 * engine's setState): moments v not restored → the loss differs by 2.7e-3 at step 5; m and v
 * swapped → NaN; the AdamW step count not restored → a different learning rate (checked exactly).
 */
const CROSS_LOSS_TOL = 2e-5, CROSS_WEIGHT_TOL = 1e-4, WEIGHT_FLOOR = 1e-2;

Deno.test("train: a checkpoint written by the tfjs engine resumes on onnx and vice versa", async () => {
  await withTempDir(async (dir) => {
    const whole = {
      tfjs: await childResult(join(dir, "tfjs"), await runChild(join(dir, "tfjs"))),
      onnx: await childResult(
        join(dir, "onnx"),
        await runChild(join(dir, "onnx"), { engine: "onnx" }),
      ),
    };
    const base = worstLossDiff(whole.onnx.curve, whole.tfjs.curve);
    const baseW = worstWeightDiff(whole.onnx.weights, whole.tfjs.weights, WEIGHT_FLOOR);
    console.log(
      `uninterrupted onnx vs tfjs: loss ${base.err.toExponential(2)} (step ${base.step}), ` +
        `weights ${baseW.err.toExponential(2)} (${baseW.name})`,
    );
    for (const [from, to] of [["tfjs", "onnx"], ["onnx", "tfjs"]] as const) {
      await killAndResume(
        dir,
        { replicas: 1, engine: from, resumeEngine: to, kills: [3, 7] },
        (k, got) => {
          const at = got.resumedAt, what = `${from} → ${to}, killed at ${k}`;
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
        },
      );
    }
  });
});

for (const poison of [NaN, Infinity]) {
  Deno.test(`train (onnx engine): a loss of ${poison} stops with the phase and step named, the update not applied, the last checkpoint intact`, async () => {
    await checkDivergence(poison, { replicas: 1, engine: "onnx" });
  });
}

/**
 * 200 steps, dropout on, both engines from the same weights and seed. Measured here (2 cores):
 * the per-step relative loss difference is ≤ 1.7e-7 over steps 1–50 (a float32 ulp of the loss
 * is 6e-8) and grows to ≤ 2.1e-6 by step 200 as rounding differences compound; the final weights
 * differ by ≤ 1.2e-4 per element (relative, floor 1e-2; the worst are attention key biases,
 * whose gradient is zero up to rounding: ≤ 1.2e-6 absolute). Bounds: 1e-5 to step 50, 1e-4
 * after, 1e-2 on the weights — 50–85× the measured, still far below real defects (measured by
 * mutating the ONNX engine): dropout seed off by one → 4.8e-3 within steps 1–50; AdamW ε 1e-8
 * instead of 1e-6 → 2.3e-4; weights not written → 2.2e-3.
 */
const EARLY_TOL = 1e-5, LATE_TOL = 1e-4, WEIGHT_TOL = 1e-2;

Deno.test("train: 200 steps with dropout on the onnx engine track the tfjs engine's loss curve", async () => {
  await setBackend("wasm");
  const run: Record<string, { curve: CurvePoint[]; weights: Map<string, { data: Float32Array }> }> =
    {};
  for (const engine of ["tfjs", "onnx"] as const) {
    const model = Bert.create(TRAIN_CONFIG, {}, 11);
    const logs: string[] = [];
    await withTempDir(async (dir) => {
      const res = await train({
        model,
        phases: [{ ...TRAIN_PHASE, steps: 200, warmup: 0.1 }],
        source: tinySource(64),
        stateDir: dir,
        checkpointEvery: 0,
        seed: 5,
        replicas: 1,
        engine,
        log: (m) => void logs.push(m),
      });
      assert.ok(logs.includes(`p: ${engine} engine`), logs.join("\n"));
      assert.equal(res.curve.length, 200);
      const weights = new Map(
        [...model.params].map(([n, v]) => [n, { data: Float32Array.from(v.dataSync()) }]),
      );
      run[engine] = { curve: res.curve, weights };
    });
    model.dispose();
  }
  const { tfjs, onnx } = run;
  const early = worstLossDiff(onnx.curve, tfjs.curve, 0, 50);
  const late = worstLossDiff(onnx.curve, tfjs.curve, 50, 200);
  const w = worstWeightDiff(onnx.weights, tfjs.weights, WEIGHT_FLOOR);
  const mean = (c: CurvePoint[], lo: number, hi: number) =>
    c.slice(lo, hi).reduce((s, p) => s + p.loss, 0) / (hi - lo);
  console.log(
    `onnx vs tfjs over 200 steps: loss steps 1-50 ${early.err.toExponential(2)} ` +
      `(step ${early.step}), 51-200 ${late.err.toExponential(2)} (step ${late.step}); ` +
      `weights ${w.err.toExponential(2)} (${w.name}); mean loss steps 1-10 → 191-200: ` +
      `tfjs ${mean(tfjs.curve, 0, 10).toFixed(4)} → ${mean(tfjs.curve, 190, 200).toFixed(4)}, ` +
      `onnx ${mean(onnx.curve, 0, 10).toFixed(4)} → ${mean(onnx.curve, 190, 200).toFixed(4)}`,
  );
  assert.deepEqual(onnx.curve.map((p) => p.lr), tfjs.curve.map((p) => p.lr));
  assert.ok(early.err <= EARLY_TOL, `steps 1-50: loss differs by ${early.err} at ${early.step}`);
  assert.ok(late.err <= LATE_TOL, `steps 51-200: loss differs by ${late.err} at ${late.step}`);
  assert.ok(w.err <= WEIGHT_TOL, `final weights: ${w.name} differs by ${w.err}`);
  // each engine learns: from chance (ln 2 ≈ 0.693) to ~0.1 here; a frozen engine stays at 0.69
  for (const [engine, { curve }] of Object.entries(run)) {
    const first = mean(curve, 0, 10), last = mean(curve, 190, 200);
    assert.ok(last < 0.5 * first, `${engine}: mean loss ${first} → ${last}`);
  }
});

Deno.test("train (onnx engine): no tfjs tensor is leaked or held across steps, checkpoints and phases", async () => {
  await setBackend("wasm");
  const before = tf.memory().numTensors;
  const model = Bert.create(TRAIN_CONFIG, {}, 4);
  const withModel = tf.memory().numTensors;
  assert.ok(withModel > before);
  const counts: number[] = [];
  await withTempDir(async (dir) => {
    const res = await train({
      model,
      phases: [
        { ...TRAIN_PHASE, steps: 10, microBatchSize: 3 },
        { ...TRAIN_PHASE, name: "q", steps: 6 },
      ],
      source: tinySource(48),
      stateDir: dir,
      checkpointEvery: 3, // each checkpoint copies the weights into the model (tfjs)
      seed: 2,
      replicas: 1,
      engine: "onnx",
      afterStep: () => void counts.push(tf.memory().numTensors),
    });
    assert.equal(res.steps, 16);
    // resuming from the final checkpoint opens the last phase (state restored) and runs nothing
    await train({
      model,
      phases: [{ ...TRAIN_PHASE, steps: 10 }, { ...TRAIN_PHASE, name: "q", steps: 6 }],
      source: tinySource(48),
      stateDir: dir,
      checkpointEvery: 3,
      seed: 2,
      replicas: 1,
      engine: "onnx",
    });
  });
  // the ONNX engine keeps its weights and moments in host buffers: the model's tensors only
  assert.equal(counts.length, 16);
  assert.deepEqual(counts, counts.map(() => withModel), `${counts}`);
  assert.equal(tf.memory().numTensors, withModel);
  model.dispose();
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("train: engine onnx names an objective it has no graph for; auto runs that phase on tfjs", async () => {
  await setBackend("wasm");
  // an objective that the tfjs engine knows and the ONNX engine has no graph for
  OBJECTIVES.no_onnx_graph = classification;
  const model = Bert.create(TRAIN_CONFIG, {}, 6);
  try {
    await withTempDir(async (dir) => {
      await assert.rejects(
        train({
          model,
          phases: [{ ...TRAIN_PHASE, objective: "no_onnx_graph", steps: 2 }],
          source: tinySource(32),
          stateDir: join(dir, "onnx"),
          checkpointEvery: 0,
          seed: 1,
          replicas: 1,
          engine: "onnx",
        }),
        /engine: onnx has no training graph for objective 'no_onnx_graph' .*use engine: tfjs/,
      );
      assert.deepEqual([...Deno.readDirSync(join(dir, "onnx"))], []); // nothing ran
      const logs: string[] = [];
      const res = await train({
        model,
        phases: [
          { ...TRAIN_PHASE, name: "a", steps: 2 },
          { ...TRAIN_PHASE, name: "b", objective: "no_onnx_graph", steps: 2 },
          { ...TRAIN_PHASE, name: "c", steps: 1 },
        ],
        source: tinySource(32),
        stateDir: join(dir, "auto"),
        checkpointEvery: 0,
        seed: 1,
        replicas: 1,
        engine: "auto",
        log: (m) => void logs.push(m),
      });
      assert.deepEqual(
        logs.filter((m) => m.endsWith(" engine")),
        ["a: onnx engine", "b: tfjs engine", "c: onnx engine"],
      );
      assert.equal(res.steps, 5);
      assert.ok(res.curve.every((p) => Number.isFinite(p.loss)));
      const tfjsLogs: string[] = [];
      await train({
        model,
        phases: [{ ...TRAIN_PHASE, steps: 1 }],
        source: tinySource(32),
        stateDir: join(dir, "tfjs"),
        checkpointEvery: 0,
        seed: 1,
        replicas: 1,
        engine: "tfjs",
        log: (m) => void tfjsLogs.push(m),
      });
      assert.ok(tfjsLogs.includes("p: tfjs engine"), tfjsLogs.join("\n"));
    });
  } finally {
    delete OBJECTIVES.no_onnx_graph;
    model.dispose();
  }
});
