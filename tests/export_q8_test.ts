/**
 * What the int8 export (`dtype: "q8"`, `onnx/model_quantized.onnx`) stores, read back from the
 * file's initializers: every quantized Linear has one scale per output channel, max|row|/127 of
 * that channel of the float weight, and its int8 values dequantize to within scale/2 of it; the
 * word embeddings (when no MLM decoder shares them) likewise per row; the pooler and the heads
 * (sequence classifier, token classifier, `qa_outputs`) are float32 with the model's values; and
 * nothing else is int8.
 *
 * The initializers are matched by value, not by name, so the checks hold for any naming or
 * layout ([out, in] or [in, out]) of the export.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Bert, type BertHeads } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { exportOnnx, saveOnnxFolder } from "../pipeline/graph/export.ts";
import { readFields } from "../pipeline/graph/protobuf.ts";
import { rng, withTempDir } from "./_util.ts";

/** `TensorProto.DataType` values of onnx.proto. */
const FLOAT = 1, INT8 = 3;

interface Initializer {
  name: string;
  type: number;
  dims: number[];
  /** FLOAT and INT8 initializers only. */
  data?: Float32Array | Int8Array;
}

/** Decode a packed or unpacked repeated varint field. */
function varints(fields: ReturnType<typeof readFields>, field: number): bigint[] {
  const out: bigint[] = [];
  for (const f of fields.filter((x) => x.field === field)) {
    if (typeof f.value === "bigint") out.push(f.value);
    else if (f.value instanceof Uint8Array) {
      let pos = 0;
      const buf = f.value;
      while (pos < buf.length) {
        let v = 0n, shift = 0n;
        for (;;) {
          const b = buf[pos++];
          v |= BigInt(b & 0x7f) << shift;
          shift += 7n;
          if ((b & 0x80) === 0) break;
        }
        out.push(v);
      }
    }
  }
  return out;
}

/** The initializers of an ONNX model (ModelProto.graph = 7, GraphProto.initializer = 5). */
function initializers(model: Uint8Array): Initializer[] {
  const graph = readFields(readFields(model).find((f) => f.field === 7)!.value as Uint8Array);
  const dec = new TextDecoder();
  return graph.filter((f) => f.field === 5).map((g) => {
    const t = readFields(g.value as Uint8Array);
    const name = dec.decode(t.find((x) => x.field === 8)?.value as Uint8Array);
    const type = Number(t.find((x) => x.field === 2)!.value);
    const dims = varints(t, 1).map(Number);
    const raw = t.find((x) => x.field === 9)?.value as Uint8Array | undefined;
    const bytes = raw ? raw.slice() : undefined; // copied: aligned for the typed views
    let data: Float32Array | Int8Array | undefined;
    if (type === FLOAT) {
      const floats = t.find((x) => x.field === 4)?.value as Uint8Array | undefined; // float_data
      data = bytes
        ? new Float32Array(bytes.buffer)
        : new Float32Array((floats ?? new Uint8Array()).slice().buffer);
    } else if (type === INT8) {
      data = bytes
        ? new Int8Array(bytes.buffer)
        : Int8Array.from(varints(t, 5), (v) => Number(BigInt.asIntN(32, v))); // int32_data
    }
    return { name, type, dims, data };
  });
}

const CONFIG: Partial<BertConfig> = {
  vocab_size: 50,
  hidden_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 3,
  intermediate_size: 40,
  max_position_embeddings: 32,
  initializer_range: 0.2,
};
const LABELS = { "0": "a", "1": "b", "2": "c" };

/** The float32 weights of a matrix `[rows, cols]` of the model, and their per-row max|w|/127. */
function rowScales(w: Float32Array, rows: number, cols: number): number[] {
  return Array.from({ length: rows }, (_, r) => {
    let max = 0;
    for (let c = 0; c < cols; c++) max = Math.max(max, Math.abs(w[r * cols + c]));
    return max / 127;
  });
}

/**
 * Find the int8 matrix and the scale vector that store the `[rows, cols]` weight `w`, one scale
 * per row (output channel): the scale must equal max|row|/127 (to float32 rounding; any positive
 * scale for an all-zero row) and every `q · scale[row]` be within scale/2 of `w`. Returns the int8 initializer's name.
 */
function findPerRowQ8(
  inits: Initializer[],
  name: string,
  w: Float32Array,
  rows: number,
  cols: number,
): string {
  const want = rowScales(w, rows, cols);
  const scales = inits.filter((i) =>
    i.type === FLOAT && i.data!.length === rows &&
    // an all-zero row (the padding token's embedding) may have any positive scale; its q is 0
    want.every((s, r) => s === 0 ? i.data![r] > 0 : Math.abs(i.data![r] - s) <= 1e-6 * s)
  );
  const nearby = inits.filter((i) => i.name.includes(name)).map((i) =>
    `${i.name} (type ${i.type}, dims [${i.dims}])`
  );
  assert.ok(
    scales.length > 0,
    `${name}: no float32 initializer holds one scale per output channel (${rows}) equal to ` +
      `max|row|/127; initializers named like it: ${nearby.join(", ")}`,
  );
  const s = scales[0].data as Float32Array;
  const fits = (q: Int8Array, transposed: boolean): boolean => {
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = q[transposed ? c * rows + r : r * cols + c];
        if (Math.abs(v * s[r] - w[r * cols + c]) > (s[r] / 2) * (1 + 1e-5)) return false;
      }
    }
    return true;
  };
  const q = inits.find((i) =>
    i.type === INT8 && i.data!.length === rows * cols &&
    ((i.dims[0] === rows && fits(i.data as Int8Array, false)) ||
      (i.dims[0] === cols && fits(i.data as Int8Array, true)))
  );
  assert.ok(
    q,
    `${name}: no int8 initializer dequantizes with its per-channel scales to within scale/2 of ` +
      `the float weight; initializers named like it: ${nearby.join(", ")}`,
  );
  return q.name;
}

/** Assert that the model's `name` is stored as a float32 initializer with its exact values. */
function assertFloat32(inits: Initializer[], name: string, w: Float32Array, shape: number[]) {
  const same = (a: Float32Array, b: Float32Array) => a.every((x, i) => Object.is(x, b[i]));
  const t = shape.length === 2 ? transposed(w, shape[0], shape[1]) : w;
  const hit = inits.find((i) =>
    i.type === FLOAT && i.data!.length === w.length &&
    (same(i.data as Float32Array, w) || same(i.data as Float32Array, t))
  );
  const nearby = inits.filter((i) => i.name.includes(name)).map((i) =>
    `${i.name} (type ${i.type}, dims [${i.dims}])`
  );
  assert.ok(
    hit,
    `${name}: not a float32 initializer equal to the model's; named like it: ${nearby}`,
  );
}

function transposed(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

const LINEARS = [
  "attention.self.query",
  "attention.self.key",
  "attention.self.value",
  "attention.output.dense",
  "intermediate.dense",
  "output.dense",
];

const CASES: Record<string, { heads: Partial<BertHeads>; labels?: boolean; float: string[] }> = {
  "sequence classifier": {
    heads: { classifier: true },
    labels: true,
    float: ["pooler.dense", "classifier"],
  },
  "token classifier": {
    heads: { classifier: true, tokenClassifier: true },
    labels: true,
    float: ["classifier"],
  },
  "question answering": { heads: { classifier: false, qa: true }, float: ["qa_outputs"] },
  "masked LM": { heads: { classifier: false, mlm: true }, float: [] },
};

for (const [kind, c] of Object.entries(CASES)) {
  Deno.test(`q8 export of a ${kind} model: per-output-channel int8 Linears (max|row|/127, within scale/2), float32 pooler and heads, nothing else int8`, async () => {
    const bert = Bert.create({ ...CONFIG, id2label: c.labels ? LABELS : undefined }, {
      mlm: false,
      ...c.heads,
    }, 7);
    try {
      // Bert.create zeroes the biases: draw them, so that a bias matches only its own values
      const r = rng(11);
      for (const [name, v] of bert.params) {
        if (!name.endsWith(".bias")) continue;
        for (let i = 0; i < v.data.length; i++) v.data[i] = r() - 0.5;
      }
      let file: Uint8Array = new Uint8Array();
      if (kind === "sequence classifier") {
        // through the folder transformers.js loads, as the default job writes it
        await withTempDir(async (dir) => {
          await saveOnnxFolder(bert, dir, { fp16: false });
          file = await Deno.readFile(join(dir, "onnx", "model_quantized.onnx"));
        });
      } else {
        // a masked LM's export with the MLM head on chosen rows too (augment's graph) builds the
        // head twice: its int8 transform is still stored once
        file = exportOnnx(bert, { dtype: "q8", mlmRows: !!c.heads.mlm });
      }
      const inits = initializers(file);
      const weight = (n: string) => bert.p(n).data;

      // the pooler and the heads stay float32, with the model's values
      for (const head of c.float) {
        for (const n of [`${head}.weight`, `${head}.bias`]) {
          assertFloat32(inits, n, weight(n), bert.p(n).shape);
        }
      }

      const quantized = [];
      for (let l = 0; l < CONFIG.num_hidden_layers!; l++) {
        for (const lin of LINEARS) quantized.push(`encoder.layer.${l}.${lin}.weight`);
      }
      // the MLM transform is quantized; the word embeddings too, unless the decoder shares them
      if (c.heads.mlm) quantized.push("cls.predictions.transform.dense.weight");
      else quantized.push("embeddings.word_embeddings.weight");
      const int8Names = quantized.map((n) => {
        const [rows, cols] = bert.p(n).shape;
        return findPerRowQ8(inits, n, weight(n), rows, cols);
      });
      assert.equal(new Set(int8Names).size, quantized.length);
      assert.deepEqual(
        inits.filter((i) => i.type === INT8).map((i) => i.name).sort(),
        [...int8Names].sort(),
        "the int8 initializers are exactly the quantized Linears and word embeddings",
      );
    } finally {
      bert.dispose();
    }
  });
}
