/**
 * The ONNX Runtime training engine: one optimiser step = the gradient graph once per micro-batch
 * (loss and every parameter gradient, see `train_graph.ts`) and the AdamW graph once. Weights and
 * the AdamW moments live in host `Float32Array`s that ONNX Runtime reads in place and writes in
 * place (pre-allocated outputs, two buffers per tensor swapped every step), so a step copies no
 * weights. `Bert.params` (tfjs) is brought up to date by {@link OnnxTrainer.syncModel} — before a
 * checkpoint, an evaluation or the end of a phase.
 *
 * Same semantics as the tfjs engine (`DataParallel` + `AdamW`): micro-batch `k` of `m` gets
 * dropout seed `seed·m + k` and the `Bert.forward` mask stream, gradients are accumulated
 * weighted by rows, parameters the loss does not reach are neither updated nor decayed, a NaN/Inf
 * loss throws {@link NonFiniteLossError} before anything is applied, and the optimiser state
 * round-trips through {@link AdamWState} so checkpoints are engine-independent.
 * @module
 */

import * as ort from "onnxruntime-node";
import * as tf from "@tensorflow/tfjs";
import { type Bert, dropoutKeep, dropoutSeed, isNoDecay } from "../model/bert.ts";
import type { AdamWState } from "../train/optim.ts";
import { batchRows, type HostBatch } from "../train/batch.ts";
import { NonFiniteLossError } from "../train/parallel.ts";
import { IGNORE_INDEX } from "../train/objectives.ts";
import { buildAdamWGraph, buildGradGraph, type GradGraph } from "./train_graph.ts";
import type { Dim } from "./autodiff.ts";
import { OnnxLoadError } from "./engine.ts";

/** Options of {@link OnnxTrainer.create}. */
export interface OnnxTrainerOptions {
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
   * Where the AdamW update runs: `"host"` (default), one fused pass over each parameter in
   * this thread; `"graph"`, the ONNX AdamW graph ({@link buildAdamWGraph}). Same arithmetic;
   * measured on TinyBERT4 (14.5M parameters, 2 cores) the graph's ~13 separate elementwise
   * kernels take 400–570 ms a step, the fused pass 35–55 ms (`deno task bench`).
   */
  update?: "host" | "graph";
  /** Decay rule (default: all but biases and LayerNorm weights). */
  decay?: (name: string) => boolean;
}

/** What one step took, in milliseconds (for the benchmark). */
export interface StepTimes {
  feed: number;
  grad: number;
  update: number;
}

const BATCH_KEYS: Record<string, string> = {
  inputIds: "input_ids",
  attentionMask: "attention_mask",
  tokenTypeIds: "token_type_ids",
};

function toInt64(a: Int32Array | Float32Array): BigInt64Array {
  const out = new BigInt64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = BigInt(a[i]);
  return out;
}

/** Trains a {@link Bert}'s parameters on ONNX Runtime. */
export class OnnxTrainer {
  /** Number of updates applied so far. */
  stepCount = 0;
  /** Timings of the last step. */
  lastTimes: StepTimes = { feed: 0, grad: 0, update: 0 };
  #grad: { session: ort.InferenceSession; graph: GradGraph; signature: string } | null = null;
  #update: { session: ort.InferenceSession; names: string[] } | null = null;
  /** Current weights / moments (read by the next step) and the spare buffers it writes. */
  readonly #w = new Map<string, Float32Array>();
  readonly #w2 = new Map<string, Float32Array>();
  readonly #m = new Map<string, Float32Array>();
  readonly #m2 = new Map<string, Float32Array>();
  readonly #v = new Map<string, Float32Array>();
  readonly #v2 = new Map<string, Float32Array>();
  readonly #g = new Map<string, Float32Array>();
  readonly #shapes = new Map<string, number[]>();
  /** Dropout mask buffers by site (reused: the attention masks are 25 MB each at 32×128). */
  readonly #masks = new Map<string, Float32Array>();
  #dirty = false;

  private constructor(readonly model: Bert, readonly opts: OnnxTrainerOptions) {
    for (const [name, v] of model.params) {
      this.#shapes.set(name, v.shape);
      this.#w.set(name, Float32Array.from(v.dataSync() as Float32Array));
      this.#m.set(name, new Float32Array(v.size));
      this.#v.set(name, new Float32Array(v.size));
    }
  }

  /** A trainer on `model`'s current weights (moments zero, step 0). */
  static create(model: Bert, opts: OnnxTrainerOptions): Promise<OnnxTrainer> {
    return Promise.resolve(new OnnxTrainer(model, opts));
  }

  #sessionOptions(): ort.InferenceSession.SessionOptions {
    const o: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: "all",
      executionProviders: ["cpu"],
      interOpNumThreads: 1,
      executionMode: "sequential",
      logSeverityLevel: 3, // errors only
    };
    if (this.opts.threads !== undefined) o.intraOpNumThreads = this.opts.threads;
    return o;
  }

  async #session(model: Uint8Array, what: string): Promise<ort.InferenceSession> {
    try {
      return await ort.InferenceSession.create(model, this.#sessionOptions());
    } catch (e) {
      throw new OnnxLoadError(
        `the ${what} graph (${model.length} bytes)`,
        e instanceof Error ? e.message : String(e),
      );
    }
  }

  /** A signature of what the gradient graph depends on in a batch: keys and non-batch dims. */
  #signature(b: HostBatch): string {
    return Object.keys(b).sort().map((k) => {
      const s = b[k].shape;
      return k.startsWith("t_") ? `${k}:${s.slice(1).join("x")}` : k;
    }).join(",");
  }

  async #gradSession(b: HostBatch): Promise<{ session: ort.InferenceSession; graph: GradGraph }> {
    const signature = this.#signature(b);
    if (this.#grad && this.#grad.signature === signature) return this.#grad;
    if (this.#grad) await this.#grad.session.release();
    const targets: Record<string, number[]> = {};
    for (const [k, v] of Object.entries(b)) if (k.startsWith("t_")) targets[k] = v.shape;
    const graph = buildGradGraph({
      config: this.model.config,
      heads: this.model.heads,
      params: this.#shapes,
      objective: this.opts.objective,
      objectiveOptions: this.opts.objectiveOptions,
      dropout: this.opts.dropout ?? true,
      targets,
    });
    const session = await this.#session(graph.model, "gradient");
    this.#grad = { session, graph, signature };
    return this.#grad;
  }

  async #updateSession(
    trained: string[],
  ): Promise<{ session: ort.InferenceSession; names: string[] }> {
    if (this.#update && this.#update.names.join() === trained.join()) return this.#update;
    if (this.#update) await this.#update.session.release();
    const model = buildAdamWGraph(
      trained.map((name) => ({ name, shape: this.#shapes.get(name)! })),
      {
        beta1: this.opts.beta1 ?? 0.9,
        beta2: this.opts.beta2 ?? 0.999,
        eps: this.opts.eps ?? 1e-6,
        weightDecay: this.opts.weightDecay,
        maxGradNorm: this.opts.maxGradNorm,
      },
      (n) => this.#decays(n),
    );
    this.#update = { session: await this.#session(model, "AdamW"), names: trained };
    return this.#update;
  }

  /** The graph inputs of one micro-batch (batch arrays, MLM positions, dropout bits). */
  #feeds(graph: GradGraph, b: HostBatch, seed: number): Record<string, ort.Tensor> {
    const B = batchRows(b), S = b.inputIds.shape[1];
    const size = (dims: Dim[]) =>
      dims.map((d) => d === "B" ? B : d === "S" ? S : d === "B*S" ? B * S : d as number);
    const feeds: Record<string, ort.Tensor> = {};
    let mlm: { positions: BigInt64Array; targets: BigInt64Array } | null = null;
    for (const f of graph.feeds) {
      if (f.name === "mlm_positions" || f.name === "mlm_targets") {
        if (!mlm) {
          const labels = b.mlmLabels;
          if (!labels) throw new Error("OnnxTrainer: an 'mlm' batch needs mlmLabels");
          const pos: bigint[] = [], tgt: bigint[] = [];
          labels.data.forEach((t, i) => {
            if (t !== IGNORE_INDEX) {
              pos.push(BigInt(i));
              tgt.push(BigInt(t));
            }
          });
          mlm = { positions: BigInt64Array.from(pos), targets: BigInt64Array.from(tgt) };
        }
        const a = f.name === "mlm_positions" ? mlm.positions : mlm.targets;
        feeds[f.name] = new ort.Tensor("int64", a, [a.length]);
        continue;
      }
      const key = Object.entries(BATCH_KEYS).find(([, v]) => v === f.name)?.[0] ?? f.name;
      const a = b[key];
      if (!a) {
        throw new Error(
          `OnnxTrainer: the batch has no '${key}' (objective '${this.opts.objective}' reads it)`,
        );
      }
      feeds[f.name] = f.type === "int64"
        ? new ort.Tensor("int64", toInt64(a.data), a.shape)
        : new ort.Tensor(
          "float32",
          a.data instanceof Float32Array ? a.data : Float32Array.from(a.data),
          a.shape,
        );
    }
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
      feeds[site.name] = new ort.Tensor("float32", mask, dims);
    }
    for (const name of graph.inputs) {
      feeds[name] = new ort.Tensor("float32", this.#w.get(name)!, this.#shapes.get(name)!);
    }
    return feeds;
  }

  /**
   * Loss and gradients over the micro-batches (the mean over all their rows), left in the
   * gradient buffers. Returns the loss and the trained parameter names.
   */
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
      const { session, graph } = await this.#gradSession(pieces[k]);
      trained = graph.trained;
      const feeds = this.#feeds(graph, pieces[k], seed * pieces.length + k);
      const fetches: Record<string, ort.Tensor | null> = { loss: null, grad_sq: null };
      const first = k === 0;
      for (const name of graph.trained) {
        if (!this.#g.has(name)) this.#g.set(name, new Float32Array(this.#w.get(name)!.length));
        let buf = this.#g.get(name)!;
        if (!first) {
          if (!scratch.has(name)) scratch.set(name, new Float32Array(buf.length));
          buf = scratch.get(name)!;
        }
        fetches[`grad:${name}`] = new ort.Tensor("float32", buf, this.#shapes.get(name)!);
      }
      const t1 = performance.now();
      const out = await session.run(feeds, fetches);
      const t2 = performance.now();
      this.lastTimes.feed += t1 - t0;
      this.lastTimes.grad += t2 - t1;
      const share = batchRows(pieces[k]) / total;
      loss += (out.loss.data as Float32Array)[0] * share;
      gradSq = pieces.length === 1 ? (out.grad_sq.data as Float32Array)[0] : undefined;
      out.grad_sq.dispose();
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
      for (const t of Object.values(feeds)) t.dispose();
      out.loss.dispose();
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
    const { loss, trained, gradSq } = await this.#accumulate(pieces, seed);
    if (!Number.isFinite(loss)) throw new NonFiniteLossError(loss, this.stepCount + 1);
    const t0 = performance.now();
    const lr = this.currentLr();
    const t = this.stepCount + 1;
    const gradNorm = (this.opts.update ?? "host") === "graph"
      ? await this.#updateGraph(trained, lr, t)
      : this.#updateHost(trained, lr, t, gradSq);
    this.stepCount = t;
    this.#dirty = true;
    this.lastTimes.update = performance.now() - t0;
    return { loss, gradNorm, lr };
  }

  /** The step's scalars, as `AdamW.step` computes them. */
  #scalars(lr: number, t: number) {
    const beta1 = this.opts.beta1 ?? 0.9, beta2 = this.opts.beta2 ?? 0.999;
    return {
      beta1,
      beta2,
      eps: this.opts.eps ?? 1e-6,
      stepSize: lr / (1 - beta1 ** t),
      bc2: 1 - beta2 ** t,
      decayRate: lr * this.opts.weightDecay,
    };
  }

  #decays(name: string): boolean {
    return this.opts.weightDecay > 0 && (this.opts.decay ?? ((n) => !isNoDecay(n)))(name);
  }

  /**
   * AdamW in one pass per parameter, in place (float32 storage, the same formula as
   * `AdamW.step`: `m ← β1·m + (1−β1)·ĝ`, `v ← β2·v + (1−β2)·ĝ²`,
   * `p ← p − step·m / (√(v / bc2) + ε) − lr·wd·p`, ĝ the clipped gradient).
   */
  #updateHost(trained: string[], lr: number, t: number, gradSq?: number): number {
    // one micro-batch: the graph summed the squares; accumulated micro-batches: sum them here
    let sq = gradSq ?? 0;
    if (gradSq === undefined) {
      for (const name of trained) {
        const g = this.#g.get(name)!;
        let s = 0;
        for (let j = 0; j < g.length; j++) s += g[j] * g[j];
        sq += s;
      }
    }
    const norm = Math.sqrt(sq);
    const max = this.opts.maxGradNorm;
    const clip = max && max > 0 ? Math.min(1, max / (norm + 1e-6)) : 1;
    const { beta1, beta2, eps, stepSize, bc2, decayRate } = this.#scalars(lr, t);
    const c1 = (1 - beta1) * clip, c2 = (1 - beta2) * clip * clip;
    for (const name of trained) {
      const p = this.#w.get(name)!, g = this.#g.get(name)!;
      const m = this.#m.get(name)!, v = this.#v.get(name)!;
      const decay = this.#decays(name) ? decayRate : 0;
      for (let j = 0; j < p.length; j++) {
        const gj = g[j], pj = p[j];
        const mj = m[j] * beta1 + gj * c1;
        const vj = v[j] * beta2 + gj * gj * c2;
        m[j] = mj;
        v[j] = vj;
        p[j] = pj - stepSize * (mj / (Math.sqrt(vj / bc2) + eps)) - pj * decay;
      }
    }
    return norm;
  }

  /** AdamW as the ONNX graph, outputs written into the spare buffers, then swapped in. */
  async #updateGraph(trained: string[], lr: number, t: number): Promise<number> {
    const { session } = await this.#updateSession(trained);
    const { stepSize, bc2, decayRate } = this.#scalars(lr, t);
    const scalar = (v: number) => new ort.Tensor("float32", Float32Array.of(v), []);
    const feeds: Record<string, ort.Tensor> = {
      step_size: scalar(stepSize),
      bias_correction2: scalar(bc2),
      decay_rate: scalar(decayRate),
    };
    const fetches: Record<string, ort.Tensor | null> = { grad_norm: null };
    const spare = (
      live: Map<string, Float32Array>,
      other: Map<string, Float32Array>,
      n: string,
    ) => {
      let b = other.get(n);
      if (!b) other.set(n, b = new Float32Array(live.get(n)!.length));
      return b;
    };
    for (const name of trained) {
      const shape = this.#shapes.get(name)!;
      feeds[name] = new ort.Tensor("float32", this.#w.get(name)!, shape);
      feeds[`grad:${name}`] = new ort.Tensor("float32", this.#g.get(name)!, shape);
      feeds[`m:${name}`] = new ort.Tensor("float32", this.#m.get(name)!, shape);
      feeds[`v:${name}`] = new ort.Tensor("float32", this.#v.get(name)!, shape);
      fetches[`new:${name}`] = new ort.Tensor("float32", spare(this.#w, this.#w2, name), shape);
      fetches[`new_m:${name}`] = new ort.Tensor("float32", spare(this.#m, this.#m2, name), shape);
      fetches[`new_v:${name}`] = new ort.Tensor("float32", spare(this.#v, this.#v2, name), shape);
    }
    const out = await session.run(feeds, fetches);
    const gradNorm = (out.grad_norm.data as Float32Array)[0];
    for (const name of trained) {
      for (const [live, other] of [[this.#w, this.#w2], [this.#m, this.#m2], [this.#v, this.#v2]]) {
        const a = live.get(name)!;
        live.set(name, other.get(name)!);
        other.set(name, a);
      }
    }
    for (const x of Object.values(feeds)) x.dispose();
    out.grad_norm.dispose();
    return gradNorm;
  }

  /** Copy the current weights into `model.params` (tfjs) when a step changed them. */
  syncModel(): void {
    if (!this.#dirty) return;
    for (const [name, v] of this.model.params) {
      tf.tidy(() => v.assign(tf.tensor(this.#w.get(name)!, v.shape)));
    }
    this.#dirty = false;
  }

  /** Re-read `model.params` (after the caller assigned weights, e.g. a restored checkpoint). */
  loadModel(): void {
    for (const [name, v] of this.model.params) this.#w.get(name)!.set(v.dataSync() as Float32Array);
    this.#dirty = false;
  }

  /** A copy of the optimiser state (moments and step). */
  getState(): AdamWState {
    const m: Record<string, Float32Array> = {}, v: Record<string, Float32Array> = {};
    for (const [name, a] of this.#m) m[name] = Float32Array.from(a);
    for (const [name, a] of this.#v) v[name] = Float32Array.from(a);
    return { step: this.stepCount, m, v };
  }

  /** Restore a state written by {@link getState} (or by the tfjs `AdamW`). */
  setState(state: AdamWState): void {
    for (const [name, a] of this.#m) {
      const mv = state.m[name], vv = state.v[name];
      if (!mv || !vv || mv.length !== a.length || vv.length !== a.length) {
        throw new Error(`OnnxTrainer.setState: state for ${name} is missing or has the wrong size`);
      }
      a.set(mv);
      this.#v.get(name)!.set(vv);
    }
    this.stepCount = state.step;
  }

  /** Release the sessions (the weights stay in the model after {@link syncModel}). */
  async close(): Promise<void> {
    this.syncModel();
    await this.#grad?.session.release();
    await this.#update?.session.release();
    this.#grad = null;
    this.#update = null;
  }
}
