/**
 * The dataset layer: `loadDataset(spec)` reads a file (CSV, TSV, JSONL, Parquet) or an npm corpus,
 * maps labels to indices in a fixed, recorded order, and splits train/dev/test deterministically;
 * `datasetHash` gives the content hash the pipeline's cache is keyed on.
 * @module
 */

import { createHash } from "node:crypto";
import { basename, extname, isAbsolute, join } from "node:path";
import { InputError } from "../errors.ts";
import { selectColumns, selectQaColumns, selectTokenColumns } from "./columns.ts";
import { readBrown, readBrownPos, readMobyDick, readSotu, readSpamAssassin } from "./corpora.ts";
import { readCsv, readJsonl, readParquet, readTsv, type Table } from "./readers.ts";
import { sampleLimit, splitBySeed } from "./split.ts";
import { seededRandom, shuffle } from "../random.ts";
import type {
  Dataset,
  DatasetFormat,
  DatasetSpec,
  Example,
  RawSource,
  SplitSpec,
  TaskKind,
} from "./types.ts";

export type {
  Answer,
  Dataset,
  DatasetFormat,
  DatasetSpec,
  Example,
  SplitSpec,
  TaskKind,
} from "./types.ts";
export { chunkText, emailText } from "./corpora.ts";
export { brownUniversalTag, UNIVERSAL_TAGS } from "./brown_tags.ts";
export { splitBySeed } from "./split.ts";

/** The split used when a single source is given without `split`. */
export const DEFAULT_SPLIT: SplitSpec = { dev: 0.1, test: 0.1, seed: 0 };

const FILE_FORMATS = ["csv", "tsv", "jsonl", "parquet"] as const;
const CORPORA = ["spam-assassin", "brown", "brown-pos", "sotu", "moby-dick"] as const;
const TASKS: readonly TaskKind[] = [
  "classification",
  "regression",
  "token-classification",
  "question-answering",
];

/** The task of a spec: `spec.task`, else token classification for `brown-pos`, else none. */
function taskOf(spec: DatasetSpec): TaskKind | undefined {
  return spec.task ?? (spec.format === "brown-pos" ? "token-classification" : undefined);
}

function specError(
  message: string,
  field: string,
  expected?: string,
  got?: string,
  hint?: string,
): InputError {
  return new InputError(message, { file: "dataset spec", field, expected, got, hint });
}

function checkSpec(spec: DatasetSpec): void {
  const formats: readonly string[] = [...FILE_FORMATS, ...CORPORA];
  if (!formats.includes(spec.format)) {
    throw specError("unknown format", "format", formats.join(", "), String(spec.format));
  }
  checkTask(spec);
  checkUnlabelledSpec(spec);
  if (spec.split) {
    const { dev, test, seed } = spec.split;
    const ok = (r: number) => Number.isFinite(r) && r >= 0 && r < 1;
    if (!ok(dev) || !ok(test) || dev + test >= 1) {
      throw specError(
        "bad split ratios",
        "split",
        "dev, test ≥ 0 with dev + test < 1",
        `${dev}, ${test}`,
      );
    }
    if (!Number.isInteger(seed)) {
      throw specError("bad seed", "split.seed", "an integer", String(seed));
    }
  }
  if (spec.limit !== undefined && !(Number.isInteger(spec.limit) && spec.limit > 0)) {
    throw specError("bad limit", "limit", "a positive integer", String(spec.limit));
  }
  if (spec.labels) {
    const dup = spec.labels.find((l, i) => spec.labels!.indexOf(l) !== i);
    if (dup !== undefined || spec.labels.length === 0) {
      throw specError("bad label list", "labels", "distinct labels", JSON.stringify(spec.labels));
    }
  }
}

/** The task must be known and fit the format: list-valued columns need JSONL or Parquet. */
function checkTask(spec: DatasetSpec): void {
  if (spec.task !== undefined && !TASKS.includes(spec.task)) {
    throw specError("unknown task", "task", TASKS.join(", "), String(spec.task));
  }
  const task = taskOf(spec);
  const tokenOrQa = task === "token-classification" || task === "question-answering";
  if (tokenOrQa && (spec.format === "csv" || spec.format === "tsv")) {
    throw specError(
      `a ${task} dataset needs list-valued columns, which ${spec.format} cannot hold`,
      "format",
      "jsonl or parquet",
      spec.format,
      task === "token-classification"
        ? 'write one JSON object per line, e.g. {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}'
        : 'write one JSON object per line: {"question", "context", "answers": {"text": [...], ' +
          '"answer_start": [...]}}',
    );
  }
  const corpus = (CORPORA as readonly string[]).includes(spec.format);
  if (spec.format === "brown-pos" && task !== "token-classification") {
    throw specError(
      "brown-pos is a token-classification corpus",
      "task",
      "token-classification",
      task,
    );
  }
  if (corpus && spec.format !== "brown-pos" && tokenOrQa) {
    throw specError(
      `the ${spec.format} corpus has no ${task} annotation`,
      "task",
      "classification (or no task)",
      task,
    );
  }
  if (task === "question-answering" && spec.labels) {
    throw specError(
      "a question-answering dataset has no label list",
      "labels",
      "no labels",
      "a list",
    );
  }
}

async function readTable(format: DatasetFormat, file: string, spec: DatasetSpec): Promise<Table> {
  switch (format) {
    case "csv":
      return await readCsv(file);
    case "tsv":
      return await readTsv(file, spec.quote ?? false);
    case "jsonl":
      return await readJsonl(file);
    default:
      return await readParquet(file);
  }
}

async function readSource(spec: DatasetSpec, path: string, baseDir: string): Promise<RawSource> {
  const file = isAbsolute(path) ? path : join(baseDir, path);
  const table = await readTable(spec.format, file, spec);
  if (table.rows.length === 0) throw emptyError(file);
  const task = taskOf(spec);
  if (task === "token-classification") return selectTokenColumns(table, spec);
  if (task === "question-answering") return selectQaColumns(table, spec);
  return selectColumns(table, spec);
}

async function readCorpus(format: DatasetFormat): Promise<RawSource> {
  if (format === "spam-assassin") return readSpamAssassin();
  if (format === "brown") return await readBrown();
  if (format === "brown-pos") return await readBrownPos();
  if (format === "sotu") return readSotu();
  return readMobyDick();
}

function emptyError(file: string): InputError {
  return new InputError("dataset is empty", {
    file,
    expected: "at least one example",
    got: "0",
  });
}

/**
 * Sort inferred labels: numerically when all are integers (GLUE's 0/1), else by code point. The
 * labels are the examples' `label`s, or with `tags` the tags of every word.
 */
function inferLabels(sources: RawSource[], tags = false): string[] | undefined {
  const seen = new Set<string>();
  for (const s of sources) {
    for (const r of s.records) {
      if (tags) { for (const t of r.tags ?? []) seen.add(t); }
      else if (r.label !== undefined) seen.add(r.label);
    }
  }
  if (seen.size === 0) return undefined;
  const all = [...seen];
  if (all.every((l) => /^-?\d+$/.test(l))) return all.sort((a, b) => Number(a) - Number(b));
  return all.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

function toExamples(source: RawSource, labels: string[] | undefined): Example[] {
  const index = new Map(labels?.map((l, i) => [l, i]));
  return source.records.map((r) => {
    const ex: Example = { text: r.text };
    if (r.textPair !== undefined) ex.textPair = r.textPair;
    if (r.label !== undefined) {
      const i = index.get(r.label);
      if (i === undefined) {
        throw new InputError(`label "${r.label}" is not in the label list`, {
          file: source.file,
          field: r.where,
          expected: `one of ${JSON.stringify(labels)}`,
          got: JSON.stringify(r.label),
          hint: "add it to labels (in the teacher's order) or fix the data",
        });
      }
      ex.label = i;
    }
    return ex;
  });
}

/** Regression examples: the label column parsed as a number (the example's `target`). */
function toTargets(source: RawSource): Example[] {
  return source.records.map((r) => {
    const ex: Example = { text: r.text };
    if (r.textPair !== undefined) ex.textPair = r.textPair;
    const v = r.label === undefined ? NaN : Number(r.label);
    if (r.label === undefined || r.label.trim() === "" || !Number.isFinite(v)) {
      throw new InputError("a regression target must be a number", {
        file: source.file,
        field: r.where,
        expected: "a finite number",
        got: JSON.stringify(r.label ?? null),
      });
    }
    ex.target = v;
    return ex;
  });
}

/** Token-classification examples: the words, and their tags as indices into `labels`. */
function toTagExamples(source: RawSource, labels: string[]): Example[] {
  const index = new Map(labels.map((l, i) => [l, i]));
  return source.records.map((r) => {
    const words = r.words ?? [];
    const tags = (r.tags ?? []).map((t, k) => {
      const i = index.get(t);
      if (i === undefined) {
        throw new InputError(`tag "${t}" is not in the label list`, {
          file: source.file,
          field: `${r.where}, word ${k} (${JSON.stringify(words[k])})`,
          expected: `one of ${JSON.stringify(labels)}`,
          got: JSON.stringify(t),
          hint: "add it to labels (in the teacher's order) or fix the data",
        });
      }
      return i;
    });
    return { text: r.text, words: [...words], tags };
  });
}

/** Extractive-QA examples: question, context and answer spans. */
function toQaExamples(source: RawSource): Example[] {
  return source.records.map((r) => ({
    text: r.text,
    textPair: r.textPair,
    answers: (r.answers ?? []).map((a) => ({ text: a.text, start: a.start })),
  }));
}

/**
 * Load a dataset. `spec.path` (or a corpus) gives one source split by `spec.split` (default
 * {@link DEFAULT_SPLIT}); `spec.train` with optional `dev`/`test` files gives the splits, and a
 * missing dev/test is carved from train only when `spec.split` is set. Relative paths resolve
 * against `baseDir`. Labels: `spec.labels` in the given order (an unknown label is an error), else
 * the corpus' list, else inferred and sorted. `spec.limit` samples each source down by seed first.
 * Every bad input is an InputError naming the file and the line or field.
 *
 * `task: token-classification` (JSONL or Parquet, or the `brown-pos` corpus): examples carry
 * `words` and `tags` (indices into the labels: `spec.labels`, the corpus' tagset, else the sorted
 * set of tags seen); `text` is the words joined by spaces. No class label, so the split is not
 * stratified. `task: question-answering` (JSONL or Parquet): `text` is the question, `textPair`
 * the context, `answers` the checked answer spans; no labels.
 */
export async function loadDataset(spec: DatasetSpec, baseDir = "."): Promise<Dataset> {
  checkSpec(spec);
  const isFile = (FILE_FORMATS as readonly string[]).includes(spec.format);
  const seed = spec.split?.seed ?? DEFAULT_SPLIT.seed;
  const parts: { train: RawSource; dev?: RawSource; test?: RawSource } = { train: undefined! };
  let name: string;
  if (!isFile) {
    parts.train = await readCorpus(spec.format);
    name = spec.name ?? spec.format;
  } else {
    if ((spec.path === undefined) === (spec.train === undefined)) {
      throw specError(
        "give either path or train (with optional dev/test)",
        "path",
        "one of them",
        spec.path === undefined ? "neither" : "both",
      );
    }
    const main = (spec.path ?? spec.train)!;
    name = spec.name ?? basename(main, extname(main));
    parts.train = await readSource(spec, main, baseDir);
    if (spec.dev !== undefined) parts.dev = await readSource(spec, spec.dev, baseDir);
    if (spec.test !== undefined) parts.test = await readSource(spec, spec.test, baseDir);
  }
  const sources = [parts.train, parts.dev, parts.test].filter((s): s is RawSource => !!s);
  for (const s of sources) {
    if (s.records.length === 0) throw emptyError(s.file);
    s.records = sampleLimit(s.records, spec.limit, seed);
  }
  const task = taskOf(spec);
  const regression = task === "regression";
  if (regression && spec.labels) {
    throw specError("a regression dataset has no label list", "labels", "no labels", "a list");
  }
  const tagging = task === "token-classification";
  const qa = task === "question-answering";
  const labels = regression || qa
    ? undefined
    : spec.labels ?? parts.train.labels ?? inferLabels(sources, tagging);
  const convert = (s: RawSource) =>
    regression
      ? toTargets(s)
      : tagging
      ? toTagExamples(s, labels!)
      : qa
      ? toQaExamples(s)
      : toExamples(s, labels);
  const train = convert(parts.train);
  const split = spec.path !== undefined || !isFile ? spec.split ?? DEFAULT_SPLIT : spec.split &&
    {
      ...spec.split,
      dev: parts.dev ? 0 : spec.split.dev,
      test: parts.test ? 0 : spec.split.test,
    };
  const carved = split ? splitBySeed(train, split) : { train, dev: [], test: [] };
  const dataset: Dataset = {
    name,
    train: carved.train,
    dev: parts.dev ? convert(parts.dev) : carved.dev,
    test: parts.test ? convert(parts.test) : carved.test,
    source: sources.map((s) => s.file).join(", "),
  };
  if (regression || tagging || qa) dataset.task = task;
  if (labels) dataset.labels = [...labels];
  if (dataset.train.length === 0) {
    throw new InputError("no training examples left after the split", {
      file: parts.train.file,
      field: "split",
      expected: "dev + test small enough to leave train examples",
      got: `${parts.train.records.length} examples`,
    });
  }
  return dropLabels(dataset, spec, seed);
}

/** The splits `drop_labels` names (`true`: all three). */
function droppedSplits(spec: DatasetSpec): ("train" | "dev" | "test")[] {
  const d = spec.drop_labels;
  return d === true ? ["train", "dev", "test"] : d ? [...d] : [];
}

/** `labelled` and `drop_labels` are for class labels; they cannot say which rows to drop twice. */
function checkUnlabelledSpec(spec: DatasetSpec): void {
  if (spec.labelled === undefined && !spec.drop_labels) return;
  const field = spec.labelled !== undefined ? "labelled" : "drop_labels";
  const task = taskOf(spec) ?? "classification";
  if (task !== "classification") {
    throw specError(
      `${field} drops class labels; a ${task} dataset has none`,
      field,
      "a classification dataset",
      task,
    );
  }
  if (spec.labelled !== undefined && !(Number.isInteger(spec.labelled) && spec.labelled >= 0)) {
    throw specError("bad labelled count", "labelled", "an integer ≥ 0", String(spec.labelled));
  }
  if (spec.labelled !== undefined && droppedSplits(spec).includes("train")) {
    throw specError(
      "labelled keeps some training labels, drop_labels drops them all",
      "labelled",
      "labelled, or drop_labels with train, not both",
      `labelled: ${spec.labelled}, drop_labels: ${JSON.stringify(spec.drop_labels)}`,
    );
  }
}

/**
 * Apply `labelled` (keep the labels of that many training examples, the first of a shuffle by
 * the split seed) and `drop_labels` (drop every label of the named splits). The label list stays:
 * the teacher's classifier and the prediction terms still need it.
 */
function dropLabels(dataset: Dataset, spec: DatasetSpec, seed: number): Dataset {
  checkUnlabelledSpec(spec);
  const unlabel = (e: Example): Example => {
    const { label: _l, ...rest } = e;
    return rest;
  };
  const out = { ...dataset };
  for (const split of droppedSplits(spec)) out[split] = out[split].map(unlabel);
  if (spec.labelled !== undefined) {
    const labelled = out.train.filter((e) => e.label !== undefined).length;
    if (spec.labelled > labelled) {
      throw specError(
        "labelled asks for more labelled training examples than there are",
        "labelled",
        `at most ${labelled}`,
        String(spec.labelled),
      );
    }
    const order = shuffle(out.train.map((_, i) => i), seededRandom(seed ^ 0x1abe11ed));
    const keep = new Set(order.slice(0, spec.labelled));
    out.train = out.train.map((e, i) => (keep.has(i) ? e : unlabel(e)));
  }
  return out;
}

/**
 * `dataset` without every example whose text and pair equal those of one of `remove` (exact
 * match), e.g. a pretraining corpus without a task's dev and test sentences. Labels, order and
 * the rest are kept; `excluded` counts what was removed.
 */
export function excludeExamples(dataset: Dataset, remove: readonly Example[]): Dataset {
  const key = (e: Example) => e.textPair === undefined ? e.text : `${e.text}\u0000${e.textPair}`;
  const drop = new Set(remove.map(key));
  let excluded = dataset.excluded ?? 0;
  const keep = (xs: Example[]) =>
    xs.filter((e) => {
      const hit = drop.has(key(e));
      if (hit) excluded++;
      return !hit;
    });
  return {
    ...dataset,
    train: keep(dataset.train),
    dev: keep(dataset.dev),
    test: keep(dataset.test),
    excluded,
  };
}

/**
 * SHA-256 (hex) over a canonical serialization of the labels and the three splits, example by
 * example (`[text, textPair, label]` as JSON lines, then the `target` of a regression example,
 * then `{ words, tags, answers }` of a token-classification or QA example). Name and source are
 * left out: the same data read from a moved file hashes the same. Classification and regression
 * examples hash as they did before tags and answers existed.
 */
export function datasetHash(dataset: Dataset): string {
  const h = createHash("sha256");
  h.update(`tinystill-dataset-v1\n${JSON.stringify(dataset.labels ?? null)}\n`);
  for (const part of ["train", "dev", "test"] as const) {
    h.update(`#${part} ${dataset[part].length}\n`);
    for (const ex of dataset[part]) {
      const row: unknown[] = [ex.text, ex.textPair ?? null, ex.label ?? null];
      if (ex.target !== undefined) row.push(ex.target);
      if (ex.words !== undefined || ex.tags !== undefined || ex.answers !== undefined) {
        row.push({
          words: ex.words ?? null,
          tags: ex.tags ?? null,
          answers: ex.answers?.map((a) => [a.text, a.start]) ?? null,
        });
      }
      h.update(JSON.stringify(row) + "\n");
    }
  }
  return h.digest("hex");
}
