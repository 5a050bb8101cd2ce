/**
 * `evaluate`: the teacher and every student side by side on a held-out split — accuracy,
 * macro-F1 and MCC, retention (% of the teacher's score), parameters, bytes on disk, latency at
 * batch 1 and throughput — each model run as all inference is (`openInference` on its inference
 * graph: ONNX Runtime, or tfjs with `engine: tfjs`), and each student's fp16 and INT8 exports
 * measured from their exported files on ONNX Runtime. Writes `report.json`, `report.md`, and the
 * charts as SVG with their Vega-Lite specs beside them (`<chart>.vl.json`): `scores` (each model's
 * score with its 95% interval), `latency` and `size` (score against each), `loss-<model>`; and
 * prints the table.
 *
 * ```yaml
 * - evaluate:
 *     teacher: finetune@teacher
 *     students: { student: distill }
 *     baselines: { labels-only: finetune@student }
 * ```
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import type { HostBatch } from "../data/batch.ts";
import type { Bert } from "../model/bert.ts";
import { loadBert } from "../model/checkpoint.ts";
import { labelNames, readConfig } from "../model/config.ts";
import { InputError } from "../errors.ts";
import { exists, writeFileAtomic, writeJsonAtomic } from "../store/fsutil.ts";
import {
  exactMatch,
  pairedAccuracy,
  pairedBootstrap,
  type PairedComparison,
} from "../report/metrics.ts";
import type { EngineRef } from "../engines/mod.ts";
import { batchInputs, openInference } from "../engines/inference.ts";
import type { Device } from "../engines/device.ts";
import { exportOnnx, headLogits, headOutputNames } from "../graph/export.ts";
import {
  lossChartSpec,
  renderSvg,
  scoreChartSpec,
  scoreInterval,
  type ScorePoint,
  tradeoffSpec,
  type VegaLiteSpec,
} from "../report/charts.ts";
import {
  comparisonTable,
  lossSeries,
  type ModelRow,
  reportMarkdown,
  type Table,
  textTable,
} from "../report/report.ts";
import { defineStage, fileDigest, type StageContext, type StageResult } from "../run/runner.ts";
import type { CurvePoint, EvalPoint } from "../train/loop.ts";
import {
  checkSeqLength,
  DEV_METRICS,
  deviceMetrics,
  deviceParam,
  longestRow,
  modelDirOf,
  predictWith,
  range,
  rowMetrics,
  taskMetric,
} from "./common.ts";
import {
  isRegression,
  padRows,
  readTokenMeta,
  readTokenSplit,
  taskLabels,
  type TokenRows,
  UNLABELLED,
} from "../store/tokens.ts";
import { requireLabelledSplit } from "./tokenize.ts";

/** Params of the evaluate stage. */
export const EvaluateParams = z.strictObject({
  tokens: z.string().min(1).default("tokenize"),
  split: z.enum(["test", "dev", "train"]).default("test"),
  /** The stage that trained the teacher; default `teacher.checkpoint`. */
  teacher: z.string().min(1).optional(),
  /** Students to compare: display name → the stage that wrote its `model/`. */
  students: z.record(z.string().min(1), z.string().min(1)).default({}),
  /** Reference models (e.g. the student trained on labels alone): name → stage. */
  baselines: z.record(z.string().min(1), z.string().min(1)).default({}),
  /**
   * The metric retention is computed on (default accuracy; pearson for regression; f1 for QA;
   * token classification: accuracy over words, or entity_f1).
   */
  metric: z.enum(DEV_METRICS).optional(),
  /** Each model's executor: ONNX Runtime, or tfjs on the pipeline's `backend`. */
  engine: z.enum(["onnx", "tfjs"]).default("onnx"),
  /**
   * ONNX Runtime's device (its fp16 and INT8 variants too): `auto` (webgpu on a real GPU adapter,
   * else cpu), `cpu`, `webgpu`. INT8's `MatMulInteger` has no WebGPU kernel (it runs on the CPU).
   */
  device: deviceParam,
  /**
   * Also measure each student's other exports, each as a row `<name> (<variant>)` — accuracy,
   * file size, latency — and a paired test against the student (onnx engine only): `fp16`
   * (`onnx/model_fp16.onnx`, float16 weights) and `int8` (`onnx/model_quantized.onnx`: int8
   * per-channel Linear weights, dynamic activations).
   */
  variants: z.array(z.enum(["fp16", "int8"])).default(["fp16", "int8"]),
  /** Threads for ONNX Runtime (default: every core). */
  threads: z.number().int().positive().optional(),
  batch_size: z.number().int().positive().default(32),
  /** Examples timed one by one for the batch-1 latency (median). */
  latency_examples: z.number().int().positive().default(100),
});
/** Validated evaluate params. */
export type EvaluateParams = z.infer<typeof EvaluateParams>;

/** How a report row names the executor: `onnx`, `tfjs-wasm`, … (`onnxruntime/cpu` → `onnx`). */
function engineLabel(name: string): string {
  return name === "onnxruntime/cpu"
    ? "onnx"
    : name.replace("onnxruntime", "onnx").replace("/", "-");
}

/** Metrics, throughput and batch-1 latency of one model on a split. */
export async function measureModel(
  bert: Bert,
  rows: TokenRows,
  opts: {
    /** The executor of `bert`'s inference graph (default ONNX Runtime). */
    engine?: EngineRef;
    threads?: number;
    batchSize: number;
    latencyExamples: number;
    /** An exported ONNX file to run instead (bytes or a path; ONNX Runtime). */
    model?: Uint8Array | string;
    /** ONNX Runtime's device (default `auto`). */
    device?: Device;
  },
): Promise<
  {
    metrics: Record<string, number>;
    latency_ms: number;
    throughput: number;
    engine: string;
    /** What the manifest records of where ONNX Runtime ran (absent on tfjs). */
    device?: Record<string, string>;
    /**
     * Per example, in data order: the class id (classification) or the output (regression);
     * token classification: every word's predicted tag, rows concatenated (−1: cut); QA: 1 where
     * the answer is an exact match, else 0.
     */
    predictions: Float32Array | Int32Array;
  }
> {
  const inference = await openInference(opts.model ?? bert, {
    outputs: "logits",
    mlm: false,
    threads: opts.threads,
    device: opts.device,
    ...(opts.model ? {} : { engine: opts.engine }),
  });
  const names = headOutputNames(bert);
  /** The head's logits of a batch of rows (QA: start and end interleaved, `[B, S, 2]`). */
  const logitsOf = async (b: HostBatch): Promise<Float32Array> =>
    headLogits(bert, await inference.run(batchInputs(b), names)).data;
  try {
    const n = rows.lengths.length;
    const shortest = range(0, n).sort((a, b) => rows.lengths[a] - rows.lengths[b]);
    await logitsOf(padRows(rows, shortest.slice(0, Math.min(n, opts.batchSize)), false)); // warm-up
    const t0 = performance.now();
    const predicted = await predictWith(inference, bert, rows, opts.batchSize);
    const throughput = n / ((performance.now() - t0) / 1000);
    // batch 1, examples in data order (their real lengths), median of the timings
    const k = Math.min(n, opts.latencyExamples);
    await logitsOf(padRows(rows, [0], false));
    const times: number[] = [];
    for (let i = 0; i < k; i++) {
      const b = padRows(rows, [i], false);
      const t = performance.now();
      await logitsOf(b);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    const labels = labelNames(bert.config);
    const metrics = rowMetrics(predicted, rows, labels);
    return {
      metrics,
      latency_ms: times[Math.floor(times.length / 2)],
      throughput,
      engine: engineLabel(inference.engine),
      ...(inference.engine.startsWith("onnxruntime/")
        ? {
          device: deviceMetrics(
            inference.engine.slice("onnxruntime/".length),
            inference.adapter,
          ),
        }
        : {}),
      predictions: rows.tokenLabels
        ? Int32Array.from((predicted as number[][]).flat())
        : rows.startPositions
        ? Int32Array.from(
          predicted as string[],
          (a, i) => exactMatch(a, rows.answers![i].map((x) => x.text)),
        )
        : predicted as Float32Array | Int32Array,
    };
  } finally {
    // released before returning: a native release still running when the process or its
    // worker exits can corrupt the heap
    await inference.close();
  }
}

interface Curves {
  curve: CurvePoint[];
  evals: EvalPoint[];
}

/** One row of the paired comparisons: model `a` against model `b`. */
export interface PairedRow extends PairedComparison {
  a: string;
  b: string;
}

/**
 * Which pairs to test: every student against every baseline and against the teacher, every
 * baseline against the teacher, and each student's fp16 and INT8 exports against the student.
 */
function pairedComparisons(
  models: { name: string; role: ModelRow["role"] }[],
  predictions: Map<string, Int32Array>,
  gold: ArrayLike<number>,
  /** Token classification: word counts per sentence (resampled by sentence). */
  sentences?: number[],
  /** QA (predictions are exact-match indicators): resample by question. */
  questions = false,
): PairedRow[] {
  const of = (role: ModelRow["role"]) => models.filter((m) => m.role === role).map((m) => m.name);
  const pairs: [string, string][] = [
    ...of("student").flatMap((s) => of("baseline").map((b) => [s, b] as [string, string])),
    ...[...of("student"), ...of("baseline")].map((m) => [m, "teacher"] as [string, string]),
    // what fp16 / INT8 cost: each student's other exports against itself
    ...of("student").flatMap((s) =>
      ["fp16", "int8"].map((v) => [`${s} (${v})`, s] as [string, string])
    ),
  ];
  return pairs
    .filter(([a, b]) => predictions.has(a) && predictions.has(b))
    .map(([a, b]) => {
      const pa = predictions.get(a)!, pb = predictions.get(b)!;
      const mc = pairedAccuracy(pa, pb, gold);
      if (!sentences && !questions) return { a, b, ...mc };
      // words of a sentence are not independent: a paired bootstrap over sentences (QA: over
      // questions) gives the interval and p; A only / B only still count words / questions
      const scores = (pred: Int32Array) => {
        if (!sentences) return Float64Array.from(pred, (v, i) => (v === gold[i] ? 1 : 0));
        const num = new Float64Array(sentences.length);
        let k = 0;
        sentences.forEach((n, i) => {
          for (let j = 0; j < n; j++, k++) if (pred[k] === gold[k]) num[i]++;
        });
        return { num, den: Float64Array.from(sentences) };
      };
      const bs = pairedBootstrap(scores(pa), scores(pb), { seed: 0 });
      return { a, b, ...mc, diff: bs.diff, ci95: bs.ci95, p: bs.p };
    });
}

/** The paired comparisons as a table (differences in points). */
export function pairedTable(rows: PairedRow[], what = "accuracy"): Table {
  const pts = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(100 * x).toFixed(1)}`;
  return {
    headers: ["A", "B", `Δ ${what} (points)`, "95% interval", "A only", "B only", "p"],
    cells: rows.map((r) => [
      r.a,
      r.b,
      pts(r.diff),
      `${pts(r.ci95[0])} … ${pts(r.ci95[1])}`,
      String(r.onlyA),
      String(r.onlyB),
      r.p < 0.001 ? "< 0.001" : r.p.toFixed(3),
    ]),
    align: ["left", "left", "right", "right", "right", "right", "right"],
  };
}

/** A model the report covers. */
interface EvalModel {
  name: string;
  role: ModelRow["role"];
  dir: string;
  /** The stage that trained it (its curve is drawn). */
  stage?: string;
}

/** A report row with where it ran and its shape. */
type ResultRow = ModelRow & { engine: string; stage?: string; layers: number; hidden: number };

/** Step 1: the models of the report — the teacher, then the students, then the baselines. */
function modelsOf(ctx: StageContext<EvaluateParams>): EvalModel[] {
  const { params, pipeline: p } = ctx;
  return [
    {
      name: "teacher",
      role: "teacher",
      dir: modelDirOf(
        p,
        ctx.inputs,
        ctx.resolve,
        params.teacher,
        "teacher",
        `${ctx.key}.teacher`,
      ),
      stage: params.teacher,
    },
    ...Object.entries(params.students).map(([name, stage]) => ({
      name,
      role: "student" as const,
      dir: join(ctx.inputs[stage], "model"),
      stage,
    })),
    ...Object.entries(params.baselines).map(([name, stage]) => ({
      name,
      role: "baseline" as const,
      dir: join(ctx.inputs[stage], "model"),
      stage,
    })),
  ];
}

/**
 * Step 2: every model on the split (labels checked against the data first), one at a time:
 * metrics, size, latency and throughput, and each model's predictions for the paired tests.
 */
async function measureAll(
  ctx: StageContext<EvaluateParams>,
  models: EvalModel[],
  rows: TokenRows,
  wanted: string[],
): Promise<{
  result: ResultRow[];
  predictions: Map<string, Int32Array>;
  device?: Record<string, string>;
}> {
  const { params } = ctx;
  const result: ResultRow[] = [];
  const predictions = new Map<string, Int32Array>();
  let device: Record<string, string> | undefined;
  const bar = ctx.progress(models.length, "models");
  for (const m of models) {
    const bert = await loadBert(m.dir);
    try {
      const labels = labelNames(bert.config);
      if (labels.join("\u0000") !== wanted.join("\u0000")) {
        throw new InputError(`${m.name}: label order differs from the data's`, {
          file: join(m.dir, "config.json"),
          field: "id2label",
          expected: JSON.stringify(wanted),
          got: JSON.stringify(labels),
        });
      }
      const r = await measureModel(bert, rows, {
        engine: params.engine === "tfjs"
          ? { kind: "tfjs", backend: ctx.pipeline.backend }
          : { kind: "onnxruntime" },
        device: params.device,
        threads: params.threads,
        batchSize: params.batch_size,
        latencyExamples: params.latency_examples,
      });
      device ??= r.device;
      if (r.predictions instanceof Int32Array) predictions.set(m.name, r.predictions);
      const bytes = (await Deno.stat(join(m.dir, "model.safetensors"))).size;
      result.push({
        name: m.name,
        role: m.role,
        metrics: r.metrics,
        parameters: bert.numParameters(),
        bytes,
        latency_ms: r.latency_ms,
        throughput: r.throughput,
        engine: r.engine,
        stage: m.stage,
        layers: bert.config.num_hidden_layers,
        hidden: bert.config.hidden_size,
      });
      for (
        const variant of params.engine === "onnx" && m.role === "student" ? params.variants : []
      ) {
        const file = exportOnnx(bert, {
          outputs: "logits",
          dtype: variant === "int8" ? "q8" : "fp16",
        });
        const name = `${m.name} (${variant})`;
        const rq = await measureModel(bert, rows, {
          threads: params.threads,
          batchSize: params.batch_size,
          latencyExamples: params.latency_examples,
          model: file,
          device: params.device,
        });
        if (rq.predictions instanceof Int32Array) predictions.set(name, rq.predictions);
        result.push({
          name,
          role: m.role,
          metrics: rq.metrics,
          parameters: bert.numParameters(),
          bytes: file.length,
          latency_ms: rq.latency_ms,
          throughput: rq.throughput,
          engine: `${rq.engine}-${variant}`,
          stage: m.stage,
          layers: bert.config.num_hidden_layers,
          hidden: bert.config.hidden_size,
        });
      }
    } finally {
      bert.dispose();
    }
    bar.tick(1);
  }
  bar.finish();

  return { result, predictions, device };
}

/**
 * Step 3: the charts (Vega-Lite, rendered to SVG; each spec is written beside its SVG as
 * `<name>.vl.json`): every model's score with its 95% interval (`scores`), score against latency
 * (`latency`) and against size on disk (`size`), and the loss curve of every model trained here
 * (`loss-<model>`).
 */
async function writeCharts(
  ctx: StageContext<EvaluateParams>,
  models: EvalModel[],
  result: ResultRow[],
  metric: string,
  examples: number,
): Promise<{ file: string; caption: string }[]> {
  const { params, pipeline: p } = ctx;
  const charts: { file: string; caption: string }[] = [];
  const write = async (name: string, spec: VegaLiteSpec, caption: string) => {
    await writeFileAtomic(join(ctx.out, `${name}.svg`), await renderSvg(spec));
    await writeJsonAtomic(join(ctx.out, `${name}.vl.json`), spec);
    charts.push({ file: `${name}.svg`, caption });
  };
  const points: ScorePoint[] = result.map((r) => {
    const score = r.metrics[metric];
    const [lo, hi] = scoreInterval(metric, score, examples);
    return {
      name: r.name,
      role: r.role,
      score,
      lo,
      hi,
      latency_ms: r.latency_ms,
      parameters: r.parameters,
      bytes: r.bytes,
    };
  }).filter((q) => Number.isFinite(q.score));
  const split = `${params.split} split, ${examples} examples`;
  await write(
    "scores",
    scoreChartSpec(points, { metric, title: `${p.name}: ${metric} (${split})` }),
    `${metric} of every model with its 95% interval`,
  );
  await write(
    "latency",
    tradeoffSpec(points, { metric, x: "latency_ms", title: `${metric} against latency` }),
    `${metric} against latency at batch 1`,
  );
  await write(
    "size",
    tradeoffSpec(points, { metric, x: "bytes", title: `${metric} against size on disk` }),
    `${metric} against size on disk`,
  );
  // loss curves of every model trained in this pipeline
  for (const m of models) {
    if (!m.stage) continue;
    const f = join(ctx.inputs[m.stage], "curve.json");
    if (!(await exists(f))) continue;
    const c: Curves = JSON.parse(await Deno.readTextFile(f));
    await write(
      `loss-${m.name.replace(/[^A-Za-z0-9_-]+/g, "_")}`,
      lossChartSpec(lossSeries(m.name, c.curve), {
        title: `${m.name}: training loss (${m.stage})`,
      }),
      `${m.name} training loss`,
    );
  }
  return charts;
}

/** The manifest's metrics: every model's, and every paired difference with its p. */
function manifestMetrics(result: ResultRow[], paired: PairedRow[]): Record<string, number> {
  const metrics: Record<string, number> = {};
  for (const r of result) {
    for (const [k, v] of Object.entries(r.metrics)) metrics[`${r.name}.${k}`] = v;
  }
  for (const c of paired) {
    metrics[`${c.a}-vs-${c.b}.accuracy_diff`] = c.diff;
    metrics[`${c.a}-vs-${c.b}.p`] = c.p;
  }
  return metrics;
}

/** The evaluate stage. */
export const evaluate = defineStage({
  name: "evaluate",
  version: 2,
  params: EvaluateParams,
  needs: (p) => [
    p.tokens,
    ...(p.teacher ? [p.teacher] : []),
    ...Object.values(p.students),
    ...Object.values(p.baselines),
  ],
  async fingerprint(params, { pipeline, resolve, key }) {
    await requireLabelledSplit(pipeline, params.tokens, params.split, `${key ?? "evaluate"}.split`);
    if (params.teacher || !pipeline.teacher?.checkpoint) return "";
    return await fileDigest(join(resolve(pipeline.teacher.checkpoint), "model.safetensors"));
  },
  async run(ctx): Promise<StageResult> {
    const { params, pipeline: p } = ctx;
    const tokensDir = ctx.inputs[params.tokens];
    const meta = await readTokenMeta(tokensDir);
    const wanted = taskLabels(meta);
    if (!wanted) {
      throw new InputError("evaluate needs labelled data", { file: p.file, field: ctx.key });
    }
    const regression = isRegression(meta);
    const metric = params.metric ?? taskMetric(meta.task);
    const rows = await readTokenSplit(tokensDir, params.split);
    if (!rows) {
      throw new InputError(`the ${params.split} split is empty`, {
        file: p.file,
        field: `${ctx.key}.split`,
      });
    }
    if (!regression && meta.task !== "token-classification" && meta.task !== "question-answering") {
      const missing = rows.labels.filter((l) => l === UNLABELLED).length;
      if (missing > 0) {
        throw new InputError(`the ${params.split} split has ${missing} examples without labels`, {
          file: p.file,
          field: `${ctx.key}.split`,
          expected: `a labelled ${params.split} split`,
          got: `${missing} unlabeled examples`,
        });
      }
    }
    const models = modelsOf(ctx);
    // every model's positions cover the rows, before any model runs
    for (const m of models) {
      checkSeqLength(longestRow(rows), await readConfig(m.dir), {
        file: p.file,
        field: `${params.tokens}.max_seq_length`,
        model: m.name,
      });
    }
    const { result, predictions, device } = await measureAll(ctx, models, rows, wanted);
    const table = comparisonTable(result, { metric });
    // paired over the unit each model is right or wrong on: examples; words (token
    // classification); exact matches (QA)
    const gold = rows.wordTags
      ? Int32Array.from(rows.wordTags.flatMap((t) => [...t]))
      : rows.startPositions
      ? new Int32Array(rows.lengths.length).fill(1)
      : rows.labels;
    const paired = regression ? [] : pairedComparisons(
      models,
      predictions,
      gold,
      rows.wordTags?.map((t) => t.length),
      !!rows.startPositions,
    );
    const [pairedWhat, pairedUnit] = rows.wordTags
      ? ["word accuracy", "words"]
      : rows.startPositions
      ? ["exact match", "questions"]
      : ["accuracy", "examples"];
    const charts = await writeCharts(ctx, models, result, metric, rows.lengths.length);
    const notes = [
      `${rows.lengths.length} ${params.split} examples of ${p.name}; retention = ${metric} ` +
      `÷ the teacher's.`,
      `Latency: median of ${Math.min(rows.lengths.length, params.latency_examples)} single ` +
      `examples; throughput at batch ${params.batch_size}; engine ${
        [...new Set(result.map((r) => r.engine))].join(", ")
      }, ${navigator.hardwareConcurrency} cores.`,
      `Bytes: model.safetensors as written (F32).`,
    ];
    await writeJsonAtomic(join(ctx.out, "report.json"), {
      pipeline: p.name,
      split: params.split,
      examples: rows.lengths.length,
      metric,
      models: result,
      paired,
    });
    await writeFileAtomic(
      join(ctx.out, "report.md"),
      reportMarkdown({
        title: `${p.name}: teacher vs student`,
        table,
        notes,
        sections: paired.length > 0
          ? [{
            title: "Paired comparisons (same examples)",
            table: pairedTable(paired, pairedWhat),
            notes: [
              `Δ = ${pairedWhat} of A − ${pairedWhat} of B, in points, with its 95% ` +
              `interval; A only / B only = ${pairedUnit} one gets right and the other ` +
              "wrong; p = " + (rows.wordTags || rows.startPositions
                ? `paired bootstrap over ${rows.wordTags ? "sentences" : "questions"} (1,000 ` +
                  "resamples; the interval is its 95% percentile interval)"
                : "exact McNemar test") +
              " (a small p: the difference is unlikely to be chance).",
            ],
          }]
          : [],
        charts,
      }),
    );
    console.log(`\n${p.name}: ${params.split} split (${rows.lengths.length} examples)\n`);
    console.log(textTable(table));
    if (paired.length > 0) console.log(`\n${textTable(pairedTable(paired, pairedWhat))}`);
    console.log(
      `\nreport: ${join(ctx.out.replace(/\/\.([^/]+)\.partial$/, "/$1"), "report.md")}\n`,
    );
    return {
      counts: { examples: rows.lengths.length },
      metrics: manifestMetrics(result, paired),
      ...(device ? { device } : {}),
    };
  },
});
