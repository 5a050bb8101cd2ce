/**
 * The tfjs executor (`pipeline/engines/tfjs.ts`): per-op semantics on tiny hand-computed graphs
 * (the values also checked against ONNX Runtime), then whole graphs — the gradient graph of every
 * objective and distillation loss term and the fp32/fp16/q8 inference
 * exports — against ONNX Runtime on the same feeds, on the tfjs `cpu` and `wasm` backends. Per
 * element, |tfjs − ort| ≤ 1e-4·(1 + |ort|).
 */

import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { tf } from "../pipeline/engines/tfjs_backend.ts";
import { tfjsExecutor, type TfjsSession } from "../pipeline/engines/tfjs.ts";
import type { GraphSession, HostTensor, TensorData } from "../pipeline/engines/executor.ts";
import { DataType, type Graph, GraphBuilder } from "../pipeline/graph/ir.ts";
import { littleEndianBytes } from "../pipeline/graph/protobuf.ts";
import {
  buildGradGraph,
  type DistillObjectiveOptions,
  type GradGraph,
} from "../pipeline/graph/train_graph.ts";
import { Bert, type BertHeads, dropoutKeep, parameterShapes } from "../pipeline/model/bert.ts";
import { type BertConfig, makeConfig } from "../pipeline/model/config.ts";
import { exportGraph } from "../pipeline/graph/export.ts";
import { rng } from "./_util.ts";

const BACKENDS = ["cpu", "wasm"] as const;
/** Per element: |a − b| ≤ TOL·(1 + |b|). */
const TOL = 1e-4;

// --- helpers -------------------------------------------------------------------------------------

const F = DataType.FLOAT, I64 = DataType.INT64;

function f32(values: number[], dims: number[]): HostTensor {
  return { data: Float32Array.from(values), dims };
}

function i64(values: number[], dims: number[]): HostTensor {
  return { data: BigInt64Array.from(values.map(BigInt)), dims };
}

/** A graph from `build` (inputs, nodes and outputs declared on the builder). */
function graphOf(build: (g: GraphBuilder) => void): { graph: Graph; model: Uint8Array } {
  const g = new GraphBuilder();
  build(g);
  return {
    graph: g.graph(),
    model: g.toModel({ name: "t", opset: 17, irVersion: 8, producer: "tinystill-test" }),
  };
}

function ortType(a: TensorData): ort.Tensor.Type {
  if (a instanceof Float32Array) return "float32";
  if (a instanceof BigInt64Array) return "int64";
  if (a instanceof Int32Array) return "int32";
  if (a instanceof Uint16Array) return "float16";
  return "bool";
}

/** Run `model` on ONNX Runtime (CPU, one thread). */
async function runOrt(
  model: Uint8Array,
  feeds: Record<string, HostTensor>,
  bools: ReadonlySet<string> = new Set(),
): Promise<Record<string, HostTensor>> {
  const s = await ort.InferenceSession.create(model, {
    executionProviders: ["cpu"],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    logSeverityLevel: 3,
  });
  try {
    const inputs: Record<string, ort.Tensor> = {};
    for (const name of s.inputNames) {
      const t = feeds[name];
      const type = bools.has(name) ? "bool" : ortType(t.data);
      inputs[name] = new ort.Tensor(
        type,
        type === "bool" ? Uint8Array.from(t.data as Uint8Array) : t.data,
        t.dims,
      );
    }
    const res = await s.run(inputs);
    const out: Record<string, HostTensor> = {};
    for (const [k, v] of Object.entries(res)) {
      out[k] = { data: v.data as TensorData, dims: [...v.dims] };
      v.dispose();
    }
    return out;
  } finally {
    await s.release();
  }
}

/** Open `graph` on the tfjs executor with `backend`. */
async function openTfjs(graph: Graph, model: Uint8Array, backend: string): Promise<TfjsSession> {
  return await tfjsExecutor(backend).open(graph, model, { profile: true } as never) as TfjsSession;
}

/** Largest |a − b| and whether every element is within TOL·(1 + |b|). */
function compare(a: ArrayLike<number | bigint>, b: ArrayLike<number | bigint>) {
  assert.equal(a.length, b.length, "lengths");
  let maxAbs = 0, maxRel = 0, bad = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Number(a[i]), y = Number(b[i]);
    if (Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y))) continue;
    const d = Math.abs(x - y), rel = d / (1 + Math.abs(y));
    if (!(rel <= TOL)) bad++;
    if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : d;
    if (!(rel <= maxRel)) maxRel = Number.isNaN(rel) ? Infinity : rel;
  }
  return { maxAbs, maxRel, ok: bad === 0, bad };
}

// --- per-op semantics ------------------------------------------------------------------------------

interface OpCase {
  name: string;
  build: (g: GraphBuilder) => void;
  feeds?: Record<string, HostTensor>;
  /** Expected output values (and dims when given). */
  expect: Record<string, { values: number[]; dims?: number[]; type?: "int64" | "bool" | "f16" }>;
  /** Inputs fed as bool. */
  bools?: string[];
  /** Absolute tolerance (default 1e-6). */
  tol?: number;
}

const out = (g: GraphBuilder, v: string, name: string, elemType: number = F) =>
  g.output(v, { name, elemType, dims: [] });

const OP_CASES: OpCase[] = [
  {
    name: "ScatterND add: repeated indices accumulate (into zeros, into data, 2-D indices)",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [4, 2] });
      const u = g.input({ name: "u", elemType: F, dims: [3, 2] });
      const idx = g.int64s("idx", [1, 3, 1], [3, 1]);
      out(g, g.node("ScatterND", [x, idx, u], { reduction: "add" }), "into_data");
      const zeros = g.node("ConstantOfShape", [g.node("Shape", [x])]);
      out(g, g.node("ScatterND", [zeros, idx, u], { reduction: "add" }), "into_zeros");
      const z2 = g.node("ConstantOfShape", [g.int64s("s", [3, 2])]);
      const idx2 = g.int64s("idx2", [0, 1, 0, 1, 2, 0], [3, 2]);
      out(
        g,
        g.node("ScatterND", [z2, idx2, g.floats("u2", [1, 2, 3])], { reduction: "add" }),
        "pairs",
      );
      out(
        g,
        g.node("ScatterND", [x, g.int64s("i3", [2], [1, 1]), g.floats("u3", [9, 8], [1, 2])]),
        "none",
      );
    },
    feeds: { x: f32([1, 1, 1, 1, 1, 1, 1, 1], [4, 2]), u: f32([1, 2, 3, 4, 5, 6], [3, 2]) },
    expect: {
      into_data: { values: [1, 1, 7, 9, 1, 1, 4, 5], dims: [4, 2] },
      into_zeros: { values: [0, 0, 6, 8, 0, 0, 3, 4], dims: [4, 2] },
      pairs: { values: [0, 3, 0, 0, 3, 0], dims: [3, 2] },
      none: { values: [1, 1, 1, 1, 9, 8, 1, 1], dims: [4, 2] },
    },
  },
  {
    name: "Gemm: transA, transB, alpha, beta, C broadcast as [N] and [M, 1]",
    build: (g) => {
      const a = g.floats("a", [1, 2, 3, 4, 5, 6], [2, 3]);
      const aT = g.floats("aT", [1, 4, 2, 5, 3, 6], [3, 2]);
      const b = g.floats("b", [1, 0, 0, 1, 1, 1], [3, 2]);
      const bT = g.floats("bT", [1, 0, 1, 0, 1, 1], [2, 3]);
      const x = g.input({ name: "x", elemType: F, dims: [1] }); // keeps the graph from folding
      const A = g.node("Mul", [a, x]), AT = g.node("Mul", [aT, x]);
      out(g, g.node("Gemm", [A, b]), "plain");
      out(
        g,
        g.node("Gemm", [AT, bT, g.floats("c", [1, -2])], {
          transA: 1,
          transB: 1,
          alpha: { f: 2 },
          beta: { f: 0.5 },
        }),
        "tt",
      );
      out(
        g,
        g.node("Gemm", [A, bT, g.floats("c2", [1, 2], [2, 1])], {
          transB: 1,
          alpha: { f: 2 },
          beta: { f: 0.5 },
        }),
        "col",
      );
    },
    feeds: { x: f32([1], [1]) },
    expect: {
      plain: { values: [4, 5, 10, 11], dims: [2, 2] },
      tt: { values: [8.5, 9, 20.5, 21], dims: [2, 2] },
      col: { values: [8.5, 10.5, 21, 23], dims: [2, 2] },
    },
  },
  {
    name: "LayerNormalization: Y, Mean and InvStdDev (normalised axes kept as 1)",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [2, 3] });
      const [y, m, r] = g.nodeMulti(
        "LayerNormalization",
        [x, g.floats("w", [1, 2, 0.5]), g.floats("b", [0, 1, -1])],
        3,
        { axis: -1, epsilon: { f: 0 } },
      );
      out(g, y, "y");
      out(g, m, "mean");
      out(g, r, "inv_std");
    },
    feeds: { x: f32([1, 2, 3, 0, 0, 6], [2, 3]) },
    expect: {
      y: {
        values: [-1.2247449, 1, -0.38762756, -0.70710678, -0.41421356, -0.29289322],
        dims: [2, 3],
      },
      mean: { values: [2, 2], dims: [2, 1] },
      inv_std: { values: [1.2247449, 0.35355339], dims: [2, 1] },
    },
  },
  {
    name: "Slice (negative starts, clamped ends, axes, steps ±), Pad (constant, negative), Expand",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [3, 4] });
      out(
        g,
        g.node("Slice", [
          x,
          g.int64s("s", [-2, 0]),
          g.int64s("e", [100, -1]),
          g.int64s("a", [0, 1]),
          g.int64s("st", [1, 2]),
        ]),
        "slice",
      );
      out(
        g,
        g.node("Slice", [
          x,
          g.int64s("s2", [-1]),
          g.int64s("e2", [-100]),
          g.int64s("a2", [1]),
          g.int64s("st2", [-2]),
        ]),
        "reverse",
      );
      const y = g.input({ name: "y", elemType: F, dims: [2, 2] });
      out(g, g.node("Pad", [y, g.int64s("p", [1, 0, 0, 2]), g.scalar("nine", 9)]), "pad");
      out(g, g.node("Pad", [y, g.int64s("p2", [0, -1, 1, 0])]), "crop");
      const c = g.input({ name: "c", elemType: F, dims: [3, 1] });
      out(g, g.node("Expand", [c, g.int64s("sh", [2, 1, 2])]), "expand");
      out(g, g.node("Expand", [y, g.int64s("sh1", [1])]), "expand_small");
    },
    feeds: {
      x: f32([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [3, 4]),
      y: f32([1, 2, 3, 4], [2, 2]),
      c: f32([1, 2, 3], [3, 1]),
    },
    expect: {
      slice: { values: [4, 6, 8, 10], dims: [2, 2] },
      reverse: { values: [3, 1, 7, 5, 11, 9], dims: [3, 2] },
      pad: { values: [9, 9, 9, 9, 1, 2, 9, 9, 3, 4, 9, 9], dims: [3, 4] },
      crop: { values: [2, 4, 0], dims: [3, 1] },
      expand: { values: [1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3], dims: [2, 3, 2] },
      expand_small: { values: [1, 2, 3, 4], dims: [2, 2] },
    },
  },
  {
    name:
      "GatherElements (axis 1, axis 0, negative index), Gather (scalar index, negative), OneHot",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [2, 2] });
      out(
        g,
        g.node("GatherElements", [x, g.int64s("i", [0, 0, 1, 0], [2, 2])], { axis: 1 }),
        "ge1",
      );
      out(g, g.node("GatherElements", [x, g.int64s("i0", [1, 0], [1, 2])], { axis: 0 }), "ge0");
      const ids = g.input({ name: "ids", elemType: I64, dims: [1, 1] });
      out(g, g.node("GatherElements", [x, ids], { axis: 1 }), "ge_neg");
      out(g, g.node("Gather", [x, g.int64s("k", [-1], [])], { axis: 1 }), "col");
      const hot = g.input({ name: "hot", elemType: I64, dims: [4] });
      const values = g.floats("v", [-1, 4]);
      out(g, g.node("OneHot", [hot, g.int64s("d", [3], []), values], { axis: -1 }), "onehot");
      out(g, g.node("OneHot", [hot, g.int64s("d2", [3], []), values], { axis: 0 }), "onehot0");
    },
    feeds: { x: f32([1, 2, 3, 4], [2, 2]), ids: i64([-1], [1, 1]), hot: i64([0, 2, -1, 5], [4]) },
    expect: {
      ge1: { values: [1, 1, 4, 3], dims: [2, 2] },
      ge0: { values: [3, 2], dims: [1, 2] },
      ge_neg: { values: [2], dims: [1, 1] },
      col: { values: [2, 4], dims: [2] },
      onehot: { values: [4, -1, -1, -1, -1, 4, -1, -1, 4, -1, -1, -1], dims: [4, 3] },
      onehot0: { values: [4, -1, -1, -1, -1, -1, -1, -1, -1, 4, 4, -1], dims: [3, 4] },
    },
  },
  {
    name:
      "ReduceSum (axes input, keepdims, every axis, noop_with_empty_axes), ReduceMean, ReduceSumSquare",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [2, 3] });
      out(g, g.node("ReduceSum", [x, g.int64s("a", [1])], { keepdims: 1 }), "rows");
      out(g, g.node("ReduceSum", [x, g.int64s("a2", [0, -1])], { keepdims: 0 }), "all");
      out(g, g.node("ReduceSum", [x]), "default");
      out(g, g.node("ReduceSum", [x], { noop_with_empty_axes: 1 }), "noop");
      out(g, g.node("ReduceMean", [x], { axes: [0], keepdims: 0 }), "mean");
      out(g, g.node("ReduceSumSquare", [x], { keepdims: 0 }), "sq");
    },
    feeds: { x: f32([1, 2, 3, 4, 5, 6], [2, 3]) },
    expect: {
      rows: { values: [6, 15], dims: [2, 1] },
      all: { values: [21], dims: [] },
      default: { values: [21], dims: [1, 1] },
      noop: { values: [1, 2, 3, 4, 5, 6], dims: [2, 3] },
      mean: { values: [2.5, 3.5, 4.5], dims: [3] },
      sq: { values: [91], dims: [] },
    },
  },
  {
    name: "Where (bool input, broadcasting all three), Sum/Max/Min of n inputs broadcasting",
    build: (g) => {
      const c = g.input({ name: "c", elemType: DataType.BOOL, dims: [2, 1] });
      const a = g.input({ name: "a", elemType: F, dims: [3] });
      out(g, g.node("Where", [c, a, g.scalar("seven", 7)]), "where");
      const p = g.input({ name: "p", elemType: F, dims: [2, 1] });
      const three = g.scalar("three", 3);
      out(g, g.node("Sum", [p, a, three]), "sum");
      out(g, g.node("Max", [p, a, three]), "max");
      out(g, g.node("Min", [p, a, three]), "min");
    },
    bools: ["c"],
    feeds: {
      c: { data: Uint8Array.of(1, 0), dims: [2, 1] },
      a: f32([2, 3, 4], [3]),
      p: f32([1, 5], [2, 1]),
    },
    expect: {
      where: { values: [2, 3, 4, 7, 7, 7], dims: [2, 3] },
      sum: { values: [6, 7, 8, 10, 11, 12], dims: [2, 3] },
      max: { values: [3, 3, 4, 5, 5, 5], dims: [2, 3] },
      min: { values: [1, 1, 1, 2, 3, 3], dims: [2, 3] },
    },
  },
  {
    name:
      "int64: inputs and outputs, Add, Div (truncates), Cast float→int64 (truncates), Equal, Not, Or",
    build: (g) => {
      const n = g.input({ name: "n", elemType: I64, dims: [4] });
      out(g, g.node("Add", [n, g.int64s("one", [1], [])]), "plus1", I64);
      out(g, g.node("Div", [n, g.int64s("two", [2], [])]), "half", I64);
      const f = g.input({ name: "f", elemType: F, dims: [3] });
      out(g, g.node("Cast", [f], { to: I64 }), "trunc", I64);
      const eq = g.node("Equal", [n, g.int64s("m1", [-7], [])]);
      out(g, eq, "eq", DataType.BOOL);
      out(
        g,
        g.node("Or", [g.node("Not", [eq]), g.node("Equal", [n, g.int64s("z", [0], [])])]),
        "or",
        DataType.BOOL,
      );
      out(g, g.node("Cast", [eq], { to: F }), "eq_f");
    },
    feeds: { n: i64([3, -7, 2147483000, 0], [4]), f: f32([1.7, -1.7, 2.5], [3]) },
    expect: {
      plus1: { values: [4, -6, 2147483001, 1], dims: [4], type: "int64" },
      half: { values: [1, -3, 1073741500, 0], dims: [4], type: "int64" },
      trunc: { values: [1, -1, 2], dims: [3], type: "int64" },
      eq: { values: [0, 1, 0, 0], dims: [4], type: "bool" },
      or: { values: [1, 0, 1, 1], dims: [4], type: "bool" },
      eq_f: { values: [0, 1, 0, 0], dims: [4] },
    },
  },
  {
    name: "float16: Cast to float16 (bits out), float16 initializers Cast to float",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [5] });
      out(g, g.node("Cast", [x], { to: DataType.FLOAT16 }), "half", DataType.FLOAT16);
      const h = g.initializer(
        "h",
        DataType.FLOAT16,
        [2],
        littleEndianBytes(Uint16Array.of(0x3c00, 0xc000)),
      );
      const one = g.input({ name: "one", elemType: F, dims: [1] });
      out(g, g.node("Mul", [g.node("Cast", [h], { to: F }), one]), "h_f32");
      out(
        g,
        g.node("Cast", [g.node("Cast", [x], { to: DataType.FLOAT16 })], { to: F }),
        "round_trip",
      );
    },
    feeds: { x: f32([1, 0.1, 65504, 1e-8, 70000], [5]), one: f32([1], [1]) },
    expect: {
      half: { values: [0x3c00, 0x2e66, 0x7bff, 0, 0x7c00], dims: [5], type: "f16" },
      h_f32: { values: [1, -2], dims: [2] },
      round_trip: { values: [1, 0.0999755859375, 65504, 0, Infinity], dims: [5] },
    },
  },
  {
    name:
      "Shape (start, end), Size, Concat, Reshape (0 and −1), Squeeze/Unsqueeze, Erf, IsNaN/IsInf",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: ["a", 3, 4] });
      out(g, g.node("Shape", [x], { start: 1 }), "tail", I64);
      out(g, g.node("Shape", [x], { start: -2, end: -1 }), "mid", I64);
      out(g, g.node("Size", [x]), "size", I64);
      const dims = g.node("Concat", [g.int64s("m", [-1]), g.node("Shape", [x], { start: 2 })], {
        axis: 0,
      });
      out(g, g.node("Reshape", [x, dims]), "rows");
      out(g, g.node("Reshape", [x, g.int64s("z", [0, -1])]), "keep0");
      const u = g.node("Unsqueeze", [
        g.node("ReduceSum", [x, g.int64s("ax", [0, 1, 2])], { keepdims: 0 }),
        g.int64s("ua", [0, -1]),
      ]);
      out(g, u, "unsq");
      out(g, g.node("Squeeze", [u, g.int64s("sa", [0])]), "sq");
      const e = g.input({ name: "e", elemType: F, dims: [4] });
      out(g, g.node("Erf", [e]), "erf");
      const s = g.input({ name: "s", elemType: F, dims: [4] });
      out(g, g.node("IsNaN", [s]), "nan", DataType.BOOL);
      out(g, g.node("IsInf", [s]), "inf", DataType.BOOL);
      out(g, g.node("IsInf", [s], { detect_negative: 0 }), "posinf", DataType.BOOL);
      out(
        g,
        g.node("Not", [g.node("Or", [g.node("IsNaN", [s]), g.node("IsInf", [s])])]),
        "finite",
        DataType.BOOL,
      );
    },
    feeds: {
      x: f32(Array.from({ length: 24 }, (_, i) => i % 5), [2, 3, 4]),
      e: f32([0, 0.5, -1, 2], [4]),
      s: f32([NaN, Infinity, -Infinity, 1], [4]),
    },
    expect: {
      tail: { values: [3, 4], dims: [2], type: "int64" },
      mid: { values: [3], dims: [1], type: "int64" },
      size: { values: [24], dims: [], type: "int64" },
      rows: { values: Array.from({ length: 24 }, (_, i) => i % 5), dims: [6, 4] },
      keep0: { values: Array.from({ length: 24 }, (_, i) => i % 5), dims: [2, 12] },
      unsq: { values: [46], dims: [1, 1] },
      sq: { values: [46], dims: [1] },
      erf: { values: [0, 0.5204999, -0.8427008, 0.9953223], dims: [4] },
      nan: { values: [1, 0, 0, 0], dims: [4], type: "bool" },
      inf: { values: [0, 1, 1, 0], dims: [4], type: "bool" },
      posinf: { values: [0, 1, 0, 0], dims: [4], type: "bool" },
      finite: { values: [0, 0, 0, 1], dims: [4], type: "bool" },
    },
  },
  {
    name:
      "MatMul: rank 1, batch broadcast, a Transpose operand read as a flag; Softmax/LogSoftmax axis",
    build: (g) => {
      const v = g.input({ name: "v", elemType: F, dims: [2] });
      const m = g.input({ name: "m", elemType: F, dims: [2, 3] });
      out(g, g.node("MatMul", [v, m]), "vec");
      const a = g.input({ name: "a", elemType: F, dims: [2, 1, 2, 2] });
      const b = g.input({ name: "b", elemType: F, dims: [3, 2, 2] });
      out(g, g.node("MatMul", [a, b]), "batched");
      const b2 = g.node("Slice", [
        b,
        g.int64s("s0", [0]),
        g.int64s("s1", [2]),
        g.int64s("s2", [0]),
      ]);
      const a2 = g.node("Reshape", [a, g.int64s("r", [2, 2, 2])]);
      out(g, g.node("MatMul", [a2, g.node("Transpose", [b2], { perm: [0, 2, 1] })]), "trans");
      out(
        g,
        g.node("MatMul", [
          g.node("Transpose", [g.node("Transpose", [m], { perm: [1, 0] })], { perm: [1, 0] }),
          g.node("Transpose", [m], { perm: [1, 0] }),
        ]),
        "double",
      );
      out(g, g.node("Softmax", [m], { axis: 0 }), "softmax0");
      out(g, g.node("LogSoftmax", [m], { axis: -1 }), "logsoftmax");
    },
    feeds: {
      v: f32([1, 2], [2]),
      m: f32([1, 2, 3, 4, 5, 6], [2, 3]),
      a: f32([1, 0, 0, 1, 2, 1, 1, 2], [2, 1, 2, 2]),
      b: f32([1, 2, 3, 4, 0, 1, 1, 0, 2, 0, 0, 2], [3, 2, 2]),
    },
    expect: {
      vec: { values: [9, 12, 15], dims: [3] },
      batched: {
        values: [1, 2, 3, 4, 0, 1, 1, 0, 2, 0, 0, 2, 5, 8, 7, 10, 1, 2, 2, 1, 4, 2, 2, 4],
        dims: [2, 3, 2, 2],
      },
      // a[0]·b[0]ᵀ, a[1]·b[1]ᵀ
      trans: { values: [1, 3, 2, 4, 1, 2, 2, 1], dims: [2, 2, 2] },
      double: { values: [14, 32, 32, 77], dims: [2, 2] },
      softmax0: {
        values: [0.04742587, 0.04742587, 0.04742587, 0.95257413, 0.95257413, 0.95257413],
        dims: [2, 3],
      },
      logsoftmax: {
        values: [-2.40760596, -1.40760596, -0.40760596, -2.40760596, -1.40760596, -0.40760596],
        dims: [2, 3],
      },
    },
  },
  {
    name:
      "DynamicQuantizeLinear (scale, zero point, round half to even, saturation), MatMulInteger",
    build: (g) => {
      const x = g.input({ name: "x", elemType: F, dims: [4] });
      const [y, s, z] = g.nodeMulti("DynamicQuantizeLinear", [x], 3);
      out(g, g.node("Cast", [y], { to: F }), "y");
      out(g, s, "scale");
      out(g, g.node("Cast", [z], { to: F }), "zp");
      const a = g.initializer("a", DataType.UINT8, [2, 2], Uint8Array.of(1, 2, 3, 4));
      const b = g.initializer(
        "b",
        DataType.INT8,
        [2, 2],
        new Uint8Array(Int8Array.of(-1, 2, 3, -4).buffer),
      );
      const azp = g.initializer("azp", DataType.UINT8, [], Uint8Array.of(1));
      out(g, g.node("Cast", [g.node("MatMulInteger", [a, b, azp])], { to: F }), "mmi");
    },
    feeds: { x: f32([0, 2, -1, 3.06], [4]) },
    expect: {
      y: { values: [63, 189, 0, 255], dims: [4] },
      scale: { values: [4.06 / 255], dims: [] },
      zp: { values: [63], dims: [] },
      mmi: { values: [3, -4, 7, -8], dims: [2, 2] },
    },
  },
];

for (const c of OP_CASES) {
  Deno.test(`tfjs executor op semantics: ${c.name}`, async () => {
    const { graph, model } = graphOf(c.build);
    const feeds = c.feeds ?? {};
    const ref = await runOrt(model, feeds, new Set(c.bools ?? []));
    for (const backend of BACKENDS) {
      const s = await openTfjs(graph, model, backend);
      try {
        const res = await s.run(feeds);
        for (const [name, e] of Object.entries(c.expect)) {
          const got = res[name];
          const what = `${backend}: ${name}`;
          if (e.dims) assert.deepEqual(got.dims, e.dims, `${what} dims`);
          assert.deepEqual(ref[name].dims, got.dims, `${what}: dims vs onnxruntime`);
          if (e.type === "int64") assert.ok(got.data instanceof BigInt64Array, `${what} int64`);
          if (e.type === "bool") assert.ok(got.data instanceof Uint8Array, `${what} bool`);
          if (e.type === "f16") assert.ok(got.data instanceof Uint16Array, `${what} f16 bits`);
          const vals = Array.from(got.data as ArrayLike<number | bigint>, Number);
          // onnxruntime returns float16 as Float16Array values: compare its bits
          const rd = ref[name].data;
          const orts = e.type === "f16" && !(rd instanceof Uint16Array)
            ? Array.from(new Uint16Array((rd as ArrayBufferView).buffer))
            : Array.from(rd as ArrayLike<number | bigint | boolean>, Number);
          const tol = c.tol ?? 1e-6;
          const close = (a: number, b: number) =>
            Object.is(a, b) || Math.abs(a - b) <= tol * (1 + Math.abs(b));
          e.values.forEach((v, i) => {
            assert.ok(close(vals[i], v), `${what}[${i}]: ${vals[i]}, want ${v}`);
            assert.ok(close(orts[i], v), `${what}[${i}]: onnxruntime ${orts[i]}, want ${v}`);
          });
          assert.equal(vals.length, e.values.length, `${what} count`);
        }
      } finally {
        await s.close();
      }
    }
  });
}

Deno.test("tfjs executor: shape metadata runs on the host once per feed shapes; nothing leaks", async () => {
  const { graph, model } = graphOf((g) => {
    const x = g.input({ name: "x", elemType: F, dims: ["a", "b"] });
    const rows = g.node("Concat", [g.int64s("m", [-1]), g.node("Shape", [x], { start: 1 })], {
      axis: 0,
    });
    const y = g.node("Mul", [g.node("Reshape", [x, rows]), g.scalar("two", 2)]);
    const n = g.node("Cast", [g.node("Size", [x])], { to: F });
    out(
      g,
      g.node("Div", [g.node("ReduceSum", [y, g.int64s("ax", [0, 1])], { keepdims: 0 }), n]),
      "mean2",
    );
  });
  for (const backend of BACKENDS) {
    const s = await openTfjs(graph, model, backend);
    const base = tf.memory().numTensors;
    const run = async (rows: number) => {
      const x = f32(Array.from({ length: rows * 3 }, (_, i) => i), [rows, 3]);
      const r = await s.run({ x });
      return {
        v: (r.mean2.data as Float32Array)[0],
        host: s.profile!.hostNodes,
        device: s.profile!.deviceNodes,
      };
    };
    const a = await run(2);
    assert.equal(a.v, 5); // mean of 2·(0..5)
    assert.ok(a.host >= 4, `host nodes ${a.host}`);
    const after = tf.memory().numTensors;
    const b = await run(2);
    assert.equal(b.host, 0, "the same shapes: host values reused");
    assert.equal(tf.memory().numTensors, after, `${backend}: tensors after a second run`);
    const c = await run(4);
    assert.equal(c.v, 11);
    assert.ok(c.host >= 4, "new shapes: host values computed");
    await s.close();
    assert.ok(
      tf.memory().numTensors <= base,
      `${backend}: ${tf.memory().numTensors} tensors after close, ${base} before`,
    );
  }
});

Deno.test("tfjs executor: clear errors for unsupported ops, attributes, feeds and outputs", async () => {
  const bad = graphOf((g) => {
    const x = g.input({ name: "x", elemType: F, dims: [2] });
    const [y] = g.nodeMulti("Gelu", [x], 1, {}, "com.microsoft");
    out(g, g.node("NonZero", [y]), "nz", I64);
  });
  await assert.rejects(
    () => tfjsExecutor("cpu").open(bad.graph, bad.model, { what: "the test graph" }),
    /the test graph uses ops it cannot run: com\.microsoft\.Gelu \(1×\), NonZero \(1×\)/,
  );
  const mul = graphOf((g) => {
    const x = g.input({ name: "x", elemType: F, dims: [2, 2] });
    out(
      g,
      g.node("ScatterND", [x, g.int64s("i", [0], [1, 1]), g.floats("u", [1, 1], [1, 2])], {
        reduction: "mul",
      }),
      "y",
    );
  });
  await assert.rejects(
    () => tfjsExecutor("cpu").open(mul.graph, mul.model),
    /ScatterND node ScatterND_0: reduction 'mul' is not supported/,
  );
  const ok = graphOf((g) => {
    const x = g.input({ name: "x", elemType: I64, dims: ["n", 2] });
    out(g, g.node("Add", [x, g.int64s("one", [1], [])]), "y", I64);
  });
  const s = await tfjsExecutor("cpu").open(ok.graph, ok.model);
  await assert.rejects(() => s.run({}), /needs input 'x'/);
  await assert.rejects(
    () => s.run({ x: i64([1, 2, 3], [3]) }),
    /input 'x' has dims \[3\], the graph wants \[n,2\]/,
  );
  await assert.rejects(
    () => s.run({ x: i64([1, 2 ** 40], [1, 2]) }),
    /input 'x'\[1\] = 1099511627776 does not fit int32/,
  );
  await assert.rejects(() => s.run({ x: i64([1, 2], [1, 2]) }, ["z"]), /has no output 'z'/);
  assert.deepEqual(Array.from((await s.run({ x: i64([1, -5], [1, 2]) })).y.data as BigInt64Array), [
    2n,
    -4n,
  ]);
  await s.close();
});

// --- whole graphs against ONNX Runtime ------------------------------------------------------------

const STUDENT: Partial<BertConfig> = {
  vocab_size: 40,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  intermediate_size: 48,
  max_position_embeddings: 16,
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  id2label: { "0": "a", "1": "b", "2": "c" },
};
const LENGTHS = [9, 5, 3];
const S = 9, B = LENGTHS.length;

/** Random parameters of `shapes` (LayerNorm weights 1 ± 0.2, the rest uniform ±0.3). */
function paramFeeds(shapes: Map<string, number[]>, names: string[], seed: number) {
  const r = rng(seed);
  const feeds: Record<string, HostTensor> = {};
  for (const name of names) {
    const dims = shapes.get(name)!;
    const n = dims.reduce((a, b) => a * b, 1);
    const ln = name.includes("LayerNorm.weight");
    feeds[name] = {
      data: Float32Array.from(
        { length: n },
        () => (ln ? 1 + 0.4 * (r() - 0.5) : 0.6 * (r() - 0.5)),
      ),
      dims,
    };
  }
  return feeds;
}

/** A padded batch of {@link LENGTHS} rows: ids, mask, types and every label kind. */
function batchFeeds(seed: number, regression = false): Record<string, HostTensor> {
  const r = rng(seed);
  const ids: number[] = [], mask: number[] = [], types: number[] = [], tags: number[] = [];
  const starts: number[] = [], ends: number[] = [];
  const positions: number[] = [], targets: number[] = [];
  LENGTHS.forEach((len, b) => {
    for (let j = 0; j < S; j++) {
      const real = j < len;
      ids.push(real ? 1 + Math.floor(r() * 39) : 0);
      mask.push(real ? 1 : 0);
      types.push(real && j >= len / 2 ? 1 : 0);
      tags.push(real && r() < 0.67 ? Math.floor(r() * 3) : -100);
      if (real && j > 0 && r() < 0.3) {
        positions.push(b * S + j);
        targets.push(1 + Math.floor(r() * 39));
      }
    }
    const a = Math.floor(r() * len), e = Math.floor(r() * len);
    starts.push(Math.min(a, e));
    ends.push(Math.max(a, e));
  });
  return {
    input_ids: i64(ids, [B, S]),
    attention_mask: i64(mask, [B, S]),
    token_type_ids: i64(types, [B, S]),
    labels: regression ? f32([0.5, -1.2, 2], [B]) : i64([0, 2, 1], [B]),
    tokenLabels: i64(tags, [B, S]),
    startPositions: i64(starts, [B]),
    endPositions: i64(ends, [B]),
    mlm_positions: i64(positions, [positions.length]),
    mlm_targets: i64(targets, [targets.length]),
  };
}

/** Teacher outputs as the cache holds them (random, NaN at padded positions). */
function teacherFeeds(
  spec: { layers: number; width: number; heads: number; logits: number[] },
  seed: number,
): Record<string, HostTensor> {
  const r = rng(seed);
  const pad = (b: number, j: number) => j >= LENGTHS[b];
  const make = (dims: number[], f: (idx: number[]) => number) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const st = dims.map((_, i) => dims.slice(i + 1).reduce((a, b) => a * b, 1));
    return {
      data: Float32Array.from(
        { length: n },
        (_, k) => f(st.map((s, i) => Math.floor(k / s) % dims[i])),
      ),
      dims,
    };
  };
  const out: Record<string, HostTensor> = {};
  const d = spec.width / spec.heads;
  for (let i = 0; i <= spec.layers; i++) {
    out[`t_hidden_${i}`] = make([B, S, spec.width], ([b, j]) => (pad(b, j) ? NaN : 2 * r() - 1));
  }
  for (let l = 0; l < spec.layers; l++) {
    out[`t_scores_${l}`] = make(
      [B, spec.heads, S, S],
      ([b, , i, j]) => pad(b, i) || pad(b, j) ? NaN : 3 * (r() - 0.5),
    );
    out[`t_values_${l}`] = make([B, spec.heads, S, d], ([b, , j]) => (pad(b, j) ? NaN : r() - 0.5));
  }
  const perToken = spec.logits.length === 2;
  out.t_logits = make(
    [B, ...spec.logits],
    ([b, j]) => (perToken && pad(b, j) ? NaN : 4 * (r() - 0.5)),
  );
  return out;
}

/** Every feed of `grad` (parameters, batch, teacher targets, dropout masks). */
function gradFeeds(
  grad: GradGraph,
  shapes: Map<string, number[]>,
  extra: Record<string, HostTensor>,
  seed: number,
): Record<string, HostTensor> {
  const feeds: Record<string, HostTensor> = { ...paramFeeds(shapes, grad.inputs, seed) };
  for (const f of grad.feeds) {
    const t = extra[f.name];
    if (!t) throw new Error(`no test feed for ${f.name}`);
    feeds[f.name] = t;
  }
  for (const site of grad.dropout) {
    const dims = site.dims.map((
      d,
    ) => (d === "B" ? B : d === "S" ? S : d === "B*S" ? B * S : d as number));
    const n = dims.reduce((a, b) => a * b, 1);
    feeds[site.name] = {
      data: dropoutKeep(
        n,
        site.rate,
        seed * 100 + site.call,
        new Float32Array(n),
        1 / (1 - site.rate),
      ),
      dims,
    };
  }
  return feeds;
}

/**
 * Worst |Δ| per backend over every output, after asserting each element within tolerance. With
 * `quantized` (q8 graphs), float32 noise upstream (≈ 1e-7, as between ONNX Runtime's own
 * optimisation levels) may move an activation across a rounding boundary of
 * DynamicQuantizeLinear, which shifts what reads it by one quantum: there, at most 5% of an
 * output's elements may differ by more than TOL, and none by more than 5% of the output's range.
 */
async function assertParity(
  what: string,
  graph: Graph,
  model: Uint8Array,
  feeds: Record<string, HostTensor>,
  quantized = false,
): Promise<Record<string, { abs: number; rel: number }>> {
  const ref = await runOrt(model, feeds);
  const worst: Record<string, { abs: number; rel: number }> = {};
  for (const backend of BACKENDS) {
    const s: GraphSession = await openTfjs(graph, model, backend);
    try {
      const res = await s.run(feeds);
      const w = { abs: 0, rel: 0 };
      for (const name of s.outputNames) {
        const a = res[name].data as ArrayLike<number>, b = ref[name].data as ArrayLike<number>;
        const { maxAbs, maxRel, ok, bad } = compare(a, b);
        const where = `${what} on ${backend}: ${name}`;
        assert.deepEqual(res[name].dims, ref[name].dims, `${where}: dims`);
        if (quantized) {
          const range = Math.max(...Array.from(b, Math.abs));
          assert.ok(bad <= 0.05 * a.length, `${where}: ${bad} of ${a.length} elements differ`);
          assert.ok(maxAbs <= 0.05 * (1 + range), `${where} differs by ${maxAbs} (range ${range})`);
        } else {
          assert.ok(ok, `${where} differs from onnxruntime by ${maxAbs} (${bad} elements)`);
        }
        w.abs = Math.max(w.abs, maxAbs);
        w.rel = Math.max(w.rel, maxRel);
      }
      worst[backend] = w;
    } finally {
      await s.close();
    }
  }
  return worst;
}

/** Worst max |Δ| and max |Δ|/(1 + |ort|) of each graph, per backend (printed as a table). */
const figures: Record<string, Record<string, string>> = {};
const record = (label: string, w: Record<string, { abs: number; rel: number }>) => {
  figures[label] = {};
  for (const b of BACKENDS) {
    figures[label][`${b} abs`] = w[b].abs.toExponential(1);
    figures[label][`${b} rel`] = w[b].rel.toExponential(1);
  }
};

Deno.test("tfjs executor = onnxruntime: gradient graphs of every objective (dropout on and off)", async () => {
  const cfg = makeConfig(STUDENT);
  const cases: { objective: string; heads: BertHeads; dropout: boolean; cfg?: BertConfig }[] = [
    { objective: "classification", heads: { classifier: true, mlm: false }, dropout: true },
    { objective: "classification", heads: { classifier: true, mlm: false }, dropout: false },
    {
      objective: "regression",
      heads: { classifier: true, mlm: false },
      dropout: true,
      cfg: makeConfig({ ...STUDENT, id2label: { "0": "score" } }),
    },
    { objective: "mlm", heads: { classifier: false, mlm: true }, dropout: true },
    {
      objective: "token_classification",
      heads: { classifier: true, tokenClassifier: true, mlm: false },
      dropout: true,
    },
    { objective: "span", heads: { classifier: false, qa: true, mlm: false }, dropout: true },
  ];
  for (const [k, c] of cases.entries()) {
    const config = c.cfg ?? cfg;
    const shapes = parameterShapes(config, c.heads);
    const grad = buildGradGraph({
      config,
      heads: c.heads,
      params: shapes,
      objective: c.objective,
      dropout: c.dropout,
    });
    const feeds = gradFeeds(grad, shapes, batchFeeds(k + 1, c.objective === "regression"), k + 1);
    const label = `${c.objective}${c.dropout ? "" : " (no dropout)"}`;
    record(label, await assertParity(label, grad.graph, grad.model, feeds));
  }
  console.table(figures);
});

Deno.test("tfjs executor = onnxruntime: every distillation loss term, heads and widths that differ", async () => {
  const all = [
    "attention_mse",
    "hidden_mse",
    "soft_ce",
    "kl",
    "cosine",
    "attention_kl",
    "value_relation",
    "logit_mse",
    "hard_ce",
  ];
  const wide = { layers: 3, width: 48, heads: 8, logits: [3] };
  const narrow = { layers: 3, width: 32, heads: 4, logits: [3] };
  const layerMap = [0, 2, 3];
  const cases: {
    label: string;
    opts: DistillObjectiveOptions;
    teacher: typeof wide;
    heads: number;
    studentHeads?: BertHeads;
  }[] = [];
  for (const name of all) {
    cases.push({
      label: name,
      opts: {
        terms: [{ name, weight: 1.5, temperature: 2 }],
        layerMap,
        embeddings: true,
        projection: "shared",
      },
      teacher: name === "cosine" ? narrow : wide,
      heads: 4,
    } as never);
  }
  cases.push({
    label: "hidden_mse per-layer, no embeddings",
    opts: {
      terms: [{ name: "hidden_mse", weight: 1 }],
      layerMap,
      embeddings: false,
      projection: "per-layer",
    },
    teacher: wide,
    heads: 4,
  } as never);
  for (const name of ["attention_mse", "attention_kl", "value_relation"]) {
    cases.push({
      label: `${name}, student 8 heads vs teacher 4`,
      opts: { terms: [{ name, weight: 1 }], layerMap, embeddings: true, projection: "shared" },
      teacher: narrow,
      heads: 8,
    } as never);
  }
  for (const name of ["soft_ce", "kl", "logit_mse", "hard_ce"]) {
    for (
      const [head, heads, logits] of [
        ["token", { classifier: true, tokenClassifier: true, mlm: false }, [S, 3]],
        ["QA", { classifier: false, qa: true, mlm: false }, [S, 2]],
      ] as const
    ) {
      cases.push({
        label: `${name}, ${head} head`,
        opts: {
          terms: [{ name, weight: 1, temperature: 2 }],
          layerMap,
          embeddings: true,
          projection: "shared",
        },
        teacher: { ...narrow, logits: [...logits] },
        heads: 4,
        studentHeads: heads,
      } as never);
    }
  }
  cases.push({
    label: "attention_mse + hidden_mse + soft_ce (TinyBERT)",
    opts: {
      terms: [{ name: "attention_mse", weight: 1 }, { name: "hidden_mse", weight: 1 }, {
        name: "soft_ce",
        weight: 1,
      }],
      layerMap,
      embeddings: true,
      projection: "shared",
    },
    teacher: wide,
    heads: 4,
  } as never);
  for (const [k, c] of cases.entries()) {
    const config = makeConfig({ ...STUDENT, num_attention_heads: c.heads });
    const heads = c.studentHeads ?? { classifier: true, mlm: false };
    const shapes = parameterShapes(config, heads);
    const Hs = config.hidden_size, Ht = c.teacher.width;
    if (Ht !== Hs) {
      const names = c.opts.projection === "shared"
        ? ["distill.fit_dense"]
        : [0, 1, 2].map((m) => `distill.fit_dense.${m}`);
      for (const n of names) {
        shapes.set(`${n}.weight`, [Ht, Hs]);
        shapes.set(`${n}.bias`, [Ht]);
      }
    }
    const teacher = teacherFeeds(c.teacher, 100 + k);
    const targets = Object.fromEntries(Object.entries(teacher).map(([n, t]) => [n, t.dims]));
    const grad = buildGradGraph({
      config,
      heads,
      params: shapes,
      objective: "distillation",
      objectiveOptions: c.opts,
      dropout: true,
      targets,
    });
    const feeds = gradFeeds(grad, shapes, { ...batchFeeds(50 + k), ...teacher }, 50 + k);
    record(`distillation: ${c.label}`, await assertParity(c.label, grad.graph, grad.model, feeds));
  }
  console.table(figures);
});

Deno.test("tfjs executor = onnxruntime: the fp32, fp16 and q8 inference exports", async () => {
  const heads = [
    { classifier: true, mlm: true },
    { classifier: true, tokenClassifier: true, mlm: false },
    { classifier: false, qa: true, mlm: false },
  ];
  for (const [k, h] of heads.entries()) {
    const bert = Bert.create({ ...STUDENT, initializer_range: 0.2 }, h, 3 + k);
    const batch = batchFeeds(9 + k);
    const inputs = {
      input_ids: batch.input_ids,
      attention_mask: batch.attention_mask,
      token_type_ids: batch.token_type_ids,
    };
    for (const dtype of ["fp32", "fp16", "q8"] as const) {
      const g = exportGraph(bert, { dtype, outputs: "all", values: true });
      const m = GraphBuilder.encode(g, {
        name: "x",
        opset: 17,
        irVersion: 8,
        producer: "tinystill-test",
      });
      const label = `export ${dtype} ${
        Object.keys(h).filter((x) => h[x as keyof typeof h]).join("+")
      }`;
      record(label, await assertParity(label, g, m, inputs, dtype === "q8"));
    }
  }
  console.table(figures);
});
