/**
 * ONNX export of a {@link Bert}: one self-contained `ModelProto` (ir_version 8, default-domain
 * opset 17) whose graph reproduces `Bert.forward` in inference mode, and the folder layout that
 * transformers.js loads (`config.json`, `tokenizer.json`, `tokenizer_config.json`,
 * `onnx/model.onnx`, `onnx/model_fp16.onnx`, `onnx/model_quantized.onnx`).
 *
 * Graph inputs: int64 `input_ids`, `attention_mask`, `token_type_ids`, each `[batch, sequence]`
 * with symbolic dims. Outputs (all float32), named as transformers.js' Bert classes read them:
 * - `logits` `[batch, num_labels]` when the model has a sequence classifier (the pooler, then the
 *   classifier on the [CLS] state: `BertForSequenceClassification`);
 * - `logits` `[batch, sequence, num_labels]` when the classifier labels every token
 *   (`heads.tokenClassifier`, `BertForTokenClassification`: `Bert.forward`'s `tokenLogits`);
 * - `start_logits` and `end_logits`, each `[batch, sequence]`, when the model has a QA head
 *   (`qa_outputs`, `BertForQuestionAnswering`: `spanLogits[..., 0]` and `[..., 1]`);
 * - token-classification and QA models have no pooler, in the graph as in their checkpoints;
 * - the masked-LM logits `[batch, sequence, vocab]` when it has a masked-LM head (unless
 *   `mlm: false`), named `logits` as transformers.js' `BertForMaskedLM` reads them when the model
 *   has no classifier, else `mlm_logits` (see {@link mlmOutputName});
 * - `last_hidden_state` `[batch, sequence, hidden]` (the encoder output, always);
 * - with `outputs: "all"` (whatever the heads), also `hidden_state_{i}` (i = 0..L, 0 = embedding
 *   output) and the pre-softmax `attention_scores_{l}` `[batch, heads, sequence, sequence]`
 *   (l = 0..L−1), which include the additive mask `(1 − mask)·(−10000)` exactly as
 *   `Bert.forward` returns them.
 *
 * Weights: `Linear` weights used by `MatMul` are stored transposed (`[in, out]`, name suffix
 * `.T`), the per-token heads' (token classifier, `qa_outputs`) included; the pooler, the sequence
 * classifier and the tied MLM decoder use `Gemm` with `transB = 1` on the original `[out, in]`
 * tensors, so the word embedding is stored once. With `dtype: "fp16"` every float weight is
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
import { type BertTokenizer, saveTokenizer } from "../model/tokenizer.ts";
import { DataType, GraphBuilder } from "./graph.ts";
import { InputError } from "../errors.ts";
import { littleEndianBytes } from "./protobuf.ts";

/** The default-domain opset of the exported graphs (17: `LayerNormalization`). */
export const ONNX_OPSET = 17;
/** The ONNX IR version written (8, readable by onnxruntime ≥ 1.10 and onnxruntime-web). */
export const ONNX_IR_VERSION = 8;
/** The additive attention-mask value on padded keys (as `MASK_VALUE` in bert.ts). */
const MASK_VALUE = -10000;

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
 * The head logits of an ONNX run (asked for with {@link headOutputNames}) in `Bert.forward`'s
 * layout: `logits` as they are (`[B, C]`, `[B, S, C]`); QA's `start_logits`/`end_logits`
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

/**
 * The ONNX `ModelProto` bytes of `bert` in inference mode (no dropout). See the module doc for
 * the inputs, outputs and weight layout.
 */
export function exportOnnx(bert: Bert, opts: ExportOnnxOptions = {}): Uint8Array {
  const cfg = bert.config;
  const all = (opts.outputs ?? "logits") === "all";
  const fp16 = (opts.dtype ?? "fp32") === "fp16";
  if (opts.outputs !== undefined && opts.outputs !== "logits" && opts.outputs !== "all") {
    throw new Error(`exportOnnx: outputs must be "logits" or "all", got ${opts.outputs}`);
  }
  const q8 = opts.dtype === "q8";
  if (
    opts.dtype !== undefined && opts.dtype !== "fp32" && opts.dtype !== "fp16" && !q8
  ) {
    throw new Error(`exportOnnx: dtype must be "fp32", "fp16" or "q8", got ${opts.dtype}`);
  }
  const wantMlm = bert.heads.mlm && (opts.mlm ?? true);
  const H = cfg.hidden_size, nh = cfg.num_attention_heads, d = H / nh, L = cfg.num_hidden_layers;
  const V = cfg.vocab_size;
  const g = new GraphBuilder();

  // --- weights -------------------------------------------------------------------------------
  const cache = new Map<string, string>();
  const store = (name: string, dims: number[], data: Float32Array): string => {
    if (!fp16) return g.initializer(name, DataType.FLOAT, dims, littleEndianBytes(data));
    const stored = g.initializer(
      `${name}.fp16`,
      DataType.FLOAT16,
      dims,
      littleEndianBytes(toFloat16Bits(data)),
    );
    return g.node("Cast", [stored], { to: DataType.FLOAT }, name);
  };
  /** A parameter as stored (`[out, in]` for Linear weights). */
  const W = (name: string): string => {
    let v = cache.get(name);
    if (v === undefined) {
      const p = bert.p(name);
      v = store(name, p.shape, Float32Array.from(p.dataSync()));
      cache.set(name, v);
    }
    return v;
  };
  /** A `[out, in]` Linear weight stored transposed as `[in, out]`. */
  const WT = (name: string): string => {
    const key = `${name}.T`;
    let v = cache.get(key);
    if (v === undefined) {
      const p = bert.p(name);
      const [rows, cols] = p.shape;
      v = store(key, [cols, rows], transpose2d(p.dataSync() as Float32Array, rows, cols));
      cache.set(key, v);
    }
    return v;
  };

  // --- constants -----------------------------------------------------------------------------
  const one = g.scalar("one", 1);
  const maskValue = g.scalar("mask_value", MASK_VALUE);
  const sqrtD = g.scalar("sqrt_d", Math.sqrt(d));
  const shapeHeads = g.int64s("shape_heads", [0, 0, nh, d]);
  const shapeHidden = g.int64s("shape_hidden", [0, 0, H]);
  const zero1 = g.int64s("zero", [0]);
  const axes0 = g.int64s("axes0", [0]);
  const axes12 = g.int64s("axes12", [1, 2]);

  /**
   * INT8 `x·W` (dynamic quantization, as onnxruntime's `quantize_dynamic`): `x` → uint8 with a
   * per-tensor scale and zero point computed at run time (DynamicQuantizeLinear), `W` stored as
   * int8, symmetric, one scale per output column; `MatMulInteger`, then × (x_scale · w_scale).
   */
  const matmulQ8 = (x: string, name: string): string => {
    const p = bert.p(name);
    const [rows, cols] = p.shape; // [out, in]
    const { q: byRow, scale } = quantizeRows(p.dataSync() as Float32Array, rows, cols);
    const q = transpose2d(byRow, rows, cols); // stored transposed, [in, out]
    const wq = g.initializer(
      `${name}.T.int8`,
      DataType.INT8,
      [cols, rows],
      new Uint8Array(q.buffer),
    );
    const ws = g.initializer(`${name}.scale`, DataType.FLOAT, [rows], littleEndianBytes(scale));
    const [xq, xs, xzp] = g.nodeMulti("DynamicQuantizeLinear", [x], 3);
    const yi = g.node("MatMulInteger", [xq, wq, xzp]);
    return g.node("Mul", [g.node("Cast", [yi], { to: DataType.FLOAT }), g.node("Mul", [xs, ws])]);
  };
  /**
   * INT8 embedding lookup: the `[rows, width]` table stored as int8, symmetric, one scale per row
   * (per-row max / 127); rows gathered as int8 and their scales beside them, then `q · scale`.
   */
  const gatherQ8Rows = (name: string, index: string): string => {
    const p = bert.p(name);
    const [rows, cols] = p.shape;
    const { q, scale } = quantizeRows(p.dataSync() as Float32Array, rows, cols);
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
    const qRows = g.node("Gather", [table, index], { axis: 0 });
    const sRows = g.node("Gather", [scales, index], { axis: 0 });
    return g.node("Mul", [g.node("Cast", [qRows], { to: DataType.FLOAT }), sRows]);
  };
  const linear = (x: string, prefix: string): string =>
    g.node("Add", [
      q8 ? matmulQ8(x, `${prefix}.weight`) : g.node("MatMul", [x, WT(`${prefix}.weight`)]),
      W(`${prefix}.bias`),
    ]);
  const gemm = (x: string, weight: string, bias: string): string =>
    g.node("Gemm", [x, W(weight), W(bias)], { transB: 1 });
  const norm = (x: string, prefix: string): string =>
    g.node("LayerNormalization", [x, W(`${prefix}.weight`), W(`${prefix}.bias`)], {
      axis: -1,
      epsilon: { f: cfg.layer_norm_eps },
    });
  const act = (x: string): string => {
    switch (cfg.hidden_act) {
      case "gelu": {
        const half = g.scalar("half", 0.5);
        // x · ½ · (1 + erf(x/√2)), in the order bert.ts computes it
        const invSqrt2 = g.scalar("inv_sqrt2", Math.SQRT1_2);
        const erf = g.node("Erf", [g.node("Mul", [x, invSqrt2])]);
        return g.node("Mul", [g.node("Mul", [x, half]), g.node("Add", [erf, one])]);
      }
      case "gelu_new": {
        const half = g.scalar("half", 0.5);
        const c = g.scalar("sqrt_2_over_pi", Math.sqrt(2 / Math.PI));
        const k = g.scalar("gelu_k", 0.044715);
        const three = g.scalar("three", 3);
        const cube = g.node("Mul", [g.node("Pow", [x, three]), k]);
        const inner = g.node("Mul", [g.node("Add", [x, cube]), c]);
        const t = g.node("Add", [g.node("Tanh", [inner]), one]);
        return g.node("Mul", [g.node("Mul", [x, half]), t]);
      }
      case "relu":
        return g.node("Relu", [x]);
      default:
        throw new Error(`exportOnnx: unsupported hidden_act '${cfg.hidden_act}'`);
    }
  };

  // --- inputs --------------------------------------------------------------------------------
  const dims = ["batch", "sequence"];
  const ids = g.input({ name: "input_ids", elemType: DataType.INT64, dims });
  const mask = g.input({ name: "attention_mask", elemType: DataType.INT64, dims });
  const types = g.input({ name: "token_type_ids", elemType: DataType.INT64, dims });
  const hiddenDims = ["batch", "sequence", H];

  // Additive mask (1 − mask)·(−10000) as [B, 1, 1, S].
  const maskF = g.node("Cast", [mask], { to: DataType.FLOAT });
  const maskAdd = g.node("Unsqueeze", [
    g.node("Mul", [g.node("Sub", [one, maskF]), maskValue]),
    axes12,
  ]);

  // Embeddings: word + position[0:S] + token type, LayerNorm.
  // q8: the word embeddings (most of a small model's bytes) are int8 with one scale per row,
  // dequantized after the lookup; kept float32 when the MLM decoder shares them
  const words = q8 && !wantMlm
    ? gatherQ8Rows("embeddings.word_embeddings.weight", ids)
    : g.node("Gather", [W("embeddings.word_embeddings.weight"), ids], { axis: 0 });
  const seqLen = g.node("Shape", [ids], { start: 1, end: 2 });
  const pos = g.node("Slice", [W("embeddings.position_embeddings.weight"), zero1, seqLen, axes0]);
  const tt = g.node("Gather", [W("embeddings.token_type_embeddings.weight"), types], { axis: 0 });
  let h = norm(g.node("Add", [g.node("Add", [words, pos]), tt]), "embeddings.LayerNorm");
  if (all) g.output(h, { name: "hidden_state_0", elemType: DataType.FLOAT, dims: hiddenDims });

  // Encoder layers (post-LayerNorm).
  for (let l = 0; l < L; l++) {
    const p = `encoder.layer.${l}`;
    const heads = (x: string, perm: number[]): string =>
      g.node("Transpose", [g.node("Reshape", [x, shapeHeads])], { perm });
    const q = heads(linear(h, `${p}.attention.self.query`), [0, 2, 1, 3]); // [B, nh, S, d]
    const kT = heads(linear(h, `${p}.attention.self.key`), [0, 2, 3, 1]); // [B, nh, d, S]
    const v = heads(linear(h, `${p}.attention.self.value`), [0, 2, 1, 3]);
    const scores = g.node("Add", [g.node("Div", [g.node("MatMul", [q, kT]), sqrtD]), maskAdd]);
    if (all) {
      g.output(scores, {
        name: `attention_scores_${l}`,
        elemType: DataType.FLOAT,
        dims: ["batch", nh, "sequence", "sequence"],
      });
    }
    const probs = g.node("Softmax", [scores], { axis: -1 });
    const ctx = g.node("Reshape", [
      g.node("Transpose", [g.node("MatMul", [probs, v])], { perm: [0, 2, 1, 3] }),
      shapeHidden,
    ]);
    const attnOut = norm(
      g.node("Add", [linear(ctx, `${p}.attention.output.dense`), h]),
      `${p}.attention.output.LayerNorm`,
    );
    const inter = act(linear(attnOut, `${p}.intermediate.dense`));
    h = norm(g.node("Add", [linear(inter, `${p}.output.dense`), attnOut]), `${p}.output.LayerNorm`);
    if (all) {
      g.output(h, { name: `hidden_state_${l + 1}`, elemType: DataType.FLOAT, dims: hiddenDims });
    }
  }

  // Heads.
  /** A float (never quantized) Linear on every token: `h [B, S, H]` → `[B, S, out]`. */
  const tokenLinear = (prefix: string): string =>
    g.node("Add", [g.node("MatMul", [h, WT(`${prefix}.weight`)]), W(`${prefix}.bias`)]);
  if (bert.heads.classifier && bert.heads.tokenClassifier) {
    // BertForTokenClassification: the classifier on every token's last hidden state, no pooler
    g.output(tokenLinear("classifier"), {
      name: "logits",
      elemType: DataType.FLOAT,
      dims: ["batch", "sequence", numLabels(cfg)],
    });
  } else if (bert.heads.classifier) {
    const cls = g.node("Gather", [h, g.int64s("cls_index", [0], [])], { axis: 1 }); // [B, H]
    const pooled = g.node("Tanh", [gemm(cls, "pooler.dense.weight", "pooler.dense.bias")]);
    const logits = gemm(pooled, "classifier.weight", "classifier.bias");
    g.output(logits, { name: "logits", elemType: DataType.FLOAT, dims: ["batch", numLabels(cfg)] });
  }
  if (bert.heads.qa) {
    // BertForQuestionAnswering: qa_outputs [B, S, 2], split into start (0) and end (1)
    const span = tokenLinear("qa_outputs");
    for (const [i, name] of ["start_logits", "end_logits"].entries()) {
      const idx = g.int64s(`${name}_index`, [i], []);
      g.output(g.node("Gather", [span, idx], { axis: 2 }), {
        name,
        elemType: DataType.FLOAT,
        dims: ["batch", "sequence"],
      });
    }
  }
  if (wantMlm) {
    const t = norm(
      act(linear(h, "cls.predictions.transform.dense")),
      "cls.predictions.transform.LayerNorm",
    );
    const rows = g.node("Reshape", [t, g.int64s("shape_rows", [-1, H])]);
    const logits = gemm(rows, "embeddings.word_embeddings.weight", "cls.predictions.bias");
    const outShape = g.node("Concat", [g.node("Shape", [ids]), g.int64s("vocab", [V])], {
      axis: 0,
    });
    g.output(g.node("Reshape", [logits, outShape]), {
      name: mlmOutputName(bert),
      elemType: DataType.FLOAT,
      dims: ["batch", "sequence", V],
    });
  }
  // always: transformers.js' feature-extraction pipeline reads it (besides a head's `logits`)
  g.output(h, { name: "last_hidden_state", elemType: DataType.FLOAT, dims: hiddenDims });

  return g.toModel({
    name: "tinystill_bert",
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
