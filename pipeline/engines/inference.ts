/**
 * Inference, one way for everyone: teacher-forward, evaluate, augment and evaluation during
 * training all open the model's inference graph (`exportGraph`, the one BERT definition) on an
 * executor and run integer batches, getting host `Float32Array`s back.
 *
 * ```ts
 * const engine = await openInference(bert, { outputs: "all", threads: 2 });
 * const out = await engine.run({ inputIds, attentionMask, tokenTypeIds, batch: 2, seq: 16 });
 * out.logits.data; // Float32Array, out.logits.dims = [2, numLabels]
 * await engine.close();
 * ```
 * @module
 */

import type { Bert } from "../model/bert.ts";
import type { HostBatch } from "../data/batch.ts";
import { InputError } from "../errors.ts";
import { encodeGraph, exportGraph, type ExportOnnxOptions } from "../graph/export.ts";
import type { GraphSession, HostTensor } from "./executor.ts";
import { type EngineRef, openExecutor } from "./mod.ts";
import { openOrtSession } from "./onnxruntime.ts";
import { DataType } from "../graph/ir.ts";
import { bucketFor, cutAxes, DEFAULT_BUCKETS, padRows } from "./buckets.ts";
import { type AdapterInfo, type Device, resolveDevice } from "./device.ts";

/** Integer inputs of one batch, row-major `[batch, seq]`. */
export interface InferenceInputs {
  inputIds: Int32Array | BigInt64Array;
  /** 1 for real tokens, 0 for padding; all ones when omitted. */
  attentionMask?: Int32Array | BigInt64Array;
  /** Segment ids; zeros when omitted. */
  tokenTypeIds?: Int32Array | BigInt64Array;
  batch: number;
  seq: number;
  /** Flat token positions (into batch·seq) for the `mlm_rows` output (`mlmRows: true`). */
  mlmPositions?: Int32Array | BigInt64Array;
}

/** One output on the host. */
export interface InferenceOutput {
  data: Float32Array;
  dims: number[];
}

/** Options of {@link openInference}: what the graph outputs, its weight storage, its executor. */
export interface InferenceOptions extends ExportOnnxOptions {
  /** The executor (default ONNX Runtime). A model file can only run on ONNX Runtime. */
  engine?: EngineRef;
  /**
   * ONNX Runtime's device (default `auto`: WebGPU on a real GPU adapter, else the CPU); overrides
   * the engine ref's. Ignored by tfjs (its backend says where it runs).
   */
  device?: Device;
  /**
   * Sequence-length buckets: inputs are padded to the smallest bucket ≥ their length (and
   * outputs cut back), so that each shape compiles once. Default: {@link DEFAULT_BUCKETS} on
   * webgpu, none on the CPU; `false`: none.
   */
  buckets?: readonly number[] | false;
  /** Intra-op threads (default one per core). */
  threads?: number;
}

/** A model ready to run batches; {@link Inference.close} releases it. */
export interface Inference {
  /** The executor it runs on (e.g. `onnxruntime/cpu`, `onnxruntime/webgpu`, `tfjs/wasm`). */
  readonly engine: string;
  /** The WebGPU adapter seen when a device was resolved (null: none looked for, or none). */
  readonly adapter: AdapterInfo | null;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Run one batch; returns the requested outputs (default: all) as host float32 arrays. */
  run(
    inputs: InferenceInputs,
    outputs?: readonly string[],
  ): Promise<Record<string, InferenceOutput>>;
  close(): Promise<void>;
}

/** The model inputs of a padded host batch (`inputIds`, `attentionMask`, `tokenTypeIds`). */
export function batchInputs(b: HostBatch): InferenceInputs {
  const [batch, seq] = b.inputIds.shape;
  const ints = (k: string) => b[k]?.data as Int32Array | undefined;
  return {
    inputIds: ints("inputIds")!,
    attentionMask: ints("attentionMask"),
    tokenTypeIds: ints("tokenTypeIds"),
    batch,
    seq,
  };
}

function toInt32(
  a: Int32Array | BigInt64Array | undefined,
  n: number,
  fill: number,
  what: string,
): Int32Array {
  if (a === undefined) return new Int32Array(n).fill(fill);
  if (a.length !== n) throw new Error(`inference: ${what} has ${a.length} values, want ${n}`);
  if (a instanceof Int32Array) return a;
  return Int32Array.from(a, (x) => Number(x));
}

function toInt64(
  a: Int32Array | BigInt64Array | undefined,
  n: number,
  fill: bigint,
  what: string,
): BigInt64Array {
  if (a === undefined) return new BigInt64Array(n).fill(fill);
  if (a.length !== n) throw new Error(`inference: ${what} has ${a.length} values, want ${n}`);
  if (a instanceof BigInt64Array) return a;
  const out = new BigInt64Array(n);
  for (let i = 0; i < n; i++) out[i] = BigInt(a[i]);
  return out;
}

/**
 * Open `model` for inference: a {@link Bert} (its inference graph, built with `opts`, on the
 * chosen executor) or an exported ONNX file (bytes or a path; ONNX Runtime).
 */
export async function openInference(
  model: Bert | Uint8Array | string,
  opts: InferenceOptions = {},
): Promise<Inference> {
  let session: GraphSession;
  let engine = "onnxruntime/cpu";
  let adapter: AdapterInfo | null = null;
  let int32 = false;
  let buckets: readonly number[] | false = false;
  /** Per output, its axes of symbolic length `sequence` (cut back after a padded run). */
  const seqAxes = new Map<string, number[]>();
  let ref = opts.engine;
  if (!ref || ref.kind === "onnxruntime") {
    const choice = await resolveDevice(opts.device ?? ref?.device ?? "auto");
    adapter = choice.adapter;
    ref = { kind: "onnxruntime", device: choice.device };
  }
  const maxPositions = typeof model === "string" || model instanceof Uint8Array
    ? Infinity
    : model.config.max_position_embeddings;
  if (typeof model === "string" || model instanceof Uint8Array) {
    if (opts.engine && opts.engine.kind !== "onnxruntime") {
      throw new Error("openInference: an ONNX file runs on ONNX Runtime only");
    }
    const device = ref.kind === "onnxruntime" && ref.device === "webgpu" ? "webgpu" : "cpu";
    session = await openOrtSession(model, { threads: opts.threads, device });
    engine = `onnxruntime/${device}`;
  } else {
    const webgpu = ref.kind === "onnxruntime" && ref.device === "webgpu";
    const graph = exportGraph(model, { ...opts, intType: webgpu ? "int32" : opts.intType });
    int32 = graph.inputs.some((i) => i.name === "input_ids" && i.elemType === DataType.INT32);
    buckets = opts.buckets ?? (webgpu ? DEFAULT_BUCKETS : false);
    for (const o of graph.outputs) {
      seqAxes.set(o.name, o.dims.flatMap((d, i) => (d === "sequence" ? [i] : [])));
    }
    const executor = await openExecutor(ref);
    session = await executor.open(graph, encodeGraph(graph, "tinystill_bert"), {
      threads: opts.threads,
      what: "the inference graph",
    });
    engine = executor.name; // after opening: the backend `auto` resolved to
  }
  return {
    engine,
    adapter,
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    async run(inputs, outputs) {
      const { batch, seq } = inputs;
      if (!(Number.isInteger(batch) && batch > 0 && Number.isInteger(seq) && seq > 0)) {
        throw new Error(`inference: batch and seq must be positive integers (${batch}, ${seq})`);
      }
      if (seq > maxPositions) {
        throw new InputError("the sequence is longer than the model has positions for", {
          field: "seq",
          expected: `at most max_position_embeddings = ${maxPositions} tokens`,
          got: `${seq} tokens`,
          hint: "Truncate the inputs (tokenize's max_seq_length).",
        });
      }
      const n = batch * seq;
      // the bucket's length: inputs padded (mask 0), outputs cut back to `seq` below
      const S2 = buckets ? bucketFor(seq, buckets, maxPositions) : seq;
      const toInts = (
        a: Int32Array | BigInt64Array | undefined,
        len: number,
        fill: number,
        what: string,
      ) => int32 ? toInt32(a, len, fill, what) : toInt64(a, len, BigInt(fill), what);
      const rows = (a: Int32Array | BigInt64Array) =>
        a instanceof Int32Array
          ? padRows(a, batch, seq, S2, 0)
          : padRows(a as BigInt64Array, batch, seq, S2, 0n);
      const feeds: Record<string, HostTensor> = {
        input_ids: { data: rows(toInts(inputs.inputIds, n, 0, "inputIds")), dims: [batch, S2] },
        attention_mask: {
          data: rows(toInts(inputs.attentionMask, n, 1, "attentionMask")),
          dims: [batch, S2],
        },
        token_type_ids: {
          data: rows(toInts(inputs.tokenTypeIds, n, 0, "tokenTypeIds")),
          dims: [batch, S2],
        },
      };
      if (session.inputNames.includes("mlm_positions")) {
        const p = inputs.mlmPositions;
        if (!p) throw new Error("inference: this graph needs mlmPositions");
        // flat positions into B·S → into B·S2
        const moved = S2 === seq
          ? p
          : p instanceof BigInt64Array
          ? p.map((x) => (x / BigInt(seq)) * BigInt(S2) + (x % BigInt(seq)))
          : (p as Int32Array).map((x) => Math.floor(x / seq) * S2 + (x % seq));
        feeds.mlm_positions = {
          data: toInts(moved, p.length, 0, "mlmPositions"),
          dims: [p.length],
        };
      }
      for (const name of session.inputNames) {
        if (!feeds[name]) throw new Error(`inference: the model wants an unknown input '${name}'`);
      }
      const res = await session.run(feeds, outputs);
      const out: Record<string, InferenceOutput> = {};
      for (const [name, t] of Object.entries(res)) {
        if (!(t.data instanceof Float32Array)) {
          throw new Error(`inference: output '${name}' is not float32`);
        }
        out[name] = S2 === seq
          ? { data: t.data, dims: t.dims }
          : cutAxes(t.data, t.dims, seqAxes.get(name) ?? [], seq);
      }
      return out;
    },
    close: () => session.close(),
  };
}
