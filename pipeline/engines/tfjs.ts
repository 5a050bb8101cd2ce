/**
 * The tfjs executor: runs a tinystill {@link Graph} (a gradient graph of `buildGradGraph`, the
 * AdamW update graph, an inference export) by interpreting its nodes with tfjs kernels, on the
 * backend `pipeline/tfjs/backend.ts` prepares (wasm by default, cpu, webgpu, tensorflow).
 *
 * ```ts
 * const session = await tfjsExecutor("wasm").open(grad.graph, grad.model);
 * const { loss } = await session.run(feeds, ["loss"]);
 * await session.close();
 * ```
 *
 * Opening a session compiles the graph once: every op resolved to a kernel with its attributes
 * (an unsupported op or attribute fails here, naming it), constant subgraphs folded, and — per
 * set of fetched outputs — a plan: the nodes those outputs need, each value's last reader (a
 * device tensor is disposed right after it; only fetched outputs survive a run), and peepholes
 * (a MatMul reads a last-two-axes `Transpose` of its operand as a transposed operand; a
 * `ScatterND` add into `ConstantOfShape` zeros scatters into a fresh table).
 *
 * Values are either device tensors or {@link HostValue}s: shapes, sizes, int64 constants and the
 * arithmetic on them (`Shape → Concat → Reshape`) never reach the backend. Host values depend only
 * on the shapes of the feeds, so they are computed on the first run with a given set of input
 * shapes and reused (with their device copies) by every later run with the same shapes.
 *
 * tfjs has no int64: int64 feeds (ids, labels, positions) become int32 tensors and int64 outputs
 * are widened back. Float16 values are float32 tensors holding half-precision values.
 * @module
 */

import { type BackendName, readView, setBackend, tf } from "./tfjs_backend.ts";
import type { Graph, Initializer, Node } from "../graph/ir.ts";
import type { Executor, GraphSession, HostTensor, OpenOptions, TensorData } from "./executor.ts";
import {
  broadcastDims,
  dev,
  floatToHalf,
  halfToFloat,
  HostValue,
  type Kernel,
  matmul,
  numbers,
  OPS,
  scatterAdd,
  T,
  tfDtype,
  typeName,
  UnsupportedGraphError,
  type Val,
} from "./tfjs_ops.ts";

export { HostValue, UnsupportedGraphError } from "./tfjs_ops.ts";

/** Options of a tfjs session (beyond {@link OpenOptions}). */
export interface TfjsOpenOptions extends OpenOptions {
  /**
   * Record per-op time and the peak of `tf.memory().numBytes` of each run in
   * {@link TfjsSession.profile} (costs a clock read and a memory query per node).
   */
  profile?: boolean;
}

/** What a profiled run measured. */
export interface RunProfile {
  /** Milliseconds per op type (host and device), summed over the run's nodes. */
  opMs: Record<string, number>;
  /** Peak bytes of live tensors during the run (`tf.memory().numBytes`). */
  peakBytes: number;
  /** Nodes run on the device and on the host (0 host nodes: shapes were cached). */
  deviceNodes: number;
  hostNodes: number;
  /** Milliseconds spent uploading the feeds, running the nodes, reading the outputs back. */
  feedMs: number;
  nodesMs: number;
  readMs: number;
}

/**
 * The tfjs executor on `backend` (default `wasm`; `auto` picks as {@link setBackend} does; an
 * unknown or unavailable name fails when a session is opened). tfjs keeps one backend per
 * process: opening a session, and running one, selects this executor's backend. `threads` is
 * ignored (tfjs-wasm runs one thread under Deno; see `pipeline/tfjs/backend.ts`).
 */
export function tfjsExecutor(backend: BackendName | string = "wasm"): Executor {
  let used: string | undefined;
  return {
    /** `tfjs/<backend>`: the backend in use once a session is open (`auto` resolved). */
    get name() {
      return `tfjs/${used ?? backend}`;
    },
    async open(graph: Graph, _model: Uint8Array, opts: OpenOptions = {}): Promise<GraphSession> {
      const b = await setBackend(backend as BackendName);
      used = b;
      return new TfjsSession(graph, b, opts as TfjsOpenOptions);
    },
  };
}

/** One compiled step of a plan. */
interface Step {
  node: Node;
  kernel: Kernel;
  /** Runs on the host (skipped once its shapes are cached). */
  host: boolean;
  inputs: number[];
  outputs: number[];
  /** Value slots whose last reader this step is (disposed after it). */
  free: number[];
}

/** The nodes one set of fetched outputs needs, with lifetimes. */
interface Plan {
  steps: Step[];
  /** Graph input slots the plan reads (fed), in graph order. */
  feeds: number[];
  fetch: string[];
  fetchSlots: number[];
  /** Slots of host values computed by the plan's host steps. */
  hostSlots: number[];
  /** Host values per signature of feed shapes (most recently used last). */
  hostCache: Map<string, HostValue[]>;
}

const HOST_CACHE_SIZE = 16;
/** Initializers with at most this many elements are host values. */
const HOST_INIT_MAX = 64;
/** Ops whose folded result could be far larger than their inputs: never folded at open. */
const NO_FOLD = new Set(["ConstantOfShape", "Expand", "OneHot", "Tile"]);

/** A session of the {@link tfjsExecutor}: the compiled graph and its constants. */
export class TfjsSession implements GraphSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** The profile of the last run (with `profile: true`). */
  profile: RunProfile | undefined;

  readonly #graph: Graph;
  readonly #backend: string;
  readonly #what: string;
  readonly #profile: boolean;
  readonly #slot = new Map<string, number>();
  readonly #types: number[] = [];
  /** Constants (initializers, folded nodes): live for the whole session. */
  readonly #consts: (Val | undefined)[] = [];
  readonly #isConst: boolean[] = [];
  /** Static: the value is a host value at run time. */
  readonly #isHost: boolean[] = [];
  readonly #producer: (number | undefined)[] = [];
  /** Node index → its kernel (undefined: folded at open). */
  readonly #kernels: (Kernel | undefined)[] = [];
  readonly #plans = new Map<string, Plan>();
  readonly #inputSlots: number[];
  #closed = false;

  constructor(graph: Graph, backend: string, opts: TfjsOpenOptions = {}) {
    this.#graph = graph;
    this.#backend = tf.getBackend() ?? backend;
    this.#what = opts.what ?? "the graph";
    this.#profile = opts.profile ?? false;
    this.inputNames = graph.inputs.map((i) => i.name);
    this.outputNames = graph.outputs.map((o) => o.name);
    this.#inputSlots = graph.inputs.map((i) => this.#slotOf(i.name));
    try {
      this.#compile();
    } catch (e) {
      this.#release();
      throw e;
    }
  }

  #slotOf(name: string): number {
    let s = this.#slot.get(name);
    if (s === undefined) {
      s = this.#slot.size;
      this.#slot.set(name, s);
    }
    return s;
  }

  /** Types, host/device split, kernels and constant folding. */
  #compile(): void {
    const g = this.#graph;
    // what the executor cannot run, all at once
    const missing = new Map<string, number>();
    for (const n of g.nodes) {
      const key = n.domain ? `${n.domain}.${n.op}` : n.op;
      if ((n.domain && n.domain !== "ai.onnx") || !OPS[n.op]) {
        missing.set(key, (missing.get(key) ?? 0) + 1);
      }
    }
    if (missing.size > 0) {
      const list = [...missing].map(([op, k]) => `${op} (${k}×)`).join(", ");
      throw new UnsupportedGraphError(
        `${this.#what} uses ops it cannot run: ${list}. Supported: ${Object.keys(OPS).join(", ")}`,
      );
    }
    for (const inp of g.inputs) {
      const s = this.#slotOf(inp.name);
      this.#types[s] = inp.elemType;
      try {
        tfDtype(inp.elemType);
      } catch {
        throw new UnsupportedGraphError(
          `${this.#what}: input ${inp.name} has element type ${typeName(inp.elemType)}`,
        );
      }
    }
    for (const init of g.initializers) {
      const s = this.#slotOf(init.name);
      this.#types[s] = init.dataType;
      this.#isConst[s] = true;
      const v = decodeInitializer(init);
      this.#isHost[s] = v instanceof HostValue;
      this.#consts[s] = v;
    }
    // which outputs anything reads
    const readers = new Map<string, number>();
    for (const n of g.nodes) for (const i of n.inputs) if (i) readers.set(i, 1);
    for (const o of g.outputs) readers.set(o.name, 1);

    g.nodes.forEach((node, k) => {
      const def = OPS[node.op];
      const inSlots = node.inputs.map((i) => (i ? this.#slotOf(i) : -1));
      const inTypes = inSlots.map((s) => (s < 0 ? undefined : this.#types[s]));
      inSlots.forEach((s, i) => {
        if (s >= 0 && this.#types[s] === undefined) {
          throw new UnsupportedGraphError(
            `${this.#what}: node ${node.name} (${node.op}) reads ${node.inputs[i]}, which no ` +
              `earlier node, input or initializer defines`,
          );
        }
      });
      let outTypes: number[];
      try {
        outTypes = def.types(inTypes, node.attrs);
        outTypes.forEach((t) => tfDtype(t));
      } catch (e) {
        throw this.#nodeError(node, e);
      }
      const outSlots = node.outputs.map((o) => (o ? this.#slotOf(o) : -1));
      outSlots.forEach((s, i) => {
        if (s < 0) return;
        this.#types[s] = outTypes[i] ?? outTypes[0];
        this.#producer[s] = k;
      });
      const present = inSlots.filter((s) => s >= 0);
      const host = def.shapeOnly === true ||
        (def.host !== undefined && present.length > 0 && present.every((s) => this.#isHost[s]));
      for (const s of outSlots) if (s >= 0) this.#isHost[s] = host;
      if (!host) {
        try {
          this.#kernels[k] = def.compile({
            node,
            inTypes,
            used: node.outputs.map((o) => o !== "" && readers.has(o)),
            backend: this.#backend,
          });
        } catch (e) {
          throw this.#nodeError(node, e);
        }
      } else {
        this.#kernels[k] = (ins) => def.host!(ins, node.attrs, node);
      }
      // constant folding: every input a constant
      const foldable = !NO_FOLD.has(node.op) && !def.shapeOnly && present.length > 0 &&
        present.every((s) => this.#isConst[s]);
      if (foldable) {
        let outs: (Val | undefined)[];
        try {
          outs = this.#kernels[k]!(inSlots.map((s) => (s < 0 ? undefined : this.#consts[s])));
        } catch (e) {
          throw this.#nodeError(node, e);
        }
        outSlots.forEach((s, i) => {
          if (s < 0) return;
          let v = outs[i];
          if (v instanceof tf.Tensor) v = tf.keep(v);
          this.#consts[s] = v;
          this.#isConst[s] = true;
          this.#isHost[s] = v instanceof HostValue;
        });
        this.#kernels[k] = undefined;
      }
    });
    for (const o of g.outputs) {
      if (!this.#slot.has(o.name) || this.#types[this.#slot.get(o.name)!] === undefined) {
        throw new UnsupportedGraphError(`${this.#what}: output ${o.name} is never computed`);
      }
    }
    // constants nothing reads any more (folded into others) are freed
    const needed = new Set<number>();
    g.nodes.forEach((n, k) => {
      if (this.#kernels[k]) { for (const i of n.inputs) if (i) needed.add(this.#slot.get(i)!); }
    });
    for (const o of g.outputs) needed.add(this.#slot.get(o.name)!);
    this.#consts.forEach((v, s) => {
      if (v && !needed.has(s)) {
        disposeVal(v);
        this.#consts[s] = undefined;
      }
    });
  }

  #nodeError(node: Node, e: unknown): Error {
    if (e instanceof UnsupportedGraphError) return e;
    const msg = e instanceof Error ? e.message : String(e);
    return new UnsupportedGraphError(
      `${this.#what}: node ${node.name} (${node.op}, outputs ${node.outputs.join(", ")}): ${msg}`,
    );
  }

  /** The plan of a set of fetched outputs (compiled on first use). */
  #plan(fetch: readonly string[]): Plan {
    const key = fetch.join("\u0000");
    let plan = this.#plans.get(key);
    if (plan) return plan;
    const g = this.#graph;
    const fetchSlots = fetch.map((name) => {
      const s = this.#slot.get(name);
      if (s === undefined || !this.outputNames.includes(name)) {
        throw new Error(
          `tfjs executor: ${this.#what} has no output '${name}' (outputs: ${
            this.outputNames.join(", ")
          })`,
        );
      }
      return s;
    });
    // steps with peepholes
    const steps: Step[] = [];
    g.nodes.forEach((node, k) => {
      const kernel = this.#kernels[k];
      if (!kernel) return;
      const inputs = node.inputs.map((i) => (i ? this.#slot.get(i)! : -1));
      const outputs = node.outputs.map((o) => (o ? this.#slot.get(o)! : -1));
      const host = this.#isHost[outputs[0]];
      steps.push({ node, kernel, host, inputs, outputs, free: [] });
      if (!host) this.#peephole(steps[steps.length - 1]);
    });
    // the steps the fetched outputs need
    const need = new Set<number>(fetchSlots);
    const keep: boolean[] = new Array(steps.length).fill(false);
    for (let i = steps.length - 1; i >= 0; i--) {
      const s = steps[i];
      if (!s.outputs.some((o) => o >= 0 && need.has(o))) continue;
      keep[i] = true;
      for (const x of s.inputs) if (x >= 0) need.add(x);
    }
    const live = steps.filter((_, i) => keep[i]);
    // lifetimes: each non-constant value is freed after its last reader (or at once if unread)
    const fetched = new Set(fetchSlots);
    const last = new Map<number, number>();
    live.forEach((s, i) => {
      for (const x of s.inputs) if (x >= 0 && !this.#isConst[x]) last.set(x, i);
    });
    live.forEach((s, i) => {
      for (const o of s.outputs) if (o >= 0 && !last.has(o)) last.set(o, i);
    });
    // (host values are kept: they belong to the per-shape cache)
    for (const [slot, i] of last) {
      if (!fetched.has(slot) && !this.#isHost[slot]) live[i].free.push(slot);
    }
    const feeds = this.#inputSlots.filter((s) => need.has(s));
    const hostSlots = live.filter((s) => s.host).flatMap((s) => s.outputs.filter((o) => o >= 0));
    plan = { steps: live, feeds, fetch: [...fetch], fetchSlots, hostSlots, hostCache: new Map() };
    this.#plans.set(key, plan);
    return plan;
  }

  /**
   * MatMul: an operand produced by a Transpose of its last two axes is read untransposed with the
   * transpose flag (chains cancel); ScatterND add into zeros (Expand(0) or ConstantOfShape): scatter into zeros.
   */
  #peephole(step: Step): void {
    const g = this.#graph;
    const producerNode = (slot: number) => {
      const k = slot >= 0 && !this.#isConst[slot] ? this.#producer[slot] : undefined;
      return k === undefined || !this.#kernels[k] ? undefined : g.nodes[k];
    };
    if (step.node.op === "MatMul") {
      // ones[1, n]·B (column sums, as the autodiff writes bias gradients): a sum, not a GEMV
      // (XNNPACK would repack B as weights on every call)
      const e = producerNode(step.inputs[0]);
      const c = e?.op === "Expand" ? this.#consts[this.#slot.get(e.inputs[0])!] : undefined;
      if (c instanceof HostValue && c.data.length === 1 && c.dims.length <= 2) {
        const value = c.data[0];
        step.inputs = [this.#slot.get(e!.inputs[1])!, step.inputs[1]];
        step.kernel = ([shape, b]) => [scaledColumnSum(value, c, numbers(shape!), dev(b!))];
        return;
      }
      const flags = [false, false];
      const ins = step.inputs.slice(0, 2);
      for (let i = 0; i < 2; i++) {
        for (;;) {
          const p = producerNode(ins[i]);
          if (!p || p.op !== "Transpose" || !swapsLastTwo(p.attrs.perm)) break;
          ins[i] = this.#slot.get(p.inputs[0])!;
          flags[i] = !flags[i];
        }
      }
      if (ins[0] !== step.inputs[0] || ins[1] !== step.inputs[1]) {
        const [ta, tb] = flags;
        step.inputs = ins;
        step.kernel = ([a, b]) => [matmulOf(a!, b!, ta, tb)];
      }
    } else if (step.node.op === "ScatterND" && step.node.attrs.reduction === "add") {
      const p = producerNode(step.inputs[0]);
      // zeros as the tape writes them: Expand(0, shape) (ConstantOfShape() from older graphs)
      const c = p?.op === "Expand" ? this.#consts[this.#slot.get(p.inputs[0])!] : undefined;
      const zeros = (p && p.op === "ConstantOfShape" && Object.keys(p.attrs).length === 0) ||
        (c instanceof HostValue && c.data.length === 1 && c.data[0] === 0);
      if (p && zeros) {
        const shapeSlot = this.#slot.get(p.inputs[p.op === "Expand" ? 1 : 0])!;
        step.inputs = [shapeSlot, step.inputs[1], step.inputs[2]];
        step.kernel = ([shape, idx, upd]) => [
          scatterAdd(dev(idx!), dev(upd!), numbers(shape!)),
        ];
      }
    }
  }

  /** Run the graph; see {@link GraphSession.run}. */
  async run(
    feeds: Record<string, HostTensor>,
    fetch: readonly string[] = this.outputNames,
    into: Record<string, Float32Array> = {},
  ): Promise<Record<string, HostTensor>> {
    if (this.#closed) throw new Error("tfjs executor: the session is closed");
    if (tf.getBackend() !== this.#backend) await tf.setBackend(this.#backend);
    const plan = this.#plan(fetch);
    const g = this.#graph;
    const tRun = performance.now();
    const vals: (Val | undefined)[] = this.#consts.slice();
    // feeds: checked, then uploaded (int64 as int32)
    const dimsKey: string[] = [];
    for (const s of plan.feeds) {
      const info = g.inputs[this.#inputSlots.indexOf(s)];
      const t = feeds[info.name];
      if (!t) {
        disposeLive(vals, this.#isConst);
        throw new Error(`tfjs executor: ${this.#what} needs input '${info.name}'`);
      }
      checkFeed(info.name, info.dims, t);
      dimsKey.push(t.dims.join("x"));
    }
    for (const s of plan.feeds) {
      const info = g.inputs[this.#inputSlots.indexOf(s)];
      vals[s] = upload(info.name, feeds[info.name], info.elemType);
    }
    const sig = dimsKey.join(",");
    const cached = plan.hostCache.get(sig);
    if (cached) {
      plan.hostCache.delete(sig); // most recently used last
      plan.hostCache.set(sig, cached);
      plan.hostSlots.forEach((s, i) => (vals[s] = cached[i]));
    }
    const warm = cached !== undefined;
    const tNodes = performance.now();
    const prof: RunProfile | undefined = this.#profile
      ? {
        opMs: {},
        peakBytes: tf.memory().numBytes,
        deviceNodes: 0,
        hostNodes: 0,
        feedMs: tNodes - tRun,
        nodesMs: 0,
        readMs: 0,
      }
      : undefined;
    for (const step of plan.steps) {
      if (!(warm && step.host)) {
        const ins = step.inputs.map((s) => (s < 0 ? undefined : vals[s]));
        const t0 = prof ? performance.now() : 0;
        let outs: (Val | undefined)[];
        try {
          outs = step.kernel(ins);
        } catch (e) {
          disposeLive(vals, this.#isConst);
          // host values of a first run with these shapes are not cached: free their copies
          if (!warm) {
            for (const s of plan.hostSlots) (vals[s] as HostValue | undefined)?.release();
          }
          const msg = e instanceof Error ? e.message : String(e);
          const shapes = ins.map((
            v,
          ) => (v ? `[${v instanceof HostValue ? v.dims : v.shape}]` : "-"));
          throw new Error(
            `tfjs executor: ${this.#what}: node ${step.node.name} (${step.node.op}) on inputs ` +
              `${shapes.join(", ")} failed: ${msg}`,
            { cause: e },
          );
        }
        step.outputs.forEach((o, i) => {
          if (o < 0) return;
          let v = outs[i];
          // a kernel never hands back an input (its buffer would be freed twice)
          if (v instanceof tf.Tensor && ins.some((x) => x === v || (x as HostValue)?.dev === v)) {
            v = tf.clone(v);
          }
          vals[o] = v;
        });
        if (prof) {
          if (step.host) prof.hostNodes++;
          else prof.deviceNodes++;
          const op = step.node.op + (step.host ? " (host)" : "");
          prof.opMs[op] = (prof.opMs[op] ?? 0) + performance.now() - t0;
          prof.peakBytes = Math.max(prof.peakBytes, tf.memory().numBytes);
        }
      }
      for (const s of step.free) {
        const v = vals[s];
        if (v instanceof tf.Tensor) v.dispose();
        vals[s] = undefined;
      }
    }
    if (!warm) {
      plan.hostCache.set(sig, plan.hostSlots.map((s) => vals[s] as HostValue));
      if (plan.hostCache.size > HOST_CACHE_SIZE) {
        const [oldest, values] = plan.hostCache.entries().next().value!;
        plan.hostCache.delete(oldest);
        for (const v of values) v.release();
      }
    }
    // outputs to the host
    const tRead = performance.now();
    if (prof) prof.nodesMs = tRead - tNodes;
    const out: Record<string, HostTensor> = {};
    try {
      for (let i = 0; i < plan.fetch.length; i++) {
        const name = plan.fetch[i], s = plan.fetchSlots[i];
        out[name] = await this.#read(vals[s]!, this.#types[s], into[name], name);
      }
    } finally {
      for (const s of plan.fetchSlots) {
        const v = vals[s];
        if (v instanceof tf.Tensor && !this.#isConst[s]) v.dispose();
        vals[s] = undefined;
      }
      disposeLive(vals, this.#isConst);
    }
    if (prof) {
      prof.readMs = performance.now() - tRead;
      this.profile = prof;
    }
    return out;
  }

  async #read(
    v: Val,
    type: number,
    into: Float32Array | undefined,
    name: string,
  ): Promise<HostTensor> {
    const dims = v instanceof HostValue ? v.dims.slice() : v.shape.slice();
    let src: ArrayLike<number>;
    if (v instanceof HostValue) src = v.data;
    else if (into && this.#backend === "wasm" && v.dtype === "float32") {
      src = readView(v); // a view of the wasm heap: copied once, into `into`
    } else if (
      this.#backend === "wasm" || this.#backend === "cpu" || this.#backend === "tensorflow"
    ) {
      src = v.dataSync() as ArrayLike<number>;
    } else src = (await v.data()) as ArrayLike<number>;
    const n = src.length;
    if (into) {
      if (type !== T.FLOAT) {
        throw new Error(`tfjs executor: output ${name} is ${typeName(type)}, not float`);
      }
      if (into.length !== n) {
        throw new Error(
          `tfjs executor: output ${name} has ${n} values, 'into' holds ${into.length}`,
        );
      }
      into.set(src);
      return { data: into, dims };
    }
    let data: TensorData;
    switch (type) {
      case T.FLOAT:
      case T.DOUBLE:
        // cpu hands out its own storage: copy (wasm's dataSync is already a copy)
        data = src instanceof Float32Array && this.#backend === "wasm" && !(v instanceof HostValue)
          ? src
          : Float32Array.from(src);
        break;
      case T.FLOAT16:
        data = Uint16Array.from(src, floatToHalf);
        break;
      case T.INT64:
        data = BigInt64Array.from(src, (x) => BigInt(x));
        break;
      case T.BOOL:
      case T.UINT8:
        data = Uint8Array.from(src);
        break;
      default:
        data = Int32Array.from(src);
    }
    return { data, dims };
  }

  #release(): void {
    for (const v of this.#consts) if (v) disposeVal(v);
    this.#consts.length = 0;
    for (const p of this.#plans.values()) {
      for (const vs of p.hostCache.values()) for (const v of vs) v.release();
    }
    this.#plans.clear();
  }

  /** Free the constants and cached host values. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#release();
    }
    return Promise.resolve();
  }
}

function swapsLastTwo(perm: unknown): boolean {
  if (!Array.isArray(perm) || perm.length < 2) return false;
  const r = perm.length;
  return perm.every((p, i) => (i < r - 2 ? p === i : i === r - 2 ? p === r - 1 : p === r - 2));
}

/** `fill(value, broadcast(c, shape))·b`: `value·Σ_rows b` when that fill is one row. */
function scaledColumnSum(value: number, c: HostValue, shape: number[], b: tf.Tensor): tf.Tensor {
  const dims = broadcastDims(c.dims, shape);
  if (dims.length !== 2 || dims[0] !== 1 || b.shape.length !== 2) {
    return tf.tidy(() => matmul(tf.fill(dims, value, "float32"), b));
  }
  if (dims[1] !== b.shape[0]) {
    throw new Error(`MatMul: inner dims of [${dims}] and [${b.shape}] differ`);
  }
  if (value === 1) return tf.sum(b, 0, true);
  return tf.tidy(() => tf.mul(tf.sum(b, 0, true), value));
}

function matmulOf(a: Val, b: Val, ta: boolean, tb: boolean): tf.Tensor {
  return matmul(dev(a), dev(b), ta, tb);
}

function disposeVal(v: Val): void {
  if (v instanceof HostValue) v.release();
  else v.dispose();
}

/** Dispose every non-constant tensor left in `vals` (after a failure, or leftovers). */
function disposeLive(vals: (Val | undefined)[], isConst: boolean[]): void {
  vals.forEach((v, s) => {
    if (v instanceof tf.Tensor && !isConst[s] && !v.isDisposed) v.dispose();
  });
}

/** An initializer: a host value when small, else a device tensor (int64 → int32). */
function decodeInitializer(init: Initializer): Val {
  const n = init.dims.reduce((a, b) => a * b, 1);
  const raw = init.raw.slice(); // aligned copy
  const buf = raw.buffer;
  let values: Float32Array | Int32Array | Uint8Array;
  switch (init.dataType) {
    case T.FLOAT:
      values = new Float32Array(buf, 0, n);
      break;
    case T.FLOAT16: {
      const bits = new Uint16Array(buf, 0, n);
      values = Float32Array.from(bits, halfToFloat);
      break;
    }
    case T.DOUBLE:
      values = Float32Array.from(new Float64Array(buf, 0, n));
      break;
    case T.INT64: {
      const big = new BigInt64Array(buf, 0, n);
      values = Int32Array.from(big, (x) => {
        if (x > 2147483647n || x < -2147483648n) {
          // shape sentinels (INT64_MAX ends of a Slice) stay exact on the host
          return x > 0n ? 2147483647 : -2147483648;
        }
        return Number(x);
      });
      if (n <= HOST_INIT_MAX) {
        return new HostValue(init.dataType, init.dims.slice(), Array.from(big, (x) => Number(x)));
      }
      break;
    }
    case T.INT32:
      values = new Int32Array(buf, 0, n);
      break;
    case T.INT8:
      values = Int32Array.from(new Int8Array(buf, 0, n));
      break;
    case T.UINT8:
    case T.BOOL:
      values = new Uint8Array(buf, 0, n);
      break;
    case T.INT16:
      values = Int32Array.from(new Int16Array(buf, 0, n));
      break;
    case T.UINT16:
      values = Int32Array.from(new Uint16Array(buf, 0, n));
      break;
    default:
      throw new UnsupportedGraphError(
        `initializer ${init.name} has element type ${typeName(init.dataType)}`,
      );
  }
  if (n <= HOST_INIT_MAX) {
    return new HostValue(init.dataType, init.dims.slice(), Array.from(values));
  }
  const dtype = tfDtype(init.dataType);
  const data = dtype === "int32" && !(values instanceof Int32Array)
    ? Int32Array.from(values)
    : values;
  return tf.keep(tf.tensor(data, init.dims, dtype));
}

/** A feed's data and dims against the graph input (rank, fixed dims, element count). */
function checkFeed(name: string, want: readonly (number | string)[], t: HostTensor): void {
  const n = t.dims.reduce((a, b) => a * b, 1);
  const bad = t.dims.length !== want.length ||
    want.some((d, i) => typeof d === "number" && d !== t.dims[i]);
  if (bad) {
    throw new Error(
      `tfjs executor: input '${name}' has dims [${t.dims}], the graph wants [${want}]`,
    );
  }
  if (t.data.length !== n) {
    throw new Error(
      `tfjs executor: input '${name}' has ${t.data.length} values for dims [${t.dims}] (${n})`,
    );
  }
}

/** Upload a feed as the tfjs dtype of its ONNX type (int64 → int32, with a range check). */
function upload(name: string, t: HostTensor, type: number): tf.Tensor {
  const dtype = tfDtype(type), d = t.data;
  if (type === T.FLOAT16) {
    if (!(d instanceof Uint16Array)) {
      throw new Error(`tfjs executor: float16 input '${name}' wants Uint16Array bits`);
    }
    return tf.tensor(Float32Array.from(d, halfToFloat), t.dims, "float32");
  }
  if (dtype === "float32") {
    if (d instanceof BigInt64Array) {
      throw new Error(`tfjs executor: input '${name}' is float, got int64 data`);
    }
    // wasm copies into its heap; cpu keeps the array, so it gets its own copy
    const data = d instanceof Float32Array
      ? (tf.getBackend() === "wasm" ? d : d.slice())
      : Float32Array.from(d);
    return tf.tensor(data, t.dims, "float32");
  }
  if (dtype === "bool") return tf.tensor(Uint8Array.from(d as ArrayLike<number>), t.dims, "bool");
  if (d instanceof Float32Array) {
    throw new Error(`tfjs executor: input '${name}' is ${typeName(type)}, got float32 data`);
  }
  let ints: Int32Array;
  if (d instanceof BigInt64Array) {
    ints = new Int32Array(d.length);
    for (let i = 0; i < d.length; i++) {
      const x = d[i];
      if (x > 2147483647n || x < -2147483648n) {
        throw new Error(`tfjs executor: input '${name}'[${i}] = ${x} does not fit int32`);
      }
      ints[i] = Number(x);
    }
  } else {ints = d instanceof Int32Array
      ? (tf.getBackend() === "wasm" ? d : d.slice())
      : Int32Array.from(d);}
  return tf.tensor(ints, t.dims, "int32");
}
