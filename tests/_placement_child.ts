/**
 * Child process of `gpu_placement_test.ts`: opens the TinyBERT4-shaped gradient graphs
 * (classification; distillation with attention_mse + hidden_mse + soft_ce) and the inference
 * graph, with the int32 feeds that `Trainer` and `openInference` give WebGPU, on ONNX Runtime's WebGPU provider with verbose logging, so that the parent can read ORT's
 * node placement from this process's output. Each graph is announced with a `@@graph <name>` line.
 */

import * as ort from "onnxruntime-node";
import { Bert, parameterShapes } from "../pipeline/model/bert.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { buildGradGraph } from "../pipeline/graph/train_graph.ts";
import { encodeGraph, exportGraph } from "../pipeline/graph/export.ts";
import type { Graph } from "../pipeline/graph/ir.ts";

/**
 * The nodes of `g` that compute only on shapes: every input is an initializer, or the output of
 * `Shape`/`Size` or of another such node (no tensor data flows in).
 */
function shapeOnly(g: Graph): string[] {
  const known = new Set(g.initializers.map((i) => i.name));
  const out: string[] = [];
  for (const n of g.nodes) {
    if (n.op === "Shape" || n.op === "Size" || n.inputs.every((i) => i === "" || known.has(i))) {
      for (const o of n.outputs) known.add(o);
      out.push(n.name);
    }
  }
  return out;
}

/** TinyBERT4's shape (4 layers, 312 wide, 12 heads, FFN 1200; a small vocabulary). */
const cfg = makeConfig({
  vocab_size: 512,
  hidden_size: 312,
  num_hidden_layers: 4,
  num_attention_heads: 12,
  intermediate_size: 1200,
  max_position_embeddings: 128,
  id2label: { "0": "a", "1": "b" },
});
const heads = { classifier: true, mlm: false };
const shapes = parameterShapes(cfg, heads);

const graphs: [string, Uint8Array, Graph][] = [];
const cls = buildGradGraph({
  config: cfg,
  heads,
  params: shapes,
  objective: "classification",
  dropout: true,
  intType: "int32",
});
graphs.push(["train:classification", cls.model, cls.graph]);
const dist = buildGradGraph({
  config: cfg,
  heads,
  params: shapes,
  objective: "distillation",
  objectiveOptions: {
    terms: [
      { name: "attention_mse", weight: 1 },
      { name: "hidden_mse", weight: 1 },
      { name: "soft_ce", weight: 1 },
    ],
    layerMap: [0, 1, 2, 3, 4],
    embeddings: true,
    projection: "shared",
  },
  dropout: true,
  intType: "int32",
  targets: Object.fromEntries([
    ["t_logits", [1, 2]],
    ...[0, 1, 2, 3, 4].map((i) => [`t_hidden_${i}`, [1, 1, 312]]),
    ...[0, 1, 2, 3].map((l) => [`t_scores_${l}`, [1, 12, 1, 1]]),
  ]),
});
graphs.push(["train:distillation", dist.model, dist.graph]);
const params = new Map(
  [...shapes].map((
    [n, s],
  ) => [n, { data: new Float32Array(s.reduce((a, b) => a * b, 1)), shape: s }]),
);
const bert = new Bert(cfg, heads, params);
const inf = exportGraph(bert, { outputs: "all", intType: "int32" });
graphs.push(["inference", encodeGraph(inf, "tinystill_bert"), inf]);

const only = Deno.args[0];
for (const [name, model, graph] of graphs) {
  if (only && name !== only) continue;
  console.error(`@@graph ${name} ${JSON.stringify(shapeOnly(graph))}`);
  const s = await ort.InferenceSession.create(model, {
    executionProviders: ["webgpu"],
    graphOptimizationLevel: "all",
    logSeverityLevel: 0,
    logVerbosityLevel: 0,
  });
  await s.release();
  console.error(`@@end ${name}`);
}
