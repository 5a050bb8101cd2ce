/**
 * Named training objectives: `(model, batch) -> scalar loss`. Being looked up by name lets
 * worker replicas (see `parallel.ts`) run the same objective as the main thread.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { Bert } from "./bert.ts";
import { mseRegression } from "./losses.ts";

/** A batch of named tensors; `inputIds`, `attentionMask`, `tokenTypeIds` are `[batch, seq]`. */
export type Batch = Record<string, tf.Tensor>;

/** Per-call context: a dropout seed so replicas and reruns draw the same masks. */
export interface ObjectiveContext {
  seed?: number;
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
    training: true,
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
    training: true,
    seed: ctx.seed,
    attentionScores: false,
    hiddenStates: false,
  });
  if (!out.logits) throw new Error("objective 'regression' needs a model with a classifier head");
  return mseRegression(out.logits, batch.labels as tf.Tensor1D);
};

/** Objectives by name. */
export const OBJECTIVES: Record<string, Objective> = { classification, regression };

/**
 * Objectives built from JSON options (e.g. a distillation loss spec), by name: options cross to
 * worker replicas as data and each side builds the same objective.
 */
export const OBJECTIVE_FACTORIES: Record<string, (options: unknown) => Objective> = {};

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
