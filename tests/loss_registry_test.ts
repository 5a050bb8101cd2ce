/**
 * A loss term is one registry entry: a term registered from user code (`registerLossTerm`, here a
 * toy term — the mean square of the student's last hidden state) is a name the distill stage's
 * params accept, reports through `lossBreakdown`, and trains on every executor (ONNX Runtime,
 * tfjs wasm and cpu) with nothing else added: its value at the start is the one computed by hand
 * from the model's last hidden state, and a few AdamW steps lower it.
 */

import assert from "node:assert/strict";
import {
  LOSS_TERMS,
  lossTerm,
  lossTermNames,
  registerLossTerm,
  termAttentionLayers,
  termNeeds,
} from "../pipeline/graph/losses.ts";
import { DistillParams } from "../pipeline/stages/distill.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { Trainer } from "../pipeline/train/trainer.ts";
import { openInference } from "../pipeline/engines/inference.ts";
import { type DistillObjectiveOptions, lossBreakdown } from "../pipeline/distill/objective.ts";
import type { EngineRef } from "../pipeline/engines/mod.ts";
import type { HostBatch } from "../pipeline/data/batch.ts";
import { assertClose } from "./_util.ts";

const TOY = "toy_last_square";

registerLossTerm(TOY, {
  needs: [],
  description: "toy: mean square of the student's last hidden state (every position)",
  graph: (c) => c.t.mean(c.t.square(c.student.last)),
});

const EXECUTORS: { label: string; ref: EngineRef }[] = [
  { label: "onnxruntime", ref: { kind: "onnxruntime" } },
  { label: "tfjs/wasm", ref: { kind: "tfjs", backend: "wasm" } },
  { label: "tfjs/cpu", ref: { kind: "tfjs", backend: "cpu" } },
];

Deno.test("registerLossTerm: the name joins the registry; bad and taken names are refused", () => {
  assert.ok(lossTerm(TOY));
  assert.equal(lossTermNames().at(-1), TOY);
  assert.equal(TOY in LOSS_TERMS, false, "the built-in table is not changed");
  assert.deepEqual([...termNeeds([{ name: TOY, weight: 1 }])], []);
  assert.deepEqual(termAttentionLayers([{ name: TOY, weight: 1 }], [0, 2, 4]), []);
  const term = { needs: [], description: "x", graph: LOSS_TERMS.kl.graph };
  assert.throws(() => registerLossTerm(TOY, term), /'toy_last_square' is already registered/);
  assert.throws(() => registerLossTerm("kl", term), /'kl' is already registered/);
  assert.throws(() => registerLossTerm("Toy-Term", term), /lower case letters, digits and _ only/);
});

Deno.test("distill params accept a registered term and refuse an unknown one, naming the known", () => {
  const parse = (losses: Record<string, unknown>) =>
    DistillParams.safeParse({ phases: [{ name: "p", losses, steps: 2 }] });
  const ok = parse({ [TOY]: 1, hidden_mse: { weight: 0.5 } });
  assert.ok(ok.success, JSON.stringify(ok.error?.issues));
  assert.deepEqual(Object.keys(ok.data.phases[0].losses), [TOY, "hidden_mse"]);
  const bad = parse({ toy_unknown: 1 });
  assert.equal(bad.success, false);
  const message = bad.error!.issues.map((i) => i.message).join("\n");
  assert.match(message, /unknown loss term 'toy_unknown': expected one of /);
  for (const name of ["attention_mse", "soft_ce", TOY]) assert.ok(message.includes(name), name);
});

Deno.test("a registered toy term trains on every executor and lowers itself", async () => {
  const model = Bert.create(
    {
      vocab_size: 40,
      hidden_size: 16,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      intermediate_size: 24,
      max_position_embeddings: 12,
      hidden_dropout_prob: 0,
      attention_probs_dropout_prob: 0,
    },
    { classifier: false },
    11,
  );
  // LayerNorm weights away from 1 and biases away from 0, so that the last state is not unit-RMS
  let k = 0;
  for (const [name, p] of model.params) {
    if (name.includes("LayerNorm.")) p.data.forEach((_, i) => p.data[i] += 0.3 * Math.sin(++k));
  }
  const B = 3, S = 6;
  const ids = Int32Array.from({ length: B * S }, (_, i) => 1 + ((i * 7) % 39));
  const mask = Int32Array.from({ length: B * S }, (_, i) => (i % S < S - (i / S | 0) ? 1 : 0));
  const batch: HostBatch = {
    inputIds: { data: ids, shape: [B, S] },
    attentionMask: { data: mask, shape: [B, S] },
    tokenTypeIds: { data: new Int32Array(B * S), shape: [B, S] },
  };
  const opts: DistillObjectiveOptions = {
    terms: [{ name: TOY, weight: 1 }],
    layerMap: [0, 1, 2],
    embeddings: true,
    projection: "shared",
  };
  const curves: Record<string, number[]> = {};
  for (const exec of EXECUTORS) {
    // by hand: the mean square of the inference graph's last hidden state
    const inf = await openInference(model, { engine: exec.ref, threads: 1 });
    const h = (await inf.run({ inputIds: ids, attentionMask: mask, batch: B, seq: S }))
      .last_hidden_state.data;
    await inf.close();
    let sum = 0;
    for (const v of h) sum += v * v;
    const byHand = sum / h.length;
    const reported = (await lossBreakdown(model, batch, opts, exec.ref))[TOY];
    assertClose([reported], [byHand], 1e-5, `${exec.label}: lossBreakdown`);

    const student = model.clone();
    const trainer = await Trainer.create(student, {
      objective: "distillation",
      objectiveOptions: opts,
      lr: () => 2e-2,
      weightDecay: 0,
      threads: 1,
      engine: exec.ref,
    });
    const losses: number[] = [];
    try {
      for (let step = 0; step < 5; step++) losses.push((await trainer.step(batch, step)).loss);
    } finally {
      await trainer.close();
    }
    assertClose([losses[0]], [byHand], 1e-5, `${exec.label}: first step's loss`);
    for (let i = 1; i < losses.length; i++) {
      assert.ok(losses[i] < losses[i - 1], `${exec.label}: ${losses}`);
    }
    assert.ok(losses.at(-1)! < 0.9 * losses[0], `${exec.label}: ${losses}`);
    // the trained student's own value is lower too
    const after = (await lossBreakdown(student, batch, opts, exec.ref))[TOY];
    assert.ok(after < losses.at(-1)!, `${exec.label}: ${after} after ${losses}`);
    curves[exec.label] = losses;
  }
  // the executors trained the same term the same way
  for (const exec of EXECUTORS.slice(1)) {
    assertClose(curves[exec.label], curves.onnxruntime, 1e-4, `${exec.label} vs onnxruntime`);
  }
});
