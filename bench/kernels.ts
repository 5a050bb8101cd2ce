/**
 * `deno task bench:kernels`: the per-kernel figures behind "Why training is behind" in
 * docs/performance.md, measured in one run on TinyBERT4's shapes at batch 32 × seq 128
 * (4,096 rows, hidden 312, FFN 1200, 12 heads of 26):
 *
 * - the 2-D products of a train step on tinystill's wasm backend (XNNPACK behind tinystill's
 *   `BatchMatMul`), called as the model calls them: forward `x·Wᵀ`, backward `dy·W` and the
 *   weight gradient `dyᵀ·x`, whose transposed operand tinystill materialises;
 * - that transpose alone (`transposeBlocked`, the function the kernel uses) on `dy`;
 * - the batched attention products `Q·Kᵀ` and `probs·V` (384 slices of 128×26 / 128×128);
 * - native sgemm on one thread: OpenBLAS (`torch.mm`, Debian python3-torch) and ONNX Runtime's
 *   MLAS, best over n = 512, 1024, 2048;
 * - the cost of first touching fresh memory (page faults), per 4 KiB page.
 *
 * Figures are medians over `--reps` timed calls after one warm-up (best-of for sgemm, as
 * `deno task bench` does). On a small shared VM they swing between runs; compare within a run.
 * @module
 */

import { setBackend, tf, transposeBlocked } from "../pipeline/engines/tfjs_backend.ts";
import { ortSgemm } from "./bench.ts";

const ROWS = 32 * 128, H = 312, I = 1200, HEADS = 12, D = H / HEADS, SEQ = 128, BATCH = 32;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function filled(shape: number[], seed: number): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin((i + seed) * 0.37) * 0.5;
  return tf.tensor(data, shape);
}

/** Median ms of `fn` over `reps` calls after one warm-up; `fn` returns tensors to dispose. */
function timeMs(fn: () => tf.Tensor, reps: number): number {
  tf.dispose(fn());
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const out = fn(); // wasm kernels run synchronously: the result is ready here
    times.push(performance.now() - t0);
    out.dispose();
  }
  return median(times);
}

interface Product {
  name: string;
  a: number[];
  b: number[];
  transposeA: boolean;
  transposeB: boolean;
  flops: number;
}

/** The 2-D products of one dense layer `y = x·Wᵀ` (x [4096, in], W [out, in]) in a train step. */
function denseProducts(label: string, inF: number, outF: number): Product[] {
  const flops = 2 * ROWS * inF * outF;
  return [
    {
      name: `${label} forward x·Wᵀ`,
      a: [ROWS, inF],
      b: [outF, inF],
      transposeA: false,
      transposeB: true,
      flops,
    },
    {
      name: `${label} backward dy·W`,
      a: [ROWS, outF],
      b: [outF, inF],
      transposeA: false,
      transposeB: false,
      flops,
    },
    {
      name: `${label} weight grad dyᵀ·x`,
      a: [ROWS, outF],
      b: [ROWS, inF],
      transposeA: true,
      transposeB: false,
      flops,
    },
  ];
}

const ATTENTION: Product[] = [
  {
    name: "attention Q·Kᵀ (384 × 128×26·26×128)",
    a: [BATCH, HEADS, SEQ, D],
    b: [BATCH, HEADS, SEQ, D],
    transposeA: false,
    transposeB: true,
    flops: 2 * BATCH * HEADS * SEQ * SEQ * D,
  },
  {
    name: "attention probs·V (384 × 128×128·128×26)",
    a: [BATCH, HEADS, SEQ, SEQ],
    b: [BATCH, HEADS, SEQ, D],
    transposeA: false,
    transposeB: false,
    flops: 2 * BATCH * HEADS * SEQ * SEQ * D,
  },
];

function measureProduct(p: Product, reps: number): number {
  const a = filled(p.a, 1), b = filled(p.b, 2);
  const ms = timeMs(() => tf.matMul(a, b, p.transposeA, p.transposeB), reps);
  tf.dispose([a, b]);
  return ms;
}

/** Median ms of transposing a [rows, cols] Float32Array with the kernel's `transposeBlocked`. */
function measureTranspose(rows: number, cols: number, reps: number): number {
  const src = new Float32Array(rows * cols).map((_, i) => i % 97);
  const dst = new Float32Array(rows * cols);
  transposeBlocked(src, dst, 1, rows, cols);
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    transposeBlocked(src, dst, 1, rows, cols);
    times.push(performance.now() - t0);
  }
  return median(times);
}

/** µs per 4 KiB page of writing one byte into each page of a fresh `mib` MiB buffer. */
function pageFaultMicros(mib: number, reps: number): { fresh: number; touched: number } {
  const bytes = mib * 2 ** 20, pages = bytes / 4096;
  const fresh: number[] = [], touched: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    const buf = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i += 4096) buf[i] = 1;
    const t1 = performance.now();
    for (let i = 0; i < bytes; i += 4096) buf[i] = 2;
    const t2 = performance.now();
    fresh.push(((t1 - t0) * 1000) / pages);
    touched.push(((t2 - t1) * 1000) / pages);
  }
  return { fresh: median(fresh), touched: median(touched) };
}

/** OpenBLAS sgemm GFLOP/s on `threads` threads through the PyTorch peer, or why not. */
async function openblasSgemm(threads: number): Promise<string> {
  try {
    const out = await new Deno.Command("/usr/bin/python3", {
      args: ["bench/torch_peer.py", "--workload", "sgemm", "--threads", String(threads)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    const r = JSON.parse(lines[lines.length - 1]);
    if (r.error) return `error: ${r.error}`;
    return `${Number(r.gflops_sgemm).toFixed(0)} GFLOP/s (${r.blas}, torch ${r.torch})`;
  } catch (e) {
    return `error: ${(e as Error).message.split("\n")[0]}`;
  }
}

async function main(): Promise<void> {
  const quick = Deno.args.includes("--quick");
  const ri = Deno.args.indexOf("--reps");
  const reps = ri >= 0 ? Number(Deno.args[ri + 1]) : quick ? 3 : 5;
  await setBackend("wasm");
  console.log(
    `tinystill kernel bench — ${navigator.hardwareConcurrency} cores, deno ${Deno.version.deno}, ` +
      `tfjs ${tf.version.tfjs} (${tf.getBackend()}); TinyBERT4 shapes at ${BATCH}×${SEQ}; ` +
      `medians of ${reps}\n`,
  );

  console.log("| product (tinystill wasm) | shapes | ms | GFLOP/s |\n|---|---|---:|---:|");
  const products = [
    ...denseProducts("Q/K/V/output 312→312", H, H),
    ...denseProducts("FFN up 312→1200", H, I),
    ...denseProducts("FFN down 1200→312", I, H),
    ...ATTENTION,
  ];
  const ms = new Map<string, number>();
  for (const p of products) {
    const t = measureProduct(p, reps);
    ms.set(p.name, t);
    const shapes = `${p.a.join("×")}${p.transposeA ? "ᵀ" : ""} · ${p.b.join("×")}${
      p.transposeB ? "ᵀ" : ""
    }`;
    console.log(`| ${p.name} | ${shapes} | ${t.toFixed(1)} | ${(p.flops / t / 1e6).toFixed(1)} |`);
  }

  console.log(
    "\n| transpose materialised for a weight gradient | ms | share of that dyᵀ·x product |" +
      "\n|---|---:|---:|",
  );
  for (const [label, out] of [["Q/K/V/output 312→312", H], ["FFN up 312→1200", I]] as const) {
    const t = measureTranspose(ROWS, out, reps);
    const product = ms.get(`${label} weight grad dyᵀ·x`)!;
    console.log(
      `| dy [${ROWS}, ${out}] (${label}) | ${t.toFixed(1)} | ${(100 * t / product).toFixed(0)}% |`,
    );
  }

  let mlas = 0;
  try {
    for (const n of [512, 1024, 2048]) mlas = Math.max(mlas, await ortSgemm(n, reps, 1));
  } catch (e) {
    mlas = NaN;
    console.error(`ONNX Runtime sgemm failed: ${(e as Error).message.split("\n")[0]}`);
  }
  console.log("\nnative sgemm, 1 thread (best over n = 512, 1024, 2048):");
  console.log(`- OpenBLAS: ${await openblasSgemm(1)}`);
  console.log(`- ONNX Runtime (MLAS): ${Number.isNaN(mlas) ? "error" : mlas.toFixed(0)} GFLOP/s`);

  const pf = pageFaultMicros(256, quick ? 2 : 3);
  console.log(
    `\nfirst touch of fresh memory (256 MiB, one write per 4 KiB page): ` +
      `${pf.fresh.toFixed(2)} µs per page; the same pages again: ${pf.touched.toFixed(3)} µs`,
  );
}

if (import.meta.main) await main();
