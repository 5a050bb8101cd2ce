/** Masked-LM pretraining: packing, 80/10/10 masking, the objective, and the stage end to end. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { loadBert } from "../pipeline/model/checkpoint.ts";
import { IGNORE_INDEX } from "../pipeline/model/align.ts";
import { maskBlock, packExamples } from "../pipeline/train/mlm.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { rng, withTempDir } from "./_util.ts";

const IDS = { cls: 101, sep: 102, mask: 103, pad: 0 };

Deno.test("packExamples: whole examples, [CLS] first, no block over the limit", () => {
  const r = rng(1);
  const examples = Array.from({ length: 50 }, () => {
    const n = 1 + Math.floor(r() * 12);
    return Int32Array.from([
      101,
      ...Array.from({ length: n }, () => 1000 + Math.floor(r() * 50)),
      102,
    ]);
  });
  const blocks = packExamples(examples, 32, IDS);
  const bodies = examples.map((e) => Array.from(e.subarray(1)));
  let k = 0;
  for (const b of blocks) {
    assert.ok(b.length <= 32 && b[0] === 101 && b[b.length - 1] === 102);
    // the block is [CLS] followed by consecutive whole examples (without their own [CLS])
    let at = 1;
    while (at < b.length) {
      assert.deepEqual(Array.from(b.subarray(at, at + bodies[k].length)), bodies[k]);
      at += bodies[k++].length;
    }
  }
  assert.equal(k, examples.length);
  // greedy: a block closes only when the next example would not fit
  for (let i = 0, e = 0; i < blocks.length - 1; i++) {
    e += blocks[i].length - 1 === 0 ? 0 : countExamples(blocks[i]);
    assert.ok(blocks[i].length + bodies[e].length > 32);
  }
});

function countExamples(b: Int32Array): number {
  return Array.from(b).filter((t) => t === 102).length;
}

Deno.test("maskBlock: 15% of non-special tokens, 80/10/10, labels the originals", () => {
  const r = rng(2);
  let chosen = 0, candidates = 0, masked = 0, random = 0, kept = 0;
  for (let s = 0; s < 400; s++) {
    const block = Int32Array.from([
      101,
      ...Array.from({ length: 100 }, () => 1000 + Math.floor(r() * 500)),
      102,
      100,
    ]);
    const { input, labels } = maskBlock(block, s, {
      vocabSize: 30522,
      ids: IDS,
      special: new Set([100]),
    });
    assert.deepEqual(
      maskBlock(block, s, { vocabSize: 30522, ids: IDS, special: new Set([100]) }).input,
      input,
    );
    for (let i = 0; i < block.length; i++) {
      const special = [101, 102, 100].includes(block[i]);
      if (!special) candidates++;
      if (labels[i] === IGNORE_INDEX) {
        assert.equal(input[i], block[i]);
        continue;
      }
      assert.ok(!special, "a special token was chosen");
      assert.equal(labels[i], block[i]);
      chosen++;
      if (input[i] === 103) masked++;
      else if (input[i] === block[i]) kept++;
      else random++;
    }
  }
  assert.ok(Math.abs(chosen / candidates - 0.15) < 0.002, `${chosen / candidates}`);
  assert.ok(Math.abs(masked / chosen - 0.8) < 0.02, `mask ${masked / chosen}`);
  assert.ok(Math.abs(random / chosen - 0.1) < 0.015, `random ${random / chosen}`);
  assert.ok(Math.abs(kept / chosen - 0.1) < 0.015, `kept ${kept / chosen}`);
});

for (const engine of [{ kind: "onnxruntime" }, { kind: "tfjs", backend: "wasm" }] as const) {
  Deno.test(`the mlm objective (${engine.kind}) equals the cross-entropy of the full MLM logits at the labelled positions`, async () => {
    const bert = Bert.create(
      {
        vocab_size: 60,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 24,
        max_position_embeddings: 16,
      },
      { mlm: true },
      3,
    );
    const ids = [2, 7, 9, 11, 3, 2, 5, 3, 0, 0];
    const labels = [-100, 7, -100, 12, -100, -100, 5, -100, -100, -100];
    const mask = Int32Array.from(ids, (t) => (t ? 1 : 0));
    const batch: HostBatch = {
      inputIds: { data: Int32Array.from(ids), shape: [2, 5] },
      attentionMask: { data: mask, shape: [2, 5] },
      tokenTypeIds: { data: new Int32Array(10), shape: [2, 5] },
      mlmLabels: { data: Int32Array.from(labels), shape: [2, 5] },
    };
    const trainer = await Trainer.create(bert, {
      objective: "mlm",
      lr: () => 1e-3,
      weightDecay: 0,
      dropout: false,
      engine,
    });
    const { loss: got } = await trainer.gradients(batch, 0);
    await trainer.close();
    // independently: the inference graph's full [B, S, V] MLM logits, the mean NLL over the
    // labelled positions computed here
    const inference = await openInference(bert, { engine });
    const full = (await inference.run({
      inputIds: Int32Array.from(ids),
      attentionMask: mask,
      batch: 2,
      seq: 5,
    }))
      .logits;
    await inference.close();
    assert.deepEqual(full.dims, [2, 5, 60]);
    let nll = 0, n = 0;
    labels.forEach((t, i) => {
      if (t === IGNORE_INDEX) return;
      const row = Array.from(full.data.subarray(i * 60, (i + 1) * 60));
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
      nll += lse - row[t];
      n++;
    });
    assert.equal(n, 3);
    assert.ok(Math.abs(got - nll / n) < 1e-5, `${got} vs ${nll / n}`);
  });
}

/** A pipeline over 120 Moby-Dick examples and a 1-layer teacher config; `stages` follow tokenize. */
function mlmPipeline(name: string, dir: string, stages: string): string {
  return `name: ${name}
output_dir: ${dir}
backend: wasm
datasets:
  moby: { format: moby-dick, limit: 120, split: { dev: 0, test: 0, seed: 1 } }
teacher:
  tokenizer: ../fixtures/bert-base-uncased
  config: { num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, intermediate_size: 48,
            max_position_embeddings: 64 }
stages:
  - tokenize: { dataset: moby, max_seq_length: 32 }${stages.trimEnd()}
`;
}

Deno.test("mlm-pretrain: held-out masked-token accuracy rises; a BertForMaskedLM is written", async () => {
  await withTempDir(async (dir) => {
    const yaml = mlmPipeline(
      "mlm",
      dir,
      `
  - mlm-pretrain: { max_seq_length: 64, steps: 40, batch_size: 16, lr: 3.0e-3, held_out: 0.1,
                    replicas: 2 }
`,
    );
    const p = parsePipeline(yaml, join(Deno.cwd(), "tasks", "mlm.yaml"), BUILTIN_STAGES);
    const [, r] = await runPipeline({ ...p, output_dir: dir }, { quiet: true });
    const m = JSON.parse(await Deno.readTextFile(join(r.dir, "manifest.json")));
    assert.ok(m.counts.held_out_blocks > 0 && m.counts.blocks > m.counts.held_out_blocks);
    // from ~1/30522 to the frequent words ("the", ",", ".")
    assert.ok(m.metrics.initial_mlm_accuracy < 0.01, JSON.stringify(m.metrics));
    assert.ok(m.metrics.held_out_mlm_accuracy > 0.05, JSON.stringify(m.metrics));
    assert.ok(m.metrics.held_out_mlm_loss < m.metrics.initial_mlm_loss - 1);
    const cfg = JSON.parse(await Deno.readTextFile(join(r.dir, "model", "config.json")));
    assert.deepEqual(cfg.architectures, ["BertForMaskedLM"]);
    const bert = await loadBert(join(r.dir, "model"));
    assert.equal(bert.heads.mlm, true);
    bert.dispose();
  });
});

Deno.test("mlm-pretrain continues from an earlier stage or a checkpoint where it left off", async () => {
  await withTempDir(async (dir) => {
    const yaml = mlmPipeline(
      "mlm-more",
      dir,
      `
  - mlm-pretrain: { max_seq_length: 64, steps: 25, batch_size: 16, lr: 3.0e-3, held_out: 0.1,
                    replicas: 1 }
  - mlm-pretrain@more: { from: mlm-pretrain, max_seq_length: 64, steps: 15, batch_size: 16,
                         lr: 1.0e-3, held_out: 0.1, replicas: 1, engine: tfjs }
`,
    );
    const file = join(Deno.cwd(), "tasks", "mlm.yaml");
    const p = parsePipeline(yaml, file, BUILTIN_STAGES);
    const [, first, more] = await runPipeline({ ...p, output_dir: dir }, { quiet: true });
    const m1 = JSON.parse(await Deno.readTextFile(join(first.dir, "manifest.json"))).metrics;
    const m2 = JSON.parse(await Deno.readTextFile(join(more.dir, "manifest.json"))).metrics;
    // the same held-out blocks and masks: stage 2 starts exactly where stage 1 ended …
    assert.ok(
      Math.abs(m2.initial_mlm_loss - m1.held_out_mlm_loss) < 1e-4,
      JSON.stringify({ m1, m2 }),
    );
    assert.equal(m2.initial_mlm_accuracy, m1.held_out_mlm_accuracy);
    // … and goes on learning (this stage trains on the tfjs engine)
    assert.ok(m2.held_out_mlm_loss < m2.initial_mlm_loss, JSON.stringify(m2));

    // the same from a checkpoint folder (no teacher.config needed)
    const ckpt = join(first.dir, "model");
    const yaml2 = yaml.replace(/config: \{[^}]*\}/s, `checkpoint: ${ckpt}`)
      .replace("mlm-pretrain@more: { from: mlm-pretrain,", "mlm-pretrain@ckpt: { init: checkpoint,")
      .replace(/ {2}- mlm-pretrain: \{[^}]*\}\n/s, "");
    const p2 = parsePipeline(yaml2, file, BUILTIN_STAGES);
    const [, viaCkpt] = await runPipeline({ ...p2, output_dir: dir }, { quiet: true });
    const m3 = JSON.parse(await Deno.readTextFile(join(viaCkpt.dir, "manifest.json"))).metrics;
    assert.ok(Math.abs(m3.initial_mlm_loss - m1.held_out_mlm_loss) < 1e-4);

    // contradictory settings are refused, naming the field
    const bad = parsePipeline(
      yaml.replace("from: mlm-pretrain,", "from: mlm-pretrain, init: random,"),
      file,
      BUILTIN_STAGES,
    );
    await assert.rejects(
      () => runPipeline({ ...bad, output_dir: dir }, { quiet: true }),
      (e: Error) =>
        /init: random and from/.test(e.message) && /mlm-pretrain@more\.init/.test(e.message),
    );
  });
});
