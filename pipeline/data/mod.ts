/**
 * The dataset layer: `loadDataset(spec)` reads a file (CSV, TSV, JSONL, Parquet) or an npm corpus,
 * maps labels to indices in a fixed, recorded order, and splits train/dev/test deterministically;
 * `datasetHash` gives the content hash the pipeline's cache is keyed on.
 * @module
 */

import { createHash } from "node:crypto";
import { basename, extname, isAbsolute, join } from "node:path";
import { InputError } from "../errors.ts";
import { selectColumns } from "./columns.ts";
import { readBrown, readMobyDick, readSotu, readSpamAssassin } from "./corpora.ts";
import { readCsv, readJsonl, readParquet, readTsv, type Table } from "./readers.ts";
import { sampleLimit, splitBySeed } from "./split.ts";
import type {
  Dataset,
  DatasetFormat,
  DatasetSpec,
  Example,
  RawSource,
  SplitSpec,
} from "./types.ts";

export type { Dataset, DatasetFormat, DatasetSpec, Example, SplitSpec } from "./types.ts";
export { chunkText, emailText } from "./corpora.ts";
export { splitBySeed } from "./split.ts";

/** The split used when a single source is given without `split`. */
export const DEFAULT_SPLIT: SplitSpec = { dev: 0.1, test: 0.1, seed: 0 };

const FILE_FORMATS = ["csv", "tsv", "jsonl", "parquet"] as const;
const CORPORA = ["spam-assassin", "brown", "sotu", "moby-dick"] as const;

function specError(message: string, field: string, expected?: string, got?: string): InputError {
  return new InputError(message, { file: "dataset spec", field, expected, got });
}

function checkSpec(spec: DatasetSpec): void {
  const formats: readonly string[] = [...FILE_FORMATS, ...CORPORA];
  if (!formats.includes(spec.format)) {
    throw specError("unknown format", "format", formats.join(", "), String(spec.format));
  }
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
  return selectColumns(table, spec);
}

async function readCorpus(format: DatasetFormat): Promise<RawSource> {
  if (format === "spam-assassin") return readSpamAssassin();
  if (format === "brown") return await readBrown();
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

/** Sort inferred labels: numerically when all are integers (GLUE's 0/1), else by code point. */
function inferLabels(sources: RawSource[]): string[] | undefined {
  const seen = new Set<string>();
  for (const s of sources) for (const r of s.records) if (r.label !== undefined) seen.add(r.label);
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

/**
 * Load a dataset. `spec.path` (or a corpus) gives one source split by `spec.split` (default
 * {@link DEFAULT_SPLIT}); `spec.train` with optional `dev`/`test` files gives the splits, and a
 * missing dev/test is carved from train only when `spec.split` is set. Relative paths resolve
 * against `baseDir`. Labels: `spec.labels` in the given order (an unknown label is an error), else
 * the corpus' list, else inferred and sorted. `spec.limit` samples each source down by seed first.
 * Every bad input is an InputError naming the file and the line or field.
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
  const regression = spec.task === "regression";
  if (regression && spec.labels) {
    throw specError("a regression dataset has no label list", "labels", "no labels", "a list");
  }
  const labels = regression ? undefined : spec.labels ?? parts.train.labels ?? inferLabels(sources);
  const convert = (s: RawSource) => regression ? toTargets(s) : toExamples(s, labels);
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
  if (regression) dataset.task = "regression";
  if (labels) dataset.labels = [...labels];
  if (dataset.train.length === 0) {
    throw new InputError("no training examples left after the split", {
      file: parts.train.file,
      field: "split",
      expected: "dev + test small enough to leave train examples",
      got: `${parts.train.records.length} examples`,
    });
  }
  return dataset;
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
 * example (`[text, textPair, label]` as JSON lines). Name and source are left out: the same data
 * read from a moved file hashes the same.
 */
export function datasetHash(dataset: Dataset): string {
  const h = createHash("sha256");
  h.update(`tinystill-dataset-v1\n${JSON.stringify(dataset.labels ?? null)}\n`);
  for (const part of ["train", "dev", "test"] as const) {
    h.update(`#${part} ${dataset[part].length}\n`);
    for (const ex of dataset[part]) {
      h.update(
        JSON.stringify(
          ex.target === undefined
            ? [ex.text, ex.textPair ?? null, ex.label ?? null]
            : [ex.text, ex.textPair ?? null, ex.label ?? null, ex.target],
        ) + "\n",
      );
    }
  }
  return h.digest("hex");
}
