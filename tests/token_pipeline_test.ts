/**
 * Token classification and extractive QA through the whole pipeline on tiny generated data:
 * tokenize → finetune@teacher → teacher-forward → distill (intermediate + per-token / per-span
 * prediction loss) → finetune@student → evaluate. Checks what a user relies on: the students are
 * `BertForTokenClassification` / `BertForQuestionAnswering` folders, the report's word accuracy,
 * entity F1, exact match and F1 equal a recomputation here, row by row (unpadded) from each
 * model's ONNX export, decoded here — the report runs padded batches through `openInference` —
 * and the paired comparisons are there.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { openInference } from "../pipeline/engines/inference.ts";
import { loadBert } from "../pipeline/model/checkpoint.ts";
import { exportOnnx } from "../pipeline/graph/export.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import { runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { readTokenSplit, type TokenRows } from "../pipeline/store/tokens.ts";
import { bestSpan, IGNORE_INDEX, spanText } from "../pipeline/model/align.ts";
import { entityF1, squadMetrics } from "../pipeline/report/metrics.ts";
import { rng } from "./_util.ts";

const FIXTURES = resolve("fixtures");
const NAMES = [["John"], ["Mary", "Ann"], ["Alice"], ["Bob", "Smith"], ["Carol"], ["Dan"]];
const CITIES = [["Paris"], ["New", "York"], ["Rome"], ["Berlin"], ["San", "Diego"], ["Oslo"]];
const VERBS = [["lives", "in"], ["moved", "to"], ["works", "in"], ["visited"]];

function nerData(n: number): string {
  const r = rng(11);
  const pick = <T>(a: T[]) => a[Math.floor(r() * a.length)];
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const name = pick(NAMES), city = pick(CITIES), verb = pick(VERBS);
    const tokens = [...name, ...verb, ...city, "."];
    const tags = [
      ...name.map((_, k) => (k ? "I-PER" : "B-PER")),
      ...verb.map(() => "O"),
      ...city.map((_, k) => (k ? "I-LOC" : "B-LOC")),
      "O",
    ];
    lines.push(JSON.stringify({ tokens, tags }));
  }
  // sentences longer than max_seq_length: their last words are cut, counted and scored wrong
  for (let i = 0; i < 6; i++) {
    const tokens = [...NAMES[i], "said", ...Array(30).fill("very"), "much", "."];
    lines.push(JSON.stringify({
      tokens,
      tags: tokens.map((_, k) => (k === 0 ? "B-PER" : k < NAMES[i].length ? "I-PER" : "O")),
    }));
  }
  return lines.join("\n") + "\n";
}

function qaData(n: number): string {
  const r = rng(12);
  const pick = <T>(a: T[]) => a[Math.floor(r() * a.length)];
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const name = pick(NAMES).join(" "), city = pick(CITIES).join(" ");
    const other = pick(CITIES).join(" ");
    const context = `${name} ${pick(VERBS).join(" ")} ${city} and later went to ${other}.`;
    const start = context.indexOf(city);
    lines.push(JSON.stringify({
      question: `Where is ${name}?`,
      context,
      answers: { text: [city], answer_start: [start] },
    }));
  }
  return lines.join("\n") + "\n";
}

function yaml(out: string, data: string, task: string, metric: string) {
  return `name: tiny-${task}
output_dir: ${out}
backend: wasm
datasets:
  tiny:
    format: jsonl
    path: ${data}
    task: ${task}
    split: { dev: 0.2, test: 0.25, seed: 3 }
teacher:
  tokenizer: ${FIXTURES}/bert-base-uncased
  config: { num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 4, intermediate_size: 48,
            max_position_embeddings: 32 }
student:
  config: { num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2,
            intermediate_size: 24, max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 32, rows_per_part: 16 }
  - finetune@teacher: { model: teacher, steps: 40, batch_size: 8, lr: 3.0e-3, replicas: 1 }
  - teacher-forward: { teacher: finetune@teacher, dtype: F32, replicas: 1 }
  - distill:
      teacher: finetune@teacher
      replicas: 1
      batch_size: 8
      metric: ${metric}
      phases:
        - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 4, lr: 3.0e-3 }
        - { name: prediction, losses: { soft_ce: 1 }, steps: 12, lr: 3.0e-3, evaluate: true }
  - finetune@student: { model: student, steps: 16, batch_size: 8, lr: 3.0e-3, replicas: 1 }
  - evaluate:
      teacher: finetune@teacher
      students: { student: distill }
      baselines: { labels-only: finetune@student }
      latency_examples: 3
`;
}

/** Per-row forward of the model's ONNX export (batch 1, unpadded), decoded here. */
async function recompute(model: Awaited<ReturnType<typeof loadBert>>, rows: TokenRows) {
  const words: number[][] = [], answers: string[] = [];
  const onnx = await openInference(exportOnnx(model, { outputs: "logits" }), { threads: 1 });
  try {
    for (let r = 0; r < rows.lengths.length; r++) {
      const S = rows.lengths[r];
      const out = await onnx.run({
        inputIds: rows.ids[r],
        tokenTypeIds: rows.types[r],
        batch: 1,
        seq: S,
      });
      if (rows.tokenLabels) {
        const l = out.logits.data, C = out.logits.dims[2];
        const got: number[] = [];
        rows.tokenLabels[r].forEach((t, k) => {
          if (t === IGNORE_INDEX) return;
          const row = Array.from(l.subarray(k * C, (k + 1) * C));
          got.push(row.indexOf(Math.max(...row)));
        });
        words.push(got);
      } else {
        const start = Array.from(out.start_logits.data), end = Array.from(out.end_logits.data);
        const span = bestSpan(start, end, rows.tokenWords![r]);
        answers.push(
          spanText(
            rows.contexts![r],
            rows.tokenWords![r],
            rows.wordSpans![r],
            span.start,
            span.end,
          ),
        );
      }
    }
  } finally {
    await onnx.close();
  }
  return { words, answers };
}

async function runTask(task: "token-classification" | "question-answering") {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_tokentask_" });
  try {
    const data = join(dir, "data.jsonl");
    await Deno.writeTextFile(data, task === "token-classification" ? nerData(80) : qaData(80));
    const metric = task === "token-classification" ? "entity_f1" : "f1";
    const p = parsePipeline(yaml(dir, data, task, metric), join(dir, "p.yaml"), BUILTIN_STAGES);
    const reports = await runPipeline(p, { quiet: true });
    const by = (k: string) => reports.find((r) => r.key === k) as StageReport;
    assert.deepEqual(reports.map((r) => r.status), Array(6).fill("ran"));

    // truncation's cost is counted: the manifest's cut words = gold words − labelled pieces
    const counts = by("tokenize").result!.counts!;
    let cut = 0;
    for (const split of ["train", "dev", "test"]) {
      const r = await readTokenSplit(by("tokenize").dir, split);
      r?.wordTags?.forEach((t, i) => {
        cut += t.length - r.tokenLabels![i].filter((x) => x !== IGNORE_INDEX).length;
      });
    }
    if (task === "token-classification") {
      assert.ok(cut > 0 && counts.words_cut === cut, `${counts.words_cut} vs ${cut}`);
    } else assert.equal(counts.answers_cut, undefined); // every answer fits in 32 tokens

    // the student folder, as transformers writes it
    const modelDir = join(by("distill").dir, "model");
    const config = JSON.parse(await Deno.readTextFile(join(modelDir, "config.json")));
    const arch = task === "token-classification"
      ? "BertForTokenClassification"
      : "BertForQuestionAnswering";
    assert.deepEqual(config.architectures, [arch]);
    const names = [...(await readSafetensors(join(modelDir, "model.safetensors"))).tensors.keys()];
    assert.ok(!names.some((n) => n.includes("pooler") || n.includes("distill.")), `${names}`);

    // the report's figures = a recomputation, row by row, on the test split
    const report = JSON.parse(await Deno.readTextFile(join(by("evaluate").dir, "report.json")));
    const rows = (await readTokenSplit(by("tokenize").dir, "test"))!;
    const student = await loadBert(modelDir);
    const teacher = await loadBert(join(by("finetune@teacher").dir, "model"));
    const row = (name: string) => report.models.find((m: { name: string }) => m.name === name);
    for (const [name, model] of [["student", student], ["teacher", teacher]] as const) {
      const { words, answers } = await recompute(model, rows);
      const got = row(name).metrics;
      if (task === "token-classification") {
        const gold = rows.wordTags!.map((t) => [...t]);
        const pred = words.map((w, i) => [...w, ...Array(gold[i].length - w.length).fill(-1)]);
        const hits = pred.flat().filter((t, i) => t === gold.flat()[i]).length;
        assert.ok(Math.abs(got.accuracy - hits / gold.flat().length) < 1e-9, `${name} accuracy`);
        const labels = Object.values(config.id2label) as string[];
        const tag = (i: number) => (i < 0 ? "O" : labels[i]);
        const f1 = entityF1(gold.map((s) => s.map(tag)), pred.map((s) => s.map(tag))).f1;
        assert.ok(Math.abs(got.entity_f1 - f1) < 1e-9, `${name} entity F1 ${got.entity_f1} ${f1}`);
      } else {
        const m = squadMetrics(answers, rows.answers!.map((a) => a.map((x) => x.text)));
        assert.ok(Math.abs(got.exact_match - m.exactMatch) < 1e-9, `${name} EM`);
        assert.ok(Math.abs(got.f1 - m.f1) < 1e-9, `${name} F1`);
      }
    }
    // the teacher learned the task (the data is a pattern: well above chance)
    const score = task === "token-classification"
      ? row("teacher").metrics.accuracy
      : row("teacher").metrics.f1;
    assert.ok(score > 0.6, `teacher ${score}`);
    // paired comparisons over words / questions, and the INT8 export of the student measured
    assert.ok(
      report.paired.some((c: { a: string; b: string }) =>
        c.a === "student" && c.b === "labels-only"
      ),
    );
    assert.ok(row("student (int8)"), "int8 row");
    student.dispose();
    teacher.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("token classification: tokenize → teacher → cache → distill → evaluate (word accuracy, entity F1)", async () => {
  await runTask("token-classification");
});

Deno.test("extractive QA: tokenize → teacher → cache → distill → evaluate (exact match, F1)", async () => {
  await runTask("question-answering");
});
