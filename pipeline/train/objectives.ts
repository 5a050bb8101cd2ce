/**
 * Named training objectives: `(model, batch) -> scalar loss`. Being looked up by name lets
 * worker replicas (see `parallel.ts`) run the same objective as the main thread.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { type Bert, MASK_VALUE } from "../model/bert.ts";
import { IGNORE_INDEX } from "../model/align.ts";
import { hardCrossEntropy, mseRegression } from "../distill/losses.ts";
import { distillationObjective } from "../distill/objective.ts";

/** A batch of named tensors; `inputIds`, `attentionMask`, `tokenTypeIds` are `[batch, seq]`. */
export type Batch = Record<string, tf.Tensor>;

/** Per-call context: a dropout seed so replicas and reruns draw the same masks. */
export interface ObjectiveContext {
  /** Seed of the dropout masks (training). */
  seed?: number;
  /** false: no dropout, e.g. to report a loss's value (default true: a training step). */
  training?: boolean;
}

/** A loss over a batch; must be a mean over the batch's examples so shards can be averaged. */
export type Objective = (model: Bert, batch: Batch, ctx: ObjectiveContext) => tf.Scalar;

function inputsOf(batch: Batch) {
  return {
    inputIds: batch.inputIds as tf.Tensor2D,
    attentionMask: batch.attentionMask as tf.Tensor2D | undefined,
    tokenTypeIds: batch.tokenTypeIds as tf.Tensor2D | undefined,
  };
}

/** Cross-entropy of the classifier on integer `labels [batch]`, mean over the batch. */
export const classification: Objective = (model, batch, ctx) => {
  const out = model.forward(inputsOf(batch), {
    training: ctx.training ?? true,
    seed: ctx.seed,
    attentionScores: false,
    hiddenStates: false,
  });
  if (!out.logits) throw new Error("objective 'classification' needs a model with a classifier");
  const labels = batch.labels as tf.Tensor1D;
  const n = out.logits.shape[1];
  return tf.losses.softmaxCrossEntropy(tf.oneHot(tf.cast(labels, "int32"), n), out.logits);
};

/** Mean squared error of the single output on float `labels [batch]` (regression). */
export const regression: Objective = (model, batch, ctx) => {
  const out = model.forward(inputsOf(batch), {
    training: ctx.training ?? true,
    seed: ctx.seed,
    attentionScores: false,
    hiddenStates: false,
  });
  if (!out.logits) throw new Error("objective 'regression' needs a model with a classifier head");
  return mseRegression(out.logits, batch.labels as tf.Tensor1D);
};

/** The label of positions a masked-LM or token loss ignores (as in Hugging Face). */
export { IGNORE_INDEX };

/**
 * Token classification: cross-entropy of the per-token classifier on `tokenLabels [batch, seq]`
 * (the word's tag at its first piece, {@link IGNORE_INDEX} elsewhere), mean over labelled tokens
 * (Hugging Face's `BertForTokenClassification` loss).
 */
export const tokenClassification: Objective = (model, batch, ctx) => {
  const out = model.forward(inputsOf(batch), {
    training: ctx.training ?? true,
    seed: ctx.seed,
    attentionScores: false,
    hiddenStates: false,
  });
  if (!out.tokenLogits) {
    throw new Error("objective 'token_classification' needs a model with a token classifier");
  }
  const [B, S, C] = out.tokenLogits.shape;
  const { positions, targets } = labelledPositions(batch.tokenLabels.dataSync());
  if (positions.length === 0) return tf.mul(tf.sum(out.tokenLogits), 0) as tf.Scalar;
  const rows = tf.gather(out.tokenLogits.reshape([B * S, C]), tf.tensor1d(positions, "int32"));
  return hardCrossEntropy(rows as tf.Tensor2D, tf.tensor1d(targets, "int32"));
};

/** Flat positions whose label is not {@link IGNORE_INDEX}, and those labels. */
export function labelledPositions(labels: ArrayLike<number>) {
  const positions: number[] = [], targets: number[] = [];
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] !== IGNORE_INDEX) {
      positions.push(i);
      targets.push(labels[i]);
    }
  }
  return { positions, targets };
}

/**
 * Span start/end logits `[batch, seq, 2]` as `[2·batch, seq]` rows (all starts, then all ends),
 * padded positions pushed to {@link MASK_VALUE} so the softmax over positions ignores them.
 */
export function spanRows(span: tf.Tensor3D, attentionMask: tf.Tensor): tf.Tensor2D {
  const [B, S] = span.shape;
  const rows = tf.transpose(span, [2, 0, 1]).reshape([2 * B, S]);
  const m = tf.tile(tf.cast(attentionMask, "bool").reshape([1, B * S]), [2, 1]).reshape([2 * B, S]);
  // where, not a product: a cached teacher has NaN at padded positions
  return tf.where(m, rows, tf.fill([2 * B, S], MASK_VALUE)) as tf.Tensor2D;
}

/**
 * Extractive QA: (CE(start) + CE(end)) / 2 over the positions of each row (Hugging Face's
 * `BertForQuestionAnswering` loss; padding excluded from the softmax), on
 * `startPositions`/`endPositions [batch]`.
 */
export const span: Objective = (model, batch, ctx) => {
  const out = model.forward(inputsOf(batch), {
    training: ctx.training ?? true,
    seed: ctx.seed,
    attentionScores: false,
    hiddenStates: false,
  });
  if (!out.spanLogits) throw new Error("objective 'span' needs a model with a QA head");
  const rows = spanRows(out.spanLogits, batch.attentionMask);
  const gold = tf.concat([
    tf.cast(batch.startPositions, "int32"),
    tf.cast(batch.endPositions, "int32"),
  ]);
  return hardCrossEntropy(rows, gold as tf.Tensor1D);
};

/**
 * Masked-LM cross-entropy: `mlmLabels [batch, seq]` holds the original token at masked positions
 * and {@link IGNORE_INDEX} elsewhere; the loss is the mean over masked positions. The MLM head runs
 * on the masked rows only.
 */
export const mlm: Objective = (model, batch, ctx) => {
  const out = model.forward(inputsOf(batch), {
    training: ctx.training ?? true,
    seed: ctx.seed,
    attentionScores: false,
    hiddenStates: false,
  });
  // a constant input: reading it is not on the tape
  const { positions, targets } = labelledPositions(batch.mlmLabels.dataSync());
  const last = out.hiddenStates[out.hiddenStates.length - 1];
  const [B, S, H] = last.shape;
  if (positions.length === 0) return tf.mul(tf.sum(last), 0) as tf.Scalar;
  const rows = tf.gather(last.reshape([B * S, H]), tf.tensor1d(positions, "int32")) as tf.Tensor2D;
  const logits = model.mlmHead(rows);
  return hardCrossEntropy(logits, tf.tensor1d(targets, "int32"));
};

/** Objectives by name. */
export const OBJECTIVES: Record<string, Objective> = {
  classification,
  regression,
  mlm,
  token_classification: tokenClassification,
  span,
};

/**
 * Objectives built from JSON options (e.g. a distillation loss spec), by name: options cross to
 * worker replicas as data and each side builds the same objective.
 */
export const OBJECTIVE_FACTORIES: Record<string, (options: unknown) => Objective> = {
  distillation: distillationObjective,
};

/** Look up an objective by name (built from `options` for a factory), with a clear error. */
export function getObjective(name: string, options?: unknown): Objective {
  const factory = OBJECTIVE_FACTORIES[name];
  if (factory) return factory(options);
  const f = OBJECTIVES[name];
  if (!f) {
    const known = [...Object.keys(OBJECTIVES), ...Object.keys(OBJECTIVE_FACTORIES)];
    throw new Error(`unknown objective '${name}' (known: ${known.join(", ")})`);
  }
  return f;
}
