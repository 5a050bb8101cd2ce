/**
 * The shared training loop on the tfjs engine (replicas + tfjs AdamW; `engine: "tfjs"` throughout,
 * as the default `auto` runs these objectives on ONNX Runtime): data order, accumulation, flat
 * tensor count, resume, divergence. The ONNX engine's loop tests are in `onnx_loop_test.ts`.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { classification } from "../pipeline/train/objectives.ts";
import { type CurvePoint, epochBatches, train } from "../pipeline/train/loop.ts";
import { computeGradients, DataParallel } from "../pipeline/train/parallel.ts";
import { type HostBatch, toTensors } from "../pipeline/train/batch.ts";
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
import { assertClose, withTempDir } from "./_util.ts";

Deno.test("epochBatches: every row once per epoch, inside its group, reproducible", () => {
  const groups = [{ start: 0, end: 10 }, { start: 10, end: 17 }, { start: 17, end: 40 }];
  const a = epochBatches(groups, 4, 5, 0);
  assert.deepEqual(a, epochBatches(groups, 4, 5, 0));
  const rows = a.flatMap((b) => b.rows).sort((x, y) => x - y);
  assert.deepEqual(rows, Array.from({ length: 40 }, (_, i) => i));
  for (const b of a) {
    assert.ok(b.rows.length <= 4);
    const g = groups[b.group];
    assert.ok(b.rows.every((r) => r >= g.start && r < g.end), JSON.stringify(b));
  }
  const next = epochBatches(groups, 4, 5, 1).flatMap((b) => b.rows);
  assert.notDeepEqual(next, a.flatMap((b) => b.rows));
});

Deno.test("epochBatches with lengths: every row once, batches of similar length", () => {
  const n = 1000, lengths = Array.from({ length: n }, (_, i) => 3 + ((i * 7919) % 61));
  const groups = [{ start: 0, end: n }];
  const a = epochBatches(groups, 10, 2, 0, lengths);
  assert.deepEqual(a.flatMap((b) => b.rows).sort((x, y) => x - y), [...Array(n).keys()]);
  const padded = (bs: { rows: number[] }[]) =>
    bs.reduce((t, b) => t + b.rows.length * Math.max(...b.rows.map((r) => lengths[r])), 0);
  const real = lengths.reduce((x, y) => x + y, 0);
  // padding waste: random batches pad to near the max (~64); bucketed ones barely pad
  assert.ok(padded(a) < real * 1.1, `${padded(a)} vs ${real}`);
  assert.ok(padded(epochBatches(groups, 10, 2, 0)) > real * 1.5);
  // batch order is shuffled, not sorted by length
  const maxLen = a.map((b) => Math.max(...b.rows.map((r) => lengths[r])));
  assert.notDeepEqual(maxLen, [...maxLen].sort((x, y) => x - y));
});

Deno.test("train: the tensor count stays flat across steps and phases; the loss falls", async () => {
  await setBackend("wasm");
  const model = Bert.create(TRAIN_CONFIG, {}, 1);
  const counts: number[] = [];
  await withTempDir(async (dir) => {
    const res = await train({
      model,
      phases: [
        { ...TRAIN_PHASE, steps: 40, batchSize: 16, lr: 1e-2 },
        { ...TRAIN_PHASE, name: "q", steps: 5, microBatchSize: 3 },
      ],
      source: tinySource(64),
      stateDir: dir,
      checkpointEvery: 7,
      seed: 1,
      replicas: 1,
      engine: "tfjs",
      afterStep: () => void counts.push(tf.memory().numTensors),
    });
    assert.equal(res.steps, 45);
    const first = res.curve.slice(0, 5).reduce((a, p) => a + p.loss, 0) / 5;
    const last = res.curve.slice(35, 40).reduce((a, p) => a + p.loss, 0) / 5;
    assert.ok(last < first * 0.5, `loss ${first} → ${last}`);
  });
  // the first step of each phase allocates the optimiser moments; nothing grows after that
  assert.equal(new Set(counts.slice(1, 40)).size, 1, `${counts.slice(0, 40)}`);
  assert.equal(new Set(counts.slice(41)).size, 1, `${counts.slice(40)}`);
  model.dispose();
});

Deno.test("gradient accumulation: micro-batches give one full batch's loss and every gradient", async () => {
  await setBackend("wasm");
  const noDropout = { ...TRAIN_CONFIG, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 };
  const model = Bert.create(noDropout, {}, 2);
  const source = tinySource(32);
  const rows = [0, 1, 2, 3, 4, 5, 6, 7]; // lengths 3..12: each micro-batch pads to its own
  const full = await source.load(0, rows);
  const t = toTensors(full);
  const whole = computeGradients(model, classification, t);
  tf.dispose(Object.values(t));
  // micro-batches of 3, 3 and 2 rows: a plain mean or a sum of their gradients is wrong
  const micro: HostBatch[] = [];
  for (let i = 0; i < rows.length; i += 3) micro.push(await source.load(0, rows.slice(i, i + 3)));
  for (const replicas of [1, 2]) {
    const dp = await DataParallel.create(model, { replicas, objective: "classification" });
    try {
      const acc = await dp.gradients(micro);
      assertClose([acc.loss], [whole.loss], 1e-6, `loss (${replicas} replica(s))`);
      assert.deepEqual([...acc.grads.keys()], [...whole.grads.keys()]);
      for (const [name, g] of whole.grads) {
        assertClose(acc.grads.get(name)!.dataSync(), g.dataSync(), 1e-4, `${name} (${replicas})`);
      }
      tf.dispose([...acc.grads.values()]);
    } finally {
      dp.close();
    }
  }
  tf.dispose([...whole.grads.values()]);
  model.dispose();

  // the loop feeds its micro-batches the same way: every step's loss and pre-clipping gradient
  // norm (neither is scale-invariant, unlike the AdamW update) match those of whole batches
  const curves: CurvePoint[][] = [];
  for (const microBatchSize of [8, 3]) {
    const m = Bert.create(noDropout, {}, 2);
    await withTempDir(async (dir) => {
      const res = await train({
        model: m,
        phases: [{ ...TRAIN_PHASE, steps: 3, microBatchSize }],
        source,
        stateDir: dir,
        checkpointEvery: 0,
        seed: 3,
        replicas: 1,
        engine: "tfjs",
      });
      curves.push(res.curve);
    });
    m.dispose();
  }
  assert.equal(curves[1].length, 3);
  curves[1].forEach((p, i) => {
    const q = curves[0][i];
    assertClose([p.loss], [q.loss], 1e-5, `step ${p.step} loss`);
    assertClose([p.gradNorm], [q.gradNorm], 1e-5, `step ${p.step} gradient norm`);
  });
});

// killed mid phase a (after step 3; resumes at 2), at its end (5) and mid phase b (7; resumes
// at 6); each tfjs child takes 2-4 s here, so 2 replicas skip the phase-end kill
for (const [replicas, kills] of [[1, [3, 5, 7]], [2, [3, 7]]] as const) {
  Deno.test(`train: a run killed with SIGKILL resumes to the same weights, bit for bit (tfjs, ${replicas} replica(s))`, async () => {
    await withTempDir(async (dir) => {
      const want = await childResult(join(dir, "a"), await runChild(join(dir, "a"), { replicas }));
      assert.equal(want.resumedAt, 0);
      assert.deepEqual(want.engines, [["a", "tfjs"], ["b", "tfjs"]]);
      await killAndResume(dir, { replicas, engine: "tfjs", kills: [...kills] }, (k, got) => {
        assert.deepEqual([...got.weights.keys()], [...want.weights.keys()]);
        for (const [name, t] of want.weights) {
          assertSameBytes(got.weights.get(name)!.data, t.data, `killed at ${k}: ${name}`);
        }
        assert.deepEqual(got.curve, want.curve);
      });
    });
  });
}

for (const [poison, replicas] of [[NaN, 1], [Infinity, 1], [NaN, 2]]) {
  Deno.test(`train: a loss of ${poison} on ${replicas} tfjs replica(s) stops with the phase and step named, the update not applied, the last checkpoint intact`, async () => {
    await checkDivergence(poison, { replicas, engine: "tfjs" });
  });
}
