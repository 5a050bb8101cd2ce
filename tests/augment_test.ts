/**
 * The `augment` stage (TinyBERT data augmentation) on a tiny masked-LM model the test builds:
 * candidates equal the top-k of the MLM logits of the masked row alone, unpadded, from the
 * model's full export (`exportOnnx`, `[1, S, V]` MLM logits, on ONNX Runtime: the stage runs its
 * masked rows in padded batches with the MLM head on the masked positions only); every augmented
 * row is its original with some words replaced by one of their
 * candidates, at the rate p_t; multi-piece words are masked whole (or kept); labels, dev and test
 * are copied; the output is a function of the seed; an MLM-less checkpoint and another vocabulary
 * are refused before any compute; teacher-forward and distill read the output as it is.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { tf } from "../pipeline/engines/tfjs_backend.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { loadTokenizer } from "../pipeline/model/tokenizer/io.ts";
import { exportOnnx, mlmOutputName } from "../pipeline/graph/export.ts";
import { planPipeline, runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { PartReader } from "../pipeline/store/parquet.ts";
import {
  augmentedCopy,
  drawDecisions,
  topCandidates,
  vocabClasses,
  wordSpans,
} from "../pipeline/stages/augment.ts";
import { assertInputError, withTempDir } from "./_util.ts";

const VOCAB_DIR = resolve("fixtures/bert-base-uncased");

/** Sentences with single- and multi-piece words (e.g. "xylophonist" is several pieces). */
const SENTENCES = [
  "the film was a delightful surprise",
  "an unbelievably tedious xylophonist performance",
  "i loved every minute of this wonderful story",
  "the plot was transmogrified into nonsense",
  "a warm and funny film about families",
  "terrible acting, worse dialogue!",
  "the cinematographer captured breathtaking landscapes",
  "nothing happens for two hours",
  "a masterpiece of understated storytelling",
  "the soundtrack is overbearing and repetitive",
  "brilliant performances by the whole cast",
  "i fell asleep halfway through",
];

async function writeData(dir: string): Promise<string> {
  const lines = ["text,label"];
  for (let r = 0; r < 5; r++) {
    SENTENCES.forEach((s, i) => {
      const words = s.split(" ");
      const text = r === 0
        ? s
        : [...words.slice(r % words.length), ...words.slice(0, r % words.length)]
          .join(" ");
      lines.push(`"${text}",${i % 2 ? "neg" : "pos"}`);
    });
  }
  const path = join(dir, "data.csv");
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  return path;
}

const CONFIG = {
  vocab_size: 30522,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 48,
  max_position_embeddings: 32,
};

/** A tiny model saved with the bert-base-uncased vocabulary; `mlm` decides its head. */
async function writeModel(dir: string, mlm: boolean, vocabSize = 30522): Promise<Bert> {
  const bert = Bert.create(makeConfig({ ...CONFIG, vocab_size: vocabSize }), {
    classifier: false,
    mlm,
  }, 11);
  await saveBert(bert, dir, { dtype: "F32" });
  for (const f of ["vocab.txt", "tokenizer.json", "tokenizer_config.json"]) {
    if (vocabSize === 30522) await Deno.copyFile(join(VOCAB_DIR, f), join(dir, f));
  }
  return bert;
}

function yaml(out: string, data: string, model: string, augment: string, more = ""): string {
  return `name: aug
output_dir: ${out}
backend: wasm
seed: 5
datasets:
  d:
    format: csv
    path: ${data}
    labels: [neg, pos]
    split: { dev: 0.15, test: 0.15, seed: 3 }
teacher:
  tokenizer: ${VOCAB_DIR}
  config: { num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2, intermediate_size: 48,
            max_position_embeddings: 32 }
student:
  config: { num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2, intermediate_size: 24,
            max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: d, max_seq_length: 12, rows_per_part: 8 }
  - augment: { model: ${model}, examples_per_part: 8, rows_per_part: 16, batch_size: 7, ${augment} }
${more}`;
}

type Rows = Record<string, unknown[]>;
async function readStore(dir: string): Promise<Rows> {
  const reader = await PartReader.open(dir);
  const out: Rows = {};
  for (const c of reader.columns) out[c.name] = [];
  for await (const part of reader.parts()) {
    for (const c of reader.columns) {
      out[c.name].push(...Array.from(part.columns[c.name] as ArrayLike<unknown>));
    }
  }
  return out;
}

const arr = (x: unknown) => Array.from(x as Int32Array);

/** Word spans computed from the token strings (independently of the stage's `wordSpans`). */
function wordsOf(tokens: string[]): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < tokens.length;) {
    const t = tokens[i];
    if (t.startsWith("[") || t.startsWith("##")) {
      i++;
      continue;
    }
    let e = i + 1;
    while (e < tokens.length && tokens[e].startsWith("##")) e++;
    if (/[a-z0-9]/i.test(t)) out.push([i, e]);
    i = e;
  }
  return out;
}

interface Run {
  dir: string;
  reports: StageReport[];
  by(key: string): StageReport;
}

async function run(out: string, text: string): Promise<Run> {
  const p = parsePipeline(text, join(out, "p.yaml"), BUILTIN_STAGES);
  const reports = await runPipeline(p, { quiet: true });
  return {
    dir: out,
    reports,
    by: (k) => reports.find((r) => r.key === k) as StageReport,
  };
}

Deno.test("augment: candidates are the MLM head's top-k on the masked row; rows built from them", async () => {
  await withTempDir(async (dir) => {
    const data = await writeData(dir);
    const modelDir = join(dir, "mlm");
    const bert = await writeModel(modelDir, true);
    const K = 6, N = 8, P = 0.4;
    const r = await run(
      join(dir, "a"),
      yaml(join(dir, "runs"), data, modelDir, `n: ${N}, k: ${K}, p_t: ${P}`),
    );
    const tokDir = r.by("tokenize").dir, augDir = r.by("augment").dir;
    const tok = await loadTokenizer(join(tokDir, "tokenizer"));
    const orig = await readStore(join(tokDir, "train"));
    const train = await readStore(join(augDir, "train"));
    const cands = await readStore(join(augDir, "candidates"));
    const T = orig.length.length;
    assert.equal(train.length.length, T * (N + 1));

    // 1. candidates: for every predicted word, the full MLM logits of the masked row alone
    //    (unpadded, batch 1), argsorted
    const full = await openInference(exportOnnx(bert, { outputs: "logits" }), { threads: 1 });
    const V = CONFIG.vocab_size;
    let checked = 0, multi = 0, nearTies = 0;
    for (let i = 0; i < T; i++) {
      const ids = arr(orig.input_ids[i]);
      const tokens = ids.map((id) => tok.idToToken[id]);
      const spans = wordsOf(tokens);
      assert.deepEqual(arr(cands.words[i]), spans.flat(), `row ${i}: word spans`);
      const c = arr(cands.candidates[i]);
      for (let w = 0; w < spans.length; w++) {
        const got = c.slice(w * K, (w + 1) * K);
        if (got[0] === -1) continue;
        const [s, e] = spans[w];
        if (e - s > 1) multi++;
        const masked = [...ids.slice(0, s), tok.maskId!, ...ids.slice(e)];
        const types = arr(orig.token_type_ids[i]);
        const mtypes = [...types.slice(0, s), types[s], ...types.slice(e)];
        const out = await full.run({
          inputIds: Int32Array.from(masked),
          tokenTypeIds: Int32Array.from(mtypes),
          batch: 1,
          seq: masked.length,
        }, [mlmOutputName(bert)]);
        const logits = out[mlmOutputName(bert)].data.subarray(s * V, (s + 1) * V);
        const self = e - s === 1 ? ids[s] : -1;
        const allowed = Array.from(logits.keys()).filter((v) => {
          const t = tok.idToToken[v];
          return !/^\[.*\]$/.test(t) && !t.startsWith("##") && /[\p{L}\p{N}]/u.test(t) &&
            v !== self;
        });
        const want = allowed.sort((a, b) => logits[b] - logits[a] || a - b).slice(0, K);
        const what = `row ${i} word ${w} (${tokens.slice(s, e).join(" ")})`;
        if (got.join() !== want.join()) {
          // float32 on differently shaped batches: only a near-tie may swap places, and the
          // candidates must still be K allowed entries ordered by the logits
          nearTies++;
          assert.deepEqual(new Set(got).size, K, what);
          for (let m = 0; m < K; m++) {
            assert.ok(allowed.includes(got[m]), `${what}: ${got[m]} not allowed`);
            assert.ok(
              Math.abs(logits[got[m]] - logits[want[m]]) < 1e-4,
              `${what}: place ${m} is ${got[m]} (${logits[got[m]]}), not ${want[m]} ` +
                `(${logits[want[m]]})`,
            );
          }
        }
        checked++;
      }
    }
    await full.close();
    assert.ok(nearTies <= 2, `${nearTies} words differ by a near-tie`);
    assert.ok(checked > 100, `only ${checked} words checked`);
    assert.ok(multi > 3, `only ${multi} multi-piece words predicted`);

    // 2. rows: originals first and equal to tokenize's; copy j of i at j*T+i, same label; each
    //    copy is its original with some words replaced by one of their candidates
    let words = 0, replaced = 0, multiReplaced = 0, shorter = 0;
    for (let row = 0; row < T * (N + 1); row++) {
      const j = Math.floor(row / T), i = row % T;
      assert.equal(train.augmented[row], j);
      assert.equal(train.source_row[row], i);
      assert.equal(train.label[row], orig.label[i]);
      assert.equal(train.truncated[row], orig.truncated[i]);
      const ids = arr(train.input_ids[row]);
      assert.equal(train.length[row], ids.length);
      assert.deepEqual(arr(train.attention_mask[row]), ids.map(() => 1));
      const o = arr(orig.input_ids[i]);
      if (j === 0) {
        assert.deepEqual(ids, o);
        continue;
      }
      const spans = wordsOf(o.map((id) => tok.idToToken[id]));
      const c = arr(cands.candidates[i]);
      // walk the original: outside words tokens are equal; each word stays or becomes one
      // candidate piece
      let at = 0, q = 0;
      for (let w = 0; w < spans.length; w++) {
        const [s, e] = spans[w];
        for (; q < s; q++, at++) assert.equal(ids[at], o[q], `row ${row}: non-word token ${q}`);
        words++;
        const same = ids.slice(at, at + e - s).join() === o.slice(s, e).join();
        const cand = c.slice(w * K, (w + 1) * K);
        if (cand.includes(ids[at]) && !(same && e - s === 1)) {
          replaced++;
          if (e - s > 1) multiReplaced++, shorter++;
          at += 1;
        } else {
          assert.ok(same, `row ${row}: word ${w} is neither kept nor a candidate`);
          at += e - s;
        }
        q = e;
      }
      for (; q < o.length; q++, at++) assert.equal(ids[at], o[q]);
      assert.equal(at, ids.length);
    }
    const rate = replaced / words;
    // 1,000+ word slots: 4 standard deviations of a binomial rate around p_t
    const sd = Math.sqrt(P * (1 - P) / words);
    assert.ok(words > 1000, `${words} words`);
    assert.ok(Math.abs(rate - P) < 4 * sd, `replacement rate ${rate} vs p_t ${P} (sd ${sd})`);
    assert.ok(multiReplaced > 0 && shorter > 0, "no multi-piece word was replaced");
    const m = r.by("augment").result!;
    assert.equal(m.counts!.words_replaced, replaced);
    assert.equal(m.counts!.words_in_copies, words);

    // 3. dev and test: every column as tokenize wrote it
    for (const split of ["dev", "test"]) {
      const a = await readStore(join(tokDir, split)), b = await readStore(join(augDir, split));
      assert.deepEqual(Object.keys(b), Object.keys(a));
      for (const k of Object.keys(a)) {
        assert.deepEqual(
          b[k].map((x) => ArrayBuffer.isView(x) ? arr(x) : x),
          a[k].map((x) => ArrayBuffer.isView(x) ? arr(x) : x),
          `${split}.${k}`,
        );
      }
    }
    const meta = JSON.parse(await Deno.readTextFile(join(augDir, "labels.json")));
    const tmeta = JSON.parse(await Deno.readTextFile(join(tokDir, "labels.json")));
    assert.deepEqual(meta.labels, tmeta.labels);
    assert.equal(meta.augmentation.n, N);
    bert.dispose();
  });
});

Deno.test("augment: replacement rate is p_t and multi-piece words follow multi_piece", () => {
  // 3,000 examples of 12 words (every third a 3-piece word), n = 20: 720,000 word slots
  const P = 0.3, N = 20, K = 4, W = 12;
  const idToToken = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "word", "##x", "##y", ",", "other"];
  const vc = vocabClasses(idToToken);
  const ids: number[] = [1];
  for (let w = 0; w < W; w++) ids.push(...(w % 3 === 0 ? [4, 5, 6] : [4]), ...(w === 5 ? [7] : []));
  ids.push(2);
  const row = Int32Array.from(ids), types = new Int32Array(ids.length);
  const spans = wordSpans(row, row.length, vc, "whole-word-mask");
  assert.equal(spans.length, W); // "," and [CLS]/[SEP] are not words
  assert.deepEqual(spans[0], [1, 4]);
  const keep = wordSpans(row, row.length, vc, "keep");
  assert.equal(keep.length, W - 4); // the 4 three-piece words are kept
  const cands = new Int32Array(W * K).fill(8);
  let replaced = 0, lengthOk = 0;
  for (let i = 0; i < 3000; i++) {
    const dec = drawDecisions(7, i, W, N, P);
    for (let j = 1; j <= N; j++) {
      const a = augmentedCopy(row, types, row.length, spans, cands, K, dec, j);
      replaced += a.replaced;
      // each replaced 3-piece word shortens the row by 2
      let shorter = 0;
      for (let w = 0; w < W; w += 3) shorter += dec.replace[(j - 1) * W + w] ? 2 : 0;
      if (a.ids.length === row.length - shorter) lengthOk++;
    }
  }
  const rate = replaced / (3000 * N * W);
  assert.ok(Math.abs(rate - P) < 0.003, `rate ${rate}`);
  assert.equal(lengthOk, 3000 * N);
  // no candidates: nothing replaced
  const none = augmentedCopy(row, types, row.length, spans, new Int32Array(W * K).fill(-1), K, {
    replace: new Uint8Array(N * W).fill(1),
    pick: new Float32Array(N * W),
  }, 1);
  assert.deepEqual(Array.from(none.ids), ids);
  // the pick is uniform over the word's candidates
  const counts = new Array(K).fill(0);
  const four = Int32Array.from({ length: W * K }, (_, q) => 100 + (q % K));
  for (let i = 0; i < 2000; i++) {
    const dec = drawDecisions(1, i, W, 1, 1);
    const a = augmentedCopy(row, types, row.length, spans, four, K, dec, 1);
    for (const id of a.ids) if (id >= 100) counts[id - 100]++;
  }
  const total = counts.reduce((x, y) => x + y, 0);
  for (const c of counts) assert.ok(Math.abs(c / total - 1 / K) < 0.02, `picks ${counts}`);
});

Deno.test("augment: topCandidates = argsort of the allowed logits (ties: lower id)", () => {
  const V = 50;
  const r = (s: number) => () => (s = (s * 16807) % 2147483647) / 2147483647;
  const rand = r(3);
  const banned = Uint8Array.from({ length: V }, (_, v) => (v % 7 === 0 ? 1 : 0));
  for (let trial = 0; trial < 50; trial++) {
    const logits = Float32Array.from({ length: 2 * V }, () => Math.round(rand() * 20) / 4);
    const self = trial % V;
    const want = Array.from({ length: V }, (_, v) => v)
      .filter((v) => !banned[v] && v !== self)
      .sort((a, b) => logits[V + b] - logits[V + a] || a - b)
      .slice(0, 9);
    assert.deepEqual(Array.from(topCandidates(logits, V, V, 9, banned, self)), want);
  }
  const few = topCandidates(new Float32Array(V), 0, V, 3, new Uint8Array(V).fill(1), -1);
  assert.deepEqual(Array.from(few), [-1, -1, -1]);
});

Deno.test("augment: the same seed gives the same rows; another seed others", async () => {
  await withTempDir(async (dir) => {
    const data = await writeData(dir);
    const modelDir = join(dir, "mlm");
    (await writeModel(modelDir, true)).dispose();
    const parts = async (out: string, extra: string) => {
      const r = await run(out, yaml(out, data, modelDir, `n: 3, k: 4${extra}`));
      const index = JSON.parse(
        await Deno.readTextFile(join(r.by("augment").dir, "train", "index.json")),
      );
      return index.parts.map((p: { sha256: string }) => p.sha256).join();
    };
    const a = await parts(join(dir, "r1"), "");
    const b = await parts(join(dir, "r2"), "");
    const c = await parts(join(dir, "r3"), ", seed: 99");
    assert.equal(a, b);
    assert.notEqual(a, c);
  });
});

Deno.test("augment: an MLM-less checkpoint or another vocabulary is refused before any compute", async () => {
  await withTempDir(async (dir) => {
    const data = await writeData(dir);
    const noMlm = join(dir, "nomlm");
    (await writeModel(noMlm, false)).dispose();
    const out = join(dir, "runs");
    const p = parsePipeline(yaml(out, data, noMlm, "n: 2"), join(dir, "p.yaml"), BUILTIN_STAGES);
    await assertInputError(() => runPipeline(p, { quiet: true }), [
      join(noMlm, "model.safetensors"),
      "cls.predictions.transform.dense.weight",
      "no masked-LM head",
    ]);
    // refused while planning: not even tokenize ran
    assert.equal(await Deno.stat(join(out, "aug")).then(() => true, () => false), false);
    await assertInputError(() => planPipeline(p), ["no masked-LM head"]);

    // a model of another vocabulary size
    const small = join(dir, "small");
    (await writeModel(small, true, 500)).dispose();
    const q = parsePipeline(yaml(out, data, small, "n: 2"), join(dir, "q.yaml"), BUILTIN_STAGES);
    await assertInputError(() => runPipeline(q, { quiet: true }), [
      join(small, "config.json"),
      "vocab_size",
      "30522",
      "500",
    ]);
    const augDirs = [...Deno.readDirSync(join(out, "aug"))].map((e) => e.name)
      .filter((n) => n.includes("augment"));
    // the partial output holds nothing computed: no candidates, no train rows
    for (const d of augDirs) {
      const names = [...Deno.readDirSync(join(out, "aug", d))].map((e) => e.name);
      assert.ok(!names.includes("candidates") && !names.includes("train"), names.join());
    }
  });
});

Deno.test("augment: teacher-forward and distill read the output; tfjs engine leaks no tensor", async () => {
  await withTempDir(async (dir) => {
    const data = await writeData(dir);
    const modelDir = join(dir, "mlm");
    (await writeModel(modelDir, true)).dispose();
    const more =
      `  - finetune@teacher: { model: teacher, steps: 2, batch_size: 8, lr: 1.0e-3, engine: tfjs,
                        replicas: 1 }
  - teacher-forward: { input: augment, teacher: finetune@teacher, dtype: F32, rows_per_part: 32,
                       engine: tfjs, replicas: 1 }
  - distill:
      tokens: augment
      teacher: finetune@teacher
      batch_size: 8
      engine: tfjs
      replicas: 1
      phases:
        - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, epochs: 1 }
        - { name: prediction, losses: { soft_ce: 1 }, steps: 2, evaluate: true }
`;
    const augment = "n: 3, k: 4, engine: tfjs, limit: 20";
    // the augment stage alone first: every tensor of its loop is released
    const before = tf.memory().numTensors;
    const first = await run(join(dir, "x"), yaml(join(dir, "runs"), data, modelDir, augment));
    assert.equal(tf.memory().numTensors, before, "tensors left after the augment stage");
    const r = await run(join(dir, "x"), yaml(join(dir, "runs"), data, modelDir, augment, more));
    assert.equal(r.by("augment").status, "skipped");
    const aug = first.by("augment");
    assert.equal(aug.result!.metrics!.engine, "tfjs/wasm"); // the pipeline's backend
    assert.equal(aug.result!.counts!.originals, 20);
    assert.equal(aug.result!.counts!.train, 80);
    const cache = await PartReader.open(join(r.by("teacher-forward").dir, "train"));
    assert.equal(cache.totalRows, 80);
    const train = await readStore(join(aug.dir, "train"));
    const lengths = await readStore(join(r.by("teacher-forward").dir, "train"));
    assert.deepEqual(lengths.length, train.length);
    const d = r.by("distill").result!;
    // one epoch of 80 rows in batches of 8, then 2 prediction steps
    assert.equal(d.counts!.steps, 10 + 2);
  });
});
