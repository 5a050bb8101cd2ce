/** The shared training loop: data order, accumulation, flat tensor count, resume, divergence. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { classification } from "../pipeline/train/objectives.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import {
  type BatchSource,
  type CurvePoint,
  epochBatches,
  type Phase,
  train,
  TrainingDivergedError,
} from "../pipeline/train/loop.ts";
import { computeGradients, DataParallel } from "../pipeline/train/parallel.ts";
import { type HostBatch, toTensors } from "../pipeline/train/batch.ts";
import { assertSameBytes, tinySource, TRAIN_CONFIG } from "./_train_data.ts";
import { assertClose, withTempDir } from "./_util.ts";

const PHASE: Phase = {
  name: "p",
  objective: "classification",
  steps: 6,
  batchSize: 8,
  lr: 1e-3,
  warmup: 0.2,
  weightDecay: 0.01,
  maxGradNorm: 1,
};

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
        { ...PHASE, steps: 40, batchSize: 16, lr: 1e-2 },
        { ...PHASE, name: "q", steps: 5, microBatchSize: 3 },
      ],
      source: tinySource(64),
      stateDir: dir,
      checkpointEvery: 7,
      seed: 1,
      replicas: 1,
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
        phases: [{ ...PHASE, steps: 3, microBatchSize }],
        source,
        stateDir: dir,
        checkpointEvery: 0,
        seed: 3,
        replicas: 1,
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

async function child(dir: string, replicas: number, killAfter?: number) {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./_train_child.ts", import.meta.url).pathname, dir, `${replicas}`],
    stdout: "piped",
    stderr: "piped",
  });
  const proc = cmd.spawn();
  let out = "";
  const dec = new TextDecoder();
  for await (const chunk of proc.stdout) {
    out += dec.decode(chunk);
    if (killAfter !== undefined && out.includes(`step ${killAfter}\n`)) {
      proc.kill("SIGKILL");
      break;
    }
  }
  const status = await proc.status;
  const err = dec.decode(await new Response(proc.stderr).arrayBuffer());
  return { out, code: status.code, signal: status.signal, err };
}

/** What a finished child run left in `dir`: every weight, its loss curve, steps it restored. */
async function childResult(dir: string, out: string) {
  const weights = (await readSafetensors(join(dir, "final.safetensors"))).tensors;
  const curve: CurvePoint[] = JSON.parse(await Deno.readTextFile(join(dir, "curve.json")));
  return { weights, curve, resumedAt: Number(/resumed (\d+)/.exec(out)![1]) };
}

for (const replicas of [1, 2]) {
  Deno.test(`train: a run killed with SIGKILL resumes to the same weights, bit for bit (${replicas} replica(s))`, async () => {
    await withTempDir(async (dir) => {
      const whole = await child(join(dir, "a"), replicas);
      assert.equal(whole.code, 0, whole.err);
      const want = await childResult(join(dir, "a"), whole.out);
      assert.equal(want.resumedAt, 0);
      // killed after step 3 (last checkpoint at 2) and after step 7 (in phase b; phase a
      // ended at 5 with a checkpoint, the last one is at 6)
      for (const k of [3, 7]) {
        const d = join(dir, `k${k}`);
        const killed = await child(d, replicas, k);
        assert.equal(killed.signal, "SIGKILL");
        const resumed = await child(d, replicas);
        assert.equal(resumed.code, 0, resumed.err);
        const got = await childResult(d, resumed.out);
        assert.ok(got.resumedAt > 0 && got.resumedAt <= k, `resumed at ${got.resumedAt}`);
        assert.deepEqual([...got.weights.keys()], [...want.weights.keys()]);
        for (const [name, t] of want.weights) {
          assertSameBytes(got.weights.get(name)!.data, t.data, `killed at ${k}: ${name}`);
        }
        assert.deepEqual(got.curve.map((p) => p.loss), want.curve.map((p) => p.loss));
      }
    });
  });
}

/**
 * Regression on {@link tinySource}'s 0/1 labels; the last row of the 5th batch loaded gets the
 * target `poison`, so step 5's loss is `poison`-valued. With 2 replicas that row is in the
 * worker's shard (shard 0, the first rows, stays here).
 */
function poisonedSource(poison: number): BatchSource {
  const base = tinySource(48);
  let loads = 0;
  return {
    groups: base.groups,
    load: async (g, rows) => {
      const b = await base.load(g, rows);
      const targets = Float32Array.from(b.labels.data);
      if (++loads === 5) targets[rows.length - 1] = poison;
      return { ...b, labels: { data: targets, shape: b.labels.shape } };
    },
  };
}

for (const [poison, replicas] of [[NaN, 1], [Infinity, 1], [NaN, 2]]) {
  Deno.test(`train: a loss of ${poison} on ${replicas} replica(s) stops with the phase and step named, the update not applied, the last checkpoint intact`, async () => {
    await setBackend("wasm");
    const model = Bert.create({ ...TRAIN_CONFIG, id2label: { "0": "score" } }, {}, 5);
    let afterStep4 = new Map<string, Float32Array>();
    const keepWeights = () => {
      afterStep4 = new Map([...model.params].map(([n, v]) => [n, Float32Array.from(v.dataSync())]));
    };
    await withTempDir(async (dir) => {
      await assert.rejects(
        train({
          model,
          phases: [{ ...PHASE, objective: "regression", steps: 8 }],
          source: poisonedSource(poison),
          stateDir: dir,
          checkpointEvery: 2,
          seed: 1,
          replicas,
          afterStep: (s) => s === 4 ? keepWeights() : undefined,
        }),
        (e: unknown) => {
          assert.ok(e instanceof TrainingDivergedError, String(e));
          assert.equal(e.phase, "p");
          assert.equal(e.step, 5);
          assert.ok(Object.is(e.loss, poison), `loss ${e.loss}`);
          assert.match(
            e.message,
            new RegExp(
              `loss is ${poison} at phase "p" step 5; the last good checkpoint is kept in .*ckpt`,
            ),
          );
          return true;
        },
      );
      const state = JSON.parse(await Deno.readTextFile(join(dir, "ckpt", "state.json")));
      assert.equal(state.step, 4);
      assert.equal(state.curve.length, 4);
      // the failed update was not applied, and the checkpoint holds the weights after step 4
      const saved = await readSafetensors(join(dir, "ckpt", "weights.safetensors"));
      assert.equal(afterStep4.size, model.params.size);
      for (const [name, w] of afterStep4) {
        assertSameBytes(model.params.get(name)!.dataSync() as Float32Array, w, `model ${name}`);
        assertSameBytes(saved.tensors.get(name)!.data, w, `checkpoint ${name}`);
      }
    });
    model.dispose();
  });
}
