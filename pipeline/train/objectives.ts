/**
 * Named training objectives: `(model, batch) -> scalar loss`. Being looked up by name lets
 * worker replicas (see `parallel.ts`) run the same objective as the main thread.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { Bert } from "../model/bert.ts";
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

/** The label of positions a masked-LM loss ignores (as in Hugging Face). */
export const IGNORE_INDEX = -100;

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
  const labels = batch.mlmLabels.dataSync(); // a constant input: reading it is not on the tape
  const positions: number[] = [], targets: number[] = [];
  labels.forEach((t, i) => {
    if (t !== IGNORE_INDEX) {
      positions.push(i);
      targets.push(t);
    }
  });
  const last = out.hiddenStates[out.hiddenStates.length - 1];
  const [B, S, H] = last.shape;
  if (positions.length === 0) return tf.mul(tf.sum(last), 0) as tf.Scalar;
  const rows = tf.gather(last.reshape([B * S, H]), tf.tensor1d(positions, "int32")) as tf.Tensor2D;
  const logits = model.mlmHead(rows);
  return hardCrossEntropy(logits, tf.tensor1d(targets, "int32"));
};

/** Objectives by name. */
export const OBJECTIVES: Record<string, Objective> = { classification, regression, mlm };

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
