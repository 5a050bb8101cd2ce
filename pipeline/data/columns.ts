/**
 * Picking the text, text-pair and label columns out of a table, by name.
 * @module
 */

import { InputError } from "../errors.ts";
import type { Table } from "./readers.ts";
import type { RawSource } from "./types.ts";

/** Which columns hold the text, the optional pair text and the optional label. */
export interface ColumnChoice {
  /** Text column (default `text`). */
  text_column?: string;
  /** Pair column (default: none). */
  text_pair_column?: string;
  /** Label column (default `label` when the table has one). */
  label_column?: string;
  /** Set when a label list was given: then a label column is required. */
  labels?: string[];
}

function requireColumn(table: Table, column: string, key: string): void {
  if (table.columns.includes(column)) return;
  throw new InputError(`no column "${column}"`, {
    file: table.file,
    field: key,
    expected: `one of the columns ${table.columns.map((c) => `"${c}"`).join(", ")}`,
    got: `"${column}"`,
    hint: `set ${key} to the column that holds it`,
  });
}

function cell(table: Table, value: unknown, where: string, column: string): string {
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "bigint" || typeof value === "boolean") {
    return String(value);
  }
  throw new InputError(`missing or non-text value in column "${column}"`, {
    file: table.file,
    field: where,
    expected: "a string",
    got: value === undefined ? "nothing" : JSON.stringify(value),
  });
}

/**
 * Turn a table into raw records. A named column that does not exist is an InputError listing the
 * columns that do; so is a row whose text or label is missing.
 */
export function selectColumns(table: Table, choice: ColumnChoice): RawSource {
  const textCol = choice.text_column ?? "text";
  requireColumn(table, textCol, "text_column");
  const pairCol = choice.text_pair_column;
  if (pairCol !== undefined) requireColumn(table, pairCol, "text_pair_column");
  let labelCol = choice.label_column;
  if (labelCol === undefined && table.columns.includes("label")) labelCol = "label";
  if (labelCol === undefined && choice.labels) labelCol = "label";
  if (labelCol !== undefined) requireColumn(table, labelCol, "label_column");
  const records = table.rows.map(({ values, where }) => {
    const text = cell(table, values[textCol], where, textCol);
    const textPair = pairCol === undefined
      ? undefined
      : cell(table, values[pairCol], where, pairCol);
    const label = labelCol === undefined
      ? undefined
      : cell(table, values[labelCol], where, labelCol);
    if (label !== undefined && label.trim() === "") {
      throw new InputError(`empty label in column "${labelCol}"`, {
        file: table.file,
        field: where,
        expected: "a label",
        got: "an empty string",
      });
    }
    return { text, textPair, label: label?.trim(), where };
  });
  return { file: table.file, records };
}

/** Which columns hold the words and tags of a token-classification table. */
export interface TokenColumnChoice {
  /** Column with each row's list of words (default `tokens`). */
  words_column?: string;
  /** Column with each row's list of tags, one per word (default `tags`). */
  label_column?: string;
  /** The tag names: integer tags index this list (required when the data has integer tags). */
  labels?: string[];
}

/** Which columns hold the question, context and answers of an extractive-QA table. */
export interface QaColumnChoice {
  /** Column with the question (default `question`). */
  text_column?: string;
  /** Column with the context (default `context`). */
  text_pair_column?: string;
  /** Column with the answers (default `answers`). */
  answers_column?: string;
}

/** A value as it appears in an error message, cut at 60 characters. */
function show(v: unknown): string {
  if (v === undefined) return "nothing";
  if (typeof v === "bigint") return `${v}`;
  const s = JSON.stringify(v, (_, x) => typeof x === "bigint" ? Number(x) : x);
  return s === undefined ? String(v) : s.length > 60 ? s.slice(0, 57) + "..." : s;
}

/** An integer (JSON number or Parquet INT64 bigint) as a number, else undefined. */
function integer(v: unknown): number | undefined {
  if (typeof v === "bigint") return Number(v);
  if (typeof v === "number" && Number.isInteger(v)) return v;
  return undefined;
}

function listCell(table: Table, value: unknown, where: string, column: string, of: string) {
  if (Array.isArray(value)) return value as unknown[];
  throw new InputError(`column "${column}" must hold a list of ${of}`, {
    file: table.file,
    field: where,
    expected: `a list of ${of}`,
    got: show(value),
    hint: typeof value === "string"
      ? "a list cannot be a string: write it as a JSON array (jsonl) or a Parquet LIST"
      : undefined,
  });
}

/**
 * Token classification: turn a table into records with `words` and `tags` (tag names). Each row
 * needs a non-empty list of words (strings, none empty or holding whitespace) and a list of as
 * many tags, each a name or an integer index into `labels` (as Hugging Face datasets store
 * `ner_tags`); integer tags without `labels` are an error. `text` is the words joined by spaces.
 */
export function selectTokenColumns(table: Table, choice: TokenColumnChoice): RawSource {
  const wordsCol = choice.words_column ?? "tokens";
  const tagsCol = choice.label_column ?? "tags";
  requireColumn(table, wordsCol, "words_column");
  requireColumn(table, tagsCol, "label_column");
  const fail = (message: string, field: string, expected: string, got: string, hint?: string) =>
    new InputError(message, { file: table.file, field, expected, got, hint });
  const records = table.rows.map(({ values, where }) => {
    const rawWords = listCell(table, values[wordsCol], where, wordsCol, "words");
    if (rawWords.length === 0) {
      throw fail("no words", `${where}, column "${wordsCol}"`, "at least one word", "[]");
    }
    const words = rawWords.map((w, k) => {
      const at = `${where}, column "${wordsCol}" word ${k}`;
      if (typeof w !== "string") throw fail("a word must be a string", at, "a string", show(w));
      if (w === "" || /\s/.test(w)) {
        throw fail(
          w === "" ? "empty word" : "a word must not hold whitespace",
          at,
          "a non-empty word without spaces",
          show(w),
          "split the text into words, one word per list item",
        );
      }
      return w;
    });
    const rawTags = listCell(table, values[tagsCol], where, tagsCol, "tags");
    if (rawTags.length !== words.length) {
      throw fail(
        `${rawTags.length} tags for ${words.length} words`,
        `${where}, column "${tagsCol}"`,
        `one tag per word (${words.length})`,
        `${rawTags.length}: ${show(rawTags)}`,
      );
    }
    const tags = rawTags.map((t, k) => {
      const at = `${where}, column "${tagsCol}" tag ${k}`;
      if (typeof t === "string" && t.trim() !== "") return t.trim();
      const i = integer(t);
      if (i === undefined) {
        throw fail("a tag must be a name or an integer index", at, "a string or integer", show(t));
      }
      if (!choice.labels) {
        throw fail(
          "integer tags need a label list",
          at,
          "labels: the tag names, in the order the integers index",
          String(i),
          'set labels (for a Hugging Face dataset: features["ner_tags"].feature.names)',
        );
      }
      if (i < 0 || i >= choice.labels.length) {
        throw fail(
          "tag index out of range",
          at,
          `an index into labels, 0..${choice.labels.length - 1}`,
          String(i),
        );
      }
      return choice.labels[i];
    });
    return { text: words.join(" "), words, tags, where };
  });
  return { file: table.file, records };
}

/** Answers as written: SQuAD's `{ text: [...], answer_start: [...] }` or a list of objects. */
function rawAnswers(
  table: Table,
  value: unknown,
  where: string,
  column: string,
): { text: unknown; start: unknown }[] {
  const isObject = (v: unknown): v is Record<string, unknown> =>
    v !== null && typeof v === "object" && !Array.isArray(v);
  if (isObject(value) && Array.isArray(value.text) && Array.isArray(value.answer_start)) {
    const { text, answer_start } = value as { text: unknown[]; answer_start: unknown[] };
    if (text.length !== answer_start.length) {
      throw new InputError(`${text.length} answer texts for ${answer_start.length} starts`, {
        file: table.file,
        field: `${where}, column "${column}"`,
        expected: "as many answer_start values as texts",
        got: show(value),
      });
    }
    return text.map((t, k) => ({ text: t, start: answer_start[k] }));
  }
  if (Array.isArray(value) && value.every((a) => isObject(a) && "text" in a)) {
    return value.map((a: Record<string, unknown>) => ({ text: a.text, start: a.answer_start }));
  }
  throw new InputError(`column "${column}" must hold SQuAD-style answers`, {
    file: table.file,
    field: `${where}, column "${column}"`,
    expected: '{"text": [...], "answer_start": [...]} or [{"text": ..., "answer_start": ...}]',
    got: show(value),
  });
}

/**
 * The UTF-16 offset of an answer in `context`: `start` itself when the answer is there, else
 * `start` read as a code-point offset (Python's `str` indexing, which SQuAD-style data written
 * from Python uses) when the answer is there — they differ after characters outside the BMP.
 */
function answerOffset(context: string, text: string, start: number): number | undefined {
  if (context.slice(start, start + text.length) === text) return start;
  const cps = Array.from(context);
  if (cps.length === context.length || start > cps.length) return undefined;
  const utf16 = cps.slice(0, start).join("").length;
  return context.slice(utf16, utf16 + text.length) === text ? utf16 : undefined;
}

/**
 * Extractive QA: turn a table into records with the question as `text`, the context as
 * `textPair`, and `answers` (text and UTF-16 start in the context). Every answer must be found
 * at its `answer_start` in the context; a row without answers (SQuAD v2's unanswerable
 * questions) and an empty question or context are errors.
 */
export function selectQaColumns(table: Table, choice: QaColumnChoice): RawSource {
  const qCol = choice.text_column ?? "question";
  const cCol = choice.text_pair_column ?? "context";
  const aCol = choice.answers_column ?? "answers";
  requireColumn(table, qCol, "text_column");
  requireColumn(table, cCol, "text_pair_column");
  requireColumn(table, aCol, "answers_column");
  const records = table.rows.map(({ values, where }) => {
    const fail = (message: string, field: string, expected: string, got: string) =>
      new InputError(message, { file: table.file, field, expected, got });
    const question = cell(table, values[qCol], where, qCol);
    const context = cell(table, values[cCol], where, cCol);
    if (question.trim() === "") {
      throw fail("empty question", `${where}, column "${qCol}"`, "a question", show(question));
    }
    if (context.trim() === "") {
      throw fail("empty context", `${where}, column "${cCol}"`, "a context", show(context));
    }
    const raw = rawAnswers(table, values[aCol], where, aCol);
    if (raw.length === 0) {
      throw new InputError("no answers: unanswerable questions (SQuAD v2) are not supported", {
        file: table.file,
        field: `${where}, column "${aCol}"`,
        expected: "at least one answer span in the context",
        got: "none",
        hint: "drop the rows without answers",
      });
    }
    const answers = raw.map(({ text, start }, k) => {
      const at = `${where}, column "${aCol}" answer ${k}`;
      if (typeof text !== "string" || text === "") {
        throw fail("an answer must be a non-empty string", at, "answer text", show(text));
      }
      const s = integer(start);
      if (s === undefined) {
        throw fail("answer_start must be an integer", at, "a character offset", show(start));
      }
      if (s < 0 || s + text.length > context.length) {
        throw fail(
          `answer start ${s} is outside the context`,
          at,
          `0 ≤ start ≤ ${context.length - text.length} (context of ${context.length} characters)`,
          String(s),
        );
      }
      const offset = answerOffset(context, text, s);
      if (offset === undefined) {
        throw fail(
          `answer ${show(text)} is not at offset ${s} of the context: found ${
            show(context.slice(s, s + text.length))
          }`,
          at,
          `context.slice(${s}, ${s + text.length}) equal to the answer`,
          show(context.slice(s, s + text.length)),
        );
      }
      return { text, start: offset };
    });
    return { text: question, textPair: context, answers, where };
  });
  return { file: table.file, records };
}
