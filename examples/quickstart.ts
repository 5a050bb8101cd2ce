/**
 * The API example of docs/api.md, runnable: `deno run -A examples/quickstart.ts`.
 * A small BERT on the real bert-base-uncased vocabulary: save, load, encode, run its inference
 * graph, one training step.
 */

import {
  Bert,
  encodeBatch,
  loadBert,
  loadTokenizer,
  openInference,
  saveBert,
  Trainer,
} from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "tinystill-quickstart-" });
const tokenizer = await loadTokenizer("fixtures/bert-base-uncased"); // vocab.txt or tokenizer.json
const fresh = Bert.create({
  vocab_size: tokenizer.vocabSize,
  hidden_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 128,
  id2label: { "0": "ham", "1": "spam" },
});
await saveBert(fresh, dir); // config.json + model.safetensors, Hugging Face names and layout

const bert = await loadBert(dir); // weights on the host, by Hugging Face name
// host arrays {inputIds, attentionMask, tokenTypeIds, batch, seq}, row-major [batch, seq]
const batch = encodeBatch(tokenizer, ["the cat sat", "win a free prize now"], undefined, {
  maxLength: 16,
});

// The model's inference graph on ONNX Runtime (`engine: { kind: "tfjs", backend: "wasm" }` runs
// the same graph on tfjs). `outputs: "all"` adds every hidden state (0 = embedding output) and
// the pre-softmax attention scores, (1 − mask)·(−10000) on padded keys.
const engine = await openInference(bert, { outputs: "all" });
const out = await engine.run(batch);
await engine.close();
const L = bert.config.num_hidden_layers;
console.log(
  `hidden states: ${L + 1} × [${out.hidden_state_0.dims}], ` +
    `attention scores: ${L} × [${out.attention_scores_0.dims}], ` +
    `logits: [${out.logits.dims}]`,
);

// One training step: the gradient graph of the same forward, AdamW on the host.
const before = Float32Array.from(bert.p("classifier.weight").data);
const trainer = await Trainer.create(bert, {
  objective: "classification",
  lr: () => 5e-5,
  weightDecay: 0.01,
  maxGradNorm: 1,
});
const rows = (data: Int32Array) => ({ data, shape: [batch.batch, batch.seq] });
const { loss, gradNorm } = await trainer.step({
  inputIds: rows(batch.inputIds),
  attentionMask: rows(batch.attentionMask),
  tokenTypeIds: rows(batch.tokenTypeIds),
  labels: { data: Int32Array.of(0, 1), shape: [2] },
});
trainer.syncModel(); // the trained weights back into bert.params
await trainer.close();
const moved = bert.p("classifier.weight").data.reduce(
  (m, w, i) => Math.max(m, Math.abs(w - before[i])),
  0,
);
console.log(
  `loss ${loss.toFixed(4)}, gradient norm ${gradNorm.toFixed(4)}, ` +
    `classifier weights moved by up to ${moved.toExponential(2)}`,
);

await saveBert(bert, dir, { dtype: "F16" }); // loadable by Hugging Face transformers
await Deno.remove(dir, { recursive: true });
