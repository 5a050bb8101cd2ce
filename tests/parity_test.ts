/**
 * Every distillation loss term of the registry (`pipeline/graph/losses.ts`) against the
 * independent float64 PyTorch reference (`tests/reference/bert_torch.py`, the terms written there
 * from their definitions), on every executor (ONNX Runtime; tfjs on wasm and cpu): each term's
 * value (the loss of a one-term job, and `lossBreakdown`'s per-term values of a mixed job), the
 * gradient of every parameter the loss reaches (student and projections, `Trainer.gradients`,
 * dropout off) and one AdamW step of the mixed job.
 *
 * Covered: `attention_mse` (TinyBERT's ≤ −100 rule on real teacher entries, exactly −100
 * included), `hidden_mse` (shared and per-layer projections, embeddings on and off, no projection
 * when the widths match), `cosine`, `attention_kl`, `value_relation` (teacher value width ≠
 * student's), with head counts matched both ways (teacher 8 → 4 and student 4 → 2 by group means)
 * and as they are; the prediction terms `soft_ce` (temperatures 1, 2, 3), `kl` (T²), `logit_mse`
 * and `hard_ce` on each head's rows: the sequence classifier, every real token of a token
 * classifier, and the start/end distributions over positions of a QA head; term weights; an
 * explicit layer map. Teacher targets hold NaN at every padded position, as the cache does: no
 * term may read them.
 *
 * Tolerances and floors: `tests/_torch.ts` (TOL = 1e-4 per element).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import type { Bert, BertHeads } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { type DistillObjectiveOptions, lossBreakdown } from "../pipeline/distill/objective.ts";
import { randomArray, withTempDir } from "./_util.ts";
import {
  checkTrainerJob,
  Errors,
  EXECUTORS,
  hostBatchOf,
  type Inputs,
  type Job,
  makeInputs,
  noDropout,
  PYTHON,
  randomModel,
  Report,
  runTorch,
  torchJob,
  torchJobOf,
  writeJobTensors,
} from "./_torch.ts";

type Tensors = Record<string, { data: Float32Array; shape: number[] }>;

/** Teacher layers N: the uniform map of the 2-layer students is [0, 2, 4]. */
const TEACHER_LAYERS = 4;
const UNIFORM = [0, 2, 4];

/** Whether flat index `i` of a `[B, ...inner]` tensor lies at a padded position (`axes` of `S`). */
function padded(
  inputs: Inputs,
  shape: number[],
  axes: number[],
): (i: number) => boolean {
  const strides = shape.map((_, k) => shape.slice(k + 1).reduce((a, b) => a * b, 1));
  return (i: number) => {
    const b = Math.floor(i / strides[0]);
    return axes.some((ax) =>
      inputs.attention_mask[b][Math.floor(i / strides[ax]) % shape[ax]] === 0
    );
  };
}

/** Random `[shape]` (uniform ±scale) with NaN at padded positions (the cache's padding). */
function target(
  inputs: Inputs,
  shape: number[],
  axes: number[],
  seed: number,
  scale: number,
): { data: Float32Array; shape: number[] } {
  const pad = padded(inputs, shape, axes);
  const n = shape.reduce((a, b) => a * b, 1);
  const data = randomArray(n, seed).map((v, i) => (pad(i) ? NaN : v * scale));
  return { data, shape };
}

/**
 * A teacher's targets for `inputs`: every hidden state (width `Ht`), every layer's pre-softmax
 * scores (`ht` heads) with some real entries ≤ −100 on every head (one exactly −100), values of
 * head width `dt`, and `logits` of `logitShape`; padded positions NaN.
 */
function teacherTargets(
  inputs: Inputs,
  o: { Ht: number; ht: number; dt: number; logits: number[]; seed: number },
): Tensors {
  const B = inputs.input_ids.length, S = inputs.input_ids[0].length;
  const out: Tensors = {};
  for (let i = 0; i <= TEACHER_LAYERS; i++) {
    out[`t_hidden_${i}`] = target(inputs, [B, S, o.Ht], [1], o.seed + i, 1.5);
  }
  for (let l = 0; l < TEACHER_LAYERS; l++) {
    const shape = [B, o.ht, S, S];
    const s = target(inputs, shape, [2, 3], o.seed + 10 + l, 3);
    // real (query, key) pairs of example 0 whose every head is ≤ −100: the rule sets them to 0
    for (const [q, k, v] of [[0, 1, -150], [2, 0, -100], [1, 1, -4000]]) {
      for (let h = 0; h < o.ht; h++) s.data[((0 * o.ht + h) * S + q) * S + k] = v - 7 * h;
    }
    // exactly −100 on every head (the rule is ≤)
    for (let h = 0; h < o.ht; h++) s.data[((1 * o.ht + h) * S + 1) * S + 2] = -100;
    out[`t_scores_${l}`] = s;
    out[`t_values_${l}`] = target(inputs, [B, o.ht, S, o.dt], [2], o.seed + 20 + l, 2);
  }
  const tokens = o.logits.length === 3;
  out.t_logits = target(inputs, o.logits, tokens ? [1] : [], o.seed + 30, 3);
  return out;
}

/** Projection parameters student width → `Ht`: shared, or one per student index 0..M. */
function projections(
  Hs: number,
  Ht: number,
  kind: "shared" | "per-layer",
  M: number,
  seed: number,
): Tensors {
  const out: Tensors = {};
  const names = kind === "shared"
    ? ["distill.fit_dense"]
    : Array.from({ length: M + 1 }, (_, m) => `distill.fit_dense.${m}`);
  names.forEach((name, k) => {
    out[`${name}.weight`] = {
      data: randomArray(Ht * Hs, seed + 2 * k).map((v) => 0.3 * v),
      shape: [Ht, Hs],
    };
    out[`${name}.bias`] = {
      data: randomArray(Ht, seed + 2 * k + 1).map((v) => 0.3 * v),
      shape: [Ht],
    };
  });
  return out;
}

interface Case {
  name: string;
  config: Partial<BertConfig>;
  heads: BertHeads;
  lengths: number[];
  seq: number;
  /** Tensor sets (teacher targets, projections) by name, built from the inputs. */
  sets: (inputs: Inputs, Hs: number) => Record<string, Tensors>;
  jobs: Job[];
  /** The job whose per-term values `lossBreakdown` reports too. */
  breakdown?: string;
}

const STUDENT = {
  vocab_size: 50,
  hidden_size: 16,
  num_hidden_layers: 2,
  intermediate_size: 24,
  max_position_embeddings: 12,
};

const d = (
  name: string,
  terms: Job["terms"],
  set: string,
  o: Partial<Job> = {},
): Job => ({ name, objective: "distillation", terms, set, layerMap: UNIFORM, ...o });
const one = (term: string, weight = 1, temperature?: number) => [{
  name: term,
  weight,
  ...(temperature ? { temperature } : {}),
}];

const CASES: Case[] = [
  {
    name: "sequence classifier student (4 heads, width 16)",
    config: { ...STUDENT, num_attention_heads: 4, id2label: { "0": "a", "1": "b", "2": "c" } },
    heads: { classifier: true, mlm: false },
    lengths: [9, 6, 3, 8],
    seq: 9,
    sets: (inputs, Hs) => {
      const B = inputs.input_ids.length;
      const t8 = teacherTargets(inputs, { Ht: 24, ht: 8, dt: 5, logits: [B, 3], seed: 500 });
      const t2 = teacherTargets(inputs, { Ht: 24, ht: 2, dt: 3, logits: [B, 3], seed: 600 });
      const same = teacherTargets(inputs, { Ht: Hs, ht: 4, dt: 4, logits: [B, 3], seed: 700 });
      return {
        t8: { ...t8, ...projections(Hs, 24, "shared", 2, 800) },
        t8pl: { ...t8, ...projections(Hs, 24, "per-layer", 2, 810) },
        t2: { ...t2, ...projections(Hs, 24, "shared", 2, 820) },
        same,
      };
    },
    jobs: [
      d("attention_mse.t8", one("attention_mse"), "t8"),
      d("attention_mse.t2", one("attention_mse", 0.7), "t2"),
      d("attention_mse.same", one("attention_mse"), "same"),
      d("hidden_mse.shared", one("hidden_mse"), "t8"),
      d("hidden_mse.per-layer", one("hidden_mse"), "t8pl", { projection: "per-layer" }),
      d("hidden_mse.no-embeddings", one("hidden_mse"), "t8", { embeddings: false }),
      d("hidden_mse.same-width", one("hidden_mse"), "same"),
      d("cosine.shared", one("cosine"), "t8"),
      d("cosine.per-layer", one("cosine"), "t8pl", { projection: "per-layer" }),
      d("cosine.same-width", one("cosine"), "same"),
      d("attention_kl.t8", one("attention_kl"), "t8"),
      d("attention_kl.t2", one("attention_kl"), "t2"),
      d("value_relation.t8", one("value_relation"), "t8"),
      d("value_relation.t2", one("value_relation"), "t2"),
      d("value_relation.same", one("value_relation"), "same"),
      d("soft_ce.T1", one("soft_ce"), "t8"),
      d("soft_ce.T2", one("soft_ce", 0.5, 2), "t8"),
      d("kl.T2", one("kl", 1, 2), "t8"),
      d("logit_mse", one("logit_mse"), "t8"),
      d("hard_ce", one("hard_ce"), "t8"),
      // TinyBERT's intermediate and prediction terms at once, an explicit map, one AdamW step
      d(
        "mixed",
        [
          { name: "attention_mse", weight: 1 },
          { name: "hidden_mse", weight: 0.5 },
          { name: "soft_ce", weight: 2, temperature: 3 },
          { name: "kl", weight: 0.25, temperature: 3 },
        ],
        "t8pl",
        { layerMap: [0, 1, 3], projection: "per-layer", adamw: true },
      ),
    ],
    breakdown: "mixed",
  },
  {
    name: "token classifier student (2 heads): prediction terms over real tokens",
    config: { ...STUDENT, num_attention_heads: 2, id2label: { "0": "O", "1": "B", "2": "I" } },
    heads: { classifier: true, tokenClassifier: true, mlm: false },
    lengths: [9, 5, 7],
    seq: 9,
    sets: (inputs) => {
      const B = inputs.input_ids.length, S = inputs.input_ids[0].length;
      return {
        t: teacherTargets(inputs, { Ht: 16, ht: 2, dt: 8, logits: [B, S, 3], seed: 900 }),
      };
    },
    jobs: [
      d("soft_ce.T2", one("soft_ce", 1, 2), "t"),
      d("kl.T2", one("kl", 1, 2), "t"),
      d("logit_mse", one("logit_mse"), "t"),
      d("hard_ce", one("hard_ce"), "t"),
      d(
        "mixed",
        [
          { name: "soft_ce", weight: 1 },
          { name: "hard_ce", weight: 0.5 },
          { name: "attention_mse", weight: 1 },
        ],
        "t",
        { adamw: true },
      ),
    ],
    breakdown: "mixed",
  },
  {
    name: "QA student (2 heads): prediction terms over the start/end distributions",
    config: { ...STUDENT, num_attention_heads: 2 },
    heads: { classifier: false, qa: true, mlm: false },
    lengths: [9, 5, 7],
    seq: 9,
    sets: (inputs) => {
      const B = inputs.input_ids.length, S = inputs.input_ids[0].length;
      return {
        t: teacherTargets(inputs, { Ht: 16, ht: 2, dt: 8, logits: [B, S, 2], seed: 1000 }),
      };
    },
    jobs: [
      d("soft_ce.T2", one("soft_ce", 1, 2), "t"),
      d("kl.T1", one("kl"), "t"),
      d("logit_mse", one("logit_mse"), "t"),
      d("hard_ce", one("hard_ce"), "t"),
      d(
        "mixed",
        [
          { name: "soft_ce", weight: 1 },
          { name: "logit_mse", weight: 0.1 },
          { name: "hidden_mse", weight: 1 },
        ],
        "t",
        { adamw: true },
      ),
    ],
    breakdown: "mixed",
  },
];

function objectiveOf(job: Job): DistillObjectiveOptions {
  return {
    terms: job.terms!,
    layerMap: job.layerMap!,
    embeddings: job.embeddings ?? true,
    projection: job.projection ?? "shared",
  };
}

/** The student of a job: the base model plus its set's projections (`distill.*`). */
function studentOf(bert: Bert, set: Tensors): Bert {
  const s = bert.clone();
  for (const [k, v] of Object.entries(set)) {
    if (k.startsWith("distill.")) {
      s.addExtra(k, { data: Float32Array.from(v.data), shape: v.shape });
    }
  }
  return s;
}

/** The batch of a job: the inputs and labels plus its set's teacher targets (`t_*`). */
function batchOf(inputs: Inputs, set: Tensors): HostBatch {
  const extra: HostBatch = {};
  for (const [k, v] of Object.entries(set)) if (k.startsWith("t_")) extra[k] = v;
  return hostBatchOf(inputs, extra);
}

for (const [ci, c] of CASES.entries()) {
  Deno.test({
    name: `torch parity of the loss terms: ${c.name} on ${
      EXECUTORS.map((e) => e.label).join(", ")
    }`,
    ignore: !PYTHON,
    fn: () =>
      withTempDir(async (dir) => {
        const config = noDropout(c.config);
        const bert = randomModel(config, c.heads, 40 + ci);
        const ckpt = join(dir, "ckpt");
        await saveBert(bert, ckpt);
        const inputs = makeInputs(config, c.lengths, c.seq, 300 + ci);
        const sets = c.sets(inputs, config.hidden_size);
        const tensorsPath = join(dir, "job_tensors.safetensors");
        await writeJobTensors(tensorsPath, sets);
        const run = await runTorch(ckpt, inputs, dir, {
          jobs: c.jobs.map(torchJob),
          tensors: tensorsPath,
        });
        const jobs = c.jobs.map((j) => torchJobOf(run, j.name));
        for (const [k, job] of c.jobs.entries()) {
          // every term has a value, and the loss is their weighted sum
          const ref = jobs[k];
          let sum = 0;
          for (const t of job.terms!) {
            const v = ref.get(`term.${t.name}`).data[0];
            assert.ok(Number.isFinite(v) && v > 0, `${job.name}: torch ${t.name} = ${v}`);
            sum += t.weight * v;
          }
          assert.ok(Math.abs(sum - ref.get("loss").data[0]) <= 1e-12 * Math.abs(sum));
        }

        const report = new Report();
        const failures: Record<string, string[]> = {};
        for (const exec of EXECUTORS) {
          const errs = new Errors();
          for (const [k, job] of c.jobs.entries()) {
            const set = sets[job.set!];
            const student = studentOf(bert, set);
            const before = new Map(
              [...student.params].map(([n, p]) => [n, Float32Array.from(p.data)]),
            );
            const batch = batchOf(inputs, set);
            if (job.name === c.breakdown) {
              const values = await lossBreakdown(student, batch, objectiveOf(job), exec.ref);
              for (const t of job.terms!) {
                errs.rel(
                  "term values (lossBreakdown)",
                  `${job.name}: ${t.name}`,
                  [values[t.name]],
                  jobs[k].get(`term.${t.name}`),
                );
              }
            }
            await checkTrainerJob(errs, jobs[k], student, batch, {
              objective: "distillation",
              objectiveOptions: objectiveOf(job),
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
