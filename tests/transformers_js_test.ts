/**
 * An exported tinystill model folder, loaded by Hugging Face transformers.js
 * (`@huggingface/transformers`, local files only) as a user would: `text-classification` gives
 * tinystill's labels and probabilities, inputs longer than the trained length included (truncated
 * to `model_max_length`, not a crash), and `feature-extraction` gives the encoder's last hidden
 * state, not the logits.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { AutoTokenizer, env, pipeline } from "@huggingface/transformers";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { exportOnnx, limitModelMaxLength, saveOnnxFolder } from "../pipeline/onnx/export.ts";
import { OnnxEngine } from "../pipeline/onnx/engine.ts";
import { loadTokenizer } from "../pipeline/model/tokenizer.ts";
import { assertInputError, maxAbsErr, withTempDir } from "./_util.ts";

await setBackend("cpu");

const TRAINED_LENGTH = 24;

/** tinystill's own answer: class probabilities and the last hidden state of one text. */
function reference(bert: Bert, ids: number[]) {
  return tf.tidy(() => {
    const inputIds = tf.tensor2d([ids], [1, ids.length], "int32");
    const o = bert.forward({ inputIds }, { attentionScores: false, hiddenStates: false });
    return {
      probs: Array.from(tf.softmax(o.logits!).dataSync()),
      hidden: Float32Array.from(o.hiddenStates.at(-1)!.dataSync()),
    };
  });
}

Deno.test("transformers.js loads an exported student: text-classification (long inputs too) and feature-extraction", async () => {
  await withTempDir(async (dir) => {
    const tok = await loadTokenizer("fixtures/bert-base-uncased");
    const bert = Bert.create(
      {
        vocab_size: tok.vocabSize,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 48,
        max_position_embeddings: 40,
        // large weights, so the outputs depend visibly on the input
        initializer_range: 0.3,
        id2label: { "0": "ham", "1": "spam", "2": "other" },
      },
      { classifier: true },
      3,
    );
    await saveOnnxFolder(bert, join(dir, "student"), { tokenizer: tok, maxLength: TRAINED_LENGTH });
    const tconf = JSON.parse(
      await Deno.readTextFile(join(dir, "student", "tokenizer_config.json")),
    );
    assert.equal(tconf.model_max_length, TRAINED_LENGTH);
    const conf = JSON.parse(await Deno.readTextFile(join(dir, "student", "config.json")));
    // a quantized file is there, so transformers.js' own default (q8 in browsers) may stand
    assert.equal(conf["transformers.js_config"], undefined);

    env.allowRemoteModels = false;
    env.localModelPath = dir;
    const classify = await pipeline("text-classification", "student", { local_files_only: true });
    const tjsTok = await AutoTokenizer.from_pretrained("student", { local_files_only: true });
    /**
     * The ids transformers.js feeds: tinystill's, except that transformers.js truncates after
     * adding the special tokens, so a cut sequence ends in a word piece where tinystill (and
     * Python transformers) keep [SEP]; the model is compared on transformers.js' own ids.
     */
    const tjsIds = (text: string): number[] => {
      const ids = (tjsTok(text, { truncation: true }).input_ids.tolist() as bigint[][])[0].map(
        Number,
      );
      const mine = tok.encode(text, undefined, { maxLength: TRAINED_LENGTH }).inputIds;
      assert.equal(ids.length, mine.length, `token count of ${text.slice(0, 20)}…`);
      assert.deepEqual(ids.slice(0, -1), mine.slice(0, -1));
      return ids;
    };
    const seen = new Set<string>();
    const texts = [
      "cheap meds, click here now",
      "see you at the meeting tomorrow",
      // far longer than the trained length and than max_position_embeddings
      "free money ".repeat(120),
    ];
    for (const text of texts) {
      const ids = tjsIds(text);
      const { probs } = reference(bert, ids);
      seen.add(probs.map((p) => p.toFixed(3)).join());
      const got = await classify(text, { top_k: null }) as { label: string; score: number }[];
      assert.equal(got.length, 3);
      for (const { label, score } of got) {
        const i = Object.values(conf.id2label).indexOf(label);
        assert.ok(i >= 0, `unknown label ${label}`);
        assert.ok(
          Math.abs(score - probs[i]) <= 1e-5,
          `${label}: ${score} vs tinystill ${probs[i]}`,
        );
      }
    }

    assert.equal(seen.size, texts.length, "the texts get different probabilities");

    const extract = await pipeline("feature-extraction", "student", { local_files_only: true });
    for (const text of [texts[0], texts[2]]) {
      const ids = tjsIds(text);
      const { hidden } = reference(bert, ids);
      const out = await extract(text);
      assert.deepEqual(out.dims, [1, ids.length, 32], "last_hidden_state [1, tokens, hidden]");
      const err = maxAbsErr(out.data as Float32Array, hidden);
      assert.ok(err <= 1e-4, `hidden state differs by ${err}`);
    }

    // dtype q8 loads onnx/model_quantized.onnx: its probabilities are ONNX Runtime's on that file
    const q8 = await pipeline("text-classification", "student", {
      local_files_only: true,
      dtype: "q8",
    });
    const engine = await OnnxEngine.load(join(dir, "student", "onnx", "model_quantized.onnx"));
    try {
      for (const text of texts) {
        const ids = tjsIds(text);
        const out = await engine.run({ inputIds: Int32Array.from(ids), batch: 1, seq: ids.length });
        const z = Array.from(out.logits.data), m = Math.max(...z);
        const e = z.map((v) => Math.exp(v - m)), sum = e.reduce((a, b) => a + b, 0);
        const got = await q8(text, { top_k: null }) as { label: string; score: number }[];
        for (const { label, score } of got) {
          const i = Object.values(conf.id2label).indexOf(label);
          assert.ok(Math.abs(score - e[i] / sum) <= 1e-5, `q8 ${label}: ${score} vs ${e[i] / sum}`);
        }
      }
    } finally {
      await engine.close();
    }
    bert.dispose();
  });
});

Deno.test("q8 export: int8 per-channel Linear weights, under half the size, logits within 5%", async () => {
  const bert = Bert.create(
    {
      vocab_size: 1000,
      hidden_size: 128,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      intermediate_size: 512,
      max_position_embeddings: 64,
      initializer_range: 0.1,
      id2label: { "0": "a", "1": "b", "2": "c" },
    },
    { classifier: true },
    1,
  );
  const fp32 = exportOnnx(bert), q8 = exportOnnx(bert, { dtype: "q8" });
  const ratio = q8.length / fp32.length;
  // the Linear weights are 0.79M of the 0.93M parameters here; embeddings stay float32
  assert.ok(ratio < 0.45, `q8 file is ${ratio.toFixed(3)} of fp32`);
  const a = await OnnxEngine.load(fp32), b = await OnnxEngine.load(q8);
  try {
    const B = 16, S = 32;
    const ids = new Int32Array(B * S).map((_, i) => 1 + (i * 7919) % 999);
    const x = (await a.run({ inputIds: ids, batch: B, seq: S })).logits.data;
    const y = (await b.run({ inputIds: ids, batch: B, seq: S })).logits.data;
    const scale = Math.max(...Array.from(x, Math.abs));
    const err = maxAbsErr(y, x);
    assert.ok(err > 0, "the q8 graph computes something else than fp32 (it is quantized)");
    assert.ok(err <= 0.05 * scale, `q8 logits differ by ${err} (max |logit| ${scale})`);
    const argmax = (z: Float32Array, r: number) =>
      [0, 1, 2].reduce((k, c) => z[r * 3 + c] > z[r * 3 + k] ? c : k, 0);
    for (let r = 0; r < B; r++) assert.equal(argmax(y, r), argmax(x, r), `row ${r} label`);
    console.log(
      `q8: ${ratio.toFixed(3)} of the fp32 size; logits within ${(err / scale * 100).toFixed(1)}%`,
    );
  } finally {
    await a.close();
    await b.close();
    bert.dispose();
  }
});

Deno.test("model_max_length is never above the trained length or max_position_embeddings", async () => {
  await withTempDir(async (dir) => {
    const write = (v: unknown) =>
      Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(v));
    await write({ model_max_length: 512, do_lower_case: true });
    assert.equal(await limitModelMaxLength(dir, 128, 64), 64);
    await write({ model_max_length: 512 });
    assert.equal(await limitModelMaxLength(dir, 128, 256), 128);
    await write({ model_max_length: 32 });
    assert.equal(await limitModelMaxLength(dir, 128, 64), 32);
    const kept = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer_config.json")));
    assert.equal(kept.model_max_length, 32);
    await Deno.writeTextFile(join(dir, "tokenizer_config.json"), "{ model_max_length: ");
    await assertInputError(() => limitModelMaxLength(dir, 128, 64), [
      "tokenizer_config.json is not valid JSON",
      join(dir, "tokenizer_config.json"),
    ]);
    await Deno.remove(join(dir, "tokenizer_config.json"));
    assert.equal(await limitModelMaxLength(dir, 128, 64), null);
  });
});
