/// <reference lib="deno.worker" />
/**
 * A model replica in a worker thread (see `parallel.ts`): holds a copy of the weights in its own
 * wasm instance and computes gradients on the shards it is sent.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { type BackendName, setBackend, wasmHeapBytes } from "../tfjs/backend.ts";
import { Bert, type BertHeads, parameterShapes } from "../model/bert.ts";
import type { BertConfig } from "../model/config.ts";
import "../distill/objective.ts"; // registers the distillation objective
import { getObjective, type Objective } from "./objectives.ts";
import { AdamW, type AdamWOptions, type AdamWState } from "./optim.ts";
import {
  computeGradients,
  digestWeights,
  forwardToHost,
  GradLayout,
  type OutputName,
  readGradients,
  transferables,
  writeGradients,
} from "./parallel.ts";
import { type HostBatch, toTensors } from "./batch.ts";

let model: Bert | null = null;
let objective: Objective | null = null;
let optimizer: AdamW | null = null;
let layout: GradLayout | null = null;
/** Where this replica writes its gradients, and where it reads the averaged ones. */
let gradsOut: Float32Array | null = null, gradsIn: Float32Array | null = null;

function setWeights(weights: Record<string, Float32Array>): void {
  for (const [name, v] of model!.params) {
    const data = weights[name];
    if (!data || data.length !== v.size) {
      throw new Error(`weights for ${name} missing or mis-sized`);
    }
    tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
  }
}

async function handle(msg: Record<string, unknown>): Promise<[unknown, Transferable[]]> {
  switch (msg.type) {
    case "init": {
      await setBackend(msg.backend as BackendName);
      const config = msg.config as BertConfig, heads = msg.heads as BertHeads;
      const weights = msg.weights as Record<string, Float32Array>;
      const tensors = new Map<string, tf.Tensor>();
      for (const [name, shape] of parameterShapes(config, heads)) {
        if (!weights[name]) throw new Error(`init: no weights for ${name}`);
        tensors.set(name, tf.tensor(weights[name], shape));
      }
      const extraShapes = msg.extraShapes as Record<string, number[]>;
      for (const [name, shape] of Object.entries(extraShapes ?? {})) {
        tensors.set(name, tf.tensor(weights[name], shape));
      }
      model = new Bert(config, heads, tensors);
      layout = new GradLayout(model.params);
      gradsOut = new Float32Array(msg.gradsOut as SharedArrayBuffer);
      gradsIn = new Float32Array(msg.gradsIn as SharedArrayBuffer);
      objective = getObjective(msg.objective as string, msg.objectiveOptions);
      return [null, []];
    }
    case "weights":
      setWeights(msg.weights as Record<string, Float32Array>);
      return [null, []];
    case "grads": {
      const batch = toTensors(msg.batch as HostBatch);
      try {
        const { loss, grads } = computeGradients(model!, objective!, batch, msg.seed as number);
        const names = writeGradients(layout!, gradsOut!, grads);
        tf.dispose([...grads.values()]);
        return [{ loss, names }, []];
      } finally {
        tf.dispose(Object.values(batch));
      }
    }
    case "optimizer": {
      optimizer?.dispose();
      optimizer = new AdamW(model!.params, {
        ...(msg.hyper as Omit<AdamWOptions, "lr">),
        lr: 0, // each step is told the lead's rate
      });
      optimizer.setState(msg.state as AdamWState);
      return [null, []];
    }
    case "apply": {
      if (!optimizer) throw new Error("apply before optimizer");
      const grads = readGradients(layout!, gradsIn!, msg.names as string[]);
      try {
        const { gradNorm } = optimizer.step(grads, msg.lr as number);
        return [{ gradNorm }, []];
      } finally {
        tf.dispose([...grads.values()]);
      }
    }
    case "heap":
      return [wasmHeapBytes(), []];
    case "digest":
      return [digestWeights(model!), []];
    case "forward": {
      const batch = toTensors(msg.batch as HostBatch);
      try {
        const out = forwardToHost(model!, batch, msg.outputs as OutputName[]);
        return [out, transferables(out)];
      } finally {
        tf.dispose(Object.values(batch));
      }
    }
    default:
      throw new Error(`unknown message type ${String(msg.type)}`);
  }
}

self.onmessage = async (e: MessageEvent) => {
  const { id, ...msg } = e.data;
  try {
    const [result, transfer] = await handle(msg);
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    self.postMessage({ id, ok: false, error: (err as Error).stack ?? String(err) });
  }
};
