/**
 * `tokenize`: dataset → WordPiece token shards, one part store per split (`train/`, `dev/`,
 * `test/`; training rows in a seeded random order), columns `input_ids`, `attention_mask`, `token_type_ids` (int32 blobs, unpadded: the
 * mask is all ones over the stored length, and batches are padded to their own longest example
 * when read), `length` and `label` (−100, `IGNORE_INDEX`, when unlabeled: cross-entropy skips the row). `labels.json` records the label order.
 *
 * The manifest counts examples, tokens and how many examples `max_seq_length` truncated.
 * @module
 */

import { dirname, join } from "node:path";
import { z } from "zod";
import { datasetHash, excludeExamples, loadDataset } from "../data/mod.ts";
import { shuffled } from "../random.ts";
import type { Dataset, DatasetSpec, Example, TaskKind } from "../data/types.ts";
import { encodeQuestionContext, encodeWords, IGNORE_INDEX } from "../model/align.ts";
import { InputError } from "../errors.ts";
import { writeJsonAtomic } from "../store/fsutil.ts";
import { finalize, PartReader, PartWriter } from "../store/parquet.ts";
import { defineStage, sha256Hex } from "../run/runner.ts";
import { type Pipeline, stageKind } from "../run/spec.ts";
import { loadTokenizer, saveTokenizer } from "../model/tokenizer/io.ts";
import type { BertTokenizer } from "../model/tokenizer/tokenizer.ts";

/** Params of the tokenize stage. */
export const TokenizeParams = z.strictObject({
  /** A dataset named under `datasets:`. */
  dataset: z.string().min(1),
  /** Tokens per example, [CLS]/[SEP] included. */
  max_seq_length: z.number().int().min(3).max(4096).default(128),
  /** Tokenizer directory; default: the teacher's tokenizer or checkpoint. */
  tokenizer: z.string().min(1).optional(),
  /** Examples per Parquet part (row group). */
  rows_per_part: z.number().int().positive().default(2048),
});
/** Validated tokenize params. */
export type TokenizeParams = z.infer<typeof TokenizeParams>;

/** The splits a dataset has, in the order they are written. */
export const SPLITS = ["train", "dev", "test"] as const;

/** The regression target (float32, one value per row), in regression datasets only. */
export const TARGET_COLUMN = {
  name: "target",
  kind: "float-blob" as const,
  shape: [1],
  dtype: "F32" as const,
};

/**
 * Token classification: `token_labels` (per token: the word's tag at its first piece, −100
 * elsewhere) and `word_tags` (every word's tag, cut words included, for word-level metrics).
 */
export const TOKEN_CLASSIFICATION_COLUMNS = [
  { name: "token_labels", kind: "int32-blob" as const },
  { name: "word_tags", kind: "int32-blob" as const },
];

/**
 * Extractive QA: the answer's first and last token (`[CLS]` = 0 when the answer was cut off),
 * each token's context word (−1 elsewhere), the words' character spans, the context and the gold
 * answers (JSON `[{text, start}]`), for span decoding and exact match / F1.
 */
export const QA_COLUMNS = [
  { name: "start_position", kind: "int32" as const },
  { name: "end_position", kind: "int32" as const },
  { name: "token_words", kind: "int32-blob" as const },
  { name: "word_spans", kind: "int32-blob" as const },
  { name: "context", kind: "string" as const },
  { name: "answers", kind: "string" as const },
];

/** The store columns of a token shard. */
export const TOKEN_COLUMNS = [
  { name: "input_ids", kind: "int32-blob" as const },
  { name: "attention_mask", kind: "int32-blob" as const },
  { name: "token_type_ids", kind: "int32-blob" as const },
  { name: "length", kind: "int32" as const },
  { name: "label", kind: "int32" as const },
  /** 1 when `max_seq_length` cut the example. */
  { name: "truncated", kind: "int32" as const },
];

function tokenizerDir(p: Pipeline, params: TokenizeParams, resolve: (s: string) => string): string {
  const dir = params.tokenizer ?? p.teacher?.tokenizer ?? p.teacher?.checkpoint;
  if (!dir) {
    throw new InputError("no tokenizer", {
      file: p.file,
      field: "tokenize.tokenizer",
      hint: "Set tokenize.tokenizer, teacher.tokenizer or teacher.checkpoint.",
    });
  }
  return resolve(dir);
}

const loaded = new Map<string, Promise<Dataset>>();
/**
 * Load a pipeline dataset once per process (fingerprint and run both need it), with its
 * `exclude` applied: the named splits of another dataset of the same file are removed by text.
 */
function dataset(p: Pipeline, name: string, chain: string[] = []): Promise<Dataset> {
  const spec = p.datasets[name] as DatasetSpec | undefined;
  const field = chain.length ? `datasets.${chain[chain.length - 1]}.exclude.dataset` : "dataset";
  if (!spec) {
    return Promise.reject(
      new InputError(`unknown dataset '${name}'`, {
        file: p.file,
        field,
        expected: `one of ${Object.keys(p.datasets).join(", ")}`,
        got: name,
      }),
    );
  }
  if (chain.includes(name)) {
    return Promise.reject(
      new InputError(`datasets exclude each other in a cycle: ${[...chain, name].join(" → ")}`, {
        file: p.file,
        field,
      }),
    );
  }
  const key = `${dirname(p.file)}\n${name}\n${JSON.stringify(spec)}`;
  if (!loaded.has(key)) {
    const { exclude, ...rest } = spec;
    loaded.set(
      key,
      loadDataset({ name, ...rest }, dirname(p.file)).then(async (data) => {
        if (!exclude) return data;
        const other = await dataset(p, exclude.dataset, [...chain, name]);
        return excludeExamples(data, exclude.splits.flatMap((s) => other[s]));
      }),
    );
  }
  return loaded.get(key)!;
}

/**
 * Refuse, before any compute (stages call it from their fingerprint, which the runner computes
 * for every stage before it runs one), to evaluate on a split whose examples lack labels: the
 * `split` of the dataset that the tokenize stage `tokensKey` reads. `field` names the setting
 * that asks for the evaluation. Other token inputs (not a tokenize stage) are not checked.
 */
export async function requireLabelledSplit(
  p: Pipeline,
  tokensKey: string,
  split: "train" | "dev" | "test",
  field: string,
): Promise<void> {
  const entry = p.stages.find((e) => Object.keys(e)[0] === tokensKey);
  const name = (entry?.[tokensKey] as { dataset?: unknown } | undefined)?.dataset;
  if (!entry || stageKind(tokensKey) !== "tokenize" || typeof name !== "string") return;
  const data = await dataset(p, name);
  if (data.task !== undefined && data.task !== "classification") return; // gold data of their own
  if (!data.labels) return; // unlabeled text: the stages say what they need
  const missing = data[split].filter((e) => e.label === undefined).length;
  if (missing === 0) return;
  const spec = p.datasets[name] as DatasetSpec;
  const dropped = spec.drop_labels === true ||
    (Array.isArray(spec.drop_labels) && spec.drop_labels.includes(split));
  throw new InputError(
    `the ${split} split of dataset "${name}" has ${missing} of ${
      data[split].length
    } examples without labels; it cannot be evaluated on`,
    {
      file: p.file,
      field,
      expected: `a labelled ${split} split`,
      got: `${missing} unlabeled ${split} examples`,
      hint: dropped
        ? `datasets.${name}.drop_labels drops the ${split} labels; keep them, or evaluate elsewhere.`
        : `Give the ${split} split a label column, or evaluate on another split.`,
    },
  );
}

/** Encode one example; reports whether `max_seq_length` cut it. */
export function encodeExample(
  tok: BertTokenizer,
  text: string,
  pair: string | undefined,
  maxLength: number,
): { ids: number[]; types: number[]; truncated: boolean } {
  const full = tok.encode(text, pair, { truncation: false, padding: false });
  if (full.inputIds.length <= maxLength) {
    return { ids: full.inputIds, types: full.tokenTypeIds, truncated: false };
  }
  const cut = tok.encode(text, pair, { maxLength, truncation: true, padding: false });
  return { ids: cut.inputIds, types: cut.tokenTypeIds, truncated: true };
}

/**
 * Encode an example of any task kind; the task's own columns go to `add(column, value)`.
 * Token classification aligns word tags to first pieces; QA encodes question + context and the
 * first answer's token span.
 */
export function encodeTaskExample(
  tok: BertTokenizer,
  ex: Example,
  task: TaskKind | undefined,
  maxLength: number,
  add: (column: string, value: unknown) => void,
): { ids: number[]; types: number[]; truncated: boolean } {
  if (task === "token-classification") {
    const enc = encodeWords(tok, ex.words!, ex.tags!, maxLength);
    add("token_labels", Int32Array.from(enc.tokenLabels));
    add("word_tags", Int32Array.from(ex.tags!));
    return { ids: enc.ids, types: enc.ids.map(() => 0), truncated: enc.truncated };
  }
  if (task === "question-answering") {
    const enc = encodeQuestionContext(tok, ex.text, ex.textPair!, ex.answers?.[0], maxLength);
    add("start_position", enc.startPosition);
    add("end_position", enc.endPosition);
    add("token_words", Int32Array.from(enc.tokenWords));
    add("word_spans", Int32Array.from(enc.wordSpans));
    add("context", ex.textPair!);
    add("answers", JSON.stringify(ex.answers ?? []));
    return { ids: enc.ids, types: enc.types, truncated: enc.truncated };
  }
  return encodeExample(tok, ex.text, ex.textPair, maxLength);
}

/** The tokenize stage. */
export const tokenize = defineStage({
  name: "tokenize",
  version: 3,
  params: TokenizeParams,
  models: () => [],
  async fingerprint(params, { pipeline, resolve }) {
    const data = await dataset(pipeline, params.dataset);
    const tok = await loadTokenizer(tokenizerDir(pipeline, params, resolve));
    return `${datasetHash(data)}:${await sha256Hex(JSON.stringify(tok.toJSON()))}`;
  },
  async run(ctx) {
    const { params, pipeline } = ctx;
    const data = await dataset(pipeline, params.dataset);
    const tok = await loadTokenizer(tokenizerDir(pipeline, params, ctx.resolve));
    if (data.excluded !== undefined) {
      const ex = pipeline.datasets[params.dataset].exclude!;
      ctx.log(
        `left out ${data.excluded} examples found in ${ex.dataset} (${ex.splits.join(", ")})`,
      );
    }
    const total = SPLITS.reduce((n, s) => n + data[s].length, 0);
    const bar = ctx.progress(total, "examples");
    const counts: Record<string, number> = { truncated: 0, tokens: 0 };
    // (resumable: parts finished before a crash are kept; the counts are read back at the end)
    for (const split of SPLITS) {
      // Training rows are stored in a seeded random order: datasets often list examples by
      // class or source, and training draws its batches part by part.
      const examples = split === "train" ? shuffled(data.train, pipeline.seed) : data[split];
      counts[split] = examples.length;
      if (examples.length === 0) continue;
      const dir = join(ctx.out, split);
      const regression = data.task === "regression";
      const tokenTask = data.task === "token-classification";
      const qa = data.task === "question-answering";
      const writer = await PartWriter.open(dir, {
        columns: [
          ...TOKEN_COLUMNS,
          ...(regression ? [TARGET_COLUMN] : []),
          ...(tokenTask ? TOKEN_CLASSIFICATION_COLUMNS : []),
          ...(qa ? QA_COLUMNS : []),
        ],
        rowsPerPart: params.rows_per_part,
        totalRows: examples.length,
        metadata: { dataset: params.dataset, split, labels: data.labels ?? null },
      });
      for (const range of writer.pendingParts()) {
        const ids: Int32Array[] = [], masks: Int32Array[] = [], types: Int32Array[] = [];
        const lengths = new Int32Array(range.end - range.start);
        const labels = new Int32Array(range.end - range.start);
        const cut = new Int32Array(range.end - range.start);
        const extra: Record<string, unknown[]> = {};
        const add = (name: string, v: unknown) => (extra[name] ??= []).push(v);
        for (let i = range.start; i < range.end; i++) {
          const ex = examples[i];
          const enc = encodeTaskExample(tok, ex, data.task, params.max_seq_length, add);
          cut[i - range.start] = enc.truncated ? 1 : 0;
          ids.push(Int32Array.from(enc.ids));
          types.push(Int32Array.from(enc.types));
          masks.push(new Int32Array(enc.ids.length).fill(1));
          lengths[i - range.start] = enc.ids.length;
          labels[i - range.start] = ex.label ?? IGNORE_INDEX;
        }
        await writer.writePart(range.start, {
          input_ids: ids,
          attention_mask: masks,
          token_type_ids: types,
          length: lengths,
          label: labels,
          truncated: cut,
          ...Object.fromEntries(
            Object.entries(extra).map(([k, v]) => [
              k,
              k === "start_position" || k === "end_position" ? Int32Array.from(v as number[]) : v,
            ]),
          ),
          ...(regression
            ? {
              target: examples.slice(range.start, range.end).map((ex) =>
                Float32Array.of(ex.target!)
              ),
            }
            : {}),
        });
        bar.tick(range.end - range.start);
      }
      await finalize(dir, { totalRows: examples.length });
      const reader = await PartReader.open(dir);
      // counts read back from the store, so parts of a resumed run count too; and what
      // truncation cost the task: words whose first piece was cut, answers cut off their
      // context (every QA row has an answer, so a [CLS] target means it was cut)
      const extra = tokenTask ? ["token_labels", "word_tags"] : qa ? ["start_position"] : [];
      for await (const part of reader.parts(["length", "truncated", ...extra])) {
        const c = part.columns;
        for (const n of c.length as Int32Array) counts.tokens += n;
        for (const t of c.truncated as Int32Array) counts.truncated += t;
        if (tokenTask) {
          const labels = c.token_labels as Int32Array[];
          (c.word_tags as Int32Array[]).forEach((tags, i) => {
            const kept = labels[i].filter((t) => t !== IGNORE_INDEX).length;
            counts.words_cut = (counts.words_cut ?? 0) + tags.length - kept;
          });
        }
        if (qa) {
          for (const st of c.start_position as Int32Array) {
            if (st === 0) counts.answers_cut = (counts.answers_cut ?? 0) + 1;
          }
        }
      }
    }
    bar.finish();
    if (counts.words_cut) {
      ctx.log(`max_seq_length cut ${counts.words_cut} words (they count as wrong in evaluate)`);
    }
    if (counts.answers_cut) {
      ctx.log(
        `max_seq_length cut ${counts.answers_cut} answers off their context (targets [CLS]; ` +
          `no document stride)`,
      );
    }
    // the tokenizer travels with the shards, so model folders written later can include it
    await saveTokenizer(tok, join(ctx.out, "tokenizer"));
    await writeJsonAtomic(join(ctx.out, "labels.json"), {
      labels: data.labels ?? null,
      task: data.task ?? (data.labels ? "classification" : null),
      source: data.source,
      vocab_size: tok.vocabSize,
      max_seq_length: params.max_seq_length,
    });
    return { counts };
  },
});
