/**
 * ONNX export and inference: the protobuf encoder, float16 rounding, the model header; the export
 * run on ONNX Runtime and on tfjs (wasm and cpu, interpreting the same graph) against the
 * independent float64 PyTorch reference (`tests/reference/bert_torch.py`) on every output, with
 * dynamic batch and sequence axes; fp16 weights within a stated bound of torch at half the size;
 * the transformers.js folder layout; load errors and misuse.
 *
 * The parity tests need a python3 with torch and numpy (see `tests/_torch.ts`); without one they
 * are skipped with a message, unless `TINYSTILL_REQUIRE_TORCH=1`.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Bert, type BertHeads, parameterShapes } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { BertTokenizer } from "../pipeline/model/tokenizer/tokenizer.ts";
import {
  exportOnnx,
  mlmOutputName,
  ONNX_OPSET,
  saveOnnxFolder,
  toFloat16Bits,
} from "../pipeline/graph/export.ts";
import { type InferenceOutput, openInference } from "../pipeline/engines/inference.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import { OnnxLoadError } from "../pipeline/engines/onnxruntime.ts";
import { ProtoWriter, readFields } from "../pipeline/graph/protobuf.ts";
import {
  maxAbsErr,
  randomArray,
  realKeyMask,
  relErr,
  rng,
  UNIT_FLOOR,
  withTempDir,
} from "./_util.ts";
import { type Inputs, PYTHON, runTorch } from "./_torch.ts";

// ---------------------------------------------------------------------------------------------
// protobuf

Deno.test("protobuf: varints, scalars, strings, packed and nested fields", () => {
  const bytes = (f: (w: ProtoWriter) => void) => {
    const w = new ProtoWriter();
    f(w);
    return [...w.finish()];
  };
  assert.deepEqual(bytes((w) => w.varint(0)), [0]);
  assert.deepEqual(bytes((w) => w.varint(150)), [0x96, 0x01]);
  assert.deepEqual(bytes((w) => w.varint(300)), [0xac, 0x02]);
  assert.deepEqual(bytes((w) => w.varint(-1)), [...Array(9).fill(0xff), 0x01]);
  assert.deepEqual(bytes((w) => w.varint(2 ** 35)), [0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
  assert.deepEqual(bytes((w) => w.int(1, 150)), [0x08, 0x96, 0x01]);
  assert.deepEqual(bytes((w) => w.string(2, "testing")), [
    0x12,
    0x07,
    ...new TextEncoder().encode("testing"),
  ]);
  assert.deepEqual(bytes((w) => w.float(3, 1)), [0x1d, 0x00, 0x00, 0x80, 0x3f]);
  assert.deepEqual(bytes((w) => w.packedInts(4, [3, 270, 86942])), [
    0x22,
    0x06,
    0x03,
    0x8e,
    0x02,
    0x9e,
    0xa7,
    0x05,
  ]);

  const big = new Uint8Array(1000).map((_, i) => i & 0xff);
  const inner = new ProtoWriter().int(1, -7).bytes(2, big);
  const outer = new ProtoWriter().string(1, "x").message(2, inner).double(3, 0.25).finish();
  const f = readFields(outer);
  assert.deepEqual(f.map((x) => x.field), [1, 2, 3]);
  assert.equal(new TextDecoder().decode(f[0].value as Uint8Array), "x");
  assert.equal(
    new DataView(new BigUint64Array([f[2].value as bigint]).buffer).getFloat64(0, true),
    0.25,
  );
  const g = readFields(f[1].value as Uint8Array);
  assert.equal(BigInt.asIntN(64, g[0].value as bigint), -7n);
  assert.deepEqual([...(g[1].value as Uint8Array)], [...big]);
  assert.throws(() => readFields(new Uint8Array([0x0a, 0x05, 1])), /truncated/);
});

Deno.test("toFloat16Bits rounds to nearest even, with subnormals, overflow and NaN", () => {
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65520, 0x7c00], // rounds up to infinity
    [Infinity, 0x7c00],
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -26, 0x0000], // below half of it
    [1 + 2 ** -11, 0x3c00], // tie, to even
    [1 + 3 * 2 ** -11, 0x3c02], // tie, to even (up)
    [0.1, 0x2e66],
  ];
  const got = toFloat16Bits(Float32Array.from(cases.map((c) => c[0])));
  cases.forEach(([v, want], i) => assert.equal(got[i], want, `f16(${v})`));
  assert.equal(toFloat16Bits(Float32Array.of(NaN))[0] & 0x7c00, 0x7c00);
  // agree with the platform's Float16Array where there is one
  const F16 = (globalThis as { Float16Array?: new (a: ArrayLike<number>) => ArrayLike<number> })
    .Float16Array;
  if (F16) {
    const r = rng(3);
    const xs = Float32Array.from({ length: 20000 }, () => (r() - 0.5) * 2 ** (r() * 40 - 28));
    const ref = new Uint16Array((new F16(xs) as unknown as { buffer: ArrayBuffer }).buffer);
    assert.deepEqual(toFloat16Bits(xs), ref);
  }
});

// ---------------------------------------------------------------------------------------------
// models and inputs

const LABELS3 = { 0: "a", 1: "b", 2: "c" };
const MAIN: Partial<BertConfig> = {
  vocab_size: 60,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 48,
  max_position_embeddings: 40,
  id2label: LABELS3,
};
// one head, odd sizes, the tanh GELU, 3 token types, a 2-label classifier and no MLM head
const ODD: Partial<BertConfig> = {
  vocab_size: 37,
  hidden_size: 13,
  num_hidden_layers: 1,
  num_attention_heads: 1,
  intermediate_size: 19,
  max_position_embeddings: 24,
  type_vocab_size: 3,
  hidden_act: "gelu_new",
  id2label: { 0: "no", 1: "yes" },
  layer_norm_eps: 1e-5,
};
// relu, MLM head only
const RELU_MLM: Partial<BertConfig> = { ...MAIN, hidden_act: "relu", id2label: undefined };

/**
 * A model whose every parameter is random (LayerNorm weights 1 ± 0.2, everything else uniform
 * ±0.3: `Bert.create` would zero the biases), so that an export that drops or misplaces a bias or
 * a LayerNorm parameter computes other numbers, and attention is far from uniform.
 */
function randomModel(cfg: Partial<BertConfig>, heads: BertHeads, seed: number): Bert {
  const config = makeConfig(cfg);
  const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(config, heads)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + ++i);
    const data = name.includes("LayerNorm.weight")
      ? u.map((x) => 1 + 0.2 * x)
      : u.map((x) => 0.3 * x);
    tensors.set(name, { data, shape });
  }
  return new Bert(config, heads, tensors);
}

interface Batch {
  ids: Int32Array;
  mask: Int32Array;
  types: Int32Array;
  batch: number;
  seq: number;
}

/**
 * Padded rows (row b has seq − 2b real tokens, at least 2) with token types 0 then 1 (then 2 on
 * the last real token where the model has a third type).
 */
function makeBatch(cfg: BertConfig, batch: number, seq: number, seed: number): Batch {
  const r = rng(seed);
  const n = batch * seq;
  const ids = new Int32Array(n), mask = new Int32Array(n), types = new Int32Array(n);
  for (let b = 0; b < batch; b++) {
    const len = Math.max(2, seq - 2 * b);
    for (let s = 0; s < len; s++) {
      const i = b * seq + s;
      ids[i] = 1 + Math.floor(r() * (cfg.vocab_size - 1));
      mask[i] = 1;
      types[i] = s === len - 1 ? cfg.type_vocab_size - 1 : s >= Math.floor(len / 2) ? 1 : 0;
    }
  }
  return { ids, mask, types, batch, seq };
}

/** The first `rows` rows of `x`, with `extra` more padding columns (id 0, mask 0, type 0). */
function widen(x: Batch, rows: number, extra: number): Batch {
  const seq = x.seq + extra;
  const out = { ids: new Int32Array(rows * seq), mask: new Int32Array(rows * seq) };
  const types = new Int32Array(rows * seq);
  for (let b = 0; b < rows; b++) {
    out.ids.set(x.ids.subarray(b * x.seq, (b + 1) * x.seq), b * seq);
    out.mask.set(x.mask.subarray(b * x.seq, (b + 1) * x.seq), b * seq);
    types.set(x.types.subarray(b * x.seq, (b + 1) * x.seq), b * seq);
  }
  return { ...out, types, batch: rows, seq };
}

const inputsOf = (x: Batch) => ({
  inputIds: x.ids,
  attentionMask: x.mask,
  tokenTypeIds: x.types,
  batch: x.batch,
  seq: x.seq,
});

/** The batch as the torch reference reads it (nested rows). */
function torchInputs(x: Batch): Inputs {
  const rows = (a: Int32Array) =>
    Array.from({ length: x.batch }, (_, b) => [...a.subarray(b * x.seq, (b + 1) * x.seq)]);
  return {
    input_ids: rows(x.ids),
    attention_mask: rows(x.mask),
    token_type_ids: rows(x.types),
    labels: new Array(x.batch).fill(0),
  };
}

/**
 * The float64 PyTorch reference (`tests/reference/bert_torch.py`) on `bert`'s checkpoint, under the
 * export's output names: `hidden_state_{i}`, `last_hidden_state`, `attention_scores_{l}`, the
 * classifier's `logits` and the MLM logits (`logits` or `mlm_logits`, see {@link mlmOutputName}).
 */
async function torchOutputs(bert: Bert, x: Batch): Promise<Record<string, Float64Array>> {
  return await withTempDirValue(async (dir) => {
    await saveBert(bert, join(dir, "model"));
    const { tensors } = await runTorch(join(dir, "model"), torchInputs(x), dir, { mlm: true });
    const L = bert.config.num_hidden_layers;
    const out: Record<string, Float64Array> = {};
    for (let i = 0; i <= L; i++) out[`hidden_state_${i}`] = tensors.get(`hidden_states.${i}`)!.data;
    out.last_hidden_state = out[`hidden_state_${L}`];
    for (let l = 0; l < L; l++) {
      out[`attention_scores_${l}`] = tensors.get(`attention_scores.${l}`)!.data;
    }
    if (bert.heads.classifier) out.logits = tensors.get("logits")!.data;
    if (bert.heads.mlm) out[mlmOutputName(bert)] = tensors.get("mlm_logits")!.data;
    return out;
  });
}

async function withTempDirValue<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  let value: T | undefined;
  await withTempDir(async (dir) => {
    value = await fn(dir);
  });
  return value!;
}

/**
 * Absolute bound on the padded key columns of the attention scores (−10000 + s): float32 resolves
 * them only to ≈ 5e-4, on either side.
 */
const PADDED_ABS_TOL = 2e-3;
/** Per-element relative tolerance of the fp32 graph against float64 torch (floor UNIT_FLOOR). */
const TOL = 1e-4;
/**
 * fp16 weights against float64 torch: relErr ≤ 2e-2 with floor 0.3. Every weight is rounded to
 * 11 significant bits (≤ 2⁻¹¹ ≈ 4.9e-4 of itself), which moves every output by an absolute amount
 * that scales with the model's values (logits of order 0.5–4), not with each entry: entries below
 * 0.3 are held to 2e-2 · 0.3. Measured here: up to 1.2e-2 (MLM logits), 5.6e-3 on the others.
 */
const FP16_TOL = 2e-2, FP16_FLOOR = 0.3;

/** Worst error per output kind, per parity test: printed at its end for the record. */
type Errors = Map<string, number>;

function record(errs: Errors, name: string, e: number): void {
  const kind = name.replace(/_\d+/, "_*"); // one row for every layer
  errs.set(kind, Math.max(errs.get(kind) ?? 0, e));
}

/** Assert relErr(got, want) ≤ tol per element (floor `floor`, entries `where`); record it. */
function check(
  errs: Errors,
  name: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: number,
  opts: { floor: number; where?: Uint8Array },
) {
  const e = relErr(got, want, opts);
  record(errs, name, e);
  assert.ok(e <= tol, `${name}: relative error ${e.toExponential(3)} > ${tol}`);
}

/** Total raw_data bytes of the graph's initializers of ONNX data type `dataType`. */
function initializerBytes(model: Uint8Array, dataType: number): number {
  const graph = readFields(readFields(model).find((f) => f.field === 7)!.value as Uint8Array);
  let n = 0;
  for (const f of graph.filter((f) => f.field === 5)) {
    const t = readFields(f.value as Uint8Array);
    if (t.find((x) => x.field === 2)?.value !== BigInt(dataType)) continue;
    n += (t.find((x) => x.field === 9)!.value as Uint8Array).length;
  }
  return n;
}

/**
 * Compare every output of one run with the reference, and check its dims: hidden states and MLM
 * logits per element; attention scores per element on real key columns and absolutely on padded
 * ones. Returns the names compared.
 */
function compareAll(
  errs: Errors,
  got: Record<string, InferenceOutput>,
  ref: Record<string, ArrayLike<number>>,
  x: Batch,
  cfg: BertConfig,
  tag: string,
): string[] {
  const names = Object.keys(got).sort();
  assert.deepEqual(names, Object.keys(ref).sort(), `${tag}: output names`);
  for (const name of names) {
    const o = got[name];
    if (name.startsWith("hidden_state_") || name === "last_hidden_state") {
      assert.deepEqual(o.dims, [x.batch, x.seq, cfg.hidden_size]);
    }
    if (name.startsWith("attention_scores_")) {
      const nh = cfg.num_attention_heads;
      assert.deepEqual(o.dims, [x.batch, nh, x.seq, x.seq]);
      const rows = Array.from(
        { length: x.batch },
        (_, b) => x.mask.subarray(b * x.seq, (b + 1) * x.seq),
      );
      const real = realKeyMask(rows, nh), padded = real.map((r) => 1 - r);
      check(errs, `${tag}: ${name} (real keys)`, o.data, ref[name], TOL, {
        floor: UNIT_FLOOR,
        where: real,
      });
      const pad = maxAbsErr(o.data, ref[name], padded);
      record(errs, `${tag}: ${name} (padded keys, abs)`, pad);
      assert.ok(pad <= PADDED_ABS_TOL, `${tag} ${name}: padded keys |error| ${pad}`);
      continue;
    }
    if (name === "logits" && cfg.id2label) {
      assert.deepEqual(o.dims, [x.batch, Object.keys(cfg.id2label).length]);
    }
    if (name === "mlm_logits" || (name === "logits" && !cfg.id2label)) {
      assert.deepEqual(o.dims, [x.batch, x.seq, cfg.vocab_size]);
    }
    check(errs, `${tag}: ${name}`, o.data, ref[name], TOL, { floor: UNIT_FLOOR });
  }
  return names;
}

/**
 * The entries of `wide` (a run on {@link widen}`(x, rows, extra)`) that lie in `x`'s first `rows`
 * rows and columns, laid out as `x`'s first rows: per output, the sequence axes cut to `x.seq`.
 */
function narrow(name: string, wide: InferenceOutput, seq: number): Float32Array {
  const [B, ...rest] = wide.dims;
  const out: number[] = [];
  const d = wide.data;
  if (name.startsWith("attention_scores_")) {
    const [h, S] = rest;
    for (let b = 0; b < B; b++) {
      for (let k = 0; k < h; k++) {
        for (let i = 0; i < seq; i++) {
          const at = ((b * h + k) * S + i) * S;
          out.push(...d.subarray(at, at + seq));
        }
      }
    }
  } else if (rest.length === 2) { // [B, S, width]
    const [S, w] = rest;
    for (let b = 0; b < B; b++) out.push(...d.subarray(b * S * w, (b * S + seq) * w));
  } else out.push(...d); // [B, C]
  return Float32Array.from(out);
}

// ---------------------------------------------------------------------------------------------
// parity

const MODELS: [string, Partial<BertConfig>, BertHeads][] = [
  ["main (4 heads, classifier + MLM)", MAIN, { classifier: true, mlm: true }],
  ["odd (1 head, 13 wide, gelu_new)", ODD, { classifier: true, mlm: false }],
  ["relu, MLM only", RELU_MLM, { classifier: false, mlm: true }],
];

/** The executors every parity test runs the export on. */
const ENGINES: { name: string; engine?: EngineRef }[] = [
  { name: "onnxruntime" },
  { name: "tfjs/wasm", engine: { kind: "tfjs", backend: "wasm" } },
  { name: "tfjs/cpu", engine: { kind: "tfjs", backend: "cpu" } },
];

for (const [label, cfg, heads] of MODELS) {
  Deno.test({
    name:
      `the export on ONNX Runtime and tfjs (wasm, cpu) matches float64 PyTorch on every output: ${label}`,
    ignore: !PYTHON,
    async fn() {
      const bert = randomModel(cfg, heads, 11);
      const config = bert.config, L = config.num_hidden_layers;
      const x = makeBatch(config, 3, 9, 1);
      // the batch and sequence axes are dynamic: 2 of the rows with 5 more padding columns
      const wide = widen(x, 2, 5);
      const ref = await torchOutputs(bert, x);
      const errs: Errors = new Map();
      const expected = [
        ...Array.from({ length: L + 1 }, (_, i) => `hidden_state_${i}`),
        ...Array.from({ length: L }, (_, l) => `attention_scores_${l}`),
        ...(heads.classifier ? ["logits"] : []),
        // transformers.js reads a masked-LM model's output as `logits`
        ...(heads.mlm ? [heads.classifier ? "mlm_logits" : "logits"] : []),
        "last_hidden_state",
      ];
      const fp32: Record<string, InferenceOutput> = {};
      for (const { name, engine } of ENGINES) {
        const inf = await openInference(bert, { outputs: "all", engine, threads: 2 });
        try {
          assert.equal(inf.engine, engine ? name : "onnxruntime/cpu");
          assert.deepEqual([...inf.outputNames].sort(), [...expected].sort(), name);
          const out = await inf.run(inputsOf(x));
          compareAll(errs, out, ref, x, config, name);
          if (!engine) Object.assign(fp32, out);
          // same session, another shape: the rows' outputs do not change (padded keys add 0)
          const w = await inf.run(inputsOf(wide));
          assert.deepEqual(w.hidden_state_0.dims, [2, 14, config.hidden_size]);
          for (const k of expected) {
            const first = out[k].data.subarray(0, out[k].data.length / 3 * 2); // rows 0 and 1
            check(errs, `${name}: ${k} in a wider batch`, narrow(k, w[k], 9), first, TOL, {
              floor: UNIT_FLOOR,
            });
          }
        } finally {
          await inf.close();
        }
      }

      // the logits-only export gives the same head outputs, fed BigInt64Array inputs
      const small = await openInference(exportOnnx(bert), { threads: 1 });
      try {
        const headNames = expected.filter((n) => !n.includes("_state_") && !n.includes("scores"));
        assert.deepEqual([...small.outputNames].sort(), headNames.sort());
        const out = await small.run({
          inputIds: BigInt64Array.from(x.ids, BigInt),
          attentionMask: BigInt64Array.from(x.mask, BigInt),
          tokenTypeIds: BigInt64Array.from(x.types, BigInt),
          batch: x.batch,
          seq: x.seq,
        });
        for (const n of headNames) assert.deepEqual(out[n].data, fp32[n].data, n);
      } finally {
        await small.close();
      }

      // fp16 weights: the head outputs and last hidden state within FP16_TOL of torch; half the file
      const fp16 = exportOnnx(bert, { dtype: "fp16" });
      const f16 = await openInference(fp16, { threads: 1 });
      try {
        const o16 = await f16.run(inputsOf(x));
        for (const n of Object.keys(o16)) {
          check(errs, `onnxruntime fp16: ${n}`, o16[n].data, ref[n], FP16_TOL, {
            floor: FP16_FLOOR,
          });
        }
        // every weight stored once: 2 bytes each as float16, 4 as float32
        // (the pooler only feeds the classifier: not exported without one)
        const params = [...bert.params].filter(([n]) =>
          heads.classifier || !n.startsWith("pooler.")
        )
          .reduce((n, [, w]) => n + w.data.length, 0);
        assert.equal(initializerBytes(fp16, 10), 2 * params);
        assert.equal(initializerBytes(fp16, 1), initializerBytes(exportOnnx(bert), 1) - 4 * params);
      } finally {
        await f16.close();
      }
      // the worst errors of this model, for the record (each was asserted above)
      console.log(`max errors vs float64 torch (${label}; relative unless marked abs):`);
      console.table(Object.fromEntries([...errs].sort().map(([k, v]) => [k, v.toExponential(2)])));
    },
  });
}

// ---------------------------------------------------------------------------------------------
// header, folder layout, errors

Deno.test("the model header: ir_version 8, default-domain opset, dynamic int64 inputs", () => {
  const model = readFields(exportOnnx(Bert.create(ODD, { classifier: true, mlm: false }, 2)));
  const get = (fs: ReturnType<typeof readFields>, n: number) => fs.filter((f) => f.field === n);
  assert.equal(get(model, 1)[0].value, 8n);
  const opset = readFields(get(model, 8)[0].value as Uint8Array);
  assert.deepEqual(opset.find((f) => f.field === 2)?.value, BigInt(ONNX_OPSET));
  assert.ok(ONNX_OPSET >= 14);
  const graph = readFields(get(model, 7)[0].value as Uint8Array);
  const inputs = get(graph, 11).map((f) => readFields(f.value as Uint8Array));
  const dec = new TextDecoder();
  assert.deepEqual(
    inputs.map((i) => dec.decode(i[0].value as Uint8Array)),
    ["input_ids", "attention_mask", "token_type_ids"],
  );
  for (const i of inputs) {
    const tensorType = readFields(readFields(i[1].value as Uint8Array)[0].value as Uint8Array);
    assert.equal(tensorType[0].value, 7n); // INT64
    const dims = readFields(tensorType[1].value as Uint8Array).map((d) =>
      readFields(d.value as Uint8Array)[0]
    );
    assert.deepEqual(dims.map((d) => [d.field, dec.decode(d.value as Uint8Array)]), [
      [2, "batch"],
      [2, "sequence"],
    ]);
  }
});

Deno.test("saveOnnxFolder writes the transformers.js layout, loadable by path", async () => {
  await withTempDir(async (dir) => {
    const bert = Bert.create(MAIN, { classifier: true, mlm: true }, 5);
    const vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    for (let i = vocab.length; i < 60; i++) vocab.push(`w${i}`);
    const tokenizer = BertTokenizer.fromVocab(vocab, { doLowerCase: true });
    const written = await saveOnnxFolder(bert, dir, { tokenizer });
    for (
      const f of [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "onnx/model.onnx",
        "onnx/model_fp16.onnx",
        "onnx/model_quantized.onnx",
      ]
    ) {
      assert.ok((await Deno.stat(join(dir, f))).size > 0, f);
      assert.ok(written.includes(join(dir, f)), `${f} reported`);
    }
    const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    assert.equal(config.model_type, "bert");
    assert.deepEqual(config.architectures, ["BertForSequenceClassification"]);
    assert.equal(config.hidden_size, 32);
    // no temporary files left behind
    for await (const e of Deno.readDir(join(dir, "onnx"))) assert.ok(!e.name.endsWith(".tmp"));
    // the files are the exports of the model (the export is deterministic)
    const onnx = (f: string) => Deno.readFile(join(dir, "onnx", f));
    assert.deepEqual(await onnx("model.onnx"), exportOnnx(bert));
    assert.deepEqual(await onnx("model_fp16.onnx"), exportOnnx(bert, { dtype: "fp16" }));
    assert.deepEqual(await onnx("model_quantized.onnx"), exportOnnx(bert, { dtype: "q8" }));

    // loaded by path, its logits are those of the model's graph interpreted by tfjs
    const byPath = await openInference(join(dir, "onnx", "model.onnx"));
    const tfjs = await openInference(bert, { engine: { kind: "tfjs", backend: "wasm" } });
    try {
      const enc = tokenizer.encode("w7 w9 w11");
      const ids = Int32Array.from(enc.inputIds);
      const x = { inputIds: ids, batch: 1, seq: ids.length };
      const out = await byPath.run(x, ["logits"]);
      assert.deepEqual(Object.keys(out), ["logits"]);
      assert.deepEqual(out.logits.dims, [1, 3]);
      const ref = await tfjs.run(x, ["logits"]);
      assert.ok(relErr(out.logits.data, ref.logits.data, { floor: UNIT_FLOOR }) <= 1e-4);
    } finally {
      await byPath.close();
      await tfjs.close();
    }
  });
});

Deno.test("invalid models and misuse give clear errors", async () => {
  await assert.rejects(
    () => openInference(new Uint8Array([0x08, 0x96, 0x01, 0xff, 0xff, 0x12])),
    (e: unknown) =>
      e instanceof OnnxLoadError && /cannot load ONNX model from <6 bytes>/.test(e.message),
  );
  await assert.rejects(() => openInference(new Uint8Array()), /empty/);
  await assert.rejects(() => openInference("/nonexistent/model.onnx"), OnnxLoadError);
  const bert = Bert.create(ODD, { classifier: true, mlm: false }, 4);
  // a file runs on ONNX Runtime only; tfjs interprets graphs it builds from a model
  await assert.rejects(
    () => openInference(exportOnnx(bert), { engine: { kind: "tfjs", backend: "wasm" } }),
    /an ONNX file runs on ONNX Runtime only/,
  );
  assert.throws(() => exportOnnx(bert, { dtype: "int4" as "q8" }), /dtype must be/);
  assert.throws(() => exportOnnx(bert, { outputs: "some" as "all" }), /outputs must be/);

  for (const engine of [undefined, { kind: "tfjs", backend: "wasm" }] as const) {
    const inf = await openInference(bert, { engine });
    const x = { inputIds: new Int32Array(6), batch: 2, seq: 3 };
    await assert.rejects(() => inf.run(x, ["nope"]), /no output 'nope'/, inf.engine);
    await assert.rejects(() => inf.run({ ...x, seq: 4 }), /inputIds has 6 values, want 8/);
    await assert.rejects(() => inf.run({ ...x, seq: 0 }), /positive integers/);
    await assert.rejects(
      () => inf.run({ ...x, attentionMask: new Int32Array(5) }),
      /attentionMask has 5 values, want 6/,
    );
    assert.deepEqual(Object.keys(await inf.run(x)).sort(), ["last_hidden_state", "logits"]);
    await inf.close();
    await inf.close(); // idempotent
    await assert.rejects(() => inf.run(x), /closed/, inf.engine);
  }
});
