/**
 * Token classification and extractive QA, below the stages: word tags on first pieces and answer
 * spans as token positions (hand-checked on the real bert-base-uncased vocabulary), the heads'
 * logits against a computation from the encoder's last hidden state, the training losses and the
 * prediction-layer distillation rows against losses computed by hand in float64 — on ONNX Runtime
 * and tfjs (wasm) — and the checkpoint layout transformers expects (no pooler, the right
 * architecture). The same heads, objectives and terms against PyTorch: `torch_reference_test.ts`
 * and `parity_test.ts`.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
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
import { lossBreakdown } from "../pipeline/distill/objective.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { relErr, withTempDir } from "./_util.ts";

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
  hidden_dropout_prob: 0,
  attention_probs_dropout_prob: 0,
  id2label: { "0": "O", "1": "B-PER", "2": "I-PER" },
};

const EXECUTORS: { label: string; ref: EngineRef }[] = [
  { label: "onnxruntime", ref: { kind: "onnxruntime" } },
  { label: "tfjs/wasm", ref: { kind: "tfjs", backend: "wasm" } },
];

/** Rows padded to the longest (id 0, mask 0), one segment. */
function batchOf(ids: number[][]): HostBatch {
  const B = ids.length, S = Math.max(...ids.map((r) => r.length));
  const pad = (r: number[], v: number) => [...r, ...Array(S - r.length).fill(v)];
  return {
    inputIds: { data: Int32Array.from(ids.flatMap((r) => pad(r, 0))), shape: [B, S] },
    attentionMask: {
      data: Int32Array.from(ids.flatMap((r) => pad(r.map(() => 1), 0))),
      shape: [B, S],
    },
    tokenTypeIds: { data: new Int32Array(B * S), shape: [B, S] },
  };
}

/** The inference graph's outputs on `batch` (every hidden state; the head logits). */
async function forward(bert: Bert, batch: HostBatch, engine: EngineRef) {
  const [B, S] = batch.inputIds.shape;
  const inf = await openInference(bert, { outputs: "all", engine, threads: 1 });
  try {
    return await inf.run({
      inputIds: batch.inputIds.data as Int32Array,
      attentionMask: batch.attentionMask.data as Int32Array,
      batch: B,
      seq: S,
    });
  } finally {
    await inf.close();
  }
}

/** `[B, S, H]` as nested rows. */
function nest(data: Float32Array, B: number, S: number, H: number): number[][][] {
  return Array.from(
    { length: B },
    (_, b) =>
      Array.from(
        { length: S },
        (_, s) => Array.from(data.subarray((b * S + s) * H, (b * S + s + 1) * H)),
      ),
  );
}

/** `x·Wᵀ + b` of a Linear by hand (float64). */
function linear(bert: Bert, prefix: string, x: number[]): number[] {
  const w = bert.p(`${prefix}.weight`), b = bert.p(`${prefix}.bias`).data;
  const [out, inp] = w.shape;
  return Array.from({ length: out }, (_, o) => {
    let acc = b[o];
    for (let k = 0; k < inp; k++) acc += x[k] * w.data[o * inp + k];
    return acc;
  });
}

/** The objective's loss on `batch` (dropout off), from the trainer's gradient graph. */
async function objectiveLoss(bert: Bert, objective: string, batch: HostBatch, engine: EngineRef) {
  const trainer = await Trainer.create(bert, {
    objective,
    lr: () => 0,
    weightDecay: 0,
    dropout: false,
    threads: 1,
    engine,
  });
  try {
    return (await trainer.gradients(batch)).loss;
  } finally {
    await trainer.close();
  }
}

const logSoftmax = (row: number[]) => {
  const m = Math.max(...row);
  const z = Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0)) + m;
  return row.map((x) => x - z);
};

Deno.test("token head: logits = classifier on every last hidden state; the loss is CE over labelled tokens", async () => {
  const bert = Bert.create(CONFIG, { tokenClassifier: true }, 3);
  const ids = [[2, 7, 9, 11, 3], [2, 5, 3]];
  const labels = [[-100, 1, 2, -100, -100], [-100, 0, -100, -100, -100]];
  const b = batchOf(ids);
  for (const exec of EXECUTORS) {
    const out = await forward(bert, b, exec.ref);
    assert.deepEqual(out.logits.dims, [2, 5, 3]);
    // from the last hidden state by hand
    const h = nest(out.last_hidden_state.data, 2, 5, 16);
    const ref = h.map((seq) => seq.map((v) => linear(bert, "classifier", v)));
    assert.ok(relErr(out.logits.data, ref.flat(2)) < 1e-5, exec.label);
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
    const loss = await objectiveLoss(bert, "token_classification", {
      ...b,
      tokenLabels: { data: Int32Array.from(labels.flat()), shape: [2, 5] },
    }, exec.ref);
    assert.ok(relErr([loss], [sum / n]) < 1e-5, `${exec.label}: ${loss} vs ${sum / n}`);
  }
});

Deno.test("QA head: span logits from qa_outputs; the loss is (CE start + CE end)/2 with padding excluded", async () => {
  const bert = Bert.create({ ...CONFIG, id2label: undefined }, { qa: true }, 4);
  assert.equal(bert.heads.classifier, false);
  const ids = [[2, 7, 9, 11, 3], [2, 5, 3]];
  const b = batchOf(ids);
  const starts = [1, 1], ends = [3, 2];
  for (const exec of EXECUTORS) {
    const out = await forward(bert, b, exec.ref);
    const h = nest(out.last_hidden_state.data, 2, 5, 16);
    const ref = h.map((seq) => seq.map((v) => linear(bert, "qa_outputs", v)));
    assert.ok(relErr(out.start_logits.data, ref.flat().map((v) => v[0])) < 1e-5, exec.label);
    assert.ok(relErr(out.end_logits.data, ref.flat().map((v) => v[1])) < 1e-5, exec.label);
    let sum = 0;
    ids.forEach((row, i) => {
      const len = row.length;
      const s = ref[i].slice(0, len).map((v) => v[0]), e = ref[i].slice(0, len).map((v) => v[1]);
      sum += -logSoftmax(s)[starts[i]] - logSoftmax(e)[ends[i]];
    });
    const loss = await objectiveLoss(bert, "span", {
      ...b,
      startPositions: { data: Int32Array.from(starts), shape: [2] },
      endPositions: { data: Int32Array.from(ends), shape: [2] },
    }, exec.ref);
    assert.ok(relErr([loss], [sum / 4]) < 1e-5, `${exec.label}: ${loss} vs ${sum / 4}`);
  }
});

Deno.test("distillation: soft_ce compares every real token (token heads) and start/end over positions (QA)", async () => {
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
    const K = heads.qa ? 2 : 3;
    for (const exec of EXECUTORS) {
      /** Head logits `[B, S, K]` (QA: start and end interleaved). */
      const logits = async (m: Bert) => {
        const o = await forward(m, b, exec.ref);
        if (!heads.qa) return nest(o.logits.data, 2, 5, K);
        const st = o.start_logits.data, en = o.end_logits.data;
        return nest(
          Float32Array.from({ length: 20 }, (_, i) => (i % 2 ? en : st)[i >> 1]),
          2,
          5,
          2,
        );
      };
      const sl = await logits(student), tl = await logits(teacher);
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
      const got = (await lossBreakdown(student, {
        ...b,
        t_logits: { data: Float32Array.from(cached.flat(2)), shape: [2, 5, K] },
      }, {
        terms: [{ name: "soft_ce", weight: 1, temperature: T }],
        layerMap: [0, 1, 2],
        embeddings: true,
        projection: "shared",
      }, exec.ref)).soft_ce;
      // token rows: TinyBERT's mean over rows × classes (3 tags); QA: the mean cross-entropy of
      // the 2B start/end distributions
      const want = heads.qa ? ref / n : ref / n / 3;
      assert.ok(
        relErr([got], [want]) < 1e-4,
        `${exec.label} ${JSON.stringify(heads)}: ${got} vs ${want}`,
      );
    }
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
      // every parameter the head reads comes back as saved
      for (const [name, p] of back.params) {
        if (!name.startsWith("pooler.")) assert.deepEqual(p.data, bert.p(name).data, name);
      }
      const b = batchOf([[2, 7, 9, 3]]);
      const names2 = "qa" in heads ? ["start_logits", "end_logits"] : ["logits"];
      const a = await forward(bert, b, EXECUTORS[0].ref),
        c = await forward(back, b, EXECUTORS[0].ref);
      for (const n of names2) assert.deepEqual(c[n].data, a[n].data, n);
    }
  });
});
