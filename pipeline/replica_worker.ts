/// <reference lib="deno.worker" />
/**
 * A model replica in a worker thread (see `parallel.ts`): holds a copy of the weights in its own
 * wasm instance and computes gradients on the shards it is sent.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { type BackendName, setBackend } from "./backend.ts";
import { Bert, type BertHeads, parameterShapes } from "./bert.ts";
import type { BertConfig } from "./config.ts";
import { getObjective, type Objective } from "./objectives.ts";
import { AdamW, type AdamWOptions, type AdamWState } from "./optim.ts";
import {
  type CompactGrad,
  compactGrad,
  computeGradients,
  digestWeights,
  expandGrad,
  forwardToHost,
  type HostBatch,
  type OutputName,
  toTensors,
  transferables,
} from "./parallel.ts";

let model: Bert | null = null;
let objective: Objective | null = null;
let optimizer: AdamW | null = null;

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
      model = new Bert(config, heads, tensors);
      objective = getObjective(msg.objective as string);
      return [null, []];
    }
    case "weights":
      setWeights(msg.weights as Record<string, Float32Array>);
      return [null, []];
    case "grads": {
      const batch = toTensors(msg.batch as HostBatch);
      try {
        const { loss, grads } = computeGradients(model!, objective!, batch, msg.seed as number);
        const out: Record<string, CompactGrad> = {};
        const transfer: ArrayBuffer[] = [];
        for (const [name, g] of grads) {
          const c = compactGrad((g.dataSync() as Float32Array).slice(), g.shape);
          out[name] = c;
          transfer.push(c.data.buffer as ArrayBuffer);
          if (c.rows) transfer.push(c.rows.buffer as ArrayBuffer);
          g.dispose();
        }
        return [{ loss, grads: out }, transfer];
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
      const grads = new Map<string, tf.Tensor>();
      for (const [name, c] of Object.entries(msg.grads as Record<string, CompactGrad>)) {
        grads.set(name, tf.tensor(expandGrad(c), c.shape));
      }
      try {
        const { gradNorm } = optimizer.step(grads, msg.lr as number);
        return [{ gradNorm }, []];
      } finally {
        tf.dispose([...grads.values()]);
      }
    }
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
