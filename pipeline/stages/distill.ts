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
import type { Bert } from "../model/bert.ts";
import { loadBert } from "../model/checkpoint.ts";
import { type BertConfig, readConfig } from "../model/config.ts";
import { loadTokenizer } from "../model/tokenizer/io.ts";
import {
  addProjections,
  type DistillObjectiveOptions,
  type LossTermName,
  type LossTermSpec,
  termAttentionLayers,
  termNeeds,
} from "../distill/objective.ts";
import { lossTerm, lossTermNames, requireTerm } from "../graph/losses.ts";
import { resolveLayerMap, teacherHiddenIndices } from "../distill/layer_map.ts";
import { cacheSource, onlineSource, readCacheInfo } from "../distill/teacher_cache.ts";
import { InputError } from "../errors.ts";
import { saveOnnxFolder } from "../graph/export.ts";
import { defineStage, fileDigest, type StageContext, type StageResult } from "../run/runner.ts";
import {
  isRegression,
  readTokenMeta,
  readTokenSplit,
  taskLabels,
  type TokenMeta,
  type TokenRows,
} from "../store/tokens.ts";
import { type BatchSource, train } from "../train/loop.ts";
import { packExamples } from "../train/mlm.ts";
import {
  asList,
  checkSeqLength,
  evaluateRows,
  loadForTask,
  longestRow,
  LoopParams,
  modelDirOf,
  modelFromConfig,
  optimParams,
  type OptimSettings,
  phaseFromParams,
  PhaseOptimParams,
  taskMetric,
  trainingResult,
  withLength,
  writeTrainedModel,
} from "./common.ts";
import { requireLabelledSplit } from "./tokenize.ts";

/** A loss entry: a weight, or a weight and a temperature. */
const LossEntry = z.union([
  z.number().min(0),
  z.strictObject({
    weight: z.number().min(0).default(1),
    temperature: z.number().positive().optional(),
  }),
]);

/** One phase of a distill stage (its unset optimiser settings come from the stage). */
export const DistillPhase = withLength(
  z.strictObject({
    name: z.string().min(1),
    /** Loss terms by name (see `losses.ts`) with their weights. */
    losses: z.record(z.string(), LossEntry).superRefine((l, ctx) => {
      if (Object.keys(l).length === 0) {
        ctx.addIssue({ code: "custom", message: "expected at least one loss term" });
      }
      for (const name of Object.keys(l)) {
        if (!lossTerm(name)) {
          ctx.addIssue({
            code: "custom",
            path: [name],
            message: `unknown loss term '${name}': expected one of ${lossTermNames().join(", ")}`,
          });
        }
      }
    }),
    /** Evaluate on the dev split in this phase (and keep the best checkpoint). */
    evaluate: z.boolean().default(false),
    ...PhaseOptimParams,
  }),
  1,
);

/** The stage-level defaults of every phase's optimiser settings. */
const { epochs: _e, steps: _s, eval_every: _v, ...StageOptimParams } = optimParams({
  batch_size: 32,
  lr: 5e-5,
  warmup: 0.1,
  weight_decay: 0.01,
  max_grad_norm: 1,
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
  ...StageOptimParams,
  ...LoopParams,
});
/** Validated distill params. */
export type DistillParams = z.infer<typeof DistillParams>;

function termsOf(losses: Partial<Record<string, z.infer<typeof LossEntry>>>): LossTermSpec[] {
  return Object.entries(losses).map(([name, e]) =>
    typeof e === "number"
      ? { name: name as LossTermName, weight: e }
      : { name: name as LossTermName, weight: e!.weight, temperature: e!.temperature }
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
    if (t && t.shape.length === v.shape.length && t.shape.every((d, i) => d === v.shape[i])) {
      v.data.set(t.data);
    }
  }
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

/** The training rows (and dev rows) a distill stage reads, with their `labels.json`. */
interface DistillData {
  meta: TokenMeta;
  rows: TokenRows;
  dev: TokenRows | null;
  /** The (first) tokenize output: its tokenizer goes with the student. */
  tokensDir: string;
}

/** Step 1: the training rows — one tokenize output, or several (packed) for general distillation. */
async function readData(ctx: StageContext<DistillParams>): Promise<DistillData> {
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
  let rows: TokenRows | null, dev: TokenRows | null = null;
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
    ctx.log(
      `${rows?.lengths.length ?? 0} training rows from ${tokenDirs.length} token input(s)` +
        (params.pack ? `, packed to ≤ ${params.pack} tokens` : ""),
    );
  } else {
    rows = await readTokenSplit(tokensDir, "train");
    dev = await readTokenSplit(tokensDir, "dev");
  }
  if (!rows) throw new InputError("the training split is empty", { file: p.file });
  return { meta, rows, dev, tokensDir };
}

/** A phase with its loss terms as specs. */
type RecipePhase = DistillParams["phases"][number] & { terms: LossTermSpec[] };

/**
 * Step 2: the recipe — every phase's terms, and what they read — refused before any compute when
 * a term cannot apply to this data (prediction terms on unlabeled text, class terms on a
 * regression task).
 */
function checkRecipe(ctx: StageContext<DistillParams>, meta: TokenMeta) {
  const { params, pipeline: p } = ctx;
  const phases: RecipePhase[] = params.phases.map((ph) => ({ ...ph, terms: termsOf(ph.losses) }));
  const allTerms = phases.flatMap((ph) => ph.terms);
  const needs = termNeeds(allTerms);
  const labelled = taskLabels(meta) !== null;
  if (!labelled && (needs.has("logits") || needs.has("labels"))) {
    throw new InputError("prediction-layer losses need labelled data (a classifier)", {
      file: p.file,
      field: `${ctx.key}.phases`,
      hint: "General distillation on unlabeled text uses attention_mse and hidden_mse only.",
    });
  }
  const classTerm = allTerms.find((t) => requireTerm(t.name).classes);
  if (isRegression(meta) && classTerm) {
    throw new InputError(`${classTerm.name} needs classes; this is a regression task`, {
      file: p.file,
      field: `${ctx.key}.phases`,
      hint: "Use logit_mse (TinyBERT's prediction loss for regression).",
    });
  }
  return { phases, allTerms, needs, labelled };
}

/** Step 3: the student — fresh, from a checkpoint or an earlier stage — sized for this data. */
async function initStudent(
  ctx: StageContext<DistillParams>,
  meta: TokenMeta,
  init: "random" | "teacher-layers" | "checkpoint",
  seed: number,
): Promise<Bert> {
  const { params, pipeline: p } = ctx;
  if (init !== "checkpoint") return modelFromConfig(p, "student", meta, seed);
  const dir = modelDirOf(
    p,
    ctx.inputs,
    ctx.resolve,
    params.init_from,
    "student",
    `${ctx.key}.init_from`,
  );
  return await loadForTask(dir, taskLabels(meta), seed, meta.task);
}

/**
 * Step 4: where each phase's teacher targets come from — the teacher-forward cache (checked to
 * hold this layer map and label order) or the teacher run online; each phase reads only what
 * its own terms need.
 */
async function teacherSources(
  ctx: StageContext<DistillParams>,
  data: DistillData,
  phases: RecipePhase[],
  map: number[],
  teacher: Bert | null,
  labelled: boolean,
): Promise<(BatchSource & { close?(): Promise<void> })[]> {
  const { params, pipeline: p } = ctx;
  const columns = (terms: LossTermSpec[]) => {
    const n = termNeeds(terms);
    return {
      needs: n,
      hidden: n.has("hidden") ? teacherHiddenIndices(map) : [],
      attention: termAttentionLayers(terms, map),
    };
  };
  if (!params.teacher_outputs) {
    return phases.map((ph) => {
      const c = columns(ph.terms);
      return onlineSource(teacher!, data.rows, c.hidden, c.attention, c.needs, {
        engine: { kind: "onnxruntime", device: params.device },
      });
    });
  }
  const cacheDir = ctx.inputs[params.teacher_outputs];
  const info = await readCacheInfo(cacheDir);
  if (JSON.stringify(info.layer_map) !== JSON.stringify(map)) {
    throw new InputError("the teacher cache was built for another layer map", {
      file: p.file,
      field: `${ctx.key}.layer_map`,
      expected: JSON.stringify(info.layer_map),
      got: JSON.stringify(map),
      hint: "Give teacher-forward the same layer_map and student layer count.",
    });
  }
  if (phases.some((ph) => termNeeds(ph.terms).has("values"))) {
    throw new InputError("value_relation needs the teacher online", {
      file: p.file,
      field: `${ctx.key}.teacher_outputs`,
      hint: "The cache holds no value vectors; set teacher_outputs: null.",
    });
  }
  if (labelled && JSON.stringify(info.labels) !== JSON.stringify(data.meta.labels)) {
    throw new InputError("the teacher cache's label order differs from the data's", {
      file: p.file,
      expected: JSON.stringify(data.meta.labels),
      got: JSON.stringify(info.labels),
    });
  }
  return await Promise.all(phases.map((ph) => {
    const c = columns(ph.terms);
    return cacheSource(cacheDir, data.rows, c.hidden, c.attention, c.needs.has("logits"));
  }));
}

/** A phase's optimiser settings: its own where given, else the stage's. */
function phaseSettings(params: DistillParams, ph: RecipePhase): OptimSettings {
  const own = Object.fromEntries(
    Object.entries(ph).filter(([k, v]) => k in PhaseOptimParams && v !== undefined),
  );
  return {
    batch_size: params.batch_size,
    micro_batch_size: params.micro_batch_size,
    lr: params.lr,
    warmup: params.warmup,
    weight_decay: params.weight_decay,
    max_grad_norm: params.max_grad_norm,
    eval_every: 0,
    ...own,
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
  async fingerprint(params, { pipeline, resolve, key }) {
    // a phase that keeps the best dev checkpoint needs a labelled dev split (refused up front)
    const oneInput = asList(params.tokens).length === 1 && params.pack === undefined;
    if (oneInput && params.phases.some((ph) => ph.evaluate)) {
      const field = `${key ?? "distill"}.phases`;
      await requireLabelledSplit(pipeline, asList(params.tokens)[0], "dev", field);
    }
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
    const data = await readData(ctx);
    const recipe = checkRecipe(ctx, data.meta);
    const teacherDir = modelDirOf(
      p,
      ctx.inputs,
      ctx.resolve,
      params.teacher,
      "teacher",
      `${ctx.key}.teacher`,
    );
    const teacherConfig = await readConfig(teacherDir);
    const seed = params.seed ?? p.seed;
    const init = params.init ?? p.student?.init ??
      (p.student?.checkpoint || params.init_from ? "checkpoint" : "random");
    const student = await initStudent(ctx, data.meta, init, seed);
    let teacher: Bert | null = null;
    let sources: (BatchSource & { close?(): Promise<void> })[] = [];
    try {
      const longest = longestRow(data.rows, data.dev);
      const field = params.pack !== undefined
        ? `${ctx.key}.pack`
        : `${asList(params.tokens)[0]}.max_seq_length`;
      checkSeqLength(longest, student.config, { file: p.file, field, model: "student" });
      checkSeqLength(longest, teacherConfig, { file: p.file, field, model: "teacher" });
      const M = student.config.num_hidden_layers;
      const map = resolveLayerMap(
        params.layer_map,
        teacherConfig.num_hidden_layers,
        M,
        `${ctx.key}.layer_map`,
      );
      if (recipe.needs.has("scores") || recipe.needs.has("values")) {
        checkHeads(teacherConfig, student.config, p.file);
      }
      if (init === "teacher-layers" || !params.teacher_outputs) {
        teacher = await loadBert(teacherDir);
      }
      if (init === "teacher-layers") initFromTeacherLayers(student, teacher!, map, p.file);
      const objective = (terms: LossTermSpec[]): DistillObjectiveOptions => ({
        terms,
        layerMap: map,
        embeddings: params.embeddings,
        projection: params.projection,
      });
      addProjections(student, teacherConfig.hidden_size, objective(recipe.allTerms), seed);
      sources = await teacherSources(ctx, data, recipe.phases, map, teacher, recipe.labelled);
      const phases = recipe.phases.map((ph, i) =>
        phaseFromParams(ph.name, "distillation", phaseSettings(params, ph), {
          objectiveOptions: objective(ph.terms),
          source: sources[i],
          evaluate: ph.evaluate && recipe.labelled && data.dev !== null,
        })
      );
      ctx.log(
        `student ${M}×${student.config.hidden_size} (${
          (student.numParameters() / 1e6).toFixed(2)
        }M ` +
          `parameters, init ${init}) ← teacher ${teacherConfig.num_hidden_layers}×` +
          `${teacherConfig.hidden_size}; layer map ${map.join(",")}; ` +
          `${params.teacher_outputs ? "cached" : "online"} teacher outputs`,
      );
      const dev = recipe.labelled ? data.dev : null;
      const res = await train({
        model: student,
        phases,
        source: sources[0],
        stateDir: join(ctx.out, "train_state"),
        checkpointEvery: params.checkpoint_every,
        seed,
        replicas: params.replicas,
        engine: params.engine,
        device: params.device,
        backend: ctx.pipeline.backend,
        threads: params.threads,
        evaluate: dev ? (m) => evaluateRows(m, dev, params.eval_batch_size) : undefined,
        metric: params.metric ?? taskMetric(data.meta.task),
        keepBest: params.keep_best,
        progress: (label, total) => ctx.progress(total, `${label} steps`),
        log: ctx.log,
      });
      await writeTrainedModel(ctx.out, student, data.tokensDir, res);
      // and the transformers.js / onnxruntime-web layout next to it (onnx/model{,_fp16}.onnx)
      await saveOnnxFolder(student, join(ctx.out, "model"), { fp16: true });
      return trainingResult(res, student);
    } finally {
      for (const s of sources) await s.close?.(); // the online teacher's sessions
      student.dispose();
      teacher?.dispose();
    }
  },
});
