/**
 * The distillation objective: a weighted sum of named loss terms between the student's outputs and
 * the teacher's, for one batch. Each term is one entry of {@link LOSS_TERMS}: what it reads, what
 * it requires of the task, which teacher layers it compares, and how it is computed from the pure
 * loss functions of `losses.ts`. Adding a term is adding an entry. The objective is built from
 * plain JSON options ({@link DistillObjectiveOptions}), so worker replicas build the same one (see
 * `train/objectives.ts`).
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
import type { Bert, BertOutputs } from "../model/bert.ts";
import {
  attentionKl,
  attentionMse,
  cosineHidden,
  hardCrossEntropy,
  hiddenMse,
  klDivergence,
  logitMse,
  softCrossEntropy,
  valueRelationKl,
} from "./losses.ts";
import { type Batch, labelledPositions, type Objective, spanRows } from "../train/objectives.ts";
import {
  LOSS_TERMS,
  type LossInput,
  type LossTerm,
  type LossTermName,
  type LossTermSpec,
  termAttentionLayers,
  termNeeds,
} from "../graph/losses.ts";
import { type DistillObjectiveOptions, projectionName } from "../onnx/train_graph.ts";

export { LOSS_TERMS, projectionName, termAttentionLayers, termNeeds };
export type { DistillObjectiveOptions, LossInput, LossTerm, LossTermName, LossTermSpec };

/** What a term's `compute` gets for one batch. */
export interface TermInput {
  model: Bert;
  /** The student's forward outputs (the parts the terms of this objective read). */
  out: BertOutputs;
  batch: Batch;
  /** `[B, S]` float mask, 1 on real tokens. */
  mask: tf.Tensor2D;
  opts: DistillObjectiveOptions;
  /** Softmax temperature (`soft_ce`, `kl`; 1 when not given). */
  temperature: number;
}

/** The tfjs implementation of a loss term (to be replaced by the graph in `graph/losses.ts`). */
interface TfjsLossTerm {
  /**
   * Inputs the term reads: teacher outputs to cache (`scores` = pre-softmax attention scores,
   * `hidden` = hidden states, `logits`, `values` = per-head attention values) or gold `labels`.
   */
  readonly needs: readonly LossInput[];
  /** One line for docs and error messages. */
  readonly description: string;
  /** Compares class distributions (refused on a regression task). */
  readonly classes?: boolean;
  /** Teacher attention layers it reads: every mapped layer (default) or only the top one. */
  readonly layers?: "mapped" | "last";
  /** The term's value on one batch (unweighted). */
  compute(c: TermInput): tf.Scalar;
}

const sum = (parts: tf.Scalar[]) => tf.addN(parts) as tf.Scalar;
/** Student layer count of a layer map. */
const layersOf = (o: DistillObjectiveOptions) => o.layerMap.length - 1;

/** The tfjs implementations of the terms of `graph/losses.ts`. */
const TFJS_TERMS = Object.freeze(
  {
    attention_mse: {
      needs: ["scores"],
      description: "TinyBERT: MSE of pre-softmax attention scores over real query/key pairs",
      compute: ({ out, batch, mask, opts }) => {
        const map = opts.layerMap, parts: tf.Scalar[] = [];
        for (let m = 1; m <= layersOf(opts); m++) {
          const t = target<tf.Tensor4D>(batch, `t_scores_${map[m] - 1}`);
          parts.push(attentionMse(out.attentionScores[m - 1], t, mask));
        }
        return sum(parts);
      },
    },
    hidden_mse: {
      needs: ["hidden"],
      description: "TinyBERT: MSE of projected student hidden states (x·Wᵀ + b) over real tokens",
      compute: ({ model, out, batch, mask, opts }) => {
        const parts: tf.Scalar[] = [];
        for (let m = opts.embeddings ? 0 : 1; m <= layersOf(opts); m++) {
          const { w, b } = projection(model, opts, m);
          const t = target<tf.Tensor3D>(batch, `t_hidden_${opts.layerMap[m]}`);
          parts.push(hiddenMse(out.hiddenStates[m], t, w, b, mask));
        }
        return sum(parts);
      },
    },
    soft_ce: {
      needs: ["logits"],
      classes: true,
      description: "TinyBERT: soft cross-entropy −softmax(z_t/T)·log_softmax(z_s/T), mean over B×C",
      compute: ({ out, batch, mask, temperature }) => {
        const { s, t, scale } = predictionRows(out, batch, mask);
        const loss = softCrossEntropy(s, t!, temperature);
        return scale === 1 ? loss : tf.mul(loss, scale) as tf.Scalar;
      },
    },
    kl: {
      needs: ["logits"],
      classes: true,
      description: "DistilBERT: KL(softmax(z_t/T) ‖ softmax(z_s/T))·T², mean over the batch",
      compute: ({ out, batch, mask, temperature }) => {
        const { s, t } = predictionRows(out, batch, mask);
        return klDivergence(s, t!, temperature);
      },
    },
    cosine: {
      needs: ["hidden"],
      description: "DistilBERT: 1 − cosine of student and teacher hidden states over real tokens",
      compute: ({ model, out, batch, mask, opts }) => {
        const M = layersOf(opts);
        const { w, b } = projection(model, opts, M);
        let s = out.hiddenStates[M];
        if (w) {
          const [B, S, Hs] = s.shape;
          let y = tf.matMul(s.reshape([B * S, Hs]), w, false, true);
          if (b) y = tf.add(y, b);
          s = y.reshape([B, S, w.shape[0]]) as tf.Tensor3D;
        }
        return cosineHidden(s, target(batch, `t_hidden_${opts.layerMap[M]}`), mask);
      },
    },
    attention_kl: {
      needs: ["scores"],
      layers: "last",
      description: "MiniLM: KL of attention distributions over real keys, mean over heads × rows",
      compute: ({ out, batch, mask, opts }) => {
        const M = layersOf(opts);
        const t = target<tf.Tensor4D>(batch, `t_scores_${opts.layerMap[M] - 1}`);
        return attentionKl(out.attentionScores[M - 1], t, mask);
      },
    },
    value_relation: {
      needs: ["values"],
      layers: "last",
      description: "MiniLM: KL of value relations softmax(V·Vᵀ/√d) over real keys",
      compute: ({ out, batch, mask, opts }) => {
        const M = layersOf(opts);
        const t = target<tf.Tensor4D>(batch, `t_values_${opts.layerMap[M] - 1}`);
        return valueRelationKl(out.values![M - 1], t, mask);
      },
    },
    logit_mse: {
      needs: ["logits"],
      description:
        "MSE between student and teacher logits (TinyBERT's prediction loss for regression)",
      compute: ({ out, batch, mask }) => {
        const { s, t } = predictionRows(out, batch, mask);
        return logitMse(s, t!);
      },
    },
    hard_ce: {
      needs: ["labels"],
      classes: true,
      description: "cross-entropy of the student's logits on the gold labels, mean over the batch",
      compute: ({ out, batch, mask }) => {
        const { s, gold } = predictionRows(out, batch, mask, true);
        return hardCrossEntropy(s, gold!);
      },
    },
  } satisfies Record<string, TfjsLossTerm>,
) as Readonly<Record<LossTermName, TfjsLossTerm>>;

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
  return (model, batch, ctx) => {
    const out = model.forward({
      inputIds: batch.inputIds as tf.Tensor2D,
      attentionMask: batch.attentionMask as tf.Tensor2D,
      tokenTypeIds: batch.tokenTypeIds as tf.Tensor2D,
    }, {
      training: ctx.training ?? true,
      seed: ctx.seed,
      attentionScores: needs.has("scores"),
      hiddenStates: needs.has("hidden"),
      values: needs.has("values"),
    });
    const mask = tf.cast(batch.attentionMask, "float32") as tf.Tensor2D;
    const terms = opts.terms.map((term) => {
      const loss = TFJS_TERMS[term.name as LossTermName].compute({
        model,
        out,
        batch,
        mask,
        opts,
        temperature: term.temperature ?? 1,
      });
      return term.weight === 1 ? loss : tf.mul(loss, term.weight) as tf.Scalar;
    });
    return tf.addN(terms) as tf.Scalar;
  };
}

/**
 * The rows the prediction-layer terms compare, `[N, K]` for the student (`s`) and the teacher
 * (`t`, from `t_logits`), or the gold targets of the student's rows (`gold`, for `hard_ce`):
 * - sequence classification: one row per example (`logits [B, C]`);
 * - token classification: one row per real token (`[CLS]`/`[SEP]` and every word piece: the
 *   teacher's distribution everywhere; `t_logits [B, S, C]`), or for `gold` the labelled first
 *   pieces of `tokenLabels`;
 * - QA: the start and the end distribution over the positions of each example (2B rows,
 *   padding masked; `t_logits [B, S, 2]`), gold `startPositions`/`endPositions`; `soft_ce`
 *   multiplies by `scale` = S, so it is the mean cross-entropy of those 2B distributions.
 */
export function predictionRows(
  out: BertOutputs,
  batch: Batch,
  mask: tf.Tensor2D,
  gold = false,
): { s: tf.Tensor2D; t?: tf.Tensor2D; gold?: tf.Tensor1D; scale: number } {
  if (out.tokenLogits) {
    const [B, S, C] = out.tokenLogits.shape;
    const flat = out.tokenLogits.reshape([B * S, C]) as tf.Tensor2D;
    if (gold) {
      const { positions, targets } = labelledPositions(target(batch, "tokenLabels").dataSync());
      const idx = tf.tensor1d(positions, "int32");
      return { s: tf.gather(flat, idx), gold: tf.tensor1d(targets, "int32"), scale: 1 };
    }
    const real: number[] = [];
    mask.dataSync().forEach((m, i) => m > 0 && real.push(i));
    const idx = tf.tensor1d(real, "int32");
    const t = target<tf.Tensor3D>(batch, "t_logits").reshape([B * S, C]) as tf.Tensor2D;
    return { s: tf.gather(flat, idx), t: tf.gather(t, idx), scale: 1 };
  }
  if (out.spanLogits) {
    const s = spanRows(out.spanLogits, mask);
    if (gold) {
      const g = tf.concat([
        tf.cast(target(batch, "startPositions"), "int32"),
        tf.cast(target(batch, "endPositions"), "int32"),
      ]) as tf.Tensor1D;
      return { s, gold: g, scale: 1 };
    }
    // soft_ce's mean over rows × "classes" would divide by the padded length here: × S makes
    // it the cross-entropy of each start/end distribution, mean over the 2B rows
    const t = spanRows(target<tf.Tensor3D>(batch, "t_logits"), mask);
    return { s, t, scale: s.shape[1] };
  }
  if (!out.logits) throw new Error("a prediction-layer loss needs a student with a classifier");
  return gold
    ? { s: out.logits, gold: target<tf.Tensor1D>(batch, "labels"), scale: 1 }
    : { s: out.logits, t: target<tf.Tensor2D>(batch, "t_logits"), scale: 1 };
}

/**
 * Each term's value on a batch without gradients and without dropout (for logs and tests; the
 * same model and batch always give the same values): `{ name: value }`.
 */
export function lossBreakdown(
  model: Bert,
  batch: Batch,
  opts: DistillObjectiveOptions,
): Record<string, number> {
  const res: Record<string, number> = {};
  for (const term of opts.terms) {
    const f = distillationObjective({ ...opts, terms: [{ ...term, weight: 1 }] });
    const v = tf.tidy(() => f(model, batch, { training: false }));
    res[term.name] = v.dataSync()[0];
    v.dispose();
  }
  return res;
}
