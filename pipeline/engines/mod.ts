/**
 * The executors of tinystill's graphs, by name: ONNX Runtime (default) and tfjs (the same graphs,
 * interpreted with tfjs kernels on a chosen backend). An {@link EngineRef} is plain JSON so that
 * worker replicas open the same executor as their lead.
 * @module
 */

import type { Executor } from "./executor.ts";
import { ortExecutor, ortExecutorOn } from "./onnxruntime.ts";
import { type Device, resolveDevice } from "./device.ts";
import type { BackendName } from "./tfjs_backend.ts";

/**
 * Which executor runs a graph. ONNX Runtime's `device` is `cpu` when omitted; `auto` is resolved
 * when the executor opens (a lead resolves it once and hands its replicas the resolved ref).
 */
export type EngineRef =
  | { kind: "onnxruntime"; device?: Device }
  | { kind: "tfjs"; backend?: BackendName };

/** The executor `ref` names (ONNX Runtime when omitted); tfjs is imported only when asked for. */
export async function openExecutor(ref?: EngineRef): Promise<Executor> {
  if (!ref || ref.kind === "onnxruntime") {
    if (!ref?.device || ref.device === "cpu") return ortExecutor;
    return ortExecutorOn((await resolveDevice(ref.device)).device);
  }
  if (ref.kind === "tfjs") {
    const { tfjsExecutor } = await import("./tfjs.ts");
    return tfjsExecutor(ref.backend);
  }
  throw new Error(`unknown engine ${JSON.stringify(ref)}`);
}
