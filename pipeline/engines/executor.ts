/**
 * What an engine is: something that runs a {@link Graph} tinystill built (forward, loss and
 * backward, or an inference graph) on host tensors. Engines never define a model; they execute
 * the graphs of `pipeline/graph/` (ONNX Runtime from the encoded `ModelProto`, tfjs by
 * interpreting the nodes with its kernels).
 * @module
 */

import type { Graph, HostTensor, TensorData } from "../graph/ir.ts";

export type { HostTensor, TensorData };

/** One graph, ready to run. */
export interface GraphSession {
  /** Names of the graph's inputs and outputs. */
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /**
   * Run the graph on `feeds` (every graph input) and return the outputs named in `fetch`
   * (default: all). Where `into` holds a float32 array for an output, the result is written into
   * it (same size) and that array is returned, so a trainer can reuse its buffers.
   */
  run(
    feeds: Record<string, HostTensor>,
    fetch?: readonly string[],
    into?: Record<string, Float32Array>,
  ): Promise<Record<string, HostTensor>>;
  /** Free what the session holds. */
  close(): Promise<void>;
}

/** Options every executor understands. */
export interface OpenOptions {
  /** Intra-op threads (default: one per core). */
  threads?: number;
  /** What the graph is, for error messages (e.g. "the gradient graph"). */
  what?: string;
}

/** An executor: opens sessions on graphs. */
export interface Executor {
  /** `onnxruntime` or `tfjs`, with the device or backend (e.g. `tfjs/wasm`). */
  readonly name: string;
  open(graph: Graph, model: Uint8Array, opts?: OpenOptions): Promise<GraphSession>;
}
