/**
 * BERT, with Hugging Face `BertModel` semantics, in one file.
 *
 * Parameters live in a map keyed by the Hugging Face checkpoint names
 * (`encoder.layer.3.attention.self.query.weight`, …) in the Hugging Face orientation (`Linear`
 * weights are `[out, in]`, y = x·Wᵀ + b), so checkpoints map 1:1 with no translation table.
 *
 * `forward` returns every hidden state (index 0 = embedding output), every layer's
 * **pre-softmax** attention scores `S = QKᵀ/√d + (1 − mask)·(−10000)` — the TinyBERT targets —
 * and the logits of the heads that exist.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { scratchFloats } from "../tfjs/backend.ts";
import { type BertConfig, makeConfig, numLabels } from "./config.ts";

/** Integer model inputs, each `[batch, seq]` int32. */
export interface BertInputs {
  inputIds: tf.Tensor2D;
  /** 1 for real tokens, 0 for padding; all ones when omitted. */
  attentionMask?: tf.Tensor2D;
  /** Segment ids (0 = first sentence, 1 = second); zeros when omitted. */
  tokenTypeIds?: tf.Tensor2D;
}

/** Options of {@link Bert.forward}. */
export interface ForwardOptions {
  /** Apply dropout (training mode). Default false. */
  training?: boolean;
  /** Seed for the dropout masks of this call (reproducible training). */
  seed?: number;
  /** Keep the attention scores of every layer (default true). */
  attentionScores?: boolean;
  /** Keep every hidden state (default true; the last one is always returned). */
  hiddenStates?: boolean;
  /** Compute the masked-LM logits when the model has an MLM head (default false). */
  mlm?: boolean;
  /** Keep every layer's value vectors (MiniLM's value relation; default false). */
  values?: boolean;
}

/** What {@link Bert.forward} returns. */
export interface BertOutputs {
  /** `L + 1` tensors `[batch, seq, hidden]`; index 0 is the embedding output. */
  hiddenStates: tf.Tensor3D[];
  /** `L` tensors `[batch, heads, seq, seq]`: pre-softmax scores with the additive mask. */
  attentionScores: tf.Tensor4D[];
  /** Pooler output `[batch, hidden]` (tanh of a dense layer on the [CLS] state). */
  pooled: tf.Tensor2D;
  /** Sequence-classification logits `[batch, numLabels]`, when the model has a classifier. */
  logits?: tf.Tensor2D;
  /** Token-classification logits `[batch, seq, numLabels]` (a per-token classifier). */
  tokenLogits?: tf.Tensor3D;
  /** Extractive-QA logits `[batch, seq, 2]`: span start (index 0) and end (1) per token. */
  spanLogits?: tf.Tensor3D;
  /** Masked-LM logits `[batch, seq, vocab]`, when asked and the model has an MLM head. */
  mlmLogits?: tf.Tensor3D;
  /** `L` tensors `[batch, heads, seq, head_dim]`: each layer's values, when asked. */
  values?: tf.Tensor4D[];
}

/**
 * The logits of whichever head the model has: sequence `[B, C]`, token `[B, S, C]` or QA
 * `[B, S, 2]` (undefined without a head).
 */
export function headOutput(out: BertOutputs): tf.Tensor | undefined {
  return out.logits ?? out.tokenLogits ?? out.spanLogits;
}

/** Which heads a model carries. */
export interface BertHeads {
  /**
   * A `classifier`, `numLabels(config)` wide: on the pooled output (sequence classification), or
   * on every token's last hidden state when {@link tokenClassifier} is set.
   */
  classifier: boolean;
  /** The classifier labels every token (`BertForTokenClassification`; no pooler). */
  tokenClassifier?: boolean;
  /** `qa_outputs`, a Linear(hidden, 2) of span start/end logits (`BertForQuestionAnswering`). */
  qa?: boolean;
  /** A masked-LM head (`cls.predictions.*`) whose decoder is tied to the word embeddings. */
  mlm: boolean;
}

/**
 * Prefix of training-only parameters (e.g. TinyBERT's hidden-state projections
 * `distill.fit_dense.*`): trained and checkpointed with the model, but never exported.
 */
export const EXTRA_PREFIX = "distill.";

/** The value of the additive attention mask on padded keys, as in the TinyBERT/BERT code. */
export const MASK_VALUE = -10000;

/** Shapes of every parameter of a model with this config and these heads, by HF name. */
export function parameterShapes(config: BertConfig, heads: BertHeads): Map<string, number[]> {
  const H = config.hidden_size, I = config.intermediate_size, V = config.vocab_size;
  const s = new Map<string, number[]>();
  s.set("embeddings.word_embeddings.weight", [V, H]);
  s.set("embeddings.position_embeddings.weight", [config.max_position_embeddings, H]);
  s.set("embeddings.token_type_embeddings.weight", [config.type_vocab_size, H]);
  s.set("embeddings.LayerNorm.weight", [H]);
  s.set("embeddings.LayerNorm.bias", [H]);
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `encoder.layer.${l}.`;
    for (const m of ["query", "key", "value"]) {
      s.set(`${p}attention.self.${m}.weight`, [H, H]);
      s.set(`${p}attention.self.${m}.bias`, [H]);
    }
    s.set(`${p}attention.output.dense.weight`, [H, H]);
    s.set(`${p}attention.output.dense.bias`, [H]);
    s.set(`${p}attention.output.LayerNorm.weight`, [H]);
    s.set(`${p}attention.output.LayerNorm.bias`, [H]);
    s.set(`${p}intermediate.dense.weight`, [I, H]);
    s.set(`${p}intermediate.dense.bias`, [I]);
    s.set(`${p}output.dense.weight`, [H, I]);
    s.set(`${p}output.dense.bias`, [H]);
    s.set(`${p}output.LayerNorm.weight`, [H]);
    s.set(`${p}output.LayerNorm.bias`, [H]);
  }
  s.set("pooler.dense.weight", [H, H]);
  s.set("pooler.dense.bias", [H]);
  if (heads.classifier) {
    const C = numLabels(config);
    if (C < 1) throw new Error("a classifier head needs config.id2label with at least 1 label");
    s.set("classifier.weight", [C, H]);
    s.set("classifier.bias", [C]);
  }
  if (heads.qa) {
    s.set("qa_outputs.weight", [2, H]);
    s.set("qa_outputs.bias", [2]);
  }
  if (heads.mlm) {
    s.set("cls.predictions.transform.dense.weight", [H, H]);
    s.set("cls.predictions.transform.dense.bias", [H]);
    s.set("cls.predictions.transform.LayerNorm.weight", [H]);
    s.set("cls.predictions.transform.LayerNorm.bias", [H]);
    s.set("cls.predictions.bias", [V]);
  }
  return s;
}

/** True for parameters that AdamW must not decay (biases and LayerNorm weights). */
export function isNoDecay(name: string): boolean {
  return name.endsWith(".bias") || name.includes("LayerNorm.");
}

/** `y = x·Wᵀ + b` for `x [n, in]`, `W [out, in]` (Hugging Face `nn.Linear`). */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  const y = tf.matMul(x, w, false, true) as tf.Tensor2D;
  return b ? tf.add(y, b) : y;
}

/** LayerNorm over the last axis with biased variance, as `torch.nn.LayerNorm`. */
export function layerNorm<T extends tf.Tensor>(
  x: T,
  w: tf.Tensor1D,
  b: tf.Tensor1D,
  eps: number,
): T {
  return tf.tidy(() => {
    const mean = tf.mean(x, -1, true);
    const centered = tf.sub(x, mean);
    const variance = tf.mean(tf.square(centered), -1, true);
    return tf.add(tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, eps))), w), b) as T;
  });
}

/**
 * An inverted-dropout mask: each entry is 0 with probability `rate`, else `1 / (1 − rate)`.
 * Drawn with mulberry32 in one pass — tfjs' `dropout` draws through seedrandom and costs ~190 ms
 * for one 32×12×128×128 attention map here, this ~20 ms. Same seed, same mask, on any backend.
 */
export function dropoutMask(shape: number[], rate: number, seed: number): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(dropoutKeep(n, rate, seed, scratchFloats(n), 1 / (1 - rate)), shape);
}

/**
 * The dropout mask stream on the host: entry i of `out` (its first `n` entries) is `keep` where
 * the mask keeps it and 0 where it drops it. {@link dropoutMask} is this with
 * `keep = 1/(1 − rate)` as a tensor; the ONNX training engine feeds these to its graph, so both
 * engines drop the same units.
 */
export function dropoutKeep<T extends Uint8Array | Float32Array>(
  n: number,
  rate: number,
  seed: number,
  out: T,
  keep = 1,
): T {
  if (out.length < n) throw new Error(`dropoutKeep: ${out.length} entries for ${n}`);
  // Everything stays int32 (no heap numbers): u >= threshold on uint32 is the signed comparison
  // of both with the top bit flipped.
  const threshold = (Math.min(Math.floor(rate * 2 ** 32), 2 ** 32 - 1) ^ 0x80000000) | 0;
  let a = seed | 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    t ^= t >>> 14;
    out[i] = ((t ^ 0x80000000) | 0) >= threshold ? keep : 0;
  }
  return out;
}

/** The seed of `Bert.forward`'s `call`-th dropout mask (1-based) for a forward `seed`. */
export function dropoutSeed(seed: number, call: number): number {
  return seed * 100003 + call;
}

/** Exact (erf) GELU: `x · ½ · (1 + erf(x/√2))`. */
export function gelu<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2)))) as T);
}

function activation(name: BertConfig["hidden_act"]): <T extends tf.Tensor>(x: T) => T {
  if (name === "gelu") return gelu;
  if (name === "relu") return tf.relu;
  if (name === "gelu_new") {
    return <T extends tf.Tensor>(x: T) =>
      tf.tidy(() => {
        const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
        return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(inner))) as T;
      });
  }
  throw new Error(`unsupported hidden_act '${name}' (supported: gelu, gelu_new, relu)`);
}

/** A BERT encoder with optional classification and masked-LM heads. */
export class Bert {
  /** The Hugging Face config (keys as in `config.json`). */
  readonly config: BertConfig;
  /** Which heads exist. */
  readonly heads: BertHeads;
  /** Every trainable parameter, keyed by its Hugging Face checkpoint name (no `bert.` prefix). */
  readonly params: Map<string, tf.Variable>;

  /**
   * Wrap existing parameter tensors (taken over, not copied). Missing or mis-shaped tensors
   * throw; use {@link Bert.create} for a freshly initialised model.
   */
  constructor(config: BertConfig, heads: BertHeads, tensors: Map<string, tf.Tensor>) {
    this.config = makeConfig(config);
    this.heads = { ...heads };
    this.params = new Map();
    for (const [name, shape] of parameterShapes(this.config, this.heads)) {
      const t = tensors.get(name);
      if (!t) throw new Error(`Bert: missing parameter ${name} [${shape}]`);
      if (!tf.util.arraysEqual(t.shape, shape)) {
        throw new Error(`Bert: parameter ${name} has shape [${t.shape}], expected [${shape}]`);
      }
      this.params.set(name, t instanceof tf.Variable ? t : tf.variable(t, true));
      if (!(t instanceof tf.Variable)) t.dispose();
    }
    for (const [name, t] of tensors) {
      if (name.startsWith(EXTRA_PREFIX)) this.addExtra(name, t);
    }
  }

  /**
   * Add a training-only parameter (name starting with {@link EXTRA_PREFIX}): it is trained with
   * the model (it is in {@link params}) but not saved by `saveBert` nor exported to ONNX.
   */
  addExtra(name: string, t: tf.Tensor): tf.Variable {
    if (!name.startsWith(EXTRA_PREFIX)) {
      throw new Error(`Bert.addExtra: ${name} must start with "${EXTRA_PREFIX}"`);
    }
    if (this.params.has(name)) throw new Error(`Bert.addExtra: ${name} exists`);
    const v = t instanceof tf.Variable ? t : tf.variable(t, true);
    if (!(t instanceof tf.Variable)) t.dispose();
    this.params.set(name, v);
    return v;
  }

  /** The model's own parameters (without training-only extras), by HF name. */
  modelParams(): Map<string, tf.Variable> {
    return new Map([...this.params].filter(([n]) => !n.startsWith(EXTRA_PREFIX)));
  }

  /**
   * A new model initialised as Hugging Face does: normal(0, initializer_range) weights and
   * embeddings, zero biases, LayerNorm weight 1 / bias 0, the padding embedding row zeroed.
   */
  static create(
    config: Partial<BertConfig>,
    heads: Partial<BertHeads> = {},
    seed = 0,
  ): Bert {
    const cfg = makeConfig(config);
    const h: BertHeads = {
      classifier: heads.classifier ?? numLabels(cfg) > 0,
      mlm: heads.mlm ?? false,
      ...(heads.tokenClassifier ? { tokenClassifier: true } : {}),
      ...(heads.qa ? { qa: true } : {}),
    };
    const tensors = new Map<string, tf.Tensor>();
    let i = 0;
    for (const [name, shape] of parameterShapes(cfg, h)) {
      i++;
      let t: tf.Tensor;
      if (name.includes("LayerNorm.weight")) t = tf.ones(shape);
      else if (name.endsWith(".bias")) t = tf.zeros(shape);
      else t = tf.randomNormal(shape, 0, cfg.initializer_range, "float32", seed * 7919 + i);
      if (name === "embeddings.word_embeddings.weight" && cfg.pad_token_id < cfg.vocab_size) {
        const row = cfg.pad_token_id;
        const zeroed = tf.tidy(() => {
          const mask = tf.oneHot([row], shape[0]).reshape([shape[0], 1]);
          return tf.mul(t, tf.sub(1, mask));
        });
        t.dispose();
        t = zeroed;
      }
      tensors.set(name, t);
    }
    return new Bert(cfg, h, tensors);
  }

  /** Parameter tensor by HF name; throws for an unknown name. */
  p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`Bert: no parameter ${name}`);
    return v;
  }

  /** Number of scalar parameters (the tied MLM decoder counted once). */
  numParameters(): number {
    let n = 0;
    for (const v of this.modelParams().values()) n += v.size;
    return n;
  }

  /** Free every parameter. */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
  }

  /** `x·Wᵀ + b` with the `Linear` called `prefix` (e.g. `pooler.dense`). */
  dense(prefix: string, x: tf.Tensor2D): tf.Tensor2D {
    return linear(
      x,
      this.p(`${prefix}.weight`) as tf.Tensor2D,
      this.p(`${prefix}.bias`) as tf.Tensor1D,
    );
  }

  /** The LayerNorm called `prefix` (e.g. `embeddings.LayerNorm`). */
  norm<T extends tf.Tensor>(prefix: string, x: T): T {
    return layerNorm(
      x,
      this.p(`${prefix}.weight`) as tf.Tensor1D,
      this.p(`${prefix}.bias`) as tf.Tensor1D,
      this.config.layer_norm_eps,
    );
  }

  /** One post-LayerNorm transformer layer on rows `h [B*S, H]`; returns (output, scores). */
  private layer(
    l: number,
    h: tf.Tensor2D,
    maskAdd: tf.Tensor,
    B: number,
    S: number,
    dropout: <T extends tf.Tensor>(x: T, rate: number) => T,
    keepScores: boolean,
    keepValues = false,
  ): { out: tf.Tensor2D; scores?: tf.Tensor4D; values?: tf.Tensor4D } {
    const cfg = this.config;
    const H = cfg.hidden_size, nh = cfg.num_attention_heads, d = H / nh;
    const pre = `encoder.layer.${l}`;
    const act = activation(cfg.hidden_act);
    // [B*S, H] -> [B, nh, S, d]: rows h*d..(h+1)*d of Q/K/V belong to head h.
    const split = (x: tf.Tensor2D) => x.reshape([B, S, nh, d]).transpose([0, 2, 1, 3]);
    const q = split(this.dense(`${pre}.attention.self.query`, h));
    const k = split(this.dense(`${pre}.attention.self.key`, h));
    const v = split(this.dense(`${pre}.attention.self.value`, h));
    // S = QKᵀ/√d + (1 − mask)·(−10000)   [B, nh, S, S]
    const scores = tf.add(
      tf.div(tf.matMul(q, k, false, true), Math.sqrt(d)),
      maskAdd,
    ) as tf.Tensor4D;
    const probs = dropout(tf.softmax(scores, -1), cfg.attention_probs_dropout_prob);
    const ctx = tf.matMul(probs, v).transpose([0, 2, 1, 3]).reshape([B * S, H]) as tf.Tensor2D;
    const attnProj = dropout(
      this.dense(`${pre}.attention.output.dense`, ctx),
      cfg.hidden_dropout_prob,
    );
    const attnOut = this.norm(
      `${pre}.attention.output.LayerNorm`,
      tf.add(attnProj, h) as tf.Tensor2D,
    );
    const inter = act(this.dense(`${pre}.intermediate.dense`, attnOut));
    const ffn = dropout(this.dense(`${pre}.output.dense`, inter), cfg.hidden_dropout_prob);
    const out = this.norm(`${pre}.output.LayerNorm`, tf.add(ffn, attnOut) as tf.Tensor2D);
    return {
      out,
      ...(keepScores ? { scores } : {}),
      ...(keepValues ? { values: v as tf.Tensor4D } : {}),
    };
  }

  /**
   * The masked-LM head on hidden-state rows `[n, hidden]` → logits `[n, vocab]`: dense, activation,
   * LayerNorm, then the decoder tied to the word embeddings (`t · Eᵀ + bias`). Training applies it
   * to the masked positions only (a full `[batch, seq, vocab]` is ~500 MB at 32×128).
   */
  mlmHead(rows: tf.Tensor2D): tf.Tensor2D {
    if (!this.heads.mlm) throw new Error("Bert.mlmHead: the model has no masked-LM head");
    return tf.tidy(() => {
      const act = activation(this.config.hidden_act);
      const t = this.norm(
        "cls.predictions.transform.LayerNorm",
        act(this.dense("cls.predictions.transform.dense", rows)),
      );
      return linear(
        t,
        this.p("embeddings.word_embeddings.weight") as tf.Tensor2D,
        this.p("cls.predictions.bias") as tf.Tensor1D,
      );
    });
  }

  /** Run the model. Every returned tensor belongs to the caller (dispose it or use `tf.tidy`). */
  forward(inputs: BertInputs, opts: ForwardOptions = {}): BertOutputs {
    const cfg = this.config;
    const training = opts.training ?? false;
    const keepScores = opts.attentionScores ?? true;
    const keepHidden = opts.hiddenStates ?? true;
    const [B, S] = inputs.inputIds.shape;
    const H = cfg.hidden_size;
    if (S > cfg.max_position_embeddings) {
      throw new Error(
        `sequence length ${S} exceeds max_position_embeddings ${cfg.max_position_embeddings}`,
      );
    }
    let dropoutCalls = 0;
    const dropout = <T extends tf.Tensor>(x: T, rate: number): T => {
      if (!training || rate <= 0) return x;
      dropoutCalls++;
      const seed = opts.seed === undefined
        ? Math.floor(Math.random() * 2 ** 32)
        : dropoutSeed(opts.seed, dropoutCalls);
      return tf.tidy(() => tf.mul(x, dropoutMask(x.shape, rate, seed))) as T;
    };

    // Additive mask on key columns: (1 - mask) * -10000, shaped [B, 1, 1, S].
    const maskAdd = tf.tidy(() => {
      const m = inputs.attentionMask ?? tf.ones([B, S], "int32");
      return tf.mul(tf.sub(1, tf.cast(m, "float32")), MASK_VALUE).reshape([B, 1, 1, S]);
    });

    // Embeddings: word + position + token type, LayerNorm, dropout. Rows are [B*S, H].
    let h = tf.tidy(() => {
      const ids = inputs.inputIds.reshape([B * S]);
      const types = (inputs.tokenTypeIds ?? tf.zeros([B, S], "int32")).reshape([B * S]);
      const words = tf.gather(this.p("embeddings.word_embeddings.weight"), ids);
      const pos = tf.slice(this.p("embeddings.position_embeddings.weight"), [0, 0], [S, H]);
      const tt = tf.gather(this.p("embeddings.token_type_embeddings.weight"), types);
      const sum = tf.add(tf.add(words.reshape([B, S, H]), pos), tt.reshape([B, S, H]));
      const e = this.norm("embeddings.LayerNorm", sum.reshape([B * S, H]) as tf.Tensor2D);
      return dropout(e, cfg.hidden_dropout_prob);
    });

    const hiddenStates: tf.Tensor3D[] = [];
    const attentionScores: tf.Tensor4D[] = [];
    const values: tf.Tensor4D[] = [];
    const record = (x: tf.Tensor2D) => {
      if (keepHidden) hiddenStates.push(x.reshape([B, S, H]));
    };
    record(h);

    for (let l = 0; l < cfg.num_hidden_layers; l++) {
      const { out: next, scores, values: v } = tf.tidy(() =>
        this.layer(l, h, maskAdd, B, S, dropout, keepScores, opts.values ?? false)
      );
      h.dispose();
      h = next;
      record(h);
      if (scores) attentionScores.push(scores);
      if (v) values.push(v);
    }
    maskAdd.dispose();
    if (!keepHidden) hiddenStates.push(h.reshape([B, S, H]));
    h.dispose(); // the [B, S, H] views in hiddenStates keep the data
    const last = hiddenStates[hiddenStates.length - 1];

    const out: BertOutputs = {
      hiddenStates,
      attentionScores,
      pooled: tf.tidy(() => {
        const cls = tf.slice(last, [0, 0, 0], [B, 1, H]).reshape([B, H]) as tf.Tensor2D;
        return tf.tanh(this.dense("pooler.dense", cls));
      }),
    };
    if (opts.values) out.values = values;
    if (this.heads.classifier) {
      const dropRate = cfg.classifier_dropout ?? cfg.hidden_dropout_prob;
      if (this.heads.tokenClassifier) {
        // BertForTokenClassification: dropout, then the classifier on every token
        out.tokenLogits = tf.tidy(() => {
          const rows = dropout(last.reshape([B * S, H]) as tf.Tensor2D, dropRate);
          return this.dense("classifier", rows).reshape([B, S, -1]) as tf.Tensor3D;
        });
      } else {
        out.logits = tf.tidy(() => this.dense("classifier", dropout(out.pooled, dropRate)));
      }
    }
    if (this.heads.qa) {
      // BertForQuestionAnswering: qa_outputs on every token, no dropout
      out.spanLogits = tf.tidy(() =>
        this.dense("qa_outputs", last.reshape([B * S, H]) as tf.Tensor2D).reshape([
          B,
          S,
          2,
        ]) as tf.Tensor3D
      );
    }
    if (opts.mlm && this.heads.mlm) {
      out.mlmLogits = tf.tidy(() =>
        this.mlmHead(last.reshape([B * S, H]) as tf.Tensor2D).reshape([
          B,
          S,
          cfg.vocab_size,
        ]) as tf.Tensor3D
      );
    }
    return out;
  }
}
