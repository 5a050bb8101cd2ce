/**
 * ONNX export of the per-token heads: a token-classification model (`logits [batch, seq, labels]`)
 * and an extractive-QA model (`start_logits`, `end_logits`, each `[batch, seq]`), with HF's output
 * names and no pooler, against the float64 PyTorch reference's encoder with the head computed
 * here in float64, per element on a padded batch, for fp32, fp16 and q8 weights and with
 * `outputs: "all"`; every head's export (sequence classifier + MLM, token classifier, QA, MLM
 * only; fp32, fp16, q8; with the attention values and the MLM rows) run the same on ONNX Runtime
 * and on tfjs (wasm, cpu), which interprets the same graph; and the folder `saveOnnxFolder` writes
 * for the per-token heads.
 *
 * The torch comparisons need a python3 with torch and numpy (see `tests/_torch.ts`); without one
 * they are skipped with a message, unless `TINYSTILL_REQUIRE_TORCH=1`.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Bert, type BertHeads } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { exportOnnx, saveOnnxFolder } from "../pipeline/graph/export.ts";
import { type InferenceOutput, openInference } from "../pipeline/engines/inference.ts";
import { DataType } from "../pipeline/graph/ir.ts";
import { readFields } from "../pipeline/graph/protobuf.ts";
import { maxAbsErr, realKeyMask, relErr, rng, UNIT_FLOOR, withTempDir } from "./_util.ts";
import { PYTHON, runTorch } from "./_torch.ts";

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
  return randomized(
    Bert.create({ ...BASE, id2label: kind === "token" ? TAGS : undefined }, {
      mlm: false,
      ...HEADS[kind],
    }, seed),
    seed,
  );
}

/** `bert` with every bias and LayerNorm weight drawn at random (in place). */
function randomized(bert: Bert, seed: number): Bert {
  const r = rng(seed + 100);
  for (const [name, v] of bert.params) {
    const isBias = name.endsWith(".bias"), isScale = name.endsWith("LayerNorm.weight");
    if (!isBias && !isScale) continue;
    for (let i = 0; i < v.data.length; i++) v.data[i] = (isScale ? 1 : 0) + (r() - 0.5) * 0.6;
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

/**
 * The reference head outputs under the ONNX names: the encoder's last hidden state from the float64
 * PyTorch reference (`tests/reference/bert_torch.py`, run on the model's encoder saved as a
 * `BertModel`), and the per-token head on it computed here in float64 — token logits
 * `h·Wᵀ + b` `[B, S, C]`, or QA's `start_logits`/`end_logits` (rows 0 and 1 of `qa_outputs`).
 */
async function reference(bert: Bert, x: Batch): Promise<Record<string, Float64Array>> {
  const encoder = new Bert(
    { ...bert.config, id2label: undefined, label2id: undefined },
    { classifier: false, mlm: false },
    new Map([...bert.params].filter(([n]) => /^(embeddings|encoder|pooler)\./.test(n))),
  );
  let last: Float64Array | undefined;
  await withTempDir(async (dir) => {
    await saveBert(encoder, join(dir, "model"));
    const rows = (a: Int32Array) =>
      Array.from({ length: x.batch }, (_, b) => [...a.subarray(b * x.seq, (b + 1) * x.seq)]);
    const { tensors } = await runTorch(join(dir, "model"), {
      input_ids: rows(x.ids),
      attention_mask: rows(x.mask),
      token_type_ids: rows(x.types),
      labels: [],
    }, dir);
    last = tensors.get(`hidden_states.${bert.config.num_hidden_layers}`)!.data;
  });
  const H = bert.config.hidden_size, N = x.batch * x.seq;
  /** `h·Wᵀ + b` per token, `[N, out]`, from a `[out, H]` weight. */
  const linear = (prefix: string) => {
    const w = bert.p(`${prefix}.weight`).data, b = bert.p(`${prefix}.bias`).data;
    const out = b.length, y = new Float64Array(N * out);
    for (let t = 0; t < N; t++) {
      for (let o = 0; o < out; o++) {
        let acc = b[o];
        for (let h = 0; h < H; h++) acc += last![t * H + h] * w[o * H + h];
        y[t * out + o] = acc;
      }
    }
    return y;
  };
  const out: Record<string, Float64Array> = { last_hidden_state: last! };
  if (bert.heads.tokenClassifier) out.logits = linear("classifier");
  if (bert.heads.qa) {
    const span = linear("qa_outputs"); // [N, 2]: start, end
    out.start_logits = span.filter((_, i) => i % 2 === 0);
    out.end_logits = span.filter((_, i) => i % 2 === 1);
  }
  return out;
}

const inputsOf = (x: Batch) => ({
  inputIds: x.ids,
  attentionMask: x.mask,
  tokenTypeIds: x.types,
  batch: x.batch,
  seq: x.seq,
});

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
 * Bounds of the reduced-precision exports against the float64 reference, as a fraction of the
 * largest |logit| of the batch (an error that comes from the weights is absolute, of the size of
 * the values summed, not of each entry).
 * - fp16: every weight is rounded to 11 significant bits (relative error ≤ 2⁻¹¹ ≈ 4.9e-4); summed
 *   over a dot product of independent roundings and carried through two layers and their
 *   LayerNorms this moves the outputs by ~1e-3 of their scale (measured here: 7.9e-4 to 1.2e-3);
 *   5e-3 leaves 4× room (a wrong head weight or bias fails the fp32 check, which holds each entry
 *   to 1e-4 of itself).
 * - q8: int8 weights (step max|w|/127 per output channel) and uint8 activations (step range/255
 *   per tensor, at every Linear input) err by ~1/250 of their ranges at each of the 12 quantized
 *   Linears, and the int8 word-embedding rows (step max|row|/127) by ≤ 0.4% of each row (measured
 *   here: 1.2e-2 to 2.1e-2); the sequence classifier's q8 test allows 5% of the logit scale, and
 *   so does this one.
 */
const FP16_TOL = 5e-3, Q8_TOL = 0.05;

for (const kind of ["token", "qa"] as Kind[]) {
  Deno.test({
    name:
      `ONNX export of a ${kind} model: HF's names and shapes, no pooler, equal to float64 PyTorch (fp32, fp16, q8, outputs "all")`,
    ignore: !PYTHON,
    async fn() {
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
      // rows of 11, 6 and 2 real tokens: padding in the batch
      const x = makeBatch([11, 6, 2], 11, 1);
      const ref = await reference(bert, x);
      const worst: Record<string, number> = {};
      const note = (k: string, e: number) => worst[k] = Math.max(worst[k] ?? 0, e);
      const heads = HEAD_OUTPUTS[kind];
      const wantDims = (name: string) =>
        name === "logits"
          ? [x.batch, x.seq, C]
          : name === "last_hidden_state"
          ? [x.batch, x.seq, H]
          : [x.batch, x.seq];
      for (const [dtype, file] of Object.entries(files)) {
        const engine = await openInference(file, { threads: 1 });
        try {
          const all = dtype.startsWith("all");
          const expected = [
            ...(all ? Array.from({ length: L + 1 }, (_, i) => `hidden_state_${i}`) : []),
            ...(all ? Array.from({ length: L }, (_, l) => `attention_scores_${l}`) : []),
            ...heads,
            "last_hidden_state",
          ];
          assert.deepEqual([...engine.outputNames].sort(), expected.sort(), `${dtype} outputs`);
          const out = await engine.run(inputsOf(x));
          for (const name of [...heads, "last_hidden_state"]) {
            const got: InferenceOutput = out[name], want = ref[name];
            assert.deepEqual(got.dims, wantDims(name), `${dtype} ${name} dims`);
            const tag = `${kind} ${dtype} ${name}`;
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
              if (dtype.endsWith("q8")) assert.ok(e > 1e-4, `${tag} is quantized`);
            }
          }
          if (all) {
            // the encoder output is the last hidden state
            assert.deepEqual(out[`hidden_state_${L}`].data, out.last_hidden_state.data);
            assert.deepEqual(out.attention_scores_0.dims, [x.batch, 3, x.seq, x.seq]);
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
      console.log(`worst differences vs float64 torch (${kind}):`);
      console.table(
        Object.fromEntries(Object.entries(worst).map(([k, v]) => [k, v.toExponential(2)])),
      );
    },
  });
}

// ---------------------------------------------------------------------------------------------
// the same graphs on both executors

/** Every head there is, on one encoder shape (the MLM heads with a decoder tied to the words). */
const EVERY_HEAD: [string, Partial<BertHeads>, boolean][] = [
  ["sequence classifier + MLM", { classifier: true, mlm: true }, true],
  ["token classifier", HEADS.token, true],
  ["QA", HEADS.qa, false],
  ["MLM only", { classifier: false, mlm: true }, false],
];

/**
 * Bound between the executors, per element (floor UNIT_FLOOR): both run the same graph in
 * float32 with different kernels (summation order), ≈ 1e-6 of the values (measured below). The
 * padded key columns of the scores (−10000 + s) are resolved by float32 only to ≈ 1e-3: held to
 * PADDED_ABS_TOL.
 */
const EXEC_TOL = 1e-4, PADDED_ABS_TOL = 2e-3;

Deno.test("every head's export (fp32, fp16, q8) runs the same on ONNX Runtime and tfjs (wasm, cpu): every output, attention values and MLM rows included", async () => {
  const x = makeBatch([9, 5, 2], 9, 4);
  // flat token positions for `mlm_rows`: some real tokens of each row, and one padded one
  const positions = Int32Array.of(0, 3, 8, 9, 13, 18, 19, 22);
  const worst: Record<string, number> = {};
  for (const [label, heads, labels] of EVERY_HEAD) {
    const bert = randomized(
      Bert.create({ ...BASE, id2label: labels ? TAGS : undefined }, { mlm: false, ...heads }, 5),
      5,
    );
    for (const dtype of ["fp32", "fp16", "q8"] as const) {
      const opts = { dtype, outputs: "all", values: true, mlmRows: !!heads.mlm } as const;
      const ort = await openInference(bert, opts);
      const names = [...ort.outputNames].sort();
      // the names transformers.js reads, the hidden states, scores and values of every layer
      assert.ok(names.includes("last_hidden_state") && names.includes("attention_values_1"));
      if (heads.mlm) assert.ok(names.includes("mlm_rows"), `${label}: mlm_rows`);
      const want = await ort.run({ ...inputsOf(x), mlmPositions: positions });
      await ort.close();
      for (const backend of ["wasm", "cpu"] as const) {
        const tfjs = await openInference(bert, { ...opts, engine: { kind: "tfjs", backend } });
        const tag = `${label} ${dtype} tfjs/${backend}`;
        try {
          assert.equal(tfjs.engine, `tfjs/${backend}`);
          assert.deepEqual([...tfjs.outputNames].sort(), names, tag);
          const got = await tfjs.run({ ...inputsOf(x), mlmPositions: positions });
          for (const name of names) {
            assert.deepEqual(got[name].dims, want[name].dims, `${tag} ${name} dims`);
            const key = `${dtype}: ${name.replace(/_\d+$/, "_*")}`;
            if (name.startsWith("attention_scores_")) {
              const rows = Array.from(
                { length: x.batch },
                (_, b) => x.mask.subarray(b * x.seq, (b + 1) * x.seq),
              );
              const real = realKeyMask(rows, 3);
              const e = relErr(got[name].data, want[name].data, { floor: UNIT_FLOOR, where: real });
              const pad = maxAbsErr(got[name].data, want[name].data, real.map((r) => 1 - r));
              worst[`${key} (real keys)`] = Math.max(worst[`${key} (real keys)`] ?? 0, e);
              worst[`${key} (padded, abs)`] = Math.max(worst[`${key} (padded, abs)`] ?? 0, pad);
              assert.ok(e <= EXEC_TOL, `${tag} ${name}: relative error ${e}`);
              assert.ok(pad <= PADDED_ABS_TOL, `${tag} ${name}: padded keys ${pad}`);
              continue;
            }
            const e = relErr(got[name].data, want[name].data, { floor: UNIT_FLOOR });
            worst[key] = Math.max(worst[key] ?? 0, e);
            assert.ok(e <= EXEC_TOL, `${tag} ${name}: relative error ${e}`);
          }
        } finally {
          await tfjs.close();
        }
      }
    }
  }
  console.log("worst differences tfjs vs ONNX Runtime (relative, floor 0.1, unless marked):");
  console.table(
    Object.fromEntries(Object.entries(worst).sort().map(([k, v]) => [k, v.toExponential(2)])),
  );
});

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
        const engine = await openInference(join(folder, "onnx", f), { threads: 1 });
        assert.deepEqual(
          [...engine.outputNames].sort(),
          [...HEAD_OUTPUTS[kind], "last_hidden_state"].sort(),
          f,
        );
        await engine.close();
      }
    }
    // without the quantized file transformers.js is pointed at model.onnx
    const bert = randomModel("token", 4);
    await saveOnnxFolder(bert, join(dir, "plain"), { quantize: false });
    const conf = JSON.parse(await Deno.readTextFile(join(dir, "plain", "config.json")));
    assert.deepEqual(conf["transformers.js_config"], { dtype: "fp32" });
  });
});
