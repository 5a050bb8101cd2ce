/**
 * The host-side model (`pipeline/model/bert.ts`): parameter names and shapes per head, Hugging
 * Face's initialisation (seeded), the padding row, extras, copies and config checks. The forward
 * pass of every head, the objectives and the optimizer are compared with PyTorch in
 * `torch_reference_test.ts` and `parity_test.ts`.
 */

import assert from "node:assert/strict";
import {
  Bert,
  type BertHeads,
  EXTRA_PREFIX,
  isNoDecay,
  normalInit,
  parameterShapes,
} from "../pipeline/model/bert.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { openInference } from "../pipeline/engines/inference.ts";

const CONFIG: Partial<BertConfig> = {
  vocab_size: 23,
  hidden_size: 12,
  num_hidden_layers: 2,
  num_attention_heads: 3,
  intermediate_size: 20,
  max_position_embeddings: 10,
  type_vocab_size: 2,
  id2label: { "0": "neg", "1": "pos", "2": "mixed" },
};

/** Parameters of one post-LN layer with hidden H and FFN I, by formula. */
const layerSize = (H: number, I: number) =>
  4 * (H * H + H) + 2 * H + (I * H + I) + (H * I + H) + 2 * H;

Deno.test("parameterShapes: Hugging Face names and [out, in] shapes for every head", () => {
  const cfg = makeConfig(CONFIG);
  const H = 12, I = 20, V = 23, P = 10, T = 2, L = 2, C = 3;
  const base = parameterShapes(cfg, { classifier: false, mlm: false });
  assert.deepEqual(base.get("embeddings.word_embeddings.weight"), [V, H]);
  assert.deepEqual(base.get("embeddings.position_embeddings.weight"), [P, H]);
  assert.deepEqual(base.get("embeddings.token_type_embeddings.weight"), [T, H]);
  assert.deepEqual(base.get("encoder.layer.1.attention.self.key.weight"), [H, H]);
  assert.deepEqual(base.get("encoder.layer.0.intermediate.dense.weight"), [I, H]);
  assert.deepEqual(base.get("encoder.layer.0.output.dense.weight"), [H, I]);
  assert.deepEqual(base.get("pooler.dense.weight"), [H, H]);
  assert.equal(base.has("encoder.layer.2.output.dense.bias"), false);
  const count = (m: Map<string, number[]>) =>
    [...m.values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  const embeddings = V * H + P * H + T * H + 2 * H, pooler = H * H + H;
  assert.equal(count(base), embeddings + L * layerSize(H, I) + pooler);

  const heads: [Partial<BertHeads>, Record<string, number[]>][] = [
    [{ classifier: true }, { "classifier.weight": [C, H], "classifier.bias": [C] }],
    [{ classifier: true, tokenClassifier: true }, {
      "classifier.weight": [C, H],
      "classifier.bias": [C],
    }],
    [{ qa: true }, { "qa_outputs.weight": [2, H], "qa_outputs.bias": [2] }],
    // the decoder is tied to the word embeddings: only its bias is a parameter
    [{ mlm: true }, {
      "cls.predictions.transform.dense.weight": [H, H],
      "cls.predictions.transform.dense.bias": [H],
      "cls.predictions.transform.LayerNorm.weight": [H],
      "cls.predictions.transform.LayerNorm.bias": [H],
      "cls.predictions.bias": [V],
    }],
  ];
  for (const [h, extra] of heads) {
    const shapes = parameterShapes(cfg, { classifier: false, mlm: false, ...h });
    const added = Object.fromEntries([...shapes].filter(([n]) => !base.has(n)));
    assert.deepEqual(added, extra, JSON.stringify(h));
  }
  assert.throws(
    () =>
      parameterShapes(makeConfig({ ...CONFIG, id2label: undefined }), {
        classifier: true,
        mlm: false,
      }),
    /a classifier head needs config.id2label/,
  );
  // AdamW's no-decay rule: biases and LayerNorm weights
  assert.ok(isNoDecay("encoder.layer.0.output.LayerNorm.weight"));
  assert.ok(isNoDecay("classifier.bias") && isNoDecay("distill.fit_dense.bias"));
  assert.ok(!isNoDecay("encoder.layer.0.output.dense.weight"));
  assert.ok(!isNoDecay("distill.fit_dense.weight"));
});

Deno.test("Bert.create follows Hugging Face: N(0, initializer_range), zero biases, unit LayerNorm, zero pad row; seeded", () => {
  const cfg = { ...CONFIG, vocab_size: 500, hidden_size: 48, num_attention_heads: 4 };
  const bert = Bert.create(cfg, {}, 1);
  assert.deepEqual(bert.heads, { classifier: true, mlm: false }); // id2label → a classifier
  const stats = (a: Float32Array) => {
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
    const within = a.filter((v) => Math.abs(v - mean) <= std).length / a.length;
    return { mean, std, within };
  };
  const q = stats(bert.p("encoder.layer.0.attention.self.query.weight").data); // 2,304 draws
  assert.ok(Math.abs(q.std - 0.02) < 0.002 && Math.abs(q.mean) < 0.002, JSON.stringify(q));
  assert.ok(Math.abs(q.within - 0.6827) < 0.04, `normal: ${q.within} within one σ`);
  // the std is the config's initializer_range
  const wide = stats(
    Bert.create({ ...cfg, initializer_range: 0.1 }, {}, 1).p("pooler.dense.weight").data,
  );
  assert.ok(Math.abs(wide.std - 0.1) < 0.01, JSON.stringify(wide));
  // a large sample of the generator: mean 0, std 1, 68.3% / 95.4% within 1σ / 2σ
  const z = normalInit(100_001, 1, 42);
  const zs = stats(z);
  assert.ok(Math.abs(zs.mean) < 0.01 && Math.abs(zs.std - 1) < 0.01, JSON.stringify(zs));
  assert.ok(Math.abs(zs.within - 0.6827) < 0.005);
  assert.ok(Math.abs(z.filter((v) => Math.abs(v) <= 2).length / z.length - 0.9545) < 0.004);

  assert.ok(bert.p("encoder.layer.1.output.dense.bias").data.every((v) => v === 0));
  assert.ok(bert.p("classifier.bias").data.every((v) => v === 0));
  assert.ok(bert.p("embeddings.LayerNorm.weight").data.every((v) => v === 1));
  assert.ok(bert.p("encoder.layer.0.attention.output.LayerNorm.bias").data.every((v) => v === 0));
  const emb = bert.p("embeddings.word_embeddings.weight").data;
  assert.ok(emb.subarray(0, 48).every((v) => v === 0)); // pad_token_id 0
  assert.ok(emb.subarray(48, 96).some((v) => v !== 0));
  // another pad id: that row is zero instead
  const pad3 = Bert.create({ ...cfg, pad_token_id: 3 }, {}, 1).p(
    "embeddings.word_embeddings.weight",
  );
  assert.ok(pad3.data.subarray(3 * 48, 4 * 48).every((v) => v === 0));
  assert.ok(pad3.data.subarray(0, 48).some((v) => v !== 0));

  // seeded: the same seed, the same weights; another seed, others; parameters differ from
  // each other (each its own stream)
  const again = Bert.create(cfg, {}, 1), other = Bert.create(cfg, {}, 2);
  for (const [name, p] of bert.params) {
    assert.deepEqual(again.p(name).data, p.data, name);
    if (!isNoDecay(name) && name !== "embeddings.word_embeddings.weight") {
      assert.notDeepEqual(other.p(name).data, p.data, name);
    }
  }
  assert.notDeepEqual(
    bert.p("encoder.layer.0.attention.self.query.weight").data.subarray(0, 48),
    bert.p("encoder.layer.0.attention.self.key.weight").data.subarray(0, 48),
  );
  // parameter count by formula
  const H = 48, I = 20, V = 500, P = 10, L = 2, C = 3;
  const expected = V * H + P * H + 2 * H + 2 * H + L * layerSize(H, I) + (H * H + H) + (C * H + C);
  assert.equal(bert.numParameters(), expected);
});

Deno.test("Bert: missing or mis-shaped parameters, extras, deep copies", () => {
  const bert = Bert.create(CONFIG, { classifier: true }, 3);
  const params = new Map([...bert.params].map(([n, p]) => [n, { ...p }]));
  params.delete("encoder.layer.1.output.LayerNorm.bias");
  assert.throws(
    () => new Bert(bert.config, bert.heads, params),
    /missing parameter encoder.layer.1.output.LayerNorm.bias \[12\]/,
  );
  params.set("encoder.layer.1.output.LayerNorm.bias", { data: new Float32Array(13), shape: [13] });
  assert.throws(
    () => new Bert(bert.config, bert.heads, params),
    /has shape \[13\], expected \[12\]/,
  );

  // extras: training-only parameters under distill., counted apart from the model's own
  const n = bert.numParameters();
  const w = bert.addExtra(`${EXTRA_PREFIX}fit_dense.weight`, {
    data: new Float32Array(24 * 12),
    shape: [24, 12],
  });
  assert.equal(bert.p("distill.fit_dense.weight"), w);
  assert.equal(bert.numParameters(), n);
  assert.equal(bert.modelParams().has("distill.fit_dense.weight"), false);
  assert.deepEqual(bert.shapes().get("distill.fit_dense.weight"), [24, 12]);
  assert.throws(() => bert.addExtra("fit_dense.bias", w), /must start with "distill."/);
  assert.throws(() => bert.addExtra("distill.fit_dense.weight", w), /exists/);
  assert.throws(
    () => bert.addExtra("distill.x", { data: new Float32Array(5), shape: [2, 3] }),
    /5 values for \[2,3\]/,
  );
  // the constructor keeps extras it is given
  const withExtra = new Bert(bert.config, bert.heads, bert.params);
  assert.ok(withExtra.params.has("distill.fit_dense.weight"));

  // clone: its own arrays
  const copy = bert.clone();
  copy.p("classifier.weight").data[0] += 1;
  copy.p("distill.fit_dense.weight").data[0] = 7;
  assert.notEqual(copy.p("classifier.weight").data[0], bert.p("classifier.weight").data[0]);
  assert.equal(bert.p("distill.fit_dense.weight").data[0], 0);
  assert.throws(() => bert.p("nope"), /no parameter nope/);
});

Deno.test("config: heads follow the labels; widths that do not split into heads are refused", () => {
  assert.deepEqual(Bert.create({ ...CONFIG, id2label: undefined }).heads, {
    classifier: false,
    mlm: false,
  });
  assert.deepEqual(Bert.create(CONFIG, { mlm: true, classifier: false }).heads, {
    classifier: false,
    mlm: true,
  });
  assert.deepEqual(Bert.create(CONFIG, { tokenClassifier: true }).heads, {
    classifier: true,
    mlm: false,
    tokenClassifier: true,
  });
  assert.throws(
    () => Bert.create({ ...CONFIG, hidden_size: 14, num_attention_heads: 4 }),
    /hidden_size is not divisible by num_attention_heads/,
  );
  assert.throws(() => Bert.create({ ...CONFIG, hidden_act: "swish" as never }), /hidden_act/);
});

Deno.test("a sequence longer than max_position_embeddings is refused on every executor", async () => {
  const bert = Bert.create(
    {
      vocab_size: 7,
      hidden_size: 5,
      num_hidden_layers: 1,
      num_attention_heads: 1,
      intermediate_size: 3,
      max_position_embeddings: 4,
      type_vocab_size: 1,
    },
    { mlm: true },
    9,
  );
  for (
    const engine of [
      { kind: "onnxruntime" as const },
      { kind: "tfjs" as const, backend: "wasm" as const },
      { kind: "tfjs" as const, backend: "cpu" as const },
    ]
  ) {
    const inf = await openInference(bert, { engine, threads: 1 });
    try {
      const ok = await inf.run({ inputIds: Int32Array.from([1, 2, 3, 4]), batch: 1, seq: 4 });
      assert.deepEqual(ok.logits.dims, [1, 4, 7]); // MLM-only: its logits are `logits`
      await assert.rejects(
        () => inf.run({ inputIds: Int32Array.from([1, 2, 3, 4, 5]), batch: 1, seq: 5 }),
        JSON.stringify(engine),
      );
    } finally {
      await inf.close();
    }
  }
});
