/**
 * The trainer, one for every engine: an optimiser step = the gradient graph (`train_graph.ts`:
 * the one BERT forward, the objective and the backward; loss and every parameter gradient) once
 * per micro-batch on an executor (ONNX Runtime, or tfjs running the same graph), then AdamW
 * (`train/optim.ts`, fused, on the host). Weights and moments live in host `Float32Array`s the
 * executor reads in place (ONNX Runtime also writes the gradients in place), so a step copies no
 * weights; the model's parameters are brought up to date by {@link Trainer.syncModel} —
 * before a checkpoint, an evaluation or the end of a phase.
 *
 * Micro-batch `k` of `m` gets dropout seed `seed·m + k` (each dropout site its `dropoutKeep`
 * stream), gradients are accumulated weighted by rows, parameters the loss does not reach are
 * neither updated nor decayed, a NaN/Inf loss throws {@link NonFiniteLossError} before anything is
 * applied, and the optimiser state round-trips through {@link AdamWState}, so checkpoints do not
 * depend on the engine that wrote them.
 * @module
 */

import { type Bert, type BertHeads, dropoutKeep, dropoutSeed, isNoDecay } from "../model/bert.ts";
import type { BertConfig } from "../model/config.ts";
import {
  ADAMW_DEFAULTS,
  type AdamWHyper,
  type AdamWState,
  adamwUpdate,
  clipFactor,
} from "./optim.ts";
import { batchRows, type HostBatch, sliceBatch } from "../data/batch.ts";
import { InputError, NonFiniteLossError } from "../errors.ts";
import { ReplicaWorker } from "./replica.ts";
import { batchFeeds, buildGradGraph, type GradGraph } from "../graph/train_graph.ts";
import { bucketFor, DEFAULT_BUCKETS, padBatch } from "../engines/buckets.ts";
import { resolveDevice } from "../engines/device.ts";
import type { Dim } from "../graph/tape.ts";
import type { GraphSession, HostTensor } from "../engines/executor.ts";
import { type EngineRef, openExecutor } from "../engines/mod.ts";

/** Options of {@link Trainer.create}. */
export interface TrainerOptions {
  objective: string;
  objectiveOptions?: unknown;
  /** Learning rate schedule (`step` from 1). */
  lr: (step: number) => number;
  weightDecay: number;
  maxGradNorm?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Intra-op threads (default: one per core). */
  threads?: number;
  /** Dropout on (default true: a training step). */
  dropout?: boolean;
  /**
   * The executor of the gradient graph (default ONNX Runtime on the CPU): `{ kind: "tfjs",
   * backend }` runs the same graph on tfjs. JSON, so replicas open the same one.
   */
  engine?: EngineRef;
  /** Decay rule (default: all but biases and LayerNorm weights). */
  decay?: (name: string) => boolean;
  /**
   * Data-parallel replicas (default 1): this thread plus `replicas − 1` workers, each its own
   * session with `threads` intra-op threads, on a shard of every micro-batch; gradients averaged
   * through shared memory, the same host AdamW applied on every replica (weights stay
   * bit-identical). Replica i of micro-batch seed s uses dropout seed `s·replicas + i`.
   */
  replicas?: number;
  /**
   * Sequence-length buckets (`engines/buckets.ts`): each micro-batch is padded to the smallest
   * bucket ≥ its length, so that each shape's shaders compile once. Default: the default buckets
   * on ONNX Runtime's webgpu device, none elsewhere; `false`: none.
   */
  buckets?: readonly number[] | false;
}

/** What a replica is built from (a worker has no model object, only weights). */
export interface ReplicaCore {
  config: BertConfig;
  heads: BertHeads;
  /** Every parameter's shape, in the model's order (the gradient layout follows it). */
  shapes: [string, number[]][];
  weights: Record<string, Float32Array>;
}

/** What one step took, in milliseconds (for the benchmark). */
export interface StepTimes {
  feed: number;
  grad: number;
  update: number;
}

/** Trains a {@link Bert}'s parameters on ONNX Runtime. */
export class Trainer {
  /** Number of updates applied so far. */
  stepCount = 0;
  /** Timings of the last step. */
  lastTimes: StepTimes = { feed: 0, grad: 0, update: 0 };
  /** Gradient graphs built so far (a new one only when a batch's keys or target widths change). */
  gradGraphBuilds = 0;
  #grad: { session: GraphSession; graph: GradGraph; signature: string } | null = null;
  /** Weights and AdamW moments (host float32, updated in place). */
  readonly #w = new Map<string, Float32Array>();
  readonly #m = new Map<string, Float32Array>();
  readonly #v = new Map<string, Float32Array>();
  readonly #g = new Map<string, Float32Array>();
  readonly #shapes = new Map<string, number[]>();
  /** Dropout mask buffers by site (reused: the attention masks are 25 MB each at 32×128). */
  readonly #masks = new Map<string, Float32Array>();
  #dirty = false;

  readonly config: BertConfig;
  readonly heads: BertHeads;
  /** Worker replicas (data parallel) and the shared gradient buffers. */
  #workers: ReplicaWorker[] = [];
  #layout = new Map<string, [number, number]>();
  /** Per worker, where it writes its shard's gradients; and the averaged gradients. */
  #shardGrads: Float32Array[] = [];
  #avg: Float32Array | null = null;

  private constructor(
    readonly model: Bert | null,
    core: ReplicaCore,
    readonly opts: TrainerOptions,
  ) {
    this.config = core.config;
    this.heads = core.heads;
    let offset = 0;
    for (const [name, shape] of core.shapes) {
      const size = shape.reduce((a, b) => a * b, 1);
      this.#shapes.set(name, shape);
      this.#layout.set(name, [offset, size]);
      offset += size;
      this.#w.set(name, Float32Array.from(core.weights[name]));
      this.#m.set(name, new Float32Array(size));
      this.#v.set(name, new Float32Array(size));
    }
  }

  /**
   * A trainer on `model`'s current weights (moments zero, step 0); with `replicas > 1`, its
   * worker replicas are started here.
   */
  static async create(model: Bert, opts: TrainerOptions): Promise<Trainer> {
    const e = opts.engine;
    if (e?.kind === "onnxruntime" && e.device === "auto") {
      // resolved once, here: the graph's int type, the buckets and every replica follow it
      opts = { ...opts, engine: { ...e, device: (await resolveDevice("auto")).device } };
    }
    const core: ReplicaCore = {
      config: model.config,
      heads: model.heads,
      shapes: [...model.params].map(([n, v]) => [n, v.shape]),
      weights: Object.fromEntries([...model.params].map(([n, v]) => [n, v.data])),
    };
    const trainer = new Trainer(model, core, opts);
    await trainer.#startWorkers(core);
    return trainer;
  }

  /** A replica for a worker thread (no model object, no workers of its own). */
  static forWorker(core: ReplicaCore, opts: TrainerOptions): Trainer {
    return new Trainer(null, core, { ...opts, replicas: 1 });
  }

  async #startWorkers(core: ReplicaCore): Promise<void> {
    const replicas = this.opts.replicas ?? 1;
    if (replicas <= 1) return;
    if (this.opts.decay) {
      throw new Error("Trainer: a custom decay rule cannot cross to replicas");
    }
    const total = [...this.#layout.values()].reduce((n, [, size]) => n + size, 0);
    this.#avg = new Float32Array(new SharedArrayBuffer(total * 4));
    const { lr: _lr, decay: _decay, ...plain } = this.opts;
    try {
      for (let i = 1; i < replicas; i++) {
        const w = new ReplicaWorker(new URL("./replica_worker.ts", import.meta.url));
        this.#workers.push(w);
        const out = new SharedArrayBuffer(total * 4);
        this.#shardGrads.push(new Float32Array(out));
        await w.request({
          type: "init",
          core,
          opts: { ...plain, replicas: 1 },
          gradsOut: out,
          gradsIn: this.#avg.buffer,
        });
      }
    } catch (e) {
      for (const w of this.#workers) w.terminate();
      this.#workers = [];
      throw e;
    }
  }

  /** `name`'s slice of a flat gradient buffer laid out like the parameters. */
  view(flat: Float32Array, name: string): Float32Array {
    const [offset, size] = this.#layout.get(name)!;
    return flat.subarray(offset, offset + size);
  }

  /** Worker side: loss and gradients of one shard, the gradients copied into `out`. */
  async shardGradients(
    b: HostBatch,
    seed: number,
    out: Float32Array,
  ): Promise<{ loss: number; trained: string[] }> {
    const { loss, trained } = await this.#accumulate([b], seed);
    for (const name of trained) this.view(out, name).set(this.#g.get(name)!);
    return { loss, trained };
  }

  /** Worker side: the AdamW step from the averaged gradients in `avg` (norm given). */
  applyAveraged(trained: string[], lr: number, t: number, sq: number, avg: Float32Array): void {
    this.#updateHost(trained, lr, t, sq, (name) => this.view(avg, name));
    this.stepCount = t;
  }

  /** Copies of every weight (for tests: replicas hold the same bytes). */
  weights(): Record<string, Float32Array> {
    return Object.fromEntries([...this.#w].map(([n, a]) => [n, Float32Array.from(a)]));
  }

  /** Every replica's weights, this thread's first (for tests). */
  async replicaWeights(): Promise<Record<string, Float32Array>[]> {
    const theirs = await Promise.all(
      this.#workers.map((w) => w.request<Record<string, Float32Array>>({ type: "weights" })),
    );
    return [this.weights(), ...theirs];
  }

  /**
   * A signature of what the gradient graph depends on in a batch: its keys and the teacher
   * targets' fixed dims (heads, widths, classes: what `buildGradGraph` bakes in), not the batch
   * or sequence length, which the graph keeps symbolic — batches padded to their longest row
   * share one graph.
   */
  #signature(b: HostBatch): string {
    return Object.keys(b).sort().map((k) => {
      const s = b[k].shape;
      if (!k.startsWith("t_")) return k;
      let fixed: number[];
      if (k.startsWith("t_scores_")) fixed = [s[1]]; // [B, heads, S, S]
      else if (k.startsWith("t_values_")) fixed = [s[1], s[3]]; // [B, heads, S, d]
      else if (k.startsWith("t_hidden_")) fixed = [s[2]]; // [B, S, H]
      else if (k === "t_logits") fixed = [s.length, s[s.length - 1]]; // [B, C] or [B, S, C]
      else fixed = s.slice(1);
      return `${k}:${fixed.join("x")}`;
    }).join(",");
  }

  async #gradSession(b: HostBatch): Promise<{ session: GraphSession; graph: GradGraph }> {
    const signature = this.#signature(b);
    if (this.#grad && this.#grad.signature === signature) return this.#grad;
    if (this.#grad) await this.#grad.session.close();
    const targets: Record<string, number[]> = {};
    for (const [k, v] of Object.entries(b)) if (k.startsWith("t_")) targets[k] = v.shape;
    const graph = buildGradGraph({
      config: this.config,
      heads: this.heads,
      params: this.#shapes,
      objective: this.opts.objective,
      objectiveOptions: this.opts.objectiveOptions,
      dropout: this.opts.dropout ?? true,
      targets,
      // int32 feeds where WebGPU may run (it computes on int32, not int64)
      intType: this.opts.engine?.kind === "onnxruntime" && this.opts.engine.device &&
          this.opts.engine.device !== "cpu"
        ? "int32"
        : "int64",
    });
    const executor = await openExecutor(this.opts.engine);
    const session = await executor.open(graph.graph, graph.model, {
      threads: this.opts.threads,
      what: "the gradient graph",
    });
    this.gradGraphBuilds++;
    this.#grad = { session, graph, signature };
    return this.#grad;
  }

  /** The graph inputs of one micro-batch (batch arrays, MLM positions, dropout bits). */
  #feeds(graph: GradGraph, b: HostBatch, seed: number): Record<string, HostTensor> {
    const B = batchRows(b), S = b.inputIds.shape[1];
    const size = (dims: Dim[]) =>
      dims.map((d) => d === "B" ? B : d === "S" ? S : d === "B*S" ? B * S : d as number);
    if (S > this.config.max_position_embeddings) {
      throw new InputError("the batch is longer than the model has positions for", {
        field: "inputIds",
        expected: `at most max_position_embeddings = ${this.config.max_position_embeddings} tokens`,
        got: `${S} tokens`,
        hint: "Truncate the inputs (tokenize's max_seq_length).",
      });
    }
    const feeds = batchFeeds(graph.feeds, b, `objective '${this.opts.objective}'`);
    for (const site of graph.dropout) {
      const dims = size(site.dims);
      const n = dims.reduce((x, y) => x * y, 1);
      let buf = this.#masks.get(site.name);
      if (!buf || buf.length < n) this.#masks.set(site.name, buf = new Float32Array(n));
      const mask = dropoutKeep(
        n,
        site.rate,
        dropoutSeed(seed, site.call),
        buf.subarray(0, n),
        1 / (1 - site.rate),
      );
      feeds[site.name] = { data: mask, dims };
    }
    for (const name of graph.inputs) {
      feeds[name] = { data: this.#w.get(name)!, dims: this.#shapes.get(name)! };
    }
    return feeds;
  }

  /**
   * Loss and gradients over the micro-batches (the mean over all their rows), left in the
   * gradient buffers. Returns the loss and the trained parameter names.
   */
  /** `b` padded to its length bucket (see {@link TrainerOptions.buckets}). */
  #bucketed(b: HostBatch): HostBatch {
    const e = this.opts.engine;
    const buckets = this.opts.buckets ??
      (e?.kind === "onnxruntime" && e.device === "webgpu" ? DEFAULT_BUCKETS : false);
    if (!buckets || !b.inputIds) return b;
    const S = b.inputIds.shape[1];
    return padBatch(b, bucketFor(S, buckets, this.config.max_position_embeddings));
  }

  async #accumulate(
    pieces: HostBatch[],
    seed: number,
  ): Promise<{ loss: number; trained: string[]; gradSq?: number }> {
    const total = pieces.reduce((n, b) => n + batchRows(b), 0);
    let loss = 0;
    let gradSq: number | undefined;
    let trained: string[] = [];
    const scratch = new Map<string, Float32Array>();
    for (let k = 0; k < pieces.length; k++) {
      const t0 = performance.now();
      const piece = this.#bucketed(pieces[k]);
      const { session, graph } = await this.#gradSession(piece);
      trained = graph.trained;
      const feeds = this.#feeds(graph, piece, seed * pieces.length + k);
      const fetch = ["loss", "grad_sq"];
      const into: Record<string, Float32Array> = {};
      const first = k === 0;
      for (const name of graph.trained) {
        if (!this.#g.has(name)) this.#g.set(name, new Float32Array(this.#w.get(name)!.length));
        let buf = this.#g.get(name)!;
        if (!first) {
          if (!scratch.has(name)) scratch.set(name, new Float32Array(buf.length));
          buf = scratch.get(name)!;
        }
        fetch.push(`grad:${name}`);
        into[`grad:${name}`] = buf;
      }
      const t1 = performance.now();
      const out = await session.run(feeds, fetch, into);
      const t2 = performance.now();
      this.lastTimes.feed += t1 - t0;
      this.lastTimes.grad += t2 - t1;
      const share = batchRows(pieces[k]) / total;
      loss += (out.loss.data as Float32Array)[0] * share;
      gradSq = pieces.length === 1 ? (out.grad_sq.data as Float32Array)[0] : undefined;
      // as DataParallel: acc = g₀·w₀, then acc += g_k·w_k
      if (pieces.length > 1) {
        for (const name of graph.trained) {
          const acc = this.#g.get(name)!;
          if (first) { for (let j = 0; j < acc.length; j++) acc[j] = acc[j] * share; }
          else {
            const mine = scratch.get(name)!;
            for (let j = 0; j < acc.length; j++) acc[j] += mine[j] * share;
          }
        }
      }
    }
    return { loss, trained, gradSq };
  }

  /** The learning rate the next step will use. */
  currentLr(): number {
    return this.opts.lr(this.stepCount + 1);
  }

  /** Loss and gradients of one batch (or its micro-batches) without updating (for tests). */
  async gradients(
    batch: HostBatch | HostBatch[],
    seed = 0,
  ): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const pieces = Array.isArray(batch) ? batch : [batch];
    const { loss, trained } = await this.#accumulate(pieces, seed);
    const grads = new Map<string, Float32Array>();
    for (const name of trained) grads.set(name, Float32Array.from(this.#g.get(name)!));
    return { loss, grads };
  }

  /** One optimiser step over `batch` (micro-batches accumulated). */
  async step(
    batch: HostBatch | HostBatch[],
    seed = 0,
  ): Promise<{ loss: number; gradNorm: number; lr: number }> {
    this.lastTimes = { feed: 0, grad: 0, update: 0 };
    const pieces = Array.isArray(batch) ? batch : [batch];
    if (this.#workers.length > 0) return await this.#parallelStep(pieces, seed);
    const { loss, trained, gradSq } = await this.#accumulate(pieces, seed);
    if (!Number.isFinite(loss)) throw new NonFiniteLossError(loss, this.stepCount + 1);
    const t0 = performance.now();
    const lr = this.currentLr();
    const t = this.stepCount + 1;
    const gradNorm = this.#updateHost(trained, lr, t, gradSq);
    this.stepCount = t;
    this.#dirty = true;
    this.lastTimes.update = performance.now() - t0;
    return { loss, gradNorm, lr };
  }

  /**
   * One step on every replica: each micro-batch split into shards (rows `[bounds[i],
   * bounds[i+1])`, shard 0 here), the shards' gradients averaged into the shared buffer weighted
   * by rows (as `DataParallel`: this replica's first, then each worker's in order), then the same
   * host AdamW on every replica.
   */
  async #parallelStep(
    pieces: HostBatch[],
    seed: number,
  ): Promise<{ loss: number; gradNorm: number; lr: number }> {
    const R = this.#workers.length + 1;
    const avg = this.#avg!;
    if (!this.#stateSent) {
      const state = this.getState();
      await Promise.all(this.#workers.map((w) => w.request({ type: "state", state })));
      this.#stateSent = true;
    }
    const total = pieces.reduce((n, b) => n + batchRows(b), 0);
    let loss = 0;
    let trained: string[] = [];
    for (let k = 0; k < pieces.length; k++) {
      const micro = seed * pieces.length + k;
      const n = batchRows(pieces[k]), r = Math.min(R, n);
      const bounds = Array.from({ length: r + 1 }, (_, i) => Math.round((i * n) / r));
      const scale = n / total;
      const pending = this.#workers.slice(0, r - 1).map((w, i) =>
        w.request<{ loss: number; trained: string[] }>({
          type: "grads",
          batch: sliceBatch(pieces[k], bounds[i + 1], bounds[i + 2]),
          seed: micro * R + i + 1,
        })
      );
      // a replica may fail while this thread still computes its own shard: mark the rejection
      // handled now (it is rethrown by the Promise.all below), or it escapes as unhandled
      for (const p of pending) p.catch(() => {});
      const t0 = performance.now();
      let mine;
      try {
        mine = await this.#accumulate([sliceBatch(pieces[k], bounds[0], bounds[1])], micro * R);
      } catch (e) {
        await Promise.allSettled(pending); // no replica's answer is left unawaited
        throw e;
      }
      const theirs = await Promise.all(pending);
      const t1 = performance.now();
      trained = mine.trained;
      const weight = (i: number) => scale * (bounds[i + 1] - bounds[i]) / n;
      loss += mine.loss * weight(0);
      theirs.forEach((res, i) => loss += res.loss * weight(i + 1));
      for (const name of trained) {
        const acc = this.view(avg, name), g = this.#g.get(name)!, w0 = weight(0);
        if (k === 0) { for (let j = 0; j < acc.length; j++) acc[j] = g[j] * w0; }
        else for (let j = 0; j < acc.length; j++) acc[j] += g[j] * w0;
        theirs.forEach((_, i) => {
          const src = this.view(this.#shardGrads[i], name), wi = weight(i + 1);
          for (let j = 0; j < acc.length; j++) acc[j] += src[j] * wi;
        });
      }
      this.lastTimes.grad += t1 - t0;
    }
    if (!Number.isFinite(loss)) throw new NonFiniteLossError(loss, this.stepCount + 1);
    const t0 = performance.now();
    let sq = 0;
    for (const name of trained) {
      const g = this.view(avg, name);
      let s = 0;
      for (let j = 0; j < g.length; j++) s += g[j] * g[j];
      sq += s;
    }
    const lr = this.currentLr();
    const t = this.stepCount + 1;
    // every replica applies the same update from the same averaged gradients
    const applied = this.#workers.map((w) => w.request({ type: "apply", trained, lr, t, sq }));
    this.#updateHost(trained, lr, t, sq, (name) => this.view(avg, name));
    await Promise.all(applied);
    this.stepCount = t;
    this.#dirty = true;
    this.lastTimes.update = performance.now() - t0;
    return { loss, gradNorm: Math.sqrt(sq), lr };
  }

  #hyper(): AdamWHyper {
    return {
      beta1: this.opts.beta1 ?? ADAMW_DEFAULTS.beta1,
      beta2: this.opts.beta2 ?? ADAMW_DEFAULTS.beta2,
      eps: this.opts.eps ?? ADAMW_DEFAULTS.eps,
      weightDecay: this.opts.weightDecay,
      maxGradNorm: this.opts.maxGradNorm,
    };
  }

  #decays(name: string): boolean {
    return this.opts.weightDecay > 0 && (this.opts.decay ?? ((n) => !isNoDecay(n)))(name);
  }

  /** {@link adamwUpdate} on every trained parameter, clipped by the global gradient norm. */
  #updateHost(
    trained: string[],
    lr: number,
    t: number,
    gradSq?: number,
    grads: (name: string) => Float32Array = (name) => this.#g.get(name)!,
  ): number {
    // one micro-batch: the graph summed the squares; accumulated micro-batches: sum them here
    let sq = gradSq ?? 0;
    if (gradSq === undefined) {
      for (const name of trained) {
        const g = grads(name);
        let s = 0;
        for (let j = 0; j < g.length; j++) s += g[j] * g[j];
        sq += s;
      }
    }
    const norm = Math.sqrt(sq);
    const hyper = this.#hyper();
    const clip = clipFactor(norm, hyper.maxGradNorm);
    for (const name of trained) {
      adamwUpdate(this.#w.get(name)!, grads(name), this.#m.get(name)!, this.#v.get(name)!, {
        lr,
        t,
        clip,
        decay: this.#decays(name),
        hyper,
      });
    }
    return norm;
  }

  /** Copy the current weights into `model.params` when a step changed them. */
  syncModel(): void {
    if (!this.#dirty || !this.model) return;
    for (const [name, v] of this.model.params) v.data.set(this.#w.get(name)!);
    this.#dirty = false;
  }

  /** A copy of the optimiser state (moments and step). */
  getState(): AdamWState {
    const m: Record<string, Float32Array> = {}, v: Record<string, Float32Array> = {};
    for (const [name, a] of this.#m) m[name] = Float32Array.from(a);
    for (const [name, a] of this.#v) v[name] = Float32Array.from(a);
    return { step: this.stepCount, m, v };
  }

  /** Restore a state written by {@link getState}. */
  setState(state: AdamWState): void {
    for (const [name, a] of this.#m) {
      const mv = state.m[name], vv = state.v[name];
      if (!mv || !vv || mv.length !== a.length || vv.length !== a.length) {
        throw new Error(`Trainer.setState: state for ${name} is missing or has the wrong size`);
      }
      a.set(mv);
      this.#v.get(name)!.set(vv);
    }
    this.stepCount = state.step;
    this.#stateSent = false; // the replicas get it before the next step
  }

  #stateSent = true;

  /** Release the sessions (the weights stay in the model after {@link syncModel}). */
  async close(): Promise<void> {
    this.syncModel();
    await Promise.all(this.#workers.map((w) => w.request({ type: "close" }).catch(() => {})));
    for (const w of this.#workers) w.terminate();
    this.#workers = [];
    await this.#grad?.session.close();
    this.#grad = null;
  }
}
