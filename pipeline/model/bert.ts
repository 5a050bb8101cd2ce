/**
 * A BERT model's weights on the host, with Hugging Face `BertModel` semantics: the model itself
 * (its forward, heads and losses) is the graph of `graph/bert.ts`, which every engine runs; this
 * is what those graphs read and what training updates.
 *
 * Parameters live in a map keyed by the Hugging Face checkpoint names
 * (`encoder.layer.3.attention.self.query.weight`, …) in the Hugging Face orientation (`Linear`
 * weights are `[out, in]`, y = x·Wᵀ + b), so checkpoints map 1:1 with no translation table.
 * @module
 */

import { type BertConfig, makeConfig, numLabels } from "./config.ts";
import { seededRandom } from "../random.ts";

/** The value of the additive attention mask on padded keys, as in the BERT/TinyBERT code. */
export const MASK_VALUE = -10000;

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

/** One parameter: row-major float32 data and its shape. */
export interface Param {
  data: Float32Array;
  shape: number[];
}

/**
 * Prefix of training-only parameters (e.g. TinyBERT's hidden-state projections
 * `distill.fit_dense.*`): trained and checkpointed with the model, but never exported.
 */
export const EXTRA_PREFIX = "distill.";

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

/** `n` draws of normal(0, std) from a seeded generator (Box–Muller on mulberry32). */
export function normalInit(n: number, std: number, seed: number): Float32Array {
  const rand = seededRandom(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - rand(), v = rand();
    const r = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/**
 * The dropout mask stream on the host: entry i of `out` (its first `n` entries) is `keep` where
 * the mask keeps it and 0 where it drops it. The trainer feeds these (`keep = 1/(1 − rate)`) to
 * the gradient graph's dropout sites, so every engine drops the same units.
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

/** The seed of the `call`-th dropout site's mask (1-based) for a forward `seed`. */
export function dropoutSeed(seed: number, call: number): number {
  return seed * 100003 + call;
}

/** A BERT encoder with optional heads: its config and its parameters on the host. */
export class Bert {
  /** The Hugging Face config (keys as in `config.json`). */
  readonly config: BertConfig;
  /** Which heads exist. */
  readonly heads: BertHeads;
  /** Every trainable parameter, keyed by its Hugging Face checkpoint name (no `bert.` prefix). */
  readonly params: Map<string, Param>;

  /**
   * Wrap existing parameters (taken over, not copied). Missing or mis-shaped ones throw; use
   * {@link Bert.create} for a freshly initialised model.
   */
  constructor(config: BertConfig, heads: BertHeads, tensors: Map<string, Param>) {
    this.config = makeConfig(config);
    this.heads = { ...heads };
    this.params = new Map();
    for (const [name, shape] of parameterShapes(this.config, this.heads)) {
      const t = tensors.get(name);
      if (!t) throw new Error(`Bert: missing parameter ${name} [${shape}]`);
      if (!sameShape(t.shape, shape) || t.data.length !== sizeOf(shape)) {
        throw new Error(`Bert: parameter ${name} has shape [${t.shape}], expected [${shape}]`);
      }
      this.params.set(name, { data: t.data, shape: [...shape] });
    }
    for (const [name, t] of tensors) {
      if (name.startsWith(EXTRA_PREFIX)) this.addExtra(name, t);
    }
  }

  /**
   * Add a training-only parameter (name starting with {@link EXTRA_PREFIX}): trained with the
   * model (it is in {@link params}) but not saved by `saveBert` nor exported to ONNX.
   */
  addExtra(name: string, p: Param): Param {
    if (!name.startsWith(EXTRA_PREFIX)) {
      throw new Error(`Bert.addExtra: ${name} must start with "${EXTRA_PREFIX}"`);
    }
    if (this.params.has(name)) throw new Error(`Bert.addExtra: ${name} exists`);
    if (p.data.length !== sizeOf(p.shape)) {
      throw new Error(`Bert.addExtra: ${name} has ${p.data.length} values for [${p.shape}]`);
    }
    this.params.set(name, p);
    return p;
  }

  /** The model's own parameters (without training-only extras), by HF name. */
  modelParams(): Map<string, Param> {
    return new Map([...this.params].filter(([n]) => !n.startsWith(EXTRA_PREFIX)));
  }

  /** Every parameter's shape, extras included (what a graph of this model declares). */
  shapes(): Map<string, number[]> {
    return new Map([...this.params].map(([n, p]) => [n, p.shape]));
  }

  /**
   * A new model initialised as Hugging Face does: normal(0, initializer_range) weights and
   * embeddings, zero biases, LayerNorm weight 1 / bias 0, the padding embedding row zeroed.
   * Seeded: the same seed gives the same weights anywhere.
   */
  static create(config: Partial<BertConfig>, heads: Partial<BertHeads> = {}, seed = 0): Bert {
    const cfg = makeConfig(config);
    const h: BertHeads = {
      classifier: heads.classifier ?? numLabels(cfg) > 0,
      mlm: heads.mlm ?? false,
      ...(heads.tokenClassifier ? { tokenClassifier: true } : {}),
      ...(heads.qa ? { qa: true } : {}),
    };
    const tensors = new Map<string, Param>();
    let i = 0;
    for (const [name, shape] of parameterShapes(cfg, h)) {
      i++;
      const n = sizeOf(shape);
      let data: Float32Array;
      if (name.includes("LayerNorm.weight")) data = new Float32Array(n).fill(1);
      else if (name.endsWith(".bias")) data = new Float32Array(n);
      else data = normalInit(n, cfg.initializer_range, seed * 7919 + i);
      if (name === "embeddings.word_embeddings.weight" && cfg.pad_token_id < cfg.vocab_size) {
        const H = shape[1];
        data.fill(0, cfg.pad_token_id * H, (cfg.pad_token_id + 1) * H);
      }
      tensors.set(name, { data, shape });
    }
    return new Bert(cfg, h, tensors);
  }

  /** Parameter by HF name; throws for an unknown name. */
  p(name: string): Param {
    const v = this.params.get(name);
    if (!v) throw new Error(`Bert: no parameter ${name}`);
    return v;
  }

  /** A deep copy (its own arrays). */
  clone(): Bert {
    const copy = new Map<string, Param>();
    for (const [n, p] of this.params) {
      copy.set(n, { data: Float32Array.from(p.data), shape: [...p.shape] });
    }
    return new Bert(this.config, this.heads, copy);
  }

  /** Number of scalar parameters (the tied MLM decoder counted once). */
  numParameters(): number {
    let n = 0;
    for (const v of this.modelParams().values()) n += v.data.length;
    return n;
  }

  /** Drop every parameter (the arrays become garbage). */
  dispose(): void {
    this.params.clear();
  }
}

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
