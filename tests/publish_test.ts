/** The publish stage: F16 Hugging Face folder + model card, copied into place atomically. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadBert } from "../pipeline/model/checkpoint.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { withTempDir } from "./_util.ts";

Deno.test("publish: F16 weights equal the trained model to F16 precision; the card says how it was made", async () => {
  await withTempDir(async (dir) => {
    const yaml = (lr: string) =>
      `name: pub
output_dir: ${dir}/runs
backend: wasm
datasets:
  moby: { format: moby-dick, limit: 60, split: { dev: 0, test: 0, seed: 1 } }
teacher:
  tokenizer: ${Deno.cwd()}/fixtures/bert-base-uncased
  config: { num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2, intermediate_size: 24,
            max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: moby, max_seq_length: 32 }
  - mlm-pretrain: { max_seq_length: 32, steps: 3, batch_size: 8, lr: ${lr}, held_out: 0.2,
                    replicas: 1 }
  - publish:
      model: mlm-pretrain
      to: models/tiny-mlm
      title: Tiny MLM
      description: A test model.
      related: { teacher: models/other }
`;
    const file = join(dir, "pub.yaml");
    await Deno.writeTextFile(file, yaml("1.0e-3"));
    const reports = await runPipeline(parsePipeline(yaml("1.0e-3"), file, BUILTIN_STAGES), {
      quiet: true,
    });
    const pre = reports[1], pub = reports[2];
    const dest = join(dir, "models", "tiny-mlm");

    // F16 on disk, every tensor within F16 rounding of the F32 original
    const st = await readSafetensors(join(dest, "model.safetensors"));
    assert.ok(st.tensors.size > 0);
    for (const t of st.tensors.values()) assert.equal(t.dtype, "F16");
    const a = await loadBert(join(pre.dir, "model"));
    const b = await loadBert(dest);
    assert.equal(b.heads.mlm, true);
    assert.deepEqual([...a.params.keys()].sort(), [...b.params.keys()].sort());
    for (const [name, v] of a.params) {
      const x = v.data, y = b.p(name).data;
      for (let i = 0; i < x.length; i++) {
        const tol = Math.max(1e-7, Math.abs(x[i]) * 2 ** -10);
        assert.ok(Math.abs(x[i] - y[i]) <= tol, `${name}[${i}]: ${x[i]} vs ${y[i]}`);
      }
    }
    a.dispose();
    b.dispose();
    for (const f of ["config.json", "vocab.txt", "training_curve.svg", "README.md"]) {
      assert.ok((await Deno.stat(join(dest, f))).isFile, f);
    }
    // the card: metadata, the stage's measured accuracy, the exact pipeline file, related models
    const card = await Deno.readTextFile(join(dest, "README.md"));
    const manifest = JSON.parse(await Deno.readTextFile(join(pre.dir, "manifest.json")));
    assert.match(card, /^---\nlicense: apache-2\.0\n/);
    assert.match(card, /pipeline_tag: fill-mask/);
    assert.ok(card.includes("# Tiny MLM") && card.includes("A test model."));
    const acc = manifest.metrics.held_out_mlm_accuracy as number;
    assert.ok(card.includes(`| held_out_mlm_accuracy | ${acc.toPrecision(4)} |`), card);
    assert.ok(card.includes("lr: 1.0e-3") && card.includes("- publish:"));
    assert.ok(card.includes("- teacher: `../other`"));
    assert.ok(card.includes("![training loss](training_curve.svg)"));
    // the chart is titled by the stage that trained the model, not by publish
    const svg = await Deno.readTextFile(join(dest, "training_curve.svg"));
    assert.ok(svg.includes(`${pre.key}: training loss`) && !svg.includes("publish"), svg);

    // a second publish (the model changed) replaces the folder, leaving no temporary siblings
    await Deno.writeTextFile(file, yaml("2.0e-3"));
    const again = await runPipeline(parsePipeline(yaml("2.0e-3"), file, BUILTIN_STAGES), {
      quiet: true,
    });
    assert.equal(again[2].status, "ran");
    assert.notEqual(again[2].result?.metrics?.sha256, pub.result?.metrics?.sha256);
    const entries = [...Deno.readDirSync(join(dir, "models"))].map((e) => e.name);
    assert.deepEqual(entries, ["tiny-mlm"]);
    const card2 = await Deno.readTextFile(join(dest, "README.md"));
    assert.ok(card2.includes("lr: 2.0e-3"));
  });
});
