/**
 * Teacher outputs as the distillation losses get them: a batch's outputs cropped to per-example
 * records (checked element by element), and the online source's padded batch targets against the
 * float64 PyTorch reference (`tests/reference/bert_torch.py`).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { onlineSource, toRecords } from "../pipeline/distill/teacher_cache.ts";
import { Bert } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import type { TokenRows } from "../pipeline/store/tokens.ts";
import { assertClose, maxAbsErr, realKeyMask, rng, UNIT_FLOOR, withTempDir } from "./_util.ts";
import { type Inputs, PYTHON, runTorch } from "./_torch.ts";

function arange(shape: number[]) {
  const n = shape.reduce((a, b) => a * b, 1);
  return { data: Float32Array.from({ length: n }, (_, i) => i), shape };
}

Deno.test("records keep the mapped layers, cropped to each example's length", () => {
  const B = 2, S = 4, H = 3, nh = 2;
  const out = {
    logits: arange([B, 2]),
    hiddenStates: [arange([B, S, H]), arange([B, S, H]), arange([B, S, H])],
    attentionScores: [arange([B, nh, S, S]), arange([B, nh, S, S])],
  };
  out.hiddenStates[2].data.fill(7);
  const recs = toRecords(out, [3, 1], [0, 2], [1]);
  assert.equal(recs.length, 2);
  assert.deepEqual(Array.from(recs[1].logits!), [2, 3]);
  // hidden 0 of example 0: rows 0..2 of [4,3]
  assert.deepEqual(Array.from(recs[0].hidden[0]), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(Array.from(recs[0].hidden[1]), new Array(9).fill(7));
  // example 1 (offset 12) length 1: one row
  assert.deepEqual(Array.from(recs[1].hidden[0]), [12, 13, 14]);
  // scores of example 0, head 1, 3×3 block of a 4×4 map starting at (0*2+1)*16 = 16
  const s = recs[0].scores[0];
  assert.equal(s.length, 2 * 3 * 3);
  assert.deepEqual(Array.from(s.subarray(9, 18)), [16, 17, 18, 20, 21, 22, 24, 25, 26]);
  // example 1 head 0 starts at (1*2+0)*16 = 32; length 1: just [32]
  assert.deepEqual(Array.from(recs[1].scores[0]), [32, 48]);
});

Deno.test({
  name: "online teacher targets of a padded batch equal the PyTorch reference (values by hand)",
  ignore: !PYTHON,
  fn: () =>
    withTempDir(async (dir) => {
      const L = 3, H = 16, nh = 2, d = H / nh, C = 3;
      const teacher = Bert.create(
        {
          vocab_size: 60,
          hidden_size: H,
          num_hidden_layers: L,
          num_attention_heads: nh,
          intermediate_size: 24,
          max_position_embeddings: 16,
          id2label: { "0": "a", "1": "b", "2": "c" },
        },
        {},
        5,
      );
      await saveBert(teacher, join(dir, "teacher"));
      // rows of different lengths (so the batch is padded), both segment ids
      const r = rng(3);
      const lengths = Int32Array.from([5, 3, 7, 6]);
      const tokens: TokenRows = {
        ids: Array.from(lengths, (n) => Int32Array.from({ length: n }, () => 1 + (r() * 59 | 0))),
        types: Array.from(lengths, (n) => Int32Array.from({ length: n }, (_, i) => +(i > n / 2))),
        lengths,
        labels: new Int32Array(4),
      };
      const hidden = [0, 2, 3], attention = [1, 2];
      const source = onlineSource(
        teacher,
        tokens,
        hidden,
        attention,
        new Set(["logits", "hidden", "scores", "values"]),
        { threads: 1 },
      );
      const rows = [2, 0, 1]; // S = 7: rows 0 and 1 padded
      const batch = await source.load(0, rows);
      await source.close();
      await assert.rejects(() => source.load(0, rows), /closed/);
      const S = 7, B = rows.length;
      const mask = rows.map((q) => Array.from({ length: S }, (_, i) => +(i < lengths[q])));
      const pad = (a: Int32Array) => [...a, ...new Array(S - a.length).fill(0)];
      const { tensors: ref } = await runTorch(join(dir, "teacher"), {
        input_ids: rows.map((q) => pad(tokens.ids[q])),
        attention_mask: mask,
        token_type_ids: rows.map((q) => pad(tokens.types[q])),
      } as Inputs, dir);
      const get = (name: string) => ref.get(name)!;
      const unit = { floor: UNIT_FLOOR };
      // the same function of the same padded batch: padded positions compare too
      assert.deepEqual(batch.t_logits.shape, [B, C]);
      assertClose(batch.t_logits.data, get("logits").data, 1e-4, "t_logits", unit);
      for (const i of hidden) {
        assert.deepEqual(batch[`t_hidden_${i}`].shape, [B, S, H]);
        assertClose(
          batch[`t_hidden_${i}`].data,
          get(`hidden_states.${i}`).data,
          1e-4,
          `h${i}`,
          unit,
        );
      }
      assert.equal(batch.t_hidden_1, undefined);
      const real = realKeyMask(mask, nh), padded = real.map((x) => 1 - x);
      for (const l of attention) {
        const got = batch[`t_scores_${l}`], want = get(`attention_scores.${l}`).data;
        assert.deepEqual(got.shape, [B, nh, S, S]);
        assertClose(got.data, want, 1e-4, `s${l}`, { ...unit, where: real });
        // padded key columns: −10000 + score, which float32 resolves to ≈ 1e-3
        assert.ok(maxAbsErr(got.data, want, padded) < 2e-3, `s${l} padded keys`);
        // values: layer l's input through its value Linear, split into heads, in float64 here
        const h = get(`hidden_states.${l}`).data;
        const w = teacher.p(`encoder.layer.${l}.attention.self.value.weight`).data;
        const bias = teacher.p(`encoder.layer.${l}.attention.self.value.bias`).data;
        const v = new Float64Array(B * nh * S * d);
        for (let b = 0; b < B; b++) {
          for (let s = 0; s < S; s++) {
            for (let o = 0; o < H; o++) {
              let acc = bias[o];
              for (let k = 0; k < H; k++) acc += h[(b * S + s) * H + k] * w[o * H + k];
              const head = Math.floor(o / d);
              v[((b * nh + head) * S + s) * d + (o % d)] = acc;
            }
          }
        }
        assert.deepEqual(batch[`t_values_${l}`].shape, [B, nh, S, d]);
        assertClose(batch[`t_values_${l}`].data, v, 1e-4, `v${l}`, unit);
      }
      // the token inputs are padRows' (labels too), unchanged
      assert.deepEqual(Array.from(batch.inputIds.data.subarray(S, 2 * S)), pad(tokens.ids[0]));
      teacher.dispose();
    }),
});
