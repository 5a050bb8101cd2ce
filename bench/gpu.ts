/**
 * The GPU bench (`deno task bench --device webgpu [--quick]`, or `deno run -A bench/gpu.ts`):
 * in one run, the TinyBERT4 train step (32×128, classification, dropout on) and the BERT-base
 * (12×768, 12 heads, FFN 3072, vocab 30,522) forward and train step, each on ONNX Runtime's
 * WebGPU provider, on ONNX Runtime's CPU provider (every core) and on PyTorch (CUDA when
 * `torch.cuda.is_available()`, else its CPU, said so), with tokens/s and % of the GPU's fp32
 * peak. Compile time (graph build, session and the first step: WebGPU shader compiles) is
 * reported apart from the step time (median of the next steps).
 *
 * The fp32 peak: `TINYSTILL_GPU_PEAK_TFLOPS` if set, else {@link PEAKS} by the adapter's name
 * (none for a software adapter). `--quick` uses tiny models and batches (a smoke test that runs on
 * SwiftShader in a few minutes); `--require-gpu` fails on a software adapter (`bench/gpu.sh`);
 * `--budget S` bounds the whole run (workloads left without time are reported as skipped).
 * Without any WebGPU adapter the bench exits with status 2 and says what the Vulkan loader was
 * given. Every workload runs in its own process with a time limit, so a stuck driver cannot hang
 * the run. The PyTorch peer is `bench/torch_peer.py` run by `TINYSTILL_PYTHON`, else the first of
 * `python3`, `/usr/bin/python3` that imports torch.
 * @module
 */

import { Bert } from "../pipeline/model/bert.ts";
import type { BertConfig } from "../pipeline/model/config.ts";
import { median, randomBatch } from "./_common.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { type AdapterInfo, gpuAdapter } from "../pipeline/engines/device.ts";

type ModelId = "tinybert4" | "bert-base";
type Kind = "forward" | "train";
type Dev = "webgpu" | "cpu";

interface Shape {
  name: string;
  cfg: Partial<BertConfig>;
  batch: number;
  seq: number;
}

const LABELS = { "0": "neg", "1": "pos" };

/** The models at full size and at `--quick` size. */
export function shapes(quick: boolean): Record<ModelId, Shape> {
  if (quick) {
    return {
      tinybert4: {
        name: "TinyBERT4, quick (2×48, 12 heads, FFN 192, vocab 1000)",
        cfg: {
          vocab_size: 1000,
          hidden_size: 48,
          num_hidden_layers: 2,
          num_attention_heads: 12,
          intermediate_size: 192,
          max_position_embeddings: 64,
          id2label: LABELS,
        },
        batch: 4,
        seq: 32,
      },
      "bert-base": {
        name: "BERT-base, quick (2×96, 12 heads, FFN 384, vocab 1000)",
        cfg: {
          vocab_size: 1000,
          hidden_size: 96,
          num_hidden_layers: 2,
          num_attention_heads: 12,
          intermediate_size: 384,
          max_position_embeddings: 64,
          id2label: LABELS,
        },
        batch: 4,
        seq: 32,
      },
    };
  }
  return {
    tinybert4: {
      name: "TinyBERT4 (4×312, 12 heads, FFN 1200, vocab 30,522)",
      cfg: {
        vocab_size: 30522,
        hidden_size: 312,
        num_hidden_layers: 4,
        num_attention_heads: 12,
        intermediate_size: 1200,
        max_position_embeddings: 512,
        id2label: LABELS,
      },
      batch: 32,
      seq: 128,
    },
    "bert-base": {
      name: "BERT-base (12×768, 12 heads, FFN 3072, vocab 30,522)",
      cfg: {
        vocab_size: 30522,
        hidden_size: 768,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        intermediate_size: 3072,
        max_position_embeddings: 512,
        id2label: LABELS,
      },
      batch: 32,
      seq: 128,
    },
  };
}

/** The workloads, in the order they run and print. */
const WORKLOADS: [ModelId, Kind][] = [
  ["tinybert4", "train"],
  ["bert-base", "forward"],
  ["bert-base", "train"],
];

/**
 * Matmul FLOPs per token of a forward pass at sequence length `seq` (as bench.ts counts them):
 * per layer Q, K, V and the output projection (4·H²), the FFN (2·H·I) and the two attention
 * products (2·seq·H), ×2 for multiply-add. A train step counts 3× forward.
 */
export function flopsPerToken(c: Partial<BertConfig>, seq: number, kind: Kind): number {
  const H = c.hidden_size!, I = c.intermediate_size!, L = c.num_hidden_layers!;
  return (kind === "train" ? 3 : 1) * 2 * L * (4 * H * H + 2 * H * I + 2 * seq * H);
}

/**
 * fp32 (non-tensor-core) peak TFLOP/s by adapter name, from NVIDIA's datasheets; the first match
 * wins, so the specific names come first.
 */
export const PEAKS: [RegExp, number, string][] = [
  [/H200 NVL/i, 60, "H200 NVL"],
  [/H200/i, 67, "H200 SXM"],
  [/H100 PCIe/i, 51, "H100 PCIe"],
  [/H100 NVL/i, 60, "H100 NVL"],
  [/H100/i, 67, "H100 SXM"],
  [/A100/i, 19.5, "A100"],
  [/L40S/i, 91.6, "L40S"],
  [/\bL4\b/i, 30.3, "L4"],
  [/\bA10\b/i, 31.2, "A10"],
  [/RTX 4090/i, 82.6, "RTX 4090"],
  [/\bT4\b/i, 8.1, "T4"],
  [/V100/i, 15.7, "V100 SXM2"],
];

/** The fp32 peak (TFLOP/s) to divide by, and where it came from; null when none is known. */
export function gpuPeak(
  description: string,
  env = Deno.env.get("TINYSTILL_GPU_PEAK_TFLOPS"),
): { tflops: number; source: string } | null {
  if (env && Number(env) > 0) {
    return { tflops: Number(env), source: `TINYSTILL_GPU_PEAK_TFLOPS=${env}` };
  }
  for (const [re, tflops, name] of PEAKS) {
    if (re.test(description)) return { tflops, source: `table: ${name} fp32 non-tensor` };
  }
  return null;
}

interface Measured {
  setupMs: number;
  firstMs: number;
  stepMs: number;
  stepsMs: number[];
  tokensPerSec: number;
  split?: { feedMs: number; gradMs: number; updateMs: number };
}

/** One workload in this process: setup, the first step, then `steps` timed steps. */
async function measure(
  model: ModelId,
  kind: Kind,
  device: Dev,
  quick: boolean,
): Promise<Measured> {
  const sh = shapes(quick)[model];
  const steps = quick ? 2 : model === "bert-base" && kind === "train" ? 3 : 5;
  const bert = Bert.create(sh.cfg, {}, 1);
  const threads = navigator.hardwareConcurrency;
  const host = randomBatch(sh.batch, sh.seq, sh.cfg.vocab_size!, 1);
  const times: number[] = [];
  let setupMs: number;
  const split = { feed: [] as number[], grad: [] as number[], update: [] as number[] };
  const t0 = performance.now();
  if (kind === "train") {
    const trainer = await Trainer.create(bert, {
      objective: "classification",
      lr: () => 5e-5,
      weightDecay: 0.01,
      maxGradNorm: 1,
      threads,
      engine: { kind: "onnxruntime", device },
    });
    setupMs = performance.now() - t0;
    try {
      for (let i = 0; i <= steps; i++) {
        const t = performance.now();
        await trainer.step(host, i);
        times.push(performance.now() - t);
        if (i > 0) {
          split.feed.push(trainer.lastTimes.feed);
          split.grad.push(trainer.lastTimes.grad);
          split.update.push(trainer.lastTimes.update);
        }
      }
    } finally {
      await trainer.close();
    }
  } else {
    const inf = await openInference(bert, { outputs: "logits", mlm: false, device, threads });
    setupMs = performance.now() - t0;
    try {
      for (let i = 0; i <= steps; i++) {
        const t = performance.now();
        await inf.run({
          inputIds: host.inputIds.data as Int32Array,
          attentionMask: host.attentionMask.data as Int32Array,
          batch: sh.batch,
          seq: sh.seq,
        });
        times.push(performance.now() - t);
      }
    } finally {
      await inf.close();
    }
  }
  const stepMs = median(times.slice(1));
  return {
    setupMs,
    firstMs: times[0],
    stepMs,
    stepsMs: times.slice(1).map((t) => Math.round(t)),
    tokensPerSec: (sh.batch * sh.seq * 1000) / stepMs,
    ...(kind === "train"
      ? {
        split: {
          feedMs: median(split.feed),
          gradMs: median(split.grad),
          updateMs: median(split.update),
        },
      }
      : {}),
  };
}

/**
 * Run a command with a time limit; its last stdout line parsed as JSON, else `{ error }` with the
 * end of its stderr. A command past its limit is killed (SIGKILL).
 */
async function jsonLine(
  cmd: string,
  args: string[],
  limitS: number,
): Promise<Record<string, unknown>> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).spawn();
  } catch (e) {
    return { error: `cannot run ${cmd} (${(e as Error).message})` };
  }
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, limitS * 1000);
  const out = await child.output();
  clearTimeout(timer);
  if (killed) return { error: `killed after ${limitS} s` };
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  try {
    return JSON.parse(lines[lines.length - 1]);
  } catch {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" ");
    return { error: `exit ${out.code}: ${err}` };
  }
}

/** This script in a fresh process, with the Deno flags of `TINYSTILL_DENO_FLAGS` (bench/gpu.sh). */
function self(args: string[], limitS: number) {
  const flags = (Deno.env.get("TINYSTILL_DENO_FLAGS") ?? "").split(/\s+/).filter((f) => f);
  return jsonLine(
    Deno.execPath(),
    ["run", ...flags, "-A", import.meta.filename!, ...args],
    limitS,
  );
}

/** The Python that imports torch, or null. */
async function findPython(): Promise<string | null> {
  const env = Deno.env.get("TINYSTILL_PYTHON");
  for (const py of env ? [env] : ["python3", "/usr/bin/python3"]) {
    const r = await jsonLine(py, ["-c", "import json, torch; print(json.dumps({}))"], 60);
    if (!r.error) return py;
  }
  return null;
}

const fmt = (x: unknown, digits = 0) =>
  typeof x === "number" && Number.isFinite(x)
    ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : "—";

/** The bench's own entry point (bench.ts calls it for `--device webgpu`). */
export async function main(args: string[] = Deno.args): Promise<void> {
  const quick = args.includes("--quick");
  if (args.includes("--probe")) {
    console.log(JSON.stringify({ adapter: await gpuAdapter() }));
    return;
  }
  const ci = args.indexOf("--child");
  if (ci >= 0) {
    const [model, kind, device] = args.slice(ci + 1, ci + 4) as [ModelId, Kind, Dev];
    let res: Record<string, unknown>;
    try {
      res = { ...await measure(model, kind, device, quick) };
    } catch (e) {
      res = { error: (e as Error).message.split("\n")[0] };
    }
    console.log(JSON.stringify(res));
    return;
  }

  const vk = `VK_ICD_FILENAMES=${Deno.env.get("VK_ICD_FILENAMES") ?? "(unset)"}, ` +
    `LD_LIBRARY_PATH=${Deno.env.get("LD_LIBRARY_PATH") ?? "(unset)"}`;
  const probe = await self(["--probe"], 60);
  const adapter = (probe.adapter ?? null) as AdapterInfo | null;
  if (!adapter) {
    console.error(
      `bench --device webgpu: no WebGPU adapter found${
        probe.error ? ` (${probe.error})` : ""
      }. The Vulkan loader (libvulkan.so.1) and a driver ICD are needed: ${vk}. See docs/gpu.md.`,
    );
    Deno.exit(2);
  }
  if (adapter.software && args.includes("--require-gpu")) {
    console.error(
      `bench --device webgpu --require-gpu: the adapter is a software one ` +
        `(${adapter.description}, vendor ${adapter.vendorId}), not a GPU: ${vk}`,
    );
    Deno.exit(2);
  }
  const peak = adapter.software ? null : gpuPeak(adapter.description);
  const cores = navigator.hardwareConcurrency;
  const sh = shapes(quick);
  console.log(
    `tinystill GPU bench${quick ? " (--quick: tiny sizes, not figures)" : ""} — deno ` +
      `${Deno.version.deno}, ${cores} CPU cores`,
  );
  console.log(
    `webgpu adapter: ${adapter.vendor} ${adapter.description || "(no description)"} ` +
      `(vendor ${adapter.vendorId}, device ${adapter.deviceId}${
        adapter.software ? ", SOFTWARE" : ""
      }); ${adapter.driver}`,
  );
  console.log(
    peak
      ? `fp32 peak: ${peak.tflops} TFLOP/s (${peak.source})`
      : `fp32 peak: unknown for this adapter (set TINYSTILL_GPU_PEAK_TFLOPS); % of peak not shown`,
  );

  const python = await findPython();
  // limits per process, and the whole run's (`--budget S`: bench/gpu.sh's 5 minutes); a
  // workload left without time is reported as skipped
  const bi = args.indexOf("--budget");
  const deadline = bi >= 0 ? performance.now() + Number(args[bi + 1]) * 1000 : Infinity;
  const left = () => Math.floor((deadline - performance.now()) / 1000);
  const limit = (own: number) => Math.min(own, left());
  const skipped: Record<string, unknown> = { error: "skipped: the --budget ran out" };
  type Row = { engine: string; r: Record<string, unknown>; gpu: boolean };
  const rows = new Map<string, Row[]>();
  let torchDevice = "";
  for (const [model, kind] of WORKLOADS) {
    const s = sh[model];
    const list: Row[] = [];
    for (const dev of ["webgpu", "cpu"] as const) {
      const own = quick ? 240 : dev === "webgpu" ? 150 : 120;
      const r = limit(own) < 5
        ? skipped
        : await self(["--child", model, kind, dev, ...(quick ? ["--quick"] : [])], limit(own));
      const engine = dev === "webgpu" ? "ONNX Runtime webgpu" : `ONNX Runtime cpu (${cores} thr)`;
      list.push({ engine, r, gpu: dev === "webgpu" });
      console.error(
        `  ${model} ${kind} ${engine}: ${
          r.error ? `error: ${r.error}` : `${fmt(r.tokensPerSec)} tokens/s`
        }`,
      );
    }
    let r: Record<string, unknown>;
    if (!python) {
      r = { error: "no python3 that imports torch (set TINYSTILL_PYTHON)" };
    } else if (limit(120) < 5) {
      r = skipped;
    } else {
      const c = s.cfg;
      r = await jsonLine(python, [
        "bench/torch_peer.py",
        "--device",
        "auto",
        "--workload",
        kind,
        "--layers",
        String(c.num_hidden_layers),
        "--hidden",
        String(c.hidden_size),
        "--heads",
        String(c.num_attention_heads),
        "--ffn",
        String(c.intermediate_size),
        "--vocab",
        String(c.vocab_size),
        "--max-pos",
        String(c.max_position_embeddings),
        "--batch",
        String(s.batch),
        "--seq",
        String(s.seq),
        "--threads",
        String(cores),
        "--warmup",
        "1",
        "--steps",
        quick ? "2" : "5",
      ], limit(120));
      if (!r.error) {
        r = {
          ...r,
          tokensPerSec: r.tokens_per_sec,
          stepMs: r.ms_per_step,
          firstMs: r.first_ms,
        };
        torchDevice = `torch ${r.torch}, ${r.device === "cpu" ? "CPU" : r.device}`;
      }
    }
    const onGpu = !r.error && r.device !== "cpu";
    const engine = r.error
      ? "PyTorch"
      : onGpu
      ? "PyTorch CUDA (fp32, TF32 off)"
      : `PyTorch CPU (no CUDA; ${cores} thr)`;
    list.push({ engine, r, gpu: onGpu });
    console.error(
      `  ${model} ${kind} ${engine}: ${
        r.error ? `error: ${r.error}` : `${fmt(r.tokensPerSec)} tokens/s`
      }`,
    );
    rows.set(`${model} ${kind}`, list);
  }

  console.log(
    `\n| workload | batch × seq | engine | compile s (first step) | step ms (median) | tokens/s | ` +
      `GFLOP/s | % of GPU fp32 peak |\n|---|---|---|---:|---:|---:|---:|---:|`,
  );
  for (const [model, kind] of WORKLOADS) {
    const s = sh[model];
    const flops = flopsPerToken(s.cfg, s.seq, kind);
    for (const { engine, r, gpu } of rows.get(`${model} ${kind}`)!) {
      const head = `| ${model} ${kind} | ${s.batch} × ${s.seq} | ${engine}`;
      if (r.error) {
        console.log(`${head} | error: ${r.error} | | | | |`);
        continue;
      }
      const tok = Number(r.tokensPerSec), gflops = (tok * flops) / 1e9;
      const pct = gpu && peak ? `${fmt((100 * gflops) / 1000 / peak.tflops, 1)}%` : "—";
      const compile = Number(r.setupMs ?? 0) + Number(r.firstMs);
      console.log(
        `${head} | ${fmt(compile / 1000, 2)} | ${fmt(r.stepMs, 1)} | ${fmt(tok)} | ` +
          `${fmt(gflops, gflops < 10 ? 1 : 0)} | ${pct} |`,
      );
    }
  }
  for (const [model, kind] of WORKLOADS) {
    if (kind !== "train") continue;
    for (const { engine, r } of rows.get(`${model} ${kind}`)!) {
      const sp = r.split as Measured["split"] | undefined;
      if (!sp) continue;
      console.log(
        `  ${model} train, ${engine}: feed ${fmt(sp.feedMs, 1)} ms, forward+backward ` +
          `${fmt(sp.gradMs, 1)} ms, AdamW (host) ${fmt(sp.updateMs, 1)} ms a step`,
      );
    }
  }
  console.log(
    `\nmodels: ${[...new Set(WORKLOADS.map(([m]) => sh[m].name))].join("; ")}. Train steps: ` +
      `classification, dropout on, AdamW. FLOPs: matmuls only, train = 3× forward. compile = graph ` +
      `build, session and the first step (shader compile on webgpu; CUDA/cuBLAS start-up for ` +
      `PyTorch); step = median of the next ` +
      `${quick ? 2 : "3–5"} steps. PyTorch: ${torchDevice || "not run"}${
        python ? ` (${python})` : ""
      }.`,
  );
}

if (import.meta.main) await main();
