/**
 * loadBert / saveBert on the host model: bit-exact F32 round trips (parameters, and the outputs of
 * the model's inference graph on ONNX Runtime, which also catch a config or head that does not
 * survive), F16/BF16 precision, legacy Hugging Face layouts built by hand (`bert.` prefix,
 * `LayerNorm.gamma/beta`, an int64 `position_ids` buffer, `cls.predictions.decoder.*`), missing
 * heads that get initialised, the HF names and config written, and every InputError a user can
 * meet.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Bert, type BertHeads, parameterShapes } from "../pipeline/model/bert.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { readSafetensors, writeSafetensors } from "../pipeline/model/safetensors.ts";
import { assertInputError, randomArray, relErr, withTempDir } from "./_util.ts";

const LABELS = { "0": "neg", "1": "neu", "2": "pos" };
const BASE: Partial<BertConfig> = {
  vocab_size: 60,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 48,
  max_position_embeddings: 16,
};
const ALL_HEADS: BertHeads = { classifier: true, mlm: true };
const NO_HEADS: BertHeads = { classifier: false, mlm: false };

// ---------------------------------------------------------------------------------------------
// Helpers.

/** Every parameter random (LayerNorm weights 1 ± 0.2, the rest ±0.3) so each one matters. */
function randomModel(partial: Partial<BertConfig>, heads: BertHeads, seed = 1): Bert {
  const config = makeConfig(partial);
  const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
  let i = 0;
  for (const [name, shape] of parameterShapes(config, heads)) {
    const u = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + ++i);
    const v = name.includes("LayerNorm.weight") ? u.map((x) => 1 + 0.2 * x) : u.map((x) => 0.3 * x);
    tensors.set(name, { data: v, shape });
  }
  return new Bert(config, heads, tensors);
}

/**
 * Every output of the model's inference graph (`outputs: "all"`: hidden states, attention scores,
 * the head's logits, MLM logits when there is a head) on a padded batch, on ONNX Runtime with one
 * thread (deterministic: the same weights and config give the same bits).
 */
async function outputsOf(model: Bert): Promise<Map<string, Float32Array>> {
  const engine = await openInference(model, { outputs: "all", threads: 1 });
  try {
    const out = await engine.run({
      inputIds: Int32Array.of(2, 17, 5, 41, 3, 9, 3, 2, 8, 59, 3, 0, 0, 0),
      attentionMask: Int32Array.of(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0),
      tokenTypeIds: Int32Array.of(0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0),
      batch: 2,
      seq: 7,
    });
    return new Map(Object.keys(out).sort().map((k) => [k, out[k].data]));
  } finally {
    await engine.close();
  }
}

/** Exact equality of float32 arrays, bit for bit. */
function assertBitEqual(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) assert.fail(`${what}[${i}]: ${a[i]} !== ${b[i]}`);
  }
}

function assertSameOutputs(
  got: Map<string, Float32Array>,
  want: Map<string, Float32Array>,
  what: string,
  only?: (name: string) => boolean,
): void {
  const keys = (m: Map<string, Float32Array>) => [...m.keys()].filter(only ?? (() => true));
  assert.deepEqual(keys(got), keys(want), `${what}: outputs`);
  for (const k of keys(want)) assertBitEqual(got.get(k)!, want.get(k)!, `${what}: ${k}`);
}

function paramsOf(model: Bert): Map<string, Float32Array> {
  return new Map([...model.params].map(([n, v]) => [n, v.data]));
}

/** The JSON header of a safetensors file, parsed by hand. */
async function headerOf(path: string): Promise<Record<string, { dtype: string; shape: number[] }>> {
  const bytes = await Deno.readFile(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
}

interface RawTensor {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** A safetensors file built byte by byte (independent of the library's writer). */
function buildSafetensors(tensors: RawTensor[]): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let pos = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + t.bytes.length] };
    pos += t.bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + pos);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of tensors) {
    out.set(t.bytes, at);
    at += t.bytes.length;
  }
  return out;
}

function f32Bytes(data: Float32Array): Uint8Array {
  const out = new Uint8Array(data.length * 4);
  const dv = new DataView(out.buffer);
  data.forEach((x, i) => dv.setFloat32(4 * i, x, true));
  return out;
}

function i64Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const dv = new DataView(out.buffer);
  values.forEach((x, i) => dv.setBigInt64(8 * i, BigInt(x), true));
  return out;
}

/** Base-model tensors get `bert.`, LayerNorm params their legacy gamma/beta names. */
function legacyName(name: string): string {
  const n = /^(embeddings|encoder|pooler)\./.test(name) ? `bert.${name}` : name;
  return n.replace(/LayerNorm\.weight$/, "LayerNorm.gamma").replace(
    /LayerNorm\.bias$/,
    "LayerNorm.beta",
  );
}

/** Rewrite `dir/model.safetensors` through `edit` (stored names → tensors). */
async function editWeights(
  dir: string,
  edit: (t: Map<string, { shape: number[]; data: Float32Array }>) => void,
): Promise<void> {
  const path = join(dir, "model.safetensors");
  const st = await readSafetensors(path);
  const tensors = new Map(
    [...st.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data.slice() }]),
  );
  edit(tensors);
  await writeSafetensors(path, tensors);
}

/** binary16 rounding by the platform's Float16Array (independent of the library). */
function roundF16(data: Float32Array): Float32Array | undefined {
  const F16 =
    (globalThis as unknown as { Float16Array?: new (a: Float32Array) => ArrayLike<number> })
      .Float16Array;
  return F16 ? Float32Array.from(new F16(data)) : undefined;
}

/** bfloat16 rounding (nearest, ties to even), by comparing the two neighbours. */
function roundBf16(data: Float32Array): Float32Array {
  const out = new Float32Array(data.length);
  const f = new Float32Array(2), u = new Uint32Array(f.buffer);
  for (let i = 0; i < data.length; i++) {
    f[0] = data[i];
    u[0] = u[0] & 0xffff0000; // truncation toward zero
    u[1] = u[0] + 0x10000; // next bfloat16 away from zero
    const lo = Math.abs(data[i] - f[0]), hi = Math.abs(f[1] - data[i]);
    out[i] = lo < hi ? f[0] : hi < lo ? f[1] : (u[0] & 0x10000) === 0 ? f[0] : f[1];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Round trips.

const VARIANTS: { heads: BertHeads; arch: string; prefix: string; labels: boolean }[] = [
  { heads: ALL_HEADS, arch: "BertForSequenceClassification", prefix: "bert.", labels: true },
  {
    heads: { classifier: true, mlm: false },
    arch: "BertForSequenceClassification",
    prefix: "bert.",
    labels: true,
  },
  {
    heads: { classifier: false, mlm: true },
    arch: "BertForMaskedLM",
    prefix: "bert.",
    labels: false,
  },
  { heads: NO_HEADS, arch: "BertModel", prefix: "", labels: false },
];

for (const v of VARIANTS) {
  const name = `${v.arch}${v.heads.mlm && v.heads.classifier ? " + MLM" : ""}`;
  Deno.test(`F32 round trip is bit-identical, HF names and config (${name})`, () =>
    withTempDir(async (dir) => {
      const model = randomModel({ ...BASE, ...(v.labels ? { id2label: LABELS } : {}) }, v.heads);
      const want = await outputsOf(model);
      await saveBert(model, dir);

      // config.json: architectures, labels, dtype.
      const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
      assert.deepEqual(config.architectures, [v.arch]);
      assert.equal(config.model_type, "bert");
      assert.equal(config.torch_dtype, "float32");
      assert.equal(config.hidden_size, 32);
      if (v.labels) {
        assert.deepEqual(config.id2label, LABELS);
        // saveBert writes label2id only when the model's config has one (makeConfig does not derive
        // it from id2label); transformers rebuilds it from id2label when absent.
        if (config.label2id !== undefined) {
          assert.deepEqual(config.label2id, { neg: 0, neu: 1, pos: 2 });
        }
      }

      // Header: HF names, [out, in] Linear weights, no tied decoder copy.
      const header = await headerOf(join(dir, "model.safetensors"));
      const p = v.prefix;
      const expectShapes: Record<string, number[]> = {
        [`${p}embeddings.word_embeddings.weight`]: [60, 32],
        [`${p}embeddings.LayerNorm.weight`]: [32],
        [`${p}encoder.layer.0.attention.self.query.weight`]: [32, 32],
        [`${p}encoder.layer.1.attention.output.LayerNorm.bias`]: [32],
        [`${p}encoder.layer.0.intermediate.dense.weight`]: [48, 32],
        [`${p}encoder.layer.0.output.dense.weight`]: [32, 48],
        [`${p}pooler.dense.weight`]: [32, 32],
      };
      if (v.heads.classifier) {
        expectShapes["classifier.weight"] = [3, 32];
        expectShapes["classifier.bias"] = [3];
      }
      if (v.heads.mlm) {
        expectShapes["cls.predictions.transform.dense.weight"] = [32, 32];
        expectShapes["cls.predictions.bias"] = [60];
      }
      for (const [name, shape] of Object.entries(expectShapes)) {
        assert.ok(header[name], `header lacks ${name}: ${Object.keys(header).join(", ")}`);
        assert.equal(header[name].dtype, "F32", name);
        assert.deepEqual(header[name].shape, shape, name);
      }
      const names = Object.keys(header).filter((n) => n !== "__metadata__");
      assert.equal(names.length, model.params.size);
      if (!p) assert.ok(names.every((n) => !n.startsWith("bert.")));
      else assert.ok(names.every((n) => !/^(embeddings|encoder|pooler)\./.test(n)));
      assert.ok(!names.includes("cls.predictions.decoder.weight"));
      // The stored [out, in] data is the model's own (no transpose on the way out).
      const st = await readSafetensors(join(dir, "model.safetensors"));
      assertBitEqual(
        st.tensors.get(`${p}encoder.layer.0.intermediate.dense.weight`)!.data,
        model.p("encoder.layer.0.intermediate.dense.weight").data,
        "stored intermediate.dense.weight",
      );

      const loaded = await loadBert(dir);
      assert.deepEqual(loaded.heads, v.heads);
      assert.equal(loaded.newlyInitialized, undefined);
      assert.equal(loaded.unusedTensors, undefined);
      const pw = paramsOf(model), pg = paramsOf(loaded);
      assert.deepEqual([...pg.keys()].sort(), [...pw.keys()].sort());
      for (const [n, data] of pw) assertBitEqual(pg.get(n)!, data, `param ${n}`);
      assertSameOutputs(await outputsOf(loaded), want, "F32 round trip");
      model.dispose();
      loaded.dispose();
    }));
}

Deno.test("F16 and BF16 round trips hold the nearest half-precision values", () =>
  withTempDir(async (dir) => {
    const model = randomModel({ ...BASE, id2label: LABELS }, ALL_HEADS);
    const want = await outputsOf(model);
    const f16Native = roundF16(new Float32Array([1])) !== undefined;
    for (const dtype of ["F16", "BF16"] as const) {
      const d = join(dir, dtype);
      await saveBert(model, d, { dtype });
      const config = JSON.parse(await Deno.readTextFile(join(d, "config.json")));
      assert.equal(config.torch_dtype, dtype === "F16" ? "float16" : "bfloat16");
      const header = await headerOf(join(d, "model.safetensors"));
      for (const [n, e] of Object.entries(header)) {
        if (n !== "__metadata__") assert.equal(e.dtype, dtype, n);
      }

      const loaded = await loadBert(d);
      // Half-ulp bound relative to the value: 2^-11 (F16, normal range), 2^-8 (BF16).
      const relBound = dtype === "F16" ? 2 ** -11 : 2 ** -8;
      for (const [name, orig] of paramsOf(model)) {
        const got = loaded.p(name).data;
        const exact = dtype === "F16" ? roundF16(orig) : roundBf16(orig);
        if (exact) assertBitEqual(got, exact, `${dtype} ${name}`);
        for (let i = 0; i < orig.length; i++) {
          const err = Math.abs(got[i] - orig[i]);
          // F16 subnormals (|x| < 2^-14) have an absolute spacing of 2^-24.
          assert.ok(err <= relBound * Math.abs(orig[i]) + 2 ** -25, `${dtype} ${name}[${i}]`);
        }
      }
      // The model still computes about the same thing.
      const got = await outputsOf(loaded);
      // Per element, floor 0.3: half-precision weights move every output (of order 0.2–3) by an
      // absolute amount that scales with the model's values, not with each entry.
      // Measured worst: F16 7.2e-3, BF16 5.1e-2 (mlm_logits).
      const tol = dtype === "F16" ? 1e-2 : 8e-2;
      for (const k of ["hidden_state_2", "logits", "mlm_logits"]) {
        const e = relErr(got.get(k)!, want.get(k)!, { floor: 0.3 });
        assert.ok(e <= tol, `${dtype} ${k}: relative error ${e} > ${tol}`);
      }
      loaded.dispose();
    }
    if (!f16Native) console.warn("no native Float16Array: F16 checked against the bound only");
    model.dispose();
  }));

// ---------------------------------------------------------------------------------------------
// Legacy and partial layouts.

Deno.test("legacy layouts load to identical outputs", async (t) => {
  await withTempDir(async (dir) => {
    const model = randomModel({ ...BASE, id2label: LABELS }, ALL_HEADS);
    const want = await outputsOf(model);
    await saveBert(model, join(dir, "ref"));
    const configText = await Deno.readTextFile(join(dir, "ref", "config.json"));
    const params = paramsOf(model);
    const word = params.get("embeddings.word_embeddings.weight")!;

    const check = async (d: string, unused: string[]) => {
      const loaded = await loadBert(d);
      assert.deepEqual(loaded.heads, ALL_HEADS);
      assert.equal(loaded.newlyInitialized, undefined);
      assert.deepEqual([...(loaded.unusedTensors ?? [])].sort(), unused.sort());
      for (const [n, data] of params) {
        assertBitEqual(loaded.p(n).data, data, n);
      }
      assertSameOutputs(await outputsOf(loaded), want, d);
      loaded.dispose();
    };

    await t.step(
      "bert. + gamma/beta + int64 position_ids + decoder.weight + decoder.bias (by hand)",
      async () => {
        const d = join(dir, "a");
        await Deno.mkdir(d);
        await Deno.writeTextFile(join(d, "config.json"), configText);
        const raw: RawTensor[] = [{
          name: "bert.embeddings.position_ids",
          dtype: "I64",
          shape: [1, 16],
          bytes: i64Bytes(Array.from({ length: 16 }, (_, i) => i)),
        }];
        for (const [name, data] of params) {
          const stored = name === "cls.predictions.bias"
            ? "cls.predictions.decoder.bias"
            : legacyName(name);
          raw.push({
            name: stored,
            dtype: "F32",
            shape: model.p(name).shape,
            bytes: f32Bytes(data),
          });
        }
        raw.push({
          name: "cls.predictions.decoder.weight",
          dtype: "F32",
          shape: [60, 32],
          bytes: f32Bytes(word),
        });
        const names = raw.map((r) => r.name);
        assert.ok(names.includes("bert.encoder.layer.1.output.LayerNorm.gamma"));
        assert.ok(names.includes("cls.predictions.transform.LayerNorm.beta"));
        assert.ok(!names.includes("cls.predictions.bias"));
        await Deno.writeFile(join(d, "model.safetensors"), buildSafetensors(raw.reverse()));
        await check(d, ["cls.predictions.decoder.weight"]);
      },
    );

    await t.step(
      "bert. + gamma/beta, no decoder.weight, decoder.bias only (writeSafetensors)",
      async () => {
        const d = join(dir, "b");
        await Deno.mkdir(d);
        await Deno.writeTextFile(join(d, "config.json"), configText);
        const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
        for (const [name, data] of params) {
          const stored = name === "cls.predictions.bias"
            ? "cls.predictions.decoder.bias"
            : legacyName(name);
          tensors.set(stored, { shape: model.p(name).shape, data });
        }
        await writeSafetensors(join(d, "model.safetensors"), tensors);
        await check(d, []);
      },
    );

    await t.step(
      "cls.predictions.bias and decoder.bias and decoder.weight all present",
      async () => {
        const d = join(dir, "c");
        await Deno.mkdir(d);
        await Deno.writeTextFile(join(d, "config.json"), configText);
        const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
        for (const [name, data] of params) {
          tensors.set(legacyName(name), { shape: model.p(name).shape, data });
        }
        tensors.set("cls.predictions.decoder.bias", {
          shape: [60],
          data: params.get("cls.predictions.bias")!,
        });
        tensors.set("cls.predictions.decoder.weight", { shape: [60, 32], data: word });
        await writeSafetensors(join(d, "model.safetensors"), tensors);
        await check(d, ["cls.predictions.decoder.weight"]);
      },
    );
    model.dispose();
  });
});

Deno.test("a BertModel checkpoint without pooler loads; the pooler is newly initialised", () =>
  withTempDir(async (dir) => {
    const model = randomModel(BASE, NO_HEADS);
    const want = await outputsOf(model);
    await saveBert(model, dir);
    await editWeights(dir, (t) => {
      assert.ok(t.delete("pooler.dense.weight") && t.delete("pooler.dense.bias"));
    });
    const loaded = await loadBert(dir);
    assert.deepEqual(loaded.heads, NO_HEADS);
    assert.deepEqual(loaded.newlyInitialized?.sort(), ["pooler.dense.bias", "pooler.dense.weight"]);
    assert.deepEqual(loaded.p("pooler.dense.weight").shape, [32, 32]);
    // no output reads the pooler without a classifier
    assertSameOutputs(await outputsOf(loaded), want, "no pooler");
    model.dispose();
    loaded.dispose();
  }));

Deno.test("a classifier asked for on an encoder-only checkpoint is initialised", () =>
  withTempDir(async (dir) => {
    const model = randomModel(BASE, NO_HEADS);
    const want = await outputsOf(model);
    await saveBert(model, join(dir, "enc"));

    // Without labels there is nothing to size the classifier with.
    const e = await assertInputError(
      () => loadBert(join(dir, "enc"), { heads: { classifier: true } }),
      [join(dir, "enc", "config.json"), "id2label", "classifier"],
    );
    assert.equal(e.field, "id2label");

    const loaded = await loadBert(join(dir, "enc"), {
      heads: { classifier: true },
      id2label: LABELS,
    });
    assert.deepEqual(loaded.heads, { classifier: true, mlm: false });
    assert.deepEqual(loaded.newlyInitialized?.sort(), ["classifier.bias", "classifier.weight"]);
    assert.deepEqual(loaded.config.id2label, LABELS);
    assert.deepEqual(loaded.config.label2id, { neg: 0, neu: 1, pos: 2 });
    assert.deepEqual(loaded.p("classifier.weight").shape, [3, 32]);
    const got = await outputsOf(loaded);
    assert.equal(got.get("logits")!.length, 2 * 3);
    assert.ok(got.get("logits")!.every(Number.isFinite));
    assertSameOutputs(got, want, "encoder + new classifier", (k) => k !== "logits");

    // Saved again, it is a sequence classifier.
    await saveBert(loaded, join(dir, "cls"));
    const config = JSON.parse(await Deno.readTextFile(join(dir, "cls", "config.json")));
    assert.deepEqual(config.architectures, ["BertForSequenceClassification"]);
    assert.deepEqual(config.id2label, LABELS);
    const header = await headerOf(join(dir, "cls", "model.safetensors"));
    assert.deepEqual(header["classifier.weight"].shape, [3, 32]);
    assert.ok(header["bert.encoder.layer.0.attention.self.query.weight"]);
    const again = await loadBert(join(dir, "cls"));
    assert.equal(again.newlyInitialized, undefined);
    assertSameOutputs(await outputsOf(again), got, "reloaded classifier");
    model.dispose();
    loaded.dispose();
    again.dispose();
  }));

// ---------------------------------------------------------------------------------------------
// Errors.

Deno.test("loadBert errors name the file and the tensor, with expected vs got", async (t) => {
  await withTempDir(async (dir) => {
    const good = join(dir, "good");
    const model = randomModel({ ...BASE, id2label: LABELS }, { classifier: true, mlm: false });
    await saveBert(model, good);
    model.dispose();
    const configText = await Deno.readTextFile(join(good, "config.json"));
    /** A copy of the good checkpoint to break. */
    const copy = async (name: string) => {
      const d = join(dir, name);
      await Deno.mkdir(d);
      await Deno.copyFile(join(good, "config.json"), join(d, "config.json"));
      await Deno.copyFile(join(good, "model.safetensors"), join(d, "model.safetensors"));
      return d;
    };
    const weights = (d: string) => join(d, "model.safetensors");

    await t.step("missing directory", async () => {
      const d = join(dir, "does-not-exist");
      await assertInputError(() => loadBert(d), [d, "not found"]);
    });

    await t.step("only pytorch_model.bin", async () => {
      const d = join(dir, "torch-only");
      await Deno.mkdir(d);
      await Deno.writeTextFile(join(d, "config.json"), configText);
      await Deno.writeFile(join(d, "pytorch_model.bin"), new Uint8Array([0x50, 0x4b, 3, 4]));
      await assertInputError(
        () => loadBert(d),
        [d, "pytorch_model.bin", "model.safetensors", "safe_serialization=True", "save_pretrained"],
      );
    });

    await t.step("weights of a wider model than config.json says", async () => {
      const d = join(dir, "wide");
      const wide = randomModel({ ...BASE, hidden_size: 40, id2label: LABELS }, {
        classifier: true,
        mlm: false,
      });
      await saveBert(wide, d);
      wide.dispose();
      await Deno.writeTextFile(join(d, "config.json"), configText); // hidden_size 32
      const e = await assertInputError(
        () => loadBert(d),
        [weights(d), "embeddings.word_embeddings.weight", "expected [60, 32]", "got [60, 40]"],
      );
      assert.equal(e.field, "embeddings.word_embeddings.weight");
    });

    await t.step("one tensor with the wrong shape", async () => {
      const d = await copy("one-shape");
      await editWeights(d, (m) => {
        m.set("bert.encoder.layer.1.intermediate.dense.weight", {
          shape: [40, 32],
          data: new Float32Array(40 * 32),
        });
      });
      const e = await assertInputError(
        () => loadBert(d),
        [
          weights(d),
          "encoder.layer.1.intermediate.dense.weight",
          "[48, 32]",
          "got [40, 32]",
          "config.json",
        ],
      );
      assert.equal(e.expected, "[48, 32]");
      assert.equal(e.got, "[40, 32]");
    });

    await t.step("unknown dtype in the header", async () => {
      const d = join(dir, "dtype");
      await Deno.mkdir(d);
      await Deno.writeTextFile(join(d, "config.json"), configText);
      const raw = buildSafetensors([
        {
          name: "bert.embeddings.LayerNorm.weight",
          dtype: "F32",
          shape: [32],
          bytes: new Uint8Array(128),
        },
        {
          name: "bert.embeddings.LayerNorm.bias",
          dtype: "Q4",
          shape: [32],
          bytes: new Uint8Array(16),
        },
      ]);
      await Deno.writeFile(weights(d), raw);
      const e = await assertInputError(
        () => loadBert(d),
        [weights(d), "bert.embeddings.LayerNorm.bias", "unsupported dtype", "Q4", "F32, F16, BF16"],
      );
      assert.equal(e.got, "Q4");
    });

    await t.step("truncated model.safetensors", async () => {
      const d = await copy("truncated");
      const bytes = await Deno.readFile(weights(d));
      await Deno.writeFile(weights(d), bytes.subarray(0, bytes.length - 100));
      await assertInputError(() => loadBert(d), [weights(d), "truncated"]);
      // Cut inside the header too.
      await Deno.writeFile(weights(d), bytes.subarray(0, 50));
      await assertInputError(() => loadBert(d), [weights(d), "truncated"]);
    });

    await t.step("missing encoder tensor", async () => {
      const d = await copy("missing");
      await editWeights(
        d,
        (m) => assert.ok(m.delete("bert.encoder.layer.1.attention.self.key.weight")),
      );
      const e = await assertInputError(
        () => loadBert(d),
        [weights(d), "encoder.layer.1.attention.self.key.weight", "missing", "2-layer"],
      );
      assert.equal(e.field, "encoder.layer.1.attention.self.key.weight");
    });

    await t.step("stray encoder.layer.5 tensor with a 2-layer config", async () => {
      const d = await copy("stray");
      await editWeights(d, (m) => {
        m.set("bert.encoder.layer.5.output.dense.bias", {
          shape: [32],
          data: new Float32Array(32),
        });
      });
      await assertInputError(
        () => loadBert(d),
        [weights(d), "encoder.layer.5.output.dense.bias", "num_hidden_layers is 2"],
      );
    });

    await t.step("missing config.json", async () => {
      const d = await copy("no-config");
      await Deno.remove(join(d, "config.json"));
      await assertInputError(() => loadBert(d), [join(d, "config.json"), "not found"]);
    });

    await t.step("invalid config.json", async () => {
      const d = await copy("bad-config");
      // A missing comma: V8 reports a position, which becomes a line and column.
      await Deno.writeTextFile(join(d, "config.json"), '{"hidden_size": 32\n  "vocab_size": 60}\n');
      await assertInputError(() => loadBert(d), [join(d, "config.json"), "invalid JSON", "line 2"]);
      // A bad value: V8 gives no position for "Unexpected token", so readConfig has no line here.
      await Deno.writeTextFile(join(d, "config.json"), '{"hidden_size": 32,\n  "vocab_size": }\n');
      await assertInputError(() => loadBert(d), [join(d, "config.json"), "invalid JSON"]);
      await Deno.writeTextFile(
        join(d, "config.json"),
        configText.replace('"hidden_size": 32', '"hidden_size": "32"'),
      );
      await assertInputError(
        () => loadBert(d),
        [join(d, "config.json"), "hidden_size", "positive integer", '"32"'],
      );
    });

    // The good one still loads (nothing above touched it).
    (await loadBert(good)).dispose();
  });
});

Deno.test("a classifier in the weights but no labels in config.json gets LABEL_i names", async () => {
  await withTempDir(async (dir) => {
    const bert = Bert.create({ ...BASE, id2label: LABELS }, { classifier: true, mlm: false }, 7);
    await saveBert(bert, dir);
    const cfgPath = join(dir, "config.json");
    const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
    delete cfg.id2label;
    delete cfg.label2id;
    await Deno.writeTextFile(cfgPath, JSON.stringify(cfg));
    const loaded = await loadBert(dir);
    assert.equal(loaded.heads.classifier, true);
    assert.deepEqual(loaded.config.id2label, { "0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2" });
    assert.deepEqual(loaded.config.label2id, { LABEL_0: 0, LABEL_1: 1, LABEL_2: 2 });
    assert.deepEqual(loaded.p("classifier.weight").data, bert.p("classifier.weight").data);
    // and saveBert writes both label maps
    await saveBert(bert, dir);
    const written = JSON.parse(await Deno.readTextFile(cfgPath));
    assert.deepEqual(written.label2id, { neg: 0, neu: 1, pos: 2 });
    bert.dispose();
    loaded.dispose();
  });
});
