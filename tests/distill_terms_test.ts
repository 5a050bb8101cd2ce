/**
 * The distill options no other test runs through the stage: the MiniLM/DistilBERT terms
 * `attention_kl`, `cosine` and `value_relation` (online teacher), `projection: per-layer` and
 * `embeddings: false`. One tiny pipeline (random 4×32 teacher, 2×16 student without dropout,
 * full-batch steps on one replica) so that each step's reported loss is exactly the term
 * computed on the whole training split: the stage's first reported loss is recomputed from the
 * seeded fresh student with `lossBreakdown` and, for the last-layer terms and the embedding term
 * of `hidden_mse`, in float64 loops over the forward outputs (inference graph) of the layers the
 * term should compare; the trained student (with its projections from `train_state/`) is then
 * compared with that fresh one on the same batch. (The terms' values and gradients against
 * PyTorch: `parity_test.ts`.)
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import {
  addProjections,
  type DistillObjectiveOptions,
  lossBreakdown,
  type LossTermName,
} from "../pipeline/distill/objective.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { padRows, readTokenSplit } from "../pipeline/store/tokens.ts";
import { assertInputError, randomArray, relErr } from "./_util.ts";

const FIXTURES = resolve("fixtures");
/** The distill stages' seed: the student's initial weights and its projections. */
const SEED = 5;
const TEACHER_WIDTH = 32;
/** Student layers M; a uniform layer map from the 4-layer teacher is [0, 2, 4]. */
const M = 2;
const LAYER_MAP = [0, 2, 4];
/** The teacher layer (0-based) the last-layer terms compare with the student's last layer. */
const TOP = LAYER_MAP[M] - 1;

/** Every distill stage: online teacher, one replica, the whole training split in each step. */
const COMMON = `teacher_outputs: null, replicas: 1, batch_size: 64, warmup: 0, seed: ${SEED},
      checkpoint_every: 0`;

function yaml(dir: string, extraStages = ""): string {
  return `name: terms
output_dir: ${dir}
backend: wasm
datasets:
  tiny:
    format: csv
    path: ${FIXTURES}/tiny/sentiment.csv
    labels: [neg, pos]
    split: { dev: 0.2, test: 0.2, seed: 3 }
teacher: { checkpoint: ${join(dir, "teacher")} }
student:
  config: { num_hidden_layers: ${M}, hidden_size: 16, num_attention_heads: 2,
            intermediate_size: 24, max_position_embeddings: 32, hidden_dropout_prob: 0,
            attention_probs_dropout_prob: 0 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16 }
  - teacher-forward: { dtype: F32, replicas: 1 }
  - distill@attention_kl: { ${COMMON},
      phases: [{ name: p, losses: { attention_kl: 1 }, steps: 6, lr: 5.0e-3 }] }
  - distill@cosine: { ${COMMON},
      phases: [{ name: p, losses: { cosine: 1 }, steps: 6, lr: 5.0e-3 }] }
  - distill@value_relation: { ${COMMON},
      phases: [{ name: p, losses: { value_relation: 1 }, steps: 6, lr: 5.0e-3 }] }
  - distill@shared: { ${COMMON},
      phases: [{ name: p, losses: { hidden_mse: 1 }, steps: 3, lr: 5.0e-3 }] }
  - distill@per-layer: { ${COMMON}, projection: per-layer, weight_decay: 0,
      phases: [{ name: p, losses: { hidden_mse: 1 }, steps: 3, lr: 5.0e-3 }] }
  - distill@no-embeddings: { ${COMMON}, embeddings: false,
      phases: [{ name: p, losses: { hidden_mse: 1 }, steps: 3, lr: 5.0e-3 }] }
${extraStages}`;
}

interface Curve {
  curve: { loss: number; step: number }[];
}

function opts(
  term: LossTermName,
  o: Partial<DistillObjectiveOptions> = {},
): DistillObjectiveOptions {
  return {
    terms: [{ name: term, weight: 1 }],
    layerMap: LAYER_MAP,
    embeddings: true,
    projection: "shared",
    ...o,
  };
}

/** The projection tensors (`distill.*`) of a stage's training state, by name. */
async function trainedExtras(stageDir: string) {
  const st = await readSafetensors(join(stageDir, "train_state", "ckpt", "weights.safetensors"));
  return new Map([...st.tensors].filter(([n]) => n.startsWith("distill.")));
}

type Outputs = Record<string, { data: Float32Array; dims: number[] }>;

/** Every hidden state, attention score and value tensor of `bert` on `batch` (inference graph). */
async function forwardAll(bert: Bert, batch: HostBatch): Promise<Outputs> {
  const [B, S] = batch.inputIds.shape;
  const inf = await openInference(bert, { outputs: "all", values: true, threads: 1 });
  try {
    return await inf.run({
      inputIds: batch.inputIds.data as Int32Array,
      attentionMask: batch.attentionMask.data as Int32Array,
      tokenTypeIds: batch.tokenTypeIds.data as Int32Array,
      batch: B,
      seq: S,
    });
  } finally {
    await inf.close();
  }
}

// float64 loops over the forward outputs: the terms as their definitions say, on the layers
// each should compare (the student's last layer against the teacher's top mapped one)

function logSoftmax(z: number[]): number[] {
  const m = Math.max(...z);
  const l = Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
  return z.map((v) => v - m - l);
}

/** Scores `[B, h, S, S]` with groups of `k` consecutive heads averaged. */
function groupMean(x: ArrayLike<number>, B: number, h: number, k: number, SS: number): number[] {
  const out = new Array(B * (h / k) * SS).fill(0);
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < h; hh++) {
      for (let e = 0; e < SS; e++) {
        out[(b * (h / k) + Math.floor(hh / k)) * SS + e] += x[(b * h + hh) * SS + e] / k;
      }
    }
  }
  return out;
}

/** Per head and real query row, KL(softmax(t) ‖ softmax(s)) over real keys, mean. */
function rowKl(s: ArrayLike<number>, t: ArrayLike<number>, h: number, lens: number[], S: number) {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let hh = 0; hh < h; hh++) {
      for (let i = 0; i < len; i++) {
        const base = ((b * h + hh) * S + i) * S;
        const ls = logSoftmax(Array.from({ length: len }, (_, j) => s[base + j]));
        const lt = logSoftmax(Array.from({ length: len }, (_, j) => t[base + j]));
        for (let j = 0; j < len; j++) sum += Math.exp(lt[j]) * (lt[j] - ls[j]);
        count++;
      }
    }
  });
  return sum / count;
}

/** V·Vᵀ/√d of values `[B, h, S, d]`. */
function relation(v: ArrayLike<number>, B: number, h: number, S: number, d: number): number[] {
  const out = new Array(B * h * S * S).fill(0);
  for (let bh = 0; bh < B * h; bh++) {
    for (let i = 0; i < S; i++) {
      for (let j = 0; j < S; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += v[(bh * S + i) * d + e] * v[(bh * S + j) * d + e];
        out[(bh * S + i) * S + j] = dot / Math.sqrt(d);
      }
    }
  }
  return out;
}

/** Rows `[B·S, Hs]` through the Linear `prefix` of `bert` (`x·Wᵀ + b`) → `[B·S, Ht]`. */
function project(bert: Bert, prefix: string, x: ArrayLike<number>, Hs: number): Float64Array {
  const w = bert.p(`${prefix}.weight`), bias = bert.p(`${prefix}.bias`).data;
  const Ht = w.shape[0], n = x.length / Hs;
  const y = new Float64Array(n * Ht);
  for (let r = 0; r < n; r++) {
    for (let o = 0; o < Ht; o++) {
      let acc = bias[o];
      for (let k = 0; k < Hs; k++) acc += x[r * Hs + k] * w.data[o * Hs + k];
      y[r * Ht + o] = acc;
    }
  }
  return y;
}

interface Curve {
  curve: { loss: number; step: number }[];
}

Deno.test("distill stage: attention_kl, cosine, value_relation, per-layer projections, embeddings: false", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_terms_" });
  const teacher = Bert.create(
    {
      vocab_size: 30522,
      num_hidden_layers: 4,
      hidden_size: TEACHER_WIDTH,
      num_attention_heads: 4,
      intermediate_size: 48,
      max_position_embeddings: 32,
      id2label: { "0": "neg", "1": "pos" },
    },
    { classifier: true },
    21,
  );
  try {
    await saveBert(teacher, join(dir, "teacher"));
    for (const f of ["vocab.txt", "tokenizer.json"]) {
      await Deno.copyFile(join(FIXTURES, "bert-base-uncased", f), join(dir, "teacher", f));
    }
    const reports = await runPipeline(
      parsePipeline(yaml(dir), join(dir, "p.yaml"), BUILTIN_STAGES),
      { quiet: true },
    );
    assert.ok(reports.every((r) => r.status === "ran"), JSON.stringify(reports));
    const by = (k: string) => reports.find((r) => r.key === k) as StageReport;
    const curveOf = async (k: string) =>
      (JSON.parse(await Deno.readTextFile(join(by(k).dir, "curve.json"))) as Curve).curve;

    // the whole training split as one batch, with every teacher target the terms may read
    const rows = (await readTokenSplit(by("tokenize").dir, "train"))!;
    const n = rows.lengths.length;
    assert.ok(n > 4 && n <= 64, `${n} training rows fit one batch of 64`);
    const batch: HostBatch = padRows(rows, Array.from({ length: n }, (_, i) => i));
    const [B, S] = batch.inputIds.shape;
    const lens = Array.from(rows.lengths);
    const tOut = await forwardAll(teacher, batch);
    for (const [name, v] of Object.entries(tOut)) {
      const m = /^(hidden_state|attention_scores|attention_values)_(\d+)$/.exec(name);
      if (!m) continue;
      const key = { hidden_state: "t_hidden", attention_scores: "t_scores" }[m[1]] ?? "t_values";
      batch[`${key}_${m[2]}`] = { data: v.data, shape: v.dims };
    }

    /**
     * A last-layer term in float64 from the forward outputs, the layers chosen here: the
     * student's last layer against the teacher's top mapped one (4 teacher heads averaged in
     * pairs to the student's 2; the hidden state projected by the shared `distill.fit_dense` for
     * cosine).
     */
    const direct = async (term: "attention_kl" | "cosine" | "value_relation", s: Bert) => {
      const out = await forwardAll(s, batch);
      const hs = s.config.num_attention_heads, ht = teacher.config.num_attention_heads;
      if (term === "attention_kl") {
        const tt = groupMean(tOut[`attention_scores_${TOP}`].data, B, ht, ht / hs, S * S);
        return rowKl(out[`attention_scores_${M - 1}`].data, tt, hs, lens, S);
      }
      if (term === "value_relation") {
        const vs = out[`attention_values_${M - 1}`], vt = tOut[`attention_values_${TOP}`];
        const rs = relation(vs.data, B, hs, S, vs.dims[3]);
        const rt = groupMean(relation(vt.data, B, ht, S, vt.dims[3]), B, ht, ht / hs, S * S);
        return rowKl(rs, rt, hs, lens, S);
      }
      const y = project(s, "distill.fit_dense", out[`hidden_state_${M}`].data, 16);
      const th = tOut[`hidden_state_${LAYER_MAP[M]}`].data;
      let sum = 0, count = 0;
      lens.forEach((len, b) => {
        for (let p = 0; p < len; p++) {
          let dot = 0, ny = 0, nt = 0;
          for (let d = 0; d < TEACHER_WIDTH; d++) {
            const a = y[(b * S + p) * TEACHER_WIDTH + d], c = th[(b * S + p) * TEACHER_WIDTH + d];
            dot += a * c;
            ny += a * a;
            nt += c * c;
          }
          sum += 1 - dot / Math.sqrt((ny + 1e-16) * (nt + 1e-16));
          count++;
        }
      });
      return sum / count;
    };

    // the student as the stage starts it (its config, the stage seed; projections added as the
    // stage adds them): the stage's first reported loss is computed from exactly this student
    const config = (await loadBert(join(by("distill@cosine").dir, "model"))).config;
    const fresh = (o: DistillObjectiveOptions) => {
      const s = Bert.create(config, { classifier: true }, SEED);
      addProjections(s, TEACHER_WIDTH, o, SEED);
      return s;
    };
    /** The trained student of a stage: `model/` plus the projections of its training state. */
    const trained = async (k: string) => {
      const s = await loadBert(join(by(k).dir, "model"));
      for (const [name, v] of await trainedExtras(by(k).dir)) {
        s.addExtra(name, { data: v.data, shape: v.shape });
      }
      return s;
    };

    for (const term of ["attention_kl", "cosine", "value_relation"] as const) {
      await t.step(
        `${term}: trains through the stage and moves the student toward the teacher`,
        async () => {
          const key = `distill@${term}`;
          const curve = await curveOf(key);
          assert.equal(curve.length, 6);
          assert.ok(
            curve.every((p) => Number.isFinite(p.loss) && p.loss > 0),
            JSON.stringify(curve),
          );
          const manifest = JSON.parse(await Deno.readTextFile(join(by(key).dir, "manifest.json")));
          assert.equal(manifest.metrics.final_loss, curve.at(-1)!.loss);
          assert.equal(manifest.counts.steps, 6);

          const o = opts(term);
          const before = fresh(o), after = await trained(key);
          const b0 = (await lossBreakdown(before, batch, o))[term];
          const b1 = (await lossBreakdown(after, batch, o))[term];
          // the stage's first step computed exactly this term (the registry's, and the same in
          // float64 from the forward outputs of the layers it should compare), on this batch,
          // from this student
          const d0 = await direct(term, before);
          assert.ok(relErr([b0], [d0]) < 1e-4, `${term}: lossBreakdown ${b0} vs direct ${d0}`);
          assert.ok(
            relErr([curve[0].loss], [d0]) < 1e-3,
            `${term}: stage ${curve[0].loss} vs ${d0}`,
          );
          assert.ok(relErr([await direct(term, after)], [b1]) < 1e-4);
          // training lowered it: over the curve, and the trained student is nearer the teacher
          assert.ok(curve.at(-1)!.loss < curve[0].loss * 0.95, JSON.stringify(curve));
          assert.ok(Number.isFinite(b1) && b1 < b0 * 0.95, `${term}: ${b0} → ${b1}`);
        },
      );
    }

    await t.step(
      "value_relation with a teacher cache is refused, naming teacher_outputs",
      async () => {
        const stage = `  - distill@cached-values: { teacher_outputs: teacher-forward, replicas: 1,
      phases: [{ name: p, losses: { value_relation: 1 }, steps: 1 }] }
`;
        const p = parsePipeline(yaml(dir, stage), join(dir, "p.yaml"), BUILTIN_STAGES);
        const err = await assertInputError(
          () => runPipeline(p, { quiet: true, only: "distill@cached-values" }),
          ["value_relation needs the teacher online", "distill@cached-values.teacher_outputs"],
        );
        assert.equal(err.field, "distill@cached-values.teacher_outputs");
      },
    );

    await t.step(
      "projection: per-layer trains one projection per student index, shared one",
      async () => {
        const shared = await trainedExtras(by("distill@shared").dir);
        assert.deepEqual([...shared.keys()].sort(), [
          "distill.fit_dense.bias",
          "distill.fit_dense.weight",
        ]);
        const perLayer = await trainedExtras(by("distill@per-layer").dir);
        const expected = Array.from({ length: M + 1 }, (_, m) => [
          `distill.fit_dense.${m}.bias`,
          `distill.fit_dense.${m}.weight`,
        ]).flat();
        assert.deepEqual([...perLayer.keys()].sort(), expected.sort());
        for (const [name, v] of [...shared, ...perLayer]) {
          assert.deepEqual(
            v.shape,
            name.endsWith(".weight") ? [TEACHER_WIDTH, 16] : [TEACHER_WIDTH],
            name,
          );
        }
        // none of them is saved with the student
        for (const k of ["distill@shared", "distill@per-layer"]) {
          const st = await readSafetensors(join(by(k).dir, "model", "model.safetensors"));
          assert.ok(![...st.tensors.keys()].some((x) => x.includes("fit_dense")), k);
        }
        // the stage's loss is hidden_mse with per-layer projections, and each projection was
        // trained (moved from its initial value: it is on the loss's path)
        const o = opts("hidden_mse", { projection: "per-layer" });
        const init = fresh(o);
        const curve = await curveOf("distill@per-layer");
        const b0 = (await lossBreakdown(init, batch, o)).hidden_mse;
        assert.ok(relErr([curve[0].loss], [b0]) < 1e-3, `stage ${curve[0].loss} vs ${b0}`);
        for (let m = 0; m <= M; m++) {
          const name = `distill.fit_dense.${m}.weight`;
          const moved = relErr(perLayer.get(name)!.data, init.p(name).data);
          assert.ok(moved > 1e-3, `${name} moved by ${moved}`);
        }
        // three distinct matrices, not one under three names
        const w = (m: number) => perLayer.get(`distill.fit_dense.${m}.weight`)!.data;
        assert.ok(relErr(w(1), w(2)) > 0.1 && relErr(w(0), w(1)) > 0.1);
      },
    );

    await t.step("embeddings: false leaves the embedding output out of hidden_mse", async () => {
      const withEmb = opts("hidden_mse"), without = opts("hidden_mse", { embeddings: false });
      const s = fresh(withEmb);
      const all = (await lossBreakdown(s, batch, withEmb)).hidden_mse;
      const noEmb = (await lossBreakdown(s, batch, without)).hidden_mse;
      // the index-0 term alone, in float64: the projected embedding output against the teacher's
      // over real tokens
      const y = project(
        s,
        "distill.fit_dense",
        (await forwardAll(s, batch)).hidden_state_0.data,
        16,
      );
      const th = batch.t_hidden_0.data;
      let sum = 0, count = 0;
      lens.forEach((len, b) => {
        for (let i = (b * S) * TEACHER_WIDTH; i < (b * S + len) * TEACHER_WIDTH; i++) {
          sum += (y[i] - th[i]) ** 2;
          count++;
        }
      });
      const emb = sum / count;
      assert.ok(emb > 1e-3, `index-0 term ${emb}`);
      assert.ok(relErr([noEmb], [all - emb]) < 1e-4, `${noEmb} vs ${all} − ${emb}`);

      // through the stage: the same seed and batch, so the first losses are exactly these
      const a = await curveOf("distill@shared"), b = await curveOf("distill@no-embeddings");
      assert.ok(relErr([a[0].loss], [all]) < 1e-3, `embeddings: true ${a[0].loss} vs ${all}`);
      assert.ok(
        relErr([b[0].loss], [noEmb]) < 1e-3,
        `embeddings: false ${b[0].loss} vs ${noEmb}`,
      );
      assert.ok(b.every((p) => Number.isFinite(p.loss) && p.loss > 0));
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lossBreakdown reports without dropout: the same model and batch give the same values", async () => {
  const student = Bert.create(
    {
      vocab_size: 50,
      num_hidden_layers: 1,
      hidden_size: 8,
      num_attention_heads: 2,
      intermediate_size: 8,
      max_position_embeddings: 16,
      hidden_dropout_prob: 0.5,
      attention_probs_dropout_prob: 0.5,
    },
    { classifier: false },
    3,
  );
  const [B, S, H] = [2, 6, 8];
  const batch: HostBatch = {
    inputIds: { data: Int32Array.from({ length: B * S }, (_, i) => (i * 7) % 50), shape: [B, S] },
    attentionMask: { data: new Int32Array(B * S).fill(1), shape: [B, S] },
    tokenTypeIds: { data: new Int32Array(B * S), shape: [B, S] },
    t_hidden_0: { data: randomArray(B * S * H, 1), shape: [B, S, H] },
    t_hidden_1: { data: randomArray(B * S * H, 2), shape: [B, S, H] },
  };
  const opts: DistillObjectiveOptions = {
    terms: [{ name: "hidden_mse", weight: 1 }],
    layerMap: [0, 1],
    embeddings: true,
    projection: "shared",
  };
  for (const engine of [undefined, { kind: "tfjs" as const, backend: "wasm" as const }]) {
    const first = (await lossBreakdown(student, batch, opts, engine)).hidden_mse;
    const second = (await lossBreakdown(student, batch, opts, engine)).hidden_mse;
    assert.ok(Number.isFinite(first) && first > 0);
    assert.equal(second, first, "dropout (p = 0.5) would draw other masks on each call");
  }
});
