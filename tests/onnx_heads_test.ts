/**
 * ONNX export of the per-token heads: a token-classification model (`logits [batch, seq, labels]`)
 * and an extractive-QA model (`start_logits`, `end_logits`, each `[batch, seq]`), with HF's output
 * names, no pooler, equal to `Bert.forward`'s `tokenLogits` / `spanLogits` per element on a
 * padded batch, for fp32, fp16 and q8 weights and with `outputs: "all"`; and the folder
 * `saveOnnxFolder` writes for them.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert, type BertHeads } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { exportOnnx, saveOnnxFolder } from "../pipeline/onnx/export.ts";
import { OnnxEngine, type OnnxOutput } from "../pipeline/onnx/engine.ts";
import { DataType } from "../pipeline/onnx/graph.ts";
import { readFields } from "../pipeline/onnx/protobuf.ts";
import { maxAbsErr, relErr, rng, UNIT_FLOOR, withTempDir } from "./_util.ts";

await setBackend("cpu");

const TAGS = { "0": "O", "1": "B-PER", "2": "I-PER", "3": "B-LOC", "4": "I-LOC" };
const BASE: Partial<BertConfig> = {
  vocab_size: 50,
  hidden_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 3,
  intermediate_size: 40,
  max_position_embeddings: 32,
  initializer_range: 0.2,
};

type Kind = "token" | "qa";
const HEADS: Record<Kind, Partial<BertHeads>> = {
  token: { classifier: true, tokenClassifier: true },
  qa: { classifier: false, qa: true },
};

/**
 * A random model of `kind`. `Bert.create` zeroes every bias and sets the LayerNorm weights to 1;
 * they are drawn at random here, so that an export that drops a bias (the head's included) or a
 * LayerNorm parameter gives other numbers.
 */
function randomModel(kind: Kind, seed: number): Bert {
  const bert = Bert.create({ ...BASE, id2label: kind === "token" ? TAGS : undefined }, {
    mlm: false,
    ...HEADS[kind],
  }, seed);
  const r = rng(seed + 100);
  for (const [name, v] of bert.params) {
    const isBias = name.endsWith(".bias"), isScale = name.endsWith("LayerNorm.weight");
    if (!isBias && !isScale) continue;
    const data = Float32Array.from({ length: v.size }, () => (isScale ? 1 : 0) + (r() - 0.5) * 0.6);
    v.assign(tf.tensor(data, v.shape));
  }
  return bert;
}

interface Batch {
  ids: Int32Array;
  mask: Int32Array;
  types: Int32Array;
  batch: number;
  seq: number;
}

/** Row b has `lens[b]` real tokens (the rest padding, id 0), token type 1 on its second half. */
function makeBatch(lens: number[], seq: number, seed: number): Batch {
  const r = rng(seed);
  const batch = lens.length, n = batch * seq;
  const ids = new Int32Array(n), mask = new Int32Array(n), types = new Int32Array(n);
  lens.forEach((len, b) => {
    for (let s = 0; s < len; s++) {
      const i = b * seq + s;
      ids[i] = 1 + Math.floor(r() * (BASE.vocab_size! - 1));
      mask[i] = 1;
      types[i] = s >= Math.floor(len / 2) ? 1 : 0;
    }
  });
  return { ids, mask, types, batch, seq };
}

/** tinystill's head outputs under the ONNX names (QA: `spanLogits[..., 0]` / `[..., 1]`). */
function reference(bert: Bert, x: Batch): Record<string, Float32Array> {
  return tf.tidy(() => {
    const shape: [number, number] = [x.batch, x.seq];
    const o = bert.forward({
      inputIds: tf.tensor2d(x.ids, shape, "int32"),
      attentionMask: tf.tensor2d(x.mask, shape, "int32"),
      tokenTypeIds: tf.tensor2d(x.types, shape, "int32"),
    }, { attentionScores: false, hiddenStates: false });
    const out: Record<string, Float32Array> = {
      last_hidden_state: Float32Array.from(o.hiddenStates.at(-1)!.dataSync()),
    };
    assert.equal(o.logits, undefined, "a per-token model has no sequence logits");
    if (o.tokenLogits) out.logits = Float32Array.from(o.tokenLogits.dataSync());
    if (o.spanLogits) {
      const span = o.spanLogits.dataSync();
      out.start_logits = Float32Array.from({ length: span.length / 2 }, (_, i) => span[2 * i]);
      out.end_logits = Float32Array.from({ length: span.length / 2 }, (_, i) => span[2 * i + 1]);
    }
    return out;
  });
}

function run(engine: OnnxEngine, x: Batch, names?: string[]) {
  return engine.run({
    inputIds: x.ids,
    attentionMask: x.mask,
    tokenTypeIds: x.types,
    batch: x.batch,
    seq: x.seq,
  }, names);
}

/** The initializers of a model: name → ONNX data type. */
function initializers(model: Uint8Array): Map<string, number> {
  const graph = readFields(readFields(model).find((f) => f.field === 7)!.value as Uint8Array);
  const dec = new TextDecoder();
  const out = new Map<string, number>();
  for (const f of graph.filter((f) => f.field === 5)) {
    const t = readFields(f.value as Uint8Array);
    out.set(
      dec.decode(t.find((x) => x.field === 8)!.value as Uint8Array),
      Number(t.find((x) => x.field === 2)!.value),
    );
  }
  return out;
}

/** The op types of a model's nodes. */
function opTypes(model: Uint8Array): string[] {
  const graph = readFields(readFields(model).find((f) => f.field === 7)!.value as Uint8Array);
  const dec = new TextDecoder();
  return graph.filter((f) => f.field === 1).map((f) =>
    dec.decode(readFields(f.value as Uint8Array).find((x) => x.field === 4)!.value as Uint8Array)
  );
}

const HEAD_OUTPUTS: Record<Kind, string[]> = {
  token: ["logits"],
  qa: ["start_logits", "end_logits"],
};
const HEAD_PARAM: Record<Kind, string> = { token: "classifier", qa: "qa_outputs" };

/**
 * Bounds of the reduced-precision exports against tfjs, as a fraction of the largest |logit| of
 * the batch (an error that comes from the weights is absolute, of the size of the values summed,
 * not of each entry).
 * - fp16: every weight is rounded to 11 significant bits (relative error ≤ 2⁻¹¹ ≈ 4.9e-4); summed
 *   over a dot product of independent roundings and carried through two layers and their
 *   LayerNorms this moves the outputs by ~1e-3 of their scale (measured here: 8.3e-4 on the
 *   logits, 1.1e-3 on the last hidden state); 5e-3 leaves 4.5× room (a wrong head weight or bias
 *   fails the fp32 check, which holds each entry to 1e-4 of itself).
 * - q8: int8 weights (step max|w|/127 per output channel) and uint8 activations (step range/255
 *   per tensor, at every Linear input) err by ~1/250 of their ranges at each of the 12 quantized
 *   Linears, and the int8 word-embedding rows (step max|row|/127) by ≤ 0.4% of each row (measured here: 2.0e-2 on the logits and on the hidden state); the sequence
 *   classifier's q8 test allows 5% of the logit scale, and so does this one.
 */
const FP16_TOL = 5e-3, Q8_TOL = 0.05;

for (const kind of ["token", "qa"] as Kind[]) {
  Deno.test(`ONNX export of a ${kind} model: HF's names and shapes, no pooler, equal to Bert.forward (fp32, fp16, q8, outputs "all")`, async () => {
    const bert = randomModel(kind, 7);
    const C = kind === "token" ? Object.keys(TAGS).length : 0;
    const L = BASE.num_hidden_layers!, H = BASE.hidden_size!;
    const files = {
      fp32: exportOnnx(bert),
      fp16: exportOnnx(bert, { dtype: "fp16" }),
      q8: exportOnnx(bert, { dtype: "q8" }),
      all: exportOnnx(bert, { outputs: "all" }),
      allQ8: exportOnnx(bert, { outputs: "all", dtype: "q8" }),
    };
    // rows of 11, 6 and 2 real tokens: padding in the batch; then another shape (dynamic axes)
    const batches = [makeBatch([11, 6, 2], 11, 1), makeBatch([4, 7], 7, 2)];
    const refs = batches.map((x) => reference(bert, x));
    const worst: Record<string, number> = {};
    const note = (k: string, e: number) => worst[k] = Math.max(worst[k] ?? 0, e);
    const heads = HEAD_OUTPUTS[kind];
    const wantDims = (x: Batch, name: string) =>
      name === "logits"
        ? [x.batch, x.seq, C]
        : name === "last_hidden_state"
        ? [x.batch, x.seq, H]
        : [x.batch, x.seq];
    try {
      for (const [dtype, file] of Object.entries(files)) {
        const engine = await OnnxEngine.load(file, { threads: 1 });
        try {
          const all = dtype.startsWith("all");
          const expected = [
            ...(all ? Array.from({ length: L + 1 }, (_, i) => `hidden_state_${i}`) : []),
            ...(all ? Array.from({ length: L }, (_, l) => `attention_scores_${l}`) : []),
            ...heads,
            "last_hidden_state",
          ];
          assert.deepEqual([...engine.outputNames].sort(), expected.sort(), `${dtype} outputs`);
          for (const [b, x] of batches.entries()) {
            const out = await run(engine, x);
            for (const name of [...heads, "last_hidden_state"]) {
              const got: OnnxOutput = out[name], want = refs[b][name];
              assert.deepEqual(got.dims, wantDims(x, name), `${dtype} ${name} dims`);
              const tag = `${kind} ${dtype} ${name} (batch ${b})`;
              if (dtype === "fp32" || dtype === "all") {
                const e = relErr(got.data, want, { floor: UNIT_FLOOR });
                note(`${dtype} ${name} (rel)`, e);
                assert.ok(e <= 1e-4, `${tag}: relative error ${e}`);
              } else {
                const scale = Math.max(...Array.from(want, Math.abs));
                const e = maxAbsErr(got.data, want) / scale;
                note(`${dtype} ${name} (abs / max|ref|)`, e);
                const tol = dtype === "fp16" ? FP16_TOL : Q8_TOL;
                assert.ok(e <= tol, `${tag}: error ${e} of the scale ${scale}`);
                if (dtype.endsWith("q8")) assert.ok(e > 0, `${tag} is quantized`);
              }
            }
            if (all) {
              // the encoder output is the last hidden state, as Bert.forward returns them
              assert.deepEqual(out[`hidden_state_${L}`].data, out.last_hidden_state.data);
              assert.deepEqual(out.attention_scores_0.dims, [x.batch, 3, x.seq, x.seq]);
            }
          }
        } finally {
          await engine.close();
        }
      }

      // no pooler; the head's weight stays float32 in the q8 file, as the classifier's does
      const head = HEAD_PARAM[kind];
      for (const [dtype, file] of Object.entries(files)) {
        const inits = initializers(file);
        assert.ok(![...inits.keys()].some((n) => n.startsWith("pooler.")), `${dtype}: a pooler`);
        assert.ok(!opTypes(file).includes("Tanh"), `${dtype}: the pooler's tanh`);
        const w = dtype === "fp16" ? `${head}.weight.fp16` : `${head}.weight`;
        assert.equal(inits.get(w), dtype === "fp16" ? DataType.FLOAT16 : DataType.FLOAT, w);
        const int8 = [...inits].filter(([, t]) => t === DataType.INT8).map(([n]) => n);
        // q8: the 6 Linears of each layer, and the word-embedding table (one scale per row)
        const isQ8 = dtype.endsWith("Q8") || dtype === "q8";
        assert.equal(int8.length, isQ8 ? 6 * L + 1 : 0, dtype);
        if (isQ8) assert.ok(int8.includes("embeddings.word_embeddings.weight.int8"), dtype);
      }
      console.log(`worst differences vs Bert.forward (${kind}):`);
      console.table(
        Object.fromEntries(Object.entries(worst).map(([k, v]) => [k, v.toExponential(2)])),
      );
    } finally {
      bert.dispose();
    }
  });
}

Deno.test("saveOnnxFolder: token-classification and QA folders (architectures, labels, files)", async () => {
  await withTempDir(async (dir) => {
    for (const kind of ["token", "qa"] as Kind[]) {
      const bert = randomModel(kind, 3);
      const folder = join(dir, kind);
      await saveOnnxFolder(bert, folder);
      const conf = JSON.parse(await Deno.readTextFile(join(folder, "config.json")));
      assert.deepEqual(conf.architectures, [
        kind === "token" ? "BertForTokenClassification" : "BertForQuestionAnswering",
      ]);
      // a quantized file is written, so transformers.js' own dtype default may stand
      assert.equal(conf["transformers.js_config"], undefined);
      if (kind === "token") {
        // transformers.js names a token's label id2label[argmax]
        assert.deepEqual(conf.id2label, TAGS);
        assert.deepEqual(conf.label2id, { O: 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4 });
      }
      for (const f of ["model.onnx", "model_fp16.onnx", "model_quantized.onnx"]) {
        const engine = await OnnxEngine.load(join(folder, "onnx", f), { threads: 1 });
        assert.deepEqual(
          [...engine.outputNames].sort(),
          [...HEAD_OUTPUTS[kind], "last_hidden_state"].sort(),
          f,
        );
        await engine.close();
      }
      bert.dispose();
    }
    // without the quantized file transformers.js is pointed at model.onnx
    const bert = randomModel("token", 4);
    await saveOnnxFolder(bert, join(dir, "plain"), { quantize: false });
    const conf = JSON.parse(await Deno.readTextFile(join(dir, "plain", "config.json")));
    assert.deepEqual(conf["transformers.js_config"], { dtype: "fp32" });
    bert.dispose();
  });
});
