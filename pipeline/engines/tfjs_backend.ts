/**
 * The one place that chooses and prepares the tfjs backend.
 *
 * Named backends: `wasm` (default on CPU; XNNPACK kernels), `cpu` (pure-JS reference),
 * `tensorflow` / `tensorflow-gpu` (`@tensorflow/tfjs-node[-gpu]`, only when importable),
 * `webgpu` (only with a real GPU adapter); `auto` picks the fastest that works.
 *
 * On wasm, stock tfjs cannot train BERT well; this module fills the gaps:
 * - `UnsortedSegmentSum` (the gradient of an embedding lookup) is missing: a JS kernel fills it.
 * - `BatchMatMul` uses XNNPACK only for 2-D untransposed products; everything else (transposed
 *   operands, batched attention products, i.e. every backward matmul) falls to a naive loop.
 *   A replacement kernel materialises transposes and issues one XNNPACK call per batch slice
 *   through zero-copy views of the operands.
 * - A full 4 GiB heap makes `malloc` return 0, which stock tfjs turns into silent corruption of
 *   low memory; the allocator is guarded so it throws {@link WasmHeapExhaustedError} instead.
 * tinystill's graphs (forward and backward written out as nodes) run on it through
 * `engines/tfjs.ts`, which frees each value after its last use; tfjs' own autodiff is not used.
 * @module
 */

import * as tf from "@tensorflow/tfjs";

export { tf };

/** A backend name accepted by {@link setBackend}. */
export type BackendName = "auto" | "wasm" | "cpu" | "tensorflow" | "tensorflow-gpu" | "webgpu";

/** All names {@link setBackend} understands, in `auto`'s order of preference. */
export const BACKEND_NAMES: readonly Exclude<BackendName, "auto">[] = [
  "tensorflow-gpu",
  "webgpu",
  "tensorflow",
  "wasm",
  "cpu",
] as const;

/** Thrown when a backend is asked for that cannot run here; says what to install. */
export class BackendUnavailableError extends Error {
  constructor(readonly backend: string, reason: string, readonly install: string) {
    super(`backend '${backend}' is not available: ${reason}. ${install}`);
    this.name = "BackendUnavailableError";
  }
}

/** Thrown instead of silently corrupting memory when the 4 GiB wasm heap is full. */
export class WasmHeapExhaustedError extends Error {
  constructor(readonly requestedBytes: number, readonly heapBytes: number) {
    super(
      `wasm heap exhausted: could not allocate ${(requestedBytes / 2 ** 20).toFixed(1)} MiB ` +
        `(heap is ${(heapBytes / 2 ** 30).toFixed(2)} GiB of at most 4 GiB). Lower the ` +
        `micro-batch size (tokens per step) and use gradient accumulation for larger batches.`,
    );
    this.name = "WasmHeapExhaustedError";
  }
}

// deno-lint-ignore no-explicit-any
type Any = any;

const NODE_PACKAGES: Record<string, string> = {
  "tensorflow": "@tensorflow/tfjs-node",
  "tensorflow-gpu": "@tensorflow/tfjs-node-gpu",
};

async function importOptional(specifier: string): Promise<unknown> {
  // A computed specifier keeps `deno check` from resolving optional packages.
  const spec: string = specifier;
  return await import(spec);
}

async function prepareNode(name: "tensorflow" | "tensorflow-gpu"): Promise<void> {
  const pkg = NODE_PACKAGES[name];
  try {
    await importOptional(pkg);
  } catch (e) {
    throw new BackendUnavailableError(
      name,
      `cannot import ${pkg} (${(e as Error).message.split("\n")[0]})`,
      `Add "${pkg}": "npm:${pkg}@4.22.0" to the imports of deno.json and allow its install ` +
        `script (it downloads libtensorflow${name === "tensorflow-gpu" ? " with CUDA" : ""}).`,
    );
  }
}

async function prepareWebgpu(): Promise<void> {
  const gpu = (globalThis.navigator as Any)?.gpu;
  if (!gpu) {
    throw new BackendUnavailableError(
      "webgpu",
      "navigator.gpu is missing in this runtime",
      "Run under Deno with WebGPU enabled or in a browser with WebGPU.",
    );
  }
  const adapter = await gpu.requestAdapter();
  if (!adapter) {
    throw new BackendUnavailableError(
      "webgpu",
      "no GPU adapter",
      "Install a GPU driver with Vulkan/Metal/DX12 support.",
    );
  }
  try {
    await importOptional("@tensorflow/tfjs-backend-webgpu");
  } catch (e) {
    throw new BackendUnavailableError(
      "webgpu",
      `cannot import @tensorflow/tfjs-backend-webgpu (${(e as Error).message.split("\n")[0]})`,
      `Add "@tensorflow/tfjs-backend-webgpu": "npm:@tensorflow/tfjs-backend-webgpu@4.22.0" to ` +
        `the imports of deno.json.`,
    );
  }
}

/** True when WebGPU would run on a software rasteriser (llvmpipe, SwiftShader): not a speedup. */
async function webgpuIsSoftware(): Promise<boolean> {
  const gpu = (globalThis.navigator as Any)?.gpu;
  const adapter = await gpu?.requestAdapter?.();
  if (!adapter) return true;
  const info = adapter.info ?? {};
  const text = `${info.vendor ?? ""} ${info.architecture ?? ""} ${info.device ?? ""} ${
    info.description ?? ""
  }`.toLowerCase();
  return Boolean(adapter.isFallbackAdapter) || /llvmpipe|swiftshader|lavapipe|software/.test(text);
}

let wasmImported = false;
async function prepareWasm(): Promise<void> {
  if (!wasmImported) {
    await import("@tensorflow/tfjs-backend-wasm");
    wasmImported = true;
  }
}

const prepared = new Set<string>();
async function tryBackend(name: Exclude<BackendName, "auto">): Promise<void> {
  if (name === "wasm") await prepareWasm();
  else if (name === "webgpu") await prepareWebgpu();
  else if (name === "tensorflow" || name === "tensorflow-gpu") await prepareNode(name);
  const tfName = name === "tensorflow-gpu" ? "tensorflow" : name;
  const ok = await tf.setBackend(tfName);
  if (!ok) {
    throw new BackendUnavailableError(name, "tfjs failed to initialise it", "See the log above.");
  }
  await tf.ready();
  // tfjs-cpu advertises tfjs-node on first use; the errors above say what to install instead.
  if (name === "cpu") {
    (tf.findBackend("cpu") as Any).firstUse = false;
    if (!prepared.has("cpu") && !stockWasmRequested()) {
      tf.unregisterKernel("UnsortedSegmentSum", "cpu");
      tf.registerKernel({
        kernelName: "UnsortedSegmentSum",
        backendName: "cpu",
        kernelFunc: cpuUnsortedSegmentSum as unknown as tf.KernelFunc,
      });
      prepared.add("cpu");
    }
  }
  const stock = stockWasmRequested();
  if (name === "wasm" && !prepared.has("wasm")) {
    installWasmKernels(stock);
    prepared.add("wasm");
  }
}

/**
 * Choose and initialise a backend; returns the name actually in use.
 * `auto` tries `tensorflow-gpu`, `webgpu` (hardware adapters only), `tensorflow`, then `wasm`.
 */
export async function setBackend(name: BackendName = "auto"): Promise<BackendName> {
  if (!(BACKEND_NAMES as readonly string[]).includes(name) && name !== "auto") {
    throw new BackendUnavailableError(
      String(name),
      "unknown backend name",
      `Use one of: auto, ${BACKEND_NAMES.join(", ")}.`,
    );
  }
  if (name !== "auto") {
    await tryBackend(name);
    return name;
  }
  for (const candidate of BACKEND_NAMES) {
    if (candidate === "cpu") break;
    if (candidate === "webgpu" && await webgpuIsSoftware()) continue;
    try {
      await tryBackend(candidate);
      return candidate;
    } catch {
      // try the next one
    }
  }
  await tryBackend("cpu");
  return "cpu";
}

/** The backend name in use, in tinystill's terms. */
export function getBackend(): string {
  return tf.getBackend();
}

/**
 * A host copy of a float tensor that the caller may keep and mutate. On wasm `dataSync` already
 * returns a fresh copy (copying it again costs page faults on 10+ MB arrays); on cpu it returns
 * the backend's own storage, so that is copied.
 */
export function hostCopy(t: tf.Tensor): Float32Array {
  const data = t.dataSync() as Float32Array;
  return tf.getBackend() === "wasm" ? data : data.slice();
}

/**
 * A read-only view of a float tensor's values without a copy where possible (the wasm heap);
 * valid only until the next tfjs operation (which may grow and move the heap).
 */
export function readView(t: tf.Tensor): Float32Array {
  if (tf.getBackend() === "wasm") {
    return (tf.backend() as unknown as WasmBackend).typedArrayFromHeap(t) as Float32Array;
  }
  return t.dataSync() as Float32Array;
}

/** A float32 tensor holding a copy of `data` (which the caller may then overwrite). */
export function tensorFrom(data: Float32Array, shape: number[]): tf.Tensor {
  // wasm copies into its heap at once; cpu would keep a reference to `data`
  return tf.tensor(tf.getBackend() === "wasm" ? data : data.slice(), shape, "float32");
}

/**
 * A scratch array of `n` floats for building a tensor that the backend copies at once (wasm),
 * reused across calls; elsewhere (cpu keeps the array it is given) a fresh array.
 */
export function scratchFloats(n: number): Float32Array {
  if (tf.getBackend() !== "wasm") return new Float32Array(n);
  if (scratch.length < n) scratch = new Float32Array(n);
  return scratch.subarray(0, n);
}
let scratch = new Float32Array(0);

/** Bytes currently reserved by the wasm heap (it only grows), or 0 on other backends. */
export function wasmHeapBytes(): number {
  if (tf.getBackend() !== "wasm") return 0;
  const backend = tf.backend() as Any;
  return backend.wasm.HEAPU8.length;
}

// ---------------------------------------------------------------------------------------------
// wasm kernel fills

interface WasmBackend {
  wasm: Any;
  dataIdMap: Any;
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: string, memoryOffset?: number): tf.TensorInfo;
  disposeData(dataId: object, force?: boolean): boolean;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/**
 * `TINYSTILL_WASM_FILLS=0` keeps stock tfjs-wasm (only the missing kernel and the heap guard are
 * added) and stock backprop: the baseline `deno task bench` compares against.
 */
function stockWasmRequested(): boolean {
  try {
    return Deno.env.get("TINYSTILL_WASM_FILLS") === "0";
  } catch {
    return false; // no env permission: the default, fast path
  }
}

function installWasmKernels(stock: boolean): void {
  const backend = tf.findBackend("wasm") as unknown as WasmBackend;
  guardAllocator(backend);
  if (!tf.getKernel("UnsortedSegmentSum", "wasm")) {
    tf.registerKernel({
      kernelName: "UnsortedSegmentSum",
      backendName: "wasm",
      kernelFunc: unsortedSegmentSum as unknown as tf.KernelFunc,
    });
  }
  if (stock) return;
  replaceKernel("BatchMatMul", makeFastBatchMatMul);
  replaceKernel("Sum", makeLeadingAxesSum);
  replaceKernel("Identity", () => zeroCopyIdentity as unknown as tf.KernelFunc);
  replaceKernel("GatherV2", makeRowGather);
}

/**
 * `GatherV2` on axis 0 (embedding lookups) copies whole rows; the stock kernel walks elements
 * with generic strides (~50 ms for a 32×128 lookup). Other gathers use the stock kernel.
 */
function makeRowGather(stock: tf.KernelFunc): tf.KernelFunc {
  return ((args: Any) => {
    const { inputs: { x, indices }, backend, attrs: { axis, batchDims } } = args as {
      inputs: { x: tf.TensorInfo; indices: tf.TensorInfo };
      backend: WasmBackend;
      attrs: { axis: number; batchDims: number };
    };
    const ax = axis < 0 ? axis + x.shape.length : axis;
    if (ax !== 0 || (batchDims ?? 0) !== 0 || x.dtype !== "float32" || indices.dtype !== "int32") {
      return stock(args) as tf.TensorInfo;
    }
    const rows = x.shape[0];
    const rowShape = x.shape.slice(1);
    const row = rowShape.reduce((p, q) => p * q, 1);
    const count = indices.shape.reduce((p, q) => p * q, 1);
    const out = backend.makeOutput([...indices.shape, ...rowShape], "float32");
    const xs = backend.typedArrayFromHeap(x) as Float32Array;
    const ids = backend.typedArrayFromHeap(indices) as Int32Array;
    const o = backend.typedArrayFromHeap(out) as Float32Array;
    for (let i = 0; i < count; i++) {
      const r = ids[i];
      if (!(r >= 0 && r < rows)) {
        backend.disposeData(out.dataId);
        throw new Error(`GatherV2: the index value ${r} is not in [0, ${rows - 1}]`);
      }
      o.set(xs.subarray(r * row, r * row + row), i * row);
    }
    return out;
  }) as tf.KernelFunc;
}

/** Swap a stock wasm kernel for `make(stock)`, once. */
function replaceKernel(name: string, make: (stock: tf.KernelFunc) => tf.KernelFunc): void {
  const stock = tf.getKernel(name, "wasm");
  if (!stock || (stock.kernelFunc as Any).tinystill) return;
  const replacement = make(stock.kernelFunc);
  (replacement as Any).tinystill = true;
  tf.unregisterKernel(name, "wasm");
  tf.registerKernel({ ...stock, kernelFunc: replacement });
}

/**
 * `Identity` (what `clone` runs, e.g. for every tensor saved for backprop) copies the data on
 * stock wasm; no wasm kernel writes into its inputs, so sharing the buffer is safe — as the cpu
 * backend does.
 */
function zeroCopyIdentity(
  args: { inputs: { x: tf.TensorInfo }; backend: WasmBackend & { incRef(id: object): void } },
): tf.TensorInfo {
  const { inputs: { x }, backend } = args;
  if (x.dtype === "string") return tf.clone(x as unknown as tf.Tensor);
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/**
 * `Sum` over leading axes (bias gradients: a column sum of `[rows, n]`) accumulates rows in one
 * pass; stock wasm transposes the whole input first. Other reductions use the stock kernel.
 */
function makeLeadingAxesSum(stock: tf.KernelFunc): tf.KernelFunc {
  return ((args: Any) => {
    const { inputs: { x }, backend, attrs: { axis, keepDims } } = args as {
      inputs: { x: tf.TensorInfo };
      backend: WasmBackend;
      attrs: { axis: number | number[]; keepDims: boolean };
    };
    const rank = x.shape.length;
    const axes = [
      ...new Set((Array.isArray(axis) ? axis : [axis]).map((a) => a < 0 ? a + rank : a)),
    ]
      .sort((a, b) => a - b);
    const leading = axes.length > 0 && axes.length < rank && axes.every((a, i) => a === i);
    if (x.dtype !== "float32" || !leading) return stock(args) as tf.TensorInfo;
    const rows = x.shape.slice(0, axes.length).reduce((p, q) => p * q, 1);
    const rest = x.shape.slice(axes.length);
    const n = rest.reduce((p, q) => p * q, 1);
    const out = backend.makeOutput(rest, "float32");
    const xs = backend.typedArrayFromHeap(x) as Float32Array;
    const o = backend.typedArrayFromHeap(out) as Float32Array;
    o.fill(0);
    for (let r = 0; r < rows; r++) {
      const base = r * n;
      for (let j = 0; j < n; j++) o[j] += xs[base + j];
    }
    const shape = keepDims ? [...axes.map(() => 1), ...rest] : rest;
    return { ...out, shape };
  }) as tf.KernelFunc;
}

function guardAllocator(backend: WasmBackend): void {
  const wasm = backend.wasm;
  if (wasm.__tinystillGuard) return;
  // Emscripten may replace `_malloc` later (lazy export stubs), so keep the raw function behind
  // an accessor: whatever is assigned becomes the inner allocator, the guard stays outside.
  let inner: (n: number) => number = wasm._malloc;
  const guarded = (n: number) => {
    // Sizes are size_t (32-bit) in wasm: a request of 4 GiB or more would silently wrap around.
    if (n >= 2 ** 32) throw new WasmHeapExhaustedError(n, wasm.HEAPU8.length);
    const p = inner(n) >>> 0;
    if ((p === 0 && n > 0) || p + n > wasm.HEAPU8.length) {
      throw new WasmHeapExhaustedError(n, wasm.HEAPU8.length);
    }
    return p;
  };
  Object.defineProperty(wasm, "_malloc", {
    configurable: true,
    get: () => guarded,
    set: (f: (n: number) => number) => {
      inner = f;
    },
  });
  wasm.__tinystillGuard = true;
}

/**
 * `UnsortedSegmentSum(x [n, ...inner], segmentIds [n]) -> [numSegments, ...inner]`: row `i` of
 * `x` is added to row `segmentIds[i]`; ids outside `[0, numSegments)` are dropped (as in TF).
 */
function unsortedSegmentSum(
  args: {
    inputs: { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
    backend: WasmBackend;
    attrs: Any;
  },
): tf.TensorInfo {
  const { inputs: { x, segmentIds }, backend, attrs: { numSegments } } = args;
  if (x.dtype !== "float32" && x.dtype !== "int32") {
    throw new Error(`UnsortedSegmentSum on wasm: unsupported dtype ${x.dtype}`);
  }
  const n = segmentIds.shape.reduce((a, b) => a * b, 1);
  const rowShape = x.shape.slice(segmentIds.shape.length);
  const row = rowShape.reduce((a, b) => a * b, 1);
  const out = backend.makeOutput([numSegments, ...rowShape], x.dtype);
  // Read views only after makeOutput: it may grow the heap and detach earlier views.
  segmentSumInto(
    backend.typedArrayFromHeap(out) as Float32Array,
    backend.typedArrayFromHeap(x) as Float32Array,
    backend.typedArrayFromHeap(segmentIds) as Int32Array,
    n,
    row,
    numSegments,
  );
  return out;
}

function segmentSumInto(
  o: Float32Array | Int32Array,
  xs: Float32Array | Int32Array,
  ids: Int32Array,
  n: number,
  row: number,
  numSegments: number,
): void {
  o.fill(0);
  for (let i = 0; i < n; i++) {
    const s = ids[i];
    if (s < 0 || s >= numSegments) continue;
    const src = i * row, dst = s * row;
    for (let j = 0; j < row; j++) o[dst + j] += xs[src + j];
  }
}

/**
 * tfjs-cpu's `UnsortedSegmentSum` builds a mask per segment — 30,522 passes for a BERT
 * embedding gradient (minutes per step); the same one-pass loop as on wasm replaces it.
 */
function cpuUnsortedSegmentSum(
  args: { inputs: { x: tf.TensorInfo; segmentIds: tf.TensorInfo }; backend: Any; attrs: Any },
): tf.TensorInfo {
  const { inputs: { x, segmentIds }, backend, attrs: { numSegments } } = args;
  const n = segmentIds.shape.reduce((a: number, b: number) => a * b, 1);
  const rowShape = x.shape.slice(segmentIds.shape.length);
  const row = rowShape.reduce((a: number, b: number) => a * b, 1);
  const out = x.dtype === "int32"
    ? new Int32Array(numSegments * row)
    : new Float32Array(numSegments * row);
  const xs = backend.data.get(x.dataId).values;
  const ids = Int32Array.from(backend.data.get(segmentIds.dataId).values);
  segmentSumInto(out, xs, ids, n, row, numSegments);
  return backend.makeTensorInfo([numSegments, ...rowShape], x.dtype, out);
}

/** A tensor info aliasing `count` floats of another tensor's memory, starting at `offset`. */
function viewOf(
  backend: WasmBackend,
  t: tf.TensorInfo,
  offsetFloats: number,
  shape: number[],
): tf.TensorInfo {
  const base = backend.dataIdMap.get(t.dataId).memoryOffset as number;
  return backend.makeOutput(shape, "float32", base + offsetFloats * 4);
}

/** Forget a view without freeing the memory it aliases (and drop XNNPACK ops cached on it). */
function releaseView(backend: WasmBackend, v: tf.TensorInfo): void {
  const entry = backend.dataIdMap.get(v.dataId);
  backend.wasm.tfjs.disposeData(entry.id);
  backend.dataIdMap.delete(v.dataId);
}

/**
 * `dst[b] = src[b]ᵀ` for `src` holding `batch` row-major `[rows, cols]` matrices, in 16×16
 * tiles (2–3× faster here than tfjs-wasm's element-wise Transpose kernel).
 */
export function transposeBlocked(
  src: Float32Array,
  dst: Float32Array,
  batch: number,
  rows: number,
  cols: number,
): void {
  const T = 16, size = rows * cols;
  for (let b = 0; b < batch; b++) {
    const o = b * size;
    for (let r0 = 0; r0 < rows; r0 += T) {
      const r1 = Math.min(rows, r0 + T);
      for (let c0 = 0; c0 < cols; c0 += T) {
        const c1 = Math.min(cols, c0 + T);
        for (let r = r0; r < r1; r++) {
          const si = o + r * cols;
          for (let c = c0; c < c1; c++) dst[o + c * rows + r] = src[si + c];
        }
      }
    }
  }
}

function makeFastBatchMatMul(stock: tf.KernelFunc): tf.KernelFunc {
  let xnnMatMul: ((...a: unknown[]) => void) | null = null;

  const fast = (args: Any): tf.TensorInfo => {
    const { inputs: { a, b }, backend, attrs: { transposeA, transposeB } } = args as {
      inputs: { a: tf.TensorInfo; b: tf.TensorInfo };
      backend: WasmBackend;
      attrs: { transposeA: boolean; transposeB: boolean };
    };
    const ra = a.shape.length, rb = b.shape.length;
    const batchA = a.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    const batchB = b.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
    // Only plain cases are rerouted: equal batch dims, or one side without batch.
    const sameOuter = outerA.length === outerB.length && outerA.every((d, i) => d === outerB[i]);
    if (
      a.dtype !== "float32" || b.dtype !== "float32" ||
      !(sameOuter || batchA === 1 && ra === 2 || batchB === 1 && rb === 2)
    ) {
      return stock(args) as tf.TensorInfo;
    }
    if (xnnMatMul === null) {
      xnnMatMul = backend.wasm.cwrap("BatchMatMul", null, [
        "number",
        "array",
        "number",
        "number",
        "array",
        "number",
        "number",
        "number",
        "number",
      ]);
    }
    const M = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
    const K = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
    const Kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
    const N = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
    if (K !== Kb) {
      throw new Error(
        `Error in matMul: inner shapes (${K}) and (${Kb}) of Tensors with shapes ${a.shape} ` +
          `and ${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
      );
    }
    const temps: tf.TensorInfo[] = [];
    const untransposed = (t: tf.TensorInfo, batch: number, rows: number, cols: number) => {
      // t holds [batch, cols, rows]; return [batch, rows, cols]
      const tr = backend.makeOutput([batch, rows, cols], "float32");
      temps.push(tr);
      transposeBlocked(
        backend.typedArrayFromHeap(t) as Float32Array,
        backend.typedArrayFromHeap(tr) as Float32Array,
        batch,
        cols,
        rows,
      );
      return tr;
    };
    const A = transposeA ? untransposed(a, batchA, M, K) : a; // [batchA, M, K]
    const B = transposeB ? untransposed(b, batchB, K, N) : b; // [batchB, K, N]
    const batch = Math.max(batchA, batchB);
    const outShape = [...(batchA >= batchB ? outerA : outerB), M, N];
    const out = backend.makeOutput([batch, M, N], "float32");
    const call = (aOff: number, rows: number, bOff: number, oOff: number) => {
      const av = viewOf(backend, A, aOff, [1, rows, K]);
      const bv = viewOf(backend, B, bOff, [1, K, N]);
      const ov = viewOf(backend, out, oOff, [1, rows, N]);
      const id = (t: tf.TensorInfo) => backend.dataIdMap.get(t.dataId).id;
      xnnMatMul!(
        id(av),
        new Uint8Array(new Int32Array([1, rows, K]).buffer),
        3,
        id(bv),
        new Uint8Array(new Int32Array([1, K, N]).buffer),
        3,
        false,
        false,
        id(ov),
      );
      releaseView(backend, av);
      releaseView(backend, bv);
      releaseView(backend, ov);
    };
    if (M * N > 0) {
      if (batchB === 1) {
        call(0, batchA * M, 0, 0); // one 2-D product: [batchA*M, K] x [K, N]
      } else {
        for (let i = 0; i < batch; i++) {
          call(batchA === 1 ? 0 : i * M * K, M, i * K * N, i * M * N);
        }
      }
    }
    for (const t of temps) backend.disposeData(t.dataId);
    return { ...out, shape: outShape };
  };
  return fast as tf.KernelFunc;
}
