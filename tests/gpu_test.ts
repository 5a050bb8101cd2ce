/**
 * ONNX Runtime's WebGPU provider, on SwiftShader (a software Vulkan; see `_gpu.ts` for where it
 * comes from, and docs/gpu.md): where ORT places each node of the TinyBERT4-shaped train graphs
 * and the inference graph (read from its verbose log), and webgpu-vs-cpu parity of train steps
 * (loss, every gradient, the weights after 3 AdamW steps, 1e-4 per element), of the inference
 * graph (every output, the argmax labels), of the teacher-forward stage (every cached value, the
 * labels, the manifest's device) and of the evaluate stage (every metric). Skips without SwiftShader; fails under `CI=true`.
 */

import assert from "node:assert/strict";
import { gpuEnv, runChild } from "./_gpu.ts";
import { type Device, isSoftwareAdapter, resolveDevice } from "../pipeline/engines/device.ts";
import { deviceMetrics } from "../pipeline/stages/common.ts";

/** Ops ORT's WebGPU provider lacked and the graphs no longer use (`tape.ts`). */
const REWRITTEN = ["Sum", "LogSoftmax", "OneHot", "ConstantOfShape"];

/** Ops ORT inserts on shapes (its own nodes, e.g. `Gather_token_1`; ours are `<Op>_<n>`). */
const SHAPE_OPS = new Set(["Shape", "Size", "Gather", "Concat", "Slice", "Unsqueeze", "Squeeze"]);

interface Placement {
  cpu: { op: string; name: string }[];
  shapeOnly: Set<string>;
  total: number;
}

/** Parse `_placement_child.ts`'s output: per graph, the CPU-placed nodes and the node count. */
function parsePlacement(out: string): Map<string, Placement> {
  const graphs = new Map<string, Placement>();
  let cur: Placement | null = null;
  let ep = "";
  for (const line of out.split("\n")) {
    const g = line.match(/^@@graph (\S+) (.*)$/);
    if (g) {
      cur = { cpu: [], shapeOnly: new Set(JSON.parse(g[2])), total: 0 };
      graphs.set(g[1], cur);
      continue;
    }
    if (!cur) continue;
    const p = line.match(/Node\(s\) placed on \[(\w+)\]\. Number of nodes: (\d+)/);
    if (p) {
      ep = p[1];
      cur.total += Number(p[2]);
      continue;
    }
    const n = line.match(/VerifyEachNodeIsAssignedToAnEp\] {3}(\w+) \((.*)\)$/);
    if (n && ep === "CPUExecutionProvider") cur.cpu.push({ op: n[1], name: n[2] });
  }
  return graphs;
}

const setup = gpuEnv();
const skip = "skip" in setup;
if (skip) console.warn(`gpu_test: skipped: ${setup.skip}`);

Deno.test({
  name:
    "webgpu placement: no compute node of the TinyBERT4 train graphs or inference graph on the CPU",
  ignore: skip,
  async fn() {
    if ("skip" in setup) return;
    const r = await runChild("./_placement_child.ts", [], setup.env);
    assert.equal(r.code, 0, r.out.slice(-3000));
    const graphs = parsePlacement(r.out);
    assert.deepEqual([...graphs.keys()], [
      "train:classification",
      "train:distillation",
      "inference",
    ]);
    for (const [name, p] of graphs) {
      const shape = p.cpu.filter((n) =>
        p.shapeOnly.has(n.name) || (SHAPE_OPS.has(n.op) && !/^[A-Za-z]+_\d+$/.test(n.name))
      );
      const compute = p.cpu.filter((n) => !shape.includes(n));
      const count = (list: { op: string }[]) => {
        const m = new Map<string, number>();
        for (const n of list) m.set(n.op, (m.get(n.op) ?? 0) + 1);
        return [...m].map(([op, k]) => `${op}×${k}`).join(" ");
      };
      console.log(
        `${name}: ${p.total} nodes, on the CPU: ${shape.length} shape ops (${count(shape)}), ` +
          `${compute.length} others (${compute.map((n) => n.name).join(" ")})`,
      );
      assert.ok(p.total > 100, `${name}: no placement read`);
      for (const n of p.cpu) assert.ok(!REWRITTEN.includes(n.op), `${name}: ${n.op} ${n.name}`);
      assert.deepEqual(compute.map((n) => `${n.op} ${n.name}`), [], `${name}: compute on the CPU`);
    }
  },
});

Deno.test({
  name: "webgpu vs cpu: 3 train steps (loss, every gradient, weights) and inference within 1e-4",
  ignore: skip,
  async fn() {
    if ("skip" in setup) return;
    const r = await runChild("./_gpu_child.ts", [], setup.env);
    assert.equal(r.code, 0, r.out.slice(-3000));
    const line = r.out.split("\n").find((l) => l.startsWith("@@result "));
    assert.ok(line, r.out.slice(-3000));
    const res = JSON.parse(line.slice(9));
    console.log(JSON.stringify(res));
    for (const s of res.train.steps) {
      assert.ok(s.lossDiff <= 1e-4, `loss ${s.loss}`);
      assert.ok(s.gradMaxDiff <= 1e-4, `gradient error ${s.gradMaxDiff}`);
      assert.ok(s.grads > 30);
    }
    assert.ok(res.train.weightsMaxDiff <= 1e-4, `weights ${res.train.weightsMaxDiff}`);
    assert.deepEqual(res.inference.engines, ["onnxruntime/cpu", "onnxruntime/webgpu"]);
    for (const run of res.inference.runs) {
      assert.ok(run.maxDiff <= 1e-4, `inference S=${run.seq}: ${run.maxDiff}`);
      assert.deepEqual(run.labelsGpu, run.labelsCpu);
    }
    assert.equal(res.inference.adapter.software, true);
  },
});

Deno.test({
  name: "webgpu vs cpu: teacher-forward (values within 1e-4, same labels) and evaluate (metrics)",
  ignore: skip,
  async fn() {
    if ("skip" in setup) return;
    const r = await runChild("./_gpu_stages_child.ts", [], setup.env);
    assert.equal(r.code, 0, r.out.slice(-3000));
    const line = r.out.split("\n").find((l) => l.startsWith("@@result "));
    assert.ok(line, r.out.slice(-3000));
    const res = JSON.parse(line.slice(9));
    console.log(JSON.stringify(res));
    assert.ok(res.rows >= 20 && res.columns >= res.rows * 5, `${res.rows} rows`);
    assert.ok(res.maxDiff <= 1e-4, `cached values differ by ${res.maxDiff}`);
    assert.equal(res.sameLabels, res.rows);
    assert.deepEqual(res.labels.sort(), [0, 1]); // the labels vary, so agreeing means something
    assert.deepEqual(res.cpu, { device: "cpu" });
    assert.equal(res.gpu.device, "webgpu");
    assert.equal(res.gpuEngine, "onnxruntime/webgpu");
    assert.equal(res.gpu.adapter_software, "true");
    assert.match(res.gpu.adapter_device, /SwiftShader/);
    // evaluate on each device: the same metrics (the same predictions on these rows)
    const [ec, eg] = res.evaluate;
    assert.deepEqual(
      eg.models.map((m: { metrics: unknown }) => m.metrics),
      ec.models.map((m: { metrics: unknown }) => m.metrics),
    );
    assert.deepEqual(ec.models.map((m: { engine: string }) => m.engine), ["onnx"]);
    assert.deepEqual(eg.models.map((m: { engine: string }) => m.engine), ["onnx-webgpu"]);
    assert.deepEqual(ec.device, { device: "cpu" });
    assert.equal(eg.device.device, "webgpu");
  },
});

Deno.test("device: auto picks webgpu only on a real adapter; cpu and webgpu as asked", async () => {
  for (
    const d of ["SwiftShader Device (Subzero)", "llvmpipe (LLVM 15.0.6, 256 bits)", "lavapipe"]
  ) {
    assert.equal(isSoftwareAdapter(d), true, d);
  }
  assert.equal(isSoftwareAdapter("NVIDIA H100 80GB HBM3", 0x10de), false);
  assert.equal(isSoftwareAdapter("AMD Radeon RX 7900 XTX (RADV NAVI31)", 0x1002), false);
  assert.deepEqual(await resolveDevice("cpu"), {
    device: "cpu",
    adapter: null,
    reason: "asked for",
  });
  assert.equal((await resolveDevice("webgpu")).device, "webgpu");
  const auto = await resolveDevice("auto");
  const real = auto.adapter !== null && !auto.adapter.software;
  assert.equal(auto.device, real ? "webgpu" : "cpu", auto.reason);
  await assert.rejects(() => resolveDevice("gpu" as Device), /auto, cpu or webgpu/);
  assert.deepEqual(deviceMetrics("cpu", null), { device: "cpu" });
  if (auto.adapter) {
    const m = deviceMetrics(auto.device, auto.adapter);
    assert.deepEqual(Object.keys(m), [
      "device",
      "adapter_vendor",
      "adapter_device",
      "adapter_driver",
      "adapter_software",
    ]);
  }
});
