/**
 * A regression task end to end (STS-B style: sentence pairs scored 0–5; the fixture
 * `fixtures/tiny/sts.csv` is synthetic — identical pairs 5.0, same action 3.2, same subject 1.8,
 * unrelated 0.4): targets stored as floats, a one-output teacher trained with MSE, distillation
 * with `logit_mse` (TinyBERT's prediction loss for regression), Pearson/Spearman in the report,
 * and classification-only terms refused.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { loadDataset } from "../pipeline/data/mod.ts";
import { runPipeline, type StageReport } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { readTokenSplit } from "../pipeline/store/tokens.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { assertInputError, withTempDir } from "./_util.ts";

const FIXTURES = resolve("fixtures");

function yaml(out: string, prediction = "logit_mse: 1") {
  return `name: sts
output_dir: ${out}
backend: wasm
datasets:
  sts:
    format: csv
    path: ${FIXTURES}/tiny/sts.csv
    text_column: sentence1
    text_pair_column: sentence2
    label_column: score
    task: regression
    split: { dev: 0.25, test: 0.25, seed: 1 }
teacher:
  tokenizer: ${FIXTURES}/bert-base-uncased
  config: { num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2, intermediate_size: 48,
            max_position_embeddings: 32 }
student:
  config: { num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2, intermediate_size: 24,
            max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: sts, max_seq_length: 24 }
  - finetune@teacher: { model: teacher, steps: 40, batch_size: 8, lr: 1.0e-2, replicas: 1 }
  - teacher-forward: { teacher: finetune@teacher, dtype: F32, replicas: 1 }
  - distill:
      teacher: finetune@teacher
      replicas: 1
      batch_size: 8
      phases:
        - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 3, lr: 1.0e-3 }
        - { name: prediction, losses: { ${prediction} }, steps: 20, lr: 2.0e-3, evaluate: true }
  - evaluate: { teacher: finetune@teacher, students: { student: distill }, latency_examples: 3 }
`;
}

Deno.test("regression: float targets, MSE teacher, logit_mse distillation, Pearson/Spearman", async () => {
  const data = await loadDataset({
    format: "csv",
    path: `${FIXTURES}/tiny/sts.csv`,
    text_column: "sentence1",
    text_pair_column: "sentence2",
    label_column: "score",
    task: "regression",
  });
  assert.equal(data.task, "regression");
  assert.equal(data.labels, undefined);
  assert.ok([...data.train, ...data.dev, ...data.test].every((e) => typeof e.target === "number"));
  await assertInputError(
    () =>
      loadDataset({
        format: "csv",
        path: `${FIXTURES}/tiny/sentiment.csv`,
        task: "regression",
      }),
    ["a regression target must be a number", "sentiment.csv", '"pos"'],
  );

  await withTempDir(async (dir) => {
    const reports = await runPipeline(
      parsePipeline(yaml(dir), join(dir, "p.yaml"), BUILTIN_STAGES),
      {
        quiet: true,
      },
    );
    const by = (k: string) => reports.find((r) => r.key === k) as StageReport;
    const tokens = by("tokenize").dir;
    const meta = JSON.parse(await Deno.readTextFile(join(tokens, "labels.json")));
    assert.equal(meta.task, "regression");
    const test = (await readTokenSplit(tokens, "test"))!;
    assert.ok(test.targets && test.targets.length === 12);
    const teacherCfg = JSON.parse(
      await Deno.readTextFile(join(by("finetune@teacher").dir, "model", "config.json")),
    );
    assert.equal(teacherCfg.problem_type, "regression");
    assert.deepEqual(teacherCfg.id2label, { "0": "LABEL_0" });

    const rep = JSON.parse(await Deno.readTextFile(join(by("evaluate").dir, "report.json")));
    assert.equal(rep.metric, "pearson");
    for (const m of rep.models) {
      for (const k of ["pearson", "spearman", "mse"]) assert.ok(k in m.metrics, `${m.name} ${k}`);
      assert.ok(Number.isFinite(m.metrics.mse));
    }
    // the teacher learned the scale of the scores (40 steps on 24 pairs): on held-out pairs its
    // error is well below that of predicting 0
    const zeroMse = test.targets.reduce((a, t) => a + t * t, 0) / test.targets.length;
    assert.ok(
      rep.models[0].metrics.mse < zeroMse / 2,
      `${rep.models[0].metrics.mse} vs ${zeroMse}`,
    );

    // a classification term on a regression task is refused before training
    const bad = parsePipeline(yaml(dir, "soft_ce: 1"), join(dir, "p.yaml"), BUILTIN_STAGES);
    await assertInputError(
      () => runPipeline(bad, { quiet: true, only: "distill" }),
      ["soft_ce needs classes", "logit_mse"],
    );
  });
});
