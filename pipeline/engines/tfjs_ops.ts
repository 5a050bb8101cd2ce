/**
 * The ONNX operators the tfjs executor (`tfjs.ts`) runs, one entry per op: the element types of
 * its outputs, a kernel compiled once per node (attributes resolved, validated) that runs it with
 * tfjs ops, and — for the small integer metadata of shape arithmetic — a host implementation on
 * plain number arrays, so that `Shape → Concat → Reshape` chains never touch the backend.
 *
 * Semantics are those of the default-domain opset 17 (ReduceSum's and Squeeze/Unsqueeze's axes
 * as inputs, ReduceMean's as an attribute, `Shape` `start`/`end`, `ScatterND` `reduction`, …).
 * tfjs has no int64: int64 (and the 8/16-bit integer types) run as int32 tensors, bool as bool,
 * float16 as float32 tensors holding values rounded to half precision.
 * @module
 */

import { tf } from "./tfjs_backend.ts";
import type { AttrValue, Node } from "../graph/ir.ts";

/** ONNX `TensorProto.DataType` codes the executor knows. */
export const T = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
} as const;

const TYPE_NAMES: Record<number, string> = {
  1: "float",
  2: "uint8",
  3: "int8",
  4: "uint16",
  5: "int16",
  6: "int32",
  7: "int64",
  8: "string",
  9: "bool",
  10: "float16",
  11: "double",
  12: "uint32",
  13: "uint64",
  16: "bfloat16",
};

/** The ONNX name of an element type (for errors). */
export function typeName(type: number): string {
  return TYPE_NAMES[type] ?? `type ${type}`;
}

/** A graph the executor cannot run: an unknown op, attribute value or element type. */
export class UnsupportedGraphError extends Error {
  constructor(message: string) {
    super(`tfjs executor: ${message}`);
    this.name = "UnsupportedGraphError";
  }
}

/** The tfjs dtype that holds values of ONNX element type `type`. */
export function tfDtype(type: number): "float32" | "int32" | "bool" {
  switch (type) {
    case T.FLOAT:
    case T.FLOAT16:
    case T.DOUBLE:
      return "float32";
    case T.INT64:
    case T.INT32:
    case T.INT16:
    case T.UINT16:
    case T.INT8:
    case T.UINT8:
      return "int32";
    case T.BOOL:
      return "bool";
    default:
      throw new UnsupportedGraphError(`element type ${typeName(type)} is not supported`);
  }
}

const isFloat = (type: number) => type === T.FLOAT || type === T.FLOAT16 || type === T.DOUBLE;

/**
 * A small tensor kept on the host: shape metadata (`Shape`, `Size` and arithmetic on them),
 * int64 constants, scalars. `dev` caches its device copy once a kernel needs one.
 */
export class HostValue {
  /** The device copy, made on first use by a device kernel (then reused). */
  dev: tf.Tensor | undefined = undefined;
  constructor(readonly type: number, readonly dims: number[], readonly data: number[]) {}
  /** Free the device copy. */
  release(): void {
    this.dev?.dispose();
    this.dev = undefined;
  }
}

/** A value at run time: a device tensor or a host value. */
export type Val = tf.Tensor | HostValue;

/** A compiled node: inputs (`undefined` for an omitted optional one) → outputs. */
export type Kernel = (ins: (Val | undefined)[]) => (Val | undefined)[];

/** What an op's compiler knows about the node at open time. */
export interface CompileInfo {
  node: Node;
  /** Element types of the inputs (`undefined`: omitted). */
  inTypes: (number | undefined)[];
  /** Which outputs anything reads (a kernel may skip the others). */
  used: boolean[];
  /** tfjs backend name (`wasm`, `cpu`, …). */
  backend: string;
}

/** One ONNX operator. */
export interface OpDef {
  /** Element types of the outputs, from the inputs' and the attributes. */
  types(inTypes: (number | undefined)[], attrs: Record<string, AttrValue>): number[];
  /** Build the device kernel (validating attributes; throws {@link UnsupportedGraphError}). */
  compile(info: CompileInfo): Kernel;
  /** Host implementation, used when every input is a host value. */
  host?: (ins: (Val | undefined)[], attrs: Record<string, AttrValue>, node: Node) => HostValue[];
  /** Runs on the host whatever its input (reads only the input's shape: `Shape`, `Size`). */
  shapeOnly?: boolean;
}

// --- helpers -------------------------------------------------------------------------------------

const prod = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

/** The dims of a value. */
export function dimsOf(v: Val): number[] {
  return v instanceof HostValue ? v.dims : v.shape;
}

/** A value on the device (a host value is uploaded once and its copy cached). */
export function dev(v: Val): tf.Tensor {
  if (!(v instanceof HostValue)) return v;
  if (!v.dev) {
    const dtype = tfDtype(v.type);
    v.dev = tf.keep(
      dtype === "float32"
        ? tf.tensor(Float32Array.from(v.data), v.dims, "float32")
        : dtype === "int32"
        ? tf.tensor(Int32Array.from(v.data), v.dims, "int32")
        : tf.tensor(Uint8Array.from(v.data), v.dims, "bool"),
    );
  }
  return v.dev;
}

/**
 * The numbers of a value that must be known on the host (axes, pads, shapes). Host values are
 * read as they are; a device tensor is read back (a graph that computes such metadata from data
 * pays a synchronous read).
 */
export function numbers(v: Val): number[] {
  if (v instanceof HostValue) return v.data;
  return Array.from(v.dataSync() as ArrayLike<number>);
}

function need(v: Val | undefined, node: Node, i: number): Val {
  if (v === undefined) {
    throw new UnsupportedGraphError(`${node.op} node ${node.name} is missing input ${i}`);
  }
  return v;
}

function attrInt(attrs: Record<string, AttrValue>, name: string, def: number): number {
  const v = attrs[name];
  if (v === undefined) return def;
  if (typeof v === "number") return v;
  throw new UnsupportedGraphError(`attribute ${name} must be an int, got ${JSON.stringify(v)}`);
}

function attrFloat(attrs: Record<string, AttrValue>, name: string, def: number): number {
  const v = attrs[name];
  if (v === undefined) return def;
  if (typeof v === "number") return v;
  if (typeof v === "object" && !Array.isArray(v)) return Math.fround(v.f);
  throw new UnsupportedGraphError(`attribute ${name} must be a float, got ${JSON.stringify(v)}`);
}

function attrInts(attrs: Record<string, AttrValue>, name: string): number[] | undefined {
  const v = attrs[name];
  if (v === undefined) return undefined;
  if (Array.isArray(v)) return v;
  if (typeof v === "number") return [v];
  throw new UnsupportedGraphError(`attribute ${name} must be ints, got ${JSON.stringify(v)}`);
}

function attrString(attrs: Record<string, AttrValue>, name: string, def: string): string {
  const v = attrs[name];
  if (v === undefined) return def;
  if (typeof v === "string") return v;
  throw new UnsupportedGraphError(`attribute ${name} must be a string, got ${JSON.stringify(v)}`);
}

function checkAttrs(node: Node, known: string[]): void {
  for (const k of Object.keys(node.attrs)) {
    if (!known.includes(k)) {
      throw new UnsupportedGraphError(
        `${node.op} node ${node.name}: attribute '${k}' is not supported`,
      );
    }
  }
}

const normAxis = (a: number, rank: number) => (a < 0 ? a + rank : a);

function strides(dims: readonly number[]): number[] {
  const s = new Array(dims.length).fill(1);
  for (let i = dims.length - 2; i >= 0; i--) s[i] = s[i + 1] * dims[i + 1];
  return s;
}

/** Numpy broadcast of two shapes. */
export function broadcastDims(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1, db = b[b.length - n + i] ?? 1;
    if (da === db || db === 1) out.push(da);
    else if (da === 1) out.push(db);
    else throw new Error(`shapes [${a}] and [${b}] do not broadcast`);
  }
  return out;
}

/** Round a float to float32, or to float16 precision. */
function roundTo(type: number, x: number): number {
  if (type === T.FLOAT16) return roundHalf(x);
  return Math.fround(x);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The float32 value nearest to the IEEE half nearest to `x` (round to nearest even). */
export function roundHalf(x: number): number {
  return halfToFloat(floatToHalf(x));
}

/** float → IEEE binary16 bits (round to nearest even; overflow → ±inf; NaN kept). */
export function floatToHalf(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1), halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** IEEE binary16 bits → float. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f, mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Convert a number to the ONNX element type `type` (as Cast does on the host). */
function castNumber(x: number, from: number, to: number): number {
  if (isFloat(to)) return roundTo(to, x);
  if (to === T.BOOL) return x !== 0 ? 1 : 0;
  if (Number.isNaN(x)) return 0;
  const v = isFloat(from) ? Math.trunc(x) : x;
  switch (to) {
    case T.INT32:
      return v | 0;
    case T.INT8:
      return (v << 24) >> 24;
    case T.UINT8:
      return v & 0xff;
    case T.INT16:
      return (v << 16) >> 16;
    case T.UINT16:
      return v & 0xffff;
    default:
      return v; // int64: exact up to 2^53
  }
}

/** A host binary op with numpy broadcasting; float results rounded to `outType`. */
function hostBinary(
  a: HostValue,
  b: HostValue,
  outType: number,
  f: (x: number, y: number) => number,
): HostValue {
  const dims = broadcastDims(a.dims, b.dims);
  const n = prod(dims), r = dims.length;
  const sa = bcastStrides(a.dims, dims), sb = bcastStrides(b.dims, dims);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    let ia = 0, ib = 0, rest = i;
    for (let d = r - 1; d >= 0; d--) {
      const c = rest % dims[d];
      rest = (rest - c) / dims[d];
      ia += c * sa[d];
      ib += c * sb[d];
    }
    const v = f(a.data[ia], b.data[ib]);
    out[i] = isFloat(outType) ? roundTo(outType, v) : v;
  }
  return new HostValue(outType, dims, out);
}

/** Strides of `dims` read as broadcast to `out` (0 along broadcast axes). */
function bcastStrides(dims: readonly number[], out: readonly number[]): number[] {
  const s = strides(dims), lead = out.length - dims.length;
  return out.map((_, i) => (i < lead || dims[i - lead] === 1 ? 0 : s[i - lead]));
}

/** Gather `dims`-shaped elements of `src` (shape `srcDims`) at the given per-axis index lists. */
function hostSelect(v: HostValue, picks: number[][]): HostValue {
  const st = strides(v.dims), dims = picks.map((p) => p.length);
  const n = prod(dims), out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    let rest = i, off = 0;
    for (let d = dims.length - 1; d >= 0; d--) {
      const c = rest % dims[d];
      rest = (rest - c) / dims[d];
      off += picks[d][c] * st[d];
    }
    out[i] = v.data[off];
  }
  return new HostValue(v.type, dims, out);
}

const range = (a: number, b: number) => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);

/** The output dims of ONNX Reshape (0 copies the input dim unless `allowzero`, −1 infers). */
export function reshapeDims(inDims: readonly number[], shape: number[], allowzero = 0): number[] {
  const out = shape.map((d, i) => (d === 0 && !allowzero ? inDims[i] : d));
  const known = out.reduce((a, d) => (d === -1 ? a : a * d), 1);
  const total = prod(inDims);
  const k = out.indexOf(-1);
  if (k >= 0) out[k] = known === 0 ? 0 : total / known;
  if (prod(out) !== total || !out.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`cannot reshape [${inDims}] to [${shape}]`);
  }
  return out;
}

/** Per-axis [start, end, step] of ONNX Slice, clamped. */
function sliceSpec(dims: readonly number[], args: (Val | undefined)[]): [number, number, number][] {
  const starts = numbers(args[1]!), ends = numbers(args[2]!);
  const axes = args[3] ? numbers(args[3]) : range(0, starts.length);
  const steps = args[4] ? numbers(args[4]) : starts.map(() => 1);
  const spec: [number, number, number][] = dims.map((d) => [0, d, 1]);
  axes.forEach((a0, i) => {
    const a = normAxis(a0, dims.length), d = dims[a], step = steps[i];
    if (step === 0) throw new Error("Slice: step 0");
    let s = starts[i], e = ends[i];
    if (s < 0) s += d;
    if (e < 0) e += d;
    if (step > 0) {
      s = Math.min(Math.max(s, 0), d);
      e = Math.min(Math.max(e, 0), d);
    } else {
      s = Math.min(Math.max(s, 0), d - 1);
      e = Math.min(Math.max(e, -1), d - 1);
    }
    spec[a] = [s, e, step];
  });
  return spec;
}

function sliceIndices([s, e, step]: [number, number, number]): number[] {
  const out: number[] = [];
  if (step > 0) { for (let i = s; i < e; i += step) out.push(i); }
  else for (let i = s; i > e; i += step) out.push(i);
  return out;
}

/** The reduced axes of a Reduce op (all when `axes` is empty, unless `noop`). */
function reduceAxes(rank: number, axes: number[] | undefined, noop: boolean): number[] | null {
  if (!axes || axes.length === 0) return noop ? null : range(0, rank);
  return [...new Set(axes.map((a) => normAxis(a, rank)))].sort((a, b) => a - b);
}

// --- op families -----------------------------------------------------------------------------------

const sameAs0 = (inTypes: (number | undefined)[]) => [inTypes[0]!];
const boolOut = () => [T.BOOL];

function unary(
  f: (x: tf.Tensor) => tf.Tensor,
  host?: (x: number) => number,
): OpDef {
  return {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, []);
      return ([x]) => [f(dev(need(x, node, 0)))];
    },
    host: host
      ? ([x]) => {
        const v = x as HostValue;
        return [new HostValue(v.type, v.dims, v.data.map((a) => roundTo(v.type, host(a))))];
      }
      : undefined,
  };
}

function binary(
  f: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor,
  host: ((x: number, y: number, type: number) => number) | undefined,
  out: "same" | "bool" = "same",
): OpDef {
  return {
    types: out === "bool" ? boolOut : sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, []);
      return ([a, b]) => [f(dev(need(a, node, 0)), dev(need(b, node, 1)))];
    },
    host: host
      ? ([a, b]) => {
        const x = a as HostValue, y = b as HostValue;
        return [hostBinary(x, y, out === "bool" ? T.BOOL : x.type, (p, q) => host(p, q, x.type))];
      }
      : undefined,
  };
}

/** `Sum`, `Max`, `Min` of n inputs (broadcasting). */
function variadic(
  f: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor,
  host: (x: number, y: number) => number,
  addN = false,
): OpDef {
  return {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, []);
      return (ins) => {
        const ts = ins.map((v, i) => dev(need(v, node, i)));
        if (ts.length === 1) return [tf.clone(ts[0])];
        const s0 = ts[0].shape;
        if (
          addN &&
          ts.every((t) => t.shape.length === s0.length && t.shape.every((d, i) => d === s0[i]))
        ) {
          return [tf.addN(ts)];
        }
        return [tf.tidy(() => ts.slice(1).reduce((acc, t) => f(acc, t), ts[0]))];
      };
    },
    host: (ins) => {
      const hs = ins as HostValue[];
      return [hs.slice(1).reduce((acc, h) => hostBinary(acc, h, acc.type, host), hs[0])];
    },
  };
}

/** `a / b`; on ints truncated toward zero (C semantics, as ONNX Runtime), exactly. */
function divide(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  if (a.dtype !== "int32") return tf.div(a, b);
  return tf.tidy(() => {
    // floor division, plus one where the remainder is non-zero and the signs differ
    const zero = tf.scalar(0, "int32");
    const q = tf.floorDiv(a, b);
    const inexact = tf.notEqual(tf.sub(a, tf.mul(q, b)), zero);
    const signsDiffer = tf.notEqual(tf.less(a, zero), tf.less(b, zero));
    return tf.add(q, tf.cast(tf.logicalAnd(inexact, signsDiffer), "int32"));
  });
}

/**
 * ONNX MatMul (numpy semantics: rank-1 operands promoted, batch dims broadcast) with optional
 * transposed operands. `[..., M, K] · [K, N]` runs as one 2-D product (the XNNPACK path on
 * wasm); equal batch dims as one batched product.
 */
export function matmul(a: tf.Tensor, b: tf.Tensor, transA = false, transB = false): tf.Tensor {
  const ra = a.shape.length, rb = b.shape.length;
  if (ra === 1 || rb === 1) {
    return tf.tidy(() => {
      const a2 = ra === 1 ? tf.reshape(a, [1, a.shape[0]]) : a;
      const b2 = rb === 1 ? tf.reshape(b, [b.shape[0], 1]) : b;
      const y = matmul(a2, b2, ra === 1 ? false : transA, rb === 1 ? false : transB);
      const dims = y.shape.slice();
      if (rb === 1) dims.splice(dims.length - 1, 1);
      if (ra === 1) dims.splice(dims.length - (rb === 1 ? 1 : 2), 1);
      return tf.reshape(y, dims);
    });
  }
  if (rb === 2 && ra > 2 && !transA) {
    // [..., M, K] · [K, N]: one 2-D product over all rows
    const K = a.shape[ra - 1];
    return tf.tidy(() => {
      const y = tf.matMul(tf.reshape(a, [-1, K]), b, false, transB);
      const dims: number[] = a.shape.slice(0, -1);
      dims.push(y.shape[1] as number);
      return tf.reshape(y, dims);
    });
  }
  const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
  const same = outerA.length === outerB.length && outerA.every((d, i) => d === outerB[i]);
  if (!same && prod(outerA) !== 1 && prod(outerB) !== 1) {
    // tfjs pairs batch i of the output with batch i mod n of each side, which is numpy
    // broadcasting only when a side has one batch or both have the same: materialise it
    const outer = broadcastDims(outerA, outerB);
    return tf.tidy(() => {
      const a2 = tf.broadcastTo(a, [...outer, ...a.shape.slice(-2)]);
      const b2 = tf.broadcastTo(b, [...outer, ...b.shape.slice(-2)]);
      return tf.matMul(a2, b2, transA, transB);
    });
  }
  return tf.matMul(a, b, transA, transB);
}

/** The inverse of a permutation. */
const inversePerm = (perm: number[]) => perm.map((_, i) => perm.indexOf(i));

/** `f` applied along `axis` by moving it last (tfjs softmax works on the last axis only). */
function alongAxis(x: tf.Tensor, axis: number, f: (t: tf.Tensor) => tf.Tensor): tf.Tensor {
  const r = x.shape.length, a = normAxis(axis, r);
  if (a === r - 1) return f(x);
  const perm = range(0, r).filter((i) => i !== a).concat([a]);
  return tf.tidy(() => tf.transpose(f(tf.transpose(x, perm)), inversePerm(perm)));
}

const IDENTITY: OpDef = {
  types: sameAs0,
  compile: ({ node }) => ([x]) => [tf.clone(dev(need(x, node, 0)))],
  host: ([x]) => [x as HostValue],
};

/** Reshape, Squeeze, Unsqueeze: the data as it is under new dims (on the host when small). */
function reshapeLike(
  dimsOfNode: (x: Val, ins: (Val | undefined)[], attrs: Record<string, AttrValue>) => number[],
  known: string[] = [],
): OpDef {
  return {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, known);
      return (ins) => {
        const x = dev(need(ins[0], node, 0));
        return [tf.reshape(x, dimsOfNode(x, ins, node.attrs))];
      };
    },
    host: (ins, attrs) => {
      const x = ins[0] as HostValue;
      return [new HostValue(x.type, dimsOfNode(x, ins, attrs), x.data)];
    },
  };
}

function squeezeDims(dims: number[], axes: number[] | undefined): number[] {
  if (!axes) return dims.filter((d) => d !== 1);
  const ax = axes.map((a) => normAxis(a, dims.length));
  for (const a of ax) {
    if (dims[a] !== 1) throw new Error(`Squeeze: axis ${a} of [${dims}] is not 1`);
  }
  return dims.filter((_, i) => !ax.includes(i));
}

function unsqueezeDims(dims: number[], axes: number[]): number[] {
  const r = dims.length + axes.length;
  const ax = new Set(axes.map((a) => normAxis(a, r)));
  const out: number[] = [];
  let k = 0;
  for (let i = 0; i < r; i++) out.push(ax.has(i) ? 1 : dims[k++]);
  return out;
}

function reduceOp(
  f: (x: tf.Tensor, axes: number[], keep: boolean) => tf.Tensor,
  axesFromInput: boolean,
): OpDef {
  return {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, axesFromInput ? ["keepdims", "noop_with_empty_axes"] : ["axes", "keepdims"]);
      const keep = attrInt(node.attrs, "keepdims", 1) === 1;
      const noop = attrInt(node.attrs, "noop_with_empty_axes", 0) === 1;
      const attrAxes = attrInts(node.attrs, "axes");
      return ([x, axesIn]) => {
        const t = dev(need(x, node, 0));
        const given = axesFromInput ? (axesIn ? numbers(axesIn) : undefined) : attrAxes;
        const axes = reduceAxes(t.shape.length, given, noop);
        if (axes === null) return [tf.clone(t)];
        return [f(t, axes, keep)];
      };
    },
  };
}

// --- the table -------------------------------------------------------------------------------------

const num = (b: boolean) => (b ? 1 : 0);

/** Every ONNX op the tfjs executor runs (default domain, opset 17). */
export const OPS: Record<string, OpDef> = {
  Identity: IDENTITY,

  // elementwise arithmetic
  Add: binary(tf.add, (x, y) => x + y),
  Sub: binary(tf.sub, (x, y) => x - y),
  Mul: binary(tf.mul, (x, y) => x * y),
  Div: binary(divide, (x, y, t) => (isFloat(t) ? x / y : Math.trunc(x / y))),
  Pow: binary((a, b) => tf.pow(a, b), (x, y) => x ** y),
  Neg: unary(tf.neg, (x) => -x),
  Abs: unary(tf.abs, Math.abs),
  Exp: unary(tf.exp),
  Log: unary(tf.log),
  Sqrt: unary(tf.sqrt, Math.sqrt),
  Reciprocal: unary(tf.reciprocal),
  Tanh: unary(tf.tanh),
  Sigmoid: unary(tf.sigmoid),
  Relu: unary(tf.relu),
  Erf: unary(tf.erf),
  Sum: variadic(tf.add, (x, y) => x + y, true),
  Max: variadic(tf.maximum, Math.max),
  Min: variadic(tf.minimum, Math.min),

  // comparisons and logic (bool)
  Equal: binary(tf.equal, (x, y) => num(x === y), "bool"),
  Greater: binary(tf.greater, (x, y) => num(x > y), "bool"),
  GreaterOrEqual: binary(tf.greaterEqual, (x, y) => num(x >= y), "bool"),
  Less: binary(tf.less, (x, y) => num(x < y), "bool"),
  LessOrEqual: binary(tf.lessEqual, (x, y) => num(x <= y), "bool"),
  And: binary(tf.logicalAnd, (x, y) => num(!!x && !!y), "bool"),
  Or: binary(tf.logicalOr, (x, y) => num(!!x || !!y), "bool"),
  Xor: binary(tf.logicalXor, (x, y) => num(!!x !== !!y), "bool"),
  Not: {
    types: boolOut,
    compile: ({ node }) => ([x]) => [tf.logicalNot(dev(need(x, node, 0)))],
    host: ([x]) => {
      const v = x as HostValue;
      return [new HostValue(T.BOOL, v.dims, v.data.map((a) => num(!a)))];
    },
  },
  IsNaN: {
    types: boolOut,
    compile: ({ node }) => ([x]) => [tf.isNaN(dev(need(x, node, 0)))],
  },
  IsInf: {
    types: boolOut,
    compile: ({ node }) => {
      checkAttrs(node, ["detect_negative", "detect_positive"]);
      const neg = attrInt(node.attrs, "detect_negative", 1) === 1;
      const pos = attrInt(node.attrs, "detect_positive", 1) === 1;
      return ([x]) => {
        const t = dev(need(x, node, 0));
        if (neg && pos) return [tf.isInf(t)];
        return [tf.tidy(() => tf.equal(t, neg ? -Infinity : pos ? Infinity : NaN))];
      };
    },
  },
  Where: {
    types: (inTypes) => [inTypes[1]!],
    compile: ({ node }) => ([c, a, b]) => [
      tf.where(dev(need(c, node, 0)), dev(need(a, node, 1)), dev(need(b, node, 2))),
    ],
  },
  Cast: {
    types: (_, attrs) => [attrInt(attrs, "to", T.FLOAT)],
    compile: ({ node, inTypes }) => {
      checkAttrs(node, ["to", "saturate"]);
      const to = attrInt(node.attrs, "to", 0), from = inTypes[0]!;
      const dtype = tfDtype(to);
      tfDtype(from);
      return ([x]) => {
        const t = dev(need(x, node, 0));
        if (to === T.FLOAT16 && from !== T.FLOAT16) {
          // round on the host: tfjs has no float16 arithmetic
          const src = t.dataSync() as ArrayLike<number>;
          const out = new Float32Array(src.length);
          for (let i = 0; i < out.length; i++) out[i] = roundHalf(src[i]);
          return [tf.tensor(out, t.shape, "float32")];
        }
        if (t.dtype === dtype) {
          // int64 → int32 and friends share the int32 tensor; narrowing wraps on the host
          if (dtype !== "int32" || to === T.INT64 || to === T.INT32 || from === to) {
            return [tf.clone(t)];
          }
          const src = t.dataSync() as Int32Array;
          return [
            tf.tensor(Int32Array.from(src, (v) => castNumber(v, from, to)), t.shape, "int32"),
          ];
        }
        return [tf.cast(t, dtype)];
      };
    },
    host: ([x], attrs) => {
      const v = x as HostValue, to = attrInt(attrs, "to", 0);
      return [new HostValue(to, v.dims, v.data.map((a) => castNumber(a, v.type, to)))];
    },
  },

  // shape metadata (always on the host)
  Shape: {
    types: () => [T.INT64],
    shapeOnly: true,
    compile: () => {
      throw new Error("Shape runs on the host");
    },
    host: ([x], attrs) => {
      const dims = dimsOf(x!), r = dims.length;
      const clamp = (a: number) => Math.min(Math.max(a < 0 ? a + r : a, 0), r);
      const s = clamp(attrInt(attrs, "start", 0)), e = clamp(attrInt(attrs, "end", r));
      const out = dims.slice(s, Math.max(s, e));
      return [new HostValue(T.INT64, [out.length], out)];
    },
  },
  Range: {
    types: (inTypes) => [inTypes[0]!],
    compile: ({ node }) => {
      throw new UnsupportedGraphError(`Range node ${node.name}: only host (shape) inputs`);
    },
    host: ([s, l, d]) => {
      const start = numbers(s!)[0], limit = numbers(l!)[0], delta = numbers(d!)[0];
      const n = Math.max(Math.ceil((limit - start) / delta), 0);
      const out = Array.from({ length: n }, (_, i) => start + i * delta);
      return [new HostValue((s as HostValue).type, [n], out)];
    },
  },
  Size: {
    types: () => [T.INT64],
    shapeOnly: true,
    compile: () => {
      throw new Error("Size runs on the host");
    },
    host: ([x]) => [new HostValue(T.INT64, [], [prod(dimsOf(x!))])],
  },

  // data movement
  Reshape: reshapeLike(
    (x, ins, attrs) => reshapeDims(dimsOf(x), numbers(ins[1]!), attrInt(attrs, "allowzero", 0)),
    ["allowzero"],
  ),
  Squeeze: reshapeLike((x, ins) => squeezeDims(dimsOf(x), ins[1] ? numbers(ins[1]) : undefined)),
  Unsqueeze: reshapeLike((x, ins) => unsqueezeDims(dimsOf(x), numbers(ins[1]!))),
  Flatten: {
    types: sameAs0,
    compile: ({ node }) => {
      const axis = attrInt(node.attrs, "axis", 1);
      return ([x]) => {
        const t = dev(need(x, node, 0)), a = normAxis(axis, t.shape.length);
        return [tf.reshape(t, [prod(t.shape.slice(0, a)), prod(t.shape.slice(a))])];
      };
    },
  },
  Transpose: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["perm"]);
      const perm = attrInts(node.attrs, "perm");
      return ([x]) => {
        const t = dev(need(x, node, 0));
        return [tf.transpose(t, perm ?? range(0, t.shape.length).reverse())];
      };
    },
    host: ([x], attrs) => {
      const v = x as HostValue;
      const perm = attrInts(attrs, "perm") ?? range(0, v.dims.length).reverse();
      const st = strides(v.dims), dims = perm.map((p) => v.dims[p]);
      const out = new Array<number>(v.data.length);
      for (let i = 0; i < out.length; i++) {
        let rest = i, off = 0;
        for (let d = dims.length - 1; d >= 0; d--) {
          const c = rest % dims[d];
          rest = (rest - c) / dims[d];
          off += c * st[perm[d]];
        }
        out[i] = v.data[off];
      }
      return [new HostValue(v.type, dims, out)];
    },
  },
  Concat: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["axis"]);
      const axis = attrInt(node.attrs, "axis", 0);
      return (ins) => {
        const ts = ins.map((v, i) => dev(need(v, node, i)));
        return [tf.concat(ts, normAxis(axis, ts[0].shape.length))];
      };
    },
    host: (ins, attrs) => {
      const hs = ins as HostValue[];
      const r = hs[0].dims.length, a = normAxis(attrInt(attrs, "axis", 0), r);
      const outer = prod(hs[0].dims.slice(0, a));
      const dims = hs[0].dims.slice();
      dims[a] = hs.reduce((s, h) => s + h.dims[a], 0);
      const out: number[] = [];
      for (let o = 0; o < outer; o++) {
        for (const h of hs) {
          const chunk = prod(h.dims.slice(a));
          for (let i = 0; i < chunk; i++) out.push(h.data[o * chunk + i]);
        }
      }
      return [new HostValue(hs[0].type, dims, out)];
    },
  },
  Slice: {
    types: sameAs0,
    compile: ({ node }) => (ins) => {
      const t = dev(need(ins[0], node, 0));
      const spec = sliceSpec(t.shape, ins);
      if (spec.every(([, , s]) => s === 1)) {
        return [tf.slice(t, spec.map(([s]) => s), spec.map(([s, e]) => Math.max(0, e - s)))];
      }
      // other steps: one gather per sliced axis (tfjs' stridedSlice reads a negative end as
      // counting from the back, where ONNX's clamped −1 means "before index 0")
      return [tf.tidy(() =>
        spec.reduce((y, sp, axis) => {
          if (sp[0] === 0 && sp[1] === t.shape[axis] && sp[2] === 1) return y;
          const idx = sliceIndices(sp);
          if (idx.length === 0) {
            return tf.zeros(y.shape.map((d, i) => (i === axis ? 0 : d)), y.dtype);
          }
          return tf.gather(y, tf.tensor(idx, [idx.length], "int32"), axis);
        }, t)
      )];
    },
    host: (ins) => {
      const v = ins[0] as HostValue;
      return [hostSelect(v, sliceSpec(v.dims, ins).map(sliceIndices))];
    },
  },
  Gather: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["axis"]);
      const axis = attrInt(node.attrs, "axis", 0);
      return ([x, idx]) => {
        const t = dev(need(x, node, 0));
        const a = normAxis(axis, t.shape.length);
        const i = need(idx, node, 1);
        if (i instanceof HostValue) {
          // constant indices: negative ones wrap (ONNX), checked here
          const d = t.shape[a];
          const fixed = i.data.map((k) => {
            const j = k < 0 ? k + d : k;
            if (j < 0 || j >= d) throw new Error(`Gather: index ${k} out of range [${-d}, ${d})`);
            return j;
          });
          if (i.dims.length === 0) {
            return [
              tf.tidy(() =>
                tf.squeeze(tf.slice(t, unitBegin(t, a, fixed[0]), unitSize(t, a)), [a])
              ),
            ];
          }
          return [tf.tidy(() => tf.gather(t, tf.tensor(fixed, i.dims, "int32"), a))];
        }
        return [tf.gather(t, i, a)];
      };
    },
    host: ([x, idx], attrs) => {
      const v = x as HostValue, ix = idx as HostValue;
      const a = normAxis(attrInt(attrs, "axis", 0), v.dims.length), d = v.dims[a];
      const pick = ix.data.map((k) => (k < 0 ? k + d : k));
      const sel = hostSelect(v, v.dims.map((n, i) => (i === a ? pick : range(0, n))));
      const dims = [...v.dims.slice(0, a), ...ix.dims, ...v.dims.slice(a + 1)];
      return [new HostValue(v.type, dims, sel.data)];
    },
  },
  GatherElements: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["axis"]);
      const axis = attrInt(node.attrs, "axis", 0);
      return ([x, idx]) => [
        gatherElements(dev(need(x, node, 0)), dev(need(idx, node, 1)), axis),
      ];
    },
  },
  ScatterND: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["reduction"]);
      const reduction = attrString(node.attrs, "reduction", "none");
      if (reduction !== "none" && reduction !== "add") {
        throw new UnsupportedGraphError(
          `ScatterND node ${node.name}: reduction '${reduction}' is not supported (none, add)`,
        );
      }
      return ([x, idx, upd]) => {
        const data = dev(need(x, node, 0)), i = dev(need(idx, node, 1));
        const u = dev(need(upd, node, 2));
        if (reduction === "none") return [tf.tensorScatterUpdate(data, i, u)];
        return [tf.tidy(() => tf.add(data, scatterAdd(i, u, data.shape)))];
      };
    },
  },
  ScatterElements: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["axis", "reduction"]);
      const reduction = attrString(node.attrs, "reduction", "none");
      const axis = attrInt(node.attrs, "axis", 0);
      if (reduction !== "add" || axis !== 0) {
        throw new UnsupportedGraphError(
          `ScatterElements node ${node.name}: only axis 0 with reduction 'add' is supported`,
        );
      }
      return ([x, idx, upd]) => {
        const data = dev(need(x, node, 0)), i = dev(need(idx, node, 1));
        const u = dev(need(upd, node, 2));
        if (data.shape.length !== 2) {
          throw new UnsupportedGraphError(`ScatterElements node ${node.name}: 2-D data only`);
        }
        const [V, W] = data.shape, n = i.shape[0], w = i.shape[1] ?? 1;
        return [tf.tidy(() => {
          // out[idx[r][j]][j] += upd[r][j]: a 1-D scatter at idx·W + j (repeated indices add)
          const flat = tf.add(
            tf.mul(tf.cast(i, "int32"), tf.scalar(W, "int32")),
            tf.range(0, w, 1, "int32"),
          );
          const added = scatterAdd(tf.reshape(flat, [n * w, 1]), tf.reshape(u, [n * w]), [V * W]);
          return tf.add(data, tf.reshape(added, [V, W]));
        })];
      };
    },
  },
  Expand: {
    types: sameAs0,
    compile: ({ node }) => ([x, s]) => {
      const t = dev(need(x, node, 0));
      const dims = broadcastDims(t.shape, numbers(need(s, node, 1)));
      if (dims.length === t.shape.length && dims.every((d, i) => d === t.shape[i])) {
        return [tf.clone(t)];
      }
      return [tf.broadcastTo(t, dims)];
    },
  },
  ConstantOfShape: {
    types: () => [T.FLOAT],
    compile: ({ node }) => {
      checkAttrs(node, []);
      return ([s]) => [tf.zeros(numbers(need(s, node, 0)), "float32")];
    },
  },
  Pad: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["mode"]);
      const mode = attrString(node.attrs, "mode", "constant");
      if (mode !== "constant" && mode !== "reflect") {
        throw new UnsupportedGraphError(`Pad node ${node.name}: mode '${mode}' is not supported`);
      }
      return ([x, p, c, ax]) => {
        const t = dev(need(x, node, 0)), r = t.shape.length;
        const pads = numbers(need(p, node, 1));
        const axes = ax ? numbers(ax).map((a) => normAxis(a, r)) : range(0, r);
        const k = axes.length;
        const before = new Array(r).fill(0), after = new Array(r).fill(0);
        axes.forEach((a, i) => {
          before[a] = pads[i];
          after[a] = pads[k + i];
        });
        const value = c ? numbers(c)[0] : 0;
        return [tf.tidy(() => {
          // negative pads crop
          let y = t;
          if (before.some((b) => b < 0) || after.some((e) => e < 0)) {
            const begin = before.map((b) => Math.max(0, -b));
            const size = t.shape.map((d, i) => d - begin[i] - Math.max(0, -after[i]));
            y = tf.slice(y, begin, size);
          }
          const pairs = before.map((b, i) =>
            [Math.max(0, b), Math.max(0, after[i])] as [number, number]
          );
          if (mode === "reflect") return tf.mirrorPad(y, pairs, "reflect");
          return tf.pad(y, pairs, value);
        })];
      };
    },
  },
  OneHot: {
    types: (inTypes) => [inTypes[2]!],
    compile: ({ node, inTypes }) => {
      checkAttrs(node, ["axis"]);
      const axis = attrInt(node.attrs, "axis", -1);
      const dtype = tfDtype(inTypes[2]!);
      return ([idx, depthV, values]) => {
        const i = dev(need(idx, node, 0));
        const depth = numbers(need(depthV, node, 1))[0];
        const [off, on] = numbers(need(values, node, 2));
        return [tf.tidy(() => {
          // negative indices count from the end (ONNX); out-of-range ones give all-off rows
          const wrapped = tf.where(
            tf.less(i, tf.scalar(0, "int32")),
            tf.add(i, tf.scalar(depth, "int32")),
            i,
          );
          // as int32 0/1, then cast and scaled (tfjs-wasm writes int32 bits whatever the dtype)
          let y = tf.oneHot(wrapped, depth, 1, 0, "int32");
          if (dtype !== "int32") y = tf.cast(y, dtype);
          if (on !== 1 || off !== 0) {
            y = tf.add(tf.mul(y, tf.scalar(on - off, dtype)), tf.scalar(off, dtype));
          }
          const r = y.shape.length, a = normAxis(axis, r);
          if (a === r - 1) return y;
          const perm = range(0, r - 1);
          perm.splice(a, 0, r - 1);
          return tf.transpose(y, perm);
        })];
      };
    },
  },

  // reductions
  ReduceSum: reduceOp((x, axes, keep) => tf.sum(x, axes, keep), true),
  ReduceMean: reduceOp((x, axes, keep) => tf.mean(x, axes, keep), false),
  ReduceMax: reduceOp((x, axes, keep) => tf.max(x, axes, keep), false),
  ReduceMin: reduceOp((x, axes, keep) => tf.min(x, axes, keep), false),
  ReduceSumSquare: reduceOp(
    (x, axes, keep) => tf.tidy(() => tf.sum(tf.square(x), axes, keep)),
    false,
  ),

  // linear algebra
  MatMul: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, []);
      return ([a, b]) => [matmul(dev(need(a, node, 0)), dev(need(b, node, 1)))];
    },
  },
  Gemm: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["alpha", "beta", "transA", "transB"]);
      const alpha = attrFloat(node.attrs, "alpha", 1), beta = attrFloat(node.attrs, "beta", 1);
      const ta = attrInt(node.attrs, "transA", 0) === 1,
        tb = attrInt(node.attrs, "transB", 0) === 1;
      return ([a, b, c]) => {
        const A = dev(need(a, node, 0)), B = dev(need(b, node, 1));
        if (A.shape.length !== 2 || B.shape.length !== 2) {
          throw new Error(`Gemm: A and B must be 2-D, got [${A.shape}] and [${B.shape}]`);
        }
        const C = c ? dev(c) : undefined;
        if (alpha === 1 && !C) return [tf.matMul(A, B, ta, tb)];
        return [tf.tidy(() => {
          let y = tf.matMul(A, B, ta, tb);
          if (alpha !== 1) y = tf.mul(y, alpha);
          if (!C) return y;
          return tf.add(y, beta === 1 ? C : tf.mul(C, beta));
        })];
      };
    },
  },
  MatMulInteger: {
    types: () => [T.INT32],
    compile: ({ node }) => {
      checkAttrs(node, []);
      return ([a, b, az, bz]) => {
        const A = dev(need(a, node, 0)), B = dev(need(b, node, 1));
        return [tf.tidy(() => {
          // (A − a_zp)·(B − b_zp) in float32 (exact while the sums stay below 2^24)
          let af: tf.Tensor = tf.cast(A, "float32"), bf: tf.Tensor = tf.cast(B, "float32");
          if (az) af = tf.sub(af, zeroPoint(az, af.shape.length, "a"));
          if (bz) bf = tf.sub(bf, zeroPoint(bz, bf.shape.length, "b"));
          return tf.cast(tf.round(matmul(af, bf)), "int32");
        })];
      };
    },
  },
  DynamicQuantizeLinear: {
    types: () => [T.UINT8, T.FLOAT, T.UINT8],
    compile: ({ node }) => {
      checkAttrs(node, []);
      return ([x]) => {
        const t = dev(need(x, node, 0));
        return tf.tidy(() => {
          // scale = (max(0, max x) − min(0, min x)) / 255; zp = clamp(round(−min / scale))
          const lo = tf.minimum(tf.min(t), 0), hi = tf.maximum(tf.max(t), 0);
          const scale = tf.div(tf.sub(hi, lo), 255);
          const zp = tf.clipByValue(tf.round(tf.div(tf.neg(lo), scale)), 0, 255);
          const y = tf.clipByValue(tf.add(tf.round(tf.div(t, scale)), zp), 0, 255);
          return [tf.cast(y, "int32"), scale, tf.cast(zp, "int32")];
        });
      };
    },
  },

  // normalisation and softmax
  Softmax: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["axis"]);
      const axis = attrInt(node.attrs, "axis", -1);
      return ([x]) => [alongAxis(dev(need(x, node, 0)), axis, (t) => tf.softmax(t))];
    },
  },
  LogSoftmax: {
    types: sameAs0,
    compile: ({ node }) => {
      checkAttrs(node, ["axis"]);
      const axis = attrInt(node.attrs, "axis", -1);
      return ([x]) => [alongAxis(dev(need(x, node, 0)), axis, (t) => tf.logSoftmax(t))];
    },
  },
  LayerNormalization: {
    types: (inTypes) => [inTypes[0]!, T.FLOAT, T.FLOAT],
    compile: ({ node, used }) => {
      checkAttrs(node, ["axis", "epsilon", "stash_type"]);
      const axis = attrInt(node.attrs, "axis", -1);
      const eps = attrFloat(node.attrs, "epsilon", 1e-5);
      if (attrInt(node.attrs, "stash_type", 1) !== 1) {
        throw new UnsupportedGraphError(
          `LayerNormalization node ${node.name}: stash_type must be 1`,
        );
      }
      return ([x, w, b]) => {
        const t = dev(need(x, node, 0)), scale = dev(need(w, node, 1));
        const bias = b ? dev(b) : undefined;
        return layerNorm(t, scale, bias, axis, eps, used);
      };
    },
  },
};

function unitBegin(t: tf.Tensor, axis: number, at: number): number[] {
  return t.shape.map((_, i) => (i === axis ? at : 0));
}

function unitSize(t: tf.Tensor, axis: number): number[] {
  return t.shape.map((d, i) => (i === axis ? 1 : d));
}

/** A zero point (scalar, or per row/column of a 2-D operand) shaped to broadcast. */
function zeroPoint(z: Val, rank: number, side: "a" | "b"): tf.Tensor {
  const t = tf.cast(dev(z), "float32");
  if (t.shape.length === 0 || t.size === 1) return tf.reshape(t, []);
  // a: one per row of A ([M] → [M, 1]); b: one per column of B ([N] → [1, N])
  return side === "a"
    ? tf.reshape(t, [...t.shape, 1])
    : tf.reshape(t, [1, ...t.shape].slice(-rank));
}

/**
 * LayerNormalization over the axes from `axis` on: `Y`, and (when read) `Mean` and `InvStdDev`
 * with the normalised axes kept as 1.
 */
export function layerNorm(
  x: tf.Tensor,
  scale: tf.Tensor,
  bias: tf.Tensor | undefined,
  axis: number,
  eps: number,
  used: boolean[],
): (tf.Tensor | undefined)[] {
  return tf.tidy(() => {
    const r = x.shape.length, axes = range(normAxis(axis, r), r);
    const mean = tf.mean(x, axes, true);
    const xc = tf.sub(x, mean);
    const variance = tf.mean(tf.square(xc), axes, true);
    const inv = tf.rsqrt(tf.add(variance, eps));
    let y = tf.mul(tf.mul(xc, inv), scale);
    if (bias) y = tf.add(y, bias);
    return [y, used[1] ? mean : undefined, used[2] ? inv : undefined];
  }) as (tf.Tensor | undefined)[];
}

/** `zeros(shape)` with `updates` added at `indices` (repeated indices accumulate). */
export function scatterAdd(indices: tf.Tensor, updates: tf.Tensor, shape: number[]): tf.Tensor {
  const k = indices.shape[indices.shape.length - 1];
  if (k === 1 && shape.length >= 1) {
    // rows of a table (embedding gradients): one pass over the updates
    const n = prod(indices.shape.slice(0, -1));
    return tf.tidy(() =>
      tf.unsortedSegmentSum(
        tf.reshape(updates, [n, ...shape.slice(1)]),
        tf.reshape(indices, [n]),
        shape[0],
      )
    );
  }
  return tf.scatterND(indices, updates, shape);
}

/** ONNX GatherElements: `out[i…] = x[i… with index[i…] on axis]`, out shaped like `index`. */
function gatherElements(x: tf.Tensor, index: tf.Tensor, axis: number): tf.Tensor {
  const r = x.shape.length, a = normAxis(axis, r);
  if (index.shape.length !== r) {
    throw new Error(`GatherElements: index rank ${index.shape.length}, data rank ${r}`);
  }
  return tf.tidy(() => {
    // the data's other axes cut to the index's extent
    let d = x;
    if (index.shape.some((n, i) => i !== a && n !== x.shape[i])) {
      d = tf.slice(x, new Array(r).fill(0), x.shape.map((n, i) => (i === a ? n : index.shape[i])));
    }
    const dim = x.shape[a];
    const wrapped = tf.where(
      tf.less(index, tf.scalar(0, "int32")),
      tf.add(index, tf.scalar(dim, "int32")),
      index,
    );
    const perm = range(0, r).filter((i) => i !== a).concat([a]);
    const dl = a === r - 1 ? d : tf.transpose(d, perm);
    const il = a === r - 1 ? wrapped : tf.transpose(wrapped, perm);
    // flat positions row·dim + index into the data as one vector (tfjs-wasm's gather has no
    // working batch dims)
    const rows = prod(dl.shape.slice(0, -1)), k = il.shape[r - 1];
    const base = tf.mul(tf.range(0, rows, 1, "int32"), tf.scalar(dim, "int32"));
    const flat = tf.add(tf.reshape(base, [rows, 1]), tf.reshape(il, [rows, k]));
    const g = tf.gather(tf.reshape(dl, [-1]), tf.reshape(flat, [-1]), 0);
    const y = tf.reshape(g, il.shape);
    return a === r - 1 ? y : tf.transpose(y, inversePerm(perm));
  });
}
