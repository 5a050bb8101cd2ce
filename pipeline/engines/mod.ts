/**
 * The executors of tinystill's graphs, by name: ONNX Runtime (default) and tfjs (the same graphs,
 * interpreted with tfjs kernels on a chosen backend). An {@link EngineRef} is plain JSON so that
 * worker replicas open the same executor as their lead.
 * @module
 */

import type { Executor } from "./executor.ts";
import { ortExecutor } from "./onnxruntime.ts";
import type { BackendName } from "./tfjs_backend.ts";

/** Which executor runs a graph. */
export type EngineRef =
  | { kind: "onnxruntime" }
  | { kind: "tfjs"; backend?: BackendName };

/** The executor `ref` names (ONNX Runtime when omitted); tfjs is imported only when asked for. */
export async function openExecutor(ref?: EngineRef): Promise<Executor> {
  if (!ref || ref.kind === "onnxruntime") return ortExecutor;
  if (ref.kind === "tfjs") {
    const { tfjsExecutor } = await import("./tfjs.ts");
    return tfjsExecutor(ref.backend);
  }
  throw new Error(`unknown engine ${JSON.stringify(ref)}`);
}
