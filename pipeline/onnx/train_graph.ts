/**
 * The training graphs of the ONNX engine, built with tinystill's own differentiator
 * ({@link Tape}):
 *
 * - {@link buildGradGraph}: BERT's forward pass in training mode (dropout as fed masks), one
 *   objective (`classification`, `regression`, `mlm`, `token_classification`, `span` or
 *   `distillation` with any of its loss terms) and the backward pass. Every head: the sequence
 *   classifier (pooler, dropout, classifier), the token classifier (dropout and the classifier on
 *   every token) and the QA head (`qa_outputs` on every token, no dropout); the prediction terms
 *   of distillation read the rows `predictionRows` defines for the student's head (every real
 *   token; the 2B start/end distributions over positions, padding at `MASK_VALUE`). A parameter
 *   the objective does not read (the pooler of a per-token model) is no input of the graph and
 *   gets no gradient, as on tfjs. Inputs: every parameter the loss reads (Hugging Face names and
 *   orientation, so weights map 1:1 to `Bert.params`), the batch, and one uint8 keep-mask per
 *   dropout site. Outputs: `loss`, `grad:<parameter>` and `grad_sq` (Σ of their squares).
 * - {@link buildAdamWGraph}: global-norm clipping and the AdamW update of every trained
 *   parameter (decoupled decay, none on biases and LayerNorm), exactly the arithmetic of
 *   `train/optim.ts`. Inputs `<p>`, `grad:<p>`, `m:<p>`, `v:<p>` and the step's scalars;
 *   outputs `new:<p>`, `new_m:<p>`, `new_v:<p>` and `grad_norm`.
 *
 * The forward pass mirrors `Bert.forward` op for op (same order of additions, `QKᵀ/√d` as a
 * division, the same dropout sites in the same order) so that, fed the same masks, it computes
 * what the tfjs engine computes. Batch and sequence length are symbolic: one graph serves every
 * batch shape.
 * @module
 */

import type { BertConfig } from "../model/config.ts";
import type { BertHeads } from "../model/bert.ts";
import { isNoDecay, MASK_VALUE } from "../model/bert.ts";
import type { DistillObjectiveOptions, LossTermName } from "../distill/objective.ts";
import { projectionName, termNeeds } from "../distill/objective.ts";
import { type Dim, GraphBuildError, Tape, type Value } from "./autodiff.ts";
import { DataType, type Graph } from "./graph.ts";

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

/**
 * The prediction output an objective reads: the sequence classifier's `logits [B, C]`, the token
 * classifier's rows `[B·S, C]`, or the QA head's start/end rows `[2B, S]` (padding masked).
 */
type PredictionHead = "logits" | "tokens" | "span";

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

/** One dropout site: the order matches `Bert.forward`'s dropout calls (seed offsets 1, 2, …). */
export interface DropoutSite {
  /** Graph input name (`dropout_<k>`, float32: 0 or 1/(1 − rate)). */
  name: string;
  /** 1-based call index (the seed offset of `Bert.forward`). */
  call: number;
  rate: number;
  /** Symbolic shape: `"B"`, `"S"`, `"B*S"` or numbers. */
  dims: Dim[];
}

/** A batch entry the graph reads, with its element type and trailing dims. */
export interface FeedSpec {
  name: string;
  type: "int64" | "float32";
  dims: Dim[];
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

interface Forward {
  hidden: Value[]; // [N, H] rows, index 0 = embeddings
  scores: Value[]; // [B, nh, S, S]
  values: Value[]; // [B, nh, S, d]
  last3: Value; // [B, S, H]
  /** What the objective's prediction terms read (see {@link PredictionHead}). */
  head: PredictionHead | null;
  /** `[B, C]` (sequence), `[B·S, C]` (token rows) or `[2B, S]` (start rows, then end rows). */
  logits?: Value;
  /** Start/end rows of `[B, S, 2]` logits, padded positions set to `MASK_VALUE` (as `spanRows`). */
  spanRows?: (x: Value) => Value;
}

/** Build the forward + objective + backward graph. */
export function buildGradGraph(spec: GradGraphSpec): GradGraph {
  const cfg = spec.config;
  const t = new Tape();
  const g = t.g;
  const H = cfg.hidden_size, nh = cfg.num_attention_heads, d = H / nh;
  const N = "B*S";
  const feeds: FeedSpec[] = [];
  const dropout: DropoutSite[] = [];
  const P = new Map<string, Value>();
  const paramInputs: string[] = [];
  const p = (name: string): Value => {
    let v = P.get(name);
    if (!v) {
      const shape = spec.params.get(name);
      if (!shape) throw new GraphBuildError(`the model has no parameter ${name}`);
      v = t.param(name, shape);
      P.set(name, v);
      paramInputs.push(name);
    }
    return v;
  };
  const fedInputs = new Map<string, Value>();
  const feed = (name: string, dims: Dim[], type: "int64" | "float32" = "int64"): Value => {
    let v = fedInputs.get(name);
    if (!v) {
      feeds.push({ name, type, dims });
      v = t.input(name, dims, type === "int64" ? DataType.INT64 : DataType.FLOAT);
      fedInputs.set(name, v);
    }
    return v;
  };
  const drop = (x: Value, rate: number): Value => {
    if (!spec.dropout || rate <= 0) return x;
    const call = dropout.length + 1;
    const name = `dropout_${call}`;
    dropout.push({ name, call, rate, dims: [...x.shape] });
    // the mask as fed: 0 or 1/(1 − rate), as `dropoutMask` (one multiply each way)
    return t.mul(x, t.input(name, [...x.shape]));
  };
  const dense = (x: Value, prefix: string) =>
    t.linear(x, p(`${prefix}.weight`), p(`${prefix}.bias`));
  const norm = (x: Value, prefix: string) =>
    t.layerNorm(x, p(`${prefix}.weight`), p(`${prefix}.bias`), cfg.layer_norm_eps);
  const act = (x: Value): Value => {
    if (cfg.hidden_act === "gelu") return t.gelu(x);
    if (cfg.hidden_act === "gelu_new") return t.geluTanh(x);
    if (cfg.hidden_act === "relu") return t.relu(x);
    throw new GraphBuildError(`unsupported hidden_act '${cfg.hidden_act}'`);
  };

  const objective = spec.objective;
  const dopts = spec.objectiveOptions as DistillObjectiveOptions | undefined;
  const needs = objective === "distillation" ? termNeeds(dopts!.terms) : new Set<string>();
  const head = predictionHead(objective, spec.heads, needs.has("logits") || needs.has("labels"));
  if (typeof head === "string" && head.startsWith("!")) throw new GraphBuildError(head.slice(1));

  // --- inputs ------------------------------------------------------------------------------------
  const ids = feed("input_ids", ["B", "S"]);
  const mask = feed("attention_mask", ["B", "S"]);
  const types = feed("token_type_ids", ["B", "S"]);
  const shapeBS = t.constant(g.node("Shape", [ids.name]), [2], DataType.INT64);
  const seqLen = t.constant(g.node("Shape", [ids.name], { start: 1, end: 2 }), [1], DataType.INT64);
  const shapeOf = (tail: number[]) =>
    t.constant(g.node("Concat", [shapeBS.name, g.int64s("tail", tail)], { axis: 0 }), [
      2 + tail.length,
    ], DataType.INT64);
  const shapeBSH = shapeOf([H]), shapeHeads = shapeOf([nh, d]);

  // --- forward (as Bert.forward) ------------------------------------------------------------------
  const maskF = t.cast(mask, DataType.FLOAT); // [B, S]
  const maskAdd = t.constant(
    g.node("Unsqueeze", [
      g.node("Mul", [g.node("Sub", [g.scalar("c", 1), maskF.name]), g.scalar("c", MASK_VALUE)]),
      g.int64s("axes", [1, 2]),
    ]),
    ["B", 1, 1, "S"],
  );
  const flat = (v: Value) => t.reshape(v, [-1], [N]);
  const words = t.gather(p("embeddings.word_embeddings.weight"), flat(ids)); // [N, H]
  const pos = t.sliceFirst(p("embeddings.position_embeddings.weight"), 0, seqLen, "S");
  const tt = t.gather(p("embeddings.token_type_embeddings.weight"), flat(types));
  const sum3 = t.add(
    t.add(t.reshapeTo(words, shapeBSH, ["B", "S", H]), pos),
    t.reshapeTo(tt, shapeBSH, ["B", "S", H]),
  );
  let h = drop(
    norm(t.reshape(sum3, [-1, H], [N, H]), "embeddings.LayerNorm"),
    cfg.hidden_dropout_prob,
  );

  const fwd: Forward = {
    hidden: [h],
    scores: [],
    values: [],
    last3: h,
    head: head as PredictionHead | null,
  };
  const invSqrtD = t.scalar(1 / Math.sqrt(d));
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const pre = `encoder.layer.${l}`;
    const split = (x: Value) =>
      t.transpose(t.reshapeTo(x, shapeHeads, ["B", "S", nh, d]), [0, 2, 1, 3]); // [B, nh, S, d]
    const q = split(dense(h, `${pre}.attention.self.query`));
    const k = split(dense(h, `${pre}.attention.self.key`));
    const v = split(dense(h, `${pre}.attention.self.value`));
    // QKᵀ/√d with the 1/√d applied to Q ([B, nh, S, d], 4–5× smaller than the scores: one pass
    // less over [B, nh, S, S] each way; equal to Bert.forward's division to float32 rounding)
    const scores = t.add(t.matmul(t.mul(q, invSqrtD), k, true), maskAdd); // [B, nh, S, S]
    const probs = drop(t.softmax(scores), cfg.attention_probs_dropout_prob);
    const ctx = t.reshape(t.transpose(t.matmul(probs, v), [0, 2, 1, 3]), [-1, H], [N, H]);
    const attnProj = drop(dense(ctx, `${pre}.attention.output.dense`), cfg.hidden_dropout_prob);
    const attnOut = norm(t.add(attnProj, h), `${pre}.attention.output.LayerNorm`);
    const inter = act(dense(attnOut, `${pre}.intermediate.dense`));
    const ffn = drop(dense(inter, `${pre}.output.dense`), cfg.hidden_dropout_prob);
    h = norm(t.add(ffn, attnOut), `${pre}.output.LayerNorm`);
    fwd.hidden.push(h);
    fwd.scores.push(scores);
    fwd.values.push(v);
  }
  fwd.last3 = t.reshapeTo(h, shapeBSH, ["B", "S", H]);

  // --- heads (as Bert.forward: the classifier's dropout is its last dropout call) ---------------
  const rate = cfg.classifier_dropout ?? cfg.hidden_dropout_prob;
  if (fwd.head === "logits") {
    const cls = t.reshape(
      t.sliceFirst(fwd.last3, 1, t.constant(g.int64s("one", [1]), [1], DataType.INT64), 1),
      [-1, H],
      ["B", H],
    );
    const pooled = t.tanh(dense(cls, "pooler.dense"));
    fwd.logits = dense(drop(pooled, rate), "classifier");
  } else if (fwd.head === "tokens") {
    // BertForTokenClassification: dropout on every token's last hidden state, then the classifier
    fwd.logits = dense(drop(h, rate), "classifier"); // [B·S, C]
  } else if (fwd.head === "span") {
    // BertForQuestionAnswering: qa_outputs on every token, no dropout; rows as `spanRows`
    const real = t.cast(mask, DataType.BOOL); // [B, S]
    const rowsShape = t.constant(
      g.node("Concat", [g.int64s("minus_one", [-1]), seqLen.name], { axis: 0 }),
      [2],
      DataType.INT64,
    );
    fwd.spanRows = (x3: Value) => {
      const rows = t.transpose(x3, [2, 0, 1]); // [2, B, S]: every start row, then every end row
      // where, not a product: a cached teacher has NaN at padded positions
      const masked = t.where(real, rows, t.scalar(MASK_VALUE));
      return t.reshapeTo(masked, rowsShape, ["2B", "S"]);
    };
    fwd.logits = fwd.spanRows(t.reshapeTo(dense(h, "qa_outputs"), shapeOf([2]), ["B", "S", 2]));
  }

  // --- objective -----------------------------------------------------------------------------------
  let loss: Value;
  /** The gold start positions, then the end positions (int64 `[2B]`). */
  const spanGold = () =>
    t.constant(
      g.node("Concat", [feed("startPositions", ["B"]).name, feed("endPositions", ["B"]).name], {
        axis: 0,
      }),
      ["2B"],
      DataType.INT64,
    );
  /** `tokenLabels [B, S]` as rows `[B·S]` (−100: not labelled). */
  const tokenGold = () => t.reshape(feed("tokenLabels", ["B", "S"]), [-1], [N]);
  if (objective === "classification") {
    loss = t.crossEntropy(fwd.logits!, feed("labels", ["B"]));
  } else if (objective === "token_classification") {
    // mean over the labelled positions (crossEntropy skips −100)
    loss = t.crossEntropy(fwd.logits!, tokenGold());
  } else if (objective === "span") {
    // (CE(start) + CE(end)) / 2 = the mean over the 2B rows
    loss = t.crossEntropy(fwd.logits!, spanGold());
  } else if (objective === "regression") {
    const y = feed("labels", ["B"], "float32");
    const diff = t.sub(t.reshape(fwd.logits!, [-1], ["B"]), y);
    loss = t.mean(t.square(diff));
  } else if (objective === "mlm") {
    const positions = feed("mlm_positions", ["M"]);
    const targets = feed("mlm_targets", ["M"]);
    const rows = t.gather(h, positions); // [M, H]
    const tr = norm(
      act(dense(rows, "cls.predictions.transform.dense")),
      "cls.predictions.transform.LayerNorm",
    );
    const logits = t.linear(tr, p("embeddings.word_embeddings.weight"), p("cls.predictions.bias"));
    loss = t.crossEntropy(logits, targets);
  } else if (objective === "distillation") {
    loss = distillationLoss(t, fwd, dopts!, spec, feed, p, mask, { spanGold, tokenGold });
  } else {
    throw new GraphBuildError(`objective '${objective}' has no ONNX graph`);
  }
  t.output(loss, "loss");
  const params = paramInputs.map((n) => P.get(n)!);
  const grads = t.gradients(loss, params, true);
  const trained: string[] = [];
  const squares: string[] = [];
  for (const [name, gname] of grads) {
    trained.push(name);
    t.g.output(gname, {
      name: `grad:${name}`,
      elemType: DataType.FLOAT,
      dims: spec.params.get(name)!,
    });
    squares.push(g.node("ReduceSumSquare", [gname], { keepdims: 0 }));
  }
  // Σ‖g‖² over every gradient (the clipping norm of a step that is one micro-batch)
  const sq = squares.length === 1 ? squares[0] : g.node("Sum", squares);
  g.output(sq, { name: "grad_sq", elemType: DataType.FLOAT, dims: [] });
  const model = g.toModel({
    name: "tinystill_train",
    opset: TRAIN_OPSET,
    irVersion: 8,
    producer: "tinystill",
  });
  return { model, graph: g.graph(), trained, inputs: paramInputs, feeds, dropout };
}

function distillationLoss(
  t: Tape,
  fwd: Forward,
  o: DistillObjectiveOptions,
  spec: GradGraphSpec,
  feed: (name: string, dims: Dim[], type?: "int64" | "float32") => Value,
  p: (name: string) => Value,
  maskInt: Value,
  gold: { spanGold: () => Value; tokenGold: () => Value },
): Value {
  const g = t.g;
  const M = o.layerMap.length - 1;
  const tdims = (key: string): number[] => {
    const dims = spec.targets?.[key];
    if (!dims) {
      throw new GraphBuildError(
        `distillation batch has no ${key} (the teacher outputs do not include what the loss needs)`,
      );
    }
    return dims;
  };
  const fed = new Map<string, Value>();
  /** A teacher target as a graph input: batch and sequence axes symbolic, the rest as sampled. */
  const target = (key: string): Value => {
    let v = fed.get(key);
    if (!v) {
      const [, a, b, c] = tdims(key);
      let dims: Dim[];
      if (key.startsWith("t_scores_")) dims = ["B", a, "S", "S"];
      else if (key.startsWith("t_values_")) dims = ["B", a, "S", c];
      else if (key.startsWith("t_hidden_")) dims = ["B", "S", b];
      else if (key === "t_logits" && fwd.head !== "logits") dims = ["B", "S", b];
      else dims = ["B", a];
      v = feed(key, dims, "float32");
      fed.set(key, v);
    }
    return v;
  };
  // real-token mask as bool and float
  const maskF = t.cast(maskInt, DataType.FLOAT);
  const half = t.scalar(0.5);
  const real = t.compare("Greater", maskF, half); // [B, S] bool
  const realF = t.cast(real, DataType.FLOAT);
  const zero = t.scalar(0);
  const countOf = (keepF: Value, factor: number) => t.maxConst(t.scale(t.sum(keepF), factor), 1);
  const unsq = (v: Value, axes: number[], shape: Dim[]) =>
    t.constant(g.node("Unsqueeze", [v.name, g.int64s("axes", axes)]), shape, v.type);
  const headsOf = (v: Value) => v.shape[1] as number;
  const match = (s: Value, tt: Value): [Value, Value] => {
    const hs = headsOf(s), ht = headsOf(tt);
    if (hs === ht) return [s, tt];
    if (ht % hs === 0) return [s, t.headGroupMean(tt, ht / hs)];
    if (hs % ht === 0) return [t.headGroupMean(s, hs / ht), tt];
    throw new GraphBuildError(`teacher and student head counts are incompatible (${ht}, ${hs})`);
  };
  const rowKl = (s: Value, tt: Value): Value => {
    const h = headsOf(s);
    const keyReal = unsq(real, [1, 2], ["B", 1, 1, "S"]);
    const queryReal = unsq(real, [1, 3], ["B", 1, "S", 1]);
    const negBig = t.scalar(-1e9);
    const prep = (x: Value) => t.where(keyReal, t.where(queryReal, x, zero), negBig);
    const logPs = t.logSoftmax(prep(s));
    const logPt = t.detach(t.logSoftmax(prep(tt)));
    const perRow = t.sum(t.mul(t.exp(logPt), t.sub(logPt, logPs)), [-1]); // [B, h, S]
    const rows = unsq(real, [1], ["B", 1, "S"]);
    return t.div(t.sum(t.where(rows, perRow, zero)), countOf(realF, h));
  };
  const logits = () => {
    if (!fwd.logits) {
      throw new GraphBuildError("a prediction-layer loss needs a student with a classifier");
    }
    return fwd.logits;
  };
  // Per-token heads (`predictionRows`): token rows [B·S, C] compared on real tokens only (the
  // teacher's NaN rows replaced before anything reads them); QA rows [2B, S], padding at
  // MASK_VALUE in both, each row one distribution over positions.
  const realRows = t.constant(
    g.node("Reshape", [real.name, g.int64s("rows", [-1, 1])]),
    ["B*S", 1],
    DataType.BOOL,
  ); // [B·S, 1]
  const teacherRows = (): Value => {
    const tl = target("t_logits");
    if (fwd.head === "span") return fwd.spanRows!(tl);
    const C = tl.shape[2] as number;
    return t.where(realRows, t.reshape(tl, [-1, C], ["B*S", C]), zero);
  };
  /** Σ over the compared rows of a per-element value [rows, K] (token heads: real rows only). */
  const rowSum = (x: Value): Value =>
    fwd.head === "tokens" ? t.sum(t.where(realRows, x, zero)) : t.sum(x);
  /** Number of compared rows (× `k`): real tokens, 2B start/end rows or B examples. */
  const rowCount = (k: number): Value => {
    if (fwd.head === "tokens") return countOf(realF, k);
    const rows = t.constant(
      g.node("Cast", [g.node("Shape", [logits().name], { start: 0, end: 1 })], {
        to: DataType.FLOAT,
      }),
      [1],
    );
    return t.reshape(t.maxConst(t.scale(rows, k), 1), [], []);
  };
  const hidden3 = (m: number) =>
    t.reshapeTo(fwd.hidden[m], t.constant(g.node("Shape", [fwd.last3.name]), [3], DataType.INT64), [
      "B",
      "S",
      fwd.last3.shape[2],
    ]);
  const projected = (m: number): Value => {
    // y = x·Wᵀ + b on rows [N, Hs] → [B, S, Ht]
    const name = projectionName(o, m);
    const w = spec.params.has(`${name}.weight`) ? p(`${name}.weight`) : null;
    const b = spec.params.has(`${name}.bias`) ? p(`${name}.bias`) : null;
    if (!w) return hidden3(m);
    const y = t.linear(fwd.hidden[m], w, b ?? undefined);
    const Ht = w.shape[0];
    const shape = t.constant(
      g.node("Concat", [
        g.node("Shape", [fwd.last3.name], { start: 0, end: 2 }),
        g.int64s("ht", [Ht as number]),
      ], { axis: 0 }),
      [3],
      DataType.INT64,
    );
    return t.reshapeTo(y, shape, ["B", "S", Ht]);
  };
  const isFinite = (x: Value) =>
    t.constant(
      g.node("Not", [g.node("Or", [g.node("IsNaN", [x.name]), g.node("IsInf", [x.name])])]),
      [...x.shape],
      DataType.BOOL,
    );

  const terms: Record<LossTermName, (temperature: number) => Value> = {
    attention_mse: () => {
      const parts: Value[] = [];
      const pair = t.mul(
        t.constant(g.node("Unsqueeze", [realF.name, g.int64s("axes", [1, 3])]), ["B", 1, "S", 1]),
        t.constant(g.node("Unsqueeze", [realF.name, g.int64s("axes", [1, 2])]), ["B", 1, 1, "S"]),
      ); // [B, 1, S, S]
      const hundred = t.scalar(-100);
      for (let m = 1; m <= M; m++) {
        const key = `t_scores_${o.layerMap[m] - 1}`;
        const tt = target(key);
        const [s, tm] = match(fwd.scores[m - 1], tt);
        const h = headsOf(s);
        const t0 = t.mul(t.where(t.compare("Greater", tm, hundred), tm, zero), pair);
        const s0 = t.mul(t.where(t.compare("LessOrEqual", s, hundred), zero, s), pair);
        parts.push(t.div(t.sum(t.square(t.sub(s0, t0))), t.maxConst(t.scale(t.sum(pair), h), 1)));
      }
      return parts.reduce((a, b) => t.add(a, b));
    },
    hidden_mse: () => {
      const parts: Value[] = [];
      const keep = t.constant(g.node("Unsqueeze", [realF.name, g.int64s("axes", [2])]), [
        "B",
        "S",
        1,
      ]);
      for (let m = o.embeddings ? 0 : 1; m <= M; m++) {
        const key = `t_hidden_${o.layerMap[m]}`;
        const tt = target(key);
        const y = projected(m);
        const Ht = tt.shape[2] as number;
        const t0 = t.mul(t.where(isFinite(tt), tt, zero), keep);
        const y0 = t.mul(y, keep);
        parts.push(t.div(t.sum(t.square(t.sub(y0, t0))), countOf(realF, Ht)));
      }
      return parts.reduce((a, b) => t.add(a, b));
    },
    soft_ce: (T) => {
      if (fwd.head === "logits") {
        const tl = target("t_logits");
        const pt = t.detach(t.softmax(t.div(tl, t.scalar(T))));
        const logPs = t.logSoftmax(t.div(logits(), t.scalar(T)));
        return t.neg(t.mean(t.mul(pt, logPs)));
      }
      // token rows: mean over real rows × C; QA: × S (the padded length), i.e. the mean over the
      // 2B rows of each distribution's cross-entropy
      const pt = t.detach(t.softmax(t.div(teacherRows(), t.scalar(T))));
      const logPs = t.logSoftmax(t.div(logits(), t.scalar(T)));
      const C = logits().shape[1];
      return t.neg(
        t.div(rowSum(t.mul(pt, logPs)), rowCount(fwd.head === "tokens" ? C as number : 1)),
      );
    },
    kl: (T) => {
      if (fwd.head === "logits") {
        const tl = target("t_logits");
        const logPt = t.detach(t.logSoftmax(t.div(tl, t.scalar(T))));
        const logPs = t.logSoftmax(t.div(logits(), t.scalar(T)));
        const kl = t.sum(t.mul(t.exp(logPt), t.sub(logPt, logPs)));
        const B = t.constant(
          g.node("Max", [
            g.node("Cast", [g.node("Shape", [tl.name], { start: 0, end: 1 })], {
              to: DataType.FLOAT,
            }),
            g.floats("one", [1]),
          ]),
          [1],
        );
        return t.reshape(t.mul(kl, t.div(t.scalar(T * T), B)), [], []);
      }
      // T² · Σ KL / rows, over the same rows as soft_ce
      const logPt = t.detach(t.logSoftmax(t.div(teacherRows(), t.scalar(T))));
      const logPs = t.logSoftmax(t.div(logits(), t.scalar(T)));
      const kl = rowSum(t.mul(t.exp(logPt), t.sub(logPt, logPs)));
      return t.div(t.scale(kl, T * T), rowCount(1));
    },
    cosine: () => {
      const s = projected(M);
      const tt = target(`t_hidden_${o.layerMap[M]}`);
      const keep = t.constant(g.node("Unsqueeze", [real.name, g.int64s("axes", [2])]), [
        "B",
        "S",
        1,
      ], DataType.BOOL);
      const s0 = t.where(keep, s, zero);
      const t0 = t.where(keep, tt, zero);
      const eps2 = t.scalar(1e-8 * 1e-8);
      const ns = t.sqrt(t.add(t.sum(t.square(s0), [-1]), eps2));
      const nt = t.sqrt(t.add(t.sum(t.square(t0), [-1]), eps2));
      const cos = t.div(t.sum(t.mul(s0, t0), [-1]), t.mul(ns, nt));
      const per = t.where(real, t.sub(t.scalar(1), cos), zero);
      return t.div(t.sum(per), countOf(realF, 1));
    },
    attention_kl: () => {
      const tt = target(`t_scores_${o.layerMap[M] - 1}`);
      const [s, tm] = match(fwd.scores[M - 1], tt);
      return rowKl(s, tm);
    },
    value_relation: () => {
      const tt = target(`t_values_${o.layerMap[M] - 1}`);
      const keep = t.constant(g.node("Unsqueeze", [real.name, g.int64s("axes", [1, 3])]), [
        "B",
        1,
        "S",
        1,
      ], DataType.BOOL);
      const relation = (v: Value) => {
        const v0 = t.where(keep, v, zero);
        return t.div(t.matmul(v0, v0, true), t.scalar(Math.sqrt(v.shape[3] as number)));
      };
      const [s, tm] = match(relation(fwd.values[M - 1]), relation(tt));
      return rowKl(s, tm);
    },
    logit_mse: () => {
      if (fwd.head === "logits") {
        const tl = target("t_logits");
        return t.mean(t.square(t.sub(logits(), tl)));
      }
      // mean over the compared rows × their width (QA: 2B × S, padded positions 0 on both sides)
      const diff = t.square(t.sub(logits(), teacherRows()));
      if (fwd.head === "span") return t.mean(diff);
      return t.div(rowSum(diff), rowCount(logits().shape[1] as number));
    },
    hard_ce: () => {
      if (fwd.head === "tokens") return t.crossEntropy(logits(), gold.tokenGold());
      if (fwd.head === "span") return t.crossEntropy(logits(), gold.spanGold());
      return t.crossEntropy(logits(), feed("labels", ["B"]));
    },
  };
  const parts = o.terms.map((term) => {
    const f = terms[term.name];
    if (!f) throw new GraphBuildError(`loss term '${term.name}' has no ONNX graph`);
    const v = f(term.temperature ?? 1);
    return term.weight === 1 ? v : t.scale(v, term.weight);
  });
  return parts.reduce((a, b) => t.add(a, b));
}

/** One trained parameter of {@link buildAdamWGraph}. */
export interface AdamWParam {
  name: string;
  shape: number[];
}

/** Hyperparameters baked into the update graph (the step's scalars are inputs). */
export interface AdamWHyper {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm?: number;
}

/**
 * The AdamW update graph. Scalar inputs (float32 `[]`): `step_size = lr / (1 − β1ᵗ)`,
 * `bias_correction2 = 1 − β2ᵗ`, `decay_rate = lr · weight_decay`. Clipping as
 * `torch.nn.utils.clip_grad_norm_`: `g · min(1, max / (‖g‖ + 1e-6))`.
 */
export function buildAdamWGraph(
  params: AdamWParam[],
  hyper: AdamWHyper,
  decay: (name: string) => boolean = (n) => !isNoDecay(n),
): Uint8Array {
  const t = new Tape();
  const g = t.g;
  const scalarIn = (name: string) => g.input({ name, elemType: DataType.FLOAT, dims: [] });
  const stepSize = scalarIn("step_size"), bc2 = scalarIn("bias_correction2");
  const decayRate = scalarIn("decay_rate");
  const ins = params.map(({ name, shape }) => ({
    name,
    shape,
    p: g.input({ name, elemType: DataType.FLOAT, dims: shape }),
    grad: g.input({ name: `grad:${name}`, elemType: DataType.FLOAT, dims: shape }),
    m: g.input({ name: `m:${name}`, elemType: DataType.FLOAT, dims: shape }),
    v: g.input({ name: `v:${name}`, elemType: DataType.FLOAT, dims: shape }),
  }));
  const squares = ins.map((x) => g.node("ReduceSumSquare", [x.grad], { keepdims: 0 }));
  const norm = g.node("Sqrt", [squares.length === 1 ? squares[0] : g.node("Sum", squares)]);
  g.output(norm, { name: "grad_norm", elemType: DataType.FLOAT, dims: [] });
  const clipOn = hyper.maxGradNorm !== undefined && hyper.maxGradNorm > 0;
  const clip = clipOn
    ? g.node("Min", [
      g.scalar("c", 1),
      g.node("Div", [
        g.scalar("c", hyper.maxGradNorm!),
        g.node("Add", [norm, g.scalar("c", 1e-6)]),
      ]),
    ])
    : null;
  const b1 = g.scalar("c", hyper.beta1), b2 = g.scalar("c", hyper.beta2);
  const ob1 = g.scalar("c", 1 - hyper.beta1), ob2 = g.scalar("c", 1 - hyper.beta2);
  const eps = g.scalar("c", hyper.eps);
  for (const x of ins) {
    const gr = clip ? g.node("Mul", [x.grad, clip]) : x.grad;
    const m1 = g.node("Add", [g.node("Mul", [x.m, b1]), g.node("Mul", [gr, ob1])]);
    const v1 = g.node("Add", [
      g.node("Mul", [x.v, b2]),
      g.node("Mul", [g.node("Mul", [gr, gr]), ob2]),
    ]);
    const denom = g.node("Add", [g.node("Sqrt", [g.node("Div", [v1, bc2])]), eps]);
    let next = g.node("Sub", [x.p, g.node("Mul", [g.node("Div", [m1, denom]), stepSize])]);
    if (hyper.weightDecay > 0 && decay(x.name)) {
      next = g.node("Sub", [next, g.node("Mul", [x.p, decayRate])]);
    }
    g.output(next, { name: `new:${x.name}`, elemType: DataType.FLOAT, dims: x.shape });
    g.output(m1, { name: `new_m:${x.name}`, elemType: DataType.FLOAT, dims: x.shape });
    g.output(v1, { name: `new_v:${x.name}`, elemType: DataType.FLOAT, dims: x.shape });
  }
  return g.toModel({
    name: "tinystill_adamw",
    opset: TRAIN_OPSET,
    irVersion: 8,
    producer: "tinystill",
  });
}
