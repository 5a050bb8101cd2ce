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
