/**
 * The API example of docs/api.md, runnable: `deno run -A examples/quickstart.ts`.
 * A small BERT on the real bert-base-uncased vocabulary: save, load, encode, forward, one step.
 */

import {
  AdamW,
  Bert,
  computeGradients,
  encodeBatch,
  loadBert,
  loadTokenizer,
  OBJECTIVES,
  saveBert,
  setBackend,
  tf,
} from "../mod.ts";

await setBackend("wasm"); // or "auto", "cpu", "tensorflow", "tensorflow-gpu", "webgpu"

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
fresh.dispose();

const bert = await loadBert(dir);
const batch = encodeBatch(tokenizer, ["the cat sat", "win a free prize now"], undefined, {
  maxLength: 16,
});
const out = bert.forward(batch);
console.log(
  `hidden states: ${out.hiddenStates.length} × [${out.hiddenStates[0].shape}], ` +
    `attention scores: ${out.attentionScores.length} × [${out.attentionScores[0].shape}], ` +
    `logits: [${out.logits!.shape}]`,
);

const opt = new AdamW(bert.params, { lr: 5e-5, maxGradNorm: 1 });
const labels = tf.tensor1d([0, 1], "int32");
const { loss, grads } = computeGradients(bert, OBJECTIVES.classification, { ...batch, labels });
opt.step(grads);
console.log(`loss ${loss.toFixed(4)}, ${grads.size} gradients applied`);

await Deno.remove(dir, { recursive: true });
