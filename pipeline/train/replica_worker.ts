/// <reference lib="deno.worker" />
/**
 * A data-parallel replica of the ONNX training engine in a worker thread (see
 * `Trainer`'s `replicas`): its own ONNX Runtime session and its own copy of the weights and
 * AdamW moments. It computes the gradients of the shards it is sent into its shared buffer, and
 * applies the lead's averaged gradients with the same host AdamW, so its weights stay bit-identical
 * to the lead's.
 * @module
 */

import { type ReplicaCore, Trainer, type TrainerOptions } from "./trainer.ts";
import type { HostBatch } from "../data/batch.ts";
import type { AdamWState } from "./optim.ts";

let trainer: Trainer | null = null;
let out: Float32Array | null = null, avg: Float32Array | null = null;

function live(): Trainer {
  if (!trainer) throw new Error("onnx replica: not initialised");
  return trainer;
}

async function handle(msg: Record<string, unknown>): Promise<unknown> {
  switch (msg.type) {
    case "init": {
      const opts = msg.opts as Omit<TrainerOptions, "lr">;
      // the schedule stays with the lead: each apply carries its learning rate
      trainer = Trainer.forWorker(msg.core as ReplicaCore, { ...opts, lr: () => NaN });
      out = new Float32Array(msg.gradsOut as SharedArrayBuffer);
      avg = new Float32Array(msg.gradsIn as SharedArrayBuffer);
      return null;
    }
    case "grads":
      return await live().shardGradients(msg.batch as HostBatch, msg.seed as number, out!);
    case "apply":
      live().applyAveraged(
        msg.trained as string[],
        msg.lr as number,
        msg.t as number,
        msg.sq as number,
        avg!,
      );
      return null;
    case "state":
      live().setState(msg.state as AdamWState);
      return null;
    case "weights":
      return live().weights();
    case "close":
      await trainer?.close();
      trainer = null;
      return null;
    default:
      throw new Error(`onnx replica: unknown request ${String(msg.type)}`);
  }
}

self.onmessage = async (e: MessageEvent) => {
  const { id, ...msg } = e.data as { id: number } & Record<string, unknown>;
  try {
    self.postMessage({ id, ok: true, result: await handle(msg) });
  } catch (err) {
    self.postMessage({ id, ok: false, error: err instanceof Error ? err.message : String(err) });
  }
};
