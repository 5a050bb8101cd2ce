/**
 * Table readers: CSV (RFC 4180), TSV (GLUE-style, unquoted unless asked), JSONL and Parquet.
 * Each returns a {@link Table} of rows keyed by column name, each row knowing where it came from
 * (`line N` for text formats, `row N` for Parquet, both 1-based and counting the header line).
 * @module
 */

import { parquetReadObjects } from "hyparquet";
import { InputError } from "../errors.ts";
import { decodeUtf8, readBytes, readText } from "./text.ts";

/** One row of a table: values by column name, and its position in the file. */
export interface TableRow {
  /** Values by column name (strings for CSV/TSV; JSON or Parquet values otherwise). */
  values: Record<string, unknown>;
  /** `line N` (text formats) or `row N` (Parquet), for error messages. */
  where: string;
}

/** A table read from one file. */
export interface Table {
  /** The file it was read from. */
  file: string;
  /** Column names in file order (JSONL: in order of first appearance). */
  columns: string[];
  /** The rows, in file order. */
  rows: TableRow[];
}

/** Options of {@link parseDelimited}. */
export interface DelimitedOptions {
  /** Field separator: `,` for CSV, `\t` for TSV. */
  delimiter: string;
  /** Honour RFC 4180 double quotes (CSV: yes; GLUE TSV: no). */
  quote: boolean;
}

/**
 * Parse delimited text with a header row. CRLF and LF line ends are accepted; blank lines are
 * skipped; with `quote`, fields may be wrapped in double quotes and then hold delimiters, line
 * breaks and doubled quotes (`""`). Every row must have as many fields as the header.
 */
export function parseDelimited(text: string, file: string, opts: DelimitedOptions): Table {
  const records = opts.quote
    ? splitQuoted(text.replaceAll("\r\n", "\n"), file, opts.delimiter)
    : splitPlain(text.replaceAll("\r\n", "\n"), opts.delimiter);
  if (records.length === 0) {
    throw new InputError("dataset is empty", {
      file,
      expected: "a header row and at least one data row",
      got: "no rows",
    });
  }
  const [head, ...body] = records;
  const columns = head.cells.map((c) => c.trim());
  const rows = body.map(({ cells, line }) => {
    if (cells.length !== columns.length) {
      throw new InputError("wrong number of fields", {
        file,
        field: `line ${line}`,
        expected: `${columns.length} (${columns.join(", ")})`,
        got: String(cells.length),
        hint: opts.delimiter === "\t" && !opts.quote
          ? "if fields are quoted, set quote: true"
          : undefined,
      });
    }
    const values: Record<string, unknown> = {};
    columns.forEach((c, i) => values[c] = cells[i]);
    return { values, where: `line ${line}` };
  });
  return { file, columns, rows };
}

interface Cells {
  cells: string[];
  line: number;
}

function splitPlain(text: string, delimiter: string): Cells[] {
  const out: Cells[] = [];
  text.split("\n").forEach((l, i) => {
    const line = l.endsWith("\r") ? l.slice(0, -1) : l;
    if (line !== "") out.push({ cells: line.split(delimiter), line: i + 1 });
  });
  return out;
}

function splitQuoted(text: string, file: string, delimiter: string): Cells[] {
  const out: Cells[] = [];
  let cells: string[] = [];
  let field = "";
  let line = 1, rowLine = 1, i = 0;
  const endRow = () => {
    cells.push(field);
    if (!(cells.length === 1 && cells[0] === "")) out.push({ cells, line: rowLine });
    cells = [];
    field = "";
  };
  while (i < text.length) {
    const ch = text[i];
    if (ch === '"' && field === "") {
      const start = line;
      i++;
      for (;;) {
        if (i >= text.length) {
          throw new InputError("unterminated quoted field", {
            file,
            field: `line ${start}`,
            hint: 'close the field with " (a quote inside a field is written "")',
          });
        }
        if (text[i] === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        if (text[i] === "\n") line++;
        field += text[i++];
      }
      const next = text[i];
      if (next !== undefined && next !== delimiter && next !== "\n" && next !== "\r") {
        throw new InputError("text after a closing quote", {
          file,
          field: `line ${line}`,
          expected: "a delimiter or line end",
          got: JSON.stringify(next),
        });
      }
      continue;
    }
    if (ch === delimiter) {
      cells.push(field);
      field = "";
    } else if (ch === "\n") {
      endRow();
      line++;
      rowLine = line;
    } else if (ch !== "\r" || text[i + 1] !== "\n") {
      field += ch;
    }
    i++;
  }
  if (field !== "" || cells.length > 0) endRow();
  return out;
}

/** Read a CSV file (RFC 4180, header row). */
export async function readCsv(file: string): Promise<Table> {
  return parseDelimited(await readText(file), file, { delimiter: ",", quote: true });
}

/** Read a TSV file with a header row; GLUE-style (no quoting) unless `quote` is true. */
export async function readTsv(file: string, quote = false): Promise<Table> {
  return parseDelimited(await readText(file), file, { delimiter: "\t", quote });
}

/** Read a JSON Lines file: one JSON object per non-blank line. */
export async function readJsonl(file: string): Promise<Table> {
  const text = await readText(file);
  const columns = new Set<string>();
  const rows: TableRow[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "") return;
    const where = `line ${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new InputError("invalid JSON", {
        file,
        field: where,
        got: (e as Error).message,
      });
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new InputError("not a JSON object", {
        file,
        field: where,
        expected: 'an object such as {"text": "…", "label": "…"}',
        got: line.length > 40 ? line.slice(0, 40) + "…" : line,
      });
    }
    for (const k of Object.keys(value)) columns.add(k);
    rows.push({ values: value as Record<string, unknown>, where });
  });
  return { file, columns: [...columns], rows };
}

/**
 * Read a Parquet file with hyparquet. Strings are decoded here, strictly, so that invalid UTF-8
 * in a cell is reported with its row and column.
 */
export async function readParquet(file: string): Promise<Table> {
  const bytes = await readBytes(file);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  let objects: Record<string, unknown>[];
  try {
    objects = await parquetReadObjects({
      file: buffer as ArrayBuffer,
      parsers: { stringFromBytes: (b: Uint8Array) => b },
    });
  } catch (e) {
    throw new InputError("not a readable Parquet file", {
      file,
      got: (e as Error).message,
    });
  }
  const columns = new Set<string>();
  const rows = objects.map((obj, i) => {
    const where = `row ${i + 1}`;
    const values: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(obj)) {
      columns.add(k);
      values[k] = decodeCell(v, file, `${where}, column "${k}"`);
    }
    return { values, where };
  });
  return { file, columns: [...columns], rows };
}

/**
 * A Parquet value with its strings decoded: byte strings at any depth of a LIST or STRUCT (the
 * `tokens` list of a token-classification set, SQuAD's `answers.text`) become strings; the path
 * to a bad one (`[2]`, `.text[0]`) is added to `where`.
 */
function decodeCell(v: unknown, file: string, where: string): unknown {
  if (v instanceof Uint8Array) return decodeUtf8(v, file, where);
  if (Array.isArray(v)) return v.map((x, i) => decodeCell(x, file, `${where}[${i}]`));
  if (v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = decodeCell(x, file, `${where}.${k}`);
    return out;
  }
  return v;
}
