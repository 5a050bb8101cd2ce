/** Evaluation metrics against hand-derived values and known sklearn/SciPy results. */

import assert from "node:assert/strict";
import {
  accuracy,
  averageRanks,
  classificationMetrics,
  confusionMatrix,
  macroF1,
  mcc,
  mcnemarExact,
  pairedAccuracy,
  pearson,
  regressionMetrics,
  spearman,
} from "../pipeline/report/metrics.ts";
import { rng } from "./_util.ts";

function near(actual: number, expected: number, what: string, tol = 1e-12): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected}`);
}

function assertThrows(fn: () => unknown, parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error, `expected an Error, got ${e}`);
    for (const p of parts) {
      assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} lacks "${p}"`);
    }
    return true;
  });
}

// Binary example: gold 4 positives then 6 negatives.
//            idx: 0  1  2  3  4  5  6  7  8  9
const BIN_GOLD = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
const BIN_PRED = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0];
// TP = 3 (0–2), FN = 1 (3), FP = 2 (4, 5), TN = 4 (6–9).

Deno.test("binary: accuracy, confusion matrix, MCC from TP/TN/FP/FN, macro F1", () => {
  near(accuracy(BIN_PRED, BIN_GOLD), 0.7, "accuracy"); // (TP + TN) / n = 7 / 10
  // rows gold, columns predicted: [[TN, FP], [FN, TP]]
  assert.deepEqual(confusionMatrix(BIN_PRED, BIN_GOLD, 2), [[4, 2], [1, 3]]);
  // (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 − 2) / √(5·4·6·5) = 10 / √600
  near(mcc(BIN_PRED, BIN_GOLD, 2), 0.408248290463863, "mcc");
  // F1 = 2TP / (2TP + FP + FN): class 1: 6 / (6 + 2 + 1) = 2/3; class 0 (TP 4, FP 1, FN 2): 8/11
  // macro = (2/3 + 8/11) / 2 = 23/33
  near(macroF1(BIN_PRED, BIN_GOLD, 2), 23 / 33, "macro F1");
  assert.deepEqual(classificationMetrics(BIN_PRED, BIN_GOLD, 2), {
    accuracy: accuracy(BIN_PRED, BIN_GOLD),
    macro_f1: macroF1(BIN_PRED, BIN_GOLD, 2),
    mcc: mcc(BIN_PRED, BIN_GOLD, 2),
  });
});

Deno.test("sklearn documentation examples", () => {
  // matthews_corrcoef([+1, +1, +1, -1], [+1, -1, +1, +1]) = -0.33… (−1 → 0):
  // TP 2, FN 1, FP 1, TN 0 → (0 − 1) / √(3·3·1·1) = −1/3
  near(mcc([1, 0, 1, 1], [1, 1, 1, 0], 2), -1 / 3, "mcc");
  // f1_score([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1], average="macro") = 0.26…:
  // class 0: 2TP / (gold + pred) = 4 / (2 + 3) = 0.8; classes 1 and 2: TP 0 → 0; mean 0.8 / 3
  near(macroF1([0, 2, 1, 0, 0, 1], [0, 1, 2, 0, 1, 2], 3), 0.8 / 3, "macro F1");
  near(accuracy([0, 2, 1, 0, 0, 1], [0, 1, 2, 0, 1, 2]), 1 / 3, "accuracy");
});

Deno.test("3 classes: confusion matrix, Gorodkin R_K, macro F1", () => {
  const gold = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
  const pred = [0, 0, 0, 1, 1, 1, 2, 2, 0, 0];
  const m = confusionMatrix(pred, gold, 3);
  assert.deepEqual(m, [
    [3, 1, 0],
    [0, 2, 1],
    [2, 0, 1],
  ]);
  // t (row sums) = [4, 3, 3], p (column sums) = [5, 3, 2], c = trace = 6, s = 10
  // num = c·s − Σ p·t = 60 − (20 + 9 + 6) = 25
  // den = √((s² − Σp²)(s² − Σt²)) = √((100 − 38)(100 − 34)) = √4092
  near(mcc(pred, gold, 3), 25 / Math.sqrt(4092), "mcc");
  near(mcc(pred, gold, 3), 0.3908158746754515, "mcc (numpy)");
  // F1 = 2TP / (gold + pred): class 0: 6/9, class 1: 4/6, class 2: 2/5 → mean 26/45
  near(macroF1(pred, gold, 3), 26 / 45, "macro F1");
  near(accuracy(pred, gold), 0.6, "accuracy");
  const cm = classificationMetrics(pred, gold, 3);
  near(cm.accuracy, 0.6, "accuracy");
  near(cm.macro_f1, 26 / 45, "macro F1");
  near(cm.mcc, 25 / Math.sqrt(4092), "mcc");
});

Deno.test("macro F1 skips classes absent from gold and predictions, counts missed ones as 0", () => {
  const gold = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
  const pred = [0, 0, 0, 1, 1, 1, 2, 2, 0, 0];
  // class 3 and 4 never occur: the same score as with 3 classes, not 3·(26/45)/5
  near(macroF1(pred, gold, 5), 26 / 45, "skipped classes");
  // class 2 occurs in gold only (never predicted): F1 0, counted → (F1_0 + F1_1 + 0) / 3
  // pred [0,0,1,1,0,0] vs gold [0,0,1,1,2,2]: class 0 TP 2 → 4/(2+4) = 2/3; class 1 → 4/4 = 1
  near(macroF1([0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2], 3), (2 / 3 + 1 + 0) / 3, "missed");
  // a class predicted but never gold also counts (precision 0 → F1 0)
  near(macroF1([0, 0, 2], [0, 0, 0], 3), (2 * 2 / (3 + 2) + 0) / 2, "spurious");
});

Deno.test("invariants: perfect prediction, constant prediction, MCC symmetry", () => {
  const r = rng(7);
  const gold = Array.from({ length: 200 }, () => Math.floor(r() * 4));
  const cm = classificationMetrics(gold, gold, 4);
  assert.deepEqual(cm, { accuracy: 1, macro_f1: 1, mcc: 1 });
  // constant prediction: denominator 0 → MCC 0 (sklearn's convention)
  assert.equal(mcc(new Array(200).fill(2), gold, 4), 0);
  assert.equal(mcc([1, 1, 1], [0, 1, 0], 2), 0);
  // all gold in one class: also undefined → 0
  assert.equal(mcc([0, 1, 0], [1, 1, 1], 2), 0);
  // perfectly wrong binary prediction → −1
  near(mcc([1, 0, 1, 0], [0, 1, 0, 1], 2), -1, "inverted");
  // MCC is symmetric in pred and gold; the confusion matrix transposes
  const pred = gold.map((g, i) => (i % 3 === 0 ? (g + 1) % 4 : g));
  near(mcc(pred, gold, 4), mcc(gold, pred, 4), "symmetry");
  const a = confusionMatrix(pred, gold, 4), b = confusionMatrix(gold, pred, 4);
  assert.deepEqual(a, b[0].map((_, j) => b.map((row) => row[j])));
  // every example lands in exactly one cell
  assert.equal(a.flat().reduce((s, v) => s + v, 0), 200);
  // Float32Array/Int32Array inputs work as well as arrays
  assert.equal(accuracy(Int32Array.from(gold), Float32Array.from(gold)), 1);
});

Deno.test("pearson: hand value, y = 2x + 1 → 1, y = −x → −1, constant → NaN", () => {
  // x − mean = [−1.5, −0.5, 0.5, 1.5], y − mean = [−0.5, −1.5, 1.5, 0.5]
  // Σdxdy = 0.75·4 = 3, Σdx² = Σdy² = 5 → r = 3 / 5
  near(pearson([1, 2, 3, 4], [2, 1, 4, 3]), 0.6, "hand");
  const x = Array.from({ length: 50 }, (_, i) => Math.sin(i) * 10);
  near(pearson(x, x.map((v) => 2 * v + 1)), 1, "y = 2x + 1");
  near(pearson(x, x.map((v) => -v)), -1, "y = −x");
  assert.ok(Number.isNaN(pearson([1, 2, 3], [5, 5, 5])));
  assert.ok(Number.isNaN(pearson([1], [2])));
});

Deno.test("spearman: ties get average ranks (SciPy spearmanr), monotone → 1", () => {
  assert.deepEqual([...averageRanks([10, 30, 20, 20, 5])], [2, 5, 3.5, 3.5, 1]);
  const x = [1, 2, 2, 3, 4], y = [1, 3, 2, 2, 5];
  // ranks x = [1, 2.5, 2.5, 4, 5], ranks y = [1, 4, 2.5, 2.5, 5], both mean 3:
  // Σdxdy = 4 − 0.5 + 0.25 − 0.5 + 4 = 7.25; Σdx² = Σdy² = 9.5 → 7.25 / 9.5 = 29/38
  // (scipy.stats.spearmanr gives 0.7631578947368421)
  near(spearman(x, y), 29 / 38, "ties");
  near(spearman(x, y), pearson([1, 2.5, 2.5, 4, 5], [1, 4, 2.5, 2.5, 5]), "= pearson of ranks");
  // monotone but non-linear: spearman 1, pearson < 1
  const a = [0.1, 0.5, 1, 2, 4, 8], b = a.map((v) => Math.exp(v));
  assert.equal(spearman(a, b), 1);
  assert.ok(pearson(a, b) < 0.99);
  assert.ok(Number.isNaN(spearman([3, 3, 3], [1, 2, 3])));
});

Deno.test("regressionMetrics: pearson, spearman, mse together", () => {
  // mse = ((1−1)² + (2−1)² + (3−5)²) / 3 = 5/3
  const m = regressionMetrics([1, 2, 3], [1, 1, 5]);
  near(m.mse, 5 / 3, "mse");
  near(m.pearson, pearson([1, 2, 3], [1, 1, 5]), "pearson");
  near(m.spearman, spearman([1, 2, 3], [1, 1, 5]), "spearman");
  const x = [0.5, 1.5, 2.5, 4];
  assert.deepEqual(regressionMetrics(x, x), { pearson: 1, spearman: 1, mse: 0 });
});

Deno.test("bad inputs are clear errors", () => {
  assertThrows(() => accuracy([1, 2], [1]), ["accuracy", "pred has 2 values but gold has 1"]);
  assertThrows(() => accuracy([], []), ["accuracy", "no examples"]);
  assertThrows(() => macroF1([0, 3], [0, 1], 3), ["macroF1", "pred[1] = 3", "0..2"]);
  assertThrows(() => mcc([0, 1], [0, 0.5], 2), ["mcc", "gold[1] = 0.5"]);
  assertThrows(() => mcc([0, 1], [0, -1], 2), ["gold[1] = -1"]);
  assertThrows(() => confusionMatrix([0], [0], 0), ["numClasses must be a positive integer"]);
  assertThrows(() => classificationMetrics([], [], 2), ["classificationMetrics", "no examples"]);
  assertThrows(() => pearson([1, 2, 3], [1, 2]), ["pearson", "x has 3 values but y has 2"]);
  assertThrows(() => spearman([], []), ["spearman", "no examples"]);
  assertThrows(() => pearson([1, NaN], [1, 2]), ["pearson", "x[1] is NaN"]);
  assertThrows(() => regressionMetrics([1, 2], [1, Infinity]), ["gold[1] is Infinity"]);
});

Deno.test("mcnemarExact: hand-computed binomial tails, and the normal approximation at large n", () => {
  assert.equal(mcnemarExact(5, 0), 2 / 32);
  assert.equal(mcnemarExact(0, 5), 2 / 32);
  assert.ok(Math.abs(mcnemarExact(10, 2) - 158 / 4096) < 1e-12); // 2·(1 + 12 + 66) / 2^12
  assert.equal(mcnemarExact(3, 3), 1);
  assert.equal(mcnemarExact(0, 0), 1);
  // 1,100 disagreements, 600 vs 500: continuity-corrected z = 99 / √1100 = 2.985 → p ≈ 0.0028
  const p = mcnemarExact(600, 500);
  assert.ok(p > 0.0024 && p < 0.0032, String(p));
});

Deno.test("pairedAccuracy: the difference, its interval and the discordant counts", () => {
  const gold = [0, 1, 2, 0, 1];
  const a = [0, 1, 2, 1, 1]; // 4 right
  const b = [0, 0, 2, 0, 0]; // 3 right
  const r = pairedAccuracy(a, b, gold);
  assert.equal(r.onlyA, 2);
  assert.equal(r.onlyB, 1);
  assert.ok(Math.abs(r.diff - (accuracy(a, gold) - accuracy(b, gold))) < 1e-12);
  const se = Math.sqrt((3 / 5 - 0.2 ** 2) / 5);
  assert.ok(Math.abs(r.ci95[0] - (0.2 - 1.96 * se)) < 1e-12);
  assert.ok(Math.abs(r.ci95[1] - (0.2 + 1.96 * se)) < 1e-12);
  assert.equal(r.p, 1); // 2·(1 + 3)/8, capped
  const back = pairedAccuracy(b, a, gold);
  assert.equal(back.diff, -r.diff);
  assert.equal(back.p, r.p);
  assert.throws(() => pairedAccuracy([0], [0, 1], [0, 1]), /predA has 1 values but gold has 2/);
});
