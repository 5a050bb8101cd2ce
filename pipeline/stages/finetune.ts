/**
 * `finetune`: train a model on the labels of the training split (cross-entropy), keeping the
 * best dev checkpoint. The model is the pipeline's `teacher` or `student`: built from its
 * `config` (from scratch), read from its `checkpoint`, or taken from an earlier stage (`from`).
 * A student fine-tuned on labels alone, for as many steps as the distillation, is the baseline
 * that shows what distillation adds.
 *
 * Writes `model/` (Hugging Face layout, with the tokenizer) and `curve.json`; resumes from
 * `train_state/` after a crash.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import { type BertConfig, numLabels, readConfig } from "../model/config.ts";
import { InputError } from "../errors.ts";
import { defineStage, fileDigest, type StageResult } from "../run/runner.ts";
import { type BatchSource, train } from "../train/loop.ts";
import {
  checkSeqLength,
  evaluateRows,
  loadForTask,
  longestRow,
  LoopParams,
  modelDirOf,
  modelFromConfig,
  optimParams,
  phaseFromParams,
  taskMetric,
  taskObjective,
  trainingResult,
  withLength,
  writeTrainedModel,
} from "./common.ts";
import {
  labelledRows,
  padRows,
  readTokenMeta,
  readTokenSplit,
  selectRows,
  taskLabels,
  type TokenRows,
} from "../store/tokens.ts";
import { requireLabelledSplit } from "./tokenize.ts";

/** The finetune stage's fields. */
const FinetuneFields = z.strictObject({
  /** Which pipeline model to train. */
  model: z.enum(["teacher", "student"]),
  /** Start from this earlier stage's `model/` instead of the pipeline section. */
  from: z.string().min(1).optional(),
  /** The tokenize stage to train on. */
  tokens: z.string().min(1).default("tokenize"),
  /**
   * `random`: a fresh model of the same architecture (the section's `config`, else its
   * checkpoint's) — the labels-only baseline of a student whose checkpoint is general-distilled.
   * Default: the checkpoint (or `from`) when there is one.
   */
  init: z.enum(["checkpoint", "random"]).optional(),
  ...optimParams({ batch_size: 32, lr: 5e-5, warmup: 0.1, weight_decay: 0.01, max_grad_norm: 1 }),
  ...LoopParams,
});
/** Params of the finetune stage, with the length rule (3 epochs by default). */
export const FinetuneParams = withLength(FinetuneFields, 3);
/** Validated finetune params. */
export type FinetuneParams = z.infer<typeof FinetuneParams>;

/** Batches of labelled training rows (all in memory: one group, shuffled as a whole). */
export function tokenSource(rows: TokenRows): BatchSource {
  return {
    groups: [{ start: 0, end: rows.lengths.length }],
    lengths: rows.lengths,
    load: (_g, r) => Promise.resolve(padRows(rows, r)),
  };
}

/** The finetune stage. */
export const finetune = defineStage({
  name: "finetune",
  version: 2,
  params: FinetuneParams,
  models: (p) => [p.model],
  needs: (p) => [p.tokens, ...(p.from ? [p.from] : [])],
  async fingerprint(params, { pipeline, resolve, key }) {
    // finetune keeps the best dev checkpoint: a dev split without labels is refused up front
    await requireLabelledSplit(pipeline, params.tokens, "dev", `${key ?? "finetune"}.tokens`);
    const section = pipeline[params.model];
    if (params.from || !section?.checkpoint) return "";
    if (params.init === "random") {
      return await fileDigest(join(resolve(section.checkpoint), "config.json"));
    }
    return await fileDigest(join(resolve(section.checkpoint), "model.safetensors"));
  },
  async run(ctx): Promise<StageResult> {
    const { params, pipeline } = ctx;
    const tokensDir = ctx.inputs[params.tokens];
    const meta = await readTokenMeta(tokensDir);
    const labels = taskLabels(meta);
    if (!labels) {
      throw new InputError("finetune needs labelled data", {
        file: pipeline.file,
        field: `${ctx.key}.tokens`,
        hint: "The dataset has no label column.",
      });
    }
    const all = await readTokenSplit(tokensDir, "train");
    const dev = await readTokenSplit(tokensDir, "dev");
    if (!all) throw new InputError("the training split is empty", { file: pipeline.file });
    // a labels-only objective trains on the labelled rows alone (`labelled: N` leaves the others
    // for distillation); the manifest counts both
    const kept = labelledRows(all);
    const skipped = all.lengths.length - kept.length;
    if (kept.length === 0) {
      throw new InputError("finetune needs labelled training rows; every one is unlabeled", {
        file: pipeline.file,
        field: `${ctx.key}.tokens`,
        expected: "labelled: N with N > 0, or no drop_labels on train",
        got: `${all.lengths.length} unlabeled rows`,
      });
    }
    const train_ = skipped ? selectRows(all, kept) : all;
    if (skipped) {
      ctx.log(`training on the ${kept.length} labelled rows; ${skipped} unlabeled rows skipped`);
    }
    const seed = params.seed ?? pipeline.seed;
    const section = pipeline[params.model];
    const fromCheckpoint = params.init !== "random" && !!(params.from || section?.checkpoint);
    if (params.init === "checkpoint" && !fromCheckpoint) {
      throw new InputError(`init: checkpoint needs ${params.model}.checkpoint or from`, {
        file: pipeline.file,
        field: `${ctx.key}.init`,
      });
    }
    let base: Partial<BertConfig> | undefined;
    if (params.init === "random" && !section?.config && section?.checkpoint) {
      const { id2label: _i, label2id: _l, problem_type: _p, architectures: _a, ...arch } =
        await readConfig(ctx.resolve(section.checkpoint)) as BertConfig & {
          architectures?: string[];
        };
      base = arch;
    }
    const model = fromCheckpoint
      ? await loadForTask(
        modelDirOf(pipeline, ctx.inputs, ctx.resolve, params.from, params.model, ctx.key),
        labels,
        seed,
        meta.task,
      )
      : modelFromConfig(pipeline, params.model, meta, seed, base);
    checkSeqLength(longestRow(train_, dev), model.config, {
      file: pipeline.file,
      field: `${params.tokens}.max_seq_length`,
      model: params.model,
    });
    if (model.config.vocab_size !== meta.vocab_size) {
      throw new InputError("the model's vocabulary does not match the tokenizer's", {
        field: "vocab_size",
        expected: String(meta.vocab_size),
        got: String(model.config.vocab_size),
      });
    }
    ctx.log(
      `${params.model}: ${model.config.num_hidden_layers}×${model.config.hidden_size}, ` +
        `${(model.numParameters() / 1e6).toFixed(2)}M parameters, ${
          numLabels(model.config)
        } labels`,
    );
    const phase = phaseFromParams(
      "finetune",
      taskObjective(meta.task),
      params,
      {
        evaluate: dev !== null,
      },
    );
    try {
      const res = await train({
        model,
        phases: [phase],
        source: tokenSource(train_),
        stateDir: join(ctx.out, "train_state"),
        checkpointEvery: params.checkpoint_every,
        seed,
        replicas: params.replicas,
        engine: params.engine,
        device: params.device,
        backend: ctx.pipeline.backend,
        threads: params.threads,
        evaluate: dev ? (m) => evaluateRows(m, dev, params.eval_batch_size) : undefined,
        metric: params.metric ?? taskMetric(meta.task),
        keepBest: params.keep_best,
        progress: (label, total) => ctx.progress(total, `${label} steps`),
        log: ctx.log,
      });
      await writeTrainedModel(ctx.out, model, tokensDir, res);
      const result = trainingResult(res, model);
      result.counts = { ...result.counts, labelled_rows: kept.length, unlabelled_skipped: skipped };
      return result;
    } finally {
      model.dispose();
    }
  },
});
