/**
 * Inference on ONNX Runtime (`onnxruntime-node`, CPU): load an exported model (bytes or a path),
 * run integer batches, get host `Float32Array`s back.
 *
 * ```ts
 * const engine = await OnnxEngine.load(exportOnnx(bert, { outputs: "all" }), { threads: 2 });
 * const out = await engine.run({ inputIds, attentionMask, tokenTypeIds, batch: 2, seq: 16 });
 * out.logits.data; // Float32Array, out.logits.dims = [2, numLabels]
 * await engine.close();
 * ```
 * @module
 */

import * as ort from "onnxruntime-node";

/** Options of {@link OnnxEngine.load}. */
export interface OnnxEngineOptions {
  /** Intra-op threads (default: ONNX Runtime's choice, one per core). */
  threads?: number;
}

/** Integer inputs of one batch, row-major `[batch, seq]`. */
export interface OnnxEngineInputs {
  inputIds: Int32Array | BigInt64Array;
  /** 1 for real tokens, 0 for padding; all ones when omitted. */
  attentionMask?: Int32Array | BigInt64Array;
  /** Segment ids; zeros when omitted. */
  tokenTypeIds?: Int32Array | BigInt64Array;
  batch: number;
  seq: number;
}

/** One output on the host. */
export interface OnnxOutput {
  data: Float32Array;
  dims: number[];
}

/** The model could not be loaded by ONNX Runtime. */
export class OnnxLoadError extends Error {
  /** Build the error for `source` (a path or "<n bytes>") with ONNX Runtime's reason. */
  constructor(source: string, reason: string) {
    super(`OnnxEngine: cannot load ONNX model from ${source}: ${reason}`);
    this.name = "OnnxLoadError";
  }
}

function toInt64(
  a: Int32Array | BigInt64Array | undefined,
  n: number,
  fill: bigint,
  what: string,
): BigInt64Array {
  if (a === undefined) return new BigInt64Array(n).fill(fill);
  if (a.length !== n) throw new Error(`OnnxEngine.run: ${what} has ${a.length} values, want ${n}`);
  if (a instanceof BigInt64Array) return a;
  const out = new BigInt64Array(n);
  for (let i = 0; i < n; i++) out[i] = BigInt(a[i]);
  return out;
}

/** A loaded ONNX model; {@link OnnxEngine.close} releases the native session. */
export class OnnxEngine {
  #session: ort.InferenceSession | undefined;

  private constructor(session: ort.InferenceSession) {
    this.#session = session;
  }

  /** Load a model from its bytes or a file path. Throws {@link OnnxLoadError} when invalid. */
  static async load(
    model: Uint8Array | string,
    opts: OnnxEngineOptions = {},
  ): Promise<OnnxEngine> {
    const options: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: "all",
      executionProviders: ["cpu"],
      interOpNumThreads: 1,
    };
    if (opts.threads !== undefined) options.intraOpNumThreads = opts.threads;
    const source = typeof model === "string" ? model : `<${model.length} bytes>`;
    if (typeof model !== "string" && model.length === 0) {
      throw new OnnxLoadError(source, "the byte array is empty");
    }
    let session: ort.InferenceSession;
    try {
      session = typeof model === "string"
        ? await ort.InferenceSession.create(model, options)
        : await ort.InferenceSession.create(model, options);
    } catch (e) {
      throw new OnnxLoadError(source, e instanceof Error ? e.message : String(e));
    }
    return new OnnxEngine(session);
  }

  #live(): ort.InferenceSession {
    if (!this.#session) throw new Error("OnnxEngine: the session is closed");
    return this.#session;
  }

  /** The graph's input names. */
  get inputNames(): readonly string[] {
    return this.#live().inputNames;
  }

  /** The graph's output names. */
  get outputNames(): readonly string[] {
    return this.#live().outputNames;
  }

  /**
   * Run one batch and return the requested outputs (default: every graph output) as host
   * float32 arrays with their dims. Input and output tensors are released before returning.
   */
  async run(
    inputs: OnnxEngineInputs,
    outputs?: readonly string[],
  ): Promise<Record<string, OnnxOutput>> {
    const session = this.#live();
    const { batch, seq } = inputs;
    if (!(Number.isInteger(batch) && batch > 0 && Number.isInteger(seq) && seq > 0)) {
      throw new Error(`OnnxEngine.run: batch and seq must be positive integers (${batch}, ${seq})`);
    }
    const n = batch * seq;
    const arrays: Record<string, BigInt64Array> = {
      input_ids: toInt64(inputs.inputIds, n, 0n, "inputIds"),
      attention_mask: toInt64(inputs.attentionMask, n, 1n, "attentionMask"),
      token_type_ids: toInt64(inputs.tokenTypeIds, n, 0n, "tokenTypeIds"),
    };
    const names = outputs ?? session.outputNames;
    for (const name of names) {
      if (!session.outputNames.includes(name)) {
        throw new Error(
          `OnnxEngine.run: no output '${name}' (the model has ${session.outputNames.join(", ")})`,
        );
      }
    }
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames) {
      const a = arrays[name];
      if (!a) throw new Error(`OnnxEngine.run: the model wants an unknown input '${name}'`);
      feeds[name] = new ort.Tensor("int64", a, [batch, seq]);
    }
    let result: ort.InferenceSession.OnnxValueMapType | undefined;
    try {
      result = await session.run(feeds, [...names]);
      const out: Record<string, OnnxOutput> = {};
      for (const name of names) {
        const t = result[name];
        if (t.type !== "float32") {
          throw new Error(`OnnxEngine.run: output '${name}' is ${t.type}, expected float32`);
        }
        out[name] = { data: t.data as Float32Array, dims: [...t.dims] };
      }
      return out;
    } finally {
      for (const t of Object.values(feeds)) t.dispose();
      if (result) { for (const t of Object.values(result)) t.dispose(); }
    }
  }

  /** Release the native session (idempotent). */
  async close(): Promise<void> {
    const s = this.#session;
    this.#session = undefined;
    if (s) await s.release();
  }
}
