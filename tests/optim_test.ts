/** AdamW against values computed by hand from torch.optim.AdamW's update rule. */

import assert from "node:assert/strict";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { AdamW, linearWarmupDecay } from "../pipeline/train/optim.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { train } from "../pipeline/train/loop.ts";
import { tinySource, TRAIN_CONFIG, TRAIN_PHASE } from "./_train_data.ts";
import { withTempDir } from "./_util.ts";

function adamRef(
  p: number[],
  grads: number[][],
  o: { lr: number; b1: number; b2: number; eps: number; wd: number },
): number[] {
  const m = p.map(() => 0), v = p.map(() => 0);
  const x = [...p];
  grads.forEach((g, s) => {
    const t = s + 1;
    for (let i = 0; i < x.length; i++) {
      x[i] *= 1 - o.lr * o.wd; // decoupled decay first, on the old value
      m[i] = o.b1 * m[i] + (1 - o.b1) * g[i];
      v[i] = o.b2 * v[i] + (1 - o.b2) * g[i] * g[i];
      const mh = m[i] / (1 - o.b1 ** t), vh = v[i] / (1 - o.b2 ** t);
      x[i] -= (o.lr * mh) / (Math.sqrt(vh) + o.eps);
    }
  });
  return x;
}

Deno.test("AdamW: three steps match the hand-computed rule; no decay on bias/LayerNorm", async () => {
  await setBackend("wasm");
  const w0 = [0.5, -1.25, 2], b0 = [0.1, -0.2, 0.3];
  const params = new Map<string, tf.Variable>([
    ["encoder.layer.0.output.dense.weight", tf.variable(tf.tensor1d(w0))],
    ["encoder.layer.0.output.dense.bias", tf.variable(tf.tensor1d(b0))],
  ]);
  const opt = new AdamW(params, { lr: 0.01, weightDecay: 0.1, eps: 1e-6 });
  const gs = [[0.3, -0.1, 0.02], [-0.5, 0.25, 0.1], [0.05, 0.05, -0.4]];
  for (const g of gs) {
    const grads = new Map([...params.keys()].map((k) => [k, tf.tensor1d(g)] as const));
    opt.step(grads);
    tf.dispose([...grads.values()]);
  }
  const o = { lr: 0.01, b1: 0.9, b2: 0.999, eps: 1e-6 };
  const w = params.get("encoder.layer.0.output.dense.weight")!.dataSync();
  const b = params.get("encoder.layer.0.output.dense.bias")!.dataSync();
  adamRef(w0, gs, { ...o, wd: 0.1 }).forEach((x, i) => assert.ok(Math.abs(w[i] - x) < 1e-6));
  adamRef(b0, gs, { ...o, wd: 0 }).forEach((x, i) => assert.ok(Math.abs(b[i] - x) < 1e-6));
  opt.dispose();
  tf.dispose([...params.values()]);
});

Deno.test("AdamW: global-norm clipping scales gradients, returns the pre-clip norm", async () => {
  await setBackend("wasm");
  const params = new Map([["a.weight", tf.variable(tf.tensor1d([0, 0]))]]);
  const opt = new AdamW(params, { lr: 1, weightDecay: 0, maxGradNorm: 1, eps: 0 });
  const g = new Map([["a.weight", tf.tensor1d([3, 4])]]);
  const { gradNorm } = opt.step(g);
  assert.ok(Math.abs(gradNorm - 5) < 1e-6);
  // first Adam step moves each coordinate by lr·sign(g) whatever the scale: check the moments
  const state = opt.getState();
  const m = state.m["a.weight"];
  assert.ok(Math.abs(m[0] - 0.1 * 0.6) < 1e-6 && Math.abs(m[1] - 0.1 * 0.8) < 1e-6);
  tf.dispose([...g.values(), ...params.values()]);
  opt.dispose();
});

Deno.test("AdamW: state round-trips and resumes identically", async () => {
  await setBackend("wasm");
  const mk = () => new Map([["x.weight", tf.variable(tf.tensor1d([1, 2, 3]))]]);
  const grads = (s: number) => new Map([["x.weight", tf.tensor1d([s, -s, 0.5 * s])]]);
  const a = mk(), optA = new AdamW(a, { lr: 0.1 });
  for (let s = 1; s <= 4; s++) optA.step(grads(s));
  const b = mk(), optB = new AdamW(b, { lr: 0.1 });
  for (let s = 1; s <= 2; s++) optB.step(grads(s));
  const optC = new AdamW(b, { lr: 0.1 });
  optC.setState(optB.getState());
  for (let s = 3; s <= 4; s++) optC.step(grads(s));
  assert.deepEqual(
    Array.from(b.get("x.weight")!.dataSync()),
    Array.from(a.get("x.weight")!.dataSync()),
  );
  assert.equal(optC.stepCount, 4);
  assert.throws(() => optC.setState({ step: 1, m: {}, v: {} }), /state for x.weight/);
});

Deno.test("linear warmup then linear decay", () => {
  const f = linearWarmupDecay(1e-3, 10, 110);
  assert.equal(f(5), 5e-4);
  assert.equal(f(10), 1e-3);
  assert.ok(Math.abs(f(60) - 5.1e-4) < 1e-12);
  assert.equal(f(111), 0);
  assert.equal(f(200), 0);
  assert.equal(linearWarmupDecay(1e-3, 0, 0)(3), 1e-3);
});

/** `f(1), …, f(n)`, each rounded to 1e-15 so hand-written decimals compare exactly. */
function rates(f: (step: number) => number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => Math.round(f(i + 1) * 1e15) / 1e15);
}

Deno.test("schedule: every step of a phase gets a non-zero rate; first and last steps by hand", () => {
  // warmup 0: step 1 gets the peak, step s gets peak·(total − s + 1)/total
  assert.deepEqual(rates(linearWarmupDecay(1e-3, 0, 1), 2), [1e-3, 0]);
  assert.deepEqual(rates(linearWarmupDecay(1e-3, 0, 2), 3), [1e-3, 5e-4, 0]);
  assert.deepEqual(rates(linearWarmupDecay(1e-3, 0, 4), 4), [1e-3, 7.5e-4, 5e-4, 2.5e-4]);
  // warmup 2 of 6: peak·s/2 up, then peak·(6 − s + 1)/4 down
  assert.deepEqual(rates(linearWarmupDecay(1e-3, 2, 6), 7), [
    5e-4,
    1e-3,
    1e-3,
    7.5e-4,
    5e-4,
    2.5e-4,
    0,
  ]);
  // warmup 10 of 110: first step peak/10, last warmup and first decay step the peak, last peak/100
  const f = linearWarmupDecay(1e-3, 10, 110);
  assert.deepEqual(rates(f, 11).filter((_, i) => [0, 9, 10].includes(i)), [1e-4, 1e-3, 1e-3]);
  assert.equal(rates(f, 110)[109], 1e-5);
  // a phase that is all warmup ends at the peak
  assert.deepEqual(rates(linearWarmupDecay(1e-3, 2, 2), 2), [5e-4, 1e-3]);
  for (
    const [warmup, total] of [[0, 1], [0, 2], [0, 3], [1, 1], [1, 2], [3, 5], [5, 6], [7, 100]]
  ) {
    const g = linearWarmupDecay(1e-3, warmup, total);
    for (let s = 1; s <= total; s++) {
      assert.ok(
        g(s) > 0,
        `warmup ${warmup}, total ${total}: step ${s}`,
      );
    }
  }
});

for (const engine of ["tfjs", "onnx"] as const) {
  Deno.test(`train (${engine} engine): a 1-step phase with warmup 0 takes one step at the peak rate and moves the weights`, async () => {
    await setBackend("wasm");
    const model = Bert.create(TRAIN_CONFIG, {}, 1);
    const before = new Map([...model.params].map(([n, p]) => [n, p.dataSync().slice()]));
    await withTempDir(async (dir) => {
      const res = await train({
        model,
        phases: [{ ...TRAIN_PHASE, steps: 1, warmup: 0 }],
        source: tinySource(16),
        stateDir: dir,
        checkpointEvery: 0,
        seed: 1,
        replicas: 1,
        engine,
      });
      assert.deepEqual(res.curve.map((p) => p.lr), [TRAIN_PHASE.lr]);
    });
    const moved = [...model.params].filter(([n, p]) =>
      p.dataSync().some((x, i) => x !== before.get(n)![i])
    );
    assert.ok(moved.length > 0, "no weight moved");
    assert.ok(moved.some(([n]) => n === "classifier.weight"), "classifier.weight did not move");
    model.dispose();
  });
}
