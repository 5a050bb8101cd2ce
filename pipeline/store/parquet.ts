/**
 * Crash-safe, streamed Parquet storage for token shards and teacher caches: a *part store*.
 *
 * A store is a directory:
 *
 * ```
 * store.json                    the layout (columns, rows per part, total rows, metadata)
 * part-000000000000.parquet     one Parquet file = one row group, named by its first row
 * part-000000000128.parquet     …written to a temp sibling, fsynced, then renamed (atomic)
 * index.json                    written last by finalize(): parts, sizes, sha-256, schema
 * ```
 *
 * Because a part's name is its first row and a part appears only by an atomic rename, a writer
 * killed at any moment leaves only whole parts (plus temp files that the next open deletes); a
 * rerun skips the finished parts, so no row is written twice or lost. `--shard i/n` writers own
 * the parts whose ordinal (first row / rows per part) is ≡ i mod n, so N processes can fill one
 * directory concurrently; `finalize` runs once afterwards, checks that the parts cover
 * [0, totalRows) exactly once and records each part's sha-256, which `PartReader` verifies
 * before decoding.
 *
 * Column kinds: `int32`, `int64`, `string` (plain Parquet columns) and `float-blob` /
 * `int32-blob` (one little-endian BYTE_ARRAY per row; float blobs stored as F32 or F16).
 * Any Parquet reader (DuckDB, pyarrow, hyparquet) reads `part-*.parquet` directly.
 * @module
 */

import { sha256Hex } from "./hash.ts";
import { parquetMetadata, parquetRead } from "hyparquet";
import { parquetWriteBuffer } from "hyparquet-writer";
import type { ColumnSource } from "hyparquet-writer";
import { join } from "node:path";
import { InputError } from "../errors.ts";
import { writeFileAtomic, writeJsonAtomic } from "./fsutil.ts";

/** The on-disk format version written into store.json and index.json. */
export const STORE_FORMAT = "tinystill-part-store/1";

/** How a column is stored. Blob kinds hold one little-endian array per row. */
export type ColumnKind = "int32" | "int64" | "float-blob" | "int32-blob" | "string";

/** Storage precision of a float blob. Values are always read back as Float32Array. */
export type FloatDType = "F32" | "F16";

/** One column of a store. */
export interface ColumnSpec {
  /** Column name (also the Parquet column name). */
  name: string;
  /** Storage kind. */
  kind: ColumnKind;
  /**
   * Blob kinds only: the per-row element shape, e.g. `[layers, seq, hidden]`. When given, every
   * row must hold exactly its product of elements (and flat input is allowed); when absent, rows
   * may differ in length.
   */
  shape?: number[];
  /** `float-blob` only: storage precision (default `"F32"`). */
  dtype?: FloatDType;
}

/** The layout of a store, fixed when the first writer opens the directory. */
export interface StoreLayout {
  /** Columns, in order. */
  columns: ColumnSpec[];
  /** Rows in every part but the last. */
  rowsPerPart: number;
  /** Total rows, when known up front (required for sharding and `pendingParts`). */
  totalRows?: number;
  /** Free-form JSON metadata (cache key, tokenizer, teacher, …), stored verbatim. */
  metadata?: Record<string, unknown>;
}

/** Which of N writers this is: it owns the parts whose ordinal % count === index. */
export interface ShardSpec {
  /** 0-based shard index. */
  index: number;
  /** Number of shards. */
  count: number;
}

/** Options of `PartWriter.open`. */
export interface PartWriterOptions extends StoreLayout {
  /** Split the parts among several writers (`--shard i/n`). */
  shard?: ShardSpec;
}

/** A half-open row range [start, end). */
export interface RowRange {
  /** First row. */
  start: number;
  /** One past the last row. */
  end: number;
}

/** Values of one column for the rows of one part, as accepted by `PartWriter.writePart`. */
export type ColumnInput =
  | Int32Array
  | BigInt64Array
  | number[]
  | string[]
  | Float32Array
  | Float32Array[]
  | Int32Array[];

/** Decoded values of one column for the rows of one part. */
export type ColumnOutput = Int32Array | BigInt64Array | string[] | Float32Array[] | Int32Array[];

/** One value of one row, as yielded by `PartReader.rows`. */
export type RowValue = number | bigint | string | Float32Array | Int32Array;

/** A decoded part. */
export interface PartData {
  /** Index of the first row of the part in the whole store. */
  firstRow: number;
  /** Rows in the part. */
  rowCount: number;
  /**
   * Column name → values. Blob columns give one array per row; rows of one column share one
   * contiguous buffer (each row is a subarray of it).
   */
  columns: Record<string, ColumnOutput>;
}

/** One part as listed in index.json. */
export interface PartEntry {
  /** File name inside the store directory. */
  file: string;
  /** First row. */
  firstRow: number;
  /** Rows in the part. */
  rowCount: number;
  /** Size of the file in bytes. */
  bytes: number;
  /** Hex sha-256 of the file bytes. */
  sha256: string;
}

/** The contents of index.json. */
export interface StoreIndex {
  /** Always `STORE_FORMAT`. */
  format: string;
  /** Columns, in order. */
  columns: ColumnSpec[];
  /** Rows in every part but the last. */
  rowsPerPart: number;
  /** Total rows over all parts. */
  totalRows: number;
  /** Free-form metadata from the layout. */
  metadata: Record<string, unknown>;
  /** Parts in row order. */
  parts: PartEntry[];
}

/** Parts whose sha-256 matched on a read by this process (path + expected hash). */
const VERIFIED = new Set<string>();

const STORE_JSON = "store.json";
const INDEX_JSON = "index.json";
const PART_RE = /^part-(\d{12})\.parquet$/;
const TEMP_RE = /^\.part-(\d{12})\.parquet\..*\.tmp$/;
const KV_FIRST_ROW = "tinystill.first_row";
const KINDS: ColumnKind[] = ["int32", "int64", "float-blob", "int32-blob", "string"];

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("parquet_store: blobs are stored little-endian; this platform is big-endian");
}

/** The file name of the part that starts at `firstRow`. */
export function partFileName(firstRow: number): string {
  return `part-${String(firstRow).padStart(12, "0")}.parquet`;
}

// ---------------------------------------------------------------------------------------------
// layout validation

function elems(shape: number[] | undefined): number | undefined {
  return shape ? shape.reduce((a, b) => a * b, 1) : undefined;
}

function validateLayout(dir: string, layout: StoreLayout): StoreLayout {
  const file = join(dir, STORE_JSON);
  const bad = (field: string, expected: string, got: unknown) =>
    new InputError("bad store layout", { file, field, expected, got: JSON.stringify(got) });
  if (!Number.isInteger(layout.rowsPerPart) || layout.rowsPerPart < 1) {
    throw bad("rowsPerPart", "an integer >= 1", layout.rowsPerPart);
  }
  if (
    layout.totalRows !== undefined && (!Number.isInteger(layout.totalRows) || layout.totalRows < 0)
  ) {
    throw bad("totalRows", "an integer >= 0", layout.totalRows);
  }
  if (!Array.isArray(layout.columns) || layout.columns.length === 0) {
    throw bad("columns", "a non-empty list of columns", layout.columns);
  }
  const seen = new Set<string>();
  const columns = layout.columns.map((c, i) => {
    const f = `columns[${i}]`;
    if (typeof c.name !== "string" || c.name === "" || seen.has(c.name)) {
      throw bad(`${f}.name`, "a unique non-empty name", c.name);
    }
    seen.add(c.name);
    if (!KINDS.includes(c.kind)) throw bad(`${f}.kind`, KINDS.join(" | "), c.kind);
    const blob = c.kind === "float-blob" || c.kind === "int32-blob";
    if (c.shape !== undefined) {
      if (!blob) throw bad(`${f}.shape`, "no shape on a non-blob column", c.shape);
      if (!Array.isArray(c.shape) || !c.shape.every((d) => Number.isInteger(d) && d >= 0)) {
        throw bad(`${f}.shape`, "a list of integers >= 0", c.shape);
      }
    }
    if (c.dtype !== undefined && (c.kind !== "float-blob" || !["F32", "F16"].includes(c.dtype))) {
      throw bad(`${f}.dtype`, "F32 | F16 on a float-blob column", c.dtype);
    }
    const out: ColumnSpec = { name: c.name, kind: c.kind };
    if (c.shape) out.shape = [...c.shape];
    if (c.kind === "float-blob") out.dtype = c.dtype ?? "F32";
    return out;
  });
  const out: StoreLayout = { columns, rowsPerPart: layout.rowsPerPart };
  if (layout.totalRows !== undefined) out.totalRows = layout.totalRows;
  out.metadata = layout.metadata ?? {};
  return out;
}

async function readJson(path: string): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InputError("not valid JSON", { file: path, got: String(e) }, { cause: e });
  }
}

async function readLayout(dir: string): Promise<StoreLayout | undefined> {
  const raw = await readJson(join(dir, STORE_JSON)) as
    | (StoreLayout & { format?: string })
    | undefined;
  if (raw === undefined) return undefined;
  if (raw.format !== STORE_FORMAT) {
    throw new InputError("unknown store format", {
      file: join(dir, STORE_JSON),
      field: "format",
      expected: STORE_FORMAT,
      got: JSON.stringify(raw.format),
    });
  }
  return validateLayout(dir, raw);
}

// ---------------------------------------------------------------------------------------------
// directory scanning

interface FoundPart {
  file: string;
  firstRow: number;
}

async function listDir(dir: string): Promise<{ parts: FoundPart[]; temps: string[] }> {
  const parts: FoundPart[] = [];
  const temps: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile) continue;
    const m = PART_RE.exec(e.name);
    if (m) parts.push({ file: e.name, firstRow: Number(m[1]) });
    else if (TEMP_RE.test(e.name)) temps.push(e.name);
  }
  parts.sort((a, b) => a.firstRow - b.firstRow);
  return { parts, temps };
}

/** Read the Parquet footer of a part from the end of the file (without reading the data). */
async function readFooter(path: string) {
  const f = await Deno.open(path, { read: true });
  try {
    const size = (await f.stat()).size;
    const readAt = async (pos: number, n: number) => {
      const buf = new Uint8Array(n);
      await f.seek(pos, Deno.SeekMode.Start);
      let off = 0;
      while (off < n) {
        const got = await f.read(buf.subarray(off));
        if (got === null) throw new Error("unexpected end of file");
        off += got;
      }
      return buf;
    };
    if (size < 12) throw new Error(`file is ${size} bytes, too short for Parquet`);
    const head = await readAt(0, 4);
    if (new TextDecoder().decode(head) !== "PAR1") throw new Error("no PAR1 magic at the start");
    const tail = await readAt(size - 8, 8);
    const len = new DataView(tail.buffer).getUint32(0, true);
    if (len + 12 > size) throw new Error(`footer length ${len} exceeds the file size ${size}`);
    return { size, metadata: parquetMetadata(await readAt(size - 8 - len, len + 8)) };
  } finally {
    f.close();
  }
}

function expectedRows(layout: StoreLayout, firstRow: number, total?: number): number | undefined {
  const t = total ?? layout.totalRows;
  return t === undefined ? undefined : Math.min(layout.rowsPerPart, t - firstRow);
}

/** Check a part's footer against the layout; returns its row count. Throws an InputError. */
async function checkPartFooter(
  dir: string,
  layout: StoreLayout,
  part: FoundPart,
  totalRows?: number,
): Promise<{ rowCount: number; size: number }> {
  const file = join(dir, part.file);
  const bad = (message: string, details: { field?: string; expected?: string; got?: string }) =>
    new InputError(message, {
      file,
      ...details,
      hint: "delete this part and rerun the stage to rewrite it",
    });
  let footer;
  try {
    footer = await readFooter(file);
  } catch (e) {
    throw bad("not a readable Parquet part", { got: String(e) });
  }
  const md = footer.metadata;
  const rowCount = Number(md.num_rows);
  const names = md.schema.slice(1).map((s) => s.name).join(",");
  const want = layout.columns.map((c) => c.name).join(",");
  if (names !== want) throw bad("columns differ from store.json", { expected: want, got: names });
  const kv = md.key_value_metadata?.find((k) => k.key === KV_FIRST_ROW)?.value;
  if (kv !== String(part.firstRow)) {
    throw bad("first row differs from the file name", {
      field: KV_FIRST_ROW,
      expected: String(part.firstRow),
      got: String(kv),
    });
  }
  if (part.firstRow % layout.rowsPerPart !== 0) {
    throw bad("part does not start on a part boundary", {
      expected: `a multiple of rowsPerPart=${layout.rowsPerPart}`,
      got: String(part.firstRow),
    });
  }
  const want2 = expectedRows(layout, part.firstRow, totalRows);
  const okCount = want2 === undefined
    ? rowCount >= 1 && rowCount <= layout.rowsPerPart
    : rowCount === want2;
  if (!okCount || md.row_groups.length !== 1) {
    throw bad("unexpected row count", {
      expected: `${want2 ?? `1..${layout.rowsPerPart}`} rows in 1 row group`,
      got: `${rowCount} rows in ${md.row_groups.length} row groups`,
    });
  }
  return { rowCount, size: footer.size };
}

function mergeRanges(ranges: RowRange[]): RowRange[] {
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const out: RowRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out;
}

function rangeText(r: RowRange): string {
  return `rows ${r.start}..${r.end - 1}`;
}

// ---------------------------------------------------------------------------------------------
// encoding

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function encodeColumn(
  spec: ColumnSpec,
  values: ColumnInput | undefined,
  rows: number,
  where: { file: string },
): ColumnSource {
  const field = spec.name;
  const bad = (expected: string, got: string) =>
    new InputError("bad column values", { ...where, field, expected, got });
  if (values === undefined) throw bad(`values for column ${spec.name}`, "nothing");
  const len = (values as { length: number }).length;
  switch (spec.kind) {
    case "int32": {
      if (len !== rows) throw bad(`${rows} values`, `${len}`);
      const data = values instanceof Int32Array ? values : Int32Array.from(values as number[]);
      return { name: field, data, type: "INT32", nullable: false };
    }
    case "int64": {
      if (len !== rows) throw bad(`${rows} values`, `${len}`);
      const data = values instanceof BigInt64Array
        ? values
        : BigInt64Array.from(values as number[], (v) => BigInt(v));
      return { name: field, data, type: "INT64", nullable: false };
    }
    case "string": {
      if (len !== rows || !(values as unknown[]).every((v) => typeof v === "string")) {
        throw bad(`${rows} strings`, `${len} values`);
      }
      return { name: field, data: values as string[], type: "STRING", nullable: false };
    }
    case "float-blob":
    case "int32-blob": {
      const isFloat = spec.kind === "float-blob";
      const Ctor = isFloat ? Float32Array : Int32Array;
      const n = elems(spec.shape);
      let perRow: (Float32Array | Int32Array)[];
      if (values instanceof Ctor) {
        if (n === undefined) throw bad("one array per row (no shape for flat input)", "flat");
        if (len !== rows * n) throw bad(`${rows}×${n} flat values`, `${len}`);
        perRow = Array.from({ length: rows }, (_, r) => values.subarray(r * n, (r + 1) * n));
      } else if (Array.isArray(values)) {
        if (len !== rows) throw bad(`${rows} row arrays`, `${len}`);
        perRow = values as (Float32Array | Int32Array)[];
        for (let r = 0; r < rows; r++) {
          const v = perRow[r];
          if (!(v instanceof Ctor)) throw bad(`${Ctor.name} rows`, `${v?.constructor?.name}`);
          if (n !== undefined && v.length !== n) {
            throw bad(`${n} elements per row (shape ${JSON.stringify(spec.shape)})`, `${v.length}`);
          }
        }
      } else {
        throw bad(`${Ctor.name} per row or a flat ${Ctor.name}`, `${values?.constructor?.name}`);
      }
      const f16 = isFloat && spec.dtype === "F16";
      const data = perRow.map((v) => bytesOf(f16 ? new Float16Array(v as Float32Array) : v));
      return {
        name: field,
        data,
        type: "BYTE_ARRAY",
        nullable: false,
        statistics: false,
        encoding: "PLAIN", // no dictionary attempt: blobs rarely repeat (2–4× faster writes)
        codec: isFloat ? "UNCOMPRESSED" : "SNAPPY",
      };
    }
  }
}

function decodeColumn(spec: ColumnSpec, data: unknown, rows: number): ColumnOutput {
  switch (spec.kind) {
    case "int32":
      return data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
    case "int64":
      return data instanceof BigInt64Array ? data : BigInt64Array.from(data as ArrayLike<bigint>);
    case "string": {
      const dec = new TextDecoder();
      return Array.from(
        data as ArrayLike<string | Uint8Array>,
        (v) => typeof v === "string" ? v : dec.decode(v),
      );
    }
    case "float-blob":
    case "int32-blob": {
      const blobs = data as Uint8Array[];
      const width = spec.kind === "float-blob" && spec.dtype === "F16" ? 2 : 4;
      let total = 0;
      for (const b of blobs) total += b.byteLength / width;
      // Copy the bytes into one aligned buffer (hyparquet's views may be unaligned or shared).
      const raw = new Uint8Array(total * width);
      const offsets = new Array<number>(rows + 1);
      let off = 0;
      for (let r = 0; r < rows; r++) {
        offsets[r] = off / width;
        raw.set(blobs[r], off);
        off += blobs[r].byteLength;
      }
      offsets[rows] = total;
      let flat: Float32Array | Int32Array;
      if (spec.kind === "int32-blob") flat = new Int32Array(raw.buffer);
      else if (width === 2) flat = new Float32Array(new Float16Array(raw.buffer));
      else flat = new Float32Array(raw.buffer);
      const out = new Array(rows);
      for (let r = 0; r < rows; r++) out[r] = flat.subarray(offsets[r], offsets[r + 1]);
      return out as Float32Array[] | Int32Array[];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// writer

/**
 * Writes the parts of one store (or of one shard of it). Open it, skip the parts that
 * `isDone` reports, write the others with `writePart`, then call `finalize` once after all
 * writers have finished.
 */
export class PartWriter {
  /** The store directory. */
  readonly dir: string;
  /** The layout (from store.json when the store already existed). */
  readonly layout: StoreLayout;
  /** This writer's shard (`{index: 0, count: 1}` when unsharded). */
  readonly shard: ShardSpec;
  #done = new Map<number, number>(); // firstRow → rowCount
  #indexRemoved = false;

  private constructor(dir: string, layout: StoreLayout, shard: ShardSpec) {
    this.dir = dir;
    this.layout = layout;
    this.shard = shard;
  }

  /**
   * Open (or create) the store in `dir`. If store.json exists its layout must equal the given
   * one (an InputError names the first differing field). Deletes this shard's orphaned temp
   * files and checks every finished part's footer.
   */
  static async open(dir: string, options: PartWriterOptions): Promise<PartWriter> {
    const shard = options.shard ?? { index: 0, count: 1 };
    if (
      !Number.isInteger(shard.index) || !Number.isInteger(shard.count) || shard.count < 1 ||
      shard.index < 0 || shard.index >= shard.count
    ) {
      throw new InputError("bad shard", {
        file: dir,
        field: "shard",
        expected: "0 <= index < count",
        got: JSON.stringify(shard),
      });
    }
    const layout = validateLayout(dir, options);
    if (shard.count > 1 && layout.totalRows === undefined) {
      throw new InputError("sharded writing needs the total row count", {
        file: dir,
        field: "totalRows",
        expected: "an integer",
        got: "undefined",
      });
    }
    await Deno.mkdir(dir, { recursive: true });
    const existing = await readLayout(dir);
    if (existing) {
      const a = JSON.stringify({ format: STORE_FORMAT, ...existing });
      const b = JSON.stringify({ format: STORE_FORMAT, ...layout });
      if (a !== b) {
        const keys = ["columns", "rowsPerPart", "totalRows", "metadata"] as const;
        const k = keys.find((k) => JSON.stringify(existing[k]) !== JSON.stringify(layout[k]));
        throw new InputError("the store was started with a different layout", {
          file: join(dir, STORE_JSON),
          field: k,
          expected: JSON.stringify(existing[k!]),
          got: JSON.stringify(layout[k!]),
          hint: "use a new output directory, or delete this one to start over",
        });
      }
    } else {
      await writeJsonAtomic(join(dir, STORE_JSON), { format: STORE_FORMAT, ...layout });
    }
    const w = new PartWriter(dir, layout, shard);
    await w.#scan();
    return w;
  }

  async #scan(): Promise<void> {
    const { parts, temps } = await listDir(this.dir);
    for (const t of temps) {
      const first = Number(TEMP_RE.exec(t)![1]);
      if (this.#owns(first)) await Deno.remove(join(this.dir, t)).catch(() => {});
    }
    this.#done.clear();
    for (const p of parts) {
      const { rowCount } = await checkPartFooter(this.dir, this.layout, p);
      this.#done.set(p.firstRow, rowCount);
    }
  }

  #owns(firstRow: number): boolean {
    return Math.floor(firstRow / this.layout.rowsPerPart) % this.shard.count === this.shard.index;
  }

  /** The row ranges already stored (by any shard), merged and sorted. */
  completedRows(): RowRange[] {
    return mergeRanges(
      [...this.#done].map(([start, n]) => ({ start, end: start + n })),
    );
  }

  /** Whether the part starting at `firstRow` is already stored. */
  isDone(firstRow: number): boolean {
    return this.#done.has(firstRow);
  }

  /** The parts this shard still has to write (needs `totalRows`). */
  pendingParts(): RowRange[] {
    const total = this.layout.totalRows;
    if (total === undefined) {
      throw new InputError("pendingParts needs the total row count", {
        file: this.dir,
        field: "totalRows",
        expected: "an integer",
        got: "undefined",
      });
    }
    const out: RowRange[] = [];
    for (let s = 0; s < total; s += this.layout.rowsPerPart) {
      if (this.#owns(s) && !this.#done.has(s)) {
        out.push({ start: s, end: Math.min(total, s + this.layout.rowsPerPart) });
      }
    }
    return out;
  }

  /**
   * Write the part that starts at `firstRow` (a multiple of rowsPerPart owned by this shard).
   * `columns` maps every column name to its values for these rows: int32 → Int32Array or
   * number[]; int64 → BigInt64Array or number[]; string → string[]; float-blob → one
   * Float32Array per row, or one flat Float32Array (rows × shape elements); int32-blob → one
   * Int32Array per row, or a flat Int32Array. The part replaces any earlier one atomically.
   */
  async writePart(firstRow: number, columns: Record<string, ColumnInput>): Promise<PartEntry> {
    const file = join(this.dir, partFileName(firstRow));
    const { rowsPerPart } = this.layout;
    if (!Number.isInteger(firstRow) || firstRow < 0 || firstRow % rowsPerPart !== 0) {
      throw new InputError("a part must start on a part boundary", {
        file,
        field: "firstRow",
        expected: `a multiple of rowsPerPart=${rowsPerPart}`,
        got: String(firstRow),
      });
    }
    if (!this.#owns(firstRow)) {
      throw new InputError("part belongs to another shard", {
        file,
        field: "shard",
        expected: `part ordinal % ${this.shard.count} === ${this.shard.index}`,
        got: `ordinal ${firstRow / rowsPerPart}`,
      });
    }
    const extra = Object.keys(columns).filter((k) =>
      !this.layout.columns.some((c) => c.name === k)
    );
    if (extra.length) {
      throw new InputError("unknown columns", {
        file,
        field: extra.join(", "),
        expected: this.layout.columns.map((c) => c.name).join(", "),
        got: Object.keys(columns).join(", "),
      });
    }
    const first = this.layout.columns[0];
    const firstVals = columns[first.name] as { length: number } | undefined;
    let rows = firstVals?.length ?? 0;
    if (firstVals && !Array.isArray(firstVals) && first.kind.endsWith("-blob")) {
      rows = firstVals.length / (elems(first.shape) ?? 1);
    }
    const want = expectedRows(this.layout, firstRow);
    if (rows < 1 || rows > rowsPerPart || (want !== undefined && rows !== want)) {
      throw new InputError("wrong number of rows in part", {
        file,
        field: first.name,
        expected: want !== undefined ? `${want} rows` : `1..${rowsPerPart} rows`,
        got: `${rows} rows`,
      });
    }
    const columnData = this.layout.columns.map((c) =>
      encodeColumn(c, columns[c.name], rows, { file })
    );
    const buf = new Uint8Array(parquetWriteBuffer({
      columnData,
      rowGroupSize: rows,
      kvMetadata: [{ key: KV_FIRST_ROW, value: String(firstRow) }],
      createdBy: "tinystill parquet_store",
    }));
    if (!this.#indexRemoved) {
      await Deno.remove(join(this.dir, INDEX_JSON)).catch(() => {}); // the index is now stale
      this.#indexRemoved = true;
    }
    await writeFileAtomic(file, buf);
    this.#done.set(firstRow, rows);
    return {
      file: partFileName(firstRow),
      firstRow,
      rowCount: rows,
      bytes: buf.byteLength,
      sha256: await sha256Hex(buf),
    };
  }
}

/**
 * Check that the parts in `dir` cover [0, totalRows) exactly once, hash every part and write
 * index.json (atomically). Run once, after all writers are done. `totalRows` defaults to the
 * layout's; without either, the parts must be contiguous from row 0 and the last one may be
 * short. Throws an InputError naming the missing row ranges (and their part files).
 */
export async function finalize(dir: string, options: { totalRows?: number } = {}): Promise<
  StoreIndex
> {
  const layout = await readLayout(dir);
  if (!layout) {
    throw new InputError("not a part store (no store.json)", {
      file: dir,
      hint: "run the stage that writes this store first",
    });
  }
  const { parts, temps } = await listDir(dir);
  if (temps.length) {
    throw new InputError("unfinished part writes present", {
      file: join(dir, temps[0]),
      expected: "no temp files (all writers finished)",
      got: `${temps.length} temp files`,
      hint: "rerun the writers to finish (they remove stale temp files), then finalize",
    });
  }
  let total = options.totalRows ?? layout.totalRows;
  const entries: PartEntry[] = [];
  for (const p of parts) {
    const { rowCount } = await checkPartFooter(dir, layout, p, total);
    const bytes = await Deno.readFile(join(dir, p.file));
    entries.push({
      file: p.file,
      firstRow: p.firstRow,
      rowCount,
      bytes: bytes.byteLength,
      sha256: await sha256Hex(bytes),
    });
  }
  if (total === undefined) {
    const last = entries[entries.length - 1];
    total = last ? last.firstRow + last.rowCount : 0;
    const short = entries.find((e, i) => i < entries.length - 1 && e.rowCount < layout.rowsPerPart);
    if (short) {
      throw new InputError("a short part that is not the last one", {
        file: join(dir, short.file),
        expected: `${layout.rowsPerPart} rows`,
        got: `${short.rowCount} rows`,
      });
    }
  }
  const missing: RowRange[] = [];
  let at = 0;
  for (const e of entries) {
    if (e.firstRow > at) missing.push({ start: at, end: e.firstRow });
    at = Math.max(at, e.firstRow + e.rowCount);
  }
  if (at < total) missing.push({ start: at, end: total });
  if (at > total) {
    throw new InputError("parts extend past the total row count", {
      file: dir,
      field: "totalRows",
      expected: String(total),
      got: `parts up to row ${at - 1}`,
    });
  }
  if (missing.length) {
    const list = missing.map((r) => {
      const files: string[] = [];
      for (let s = r.start; s < r.end; s += layout.rowsPerPart) files.push(partFileName(s));
      const shown = files.length > 3 ? `${files.slice(0, 3).join(", ")}, …` : files.join(", ");
      return `${rangeText(r)} (${shown})`;
    });
    throw new InputError(`missing ${list.join("; ")}`, {
      file: dir,
      expected: `parts covering rows 0..${total - 1}`,
      got: `${entries.length} parts`,
      hint: "rerun the writers (every shard) to write the missing parts, then finalize",
    });
  }
  const index: StoreIndex = {
    format: STORE_FORMAT,
    columns: layout.columns,
    rowsPerPart: layout.rowsPerPart,
    totalRows: total,
    metadata: layout.metadata ?? {},
    parts: entries,
  };
  await writeJsonAtomic(join(dir, INDEX_JSON), index);
  return index;
}

// ---------------------------------------------------------------------------------------------
// reader

/** Reads a finalized store part by part, verifying each part's sha-256 before decoding it. */
export class PartReader {
  /** The store directory. */
  readonly dir: string;
  /** The parsed index.json. */
  readonly index: StoreIndex;

  private constructor(dir: string, index: StoreIndex) {
    this.dir = dir;
    this.index = index;
  }

  /** Open a finalized store (index.json must exist). */
  static async open(dir: string): Promise<PartReader> {
    const file = join(dir, INDEX_JSON);
    const index = await readJson(file) as StoreIndex | undefined;
    if (index === undefined) {
      throw new InputError("store is not finalized (no index.json)", {
        file: dir,
        hint: "run the stage to completion (it calls finalize) before reading",
      });
    }
    if (index.format !== STORE_FORMAT || !Array.isArray(index.parts)) {
      throw new InputError("unknown index format", {
        file,
        field: "format",
        expected: STORE_FORMAT,
        got: JSON.stringify(index.format),
      });
    }
    validateLayout(dir, index);
    return new PartReader(dir, index);
  }

  /** The columns of the store. */
  get columns(): ColumnSpec[] {
    return this.index.columns;
  }

  /** Total number of rows. */
  get totalRows(): number {
    return this.index.totalRows;
  }

  /** Number of parts. */
  get partCount(): number {
    return this.index.parts.length;
  }

  /** The free-form metadata of the store. */
  get metadata(): Record<string, unknown> {
    return this.index.metadata;
  }

  /**
   * Read, verify and decode part `i` (0-based, in row order). `columns` limits the decoded
   * columns (the whole file is still hashed). Throws an InputError naming the part file on a
   * size or checksum mismatch.
   */
  async readPart(i: number, columns?: string[]): Promise<PartData> {
    const entry = this.index.parts[i];
    if (!entry) {
      throw new InputError("no such part", {
        file: this.dir,
        expected: `0..${this.partCount - 1}`,
        got: String(i),
      });
    }
    const file = join(this.dir, entry.file);
    const specs = columns
      ? columns.map((name) => {
        const s = this.columns.find((c) => c.name === name);
        if (!s) {
          throw new InputError("unknown column", {
            file: this.dir,
            field: name,
            expected: this.columns.map((c) => c.name).join(", "),
          });
        }
        return s;
      })
      : this.columns;
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(file);
    } catch (e) {
      throw new InputError("part file missing or unreadable", {
        file,
        got: String(e),
        hint: "the store is incomplete: rerun the stage that writes it",
      }, { cause: e });
    }
    // Each part is hashed on its first read in this process (an epoch loop reads it again).
    const key = `${file}\n${entry.sha256}`;
    const hash = VERIFIED.has(key) && bytes.byteLength === entry.bytes
      ? entry.sha256
      : await sha256Hex(bytes);
    if (hash === entry.sha256) VERIFIED.add(key);
    if (bytes.byteLength !== entry.bytes || hash !== entry.sha256) {
      throw new InputError("checksum mismatch: the part is corrupted", {
        file,
        expected: `${entry.bytes} bytes, sha-256 ${entry.sha256}`,
        got: `${bytes.byteLength} bytes, sha-256 ${hash}`,
        hint: "recompute it (rerun the stage after deleting this part and index.json) or delete",
      });
    }
    const buffer = bytes.buffer as ArrayBuffer;
    const chunks = new Map<string, { start: number; data: unknown }[]>();
    try {
      const metadata = parquetMetadata(buffer);
      await parquetRead({
        file: buffer,
        metadata,
        columns: specs.map((s) => s.name),
        utf8: false,
        onChunk: (c) => {
          const list = chunks.get(c.columnName) ?? [];
          list.push({ start: c.rowStart, data: c.columnData });
          chunks.set(c.columnName, list);
        },
      });
    } catch (e) {
      throw new InputError("cannot decode part", { file, got: String(e) }, { cause: e });
    }
    const out: Record<string, ColumnOutput> = {};
    for (const s of specs) {
      const list = (chunks.get(s.name) ?? []).sort((a, b) => a.start - b.start);
      let data: unknown = list[0]?.data ?? [];
      if (list.length > 1) data = list.flatMap((c) => Array.from(c.data as ArrayLike<unknown>));
      if ((data as ArrayLike<unknown>).length !== entry.rowCount) {
        throw new InputError("column has the wrong number of rows", {
          file,
          field: s.name,
          expected: String(entry.rowCount),
          got: String((data as ArrayLike<unknown>).length),
        });
      }
      out[s.name] = decodeColumn(s, data, entry.rowCount);
    }
    return { firstRow: entry.firstRow, rowCount: entry.rowCount, columns: out };
  }

  /** Every part in row order (one decoded part in memory at a time). */
  async *parts(columns?: string[]): AsyncGenerator<PartData> {
    for (let i = 0; i < this.partCount; i++) yield await this.readPart(i, columns);
  }

  /** Every row in order, as `{row, values}` with one value per column. */
  async *rows(
    columns?: string[],
  ): AsyncGenerator<{ row: number; values: Record<string, RowValue> }> {
    for await (const p of this.parts(columns)) {
      const names = Object.keys(p.columns);
      for (let r = 0; r < p.rowCount; r++) {
        const values: Record<string, RowValue> = {};
        for (const n of names) {
          const col = p.columns[n];
          values[n] = col instanceof Int32Array ? col[r] : col[r] as RowValue;
        }
        yield { row: p.firstRow + r, values };
      }
    }
  }
}
