/**
 * The training graphs, built on the one BERT definition (`graph/bert.ts`) with tinystill's own
 * differentiator ({@link Tape}); every engine runs them (ONNX Runtime from the encoded model, tfjs
 * by interpreting the nodes):
 *
 * - {@link buildGradGraph}: BERT's forward pass in training mode (dropout as fed masks), one
 *   objective (`classification`, `regression`, `mlm`, `token_classification`, `span` or
 *   `distillation`, a weighted sum of `graph/losses.ts` terms) and the backward pass. Every head:
 *   the sequence classifier (pooler, dropout, classifier), the token classifier (dropout and the
 *   classifier on every token) and the QA head (`qa_outputs` on every token, no dropout); the
 *   prediction terms of distillation read the head's rows (every real token; the 2B start/end
 *   distributions over positions, padding at `MASK_VALUE`). A parameter the objective does not
 *   read (the pooler of a per-token model) is no input of the graph and gets no gradient.
 *   Inputs: every parameter the loss reads (Hugging Face names and orientation, so weights map 1:1
 *   to `Bert.params`), the batch, and one float32 mask per dropout site (0 or 1/(1 − rate), the
 *   `dropoutKeep` stream). Outputs: `loss`, `grad:<parameter>` and `grad_sq` (Σ of squares).
 * - {@link buildLossGraph}: the same without a backward; each term's value as `term:<name>`.
 *
 * Batch and sequence length are symbolic: one graph serves every batch shape.
 * @module
 */

import type { BertConfig } from "../model/config.ts";
import { type Dim, GraphBuildError, Tape, type Value } from "./tape.ts";
import {
  bertForward,
  type BertGraph,
  type BertHeads,
  inputWeights,
  MASK_VALUE,
  type Weights,
} from "./bert.ts";
import {
  type LossTermSpec,
  type PredictionHead,
  type PredictionRows,
  requireTerm,
  type TermContext,
  termNeeds,
} from "./losses.ts";
import { DataType, type Graph, type HostTensor } from "./ir.ts";
import type { HostBatch } from "../data/batch.ts";
import { IGNORE_INDEX } from "../model/align.ts";

/** The ONNX opset of the training graphs. */
export const TRAIN_OPSET = 17;

/** The objectives {@link buildGradGraph} has a graph for. */
export const GradGraphObjectives: readonly string[] = [
  "classification",
  "regression",
  "mlm",
  "token_classification",
  "span",
  "distillation",
];

/** What a distillation objective needs to know (JSON, so it can cross to workers). */
export interface DistillObjectiveOptions {
  terms: LossTermSpec[];
  /** Teacher hidden-state index for every student index 0..M (see `layer_map.ts`). */
  layerMap: number[];
  /** `hidden_mse` includes the embedding output (index 0), as TinyBERT does. */
  embeddings: boolean;
  /**
   * The hidden-state projection (student width → teacher width, TinyBERT's `fit_dense`), a
   * training-only parameter: `distill.fit_dense.{weight,bias}` shared by every layer (the
   * paper's code), or `distill.fit_dense.<m>.*` per student index m. Absent when widths match.
   */
  projection: "shared" | "per-layer";
}

/** The projection parameter prefix for student index `m`. */
export function projectionName(opts: DistillObjectiveOptions, m: number): string {
  return opts.projection === "shared" ? "distill.fit_dense" : `distill.fit_dense.${m}`;
}

/**
 * Which prediction head `objective` reads on a model with `heads` (`null`: none), or why it has no
 * graph (a string starting with `!`). Distillation reads the head `predictionRows` does (token
 * classifier, else QA head, else sequence classifier) when its terms need one.
 */
function predictionHead(
  objective: string,
  heads: BertHeads,
  needsPrediction: boolean,
): PredictionHead | null | `!${string}` {
  const tokens = !!heads.classifier && !!heads.tokenClassifier;
  const sequence = !!heads.classifier && !heads.tokenClassifier;
  switch (objective) {
    case "classification":
    case "regression":
      if (sequence) return "logits";
      return tokens
        ? `!objective '${objective}' needs a sequence classifier (this model's labels tokens)`
        : `!objective '${objective}' needs a model with a classifier`;
    case "token_classification":
      return tokens ? "tokens" : "!objective 'token_classification' needs a token classifier";
    case "span":
      return heads.qa ? "span" : "!objective 'span' needs a model with a QA head";
    case "mlm":
      return heads.mlm ? null : "!objective 'mlm' needs a model with an MLM head";
    case "distillation":
      if (!needsPrediction) return null;
      if (tokens) return "tokens";
      if (heads.qa) return "span";
      if (sequence) return "logits";
      return "!a prediction-layer loss needs a student with a classifier";
    default:
      return `!objective '${objective}' has no ONNX graph (known: ${
        GradGraphObjectives.join(", ")
      })`;
  }
}

/**
 * Why {@link buildGradGraph} has no graph for `objective` on a model with `heads`, or null when it
 * has one (a distillation objective is checked against its terms when the graph is built).
 */
export function gradGraphProblem(objective: string, heads: BertHeads): string | null {
  const head = predictionHead(objective, heads, false);
  return typeof head === "string" && head.startsWith("!") ? head.slice(1) : null;
}

/** One dropout site, in `bertForward`'s order (its 1-based index is the mask's seed offset). */
export interface DropoutSite {
  /** Graph input name (`dropout_<k>`, float32: 0 or 1/(1 − rate)). */
  name: string;
  /** 1-based site index (the seed offset of its mask, see `dropoutSeed`). */
  call: number;
  rate: number;
  /** Symbolic shape: `"B"`, `"S"`, `"B*S"` or numbers. */
  dims: Dim[];
}

/** A batch entry the graph reads, with its element type and trailing dims. */
export interface FeedSpec {
  name: string;
  type: "int64" | "int32" | "float32";
  dims: Dim[];
}

/** The graph input names of the batch's model inputs (other keys are fed under their own name). */
const INPUT_NAMES: Record<string, string> = {
  input_ids: "inputIds",
  attention_mask: "attentionMask",
  token_type_ids: "tokenTypeIds",
};

/**
 * The graph's batch inputs from a host batch: the model inputs and targets (int64 or float32 as
 * the graph declares them), and for `mlm` the masked positions and their targets, read from
 * `mlmLabels` (flat positions whose label is not −100). Dropout masks and parameters are the
 * trainer's. `what` names the reader in the error for a missing key.
 */
export function batchFeeds(
  feeds: readonly FeedSpec[],
  b: HostBatch,
  what = "the graph",
): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  let mlm: { positions: number[]; targets: number[] } | null = null;
  for (const f of feeds) {
    if (f.name === "mlm_positions" || f.name === "mlm_targets") {
      if (!mlm) {
        const labels = b.mlmLabels;
        if (!labels) throw new Error(`${what}: an 'mlm' batch needs mlmLabels`);
        const pos: number[] = [], tgt: number[] = [];
        labels.data.forEach((t, i) => {
          if (t !== IGNORE_INDEX) {
            pos.push(i);
            tgt.push(t);
          }
        });
        mlm = { positions: pos, targets: tgt };
      }
      const a = f.name === "mlm_positions" ? mlm.positions : mlm.targets;
      const data = f.type === "int32"
        ? Int32Array.from(a)
        : BigInt64Array.from(a, (x) => BigInt(x));
      out[f.name] = { data, dims: [a.length] };
      continue;
    }
    const key = INPUT_NAMES[f.name] ?? f.name;
    const a = b[key];
    if (!a) throw new Error(`${what}: the batch has no '${key}'`);
    if (f.type === "int64") {
      const data = new BigInt64Array(a.data.length);
      for (let i = 0; i < data.length; i++) data[i] = BigInt(a.data[i]);
      out[f.name] = { data, dims: a.shape };
    } else if (f.type === "int32") {
      const data = a.data instanceof Int32Array ? a.data : Int32Array.from(a.data);
      out[f.name] = { data, dims: a.shape };
    } else {
      const data = a.data instanceof Float32Array ? a.data : Float32Array.from(a.data);
      out[f.name] = { data, dims: a.shape };
    }
  }
  return out;
}

/** What {@link buildGradGraph} needs to know. */
export interface GradGraphSpec {
  config: BertConfig;
  heads: BertHeads;
  /** Every parameter of the model (extras included) with its shape. */
  params: Map<string, number[]>;
  objective: string;
  objectiveOptions?: unknown;
  /** Apply dropout (masks fed per step). */
  dropout: boolean;
  /** Trailing dims of the batch's float targets (`t_scores_3` → `[heads, S, S]` as given). */
  targets?: Record<string, number[]>;
  /**
   * Element type of the integer feeds (ids, mask, labels, positions): `int64` (default) or
   * `int32`, which ONNX Runtime's WebGPU provider computes on (it has no int64 Cast, Equal or
   * Where, so int64 feeds put those nodes on the CPU).
   */
  intType?: "int64" | "int32";
}

/** A built gradient graph. */
export interface GradGraph {
  model: Uint8Array;
  /** The same graph as plain data (for executors that interpret it). */
  graph: Graph;
  /** Parameters the loss depends on (each has a `grad:<name>` output), in input order. */
  trained: string[];
  /** Every parameter input of the graph. */
  inputs: string[];
  feeds: FeedSpec[];
  dropout: DropoutSite[];
}

/** The model's objective graph: its loss, and each distillation term's (unweighted) value. */
export interface ObjectiveGraph {
  tape: Tape;
  loss: Value;
  /** Distillation: each term's value by name (before weighting). */
  terms: Record<string, Value>;
  /** Every parameter the graph reads (graph inputs), in order of use. */
  params: Value[];
  feeds: FeedSpec[];
  dropout: DropoutSite[];
}

/**
 * Build BERT's forward ({@link bertForward}, the one definition) with dropout as fed masks, and
 * the objective on it: `classification`, `regression`, `token_classification`, `span`, `mlm`, or
 * `distillation` (a weighted sum of {@link LOSS_TERMS} graphs).
 */
export function buildObjectiveGraph(spec: GradGraphSpec): ObjectiveGraph {
  const t = new Tape();
  const g = t.g;
  const feeds: FeedSpec[] = [];
  const dropout: DropoutSite[] = [];
  const fedInputs = new Map<string, Value>();
  const intType = spec.intType ?? "int64";
  const feed = (name: string, dims: Dim[], type: "int" | "float32" = "int"): Value => {
    let v = fedInputs.get(name);
    if (!v) {
      const ft = type === "int" ? intType : type;
      feeds.push({ name, type: ft, dims });
      const dt = ft === "int64" ? DataType.INT64 : ft === "int32" ? DataType.INT32 : DataType.FLOAT;
      v = t.input(name, dims, dt);
      fedInputs.set(name, v);
    }
    return v;
  };
  const drop = (x: Value, rate: number): Value => {
    if (!spec.dropout || rate <= 0) return x;
    const call = dropout.length + 1;
    const name = `dropout_${call}`;
    dropout.push({ name, call, rate, dims: [...x.shape] });
    // the mask as fed: 0 or 1/(1 − rate), `dropoutKeep`'s stream (one multiply each way)
    return t.mul(x, t.input(name, [...x.shape]));
  };
  const weights = inputWeights(t, spec.params);

  const objective = spec.objective;
  const dopts = spec.objectiveOptions as DistillObjectiveOptions | undefined;
  const needs = objective === "distillation" ? termNeeds(dopts!.terms) : new Set<string>();
  const head = predictionHead(objective, spec.heads, needs.has("logits") || needs.has("labels"));
  if (typeof head === "string" && head.startsWith("!")) throw new GraphBuildError(head.slice(1));

  const inputs = {
    ids: feed("input_ids", ["B", "S"]),
    mask: feed("attention_mask", ["B", "S"]),
    types: feed("token_type_ids", ["B", "S"]),
  };
  const fwd = bertForward(t, spec.config, spec.heads, weights, inputs, { drop });
  const real = t.cast(inputs.mask, DataType.BOOL); // [B, S]
  const seqLen = g.node("Shape", [inputs.ids.name], { start: 1, end: 2 });
  /** QA `[B, S, 2]` → rows `[2B, S]` (every start row, then every end row), padding masked. */
  const spanRows = (x3: Value) => {
    const rowsShape = t.constant(
      g.node("Concat", [g.int64s("minus_one", [-1]), seqLen], { axis: 0 }),
      [2],
      DataType.INT64,
    );
    const rows = t.transpose(x3, [2, 0, 1]); // [2, B, S]
    // where, not a product: a cached teacher has NaN at padded positions
    return t.reshapeTo(t.where(real, rows, t.scalar(MASK_VALUE)), rowsShape, ["2B", "S"]);
  };
  /** The head's prediction rows (see `PredictionRows`). */
  const headRows = (): Value => {
    if (head === "logits") return fwd.logits();
    if (head === "tokens") return fwd.tokenLogits();
    if (head === "span") return spanRows(fwd.spanLogits());
    throw new GraphBuildError("a prediction-layer loss needs a student with a classifier");
  };
  /** The gold start positions, then the end positions (int64 `[2B]`). */
  const spanGold = () =>
    t.constant(
      g.node("Concat", [feed("startPositions", ["B"]).name, feed("endPositions", ["B"]).name], {
        axis: 0,
      }),
      ["2B"],
      intType === "int32" ? DataType.INT32 : DataType.INT64,
    );
  /** `tokenLabels [B, S]` as rows `[B·S]` (−100: not labelled). */
  const tokenGold = () => t.reshape(feed("tokenLabels", ["B", "S"]), [-1], ["B*S"]);
  const gold = (): Value => {
    if (head === "tokens") return tokenGold();
    if (head === "span") return spanGold();
    return feed("labels", ["B"]);
  };

  let loss: Value;
  const terms: Record<string, Value> = {};
  if (objective === "classification") {
    loss = t.crossEntropy(headRows(), gold());
  } else if (objective === "token_classification") {
    loss = t.crossEntropy(headRows(), gold()); // mean over the labelled positions
  } else if (objective === "span") {
    loss = t.crossEntropy(headRows(), gold()); // (CE(start) + CE(end)) / 2: mean over 2B rows
  } else if (objective === "regression") {
    const y = feed("labels", ["B"], "float32");
    loss = t.mean(t.square(t.sub(t.reshape(headRows(), [-1], ["B"]), y)));
  } else if (objective === "mlm") {
    const positions = feed("mlm_positions", ["M"]);
    const targets = feed("mlm_targets", ["M"]);
    loss = t.crossEntropy(
      fwd.mlmHead(t.gather(fwd.hidden[fwd.hidden.length - 1], positions)),
      targets,
    );
  } else if (objective === "distillation") {
    const c = termContext(t, fwd, dopts!, spec, feed, weights, real, {
      head: head as PredictionHead,
      headRows,
      spanRows,
      gold,
    });
    const parts = dopts!.terms.map((term) => {
      const v = requireTerm(term.name).graph({ ...c, temperature: term.temperature ?? 1 });
      if (v.shape.length !== 0) {
        throw new GraphBuildError(`loss term '${term.name}' is not a scalar ([${v.shape}])`);
      }
      terms[term.name] = v;
      return term.weight === 1 ? v : t.scale(v, term.weight);
    });
    loss = parts.reduce((a, b) => t.add(a, b));
  } else {
    throw new GraphBuildError(`objective '${objective}' has no graph`);
  }
  const params = weights.used.map((n) => weights.get(n));
  return { tape: t, loss, terms, params, feeds, dropout };
}

/** Build the forward + objective + backward graph. */
export function buildGradGraph(spec: GradGraphSpec): GradGraph {
  const { tape: t, loss, params, feeds, dropout } = buildObjectiveGraph(spec);
  const g = t.g;
  t.output(loss, "loss");
  const grads = t.gradients(loss, params, true);
  const trained: string[] = [];
  const squares: string[] = [];
  for (const [name, gname] of grads) {
    trained.push(name);
    g.output(gname, {
      name: `grad:${name}`,
      elemType: DataType.FLOAT,
      dims: spec.params.get(name)!,
    });
    squares.push(g.node("ReduceSumSquare", [gname], { keepdims: 0 }));
  }
  // Σ‖g‖² over every gradient (the clipping norm of a step that is one micro-batch)
  const sq = t.addAll(squares);
  g.output(sq, { name: "grad_sq", elemType: DataType.FLOAT, dims: [] });
  const model = g.toModel({
    name: "tinystill_train",
    opset: TRAIN_OPSET,
    irVersion: 8,
    producer: "tinystill",
  });
  return { model, graph: g.graph(), trained, inputs: params.map((p) => p.name), feeds, dropout };
}

/**
 * The loss graph without a backward: `loss` and `term:<name>` (each distillation term, unweighted)
 * as outputs, for reports and tests (`lossBreakdown`).
 */
export function buildLossGraph(spec: GradGraphSpec): Omit<GradGraph, "trained"> {
  const { tape: t, loss, terms, params, feeds, dropout } = buildObjectiveGraph(spec);
  t.output(loss, "loss");
  for (const [name, v] of Object.entries(terms)) t.output(v, `term:${name}`);
  const g = t.g;
  const model = g.toModel({
    name: "tinystill_loss",
    opset: TRAIN_OPSET,
    irVersion: 8,
    producer: "tinystill",
  });
  return { model, graph: g.graph(), inputs: params.map((p) => p.name), feeds, dropout };
}

/** The context the loss terms' graphs are built from (see `TermContext`). */
function termContext(
  t: Tape,
  fwd: BertGraph,
  o: DistillObjectiveOptions,
  spec: GradGraphSpec,
  feed: (name: string, dims: Dim[], type?: "int" | "float32") => Value,
  weights: Weights,
  real: Value,
  pred: {
    head: PredictionHead;
    headRows: () => Value;
    spanRows: (x3: Value) => Value;
    gold: () => Value;
  },
): Omit<TermContext, "temperature"> {
  const g = t.g;
  const M = o.layerMap.length - 1;
  const fed = new Map<string, Value>();
  const target = (key: string): Value => {
    let v = fed.get(key);
    if (v) return v;
    const dims0 = spec.targets?.[key];
    if (!dims0) {
      throw new GraphBuildError(
        `distillation batch has no ${key} (the teacher outputs do not include what the loss needs)`,
      );
    }
    const [, a, b, c] = dims0;
    let dims: Dim[];
    if (key.startsWith("t_scores_")) dims = ["B", a, "S", "S"];
    else if (key.startsWith("t_values_")) dims = ["B", a, "S", c];
    else if (key.startsWith("t_hidden_")) dims = ["B", "S", b];
    else if (key === "t_logits" && pred.head !== "logits") dims = ["B", "S", b];
    else dims = ["B", a];
    v = feed(key, dims, "float32");
    fed.set(key, v);
    return v;
  };
  const realF = t.cast(real, DataType.FLOAT);
  const zero = t.scalar(0);
  const countOf = (keepF: Value, factor: number) => t.maxConst(t.scale(t.sum(keepF), factor), 1);
  const matchHeads = (s: Value, tt: Value): [Value, Value] => {
    const hs = s.shape[1] as number, ht = tt.shape[1] as number;
    if (hs === ht) return [s, tt];
    if (ht % hs === 0) return [s, t.headGroupMean(tt, ht / hs)];
    if (hs % ht === 0) return [t.headGroupMean(s, hs / ht), tt];
    throw new GraphBuildError(`teacher and student head counts are incompatible (${ht}, ${hs})`);
  };
  const realRows = t.constant(
    g.node("Reshape", [real.name, g.int64s("rows", [-1, 1])]),
    ["B*S", 1],
    DataType.BOOL,
  ); // [B·S, 1]
  const rows: PredictionRows = {
    head: pred.head,
    student: pred.headRows,
    teacher: () => {
      const tl = target("t_logits");
      if (pred.head === "logits") return tl;
      if (pred.head === "span") return pred.spanRows(tl);
      const C = tl.shape[2] as number;
      return t.where(realRows, t.reshape(tl, [-1, C], ["B*S", C]), zero);
    },
    gold: pred.gold,
    sum: (x) => pred.head === "tokens" ? t.sum(t.where(realRows, x, zero)) : t.sum(x),
    count: (k) => {
      if (pred.head === "tokens") return countOf(realF, k);
      const n = t.constant(
        g.node("Cast", [g.node("Shape", [pred.headRows().name], { start: 0, end: 1 })], {
          to: DataType.FLOAT,
        }),
        [1],
      );
      return t.reshape(t.maxConst(t.scale(n, k), 1), [], []);
    },
  };
  const Hs = spec.config.hidden_size;
  const projected = (m: number): Value => {
    const name = projectionName(o, m);
    const h3 = (x: Value, width: number) => fwd.unrows(x, width);
    if (!weights.has(`${name}.weight`)) return h3(fwd.hidden[m], Hs);
    const w = weights.get(`${name}.weight`);
    const b = weights.has(`${name}.bias`) ? weights.get(`${name}.bias`) : undefined;
    return h3(t.linear(fwd.hidden[m], w, b), w.shape[0] as number);
  };
  return {
    t,
    student: fwd,
    layerMap: o.layerMap,
    M,
    embeddings: o.embeddings,
    target,
    projected,
    real,
    realF,
    countOf,
    matchHeads,
    rows,
  };
}
