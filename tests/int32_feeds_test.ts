/**
 * The training graphs with int32 integer feeds (what the trainer gives ONNX Runtime's WebGPU
 * provider, which has no int64 Cast/Equal/Where) compute what the int64 ones do, on the CPU
 * executors (ONNX Runtime and tfjs-wasm): loss and every gradient, for the objectives whose
 * integer feeds take different paths (labels and their one-hot rows, MLM positions and targets,
 * QA spans with a symbolic class count, embedding gradients by `ScatterElements` instead of
 * `ScatterND`).
 */

import assert from "node:assert/strict";
import { type BertHeads, parameterShapes } from "../pipeline/model/bert.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { batchFeeds, buildGradGraph } from "../pipeline/graph/train_graph.ts";
import { type EngineRef, openExecutor } from "../pipeline/engines/mod.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import type { HostTensor } from "../pipeline/engines/executor.ts";
import { randomArray, rng } from "./_util.ts";

const cfg = makeConfig({
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 24,
  max_position_embeddings: 16,
  id2label: { "0": "a", "1": "b", "2": "c" },
});

function batch(S: number): HostBatch {
  const lengths = [S, 5, 3];
  const r = rng(3), B = lengths.length;
  const ids = new Int32Array(B * S), mask = new Int32Array(B * S), types = new Int32Array(B * S);
  const mlm = new Int32Array(B * S).fill(-100);
  lengths.forEach((len, b) => {
    for (let j = 0; j < len; j++) {
      ids[b * S + j] = 1 + Math.floor(r() * 39);
      mask[b * S + j] = 1;
      types[b * S + j] = j >= len / 2 ? 1 : 0;
      if (j % 2 === 1) mlm[b * S + j] = 1 + Math.floor(r() * 39);
    }
  });
  // repeated ids: the embedding gradient must add them up
  ids[0] = ids[1] = ids[2] = 7;
  return {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: types, shape: [B, S] },
    labels: { data: Int32Array.from([2, -100, 0]), shape: [B] },
    mlmLabels: { data: mlm, shape: [B, S] },
    startPositions: { data: Int32Array.from([1, 0, 2]), shape: [B] },
    endPositions: { data: Int32Array.from([3, 4, 2]), shape: [B] },
  };
}

const CASES: { objective: string; heads: BertHeads }[] = [
  { objective: "classification", heads: { classifier: true, mlm: true } },
  { objective: "mlm", heads: { classifier: true, mlm: true } },
  { objective: "span", heads: { classifier: false, qa: true, mlm: false } },
];

for (const engine of [{ kind: "onnxruntime" }, { kind: "tfjs", backend: "wasm" }] as EngineRef[]) {
  Deno.test(`int32 feeds = int64 feeds on ${engine.kind}: loss and every gradient`, async () => {
    const executor = await openExecutor(engine);
    for (const { objective, heads } of CASES) {
      const shapes = parameterShapes(cfg, heads);
      const params: Record<string, HostTensor> = {};
      let k = 0;
      for (const [name, shape] of shapes) {
        const n = shape.reduce((a, b) => a * b, 1);
        params[name] = { data: randomArray(n, ++k).map((x) => 0.3 * x), dims: shape };
      }
      const results = [];
      for (const intType of ["int64", "int32"] as const) {
        const g = buildGradGraph({
          config: cfg,
          heads,
          params: shapes,
          objective,
          dropout: false,
          intType,
        });
        const s = await executor.open(g.graph, g.model, { threads: 1 });
        try {
          const feeds = { ...batchFeeds(g.feeds, batch(8)) };
          for (const name of g.inputs) feeds[name] = params[name];
          results.push(await s.run(feeds));
        } finally {
          await s.close();
        }
      }
      const [a, b] = results;
      assert.deepEqual(Object.keys(b).sort(), Object.keys(a).sort());
      for (const name of Object.keys(a)) {
        const x = a[name].data as Float32Array, y = b[name].data as Float32Array;
        let m = 0;
        for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
        assert.ok(m <= 1e-5, `${objective} ${name}: ${m}`);
      }
      const word = a["grad:embeddings.word_embeddings.weight"];
      if (word) assert.ok((word.data as Float32Array).some((v) => v !== 0));
    }
  });
}
