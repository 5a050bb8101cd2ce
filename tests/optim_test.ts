/**
 * The optimiser, written once (`train/optim.ts`): `adamwUpdate` against values computed by hand
 * from torch.optim.AdamW's rule (with `clip_grad_norm_` first), the learning-rate schedule pinned
 * by hand, and a 1-step phase moving the weights through the trainer on both engines.
 */

import assert from "node:assert/strict";
import {
  ADAMW_DEFAULTS,
  adamwUpdate,
  clipFactor,
  linearWarmupDecay,
} from "../pipeline/train/optim.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { train } from "../pipeline/train/loop.ts";
import { tinySource, TRAIN_CONFIG, TRAIN_PHASE } from "./_train_data.ts";
import { withTempDir } from "./_util.ts";

/** |a − b| ≤ tol for every entry, naming the first that is not. */
function near(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(a.length, b.length, what);
  for (let i = 0; i < a.length; i++) {
    assert.ok(Math.abs(a[i] - b[i]) <= tol, `${what}[${i}]: ${a[i]}, expected ${b[i]}`);
  }
}

Deno.test("adamwUpdate: one parameter, two steps, decay and clipping, by hand", () => {
  // lr 0.1, weight decay 0.01, β = (0.9, 0.999), ε = 1e-6, gradients clipped to a global norm of 1
  const hyper = { ...ADAMW_DEFAULTS, weightDecay: 0.01, maxGradNorm: 1 };
  assert.deepEqual([hyper.beta1, hyper.beta2, hyper.eps], [0.9, 0.999, 1e-6]);
  const p = Float32Array.of(0.5, -1), m = new Float32Array(2), v = new Float32Array(2);

  // step 1: g = (3, 4), ‖g‖ = 5 → c = 1/(5 + 1e-6) = 0.19999996, ĝ = c·g = (0.59999988, 0.79999984)
  //   m = 0.1·ĝ = (0.059999988, 0.079999984), v = 0.001·ĝ² = (3.59999856e-4, 6.39999744e-4)
  //   m̂ = m/(1 − 0.9) = ĝ, v̂ = v/(1 − 0.999) = ĝ², so the Adam step is lr·ĝ/(|ĝ| + ε):
  //   p₀ = 0.5 − 0.1·0.59999988/0.59999988…1 − 0.1·0.01·0.5 = 0.5 − 0.0999998333 − 0.0005
  //   p₁ = −1 − 0.1·0.79999984/0.79999984…1 + 0.1·0.01·1 = −1 − 0.0999998750 + 0.001
  const c1 = clipFactor(5, hyper.maxGradNorm);
  near([c1], [0.19999996], 1e-12, "clip factor");
  adamwUpdate(p, Float32Array.of(3, 4), m, v, { lr: 0.1, t: 1, clip: c1, decay: true, hyper });
  near(m, [0.059999988, 0.079999984], 1e-8, "m after step 1"); // float32: ulp 7e-9
  near(v, [3.59999856e-4, 6.39999744e-4], 1e-10, "v after step 1"); // ulp 6e-11
  // float32 storage: within a few ulps of 1 (1.2e-7)
  near(p, [0.3995001667, -1.0989998750], 3e-7, "p after step 1");

  // step 2: g = (0.1, −0.2), ‖g‖ = 0.2236 < 1 → no clipping (c = 1)
  //   m = 0.9·m + 0.1·g = (0.0639999892, 0.0519999856)
  //   v = 0.999·v + 0.001·g² = (3.6963985614e-4, 6.7935974426e-4)
  //   m̂ = m/(1 − 0.9²) = m/0.19, v̂ = v/(1 − 0.999²) = v/0.001999
  //   p₀ = 0.3995001667 − 0.1·(0.0639999892/0.19)/(√(3.6963985614e-4/0.001999) + 1e-6)
  //        − 0.001·0.3995001667 = 0.3207681118
  //   p₁ = −1.0989998750 − 0.1·(0.0519999856/0.19)/(√(6.7935974426e-4/0.001999) + 1e-6)
  //        + 0.001·1.0989998750 = −1.1448476076
  const c2 = clipFactor(Math.hypot(0.1, 0.2), hyper.maxGradNorm);
  assert.equal(c2, 1);
  adamwUpdate(p, Float32Array.of(0.1, -0.2), m, v, { lr: 0.1, t: 2, clip: c2, decay: true, hyper });
  near(m, [0.0639999892, 0.0519999856], 1e-8, "m after step 2");
  near(v, [3.6963985614e-4, 6.7935974426e-4], 1e-10, "v after step 2");
  near(p, [0.3207681118, -1.1448476076], 3e-7, "p after step 2");
  // clipping off: no maximum, or a maximum ≤ 0
  assert.equal(clipFactor(5, undefined), 1);
  assert.equal(clipFactor(5, 0), 1);
});

/** torch.optim.AdamW's loop, written out in float64: decoupled decay first, on the old value. */
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
      x[i] *= 1 - o.lr * o.wd;
      m[i] = o.b1 * m[i] + (1 - o.b1) * g[i];
      v[i] = o.b2 * v[i] + (1 - o.b2) * g[i] * g[i];
      const mh = m[i] / (1 - o.b1 ** t), vh = v[i] / (1 - o.b2 ** t);
      x[i] -= (o.lr * mh) / (Math.sqrt(vh) + o.eps);
    }
  });
  return x;
}

Deno.test("adamwUpdate: three steps match torch.optim.AdamW's loop; decay: false leaves the decay out", () => {
  const w0 = [0.5, -1.25, 2];
  const gs = [[0.3, -0.1, 0.02], [-0.5, 0.25, 0.1], [0.05, 0.05, -0.4]];
  const hyper = { ...ADAMW_DEFAULTS, weightDecay: 0.1 };
  for (const decay of [true, false]) {
    const p = Float32Array.from(w0), m = new Float32Array(3), v = new Float32Array(3);
    gs.forEach((g, s) => {
      adamwUpdate(p, Float32Array.from(g), m, v, { lr: 0.01, t: s + 1, clip: 1, decay, hyper });
    });
    const want = adamRef(w0, gs, { lr: 0.01, b1: 0.9, b2: 0.999, eps: 1e-6, wd: decay ? 0.1 : 0 });
    near(p, want, 1e-6, `decay ${decay}`);
  }
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
    const model = Bert.create(TRAIN_CONFIG, {}, 1);
    const before = new Map([...model.params].map(([n, p]) => [n, p.data.slice()]));
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
        backend: "wasm",
      });
      assert.deepEqual(res.curve.map((p) => p.lr), [TRAIN_PHASE.lr]);
    });
    const moved = [...model.params].filter(([n, p]) =>
      p.data.some((x, i) => x !== before.get(n)![i])
    );
    assert.ok(moved.length > 0, "no weight moved");
    assert.ok(moved.some(([n]) => n === "classifier.weight"), "classifier.weight did not move");
  });
}
