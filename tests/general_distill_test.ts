/**
 * General distillation on unlabeled text, then task distillation starting from the general
 * student (`init_from`), and a student initialised from chosen teacher layers — all in one
 * pipeline file, with the teacher online for the task stages (DistilBERT/TinyBERT mixes of
 * `kl` and `hard_ce`); the packed general stage trains on the tfjs engine, the others on ONNX
 * Runtime.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { withTempDir } from "./_util.ts";

const FIXTURES = resolve("fixtures");
const SMALL = { hidden_size: 16, num_attention_heads: 2, intermediate_size: 24 };

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("general → task distillation and teacher-layer initialisation in one pipeline", async () => {
  await withTempDir(async (dir) => {
    const teacher = Bert.create(
      {
        ...SMALL,
        vocab_size: 30522,
        num_hidden_layers: 4,
        max_position_embeddings: 32,
        id2label: { "0": "neg", "1": "pos" },
      },
      {},
      21,
    );
    await saveBert(teacher, join(dir, "teacher"));
    for (const f of ["vocab.txt", "tokenizer.json"]) {
      await Deno.copyFile(join(FIXTURES, "bert-base-uncased", f), join(dir, "teacher", f));
    }
    const yaml = `name: gen
output_dir: ${dir}
backend: wasm
datasets:
  text: { format: moby-dick, limit: 40, split: { dev: 0, test: 0, seed: 1 } }
  tiny:
    format: csv
    path: ${FIXTURES}/tiny/sentiment.csv
    labels: [neg, pos]
    split: { dev: 0.2, test: 0.2, seed: 3 }
teacher: { checkpoint: ${join(dir, "teacher")} }
student:
  config: { num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 2, intermediate_size: 24,
            max_position_embeddings: 32 }
stages:
  - tokenize@general: { dataset: text, max_seq_length: 16 }
  - teacher-forward@general: { input: tokenize@general, dtype: F32, replicas: 1 }
  - distill@general:
      tokens: tokenize@general
      teacher_outputs: teacher-forward@general
      replicas: 1
      phases: [{ name: general, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 4, lr: 1.0e-3 }]
  - tokenize: { dataset: tiny, max_seq_length: 16 }
  - distill@task:
      teacher_outputs: null
      init_from: distill@general
      replicas: 1
      phases:
        - { name: prediction, losses: { kl: { weight: 1, temperature: 2 }, hard_ce: 0.5 },
            steps: 3, lr: 1.0e-3, evaluate: true }
  - distill@layers:
      teacher_outputs: null
      init: teacher-layers
      layer_map: last
      replicas: 1
      phases: [{ name: p, losses: { soft_ce: 1 }, steps: 1, lr: 1.0e-12 }]
  - distill@packed:
      tokens: [tokenize@general, tokenize]
      pack: 24
      teacher_outputs: null
      engine: tfjs
      replicas: 1
      phases: [{ name: general, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 2, lr: 1.0e-3 }]
`;
    const reports = await runPipeline(parsePipeline(yaml, join(dir, "p.yaml"), BUILTIN_STAGES), {
      quiet: true,
    });
    const by = (k: string) => reports.find((r) => r.key === k) as StageReport;
    assert.ok(reports.every((r) => r.status === "ran"));

    // the general student: no classifier (unlabeled text), finite losses
    const general = await loadBert(join(by("distill@general").dir, "model"));
    assert.equal(general.heads.classifier, false);
    const curve = JSON.parse(
      await Deno.readTextFile(join(by("distill@general").dir, "curve.json")),
    );
    assert.equal(curve.curve.length, 4);
    assert.ok(curve.curve.every((p: { loss: number }) => Number.isFinite(p.loss) && p.loss > 0));

    // the task student started from the general one: its 3 small steps moved it far less than
    // the 4 general steps moved the general student from the (same-seed) fresh initialisation;
    // it got a classifier for the task's labels
    const task = await loadBert(join(by("distill@task").dir, "model"));
    assert.deepEqual(task.config.id2label, { "0": "neg", "1": "pos" });
    const name = "encoder.layer.0.attention.self.query.weight";
    const fromGeneral = maxAbsDiff(task.p(name).data, general.p(name).data);
    const fresh = Bert.create(task.config, {}, 42);
    const fromFresh = maxAbsDiff(task.p(name).data, fresh.p(name).data);
    assert.ok(fromGeneral < fromFresh / 5, `${fromGeneral} vs ${fromFresh}`);

    // teacher-layers with layer_map last: student layers 0, 1 ← teacher layers 2, 3
    const layers = await loadBert(join(by("distill@layers").dir, "model"));
    for (const [s, t] of [[0, 2], [1, 3]]) {
      const sw = layers.p(`encoder.layer.${s}.output.dense.weight`).data;
      const tw = teacher.p(`encoder.layer.${t}.output.dense.weight`).data;
      assert.ok(maxAbsDiff(sw, tw) < 1e-6, `student layer ${s} = teacher layer ${t}`);
    }
    const emb = "embeddings.word_embeddings.weight";
    assert.ok(maxAbsDiff(layers.p(emb).data, teacher.p(emb).data) < 1e-6);
    // two corpora, one of them labelled, packed: unlabeled text, so a general student again
    // (trained on the tfjs engine)
    const packed = await loadBert(join(by("distill@packed").dir, "model"));
    assert.equal(packed.heads.classifier, false);
    const packedCurve = JSON.parse(
      await Deno.readTextFile(join(by("distill@packed").dir, "curve.json")),
    );
    assert.equal(packedCurve.curve.length, 2);
    for (const m of [general, task, fresh, layers, teacher, packed]) m.dispose();
  });
});
