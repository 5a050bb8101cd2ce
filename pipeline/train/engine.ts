/**
 * The training engines the loop can run a phase on, behind one interface:
 *
 * - `tfjs`: {@link DataParallel} replicas (one per core, each its own wasm heap) with the tfjs
 *   {@link AdamW};
 * - `onnx`: {@link OnnxTrainer} — tinystill's generated forward/backward graph on ONNX Runtime
 *   (intra-op threads, one per core) and a fused host AdamW.
 *
 * `auto` (the default of the stages) picks `onnx` when ONNX Runtime loads and the objective has a
 * graph, else `tfjs`: measured on 2 cores, a TinyBERT4 32×128 train step takes ~0.9 s on ONNX
 * Runtime and ~3.8 s on tfjs-wasm (`deno task bench`). Both engines give the same step — the same
 * dropout masks, micro-batch accumulation, clipping and AdamW arithmetic, to float32 rounding —
 * and their optimiser state is the same {@link AdamWState}, so a checkpoint written by one resumes
 * on the other.
 * @module
 */

import * as ort from "onnxruntime-node";
import type { Bert, BertHeads } from "../model/bert.ts";
import { OnnxTrainer } from "../onnx/trainer.ts";
import { GradGraphObjectives, gradGraphProblem } from "../onnx/train_graph.ts";
import { DataType, GraphBuilder } from "../onnx/graph.ts";
import { DataParallel } from "./parallel.ts";
import { AdamW, type AdamWState } from "./optim.ts";
import type { HostBatch } from "./batch.ts";

/** Engine names a stage accepts. */
export type EngineName = "auto" | "onnx" | "tfjs";

/** What the training loop needs of an engine, for one phase. */
export interface TrainEngine {
  /** The engine that runs (`auto` resolved). */
  readonly name: "onnx" | "tfjs";
  /** One optimiser step over the micro-batches of one batch. */
  step(pieces: HostBatch[], seed: number): Promise<{ loss: number; gradNorm: number; lr: number }>;
  getState(): AdamWState;
  setState(state: AdamWState): void;
  /** Bring `model.params` up to date (before a checkpoint, an evaluation, the phase's end). */
  sync(): void;
  /** Release the engine (after a final {@link sync}). */
  close(): Promise<void>;
}

/** What {@link openTrainEngine} needs to know about the phase. */
export interface EngineSpec {
  objective: string;
  objectiveOptions?: unknown;
  lr: (step: number) => number;
  weightDecay: number;
  maxGradNorm: number;
}

/** Options of {@link openTrainEngine}. */
export interface EngineOptions {
  engine?: EngineName;
  /** Data-parallel replicas (default: tfjs one per core, onnx 1). */
  replicas?: number;
  /** ONNX Runtime intra-op threads per replica (default: the cores shared among the replicas). */
  threads?: number;
}

let ortWorks: Promise<string | null> | null = null;

/** null when ONNX Runtime can create a session here, else why not. */
function onnxRuntimeProblem(): Promise<string | null> {
  ortWorks ??= (async () => {
    try {
      // the smallest model: y = Identity(x)
      const g = new GraphBuilder();
      const x = g.input({ name: "x", elemType: DataType.FLOAT, dims: [1] });
      g.output(g.node("Identity", [x]), { name: "y", elemType: DataType.FLOAT, dims: [1] });
      const bytes = g.toModel({ name: "probe", opset: 17, irVersion: 8, producer: "tinystill" });
      const s = await ort.InferenceSession.create(bytes);
      await s.release();
      return null;
    } catch (e) {
      return e instanceof Error ? e.message : String(e);
    }
  })();
  return ortWorks;
}

/** Which engine `auto` resolves to for `objective` here, and why. */
export async function resolveEngine(
  engine: EngineName,
  objective: string,
  heads?: BertHeads,
): Promise<{ name: "onnx" | "tfjs"; reason: string }> {
  if (engine === "tfjs") return { name: "tfjs", reason: "asked for" };
  // the training graphs have every head (sequence, token, QA, MLM); an objective the model's
  // heads cannot serve (e.g. `span` without a QA head) stays on tfjs, which reports it
  const supported = GradGraphObjectives.includes(objective);
  const headProblem = heads ? gradGraphProblem(objective, heads) : null;
  if (headProblem && supported) {
    if (engine === "onnx") throw new Error(`engine: onnx: ${headProblem}; use engine: tfjs`);
    return { name: "tfjs", reason: `no ONNX graph: ${headProblem}` };
  }
  const problem = await onnxRuntimeProblem();
  if (engine === "onnx") {
    if (!supported) {
      throw new Error(
        `engine: onnx has no training graph for objective '${objective}' ` +
          `(it has ${GradGraphObjectives.join(", ")}); use engine: tfjs`,
      );
    }
    if (problem) throw new Error(`engine: onnx: ONNX Runtime cannot run here: ${problem}`);
    return { name: "onnx", reason: "asked for" };
  }
  if (!supported) return { name: "tfjs", reason: `no ONNX graph for objective '${objective}'` };
  if (problem) return { name: "tfjs", reason: `ONNX Runtime cannot run here (${problem})` };
  return { name: "onnx", reason: "auto: ONNX Runtime loads (the faster engine)" };
}

/** Open the engine of one phase on `model`'s current weights (moments zero). */
export async function openTrainEngine(
  model: Bert,
  spec: EngineSpec,
  opts: EngineOptions,
): Promise<TrainEngine> {
  const { name } = await resolveEngine(opts.engine ?? "auto", spec.objective, model.heads);
  if (name === "onnx") {
    // one session on every core: 2 single-thread replicas measured 5% slower on 2 cores
    // (TinyBERT4 32×128: 1,060–1,072 vs 1,006–1,013 ms a step, same run)
    const replicas = opts.replicas ?? 1;
    const cores = navigator.hardwareConcurrency ?? 1;
    const threads = opts.threads ??
      (replicas > 1 ? Math.max(1, Math.floor(cores / replicas)) : undefined);
    const trainer = await OnnxTrainer.create(model, { ...spec, threads, replicas });
    return {
      name,
      step: (pieces, seed) => trainer.step(pieces, seed),
      getState: () => trainer.getState(),
      setState: (s) => trainer.setState(s),
      sync: () => trainer.syncModel(),
      close: () => trainer.close(),
    };
  }
  const opt = new AdamW(model.params, {
    lr: spec.lr,
    weightDecay: spec.weightDecay,
    maxGradNorm: spec.maxGradNorm,
  });
  let dp: DataParallel;
  try {
    dp = await DataParallel.create(model, {
      replicas: opts.replicas ?? navigator.hardwareConcurrency ?? 1,
      objective: spec.objective,
      objectiveOptions: spec.objectiveOptions,
    });
  } catch (e) {
    opt.dispose();
    throw e;
  }
  return {
    name,
    step: (pieces, seed) => dp.step(pieces, opt, seed),
    getState: () => opt.getState(),
    setState: (s) => opt.setState(s),
    sync: () => {},
    close: () => {
      dp.close();
      opt.dispose();
      return Promise.resolve();
    },
  };
}
