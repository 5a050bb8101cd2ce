/**
 * BERT, written once: Hugging Face `BertModel` (post-LayerNorm) and its heads as a graph on a
 * {@link Tape}. Everything that runs a BERT runs this definition:
 * - the training graphs (`train_graph.ts`: forward in training mode, the objective, the backward),
 * - the inference export (`export.ts`: fp32, fp16 and q8 are weight-storage choices, see
 *   {@link Weights}),
 * - the teacher outputs of teacher-forward and an online teacher, the encoder and MLM head of
 *   augment, evaluation (all through the inference graph),
 * on whichever engine executes the graph (ONNX Runtime, tfjs).
 *
 * Parameter names are the checkpoint keys (`encoder.layer.3.attention.self.query.weight`, no
 * `bert.` prefix), `Linear` weights `[out, in]`: y = x·Wᵀ + b. Token rows are `[B·S, H]`.
 *
 * The math, per layer l (post-LN):
 *   S = (Q/√d)·Kᵀ + (1 − mask)·(−10000)      pre-softmax scores (TinyBERT's targets)
 *   A = dropout(softmax(S))·V
 *   h' = LN(dropout(A·Wₒᵀ + bₒ) + h)
 *   h'' = LN(dropout(act(h'·W₁ᵀ + b₁)·W₂ᵀ + b₂) + h')
 * Embeddings: LN(word[ids] + position[0:S] + type[types]), dropout.
 * @module
 */

import { type Dim, GraphBuildError, type Tape, type Value } from "./tape.ts";
import { DataType } from "./ir.ts";
import type { BertConfig } from "../model/config.ts";
import { type BertHeads, MASK_VALUE } from "../model/bert.ts";

export { type BertHeads, MASK_VALUE };

/**
 * Where the forward reads its parameters. Training reads graph inputs (they get gradients); the
 * export reads initializers stored as fp32, fp16 or int8. A storage may replace the two ops that
 * touch big matrices: {@link linear} (e.g. int8 `MatMulInteger`) and {@link embedding}.
 */
export interface Weights {
  /** The parameter called `name` (a checkpoint key). */
  get(name: string): Value;
  /** Whether the model has `name`. */
  has(name: string): boolean;
  /** `x·Wᵀ + b` of the Linear `prefix` on rows `x [n, in]` (default: `Gemm` on {@link get}). */
  linear?(x: Value, prefix: string): Value;
  /** Rows of the table `name` at int64 `ids` (default: `Gather` on {@link get}). */
  embedding?(name: string, ids: Value): Value;
}

/** Options of {@link bertForward}. */
export interface ForwardOptions {
  /**
   * Dropout at a site: `drop(x, rate)` returns x masked (training) or x (inference). Sites are
   * called in a fixed order: embeddings, then per layer attention probabilities, attention
   * output, FFN output; then the classifier's input.
   */
  drop?: (x: Value, rate: number) => Value;
}

/** The model's int64 inputs, each `[B, S]`. */
export interface BertInputValues {
  ids: Value;
  mask: Value;
  types: Value;
}

/** What {@link bertForward} builds. */
export interface BertGraph {
  /** `L + 1` hidden states as rows `[B·S, H]`; index 0 is the embedding output. */
  hidden: Value[];
  /** Per layer, the pre-softmax scores `[B, heads, S, S]` with the additive mask. */
  scores: Value[];
  /** Per layer, the value vectors `[B, heads, S, d]` (MiniLM's value relation). */
  values: Value[];
  /** The last hidden state `[B, S, H]`. */
  last: Value;
  /** Rows `[B·S, k]` → `[B, S, k]` (`k` a number). */
  unrows(x: Value, k: number): Value;
  /**
   * The heads, each built on first call (throws when the model lacks it). The classifier's
   * dropout is the forward's last dropout site.
   */
  /** Sequence-classification logits `[B, C]` (pooler, dropout, classifier). */
  logits: () => Value;
  /** Token-classification logits as rows `[B·S, C]` (dropout, classifier on every token). */
  tokenLogits: () => Value;
  /** QA logits `[B, S, 2]`: start (index 0) and end (1) of every token. */
  spanLogits: () => Value;
  /** The masked-LM head on rows `[M, H]` → logits `[M, vocab]` (decoder tied to the words). */
  mlmHead: (rows: Value) => Value;
}

/** The activation `hidden_act` names, on the tape (each op carries its own backward rule). */
export function activation(t: Tape, name: BertConfig["hidden_act"]): (x: Value) => Value {
  if (name === "gelu") return (x) => t.gelu(x);
  if (name === "gelu_new") return (x) => t.geluTanh(x);
  if (name === "relu") return (x) => t.relu(x);
  throw new GraphBuildError(`unsupported hidden_act '${name}' (supported: gelu, gelu_new, relu)`);
}

/** Parameters as graph inputs of the tape, created on first use, in order of use. */
export function inputWeights(t: Tape, shapes: Map<string, number[]>): Weights & { used: string[] } {
  const made = new Map<string, Value>();
  const used: string[] = [];
  return {
    used,
    has: (name) => shapes.has(name),
    get(name) {
      let v = made.get(name);
      if (!v) {
        const shape = shapes.get(name);
        if (!shape) throw new GraphBuildError(`the model has no parameter ${name}`);
        v = t.param(name, shape);
        made.set(name, v);
        used.push(name);
      }
      return v;
    },
  };
}

/** The model's inputs declared on the tape: int64 `input_ids`, `attention_mask`, `token_type_ids`. */
export function bertInputs(t: Tape, dims: [Dim, Dim] = ["B", "S"]): BertInputValues {
  return {
    ids: t.input("input_ids", [...dims], DataType.INT64),
    mask: t.input("attention_mask", [...dims], DataType.INT64),
    types: t.input("token_type_ids", [...dims], DataType.INT64),
  };
}

/** Build BERT's forward on `t`: embeddings, `L` post-LN layers, and the heads `heads` names. */
export function bertForward(
  t: Tape,
  cfg: BertConfig,
  heads: BertHeads,
  w: Weights,
  inputs: BertInputValues,
  opts: ForwardOptions = {},
): BertGraph {
  const g = t.g;
  const H = cfg.hidden_size, nh = cfg.num_attention_heads, d = H / nh;
  if (!Number.isInteger(d)) {
    throw new GraphBuildError(`hidden_size ${H} is not a multiple of num_attention_heads ${nh}`);
  }
  const N = "B*S";
  const drop = opts.drop ?? ((x: Value) => x);
  const dense = (x: Value, prefix: string): Value =>
    w.linear
      ? w.linear(x, prefix)
      : t.linear(x, w.get(`${prefix}.weight`), w.get(`${prefix}.bias`));
  const embed = (name: string, ids: Value): Value =>
    w.embedding ? w.embedding(name, ids) : t.gather(w.get(name), ids);
  const norm = (x: Value, prefix: string) =>
    t.layerNorm(x, w.get(`${prefix}.weight`), w.get(`${prefix}.bias`), cfg.layer_norm_eps);
  const act = activation(t, cfg.hidden_act);

  const { ids, mask, types } = inputs;
  const shapeBS = t.constant(g.node("Shape", [ids.name]), [2], DataType.INT64);
  const seqLen = t.constant(g.node("Shape", [ids.name], { start: 1, end: 2 }), [1], DataType.INT64);
  const shapeOf = (tail: number[]) =>
    t.constant(
      g.node("Concat", [shapeBS.name, g.int64s("tail", tail)], { axis: 0 }),
      [2 + tail.length],
      DataType.INT64,
    );
  const shapeBSH = shapeOf([H]), shapeHeads = shapeOf([nh, d]);
  const unrows = (x: Value, k: number) => t.reshapeTo(x, shapeOf([k]), ["B", "S", k]);

  // additive mask (1 − mask)·(−10000) on key columns, [B, 1, 1, S]
  const maskF = t.cast(mask, DataType.FLOAT);
  const maskAdd = t.constant(
    g.node("Unsqueeze", [
      g.node("Mul", [g.node("Sub", [g.scalar("c", 1), maskF.name]), g.scalar("c", MASK_VALUE)]),
      g.int64s("axes", [1, 2]),
    ]),
    ["B", 1, 1, "S"],
  );

  // --- embeddings: LN(word[ids] + position[0:S] + type[types]) ----------------------------------
  const flat = (v: Value) => t.reshape(v, [-1], [N]);
  const words = embed("embeddings.word_embeddings.weight", flat(ids)); // [N, H]
  const pos = t.sliceFirst(w.get("embeddings.position_embeddings.weight"), 0, seqLen, "S");
  const tt = embed("embeddings.token_type_embeddings.weight", flat(types));
  const sum3 = t.add(t.add(t.reshapeTo(words, shapeBSH, ["B", "S", H]), pos), unrows(tt, H));
  let h = drop(
    norm(t.reshape(sum3, [-1, H], [N, H]), "embeddings.LayerNorm"),
    cfg.hidden_dropout_prob,
  );

  const out = { hidden: [h], scores: [], values: [], last: h, unrows } as unknown as BertGraph;
  const invSqrtD = t.scalar(1 / Math.sqrt(d));
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const pre = `encoder.layer.${l}`;
    const split = (x: Value) =>
      t.transpose(t.reshapeTo(x, shapeHeads, ["B", "S", nh, d]), [0, 2, 1, 3]); // [B, nh, S, d]
    const q = split(dense(h, `${pre}.attention.self.query`));
    const k = split(dense(h, `${pre}.attention.self.key`));
    const v = split(dense(h, `${pre}.attention.self.value`));
    // (Q/√d)·Kᵀ: the 1/√d on Q ([B, nh, S, d]) is a pass less over the [B, nh, S, S] scores
    const scores = t.add(t.matmul(t.mul(q, invSqrtD), k, true), maskAdd);
    const probs = drop(t.softmax(scores), cfg.attention_probs_dropout_prob);
    const ctx = t.reshape(t.transpose(t.matmul(probs, v), [0, 2, 1, 3]), [-1, H], [N, H]);
    const attnProj = drop(dense(ctx, `${pre}.attention.output.dense`), cfg.hidden_dropout_prob);
    const attnOut = norm(t.add(attnProj, h), `${pre}.attention.output.LayerNorm`);
    const inter = act(dense(attnOut, `${pre}.intermediate.dense`));
    const ffn = drop(dense(inter, `${pre}.output.dense`), cfg.hidden_dropout_prob);
    h = norm(t.add(ffn, attnOut), `${pre}.output.LayerNorm`);
    out.hidden.push(h);
    out.scores.push(scores);
    out.values.push(v);
  }
  out.last = t.reshapeTo(h, shapeBSH, ["B", "S", H]);

  // --- heads (built when first read: a head nobody reads adds no node and no graph input) ------
  const rate = cfg.classifier_dropout ?? cfg.hidden_dropout_prob;
  const once = <T>(what: string, has: boolean, build: () => T): () => T => {
    let v: T | undefined;
    return () => {
      if (!has) throw new GraphBuildError(`the model has no ${what}`);
      return v ??= build();
    };
  };
  // BertForSequenceClassification: tanh pooler on [CLS], dropout, classifier
  out.logits = once("sequence classifier", heads.classifier && !heads.tokenClassifier, () => {
    const one = t.constant(g.int64s("one", [1]), [1], DataType.INT64);
    const cls = t.reshape(t.sliceFirst(out.last, 1, one, 1), [-1, H], ["B", H]);
    const pooled = t.tanh(dense(cls, "pooler.dense"));
    return dense(drop(pooled, rate), "classifier"); // [B, C]
  });
  // BertForTokenClassification: dropout on every token's last hidden state, then the classifier
  out.tokenLogits = once(
    "token classifier",
    heads.classifier && !!heads.tokenClassifier,
    () => dense(drop(h, rate), "classifier"), // [B·S, C]
  );
  // BertForQuestionAnswering: qa_outputs on every token, no dropout
  out.spanLogits = once("QA head", !!heads.qa, () => unrows(dense(h, "qa_outputs"), 2));
  // the transform (dense, activation, LayerNorm), then the decoder tied to the word embeddings
  out.mlmHead = (rows: Value) => {
    if (!heads.mlm) throw new GraphBuildError("the model has no masked-LM head");
    const tr = norm(
      act(dense(rows, "cls.predictions.transform.dense")),
      "cls.predictions.transform.LayerNorm",
    );
    return t.linear(tr, w.get("embeddings.word_embeddings.weight"), w.get("cls.predictions.bias"));
  };
  return out;
}
