/**
 * The named distillation loss terms: pure, differentiable functions of tensors, each returning a
 * `tf.Scalar` (use them inside `tf.variableGrads`). None of them keeps a tensor alive besides its
 * result.
 *
 * Conventions:
 * - `mask` is `[B, S]`, 1 for real tokens and 0 for padding (an entry counts as real when it is
 *   > 0.5). Batches are padded to their longest example; the teacher cache holds real tokens
 *   only, so padded positions of teacher tensors hold arbitrary values (zeros, even NaN). Those
 *   positions are excluded by the mask — selected away with `tf.where` before any arithmetic —
 *   never by their value, so they change neither the loss nor its gradient. `len_b` is the number
 *   of real tokens of example b.
 * - Teacher tensors are constants: no gradient is needed through them, but they may be plain
 *   tensors or variables.
 * - Every denominator is clamped to at least 1, so a batch with no real tokens gives 0, not NaN.
 *
 * Definitions (s = student, t = teacher, after {@link matchHeads} where heads are involved):
 * - `attention_mse` ({@link attentionMse}): on pre-softmax attention scores `[B, h, S, S]`, set
 *   every entry ≤ −100 to 0 in s and in t (TinyBERT's rule), then
 *   `Σ_{b,h,i,j: i and j real} (s − t)² / (h · Σ_b len_b²)`.
 *   The official code divides by `B·h·128·128` with fixed padding to 128 and counts padded query
 *   rows; this differs only by excluding padding (padded keys contribute 0 in both), so the scale
 *   does not depend on how much a batch is padded.
 * - `hidden_mse` ({@link hiddenMse}): `y = x·Wᵀ + b` (Hugging Face `Linear`, W `[Ht, Hs]`; the
 *   identity when W is null), then `Σ_{real tokens} Σ_{d<Ht} (y − t)² / (Σ_b len_b · Ht)`.
 *   Again the official mean also runs over padded tokens; here only real tokens count.
 * - `soft_ce` ({@link softCrossEntropy}): official TinyBERT prediction loss,
 *   `mean over B×C of −softmax(z_t/T) · log_softmax(z_s/T)` (elementwise, every element of the
 *   `[B, C]` product is averaged), no T² factor.
 * - `kl` ({@link klDivergence}): DistilBERT,
 *   `T² · (1/B) · Σ_b Σ_c p_t (log p_t − log p_s)` with `p = softmax(z/T)` ("batchmean").
 * - `cosine` ({@link cosineHidden}): DistilBERT, `Σ_{real tokens} (1 − cos(s, t)) / Σ_b len_b`
 *   with `cos(s, t) = s·t / (‖s‖_ε ‖t‖_ε)`, `‖x‖_ε = √(Σ x² + ε²)`, ε = 1e-8 (the ε inside the
 *   root keeps the gradient finite for an all-zero vector; it differs from ‖x‖ by at most ε).
 * - `attention_kl` ({@link attentionKl}): MiniLM. Per head and query row, distributions over real
 *   keys only: `p = softmax(scores)` with padded keys set to −1e9 first (probability 0; −1e9
 *   rather than −∞ so that 0·log 0 stays 0), then
 *   `Σ_{b,h,i real} Σ_j p_t (log p_t − log p_s) / (h · Σ_b len_b)`.
 * - `value_relation` ({@link valueRelationKl}): MiniLM value relation. Per head, relation scores
 *   `V·Vᵀ/√d` (d = that model's head width), head-matched with {@link matchHeads} on these
 *   pre-softmax scores, then the same KL as `attention_kl`.
 * - `hard_ce` ({@link hardCrossEntropy}): `−(1/B) Σ_b log_softmax(z)_{b, label_b}`.
 * - {@link mseRegression} (gold targets of a regression task): `(1/B) Σ_b (ŷ_b − y_b)²`.
 *
 * Head matching ({@link matchHeads}): equal counts are left alone; when one count is k times the
 * other, each group of k consecutive heads of the larger side is averaged (head g of the result =
 * mean of heads g·k … g·k + k − 1); any other pair is an {@link InputError}.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { InputError } from "../errors.ts";

const NEG_BIG = -1e9;
const COSINE_EPS = 1e-8;

function fail(message: string, field: string, expected: string, got: string, hint?: string) {
  return new InputError(message, { field, expected, got, hint });
}

function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function expectRank(field: string, t: tf.Tensor, rank: number, dims: string): void {
  if (t.rank !== rank) {
    throw fail(`wrong rank`, field, `${dims}`, `shape ${shapeStr(t.shape)}`);
  }
}

/** The mask as a bool `[B, S]` tensor: true for real tokens. */
function realTokens(mask: tf.Tensor): tf.Tensor {
  return tf.greater(mask, 0.5);
}

/** Number of true entries of a bool tensor, times `factor`, at least 1, as a float scalar. */
function countOf(keep: tf.Tensor, factor = 1): tf.Scalar {
  return tf.maximum(tf.mul(tf.sum(tf.cast(keep, "float32")), factor), 1) as tf.Scalar;
}

function checkTemperature(fn: string, temperature: number): void {
  if (!(temperature > 0 && Number.isFinite(temperature))) {
    throw fail(
      "temperature must be a positive number",
      `${fn}: temperature`,
      "a finite number > 0",
      String(temperature),
    );
  }
}

function expectSameShape(fn: string, student: tf.Tensor, teacher: tf.Tensor, what: string) {
  if (
    student.rank !== teacher.rank || student.shape.some((d, i) => d !== teacher.shape[i])
  ) {
    throw fail(
      `student and teacher ${what} shapes differ`,
      `${fn}: teacher`,
      shapeStr(student.shape),
      shapeStr(teacher.shape),
    );
  }
}

/** Average groups of `k` consecutive heads of `[B, h, S, T]`: `[B, h/k, S, T]`. */
function averageHeadGroups(x: tf.Tensor4D, k: number): tf.Tensor4D {
  const [B, h, S, T] = x.shape;
  const g = h / k;
  return tf.reshape(tf.mean(tf.reshape(x, [B * g, k, S * T]), 1), [B, g, S, T]);
}

/**
 * Make student and teacher head counts equal (`[B, h, …]` tensors, heads on axis 1).
 *
 * - equal counts: both returned unchanged (the very same tensors);
 * - `ht = k·hs`: head g of the teacher result = mean of teacher heads g·k … g·k + k − 1;
 * - `hs = k·ht`: the same grouping applied to the student's heads;
 * - otherwise an {@link InputError}.
 *
 * Averaging is differentiable, so a grouped student still receives gradients in every head.
 */
export function matchHeads(
  student: tf.Tensor4D,
  teacher: tf.Tensor4D,
): [tf.Tensor4D, tf.Tensor4D] {
  const hs = student.shape[1], ht = teacher.shape[1];
  checkHeads(hs, ht);
  if (hs === ht) return [student, teacher];
  if (ht % hs === 0) return [student, tf.tidy(() => averageHeadGroups(teacher, ht / hs))];
  return [tf.tidy(() => averageHeadGroups(student, hs / ht)), teacher];
}

/** Throw unless one head count is a multiple of the other. */
function checkHeads(hs: number, ht: number): void {
  if (hs > 0 && ht > 0 && (ht % hs === 0 || hs % ht === 0)) return;
  throw new InputError("teacher and student head counts are incompatible", {
    expected: "one head count a multiple of the other",
    got: `teacher ${ht}, student ${hs}`,
    hint: "Choose a student head count that divides the teacher's (or a multiple of it), " +
      "or leave the attention terms (attention_mse, attention_kl, value_relation) out of the loss",
  });
}

function expectScores(fn: string, student: tf.Tensor4D, teacher: tf.Tensor4D, mask: tf.Tensor) {
  expectRank(`${fn}: student`, student, 4, "[B, heads, S, S]");
  expectRank(`${fn}: teacher`, teacher, 4, "[B, heads, S, S]");
  const [B, , S, S2] = student.shape;
  if (S !== S2) {
    throw fail(
      "attention scores must be square",
      `${fn}: student`,
      "[B, heads, S, S]",
      shapeStr(student.shape),
    );
  }
  if (teacher.shape[0] !== B || teacher.shape[2] !== S || teacher.shape[3] !== S) {
    throw fail(
      "student and teacher attention shapes differ",
      `${fn}: teacher`,
      `[${B}, heads, ${S}, ${S}]`,
      shapeStr(teacher.shape),
    );
  }
  expectMask(fn, mask, B, S);
}

function expectMask(fn: string, mask: tf.Tensor, B: number, S: number): void {
  if (mask.rank !== 2 || mask.shape[0] !== B || mask.shape[1] !== S) {
    throw fail(
      "mask does not match the batch",
      `${fn}: mask`,
      `[${B}, ${S}]`,
      shapeStr(mask.shape),
    );
  }
}

/**
 * TinyBERT attention loss on pre-softmax scores (see the module doc): heads matched, entries
 * ≤ −100 zeroed in both, squared error summed over pairs of real tokens and divided by
 * `heads · Σ_b len_b²`.
 */
export function attentionMse(
  student: tf.Tensor4D,
  teacher: tf.Tensor4D,
  mask: tf.Tensor2D,
): tf.Scalar {
  expectScores("attentionMse", student, teacher, mask);
  checkHeads(student.shape[1], teacher.shape[1]);
  return tf.tidy(() => {
    const [s, t] = matchHeads(student, teacher);
    const [B, h, S] = s.shape;
    // [B, 1, S, S]: 1 where both the query and the key are real tokens
    const m = tf.cast(realTokens(mask), "float32");
    const pair = tf.mul(tf.reshape(m, [B, 1, S, 1]), tf.reshape(m, [B, 1, 1, S]));
    // The teacher (a constant) is selected, never multiplied: its padded entries may be NaN;
    // `t > −100` is false for NaN. The student's entries are finite, so masking it is a
    // multiply (cheap, with a gradient); x ≤ −100 ⇔ −x ≥ 100 (GreaterEqual has a gradient).
    const t0 = tf.mul(tf.where(tf.greater(t, -100), t, tf.zerosLike(t)), pair);
    const s0 = tf.mul(tf.where(tf.greaterEqual(tf.neg(s), 100), tf.zerosLike(s), s), pair);
    return tf.div(
      tf.sum(tf.squaredDifference(s0, t0)),
      tf.maximum(tf.mul(tf.sum(pair), h), 1),
    ) as tf.Scalar;
  });
}

/**
 * TinyBERT hidden-state loss: `y = x·Wᵀ + b` (W `[Ht, Hs]`, b `[Ht]`; either may be null), then
 * the squared error against the teacher summed over real tokens and all Ht dims, divided by
 * `real tokens · Ht`. Without W the widths must be equal.
 */
export function hiddenMse(
  student: tf.Tensor3D,
  teacher: tf.Tensor3D,
  weight: tf.Tensor2D | null,
  bias: tf.Tensor1D | null,
  mask: tf.Tensor2D,
): tf.Scalar {
  const fn = "hiddenMse";
  expectRank(`${fn}: student`, student, 3, "[B, S, hidden]");
  expectRank(`${fn}: teacher`, teacher, 3, "[B, S, hidden]");
  const [B, S, Hs] = student.shape;
  const Ht = teacher.shape[2];
  if (teacher.shape[0] !== B || teacher.shape[1] !== S) {
    throw fail(
      "student and teacher hidden-state shapes differ",
      `${fn}: teacher`,
      `[${B}, ${S}, hidden]`,
      shapeStr(teacher.shape),
    );
  }
  expectMask(fn, mask, B, S);
  if (weight) {
    if (weight.rank !== 2 || weight.shape[0] !== Ht || weight.shape[1] !== Hs) {
      throw fail(
        "projection weight does not map student width to teacher width",
        `${fn}: weight`,
        `[${Ht}, ${Hs}] ([teacher, student], Linear orientation)`,
        shapeStr(weight.shape),
      );
    }
  } else if (Hs !== Ht) {
    throw fail(
      "student and teacher hidden widths differ and there is no projection",
      `${fn}: teacher`,
      `hidden width ${Hs} (the student's)`,
      `${Ht}`,
      "Use a learned projection (fit_size) from the student to the teacher width",
    );
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== Ht)) {
    throw fail(
      "projection bias has the wrong size",
      `${fn}: bias`,
      `[${Ht}]`,
      shapeStr(bias.shape),
    );
  }
  return tf.tidy(() => {
    let y: tf.Tensor = student;
    if (weight) {
      y = tf.reshape(tf.matMul(tf.reshape(student, [B * S, Hs]), weight, false, true), [B, S, Ht]);
    }
    if (bias) y = tf.add(y, bias);
    const real = realTokens(mask);
    const keep = tf.reshape(tf.cast(real, "float32"), [B, S, 1]);
    // the teacher is selected (padded entries may be non-finite), the student multiplied
    const t0 = tf.mul(tf.where(tf.isFinite(teacher), teacher, tf.zerosLike(teacher)), keep);
    const y0 = tf.mul(y, keep);
    return tf.div(tf.sum(tf.squaredDifference(y0, t0)), countOf(real, Ht)) as tf.Scalar;
  });
}

function expectLogits(fn: string, student: tf.Tensor, teacher: tf.Tensor): void {
  expectRank(`${fn}: student`, student, 2, "[B, classes]");
  expectSameShape(fn, student, teacher, "logits");
}

/**
 * Official TinyBERT prediction loss: mean over all B×C elements of
 * `−softmax(z_t/T) · log_softmax(z_s/T)`, no T² factor.
 */
export function softCrossEntropy(
  studentLogits: tf.Tensor2D,
  teacherLogits: tf.Tensor2D,
  temperature = 1,
): tf.Scalar {
  expectLogits("softCrossEntropy", studentLogits, teacherLogits);
  checkTemperature("softCrossEntropy", temperature);
  return tf.tidy(() => {
    const pt = tf.softmax(tf.div(teacherLogits, temperature));
    const logPs = tf.logSoftmax(tf.div(studentLogits, temperature));
    return tf.neg(tf.mean(tf.mul(pt, logPs))) as tf.Scalar;
  });
}

/**
 * DistilBERT logit loss: `T² · (1/B) Σ_b Σ_c p_t (log p_t − log p_s)`, `p = softmax(z/T)`.
 */
export function klDivergence(
  studentLogits: tf.Tensor2D,
  teacherLogits: tf.Tensor2D,
  temperature = 1,
): tf.Scalar {
  expectLogits("klDivergence", studentLogits, teacherLogits);
  checkTemperature("klDivergence", temperature);
  return tf.tidy(() => {
    const logPt = tf.logSoftmax(tf.div(teacherLogits, temperature));
    const logPs = tf.logSoftmax(tf.div(studentLogits, temperature));
    const kl = tf.sum(tf.mul(tf.exp(logPt), tf.sub(logPt, logPs)));
    const B = Math.max(studentLogits.shape[0], 1);
    return tf.mul(kl, (temperature * temperature) / B) as tf.Scalar;
  });
}

/**
 * DistilBERT cosine loss on hidden states `[B, S, H]`: mean over real tokens of `1 − cos(s, t)`,
 * norms `√(Σx² + ε²)`, ε = 1e-8. Widths must match.
 */
export function cosineHidden(
  student: tf.Tensor3D,
  teacher: tf.Tensor3D,
  mask: tf.Tensor2D,
): tf.Scalar {
  const fn = "cosineHidden";
  expectRank(`${fn}: student`, student, 3, "[B, S, hidden]");
  if (teacher.rank === 3 && teacher.shape[2] !== student.shape[2]) {
    throw fail(
      "student and teacher hidden widths differ",
      `${fn}: teacher`,
      `hidden width ${student.shape[2]} (the student's)`,
      `${teacher.shape[2]}`,
      "The cosine loss compares states of equal width; use hidden_mse with a projection instead",
    );
  }
  expectSameShape(fn, student, teacher, "hidden-state");
  const [B, S] = student.shape;
  expectMask(fn, mask, B, S);
  return tf.tidy(() => {
    const real = realTokens(mask);
    const keep = tf.reshape(real, [B, S, 1]);
    const s0 = tf.where(keep, student, tf.zerosLike(student));
    const t0 = tf.where(keep, teacher, tf.zerosLike(teacher));
    const eps2 = COSINE_EPS * COSINE_EPS;
    const ns = tf.sqrt(tf.add(tf.sum(tf.square(s0), -1), eps2));
    const nt = tf.sqrt(tf.add(tf.sum(tf.square(t0), -1), eps2));
    const cos = tf.div(tf.sum(tf.mul(s0, t0), -1), tf.mul(ns, nt));
    const per = tf.where(real, tf.sub(1, cos), tf.zerosLike(cos));
    return tf.div(tf.sum(per), countOf(real)) as tf.Scalar;
  });
}

/**
 * KL(p_t ‖ p_s) of row distributions over real keys of head-matched `[B, h, S, S]` scores,
 * summed over keys, averaged over heads and real query rows.
 */
function rowKl(s: tf.Tensor4D, t: tf.Tensor4D, mask: tf.Tensor): tf.Scalar {
  const [B, h, S] = s.shape;
  const real = realTokens(mask);
  const keyReal = tf.reshape(real, [B, 1, 1, S]);
  const queryReal = tf.reshape(real, [B, 1, S, 1]);
  // Padded keys → −1e9 (probability 0); padded query rows → 0 (finite, discarded below).
  const prep = (x: tf.Tensor4D) =>
    tf.where(keyReal, tf.where(queryReal, x, tf.zerosLike(x)), tf.fill(x.shape, NEG_BIG));
  const logPs = tf.logSoftmax(prep(s));
  const logPt = tf.logSoftmax(prep(t));
  const perRow = tf.sum(tf.mul(tf.exp(logPt), tf.sub(logPt, logPs)), -1); // [B, h, S]
  const rows = tf.reshape(real, [B, 1, S]);
  const kept = tf.where(rows, perRow, tf.zerosLike(perRow));
  return tf.div(tf.sum(kept), countOf(real, h)) as tf.Scalar;
}

/**
 * MiniLM attention loss: heads matched on the pre-softmax scores, then KL(p_t ‖ p_s) of the
 * attention distributions over real keys, summed over keys, mean over heads and real query rows.
 */
export function attentionKl(
  student: tf.Tensor4D,
  teacher: tf.Tensor4D,
  mask: tf.Tensor2D,
): tf.Scalar {
  expectScores("attentionKl", student, teacher, mask);
  checkHeads(student.shape[1], teacher.shape[1]);
  return tf.tidy(() => {
    const [s, t] = matchHeads(student, teacher);
    return rowKl(s, t, mask);
  });
}

/**
 * MiniLM value-relation loss on per-head values `[B, h, S, d]`: relation scores `V·Vᵀ/√d`
 * (each model its own d), heads matched on those scores, then the KL of {@link attentionKl}.
 */
export function valueRelationKl(
  studentValues: tf.Tensor4D,
  teacherValues: tf.Tensor4D,
  mask: tf.Tensor2D,
): tf.Scalar {
  const fn = "valueRelationKl";
  expectRank(`${fn}: studentValues`, studentValues, 4, "[B, heads, S, head width]");
  expectRank(`${fn}: teacherValues`, teacherValues, 4, "[B, heads, S, head width]");
  const [B, hs, S] = studentValues.shape;
  const ht = teacherValues.shape[1];
  if (teacherValues.shape[0] !== B || teacherValues.shape[2] !== S) {
    throw fail(
      "student and teacher value shapes differ",
      `${fn}: teacherValues`,
      `[${B}, heads, ${S}, head width]`,
      shapeStr(teacherValues.shape),
    );
  }
  expectMask(fn, mask, B, S);
  checkHeads(hs, ht);
  return tf.tidy(() => {
    const keep = tf.reshape(realTokens(mask), [B, 1, S, 1]);
    const relation = (v: tf.Tensor4D) => {
      const v0 = tf.where(keep, v, tf.zerosLike(v)); // padded values may hold anything
      return tf.div(tf.matMul(v0, v0, false, true), Math.sqrt(v.shape[3])) as tf.Tensor4D;
    };
    const [s, t] = matchHeads(relation(studentValues), relation(teacherValues));
    return rowKl(s, t, mask);
  });
}

/** Cross-entropy on gold labels: `−(1/B) Σ_b log_softmax(z)_{b, label_b}`; labels in `[0, C)`. */
export function hardCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Scalar {
  const fn = "hardCrossEntropy";
  expectRank(`${fn}: logits`, logits, 2, "[B, classes]");
  if (labels.rank !== 1 || labels.shape[0] !== logits.shape[0]) {
    throw fail(
      "labels do not match the batch",
      `${fn}: labels`,
      `[${logits.shape[0]}]`,
      shapeStr(
        labels.shape,
      ),
    );
  }
  return tf.tidy(() => {
    const idx = labels.dtype === "int32" ? labels : tf.cast(labels, "int32");
    const oneHot = tf.oneHot(idx, logits.shape[1]);
    const picked = tf.sum(tf.mul(oneHot, tf.logSoftmax(logits)));
    return tf.div(tf.neg(picked), Math.max(logits.shape[0], 1)) as tf.Scalar;
  });
}

/** Mean squared error of predictions `[B, 1]` or `[B]` against float targets `[B]`. */
export function mseRegression(predictions: tf.Tensor, targets: tf.Tensor1D): tf.Scalar {
  const fn = "mseRegression";
  const B = predictions.shape[0];
  const okPred = predictions.rank === 1 || (predictions.rank === 2 && predictions.shape[1] === 1);
  if (!okPred) {
    throw fail(
      "predictions must be one number per example",
      `${fn}: predictions`,
      "[B] or [B, 1]",
      shapeStr(predictions.shape),
    );
  }
  if (targets.rank !== 1 || targets.shape[0] !== B) {
    throw fail(
      "targets do not match the batch",
      `${fn}: targets`,
      `[${B}]`,
      shapeStr(targets.shape),
    );
  }
  return tf.tidy(() => {
    const p = tf.reshape(predictions, [B]);
    const y = targets.dtype === "float32" ? targets : tf.cast(targets, "float32");
    return tf.mean(tf.squaredDifference(p, y)) as tf.Scalar;
  });
}

/**
 * TinyBERT's prediction-layer loss for regression tasks (STS-B): the mean over `B × C` of
 * `(z_s − z_t)²` between student and teacher outputs.
 */
export function logitMse(studentLogits: tf.Tensor2D, teacherLogits: tf.Tensor2D): tf.Scalar {
  expectLogits("logitMse", studentLogits, teacherLogits);
  return tf.tidy(() => tf.mean(tf.squaredDifference(studentLogits, teacherLogits)) as tf.Scalar);
}
