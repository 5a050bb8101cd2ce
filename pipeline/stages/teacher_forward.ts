/**
 * `teacher-forward`: run the teacher over the token shards and cache what the distillation
 * losses need — logits, and the hidden states and pre-softmax attention scores of only the
 * layers the student maps to, cropped to each example's length — as Parquet parts (F16 or F32
 * blobs), written part by part so memory stays flat and a killed run resumes from its finished
 * parts. `--shard i/n` splits the parts among processes; the run without `--shard` finalises.
 *
 * The output directory is keyed by the teacher's weights, the token shards, the layer
 * selection and the dtype (the runner's hash), so a second student with the same mapping reuses
 * it. Before computing anything the stage prints the cache size and refuses above
 * `max_cache_bytes`.
 *
 * Per split, columns: `length`, `label`, `logits` (when the teacher has a classifier),
 * `hidden_<i>` (teacher hidden-state index i, `[length, H]`) and `scores_<l>` (teacher layer l,
 * `[heads, length, length]`).
 *
 * The teacher runs as all inference does: its inference graph (`openInference`, outputs `all`)
 * on ONNX Runtime, or on tfjs with `engine: tfjs` (the pipeline's `backend`), fetching only the
 * mapped layers' outputs.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import {
  resolveLayerMap,
  teacherAttentionLayers,
  teacherHiddenIndices,
} from "../distill/layer_map.ts";
import {
  cacheColumns,
  type CacheInfo,
  checkCacheLimit,
  estimateCacheBytes,
  formatBytes,
  recordColumns,
  runTeacher,
  teacherGraphOptions,
  type TeacherRecord,
  type TeacherWants,
  toRecords,
} from "../distill/teacher_cache.ts";
import { type Inference, openInference } from "../engines/inference.ts";
import { InputError } from "../errors.ts";
import type { Bert } from "../model/bert.ts";
import { loadBert } from "../model/checkpoint.ts";
import { labelNames, numLabels, readConfig } from "../model/config.ts";
import type { Progress } from "../run/progress.ts";
import { defineStage, fileDigest, type StageContext, type StageResult } from "../run/runner.ts";
import type { Pipeline } from "../run/spec.ts";
import { exists, writeJsonAtomic } from "../store/fsutil.ts";
import { finalize, PartReader, PartWriter } from "../store/parquet.ts";
import { padRows, readTokenMeta, readTokenRows, type TokenMeta } from "../store/tokens.ts";
import { checkSeqLength, deviceMetrics, deviceParam, modelDirOf } from "./common.ts";
import { SPLITS } from "./tokenize.ts";

/** Params of the teacher-forward stage. */
export const TeacherForwardParams = z.strictObject({
  /** The tokenize stage whose shards to run. */
  input: z.string().min(1).default("tokenize"),
  /** The stage that trained the teacher (its `model/`); default `teacher.checkpoint`. */
  teacher: z.string().min(1).optional(),
  batch_size: z.number().int().positive().default(32),
  /** Which teacher layers to keep: the student's mapping (see `layer_map.ts`). */
  layer_map: z.union([z.enum(["uniform", "last"]), z.array(z.number().int().min(1))])
    .default("uniform"),
  /** Student layer count; default `student.config.num_hidden_layers`. */
  student_layers: z.number().int().positive().optional(),
  dtype: z.enum(["F16", "F32"]).default("F16"),
  rows_per_part: z.number().int().positive().default(256),
  /** Refuse to build a cache larger than this many bytes. */
  max_cache_bytes: z.number().positive().default(20e9),
  /**
   * The executor of the teacher's inference graph: `onnx`, ONNX Runtime; `tfjs`, the same graph
   * on the pipeline's tfjs `backend`.
   */
  engine: z.enum(["onnx", "tfjs"]).default("onnx"),
  /** ONNX Runtime's device: `auto` (webgpu on a real GPU adapter, else cpu), `cpu`, `webgpu`. */
  device: deviceParam,
  /** Intra-op threads of the teacher's session (default: one per core). */
  replicas: z.number().int().positive().optional(),
});
/** Validated teacher-forward params. */
export type TeacherForwardParams = z.infer<typeof TeacherForwardParams>;

function teacherDir(
  p: Pipeline,
  resolve: (s: string) => string,
  params: TeacherForwardParams,
  inputs: Record<string, string> = {},
): string {
  return modelDirOf(p, inputs, resolve, params.teacher, "teacher", "teacher-forward.teacher");
}

/** The student's layer count: the param, else `student.config`, else `student.checkpoint`'s. */
async function studentLayers(
  p: Pipeline,
  params: TeacherForwardParams,
  resolve: (s: string) => string,
): Promise<number> {
  let n = params.student_layers ?? p.student?.config?.num_hidden_layers;
  if (n === undefined && p.student?.checkpoint) {
    n = (await readConfig(resolve(p.student.checkpoint))).num_hidden_layers;
  }
  if (typeof n !== "number") {
    throw new InputError("the student's layer count is needed to choose the teacher layers", {
      file: p.file,
      field: "teacher-forward.student_layers",
      hint: "Set it, student.config.num_hidden_layers or student.checkpoint.",
    });
  }
  return n;
}

/** The pieces of a teacher-forward run, as its steps hand them on. */
interface CachePlan {
  map: number[];
  hiddenIdx: number[];
  attLayers: number[];
  /** Logits kept per example (0: the teacher has no classifier), or per token. */
  C: number;
  /** Token classification / QA: `C` logits per token. */
  perToken: boolean;
  stores: { split: string; reader: PartReader }[];
  lengths: number[];
  bytes: number;
  /** The teacher outputs each batch fetches. */
  wants: TeacherWants;
}

/**
 * Step 1: the pitfalls TinyBERT users hit, checked before any compute — the vocabulary and the
 * label order of the teacher against the tokenized data.
 */
function checkTeacher(teacher: Bert, meta: TokenMeta, configFile: string): void {
  const cfg = teacher.config;
  if (meta.vocab_size !== undefined && meta.vocab_size !== cfg.vocab_size) {
    throw new InputError("the teacher's vocabulary does not match the tokenizer's", {
      file: configFile,
      field: "vocab_size",
      expected: `${meta.vocab_size} (the tokenizer's)`,
      got: String(cfg.vocab_size),
    });
  }
  const dataLabels = meta.labels;
  if (teacher.heads.classifier && dataLabels) {
    const teacherLabels = labelNames(cfg);
    if (teacherLabels.join("\u0000") !== dataLabels.join("\u0000")) {
      throw new InputError("the teacher's label order differs from the data's", {
        file: configFile,
        field: "id2label",
        expected: JSON.stringify(dataLabels),
        got: JSON.stringify(teacherLabels),
        hint: "Reorder the dataset's labels: list to match the teacher (or retrain the head).",
      });
    }
  }
}

/**
 * Step 2: what the cache will hold — the mapped layers, every split's rows — and its size,
 * refused above `max_cache_bytes` (and rows longer than the teacher's positions) before any
 * compute.
 */
async function planCache(
  ctx: StageContext<TeacherForwardParams>,
  teacher: Bert,
  tokens: string,
): Promise<CachePlan> {
  const { params, pipeline } = ctx;
  const cfg = teacher.config;
  const M = await studentLayers(pipeline, params, ctx.resolve);
  const map = resolveLayerMap(
    params.layer_map,
    cfg.num_hidden_layers,
    M,
    "teacher-forward.layer_map",
  );
  const hiddenIdx = teacherHiddenIndices(map), attLayers = teacherAttentionLayers(map);
  // logits per example: C classes, or per token C tags / 2 (span start, end)
  const C = teacher.heads.qa ? 2 : teacher.heads.classifier ? numLabels(cfg) : 0;
  const perToken = !!(teacher.heads.qa || teacher.heads.tokenClassifier);
  const stores: CachePlan["stores"] = [];
  const lengths: number[] = [];
  for (const split of SPLITS) {
    const dir = join(tokens, split);
    if (!(await exists(dir))) continue; // empty split
    const reader = await PartReader.open(dir);
    stores.push({ split, reader });
    for await (const part of reader.parts(["length"])) {
      for (const n of part.columns.length as Int32Array) lengths.push(n);
    }
  }
  checkSeqLength(lengths.reduce((a, b) => Math.max(a, b), 0), cfg, {
    file: pipeline.file,
    field: `${params.input}.max_seq_length`,
    model: "teacher",
  });
  const bytes = estimateCacheBytes(lengths, {
    numLabels: C,
    perToken,
    hiddenSize: cfg.hidden_size,
    heads: cfg.num_attention_heads,
    hiddenLayers: hiddenIdx.length,
    attentionLayers: attLayers.length,
    dtype: params.dtype,
  });
  ctx.log(
    `cache estimate ${formatBytes(bytes)} for ${lengths.length} examples (hidden states ` +
      `${hiddenIdx.join(",")}; attention layers ${attLayers.join(",")}; ${params.dtype})`,
  );
  checkCacheLimit(bytes, params.max_cache_bytes, `${ctx.key}.max_cache_bytes`);
  const wants = { logits: C > 0, hidden: hiddenIdx, scores: attLayers };
  return { map, hiddenIdx, attLayers, C, perToken, stores, lengths, bytes, wants };
}

/** Step 3: the teacher's inference graph with the mapped layers' outputs, on the engine asked. */
async function openTeacher(
  ctx: StageContext<TeacherForwardParams>,
  teacher: Bert,
  plan: CachePlan,
): Promise<Inference> {
  const { params } = ctx;
  return await openInference(teacher, {
    ...teacherGraphOptions(plan.wants),
    threads: params.replicas,
    engine: params.engine === "tfjs"
      ? { kind: "tfjs", backend: ctx.pipeline.backend }
      : { kind: "onnxruntime", device: params.device },
  });
}

/**
 * Step 4: one split's pending parts (all of them, or this shard's share; finished parts of a
 * killed run are kept), each computed in batches of similar length and written in row order.
 */
async function writeSplit(
  ctx: StageContext<TeacherForwardParams>,
  teacher: Bert,
  inference: Inference,
  plan: CachePlan,
  split: string,
  reader: PartReader,
  bar: Progress,
): Promise<number> {
  const { params } = ctx;
  const writer = await PartWriter.open(join(ctx.out, split), {
    columns: cacheColumns(plan.C, plan.hiddenIdx, plan.attLayers, params.dtype, plan.perToken),
    rowsPerPart: params.rows_per_part,
    totalRows: reader.totalRows,
    metadata: {
      hidden_indices: plan.hiddenIdx,
      attention_layers: plan.attLayers,
      layer_map: plan.map,
    },
    shard: ctx.shard,
  });
  const pending = writer.pendingParts();
  if (pending.length === 0) return 0;
  const tokenRows = await readTokenRows(reader);
  let examples = 0;
  for (const range of pending) {
    const recs: TeacherRecord[] = new Array(range.end - range.start);
    const order = Array.from({ length: range.end - range.start }, (_, i) => range.start + i)
      .sort((a, b) => tokenRows.lengths[a] - tokenRows.lengths[b] || a - b);
    for (let s = 0; s < order.length; s += params.batch_size) {
      const rows = order.slice(s, s + params.batch_size);
      const out = await runTeacher(inference, teacher, padRows(tokenRows, rows, false), plan.wants);
      const lens = Int32Array.from(rows, (r) => tokenRows.lengths[r]);
      toRecords(out, lens, plan.hiddenIdx, plan.attLayers).forEach((rec, i) => {
        recs[rows[i] - range.start] = rec;
      });
      bar.tick(lens.reduce((a, b) => a + b, 0));
    }
    await writer.writePart(range.start, {
      length: tokenRows.lengths.slice(range.start, range.end),
      label: tokenRows.labels.slice(range.start, range.end),
      ...recordColumns(recs, plan.C > 0, plan.hiddenIdx, plan.attLayers),
    });
    examples += range.end - range.start;
  }
  return examples;
}

/** The teacher-forward stage. */
export const teacherForward = defineStage({
  name: "teacher-forward",
  version: 1,
  params: TeacherForwardParams,
  shardable: true,
  // the student only through its layer count, which the fingerprint covers
  models: (params) => (params.teacher ? [] : ["teacher"]),
  needs: (params) => [params.input, ...(params.teacher ? [params.teacher] : [])],
  async fingerprint(params, { pipeline, resolve }) {
    const layers = await studentLayers(pipeline, params, resolve);
    // a teacher trained by an earlier stage is covered by that stage's hash
    if (params.teacher) return `student-layers=${layers}`;
    const dir = teacherDir(pipeline, resolve, params);
    const weights = await fileDigest(join(dir, "model.safetensors"));
    const config = await fileDigest(join(dir, "config.json"));
    return `${weights}:${config}:student-layers=${layers}`;
  },
  async run(ctx): Promise<StageResult> {
    const { params, pipeline } = ctx;
    const tokens = ctx.inputs[params.input];
    const meta = await readTokenMeta(tokens);
    const dir = teacherDir(pipeline, ctx.resolve, params, ctx.inputs);
    const teacher = await loadBert(dir);
    let inference: Inference | null = null;
    let examples = 0;
    let plan: CachePlan;
    try {
      checkTeacher(teacher, meta, join(dir, "config.json"));
      plan = await planCache(ctx, teacher, tokens);
      inference = await openTeacher(ctx, teacher, plan);
      const bar = ctx.progress(plan.lengths.reduce((a, b) => a + b, 0), "tokens");
      for (const { split, reader } of plan.stores) {
        examples += await writeSplit(ctx, teacher, inference, plan, split, reader, bar);
      }
      bar.finish();
    } finally {
      // released before the stage returns: a native release still running when the process or
      // its worker exits can corrupt the heap
      await inference?.close();
      teacher.dispose();
    }
    if (ctx.shard) return { counts: { examples } };
    // Step 5: every part present (a sharded run's included), then the cache description
    let cached = 0;
    for (const { split, reader } of plan.stores) {
      const index = await finalize(join(ctx.out, split), { totalRows: reader.totalRows });
      cached += index.parts.reduce((n, part) => n + part.bytes, 0);
    }
    const info: CacheInfo = {
      layer_map: plan.map,
      hidden_indices: plan.hiddenIdx,
      attention_layers: plan.attLayers,
      dtype: params.dtype,
      labels: meta.labels,
    };
    await writeJsonAtomic(join(ctx.out, "cache.json"), info);
    return {
      counts: { examples: plan.lengths.length, tokens: plan.lengths.reduce((a, b) => a + b, 0) },
      metrics: {
        cache_bytes: cached,
        estimated_bytes: plan.bytes,
        engine: inference!.engine,
      },
      ...(inference!.engine.startsWith("onnxruntime/")
        ? {
          device: deviceMetrics(
            inference!.engine.slice("onnxruntime/".length),
            inference!.adapter,
          ),
        }
        : {}),
    };
  },
});
