/**
 * Which executor trains a phase. There is one trainer (`onnx/trainer.ts`: the gradient graph of
 * the one BERT definition, a fused host AdamW, data-parallel replicas); the engine only says who
 * runs the graph:
 *
 * - `onnx`: ONNX Runtime (intra-op threads, one per core by default);
 * - `tfjs`: tfjs on the pipeline's `backend` (wasm by default: one replica per core, each with its
 *   own wasm heap; cpu, webgpu, tfjs-node where importable), interpreting the same graph.
 *
 * `auto` (the stages' default) picks `onnx` when ONNX Runtime loads, else `tfjs`. Both give the
 * same step (same dropout masks, accumulation, clipping and AdamW, to float32 rounding) and the
 * same {@link AdamWState}, so a checkpoint written by one resumes on the other.
 * @module
 */

import * as ort from "onnxruntime-node";
import type { Bert } from "../model/bert.ts";
import { Trainer } from "./trainer.ts";
import { gradGraphProblem } from "../graph/train_graph.ts";
import { DataType, GraphBuilder } from "../graph/ir.ts";
import type { AdamWState } from "./optim.ts";
import type { HostBatch } from "../data/batch.ts";
import type { EngineRef } from "../engines/mod.ts";
import type { BackendName } from "../engines/tfjs_backend.ts";
import { type Device, type DeviceChoice, resolveDevice } from "../engines/device.ts";

/** Engine names a stage accepts. */
export type EngineName = "auto" | "onnx" | "tfjs";

/** What the training loop needs of an engine, for one phase. */
export interface TrainEngine {
  /** The engine that runs (`auto` resolved). */
  readonly name: "onnx" | "tfjs";
  /** ONNX Runtime's device, resolved (null on tfjs). */
  readonly device: DeviceChoice | null;
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
  /** The tfjs backend when tfjs runs (default `auto`). */
  backend?: BackendName;
  /** ONNX Runtime's device (default `auto`: webgpu on a real GPU adapter, else cpu). */
  device?: Device;
  /** Data-parallel replicas (default: tfjs one per core, onnx 1). */
  replicas?: number;
  /** Intra-op threads per replica (default: the cores shared among the replicas). */
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

/** Which engine `engine` resolves to for `objective` on a model with these heads, and why. */
export async function resolveEngine(
  engine: EngineName,
  objective: string,
  heads?: Bert["heads"],
): Promise<{ name: "onnx" | "tfjs"; reason: string }> {
  // both engines run the same graph: an objective it has no graph for fails on either
  const problem = heads ? gradGraphProblem(objective, heads) : null;
  if (problem) throw new Error(`objective '${objective}': ${problem}`);
  if (engine === "tfjs") return { name: "tfjs", reason: "asked for" };
  const ortProblem = await onnxRuntimeProblem();
  if (engine === "onnx") {
    if (ortProblem) throw new Error(`engine: onnx: ONNX Runtime cannot run here: ${ortProblem}`);
    return { name: "onnx", reason: "asked for" };
  }
  if (ortProblem) return { name: "tfjs", reason: `ONNX Runtime cannot run here (${ortProblem})` };
  return { name: "onnx", reason: "auto: ONNX Runtime loads (the faster engine)" };
}

/** The executor of a resolved engine name (ONNX Runtime on `device`, default cpu). */
export function engineRef(
  name: "onnx" | "tfjs",
  backend: BackendName = "auto",
  device: "cpu" | "webgpu" = "cpu",
): EngineRef {
  return name === "onnx" ? { kind: "onnxruntime", device } : { kind: "tfjs", backend };
}

/** Open the engine of one phase on `model`'s current weights (moments zero). */
export async function openTrainEngine(
  model: Bert,
  spec: EngineSpec,
  opts: EngineOptions,
): Promise<TrainEngine> {
  const { name } = await resolveEngine(opts.engine ?? "auto", spec.objective, model.heads);
  const cores = navigator.hardwareConcurrency ?? 1;
  // ONNX Runtime: one session on every core (2 single-thread replicas measured 5% slower on 2
  // cores, TinyBERT4 32×128); tfjs: one single-thread replica per core (its kernels thread badly)
  const replicas = opts.replicas ?? (name === "onnx" ? 1 : cores);
  const threads = opts.threads ??
    (replicas > 1 || name === "tfjs" ? Math.max(1, Math.floor(cores / replicas)) : undefined);
  // resolved once here: replicas get the lead's device, not their own `auto`
  const device = name === "onnx" ? await resolveDevice(opts.device ?? "auto") : null;
  const trainer = await Trainer.create(model, {
    ...spec,
    threads,
    replicas,
    engine: engineRef(name, opts.backend, device?.device),
  });
  return {
    name,
    device,
    step: (pieces, seed) => trainer.step(pieces, seed),
    getState: () => trainer.getState(),
    setState: (s) => trainer.setState(s),
    sync: () => trainer.syncModel(),
    close: () => trainer.close(),
  };
}
