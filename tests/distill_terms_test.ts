/**
 * The distill options no other test runs through the stage: the MiniLM/DistilBERT terms
 * `attention_kl`, `cosine` and `value_relation` (online teacher), `projection: per-layer` and
 * `embeddings: false`. One tiny pipeline (random 4×32 teacher, 2×16 student without dropout,
 * full-batch steps on one replica) so that each step's reported loss is exactly the term
 * computed on the whole training split: the stage's first reported loss is recomputed from the
 * seeded fresh student with `lossBreakdown` and, for the last-layer terms, straight from the loss
 * functions on the layers the term should compare; the trained student (with its projections
 * from `train_state/`) is then compared with that fresh one on the same batch.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import {
  addProjections,
  type DistillObjectiveOptions,
  lossBreakdown,
  type LossTermName,
} from "../pipeline/distill/objective.ts";
import {
  attentionKl,
  cosineHidden,
  hiddenMse,
  valueRelationKl,
} from "../pipeline/distill/losses.ts";
import { runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { padRows, readTokenSplit } from "../pipeline/store/tokens.ts";
import { inputTensors, toTensors } from "../pipeline/train/batch.ts";
import type { Batch } from "../pipeline/train/objectives.ts";
import { assertInputError, relErr } from "./_util.ts";

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

/** The model inputs of a tensor batch. */
function inputTensorsOf(batch: Batch) {
  return {
    inputIds: batch.inputIds as tf.Tensor2D,
    attentionMask: batch.attentionMask as tf.Tensor2D,
    tokenTypeIds: batch.tokenTypeIds as tf.Tensor2D,
  };
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

Deno.test("distill stage: attention_kl, cosine, value_relation, per-layer projections, embeddings: false", async (t) => {
  await setBackend("wasm");
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
  const batch: Batch = {};
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
    const host = padRows(rows, Array.from({ length: n }, (_, i) => i));
    Object.assign(batch, toTensors(host));
    tf.tidy(() => {
      const out = teacher.forward(inputTensors(host), { values: true });
      out.hiddenStates.forEach((h, i) => batch[`t_hidden_${i}`] = tf.keep(h));
      out.attentionScores.forEach((s, l) => batch[`t_scores_${l}`] = tf.keep(s));
      out.values!.forEach((v, l) => batch[`t_values_${l}`] = tf.keep(v));
    });

    const mask = tf.cast(batch.attentionMask, "float32") as tf.Tensor2D;
    batch.floatMask = mask; // disposed with the batch
    /**
     * A last-layer term straight from the loss functions of `losses.ts`, the layers chosen here:
     * the student's last layer against the teacher's top mapped one (the hidden state projected
     * by the shared `distill.fit_dense` for cosine).
     */
    const direct = (term: "attention_kl" | "cosine" | "value_relation", s: Bert): number =>
      tf.tidy(() => {
        const out = s.forward(inputTensorsOf(batch), { values: true });
        let v: tf.Scalar;
        if (term === "attention_kl") {
          v = attentionKl(
            out.attentionScores[M - 1],
            batch[`t_scores_${TOP}`] as tf.Tensor4D,
            mask,
          );
        } else if (term === "value_relation") {
          v = valueRelationKl(out.values![M - 1], batch[`t_values_${TOP}`] as tf.Tensor4D, mask);
        } else {
          const h = out.hiddenStates[M], [B, S, Hs] = h.shape;
          const w = s.p("distill.fit_dense.weight"), b = s.p("distill.fit_dense.bias");
          const projected = tf.add(tf.matMul(h.reshape([B * S, Hs]), w, false, true), b)
            .reshape([B, S, TEACHER_WIDTH]) as tf.Tensor3D;
          v = cosineHidden(projected, batch[`t_hidden_${LAYER_MAP[M]}`] as tf.Tensor3D, mask);
        }
        return v.dataSync()[0];
      });

    // the student as the stage starts it (its config, the stage seed; projections added as the
    // stage adds them): the stage's first reported loss is computed from exactly this student
    const saved = await loadBert(join(by("distill@cosine").dir, "model"));
    const config = saved.config;
    saved.dispose();
    const fresh = (o: DistillObjectiveOptions) => {
      const s = Bert.create(config, { classifier: true }, SEED);
      addProjections(s, TEACHER_WIDTH, o, SEED);
      return s;
    };
    /** The trained student of a stage: `model/` plus the projections of its training state. */
    const trained = async (k: string) => {
      const s = await loadBert(join(by(k).dir, "model"));
      for (const [name, v] of await trainedExtras(by(k).dir)) {
        s.addExtra(name, tf.tensor(v.data, v.shape));
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
          try {
            const b0 = lossBreakdown(before, batch, o)[term];
            const b1 = lossBreakdown(after, batch, o)[term];
            // the stage's first step computed exactly this term (the registry's, and the same from
            // the loss function on the layers it should compare), on this batch, from this student
            const d0 = direct(term, before);
            assert.ok(relErr([b0], [d0]) < 1e-4, `${term}: lossBreakdown ${b0} vs direct ${d0}`);
            assert.ok(
              relErr([curve[0].loss], [d0]) < 1e-3,
              `${term}: stage ${curve[0].loss} vs ${d0}`,
            );
            assert.ok(relErr([direct(term, after)], [b1]) < 1e-4);
            // training lowered it: over the curve, and the trained student is nearer the teacher
            assert.ok(curve.at(-1)!.loss < curve[0].loss * 0.95, JSON.stringify(curve));
            assert.ok(Number.isFinite(b1) && b1 < b0 * 0.95, `${term}: ${b0} → ${b1}`);
          } finally {
            before.dispose();
            after.dispose();
          }
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
        try {
          const curve = await curveOf("distill@per-layer");
          const b0 = lossBreakdown(init, batch, o).hidden_mse;
          assert.ok(relErr([curve[0].loss], [b0]) < 1e-3, `stage ${curve[0].loss} vs ${b0}`);
          for (let m = 0; m <= M; m++) {
            const name = `distill.fit_dense.${m}.weight`;
            const moved = relErr(perLayer.get(name)!.data, init.p(name).dataSync());
            assert.ok(moved > 1e-3, `${name} moved by ${moved}`);
          }
          // three distinct matrices, not one under three names
          const w = (m: number) => perLayer.get(`distill.fit_dense.${m}.weight`)!.data;
          assert.ok(relErr(w(1), w(2)) > 0.1 && relErr(w(0), w(1)) > 0.1);
        } finally {
          init.dispose();
        }
      },
    );

    await t.step("embeddings: false leaves the embedding output out of hidden_mse", async () => {
      const withEmb = opts("hidden_mse"), without = opts("hidden_mse", { embeddings: false });
      const s = fresh(withEmb);
      try {
        const all = lossBreakdown(s, batch, withEmb).hidden_mse;
        const noEmb = lossBreakdown(s, batch, without).hidden_mse;
        // the index-0 term alone: projected embedding output against the teacher's
        const emb = tf.tidy(() => {
          const out = s.forward(inputTensorsOf(batch));
          return hiddenMse(
            out.hiddenStates[0],
            batch.t_hidden_0 as tf.Tensor3D,
            s.p("distill.fit_dense.weight") as tf.Tensor2D,
            s.p("distill.fit_dense.bias") as tf.Tensor1D,
            mask,
          ).dataSync()[0];
        });
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
      } finally {
        s.dispose();
      }
    });
  } finally {
    teacher.dispose();
    tf.dispose(Object.values(batch));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lossBreakdown reports without dropout: the same model and batch give the same values", () => {
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
  const batch: Batch = {
    inputIds: tf.tensor2d(Array.from({ length: B * S }, (_, i) => (i * 7) % 50), [B, S], "int32"),
    attentionMask: tf.ones([B, S], "int32"),
    tokenTypeIds: tf.zeros([B, S], "int32"),
    t_hidden_0: tf.randomNormal([B, S, H], 0, 1, "float32", 1),
    t_hidden_1: tf.randomNormal([B, S, H], 0, 1, "float32", 2),
  };
  const opts = {
    terms: [{ name: "hidden_mse" as const, weight: 1 }],
    layerMap: [0, 1],
    embeddings: true,
    projection: "shared" as const,
  };
  const first = lossBreakdown(student, batch, opts).hidden_mse;
  const second = lossBreakdown(student, batch, opts).hidden_mse;
  assert.ok(Number.isFinite(first));
  assert.equal(second, first, "dropout (p = 0.5) would draw other masks on each call");
  tf.dispose(Object.values(batch));
  student.dispose();
});
