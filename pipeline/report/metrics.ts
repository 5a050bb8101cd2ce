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
 * - {@link entityF1} scores IOB chunks as conlleval and seqeval's default mode do.
 * - {@link normalizeAnswer}, {@link exactMatch} and {@link tokenF1} follow the SQuAD evaluation
 *   script; {@link squadMetrics} reports fractions in [0, 1], not its percentages.
 * - {@link pairedBootstrap} compares two models' per-example scores on the same examples.
 * @module
 */

import { seededRandom } from "../random.ts";

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

// ---------------------------------------------------------------------------------------------
// Token classification

/** Throw unless `pred` and `gold` hold the same number of sentences, each of the same length. */
function checkSentences(
  fn: string,
  pred: ArrayLike<ArrayLike<unknown>>,
  gold: ArrayLike<ArrayLike<unknown>>,
  names: [string, string],
): void {
  if (pred.length !== gold.length) {
    throw new Error(
      `${fn}: ${names[0]} has ${pred.length} sentences but ${names[1]} has ${gold.length}`,
    );
  }
  if (pred.length === 0) throw new Error(`${fn}: no sentences`);
  for (let i = 0; i < pred.length; i++) {
    if (pred[i].length !== gold[i].length) {
      throw new Error(
        `${fn}: sentence ${i} has ${pred[i].length} ${names[0]} tags but ${gold[i].length} ` +
          `${names[1]} tags; they must have one tag per word`,
      );
    }
  }
}

/** Per-example scores as a ratio of sums (see {@link pairedBootstrap}). */
export interface RatioScores {
  /** Each example's numerator (correct words, 2 × matched entities, …). */
  num: ArrayLike<number>;
  /** Each example's denominator (words, predicted + gold entities, …); may be 0. */
  den: ArrayLike<number>;
}

/**
 * Per sentence: the words tagged correctly (`num`) and the words (`den`). Their ratio of sums is
 * {@link tokenAccuracy}; {@link pairedBootstrap} resamples them by sentence.
 * @throws Error when the sentence counts or a sentence's lengths differ, or there are none.
 */
export function tokenCorrect(
  pred: ArrayLike<ArrayLike<number>>,
  gold: ArrayLike<ArrayLike<number>>,
): RatioScores {
  checkSentences("tokenCorrect", pred, gold, ["pred", "gold"]);
  const num = new Float64Array(pred.length), den = new Float64Array(pred.length);
  for (let i = 0; i < pred.length; i++) {
    const p = pred[i], g = gold[i];
    let hits = 0;
    for (let k = 0; k < p.length; k++) if (p[k] === g[k]) hits++;
    num[i] = hits;
    den[i] = p.length;
  }
  return { num, den };
}

/**
 * Word-level accuracy of tagged sentences: the fraction of all words, pooled over sentences,
 * whose predicted tag id equals the gold one (a long sentence weighs more than a short one).
 * @throws Error when the sentence counts or a sentence's lengths differ, or there are no words.
 */
export function tokenAccuracy(
  pred: ArrayLike<ArrayLike<number>>,
  gold: ArrayLike<ArrayLike<number>>,
): number {
  checkSentences("tokenAccuracy", pred, gold, ["pred", "gold"]);
  const { num, den } = tokenCorrect(pred, gold);
  let hits = 0, words = 0;
  for (let i = 0; i < num.length; i++) {
    hits += num[i];
    words += den[i];
  }
  if (words === 0) throw new Error("tokenAccuracy: no words (every sentence is empty)");
  return hits / words;
}

/** An entity chunk of a tagged sentence: its type and word span `[start, end)`. */
export interface Entity {
  /** The entity type: `PER` of `B-PER`. */
  type: string;
  /** Index of its first word. */
  start: number;
  /** Index after its last word. */
  end: number;
}

/**
 * The entity chunks of one sentence's IOB tags (`O`, `B-TYPE`, `I-TYPE`), IOB1 and IOB2 alike,
 * as conlleval reads them: a chunk starts at `B-X`, or at `I-X` that follows `O`, the sentence
 * start, or a tag of another type; it goes on over the `I-X` that follow and ends before
 * anything else (`O`, `B-*`, or another type) or at the sentence end.
 * @throws Error when a tag is not `O`, `B-TYPE` or `I-TYPE`.
 */
export function entityChunks(tags: readonly string[]): Entity[] {
  const out: Entity[] = [];
  let cur: Entity | undefined;
  const close = (at: number) => {
    if (cur) out.push({ ...cur, end: at });
    cur = undefined;
  };
  tags.forEach((tag, i) => {
    if (tag === "O") return close(i);
    const m = /^([BI])-(.+)$/.exec(tag);
    if (!m) {
      throw new Error(
        `entityChunks: tag ${JSON.stringify(tag)} at word ${i} is not an IOB tag ` +
          `(O, B-TYPE or I-TYPE)`,
      );
    }
    const [, prefix, type] = m;
    if (prefix === "I" && cur?.type === type) return;
    close(i);
    cur = { type, start: i, end: i + 1 };
  });
  close(tags.length);
  return out;
}

/** Precision, recall and F1 of one entity type, or of all types pooled. */
export interface EntityScores {
  /** Matched / predicted chunks; 0 when nothing was predicted. */
  precision: number;
  /** Matched / gold chunks; 0 when there is no gold chunk. */
  recall: number;
  /** 2 · matched / (predicted + gold), = 2PR/(P+R); 0 when P + R = 0 or there are no chunks. */
  f1: number;
  /** Number of gold chunks. */
  support: number;
}

/** What {@link entityF1} reports: pooled (micro) scores and scores per entity type. */
export interface EntityF1 extends EntityScores {
  /** Per type, for every type that occurs in gold or in the predictions (sorted by name). */
  perType: Record<string, EntityScores>;
}

function entityScores(tp: number, nPred: number, nGold: number): EntityScores {
  return {
    precision: nPred === 0 ? 0 : tp / nPred,
    recall: nGold === 0 ? 0 : tp / nGold,
    f1: nPred + nGold === 0 ? 0 : (2 * tp) / (nPred + nGold),
    support: nGold,
  };
}

/** Per sentence: gold and predicted chunks, and the predicted ones that match a gold one. */
function sentenceChunks(gold: readonly string[], pred: readonly string[]) {
  const g = entityChunks(gold), p = entityChunks(pred);
  const key = (e: Entity) => `${e.start} ${e.end} ${e.type}`;
  const goldKeys = new Set(g.map(key));
  return { g, p, hits: p.filter((e) => goldKeys.has(key(e))) };
}

/**
 * Entity-level precision, recall and F1 of IOB-tagged sentences (see {@link entityChunks}): a
 * predicted chunk counts only when a gold chunk has the same type, start and end. Scores are
 * pooled over all chunks of all sentences (micro average, conlleval's "overall") and also given
 * per type. A ratio with a zero denominator is 0, as in conlleval and seqeval (zero_division=0):
 * with no gold and no predicted chunk at all, precision, recall and F1 are all 0.
 * @throws Error when the sentence counts or a sentence's lengths differ, there are no sentences,
 * or a tag is not an IOB tag.
 */
export function entityF1(gold: readonly string[][], pred: readonly string[][]): EntityF1 {
  checkSentences("entityF1", gold, pred, ["gold", "pred"]);
  const count = new Map<string, [number, number, number]>(); // type → [tp, pred, gold]
  const add = (type: string, k: 0 | 1 | 2) => {
    const c = count.get(type) ?? [0, 0, 0];
    c[k]++;
    count.set(type, c);
  };
  for (let i = 0; i < gold.length; i++) {
    const { g, p, hits } = sentenceChunks(gold[i], pred[i]);
    hits.forEach((e) => add(e.type, 0));
    p.forEach((e) => add(e.type, 1));
    g.forEach((e) => add(e.type, 2));
  }
  let tp = 0, nPred = 0, nGold = 0;
  const perType: Record<string, EntityScores> = {};
  for (const type of [...count.keys()].sort()) {
    const [t, np, ng] = count.get(type)!;
    perType[type] = entityScores(t, np, ng);
    tp += t;
    nPred += np;
    nGold += ng;
  }
  return { ...entityScores(tp, nPred, nGold), perType };
}

/**
 * Per sentence: `num` = 2 × matched chunks, `den` = predicted + gold chunks, so that their ratio
 * of sums is the pooled {@link entityF1} F1 (0 when there are no chunks). For
 * {@link pairedBootstrap}, which then resamples whole sentences and recomputes the pooled F1.
 * @throws Error as {@link entityF1}.
 */
export function entityF1Counts(gold: readonly string[][], pred: readonly string[][]): RatioScores {
  checkSentences("entityF1Counts", gold, pred, ["gold", "pred"]);
  const num = new Float64Array(gold.length), den = new Float64Array(gold.length);
  for (let i = 0; i < gold.length; i++) {
    const { g, p, hits } = sentenceChunks(gold[i], pred[i]);
    num[i] = 2 * hits.length;
    den[i] = g.length + p.length;
  }
  return { num, den };
}

// ---------------------------------------------------------------------------------------------
// Extractive QA (SQuAD)

/** ASCII punctuation, Python's `string.punctuation`. */
const PUNCTUATION = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g;
/** The articles a, an, the as whole words (Unicode word characters around them). */
const ARTICLES = /(?<![\p{L}\p{N}_])(?:a|an|the)(?![\p{L}\p{N}_])/gu;

/**
 * An answer as the SQuAD evaluation compares it: lower-cased, ASCII punctuation removed, the
 * articles a/an/the removed as whole words, and whitespace runs collapsed to one space (trimmed).
 */
export function normalizeAnswer(s: string): string {
  return s.toLowerCase().replace(PUNCTUATION, "").replace(ARTICLES, " ").split(/\s+/)
    .filter((w) => w !== "").join(" ");
}

function checkGolds(fn: string, golds: readonly string[]): void {
  if (golds.length === 0) throw new Error(`${fn}: no gold answers to compare with`);
}

/**
 * 1 when the normalized prediction equals one of the normalized gold answers, else 0.
 * @throws Error when `golds` is empty.
 */
export function exactMatch(pred: string, golds: readonly string[]): number {
  checkGolds("exactMatch", golds);
  const p = normalizeAnswer(pred);
  return golds.some((g) => normalizeAnswer(g) === p) ? 1 : 0;
}

/** Token F1 of one prediction against one gold answer (both as normalized word bags). */
function f1Against(predTokens: string[], gold: string): number {
  const goldTokens = normalizeAnswer(gold).split(" ").filter((w) => w !== "");
  if (predTokens.length === 0 || goldTokens.length === 0) {
    return predTokens.length === goldTokens.length ? 1 : 0;
  }
  const left = new Map<string, number>();
  for (const w of goldTokens) left.set(w, (left.get(w) ?? 0) + 1);
  let common = 0;
  for (const w of predTokens) {
    const n = left.get(w) ?? 0;
    if (n > 0) {
      common++;
      left.set(w, n - 1);
    }
  }
  if (common === 0) return 0;
  const precision = common / predTokens.length, recall = common / goldTokens.length;
  return (2 * precision * recall) / (precision + recall);
}

/**
 * The SQuAD token F1: the best over the gold answers of the F1 between the prediction's and the
 * gold answer's normalized words, counted as bags (a repeated word matches as often as it occurs
 * in both). When one side normalizes to no words, F1 is 1 if the other does too, else 0 (the
 * SQuAD 2.0 script's rule; EM is 1 there as well).
 * @throws Error when `golds` is empty.
 */
export function tokenF1(pred: string, golds: readonly string[]): number {
  checkGolds("tokenF1", golds);
  const p = normalizeAnswer(pred).split(" ").filter((w) => w !== "");
  return Math.max(...golds.map((g) => f1Against(p, g)));
}

/** Per-question SQuAD scores (see {@link squadScores}). */
export interface SquadScores {
  /** {@link exactMatch} of each question, 0 or 1. */
  exactMatch: Float64Array;
  /** {@link tokenF1} of each question, in [0, 1]. */
  f1: Float64Array;
}

/**
 * {@link exactMatch} and {@link tokenF1} of each predicted answer against its gold answers; the
 * per-question scores for {@link pairedBootstrap}.
 * @throws Error when the lengths differ, there are no questions, or a question has no gold.
 */
export function squadScores(
  preds: readonly string[],
  golds: readonly (readonly string[])[],
): SquadScores {
  if (preds.length !== golds.length) {
    throw new Error(
      `squadScores: ${preds.length} predictions but ${golds.length} gold answer lists`,
    );
  }
  if (preds.length === 0) throw new Error("squadScores: no questions");
  const em = new Float64Array(preds.length), f1 = new Float64Array(preds.length);
  for (let i = 0; i < preds.length; i++) {
    if (golds[i].length === 0) throw new Error(`squadScores: question ${i} has no gold answer`);
    em[i] = exactMatch(preds[i], golds[i]);
    f1[i] = tokenF1(preds[i], golds[i]);
  }
  return { exactMatch: em, f1 };
}

/**
 * SQuAD exact match and F1 averaged over questions, as **fractions in [0, 1]** (the official
 * script prints percentages: multiply by 100 to compare with published numbers).
 * @throws Error as {@link squadScores}.
 */
export function squadMetrics(
  preds: readonly string[],
  golds: readonly (readonly string[])[],
): { exactMatch: number; f1: number } {
  const s = squadScores(preds, golds);
  const mean = (a: Float64Array) => a.reduce((x, y) => x + y, 0) / a.length;
  return { exactMatch: mean(s.exactMatch), f1: mean(s.f1) };
}

// ---------------------------------------------------------------------------------------------
// Paired bootstrap

/** Per-example scores: one number each (the statistic is their mean), or a ratio of sums. */
export type ExampleScores = ArrayLike<number> | RatioScores;

/** Options of {@link pairedBootstrap}. */
export interface BootstrapOptions {
  /** Number of resamples (default 1000). */
  resamples?: number;
  /** Seed of the resampling (default 0): the same seed gives the same interval. */
  seed?: number;
}

/** Two models compared on the same examples by a paired bootstrap. */
export interface PairedBootstrap {
  /** The statistic of A on all examples (mean score, or Σnum / Σden). */
  a: number;
  /** The statistic of B on all examples. */
  b: number;
  /** `a − b`. */
  diff: number;
  /** 95% percentile interval of `a − b` over the resamples (linear interpolation). */
  ci95: [number, number];
  /**
   * Two-sided bootstrap p-value of "no difference": twice the smaller share of resamples whose
   * difference is ≤ 0 or ≥ 0, each count + 1 over resamples + 1, capped at 1.
   */
  p: number;
  /** Number of examples. */
  n: number;
  /** Number of resamples drawn. */
  resamples: number;
  /** The seed used. */
  seed: number;
}

function isRatio(s: ExampleScores): s is RatioScores {
  return "num" in s && "den" in s;
}

function asRatio(fn: string, s: ExampleScores, name: string): RatioScores {
  const r = isRatio(s) ? s : { num: s, den: new Float64Array(s.length).fill(1) };
  if (r.num.length !== r.den.length) {
    throw new Error(
      `${fn}: ${name}.num has ${r.num.length} values but ${name}.den has ${r.den.length}`,
    );
  }
  checkFinite(fn, r.num, `${name}.num`);
  checkFinite(fn, r.den, `${name}.den`);
  return r;
}

/** The linearly interpolated `q`-quantile of sorted values (numpy's default). */
function quantileSorted(sorted: Float64Array, q: number): number {
  const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Is A better than B on the same examples, beyond chance? Resamples the examples with
 * replacement (`resamples` times, seeded), recomputes both models' statistic on each resample
 * and reports the 95% percentile interval and a two-sided p-value of their difference.
 *
 * Scores are per example: plain numbers (the statistic is their mean: per-question SQuAD F1 or
 * EM from {@link squadScores}, 0/1 correctness), or {@link RatioScores} whose statistic is
 * Σnum / Σden (0 when Σden = 0), which resamples corpus-level metrics by example: pooled entity
 * F1 ({@link entityF1Counts}), word accuracy ({@link tokenCorrect}). Identical scores give a
 * difference of 0, the interval [0, 0] and p = 1.
 * @throws Error when the two differ in length, there are no examples, a value is not finite, or
 * `resamples` is not a positive integer.
 */
export function pairedBootstrap(
  scoresA: ExampleScores,
  scoresB: ExampleScores,
  opts: BootstrapOptions = {},
): PairedBootstrap {
  const fn = "pairedBootstrap";
  const resamples = opts.resamples ?? 1000, seed = opts.seed ?? 0;
  if (!Number.isInteger(resamples) || resamples < 1) {
    throw new Error(`${fn}: resamples must be a positive integer, got ${resamples}`);
  }
  const a = asRatio(fn, scoresA, "A"), b = asRatio(fn, scoresB, "B");
  checkPair(fn, a.num, b.num, ["A", "B"]);
  const n = a.num.length;
  const plain = !isRatio(scoresA) && !isRatio(scoresB);
  // Mean scores: the difference of means is the mean of per-example differences, summed
  // directly so that a constant shift comes out exact.
  const d = plain ? Float64Array.from({ length: n }, (_, i) => a.num[i] - b.num[i]) : undefined;
  const ratio = (num: number, den: number) => den === 0 ? 0 : num / den;
  const stat = (idx: ArrayLike<number>) => {
    if (d) {
      let s = 0;
      for (let k = 0; k < idx.length; k++) s += d[idx[k]];
      return s / idx.length;
    }
    let na = 0, da = 0, nb = 0, db = 0;
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k];
      na += a.num[i];
      da += a.den[i];
      nb += b.num[i];
      db += b.den[i];
    }
    return ratio(na, da) - ratio(nb, db);
  };
  const sum = (xs: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < xs.length; i++) s += xs[i];
    return s;
  };
  const statA = ratio(sum(a.num), sum(a.den)), statB = ratio(sum(b.num), sum(b.den));
  const all = Int32Array.from({ length: n }, (_, i) => i);
  const diff = stat(all);
  const rand = seededRandom(seed);
  const idx = new Int32Array(n);
  const diffs = new Float64Array(resamples);
  let below = 0, above = 0;
  for (let r = 0; r < resamples; r++) {
    for (let k = 0; k < n; k++) idx[k] = Math.floor(rand() * n);
    const v = stat(idx);
    diffs[r] = v;
    if (v <= 0) below++;
    if (v >= 0) above++;
  }
  diffs.sort();
  return {
    a: statA,
    b: statB,
    diff,
    ci95: [quantileSorted(diffs, 0.025), quantileSorted(diffs, 0.975)],
    p: Math.min(1, (2 * (Math.min(below, above) + 1)) / (resamples + 1)),
    n,
    resamples,
    seed,
  };
}
