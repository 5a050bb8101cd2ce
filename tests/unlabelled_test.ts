/**
 * Unlabeled rows in task distillation (`labelled: N`, `drop_labels`): dropped labels are −100 in
 * the token store and in the batches, cross-entropy (`hard_ce`) skips them, `finetune` trains on
 * the labelled rows alone, the teacher cache covers every row, the dataset hash moves with the
 * dropped labels, and an evaluation split without labels is refused, by name, before compute.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { datasetHash, loadDataset } from "../pipeline/data/mod.ts";
import type { DatasetSpec } from "../pipeline/data/types.ts";
import { Tape } from "../pipeline/graph/tape.ts";
import { DataType } from "../pipeline/graph/ir.ts";
import { TRAIN_OPSET } from "../pipeline/graph/train_graph.ts";
import { openExecutor } from "../pipeline/engines/mod.ts";
import { planPipeline, runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { PartReader } from "../pipeline/store/parquet.ts";
import {
  labelledRows,
  padRows,
  readTokenSplit,
  selectRows,
  UNLABELLED,
} from "../pipeline/store/tokens.ts";
import { assertInputError, withTempDir } from "./_util.ts";

const FIXTURES = resolve("fixtures");
const CSV: DatasetSpec = {
  format: "csv",
  path: `${FIXTURES}/tiny/sentiment.csv`,
  labels: ["neg", "pos"],
  split: { dev: 0.2, test: 0.2, seed: 3 },
};

Deno.test("labelled: N keeps N training labels (seeded), drop_labels drops splits; the hash moves", async () => {
  const full = await loadDataset(CSV);
  const some = await loadDataset({ ...CSV, labelled: 5 });
  const again = await loadDataset({ ...CSV, labelled: 5 });
  const none = await loadDataset({ ...CSV, drop_labels: true });
  const devOnly = await loadDataset({ ...CSV, drop_labels: ["dev"] });
  const count = (xs: { label?: number }[]) => xs.filter((e) => e.label !== undefined).length;
  assert.equal(count(full.train), full.train.length);
  assert.equal(count(some.train), 5);
  assert.deepEqual(some.train.map((e) => e.label), again.train.map((e) => e.label)); // seeded
  assert.deepEqual(some.train.map((e) => e.text), full.train.map((e) => e.text)); // order kept
  assert.equal(count(some.dev) + count(some.test), full.dev.length + full.test.length);
  assert.equal(count(none.train) + count(none.dev) + count(none.test), 0);
  assert.deepEqual(none.labels, ["neg", "pos"]); // the label list stays, for the teacher's head
  assert.equal(count(devOnly.dev), 0);
  assert.equal(count(devOnly.train), full.train.length);
  const hashes = new Set([full, some, none, devOnly].map(datasetHash));
  assert.equal(hashes.size, 4);
  assert.equal(datasetHash(some), datasetHash(again));

  await assertInputError(() => loadDataset({ ...CSV, labelled: 999 }), [
    "labelled",
    `at most ${full.train.length}`,
    "999",
  ]);
  await assertInputError(() => loadDataset({ ...CSV, labelled: 3, drop_labels: ["train"] }), [
    "labelled",
    "not both",
  ]);
  await assertInputError(
    () => loadDataset({ ...CSV, task: "regression", labels: undefined, labelled: 3 }),
    ["labelled", "regression"],
  );
});

Deno.test("the pipeline file: labelled and drop_labels are validated with file, line and field", () => {
  const bad = (line: string) => () =>
    parsePipeline(
      `name: t\ndatasets:\n  d:\n    format: csv\n    path: x.csv\n    ${line}\nstages:\n  - tokenize: { dataset: d }\n`,
      "p.yaml",
      BUILTIN_STAGES,
    );
  assert.throws(
    bad("labelled: -1"),
    /p\.yaml:6:15: datasets\.d\.labelled: expected number ≥ 0, got -1/,
  );
  assert.throws(bad("labelled: 2.5"), /datasets\.d\.labelled: expected int(eger)?, got 2\.5/);
  assert.throws(
    bad("drop_labels: [val]"),
    /datasets\.d\.drop_labels\[0\]: expected one of "train", "dev", "test", got "val"/,
  );
  bad("labelled: 0")(); // 0 is fine: every training label dropped
});

function yaml(out: string, data: string, stages: string) {
  return `name: unl
output_dir: ${out}
backend: wasm
datasets:
  tiny:
    format: csv
    path: ${FIXTURES}/tiny/sentiment.csv
    labels: [neg, pos]
    split: { dev: 0.2, test: 0.2, seed: 3 }
${data}
teacher:
  tokenizer: ${FIXTURES}/bert-base-uncased
  config: { num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 2, intermediate_size: 24,
            max_position_embeddings: 32 }
student:
  config: { num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2, intermediate_size: 24,
            max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16, rows_per_part: 8 }
${stages}`;
}

Deno.test("an evaluation split without labels is refused, by name, before any stage runs", async () => {
  await withTempDir(async (out) => {
    const ft = "  - finetune@teacher: { model: teacher, steps: 2, batch_size: 4, replicas: 1 }\n";
    const p = parsePipeline(yaml(out, "    drop_labels: [dev]", ft), "p.yaml", BUILTIN_STAGES);
    await assertInputError(() => runPipeline(p, { quiet: true }), [
      'the dev split of dataset "tiny"',
      "without labels",
      "finetune@teacher.tokens",
      "drop_labels",
    ]);
    // nothing ran: not even tokenize
    const dirs = [];
    try {
      for await (const e of Deno.readDir(join(out, "unl"))) if (e.isDirectory) dirs.push(e.name);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    assert.deepEqual(dirs, []);
    const ev = "  - evaluate: { teacher: tokenize, split: test }\n";
    const q = parsePipeline(yaml(out, "    drop_labels: [test]", ev), "p.yaml", BUILTIN_STAGES);
    await assertInputError(() => planPipeline(q), [
      'the test split of dataset "tiny"',
      "evaluate.split",
    ]);
    // train labels dropped is fine for planning (distillation reads the rows)
    const r = parsePipeline(yaml(out, "    labelled: 4", ft), "p.yaml", BUILTIN_STAGES);
    await planPipeline(r);
  });
});

Deno.test("labelled: 4 — −100 rows in the store and batches, CE skips them, finetune trains on the 4, the teacher cache covers every row", async () => {
  await withTempDir(async (out) => {
    const stages = `  - finetune@teacher: { model: teacher, steps: 2, batch_size: 4, replicas: 1 }
  - teacher-forward: { teacher: finetune@teacher, dtype: F32, rows_per_part: 64, replicas: 1 }
  - distill:
      teacher: finetune@teacher
      batch_size: 8
      replicas: 1
      phases:
        - { name: prediction, losses: { soft_ce: 1, hard_ce: 1 }, steps: 2, lr: 1.0e-3 }
`;
    const p = parsePipeline(yaml(out, "    labelled: 4", stages), "p.yaml", BUILTIN_STAGES);
    const reports = await runPipeline(p, { quiet: true });
    const dir = (k: string) => reports.find((r) => r.key === k)!.dir;
    const train = (await readTokenSplit(dir("tokenize"), "train"))!;
    const n = train.lengths.length;
    const kept = labelledRows(train);
    assert.equal(kept.length, 4);
    assert.equal([...train.labels].filter((l) => l === UNLABELLED).length, n - 4);
    assert.ok([...train.labels].every((l) => l === UNLABELLED || l === 0 || l === 1));
    // the stored column itself says −100 (not −1) for a row without a label
    const raw: number[] = [];
    const store = await PartReader.open(join(dir("tokenize"), "train"));
    for await (const part of store.parts(["label"])) {
      raw.push(...(part.columns.label as Int32Array));
    }
    assert.deepEqual(raw, [...train.labels]);
    const dev = (await readTokenSplit(dir("tokenize"), "dev"))!;
    assert.equal(labelledRows(dev).length, dev.lengths.length);

    // finetune: the labelled rows only, counted in its manifest
    const ft = JSON.parse(await Deno.readTextFile(join(dir("finetune@teacher"), "manifest.json")));
    const counts = ft.counts ?? ft.result?.counts;
    assert.equal(counts.labelled_rows, 4, JSON.stringify(ft));
    assert.equal(counts.unlabelled_skipped, n - 4);
    const only = selectRows(train, kept);
    assert.deepEqual([...only.labels], kept.map((r) => train.labels[r]));

    // the teacher cache: every training row, labelled or not
    const cache = await PartReader.open(join(dir("teacher-forward"), "train"));
    assert.equal(cache.totalRows, n);
    assert.equal(reports.find((r) => r.key === "distill")!.status, "ran");

    // the batch keeps the −100 rows, and cross-entropy counts only the labelled ones
    const rows = [
      kept[0],
      ...[...Array(n).keys()].filter((r) => !kept.includes(r)).slice(0, 2),
      kept[1],
    ];
    const batch = padRows(train, rows);
    const gold = [...(batch.labels!.data as Int32Array)];
    assert.deepEqual(gold.map((l) => l === UNLABELLED), [false, true, true, false]);
    const logits = [2, 0, 0.5, -1, 3, 3, -1, 1.5];
    const t = new Tape();
    const z = t.input("z", [4, 2]);
    const y = t.input("y", [4], DataType.INT64);
    t.output(t.crossEntropy(z, y), "loss");
    const g = t.g;
    const model = g.toModel({ name: "ce", opset: TRAIN_OPSET, irVersion: 8, producer: "test" });
    const session = await (await openExecutor({ kind: "onnxruntime" })).open(g.graph(), model);
    try {
      const res = await session.run({
        z: { data: Float32Array.from(logits), dims: [4, 2] },
        y: { data: BigInt64Array.from(gold.map(BigInt)), dims: [4] },
      });
      // by hand, rows 0 and 3 only: −log softmax(z)[y]
      const ce = (a: number, b: number, l: number) =>
        Math.log(Math.exp(a) + Math.exp(b)) - [a, b][l];
      const want = (ce(2, 0, gold[0]) + ce(-1, 1.5, gold[3])) / 2;
      assert.ok(Math.abs((res.loss.data as Float32Array)[0] - want) < 1e-5);
    } finally {
      await session.close();
    }
  });
});
