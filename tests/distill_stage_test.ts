/**
 * The whole task pipeline on a tiny dataset through the runner: tokenize → finetune@teacher →
 * teacher-forward → distill (cached and online teacher) → finetune@student → evaluate.
 * The two distillation stages train on the tfjs engine with 2 replicas, the rest on ONNX Runtime.
 * Checks what a user relies on: cached and online teacher outputs train the student identically,
 * the student folder loads here and in the independent PyTorch reference with the same logits,
 * the report's ratios are computed from the models, and mistakes are refused before training.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import type { Bert } from "../pipeline/model/bert.ts";
import { loadBert } from "../pipeline/model/checkpoint.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import { runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { PYTHON, runTorch } from "./_torch.ts";
import { assertInputError, relErr } from "./_util.ts";

const FIXTURES = resolve("fixtures");

function yaml(out: string, opts: { studentHeads?: number; distillMap?: string } = {}) {
  return `name: tiny
output_dir: ${out}
backend: wasm
datasets:
  tiny:
    format: csv
    path: ${FIXTURES}/tiny/sentiment.csv
    labels: [neg, pos]
    split: { dev: 0.2, test: 0.2, seed: 3 }
teacher:
  tokenizer: ${FIXTURES}/bert-base-uncased
  config: { num_hidden_layers: 4, hidden_size: 32, num_attention_heads: 4, intermediate_size: 48,
            max_position_embeddings: 32 }
student:
  config: { num_hidden_layers: 2, hidden_size: 16, num_attention_heads: ${opts.studentHeads ?? 2},
            intermediate_size: 24, max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16, rows_per_part: 8 }
  - finetune@teacher: { model: teacher, steps: 6, batch_size: 8, lr: 1.0e-3, replicas: 1,
                        checkpoint_every: 4 }
  # one part: batches are then drawn exactly as with the online teacher (one group)
  - teacher-forward: { teacher: finetune@teacher, dtype: F32, rows_per_part: 64, replicas: 1 }
  - distill:
      teacher: finetune@teacher
      engine: tfjs
      replicas: 2
      batch_size: 4
      ${opts.distillMap ? `layer_map: ${opts.distillMap}` : ""}
      phases:
        - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 5, lr: 1.0e-3 }
        - { name: prediction, losses: { soft_ce: { weight: 1, temperature: 2 } }, steps: 4,
            lr: 1.0e-3, evaluate: true, eval_every: 2 }
  - distill@online:
      teacher: finetune@teacher
      teacher_outputs: null
      engine: tfjs
      replicas: 2
      batch_size: 4
      phases:
        - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 5, lr: 1.0e-3 }
        - { name: prediction, losses: { soft_ce: { weight: 1, temperature: 2 } }, steps: 4,
            lr: 1.0e-3, evaluate: true, eval_every: 2 }
  - finetune@student: { model: student, steps: 9, batch_size: 4, lr: 1.0e-3, replicas: 1 }
  - evaluate:
      teacher: finetune@teacher
      students: { student: distill }
      baselines: { labels-only: finetune@student }
      latency_examples: 5
`;
}

/** The sequence-classification logits of `model` on one batch (its inference graph). */
async function logitsOf(
  model: Bert,
  ids: number[],
  mask: number[],
  batch: number,
  seq: number,
  engine?: EngineRef,
): Promise<Float32Array> {
  const inference = await openInference(model, { engine, threads: 1 });
  try {
    const out = await inference.run({
      inputIds: Int32Array.from(ids),
      attentionMask: Int32Array.from(mask),
      batch,
      seq,
    }, ["logits"]);
    return out.logits.data;
  } finally {
    await inference.close();
  }
}

Deno.test("task pipeline: teacher, cached/online distillation, labels-only baseline, report", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_distill_" });
  try {
    const p = parsePipeline(yaml(dir), join(dir, "p.yaml"), BUILTIN_STAGES);
    const reports = await runPipeline(p, { quiet: true });
    const by = (k: string) => reports.find((r) => r.key === k) as StageReport;
    assert.deepEqual(reports.map((r) => r.status), Array(7).fill("ran"));

    // cached and online teacher outputs: the same losses step by step (F32 cache)
    const curve = async (k: string) =>
      JSON.parse(await Deno.readTextFile(join(by(k).dir, "curve.json"))).curve as {
        loss: number;
        phase: string;
      }[];
    const cached = await curve("distill"), online = await curve("distill@online");
    assert.equal(cached.length, 9);
    cached.forEach((c, i) =>
      assert.ok(
        relErr([c.loss], [online[i].loss]) < 1e-4,
        `step ${i + 1}: ${c.loss} vs ${online[i].loss}`,
      )
    );
    assert.ok(cached[0].loss > 0 && Number.isFinite(cached[0].loss));
    // the intermediate loss goes down on the training data
    assert.ok(cached[4].loss < cached[0].loss, `${cached[0].loss} → ${cached[4].loss}`);

    // the student folder: HF layout, no training-only tensors, loads here
    const modelDir = join(by("distill").dir, "model");
    for (const f of ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json"]) {
      await Deno.stat(join(modelDir, f));
    }
    const st = await readSafetensors(join(modelDir, "model.safetensors"));
    assert.ok(
      ![...st.tensors.keys()].some((n) => n.includes("distill.") || n.includes("fit_dense")),
    );
    assert.ok(st.tensors.has("bert.encoder.layer.1.output.dense.weight"));
    const student = await loadBert(modelDir);
    assert.deepEqual(student.config.id2label, { "0": "neg", "1": "pos" });

    // the same logits in the independent PyTorch reference (what transformers would compute)
    if (PYTHON) {
      const ids = [[101, 1037, 4010, 2143, 102], [101, 2307, 102, 0, 0]];
      const mask = ids.map((r) => r.map((t) => (t ? 1 : 0)));
      const types = ids.map((r) => r.map(() => 0));
      const ref = await runTorch(modelDir, {
        input_ids: ids,
        attention_mask: mask,
        token_type_ids: types,
        labels: [0, 1],
      }, dir);
      const ours = await logitsOf(student, ids.flat(), mask.flat(), 2, 5);
      assert.ok(relErr(ours, ref.tensors.get("logits")!.data) < 1e-4);
    }

    // the transformers.js layout beside it: onnx/model.onnx gives the same logits as the model
    // loaded from model.safetensors (its inference graph built here, on both executors)
    {
      const ids = [101, 1037, 4010, 2143, 102];
      const file = await openInference(join(modelDir, "onnx", "model.onnx"), { threads: 1 });
      const res = await file.run({ inputIds: Int32Array.from(ids), batch: 1, seq: 5 }, ["logits"]);
      await file.close();
      for (const engine of [{ kind: "onnxruntime" }, { kind: "tfjs", backend: "wasm" }] as const) {
        const ours = await logitsOf(student, ids, [1, 1, 1, 1, 1], 1, 5, engine);
        assert.ok(relErr(res.logits.data, ours) < 1e-4, engine.kind);
      }
    }
    await Deno.stat(join(modelDir, "onnx", "model_fp16.onnx"));

    // the report: rows from the models themselves, ratios from those rows
    const rep = JSON.parse(await Deno.readTextFile(join(by("evaluate").dir, "report.json")));
    assert.deepEqual(rep.models.map((m: { name: string }) => m.name), [
      "teacher",
      "student",
      "student (fp16)",
      "student (int8)",
      "labels-only",
    ]);
    const [t, s, h, q] = rep.models;
    // the fp16 and INT8 rows: the student's other exports (the files distill wrote) on ONNX Runtime
    assert.equal(h.bytes, (await Deno.stat(join(modelDir, "onnx", "model_fp16.onnx"))).size);
    assert.equal(h.engine, "onnx-fp16");
    assert.equal(q.bytes, (await Deno.stat(join(modelDir, "onnx", "model_quantized.onnx"))).size);
    assert.equal(q.engine, "onnx-int8");
    assert.equal(q.parameters, s.parameters);
    assert.equal(s.parameters, student.numParameters());
    assert.ok(t.parameters > s.parameters);
    assert.equal(s.bytes, (await Deno.stat(join(modelDir, "model.safetensors"))).size);
    assert.ok(s.latency_ms > 0 && s.throughput > 0);
    for (const m of rep.models) assert.ok(m.metrics.accuracy >= 0 && m.metrics.accuracy <= 1);
    const md = await Deno.readTextFile(join(by("evaluate").dir, "report.md"));
    const retention = (100 * s.metrics.accuracy / t.metrics.accuracy).toFixed(1);
    assert.ok(md.includes(retention) || t.metrics.accuracy === 0, md);
    assert.match(md, /\| teacher \|/);
    // paired comparisons: student vs labels-only, student and labels-only vs teacher; each
    // difference is the difference of the two accuracies in the table
    const acc = Object.fromEntries(
      rep.models.map((m: { name: string; metrics: { accuracy: number } }) => [
        m.name,
        m.metrics.accuracy,
      ]),
    );
    assert.deepEqual(
      rep.paired.map((c: { a: string; b: string }) => `${c.a}|${c.b}`),
      [
        "student|labels-only",
        "student|teacher",
        "labels-only|teacher",
        "student (fp16)|student",
        "student (int8)|student",
      ],
    );
    for (const c of rep.paired) {
      assert.ok(Math.abs(c.diff - (acc[c.a] - acc[c.b])) < 1e-9, JSON.stringify(c));
      assert.equal(c.onlyA - c.onlyB, Math.round((acc[c.a] - acc[c.b]) * rep.examples));
      assert.ok(c.p > 0 && c.p <= 1 && c.ci95[0] <= c.diff && c.diff <= c.ci95[1]);
    }
    assert.match(md, /## Paired comparisons[^]*\| student \| labels-only \|/);
    for (
      const f of [
        "scores.svg",
        "latency.svg",
        "size.svg",
        "loss-teacher.svg",
        "loss-student.svg",
        "loss-labels-only.svg",
        "scores.vl.json",
      ]
    ) {
      assert.match(await Deno.readTextFile(join(by("evaluate").dir, f)), /^(<svg|\{)/);
    }
    student.dispose();

    // mistakes are refused before training: incompatible heads, a cache for another layer map
    const bad = parsePipeline(
      yaml(dir, { studentHeads: 3 }).replace("hidden_size: 16", "hidden_size: 18"),
      join(dir, "p.yaml"),
      BUILTIN_STAGES,
    );
    await assertInputError(
      () => runPipeline(bad, { quiet: true, only: "distill" }),
      ["head counts are incompatible", "student.config.num_attention_heads"],
    );
    const other = parsePipeline(
      yaml(dir, { distillMap: "[1, 4]" }),
      join(dir, "p.yaml"),
      BUILTIN_STAGES,
    );
    await assertInputError(
      () => runPipeline(other, { quiet: true, only: "distill" }),
      ["cache was built for another layer map", "[0,1,4]"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
