/** The tokenize stage through the runner: shards hold exactly what the tokenizer produces. */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { loadDataset } from "../pipeline/data/mod.ts";
import { PartReader } from "../pipeline/store/parquet.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { shuffled } from "../pipeline/random.ts";
import { loadTokenizer } from "../pipeline/model/tokenizer/io.ts";
import { assertInputError, withTempDir } from "./_util.ts";

const FIXTURES = resolve("fixtures");

function yaml(out: string, maxLen: number, path = `${FIXTURES}/tiny/sentiment.csv`) {
  return `name: tok
output_dir: ${out}
datasets:
  tiny:
    format: csv
    path: ${path}
    labels: [neg, pos]
    split: { dev: 0.2, test: 0.2, seed: 3 }
teacher:
  checkpoint: ${FIXTURES}/bert-base-uncased
stages:
  - tokenize: { dataset: tiny, max_seq_length: ${maxLen}, rows_per_part: 4 }
`;
}

Deno.test("tokenize writes per-split shards equal to direct encoding; counts truncation", async () => {
  await withTempDir(async (dir) => {
    const p = parsePipeline(yaml(dir, 6), join(dir, "tok.yaml"), BUILTIN_STAGES);
    const [report] = await runPipeline(p, { quiet: true });
    assert.equal(report.status, "ran");
    const data = await loadDataset({
      format: "csv",
      path: `${FIXTURES}/tiny/sentiment.csv`,
      labels: ["neg", "pos"],
      split: { dev: 0.2, test: 0.2, seed: 3 },
    });
    const tok = await loadTokenizer(`${FIXTURES}/bert-base-uncased`);
    let truncated = 0, tokens = 0;
    for (const split of ["train", "dev", "test"] as const) {
      const reader = await PartReader.open(join(report.dir, split));
      const rows: { ids: number[]; label: number; len: number }[] = [];
      for await (const part of reader.parts()) {
        const ids = part.columns.input_ids as Int32Array[];
        const mask = part.columns.attention_mask as Int32Array[];
        const len = part.columns.length as Int32Array;
        const label = part.columns.label as Int32Array;
        for (let i = 0; i < part.rowCount; i++) {
          assert.ok(mask[i].every((m) => m === 1) && mask[i].length === len[i]);
          rows.push({ ids: Array.from(ids[i]), label: label[i], len: len[i] });
        }
      }
      assert.equal(rows.length, data[split].length);
      // training rows are stored in the pipeline seed's random order (a permutation)
      const expected = split === "train" ? shuffled(data.train, p.seed) : data[split];
      if (split === "train") {
        assert.notDeepEqual(expected.map((e) => e.text), data.train.map((e) => e.text));
      }
      expected.forEach((ex, i) => {
        const full = tok.encode(ex.text, undefined, { truncation: false }).inputIds;
        const cut = tok.encode(ex.text, undefined, { maxLength: 6 }).inputIds;
        assert.deepEqual(rows[i].ids, cut, `${split}[${i}] ${ex.text}`);
        assert.equal(rows[i].label, ex.label);
        if (full.length > 6) truncated++;
        tokens += cut.length;
      });
    }
    const manifest = JSON.parse(await Deno.readTextFile(join(report.dir, "manifest.json")));
    assert.ok(truncated > 0, "fixture should have examples longer than 6 tokens");
    assert.deepEqual(manifest.counts, { truncated, tokens, train: 18, dev: 6, test: 6 });
    const labels = JSON.parse(await Deno.readTextFile(join(report.dir, "labels.json")));
    assert.deepEqual(labels.labels, ["neg", "pos"]);
    // same inputs: skipped; another max_seq_length: a new output directory
    assert.equal((await runPipeline(p, { quiet: true }))[0].status, "skipped");
    const p2 = parsePipeline(yaml(dir, 16), join(dir, "tok.yaml"), BUILTIN_STAGES);
    const [r2] = await runPipeline(p2, { quiet: true });
    assert.equal(r2.status, "ran");
    assert.notEqual(r2.dir, report.dir);
  });
});

Deno.test("tokenize surfaces dataset errors with the file named", async () => {
  await withTempDir(async (dir) => {
    const p = parsePipeline(
      yaml(dir, 8, `${dir}/missing.csv`),
      join(dir, "tok.yaml"),
      BUILTIN_STAGES,
    );
    await assertInputError(() => runPipeline(p, { quiet: true }), ["missing.csv"]);
  });
});

Deno.test("tokenize: `exclude` drops another dataset's dev/test texts; bad references are named", async () => {
  await withTempDir(async (dir) => {
    const csv = `${FIXTURES}/tiny/sentiment.csv`;
    const text = (extra: string) =>
      `name: ex
output_dir: ${dir}
datasets:
  task: { format: csv, path: ${csv}, labels: [neg, pos], split: { dev: 0.2, test: 0.2, seed: 3 } }
  corpus:
    format: csv
    path: ${csv}
    labels: [neg, pos]
    split: { dev: 0, test: 0, seed: 3 }
    ${extra}
teacher:
  checkpoint: ${FIXTURES}/bert-base-uncased
stages:
  - tokenize: { dataset: corpus, max_seq_length: 16 }
`;
    const p = parsePipeline(
      text("exclude: { dataset: task, splits: [dev, test] }"),
      join(dir, "ex.yaml"),
      BUILTIN_STAGES,
    );
    const [report] = await runPipeline(p, { quiet: true });
    const task = await loadDataset({
      format: "csv",
      path: csv,
      labels: ["neg", "pos"],
      split: { dev: 0.2, test: 0.2, seed: 3 },
    });
    const held = new Set([...task.dev, ...task.test].map((e) => e.text));
    assert.ok(held.size > 0);
    const manifest = JSON.parse(await Deno.readTextFile(join(report.dir, "manifest.json")));
    // every example is either kept for pretraining or held out by the task, never both
    assert.equal(manifest.counts.train, task.train.length);
    const reader = await PartReader.open(join(report.dir, "train"));
    const tok = await loadTokenizer(`${FIXTURES}/bert-base-uncased`);
    const heldIds = new Set(
      [...held].map((t) =>
        tok.encode(t, undefined, { maxLength: 16, truncation: true }).inputIds.join()
      ),
    );
    for await (const part of reader.parts(["input_ids"])) {
      for (const ids of part.columns.input_ids as Int32Array[]) {
        assert.ok(!heldIds.has(Array.from(ids).join()), "a held-out text reached the corpus");
      }
    }

    const bad = parsePipeline(
      text("exclude: { dataset: nope }"),
      join(dir, "bad.yaml"),
      BUILTIN_STAGES,
    );
    await assertInputError(() => runPipeline(bad, { quiet: true }), [
      "unknown dataset 'nope'",
      "datasets.corpus.exclude.dataset",
    ]);
  });
});
