/**
 * Token classification and extractive QA, below the stages: word tags on first pieces and answer
 * spans as token positions (hand-checked on the real bert-base-uncased vocabulary), the heads'
 * logits against a computation from the encoder's last hidden state, the training losses and the
 * prediction-layer distillation rows against losses computed by hand in float64, and the
 * checkpoint layout transformers expects (no pooler, the right architecture).
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { loadTokenizer } from "../pipeline/model/tokenizer/io.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import {
  bestSpan,
  encodeQuestionContext,
  encodeWords,
  IGNORE_INDEX,
  spanText,
} from "../pipeline/model/align.ts";
import { getObjective } from "../pipeline/train/objectives.ts";
import { lossBreakdown } from "../pipeline/distill/objective.ts";
import { relErr, withTempDir } from "./_util.ts";

await setBackend("cpu");
const tok = await loadTokenizer(resolve("fixtures/bert-base-uncased"));
const id = (t: string) => tok.vocab.get(t)!;

Deno.test("align: a word's tag goes on its first piece; the rest and [CLS]/[SEP] are ignored", () => {
  // "playing" is one piece, "unaffable" several ("una", "##ffa", "##ble")
  const pieces = tok.tokenize("unaffable");
  assert.ok(pieces.length > 1, JSON.stringify(pieces));
  const enc = encodeWords(tok, ["John", "unaffable", "Paris"], [1, 0, 2], 32);
  assert.deepEqual(enc.ids, [
    tok.clsId,
    id("john"),
    ...pieces.map(id),
    id("paris"),
    tok.sepId,
  ]);
  assert.deepEqual(enc.tokenLabels, [
    IGNORE_INDEX,
    1,
    0,
    ...pieces.slice(1).map(() => IGNORE_INDEX),
    2,
    IGNORE_INDEX,
  ]);
  assert.equal(enc.wordsKept, 3);
  assert.equal(enc.truncated, false);
  // cut inside the second word: its first piece stays, the third word is lost
  const cut = encodeWords(tok, ["John", "unaffable", "Paris"], [1, 0, 2], 4);
  assert.deepEqual(cut.ids, [tok.clsId, id("john"), id(pieces[0]), tok.sepId]);
  assert.equal(cut.wordsKept, 2);
  assert.equal(cut.truncated, true);
  // piecing word by word = piecing the sentence (BERT splits on whitespace first)
  const words = ["The", "jury's", "praise,", "over-all", "(1961)"];
  const whole = tok.encode(words.join(" "), undefined, { truncation: false }).inputIds;
  assert.deepEqual(encodeWords(tok, words, words.map(() => 0), 64).ids, whole);
});

Deno.test("align: an answer's characters become its first and last token; a cut answer points at [CLS]", () => {
  const context = "The Eiffel Tower is in Paris, France since 1889.";
  const start = context.indexOf("Paris, France");
  const enc = encodeQuestionContext(
    tok,
    "Where is the tower?",
    context,
    { text: "Paris, France", start },
    64,
  );
  const q = tok.tokenize("Where is the tower?").map(id);
  assert.deepEqual(enc.ids.slice(0, q.length + 2), [tok.clsId, ...q, tok.sepId]);
  assert.deepEqual(
    enc.ids,
    tok.encode("Where is the tower?", context, { truncation: false }).inputIds,
  );
  assert.deepEqual(enc.types, tok.encode("Where is the tower?", context).tokenTypeIds);
  const tokens = enc.ids.map((i) => tok.idToToken[i]);
  assert.equal(tokens[enc.startPosition], "paris");
  assert.equal(tokens[enc.endPosition], "france");
  // the span decodes back to the answer's words
  assert.equal(
    spanText(context, enc.tokenWords, enc.wordSpans, enc.startPosition, enc.endPosition),
    "Paris, France",
  );
  // too short to reach the answer: target [CLS], flagged
  const cut = encodeQuestionContext(tok, "Where?", context, { text: "1889.", start: 43 }, 12);
  assert.equal(cut.ids.length, 12);
  assert.deepEqual([cut.startPosition, cut.endPosition, cut.answerCut, cut.truncated], [
    0,
    0,
    true,
    true,
  ]);
});

Deno.test("align: the best span maximises start + end over context tokens with start ≤ end", () => {
  const words = [-1, -1, 0, 1, 2, -1];
  const start = [9, 9, 1, 3, 0, 9], end = [9, 9, 0, 1, 2, 9];
  // question/special tokens (−1) are never picked, however large their logits
  assert.deepEqual(bestSpan(start, end, words), { start: 3, end: 4, score: 5 });
  // end before start is not a span
  assert.deepEqual(bestSpan([0, 0, 0, 5], [0, 0, 4, 0], [-1, 0, 1, 2]), {
    start: 3,
    end: 3,
    score: 5,
  });
  assert.deepEqual(bestSpan([0, 0, 2, 0], [0, 0, 0, 3], [-1, 0, 1, 2], 1), {
    start: 3,
    end: 3,
    score: 3,
  });
});

const CONFIG = {
  vocab_size: 50,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 24,
  max_position_embeddings: 16,
  id2label: { "0": "O", "1": "B-PER", "2": "I-PER" },
};

function batchOf(ids: number[][]) {
  const S = Math.max(...ids.map((r) => r.length));
  const pad = (r: number[], v: number) => [...r, ...Array(S - r.length).fill(v)];
  return {
    inputIds: tf.tensor2d(ids.map((r) => pad(r, 0)), undefined, "int32"),
    attentionMask: tf.tensor2d(ids.map((r) => pad(r.map(() => 1), 0)), undefined, "int32"),
    tokenTypeIds: tf.zeros([ids.length, S], "int32") as tf.Tensor2D,
  };
}

const logSoftmax = (row: number[]) => {
  const m = Math.max(...row);
  const z = Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0)) + m;
  return row.map((x) => x - z);
};

Deno.test("token head: logits = classifier on every last hidden state; the loss is CE over labelled tokens", () => {
  const bert = Bert.create(CONFIG, { tokenClassifier: true }, 3);
  const ids = [[2, 7, 9, 11, 3], [2, 5, 3]];
  const labels = [[-100, 1, 2, -100, -100], [-100, 0, -100, -100, -100]];
  const b = batchOf(ids);
  const out = bert.forward(b);
  assert.equal(out.logits, undefined);
  assert.deepEqual(out.tokenLogits!.shape, [2, 5, 3]);
  // from the last hidden state by hand
  const h = out.hiddenStates.at(-1)!.arraySync() as number[][][];
  const W = bert.p("classifier.weight").arraySync() as number[][];
  const bias = bert.p("classifier.bias").arraySync() as number[];
  const ref = h.map((seq) =>
    seq.map((v) => W.map((w, c) => bias[c] + w.reduce((s, x, k) => s + x * v[k], 0)))
  );
  assert.ok(relErr(out.tokenLogits!.dataSync(), ref.flat(2)) < 1e-5);
  // CE over the 3 labelled positions only
  let sum = 0, n = 0;
  labels.forEach((row, i) =>
    row.forEach((t, j) => {
      if (t !== -100) {
        sum -= logSoftmax(ref[i][j])[t];
        n++;
      }
    })
  );
  const loss = getObjective("token_classification")(bert, {
    ...b,
    tokenLabels: tf.tensor2d(labels, undefined, "int32"),
  }, { training: false });
  assert.ok(relErr(loss.dataSync(), [sum / n]) < 1e-5, `${loss.dataSync()[0]} vs ${sum / n}`);
});

Deno.test("QA head: span logits from qa_outputs; the loss is (CE start + CE end)/2 with padding excluded", () => {
  const bert = Bert.create({ ...CONFIG, id2label: undefined }, { qa: true }, 4);
  assert.equal(bert.heads.classifier, false);
  const ids = [[2, 7, 9, 11, 3], [2, 5, 3]];
  const b = batchOf(ids);
  const out = bert.forward(b);
  const h = out.hiddenStates.at(-1)!.arraySync() as number[][][];
  const W = bert.p("qa_outputs.weight").arraySync() as number[][];
  const ref = h.map((seq) => seq.map((v) => W.map((w) => w.reduce((s, x, k) => s + x * v[k], 0))));
  assert.ok(relErr(out.spanLogits!.dataSync(), ref.flat(2)) < 1e-5);
  const starts = [1, 1], ends = [3, 2];
  let sum = 0;
  ids.forEach((row, i) => {
    const len = row.length;
    const s = ref[i].slice(0, len).map((v) => v[0]), e = ref[i].slice(0, len).map((v) => v[1]);
    sum += -logSoftmax(s)[starts[i]] - logSoftmax(e)[ends[i]];
  });
  const loss = getObjective("span")(bert, {
    ...b,
    startPositions: tf.tensor1d(starts, "int32"),
    endPositions: tf.tensor1d(ends, "int32"),
  }, { training: false });
  assert.ok(relErr(loss.dataSync(), [sum / 4]) < 1e-5, `${loss.dataSync()[0]} vs ${sum / 4}`);
});

Deno.test("distillation: soft_ce compares every real token (token heads) and start/end over positions (QA)", () => {
  const ids = [[2, 7, 9, 11, 3], [2, 5, 3]];
  const b = batchOf(ids);
  const soft = (s: number[], t: number[], T: number) => {
    const p = logSoftmax(t.map((x) => x / T)).map(Math.exp);
    const ls = logSoftmax(s.map((x) => x / T));
    return -p.reduce((a, pi, i) => a + pi * ls[i], 0);
  };
  for (const heads of [{ tokenClassifier: true }, { qa: true }]) {
    const cfg = heads.qa ? { ...CONFIG, id2label: undefined } : CONFIG;
    const student = Bert.create(cfg, heads, 5), teacher = Bert.create(cfg, heads, 6);
    const s = student.forward(b), t = teacher.forward(b);
    const sl = (s.tokenLogits ?? s.spanLogits)!.arraySync() as number[][][];
    const tl = (t.tokenLogits ?? t.spanLogits)!.arraySync() as number[][][];
    // the cache pads with NaN past each row's length: the loss must never read it
    const cached = tl.map((seq, i) =>
      seq.map((v, j) => (j < ids[i].length ? v : v.map(() => NaN)))
    );
    const T = 2;
    let ref = 0, n = 0;
    ids.forEach((row, i) => {
      const len = row.length;
      if (heads.qa) {
        for (const k of [0, 1]) {
          const sRow = sl[i].slice(0, len).map((v) => v[k]);
          const tRow = tl[i].slice(0, len).map((v) => v[k]);
          ref += soft(sRow, tRow, T);
          n++;
        }
      } else {
        for (let j = 0; j < len; j++, n++) ref += soft(sl[i][j], tl[i][j], T);
      }
    });
    const got = lossBreakdown(student, { ...b, t_logits: tf.tensor3d(cached) }, {
      terms: [{ name: "soft_ce", weight: 1, temperature: T }],
      layerMap: [0, 1, 2],
      embeddings: true,
      projection: "shared",
    }).soft_ce;
    // token rows: TinyBERT's mean over rows × classes (3 tags); QA: the mean cross-entropy of
    // the 2B start/end distributions
    const want = heads.qa ? ref / n : ref / n / 3;
    assert.ok(relErr([got], [want]) < 1e-4, `${JSON.stringify(heads)}: ${got} vs ${want}`);
  }
});

Deno.test("checkpoints: token and QA models are saved as transformers writes them and load back", async () => {
  await withTempDir(async (dir) => {
    for (
      const [heads, arch, head] of [
        [{ tokenClassifier: true }, "BertForTokenClassification", "bert.classifier"],
        [{ qa: true }, "BertForQuestionAnswering", "qa_outputs.weight"],
      ] as const
    ) {
      const cfg = "qa" in heads ? { ...CONFIG, id2label: undefined } : CONFIG;
      const bert = Bert.create(cfg, heads, 7);
      const out = join(dir, arch);
      await saveBert(bert, out);
      const config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
      assert.deepEqual(config.architectures, [arch]);
      const names = [...(await readSafetensors(join(out, "model.safetensors"))).tensors.keys()];
      assert.ok(!names.some((n) => n.includes("pooler")), `${arch}: ${names}`);
      assert.ok(names.some((n) => n.startsWith("bert.encoder.")), "encoder under bert.");
      assert.ok(
        names.includes(head === "bert.classifier" ? "classifier.weight" : head),
        `${arch}: ${names}`,
      );
      const back = await loadBert(out);
      assert.equal(!!back.heads.tokenClassifier, "tokenClassifier" in heads);
      assert.equal(!!back.heads.qa, "qa" in heads);
      const b = batchOf([[2, 7, 9, 3]]);
      const a = bert.forward(b), c = back.forward(b);
      const la = (a.tokenLogits ?? a.spanLogits)!, lc = (c.tokenLogits ?? c.spanLogits)!;
      assert.ok(relErr(lc.dataSync(), la.dataSync()) < 1e-6);
    }
  });
});
