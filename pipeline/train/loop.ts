/**
 * The training loop shared by `distill` and `finetune`: phases of AdamW steps (decoupled decay,
 * none on bias/LayerNorm), linear warmup + decay, gradient clipping and gradient accumulation
 * over micro-batches (so the effective batch does not depend on what fits in memory), on either
 * engine (`engine.ts`: the one trainer, its graph run by ONNX Runtime or tfjs).
 *
 * Reproducible and resumable: the data order is a function of `(seed, epoch)`, dropout masks of
 * `(seed, phase, step)`, and every `checkpointEvery` steps the weights, the optimiser moments and
 * the loop state are written (atomically, as one directory swap) under `stateDir`. A process
 * killed at any point resumes from the last checkpoint and ends with the same weights as one that
 * never stopped. A NaN/Inf loss stops with {@link TrainingDivergedError} naming the phase and
 * step; the last good checkpoint is left as it was.
 * @module
 */

import { join } from "node:path";
import type { Bert, Param } from "../model/bert.ts";
import { seededRandom, shuffle } from "../random.ts";
import { exists, swapDir, writeJsonAtomic } from "../store/fsutil.ts";
import { linearWarmupDecay } from "./optim.ts";
import { NonFiniteLossError } from "../errors.ts";
import { type EngineName, openTrainEngine, type TrainEngine } from "./engine.ts";
import type { HostBatch } from "../data/batch.ts";
import type { BackendName } from "../engines/tfjs_backend.ts";
import type { Device, DeviceChoice } from "../engines/device.ts";
import type { Progress } from "../run/progress.ts";
import { readSafetensors, writeSafetensors } from "../model/safetensors.ts";

/** One phase of training: an objective and its optimiser settings. */
export interface Phase {
  name: string;
  /** Objective name (see `objectives.ts`), built from `objectiveOptions` for a factory. */
  objective: string;
  objectiveOptions?: unknown;
  /** Length: whole epochs over the source, or a number of optimiser steps. */
  epochs?: number;
  steps?: number;
  /** Examples per optimiser step. */
  batchSize: number;
  /** Examples per forward/backward pass (gradients are accumulated); default `batchSize`. */
  microBatchSize?: number;
  lr: number;
  /** Warmup as a fraction of the phase's steps (linear decay to 0 after it). */
  warmup: number;
  weightDecay: number;
  maxGradNorm: number;
  /** Evaluate every this many steps (and at the end of the phase); 0: only at the end. */
  evalEvery?: number;
  /** Evaluate in this phase (and keep the best weights when the loop keeps the best). */
  evaluate?: boolean;
  /** This phase's rows (e.g. only the teacher outputs its losses read); default the loop's. */
  source?: BatchSource;
}

/** Training rows, in groups a batch never crosses (e.g. one Parquet part of a teacher cache). */
export interface BatchSource {
  /** Row ranges `[start, end)`. */
  groups: { start: number; end: number }[];
  /** A padded host batch of these rows (all from group `group`), in this order. */
  load(group: number, rows: number[], epoch?: number): Promise<HostBatch>;
  /** Each row's token count: batches are then bucketed by length (less padding). */
  lengths?: ArrayLike<number>;
}

/** A point of the loss curve. */
export interface CurvePoint {
  phase: string;
  /** Step within the phase (from 1) and over the whole run. */
  step: number;
  globalStep: number;
  loss: number;
  lr: number;
  gradNorm: number;
}

/** An evaluation during training. */
export interface EvalPoint {
  phase: string;
  step: number;
  globalStep: number;
  metrics: Record<string, number>;
}

/** Options of {@link train}. */
export interface TrainOptions {
  model: Bert;
  phases: Phase[];
  source: BatchSource;
  /** Where checkpoints live (inside the stage's output, so a rerun resumes). */
  stateDir: string;
  /** Write a checkpoint every this many steps (and at every phase end); 0 = phase ends only. */
  checkpointEvery: number;
  seed: number;
  /**
   * Data-parallel replicas. Default: one per core on tfjs; 1 on onnx, whose intra-op threads
   * measured 5% faster than 2 single-thread replicas on 2 cores (`engine.ts`).
   */
  replicas?: number;
  /** Training engine (default `auto`: ONNX Runtime when it loads, see `engine.ts`). */
  engine?: EngineName;
  /** The tfjs backend when the engine is tfjs (default `auto`). */
  backend?: BackendName;
  /** ONNX Runtime's device (default `auto`: webgpu on a real GPU adapter, else cpu). */
  device?: Device;
  /** Intra-op threads per replica (default: the cores shared among the replicas). */
  threads?: number;
  /** Dev-set evaluation; higher `metric` is better. */
  evaluate?: (model: Bert) => Promise<Record<string, number>>;
  metric?: string;
  /** Restore the best-scoring weights at the end (TinyBERT keeps the best dev checkpoint). */
  keepBest?: boolean;
  progress?: (label: string, total: number) => Progress;
  log?: (m: string) => void;
  /** Test hook: called after each step has been applied (and checkpointed, when due). */
  afterStep?: (globalStep: number) => void | Promise<void>;
}

/** What {@link train} returns (also written to `stateDir/state.json`). */
export interface TrainResult {
  curve: CurvePoint[];
  evals: EvalPoint[];
  best?: EvalPoint;
  steps: number;
  /** Steps that were restored from a checkpoint rather than run in this process. */
  resumedAt: number;
  seconds: number;
  examples: number;
  /** ONNX Runtime's device as resolved for the last phase, with the adapter (null on tfjs). */
  device?: DeviceChoice | null;
}

/** The loss became NaN or infinite; the last good checkpoint is kept. */
export class TrainingDivergedError extends Error {
  constructor(readonly phase: string, readonly step: number, readonly loss: number, at: string) {
    super(
      `training diverged: loss is ${loss} at phase "${phase}" step ${step}; ` +
        `the last good checkpoint is kept in ${at}. Lower the learning rate or check the inputs.`,
    );
    this.name = "TrainingDivergedError";
  }
}

/**
 * The batches of one epoch: groups in a shuffled order, rows shuffled within each group, cut
 * into batches of `batchSize` (a group's last batch may be smaller). With `lengths`, rows are
 * also bucketed by length — each window of 50 batches' worth of shuffled rows is sorted by
 * length before it is cut, and the group's batches are then shuffled — so a batch pads to
 * little more than its own examples (Hugging Face's `group_by_length`). A function of its
 * arguments only, so a resumed run sees the same order.
 */
export function epochBatches(
  groups: { start: number; end: number }[],
  batchSize: number,
  seed: number,
  epoch: number,
  lengths?: ArrayLike<number>,
): { group: number; rows: number[] }[] {
  const rand = seededRandom((seed * 1000003 + epoch * 7919 + 17) >>> 0);
  const out: { group: number; rows: number[] }[] = [];
  for (const g of shuffle(groups.map((_, i) => i), rand)) {
    const { start, end } = groups[g];
    const rows = shuffle(Array.from({ length: end - start }, (_, i) => start + i), rand);
    const batches: { group: number; rows: number[] }[] = [];
    const window = lengths ? batchSize * 50 : rows.length;
    for (let w = 0; w < rows.length; w += window) {
      const chunk = rows.slice(w, w + window);
      if (lengths) chunk.sort((a, b) => lengths[a] - lengths[b] || a - b);
      for (let i = 0; i < chunk.length; i += batchSize) {
        batches.push({ group: g, rows: chunk.slice(i, i + batchSize) });
      }
    }
    out.push(...(lengths ? shuffle(batches, rand) : batches));
  }
  return out;
}

/** Optimiser steps of a phase over a source. */
export function phaseSteps(phase: Phase, source: BatchSource): number {
  if (phase.steps !== undefined) return phase.steps;
  const perEpoch = epochBatches(source.groups, phase.batchSize, 0, 0, source.lengths).length;
  return Math.max(1, Math.round((phase.epochs ?? 1) * perEpoch));
}

/** The `k`-th batch of a phase (epochs continue the order past the first). */
function* phaseBatches(phase: Phase, source: BatchSource, seed: number, phaseIndex: number) {
  for (let epoch = 0;; epoch++) {
    const batches = epochBatches(
      source.groups,
      phase.batchSize,
      seed + phaseIndex * 101,
      epoch,
      source.lengths,
    );
    for (const b of batches) yield { ...b, epoch };
  }
}

interface SavedState {
  phase: number;
  /** Steps done in that phase. */
  step: number;
  globalStep: number;
  curve: CurvePoint[];
  evals: EvalPoint[];
  best?: EvalPoint;
  examples: number;
}

function assignParams(
  params: Map<string, Param>,
  file: Map<string, { data: Float32Array }>,
  path: string,
): void {
  for (const [name, v] of params) {
    const t = file.get(name);
    if (!t || t.data.length !== v.data.length) {
      throw new Error(`${path}: no or mis-sized tensor ${name}`);
    }
    v.data.set(t.data);
  }
}

/** Write a checkpoint as one directory, swapped into place (a kill leaves the old one whole). */
async function saveCheckpoint(
  dir: string,
  model: Bert,
  opt: Pick<TrainEngine, "getState">,
  state: SavedState,
): Promise<void> {
  const tmp = `${dir}.tmp`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmp, { recursive: true });
  await writeSafetensors(join(tmp, "weights.safetensors"), model.params);
  const s = opt.getState();
  const moments = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, v] of model.params) {
    moments.set(`m.${name}`, { shape: v.shape, data: s.m[name] });
    moments.set(`v.${name}`, { shape: v.shape, data: s.v[name] });
  }
  await writeSafetensors(join(tmp, "optimizer.safetensors"), moments, {
    metadata: { step: String(s.step) },
  });
  await writeJsonAtomic(join(tmp, "state.json"), state);
  await swapDir(tmp, dir); // `${dir}.old` is what findCheckpoint falls back to
}

/** The checkpoint to resume from: `ckpt/`, or `ckpt.old/` when a kill hit the swap. */
async function findCheckpoint(dir: string): Promise<string | null> {
  for (const d of [dir, `${dir}.old`]) {
    if (await exists(join(d, "state.json"))) return d;
  }
  return null;
}

/** Run every phase (resuming from `stateDir` when a checkpoint is there). */
export async function train(opts: TrainOptions): Promise<TrainResult> {
  const { model, phases, source, stateDir } = opts;
  const log = opts.log ?? (() => {});
  const metric = opts.metric ?? "accuracy";
  await Deno.mkdir(stateDir, { recursive: true });
  const ckptDir = join(stateDir, "ckpt"), bestFile = join(stateDir, "best.safetensors");
  const t0 = performance.now();
  let lastDevice: DeviceChoice | null = null;

  let state: SavedState = { phase: 0, step: 0, globalStep: 0, curve: [], evals: [], examples: 0 };
  let restoredMoments: { file: Map<string, { data: Float32Array }>; step: number } | null = null;
  const found = await findCheckpoint(ckptDir);
  if (found) {
    state = JSON.parse(await Deno.readTextFile(join(found, "state.json")));
    const w = await readSafetensors(join(found, "weights.safetensors"));
    assignParams(model.params, w.tensors, found);
    const o = await readSafetensors(join(found, "optimizer.safetensors"));
    restoredMoments = { file: o.tensors, step: Number(o.metadata.step) };
    log(`resuming from ${found}: phase ${phases[state.phase]?.name} step ${state.step}`);
  }
  const resumedAt = state.globalStep;
  /** Where the last good checkpoint is (a resume from `ckpt.old` reads there until a save). */
  let lastCheckpoint = found ?? ckptDir;

  for (let pi = state.phase; pi < phases.length; pi++) {
    const phase = phases[pi];
    const src = phase.source ?? source;
    const total = phaseSteps(phase, src);
    const engine = await openTrainEngine(model, {
      objective: phase.objective,
      objectiveOptions: phase.objectiveOptions,
      lr: linearWarmupDecay(phase.lr, Math.round(phase.warmup * total), total),
      weightDecay: phase.weightDecay,
      maxGradNorm: phase.maxGradNorm,
    }, {
      engine: opts.engine,
      backend: opts.backend,
      device: opts.device,
      replicas: opts.replicas,
      threads: opts.threads,
    });
    if (pi === state.phase && restoredMoments && state.step > 0) {
      const m: Record<string, Float32Array> = {}, v: Record<string, Float32Array> = {};
      for (const name of model.params.keys()) {
        m[name] = restoredMoments.file.get(`m.${name}`)!.data;
        v[name] = restoredMoments.file.get(`v.${name}`)!.data;
      }
      engine.setState({ step: restoredMoments.step, m, v });
    }
    const startStep = pi === state.phase ? state.step : 0;
    if (pi !== state.phase) state = { ...state, phase: pi, step: 0 };
    lastDevice = engine.device;
    // the device only when it is not the CPU (logs, and the notebooks showing them, stay as
    // they were on a machine without a GPU)
    const gpu = engine.device?.device === "webgpu" ? ` on webgpu (${engine.device.reason})` : "";
    log(`${phase.name}: ${engine.name} engine${gpu}`);
    const bar = opts.progress?.(`${phase.name}`, total);
    bar?.tick(startStep);
    const micro = phase.microBatchSize ?? phase.batchSize;
    const evalDue = (step: number) =>
      phase.evaluate && opts.evaluate &&
      (step === total || (phase.evalEvery ? step % phase.evalEvery === 0 : false));
    const logEvery = Math.max(1, Math.round(total / 10));
    try {
      const batches = phaseBatches(phase, src, opts.seed, pi);
      for (let k = 0; k < startStep; k++) batches.next();
      for (let step = startStep + 1; step <= total; step++) {
        const { group, rows, epoch } = batches.next().value!;
        const pieces: HostBatch[] = [];
        for (let i = 0; i < rows.length; i += micro) {
          pieces.push(await src.load(group, rows.slice(i, i + micro), epoch));
        }
        let res;
        try {
          res = await engine.step(pieces, opts.seed * 1_000_003 + pi * 100_003 + step);
        } catch (e) {
          if (e instanceof NonFiniteLossError) {
            throw new TrainingDivergedError(phase.name, step, e.loss, lastCheckpoint);
          }
          throw e;
        }
        state.step = step;
        state.globalStep++;
        state.examples += rows.length;
        state.curve.push({
          phase: phase.name,
          step,
          globalStep: state.globalStep,
          loss: res.loss,
          lr: res.lr,
          gradNorm: res.gradNorm,
        });
        bar?.tick(1);
        if (step % logEvery === 0 || step === total) {
          log(
            `${phase.name} step ${step}/${total} loss ${res.loss.toPrecision(4)} ` +
              `lr ${res.lr.toExponential(2)} |g| ${res.gradNorm.toPrecision(3)}`,
          );
        }
        if (evalDue(step)) {
          engine.sync();
          const metrics = await opts.evaluate!(model);
          const point = { phase: phase.name, step, globalStep: state.globalStep, metrics };
          state.evals.push(point);
          const better = !state.best || metrics[metric] > state.best.metrics[metric];
          log(
            `${phase.name} step ${step}: dev ${
              Object.entries(metrics).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(" ")
            }${better ? " (best)" : ""}`,
          );
          if (better) {
            state.best = point;
            if (opts.keepBest) {
              await writeSafetensors(bestFile, model.modelParams());
            }
          }
        }
        if (
          step === total ||
          (opts.checkpointEvery > 0 && state.globalStep % opts.checkpointEvery === 0)
        ) {
          engine.sync();
          await saveCheckpoint(ckptDir, model, engine, state);
          lastCheckpoint = ckptDir;
        }
        await opts.afterStep?.(state.globalStep);
      }
    } finally {
      await engine.close(); // syncs the weights into the model first
    }
    bar?.finish();
    restoredMoments = null;
  }
  if (opts.keepBest && state.best && await exists(bestFile)) {
    const w = await readSafetensors(bestFile);
    assignParams(model.modelParams(), w.tensors, bestFile);
    log(
      `kept the best dev checkpoint: ${state.best.phase} step ${state.best.step} ` +
        `(${metric} ${state.best.metrics[metric].toFixed(4)})`,
    );
  }
  const result: TrainResult = {
    device: lastDevice,
    curve: state.curve,
    evals: state.evals,
    best: state.best,
    steps: state.globalStep,
    resumedAt,
    seconds: (performance.now() - t0) / 1000,
    examples: state.examples,
  };
  return result;
}
