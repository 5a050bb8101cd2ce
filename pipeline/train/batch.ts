/**
 * Host batches (`data/batch.ts`) as tfjs tensors, inside a training or forward step.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { BertInputs } from "../model/bert.ts";
import type { HostArray, HostBatch } from "../data/batch.ts";
import type { Batch } from "./objectives.ts";

// The host batch lives in data/ (store/ and data sources build it without depending on train/);
// re-exported for the train/, onnx/ and stages/ modules that import it from here.
export { batchRows, type HostArray, type HostBatch, sliceBatch } from "../data/batch.ts";

/** Tensors for a host batch (int32 or float32 as stored). */
export function toTensors(batch: HostBatch): Batch {
  const out: Batch = {};
  for (const [k, v] of Object.entries(batch)) {
    out[k] = tf.tensor(v.data, v.shape, v.data instanceof Int32Array ? "int32" : "float32");
  }
  return out;
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
