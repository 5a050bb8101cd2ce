/**
 * The distillation objective: a weighted sum of named loss terms (`losses.ts`) between the
 * student's outputs and the teacher's, for one batch. It is built from plain JSON options
 * ({@link DistillObjectiveOptions}), so worker replicas build the same objective (see
 * `objectives.ts`).
 *
 * A batch carries the student inputs plus the teacher targets, padded to the batch's length:
 * `t_logits [B, C]`, `t_hidden_<i> [B, S, Ht]` (teacher hidden-state index i),
 * `t_scores_<l> [B, ht, S, S]` and `t_values_<l> [B, ht, S, dt]` (teacher layer l, 0-based),
 * and `labels [B]` for `hard_ce`.
 *
 * The hidden-state projection (student width → teacher width, TinyBERT's `fit_dense`) is a
 * training-only parameter of the student: `distill.fit_dense.{weight,bias}` when shared by every
 * layer (the paper's code), `distill.fit_dense.<m>.{weight,bias}` per student index m when
 * `projection: per-layer`. It exists only when the widths differ.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { Bert } from "../model/bert.ts";
import {
  attentionKl,
  attentionMse,
  cosineHidden,
  hardCrossEntropy,
  hiddenMse,
  klDivergence,
  logitMse,
  LOSS_TERMS,
  type LossTermName,
  softCrossEntropy,
  valueRelationKl,
} from "./losses.ts";
import { type Batch, type Objective, OBJECTIVE_FACTORIES } from "../train/objectives.ts";

/** One weighted loss term. */
export interface LossTermSpec {
  name: LossTermName;
  weight: number;
  /** Softmax temperature of `soft_ce` and `kl` (default 1). */
  temperature?: number;
}

/** What the objective needs to know (JSON, so it can cross to workers). */
export interface DistillObjectiveOptions {
  terms: LossTermSpec[];
  /** Teacher hidden-state index for every student index 0..M (see `layer_map.ts`). */
  layerMap: number[];
  /** `hidden_mse` includes the embedding output (index 0), as TinyBERT does. */
  embeddings: boolean;
  projection: "shared" | "per-layer";
}

/** Which teacher outputs a set of terms reads. */
export function termNeeds(terms: LossTermSpec[]): Set<string> {
  return new Set(terms.flatMap((t) => [...LOSS_TERMS[t.name].needs]));
}

/** The projection parameter prefix for student index `m`. */
export function projectionName(opts: DistillObjectiveOptions, m: number): string {
  return opts.projection === "shared" ? "distill.fit_dense" : `distill.fit_dense.${m}`;
}

/**
 * Add the projections `hidden_mse`/`cosine` need when the student is narrower than the teacher
 * (normal(0, 0.02) weights, zero bias, as TinyBERT initialises `fit_dense`). No-op when the
 * widths match or the parameters exist (a resumed or general-distilled student).
 */
export function addProjections(
  student: Bert,
  teacherWidth: number,
  opts: DistillObjectiveOptions,
  seed: number,
): string[] {
  const Hs = student.config.hidden_size;
  if (Hs === teacherWidth) return [];
  const needs = termNeeds(opts.terms);
  if (!needs.has("hidden")) return [];
  const M = opts.layerMap.length - 1;
  const names = new Set<string>();
  for (let m = 0; m <= M; m++) names.add(projectionName(opts, m));
  const added: string[] = [];
  let i = 0;
  for (const name of names) {
    i++;
    if (student.params.has(`${name}.weight`)) continue;
    student.addExtra(
      `${name}.weight`,
      tf.randomNormal([teacherWidth, Hs], 0, 0.02, "float32", seed * 31 + i),
    );
    student.addExtra(`${name}.bias`, tf.zeros([teacherWidth]));
    added.push(name);
  }
  return added;
}

function projection(model: Bert, opts: DistillObjectiveOptions, m: number) {
  const name = projectionName(opts, m);
  const w = model.params.get(`${name}.weight`) as tf.Tensor2D | undefined;
  const b = model.params.get(`${name}.bias`) as tf.Tensor1D | undefined;
  return { w: w ?? null, b: b ?? null };
}

function target<T extends tf.Tensor>(batch: Batch, key: string): T {
  const t = batch[key];
  if (!t) {
    throw new Error(
      `distillation batch has no ${key} (the teacher outputs do not include what the loss needs)`,
    );
  }
  return t as T;
}

/** Build the objective for `opts`. */
export function distillationObjective(options: unknown): Objective {
  const opts = options as DistillObjectiveOptions;
  const needs = termNeeds(opts.terms);
  const map = opts.layerMap, M = map.length - 1;
  return (model, batch, ctx) => {
    const out = model.forward({
      inputIds: batch.inputIds as tf.Tensor2D,
      attentionMask: batch.attentionMask as tf.Tensor2D,
      tokenTypeIds: batch.tokenTypeIds as tf.Tensor2D,
    }, {
      training: true,
      seed: ctx.seed,
      attentionScores: needs.has("scores"),
      hiddenStates: needs.has("hidden"),
      values: needs.has("values"),
    });
    const mask = tf.cast(batch.attentionMask, "float32") as tf.Tensor2D;
    const terms: tf.Scalar[] = [];
    for (const term of opts.terms) {
      let loss: tf.Scalar;
      switch (term.name) {
        case "attention_mse": {
          const parts = [];
          for (let m = 1; m <= M; m++) {
            parts.push(
              attentionMse(
                out.attentionScores[m - 1],
                target(batch, `t_scores_${map[m] - 1}`),
                mask,
              ),
            );
          }
          loss = tf.addN(parts) as tf.Scalar;
          break;
        }
        case "hidden_mse": {
          const parts = [];
          for (let m = opts.embeddings ? 0 : 1; m <= M; m++) {
            const { w, b } = projection(model, opts, m);
            parts.push(
              hiddenMse(out.hiddenStates[m], target(batch, `t_hidden_${map[m]}`), w, b, mask),
            );
          }
          loss = tf.addN(parts) as tf.Scalar;
          break;
        }
        case "soft_ce":
          loss = softCrossEntropy(
            logitsOf(out.logits),
            target(batch, "t_logits"),
            term.temperature ?? 1,
          );
          break;
        case "kl":
          loss = klDivergence(
            logitsOf(out.logits),
            target(batch, "t_logits"),
            term.temperature ?? 1,
          );
          break;
        case "cosine": {
          const { w, b } = projection(model, opts, M);
          let s = out.hiddenStates[M];
          if (w) {
            const [B, S, Hs] = s.shape;
            let y = tf.matMul(s.reshape([B * S, Hs]), w, false, true);
            if (b) y = tf.add(y, b);
            s = y.reshape([B, S, w.shape[0]]) as tf.Tensor3D;
          }
          loss = cosineHidden(s, target(batch, `t_hidden_${map[M]}`), mask);
          break;
        }
        case "attention_kl":
          loss = attentionKl(
            out.attentionScores[M - 1],
            target(batch, `t_scores_${map[M] - 1}`),
            mask,
          );
          break;
        case "value_relation":
          loss = valueRelationKl(out.values![M - 1], target(batch, `t_values_${map[M] - 1}`), mask);
          break;
        case "hard_ce":
          loss = hardCrossEntropy(logitsOf(out.logits), target(batch, "labels"));
          break;
        case "logit_mse":
          loss = logitMse(logitsOf(out.logits), target(batch, "t_logits"));
          break;
        default:
          throw new Error(`unknown loss term ${(term as LossTermSpec).name}`);
      }
      terms.push(term.weight === 1 ? loss : tf.mul(loss, term.weight) as tf.Scalar);
    }
    return tf.addN(terms) as tf.Scalar;
  };
}

function logitsOf(l: tf.Tensor2D | undefined): tf.Tensor2D {
  if (!l) throw new Error("a prediction-layer loss needs a student with a classifier");
  return l;
}

/**
 * Each term's value on a batch without gradients (for logs and tests): `{ name: value }`.
 */
export function lossBreakdown(
  model: Bert,
  batch: Batch,
  opts: DistillObjectiveOptions,
): Record<string, number> {
  const res: Record<string, number> = {};
  for (const term of opts.terms) {
    const f = distillationObjective({ ...opts, terms: [{ ...term, weight: 1 }] });
    const v = tf.tidy(() => f(model, batch, {}));
    res[term.name] = v.dataSync()[0];
    v.dispose();
  }
  return res;
}

OBJECTIVE_FACTORIES.distillation = distillationObjective;
