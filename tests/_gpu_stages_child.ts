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

const FIXTURES = resolve(new URL("../fixtures", import.meta.url).pathname);
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
  config: { num_hidden_layers: 2 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16, rows_per_part: 64 }
  - teacher-forward@cpu: { batch_size: 16, dtype: F32, replicas: 1, device: cpu }
  - teacher-forward@gpu: { batch_size: 16, dtype: F32, replicas: 1, device: webgpu }
  - evaluate@cpu: { split: dev, latency_examples: 2, device: cpu }
  - evaluate@gpu: { split: dev, latency_examples: 2, device: webgpu }
`;
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
