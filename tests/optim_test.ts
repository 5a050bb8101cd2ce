/** AdamW against values computed by hand from torch.optim.AdamW's update rule. */

import assert from "node:assert/strict";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { AdamW, linearWarmupDecay } from "../pipeline/train/optim.ts";

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
  assert.ok(Math.abs(f(60) - 5e-4) < 1e-12);
  assert.equal(f(110), 0);
  assert.equal(f(200), 0);
  assert.equal(linearWarmupDecay(1e-3, 0, 0)(3), 1e-3);
});
