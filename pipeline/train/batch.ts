/**
 * A batch in host memory (`HostBatch`): named typed arrays with their shapes, split along the
 * first axis. It is what data sources produce, what crosses to worker replicas, and what becomes
 * tensors only inside a training or forward step.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { BertInputs } from "../model/bert.ts";
import type { Batch } from "./objectives.ts";

/** A host-side array with its shape: what crosses to a worker. */
export interface HostArray {
  data: Int32Array | Float32Array;
  shape: number[];
}

/** A batch in host memory, every entry split along its first axis. */
export type HostBatch = Record<string, HostArray>;

/** Tensors for a host batch (int32 or float32 as stored). */
export function toTensors(batch: HostBatch): Batch {
  const out: Batch = {};
  for (const [k, v] of Object.entries(batch)) {
    out[k] = tf.tensor(v.data, v.shape, v.data instanceof Int32Array ? "int32" : "float32");
  }
  return out;
}

/** Rows `[start, end)` of every entry. */
export function sliceBatch(batch: HostBatch, start: number, end: number): HostBatch {
  const out: HostBatch = {};
  for (const [k, v] of Object.entries(batch)) {
    const row = v.shape.slice(1).reduce((a, b) => a * b, 1);
    out[k] = {
      data: v.data.slice(start * row, end * row),
      shape: [end - start, ...v.shape.slice(1)],
    };
  }
  return out;
}

/** Number of examples (first-axis length, the same for every entry). */
export function batchRows(batch: HostBatch): number {
  const sizes = new Set(Object.values(batch).map((v) => v.shape[0]));
  if (sizes.size !== 1) throw new Error(`batch entries disagree on the batch size: ${[...sizes]}`);
  return [...sizes][0];
}

/** The model inputs of a host batch as int32 tensors (the caller disposes them, e.g. by tidy). */
export function inputTensors(b: HostBatch): BertInputs {
  const t = (a: HostArray) =>
    tf.tensor2d(a.data as Int32Array, a.shape as [number, number], "int32");
  return {
    inputIds: t(b.inputIds),
    attentionMask: t(b.attentionMask),
    tokenTypeIds: t(b.tokenTypeIds),
  };
}
