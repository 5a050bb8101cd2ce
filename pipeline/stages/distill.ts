/**
 * `distill`: TinyBERT knowledge distillation of the teacher into the student, in phases that
 * each name their loss terms and weights — the whole recipe is data in the pipeline file:
 *
 * ```yaml
 * - distill@task:
 *     teacher_outputs: teacher-forward   # the cache; null = run the teacher online
 *     init: teacher-layers               # random | teacher-layers | checkpoint
 *     phases:
 *       - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, epochs: 10 }
 *       - { name: prediction, losses: { soft_ce: { weight: 1, temperature: 1 } }, epochs: 3,
 *           lr: 3e-5, evaluate: true }
 * ```
 *
 * General distillation is the same stage on unlabeled text with intermediate losses only; task
 * distillation starts from its `model/` (`init: checkpoint`, `init_from: distill@general`).
 *
 * Head counts: attention terms compare head by head; when the teacher has k times the student's
 * heads, each group of k consecutive teacher heads is averaged (pre-softmax), and the other way
 * round when the student has more (see `losses.matchHeads`). Other ratios are refused before any
 * compute.
 *
 * Writes `model/` (Hugging Face layout: config.json, model.safetensors, vocab.txt,
 * tokenizer.json, plus `onnx/model.onnx` and `onnx/model_fp16.onnx` for transformers.js),
 * `curve.json`, and resumes from `train_state/` after a crash.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import { tf } from "../tfjs/backend.ts";
import type { Bert } from "../model/bert.ts";
import { loadBert } from "../model/checkpoint.ts";
import { type BertConfig, readConfig } from "../model/config.ts";
import {
  addProjections,
  type DistillObjectiveOptions,
  type LossTermSpec,
  termNeeds,
} from "../distill/objective.ts";
import { InputError } from "../errors.ts";
import {
  resolveLayerMap,
  teacherAttentionLayers,
  teacherHiddenIndices,
} from "../distill/layer_map.ts";
import { LOSS_TERMS, type LossTermName } from "../distill/losses.ts";
import type { HostArray, HostBatch } from "../train/batch.ts";
import { saveOnnxFolder } from "../onnx/export.ts";
import { packExamples } from "../train/mlm.ts";
import { PartReader } from "../store/parquet.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { defineStage, fileDigest, type StageResult } from "../run/runner.ts";
import { type BatchSource, type Phase, train } from "../train/loop.ts";
import {
  asList,
  evaluateRows,
  isRegression,
  loadForTask,
  LoopParams,
  modelDirOf,
  modelFromConfig,
  OptimParams,
  padRows,
  readTokenMeta,
  readTokenSplit,
  taskLabels,
  type TokenRows,
  writeTrainedModel,
} from "./common.ts";
import { inputTensors } from "../train/batch.ts";

const termNames = Object.keys(LOSS_TERMS) as [LossTermName, ...LossTermName[]];

/** A loss entry: a weight, or a weight and a temperature. */
const LossEntry = z.union([
  z.number().min(0),
  z.strictObject({
    weight: z.number().min(0).default(1),
    temperature: z.number().positive().optional(),
  }),
]);

/** One phase of a distill stage. */
export const DistillPhase = z.strictObject({
  name: z.string().min(1),
  /** Loss terms by name (see `losses.ts`) with their weights. */
  losses: z.partialRecord(z.enum(termNames), LossEntry).refine((l) => Object.keys(l).length > 0, {
    message: "expected at least one loss term",
  }),
  /** Evaluate on the dev split in this phase (and keep the best checkpoint). */
  evaluate: z.boolean().default(false),
  ...OptimParams,
});

/** Params of the distill stage. */
export const DistillParams = z.strictObject({
  /**
   * The tokenize stage whose shards to train on; a list (general distillation over several
   * corpora) concatenates their training splits and needs the teacher online.
   */
  tokens: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).default("tokenize"),
  /**
   * Pack whole examples into blocks of up to this many tokens, as `mlm-pretrain` does (general
   * distillation on short sentences); the data is then unlabeled and the teacher online.
   */
  pack: z.number().int().min(8).optional(),
  /** The teacher-forward stage (the cache), or null to run the teacher online. */
  teacher_outputs: z.string().min(1).nullable().default("teacher-forward"),
  /** The stage that trained the teacher (its `model/`); default `teacher.checkpoint`. */
  teacher: z.string().min(1).optional(),
  /** How the student starts; default `student.init`, else `checkpoint` or `random`. */
  init: z.enum(["random", "teacher-layers", "checkpoint"]).optional(),
  /** For `init: checkpoint`: the stage whose `model/` to start from (else `student.checkpoint`). */
  init_from: z.string().min(1).optional(),
  layer_map: z.union([z.enum(["uniform", "last"]), z.array(z.number().int().min(1))])
    .default("uniform"),
  /** One hidden-state projection for every layer (TinyBERT's code) or one per layer. */
  projection: z.enum(["shared", "per-layer"]).default("shared"),
  /** `hidden_mse` includes the embedding layer. */
  embeddings: z.boolean().default(true),
  phases: z.array(DistillPhase).min(1),
  /** Defaults of every phase's optimiser settings. */
  batch_size: z.number().int().positive().default(32),
  micro_batch_size: z.number().int().positive().optional(),
  lr: z.number().positive().default(5e-5),
  warmup: z.number().min(0).max(1).default(0.1),
  weight_decay: z.number().min(0).default(0.01),
  max_grad_norm: z.number().min(0).default(1),
  ...LoopParams,
});
/** Validated distill params. */
export type DistillParams = z.infer<typeof DistillParams>;

function termsOf(losses: Record<string, z.infer<typeof LossEntry>>): LossTermSpec[] {
  return Object.entries(losses).map(([name, e]) =>
    typeof e === "number"
      ? { name: name as LossTermName, weight: e }
      : { name: name as LossTermName, weight: e.weight, temperature: e.temperature }
  );
}

/** Refuse head counts that neither divides (before any compute). */
function checkHeads(teacher: BertConfig, student: BertConfig, file: string): void {
  const ht = teacher.num_attention_heads, hs = student.num_attention_heads;
  if (ht % hs !== 0 && hs % ht !== 0) {
    throw new InputError("teacher and student head counts are incompatible", {
      file,
      field: "student.config.num_attention_heads",
      expected: `a divisor or multiple of the teacher's ${ht} heads`,
      got: String(hs),
      hint: "Attention terms average groups of heads, so one count must divide the other.",
    });
  }
}

/** Copy the embeddings and the mapped teacher layers into a same-width student. */
function initFromTeacherLayers(student: Bert, teacher: Bert, map: number[], file: string): void {
  if (student.config.hidden_size !== teacher.config.hidden_size) {
    throw new InputError("init: teacher-layers needs the student as wide as the teacher", {
      file,
      field: "student.config.hidden_size",
      expected: String(teacher.config.hidden_size),
      got: String(student.config.hidden_size),
      hint: "Use init: random (or a general-distilled checkpoint) for a narrower student.",
    });
  }
  for (const [name, v] of student.modelParams()) {
    let src = name;
    const m = /^encoder\.layer\.(\d+)\.(.*)$/.exec(name);
    if (m) src = `encoder.layer.${map[+m[1] + 1] - 1}.${m[2]}`;
    else if (name.startsWith("classifier.")) continue;
    const t = teacher.params.get(src);
    if (t && tf.util.arraysEqual(t.shape, v.shape)) v.assign(t);
  }
}

/** Pad `rows` of `[len, …]` blobs into one `[B, S, …]` host array (zeros elsewhere). */
function padHidden(blobs: Float32Array[], lengths: number[], S: number): HostArray {
  const B = blobs.length, H = lengths[0] ? blobs[0].length / lengths[0] : 0;
  const out = new Float32Array(B * S * H);
  blobs.forEach((b, i) => out.set(b, i * S * H));
  return { data: out, shape: [B, S, H] };
}

/** Pad `[h, len, len]` score blobs into `[B, h, S, S]`. */
function padScores(blobs: Float32Array[], lengths: number[], S: number): HostArray {
  const B = blobs.length;
  const len0 = lengths[0];
  const h = len0 ? blobs[0].length / (len0 * len0) : 1;
  const out = new Float32Array(B * h * S * S);
  blobs.forEach((b, i) => {
    const L = lengths[i];
    for (let k = 0; k < h; k++) {
      for (let q = 0; q < L; q++) {
        out.set(b.subarray((k * L + q) * L, (k * L + q + 1) * L), ((i * h + k) * S + q) * S);
      }
    }
  });
  return { data: out, shape: [B, h, S, S] };
}

/** Batches of token rows with the teacher's cached outputs (batches stay inside a part). */
export async function cacheSource(
  cacheDir: string,
  tokens: TokenRows,
  hidden: number[],
  attention: number[],
  logits: boolean,
): Promise<BatchSource> {
  const reader = await PartReader.open(join(cacheDir, "train"));
  const cols = [
    "length",
    ...(logits ? ["logits"] : []),
    ...hidden.map((i) => `hidden_${i}`),
    ...attention.map((l) => `scores_${l}`),
  ];
  let cached: { group: number; columns: Record<string, unknown> } | null = null;
  if (hidden.length === 0 && attention.length === 0) {
    // logits only (a prediction phase): read them once, then batches come from memory
    const all: Float32Array[] = [];
    for await (const part of reader.parts(["logits"])) {
      all.push(...(part.columns.logits as Float32Array[]));
    }
    const rows = all.length;
    return {
      groups: [{ start: 0, end: rows }],
      lengths: tokens.lengths,
      load(_group, rs) {
        const batch = padRows(tokens, rs);
        if (logits) {
          const C = all[0].length, data = new Float32Array(rs.length * C);
          rs.forEach((r, i) => data.set(all[r], i * C));
          batch.t_logits = { data, shape: [rs.length, C] };
        }
        return Promise.resolve(batch);
      },
    };
  }
  return {
    groups: reader.index.parts.map((p) => ({ start: p.firstRow, end: p.firstRow + p.rowCount })),
    lengths: tokens.lengths,
    async load(group, rows) {
      if (cached?.group !== group) {
        cached = { group, columns: (await reader.readPart(group, cols)).columns };
      }
      const first = reader.index.parts[group].firstRow;
      const batch = padRows(tokens, rows);
      const S = batch.inputIds.shape[1];
      const lengths = rows.map((r) => tokens.lengths[r]);
      const cachedLen = cached.columns.length as Int32Array;
      rows.forEach((r, i) => {
        if (cachedLen[r - first] !== lengths[i]) {
          throw new Error(
            `teacher cache row ${r} has length ${cachedLen[r - first]}, tokens ${lengths[i]}`,
          );
        }
      });
      const pick = (name: string) =>
        rows.map((r) => (cached!.columns[name] as Float32Array[])[r - first]);
      if (logits) {
        const C = pick("logits")[0].length;
        const data = new Float32Array(rows.length * C);
        pick("logits").forEach((l, i) => data.set(l, i * C));
        batch.t_logits = { data, shape: [rows.length, C] };
      }
      for (const i of hidden) batch[`t_hidden_${i}`] = padHidden(pick(`hidden_${i}`), lengths, S);
      for (const l of attention) {
        batch[`t_scores_${l}`] = padScores(pick(`scores_${l}`), lengths, S);
      }
      return batch;
    },
  };
}

/** Batches with the teacher run on the fly (no cache): tfjs forward on this thread. */
function onlineSource(
  teacher: Bert,
  tokens: TokenRows,
  hidden: number[],
  attention: number[],
  needs: Set<string>,
): BatchSource {
  return {
    // the teacher runs on any rows: one group, shuffled as a whole
    groups: [{ start: 0, end: tokens.lengths.length }],
    lengths: tokens.lengths,
    load(_group, rows) {
      const batch = padRows(tokens, rows);
      tf.tidy(() => {
        const out = teacher.forward(inputTensors(batch), {
          hiddenStates: needs.has("hidden"),
          attentionScores: needs.has("scores") || needs.has("values"),
          values: needs.has("values"),
        });
        const host = (x: tf.Tensor): HostArray => ({
          data: x.dataSync() as Float32Array,
          shape: x.shape,
        });
        if (needs.has("logits") && out.logits) batch.t_logits = host(out.logits);
        if (needs.has("hidden")) {
          for (const i of hidden) batch[`t_hidden_${i}`] = host(out.hiddenStates[i]);
        }
        if (needs.has("scores")) {
          for (const l of attention) batch[`t_scores_${l}`] = host(out.attentionScores[l]);
        }
        if (needs.has("values")) {
          for (const l of attention) batch[`t_values_${l}`] = host(out.values![l]);
        }
      });
      return Promise.resolve(batch as HostBatch);
    },
  };
}

/**
 * The training splits of several tokenize outputs as one unlabeled set of rows, optionally packed
 * into blocks of up to `pack` tokens (see `packExamples`).
 */
async function generalRows(dirs: string[], pack: number | undefined): Promise<TokenRows | null> {
  let ids: Int32Array[] = [];
  for (const dir of dirs) {
    const rows = await readTokenSplit(dir, "train");
    if (rows) ids.push(...rows.ids);
  }
  if (ids.length === 0) return null;
  if (pack !== undefined) {
    const tok = await loadTokenizer(join(dirs[0], "tokenizer"));
    ids = packExamples(ids, pack, {
      cls: tok.clsId,
      sep: tok.sepId,
      mask: tok.maskId ?? tok.unkId,
      pad: tok.padId,
    });
  }
  return {
    ids,
    types: ids.map((r) => new Int32Array(r.length)),
    lengths: Int32Array.from(ids, (r) => r.length),
    labels: new Int32Array(ids.length),
  };
}

/** The distill stage. */
export const distill = defineStage({
  name: "distill",
  version: 2,
  params: DistillParams,
  needs: (p) => [
    ...asList(p.tokens),
    ...(p.teacher_outputs ? [p.teacher_outputs] : []),
    ...(p.teacher ? [p.teacher] : []),
    ...(p.init_from ? [p.init_from] : []),
  ],
  async fingerprint(params, { pipeline, resolve }) {
    const parts: string[] = [];
    for (const role of ["teacher", "student"] as const) {
      const ckpt = pipeline[role]?.checkpoint;
      if (
        !ckpt || (role === "teacher" && params.teacher) || (role === "student" && params.init_from)
      ) {
        continue;
      }
      parts.push(`${role}:${await fileDigest(join(resolve(ckpt), "model.safetensors"))}`);
    }
    return parts.join(",");
  },
  async run(ctx): Promise<StageResult> {
    const { params, pipeline: p } = ctx;
    const tokenDirs = asList(params.tokens).map((k) => ctx.inputs[k]);
    const tokensDir = tokenDirs[0];
    const general = tokenDirs.length > 1 || params.pack !== undefined;
    if (general && params.teacher_outputs) {
      throw new InputError("several token inputs or `pack` need the teacher online", {
        file: p.file,
        field: `${ctx.key}.teacher_outputs`,
        expected: "null",
        got: params.teacher_outputs,
        hint: "A teacher-forward cache is row-aligned with one tokenize output, unpacked.",
      });
    }
    let meta = await readTokenMeta(tokensDir);
    let rows: TokenRows | null, dev: TokenRows | null;
    if (general) {
      const metas = await Promise.all(tokenDirs.map(readTokenMeta));
      if (metas.some((m) => m.vocab_size !== meta.vocab_size)) {
        throw new InputError("the token inputs use different vocabularies", {
          file: p.file,
          field: `${ctx.key}.tokens`,
        });
      }
      // several corpora (or packed blocks) make unlabeled text: labels would not mean one thing
      meta = { ...meta, labels: null, task: null };
      rows = await generalRows(tokenDirs, params.pack);
      dev = null;
      ctx.log(
        `${rows?.lengths.length ?? 0} training rows from ${tokenDirs.length} token input(s)` +
          (params.pack ? `, packed to ≤ ${params.pack} tokens` : ""),
      );
    } else {
      rows = await readTokenSplit(tokensDir, "train");
      dev = await readTokenSplit(tokensDir, "dev");
    }
    if (!rows) throw new InputError("the training split is empty", { file: p.file });
    const tokens = rows;
    const teacherDir = modelDirOf(
      p,
      ctx.inputs,
      ctx.resolve,
      params.teacher,
      "teacher",
      `${ctx.key}.teacher`,
    );
    const teacherConfig = await readConfig(teacherDir);
    const phases = params.phases.map((ph) => ({ ...ph, terms: termsOf(ph.losses) }));
    const allTerms = phases.flatMap((ph) => ph.terms);
    const needs = termNeeds(allTerms);
    const labelled = taskLabels(meta) !== null;
    const regression = isRegression(meta);
    if (!labelled && (needs.has("logits") || needs.has("labels"))) {
      throw new InputError("prediction-layer losses need labelled data (a classifier)", {
        file: p.file,
        field: `${ctx.key}.phases`,
        hint: "General distillation on unlabeled text uses attention_mse and hidden_mse only.",
      });
    }

    const classTerms = allTerms.filter((t) => ["soft_ce", "kl", "hard_ce"].includes(t.name));
    if (regression && classTerms.length > 0) {
      throw new InputError(`${classTerms[0].name} needs classes; this is a regression task`, {
        file: p.file,
        field: `${ctx.key}.phases`,
        hint: "Use logit_mse (TinyBERT's prediction loss for regression).",
      });
    }

    // the student
    const seed = params.seed ?? p.seed;
    const init = params.init ?? p.student?.init ??
      (p.student?.checkpoint || params.init_from ? "checkpoint" : "random");
    const student = init === "checkpoint"
      ? await loadForTask(
        modelDirOf(p, ctx.inputs, ctx.resolve, params.init_from, "student", `${ctx.key}.init_from`),
        taskLabels(meta),
        seed,
        regression,
      )
      : modelFromConfig(p, "student", meta, seed);
    const M = student.config.num_hidden_layers;
    const map = resolveLayerMap(
      params.layer_map,
      teacherConfig.num_hidden_layers,
      M,
      `${ctx.key}.layer_map`,
    );
    if (needs.has("scores") || needs.has("values")) {
      checkHeads(teacherConfig, student.config, p.file);
    }
    const hidden = needs.has("hidden") ? teacherHiddenIndices(map) : [];
    const lastOnly = !needs.has("scores") && (needs.has("values"));
    const attention = needs.has("scores") || needs.has("values")
      ? (lastOnly ? [map[M] - 1] : teacherAttentionLayers(map))
      : [];
    let teacher: Bert | null = null;
    if (init === "teacher-layers" || !params.teacher_outputs) teacher = await loadBert(teacherDir);
    if (init === "teacher-layers") initFromTeacherLayers(student, teacher!, map, p.file);

    const objective = (terms: LossTermSpec[]): DistillObjectiveOptions => ({
      terms,
      layerMap: map,
      embeddings: params.embeddings,
      projection: params.projection,
    });
    addProjections(student, teacherConfig.hidden_size, objective(allTerms), seed);

    // the teacher's outputs: each phase reads only what its own terms need
    let sourceFor: (terms: LossTermSpec[]) => Promise<BatchSource>;
    const columnsFor = (terms: LossTermSpec[]) => {
      const n = termNeeds(terms);
      return {
        needs: n,
        hidden: n.has("hidden") ? hidden : [],
        attention: n.has("scores") || n.has("values") ? attention : [],
      };
    };
    if (params.teacher_outputs) {
      const cacheDir = ctx.inputs[params.teacher_outputs];
      const info = JSON.parse(await Deno.readTextFile(join(cacheDir, "cache.json")));
      if (JSON.stringify(info.layer_map) !== JSON.stringify(map)) {
        throw new InputError("the teacher cache was built for another layer map", {
          file: p.file,
          field: `${ctx.key}.layer_map`,
          expected: JSON.stringify(info.layer_map),
          got: JSON.stringify(map),
          hint: "Give teacher-forward the same layer_map and student layer count.",
        });
      }
      if (needs.has("values")) {
        throw new InputError("value_relation needs the teacher online", {
          file: p.file,
          field: `${ctx.key}.teacher_outputs`,
          hint: "The cache holds no value vectors; set teacher_outputs: null.",
        });
      }
      if (labelled && JSON.stringify(info.labels) !== JSON.stringify(meta.labels)) {
        throw new InputError("the teacher cache's label order differs from the data's", {
          file: p.file,
          expected: JSON.stringify(meta.labels),
          got: JSON.stringify(info.labels),
        });
      }
      sourceFor = (terms) => {
        const c = columnsFor(terms);
        return cacheSource(cacheDir, tokens, c.hidden, c.attention, c.needs.has("logits"));
      };
    } else {
      sourceFor = (terms) => {
        const c = columnsFor(terms);
        return Promise.resolve(onlineSource(teacher!, tokens, c.hidden, c.attention, c.needs));
      };
    }
    const sources = await Promise.all(phases.map((ph) => sourceFor(ph.terms)));

    const trainPhases: Phase[] = phases.map((ph, i) => ({
      name: ph.name,
      source: sources[i],
      objective: "distillation",
      objectiveOptions: objective(ph.terms),
      epochs: ph.steps === undefined ? ph.epochs ?? 1 : undefined,
      steps: ph.steps,
      batchSize: ph.batch_size ?? params.batch_size,
      microBatchSize: ph.micro_batch_size ?? params.micro_batch_size,
      lr: ph.lr ?? params.lr,
      warmup: ph.warmup ?? params.warmup,
      weightDecay: ph.weight_decay ?? params.weight_decay,
      maxGradNorm: ph.max_grad_norm ?? params.max_grad_norm,
      evalEvery: ph.eval_every ?? 0,
      evaluate: ph.evaluate && labelled && dev !== null,
    }));
    ctx.log(
      `student ${M}×${student.config.hidden_size} (${
        (student.numParameters() / 1e6).toFixed(2)
      }M ` +
        `parameters, init ${init}) ← teacher ${teacherConfig.num_hidden_layers}×` +
        `${teacherConfig.hidden_size}; layer map ${map.join(",")}; ` +
        `${params.teacher_outputs ? "cached" : "online"} teacher outputs`,
    );
    try {
      const res = await train({
        model: student,
        phases: trainPhases,
        source: sources[0],
        stateDir: join(ctx.out, "train_state"),
        checkpointEvery: params.checkpoint_every,
        seed,
        replicas: params.replicas ?? navigator.hardwareConcurrency ?? 1,
        evaluate: labelled && dev
          ? (m) => evaluateRows(null, m, dev, params.eval_batch_size)
          : undefined,
        metric: params.metric ?? (regression ? "pearson" : "accuracy"),
        keepBest: params.keep_best,
        progress: (label, total) => ctx.progress(total, `${label} steps`),
        log: ctx.log,
      });
      await writeTrainedModel(ctx.out, student, tokensDir, res);
      // and the transformers.js / onnxruntime-web layout next to it (onnx/model{,_fp16}.onnx)
      await saveOnnxFolder(student, join(ctx.out, "model"), { fp16: true });
      return {
        counts: { steps: res.steps, examples: res.examples, parameters: student.numParameters() },
        metrics: {
          seconds: res.seconds,
          final_loss: res.curve.at(-1)?.loss ?? NaN,
          ...(res.best
            ? Object.fromEntries(Object.entries(res.best.metrics).map(([k, v]) => [`dev_${k}`, v]))
            : {}),
        },
      };
    } finally {
      student.dispose();
      teacher?.dispose();
    }
  },
});
