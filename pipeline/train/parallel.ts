/**
 * Data-parallel training on CPU cores: one model replica in this thread plus one per worker,
 * each with its own wasm instance (and its own 4 GiB heap). A step splits the batch, every
 * replica computes gradients on its shard at the same time, and the gradients are averaged here
 * (weighted by shard size). After the optimiser updates the weights here, {@link syncWeights}
 * copies them to the workers, so replicas never drift.
 *
 * Measured on 2 cores: wasm threads only speed up kernels that pass XNNPACK a thread pool
 * (tfjs-wasm's fully-connected path does not), so separate replicas are what uses the second
 * core for training. See `deno task bench`.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { hostCopy, readView, tensorFrom, wasmHeapBytes } from "../tfjs/backend.ts";
import { type Bert, type BertHeads, EXTRA_PREFIX, headOutput } from "../model/bert.ts";
import type { BertConfig } from "../model/config.ts";
import { batchRows, type HostArray, type HostBatch, sliceBatch, toTensors } from "./batch.ts";
import { type Batch, getObjective, type Objective } from "./objectives.ts";
import type { AdamW } from "./optim.ts";

/** A training step's loss was NaN or ±Infinity; the update was not applied. */
export class NonFiniteLossError extends Error {
  constructor(readonly loss: number, readonly step: number) {
    super(`loss is ${loss} at step ${step}; the update was not applied`);
    this.name = "NonFiniteLossError";
  }
}

/** Gradients of one objective on one batch. */
export interface GradientResult {
  /** Mean loss over the batch. */
  loss: number;
  /** Gradients by parameter name (owned by the caller). */
  grads: Map<string, tf.Tensor>;
}

/** Loss and gradients of `objective` for every parameter of `model`. */
export function computeGradients(
  model: Bert,
  objective: Objective,
  batch: Batch,
  seed?: number,
): GradientResult {
  const names = [...model.params.keys()];
  const vars = names.map((n) => model.params.get(n)!);
  const { value, grads } = tf.variableGrads(() => objective(model, batch, { seed }), vars);
  const loss = value.dataSync()[0];
  value.dispose();
  // Parameters off the loss's path get no entry (like `grad is None` in PyTorch).
  const out = new Map<string, tf.Tensor>();
  names.forEach((n, i) => {
    const g = grads[vars[i].name];
    if (g) out.set(n, g);
  });
  return { loss, grads: out };
}

/** Model outputs that {@link DataParallel.forward} can return. */
export type OutputName = "logits" | "pooled" | "hiddenStates" | "attentionScores";

/** Host copies of forward outputs; per-layer outputs are arrays. */
export interface HostOutputs {
  logits?: HostArray;
  pooled?: HostArray;
  hiddenStates?: HostArray[];
  attentionScores?: HostArray[];
}

function host(t: tf.Tensor): HostArray {
  return { data: hostCopy(t), shape: t.shape };
}

/** Inference forward pass (no dropout) keeping only the `outputs` asked for, as host arrays. */
export function forwardToHost(model: Bert, batch: Batch, outputs: OutputName[]): HostOutputs {
  const want = new Set(outputs);
  const out = model.forward({
    inputIds: batch.inputIds as tf.Tensor2D,
    attentionMask: batch.attentionMask as tf.Tensor2D | undefined,
    tokenTypeIds: batch.tokenTypeIds as tf.Tensor2D | undefined,
  }, { hiddenStates: want.has("hiddenStates"), attentionScores: want.has("attentionScores") });
  const res: HostOutputs = {};
  // sequence [B, C], token classification [B, S, C], QA [B, S, 2] (start, end)
  const logits = headOutput(out);
  if (want.has("logits")) {
    if (!logits) throw new Error("forward: the model has no classifier, so no logits");
    res.logits = host(logits);
  }
  if (want.has("pooled")) res.pooled = host(out.pooled);
  if (want.has("hiddenStates")) res.hiddenStates = out.hiddenStates.map(host);
  if (want.has("attentionScores")) res.attentionScores = out.attentionScores.map(host);
  tf.dispose([...out.hiddenStates, ...out.attentionScores, out.pooled]);
  if (logits) logits.dispose();
  return res;
}

export function transferables(o: HostOutputs): ArrayBuffer[] {
  const arrays = [o.logits, o.pooled, ...(o.hiddenStates ?? []), ...(o.attentionScores ?? [])];
  return arrays.filter((a): a is HostArray => !!a).map((a) => a.data.buffer as ArrayBuffer);
}

function concatRows(parts: HostArray[]): HostArray {
  if (parts.length === 1) return parts[0];
  const rows = parts.reduce((n, p) => n + p.shape[0], 0);
  const data = new Float32Array(parts.reduce((n, p) => n + p.data.length, 0));
  let off = 0;
  for (const p of parts) {
    data.set(p.data, off);
    off += p.data.length;
  }
  return { data, shape: [rows, ...parts[0].shape.slice(1)] };
}

function concatOutputs(parts: HostOutputs[]): HostOutputs {
  const first = parts[0], res: HostOutputs = {};
  if (first.logits) res.logits = concatRows(parts.map((p) => p.logits!));
  if (first.pooled) res.pooled = concatRows(parts.map((p) => p.pooled!));
  for (const key of ["hiddenStates", "attentionScores"] as const) {
    const layers = first[key];
    if (layers) res[key] = layers.map((_, l) => concatRows(parts.map((p) => p[key]![l])));
  }
  return res;
}

/**
 * Where each parameter's gradient sits in a flat shared buffer (parameter order, float offsets).
 * Replicas exchange gradients through `SharedArrayBuffer`s laid out this way: no copies through
 * messages, and no fresh 50 MB arrays each step (page faults cost ~10 µs per 4 KiB page here).
 */
export class GradLayout {
  readonly offsets = new Map<string, number>();
  readonly shapes = new Map<string, number[]>();
  readonly total: number;

  constructor(params: Map<string, { shape: number[]; size: number }>) {
    let off = 0;
    for (const [name, p] of params) {
      this.offsets.set(name, off);
      this.shapes.set(name, p.shape);
      off += p.size;
    }
    this.total = off;
  }

  /** The slice of `buf` holding `name`'s gradient. */
  view(buf: Float32Array, name: string): Float32Array {
    const off = this.offsets.get(name)!;
    const shape = this.shapes.get(name)!;
    return buf.subarray(off, off + shape.reduce((a, b) => a * b, 1));
  }
}

/** Write each gradient of `grads` into its slot of `buf`; returns the names written. */
export function writeGradients(
  layout: GradLayout,
  buf: Float32Array,
  grads: Map<string, tf.Tensor>,
): string[] {
  for (const [name, g] of grads) layout.view(buf, name).set(readView(g));
  return [...grads.keys()];
}

/** Tensors for the gradients `names` stored in `buf`. */
export function readGradients(
  layout: GradLayout,
  buf: Float32Array,
  names: string[],
): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  for (const name of names) {
    out.set(name, tensorFrom(layout.view(buf, name), layout.shapes.get(name)!));
  }
  return out;
}

/** FNV-1a over the bytes of every parameter, in name order. */
export function digestWeights(model: Bert): string {
  let h = 0x811c9dc5;
  for (const name of [...model.params.keys()].sort()) {
    const bytes = new Uint8Array(
      hostCopy(model.params.get(name)!).buffer,
    );
    for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

/** What {@link DataParallel} gets back from one scattered request. */
interface Scattered<L, R> {
  local: L;
  remote: R[];
  bounds: number[];
  n: number;
}

/** Options of {@link DataParallel.create}. */
export interface DataParallelOptions {
  /** Total replicas including this thread (default: `navigator.hardwareConcurrency`). */
  replicas?: number;
  /** Objective name from `objectives.ts`. */
  objective: string;
  /** Options for an objective built by a factory (`OBJECTIVE_FACTORIES`); JSON data. */
  objectiveOptions?: unknown;
  /** Backend for the workers (default: the one in use here). */
  backend?: string;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/**
 * A worker thread answering `{ id, type, … }` requests with `{ id, ok, result | error }`: the tfjs
 * replica (`replica_worker.ts`, the default) or another module speaking the same protocol (the
 * ONNX engine's `onnx/replica_worker.ts`).
 */
export class ReplicaWorker {
  private worker: Worker;
  private next = 0;
  private pending = new Map<number, Pending>();

  constructor(url: URL = new URL("./replica_worker.ts", import.meta.url)) {
    this.worker = new Worker(url, { type: "module" });
    this.worker.onmessage = (e: MessageEvent) => {
      const { id, ok, result, error } = e.data;
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      if (ok) p.resolve(result);
      else p.reject(new Error(`replica worker: ${error}`));
    };
    this.worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      for (const p of this.pending.values()) p.reject(new Error(`replica worker: ${e.message}`));
      this.pending.clear();
    };
  }

  request<T>(msg: Record<string, unknown>, transfer: Transferable[] = []): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ id, ...msg }, transfer);
    });
  }

  terminate(): void {
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(new Error("replica worker terminated"));
    this.pending.clear();
  }
}

function weightsOf(
  model: Bert,
): { weights: Record<string, Float32Array>; transfer: ArrayBuffer[] } {
  const weights: Record<string, Float32Array> = {};
  const transfer: ArrayBuffer[] = [];
  for (const [name, v] of model.params) {
    const data = hostCopy(v);
    weights[name] = data;
    transfer.push(data.buffer as ArrayBuffer);
  }
  return { weights, transfer };
}

/** Replicas of one model across this thread and worker threads. */
export class DataParallel {
  private optimizer: AdamW | null = null;
  private readonly layout: GradLayout;
  /** The averaged gradients, read by every worker. */
  private readonly averaged: Float32Array;

  private constructor(
    readonly model: Bert,
    private readonly objective: Objective,
    private readonly workers: ReplicaWorker[],
    /** Per worker, the buffer it writes its shard's gradients into. */
    private readonly shardGrads: Float32Array[],
    averaged: SharedArrayBuffer,
  ) {
    this.layout = new GradLayout(model.params);
    this.averaged = new Float32Array(averaged);
  }

  /** Total number of replicas, this thread included. */
  get replicas(): number {
    return this.workers.length + 1;
  }

  /** Start `replicas - 1` workers holding copies of `model`'s current weights. */
  static async create(model: Bert, opts: DataParallelOptions): Promise<DataParallel> {
    const replicas = Math.max(1, opts.replicas ?? navigator.hardwareConcurrency ?? 1);
    const objective = getObjective(opts.objective, opts.objectiveOptions);
    const extraShapes: Record<string, number[]> = {};
    for (const [name, v] of model.params) {
      if (name.startsWith(EXTRA_PREFIX)) extraShapes[name] = v.shape;
    }
    const workers: ReplicaWorker[] = [];
    const backend = opts.backend ?? tf.getBackend();
    const bytes = new GradLayout(model.params).total * 4;
    const averaged = new SharedArrayBuffer(bytes);
    const shardGrads: Float32Array[] = [];
    try {
      for (let i = 1; i < replicas; i++) {
        const w = new ReplicaWorker();
        workers.push(w);
        const out = new SharedArrayBuffer(bytes);
        shardGrads.push(new Float32Array(out));
        const { weights, transfer } = weightsOf(model);
        await w.request({
          type: "init",
          backend,
          config: model.config as BertConfig,
          heads: model.heads as BertHeads,
          weights,
          extraShapes,
          objective: opts.objective,
          objectiveOptions: opts.objectiveOptions,
          gradsOut: out,
          gradsIn: averaged,
        }, transfer);
      }
    } catch (e) {
      for (const w of workers) w.terminate();
      throw e;
    }
    return new DataParallel(model, objective, workers, shardGrads, averaged);
  }

  /**
   * Mean loss and gradients over `batch`, computed on all replicas at once; shard `i` gets
   * dropout seed `seed * replicas + i`. Gradients are averaged on the host, weighted by shard size.
   * Given micro-batches, they are accumulated as {@link step} does (its gradients before the
   * update): the mean over all their rows.
   */
  async gradients(batch: HostBatch | HostBatch[], seed = 0): Promise<GradientResult> {
    const { loss, names } = await this.accumulate(batch, seed);
    return { loss, grads: readGradients(this.layout, this.averaged, names) };
  }

  /**
   * One optimiser step on all replicas: averaged gradients are applied by `optimizer` here and
   * by an identical AdamW in every worker (same inputs, same kernels, so the weights stay
   * bit-identical). Only gradients cross threads, row-sparse where rows are untouched (the word
   * embeddings). The first call copies the optimiser state to the workers.
   */
  async step(
    batch: HostBatch | HostBatch[],
    optimizer: AdamW,
    seed = 0,
  ): Promise<{ loss: number; gradNorm: number; lr: number }> {
    if (optimizer.params !== this.model.params) {
      throw new Error("DataParallel.step: the optimiser must own this model's parameters");
    }
    if (this.optimizer !== optimizer) {
      if (optimizer.hasCustomDecay) {
        throw new Error("DataParallel.step: a custom decay rule cannot be replicated to workers");
      }
      const state = optimizer.getState();
      await Promise.all(
        this.workers.map((w) =>
          w.request({ type: "optimizer", hyper: optimizer.hyperparameters(), state })
        ),
      );
      this.optimizer = optimizer;
    }
    const { loss, names } = await this.accumulate(batch, seed);
    if (!Number.isFinite(loss)) {
      // nothing applied: the weights stay those of the last good step
      throw new NonFiniteLossError(loss, optimizer.stepCount + 1);
    }
    const lr = optimizer.currentLr();
    // Workers read the averaged gradients from shared memory while this thread applies them.
    const applied = this.workers.map((w) => w.request({ type: "apply", names, lr }));
    const tensors = readGradients(this.layout, this.averaged, names);
    const res = optimizer.step(tensors, lr);
    tf.dispose([...tensors.values()]);
    await Promise.all(applied);
    return { loss, gradNorm: res.gradNorm, lr };
  }

  /** Bytes reserved by each replica's wasm heap (this thread first; 0 off wasm). */
  async heapBytes(): Promise<number[]> {
    const theirs = await Promise.all(this.workers.map((w) => w.request<number>({ type: "heap" })));
    return [wasmHeapBytes(), ...theirs];
  }

  /** A digest of each replica's weights (this thread first): equal digests, equal weights. */
  async weightDigests(): Promise<string[]> {
    const mine = digestWeights(this.model);
    const theirs = await Promise.all(
      this.workers.map((w) => w.request<string>({ type: "digest" })),
    );
    return [mine, ...theirs];
  }

  /**
   * Split `batch` into one shard per replica: post `message(shard, i)` to worker `i` and run
   * `local` on shard 0 here meanwhile. Shard `k` holds rows `[bounds[k], bounds[k + 1])`.
   */
  private async scatter<L, R>(
    batch: HostBatch,
    message: (shard: HostBatch, worker: number) => Record<string, unknown>,
    local: (batch: Batch) => L,
  ): Promise<Scattered<L, R>> {
    const n = batchRows(batch);
    const r = Math.min(this.replicas, n);
    const bounds = Array.from({ length: r + 1 }, (_, i) => Math.round((i * n) / r));
    const pending = this.workers.slice(0, r - 1).map((w, i) => {
      const shard = sliceBatch(batch, bounds[i + 1], bounds[i + 2]);
      const transfer = Object.values(shard).map((v) => v.data.buffer as ArrayBuffer);
      return w.request<R>(message(shard, i), transfer);
    });
    const localBatch = toTensors(sliceBatch(batch, bounds[0], bounds[1]));
    let mine: L;
    try {
      mine = local(localBatch);
    } finally {
      tf.dispose(Object.values(localBatch));
    }
    return { local: mine, remote: await Promise.all(pending), bounds, n };
  }

  /**
   * Mean loss and gradients over one batch or its micro-batches (gradient accumulation), the
   * gradients left in `this.averaged`: each micro-batch's averaged gradients are added in weighted
   * by its share of the rows, so the result equals one big batch's. Micro-batch `k` of `m` gets
   * dropout seed `seed * m + k`. Returns the names that have a gradient in every micro-batch.
   */
  private async accumulate(
    batch: HostBatch | HostBatch[],
    seed: number,
  ): Promise<{ loss: number; names: string[] }> {
    const micro = Array.isArray(batch) ? batch : [batch];
    const total = micro.reduce((n, b) => n + batchRows(b), 0);
    let loss = 0;
    let names: string[] = [];
    for (let k = 0; k < micro.length; k++) {
      const share = batchRows(micro[k]) / total;
      const res = await this.averagedGradients(micro[k], seed * micro.length + k, share, k > 0);
      loss += res.loss * share;
      names = k === 0 ? res.names : names.filter((n) => res.names.includes(n));
    }
    return { loss, names };
  }

  /** Average the shards' gradients into `this.averaged`; returns the names that have one. */
  private async averagedGradients(
    batch: HostBatch,
    seed: number,
    scale: number,
    accumulate: boolean,
  ): Promise<{ loss: number; names: string[] }> {
    const { local, remote: results, bounds, n } = await this.scatter<
      GradientResult,
      { loss: number; names: string[] }
    >(
      batch,
      (shard, i) => ({ type: "grads", batch: shard, seed: seed * this.replicas + i + 1 }),
      (b) => computeGradients(this.model, this.objective, b, seed * this.replicas),
    );
    const weight = (i: number) => scale * (bounds[i + 1] - bounds[i]) / n;
    let loss = local.loss * weight(0) / scale;
    results.forEach((res, i) => loss += res.loss * weight(i + 1) / scale);
    const names = [...local.grads.keys()];
    for (const name of names) {
      const g = local.grads.get(name)!;
      const acc = this.layout.view(this.averaged, name);
      const mine = readView(g), w0 = weight(0);
      if (accumulate) { for (let j = 0; j < acc.length; j++) acc[j] += mine[j] * w0; }
      else for (let j = 0; j < acc.length; j++) acc[j] = mine[j] * w0;
      g.dispose();
      results.forEach((res, i) => {
        if (!res.names.includes(name)) {
          throw new Error(`replica ${i + 1} returned no gradient for ${name}`);
        }
        const theirs = this.layout.view(this.shardGrads[i], name), wi = weight(i + 1);
        for (let j = 0; j < acc.length; j++) acc[j] += theirs[j] * wi;
      });
    }
    return { loss, names };
  }

  /** Inference forward pass over `batch`, split across all replicas; outputs in batch order. */
  async forward(batch: HostBatch, outputs: OutputName[] = ["logits"]): Promise<HostOutputs> {
    const { local, remote } = await this.scatter<HostOutputs, HostOutputs>(
      batch,
      (shard) => ({ type: "forward", batch: shard, outputs }),
      (b) => forwardToHost(this.model, b, outputs),
    );
    return concatOutputs([local, ...remote]);
  }

  /** Copy this thread's weights to every worker (call after each optimiser step). */
  async syncWeights(): Promise<void> {
    await Promise.all(this.workers.map((w) => {
      const { weights, transfer } = weightsOf(this.model);
      return w.request({ type: "weights", weights }, transfer);
    }));
    this.optimizer = null; // optimiser state is re-sent on the next step
  }

  /** Stop the workers. */
  close(): void {
    for (const w of this.workers) w.terminate();
    this.workers.length = 0;
  }
}
