/** finetune `init: random`: the labels-only baseline of a student whose checkpoint is pretrained. */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { loadBert, saveBert } from "../pipeline/model/checkpoint.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { withTempDir } from "./_util.ts";

const FIXTURES = resolve("fixtures");

Deno.test("finetune init: random builds the checkpoint's architecture afresh; default loads it", async () => {
  await withTempDir(async (dir) => {
    const general = Bert.create(
      {
        vocab_size: 30522,
        num_hidden_layers: 2,
        hidden_size: 16,
        num_attention_heads: 2,
        intermediate_size: 24,
        max_position_embeddings: 32,
      },
      { classifier: false },
      5,
    );
    const ckpt = join(dir, "general");
    await saveBert(general, ckpt);
    await Deno.copyFile(join(FIXTURES, "bert-base-uncased", "vocab.txt"), join(ckpt, "vocab.txt"));
    const yaml = `name: ft
output_dir: ${dir}/runs
backend: wasm
datasets:
  tiny: { format: csv, path: ${FIXTURES}/tiny/sentiment.csv, labels: [neg, pos],
          split: { dev: 0.2, test: 0.2, seed: 3 } }
teacher: { tokenizer: ${FIXTURES}/bert-base-uncased, config: { num_hidden_layers: 1 } }
student: { checkpoint: ${ckpt} }
stages:
  - tokenize: { dataset: tiny, max_seq_length: 16 }
  - finetune@pretrained: { model: student, steps: 1, lr: 1.0e-12, replicas: 1 }
  - finetune@random: { model: student, init: random, steps: 1, lr: 1.0e-12, replicas: 1 }
  - finetune@random-s42: { model: student, init: random, steps: 1, lr: 1.0e-12, replicas: 1,
                           seed: 42 }
  - finetune@random-s7: { model: student, init: random, steps: 1, lr: 1.0e-12, replicas: 1,
                          seed: 7, engine: tfjs }
`;
    const reports = await runPipeline(parsePipeline(yaml, join(dir, "ft.yaml"), BUILTIN_STAGES), {
      quiet: true,
    });
    const w = "encoder.layer.1.attention.self.query.weight";
    const ref = general.p(w).data;
    const diff = (m: Bert) => {
      const x = m.p(w).data;
      return Math.max(...Array.from(x, (v, i) => Math.abs(v - ref[i])));
    };
    const pre = await loadBert(join(reports[1].dir, "model"));
    const rnd = await loadBert(join(reports[2].dir, "model"));
    assert.ok(diff(pre) < 1e-6, `pretrained start moved ${diff(pre)}`);
    assert.ok(diff(rnd) > 1e-3, "random init equals the checkpoint");
    for (const k of ["num_hidden_layers", "hidden_size", "intermediate_size"] as const) {
      assert.equal(rnd.config[k], general.config[k], k);
    }
    assert.deepEqual(rnd.config.id2label, { "0": "neg", "1": "pos" });
    // a stage seed: the pipeline's own (42) changes nothing, another draws other weights
    const s42 = await loadBert(join(reports[3].dir, "model"));
    const s7 = await loadBert(join(reports[4].dir, "model"));
    const maxDiff = (a: Bert, b: Bert) => {
      const x = a.p(w).data, y = b.p(w).data;
      return Math.max(...Array.from(x, (v, i) => Math.abs(v - y[i])));
    };
    assert.equal(maxDiff(s42, rnd), 0);
    assert.ok(maxDiff(s7, rnd) > 1e-3, "seed 7 drew the same weights as seed 42");
    for (const m of [general, pre, rnd, s42, s7]) m.dispose();
  });
});
