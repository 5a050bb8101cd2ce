/**
 * Child process of `gpu_test.ts` (on SwiftShader): a small pipeline running teacher-forward on
 * the CPU and on WebGPU (`device: webgpu`, length buckets on), then evaluate on each, printing
 * `@@result <json>`: the largest difference over every cached value (logits, hidden states,
 * attention scores), whether the argmax labels of the cached logits agree, each evaluation's
 * metrics, and what each manifest recorded as its device.
 */

import { join, resolve } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import { PartReader } from "../pipeline/store/parquet.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";

const FIXTURES = resolve(new URL("../fixtures", import.meta.url).pathname);
/** `--distill`: also distill on each device (≈3 min on SwiftShader, 2 cores: not in the test). */
const withDistill = Deno.args.includes("--distill");
const dir = await Deno.makeTempDir({ prefix: "tinystill_gpu_" });
try {
  const teacher = Bert.create(
    {
      vocab_size: 30522,
      hidden_size: 32,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      intermediate_size: 48,
      max_position_embeddings: 64,
      id2label: { "0": "neg", "1": "pos" },
    },
    {},
    11,
  );
  // weights large enough that the labels differ between rows
  let seed = 1;
  const rand = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
  for (const [name, p] of teacher.params) {
    if (name.includes("LayerNorm")) continue;
    const scale = name.includes("classifier") ? 2 : 0.3;
    for (let i = 0; i < p.data.length; i++) p.data[i] = scale * rand();
  }
  await saveBert(teacher, join(dir, "teacher"));
  teacher.dispose();
  for (const f of ["vocab.txt", "tokenizer.json"]) {
    await Deno.copyFile(`${FIXTURES}/bert-base-uncased/${f}`, join(dir, "teacher", f));
  }
  // a short task distillation: intermediate then prediction phase, the dev set evaluated
  const DISTILL = `replicas: 1, batch_size: 8, warmup: 0, seed: 5, checkpoint_every: 0,
      phases: [{ name: i, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 3, lr: 5.0e-3 },
               { name: p, losses: { soft_ce: 1 }, steps: 3, lr: 5.0e-3, evaluate: true }]`;
  const DISTILL_STAGES =
    `  - distill@cpu: { teacher_outputs: teacher-forward@cpu, ${DISTILL}, device: cpu }
  - distill@gpu: { teacher_outputs: teacher-forward@cpu, ${DISTILL}, device: webgpu }
  - evaluate@students: { split: dev, latency_examples: 2, device: cpu, variants: [],
      students: { cpu: distill@cpu, gpu: distill@gpu } }
`;
  const yaml = `name: gpu
output_dir: ${dir}
datasets:
  tiny:
    format: csv
    path: ${FIXTURES}/tiny/sentiment.csv
    labels: [neg, pos]
    split: { dev: 0.2, test: 0.2, seed: 3 }
teacher:
  checkpoint: ${join(dir, "teacher")}
student:
  config: { num_hidden_layers: 2, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16, rows_per_part: 64 }
  - teacher-forward@cpu: { batch_size: 16, dtype: F32, replicas: 1, device: cpu }
  - teacher-forward@gpu: { batch_size: 16, dtype: F32, replicas: 1, device: webgpu }
  - evaluate@cpu: { split: dev, latency_examples: 2, device: cpu }
  - evaluate@gpu: { split: dev, latency_examples: 2, device: webgpu }
${withDistill ? DISTILL_STAGES : ""}`;
  const p = parsePipeline(yaml, join(dir, "p.yaml"), BUILTIN_STAGES);
  const reports = await runPipeline(p, { quiet: true });
  const [cpuDir, gpuDir] = [reports[1].dir, reports[2].dir];
  const manifest = (d: string) => JSON.parse(Deno.readTextFileSync(join(d, "manifest.json")));
  let maxDiff = 0, rows = 0, sameLabels = 0, columns = 0;
  const labelSet = new Set<number>();
  for (const split of ["train", "dev"]) {
    const a = await PartReader.open(join(cpuDir, split));
    const b = await PartReader.open(join(gpuDir, split));
    const bRows: Record<string, unknown>[] = [];
    for await (const r of b.rows()) bRows.push(r.values);
    for await (const { row, values } of a.rows()) {
      rows++;
      for (const [k, v] of Object.entries(values)) {
        if (!(v instanceof Float32Array)) continue;
        columns++;
        const w = bRows[row][k] as Float32Array;
        for (let i = 0; i < v.length; i++) maxDiff = Math.max(maxDiff, Math.abs(v[i] - w[i]));
      }
      const la = values.logits as Float32Array, lb = bRows[row].logits as Float32Array;
      const arg = (l: Float32Array) => (l[1] > l[0] ? 1 : 0);
      labelSet.add(arg(la));
      if (arg(la) === arg(lb)) sameLabels++;
    }
  }
  console.log(`@@result ${
    JSON.stringify({
      rows,
      columns,
      maxDiff,
      sameLabels,
      labels: [...labelSet],
      cpu: manifest(cpuDir).device,
      gpu: manifest(gpuDir).device,
      gpuEngine: manifest(gpuDir).metrics.engine,
      // evaluate on each device: every model's metrics and engine, and the manifest's device
      // distill on each device: the students' weights, their dev scores, the manifests' device
      distill: withDistill
        ? await (async () => {
          const w = await Promise.all(
            [reports[5].dir, reports[6].dir].map((d) =>
              readSafetensors(join(d, "model", "model.safetensors"))
            ),
          );
          let weightsMaxDiff = 0;
          for (const [name, t] of w[0].tensors) {
            const a = t.data as Float32Array, b = w[1].tensors.get(name)!.data as Float32Array;
            for (let i = 0; i < a.length; i++) {
              weightsMaxDiff = Math.max(weightsMaxDiff, Math.abs(a[i] - b[i]));
            }
          }
          const r = JSON.parse(Deno.readTextFileSync(join(reports[7].dir, "report.json")));
          return {
            weightsMaxDiff,
            tensors: w[0].tensors.size,
            devices: [manifest(reports[5].dir).device, manifest(reports[6].dir).device],
            devMetrics: [manifest(reports[5].dir).metrics, manifest(reports[6].dir).metrics].map((
              m,
            ) => m.dev_accuracy),
            scores: r.models.map((m: { name: string; metrics: unknown }) => [m.name, m.metrics]),
          };
        })()
        : null,
      evaluate: [reports[3].dir, reports[4].dir].map((d) => {
        const r = JSON.parse(Deno.readTextFileSync(join(d, "report.json")));
        return {
          models: r.models.map((m: { name: string; metrics: unknown; engine: string }) => ({
            name: m.name,
            metrics: m.metrics,
            engine: m.engine,
          })),
          device: manifest(d).device,
        };
      }),
    })
  }`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
