/**
 * An exported tinystill model folder, loaded by Hugging Face transformers.js
 * (`@huggingface/transformers`, local files only) as a user would: `text-classification` gives
 * tinystill's labels and probabilities, inputs longer than the trained length included (truncated
 * to `model_max_length`, not a crash), and `feature-extraction` gives the encoder's last hidden
 * state, not the logits; token classification and question answering decode tinystill's logits as
 * tinystill does.
 *
 * "tinystill's" outputs are its model's inference graph run by tfjs (wasm), an executor other than
 * the ONNX Runtime transformers.js runs the exported file on: these tests check the folder and how
 * transformers.js reads it (inputs, output names, labels, truncation, span decoding). That graph's
 * numbers are checked against float64 PyTorch in `onnx_test.ts` and `onnx_heads_test.ts`.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { AutoTokenizer, env, pipeline } from "@huggingface/transformers";
import { Bert, type BertHeads } from "../pipeline/model/bert.ts";
import {
  bestSpan,
  encodeQuestionContext,
  type SpanEncoding,
  spanText,
} from "../pipeline/model/align.ts";
import { exportOnnx, limitModelMaxLength, saveOnnxFolder } from "../pipeline/graph/export.ts";
import { type Inference, openInference } from "../pipeline/engines/inference.ts";
import { loadTokenizer } from "../pipeline/model/tokenizer/io.ts";
import type { BertTokenizer } from "../pipeline/model/tokenizer/tokenizer.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { assertInputError, maxAbsErr, withTempDir } from "./_util.ts";

const TRAINED_LENGTH = 24;

/** tinystill's model on tfjs (wasm): its inference graph, run by the other executor. */
function tinystill(bert: Bert): Promise<Inference> {
  return openInference(bert, { engine: { kind: "tfjs", backend: "wasm" } });
}

/** Run one unpadded row (ids, token types) through `engine`. */
function runRow(engine: Inference, ids: number[], types?: number[]) {
  return engine.run({
    inputIds: Int32Array.from(ids),
    tokenTypeIds: types ? Int32Array.from(types) : undefined,
    batch: 1,
    seq: ids.length,
  });
}

/** tinystill's own answer: class probabilities and the last hidden state of one text. */
async function reference(engine: Inference, ids: number[]) {
  const out = await runRow(engine, ids);
  return { probs: softmax(out.logits.data), hidden: out.last_hidden_state.data };
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
    const ref = await tinystill(bert);
    const seen = new Set<string>();
    const texts = [
      "cheap meds, click here now",
      "see you at the meeting tomorrow",
      // far longer than the trained length and than max_position_embeddings
      "free money ".repeat(120),
    ];
    for (const text of texts) {
      const ids = tjsIds(text);
      const { probs } = await reference(ref, ids);
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
      const { hidden } = await reference(ref, ids);
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
    const engine = await openInference(join(dir, "student", "onnx", "model_quantized.onnx"));
    try {
      for (const text of texts) {
        const ids = tjsIds(text);
        const p = softmax((await runRow(engine, ids)).logits.data);
        const got = await q8(text, { top_k: null }) as { label: string; score: number }[];
        for (const { label, score } of got) {
          const i = Object.values(conf.id2label).indexOf(label);
          assert.ok(Math.abs(score - p[i]) <= 1e-5, `q8 ${label}: ${score} vs ${p[i]}`);
        }
      }
    } finally {
      await engine.close();
      await ref.close();
    }
  });
});

/**
 * A 3-class model of `config`, exported fp32 and q8, run on the same `B × S` ids by ONNX Runtime:
 * the q8 file's size as a share of the fp32 file's, and both runs' logits and last hidden state.
 */
async function q8AgainstFp32(
  config: Partial<BertConfig>,
  seed: number,
  id: (i: number) => number,
  B = 16,
  S = 32,
) {
  const bert = Bert.create(
    { ...config, initializer_range: 0.1, id2label: { "0": "a", "1": "b", "2": "c" } },
    { classifier: true },
    seed,
  );
  const fp32 = exportOnnx(bert), q8 = exportOnnx(bert, { dtype: "q8" });
  const a = await openInference(fp32), b = await openInference(q8);
  try {
    const ids = new Int32Array(B * S).map((_, i) => id(i));
    const outputs = ["logits", "last_hidden_state"];
    const x = await a.run({ inputIds: ids, batch: B, seq: S }, outputs);
    const y = await b.run({ inputIds: ids, batch: B, seq: S }, outputs);
    return { ratio: q8.length / fp32.length, x, y, B };
  } finally {
    await a.close();
    await b.close();
  }
}

Deno.test("q8 export: int8 per-channel Linear weights and per-row word embeddings, a third of the size, logits within 5%", async () => {
  const { ratio, x: fx, y: fy, B } = await q8AgainstFp32(
    {
      vocab_size: 1000,
      hidden_size: 128,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      intermediate_size: 512,
      max_position_embeddings: 64,
    },
    1,
    (i) => 1 + (i * 7919) % 999,
  );
  // the Linear weights (0.79M of 0.93M parameters) and the word embeddings (0.13M) are int8
  assert.ok(ratio < 0.32, `q8 file is ${ratio.toFixed(3)} of fp32`);
  const x = fx.logits.data, y = fy.logits.data;
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
});

Deno.test("q8 export of an embedding-heavy student (vocab 30,522 × 64): int8 rows, 0.27× the file, logits and hidden states within 5%", async () => {
  // the shape of the shipped 4×64 student: 1.95M of its 2.2M parameters are word embeddings;
  // ids from all over the table: every row has its own scale
  const { ratio, x, y } = await q8AgainstFp32(
    {
      vocab_size: 30522,
      hidden_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      intermediate_size: 256,
      max_position_embeddings: 64,
    },
    2,
    (i) => 1 + (i * 104729) % 30521,
  );
  assert.ok(ratio < 0.3, `q8 file is ${ratio.toFixed(3)} of fp32`);
  for (const k of ["logits", "last_hidden_state"]) {
    const scale = Math.max(...Array.from(x[k].data, Math.abs));
    const err = maxAbsErr(y[k].data, x[k].data);
    assert.ok(err > 0 && err <= 0.05 * scale, `${k}: ${err} of ${scale}`);
  }
  console.log(`q8 (embedding-heavy): ${ratio.toFixed(3)} of the fp32 size`);
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

// ---------------------------------------------------------------------------------------------
// token classification and extractive QA

const NER_TAGS = { "0": "O", "1": "B-PER", "2": "I-PER", "3": "B-LOC", "4": "I-LOC" };

/** A small random encoder over the bert-base-uncased vocabulary, with the given heads. */
function tinyModel(vocab: number, heads: Partial<BertHeads>, labels: boolean, seed: number): Bert {
  return Bert.create(
    {
      vocab_size: vocab,
      hidden_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      intermediate_size: 48,
      max_position_embeddings: 40,
      initializer_range: 0.3,
      ...(labels ? { id2label: NER_TAGS } : {}),
    },
    { mlm: false, ...heads },
    seed,
  );
}

function softmax(z: ArrayLike<number>): number[] {
  const m = Math.max(...Array.from(z));
  const e = Array.from(z, (v) => Math.exp(v - m)), sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

interface TokenEntity {
  entity: string;
  score: number;
  index: number;
  word: string;
}

/**
 * What transformers.js' token-classification pipeline returns (aggregation "none"), computed from
 * per-token logits `[seq, labels]` row-major: per token the argmax label and its softmax
 * probability; special tokens ([CLS], [SEP], [PAD]) skipped, labels in `ignore` dropped.
 */
function expectedEntities(
  tok: BertTokenizer,
  ids: number[],
  logits: ArrayLike<number>,
  ignore: string[],
): TokenEntity[] {
  const C = Object.keys(NER_TAGS).length;
  const out: TokenEntity[] = [];
  const specials = new Set([tok.clsId, tok.sepId, tok.padId]);
  ids.forEach((id, j) => {
    const p = softmax(Array.from({ length: C }, (_, c) => logits[j * C + c]));
    const k = p.indexOf(Math.max(...p));
    const entity = NER_TAGS[String(k) as keyof typeof NER_TAGS];
    if (ignore.includes(entity) || specials.has(id)) return;
    out.push({ entity, score: p[k], index: j, word: tok.idToToken[id] });
  });
  return out;
}

function assertEntities(got: TokenEntity[], want: TokenEntity[], tag: string): void {
  assert.deepEqual(
    got.map((e) => [e.entity, e.index, e.word]),
    want.map((e) => [e.entity, e.index, e.word]),
    `${tag}: entities`,
  );
  got.forEach((e, i) => {
    const d = Math.abs(e.score - want[i].score);
    assert.ok(d <= 1e-5, `${tag}: token ${e.index} score ${e.score} vs ${want[i].score}`);
  });
}

Deno.test("transformers.js loads a token-classification student: per-token labels and scores are tinystill's (fp32, batched, q8)", async () => {
  await withTempDir(async (dir) => {
    const tok = await loadTokenizer("fixtures/bert-base-uncased");
    const bert = tinyModel(tok.vocabSize, { classifier: true, tokenClassifier: true }, true, 5);
    const texts = [
      "sarah lives in the united states of america",
      "john met mary in paris and london yesterday with tokenization",
    ];
    // A random classifier gives most tokens the same label: each label's logit is standardised
    // over these texts' tokens (its weight row / std, bias −mean / std), so the labels vary and
    // the bias is not zero.
    const C = Object.keys(NER_TAGS).length, H = 32;
    const before = await tinystill(bert);
    try {
      const ids = texts.flatMap((t) => tok.encode(t).inputIds);
      const z = (await runRow(before, ids)).logits.data; // [1, tokens, C]
      const w = bert.p("classifier.weight").data, b = bert.p("classifier.bias").data;
      for (let c = 0; c < C; c++) {
        const col = ids.map((_, j) => z[j * C + c]);
        const mean = col.reduce((a, v) => a + v, 0) / col.length;
        const std = Math.sqrt(col.reduce((a, v) => a + (v - mean) ** 2, 0) / col.length);
        for (let h = 0; h < H; h++) w[c * H + h] /= std;
        b[c] = (b[c] - mean) / std;
      }
    } finally {
      await before.close();
    }
    await saveOnnxFolder(bert, join(dir, "ner"), { tokenizer: tok, maxLength: TRAINED_LENGTH });
    const conf = JSON.parse(await Deno.readTextFile(join(dir, "ner", "config.json")));
    assert.deepEqual(conf.architectures, ["BertForTokenClassification"]);
    assert.deepEqual(conf.id2label, NER_TAGS);

    env.allowRemoteModels = false;
    env.localModelPath = dir;
    const ner = await pipeline("token-classification", "ner", { local_files_only: true });
    const mine = await tinystill(bert);
    const ref: { ids: number[]; logits: Float32Array }[] = [];
    for (const text of texts) {
      const ids = tok.encode(text).inputIds;
      ref.push({ ids, logits: (await runRow(mine, ids)).logits.data });
    }
    await mine.close();
    const labels = new Set<string>();
    for (const [t, text] of texts.entries()) {
      const { ids, logits } = ref[t];
      // the default drops "O"; ignore_labels: [] keeps every (non-special) token
      const all = expectedEntities(tok, ids, logits, []);
      for (const e of all) labels.add(e.entity);
      assertEntities(
        await ner(text) as TokenEntity[],
        expectedEntities(tok, ids, logits, ["O"]),
        `"${text}"`,
      );
      assertEntities(await ner(text, { ignore_labels: [] }) as TokenEntity[], all, `"${text}" all`);
      assert.equal(all.length, ids.length - 2, "every token but [CLS] and [SEP]");
    }
    assert.ok(labels.has("O") && labels.size >= 3, `labels seen: ${[...labels]}`);

    // a batch of both: transformers.js pads the shorter text; the padding changes nothing
    const batched = await ner(texts, { ignore_labels: [] }) as TokenEntity[][];
    batched.forEach((got, t) => {
      assertEntities(got, expectedEntities(tok, ref[t].ids, ref[t].logits, []), `batch row ${t}`);
    });

    // dtype q8 loads onnx/model_quantized.onnx: ONNX Runtime's logits on that file
    const q8 = await pipeline("token-classification", "ner", {
      local_files_only: true,
      dtype: "q8",
    });
    const engine = await openInference(join(dir, "ner", "onnx", "model_quantized.onnx"));
    try {
      for (const [t, text] of texts.entries()) {
        const { ids } = ref[t];
        const out = await runRow(engine, ids);
        assert.deepEqual(out.logits.dims, [1, ids.length, 5]);
        assertEntities(
          await q8(text, { ignore_labels: [] }) as TokenEntity[],
          expectedEntities(tok, ids, out.logits.data, []),
          `q8 "${text}"`,
        );
      }
    } finally {
      await engine.close();
    }
  });
});

interface QaAnswer {
  answer: string;
  score: number;
}

/**
 * tinystill's answers from start/end logits, by transformers.js' rule: start and end
 * probabilities are softmaxes over [CLS] and the context tokens, [CLS] itself then scored 0, and
 * spans i ≤ j rank by p_start(i) · p_end(j) — the order of start[i] + end[j], which `bestSpan`
 * maximises (the contexts here are shorter than its 30-token limit). The text is the context's
 * words from the start token's to the end token's (`spanText`).
 */
function expectedAnswers(
  enc: SpanEncoding,
  context: string,
  start: ArrayLike<number>,
  end: ArrayLike<number>,
  topK: number,
): QaAnswer[] {
  const ctx = Array.from({ length: enc.ids.length }, (_, i) => i).filter((i) =>
    enc.tokenWords[i] >= 0
  );
  const probs = (z: ArrayLike<number>) => {
    const p = softmax([z[0], ...ctx.map((i) => z[i])]);
    return new Map(ctx.map((i, k) => [i, p[k + 1]]));
  };
  const ps = probs(start), pe = probs(end);
  const spans: { i: number; j: number; score: number }[] = [];
  for (const i of ctx) {
    for (const j of ctx) if (j >= i) spans.push({ i, j, score: ps.get(i)! * pe.get(j)! });
  }
  spans.sort((a, b) => b.score - a.score);
  const best = bestSpan(start, end, enc.tokenWords);
  assert.deepEqual([best.start, best.end], [spans[0].i, spans[0].j], "bestSpan's pick");
  return spans.slice(0, topK).map(({ i, j, score }) => ({
    answer: spanText(context, enc.tokenWords, enc.wordSpans, i, j),
    score,
  }));
}

function assertAnswers(got: QaAnswer[], want: QaAnswer[], tag: string): void {
  assert.deepEqual(got.map((a) => a.answer), want.map((a) => a.answer), `${tag}: answers`);
  got.forEach((a, k) => {
    const e = Math.abs(a.score - want[k].score) / want[k].score;
    assert.ok(e <= 1e-4, `${tag}: score ${a.score} vs tinystill ${want[k].score}`);
  });
}

Deno.test("transformers.js loads a question-answering student: its answer and score are tinystill's span decoding (fp32, batched, q8)", async () => {
  await withTempDir(async (dir) => {
    const tok = await loadTokenizer("fixtures/bert-base-uncased");
    const bert = tinyModel(tok.vocabSize, { classifier: false, qa: true }, false, 8);
    await saveOnnxFolder(bert, join(dir, "qa"), { tokenizer: tok, maxLength: 40 });
    const conf = JSON.parse(await Deno.readTextFile(join(dir, "qa", "config.json")));
    assert.deepEqual(conf.architectures, ["BertForQuestionAnswering"]);

    env.allowRemoteModels = false;
    env.localModelPath = dir;
    const qa = await pipeline("question-answering", "qa", { local_files_only: true });
    const tjsTok = await AutoTokenizer.from_pretrained("qa", { local_files_only: true });
    // lowercase whole-vocabulary words: the decoded pieces are the context's own words
    const pairs: [string, string][] = [
      ["who lives in paris", "sarah lives in paris with her brother and their old dog"],
      ["what is the capital", "the capital of france is paris and it is a large city"],
      ["where did they go", "after lunch they went to the river near the old house"],
    ];
    const mine = await tinystill(bert);
    const refs: { enc: SpanEncoding; context: string; start: Float32Array; end: Float32Array }[] =
      [];
    for (const [question, context] of pairs) {
      const enc = encodeQuestionContext(tok, question, context, undefined, 40);
      const t = tjsTok(question, { text_pair: context });
      assert.deepEqual((t.input_ids.tolist() as bigint[][])[0].map(Number), enc.ids);
      assert.deepEqual((t.token_type_ids!.tolist() as bigint[][])[0].map(Number), enc.types);
      const out = await runRow(mine, enc.ids, enc.types);
      refs.push({ enc, context, start: out.start_logits.data, end: out.end_logits.data });
    }
    await mine.close();
    const seen = new Set<string>();
    for (const [k, [question, context]] of pairs.entries()) {
      const { enc, start, end } = refs[k];
      const want = expectedAnswers(enc, context, start, end, 3);
      seen.add(want[0].answer);
      assertAnswers([await qa(question, context) as QaAnswer], want.slice(0, 1), question);
      assertAnswers(await qa(question, context, { top_k: 3 }) as QaAnswer[], want, question);
    }
    assert.ok(seen.size >= 2, `different answers: ${[...seen]}`);

    // a batch: transformers.js pads the shorter pairs; the padding changes nothing
    const batched = await qa(pairs.map((p) => p[0]), pairs.map((p) => p[1])) as QaAnswer[];
    batched.forEach((got, k) => {
      const r = refs[k];
      assertAnswers([got], expectedAnswers(r.enc, r.context, r.start, r.end, 1), `batch ${k}`);
    });

    // dtype q8 loads onnx/model_quantized.onnx: ONNX Runtime's logits on that file
    const q8 = await pipeline("question-answering", "qa", { local_files_only: true, dtype: "q8" });
    const engine = await openInference(join(dir, "qa", "onnx", "model_quantized.onnx"));
    try {
      for (const [k, [question, context]] of pairs.entries()) {
        const { enc } = refs[k];
        const out = await runRow(engine, enc.ids, enc.types);
        assert.deepEqual(out.start_logits.dims, [1, enc.ids.length]);
        const want = expectedAnswers(enc, context, out.start_logits.data, out.end_logits.data, 3);
        assertAnswers(await q8(question, context, { top_k: 3 }) as QaAnswer[], want, `q8 ${k}`);
      }
    } finally {
      await engine.close();
    }
  });
});
