/**
 * The model against a scalar reference written from the math in this file (plain loops, float64),
 * on both backends; a whole training step wasm vs cpu; dropout, heads, masks and leaks.
 */

import assert from "node:assert/strict";
import { type BackendName, setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert, MASK_VALUE } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { classification } from "../pipeline/train/objectives.ts";
import { computeGradients } from "../pipeline/train/parallel.ts";
import { assertClose, maxAbsErr, realKeyMask, UNIT_FLOOR } from "./_util.ts";

// ---------------------------------------------------------------------------------------------
// Scalar reference: every number computed with explicit loops in float64.

type Mat = number[][];
type Weights = Map<string, { shape: number[]; data: Float32Array }>;

/** erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit). */
function erf(x: number): number {
  const z = Math.abs(x), t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                  t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                  t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? 1 - r : r - 1;
}

function refForward(
  cfg: BertConfig,
  w: Weights,
  ids: number[][],
  mask: number[][],
  types: number[][],
) {
  const W = (n: string) => w.get(n)!;
  const row = (n: string, i: number) => {
    const t = W(n), c = t.shape[1];
    return Array.from(t.data.subarray(i * c, (i + 1) * c));
  };
  const vec = (n: string) => Array.from(W(n).data);
  const lin = (x: number[], n: string) => { // x·Wᵀ + b, W [out, in]
    const t = W(`${n}.weight`), [o, i] = t.shape, b = vec(`${n}.bias`);
    return Array.from({ length: o }, (_, r) => {
      let s = b[r];
      for (let k = 0; k < i; k++) s += x[k] * t.data[r * i + k];
      return s;
    });
  };
  const ln = (x: number[], n: string) => {
    const m = x.reduce((a, b) => a + b, 0) / x.length;
    const v = x.reduce((a, b) => a + (b - m) ** 2, 0) / x.length;
    const g = vec(`${n}.weight`), b = vec(`${n}.bias`);
    return x.map((xi, i) => ((xi - m) / Math.sqrt(v + cfg.layer_norm_eps)) * g[i] + b[i]);
  };
  const gelu = (x: number) => 0.5 * x * (1 + erf(x / Math.SQRT2));
  const H = cfg.hidden_size, nh = cfg.num_attention_heads, d = H / nh;
  const hidden: Mat[][] = []; // [layer][batch][seq][H]
  const scores: number[][][][][] = []; // [layer][batch][head][q][k]
  let h: Mat[] = ids.map((seq, b) =>
    seq.map((id, s) => {
      const e = row("embeddings.word_embeddings.weight", id);
      const p = row("embeddings.position_embeddings.weight", s);
      const t = row("embeddings.token_type_embeddings.weight", types[b][s]);
      return ln(e.map((v, i) => v + p[i] + t[i]), "embeddings.LayerNorm");
    })
  );
  hidden.push(h);
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const pre = `encoder.layer.${l}`;
    const layerScores: number[][][][] = [];
    h = h.map((seq, b) => {
      const q = seq.map((x) => lin(x, `${pre}.attention.self.query`));
      const k = seq.map((x) => lin(x, `${pre}.attention.self.key`));
      const v = seq.map((x) => lin(x, `${pre}.attention.self.value`));
      const S = seq.length;
      const ctx: Mat = seq.map(() => new Array(H).fill(0));
      const perHead: number[][][] = [];
      for (let hd = 0; hd < nh; hd++) {
        const sc: number[][] = [];
        for (let i = 0; i < S; i++) {
          const r: number[] = [];
          for (let j = 0; j < S; j++) {
            let dot = 0;
            for (let c = 0; c < d; c++) dot += q[i][hd * d + c] * k[j][hd * d + c];
            r.push(dot / Math.sqrt(d) + (1 - mask[b][j]) * MASK_VALUE);
          }
          sc.push(r);
          const mx = Math.max(...r);
          const ex = r.map((x) => Math.exp(x - mx));
          const z = ex.reduce((a2, b2) => a2 + b2, 0);
          for (let j = 0; j < S; j++) {
            for (let c = 0; c < d; c++) ctx[i][hd * d + c] += (ex[j] / z) * v[j][hd * d + c];
          }
        }
        perHead.push(sc);
      }
      layerScores.push(perHead);
      return seq.map((x, i) => {
        const a = lin(ctx[i], `${pre}.attention.output.dense`);
        const attn = ln(a.map((ai, c) => ai + x[c]), `${pre}.attention.output.LayerNorm`);
        const inter = lin(attn, `${pre}.intermediate.dense`).map(gelu);
        const o = lin(inter, `${pre}.output.dense`);
        return ln(o.map((oi, c) => oi + attn[c]), `${pre}.output.LayerNorm`);
      });
    });
    scores.push(layerScores);
    hidden.push(h);
  }
  const pooled = h.map((seq) => lin(seq[0], "pooler.dense").map(Math.tanh));
  const logits = w.has("classifier.weight") ? pooled.map((p) => lin(p, "classifier")) : [];
  const mlm = h.map((seq) =>
    seq.map((x) => {
      const t = ln(
        lin(x, "cls.predictions.transform.dense").map(gelu),
        "cls.predictions.transform.LayerNorm",
      );
      const E = W("embeddings.word_embeddings.weight"), bias = vec("cls.predictions.bias");
      return Array.from({ length: cfg.vocab_size }, (_, vId) => {
        let s = bias[vId];
        for (let c = 0; c < H; c++) s += t[c] * E.data[vId * H + c];
        return s;
      });
    })
  );
  return { hidden, scores, pooled, logits, mlm };
}

// ---------------------------------------------------------------------------------------------

const CONFIG: Partial<BertConfig> = {
  vocab_size: 23,
  hidden_size: 12,
  num_hidden_layers: 2,
  num_attention_heads: 3,
  intermediate_size: 20,
  max_position_embeddings: 10,
  type_vocab_size: 2,
  id2label: { "0": "neg", "1": "pos", "2": "mixed" },
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
};
/**
 * Absolute bound on the padded key columns of the attention scores: −10000 + s, which float32
 * resolves only to ≈ 5e-4 (half its spacing near 10000).
 */
const PADDED_ABS_TOL = 2e-3;

const IDS = [[2, 7, 7, 11, 3, 0], [2, 19, 5, 3, 8, 3]];
const MASK = [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]];
const TYPES = [[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]];

function inputs() {
  return {
    inputIds: tf.tensor2d(IDS, undefined, "int32"),
    attentionMask: tf.tensor2d(MASK, undefined, "int32"),
    tokenTypeIds: tf.tensor2d(TYPES, undefined, "int32"),
  };
}

/** A model with non-trivial LayerNorm and bias values (fresh ones are 1 and 0). */
function makeModel(seed = 3): Bert {
  const bert = Bert.create(CONFIG, { classifier: true, mlm: true }, seed);
  let i = 0;
  for (const [name, v] of bert.params) {
    if (name.endsWith(".bias") || name.includes("LayerNorm")) {
      i++;
      tf.tidy(() => v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.3, "float32", 100 + i))));
    }
  }
  return bert;
}

function weightsOf(bert: Bert): Weights {
  const w: Weights = new Map();
  for (const [n, v] of bert.params) {
    w.set(n, { shape: v.shape, data: v.dataSync() as Float32Array });
  }
  return w;
}

for (const backend of ["cpu", "wasm"] as BackendName[]) {
  Deno.test(`forward matches the scalar reference (${backend})`, async () => {
    await setBackend(backend);
    const bert = makeModel();
    const ref = refForward(bert.config, weightsOf(bert), IDS, MASK, TYPES);
    const x = inputs();
    const out = bert.forward(x, { mlm: true });
    assert.equal(out.hiddenStates.length, 3);
    assert.equal(out.attentionScores.length, 2);
    // every output per element (see UNIT_FLOOR); the attention scores per real key column,
    // so that the −10000 of the padded column does not set their scale
    const unit = { floor: UNIT_FLOOR };
    out.hiddenStates.forEach((t, l) => {
      assert.deepEqual(t.shape, [2, 6, 12]);
      assertClose(t.dataSync(), ref.hidden[l].flat(2), 1e-4, `hidden state ${l}`, unit);
    });
    const real = realKeyMask(MASK, 3), padded = real.map((r) => 1 - r);
    assert.equal(padded.reduce((a, b) => a + b, 0), 3 * 6); // row 0's last key column: 3 heads × 6 queries
    out.attentionScores.forEach((t, l) => {
      assert.deepEqual(t.shape, [2, 3, 6, 6]);
      const got = t.dataSync(), want = ref.scores[l].flat(3);
      assertClose(got, want, 1e-4, `attention scores ${l}, real keys`, { ...unit, where: real });
      const pad = maxAbsErr(got, want, padded);
      assert.ok(pad <= PADDED_ABS_TOL, `attention scores ${l}, padded keys: |error| ${pad}`);
    });
    // the padded key column of row 0 carries the −10000 offset; query rows are not masked
    const s0 = out.attentionScores[0].arraySync() as number[][][][];
    assert.ok(s0[0][1][2][5] < -9000 && s0[0][1][5][2] > -100);
    assertClose(out.pooled.dataSync(), ref.pooled.flat(), 1e-4, "pooled", unit);
    assertClose(out.logits!.dataSync(), ref.logits.flat(), 1e-4, "logits", unit);
    assertClose(out.mlmLogits!.dataSync(), ref.mlm.flat(2), 1e-4, "mlm logits", unit);
    tf.dispose([...Object.values(x), ...out.hiddenStates, ...out.attentionScores, out.pooled]);
    tf.dispose([out.logits!, out.mlmLogits!]);
    bert.dispose();
  });
}

Deno.test("a whole training step (loss + every gradient) matches between wasm and cpu", async () => {
  const run = async (backend: BackendName) => {
    await setBackend(backend);
    const bert = makeModel(5);
    const x = inputs();
    const batch = { ...x, labels: tf.tensor1d([2, 0], "int32") };
    // dropout on, same seed: the masks are drawn by tfjs' seeded JS PRNG on both backends
    const { loss, grads } = computeGradients(bert, classification, batch, 42);
    const g = new Map([...grads].map(([k, v]) => [k, Float32Array.from(v.dataSync())]));
    tf.dispose([...grads.values(), ...Object.values(batch)]);
    bert.dispose();
    return { loss, g };
  };
  const cpu = await run("cpu"), wasm = await run("wasm");
  assert.ok(
    Math.abs(cpu.loss - wasm.loss) <= 1e-4 * Math.abs(cpu.loss),
    `${cpu.loss} ${wasm.loss}`,
  );
  assert.equal(cpu.g.size, wasm.g.size);
  for (const [name, ref] of cpu.g) assertClose(wasm.g.get(name)!, ref, 1e-4, `grad ${name}`);
  // the MLM head is not on classification's path: no gradient entry, as in PyTorch
  assert.equal(cpu.g.has("cls.predictions.bias"), false);
  assert.ok(cpu.g.has("embeddings.word_embeddings.weight"));
});

Deno.test("dropout only when training, reproducible by seed", async () => {
  await setBackend("wasm");
  const bert = makeModel();
  const x = inputs();
  const logits = (o: { training?: boolean; seed?: number }) =>
    tf.tidy(() => Array.from(bert.forward(x, o).logits!.dataSync()));
  assert.deepEqual(logits({}), logits({ training: false }));
  assert.deepEqual(logits({ training: true, seed: 1 }), logits({ training: true, seed: 1 }));
  assert.notDeepEqual(logits({ training: true, seed: 1 }), logits({ training: true, seed: 2 }));
  assert.notDeepEqual(logits({}), logits({ training: true, seed: 1 }));
  tf.dispose(Object.values(x));
  bert.dispose();
});

Deno.test("forward and training steps keep the tensor count flat", async () => {
  await setBackend("wasm");
  const bert = makeModel();
  const x = inputs();
  const batch = { ...x, labels: tf.tensor1d([1, 0], "int32") };
  const step = (i: number) => {
    const o = bert.forward(x, { mlm: true });
    tf.dispose([...o.hiddenStates, ...o.attentionScores, o.pooled, o.logits!, o.mlmLogits!]);
    const { grads } = computeGradients(bert, classification, batch, i);
    tf.dispose([...grads.values()]);
  };
  step(0);
  const n = tf.memory().numTensors;
  for (let i = 1; i < 4; i++) step(i);
  assert.equal(tf.memory().numTensors, n);
  tf.dispose(Object.values(batch));
  bert.dispose();
});

Deno.test("any shape: 1 head, odd widths, no token types, no mask, MLM-only head", async () => {
  await setBackend("wasm");
  const cfg: Partial<BertConfig> = {
    vocab_size: 7,
    hidden_size: 5,
    num_hidden_layers: 3,
    num_attention_heads: 1,
    intermediate_size: 3,
    max_position_embeddings: 4,
    type_vocab_size: 1,
  };
  const bert = Bert.create(cfg, { mlm: true }, 9);
  assert.equal(bert.heads.classifier, false);
  const ids = tf.tensor2d([[1, 2, 3, 4]], undefined, "int32");
  const out = bert.forward({ inputIds: ids }, { mlm: true });
  assert.equal(out.logits, undefined);
  assert.deepEqual(out.mlmLogits!.shape, [1, 4, 7]);
  assert.equal(out.hiddenStates.length, 4);
  const ref = refForward(bert.config, weightsOf(bert), [[1, 2, 3, 4]], [[1, 1, 1, 1]], [[
    0,
    0,
    0,
    0,
  ]]);
  assertClose(out.mlmLogits!.dataSync(), ref.mlm.flat(2), 1e-4, "mlm logits", {
    floor: UNIT_FLOOR,
  });
  assert.throws(
    () => bert.forward({ inputIds: tf.zeros([1, 5], "int32") as tf.Tensor2D }),
    /sequence length 5 exceeds max_position_embeddings 4/,
  );
  assert.throws(() => Bert.create({ ...cfg, hidden_size: 6, num_attention_heads: 4 }), /divisible/);
  tf.dispose([ids, ...out.hiddenStates, ...out.attentionScores, out.pooled, out.mlmLogits!]);
  bert.dispose();
});

Deno.test("fresh init follows Hugging Face: N(0, 0.02), zero biases, unit LayerNorm, zero pad row", async () => {
  await setBackend("wasm");
  const bert = Bert.create({ ...CONFIG, vocab_size: 500, hidden_size: 48, num_attention_heads: 4 });
  const q = bert.p("encoder.layer.0.attention.self.query.weight").dataSync() as Float32Array;
  const mean = q.reduce((a, b) => a + b, 0) / q.length;
  const std = Math.sqrt(q.reduce((a, b) => a + (b - mean) ** 2, 0) / q.length);
  assert.ok(Math.abs(std - 0.02) < 0.002 && Math.abs(mean) < 0.002, `std ${std} mean ${mean}`);
  assert.ok(bert.p("encoder.layer.1.output.dense.bias").dataSync().every((v) => v === 0));
  assert.ok(bert.p("embeddings.LayerNorm.weight").dataSync().every((v) => v === 1));
  const emb = bert.p("embeddings.word_embeddings.weight").dataSync();
  assert.ok(emb.subarray(0, 48).every((v) => v === 0)); // pad_token_id 0
  assert.ok(emb.subarray(48, 96).some((v) => v !== 0));
  // parameter count by formula
  const H = 48, I = 20, V = 500, P = 10, L = 2, C = 3;
  const expected = V * H + P * H + 2 * H + 2 * H +
    L * (4 * (H * H + H) + 2 * H + (I * H + I) + (H * I + H) + 2 * H) + (H * H + H) + (C * H + C);
  assert.equal(bert.numParameters(), expected);
  bert.dispose();
});
