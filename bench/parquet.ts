/**
 * `deno task bench:parquet [--rows N] [--floats F] [--rows-per-part R] [--repeat K]`: why the
 * teacher cache is written with `hyparquet-writer` and not `parquetjs-lite`, measured in one run.
 *
 * Every writer stores the same float32 blob column (one little-endian BYTE_ARRAY per row, as the
 * cache's `float-blob` columns) of the same rows — by default 1,024 rows of 32,768 floats
 * (128 KiB each, 134 MB in all) — as one Parquet file per `rowsPerPart` rows (one row group each,
 * like the cache's parts), and then reads every file back into Float32Arrays:
 *
 * - `hyparquet-writer` / `hyparquet` with the options the cache uses (PLAIN, uncompressed, no
 *   statistics), plain file writes;
 * - tinystill's part store ({@link measureThroughput}: the same writer plus
 *   sha-256, fsync and atomic rename on write, and sha-256 verification on read);
 * - `parquetjs-lite` with its defaults (min/max statistics on every column), and again with
 *   `statistics: false` and PLAIN / uncompressed like hyparquet-writer.
 *
 * It then prints whether each library reads the other's files (and a tinystill part), and checks
 * every value read against what was written (outside the timed region). Figures are payload MB/s
 * (1e6 bytes of float32 per second), the best of `--repeat` round trips, and the ratio to
 * hyparquet-writer. On a small shared VM they swing by 2× or more between runs (fresh-memory page
 * faults dominate the reads); the ratios are what to compare.
 * @module
 */

import { parquetMetadata, parquetRead } from "hyparquet";
import { parquetWriteBuffer } from "hyparquet-writer";
// @ts-types="./parquetjs_lite.d.ts"
import parquetjs from "parquetjs-lite";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import { finalize, type FloatDType, PartReader, PartWriter } from "../pipeline/store/parquet.ts";

/** Result of `measureThroughput`. */
export interface Throughput {
  /** Storage precision measured. */
  dtype: FloatDType;
  /** Float32 payload written and read, in MB (1e6 bytes), before F16 halving. */
  payloadMB: number;
  /** Bytes on disk over all parts, in MB. */
  fileMB: number;
  /** Payload MB/s of `writePart` (encode + hash + atomic write), finalize excluded. */
  writeMBps: number;
  /** Payload MB/s of `finalize` (footer checks + hashing every part). */
  finalizeMBps: number;
  /** Payload MB/s of reading every part (verify sha-256 + decode to Float32Array). */
  readMBps: number;
}

/**
 * Measure write / finalize / read throughput of float blobs: `payloadMB` of Float32 data in rows
 * of `rowFloats` floats, `rowsPerPart` rows per part, stored as `dtype`. Uses (and empties) a
 * fresh temp directory unless `dir` is given.
 */
export async function measureThroughput(options: {
  payloadMB?: number;
  dtype?: FloatDType;
  rowFloats?: number;
  rowsPerPart?: number;
  dir?: string;
} = {}): Promise<Throughput> {
  const dtype = options.dtype ?? "F32";
  const rowFloats = options.rowFloats ?? 128 * 312;
  const rowsPerPart = options.rowsPerPart ?? 32;
  const totalRows = Math.max(1, Math.round((options.payloadMB ?? 100) * 1e6 / (rowFloats * 4)));
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "tinystill_pq_bench_" });
  try {
    const flat = new Float32Array(rowsPerPart * rowFloats);
    for (let i = 0; i < flat.length; i++) flat[i] = Math.sin(i * 0.37) * 3;
    const w = await PartWriter.open(dir, {
      columns: [{ name: "label", kind: "int32" }, {
        name: "x",
        kind: "float-blob",
        shape: [rowFloats],
        dtype,
      }],
      rowsPerPart,
      totalRows,
    });
    let t = performance.now();
    for (const p of w.pendingParts()) {
      const n = p.end - p.start;
      await w.writePart(p.start, {
        label: new Int32Array(n),
        x: flat.subarray(0, n * rowFloats),
      });
    }
    const writeS = (performance.now() - t) / 1e3;
    t = performance.now();
    const index = await finalize(dir);
    const finS = (performance.now() - t) / 1e3;
    t = performance.now();
    const reader = await PartReader.open(dir);
    let floats = 0;
    for await (const p of reader.parts()) {
      for (const row of p.columns.x as Float32Array[]) floats += row.length;
    }
    const readS = (performance.now() - t) / 1e3;
    const payloadMB = totalRows * rowFloats * 4 / 1e6;
    if (floats !== totalRows * rowFloats) throw new Error("measureThroughput: read lost values");
    return {
      dtype,
      payloadMB,
      fileMB: index.parts.reduce((a, p) => a + p.bytes, 0) / 1e6,
      writeMBps: payloadMB / writeS,
      finalizeMBps: payloadMB / finS,
      readMBps: payloadMB / readS,
    };
  } finally {
    if (!options.dir) await Deno.remove(dir, { recursive: true });
  }
}

interface Options {
  rows: number;
  floats: number;
  rowsPerPart: number;
  /** Round trips per writer; the best write and the best read are reported. */
  repeat: number;
}

function parseOptions(args: string[]): Options {
  const num = (name: string, dflt: number) => {
    const i = args.indexOf(`--${name}`);
    if (i < 0) return dflt;
    const v = Number(args[i + 1]);
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} needs a positive integer`);
    return v;
  };
  return {
    rows: num("rows", 1024),
    floats: num("floats", 32768),
    rowsPerPart: num("rows-per-part", 64),
    repeat: num("repeat", 3),
  };
}

/** `count` distinct rows of `floats` values; row r of the data set is `pool[r % count]`. */
function makePool(count: number, floats: number): Float32Array[] {
  return Array.from({ length: count }, (_, r) => {
    const row = new Float32Array(floats);
    for (let i = 0; i < floats; i++) row[i] = Math.sin((r * floats + i) * 0.37) * 3;
    return row;
  });
}

/** An aligned Float32Array copy of little-endian float32 bytes (what the cache reader does). */
function toFloats(bytes: Uint8Array): Float32Array {
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new Float32Array(copy.buffer);
}

function bytesOf(row: Float32Array): Uint8Array {
  return new Uint8Array(row.buffer, row.byteOffset, row.byteLength);
}

function same(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Check that `got` holds rows [first, first + got.length) of the data set. */
function checkRows(got: Float32Array[], first: number, pool: Float32Array[], where: string) {
  for (let r = 0; r < got.length; r++) {
    if (!same(got[r], pool[(first + r) % pool.length])) {
      throw new Error(`${where}: row ${first + r} read back differs from what was written`);
    }
  }
}

function partRanges(o: Options): { first: number; n: number; file: string }[] {
  const out = [];
  for (let first = 0; first < o.rows; first += o.rowsPerPart) {
    out.push({
      first,
      n: Math.min(o.rowsPerPart, o.rows - first),
      file: `part-${String(first).padStart(9, "0")}.parquet`,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// hyparquet-writer / hyparquet

function hyparquetBuffer(rows: Float32Array[]): Uint8Array {
  return new Uint8Array(parquetWriteBuffer({
    columnData: [{
      name: "x",
      data: rows.map(bytesOf),
      type: "BYTE_ARRAY",
      nullable: false,
      statistics: false,
      encoding: "PLAIN",
      codec: "UNCOMPRESSED",
    }],
    rowGroupSize: rows.length,
  }));
}

async function hyparquetWrite(dir: string, o: Options, pool: Float32Array[]): Promise<void> {
  for (const p of partRanges(o)) {
    const rows = Array.from({ length: p.n }, (_, r) => pool[(p.first + r) % pool.length]);
    await Deno.writeFile(join(dir, p.file), hyparquetBuffer(rows));
  }
}

/** Every row of column `column` of one Parquet file, read with hyparquet. */
async function hyparquetReadFile(path: string, column = "x"): Promise<Float32Array[]> {
  const bytes = await Deno.readFile(path);
  const buffer = bytes.buffer as ArrayBuffer;
  const chunks: { start: number; data: ArrayLike<unknown> }[] = [];
  await parquetRead({
    file: buffer,
    metadata: parquetMetadata(buffer),
    columns: [column],
    utf8: false,
    onChunk: (c) => chunks.push({ start: c.rowStart, data: c.columnData }),
  });
  chunks.sort((a, b) => a.start - b.start);
  return chunks.flatMap((c) => Array.from(c.data as ArrayLike<Uint8Array>, toFloats));
}

// ---------------------------------------------------------------------------------------------
// parquetjs-lite

function parquetjsSchema(lean: boolean): parquetjs.ParquetSchema {
  return new parquetjs.ParquetSchema({
    x: lean
      ? { type: "BYTE_ARRAY", statistics: false, encoding: "PLAIN", compression: "UNCOMPRESSED" }
      : { type: "BYTE_ARRAY" },
  });
}

async function parquetjsWrite(
  dir: string,
  o: Options,
  pool: Float32Array[],
  lean: boolean,
): Promise<void> {
  const schema = parquetjsSchema(lean);
  for (const p of partRanges(o)) {
    const w = await parquetjs.ParquetWriter.openFile(schema, join(dir, p.file), {
      rowGroupSize: p.n,
    });
    for (let r = 0; r < p.n; r++) {
      const row = pool[(p.first + r) % pool.length];
      await w.appendRow({ x: Buffer.from(row.buffer, row.byteOffset, row.byteLength) });
    }
    await w.close();
  }
}

/** Every row of column `column` of one Parquet file, read with parquetjs-lite. */
async function parquetjsReadFile(path: string, column = "x"): Promise<Float32Array[]> {
  const reader = await parquetjs.ParquetReader.openFile(path);
  try {
    const cursor = reader.getCursor([column]);
    const out: Float32Array[] = [];
    for (let rec = await cursor.next(); rec; rec = await cursor.next()) {
      out.push(toFloats(rec[column] as Uint8Array));
    }
    return out;
  } finally {
    await reader.close();
  }
}

/**
 * Read every part of the data set with `reader` and check it against what was written; returns
 * the seconds spent reading (the check is not timed).
 */
async function readAll(
  name: string,
  reader: (path: string) => Promise<Float32Array[]>,
  dir: string,
  o: Options,
  pool: Float32Array[],
): Promise<number> {
  let seconds = 0;
  for (const p of partRanges(o)) {
    const t0 = performance.now();
    const rows = await reader(join(dir, p.file));
    seconds += (performance.now() - t0) / 1e3;
    if (rows.length !== p.n) throw new Error(`${name}: ${p.file} has ${rows.length} rows`);
    checkRows(rows, p.first, pool, name);
  }
  return seconds;
}

// ---------------------------------------------------------------------------------------------

interface Row {
  name: string;
  writeMBps?: number;
  readMBps?: number;
  error?: string;
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1e3;
}

/**
 * Write then read the data set with one library in a fresh directory, `o.repeat` times after an
 * untimed warm-up round trip of one part (so the JIT has seen both paths); the best write and the
 * best read count (the run least disturbed by the rest of the machine).
 */
async function measureLib(
  name: string,
  o: Options,
  pool: Float32Array[],
  write: (dir: string, o: Options) => Promise<void>,
  reader: (path: string) => Promise<Float32Array[]>,
): Promise<Row> {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_pq_cmp_" });
  try {
    const warm = { ...o, rows: Math.min(o.rows, o.rowsPerPart) };
    await write(dir, warm);
    await readAll(name, reader, dir, warm, pool);
    const payloadMB = (o.rows * o.floats * 4) / 1e6;
    let w = Infinity, r = Infinity;
    for (let k = 0; k < o.repeat; k++) {
      for (const e of Deno.readDirSync(dir)) await Deno.remove(join(dir, e.name));
      w = Math.min(w, await timed(() => write(dir, o)));
      r = Math.min(r, await readAll(name, reader, dir, o, pool));
    }
    return { name, writeMBps: payloadMB / w, readMBps: payloadMB / r };
  } catch (e) {
    return { name, error: String((e as Error)?.message ?? e).split("\n")[0] };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Try reading one file with a reader; the outcome in words. */
async function tryRead(
  reader: (path: string, column: string) => Promise<Float32Array[]>,
  path: string,
  column: string,
  want: Float32Array[],
): Promise<string> {
  try {
    const rows = await reader(path, column);
    if (rows.length !== want.length) return `NO: ${rows.length} rows instead of ${want.length}`;
    for (let r = 0; r < rows.length; r++) {
      if (!same(rows[r], want[r])) return `NO: row ${r} differs from what was written`;
    }
    return `yes (${rows.length} rows, values identical)`;
  } catch (e) {
    const msg = typeof e === "string" ? e : (e as Error)?.message ?? String(e);
    return `NO: ${msg.split("\n")[0]}`;
  }
}

async function crossReads(floats: number): Promise<[string, string][]> {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_pq_cross_" });
  try {
    const rows = makePool(8, floats);
    const o: Options = { rows: rows.length, floats, rowsPerPart: rows.length, repeat: 1 };
    const hw = join(dir, "hw");
    const pj = join(dir, "pj");
    const store = join(dir, "store");
    await Deno.mkdir(hw);
    await Deno.mkdir(pj);
    await hyparquetWrite(hw, o, rows);
    await parquetjsWrite(pj, o, rows, false);
    const w = await PartWriter.open(store, {
      columns: [{ name: "label", kind: "int32" }, {
        name: "x",
        kind: "float-blob",
        shape: [floats],
        dtype: "F32",
      }],
      rowsPerPart: rows.length,
      totalRows: rows.length,
    });
    await w.writePart(0, { label: new Int32Array(rows.length), x: rows });
    const file = partRanges(o)[0].file;
    const storePart = [...Deno.readDirSync(store)].find((e) => e.name.endsWith(".parquet"))!.name;
    return [
      [
        "parquetjs-lite reads a hyparquet-writer file",
        await tryRead(parquetjsReadFile, join(hw, file), "x", rows),
      ],
      [
        "parquetjs-lite reads a tinystill cache part (F32)",
        await tryRead(parquetjsReadFile, join(store, storePart), "x", rows),
      ],
      [
        "hyparquet reads a parquetjs-lite file",
        await tryRead(hyparquetReadFile, join(pj, file), "x", rows),
      ],
    ];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function main(): Promise<void> {
  const o = parseOptions(Deno.args);
  const payloadMB = (o.rows * o.floats * 4) / 1e6;
  const pool = makePool(o.rowsPerPart, o.floats);
  console.log(
    `parquet float-blob bench — ${o.rows} rows × ${o.floats} float32 (${
      (o.floats * 4 / 1024).toFixed(0)
    } KiB) = ${payloadMB.toFixed(0)} MB, ${o.rowsPerPart} rows per file (one row group), ` +
      `best of ${o.repeat} round trips; ${navigator.hardwareConcurrency} cores, ` +
      `deno ${Deno.version.deno}\n`,
  );
  const rows: Row[] = [];
  const run = async (row: Promise<Row>) => {
    const r = await row;
    rows.push(r);
    console.error(`  measured ${r.name}${r.error ? `: error: ${r.error}` : ""}`);
  };
  await run(measureLib(
    "hyparquet-writer / hyparquet (cache options, plain writes)",
    o,
    pool,
    (d, oo) => hyparquetWrite(d, oo, pool),
    hyparquetReadFile,
  ));
  const store = async (): Promise<Row> => {
    const name = "tinystill part store F32 (hyparquet + sha-256, fsync, rename)";
    try {
      // warm-up: one part
      await measureThroughput({
        payloadMB: (o.rowsPerPart * o.floats * 4) / 1e6,
        rowFloats: o.floats,
      });
      let writeMBps = 0, readMBps = 0;
      for (let k = 0; k < o.repeat; k++) {
        const t = await measureThroughput({
          payloadMB,
          dtype: "F32",
          rowFloats: o.floats,
          rowsPerPart: o.rowsPerPart,
        });
        writeMBps = Math.max(writeMBps, t.writeMBps);
        readMBps = Math.max(readMBps, t.readMBps);
      }
      return { name, writeMBps, readMBps };
    } catch (e) {
      return { name, error: String((e as Error)?.message ?? e).split("\n")[0] };
    }
  };
  await run(store());
  await run(measureLib(
    "parquetjs-lite (defaults: statistics on)",
    o,
    pool,
    (d, oo) => parquetjsWrite(d, oo, pool, false),
    parquetjsReadFile,
  ));
  await run(measureLib(
    "parquetjs-lite (statistics off, PLAIN, uncompressed)",
    o,
    pool,
    (d, oo) => parquetjsWrite(d, oo, pool, true),
    parquetjsReadFile,
  ));

  const base = rows[0];
  const ratio = (mine?: number, ref?: number) => mine && ref ? `${(ref / mine).toFixed(1)}×` : "—";
  console.log(
    "| writer / reader | write MB/s | read MB/s | hyparquet-writer write ÷ this | " +
      "hyparquet read ÷ this |",
  );
  console.log("|---|---:|---:|---:|---:|");
  for (const r of rows) {
    if (r.error) {
      console.log(`| ${r.name} | — | — | — | error: ${r.error} |`);
      continue;
    }
    console.log(
      `| ${r.name} | ${r.writeMBps!.toFixed(0)} | ${r.readMBps!.toFixed(0)} | ` +
        `${ratio(r.writeMBps, base.writeMBps)} | ${ratio(r.readMBps, base.readMBps)} |`,
    );
  }
  console.log("\ncross-reads (8 rows each):");
  for (const [what, outcome] of await crossReads(o.floats)) console.log(`- ${what}: ${outcome}`);
}

if (import.meta.main) await main();
