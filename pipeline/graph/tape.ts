/**
 * Reverse-mode differentiation of ONNX graphs, symbolically: a {@link Tape} builds the forward
 * graph through a {@link GraphBuilder} and records, for every op, how to emit the ONNX nodes of its
 * vector–Jacobian product. {@link Tape.gradients} then appends the backward graph for a scalar
 * loss, so one ONNX model computes the loss and every parameter gradient, and ONNX Runtime runs it
 * like any inference graph (no training build, no `com.microsoft` gradient ops).
 *
 * Values carry a static shape whose dims are numbers or symbols (`"B"`, `"S"`, `"B*S"`): enough to
 * know which axes an operand was broadcast along (its gradient is summed over them) without
 * fixing the batch or sequence length. A value needs a gradient when it depends on a parameter;
 * constants (inputs, masks, teacher targets) never get backward nodes.
 *
 * Each op's backward is written from its derivative (names as in the math):
 * - `y = a + b`, `a − b`: `ā = ȳ`, `b̄ = ±ȳ`, each summed over its broadcast axes;
 * - `y = a·b`: `ā = ȳ·b`, `b̄ = ȳ·a`; `y = a / b`: `ā = ȳ / b`, `b̄ = −ȳ·y / b`;
 * - `y = x·Wᵀ + b` (Gemm): `x̄ = ȳ·W`, `W̄ = ȳᵀ·x`, `b̄ = Σ_rows ȳ`;
 * - `y = A·B` (MatMul, equal ranks): `Ā = ȳ·Bᵀ`, `B̄ = Aᵀ·ȳ`;
 * - `y = softmax(x)`: `x̄ = y ⊙ (ȳ − Σ ȳ⊙y)`; `y = log_softmax(x)`: `x̄ = ȳ − softmax(x)·Σ ȳ`;
 * - LayerNorm `y = x̂·w + b`, `x̂ = (x − μ)·r`: `x̄ = r·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))` with
 *   `ĝ = ȳ⊙w`, `w̄ = Σ ȳ⊙x̂`, `b̄ = Σ ȳ`;
 * - exact GELU: `x̄ = ȳ·(Φ(x) + x·φ(x))`; tanh: `x̄ = ȳ·(1 − y²)`; exp: `ȳ·y`; log: `ȳ / x`;
 *   sqrt: `ȳ / (2y)`;
 * - Gather of rows (embeddings): `W̄ = ScatterND(0, ids, ȳ, reduction = add)`;
 * - reshape/transpose/slice/where: the inverse data movement of `ȳ`.
 * @module
 */

import { type AttrValue, DataType, GraphBuilder } from "./ir.ts";

/** A dimension: a fixed size or a symbol (`"B"`, `"S"`, `"B*S"`). */
export type Dim = number | string;

/** A value of the graph: its name, static shape, element type and whether it needs a gradient. */
export interface Value {
  readonly name: string;
  readonly shape: readonly Dim[];
  /** Depends on a parameter (so a gradient flows to it). */
  readonly grad: boolean;
  /** ONNX element type (default FLOAT). */
  readonly type: number;
}

type Backward = (dy: string) => (string | null)[];

interface Entry {
  out: Value;
  inputs: Value[];
  backward: Backward;
}

/** An op or shape the differentiator cannot handle: a bug in the graph being built. */
export class GraphBuildError extends Error {
  constructor(message: string) {
    super(`onnx training graph: ${message}`);
    this.name = "GraphBuildError";
  }
}

const sameDim = (a: Dim, b: Dim) => a === b;

/** The broadcast shape of `a` and `b` (numpy rules; symbols broadcast only against 1 or themselves). */
export function broadcastShape(a: readonly Dim[], b: readonly Dim[]): Dim[] {
  const n = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1, db = b[b.length - n + i] ?? 1;
    if (sameDim(da, db) || db === 1) out.push(da);
    else if (da === 1) out.push(db);
    else throw new GraphBuildError(`shapes [${a}] and [${b}] do not broadcast`);
  }
  return out;
}

/** Records a differentiable ONNX graph. */
export class Tape {
  readonly g: GraphBuilder;
  private readonly entries: Entry[] = [];

  constructor(g = new GraphBuilder()) {
    this.g = g;
  }

  // --- leaves -----------------------------------------------------------------------------------

  /** A graph input that gets a gradient (a parameter). */
  param(name: string, shape: Dim[]): Value {
    this.g.input({ name, elemType: DataType.FLOAT, dims: shape });
    return { name, shape, grad: true, type: DataType.FLOAT };
  }

  /** A graph input without gradient (data, masks, targets). */
  input(name: string, shape: Dim[], type: number = DataType.FLOAT): Value {
    this.g.input({ name, elemType: type, dims: shape });
    return { name, shape, grad: false, type };
  }

  /** A float32 scalar constant. */
  scalar(v: number): Value {
    return { name: this.g.scalar("c", v), shape: [], grad: false, type: DataType.FLOAT };
  }

  /** Wrap an existing graph value (no gradient). */
  constant(name: string, shape: Dim[], type: number = DataType.FLOAT): Value {
    return { name, shape, grad: false, type };
  }

  /** Declare `v` a graph output under `name`. */
  output(v: Value, name: string): void {
    this.g.output(v.name, { name, elemType: v.type, dims: [...v.shape] });
  }

  // --- recording ----------------------------------------------------------------------------------

  private emit(
    op: string,
    inputs: Value[],
    shape: Dim[],
    backward: Backward,
    attrs: Record<string, AttrValue> = {},
    type: number = DataType.FLOAT,
  ): Value {
    const name = this.g.node(op, inputs.map((v) => v.name), attrs);
    return this.record(name, inputs, shape, backward, type);
  }

  private record(
    name: string,
    inputs: Value[],
    shape: Dim[],
    backward: Backward,
    type: number = DataType.FLOAT,
  ): Value {
    const out: Value = { name, shape, grad: inputs.some((v) => v.grad), type };
    if (out.grad) this.entries.push({ out, inputs, backward });
    return out;
  }

  /** A raw node on plain names (for backward code). */
  private n(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    return this.g.node(op, inputs, attrs);
  }

  private i64(values: number[]): string {
    return this.g.int64s("i64", values);
  }

  // GPU-friendly forms: ONNX Runtime's WebGPU provider has no kernel for Sum, LogSoftmax, OneHot
  // or ConstantOfShape, and places them on the CPU (a copy each way every step), so the graphs
  // say the same with ops it has (docs/gpu.md)

  /** `Σ list` as a balanced tree of `Add`s (not `Sum`). */
  addAll(list: string[]): string {
    let level = list;
    while (level.length > 1) {
      const next: string[] = [];
      for (let i = 0; i + 1 < level.length; i += 2) {
        next.push(this.n("Add", [level[i], level[i + 1]]));
      }
      if (level.length % 2 === 1) next.push(level[level.length - 1]);
      level = next;
    }
    return level[0];
  }

  /** Float32 zeros of `like`'s shape: `Expand(0, Shape(like))` (not `ConstantOfShape`). */
  private zerosLike(like: string): string {
    return this.n("Expand", [this.g.scalar("c", 0), this.n("Shape", [like])]);
  }

  /** Log-softmax over the last axis as `z − log Σ exp z`, `z = x − max x` (not `LogSoftmax`). */
  private logSoftmaxNode(x: string): string {
    const z = this.n("Sub", [x, this.n("ReduceMax", [x], { axes: [-1], keepdims: 1 })]);
    const lse = this.n("Log", [
      this.n("ReduceSum", [this.n("Exp", [z]), this.i64([-1])], { keepdims: 1 }),
    ]);
    return this.n("Sub", [z, lse]);
  }

  /**
   * Column sums of a 2-D `dy [n, k]` → `[k]`, as `ones[1, n] · dy` (a GEMV: ONNX Runtime's
   * ReduceSum over axis 0 was measured 20–40× slower on `[4096, 312]`).
   */
  private sumRows(dy: string): string {
    const n = this.n("Shape", [dy], { start: 0, end: 1 });
    const ones = this.n("Expand", [
      this.g.floats("one", [1], [1, 1]),
      this.n("Concat", [this.i64([1]), n], { axis: 0 }),
    ]);
    return this.n("Reshape", [this.n("MatMul", [ones, dy]), this.i64([-1])]);
  }

  /** Sum `dy` (of shape `out`) down to `shape` (undo broadcasting). */
  private reduceTo(dy: string, out: readonly Dim[], shape: readonly Dim[]): string {
    const lead = out.length - shape.length;
    const axes: number[] = [];
    for (let i = 0; i < out.length; i++) {
      const d = i < lead ? undefined : shape[i - lead];
      if (d === undefined || (d === 1 && out[i] !== 1)) axes.push(i);
    }
    if (axes.length === 0) return dy;
    let r = this.n("ReduceSum", [dy, this.i64(axes)], { keepdims: 1 });
    if (lead > 0) r = this.n("Squeeze", [r, this.i64(Array.from({ length: lead }, (_, i) => i))]);
    return r;
  }

  // --- elementwise --------------------------------------------------------------------------------

  /** `a + b` (broadcasting). */
  add(a: Value, b: Value): Value {
    const shape = broadcastShape(a.shape, b.shape);
    return this.emit("Add", [a, b], shape, (dy) => [
      a.grad ? this.reduceTo(dy, shape, a.shape) : null,
      b.grad ? this.reduceTo(dy, shape, b.shape) : null,
    ]);
  }

  /** `a − b` (broadcasting). */
  sub(a: Value, b: Value): Value {
    const shape = broadcastShape(a.shape, b.shape);
    return this.emit("Sub", [a, b], shape, (dy) => [
      a.grad ? this.reduceTo(dy, shape, a.shape) : null,
      b.grad ? this.reduceTo(this.n("Neg", [dy]), shape, b.shape) : null,
    ]);
  }

  /** `a ⊙ b` (broadcasting). */
  mul(a: Value, b: Value): Value {
    const shape = broadcastShape(a.shape, b.shape);
    return this.emit("Mul", [a, b], shape, (dy) => [
      a.grad ? this.reduceTo(this.n("Mul", [dy, b.name]), shape, a.shape) : null,
      b.grad ? this.reduceTo(this.n("Mul", [dy, a.name]), shape, b.shape) : null,
    ]);
  }

  /** `a / b` (broadcasting). */
  div(a: Value, b: Value): Value {
    const shape = broadcastShape(a.shape, b.shape);
    const y = this.emit("Div", [a, b], shape, (dy) => {
      const da = a.grad || b.grad ? this.n("Div", [dy, b.name]) : "";
      return [
        a.grad ? this.reduceTo(da, shape, a.shape) : null,
        b.grad ? this.reduceTo(this.n("Neg", [this.n("Mul", [da, y.name])]), shape, b.shape) : null,
      ];
    });
    return y;
  }

  /** `a · c` for a constant number. */
  scale(a: Value, c: number): Value {
    if (c === 1) return a;
    return this.mul(a, this.scalar(c));
  }

  /** `−a`. */
  neg(a: Value): Value {
    return this.emit("Neg", [a], [...a.shape], (dy) => [this.n("Neg", [dy])]);
  }

  /** `a²`. */
  square(a: Value): Value {
    return this.emit("Mul", [a, a], [...a.shape], (dy) => {
      const two = this.g.scalar("c", 2);
      return [this.n("Mul", [dy, this.n("Mul", [a.name, two])]), null];
    });
  }

  /** `exp(a)`. */
  exp(a: Value): Value {
    const y = this.emit("Exp", [a], [...a.shape], (dy) => [this.n("Mul", [dy, y.name])]);
    return y;
  }

  /** `log(a)`. */
  log(a: Value): Value {
    return this.emit("Log", [a], [...a.shape], (dy) => [this.n("Div", [dy, a.name])]);
  }

  /** `√a`. */
  sqrt(a: Value): Value {
    const y = this.emit("Sqrt", [a], [...a.shape], (dy) => {
      const half = this.g.scalar("c", 0.5);
      return [this.n("Div", [this.n("Mul", [dy, half]), y.name])];
    });
    return y;
  }

  /** `tanh(a)`. */
  tanh(a: Value): Value {
    const y = this.emit("Tanh", [a], [...a.shape], (dy) => {
      const one = this.g.scalar("c", 1);
      return [this.n("Mul", [dy, this.n("Sub", [one, this.n("Mul", [y.name, y.name])])])];
    });
    return y;
  }

  /** `max(a, 0)`. */
  relu(a: Value): Value {
    const y = this.emit("Relu", [a], [...a.shape], (dy) => {
      const zero = this.g.scalar("c", 0);
      return [this.n("Where", [this.n("Greater", [a.name, zero]), dy, zero])];
    });
    return y;
  }

  /** Exact GELU `x·½·(1 + erf(x/√2))`, as bert.ts computes it. */
  gelu(x: Value): Value {
    const g = this.g;
    const half = g.scalar("c", 0.5), one = g.scalar("c", 1), r2 = g.scalar("c", Math.SQRT1_2);
    const erf = this.n("Erf", [this.n("Mul", [x.name, r2])]);
    const y = this.n("Mul", [this.n("Mul", [x.name, half]), this.n("Add", [erf, one])]);
    return this.record(y, [x], [...x.shape], (dy) => {
      // Φ(x) + x·φ(x) = ½(1 + erf(x/√2)) + x·exp(−x²/2)/√(2π)
      const cdf = this.n("Mul", [this.n("Add", [erf, one]), half]);
      const nh = g.scalar("c", -0.5), invSqrt2Pi = g.scalar("c", 1 / Math.sqrt(2 * Math.PI));
      const pdf = this.n("Mul", [
        this.n("Exp", [this.n("Mul", [this.n("Mul", [x.name, x.name]), nh])]),
        invSqrt2Pi,
      ]);
      return [this.n("Mul", [dy, this.n("Add", [cdf, this.n("Mul", [x.name, pdf])])])];
    });
  }

  /** Tanh-approximated GELU (`gelu_new`): `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`. */
  geluTanh(x: Value): Value {
    const g = this.g;
    const half = g.scalar("c", 0.5), one = g.scalar("c", 1), k = g.scalar("c", 0.044715);
    const c = g.scalar("c", Math.sqrt(2 / Math.PI)), three = g.scalar("c", 3);
    const x2 = this.n("Mul", [x.name, x.name]);
    const inner = this.n("Mul", [
      this.n("Add", [x.name, this.n("Mul", [this.n("Mul", [x2, x.name]), k])]),
      c,
    ]);
    const t = this.n("Tanh", [inner]);
    const y = this.n("Mul", [this.n("Mul", [x.name, half]), this.n("Add", [t, one])]);
    return this.record(y, [x], [...x.shape], (dy) => {
      // d/dx = ½(1 + t) + ½x(1 − t²)·c(1 + 3k x²)
      const sech2 = this.n("Sub", [one, this.n("Mul", [t, t])]);
      const dinner = this.n("Mul", [
        c,
        this.n("Add", [one, this.n("Mul", [this.n("Mul", [x2, k]), three])]),
      ]);
      const d = this.n("Add", [
        this.n("Mul", [this.n("Add", [t, one]), half]),
        this.n("Mul", [this.n("Mul", [this.n("Mul", [x.name, half]), sech2]), dinner]),
      ]);
      return [this.n("Mul", [dy, d])];
    });
  }

  /**
   * `cond ? a : b` with a constant `cond` (computed from values, never differentiated): the
   * gradient of each branch is `ȳ` where it was chosen, 0 elsewhere.
   */
  where(cond: Value, a: Value, b: Value): Value {
    if (cond.grad) throw new GraphBuildError("where: the condition cannot depend on parameters");
    const shape = broadcastShape(broadcastShape(cond.shape, a.shape), b.shape);
    return this.emit("Where", [cond, a, b], shape, (dy) => {
      const zero = this.g.scalar("c", 0);
      return [
        null,
        a.grad ? this.reduceTo(this.n("Where", [cond.name, dy, zero]), shape, a.shape) : null,
        b.grad ? this.reduceTo(this.n("Where", [cond.name, zero, dy]), shape, b.shape) : null,
      ];
    });
  }

  /** A comparison (`Greater`, `GreaterOrEqual`, `Less`, `LessOrEqual`, `Equal`): a bool constant. */
  compare(op: "Greater" | "GreaterOrEqual" | "Less" | "LessOrEqual", a: Value, b: Value): Value {
    const shape = broadcastShape(a.shape, b.shape);
    return this.constant(this.n(op, [a.name, b.name]), shape, DataType.BOOL);
  }

  /** Element-type conversion of a constant. */
  cast(a: Value, to: number): Value {
    if (a.grad) throw new GraphBuildError("cast: only constants are cast");
    return this.constant(this.n("Cast", [a.name], { to }), [...a.shape], to);
  }

  /** Stop the gradient (the value is used as a constant). */
  detach(a: Value): Value {
    return this.constant(a.name, [...a.shape], a.type);
  }

  // --- reductions ---------------------------------------------------------------------------------

  /** Sum over `axes` (every axis when omitted). */
  sum(a: Value, axes?: number[], keepdims = false): Value {
    const rank = a.shape.length;
    const ax = (axes ?? a.shape.map((_, i) => i)).map((x) => (x < 0 ? x + rank : x));
    const shape = reducedShape(a.shape, ax, keepdims);
    const name = this.n("ReduceSum", [a.name, this.i64(ax)], { keepdims: keepdims ? 1 : 0 });
    return this.record(name, [a], shape, (dy) => {
      const kept = keepdims ? dy : this.n("Unsqueeze", [dy, this.i64(ax)]);
      return [this.n("Expand", [kept, this.n("Shape", [a.name])])];
    });
  }

  /** Mean over `axes` (every axis when omitted). */
  mean(a: Value, axes?: number[], keepdims = false): Value {
    const rank = a.shape.length;
    const ax = (axes ?? a.shape.map((_, i) => i)).map((x) => (x < 0 ? x + rank : x));
    const shape = reducedShape(a.shape, ax, keepdims);
    // opset 17: ReduceMean takes its axes as an attribute (ReduceSum as an input)
    const name = this.n("ReduceMean", [a.name], { axes: ax, keepdims: keepdims ? 1 : 0 });
    return this.record(name, [a], shape, (dy) => {
      const kept = keepdims ? dy : this.n("Unsqueeze", [dy, this.i64(ax)]);
      // 1/count from the runtime shape: count = size(a) / size(mean)
      const count = this.n("Div", [
        this.n("Cast", [this.n("Size", [a.name])], { to: DataType.FLOAT }),
        this.n("Cast", [this.n("Size", [kept])], { to: DataType.FLOAT }),
      ]);
      return [this.n("Expand", [this.n("Div", [kept, count]), this.n("Shape", [a.name])])];
    });
  }

  /** `max(a, c)` of a constant. */
  maxConst(a: Value, c: number): Value {
    if (a.grad) throw new GraphBuildError("maxConst: only constants");
    return this.constant(this.n("Max", [a.name, this.g.scalar("c", c)]), [...a.shape]);
  }

  // --- linear algebra -----------------------------------------------------------------------------

  /** `x·Wᵀ + b` for `x [n, in]`, `W [out, in]` (Hugging Face `Linear`), `b [out]` optional. */
  linear(x: Value, w: Value, b?: Value): Value {
    if (x.shape.length !== 2 || w.shape.length !== 2) {
      throw new GraphBuildError(
        `linear: want x [n, in] and W [out, in], got [${x.shape}], [${w.shape}]`,
      );
    }
    const shape = [x.shape[0], w.shape[0]];
    const ins = b ? [x, w, b] : [x, w];
    return this.emit("Gemm", ins, shape, (dy) => [
      x.grad ? this.n("MatMul", [dy, w.name]) : null,
      w.grad ? this.n("Gemm", [dy, x.name], { transA: 1 }) : null,
      ...(b ? [b.grad ? this.sumRows(dy) : null] : []),
    ], { transB: 1 });
  }

  /** `A·B` (or `A·Bᵀ` with `transB`) of equal ranks ≥ 2 (batched over the leading axes). */
  matmul(a: Value, b: Value, transB = false): Value {
    const r = a.shape.length;
    if (b.shape.length !== r || r < 2) {
      throw new GraphBuildError(`matmul: ranks differ ([${a.shape}], [${b.shape}])`);
    }
    const perm = [...Array(r).keys()];
    [perm[r - 1], perm[r - 2]] = [perm[r - 2], perm[r - 1]];
    const T = (v: string) => this.n("Transpose", [v], { perm });
    const bn = transB ? T(b.name) : b.name;
    const shape = [...a.shape.slice(0, -1), transB ? b.shape[r - 2] : b.shape[r - 1]];
    const name = this.n("MatMul", [a.name, bn]);
    return this.record(name, [a, b], shape, (dy) => [
      // ā = ȳ·B'ᵀ; B̄' = Aᵀ·ȳ (B̄ = its transpose when B' = Bᵀ)
      a.grad ? this.n("MatMul", [dy, T(bn)]) : null,
      b.grad
        ? (transB ? this.n("MatMul", [T(dy), a.name]) : this.n("MatMul", [T(a.name), dy]))
        : null,
    ]);
  }

  // --- normalisation and softmax ------------------------------------------------------------------

  /** LayerNorm over the last axis (biased variance), `w`, `b` `[H]`. */
  layerNorm(x: Value, w: Value, b: Value, eps: number): Value {
    const [y, mean, invStd] = this.g.nodeMulti("LayerNormalization", [x.name, w.name, b.name], 3, {
      axis: -1,
      epsilon: { f: eps },
    });
    const H = x.shape[x.shape.length - 1];
    return this.record(y, [x, w, b], [...x.shape], (dy) => {
      const xhat = this.n("Mul", [this.n("Sub", [x.name, mean]), invStd]);
      if (x.shape.length !== 2) throw new GraphBuildError("layerNorm: rows [n, H] only");
      const dw = w.grad ? this.sumRows(this.n("Mul", [dy, xhat])) : null;
      const db = b.grad ? this.sumRows(dy) : null;
      let dx: string | null = null;
      if (x.grad) {
        const gh = this.n("Mul", [dy, w.name]);
        const m1 = this.n("ReduceMean", [gh], { axes: [-1], keepdims: 1 });
        const m2 = this.n("ReduceMean", [this.n("Mul", [gh, xhat])], { axes: [-1], keepdims: 1 });
        dx = this.n("Mul", [
          this.n("Sub", [this.n("Sub", [gh, m1]), this.n("Mul", [xhat, m2])]),
          invStd,
        ]);
      }
      void H;
      return [dx, dw, db];
    });
  }

  /** Softmax over the last axis. */
  softmax(x: Value): Value {
    const y = this.emit("Softmax", [x], [...x.shape], (dy) => {
      const s = this.n("ReduceSum", [this.n("Mul", [dy, y.name]), this.i64([-1])], { keepdims: 1 });
      return [this.n("Mul", [y.name, this.n("Sub", [dy, s])])];
    }, { axis: -1 });
    return y;
  }

  /** Log-softmax over the last axis. */
  logSoftmax(x: Value): Value {
    const y = this.record(this.logSoftmaxNode(x.name), [x], [...x.shape], (dy) => {
      const s = this.n("ReduceSum", [dy, this.i64([-1])], { keepdims: 1 });
      return [this.n("Sub", [dy, this.n("Mul", [this.n("Exp", [y.name]), s])])];
    });
    return y;
  }

  // --- data movement ------------------------------------------------------------------------------

  /** Reshape to `dims` (ONNX semantics: 0 copies, −1 infers); `shape` is the static result. */
  reshape(a: Value, dims: number[], shape: Dim[]): Value {
    return this.emit(
      "Reshape",
      [a, this.constant(this.i64(dims), [dims.length], DataType.INT64)],
      shape,
      (dy) => [this.n("Reshape", [dy, this.n("Shape", [a.name])]), null],
      {},
      a.type,
    );
  }

  /** Reshape with a runtime shape value (a constant int64 tensor). */
  reshapeTo(a: Value, dims: Value, shape: Dim[]): Value {
    return this.emit(
      "Reshape",
      [a, dims],
      shape,
      (dy) => [
        this.n("Reshape", [dy, this.n("Shape", [a.name])]),
        null,
      ],
      {},
      a.type,
    );
  }

  /** Transpose by `perm`. */
  transpose(a: Value, perm: number[]): Value {
    const inv = perm.map((_, i) => perm.indexOf(i));
    return this.emit("Transpose", [a], perm.map((p) => a.shape[p]), (dy) => [
      this.n("Transpose", [dy], { perm: inv }),
    ], { perm });
  }

  /**
   * Rows `table[ids]` (`table [V, H]`, `ids` int64 or int32 of any shape) → `[...ids, H]`. The
   * gradient adds each row's `ȳ` into a zero table (repeated ids accumulate): `ScatterND` on
   * int64 ids, `ScatterElements` (whose indices may be int32) on int32 ids.
   */
  gather(table: Value, ids: Value): Value {
    const H = table.shape[table.shape.length - 1];
    return this.emit("Gather", [table, ids], [...ids.shape, H], (dy) => {
      if (!table.grad) return [null, null];
      const zeros = this.zerosLike(table.name);
      if (ids.type === DataType.INT32) {
        // rows [n, H] of ȳ, each added at column j of row ids[n]: indices ids broadcast over H
        const rows = this.n("Reshape", [
          dy,
          this.n("Concat", [this.i64([-1]), this.n("Shape", [table.name], { start: 1, end: 2 })], {
            axis: 0,
          }),
        ]);
        const idx = this.n("Expand", [
          this.n("Reshape", [ids.name, this.i64([-1, 1])]),
          this.n("Shape", [rows]),
        ]);
        return [this.n("ScatterElements", [zeros, idx, rows], { axis: 0, reduction: "add" }), null];
      }
      const idx = this.n("Unsqueeze", [ids.name, this.i64([-1])]);
      return [this.n("ScatterND", [zeros, idx, dy], { reduction: "add" }), null];
    }, { axis: 0 });
  }

  /**
   * The first `count` entries of `x` along `axis` (`count` an int64 `[1]` value, `dim` the
   * result's static size there). Backward: `ȳ` padded with zeros to `x`'s size.
   */
  sliceFirst(x: Value, axis: number, count: Value, dim: Dim): Value {
    const rank = x.shape.length;
    const shape = x.shape.map((d, i) => (i === axis ? dim : d));
    const name = this.n("Slice", [x.name, this.i64([0]), count.name, this.i64([axis])]);
    return this.record(name, [x, count], shape, (dy) => {
      // pads: zeros everywhere except the end of `axis`, which gets size(x, axis) − count
      const size = this.n("Shape", [x.name], { start: axis, end: axis + 1 });
      const rest = this.n("Sub", [size, count.name]);
      const parts = [this.i64(new Array(rank + axis).fill(0)), rest];
      if (rank - axis - 1 > 0) parts.push(this.i64(new Array(rank - axis - 1).fill(0)));
      return [this.n("Pad", [dy, this.n("Concat", parts, { axis: 0 })]), null];
    });
  }

  /** Average groups of `k` consecutive heads of `[B, h, S, T]` (see `matchHeads`). */
  headGroupMean(x: Value, k: number): Value {
    if (k === 1) return x;
    const [B, h, S, T] = x.shape;
    const g = typeof h === "number" ? h / k : `${h}/${k}`;
    // [B, h, S, T] → [B, h/k, k, S, T] (dims from the runtime shape), mean over the k axis
    const dims = this.n("Concat", [
      this.n("Shape", [x.name], { start: 0, end: 1 }),
      this.i64([-1, k]),
      this.n("Shape", [x.name], { start: 2, end: 4 }),
    ], { axis: 0 });
    const r = this.reshapeTo(x, this.constant(dims, [5], DataType.INT64), [B, g, k, S, T]);
    return this.mean(r, [2]);
  }

  // --- losses with fused gradients ----------------------------------------------------------------

  /**
   * Mean cross-entropy of `logits [n, C]` on integer (int64 or int32) `labels [n]` over the rows whose label is not
   * `ignore` (the mean over 0 rows is 0). Backward: `(softmax − onehot)·ȳ / count` on kept rows.
   */
  crossEntropy(logits: Value, labels: Value, ignore = -100): Value {
    const g = this.g;
    const C = logits.shape[1];
    const int32 = labels.type === DataType.INT32;
    const ints = (hint: string, v: number[], dims?: number[]) =>
      int32 ? g.int32s(hint, v, dims) : g.int64s(hint, v, dims);
    const ign = ints("ignore", [ignore], []);
    const keep = this.n("Not", [this.n("Equal", [labels.name, ign])]);
    const safe = this.n("Where", [keep, labels.name, ints("zero", [0], [])]);
    const keepF = this.n("Cast", [keep], { to: DataType.FLOAT });
    const count = this.n("Max", [
      this.n("ReduceSum", [keepF, this.i64([0])], { keepdims: 0 }),
      g.scalar("c", 1),
    ]);
    const logp = this.logSoftmaxNode(logits.name);
    const picked = this.n("Squeeze", [
      this.n("GatherElements", [logp, this.n("Unsqueeze", [safe, this.i64([1])])], { axis: 1 }),
      this.i64([1]),
    ]);
    const total = this.n("ReduceSum", [this.n("Mul", [picked, keepF]), this.i64([0])], {
      keepdims: 0,
    });
    const loss = this.n("Neg", [this.n("Div", [total, count])]);
    return this.record(loss, [logits, labels], [], (dy) => {
      // one-hot rows as `Equal(label, iota)` (not `OneHot`); iota 0..C−1 from the logits' width
      const width = this.n("Squeeze", [this.n("Shape", [logits.name], { start: 1, end: 2 })]);
      const iota = typeof C === "number"
        ? ints("iota", Array.from({ length: C }, (_, i) => i), [1, C])
        : this.n("Unsqueeze", [
          this.n("Range", [
            ints("zero", [0], []),
            int32 ? this.n("Cast", [width], { to: DataType.INT32 }) : width,
            ints("one", [1], []),
          ]),
          this.i64([0]),
        ]);
      const onehot = this.n("Cast", [
        this.n("Equal", [this.n("Unsqueeze", [safe, this.i64([1])]), iota]),
      ], { to: DataType.FLOAT });
      const p = this.n("Exp", [logp]);
      const w = this.n("Div", [this.n("Mul", [keepF, dy]), count]);
      return [
        this.n("Mul", [this.n("Sub", [p, onehot]), this.n("Unsqueeze", [w, this.i64([1])])]),
        null,
      ];
    });
  }

  // --- backward -----------------------------------------------------------------------------------

  /**
   * Append the backward graph of the scalar `loss` and return the gradient value of each of
   * `wrt`. Parameters the loss does not depend on get zeros of their shape, or, with
   * `onlyReached`, no entry (as `grad is None` in PyTorch).
   */
  gradients(loss: Value, wrt: Value[], onlyReached = false): Map<string, string> {
    if (loss.shape.length !== 0) {
      throw new GraphBuildError(`gradients: loss must be a scalar, got [${loss.shape}]`);
    }
    const pending = new Map<string, string[]>();
    const push = (name: string, g: string) => {
      const list = pending.get(name);
      if (list) list.push(g);
      else pending.set(name, [g]);
    };
    const total = (name: string): string | null => {
      const list = pending.get(name);
      if (!list) return null;
      const s = this.addAll(list);
      pending.set(name, [s]);
      return s;
    };
    push(loss.name, this.g.scalar("c", 1));
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      const dy = total(e.out.name);
      if (dy === null) continue;
      const grads = e.backward(dy);
      e.inputs.forEach((inp, k) => {
        const gk = grads[k];
        if (inp.grad && gk) push(inp.name, gk);
      });
    }
    const out = new Map<string, string>();
    for (const p of wrt) {
      const g = total(p.name);
      if (g) out.set(p.name, g);
      else if (!onlyReached) {
        out.set(p.name, this.zerosLike(p.name));
      }
    }
    return out;
  }
}

function reducedShape(shape: readonly Dim[], axes: number[], keepdims: boolean): Dim[] {
  const out: Dim[] = [];
  shape.forEach((d, i) => {
    if (!axes.includes(i)) out.push(d);
    else if (keepdims) out.push(1);
  });
  return out;
}
