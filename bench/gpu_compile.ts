/**
 * Shader compile time vs step time on ONNX Runtime's WebGPU provider, with and without length
 * buckets: inference and train steps at a few sequence lengths, each timed; a run of a new shape
 * includes its compile. Needs a Vulkan driver (e.g. SwiftShader: see docs/gpu.md):
 *
 *   VK_ICD_FILENAMES=$TINYSTILL_VK_ICD LD_LIBRARY_PATH=$(dirname $TINYSTILL_VK_ICD) \
 *     deno run -A bench/gpu_compile.ts [--tinybert4]
 */

import { Bert, parameterShapes } from "../pipeline/model/bert.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";

const big = Deno.args.includes("--tinybert4");
const cfg = makeConfig(
  big
    ? {
      vocab_size: 30522,
      hidden_size: 312,
      num_hidden_layers: 4,
      num_attention_heads: 12,
      intermediate_size: 1200,
      max_position_embeddings: 512,
      id2label: { "0": "a", "1": "b" },
    }
    : {
      vocab_size: 40,
      hidden_size: 16,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      intermediate_size: 24,
      max_position_embeddings: 64,
      id2label: { "0": "a", "1": "b" },
    },
);
const heads = { classifier: true, mlm: false };
const bert = () =>
  new Bert(
    cfg,
    heads,
    new Map(
      [...parameterShapes(cfg, heads)].map(([n, s]) => {
        const d = new Float32Array(s.reduce((a, b) => a * b, 1));
        for (let i = 0; i < d.length; i++) {
          d[i] = n.includes("LayerNorm.weight") ? 1 : 0.02 * Math.sin(i);
        }
        return [n, { data: d, shape: s }];
      }),
    ),
  );
const B = 8;
function batch(S: number): HostBatch {
  const ids = new Int32Array(B * S), mask = new Int32Array(B * S);
  for (let i = 0; i < B * S; i++) {
    ids[i] = 1 + (i * 7) % 39;
    mask[i] = i % S < S - (i / S | 0) % 3 ? 1 : 0;
  }
  return {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: new Int32Array(B * S), shape: [B, S] },
    labels: { data: Int32Array.from({ length: B }, (_, i) => i % 2), shape: [B] },
  };
}

const LENGTHS = [9, 13, 16, 11, 30, 20, 9, 30];
const fmt = (ms: number[]) => ms.map((t) => (t / 1000).toFixed(2)).join(" ");
console.log(
  `model: ${big ? "TinyBERT4 (4×312)" : "2×16"}, batch ${B}, lengths ${LENGTHS.join(" ")}`,
);
for (const buckets of [false, undefined] as const) {
  const label = buckets === false ? "no buckets" : "buckets (default)";
  const inf = await openInference(bert(), { device: "webgpu", buckets });
  const ms: number[] = [];
  for (const S of LENGTHS) {
    const b = batch(S);
    const t0 = performance.now();
    await inf.run({
      inputIds: b.inputIds.data as Int32Array,
      attentionMask: b.attentionMask.data as Int32Array,
      batch: B,
      seq: S,
    });
    ms.push(performance.now() - t0);
  }
  await inf.close();
  console.log(
    `inference, ${label}: s per run ${fmt(ms)}; total ${
      (ms.reduce((a, c) => a + c) / 1000).toFixed(1)
    } s`,
  );
  const t = await Trainer.create(bert(), {
    objective: "classification",
    lr: () => 1e-4,
    weightDecay: 0,
    engine: { kind: "onnxruntime", device: "webgpu" },
    buckets,
  });
  const steps: number[] = [];
  for (const S of LENGTHS) {
    const t0 = performance.now();
    await t.step(batch(S), 1);
    steps.push(performance.now() - t0);
  }
  await t.close();
  console.log(
    `train, ${label}: s per step ${fmt(steps)}; total ${
      (steps.reduce((a, c) => a + c) / 1000).toFixed(1)
    } s`,
  );
}
