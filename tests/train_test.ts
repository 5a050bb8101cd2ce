/** The shared training loop: data order, accumulation, flat tensor count, resume, divergence. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { classification, OBJECTIVE_FACTORIES } from "../pipeline/train/objectives.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import { epochBatches, type Phase, train, TrainingDivergedError } from "../pipeline/train/loop.ts";
import { tinySource, TRAIN_CONFIG } from "./_train_data.ts";
import { withTempDir } from "./_util.ts";

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

Deno.test("train: micro-batches accumulate to the same update as one batch", async () => {
  await setBackend("wasm");
  const noDropout = { ...TRAIN_CONFIG, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 };
  const weights: Float32Array[][] = [];
  for (const micro of [8, 3, 1]) {
    const model = Bert.create(noDropout, {}, 2);
    await withTempDir(async (dir) => {
      await train({
        model,
        phases: [{ ...PHASE, steps: 3, microBatchSize: micro }],
        source: tinySource(32),
        stateDir: dir,
        checkpointEvery: 0,
        seed: 3,
        replicas: 1,
      });
    });
    weights.push([...model.params.values()].map((v) => v.dataSync() as Float32Array));
    model.dispose();
  }
  for (const other of weights.slice(1)) {
    other.forEach((w, i) => {
      for (let j = 0; j < w.length; j++) {
        assert.ok(Math.abs(w[j] - weights[0][i][j]) < 2e-5, `param ${i}[${j}]`);
      }
    });
  }
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

for (const replicas of [1, 2]) {
  Deno.test(`train: a run killed with SIGKILL resumes to the same weights (${replicas} replica(s))`, async () => {
    await withTempDir(async (dir) => {
      const whole = await child(join(dir, "a"), replicas);
      assert.equal(whole.code, 0, whole.err);
      const final = /digest (\S+) loss (\S+) resumed (\d+)/.exec(whole.out)!;
      assert.equal(final[3], "0");
      // killed after step 3 (last checkpoint at 2) and after step 7 (in phase b; phase a
      // ended at 5 with a checkpoint, the last one is at 6)
      for (const k of [3, 7]) {
        const d = join(dir, `k${k}`);
        const killed = await child(d, replicas, k);
        assert.equal(killed.signal, "SIGKILL");
        const resumed = await child(d, replicas);
        assert.equal(resumed.code, 0, resumed.err);
        const m = /digest (\S+) loss (\S+) resumed (\d+)/.exec(resumed.out)!;
        assert.ok(Number(m[3]) > 0 && Number(m[3]) <= k, `resumed at ${m[3]}`);
        assert.equal(m[1], final[1], `weights after resuming a run killed at step ${k}`);
        assert.equal(m[2], final[2]);
      }
    });
  });
}

Deno.test("train: a NaN loss stops with the step named and the last checkpoint intact", async () => {
  await setBackend("wasm");
  // classification, poisoned by a NaN when the batch carries `poison`
  OBJECTIVE_FACTORIES.poisoned = () => (model, batch, ctx) => {
    const loss = classification(model, batch, ctx);
    return batch.poison ? tf.add(loss, tf.sum(batch.poison)) as tf.Scalar : loss;
  };
  const model = Bert.create(TRAIN_CONFIG, {}, 5);
  const base = tinySource(48);
  let loads = 0;
  const source = {
    groups: base.groups,
    load: async (g: number, rows: number[]) => {
      const b = await base.load(g, rows);
      if (++loads === 5) {
        b.poison = { data: new Float32Array(rows.length).fill(NaN), shape: [rows.length] };
      }
      return b;
    },
  };
  await withTempDir(async (dir) => {
    await assert.rejects(
      train({
        model,
        phases: [{ ...PHASE, objective: "poisoned", steps: 8 }],
        source: { ...source, load: (g, r) => source.load(g, r.slice()) },
        stateDir: dir,
        checkpointEvery: 2,
        seed: 1,
        replicas: 1,
      }),
      (e: unknown) => {
        assert.ok(e instanceof TrainingDivergedError);
        assert.equal(e.step, 5);
        assert.match(e.message, /loss is NaN at phase "p" step 5; the last good checkpoint/);
        return true;
      },
    );
    const state = JSON.parse(await Deno.readTextFile(join(dir, "ckpt", "state.json")));
    assert.equal(state.step, 4);
    // the failed update was not applied: the weights are still those of the step-4 checkpoint
    const saved = await readSafetensors(join(dir, "ckpt", "weights.safetensors"));
    for (const [name, v] of model.params) {
      assert.deepEqual(v.dataSync(), saved.tensors.get(name)!.data, name);
    }
  });
  delete OBJECTIVE_FACTORIES.poisoned;
  model.dispose();
});
