/**
 * ONNX export of a {@link Bert}: one self-contained `ModelProto` (ir_version 8, default-domain
 * opset 17) whose graph is the one BERT definition (`graph/bert.ts`) in inference mode — what
 * every engine runs for inference too (`openInference`) — and the folder layout that
 * transformers.js loads (`config.json`, `tokenizer.json`, `tokenizer_config.json`,
 * `onnx/model.onnx`, `onnx/model_fp16.onnx`, `onnx/model_quantized.onnx`).
 *
 * Graph inputs: int64 `input_ids`, `attention_mask`, `token_type_ids`, each `[batch, sequence]`
 * with symbolic dims. Outputs (all float32), named as transformers.js' Bert classes read them:
 * - `logits` `[batch, num_labels]` when the model has a sequence classifier (the pooler, then the
 *   classifier on the [CLS] state: `BertForSequenceClassification`);
 * - `logits` `[batch, sequence, num_labels]` when the classifier labels every token
 *   (`heads.tokenClassifier`, `BertForTokenClassification`);
 * - `start_logits` and `end_logits`, each `[batch, sequence]`, when the model has a QA head
 *   (`qa_outputs`, `BertForQuestionAnswering`: `spanLogits[..., 0]` and `[..., 1]`);
 * - token-classification and QA models have no pooler, in the graph as in their checkpoints;
 * - the masked-LM logits `[batch, sequence, vocab]` when it has a masked-LM head (unless
 *   `mlm: false`), named `logits` as transformers.js' `BertForMaskedLM` reads them when the model
 *   has no classifier, else `mlm_logits` (see {@link mlmOutputName});
 * - `last_hidden_state` `[batch, sequence, hidden]` (the encoder output, always);
 * - with `outputs: "all"` (whatever the heads), also `hidden_state_{i}` (i = 0..L, 0 = embedding
 *   output) and the pre-softmax `attention_scores_{l}` `[batch, heads, sequence, sequence]`
 *   (l = 0..L−1), which include the additive mask `(1 − mask)·(−10000)` (TinyBERT's targets).
 *
 * Weights: every float `Linear` is a `Gemm` with `transB = 1` on the checkpoint's `[out, in]`
 * tensor, so the tied word embedding is stored once. With `dtype: "fp16"` every float weight is
 * stored as float16 and `Cast` to float32 where it is used: the file is half the size, the
 * arithmetic stays float32 (ONNX Runtime folds the casts when it loads the model), and inputs and
 * outputs keep the same types as the fp32 export. With `dtype: "q8"` the encoder's Linear weights
 * and word embeddings are int8 (see {@link ExportOnnxOptions.dtype}); the heads stay float32.
 * @module
 */

import { join } from "node:path";
import type { Bert } from "../model/bert.ts";
import { architectureOf } from "../model/checkpoint.ts";
import { type BertConfig, numLabels, writeConfig } from "../model/config.ts";
import { writeFileAtomic, writeJsonAtomic } from "../store/fsutil.ts";
import { saveTokenizer } from "../model/tokenizer/io.ts";
import type { BertTokenizer } from "../model/tokenizer/tokenizer.ts";
import { DataType, type Graph, GraphBuilder } from "./ir.ts";
import { Tape, type Value } from "./tape.ts";
import { bertForward, type Weights } from "./bert.ts";
import { InputError } from "../errors.ts";
import { littleEndianBytes } from "./protobuf.ts";

/** The default-domain opset of the exported graphs (17: `LayerNormalization`). */
export const ONNX_OPSET = 17;
/** The ONNX IR version written (8, readable by onnxruntime ≥ 1.10 and onnxruntime-web). */
export const ONNX_IR_VERSION = 8;

/**
 * The name of the masked-LM output: `logits` for a masked-LM-only model (what transformers.js'
 * `BertForMaskedLM` reads), `mlm_logits` when a classifier (sequence or token) already owns
 * `logits`.
 */
export function mlmOutputName(bert: Pick<Bert, "heads">): string {
  return bert.heads.classifier ? "mlm_logits" : "logits";
}

/** The export's outputs that hold a model's head logits: `logits`, or QA's start and end. */
export function headOutputNames(bert: Pick<Bert, "heads">): string[] {
  return bert.heads.qa ? ["start_logits", "end_logits"] : ["logits"];
}

/**
 * The head logits of an inference run (asked for with {@link headOutputNames}) in one layout:
 * `logits` as they are (`[B, C]`, `[B, S, C]`); QA's `start_logits`/`end_logits`
 * `[B, S]` stacked into `[B, S, 2]` (`spanLogits`: start at index 0, end at 1).
 */
export function headLogits(
  bert: Pick<Bert, "heads">,
  res: Record<string, { data: Float32Array; dims: number[] }>,
): { data: Float32Array; dims: number[] } {
  if (!bert.heads.qa) return res.logits;
  const st = res.start_logits.data, en = res.end_logits.data;
  const data = new Float32Array(st.length * 2);
  for (let i = 0; i < st.length; i++) {
    data[2 * i] = st[i];
    data[2 * i + 1] = en[i];
  }
  return { data, dims: [...res.start_logits.dims, 2] };
}

/**
 * Symmetric int8 quantization of a row-major `[rows, cols]` matrix, one scale per row
 * (max |row| / 127; 1 for an all-zero row): `w ≈ q · scale[row]`.
 */
function quantizeRows(
  w: Float32Array,
  rows: number,
  cols: number,
): { q: Int8Array; scale: Float32Array } {
  const q = new Int8Array(rows * cols), scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let max = 0;
    for (let i = 0; i < cols; i++) max = Math.max(max, Math.abs(w[r * cols + i]));
    const s = max > 0 ? max / 127 : 1;
    scale[r] = s;
    for (let i = 0; i < cols; i++) q[r * cols + i] = Math.round(w[r * cols + i] / s);
  }
  return { q, scale };
}

/** Options of {@link exportOnnx}. */
export interface ExportOnnxOptions {
  /** `"logits"` (default): the head outputs only; `"all"`: also every hidden state and score. */
  outputs?: "logits" | "all";
  /**
   * Weight storage: `"fp32"` (default), `"fp16"` (cast to float32 at use) or `"q8"` (the encoder's
   * and MLM transform's Linear weights int8 per output channel, dynamic uint8 activations,
   * `MatMulInteger`; the word embeddings int8 with one scale per row, dequantized after the
   * lookup, unless the MLM decoder shares them; position/type embeddings, pooler and the heads —
   * classifier, token classifier, `qa_outputs` — stay float32).
   */
  dtype?: "fp32" | "fp16" | "q8";
  /** Emit `mlm_logits` when the model has an MLM head (default true). */
  mlm?: boolean;
  /** With `outputs: "all"`, also each layer's value vectors `attention_values_{l}` `[B, h, S, d]`. */
  values?: boolean;
  /**
   * Add an int64 input `mlm_positions [M]` (flat indices into the B·S tokens) and the output
   * `mlm_rows [M, vocab]`: the MLM head on those rows only (a full `[B, S, vocab]` is large).
   */
  mlmRows?: boolean;
  /**
   * Element type of the integer inputs: `int64` (default, what transformers.js and exported files
   * use) or `int32` (what `openInference` feeds ONNX Runtime's WebGPU provider, which has no int64
   * Cast/Reshape kernels).
   */
  intType?: "int64" | "int32";
}

/** float32 → IEEE binary16 bits, rounding to nearest even (overflow → ±inf, NaN kept). */
export function toFloat16Bits(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 0x1f) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      let half = mant >>> shift;
      const rem = mant & ((1 << shift) - 1), halfway = 1 << (shift - 1);
      if (rem > halfway || (rem === halfway && (half & 1))) half++;
      out[i] = sign | half;
      continue;
    }
    let half = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
    out[i] = sign | half;
  }
  return out;
}

function transpose2d<T extends Float32Array | Int8Array>(a: T, rows: number, cols: number): T {
  const t = new (a.constructor as { new (n: number): T })(a.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) t[c * rows + r] = a[base + c];
  }
  return t;
}

/** Read access to a model's weights (host copies, row-major, Hugging Face orientation). */
function hostWeights(bert: Bert): (name: string) => { data: Float32Array; shape: number[] } {
  return (name) => {
    const p = bert.p(name);
    return { data: p.data, shape: p.shape };
  };
}

/**
 * The weights of an inference graph as initializers, in the storage `dtype` chooses: float32;
 * float16 `Cast` to float32 where used; or q8 — the encoder's and the MLM transform's Linear
 * weights int8 with one scale per output channel (`MatMulInteger` on dynamically quantized uint8
 * activations, as onnxruntime's `quantize_dynamic`), the word embeddings int8 with one scale per
 * row when `quantizeWords`; everything else float32.
 */
function storedWeights(
  t: Tape,
  read: ReturnType<typeof hostWeights>,
  has: (name: string) => boolean,
  dtype: "fp32" | "fp16" | "q8",
  quantizeWords: boolean,
): Weights {
  const g = t.g;
  const made = new Map<string, Value>();
  const get = (name: string): Value => {
    let v = made.get(name);
    if (v) return v;
    const { data, shape } = read(name);
    let stored: string;
    if (dtype === "fp16") {
      const half = g.initializer(
        `${name}.fp16`,
        DataType.FLOAT16,
        shape,
        littleEndianBytes(toFloat16Bits(data)),
      );
      stored = g.node("Cast", [half], { to: DataType.FLOAT }, name);
    } else {
      stored = g.initializer(name, DataType.FLOAT, shape, littleEndianBytes(data));
    }
    v = t.constant(stored, shape);
    made.set(name, v);
    return v;
  };
  const w: Weights = { get, has };
  if (dtype !== "q8") return w;
  /** The int8 weight and its scales, stored once per Linear (a head may be built twice). */
  const int8 = new Map<string, { wq: string; ws: string }>();
  /** INT8 `x·Wᵀ + b`: x → uint8 (per-tensor scale, zero point), W int8 `[in, out]`. */
  w.linear = (x, prefix) => {
    const quantized = prefix.startsWith("encoder.") ||
      prefix.startsWith("cls.predictions.transform.");
    if (!quantized) return t.linear(x, get(`${prefix}.weight`), get(`${prefix}.bias`));
    const name = `${prefix}.weight`;
    const rows = read(name).shape[0]; // [out, in]
    let stored = int8.get(name);
    if (!stored) {
      const { data, shape: [, cols] } = read(name);
      const { q: byRow, scale } = quantizeRows(data, rows, cols);
      const q = transpose2d(byRow, rows, cols); // stored transposed, [in, out]
      stored = {
        wq: g.initializer(`${name}.T.int8`, DataType.INT8, [cols, rows], new Uint8Array(q.buffer)),
        ws: g.initializer(`${name}.scale`, DataType.FLOAT, [rows], littleEndianBytes(scale)),
      };
      int8.set(name, stored);
    }
    const { wq, ws } = stored;
    const [xq, xs, xzp] = g.nodeMulti("DynamicQuantizeLinear", [x.name], 3);
    const yi = g.node("MatMulInteger", [xq, wq, xzp]);
    const y = g.node("Mul", [
      g.node("Cast", [yi], { to: DataType.FLOAT }),
      g.node("Mul", [xs, ws]),
    ]);
    return t.add(t.constant(y, [x.shape[0], rows]), get(`${prefix}.bias`));
  };
  /** INT8 lookup: the table int8 with one scale per row, `q · scale` after the gather. */
  w.embedding = (name, ids) => {
    if (!quantizeWords || name !== "embeddings.word_embeddings.weight") {
      return t.gather(get(name), ids);
    }
    const { data, shape: [rows, cols] } = read(name);
    const { q, scale } = quantizeRows(data, rows, cols);
    const table = g.initializer(
      `${name}.int8`,
      DataType.INT8,
      [rows, cols],
      new Uint8Array(q.buffer),
    );
    const scales = g.initializer(
      `${name}.row_scale`,
      DataType.FLOAT,
      [rows, 1],
      littleEndianBytes(scale),
    );
    const qRows = g.node("Gather", [table, ids.name], { axis: 0 });
    const sRows = g.node("Gather", [scales, ids.name], { axis: 0 });
    return t.constant(
      g.node("Mul", [g.node("Cast", [qRows], { to: DataType.FLOAT }), sRows]),
      [...ids.shape, cols],
    );
  };
  return w;
}

/**
 * The inference graph of `bert` (no dropout), built from the one BERT definition
 * ({@link bertForward}): what {@link exportOnnx} encodes and every engine runs. See the module doc
 * for its inputs, outputs and weight storage.
 */
export function exportGraph(bert: Bert, opts: ExportOnnxOptions = {}): Graph {
  const cfg = bert.config;
  const all = (opts.outputs ?? "logits") === "all";
  if (opts.outputs !== undefined && opts.outputs !== "logits" && opts.outputs !== "all") {
    throw new Error(`exportOnnx: outputs must be "logits" or "all", got ${opts.outputs}`);
  }
  const dtype = opts.dtype ?? "fp32";
  if (dtype !== "fp32" && dtype !== "fp16" && dtype !== "q8") {
    throw new Error(`exportOnnx: dtype must be "fp32", "fp16" or "q8", got ${opts.dtype}`);
  }
  const wantMlm = bert.heads.mlm && (opts.mlm ?? true);
  const H = cfg.hidden_size, nh = cfg.num_attention_heads, d = H / nh, V = cfg.vocab_size;
  const t = new Tape();
  const g = t.g;
  const weights = storedWeights(
    t,
    hostWeights(bert),
    (name) => bert.params.has(name),
    dtype,
    dtype === "q8" && !wantMlm,
  );
  const dims = ["batch", "sequence"];
  const intType = opts.intType === "int32" ? DataType.INT32 : DataType.INT64;
  const input = (name: string) =>
    t.constant(g.input({ name, elemType: intType, dims }), ["B", "S"], intType);
  const inputs = {
    ids: input("input_ids"),
    mask: input("attention_mask"),
    types: input("token_type_ids"),
  };
  const fwd = bertForward(t, cfg, bert.heads, weights, inputs);
  const out = (v: Value, name: string, shape: (number | string)[]) =>
    g.output(v.name, { name, elemType: DataType.FLOAT, dims: shape });
  const hiddenDims = ["batch", "sequence", H];
  if (all) {
    fwd.hidden.forEach((h, i) => out(fwd.unrows(h, H), `hidden_state_${i}`, hiddenDims));
    fwd.scores.forEach((s, l) =>
      out(s, `attention_scores_${l}`, ["batch", nh, "sequence", "sequence"])
    );
    if (opts.values) {
      fwd.values.forEach((v, l) => out(v, `attention_values_${l}`, ["batch", nh, "sequence", d]));
    }
  }
  if (bert.heads.classifier && bert.heads.tokenClassifier) {
    const C = numLabels(cfg);
    out(fwd.unrows(fwd.tokenLogits(), C), "logits", ["batch", "sequence", C]);
  } else if (bert.heads.classifier) {
    out(fwd.logits(), "logits", ["batch", numLabels(cfg)]);
  }
  if (bert.heads.qa) {
    const span = fwd.spanLogits(); // [B, S, 2]
    for (const [i, name] of ["start_logits", "end_logits"].entries()) {
      const idx = g.int64s(`${name}_index`, [i], []);
      out(t.constant(g.node("Gather", [span.name, idx], { axis: 2 }), ["B", "S"]), name, dims);
    }
  }
  if (wantMlm) {
    out(fwd.unrows(fwd.mlmHead(fwd.hidden[fwd.hidden.length - 1]), V), mlmOutputName(bert), [
      "batch",
      "sequence",
      V,
    ]);
  }
  if (opts.mlmRows) {
    // the MLM head on chosen rows only (augment: the masked positions; flat indices into B·S)
    const positions = t.constant(
      g.input({ name: "mlm_positions", elemType: intType, dims: ["positions"] }),
      ["M"],
      intType,
    );
    const rows = t.gather(fwd.hidden[fwd.hidden.length - 1], positions);
    out(fwd.mlmHead(rows), "mlm_rows", ["positions", V]);
  }
  // always: transformers.js' feature-extraction pipeline reads it (besides a head's `logits`)
  out(fwd.last, "last_hidden_state", hiddenDims);
  return g.graph();
}

/**
 * The ONNX `ModelProto` bytes of `bert` in inference mode: {@link exportGraph}, encoded (ir_version
 * 8, opset 17).
 */
export function exportOnnx(bert: Bert, opts: ExportOnnxOptions = {}): Uint8Array {
  return encodeGraph(exportGraph(bert, opts), "tinystill_bert");
}

/** Encode an inference graph (ir_version 8, default-domain opset 17). */
export function encodeGraph(graph: Graph, name: string): Uint8Array {
  return GraphBuilder.encode(graph, {
    name,
    opset: ONNX_OPSET,
    irVersion: ONNX_IR_VERSION,
    producer: "tinystill",
  });
}

/**
 * Set `model_max_length` in `dir/tokenizer_config.json` (when the file exists) to the least of its
 * value, `maxLength` and `maxPositions`: a tokenizer must not produce sequences the model has no
 * positions for. Returns the value written, or null without the file.
 */
export async function limitModelMaxLength(
  dir: string,
  maxPositions: number,
  maxLength?: number,
): Promise<number | null> {
  const path = join(dir, "tokenizer_config.json");
  let config: Record<string, unknown>;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    config = JSON.parse(text);
  } catch (e) {
    throw new InputError("tokenizer_config.json is not valid JSON", {
      file: path,
      expected: "a JSON object",
      got: (e as Error).message,
    });
  }
  const current = typeof config.model_max_length === "number" ? config.model_max_length : Infinity;
  const limit = Math.min(current, maxLength ?? Infinity, maxPositions);
  config.model_max_length = limit;
  await writeJsonAtomic(path, config);
  return limit;
}

/** Options of {@link saveOnnxFolder}. */
export interface SaveOnnxFolderOptions {
  /** Also write `tokenizer.json`, `tokenizer_config.json` (and `vocab.txt`). */
  tokenizer?: BertTokenizer;
  /**
   * The length the model was trained at: `model_max_length` of `tokenizer_config.json` becomes
   * the least of it, the tokenizer's own and `max_position_embeddings` (so transformers.js
   * truncates long inputs instead of failing on them).
   */
  maxLength?: number;
  /** Outputs of both exports (default `"logits"`). */
  outputs?: "logits" | "all";
  /** Write `onnx/model_fp16.onnx` too (default true). */
  fp16?: boolean;
  /** Write `onnx/model_quantized.onnx` (`dtype: "q8"`, what transformers.js loads for `q8`; default true). */
  quantize?: boolean;
}

/**
 * Write the transformers.js layout under `dir`: `config.json`, the tokenizer files when a
 * tokenizer is given, `onnx/model.onnx`, (unless `fp16: false`) `onnx/model_fp16.onnx` and
 * (unless `quantize: false`) `onnx/model_quantized.onnx`. `config.json`'s `architectures` names
 * the class transformers.js builds for the heads (`BertForSequenceClassification`,
 * `BertForTokenClassification`, `BertForQuestionAnswering`, …), and its `id2label` names the
 * classifier's labels (per token for a token classifier). Every file is written atomically.
 * Returns the paths written.
 */
export async function saveOnnxFolder(
  bert: Bert,
  dir: string,
  opts: SaveOnnxFolderOptions = {},
): Promise<string[]> {
  const written: string[] = [];
  const quantize = opts.quantize ?? true;
  await Deno.mkdir(join(dir, "onnx"), { recursive: true });
  written.push(
    await writeConfig(dir, {
      ...bert.config,
      architectures: [architectureOf(bert.heads)],
      torch_dtype: "float32",
      // without a quantized file, transformers.js must not look for one (its browser default is
      // q8): point it at `onnx/model.onnx`
      ...(quantize ? {} : { "transformers.js_config": { dtype: "fp32" } }),
    } as BertConfig),
  );
  if (opts.tokenizer) {
    await saveTokenizer(opts.tokenizer, dir);
    for (const f of ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]) {
      written.push(join(dir, f));
    }
  }
  if (opts.tokenizer || opts.maxLength !== undefined) {
    await limitModelMaxLength(dir, bert.config.max_position_embeddings, opts.maxLength);
  }
  const outputs = opts.outputs ?? "logits";
  const fp32Path = join(dir, "onnx", "model.onnx");
  await writeFileAtomic(fp32Path, exportOnnx(bert, { outputs, dtype: "fp32" }));
  written.push(fp32Path);
  if (opts.fp16 ?? true) {
    const fp16Path = join(dir, "onnx", "model_fp16.onnx");
    await writeFileAtomic(fp16Path, exportOnnx(bert, { outputs, dtype: "fp16" }));
    written.push(fp16Path);
  }
  if (quantize) {
    const q8Path = join(dir, "onnx", "model_quantized.onnx");
    await writeFileAtomic(q8Path, exportOnnx(bert, { outputs, dtype: "q8" }));
    written.push(q8Path);
  }
  return written;
}
