/**
 * AdamW with decoupled weight decay (as `torch.optim.AdamW`), global-norm gradient clipping,
 * and linear warmup + linear decay — the optimiser BERT and TinyBERT are trained with.
 * @module
 */

import * as tf from "@tensorflow/tfjs";

/** Options of {@link AdamW}. */
export interface AdamWOptions {
  /** Peak learning rate, or a schedule `step -> lr` (step counts from 1). */
  lr: number | ((step: number) => number);
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay, applied to parameters for which `decay(name)` is true. */
  weightDecay?: number;
  /** Which parameters decay (default: all but biases and LayerNorm weights). */
  decay?: (name: string) => boolean;
  /** Clip the global gradient norm to this value (off when undefined or ≤ 0). */
  maxGradNorm?: number;
}

/**
 * Linear warmup to `peak` over the first `warmup` steps, then linear decay over the other
 * `total − warmup` steps, for steps `s = 1 … total`:
 *
 * ```text
 * lr(s) = peak · s / warmup                        for s ≤ warmup
 * lr(s) = peak · (total − s + 1) / (total − warmup)  for warmup < s ≤ total
 * ```
 *
 * Every step of the phase gets a non-zero rate: warmup climbs `peak/warmup, …, peak`, decay
 * falls `peak, …, peak/(total − warmup)` (the rate reaches 0 only after the last step), so the
 * peak is applied on the last warmup step and on the first decay step. With `warmup = 0`, step 1
 * gets the peak and the last step `peak/total`: a 1-step phase takes one step at `peak`, a
 * 2-step phase `peak` then `peak/2`. Steps past `total` get 0 (`peak` when `total ≤ warmup`).
 */
export function linearWarmupDecay(
  peak: number,
  warmup: number,
  total: number,
): (step: number) => number {
  return (step: number): number => {
    if (warmup > 0 && step <= warmup) return (peak * step) / warmup;
    if (total <= warmup) return peak;
    return peak * Math.max(0, (total - step + 1) / (total - warmup));
  };
}

/** Serializable optimiser state (for checkpoints and resume). */
export interface AdamWState {
  step: number;
  m: Record<string, Float32Array>;
  v: Record<string, Float32Array>;
}

/** AdamW over a named parameter map (HF names, so no-decay rules can be written by name). */
export class AdamW {
  readonly params: Map<string, tf.Variable>;
  /** Number of updates applied so far. */
  stepCount = 0;
  private readonly opts: Required<Omit<AdamWOptions, "maxGradNorm">> & { maxGradNorm?: number };
  /** True when a custom `decay` rule was given (it cannot be sent to a worker replica). */
  readonly hasCustomDecay: boolean;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();

  constructor(params: Map<string, tf.Variable>, opts: AdamWOptions) {
    this.params = params;
    this.hasCustomDecay = opts.decay !== undefined;
    this.opts = {
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-6,
      weightDecay: 0.01,
      decay: (n) => !(n.endsWith(".bias") || n.includes("LayerNorm.")),
      ...opts,
    };
    for (const [name, p] of params) {
      this.m.set(name, tf.variable(tf.zerosLike(p), false));
      this.v.set(name, tf.variable(tf.zerosLike(p), false));
    }
  }

  /** The options that can cross to a worker (the schedule and decay rule stay here). */
  hyperparameters(): {
    beta1: number;
    beta2: number;
    eps: number;
    weightDecay: number;
    maxGradNorm?: number;
  } {
    const { beta1, beta2, eps, weightDecay, maxGradNorm } = this.opts;
    return { beta1, beta2, eps, weightDecay, maxGradNorm };
  }

  /** The learning rate the next {@link step} will use. */
  currentLr(): number {
    const lr = this.opts.lr;
    return typeof lr === "number" ? lr : lr(this.stepCount + 1);
  }

  /**
   * Apply one update from `grads` (keyed like `params`; missing entries are skipped).
   * Returns the global gradient norm before clipping. Does not dispose `grads`. `lrOverride`
   * replaces the schedule for this step (replicas are told the lead's learning rate).
   */
  step(grads: Map<string, tf.Tensor>, lrOverride?: number): { gradNorm: number; lr: number } {
    const { beta1, beta2, eps, weightDecay, decay, maxGradNorm } = this.opts;
    const lr = lrOverride ?? this.currentLr();
    this.stepCount++;
    const t = this.stepCount;
    const gradNorm = tf.tidy(() => {
      const squares = [...grads.values()].map((g) => tf.sum(tf.square(g)));
      return squares.length ? tf.sqrt(tf.addN(squares)).dataSync()[0] : 0;
    });
    // as torch.nn.utils.clip_grad_norm_: scale by min(1, max / (norm + 1e-6))
    const clip = maxGradNorm && maxGradNorm > 0 ? Math.min(1, maxGradNorm / (gradNorm + 1e-6)) : 1;
    const bc1 = 1 - beta1 ** t, bc2 = 1 - beta2 ** t;
    for (const [name, p] of this.params) {
      const g0 = grads.get(name);
      if (!g0) continue;
      tf.tidy(() => {
        const g = clip === 1 ? g0 : tf.mul(g0, clip);
        const m = this.m.get(name)!, v = this.v.get(name)!;
        const m1 = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
        const v1 = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        m.assign(m1);
        v.assign(v1);
        // p ← p·(1 − lr·wd) − lr · m̂ / (√v̂ + eps)
        const denom = tf.add(tf.sqrt(tf.div(v1, bc2)), eps);
        let next = tf.sub(p, tf.mul(tf.div(m1, denom), lr / bc1));
        if (weightDecay > 0 && decay(name)) next = tf.sub(next, tf.mul(p, lr * weightDecay));
        p.assign(next);
      });
    }
    return { gradNorm, lr };
  }

  /** Copy out the state (moments and step) for a checkpoint. */
  getState(): AdamWState {
    const m: Record<string, Float32Array> = {}, v: Record<string, Float32Array> = {};
    for (const [name, t] of this.m) m[name] = t.dataSync() as Float32Array;
    for (const [name, t] of this.v) v[name] = t.dataSync() as Float32Array;
    return { step: this.stepCount, m, v };
  }

  /** Restore a state written by {@link getState}. */
  setState(state: AdamWState): void {
    for (const [name, t] of this.m) {
      const mv = state.m[name], vv = state.v[name];
      if (!mv || !vv || mv.length !== t.size || vv.length !== t.size) {
        throw new Error(`AdamW.setState: state for ${name} is missing or has the wrong size`);
      }
      tf.tidy(() => {
        t.assign(tf.tensor(mv, t.shape));
        this.v.get(name)!.assign(tf.tensor(vv, t.shape));
      });
    }
    this.stepCount = state.step;
  }

  /** Free the moment buffers. */
  dispose(): void {
    for (const t of this.m.values()) t.dispose();
    for (const t of this.v.values()) t.dispose();
  }
}
