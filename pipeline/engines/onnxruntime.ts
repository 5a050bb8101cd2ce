/**
 * The ONNX Runtime executor (`onnxruntime-node`, the CPU provider or the WebGPU one built into its
 * Linux library, see `device.ts`): runs a graph tinystill built from
 * its encoded `ModelProto`. Host arrays are handed to ONNX Runtime without copies (feeds) and, for
 * outputs given in `into`, written in place by it (pre-allocated output tensors).
 * @module
 */

import * as ort from "onnxruntime-node";
import type { Graph } from "../graph/ir.ts";
import type { Executor, GraphSession, HostTensor, OpenOptions, TensorData } from "./executor.ts";
import type { ResolvedDevice } from "./device.ts";

/** The model could not be loaded by ONNX Runtime. */
export class OnnxLoadError extends Error {
  /** Build the error for `source` (a path or "<n bytes>") with ONNX Runtime's reason. */
  constructor(source: string, reason: string) {
    super(`OnnxEngine: cannot load ONNX model from ${source}: ${reason}`);
    this.name = "OnnxLoadError";
  }
}

function ortType(a: TensorData): ort.Tensor.Type {
  if (a instanceof Float32Array) return "float32";
  if (a instanceof BigInt64Array) return "int64";
  if (a instanceof Int32Array) return "int32";
  if (a instanceof Uint8Array) return "uint8";
  return "float16";
}

/**
 * Session options of every tinystill session (sequential, all graph optimizations) on `device`
 * (`webgpu`: the WebGPU provider, with ONNX Runtime's CPU provider for the shape ops it leaves).
 */
export function sessionOptions(
  threads?: number,
  device: ResolvedDevice = "cpu",
): ort.InferenceSession.SessionOptions {
  const o: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: "all",
    executionProviders: [device],
    interOpNumThreads: 1,
    executionMode: "sequential",
    logSeverityLevel: 3, // errors only
  };
  if (threads !== undefined) o.intraOpNumThreads = threads;
  return o;
}

/** Open an ONNX Runtime session on model bytes or a file; {@link OnnxLoadError} when invalid. */
export async function openOrtSession(
  model: Uint8Array | string,
  opts: OpenOptions & { device?: ResolvedDevice } = {},
  graph?: Graph,
): Promise<GraphSession> {
  const source = typeof model === "string"
    ? model
    : `${opts.what ? opts.what + " " : ""}<${model.length} bytes>`;
  if (typeof model !== "string" && model.length === 0) {
    throw new OnnxLoadError(source, "the byte array is empty");
  }
  let session: ort.InferenceSession;
  const options = sessionOptions(opts.threads, opts.device);
  try {
    session = typeof model === "string"
      ? await ort.InferenceSession.create(model, options)
      : await ort.InferenceSession.create(model, options);
  } catch (e) {
    throw new OnnxLoadError(source, e instanceof Error ? e.message : String(e));
  }
  const fixed = new Map<string, number[]>();
  for (const o of graph?.outputs ?? []) {
    if (o.dims.every((d) => typeof d === "number")) fixed.set(o.name, o.dims as number[]);
  }
  return new OrtSession(session, fixed);
}

class OrtSession implements GraphSession {
  #s: ort.InferenceSession | undefined;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];

  /** Outputs whose dims the graph fixes (parameter gradients): written in place into `into`. */
  readonly #fixed: Map<string, number[]>;

  constructor(s: ort.InferenceSession, fixed: Map<string, number[]>) {
    this.#s = s;
    this.#fixed = fixed;
    this.inputNames = s.inputNames;
    this.outputNames = s.outputNames;
  }

  async run(
    feeds: Record<string, HostTensor>,
    fetch?: readonly string[],
    into?: Record<string, Float32Array>,
  ): Promise<Record<string, HostTensor>> {
    const s = this.#s;
    if (!s) throw new Error("OnnxEngine: the session is closed");
    const names = fetch ?? this.outputNames;
    for (const name of names) {
      if (!this.outputNames.includes(name)) {
        throw new Error(
          `OnnxEngine.run: no output '${name}' (the model has ${this.outputNames.join(", ")})`,
        );
      }
    }
    const inputs: Record<string, ort.Tensor> = {};
    for (const name of this.inputNames) {
      const f = feeds[name];
      if (!f) throw new Error(`OnnxEngine.run: no feed for the graph input '${name}'`);
      inputs[name] = new ort.Tensor(ortType(f.data), f.data, f.dims);
    }
    const fetches: Record<string, ort.Tensor | null> = {};
    for (const name of names) fetches[name] = null;
    let result: ort.InferenceSession.OnnxValueMapType | undefined;
    try {
      // ORT writes a pre-allocated output in place; that needs its dims before the run, so only
      // outputs of fixed dims (parameter gradients) are pre-allocated, others copied into `into`
      for (const [name, buf] of Object.entries(into ?? {})) {
        const dims = this.#fixed.get(name);
        if (name in fetches && dims) fetches[name] = new ort.Tensor("float32", buf, dims);
      }
      result = await s.run(inputs, fetches);
      const out: Record<string, HostTensor> = {};
      for (const name of names) {
        const t = result[name];
        const buf = into?.[name];
        if (buf && t.data !== buf) buf.set(t.data as Float32Array);
        out[name] = { data: buf ?? t.data as TensorData, dims: [...t.dims] };
      }
      return out;
    } finally {
      for (const t of Object.values(inputs)) t.dispose();
    }
  }

  async close(): Promise<void> {
    const s = this.#s;
    this.#s = undefined;
    if (s) await s.release();
  }
}

/** The ONNX Runtime executor on `device` (`onnxruntime/cpu`, `onnxruntime/webgpu`). */
export function ortExecutorOn(device: ResolvedDevice): Executor {
  return {
    name: `onnxruntime/${device}`,
    async open(graph: Graph, model: Uint8Array, opts: OpenOptions = {}): Promise<GraphSession> {
      return await openOrtSession(model, { ...opts, device }, graph);
    },
  };
}

/** The ONNX Runtime executor (CPU). */
export const ortExecutor: Executor = ortExecutorOn("cpu");
