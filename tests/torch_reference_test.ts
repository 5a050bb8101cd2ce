/**
 * tinystill's BERT against an independent PyTorch implementation written from the math
 * (`tests/reference/bert_torch.py`, float64), on every executor (ONNX Runtime; tfjs on wasm and
 * cpu), for every head and every training objective:
 * - the forward of the inference graph (`openInference`, `outputs: "all"`): every hidden state,
 *   every pre-softmax attention score tensor and value tensor, the sequence classifier's, token
 *   classifier's, QA head's (start/end) and MLM head's logits, and the MLM head on chosen rows;
 * - per objective (classification, regression, mlm, token_classification, span) the loss and the
 *   gradient of every parameter (`Trainer.gradients`, dropout off), and the parameters after
 *   one AdamW step (`Trainer.step`: weight decay on all but biases and LayerNorm, clipping).
 * The distillation terms are compared in `parity_test.ts`.
 *
 * Error measure (per element): relErr(a, b) = max_i |a_i − b_i| / max(|b_i|, floor), with b the
 * torch value (see `tests/_util.ts`; floors in `tests/_torch.ts`). Attention scores are split:
 * columns of real keys get that measure; padded key columns (≈ −10000 + score) an absolute bound,
 * since float32 resolves −10000 + s only to ≈ 1e-3.
 *
 * Needs a python3 with torch and numpy (Debian: `apt-get install python3-torch python3-numpy`);
 * `TINYSTILL_PYTHON` may name the interpreter. Without one, the tests are skipped with a message.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import type { Bert, BertHeads } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { maxAbsErr, realKeyMask, withTempDir } from "./_util.ts";
import {
  ADAMW,
  checkTrainerJob,
  Errors,
  EXECUTORS,
  type F64Tensor,
  hostBatchOf,
  type Inputs,
  type Job,
  makeInputs,
  noDropout,
  PADDED_ABS_TOL,
  PYTHON,
  randomModel,
  regressionBatch,
  Report,
  runTorch,
  torchJob,
  torchJobOf,
  VALUE_FLOOR,
} from "./_torch.ts";

interface Case {
  name: string;
  config: Partial<BertConfig>;
  heads: BertHeads;
  /** Real-token count of each row; the rest of the row is padding (id 0, mask 0). */
  lengths: number[];
  seq: number;
  /** The objectives trained on this model (each with one AdamW step). */
  jobs: Job[];
}

const CASES: Case[] = [
  {
    name: "sequence classifier + MLM, 4 heads, gelu",
    config: {
      vocab_size: 60,
      hidden_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      intermediate_size: 48,
      max_position_embeddings: 16,
      id2label: { "0": "a", "1": "b", "2": "c" },
    },
    heads: { classifier: true, mlm: true },
    lengths: [10, 7, 4, 10],
    seq: 10,
    jobs: [
      { name: "classification", objective: "classification", adamw: true },
      { name: "mlm", objective: "mlm", adamw: true },
    ],
  },
  {
    name: "token classifier, 2 heads, relu",
    config: {
      vocab_size: 50,
      hidden_size: 16,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      intermediate_size: 24,
      max_position_embeddings: 12,
      hidden_act: "relu",
      id2label: { "0": "O", "1": "B", "2": "I" },
    },
    heads: { classifier: true, tokenClassifier: true, mlm: false },
    lengths: [9, 6, 4],
    seq: 9,
    jobs: [{ name: "token", objective: "token_classification", adamw: true }],
  },
  {
    name: "QA head + MLM (MLM output 'logits'), 2 heads, gelu_new",
    config: {
      vocab_size: 50,
      hidden_size: 16,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      intermediate_size: 24,
      max_position_embeddings: 12,
      hidden_act: "gelu_new",
    },
    heads: { classifier: false, qa: true, mlm: true },
    lengths: [9, 5, 7],
    seq: 9,
    jobs: [{ name: "span", objective: "span", adamw: true }],
  },
  {
    name: "regression, 1 head, odd sizes, 3 layers, eps 1e-5, 3 token types",
    config: {
      vocab_size: 37,
      hidden_size: 19,
      num_hidden_layers: 3,
      num_attention_heads: 1,
      intermediate_size: 29,
      max_position_embeddings: 11,
      type_vocab_size: 3,
      layer_norm_eps: 1e-5,
      id2label: { "0": "score" },
    },
    heads: { classifier: true, mlm: false },
    lengths: [9, 3, 6],
    seq: 9,
    jobs: [{ name: "regression", objective: "regression", adamw: true }],
  },
];

/** The forward outputs of the inference graph against torch's. */
function compareForward(
  errs: Errors,
  bert: Bert,
  out: Record<string, { data: Float32Array; dims: number[] }>,
  ref: Map<string, F64Tensor>,
  inputs: Inputs,
  mlmPositions: number[],
): void {
  const L = bert.config.num_hidden_layers, nh = bert.config.num_attention_heads;
  const get = (name: string) => {
    const r = ref.get(name);
    assert.ok(r, `torch output ${name} is missing`);
    return r;
  };
  const same = (name: string, refName: string, category: string, floor = VALUE_FLOOR) => {
    const o = out[name];
    assert.ok(o, `the inference graph has no output ${name}`);
    assert.deepEqual(o.dims, get(refName).shape, `${name}: shape`);
    errs.rel(category, name, o.data, get(refName), floor);
  };
  for (let i = 0; i <= L; i++) same(`hidden_state_${i}`, `hidden_states.${i}`, "hidden states");
  same("last_hidden_state", `hidden_states.${L}`, "hidden states");
  const real = realKeyMask(inputs.attention_mask, nh), padded = real.map((r) => 1 - r);
  for (let l = 0; l < L; l++) {
    const name = `attention_scores_${l}`, r = get(`attention_scores.${l}`);
    assert.deepEqual(out[name].dims, r.shape, `${name}: shape`);
    errs.rel("attention scores (real keys)", name, out[name].data, r, VALUE_FLOOR, real);
    padded.forEach((p, k) =>
      p && assert.ok(Math.abs(r.data[k] + 10000) < 100, `${name}: torch padded column`)
    );
    errs.check(
      "attention scores (padded keys, abs)",
      `${name} padded`,
      maxAbsErr(out[name].data, r.data, padded),
      PADDED_ABS_TOL,
    );
    same(`attention_values_${l}`, `values.${l}`, "attention values");
  }
  const { heads } = bert;
  if (heads.classifier && !heads.tokenClassifier) same("logits", "logits", "classifier logits");
  if (heads.tokenClassifier) same("logits", "token_logits", "token classifier logits");
  if (heads.qa) {
    const r = get("span_logits");
    const pick = (k: number) =>
      Float64Array.from({ length: r.data.length / 2 }, (_, i) => r.data[2 * i + k]);
    for (const [k, name] of ["start_logits", "end_logits"].entries()) {
      assert.deepEqual(out[name].dims, r.shape.slice(0, 2), `${name}: shape`);
      errs.rel("QA logits", name, out[name].data, pick(k), VALUE_FLOOR);
    }
  }
  if (heads.mlm) {
    // named `logits` when no classifier owns that name (transformers.js' BertForMaskedLM)
    same(heads.classifier ? "mlm_logits" : "logits", "mlm_logits", "MLM logits");
    const r = get("mlm_logits"), V = bert.config.vocab_size;
    const rows = Float64Array.from(
      mlmPositions.flatMap((p) => Array.from(r.data.subarray(p * V, (p + 1) * V))),
    );
    assert.deepEqual(out.mlm_rows.dims, [mlmPositions.length, V]);
    errs.rel("MLM logits", "mlm_rows", out.mlm_rows.data, rows, VALUE_FLOOR);
  }
}

for (const [ci, c] of CASES.entries()) {
  Deno.test({
    name: `torch reference: ${c.name}: forward, ${
      c.jobs.map((j) => j.objective).join(", ")
    } loss, gradients and AdamW on ${EXECUTORS.map((e) => e.label).join(", ")}`,
    ignore: !PYTHON,
    fn: () =>
      withTempDir(async (dir) => {
        const config = noDropout(c.config);
        const bert = randomModel(config, c.heads, ci + 1);
        const ckpt = join(dir, "ckpt");
        await saveBert(bert, ckpt);
        const inputs = makeInputs(config, c.lengths, c.seq, 100 + ci);
        const run = await runTorch(ckpt, inputs, dir, { jobs: c.jobs.map(torchJob) });
        const jobs = c.jobs.map((j) => torchJobOf(run, j.name));
        const before = new Map([...bert.params].map(([n, p]) => [n, Float32Array.from(p.data)]));
        // every head's outputs exist on the torch side
        for (
          const [key, present] of [
            ["logits", !!c.heads.classifier && !c.heads.tokenClassifier],
            ["token_logits", !!c.heads.tokenClassifier],
            ["span_logits", !!c.heads.qa],
            ["mlm_logits", !!c.heads.mlm],
          ] as const
        ) assert.equal(run.tensors.has(key), present, key);
        const cls = jobs.find((j) => j.name === "classification");
        if (cls) {
          // the classification loss does not reach the MLM head; only the key biases get an
          // exactly-zero gradient (softmax is invariant to adding q·b_k to a whole score row);
          // the norm exceeds max_grad_norm, so clipping is exercised
          assert.deepEqual(
            [...cls.noGrad].sort(),
            [...bert.params.keys()].filter((n) => n.startsWith("cls.predictions.")).sort(),
          );
          assert.deepEqual(
            [...cls.zeroGrad].sort(),
            Array.from(
              { length: config.num_hidden_layers },
              (_, l) => `encoder.layer.${l}.attention.self.key.bias`,
            ),
          );
          assert.ok(cls.get("grad_norm").data[0] > ADAMW.max_grad_norm);
        }
        const mlmPositions = inputs.mlm_labels!.flat().flatMap((t, i) => (t !== -100 ? [i] : []));

        const report = new Report();
        const failures: Record<string, string[]> = {};
        for (const exec of EXECUTORS) {
          const errs = new Errors();
          const inf = await openInference(bert, {
            outputs: "all",
            values: true,
            mlmRows: !!c.heads.mlm,
            engine: exec.ref,
            threads: 1,
          });
          try {
            const B = c.lengths.length;
            const out = await inf.run({
              inputIds: Int32Array.from(inputs.input_ids.flat()),
              attentionMask: Int32Array.from(inputs.attention_mask.flat()),
              tokenTypeIds: Int32Array.from(inputs.token_type_ids.flat()),
              batch: B,
              seq: c.seq,
              mlmPositions: c.heads.mlm ? Int32Array.from(mlmPositions) : undefined,
            });
            compareForward(errs, bert, out, run.tensors, inputs, mlmPositions);
          } finally {
            await inf.close();
          }

          for (const [k, job] of c.jobs.entries()) {
            const batch: HostBatch = job.objective === "regression"
              ? regressionBatch(inputs)
              : hostBatchOf(inputs);
            await checkTrainerJob(errs, jobs[k], bert.clone(), batch, {
              objective: job.objective,
              engine: exec.ref,
              adamw: !!job.adamw,
              before,
            });
          }
          report.add(exec.label, errs);
          if (errs.failures.length) failures[exec.label] = errs.failures;
        }
        report.print(c.name);
        assert.deepEqual(failures, {}, "mismatches against torch, by executor");
      }),
  });
}
