/**
 * The distillation loss terms, each against a float64 reference written here with plain loops
 * (independently of the tfjs code), on the cpu and wasm backends: padding, temperature,
 * projection, head grouping, TinyBERT's ≤ −100 rule, gradients and tensor leaks.
 */

import assert from "node:assert/strict";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import {
  attentionKl,
  attentionMse,
  cosineHidden,
  hardCrossEntropy,
  hiddenMse,
  klDivergence,
  logitMse,
  matchHeads,
  mseRegression,
  softCrossEntropy,
  valueRelationKl,
} from "../pipeline/distill/losses.ts";
import { LOSS_TERMS } from "../pipeline/distill/objective.ts";
import { assertClose, assertInputError, onBackends, randomArray } from "./_util.ts";

const BACKENDS = ["cpu", "wasm"] as const;
const TOL = 1e-5;

/** Run `f` on both backends; assert each scalar it returns matches `expected[i]`. */
async function expectOnBackends(
  what: string,
  f: () => tf.Tensor[],
  expected: number[],
  tol = TOL,
): Promise<void> {
  const res = await onBackends([...BACKENDS], f);
  res.forEach((vals, k) => {
    vals.forEach((v, i) => {
      const where = `${what} [${BACKENDS[k]}] #${i}`;
      if (expected[i] !== 0) assertClose(v, [expected[i]], tol, where);
      else assert.ok(Math.abs(v[0]) < 1e-6, `${where}: ${v[0]} is not 0`);
    });
  });
}

// ---------- float64 references (plain loops) ----------

function maskOf(lens: number[], S: number): Float32Array {
  const m = new Float32Array(lens.length * S);
  lens.forEach((len, b) => {
    for (let s = 0; s < len; s++) m[b * S + s] = 1;
  });
  return m;
}

/** Mean of groups of k consecutive heads of x [B, h, S, T]. */
function refAvgHeads(x: ArrayLike<number>, B: number, h: number, k: number, ST: number): number[] {
  const g = h / k;
  const out = new Array(B * g * ST).fill(0);
  for (let b = 0; b < B; b++) {
    for (let gi = 0; gi < g; gi++) {
      for (let e = 0; e < ST; e++) {
        let sum = 0;
        for (let j = 0; j < k; j++) sum += x[(b * h + gi * k + j) * ST + e];
        out[(b * g + gi) * ST + e] = sum / k;
      }
    }
  }
  return out;
}

/** Both sides at a common head count, like matchHeads. */
function refMatch(
  s: ArrayLike<number>,
  hs: number,
  t: ArrayLike<number>,
  ht: number,
  B: number,
  ST: number,
): [ArrayLike<number>, ArrayLike<number>, number] {
  if (ht > hs) return [s, refAvgHeads(t, B, ht, ht / hs, ST), hs];
  if (hs > ht) return [refAvgHeads(s, B, hs, hs / ht, ST), t, ht];
  return [s, t, hs];
}

function refAttentionMse(
  s0: ArrayLike<number>,
  hs: number,
  t0: ArrayLike<number>,
  ht: number,
  lens: number[],
  S: number,
): number {
  const B = lens.length;
  const [s, t, h] = refMatch(s0, hs, t0, ht, B, S * S);
  let sum = 0, count = 0;
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < h; hh++) {
      for (let i = 0; i < lens[b]; i++) {
        for (let j = 0; j < lens[b]; j++) {
          const idx = ((b * h + hh) * S + i) * S + j;
          const sv = s[idx] <= -100 ? 0 : s[idx];
          const tv = t[idx] <= -100 ? 0 : t[idx];
          sum += (sv - tv) ** 2;
          count++;
        }
      }
    }
  }
  return sum / count;
}

function refHiddenMse(
  x: ArrayLike<number>,
  Hs: number,
  w: ArrayLike<number> | null,
  bias: ArrayLike<number> | null,
  t: ArrayLike<number>,
  Ht: number,
  lens: number[],
  S: number,
): number {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let s = 0; s < len; s++) {
      const row = b * S + s;
      for (let o = 0; o < Ht; o++) {
        let y = 0;
        if (w) { for (let i = 0; i < Hs; i++) y += x[row * Hs + i] * w[o * Hs + i]; }
        else y = x[row * Hs + o];
        if (bias) y += bias[o];
        sum += (y - t[row * Ht + o]) ** 2;
      }
      count += Ht;
    }
  });
  return sum / count;
}

function logSoftmax(z: number[]): number[] {
  const m = Math.max(...z);
  const l = Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
  return z.map((v) => v - m - l);
}

function rows(x: ArrayLike<number>, B: number, C: number): number[][] {
  return Array.from({ length: B }, (_, b) => Array.from({ length: C }, (_, c) => x[b * C + c]));
}

function refSoftCe(zs: ArrayLike<number>, zt: ArrayLike<number>, B: number, C: number, T: number) {
  let sum = 0;
  const rs = rows(zs, B, C), rt = rows(zt, B, C);
  for (let b = 0; b < B; b++) {
    const ls = logSoftmax(rs[b].map((v) => v / T)), lt = logSoftmax(rt[b].map((v) => v / T));
    for (let c = 0; c < C; c++) sum -= Math.exp(lt[c]) * ls[c];
  }
  return sum / (B * C);
}

/** KL(p_t ‖ p_s) summed over the batch (no mean, no T²). */
function refKlSum(zs: ArrayLike<number>, zt: ArrayLike<number>, B: number, C: number, T: number) {
  let sum = 0;
  const rs = rows(zs, B, C), rt = rows(zt, B, C);
  for (let b = 0; b < B; b++) {
    const ls = logSoftmax(rs[b].map((v) => v / T)), lt = logSoftmax(rt[b].map((v) => v / T));
    for (let c = 0; c < C; c++) sum += Math.exp(lt[c]) * (lt[c] - ls[c]);
  }
  return sum;
}

function refCosine(
  s: ArrayLike<number>,
  t: ArrayLike<number>,
  H: number,
  lens: number[],
  S: number,
) {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let p = 0; p < len; p++) {
      let dot = 0, ns = 0, nt = 0;
      for (let d = 0; d < H; d++) {
        const a = s[(b * S + p) * H + d], c = t[(b * S + p) * H + d];
        dot += a * c;
        ns += a * a;
        nt += c * c;
      }
      sum += 1 - dot / (Math.sqrt(ns) * Math.sqrt(nt));
      count++;
    }
  });
  return sum / count;
}

/** KL over real keys of matched [B, h, S, S] scores, mean over heads × real query rows. */
function refRowKl(
  s: ArrayLike<number>,
  t: ArrayLike<number>,
  h: number,
  lens: number[],
  S: number,
) {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let hh = 0; hh < h; hh++) {
      for (let i = 0; i < len; i++) {
        const base = ((b * h + hh) * S + i) * S;
        const rs = Array.from({ length: len }, (_, j) => s[base + j]);
        const rt = Array.from({ length: len }, (_, j) => t[base + j]);
        const ls = logSoftmax(rs), lt = logSoftmax(rt);
        for (let j = 0; j < len; j++) sum += Math.exp(lt[j]) * (lt[j] - ls[j]);
        count++;
      }
    }
  });
  return sum / count;
}

function refAttentionKl(
  s0: ArrayLike<number>,
  hs: number,
  t0: ArrayLike<number>,
  ht: number,
  lens: number[],
  S: number,
): number {
  const [s, t, h] = refMatch(s0, hs, t0, ht, lens.length, S * S);
  return refRowKl(s, t, h, lens, S);
}

/** V·Vᵀ/√d of values [B, h, S, d] → [B, h, S, S]. */
function refRelation(v: ArrayLike<number>, B: number, h: number, S: number, d: number): number[] {
  const out = new Array(B * h * S * S).fill(0);
  for (let bh = 0; bh < B * h; bh++) {
    for (let i = 0; i < S; i++) {
      for (let j = 0; j < S; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += v[(bh * S + i) * d + e] * v[(bh * S + j) * d + e];
        out[(bh * S + i) * S + j] = dot / Math.sqrt(d);
      }
    }
  }
  return out;
}

// ---------- test data ----------

const S = 5;
const LENS = [5, 3]; // example 2 is shorter: positions 3, 4 are padding
const B = LENS.length;

function isPadScore(idx: number, h: number): boolean {
  const j = idx % S, i = Math.floor(idx / S) % S, b = Math.floor(idx / (S * S * h));
  return i >= LENS[b] || j >= LENS[b];
}

/** Padding in a [B, S, width] tensor, or in a [B, heads, S, width] one when `heads` is given. */
function isPadToken(idx: number, width: number, heads = 1): boolean {
  const p = Math.floor(idx / width) % S, b = Math.floor(idx / (width * S * heads));
  return p >= LENS[b];
}

/** A copy with padded entries replaced: NaN for teachers, big finite junk for students. */
function junk(x: Float32Array, isPad: (i: number) => boolean, value: number): Float32Array {
  return x.map((v, i) => (isPad(i) ? (Number.isNaN(value) ? NaN : value * ((i % 7) - 3)) : v));
}

const mask = () => tf.tensor2d(maskOf(LENS, S), [B, S]);
const t4 = (x: ArrayLike<number>, h: number, last = S) =>
  tf.tensor4d(Float32Array.from(x), [B, h, S, last]);

// ---------- tests ----------

Deno.test("LOSS_TERMS names every term with what it needs", () => {
  assert.deepEqual(Object.keys(LOSS_TERMS).sort(), [
    "attention_kl",
    "attention_mse",
    "cosine",
    "hard_ce",
    "hidden_mse",
    "kl",
    "logit_mse",
    "soft_ce",
    "value_relation",
  ]);
  assert.deepEqual(LOSS_TERMS.attention_mse.needs, ["scores"]);
  assert.deepEqual(LOSS_TERMS.value_relation.needs, ["values"]);
  assert.deepEqual(LOSS_TERMS.hard_ce.needs, ["labels"]);
  for (const info of Object.values(LOSS_TERMS)) assert.ok(info.description.length > 10);
});

Deno.test("attentionMse: literal case with padding and the ≤ −100 rule", async () => {
  // B = 2, 1 head, S = 2; example 2 has one real token.
  // Example 1: s = [[1, 2], [3, −150]], t = [[0, 2], [1, 5]]; −150 → 0, so the squared errors are
  //   1, 0, 4, (0 − 5)² = 25 → 30. Example 2: only pair (0, 0) counts: (4 − 1)² = 9.
  // Count = heads · Σ len² = 1 · (4 + 1) = 5 → loss = 39 / 5 = 7.8.
  await expectOnBackends("literal attention", () => {
    const s = tf.tensor4d([1, 2, 3, -150, 4, 77, -10000, 8], [2, 1, 2, 2]);
    const t = tf.tensor4d([0, 2, 1, 5, 1, 0, 0, 0], [2, 1, 2, 2]);
    return [attentionMse(s, t, tf.tensor2d([1, 1, 1, 0], [2, 2]))];
  }, [7.8]);
});

Deno.test("attentionMse: random scores vs reference; padded values never matter", async () => {
  const h = 2, n = B * h * S * S;
  const s = randomArray(n, 1).map((v) => v * 3);
  const t = randomArray(n, 2).map((v) => v * 3);
  // real entries ≤ −100 in both sides, and one exactly −100 (the rule is ≤)
  s[1] = -200;
  t[7] = -100;
  t[1 * S * S + 2] = -1e4;
  const expected = refAttentionMse(s, h, t, h, LENS, S);
  // without the rule the number would differ
  assert.ok(
    Math.abs(expected - refAttentionMse(s.map((v) => Math.max(v, -99)), h, t, h, LENS, S)) > 1,
  );
  const sJ = junk(s, (i) => isPadScore(i, h), 1000);
  const tJ = junk(t, (i) => isPadScore(i, h), NaN);
  await expectOnBackends("attentionMse", () => [
    attentionMse(t4(s, h), t4(t, h), mask()),
    attentionMse(t4(sJ, h), t4(tJ, h), mask()),
    attentionMse(t4(s, h), t4(t.map((v, i) => (isPadScore(i, h) ? 0 : v)), h), mask()),
  ], [expected, expected, expected]);
});

Deno.test("head grouping: teacher 4 vs student 2, student 4 vs teacher 2, 3 vs 2 throws", async () => {
  const n2 = B * 2 * S * S, n4 = B * 4 * S * S;
  const s2 = randomArray(n2, 3), t4h = randomArray(n4, 4);
  const s4 = randomArray(n4, 5), t2 = randomArray(n2, 6);
  const tAvg = refAvgHeads(t4h, B, 4, 2, S * S); // teacher heads (0,1), (2,3) averaged
  const sAvg = refAvgHeads(s4, B, 4, 2, S * S);
  await expectOnBackends("grouped heads", () => [
    attentionMse(t4(s2, 2), t4(t4h, 4), mask()),
    attentionMse(t4(s2, 2), t4(tAvg, 2), mask()),
    attentionMse(t4(s4, 4), t4(t2, 2), mask()),
    attentionKl(t4(s2, 2), t4(t4h, 4), mask()),
    attentionKl(t4(s4, 4), t4(t2, 2), mask()),
  ], [
    refAttentionMse(s2, 2, tAvg, 2, LENS, S),
    refAttentionMse(s2, 2, tAvg, 2, LENS, S),
    refAttentionMse(sAvg, 2, t2, 2, LENS, S),
    refAttentionKl(s2, 2, t4h, 4, LENS, S),
    refAttentionKl(sAvg, 2, t2, 2, LENS, S),
  ]);
  // matchHeads itself, and the gradient reaches every student head when the student is grouped
  await setBackend("cpu");
  const [a, b] = matchHeads(t4(s2, 2), t4(t4h, 4));
  assertClose(b.dataSync(), tAvg, 1e-6, "matchHeads teacher average");
  assert.equal(a.shape[1], 2);
  const g = tf.grad((x: tf.Tensor) => attentionMse(x as tf.Tensor4D, t4(t2, 2), mask()))(t4(s4, 4));
  const gv = g.dataSync();
  for (let hh = 0; hh < 4; hh++) {
    assert.ok(Math.abs(gv[hh * S * S]) > 0, `head ${hh} gets a gradient`);
  }
  tf.dispose([a, b, g]);

  const n3 = B * 3 * S * S;
  for (const f of [attentionMse, attentionKl]) {
    await assertInputError(() => f(t4(randomArray(n3, 7), 3), t4(s2, 2), mask()), [
      "teacher and student head counts are incompatible",
      "expected one head count a multiple of the other",
      "got teacher 2, student 3",
    ]);
  }
  await assertInputError(() => matchHeads(t4(s2, 2), t4(randomArray(n3, 7), 3)), [
    "got teacher 3, student 2",
  ]);
  await assertInputError(
    () =>
      valueRelationKl(
        t4(randomArray(B * 3 * S * 2, 8), 3, 2),
        t4(s2.slice(0, B * 2 * S * 2), 2, 2),
        mask(),
      ),
    ["head counts are incompatible"],
  );
});

Deno.test("hiddenMse: projection with widths 3 → 4, bias, padding; width errors", async () => {
  const Hs = 3, Ht = 4;
  const x = randomArray(B * S * Hs, 10), t = randomArray(B * S * Ht, 11);
  const w = randomArray(Ht * Hs, 12).map((v) => v * 2), bias = randomArray(Ht, 13);
  const tSame = randomArray(B * S * Hs, 14);
  const expected = refHiddenMse(x, Hs, w, bias, t, Ht, LENS, S);
  const xJ = junk(x, (i) => isPadToken(i, Hs), 50);
  const tJ = junk(t, (i) => isPadToken(i, Ht), NaN);
  await expectOnBackends("hiddenMse", () => [
    hiddenMse(
      tf.tensor3d(x, [B, S, Hs]),
      tf.tensor3d(t, [B, S, Ht]),
      tf.tensor2d(w, [Ht, Hs]),
      tf.tensor1d(bias),
      mask(),
    ),
    hiddenMse(
      tf.tensor3d(xJ, [B, S, Hs]),
      tf.tensor3d(tJ, [B, S, Ht]),
      tf.tensor2d(w, [Ht, Hs]),
      tf.tensor1d(bias),
      mask(),
    ),
    hiddenMse(tf.tensor3d(x, [B, S, Hs]), tf.tensor3d(tSame, [B, S, Hs]), null, null, mask()),
  ], [expected, expected, refHiddenMse(x, Hs, null, null, tSame, Hs, LENS, S)]);

  await setBackend("cpu");
  await assertInputError(
    () => hiddenMse(tf.zeros([B, S, Hs]), tf.zeros([B, S, Ht]), null, null, mask()),
    ["hidden widths differ", "expected hidden width 3", "got 4"],
  );
  await assertInputError(
    () => hiddenMse(tf.zeros([B, S, Hs]), tf.zeros([B, S, Ht]), tf.zeros([Hs, Ht]), null, mask()),
    ["expected [4, 3]", "got [3, 4]"],
  );
});

Deno.test("hiddenMse gradient w.r.t. W: finite and matches a finite difference", async () => {
  const Hs = 3, Ht = 4;
  const x = randomArray(B * S * Hs, 20), t = randomArray(B * S * Ht, 21);
  const w = randomArray(Ht * Hs, 22), bias = randomArray(Ht, 23);
  const tJ = junk(t, (i) => isPadToken(i, Ht), NaN); // NaN padding must not reach the gradient
  const entry = 5; // W[1, 2]
  const eps = 1e-4;
  const wp = Float64Array.from(w), wm = Float64Array.from(w);
  wp[entry] += eps;
  wm[entry] -= eps;
  const fd = (refHiddenMse(x, Hs, wp, bias, t, Ht, LENS, S) -
    refHiddenMse(x, Hs, wm, bias, t, Ht, LENS, S)) / (2 * eps);
  const res = await onBackends([...BACKENDS], () => {
    const xs = tf.tensor3d(x, [B, S, Hs]), ts = tf.tensor3d(tJ, [B, S, Ht]);
    const f = (W: tf.Tensor) => hiddenMse(xs, ts, W as tf.Tensor2D, tf.tensor1d(bias), mask());
    return [tf.grad(f)(tf.tensor2d(w, [Ht, Hs]))];
  });
  for (const [k, [g]] of res.entries()) {
    assert.ok(g.every(Number.isFinite), `finite gradient on ${BACKENDS[k]}`);
    assertClose([g[entry]], [fd], 1e-3, `dL/dW[1,2] vs finite difference on ${BACKENDS[k]}`);
  }
});

Deno.test("softCrossEntropy and klDivergence: 2 classes by hand, T = 1 and T = 2", async () => {
  // z_s = [1, 0], z_t = [0, 2], T = 2: z_t/T = [0, 1] → p_t = [1, e]/(1 + e) = [0.268941, 0.731059];
  // log_softmax(z_s/T) = [0.5, 0] − log(1 + e^0.5) = [−0.474077, −0.974077];
  // soft CE = −(0.268941·(−0.474077) + 0.731059·(−0.974077)) / (B·C = 2) = 0.839606 / 2 = 0.419803.
  // log p_t = [−1.313262, −0.313262]; KL = 0.268941·(−0.839185) + 0.731059·0.660815 = 0.257403,
  // times T² = 4 → 1.029613. At T = 1: soft CE 0.597029, KL 0.828725.
  await expectOnBackends(
    "2-class literal",
    () => {
      const zs = tf.tensor2d([[1, 0]]), zt = tf.tensor2d([[0, 2]]);
      return [
        softCrossEntropy(zs, zt, 2),
        klDivergence(zs, zt, 2),
        softCrossEntropy(zs, zt),
        klDivergence(zs, zt, 1),
      ];
    },
    [0.419803, 1.029613, 0.597029, 0.828725],
    2e-6,
  );

  const Bn = 4, C = 3;
  const zs = randomArray(Bn * C, 30).map((v) => v * 4),
    zt = randomArray(Bn * C, 31).map((v) => v * 4);
  const cases: number[] = [];
  for (const T of [1, 2]) {
    cases.push(refSoftCe(zs, zt, Bn, C, T), (T * T * refKlSum(zs, zt, Bn, C, T)) / Bn);
  }
  await expectOnBackends("random logits", () => {
    const s = tf.tensor2d(zs, [Bn, C]), t = tf.tensor2d(zt, [Bn, C]);
    return [
      softCrossEntropy(s, t, 1),
      klDivergence(s, t, 1),
      softCrossEntropy(s, t, 2),
      klDivergence(s, t, 2),
    ];
  }, cases);
  // the T² factor: klDivergence(T = 2) is 4× the batch-mean KL at T = 2
  assert.ok(Math.abs(cases[3] / (refKlSum(zs, zt, Bn, C, 2) / Bn) - 4) < 1e-12);

  await setBackend("cpu");
  await assertInputError(() => klDivergence(tf.zeros([2, 3]), tf.zeros([2, 3]), 0), [
    "temperature must be a positive number",
  ]);
  await assertInputError(() => softCrossEntropy(tf.zeros([2, 3]), tf.zeros([2, 4])), [
    "logits shapes differ",
  ]);
});

Deno.test("cosineHidden: real tokens only; width mismatch is an InputError", async () => {
  const H = 4;
  const s = randomArray(B * S * H, 40), t = randomArray(B * S * H, 41);
  const expected = refCosine(s, t, H, LENS, S);
  const sJ = junk(s, (i) => isPadToken(i, H), 30);
  const tJ = junk(t, (i) => isPadToken(i, H), NaN);
  await expectOnBackends("cosine", () => [
    cosineHidden(tf.tensor3d(s, [B, S, H]), tf.tensor3d(t, [B, S, H]), mask()),
    cosineHidden(tf.tensor3d(sJ, [B, S, H]), tf.tensor3d(tJ, [B, S, H]), mask()),
    // same direction, different length: loss 0
    cosineHidden(
      tf.tensor3d(s, [B, S, H]),
      tf.mul(tf.tensor3d(s, [B, S, H]), 3) as tf.Tensor3D,
      mask(),
    ),
  ], [expected, expected, 0]);
  await setBackend("cpu");
  await assertInputError(
    () => cosineHidden(tf.zeros([B, S, 4]), tf.zeros([B, S, 6]), mask()),
    ["hidden widths differ", "expected hidden width 4", "got 6"],
  );
});

Deno.test("attentionKl: distributions over real keys only", async () => {
  const h = 2, n = B * h * S * S;
  const s = randomArray(n, 50).map((v) => v * 3), t = randomArray(n, 51).map((v) => v * 3);
  const expected = refAttentionKl(s, h, t, h, LENS, S);
  // the student as the model produces it: −10000 added on padded keys; teacher padding NaN
  const sModel = s.map((v, i) => {
    const j = i % S, b = Math.floor(i / (S * S * h));
    return j >= LENS[b] ? v - 10000 : v;
  });
  const tJ = junk(t, (i) => isPadScore(i, h), NaN);
  await expectOnBackends("attentionKl", () => [
    attentionKl(t4(s, h), t4(t, h), mask()),
    attentionKl(t4(sModel, h), t4(tJ, h), mask()),
    attentionKl(t4(t, h), t4(tJ, h), mask()), // identical distributions on real keys → 0
  ], [expected, expected, 0]);
});

Deno.test("valueRelationKl: relations V·Vᵀ/√d with different head widths and head counts", async () => {
  const hs = 2, ds = 3, ht = 4, dt = 5;
  const vs = randomArray(B * hs * S * ds, 60).map((v) => v * 2);
  const vt = randomArray(B * ht * S * dt, 61).map((v) => v * 2);
  const rs = refRelation(vs, B, hs, S, ds), rt = refRelation(vt, B, ht, S, dt);
  const expected = refRowKl(rs, refAvgHeads(rt, B, ht, ht / hs, S * S), hs, LENS, S);
  const vtSame = randomArray(B * hs * S * dt, 62);
  const expectedSame = refRowKl(rs, refRelation(vtSame, B, hs, S, dt), hs, LENS, S);
  const vsJ = junk(vs, (i) => isPadToken(i, ds, hs), 20);
  const vtJ = junk(vt, (i) => isPadToken(i, dt, ht), NaN);
  await expectOnBackends("valueRelation", () => [
    valueRelationKl(t4(vs, hs, ds), t4(vt, ht, dt), mask()),
    valueRelationKl(t4(vsJ, hs, ds), t4(vtJ, ht, dt), mask()),
    valueRelationKl(t4(vs, hs, ds), t4(vtSame, hs, dt), mask()),
  ], [expected, expected, expectedSame]);
});

Deno.test("hardCrossEntropy and mseRegression", async () => {
  // logits [2, 0], label 0: −log_softmax = log(1 + e^−2) = 0.126928
  // logits [0, 0], label 1: log 2 = 0.693147 → mean 0.410038
  await expectOnBackends("hard CE literal", () => [
    hardCrossEntropy(tf.tensor2d([[2, 0], [0, 0]]), tf.tensor1d([0, 1], "int32")),
  ], [(0.1269280110429726 + Math.LN2) / 2]);
  const Bn = 5, C = 3;
  const z = randomArray(Bn * C, 70).map((v) => v * 3), labels = [2, 0, 1, 1, 2];
  let ce = 0;
  rows(z, Bn, C).forEach((r, b) => (ce -= logSoftmax(r)[labels[b]]));
  const p = randomArray(Bn, 71), y = randomArray(Bn, 72);
  let mse = 0;
  for (let b = 0; b < Bn; b++) mse += (p[b] - y[b]) ** 2;
  await expectOnBackends("hard CE / mse", () => [
    hardCrossEntropy(tf.tensor2d(z, [Bn, C]), tf.tensor1d(labels, "int32")),
    mseRegression(tf.tensor2d(p, [Bn, 1]), tf.tensor1d(y)),
    mseRegression(tf.tensor1d(p), tf.tensor1d(y)),
  ], [ce / Bn, mse / Bn, mse / Bn]);
  await setBackend("cpu");
  await assertInputError(() => mseRegression(tf.zeros([Bn, 2]), tf.zeros([Bn]) as tf.Tensor1D), [
    "one number per example",
  ]);
});

Deno.test("gradients stay finite with NaN teacher padding; no term leaks tensors", async () => {
  const h = 2, H = 4;
  const sc = randomArray(B * h * S * S, 80),
    tc = junk(randomArray(B * h * S * S, 81), (i) => isPadScore(i, h), NaN);
  const hs = randomArray(B * S * H, 82),
    ht = junk(randomArray(B * S * H, 83), (i) => isPadToken(i, H), NaN);
  const vs = randomArray(B * h * S * 3, 84),
    vt = junk(randomArray(B * 4 * S * 2, 85), (i) => isPadToken(i, 2, 4), NaN);
  for (const backend of BACKENDS) {
    await setBackend(backend);
    const m = mask();
    const s4 = t4(sc, h),
      tt4 = t4(tc, h),
      s3 = tf.tensor3d(hs, [B, S, H]),
      tt3 = tf.tensor3d(ht, [B, S, H]);
    const sv = t4(vs, h, 3), tv = tf.tensor4d(vt, [B, 4, S, 2]);
    const w = tf.tensor2d(randomArray(H * H, 86), [H, H]), bias = tf.tensor1d(randomArray(H, 87));
    const zs = tf.tensor2d([[1, 2, 3], [0, -1, 1]]), zt = tf.tensor2d([[0, 1, 0], [2, 2, -1]]);
    const labels = tf.tensor1d([1, 0], "int32");
    const pred = tf.tensor2d([[0.3], [0.2]]), targets = tf.tensor1d([0.5, -1]);
    const terms: [string, tf.Tensor, (x: tf.Tensor) => tf.Scalar][] = [
      ["attentionMse", s4, (x) => attentionMse(x as tf.Tensor4D, tt4, m)],
      ["attentionKl", s4, (x) => attentionKl(x as tf.Tensor4D, tt4, m)],
      ["hiddenMse", s3, (x) => hiddenMse(x as tf.Tensor3D, tt3, w, bias, m)],
      ["cosineHidden", s3, (x) => cosineHidden(x as tf.Tensor3D, tt3, m)],
      ["valueRelationKl", sv, (x) => valueRelationKl(x as tf.Tensor4D, tv, m)],
      ["softCrossEntropy", zs, (x) => softCrossEntropy(x as tf.Tensor2D, zt, 2)],
      ["klDivergence", zs, (x) => klDivergence(x as tf.Tensor2D, zt, 2)],
      ["hardCrossEntropy", zs, (x) => hardCrossEntropy(x as tf.Tensor2D, labels)],
      ["mseRegression", pred, (x) => mseRegression(x, targets)],
    ];
    for (const [name, x, f] of terms) {
      const before = tf.memory().numTensors;
      const loss = f(x); // no surrounding tidy: the term must clean up after itself
      assert.ok(Number.isFinite(loss.dataSync()[0]), `${name} finite on ${backend}`);
      loss.dispose();
      assert.equal(tf.memory().numTensors, before, `${name} leaks tensors on ${backend}`);
      const g = tf.tidy(() => tf.grad(f)(x));
      assert.ok(g.dataSync().every(Number.isFinite), `${name} gradient finite on ${backend}`);
      assert.ok(g.dataSync().some((v) => v !== 0), `${name} gradient nonzero on ${backend}`);
      g.dispose();
      assert.equal(tf.memory().numTensors, before, `${name} gradient leaks on ${backend}`);
    }
    // direct calls (no surrounding tidy) leave only their result
    const t4h = tf.tensor4d(randomArray(B * 4 * S * S, 88), [B, 4, S, S]);
    const before = tf.memory().numTensors;
    attentionMse(s4, t4h, m).dispose(); // grouped heads: intermediate averages freed too
    valueRelationKl(sv, tv, m).dispose();
    hiddenMse(s3, tt3, w, bias, m).dispose();
    assert.equal(tf.memory().numTensors, before, "direct calls leave nothing behind");
    t4h.dispose();
    tf.dispose([m, s4, tt4, s3, tt3, sv, tv, w, bias, zs, zt, labels, pred, targets]);
  }
});

Deno.test("logitMse: mean over batch × outputs of the squared difference, by hand", () => {
  // (0.5 − 1)² = 0.25, (−1 − 1)² = 4, (2 − 2)² = 0, (3 − 0)² = 9 → mean 13.25 / 4 = 3.3125
  const v = tf.tidy(() =>
    logitMse(tf.tensor2d([[0.5, -1], [2, 3]]), tf.tensor2d([[1, 1], [2, 0]])).dataSync()[0]
  );
  assert.ok(Math.abs(v - 3.3125) < 1e-6, String(v));
});
