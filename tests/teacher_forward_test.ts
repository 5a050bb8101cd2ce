/**
 * teacher-forward through the runner: the cached values, computed on the engine asked for (ONNX
 * Runtime or tfjs, as the manifest records), equal the independent float64 PyTorch reference
 * (`tests/reference/bert_torch.py`) on the same rows, cropped to each row's length; DuckDB reads
 * the same values; the pitfalls are refused, the size limit holds, and a kill -9 mid-run resumes
 * to identical parts.
 */

import assert from "node:assert/strict";
import { DuckDBBlobValue, DuckDBInstance } from "@duckdb/node-api";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Bert } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import { PartReader } from "../pipeline/store/parquet.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { assertClose, assertInputError, UNIT_FLOOR, withTempDir } from "./_util.ts";
import { type F64Tensor, type Inputs, PYTHON, runTorch } from "./_torch.ts";

const FIXTURES = resolve("fixtures");
const VOCAB = 30522;

async function makeTeacher(dir: string, labels = { "0": "neg", "1": "pos" }, vocab = VOCAB) {
  const bert = Bert.create(
    {
      vocab_size: vocab,
      hidden_size: 32,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      intermediate_size: 48,
      max_position_embeddings: 64,
      id2label: labels,
    },
    {},
    11,
  );
  await saveBert(bert, dir);
  // the tokenizer travels with the teacher, as in a Hugging Face folder
  await Deno.copyFile(`${FIXTURES}/bert-base-uncased/vocab.txt`, join(dir, "vocab.txt"));
  await Deno.copyFile(`${FIXTURES}/bert-base-uncased/tokenizer.json`, join(dir, "tokenizer.json"));
  return bert;
}

function yaml(out: string, teacher: string, extra = "", labels = "[neg, pos]") {
  return `name: tf
output_dir: ${out}
datasets:
  tiny:
    format: csv
    path: ${FIXTURES}/tiny/sentiment.csv
    labels: ${labels}
    split: { dev: 0.2, test: 0.2, seed: 3 }
teacher:
  checkpoint: ${teacher}
student:
  config: { num_hidden_layers: 2 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16, rows_per_part: 8 }
  - teacher-forward: { batch_size: 5, rows_per_part: 4, replicas: 1${extra} }
`;
}

for (const [engine, executor] of [["onnx", "onnxruntime/"], ["tfjs", "tfjs/"]]) {
  Deno.test({
    name: `cached teacher outputs equal the PyTorch reference on the same rows (${engine} engine)`,
    ignore: !PYTHON,
    fn: () => cachedOutputsMatch(engine, executor),
  });
}

/** Row `b` of a `[B, S, H]` reference, its first `len` positions. */
function cropRows(t: F64Tensor, b: number, len: number): Float64Array {
  const [, S, H] = t.shape;
  return t.data.slice(b * S * H, (b * S + len) * H);
}

/** Example `b`'s top-left `len × len` block of every head of a `[B, heads, S, S]` reference. */
function cropSquare(t: F64Tensor, b: number, len: number): Float64Array {
  const [, nh, S] = t.shape;
  const out = new Float64Array(nh * len * len);
  for (let h = 0; h < nh; h++) {
    for (let q = 0; q < len; q++) {
      const src = ((b * nh + h) * S + q) * S;
      out.set(t.data.subarray(src, src + len), (h * len + q) * len);
    }
  }
  return out;
}

async function cachedOutputsMatch(engine: string, executor: string) {
  await withTempDir(async (dir) => {
    (await makeTeacher(join(dir, "teacher"))).dispose();
    const p = parsePipeline(
      yaml(dir, join(dir, "teacher"), `, dtype: F32, engine: ${engine}`),
      join(dir, "p.yaml"),
      BUILTIN_STAGES,
    );
    const reports = await runPipeline(p, { quiet: true });
    const cacheDir = reports[1].dir;
    // the executor asked for is the one that ran (there is no fallback)
    const manifest = JSON.parse(await Deno.readTextFile(join(cacheDir, "manifest.json")));
    assert.ok(
      manifest.metrics.engine.startsWith(executor),
      `engine recorded in the stage manifest: ${manifest.metrics.engine}`,
    );
    const cache = JSON.parse(await Deno.readTextFile(join(cacheDir, "cache.json")));
    assert.deepEqual(cache.layer_map, [0, 2, 4]); // uniform, 4 teacher layers → 2 student
    assert.deepEqual(cache.attention_layers, [1, 3]);
    const tokens = await PartReader.open(join(reports[0].dir, "train"));
    const cached = await PartReader.open(join(cacheDir, "train"));
    assert.equal(cached.totalRows, tokens.totalRows);
    const tokRows: Record<string, unknown>[] = [];
    for await (const r of tokens.rows(["input_ids", "token_type_ids"])) tokRows.push(r.values);
    // the reference on every row at once, padded to the longest (an independent implementation
    // in float64: its padded positions are cropped away like the cache's)
    const S = Math.max(...tokRows.map((r) => (r.input_ids as Int32Array).length));
    const pad = (a: Int32Array, fill = 0) => [...a, ...new Array(S - a.length).fill(fill)];
    const inputs = {
      input_ids: tokRows.map((r) => pad(r.input_ids as Int32Array)),
      attention_mask: tokRows.map((r) =>
        pad(new Int32Array((r.input_ids as Int32Array).length).fill(1))
      ),
      token_type_ids: tokRows.map((r) => pad(r.token_type_ids as Int32Array)),
    } as Inputs; // no labels: the forward only
    const { tensors: ref } = await runTorch(join(dir, "teacher"), inputs, dir);
    const get = (name: string) => ref.get(name)!;
    const cachedRows: Record<string, unknown>[] = [];
    let n = 0;
    for await (const { row, values } of cached.rows()) {
      assert.equal(row, cachedRows.length);
      cachedRows.push(values);
      const len = (tokRows[row].input_ids as Int32Array).length;
      assert.equal(values.length, len);
      // per element, every score a real one (the crop drops padded keys); floors in _util.ts
      const unit = { floor: UNIT_FLOOR };
      const logits = get("logits").data.slice(2 * row, 2 * row + 2);
      assertClose(values.logits as Float32Array, logits, 1e-4, `logits ${row}`, unit);
      for (const i of [0, 2, 4]) {
        const want = cropRows(get(`hidden_states.${i}`), row, len);
        assertClose(values[`hidden_${i}`] as Float32Array, want, 1e-4, `h${i} ${row}`, unit);
      }
      for (const l of [1, 3]) {
        const want = cropSquare(get(`attention_scores.${l}`), row, len);
        assertClose(values[`scores_${l}`] as Float32Array, want, 1e-4, `s${l} ${row}`, unit);
      }
      n++;
    }
    assert.equal(n, 18);
    // an independent engine reads the pipeline's cache: DuckDB sees the same rows and, decoding
    // each blob as little-endian float32 (F32 cache), bit-identical values to PartReader's
    const floatCols = ["logits", "hidden_0", "hidden_2", "hidden_4", "scores_1", "scores_3"];
    const db = await DuckDBInstance.create(":memory:");
    const con = await db.connect();
    try {
      const glob = join(cacheDir, "train", "part-*.parquet").replaceAll("'", "''");
      const res = await con.runAndReadAll(
        `SELECT length, label, ${floatCols.join(", ")}
         FROM read_parquet('${glob}', file_row_number = true, filename = true)
         ORDER BY filename, file_row_number`,
      );
      const rows = res.getRowObjects();
      assert.equal(rows.length, 18);
      rows.forEach((r, i) => {
        const len = (tokRows[i].input_ids as Int32Array).length;
        assert.equal(Number(r.length), len);
        assert.equal(Number(r.length), cachedRows[i].length);
        assert.equal(Number(r.label), cachedRows[i].label);
        for (const c of floatCols) {
          const blob = r[c];
          assert.ok(blob instanceof DuckDBBlobValue, `${c} row ${i} is a BLOB`);
          const values = new Float32Array(blob.bytes.slice().buffer);
          assert.deepEqual(values, cachedRows[i][c], `${c} row ${i}: DuckDB vs PartReader`);
        }
        assert.equal((r.scores_1 as DuckDBBlobValue).bytes.length, 4 * len * len * 4); // 4 heads
        assert.equal((r.logits as DuckDBBlobValue).bytes.length, 2 * 4);
      });
    } finally {
      con.closeSync();
      db.closeSync();
    }
    assert.equal(manifest.counts.examples, 30);
    assert.ok(manifest.metrics.cache_bytes > 0);
  });
}

Deno.test("label order, vocabulary and cache size are checked before any compute", async () => {
  await withTempDir(async (dir) => {
    (await makeTeacher(join(dir, "t1"), { "0": "pos", "1": "neg" })).dispose();
    await assertInputError(
      () =>
        runPipeline(
          parsePipeline(yaml(dir, join(dir, "t1")), join(dir, "p.yaml"), BUILTIN_STAGES),
          {
            quiet: true,
          },
        ),
      ["label order differs", 'expected ["neg","pos"]', 'got ["pos","neg"]'],
    );
    (await makeTeacher(join(dir, "t2"), undefined, 1000)).dispose();
    await assertInputError(
      () =>
        runPipeline(
          parsePipeline(yaml(dir, join(dir, "t2")), join(dir, "p.yaml"), BUILTIN_STAGES),
          {
            quiet: true,
          },
        ),
      ["vocabulary does not match", "expected 30522 (the tokenizer's), got 1000"],
    );
    (await makeTeacher(join(dir, "t3"))).dispose();
    await assertInputError(
      () =>
        runPipeline(
          parsePipeline(
            yaml(dir, join(dir, "t3"), ", max_cache_bytes: 1000"),
            join(dir, "p.yaml"),
            BUILTIN_STAGES,
          ),
          { quiet: true },
        ),
      [
        "teacher-forward.max_cache_bytes: the teacher-output cache would exceed",
        "expected ≤ 1.00 kB",
      ],
    );
  });
});

Deno.test("kill -9 during teacher-forward: the rerun resumes to the same parts as a clean run", async () => {
  await withTempDir(async (dir) => {
    (await makeTeacher(join(dir, "teacher"))).dispose();
    const text = yaml(join(dir, "killed"), join(dir, "teacher"))
      .replace("batch_size: 5, rows_per_part: 4", "batch_size: 1, rows_per_part: 1");
    await Deno.writeTextFile(join(dir, "killed.yaml"), text);
    const script = join(dir, "run.ts");
    const root = pathToFileURL(resolve("pipeline")).href;
    await Deno.writeTextFile(
      script,
      `import { runPipeline } from "${root}/run/runner.ts";
import { loadPipeline } from "${root}/run/spec.ts";
import { BUILTIN_STAGES } from "${root}/stages/mod.ts";
await runPipeline(await loadPipeline(Deno.args[0], BUILTIN_STAGES), { quiet: true });
`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", resolve("deno.json"), script, join(dir, "killed.yaml")],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // wait until a few parts of teacher-forward exist, then SIGKILL
    const partsDone = () => {
      try {
        const root = join(dir, "killed/tf");
        const partial = [...Deno.readDirSync(root)].find((e) =>
          e.name.startsWith(".teacher-forward")
        );
        if (!partial) return 0;
        return [...Deno.readDirSync(join(root, partial.name, "train"))]
          .filter((e) => e.name.startsWith("part-")).length;
      } catch {
        return 0;
      }
    };
    const deadline = Date.now() + 60_000;
    while (partsDone() < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone: the assertion below reports why
    }
    const status = await child.status;
    if (status.signal !== "SIGKILL") {
      const err = new TextDecoder().decode((await child.output()).stderr);
      throw new Error(`the child ended by itself (code ${status.code}): ${err.slice(-1500)}`);
    }
    assert.equal(status.signal, "SIGKILL");
    assert.ok(partsDone() >= 3 && partsDone() < 18, `killed after ${partsDone()} parts`);
    // resume in this process, and compare with an uninterrupted run elsewhere
    const resumed = await runPipeline(
      parsePipeline(text, join(dir, "killed.yaml"), BUILTIN_STAGES),
      {
        quiet: true,
      },
    );
    const clean = await runPipeline(
      parsePipeline(
        text.replace(join(dir, "killed"), join(dir, "clean")),
        join(dir, "c.yaml"),
        BUILTIN_STAGES,
      ),
      { quiet: true },
    );
    for (const split of ["train", "dev", "test"]) {
      const a = JSON.parse(await Deno.readTextFile(join(resumed[1].dir, split, "index.json")));
      const b = JSON.parse(await Deno.readTextFile(join(clean[1].dir, split, "index.json")));
      assert.equal(a.totalRows, b.totalRows);
      assert.deepEqual(
        a.parts.map((x: { sha256: string }) => x.sha256),
        b.parts.map((x: { sha256: string }) => x.sha256),
      );
    }
  });
});

Deno.test("--shard i/n splits teacher-forward; the plain run finalises to a clean run's parts", async () => {
  await withTempDir(async (dir) => {
    (await makeTeacher(join(dir, "teacher"))).dispose();
    const text = (out: string) =>
      yaml(join(dir, out), join(dir, "teacher"))
        .replace("batch_size: 5, rows_per_part: 4", "batch_size: 2, rows_per_part: 2");
    const p = parsePipeline(text("sharded"), join(dir, "s.yaml"), BUILTIN_STAGES);
    await runPipeline(p, { quiet: true, only: "tokenize" });
    const s0 = await runPipeline(p, { quiet: true, shard: { index: 0, count: 2 } });
    assert.equal(s0.length, 2); // stops after the sharded stage
    // not finished yet: no manifest, so a later stage would not see it
    await assert.rejects(() => Deno.stat(join(s0[1].dir, "manifest.json")));
    await runPipeline(p, { quiet: true, shard: { index: 1, count: 2 } });
    const done = await runPipeline(p, { quiet: true });
    const clean = await runPipeline(
      parsePipeline(text("clean"), join(dir, "c.yaml"), BUILTIN_STAGES),
      {
        quiet: true,
      },
    );
    for (const split of ["train", "dev", "test"]) {
      const a = JSON.parse(await Deno.readTextFile(join(done[1].dir, split, "index.json")));
      const b = JSON.parse(await Deno.readTextFile(join(clean[1].dir, split, "index.json")));
      assert.deepEqual(
        a.parts.map((x: { sha256: string }) => x.sha256),
        b.parts.map((x: { sha256: string }) => x.sha256),
      );
    }
  });
});
