/**
 * `mlm-pretrain`: masked-language-model pretraining of a BERT on unlabeled text — the knowledge a
 * teacher needs before it has anything to teach. Reads one or more tokenize outputs (e.g. Brown,
 * SOTU, Moby-Dick), packs whole examples into blocks of `max_seq_length`, masks 15% of tokens
 * (80% `[MASK]`, 10% random, 10% kept; new masks every epoch) and trains the MLM head tied to the
 * word embeddings. A held-out slice of the blocks (fixed masks) gives the MLM loss and the
 * masked-token accuracy during and after training; the best checkpoint by that accuracy is kept.
 *
 * ```yaml
 * - mlm-pretrain@teacher:
 *     model: teacher
 *     tokens: [tokenize@brown, tokenize@sotu, tokenize@moby]
 *     max_seq_length: 128
 *     epochs: 3
 * ```
 *
 * The model starts from the pipeline's `teacher.config` (random weights, the default), from
 * `teacher.checkpoint` (`init: checkpoint`), or from an earlier stage's model (`from:
 * mlm-pretrain@teacher`) — continued pretraining, with a fresh optimiser and schedule, e.g. to
 * extend a finished run or to adapt a pretrained model to a domain's text. A checkpoint without
 * an MLM head gets a fresh one (logged).
 *
 * Writes `model/` (a `BertForMaskedLM` in the Hugging Face layout, with the tokenizer) and
 * `curve.json`; resumes from `train_state/` after a crash.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import { Bert } from "../model/bert.ts";
import { loadBert } from "../model/checkpoint.ts";
import { type BertConfig, makeConfig } from "../model/config.ts";
import { InputError } from "../errors.ts";
import { IGNORE_INDEX } from "../model/align.ts";
import { maskBlock, packExamples, type SpecialIds } from "../train/mlm.ts";
import type { HostBatch } from "../data/batch.ts";
import type { Pipeline } from "../run/spec.ts";
import { defineStage, fileDigest, type StageResult } from "../run/runner.ts";
import { loadTokenizer } from "../model/tokenizer/io.ts";
import { type BatchSource, train } from "../train/loop.ts";
import {
  asList,
  LoopParams,
  modelDirOf,
  optimParams,
  phaseFromParams,
  withLength,
  writeTrainedModel,
} from "./common.ts";
import { readTokenMeta, readTokenSplit } from "../store/tokens.ts";
import { batchInputs, openInference } from "../engines/inference.ts";

/** The mlm-pretrain stage's fields. */
const MlmPretrainFields = z.strictObject({
  /** Which pipeline model (its `config`) to pretrain. */
  model: z.enum(["teacher", "student"]).default("teacher"),
  /** Start from `<model>.config` with random weights (default) or from `<model>.checkpoint`. */
  init: z.enum(["random", "checkpoint"]).optional(),
  /** Continue from an earlier stage's model instead (e.g. `mlm-pretrain@teacher`). */
  from: z.string().min(1).optional(),
  /** Tokenize stages whose text to train on (every split of each). */
  tokens: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).default("tokenize"),
  /** Block length after packing (≤ the model's max_position_embeddings). */
  max_seq_length: z.number().int().min(8).default(128),
  /** Fraction of tokens to predict. */
  mask_prob: z.number().gt(0).lt(1).default(0.15),
  /** Fraction of the blocks held out for the MLM loss / accuracy report. */
  held_out: z.number().gt(0).lt(0.5).default(0.02),
  ...optimParams({ batch_size: 32, lr: 1e-4, warmup: 0.06, weight_decay: 0.01, max_grad_norm: 1 }),
  ...LoopParams,
});
/** Params of the mlm-pretrain stage, with the length rule (1 epoch by default). */
export const MlmPretrainParams = withLength(MlmPretrainFields, 1);
/** Validated mlm-pretrain params. */
export type MlmPretrainParams = z.infer<typeof MlmPretrainParams>;

/** Pad blocks `rows` (masked with `seedOf(row)`) into one host batch with `mlmLabels`. */
function maskedBatch(
  blocks: Int32Array[],
  rows: number[],
  seedOf: (row: number) => number,
  opts: { prob: number; vocabSize: number; ids: SpecialIds },
): HostBatch {
  const b = rows.length;
  let S = 1;
  for (const r of rows) S = Math.max(S, blocks[r].length);
  const ids = new Int32Array(b * S), mask = new Int32Array(b * S), types = new Int32Array(b * S);
  const labels = new Int32Array(b * S).fill(IGNORE_INDEX);
  rows.forEach((r, i) => {
    const m = maskBlock(blocks[r], seedOf(r), opts);
    ids.set(m.input, i * S);
    labels.set(m.labels, i * S);
    mask.fill(1, i * S, i * S + blocks[r].length);
  });
  return {
    inputIds: { data: ids, shape: [b, S] },
    attentionMask: { data: mask, shape: [b, S] },
    tokenTypeIds: { data: types, shape: [b, S] },
    mlmLabels: { data: labels, shape: [b, S] },
  };
}

/**
 * MLM loss and masked-token accuracy of `model` on host batches (no dropout): the MLM head on the
 * masked positions only (the inference graph's `mlm_rows`), on ONNX Runtime.
 */
export async function mlmScore(
  model: Bert,
  batches: HostBatch[],
): Promise<{ loss: number; accuracy: number }> {
  let nll = 0, hits = 0, n = 0;
  const V = model.config.vocab_size;
  const engine = await openInference(model, { outputs: "logits", mlm: false, mlmRows: true });
  try {
    for (const b of batches) {
      const labels = b.mlmLabels.data as Int32Array;
      const pos: number[] = [], gold: number[] = [];
      labels.forEach((t, i) => {
        if (t !== IGNORE_INDEX) {
          pos.push(i);
          gold.push(t);
        }
      });
      if (pos.length === 0) continue;
      const out = await engine.run(
        { ...batchInputs(b), mlmPositions: Int32Array.from(pos) },
        ["mlm_rows"],
      );
      const logits = out.mlm_rows.data;
      gold.forEach((g, r) => {
        // −log_softmax(z)[g] = logsumexp(z) − z[g], in float64
        const row = logits.subarray(r * V, (r + 1) * V);
        let max = -Infinity, best = 0;
        for (let v = 0; v < V; v++) {
          if (row[v] > max) {
            max = row[v];
            best = v;
          }
        }
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(row[v] - max);
        nll += Math.log(sum) + max - row[g];
        if (best === g) hits++;
      });
      n += pos.length;
    }
  } finally {
    await engine.close();
  }
  return { loss: nll / Math.max(1, n), accuracy: hits / Math.max(1, n) };
}

/** The model to pretrain: from the config (random weights), a checkpoint, or an earlier stage. */
async function initialModel(
  key: string,
  params: MlmPretrainParams,
  p: Pipeline,
  inputs: Record<string, string>,
  resolve: (path: string) => string,
  vocabSize: number,
  seed: number,
): Promise<Bert> {
  if (params.from && params.init === "random") {
    throw new InputError("init: random and from contradict each other", {
      file: p.file,
      field: `${key}.init`,
      hint: "Drop init to continue from the stage named in from.",
    });
  }
  if (params.from || params.init === "checkpoint") {
    const dir = modelDirOf(p, inputs, resolve, params.from, params.model, `${key}.from`);
    const model = await loadBert(dir, {
      heads: { classifier: false, mlm: true },
      seed,
    });
    if (model.newlyInitialized?.length) {
      console.warn(`${key}: ${dir} has no MLM head; starting it from random weights`);
    }
    if (model.config.vocab_size !== vocabSize) {
      model.dispose();
      throw new InputError("the model's vocabulary does not match the tokenizer's", {
        file: join(dir, "config.json"),
        field: "vocab_size",
        expected: String(vocabSize),
        got: String(model.config.vocab_size),
      });
    }
    return model;
  }
  const section = p[params.model];
  if (!section?.config) {
    throw new InputError(`${params.model}.config is needed to pretrain the ${params.model}`, {
      file: p.file,
      field: `${params.model}.config`,
      hint: `Or continue from a checkpoint: init: checkpoint with ${params.model}.checkpoint.`,
    });
  }
  let config: BertConfig;
  try {
    config = makeConfig({ ...(section.config as Partial<BertConfig>), vocab_size: vocabSize });
  } catch (e) {
    throw new InputError(`${params.model}.config: ${(e as Error).message}`, { file: p.file });
  }
  return Bert.create(config, { classifier: false, mlm: true }, seed);
}

/** The mlm-pretrain stage. */
export const mlmPretrain = defineStage({
  name: "mlm-pretrain",
  version: 1,
  params: MlmPretrainParams,
  // with `from`, the pipeline's model section is not read
  models: (p) => p.from ? [] : [p.model],
  needs: (p) => [...asList(p.tokens), ...(p.from ? [p.from] : [])],
  async fingerprint(params, { pipeline, resolve }) {
    const ckpt = pipeline[params.model]?.checkpoint;
    if (params.from || params.init !== "checkpoint" || !ckpt) return "";
    return await fileDigest(join(resolve(ckpt), "model.safetensors"));
  },
  async run(ctx): Promise<StageResult> {
    const { params, pipeline: p } = ctx;
    const inputs = asList(params.tokens).map((k) => ctx.inputs[k]);
    const metas = await Promise.all(inputs.map(readTokenMeta));
    const vocabSize = metas[0].vocab_size;
    if (metas.some((m) => m.vocab_size !== vocabSize)) {
      throw new InputError("the token inputs use different vocabularies", {
        file: p.file,
        field: `${ctx.key}.tokens`,
      });
    }
    const tok = await loadTokenizer(join(inputs[0], "tokenizer"));
    if (tok.maskId === undefined) {
      throw new InputError("the vocabulary has no [MASK] token", {
        file: join(inputs[0], "tokenizer", "vocab.txt"),
      });
    }
    const ids: SpecialIds = { cls: tok.clsId, sep: tok.sepId, mask: tok.maskId, pad: tok.padId };
    const special = new Set([tok.unkId]);
    // every split of every input, packed into blocks; a seeded slice held out
    const examples: Int32Array[] = [];
    for (const dir of inputs) {
      for (const split of ["train", "dev", "test"]) {
        const rows = await readTokenSplit(dir, split);
        if (rows) examples.push(...rows.ids);
      }
    }
    const blocks = packExamples(examples, params.max_seq_length, ids);
    const every = Math.max(2, Math.round(1 / params.held_out));
    const heldOut = blocks.filter((_, i) => i % every === every - 1);
    const trainBlocks = blocks.filter((_, i) => i % every !== every - 1);
    if (trainBlocks.length === 0) {
      throw new InputError("no text to pretrain on", { file: p.file, field: `${ctx.key}.tokens` });
    }
    const tokens = trainBlocks.reduce((n, b) => n + b.length, 0);
    ctx.log(
      `${examples.length} examples → ${trainBlocks.length} training blocks (${tokens} tokens) ` +
        `+ ${heldOut.length} held out, ≤ ${params.max_seq_length} tokens each`,
    );

    const seed = params.seed ?? p.seed;
    const model = await initialModel(ctx.key, params, p, ctx.inputs, ctx.resolve, vocabSize, seed);
    if (params.max_seq_length > model.config.max_position_embeddings) {
      model.dispose();
      throw new InputError("max_seq_length exceeds the model's max_position_embeddings", {
        file: p.file,
        field: `${ctx.key}.max_seq_length`,
        expected: `≤ ${model.config.max_position_embeddings}`,
        got: String(params.max_seq_length),
      });
    }
    ctx.log(
      `${params.from ?? (params.init === "checkpoint" ? "checkpoint" : "random init")}: ` +
        `${model.config.num_hidden_layers}×${model.config.hidden_size}, ` +
        `${(model.numParameters() / 1e6).toFixed(2)}M parameters`,
    );
    const maskOpts = { prob: params.mask_prob, vocabSize, ids, special };
    const lengths = Int32Array.from(trainBlocks, (b) => b.length);
    const source: BatchSource = {
      groups: [{ start: 0, end: trainBlocks.length }],
      lengths,
      load: (_g, rows, epoch = 0) =>
        Promise.resolve(
          maskedBatch(trainBlocks, rows, (r) =>
            (seed * 7919 + epoch * 1_000_003 + r) >>> 0, maskOpts),
        ),
    };
    // fixed masks on the held-out blocks
    const evalBatches: HostBatch[] = [];
    for (let s = 0; s < heldOut.length; s += 32) {
      const rows = Array.from({ length: Math.min(32, heldOut.length - s) }, (_, i) => s + i);
      evalBatches.push(maskedBatch(heldOut, rows, (r) => (0x5eed + r) >>> 0, maskOpts));
    }
    const score = async (m: Bert) => {
      const r = await mlmScore(m, evalBatches);
      return { mlm_accuracy: r.accuracy, mlm_loss: r.loss };
    };
    try {
      const before = await mlmScore(model, evalBatches);
      const res = await train({
        model,
        phases: [phaseFromParams("mlm", "mlm", params, { evaluate: heldOut.length > 0 })],
        source,
        stateDir: join(ctx.out, "train_state"),
        checkpointEvery: params.checkpoint_every,
        seed,
        replicas: params.replicas,
        engine: params.engine,
        device: params.device,
        backend: ctx.pipeline.backend,
        threads: params.threads,
        evaluate: heldOut.length > 0 ? score : undefined,
        metric: "mlm_accuracy",
        keepBest: params.keep_best,
        progress: (label, total) => ctx.progress(total, `${label} steps`),
        log: ctx.log,
      });
      const after = await mlmScore(model, evalBatches);
      await writeTrainedModel(ctx.out, model, inputs[0], res);
      return {
        counts: {
          steps: res.steps,
          blocks: trainBlocks.length,
          tokens,
          held_out_blocks: heldOut.length,
          parameters: model.numParameters(),
        },
        metrics: {
          seconds: res.seconds,
          held_out_mlm_accuracy: after.accuracy,
          held_out_mlm_loss: after.loss,
          initial_mlm_accuracy: before.accuracy,
          initial_mlm_loss: before.loss,
        },
      };
    } finally {
      model.dispose();
    }
  },
});
