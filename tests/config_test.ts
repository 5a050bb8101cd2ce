/** config.json reading, validation, defaults and writing. */

import assert from "node:assert/strict";
import { assertInputError, withTempDir } from "./_util.ts";
import { join } from "node:path";
import {
  BERT_DEFAULTS,
  type BertConfig,
  makeConfig,
  numLabels,
  readConfig,
  writeConfig,
} from "../pipeline/model/config.ts";

/** bert-base-uncased's config.json as published (legacy keys included). */
const BERT_BASE = {
  architectures: ["BertForMaskedLM"],
  attention_probs_dropout_prob: 0.1,
  gradient_checkpointing: false,
  hidden_act: "gelu",
  hidden_dropout_prob: 0.1,
  hidden_size: 768,
  initializer_range: 0.02,
  intermediate_size: 3072,
  layer_norm_eps: 1e-12,
  max_position_embeddings: 512,
  model_type: "bert",
  num_attention_heads: 12,
  num_hidden_layers: 12,
  pad_token_id: 0,
  position_embedding_type: "absolute",
  transformers_version: "4.6.0.dev0",
  type_vocab_size: 2,
  use_cache: true,
  vocab_size: 30522,
};

const TINY = {
  model_type: "bert",
  vocab_size: 100,
  hidden_size: 312,
  num_hidden_layers: 4,
  num_attention_heads: 12,
  intermediate_size: 1200,
};

async function readWith(dir: string, cfg: unknown): Promise<BertConfig> {
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(cfg, null, 2));
  return readConfig(dir);
}

Deno.test("readConfig: bert-base-uncased config is read as is, unknown keys kept", async () => {
  await withTempDir(async (dir) => {
    const cfg = await readWith(dir, BERT_BASE);
    assert.deepEqual(cfg, BERT_BASE);
    assert.equal(cfg.gradient_checkpointing, false);
    assert.equal(numLabels(cfg), 0);
  });
});

Deno.test("readConfig: absent optional keys get the transformers defaults", async () => {
  await withTempDir(async (dir) => {
    const cfg = await readWith(dir, { ...TINY, my_key: [1, 2] });
    assert.equal(cfg.hidden_size, 312);
    assert.equal(cfg.vocab_size, 100);
    assert.equal(cfg.hidden_act, "gelu");
    assert.equal(cfg.layer_norm_eps, 1e-12);
    assert.equal(cfg.max_position_embeddings, 512);
    assert.equal(cfg.type_vocab_size, 2);
    assert.equal(cfg.pad_token_id, 0);
    assert.equal(cfg.hidden_dropout_prob, 0.1);
    assert.deepEqual(cfg.my_key, [1, 2]);

    const noType = { ...TINY } as Record<string, unknown>;
    delete noType.model_type;
    assert.equal((await readWith(dir, noType)).model_type, "bert");
  });
});

Deno.test("readConfig: missing file and invalid JSON (with line and column)", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "config.json");
    await assertInputError(() => readConfig(dir), [path, "not found"]);
    await Deno.writeTextFile(path, '{\n  "hidden_size": 768,\n  "vocab_size" 30522\n}\n');
    await assertInputError(() => readConfig(dir), [path, "line 3 column", "invalid JSON"]);
    await Deno.writeTextFile(path, '{\n  "hidden_size": 768,');
    await assertInputError(() => readConfig(dir), [path, "line 2", "invalid JSON"]);
    await Deno.writeTextFile(path, "[1]");
    await assertInputError(() => readConfig(dir), [path, "not a JSON object"]);
  });
});

Deno.test("readConfig: wrong model_type, missing or ill-typed required keys", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "config.json");
    await assertInputError(() => readWith(dir, { ...TINY, model_type: "roberta" }), [
      `${path}: model_type: unsupported model_type`,
      'expected "bert"',
      'got "roberta"',
    ]);
    const { hidden_size: _, ...noHidden } = TINY;
    await assertInputError(() => readWith(dir, noHidden), [
      `${path}: hidden_size: missing required key`,
      "expected positive integer",
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, num_attention_heads: "x" }), [
      `${path}: num_attention_heads:`,
      'expected positive integer, got "x"',
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, num_hidden_layers: 2.5 }), [
      "num_hidden_layers",
      "expected positive integer, got 2.5",
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, vocab_size: 0 }), [
      "vocab_size",
      "got 0",
    ]);
  });
});

Deno.test("readConfig: cross-key and optional-key validation", async () => {
  await withTempDir(async (dir) => {
    await assertInputError(() => readWith(dir, { ...TINY, hidden_size: 100 }), [
      "hidden_size: hidden_size is not divisible by num_attention_heads",
      "expected a multiple of num_attention_heads (12), got 100",
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, hidden_act: "swish" }), [
      "hidden_act",
      '"gelu", "gelu_new", "relu"',
      'got "swish"',
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, pad_token_id: 100 }), [
      "pad_token_id",
      "[0, vocab_size = 100)",
      "got 100",
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, hidden_dropout_prob: 1.5 }), [
      "hidden_dropout_prob",
      "number in [0, 1]",
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, layer_norm_eps: "1e-12" }), [
      "layer_norm_eps",
      "positive number",
    ]);
    await assertInputError(
      () => readWith(dir, { ...TINY, position_embedding_type: "relative_key" }),
      ["position_embedding_type", '"absolute"', "relative_key"],
    );
    await assertInputError(() => readWith(dir, { ...TINY, problem_type: "ranking" }), [
      "problem_type",
      "regression",
    ]);
    await assertInputError(() => readWith(dir, { ...TINY, architectures: "BertModel" }), [
      "architectures",
      "array of strings",
    ]);
  });
});

Deno.test("readConfig: labels (id2label, num_labels) and null problem_type", async () => {
  await withTempDir(async (dir) => {
    const cfg = await readWith(dir, {
      ...TINY,
      id2label: { "0": "ham", "1": "spam" },
      label2id: { ham: 0, spam: 1 },
      problem_type: null,
    });
    assert.equal(numLabels(cfg), 2);
    assert.equal("problem_type" in cfg, false);

    const n3 = await readWith(dir, { ...TINY, num_labels: 3 });
    assert.equal(numLabels(n3), 3);
    assert.deepEqual(n3.id2label, { "0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2" });
    assert.deepEqual(n3.label2id, { LABEL_0: 0, LABEL_1: 1, LABEL_2: 2 });
    assert.equal("num_labels" in n3, false);

    await assertInputError(
      () => readWith(dir, { ...TINY, id2label: { "0": "a", "2": "b" } }),
      ["id2label.1", "a label name for every id 0..1", "got nothing"],
    );
    await assertInputError(
      () => readWith(dir, { ...TINY, id2label: { "0": "a" }, num_labels: 2 }),
      ["num_labels", "disagrees with id2label"],
    );
    await assertInputError(
      () => readWith(dir, { ...TINY, label2id: { a: "0" } }),
      ["label2id.a", "non-negative integer"],
    );
  });
});

Deno.test("makeConfig: defaults plus overrides, same validation", async () => {
  assert.deepEqual(makeConfig(), BERT_DEFAULTS);
  const tiny = makeConfig({ hidden_size: 312, intermediate_size: 1200, num_hidden_layers: 4 });
  assert.equal(tiny.hidden_size, 312);
  assert.equal(tiny.num_attention_heads, 12);
  assert.equal(tiny.vocab_size, 30522);
  assert.equal(makeConfig({ hidden_size: undefined }).hidden_size, 768);
  await assertInputError(() => makeConfig({ hidden_size: 100 }), [
    "config: hidden_size",
    "num_attention_heads",
  ]);
  await assertInputError(
    () => makeConfig({ num_attention_heads: -1 }),
    ["config: num_attention_heads", "positive integer", "got -1"],
  );
  // BERT_DEFAULTS is not modified by makeConfig.
  makeConfig({ id2label: { "0": "x" } }).vocab_size = 1;
  assert.equal(BERT_DEFAULTS.vocab_size, 30522);
  assert.equal(BERT_DEFAULTS.id2label, undefined);
});

Deno.test("writeConfig: round trip, sorted keys, model_type bert, invalid configs rejected", async () => {
  await withTempDir(async (dir) => {
    const cfg = makeConfig({
      hidden_size: 312,
      intermediate_size: 1200,
      num_hidden_layers: 4,
      architectures: ["BertForSequenceClassification"],
      id2label: { "0": "ham", "1": "spam" },
      label2id: { ham: 0, spam: 1 },
      custom: "kept",
    });
    const path = await writeConfig(join(dir, "out"), cfg);
    assert.equal(path, join(dir, "out", "config.json"));
    const text = await Deno.readTextFile(path);
    assert.ok(text.endsWith("}\n"));
    const keys = Object.keys(JSON.parse(text));
    assert.deepEqual(keys, [...keys].sort());
    const back = await readConfig(join(dir, "out"));
    assert.deepEqual(back, cfg);
    assert.equal(back.model_type, "bert");
    assert.equal(numLabels(back), 2);

    await assertInputError(
      () => writeConfig(join(dir, "bad"), { ...cfg, hidden_size: 100 }),
      ["bad", "config.json", "hidden_size"],
    );
    await assert.rejects(Deno.stat(join(dir, "bad", "config.json")), Deno.errors.NotFound);
  });
});
