/**
 * `augment`: TinyBERT's data augmentation (Jiao et al. 2020, Algorithm 1) as a stage between
 * `tokenize` and the stages that read tokens. Each training example is followed by `n` copies in
 * which every word is, with probability `p_t`, replaced by one of its `k` candidates drawn
 * uniformly; a word's candidates are the masked-LM head's top-`k` predictions at its position with
 * the word replaced by `[MASK]`.
 *
 * Words are what WordPiece makes them: a piece followed by its `##` continuations. Only words
 * whose first piece has a letter or digit are replaced (punctuation and special tokens stay), and
 * a candidate is a vocabulary entry that is neither special (`[…]`), a `##` piece, a piece without
 * a letter or digit, nor the word itself.
 *
 * The paper draws the candidates of a multi-piece word from GloVe neighbours; there is no GloVe
 * here. `multi_piece: whole-word-mask` (default) masks the whole word with one `[MASK]` and takes
 * the head's single-piece predictions there (the replacement is one piece, so the row gets
 * shorter); `multi_piece: keep` leaves multi-piece words unchanged.
 *
 * Cost: the replacement decisions are drawn first (seeded, per example), then one masked copy per
 * (example, word) that any of the `n` copies replaces runs through the model — many rows per
 * forward, on the model's inference graph with the masked-LM head on the masked positions only
 * (`openInference` with `mlmRows`: one graph, ONNX Runtime, or tfjs with `engine: tfjs`). The
 * candidates are written as a part store (`candidates/`, one row per example), so a killed run
 * resumes from its finished parts.
 *
 * Output: the layout of `tokenize` — `train/` `dev/` `test/` part stores of {@link TOKEN_COLUMNS}
 * (+ `target` for regression), `labels.json` (plus an `augmentation` entry), `tokenizer/` — so
 * `teacher-forward: { input: augment }` and `distill: { tokens: augment }` read it unchanged.
 * `train/` holds the originals first (rows `0..T−1`), then copy 1 of every original, copy 2, …
 * (row `j·T + i` is copy `j` of original `i`), with two more columns: `augmented` (the copy number,
 * 0 for an original) and `source_row` (`i`). Augmented rows are never longer than their original,
 * so `max_seq_length` holds. `dev/` and `test/` are copied unchanged: evaluation data is never
 * augmented.
 * @module
 */

import { join } from "node:path";
import { z } from "zod";
import { InputError } from "../errors.ts";
import { type Inference, openInference } from "../engines/inference.ts";
import type { Bert } from "../model/bert.ts";
import { loadBert } from "../model/checkpoint.ts";
import { readCheckpointTensors } from "../model/checkpoint_files.ts";
import { readConfig } from "../model/config.ts";
import { loadTokenizer, saveTokenizer } from "../model/tokenizer/io.ts";
import type { BertTokenizer } from "../model/tokenizer/tokenizer.ts";
import { seededRandom } from "../random.ts";
import { defineStage, fileDigest, type StageContext, type StageResult } from "../run/runner.ts";
import type { Pipeline } from "../run/spec.ts";
import { exists, writeJsonAtomic } from "../store/fsutil.ts";
import {
  type ColumnInput,
  type ColumnSpec,
  finalize,
  PartReader,
  PartWriter,
} from "../store/parquet.ts";
import { readTokenMeta, type TokenMeta } from "../store/tokens.ts";
import { SPLITS, TARGET_COLUMN, TOKEN_COLUMNS } from "./tokenize.ts";
import { deviceMetrics, deviceParam } from "./common.ts";

/** Params of the augment stage. */
export const AugmentParams = z.strictObject({
  /** The tokenize stage whose shards to augment. */
  tokens: z.string().min(1).default("tokenize"),
  /**
   * A checkpoint with a masked-LM head (`cls.predictions.*`), e.g. the pretrained teacher; the
   * same vocabulary as the tokens. Default: `teacher.checkpoint`.
   */
  model: z.string().min(1).optional(),
  /** Augmented copies per training example (the paper's N). */
  n: z.number().int().min(0).default(20),
  /** Probability of replacing each word in a copy (the paper's p_t). */
  p_t: z.number().min(0).max(1).default(0.4),
  /** Candidates per word (the paper's K). */
  k: z.number().int().min(1).default(15),
  /** Multi-piece words: masked whole and replaced by one predicted piece, or kept. */
  multi_piece: z.enum(["whole-word-mask", "keep"]).default("whole-word-mask"),
  /** Augment (and keep) only the first this many training examples (tokenize's seeded order). */
  limit: z.number().int().positive().optional(),
  /** Seed of the replacement decisions (default: the pipeline's `seed`). */
  seed: z.number().int().optional(),
  /** Masked rows per forward pass. */
  batch_size: z.number().int().positive().default(64),
  /** Training examples per part of `candidates/` (the unit a killed run resumes from). */
  examples_per_part: z.number().int().positive().default(256),
  /** Rows per part of the output `train/`. */
  rows_per_part: z.number().int().positive().default(2048),
  /** Executor of the model's inference graph: ONNX Runtime, or tfjs on the pipeline's `backend`. */
  engine: z.enum(["onnx", "tfjs"]).default("onnx"),
  /** ONNX Runtime's device: `auto` (webgpu on a real GPU adapter, else cpu), `cpu`, `webgpu`. */
  device: deviceParam,
  /** Intra-op threads (default: one per core). */
  threads: z.number().int().positive().optional(),
});
/** Validated augment params. */
export type AugmentParams = z.infer<typeof AugmentParams>;

/** The masked-LM tensors the stage needs (the decoder is tied to the word embeddings). */
const MLM_TENSORS = [
  "cls.predictions.transform.dense.weight",
  "cls.predictions.transform.dense.bias",
  "cls.predictions.transform.LayerNorm.weight",
  "cls.predictions.transform.LayerNorm.bias",
  "cls.predictions.bias",
];

/** The columns `train/` may hold (sequence-level labels only). */
const TRAIN_COLUMNS = new Set([...TOKEN_COLUMNS, TARGET_COLUMN].map((c) => c.name));

/** The extra columns of the augmented `train/`. */
export const AUGMENT_COLUMNS: ColumnSpec[] = [
  /** 0 for an original example, j for its j-th augmented copy. */
  { name: "augmented", kind: "int32" },
  /** The original example's row (in the augmented rows' source). */
  { name: "source_row", kind: "int32" },
];

function modelDir(p: Pipeline, params: AugmentParams, resolve: (s: string) => string): string {
  const dir = params.model ?? p.teacher?.checkpoint;
  if (!dir) {
    throw new InputError("no model with a masked-LM head to predict the replacements", {
      file: p.file,
      field: "augment.model",
      hint: "Set augment.model to a checkpoint with cls.predictions.* (e.g. the pretrained " +
        "teacher), or teacher.checkpoint.",
    });
  }
  return resolve(dir);
}

/**
 * Refuse a checkpoint without a masked-LM head, naming the weights file and the first missing
 * tensor (checked when the pipeline is planned, before any stage computes).
 */
export async function checkMlmCheckpoint(dir: string): Promise<void> {
  const { tensors, file } = await readCheckpointTensors(dir);
  const has = (n: string) =>
    tensors.has(n) || (n === "cls.predictions.bias" && tensors.has("cls.predictions.decoder.bias"));
  const missing = MLM_TENSORS.filter((n) => !has(n));
  if (missing.length === 0) return;
  throw new InputError("the augmentation model has no masked-LM head", {
    file,
    field: missing[0],
    expected: "the cls.predictions.* tensors of a BertForMaskedLM or BertForPreTraining checkpoint",
    got: `${tensors.size} tensors, ${missing.length} of the ${MLM_TENSORS.length} missing`,
    hint: "Point augment.model at a checkpoint with a masked-LM head (e.g. the pretrained " +
      "teacher); a fine-tuned classifier usually has none.",
  });
}

/** What each vocabulary entry is, for word segmentation and candidate filtering. */
export interface VocabClasses {
  /** `[…]` entries (`[PAD]`, `[CLS]`, `[SEP]`, `[MASK]`, `[UNK]`, `[unused…]`). */
  special: Uint8Array;
  /** `##` continuation pieces. */
  continuation: Uint8Array;
  /** Entries with a letter or digit. */
  wordLike: Uint8Array;
  /** Not a candidate: special, continuation or without a letter or digit. */
  banned: Uint8Array;
}

/** Classify a vocabulary (see {@link VocabClasses}). */
export function vocabClasses(idToToken: readonly string[]): VocabClasses {
  const V = idToToken.length;
  const special = new Uint8Array(V), continuation = new Uint8Array(V);
  const wordLike = new Uint8Array(V), banned = new Uint8Array(V);
  idToToken.forEach((t, i) => {
    special[i] = /^\[.*\]$/.test(t) ? 1 : 0;
    continuation[i] = t.startsWith("##") ? 1 : 0;
    wordLike[i] = /[\p{L}\p{N}]/u.test(t) ? 1 : 0;
    banned[i] = special[i] || continuation[i] || !wordLike[i] ? 1 : 0;
  });
  return { special, continuation, wordLike, banned };
}

/**
 * The replaceable words of a row as `[start, end)` piece ranges: a word-like, non-special piece
 * and its `##` continuations; with `multiPiece: "keep"` single-piece words only.
 */
export function wordSpans(
  ids: ArrayLike<number>,
  length: number,
  vc: VocabClasses,
  multiPiece: AugmentParams["multi_piece"],
): [number, number][] {
  const out: [number, number][] = [];
  let i = 0;
  while (i < length) {
    const id = ids[i];
    if (vc.special[id] || vc.continuation[id]) {
      i++;
      continue;
    }
    let end = i + 1;
    while (end < length && vc.continuation[ids[end]] && !vc.special[ids[end]]) end++;
    if (vc.wordLike[id] && (multiPiece !== "keep" || end - i === 1)) out.push([i, end]);
    i = end;
  }
  return out;
}

/** A seed per example, so each example's decisions do not depend on which part computes them. */
function exampleSeed(seed: number, row: number): number {
  return (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) + Math.imul(row + 1, 0x85ebca6b)) >>> 0;
}

/** The replacement decisions of one example: copy-major `[n × words]`. */
export interface Decisions {
  /** 1 where copy j replaces word w (`j·words + w`). */
  replace: Uint8Array;
  /** A uniform draw in [0, 1) that picks the candidate (`floor(pick · candidates)`). */
  pick: Float32Array;
}

/** Draw an example's decisions: for each copy, each word: replace with p_t, then a pick. */
export function drawDecisions(
  seed: number,
  row: number,
  words: number,
  n: number,
  pT: number,
): Decisions {
  const rand = seededRandom(exampleSeed(seed, row));
  const replace = new Uint8Array(n * words), pick = new Float32Array(n * words);
  for (let j = 0; j < n * words; j++) {
    replace[j] = rand() < pT ? 1 : 0;
    pick[j] = rand();
  }
  return { replace, pick };
}

/** The words (indices) that at least one of the `n` copies replaces: those to predict. */
export function wordsToPredict(dec: Decisions, words: number, n: number): number[] {
  const out: number[] = [];
  for (let w = 0; w < words; w++) {
    for (let j = 0; j < n; j++) {
      if (dec.replace[j * words + w]) {
        out.push(w);
        break;
      }
    }
  }
  return out;
}

/**
 * The `k` highest logits of one row (`logits[offset .. offset+V)`) over entries that are not
 * `banned` and not `self`, highest first (ties: the lower id first); −1 fills missing places.
 */
export function topCandidates(
  logits: Float32Array,
  offset: number,
  V: number,
  k: number,
  banned: Uint8Array,
  self: number,
): Int32Array {
  const ids = new Int32Array(k).fill(-1), vals = new Float64Array(k).fill(-Infinity);
  let count = 0;
  for (let v = 0; v < V; v++) {
    if (banned[v] || v === self) continue;
    const x = logits[offset + v];
    if (!(x === x)) continue; // NaN
    if (count === k && x <= vals[k - 1]) continue;
    let p = count < k ? count++ : k - 1;
    while (p > 0 && vals[p - 1] < x) {
      vals[p] = vals[p - 1];
      ids[p] = ids[p - 1];
      p--;
    }
    vals[p] = x;
    ids[p] = v;
  }
  return ids;
}

/** An example with its word `j`'s pieces replaced by one `token`. */
function replaceWord(
  ids: Int32Array,
  types: Int32Array,
  len: number,
  [s, e]: [number, number],
  token: number,
): { ids: Int32Array; types: Int32Array } {
  const outIds = new Int32Array(len - (e - s) + 1), outTypes = new Int32Array(outIds.length);
  outIds.set(ids.subarray(0, s));
  outTypes.set(types.subarray(0, s));
  outIds[s] = token;
  outTypes[s] = types[s];
  outIds.set(ids.subarray(e, len), s + 1);
  outTypes.set(types.subarray(e, len), s + 1);
  return { ids: outIds, types: outTypes };
}

/**
 * Copy `j` (1-based) of an example: each word its decisions replace becomes its picked candidate
 * (`candidates`: `[words × k]`, −1 for none); returns the new ids/types and how many words changed.
 */
export function augmentedCopy(
  ids: Int32Array,
  types: Int32Array,
  len: number,
  spans: [number, number][],
  candidates: Int32Array,
  k: number,
  dec: Decisions,
  j: number,
): { ids: Int32Array; types: Int32Array; replaced: number } {
  const W = spans.length;
  const outIds: number[] = [], outTypes: number[] = [];
  let at = 0, replaced = 0;
  for (let w = 0; w < W; w++) {
    const [s, e] = spans[w];
    for (; at < s; at++) outIds.push(ids[at]), outTypes.push(types[at]);
    const d = (j - 1) * W + w;
    let m = 0;
    while (m < k && candidates[w * k + m] >= 0) m++;
    if (dec.replace[d] && m > 0) {
      outIds.push(candidates[w * k + Math.min(m - 1, Math.floor(dec.pick[d] * m))]);
      outTypes.push(types[s]);
      replaced++;
      at = e;
    }
  }
  for (; at < len; at++) outIds.push(ids[at]), outTypes.push(types[at]);
  return { ids: Int32Array.from(outIds), types: Int32Array.from(outTypes), replaced };
}

/**
 * The model's inference graph with the masked-LM head on chosen rows (`mlm_positions` in,
 * `mlm_rows [M, V]` out), on the engine asked.
 */
async function openModel(
  ctx: StageContext<AugmentParams>,
  bert: Bert,
): Promise<Inference> {
  const { params } = ctx;
  return await openInference(bert, {
    outputs: "logits",
    mlm: false,
    mlmRows: true,
    threads: params.threads,
    engine: params.engine === "tfjs"
      ? { kind: "tfjs", backend: ctx.pipeline.backend }
      : { kind: "onnxruntime", device: params.device },
  });
}

/** One masked row to predict: example `row`'s word `w` (pieces `[s, e)`) → one `[MASK]`. */
interface Job {
  row: number;
  w: number;
  span: [number, number];
  len: number;
}

/**
 * The candidates of the given jobs: the masked rows in batches of similar length through the
 * model, the masked-LM head on the masked positions only, then the top-k allowed entries.
 */
async function predictCandidates(
  model: Inference,
  V: number,
  rows: { ids: Int32Array[]; types: Int32Array[]; lengths: Int32Array },
  jobs: Job[],
  maskId: number,
  vc: VocabClasses,
  k: number,
  batchSize: number,
  onBatch: (n: number) => void,
): Promise<Int32Array[]> {
  const out: Int32Array[] = new Array(jobs.length);
  const order = jobs.map((_, i) => i).sort((a, b) => jobs[a].len - jobs[b].len || a - b);
  for (let b0 = 0; b0 < order.length; b0 += batchSize) {
    const batch = order.slice(b0, b0 + batchSize);
    const B = batch.length, S = jobs[batch[B - 1]].len;
    const ids = new Int32Array(B * S), mask = new Int32Array(B * S), types = new Int32Array(B * S);
    // the [MASK] of row i sits where its word started: flat position i·S + start
    const positions = new Int32Array(B);
    batch.forEach((q, i) => {
      const { row, span, len } = jobs[q];
      const m = replaceWord(rows.ids[row], rows.types[row], rows.lengths[row], span, maskId);
      ids.set(m.ids, i * S);
      types.set(m.types, i * S);
      mask.fill(1, i * S, i * S + len);
      positions[i] = i * S + span[0];
    });
    const res = await model.run({
      inputIds: ids,
      attentionMask: mask,
      tokenTypeIds: types,
      batch: B,
      seq: S,
      mlmPositions: positions,
    }, ["mlm_rows"]);
    const logits = res.mlm_rows.data; // [B, V]
    batch.forEach((q, i) => {
      const { row, span } = jobs[q];
      // the word itself is excluded (a multi-piece word has no single id to exclude)
      const self = span[1] - span[0] === 1 ? rows.ids[row][span[0]] : -1;
      out[q] = topCandidates(logits, i * V, V, k, vc.banned, self);
    });
    onBatch(B);
  }
  return out;
}

/** Copy a split's store part by part (resumable), columns and layout unchanged. */
async function copySplit(src: string, dest: string): Promise<number> {
  const reader = await PartReader.open(src);
  const writer = await PartWriter.open(dest, {
    columns: reader.columns,
    rowsPerPart: reader.index.rowsPerPart,
    totalRows: reader.totalRows,
    metadata: reader.metadata,
  });
  for (let i = 0; i < reader.partCount; i++) {
    const first = reader.index.parts[i].firstRow;
    if (writer.isDone(first)) continue;
    const part = await reader.readPart(i);
    await writer.writePart(first, part.columns as Record<string, ColumnInput>);
  }
  await finalize(dest, { totalRows: reader.totalRows });
  return reader.totalRows;
}

/** Every column of the first `limit` rows of a store, in row order. */
async function readAllRows(
  reader: PartReader,
  limit: number,
): Promise<Record<string, (number | Int32Array | Float32Array)[]>> {
  const cols: Record<string, (number | Int32Array | Float32Array)[]> = {};
  for (const c of reader.columns) cols[c.name] = [];
  for (let i = 0; i < reader.partCount && cols[reader.columns[0].name].length < limit; i++) {
    const part = await reader.readPart(i);
    for (const c of reader.columns) {
      const values = part.columns[c.name] as ArrayLike<number | Int32Array | Float32Array>;
      for (let r = 0; r < part.rowCount; r++) cols[c.name].push(values[r]);
    }
  }
  for (const c of reader.columns) cols[c.name].length = Math.min(cols[c.name].length, limit);
  return cols;
}

/** Before any compute: the vocabulary of the model against the tokens', and the task kind. */
async function checkInputs(
  dir: string,
  tok: BertTokenizer,
  meta: TokenMeta,
  tokensDir: string,
  train: PartReader | null,
): Promise<void> {
  const config = await readConfig(dir);
  if (config.vocab_size !== tok.vocabSize) {
    throw new InputError("the augmentation model's vocabulary differs from the tokens'", {
      file: join(dir, "config.json"),
      field: "vocab_size",
      expected: `${tok.vocabSize} (the tokenizer of ${tokensDir})`,
      got: String(config.vocab_size),
    });
  }
  const hasTokenizer = await exists(join(dir, "vocab.txt")) ||
    await exists(join(dir, "tokenizer.json"));
  if (hasTokenizer) {
    const theirs = (await loadTokenizer(dir)).idToToken;
    const at = tok.idToToken.findIndex((t, i) => theirs[i] !== t);
    if (at >= 0 || theirs.length !== tok.vocabSize) {
      throw new InputError("the augmentation model's vocabulary differs from the tokens'", {
        file: dir,
        field: `vocab[${at >= 0 ? at : tok.vocabSize}]`,
        expected: JSON.stringify(tok.idToToken[at] ?? null) + ` (the tokenizer of ${tokensDir})`,
        got: JSON.stringify(theirs[at >= 0 ? at : tok.vocabSize] ?? null),
      });
    }
  }
  if (tok.maskId === undefined) {
    throw new InputError("the vocabulary has no [MASK] token", {
      file: join(tokensDir, "tokenizer"),
    });
  }
  const task = meta.task as string | null | undefined;
  const extra = train?.columns.map((c) => c.name).filter((n) => !TRAIN_COLUMNS.has(n)) ?? [];
  if ((task && task !== "classification" && task !== "regression") || extra.length) {
    throw new InputError("augment replaces words of sequence-level examples only", {
      file: join(tokensDir, "labels.json"),
      field: extra.length ? `train column ${extra[0]}` : "task",
      expected: "classification or regression (one label per example)",
      got: extra.length ? `per-token columns (${extra.join(", ")})` : String(task),
    });
  }
}

/** The augment stage. */
export const augment = defineStage({
  name: "augment",
  version: 1,
  params: AugmentParams,
  // the model's files are covered by the fingerprint
  models: () => [],
  needs: (params) => [params.tokens],
  async fingerprint(params, { pipeline, resolve }) {
    const dir = modelDir(pipeline, params, resolve);
    await checkMlmCheckpoint(dir);
    const weights = await fileDigest(join(dir, "model.safetensors")).catch(() => "sharded");
    const config = await fileDigest(join(dir, "config.json"));
    return `${weights}:${config}`;
  },
  async run(ctx): Promise<StageResult> {
    const { params, pipeline } = ctx;
    const tokensDir = ctx.inputs[params.tokens];
    const dir = modelDir(pipeline, params, ctx.resolve);
    const meta = await readTokenMeta(tokensDir);
    const tok = await loadTokenizer(join(tokensDir, "tokenizer"));
    const trainDir = join(tokensDir, "train");
    const train = (await exists(trainDir)) ? await PartReader.open(trainDir) : null;
    await checkMlmCheckpoint(dir);
    await checkInputs(dir, tok, meta, tokensDir, train);
    const seed = params.seed ?? pipeline.seed;
    const { n, k } = params;
    const counts: Record<string, number> = {};
    const metrics: Record<string, number | string> = {};
    let device: Record<string, string> | undefined;

    // dev and test: copied unchanged
    for (const split of SPLITS.filter((s) => s !== "train")) {
      const src = join(tokensDir, split);
      counts[split] = (await exists(src)) ? await copySplit(src, join(ctx.out, split)) : 0;
    }

    if (train) {
      const T = Math.min(train.totalRows, params.limit ?? Infinity);
      const cols = await readAllRows(train, T);
      const rows = {
        ids: cols.input_ids as Int32Array[],
        types: cols.token_type_ids as Int32Array[],
        lengths: Int32Array.from(cols.length as number[]),
      };
      const vc = vocabClasses(tok.idToToken);
      const spans = rows.ids.map((ids, i) =>
        wordSpans(ids, rows.lengths[i], vc, params.multi_piece)
      );
      const decisions = spans.map((s, i) => drawDecisions(seed, i, s.length, n, params.p_t));

      // Step 1: candidates of every word any copy replaces (a part store: resumable)
      const candDir = join(ctx.out, "candidates");
      const candWriter = await PartWriter.open(candDir, {
        columns: [
          { name: "words", kind: "int32-blob" },
          { name: "candidates", kind: "int32-blob" },
        ],
        rowsPerPart: params.examples_per_part,
        totalRows: T,
        metadata: { k, n, p_t: params.p_t, seed, multi_piece: params.multi_piece },
      });
      const pending = candWriter.pendingParts();
      let masked = 0, engineName = "none";
      let adapter: Inference["adapter"] = null;
      const t0 = performance.now();
      if (pending.length) {
        const bert = await loadBert(dir, { heads: { classifier: false } });
        let model: Inference | null = null;
        try {
          if (!bert.heads.mlm) await checkMlmCheckpoint(dir); // (names the missing tensor)
          let todo = 0;
          for (const r of pending) {
            for (let i = r.start; i < r.end; i++) {
              todo += wordsToPredict(decisions[i], spans[i].length, n).length;
            }
          }
          const bar = ctx.progress(todo, "masked rows");
          for (const range of pending) {
            const jobs: Job[] = [];
            for (let i = range.start; i < range.end; i++) {
              for (const w of wordsToPredict(decisions[i], spans[i].length, n)) {
                const span = spans[i][w];
                jobs.push({ row: i, w, span, len: rows.lengths[i] - (span[1] - span[0]) + 1 });
              }
            }
            if (jobs.length && !model) {
              model = await openModel(ctx, bert);
              engineName = model.engine;
              adapter = model.adapter;
            }
            const found = jobs.length
              ? await predictCandidates(
                model!,
                bert.config.vocab_size,
                rows,
                jobs,
                tok.maskId!,
                vc,
                k,
                params.batch_size,
                (b) => bar.tick(b),
              )
              : [];
            masked += jobs.length;
            const cands = Array.from(
              { length: range.end - range.start },
              (_, r) => new Int32Array(spans[range.start + r].length * k).fill(-1),
            );
            jobs.forEach((job, q) => cands[job.row - range.start].set(found[q], job.w * k));
            await candWriter.writePart(range.start, {
              words: Array.from(
                { length: range.end - range.start },
                (_, r) => Int32Array.from(spans[range.start + r].flat()),
              ),
              candidates: cands,
            });
          }
          bar.finish();
        } finally {
          // released before the stage returns: a native release still running when the
          // process or its worker exits can corrupt the heap
          await model?.close();
          bert.dispose();
        }
      }
      await finalize(candDir, { totalRows: T });
      const candSeconds = (performance.now() - t0) / 1000;

      // Step 2: the training rows: originals, then copy 1 of each, copy 2, …
      const cands: Int32Array[] = [];
      for await (const part of (await PartReader.open(candDir)).parts(["candidates"])) {
        cands.push(...(part.columns.candidates as Int32Array[]));
      }
      const srcColumns = train.columns;
      const outDir = join(ctx.out, "train");
      const total = T * (n + 1);
      const writer = await PartWriter.open(outDir, {
        columns: [...srcColumns, ...AUGMENT_COLUMNS],
        rowsPerPart: params.rows_per_part,
        totalRows: total,
        metadata: {
          ...train.metadata,
          augmentation: { n, p_t: params.p_t, k, multi_piece: params.multi_piece, seed },
        },
      });
      for (const range of writer.pendingParts()) {
        const out: Record<string, (number | Int32Array | Float32Array)[]> = {};
        for (const c of [...srcColumns, ...AUGMENT_COLUMNS]) out[c.name] = [];
        for (let r = range.start; r < range.end; r++) {
          const j = Math.floor(r / T), i = r % T;
          for (const c of srcColumns) out[c.name].push(cols[c.name][i]);
          out.augmented.push(j);
          out.source_row.push(i);
          if (j === 0) continue;
          const a = augmentedCopy(
            rows.ids[i],
            rows.types[i],
            rows.lengths[i],
            spans[i],
            cands[i],
            k,
            decisions[i],
            j,
          );
          const at = out.input_ids.length - 1;
          out.input_ids[at] = a.ids;
          out.token_type_ids[at] = a.types;
          out.attention_mask[at] = new Int32Array(a.ids.length).fill(1);
          out.length[at] = a.ids.length;
        }
        await writer.writePart(
          range.start,
          Object.fromEntries(
            Object.entries(out).map(([name, v]) =>
              typeof v[0] === "number" ? [name, Int32Array.from(v as number[])] : [name, v]
            ),
          ) as Record<string, ColumnInput>,
        );
      }
      await finalize(outDir, { totalRows: total });

      // what was done, counted from the written rows
      let words = 0, replaced = 0, unchanged = 0, jobsCount = 0;
      for (let i = 0; i < T; i++) {
        const W = spans[i].length;
        words += W * n;
        jobsCount += wordsToPredict(decisions[i], W, n).length;
        for (let j = 1; j <= n; j++) {
          const a = augmentedCopy(
            rows.ids[i],
            rows.types[i],
            rows.lengths[i],
            spans[i],
            cands[i],
            k,
            decisions[i],
            j,
          );
          replaced += a.replaced;
          if (a.replaced === 0) unchanged++;
        }
      }
      Object.assign(counts, {
        originals: T,
        train: total,
        augmented: T * n,
        words_in_copies: words,
        words_replaced: replaced,
        copies_unchanged: unchanged,
        masked_rows: jobsCount,
      });
      metrics.engine = engineName;
      if (engineName.startsWith("onnxruntime/")) {
        device = deviceMetrics(engineName.slice("onnxruntime/".length), adapter);
      }
      metrics.candidate_seconds = candSeconds;
      if (masked > 0) {
        metrics.masked_rows_per_second = masked / candSeconds;
        metrics.examples_per_second = T / candSeconds;
      }
      metrics.replacement_rate = words ? replaced / words : 0;
      ctx.log(
        `${T} examples → ${total} training rows; ${jobsCount} masked rows predicted` +
          (masked
            ? ` in ${candSeconds.toFixed(1)} s (${(masked / candSeconds).toFixed(0)}/s)`
            : "") +
          `; ${(100 * (words ? replaced / words : 0)).toFixed(1)}% of words replaced`,
      );
    }

    await saveTokenizer(tok, join(ctx.out, "tokenizer"));
    await writeJsonAtomic(join(ctx.out, "labels.json"), {
      ...meta,
      augmentation: {
        n,
        p_t: params.p_t,
        k,
        multi_piece: params.multi_piece,
        seed,
        limit: params.limit ?? null,
      },
    });
    return { counts, metrics, ...(device ? { device } : {}) };
  },
});
