/**
 * The shared training loop (`train/loop.ts`) on the one trainer: data order, the loss falling on
 * both engines with no tfjs tensor held across steps, checkpoints and phases (tfjs) or touched at
 * all (ONNX Runtime), micro-batch accumulation inside the loop on both engines, and the tfjs
 * engine's resume after SIGKILL and divergence (1 and 2 replicas). The ONNX Runtime engine's
 * resume and divergence, and resuming across engines, are in `onnx_loop_test.ts`.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../pipeline/engines/tfjs_backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { type CurvePoint, epochBatches, train } from "../pipeline/train/loop.ts";
import {
  assertSameRun,
  checkDivergence,
  childResult,
  killAndResume,
  runChild,
  tinySource,
  TRAIN_CONFIG,
  TRAIN_PHASE,
} from "./_train_data.ts";
import { assertClose, withTempDir } from "./_util.ts";

const ENGINES = ["onnx", "tfjs"] as const;

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

for (const engine of ENGINES) {
  Deno.test(`train (${engine} engine): the loss falls; the tfjs tensor count stays flat across steps, checkpoints and phases`, async () => {
    const before = tf.memory().numTensors;
    const model = Bert.create(TRAIN_CONFIG, {}, 1);
    const counts: number[] = [];
    const logs: string[] = [];
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
        engine,
        backend: "wasm",
        log: (m) => void logs.push(m),
        afterStep: () => void counts.push(tf.memory().numTensors),
      });
      assert.deepEqual(logs.filter((m) => m.endsWith(" engine")), [
        `p: ${engine} engine`,
        `q: ${engine} engine`,
      ]);
      assert.equal(res.steps, 45);
      // from chance (ln 2 ≈ 0.69) to a few hundredths (token 7 decides the label); a frozen or
      // wrongly updated model stays near 0.69
      const first = res.curve.slice(0, 5).reduce((a, p) => a + p.loss, 0) / 5;
      const last = res.curve.slice(35, 40).reduce((a, p) => a + p.loss, 0) / 5;
      assert.ok(last < first * 0.5, `loss ${first} → ${last}`);
    });
    // the model holds host arrays; the tfjs session holds its folded constants while a phase
    // runs (none on ONNX Runtime) and nothing grows from step to step, nor after the phase
    assert.equal(counts.length, 45);
    assert.equal(new Set(counts.slice(0, 40)).size, 1, `${counts.slice(0, 40)}`);
    assert.equal(new Set(counts.slice(40)).size, 1, `${counts.slice(40)}`);
    if (engine === "onnx") assert.deepEqual(new Set(counts), new Set([before]));
    assert.equal(tf.memory().numTensors, before, "tensors left after training");
  });
}

Deno.test("gradient accumulation in the loop: micro-batches give each step the whole batch's loss and gradient norm, on both engines", async () => {
  // no dropout: micro-batch k gets its own masks otherwise. Batches of 8 rows of lengths 3..12
  // cut into 3 + 3 + 2, each padded to its own longest row: a plain mean or a sum of the
  // micro-batches' losses and gradients would be wrong (the trainer weights them by rows)
  const noDropout = { ...TRAIN_CONFIG, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 };
  const source = tinySource(32);
  for (const engine of ENGINES) {
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
          engine,
          backend: "wasm",
        });
        curves.push(res.curve);
      });
    }
    // the loss and the pre-clipping gradient norm are not scale-invariant (unlike the AdamW
    // update), so a wrongly weighted accumulation shows in both
    assert.equal(curves[1].length, 3);
    curves[1].forEach((p, i) => {
      const q = curves[0][i];
      assertClose([p.loss], [q.loss], 1e-5, `${engine}: step ${p.step} loss`);
      assertClose([p.gradNorm], [q.gradNorm], 1e-5, `${engine}: step ${p.step} gradient norm`);
    });
  }
});

// killed mid phase a (after step 3; resumes at 2 with the moments and step count), at its end
// (5) and mid phase b (7; resumes at 6). With 2 replicas the restored optimiser state must reach
// the worker too (each child takes ~4-9 s here, so 2 replicas skip the phase-end kill)
for (const [replicas, kills] of [[1, [3, 5, 7]], [2, [3, 7]]] as const) {
  Deno.test(`train (tfjs engine, ${replicas} replica(s)): a run killed with SIGKILL resumes to the same weights, bit for bit`, async () => {
    await withTempDir(async (dir) => {
      const a = join(dir, "a");
      const want = await childResult(a, await runChild(a, { replicas, engine: "tfjs" }));
      assert.equal(want.resumedAt, 0);
      assert.deepEqual(want.engines, [["a", "tfjs"], ["b", "tfjs"]]);
      await killAndResume(
        dir,
        { replicas, engine: "tfjs", kills: [...kills] },
        (k, got) => assertSameRun(got, want, `killed after step ${k}`),
      );
    });
  });
}

for (const [poison, replicas] of [[NaN, 1], [Infinity, 1], [NaN, 2]]) {
  Deno.test(`train (tfjs engine, ${replicas} replica(s)): a loss of ${poison} stops with the phase and step named, the update not applied, the last checkpoint intact`, async () => {
    await checkDivergence(poison, { replicas, engine: "tfjs" });
  });
}
