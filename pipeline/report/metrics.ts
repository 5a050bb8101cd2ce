/**
 * Evaluation metrics of the evaluate stage: plain arrays in, numbers out.
 *
 * Classification metrics take integer class ids (`0..numClasses-1`) for the predictions (the
 * argmax of the logits) and the gold labels; regression metrics take finite numbers. Every
 * function throws an `Error` naming itself and the problem when the inputs are empty, differ in
 * length, or hold a value it cannot use.
 *
 * Conventions follow scikit-learn / SciPy where they are defined:
 * - {@link mcc} is Gorodkin's R_K, the multiclass Matthews correlation of sklearn's
 *   `matthews_corrcoef` (identical to the TP/TN/FP/FN formula for two classes), 0 when undefined.
 * - {@link macroF1} averages only the classes that occur (in gold or in the predictions), like
 *   sklearn's `f1_score(average="macro")` without an explicit `labels` list.
 * - {@link pearson} and {@link spearman} are NaN for a constant input, like SciPy.
 * @module
 */

/** What {@link classificationMetrics} reports. */
export interface ClassificationMetrics {
  /** Fraction of examples predicted correctly, in [0, 1]. */
  accuracy: number;
  /** Unweighted mean of per-class F1 over the classes that occur, in [0, 1]. */
  macro_f1: number;
  /** Matthews correlation coefficient (multiclass R_K), in [-1, 1]. */
  mcc: number;
}

/** What {@link regressionMetrics} reports. */
export interface RegressionMetrics {
  /** Pearson correlation of predictions and gold values, in [-1, 1] (NaN if one is constant). */
  pearson: number;
  /** Spearman rank correlation, ties given their average rank (NaN if one is constant). */
  spearman: number;
  /** Mean squared error. */
  mse: number;
}

/** Throw unless `a` and `b` are non-empty and of equal length. */
function checkPair(
  fn: string,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  names: [string, string],
): void {
  if (a.length !== b.length) {
    throw new Error(
      `${fn}: ${names[0]} has ${a.length} values but ${names[1]} has ${b.length}; ` +
        `they must have one value per example`,
    );
  }
  if (a.length === 0) throw new Error(`${fn}: no examples (${names[0]} and ${names[1]} are empty)`);
}

/** Throw unless `numClasses` is a positive integer. */
function checkNumClasses(fn: string, numClasses: number): void {
  if (!Number.isInteger(numClasses) || numClasses < 1) {
    throw new Error(`${fn}: numClasses must be a positive integer, got ${numClasses}`);
  }
}

/** Throw unless every value of `a` is an integer class id in `0..numClasses-1`. */
function checkLabels(fn: string, a: ArrayLike<number>, name: string, numClasses: number): void {
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    if (!Number.isInteger(v) || v < 0 || v >= numClasses) {
      throw new Error(
        `${fn}: ${name}[${i}] = ${v} is not a class id (expected an integer in ` +
          `0..${numClasses - 1})`,
      );
    }
  }
}

/** Throw unless every value of `a` is finite. */
function checkFinite(fn: string, a: ArrayLike<number>, name: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) {
      throw new Error(`${fn}: ${name}[${i}] is ${a[i]} (expected finite numbers)`);
    }
  }
}

/**
 * Fraction of positions where `pred` equals `gold`.
 * @throws Error when the arrays are empty or differ in length.
 */
export function accuracy(pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  checkPair("accuracy", pred, gold, ["pred", "gold"]);
  let hits = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === gold[i]) hits++;
  return hits / pred.length;
}

/**
 * The confusion matrix: `m[g][p]` counts examples of gold class `g` predicted as `p` (rows gold,
 * columns predicted), `numClasses × numClasses`.
 * @throws Error when the arrays are empty, differ in length, or hold a value that is not an
 * integer in `0..numClasses-1`.
 */
export function confusionMatrix(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  numClasses: number,
): number[][] {
  return confusion("confusionMatrix", pred, gold, numClasses);
}

function confusion(
  fn: string,
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  numClasses: number,
): number[][] {
  checkPair(fn, pred, gold, ["pred", "gold"]);
  checkNumClasses(fn, numClasses);
  checkLabels(fn, pred, "pred", numClasses);
  checkLabels(fn, gold, "gold", numClasses);
  const m = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  for (let i = 0; i < pred.length; i++) m[gold[i]][pred[i]]++;
  return m;
}

/** Macro F1 from a confusion matrix (see {@link macroF1}). */
function macroF1FromConfusion(m: number[][]): number {
  const k = m.length;
  let sum = 0, counted = 0;
  for (let c = 0; c < k; c++) {
    const tp = m[c][c];
    let goldC = 0, predC = 0;
    for (let j = 0; j < k; j++) {
      goldC += m[c][j];
      predC += m[j][c];
    }
    if (goldC === 0 && predC === 0) continue; // class absent from this evaluation: skipped
    // F1 = 2PR/(P+R) = 2TP/(2TP+FP+FN) = 2TP/(gold+pred); 0 when TP = 0 (P+R = 0).
    sum += (2 * tp) / (goldC + predC);
    counted++;
  }
  return sum / counted; // counted ≥ 1: the input is non-empty
}

/**
 * Macro-averaged F1: the unweighted mean over classes of per-class F1 = 2PR/(P+R), with F1 = 0
 * for a class whose precision + recall is 0 (it occurs but is never predicted correctly).
 *
 * A class with no gold and no predicted examples is **skipped**, not counted as 0. This is what
 * sklearn's `f1_score(average="macro")` does without a `labels` argument (it averages over the
 * labels seen in `y_true ∪ y_pred`); with `labels=range(numClasses)` sklearn would instead count
 * such a class as 0 and warn. Skipping was chosen because a class absent from the evaluation set
 * says nothing about the model: counting it as 0 would make the score depend on how the data
 * were split and on `numClasses` rather than on the predictions.
 * @throws Error when the arrays are empty, differ in length, or hold a value that is not an
 * integer in `0..numClasses-1`.
 */
export function macroF1(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  numClasses: number,
): number {
  return macroF1FromConfusion(confusion("macroF1", pred, gold, numClasses));
}

/** MCC from a confusion matrix (see {@link mcc}). */
function mccFromConfusion(m: number[][]): number {
  const k = m.length;
  let c = 0, s = 0, pt = 0, pp = 0, tt = 0;
  for (let i = 0; i < k; i++) {
    let t = 0, p = 0;
    for (let j = 0; j < k; j++) {
      t += m[i][j];
      p += m[j][i];
    }
    c += m[i][i];
    s += t;
    pt += p * t;
    pp += p * p;
    tt += t * t;
  }
  const den = Math.sqrt((s * s - pp) * (s * s - tt));
  if (!(den > 0)) return 0;
  return Math.max(-1, Math.min(1, (c * s - pt) / den));
}

/**
 * Matthews correlation coefficient, multiclass: Gorodkin's R_K, as sklearn's
 * `matthews_corrcoef`. With C the confusion matrix, t_k its row sums (gold counts), p_k its
 * column sums (predicted counts), c = trace(C) and s = the number of examples:
 *
 *   MCC = (c·s − Σ_k p_k·t_k) / √((s² − Σ_k p_k²)·(s² − Σ_k t_k²))
 *
 * For two classes this equals (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)). Returns 0 when
 * the denominator is 0 (all predictions, or all gold labels, in one class), like sklearn.
 * @throws Error when the arrays are empty, differ in length, or hold a value that is not an
 * integer in `0..numClasses-1`.
 */
export function mcc(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  numClasses: number,
): number {
  return mccFromConfusion(confusion("mcc", pred, gold, numClasses));
}

/** Pearson correlation of two checked arrays; NaN when either is constant. */
function pearsonUnchecked(x: ArrayLike<number>, y: ArrayLike<number>): number {
  const n = x.length;
  let mx = 0, my = 0;
  for (let i = 0; i < n; i++) {
    mx += x[i];
    my += y[i];
  }
  mx /= n;
  my /= n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx === 0 || syy === 0) return NaN;
  return Math.max(-1, Math.min(1, sxy / Math.sqrt(sxx * syy)));
}

/**
 * Pearson correlation coefficient of `x` and `y`, in [-1, 1]. NaN when either input is constant
 * (the correlation is undefined; SciPy's `pearsonr` also returns NaN there).
 * @throws Error when the arrays are empty, differ in length, or hold a non-finite value.
 */
export function pearson(x: ArrayLike<number>, y: ArrayLike<number>): number {
  checkPair("pearson", x, y, ["x", "y"]);
  checkFinite("pearson", x, "x");
  checkFinite("pearson", y, "y");
  return pearsonUnchecked(x, y);
}

/** 1-based ranks of `a`, tied values sharing the average of the ranks they span. */
export function averageRanks(a: ArrayLike<number>): Float64Array {
  const n = a.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => a[i] - a[j]);
  const ranks = new Float64Array(n);
  for (let start = 0; start < n;) {
    let end = start + 1;
    while (end < n && a[order[end]] === a[order[start]]) end++;
    const rank = (start + 1 + end) / 2; // mean of the 1-based ranks start+1 … end
    for (let k = start; k < end; k++) ranks[order[k]] = rank;
    start = end;
  }
  return ranks;
}

/**
 * Spearman rank correlation: the Pearson correlation of the ranks of `x` and `y`, tied values
 * given the average of the ranks they span (as SciPy's `spearmanr`). NaN when either input is
 * constant.
 * @throws Error when the arrays are empty, differ in length, or hold a non-finite value.
 */
export function spearman(x: ArrayLike<number>, y: ArrayLike<number>): number {
  checkPair("spearman", x, y, ["x", "y"]);
  checkFinite("spearman", x, "x");
  checkFinite("spearman", y, "y");
  return pearsonUnchecked(averageRanks(x), averageRanks(y));
}

/**
 * Accuracy, macro F1 and MCC of class-id predictions against gold class ids, from one confusion
 * matrix. See {@link accuracy}, {@link macroF1}, {@link mcc}.
 * @throws Error when the arrays are empty, differ in length, or hold a value that is not an
 * integer in `0..numClasses-1`.
 */
export function classificationMetrics(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  numClasses: number,
): ClassificationMetrics {
  const m = confusion("classificationMetrics", pred, gold, numClasses);
  let hits = 0;
  for (let c = 0; c < numClasses; c++) hits += m[c][c];
  return {
    accuracy: hits / pred.length,
    macro_f1: macroF1FromConfusion(m),
    mcc: mccFromConfusion(m),
  };
}

/**
 * Pearson, Spearman and mean squared error of regression predictions against gold values.
 * See {@link pearson}, {@link spearman}.
 * @throws Error when the arrays are empty, differ in length, or hold a non-finite value.
 */
export function regressionMetrics(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
): RegressionMetrics {
  const fn = "regressionMetrics";
  checkPair(fn, pred, gold, ["pred", "gold"]);
  checkFinite(fn, pred, "pred");
  checkFinite(fn, gold, "gold");
  let se = 0;
  for (let i = 0; i < pred.length; i++) se += (pred[i] - gold[i]) ** 2;
  return {
    pearson: pearsonUnchecked(pred, gold),
    spearman: pearsonUnchecked(averageRanks(pred), averageRanks(gold)),
    mse: se / pred.length,
  };
}

/** Two classifiers compared on the same examples: see {@link pairedAccuracy}. */
export interface PairedComparison {
  /** Accuracy of A minus accuracy of B. */
  diff: number;
  /** 95% confidence interval of `diff` (normal approximation for paired proportions). */
  ci95: [number, number];
  /** Examples A gets right and B wrong. */
  onlyA: number;
  /** Examples B gets right and A wrong. */
  onlyB: number;
  /** Two-sided exact McNemar p-value: how likely a split this uneven is if A and B are equal. */
  p: number;
}

/**
 * Is A more accurate than B on the same examples, beyond chance? Only the examples the two
 * disagree on carry information: with `b` = right only for A and `c` = right only for B, the
 * accuracy difference is `(b − c) / n`, its standard error `√((b + c)/n − ((b − c)/n)²) / √n`,
 * and the exact McNemar test asks how likely a split at least this uneven is for a fair coin
 * over the `b + c` disagreements (two-sided, binomial).
 * @throws Error when the arrays are empty or differ in length.
 */
export function pairedAccuracy(
  predA: ArrayLike<number>,
  predB: ArrayLike<number>,
  gold: ArrayLike<number>,
): PairedComparison {
  checkPair("pairedAccuracy", predA, gold, ["predA", "gold"]);
  checkPair("pairedAccuracy", predB, gold, ["predB", "gold"]);
  let b = 0, c = 0;
  for (let i = 0; i < gold.length; i++) {
    const a = predA[i] === gold[i], bb = predB[i] === gold[i];
    if (a && !bb) b++;
    else if (bb && !a) c++;
  }
  const n = gold.length;
  const diff = (b - c) / n;
  const se = Math.sqrt(Math.max(0, (b + c) / n - diff * diff) / n);
  return {
    diff,
    ci95: [diff - 1.96 * se, diff + 1.96 * se],
    onlyA: b,
    onlyB: c,
    p: mcnemarExact(b, c),
  };
}

/** Two-sided exact McNemar p-value: `min(1, 2·P(X ≤ min(b, c)))`, X ~ Binomial(b + c, ½). */
export function mcnemarExact(b: number, c: number): number {
  const n = b + c;
  if (n === 0) return 1;
  const k = Math.min(b, c);
  // Σ_{i≤k} C(n, i) / 2^n in log space (n can be thousands)
  let logTerm = -n * Math.LN2; // log(C(n,0) / 2^n)
  let sum = Math.exp(logTerm);
  for (let i = 1; i <= k; i++) {
    logTerm += Math.log((n - i + 1) / i);
    sum += Math.exp(logTerm);
  }
  return Math.min(1, 2 * sum);
}
