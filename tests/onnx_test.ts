/**
 * ONNX export + ONNX Runtime engine: the protobuf encoder, the model header, parity with the
 * tfjs forward (cpu and wasm) on every output, dynamic axes, fp16 weights, the transformers.js
 * folder layout, and load errors.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type BackendName, setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert, type BertHeads } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { BertTokenizer } from "../pipeline/model/tokenizer/tokenizer.ts";
import {
  exportOnnx,
  mlmOutputName,
  ONNX_OPSET,
  saveOnnxFolder,
  toFloat16Bits,
} from "../pipeline/onnx/export.ts";
import { OnnxEngine, OnnxLoadError, type OnnxOutput } from "../pipeline/onnx/engine.ts";
import { ProtoWriter, readFields } from "../pipeline/onnx/protobuf.ts";
import { maxAbsErr, realKeyMask, relErr, rng, UNIT_FLOOR, withTempDir } from "./_util.ts";

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
  initializer_range: 0.2,
};
// one head, odd sizes, the tanh GELU, a 2-label classifier and no MLM head
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
  initializer_range: 0.3,
};
// relu, MLM head only
const RELU_MLM: Partial<BertConfig> = { ...MAIN, hidden_act: "relu", id2label: undefined };

interface HostModel {
  config: BertConfig;
  heads: BertHeads;
  weights: Map<string, { shape: number[]; data: Float32Array }>;
}

/** A random model, held as host arrays so every backend gets bit-identical weights. */
async function hostModel(cfg: Partial<BertConfig>, heads: BertHeads, seed: number) {
  await setBackend("cpu");
  const bert = Bert.create(cfg, heads, seed);
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [n, v] of bert.params) {
    weights.set(n, { shape: v.shape, data: Float32Array.from(v.dataSync()) });
  }
  const bytes = {
    all: exportOnnx(bert, { outputs: "all" }),
    logits: exportOnnx(bert),
    fp16: exportOnnx(bert, { dtype: "fp16" }),
  };
  const host: HostModel = { config: bert.config, heads: bert.heads, weights };
  bert.dispose();
  return { host, bytes };
}

function rebuild(m: HostModel): Bert {
  const t = new Map<string, tf.Tensor>();
  for (const [n, w] of m.weights) t.set(n, tf.tensor(w.data, w.shape));
  return new Bert(m.config, m.heads, t);
}

interface Batch {
  ids: Int32Array;
  mask: Int32Array;
  types: Int32Array;
  batch: number;
  seq: number;
}

/** Padded rows (row b has seq − 2b real tokens, at least 2) with token types 0 then 1. */
function makeBatch(cfg: BertConfig, batch: number, seq: number, seed: number): Batch {
  const r = rng(seed);
  const n = batch * seq;
  const ids = new Int32Array(n), mask = new Int32Array(n), types = new Int32Array(n);
  for (let b = 0; b < batch; b++) {
    const len = Math.max(2, seq - 2 * b);
    for (let s = 0; s < seq; s++) {
      const i = b * seq + s;
      if (s < len) {
        ids[i] = 1 + Math.floor(r() * (cfg.vocab_size - 1));
        mask[i] = 1;
        types[i] = s >= Math.floor(len / 2) ? Math.min(1, cfg.type_vocab_size - 1) : 0;
      }
    }
  }
  return { ids, mask, types, batch, seq };
}

/** The tfjs outputs under the ONNX names. */
function tfjsOutputs(bert: Bert, x: Batch): Record<string, Float32Array> {
  const shape: [number, number] = [x.batch, x.seq];
  const inputs = {
    inputIds: tf.tensor2d(x.ids, shape, "int32"),
    attentionMask: tf.tensor2d(x.mask, shape, "int32"),
    tokenTypeIds: tf.tensor2d(x.types, shape, "int32"),
  };
  const o = bert.forward(inputs, { mlm: true });
  const out: Record<string, Float32Array> = {};
  o.hiddenStates.forEach((t, i) => out[`hidden_state_${i}`] = Float32Array.from(t.dataSync()));
  // the encoder output, which transformers.js' feature-extraction pipeline reads
  out.last_hidden_state = Float32Array.from(o.hiddenStates.at(-1)!.dataSync());
  o.attentionScores.forEach((t, l) => {
    out[`attention_scores_${l}`] = Float32Array.from(t.dataSync());
  });
  if (o.logits) out.logits = Float32Array.from(o.logits.dataSync());
  if (o.mlmLogits) out[mlmOutputName(bert)] = Float32Array.from(o.mlmLogits.dataSync());
  tf.dispose([...Object.values(inputs), ...o.hiddenStates, ...o.attentionScores, o.pooled]);
  tf.dispose([o.logits, o.mlmLogits].filter((t) => t !== undefined));
  return out;
}

/**
 * Absolute bound on the padded key columns of the attention scores (−10000 + s): float32 resolves
 * them only to ≈ 5e-4, on either side.
 */
const PADDED_ABS_TOL = 2e-3;
/**
 * relErr floor of the fp16-weight export's outputs (logits of order 0.5–4): half-precision
 * weights move every output by an absolute amount that scales with the model's values, not with
 * each entry, so entries below 0.3 are held to tol · 0.3.
 */
const FP16_FLOOR = 0.3;

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
  got: OnnxOutput,
  want: Float32Array,
  tol: number,
  tag: string,
  opts: { floor: number; where?: Uint8Array },
) {
  const e = relErr(got.data, want, opts);
  record(errs, name, e);
  assert.ok(e <= tol, `${tag} ${name}: relative error ${e.toExponential(3)} > ${tol}`);
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

/** Compare every ONNX output with tfjs on one batch; returns the names compared. */
function compareAll(
  errs: Errors,
  onnx: Record<string, OnnxOutput>,
  ref: Record<string, Float32Array>,
  x: Batch,
  cfg: BertConfig,
  tag: string,
): string[] {
  const names = Object.keys(onnx).sort();
  assert.deepEqual(names, Object.keys(ref).sort(), `${tag}: output names`);
  for (const name of names) {
    const o = onnx[name];
    if (name.startsWith("hidden_state_") || name === "last_hidden_state") {
      assert.deepEqual(o.dims, [x.batch, x.seq, cfg.hidden_size]);
    }
    if (name.startsWith("attention_scores_")) {
      const nh = cfg.num_attention_heads;
      assert.deepEqual(o.dims, [x.batch, nh, x.seq, x.seq]);
      // real key columns per element; the padded ones (−10000 + s) absolutely
      const rows = Array.from(
        { length: x.batch },
        (_, b) => x.mask.subarray(b * x.seq, (b + 1) * x.seq),
      );
      const real = realKeyMask(rows, nh), padded = real.map((r) => 1 - r);
      check(errs, `${name} (real keys)`, o, ref[name], 1e-4, tag, {
        floor: UNIT_FLOOR,
        where: real,
      });
      const pad = maxAbsErr(o.data, ref[name], padded);
      record(errs, `${name} (padded keys, abs)`, pad);
      assert.ok(pad <= PADDED_ABS_TOL, `${tag} ${name}: padded keys |error| ${pad}`);
      continue;
    }
    if (name === "logits" && cfg.id2label) {
      assert.deepEqual(o.dims, [x.batch, Object.keys(cfg.id2label).length]);
    }
    if (name === "mlm_logits" || (name === "logits" && !cfg.id2label)) {
      assert.deepEqual(o.dims, [x.batch, x.seq, cfg.vocab_size]);
    }
    check(errs, name, o, ref[name], 1e-4, tag, { floor: UNIT_FLOOR });
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// parity

const MODELS: [string, Partial<BertConfig>, BertHeads][] = [
  ["main (4 heads, classifier + MLM)", MAIN, { classifier: true, mlm: true }],
  ["odd (1 head, 13 wide, gelu_new)", ODD, { classifier: true, mlm: false }],
  ["relu, MLM only", RELU_MLM, { classifier: false, mlm: true }],
];

for (const [label, cfg, heads] of MODELS) {
  Deno.test(`ONNX Runtime matches tfjs (cpu, wasm) on every output: ${label}`, async () => {
    const { host, bytes } = await hostModel(cfg, heads, 11);
    const engine = await OnnxEngine.load(bytes.all, { threads: 2 });
    const errs: Errors = new Map();
    try {
      const L = host.config.num_hidden_layers;
      const expected = [
        ...Array.from({ length: L + 1 }, (_, i) => `hidden_state_${i}`),
        ...Array.from({ length: L }, (_, l) => `attention_scores_${l}`),
        ...(heads.classifier ? ["logits"] : []),
        // transformers.js reads a masked-LM model's output as `logits`
        ...(heads.mlm ? [heads.classifier ? "mlm_logits" : "logits"] : []),
        "last_hidden_state",
      ];
      assert.deepEqual([...engine.outputNames].sort(), expected.sort());
      // two shapes through the same session: the batch and sequence axes are dynamic
      const batches = [makeBatch(host.config, 3, 9, 1), makeBatch(host.config, 2, 14, 2)];
      const onnx: Record<string, OnnxOutput>[] = [];
      for (const x of batches) {
        onnx.push(
          await engine.run({
            inputIds: x.ids,
            attentionMask: x.mask,
            tokenTypeIds: x.types,
            batch: x.batch,
            seq: x.seq,
          }),
        );
      }
      for (const backend of ["cpu", "wasm"] as BackendName[]) {
        await setBackend(backend);
        const bert = rebuild(host);
        batches.forEach((x, i) => {
          compareAll(errs, onnx[i], tfjsOutputs(bert, x), x, host.config, `${label} ${backend}`);
        });
        bert.dispose();
      }

      // the logits-only export gives the same logits, fed BigInt64Array inputs
      const small = await OnnxEngine.load(bytes.logits, { threads: 1 });
      try {
        const x = batches[0];
        const out = await small.run({
          inputIds: BigInt64Array.from(x.ids, BigInt),
          attentionMask: BigInt64Array.from(x.mask, BigInt),
          tokenTypeIds: BigInt64Array.from(x.types, BigInt),
          batch: x.batch,
          seq: x.seq,
        });
        const want = "logits";
        assert.deepEqual(
          Object.keys(out).sort(),
          [...expected.filter((n) => !n.includes("_state_") && !n.includes("scores"))].sort(),
        );
        assert.deepEqual(out[want].data, onnx[0][want].data);

        // fp16 weights: loose tolerance, half the file
        const f16 = await OnnxEngine.load(bytes.fp16);
        try {
          const o16 = await f16.run({
            inputIds: x.ids,
            attentionMask: x.mask,
            tokenTypeIds: x.types,
            batch: x.batch,
            seq: x.seq,
          });
          check(errs, `fp16 ${want}`, o16[want], onnx[0][want].data, 2e-2, `${label}`, {
            floor: FP16_FLOOR,
          });
          // every weight stored once: 2 bytes each as float16, 4 as float32
          // (the pooler only feeds the classifier: not exported without one)
          const params = [...host.weights].filter(([n]) =>
            heads.classifier || !n.startsWith("pooler.")
          )
            .reduce((n, [, w]) => n + w.data.length, 0);
          assert.equal(initializerBytes(bytes.fp16, 10), 2 * params);
          assert.equal(
            initializerBytes(bytes.fp16, 1),
            initializerBytes(bytes.logits, 1) - 4 * params,
          );
        } finally {
          await f16.close();
        }
      } finally {
        await small.close();
      }
      // the worst errors of this model, for the record (each was asserted above)
      console.log(`max errors vs tfjs (${label}; relative unless marked abs):`);
      console.table(Object.fromEntries([...errs].sort().map(([k, v]) => [k, v.toExponential(2)])));
    } finally {
      await engine.close();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// header, folder layout, errors

Deno.test("the model header: ir_version 8, default-domain opset, dynamic int64 inputs", async () => {
  const { bytes } = await hostModel(ODD, { classifier: true, mlm: false }, 2);
  const model = readFields(bytes.logits);
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
    await setBackend("cpu");
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

    const engine = await OnnxEngine.load(join(dir, "onnx", "model.onnx"));
    try {
      const enc = tokenizer.encode("w7 w9 w11");
      const ids = Int32Array.from(enc.inputIds);
      const out = await engine.run({ inputIds: ids, batch: 1, seq: ids.length }, ["logits"]);
      assert.deepEqual(Object.keys(out), ["logits"]);
      const ref = tf.tidy(() =>
        bert.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32") }).logits!.dataSync()
      );
      assert.ok(relErr(out.logits.data, ref) <= 1e-4);
    } finally {
      await engine.close();
    }
    bert.dispose();
  });
});

Deno.test("invalid models and misuse give clear errors", async () => {
  await assert.rejects(
    () => OnnxEngine.load(new Uint8Array([0x08, 0x96, 0x01, 0xff, 0xff, 0x12])),
    (e: unknown) =>
      e instanceof OnnxLoadError && /cannot load ONNX model from <6 bytes>/.test(e.message),
  );
  await assert.rejects(() => OnnxEngine.load(new Uint8Array()), /empty/);
  await assert.rejects(() => OnnxEngine.load("/nonexistent/model.onnx"), OnnxLoadError);

  const { bytes } = await hostModel(ODD, { classifier: true, mlm: false }, 4);
  const engine = await OnnxEngine.load(bytes.logits);
  const x = { inputIds: new Int32Array(6), batch: 2, seq: 3 };
  await assert.rejects(() => engine.run(x, ["nope"]), /no output 'nope'/);
  await assert.rejects(() => engine.run({ ...x, seq: 4 }), /inputIds has 6 values, want 8/);
  await engine.close();
  await engine.close(); // idempotent
  await assert.rejects(() => engine.run(x), /closed/);
});
