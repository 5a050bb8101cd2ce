/** Part store: round trips, streaming, resume after a crash (simulated and kill -9), sharding,
 * missing and corrupted parts, and an independent reader (DuckDB). */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DuckDBInstance } from "@duckdb/node-api";
import {
  type ColumnInput,
  type ColumnSpec,
  finalize,
  partFileName,
  PartReader,
  PartWriter,
  type StoreLayout,
} from "../pipeline/store/parquet.ts";
import { parseShard } from "../pipeline/run/runner.ts";
import { measureThroughput } from "../bench/parquet.ts";
import { assertInputError, withTempDir } from "./_util.ts";

// Deterministic data: every value is a function of (row, element), so any run — resumed,
// sharded or in a subprocess — produces the same rows. Self-contained (no imports) because the
// subprocess script embeds these functions' source.
function val(row: number, j: number): number {
  return Math.sin(row * 12.9898 + j * 78.233) * 4;
}
function tokenRows(first: number, n: number): Record<string, unknown> {
  const ids: Int32Array[] = [], mask: Int32Array[] = [], types: Int32Array[] = [];
  const label = new Int32Array(n);
  const text: string[] = [];
  for (let r = 0; r < n; r++) {
    const row = first + r, len = 3 + (row % 7);
    ids.push(Int32Array.from({ length: len }, (_, j) => (row * 31 + j * 7) % 30522));
    mask.push(Int32Array.from({ length: len }, (_, j) => (j < len - row % 2 ? 1 : 0)));
    types.push(Int32Array.from({ length: len }, (_, j) => (j > len / 2 ? 1 : 0)));
    label[r] = row % 3;
    text.push(`row ${row} ✓ ${"x".repeat(row % 5)}`);
  }
  return { input_ids: ids, attention_mask: mask, token_type_ids: types, label, text };
}
function cacheRows(first: number, n: number, sizes: number[]): Record<string, unknown> {
  const [logits, hidden, attn] = sizes;
  const flat = (size: number, salt: number) =>
    Float32Array.from(
      { length: n * size },
      (_, i) => val(first + Math.floor(i / size), (i % size) + 1000 * salt),
    );
  const perRow = (size: number, salt: number) =>
    Array.from(
      { length: n },
      (_, r) => Float32Array.from({ length: size }, (_, j) => val(first + r, j + 1000 * salt)),
    );
  const idx = new Array<number>(n).fill(0).map((_, r) => first + r);
  return { example: idx, logits: flat(logits, 1), hidden: perRow(hidden, 2), attn: flat(attn, 3) };
}

const TOKEN_LAYOUT: StoreLayout = {
  columns: [
    { name: "input_ids", kind: "int32-blob" },
    { name: "attention_mask", kind: "int32-blob" },
    { name: "token_type_ids", kind: "int32-blob" },
    { name: "label", kind: "int32" },
    { name: "text", kind: "string" },
  ],
  rowsPerPart: 16,
  totalRows: 50,
  metadata: { stage: "tokenize", maxLength: 16 },
};

const SIZES = [3, 2 * 5 * 8, 2 * 4 * 5 * 5]; // logits; 2 layers × seq 5 × hidden 8; 2 × 4 heads × 5 × 5
function cacheLayout(dtype: "F32" | "F16", totalRows = 40, rowsPerPart = 8): StoreLayout {
  const columns: ColumnSpec[] = [
    { name: "example", kind: "int64" },
    { name: "logits", kind: "float-blob", shape: [3], dtype },
    { name: "hidden", kind: "float-blob", shape: [2, 5, 8], dtype },
    { name: "attn", kind: "float-blob", shape: [2, 4, 5, 5], dtype },
  ];
  return { columns, rowsPerPart, totalRows, metadata: { cacheKey: "abc123", dtype } };
}

/** Write every pending part of `w` with `gen`. */
async function writeAll(w: PartWriter, gen: (first: number, n: number) => unknown) {
  for (const p of w.pendingParts()) {
    await w.writePart(p.start, gen(p.start, p.end - p.start) as Record<string, ColumnInput>);
  }
}

/** Expected per-row values (blob columns as per-row arrays) for rows [0, total). */
function expectedRows(gen: (first: number, n: number) => unknown, layout: StoreLayout) {
  const total = layout.totalRows!;
  const data = gen(0, total) as Record<string, unknown>;
  return (name: string, row: number): unknown => {
    const spec = layout.columns.find((c) => c.name === name)!;
    const v = data[name];
    if (Array.isArray(v)) return spec.kind === "int64" ? BigInt(v[row]) : v[row];
    if (spec.kind.endsWith("-blob")) {
      const n = spec.shape!.reduce((a, b) => a * b, 1);
      return (v as Float32Array).subarray(row * n, (row + 1) * n);
    }
    return (v as Int32Array)[row];
  };
}

/** Read the whole store and compare every value; `f16` compares with half-precision rounding. */
async function assertStoreEquals(
  dir: string,
  gen: (first: number, n: number) => unknown,
  layout: StoreLayout,
  f16 = false,
) {
  const reader = await PartReader.open(dir);
  assert.equal(reader.totalRows, layout.totalRows);
  assert.deepEqual(reader.metadata, layout.metadata);
  const want = expectedRows(gen, layout);
  let next = 0;
  for await (const { row, values } of reader.rows()) {
    assert.equal(row, next++);
    for (const c of layout.columns) {
      const got = values[c.name], exp = want(c.name, row);
      if (c.kind === "float-blob") {
        const e = f16 ? new Float32Array(new Float16Array(exp as Float32Array)) : exp;
        assert.ok(got instanceof Float32Array, `${c.name} row ${row} is a Float32Array`);
        assert.deepEqual(got, e, `${c.name} row ${row}`);
      } else {
        assert.deepEqual(got, exp, `${c.name} row ${row}`);
      }
    }
  }
  assert.equal(next, layout.totalRows, "row count");
}

/** file → sha-256 of every part of a finalized store. */
async function partHashes(dir: string): Promise<Record<string, string>> {
  const index = await finalize(dir);
  return Object.fromEntries(index.parts.map((p) => [p.file, p.sha256]));
}

const cache32 = (f: number, n: number) => cacheRows(f, n, SIZES);

Deno.test("token shard round trip, streamed in parts (short last part)", async () => {
  await withTempDir(async (dir) => {
    const w = await PartWriter.open(dir, TOKEN_LAYOUT);
    assert.deepEqual(w.pendingParts(), [
      { start: 0, end: 16 },
      { start: 16, end: 32 },
      { start: 32, end: 48 },
      { start: 48, end: 50 },
    ]);
    await writeAll(w, tokenRows);
    const index = await finalize(dir);
    assert.equal(index.parts.length, 4);
    assert.deepEqual(index.parts.map((p) => p.rowCount), [16, 16, 16, 2]);
    assert.match(index.parts[0].sha256, /^[0-9a-f]{64}$/);
    await assertStoreEquals(dir, tokenRows, TOKEN_LAYOUT);
    // Column selection decodes only what is asked for.
    const part = await (await PartReader.open(dir)).readPart(3, ["label"]);
    assert.deepEqual(Object.keys(part.columns), ["label"]);
    assert.deepEqual(part.columns.label, Int32Array.from([0, 1]));
  });
});

Deno.test("teacher cache round trip: F32 exact, F16 equal to half-precision rounding", async () => {
  for (const dtype of ["F32", "F16"] as const) {
    await withTempDir(async (dir) => {
      const layout = cacheLayout(dtype);
      const w = await PartWriter.open(dir, layout);
      await writeAll(w, cache32);
      await finalize(dir);
      await assertStoreEquals(dir, cache32, layout, dtype === "F16");
      if (dtype === "F16") {
        const part = await (await PartReader.open(dir)).readPart(0, ["hidden"]);
        const got = (part.columns.hidden as Float32Array[])[0];
        const exp = (cache32(0, 1).hidden as Float32Array[])[0];
        for (let i = 0; i < got.length; i++) {
          assert.ok(Math.abs(got[i] - exp[i]) <= Math.abs(exp[i]) * 2 ** -11 + 1e-7);
        }
      }
    });
  }
});

Deno.test("bad input is refused with an InputError naming the field", async () => {
  await withTempDir(async (dir) => {
    const layout = cacheLayout("F32");
    const w = await PartWriter.open(dir, layout);
    await assertInputError(() => w.writePart(4, cache32(4, 8) as never), ["firstRow", "multiple"]);
    await assertInputError(() => w.writePart(0, cache32(0, 7) as never), ["8 rows", "7 rows"]);
    const rows = cache32(0, 8);
    rows.hidden = (rows.hidden as Float32Array[]).map((r) => r.subarray(1));
    await assertInputError(() => w.writePart(0, rows as never), ["hidden", "80 elements"]);
    await assertInputError(
      () => PartWriter.open(dir, { ...layout, metadata: { cacheKey: "other" } }),
      ["store.json", "metadata", "different layout", "other"],
    );
    await assertInputError(() => PartReader.open(dir), ["not finalized"]);
    assert.throws(() => parseShard("2/2"), /expected i\/n/);
    assert.deepEqual(parseShard("1/4"), { index: 1, count: 4 });
  });
});

Deno.test("resume after a simulated crash: orphan removed, no duplicated or missing rows", async () => {
  await withTempDir(async (root) => {
    const layout = cacheLayout("F32");
    const ref = join(root, "ref"), dir = join(root, "crashed");
    await writeAll(await PartWriter.open(ref, layout), cache32);
    const refHashes = await partHashes(ref);

    // First run: parts 0 and 2 finished, part 1 died mid-write (half a temp file), 3–4 never ran.
    const w1 = await PartWriter.open(dir, layout);
    await w1.writePart(0, cache32(0, 8) as never);
    await w1.writePart(16, cache32(16, 8) as never);
    const full = await Deno.readFile(join(ref, partFileName(8)));
    const orphan = join(dir, `.${partFileName(8)}.4242.deadbeef.tmp`);
    await Deno.writeFile(orphan, full.subarray(0, full.length >> 1));
    await assertInputError(() => finalize(dir), ["unfinished part writes", ".tmp"]);

    const w2 = await PartWriter.open(dir, layout);
    assert.deepEqual(w2.completedRows(), [{ start: 0, end: 8 }, { start: 16, end: 24 }]);
    assert.ok(!w2.isDone(8) && w2.isDone(16));
    await assert.rejects(Deno.stat(orphan), Deno.errors.NotFound);
    assert.deepEqual(w2.pendingParts().map((p) => p.start), [8, 24, 32]);
    await writeAll(w2, cache32);
    assert.deepEqual(w2.completedRows(), [{ start: 0, end: 40 }]);
    assert.deepEqual(await partHashes(dir), refHashes); // byte-identical to the uninterrupted run
    await assertStoreEquals(dir, cache32, layout);
  });
});

/** A writer script for `deno run`: writes its shard's pending parts, one per `delay` ms. */
async function writerScript(root: string, layout: StoreLayout): Promise<string> {
  const src = `import { PartWriter } from ${
    JSON.stringify(new URL("../pipeline/store/parquet.ts", import.meta.url).href)
  };
import { parseShard } from ${
    JSON.stringify(new URL("../pipeline/run/runner.ts", import.meta.url).href)
  };
${val.toString()}
${cacheRows.toString()}
const [dir, shard, delay] = Deno.args;
const w = await PartWriter.open(dir, { ...${JSON.stringify(layout)}, shard: parseShard(shard) });
for (const p of w.pendingParts()) {
  await w.writePart(p.start, cacheRows(p.start, p.end - p.start, ${JSON.stringify(SIZES)}));
  console.log("wrote " + p.start);
  await new Promise((r) => setTimeout(r, Number(delay)));
}
console.log("done");
`;
  const path = join(root, "writer.ts");
  await Deno.writeTextFile(path, src);
  return path;
}

function spawnWriter(script: string, dir: string, shard: string, delayMs: number) {
  const config = new URL("../deno.json", import.meta.url).pathname;
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", config, script, dir, shard, String(delayMs)],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
}

Deno.test("kill -9 mid-run, then resume: same rows as an uninterrupted run", async () => {
  await withTempDir(async (root) => {
    const layout = cacheLayout("F16", 240, 8); // 30 parts
    const ref = join(root, "ref"), dir = join(root, "killed");
    await writeAll(await PartWriter.open(ref, layout), cache32);
    const refHashes = await partHashes(ref);

    const child = spawnWriter(await writerScript(root, layout), dir, "0/1", 40);
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while ((text.match(/wrote/g) ?? []).length < 4) {
      const { value, done } = await lines.read();
      if (done) break;
      text += value;
    }
    child.kill("SIGKILL");
    const status = await child.status;
    await lines.cancel();
    assert.equal(status.signal, "SIGKILL", `writer output: ${text}`);
    assert.ok(!text.includes("done"), "the writer was killed before finishing");

    const w = await PartWriter.open(dir, layout);
    const done = w.completedRows();
    assert.equal(done.length, 1);
    assert.equal(done[0].start, 0);
    assert.ok(done[0].end >= 32 && done[0].end < 240, `finished ${JSON.stringify(done)}`);
    await writeAll(w, cache32);
    assert.deepEqual(await partHashes(dir), refHashes);
    await assertStoreEquals(dir, cache32, layout, true);
  });
});

Deno.test("two concurrent shard writers (processes) fill one store; finalize once", async () => {
  await withTempDir(async (root) => {
    const layout = cacheLayout("F32", 100, 8); // 13 parts, last one 4 rows
    const ref = join(root, "ref"), dir = join(root, "sharded");
    await writeAll(await PartWriter.open(ref, layout), cache32);
    const script = await writerScript(root, layout);
    const children = ["0/2", "1/2"].map((s) => spawnWriter(script, dir, s, 0));
    const outs = await Promise.all(children.map((c) => c.output()));
    for (const o of outs) {
      assert.ok(o.success);
      assert.match(new TextDecoder().decode(o.stdout), /done/);
    }
    assert.match(new TextDecoder().decode(outs[0].stdout), /wrote 16\n/);
    assert.doesNotMatch(new TextDecoder().decode(outs[0].stdout), /wrote 8\n/);
    assert.deepEqual(await partHashes(dir), await partHashes(ref));
    await assertStoreEquals(dir, cache32, layout);
    // A shard may not write another shard's part.
    const w = await PartWriter.open(dir, { ...layout, shard: { index: 1, count: 2 } });
    await assertInputError(() => w.writePart(0, cache32(0, 8) as never), ["another shard"]);
  });
});

Deno.test("finalize names the missing row ranges and part files", async () => {
  await withTempDir(async (dir) => {
    const layout = cacheLayout("F32");
    const w = await PartWriter.open(dir, layout);
    await writeAll(w, cache32);
    await Deno.remove(join(dir, partFileName(8)));
    await Deno.remove(join(dir, partFileName(32)));
    await assertInputError(() => finalize(dir), [
      "missing rows 8..15 (part-000000000008.parquet)",
      "rows 32..39 (part-000000000032.parquet)",
    ]);
  });
});

Deno.test("a corrupted part is detected on read and named", async () => {
  await withTempDir(async (dir) => {
    const layout = cacheLayout("F32");
    await writeAll(await PartWriter.open(dir, layout), cache32);
    await finalize(dir);
    const victim = join(dir, partFileName(16));
    const bytes = await Deno.readFile(victim);
    bytes[bytes.length >> 1] ^= 0x01;
    await Deno.writeFile(victim, bytes);
    const reader = await PartReader.open(dir);
    await reader.readPart(0); // intact parts still read
    await assertInputError(() => reader.readPart(2), [
      victim,
      "checksum mismatch",
      "recompute",
    ]);
    // A part whose footer is broken is refused when a writer resumes.
    await Deno.writeFile(victim, bytes.subarray(0, bytes.length - 3));
    await assertInputError(() => PartWriter.open(dir, layout), [victim, "not a readable"]);
  });
});

Deno.test("DuckDB reads the parts as ordinary Parquet", async () => {
  await withTempDir(async (dir) => {
    await writeAll(await PartWriter.open(dir, TOKEN_LAYOUT), tokenRows);
    await finalize(dir);
    const db = await DuckDBInstance.create(":memory:");
    const con = await db.connect();
    try {
      const glob = join(dir, "part-*.parquet").replaceAll("'", "''");
      const res = await con.runAndReadAll(
        `SELECT label, octet_length(input_ids) AS ids_bytes, text
         FROM read_parquet('${glob}', file_row_number = true, filename = true)
         ORDER BY filename, file_row_number`,
      );
      const rows = res.getRowObjects();
      assert.equal(rows.length, 50);
      const want = tokenRows(0, 50);
      for (let r = 0; r < 50; r++) {
        assert.equal(rows[r].label, (want.label as Int32Array)[r]);
        assert.equal(Number(rows[r].ids_bytes), (want.input_ids as Int32Array[])[r].length * 4);
        assert.equal(rows[r].text, (want.text as string[])[r]);
      }
    } finally {
      con.closeSync();
      db.closeSync();
    }
  });
});

// measureThroughput is what `deno task bench` reports; its speeds are not asserted here (no
// timing in unit tests). What it measures is: the payload it reports is what it wrote, read back
// value for value, and its byte count is the parts' size on disk.
Deno.test("measureThroughput writes, finalizes and reads back the payload it reports", async () => {
  const rowFloats = 1000, rowsPerPart = 50, totalRows = 250; // 1 MB of float32
  const fileBytes: Record<string, number> = {};
  for (const dtype of ["F32", "F16"] as const) {
    await withTempDir(async (dir) => {
      const t = await measureThroughput({ payloadMB: 1, dtype, rowFloats, rowsPerPart, dir });
      assert.equal(t.dtype, dtype);
      assert.equal(t.payloadMB, totalRows * rowFloats * 4 / 1e6);
      // fileMB is the size of the part files on disk, as finalize's index records it
      const index = JSON.parse(await Deno.readTextFile(join(dir, "index.json")));
      assert.equal(index.parts.length, totalRows / rowsPerPart);
      let onDisk = 0;
      for (const p of index.parts as { file: string; bytes: number }[]) {
        const size = (await Deno.stat(join(dir, p.file))).size;
        assert.equal(p.bytes, size, p.file);
        onDisk += size;
      }
      assert.equal(t.fileMB, onDisk / 1e6);
      fileBytes[dtype] = onDisk;
      // the payload read back: every part holds rows 0..49 of 3·sin(0.37·i) (measureThroughput's
      // data), stored as float32 or rounded to float16
      const reader = await PartReader.open(dir);
      assert.equal(reader.totalRows, totalRows);
      const flat = Float32Array.from(
        { length: rowsPerPart * rowFloats },
        (_, i) => Math.sin(i * 0.37) * 3,
      );
      const stored = dtype === "F16" ? new Float32Array(new Float16Array(flat)) : flat;
      let rows = 0;
      for await (const { row, values } of reader.rows()) {
        const r = row % rowsPerPart;
        assert.equal(values.label, 0);
        assert.deepEqual(
          values.x,
          stored.subarray(r * rowFloats, (r + 1) * rowFloats),
          `row ${row}`,
        );
        rows++;
      }
      assert.equal(rows, totalRows);
    });
  }
  // float blobs are stored uncompressed: F32 ≥ the payload, F16 half of it, plus a little framing
  assert.ok(fileBytes.F32 >= 1e6 && fileBytes.F32 < 1.05e6, `F32: ${fileBytes.F32} bytes`);
  assert.ok(fileBytes.F16 >= 0.5e6 && fileBytes.F16 < 0.55e6, `F16: ${fileBytes.F16} bytes`);
});
