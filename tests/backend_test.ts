/**
 * The tfjs backend module (`pipeline/tfjs/backend.ts`, what the tfjs executor runs on): the wasm
 * kernel fills and reroutes, each against the cpu backend (the reference), the allocator guard,
 * and backend selection errors.
 */

import assert from "node:assert/strict";
import {
  type BackendName,
  BackendUnavailableError,
  setBackend,
  tf,
  WasmHeapExhaustedError,
} from "../pipeline/engines/tfjs_backend.ts";
import { assertClose, randomArray, UNIT_FLOOR } from "./_util.ts";

const TOL = 1e-4;

Deno.test("BatchMatMul: every transpose/batch combination matches cpu", async () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[37, 19], [19, 23], false, false],
    [[19, 37], [19, 23], true, false],
    [[37, 19], [23, 19], false, true],
    [[19, 37], [23, 19], true, true],
    [[3, 17, 9], [3, 9, 11], false, false], // batched (attention)
    [[3, 9, 17], [3, 9, 11], true, false],
    [[3, 17, 9], [3, 11, 9], false, true], // Q·Kᵀ
    [[3, 9, 17], [3, 11, 9], true, true],
    [[2, 3, 8, 5], [2, 3, 5, 7], false, false], // 4-D [B, heads, S, d]
    [[2, 3, 8, 5], [2, 3, 8, 5], false, true],
    [[2, 3, 8, 5], [2, 3, 8, 7], true, false],
    [[4, 10, 6], [6, 5], false, false], // rank-2 weight broadcast over a batch
    [[4, 10, 6], [5, 6], false, true],
    [[10, 6], [4, 6, 5], false, false], // rank-2 left operand broadcast
    [[1, 6], [6, 1], false, false], // degenerate
    [[4, 0, 6], [4, 6, 3], false, false], // empty
  ];
  for (const [sa, sb, ta, tb] of cases) {
    const a = randomArray(sa.reduce((x, y) => x * y, 1), 1);
    const b = randomArray(sb.reduce((x, y) => x * y, 1), 2);
    const [[ref], [got]] = await onBackends(
      ["cpu", "wasm"],
      () => [tf.matMul(tf.tensor(a, sa), tf.tensor(b, sb), ta, tb)],
    );
    // per element; sums of up to 37 products of U(−1, 1) operands can cancel to ≈ 0, and their
    // rounding (≈ 1e-7 × the terms) is absolute: UNIT_FLOOR
    assertClose(got, ref, TOL, `matMul ${sa}${ta ? "ᵀ" : ""} × ${sb}${tb ? "ᵀ" : ""}`, {
      floor: UNIT_FLOOR,
    });
  }
});

Deno.test("BatchMatMul: gradients of transposed and batched products match cpu", async () => {
  const a = randomArray(2 * 3 * 7 * 5, 3), b = randomArray(2 * 3 * 7 * 5, 4);
  const res = await onBackends(["cpu", "wasm"], () => {
    const ta = tf.tensor(a, [2, 3, 7, 5]), tb = tf.tensor(b, [2, 3, 7, 5]);
    const f = (x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.sin(tf.matMul(x, y, false, true)));
    const [ga, gb] = tf.grads(f)([ta, tb]);
    return [ga, gb];
  });
  assertClose(res[1][0], res[0][0], TOL, "d/da");
  assertClose(res[1][1], res[0][1], TOL, "d/db");
});

Deno.test("UnsortedSegmentSum: filled on wasm, matches cpu incl. repeats and out-of-range ids", async () => {
  const x = randomArray(7 * 4, 5);
  const ids = [3, 0, 3, 3, 9, -1, 1]; // 9 and -1 are dropped
  const [[ref], [got]] = await onBackends(
    ["cpu", "wasm"],
    () => [tf.unsortedSegmentSum(tf.tensor(x, [7, 4]), tf.tensor1d(ids, "int32"), 5)],
  );
  assertClose(got, ref, TOL, "unsortedSegmentSum");
  // by hand: row 0 = x1, row 1 = x6, row 3 = x0 + x2 + x3, rows 2 and 4 empty (cpu uses the
  // same one-pass fill, so this is the independent check)
  const expected = new Float32Array(5 * 4);
  for (let j = 0; j < 4; j++) {
    expected[0 * 4 + j] = x[4 + j];
    expected[1 * 4 + j] = x[24 + j];
    expected[3 * 4 + j] = x[j] + x[8 + j] + x[12 + j];
  }
  assertClose(got, expected, 1e-6, "unsortedSegmentSum by hand");
});

Deno.test("embedding lookup gradient (gather → segment sum) matches cpu", async () => {
  const table = randomArray(11 * 6, 6);
  const ids = [1, 4, 4, 0, 10, 4, 2, 1];
  const [[refG, refY], [gotG, gotY]] = await onBackends(["cpu", "wasm"], () => {
    const t = tf.tensor(table, [11, 6]);
    const idx = tf.tensor2d(ids, [2, 4], "int32");
    const f = (w: tf.Tensor) => tf.sum(tf.square(tf.gather(w, idx)));
    return [tf.grad(f)(t), tf.gather(t, idx)];
  });
  assertClose(gotY, refY, TOL, "gather");
  assertClose(gotG, refG, TOL, "gather gradient");
});

Deno.test("GatherV2 on wasm rejects out-of-range ids with a clear error", async () => {
  await setBackend("wasm");
  const t = tf.zeros([5, 3]);
  assert.throws(
    () => tf.gather(t, tf.tensor1d([1, 5], "int32")),
    /index value 5 is not in \[0, 4\]/,
  );
  t.dispose();
});

Deno.test("Sum over leading axes matches cpu (keepDims both ways), inner axes untouched", async () => {
  const x = randomArray(6 * 5 * 4, 7);
  const res = await onBackends(["cpu", "wasm"], () => {
    const t = tf.tensor(x, [6, 5, 4]);
    return [
      tf.sum(t, 0),
      tf.sum(t, [0, 1]),
      tf.sum(t, [0, 1], true),
      tf.sum(t, -1),
      tf.sum(t, [1]),
      tf.sum(t),
    ];
  });
  res[0].forEach((ref, i) => assertClose(res[1][i], ref, TOL, `sum case ${i}`));
  assert.equal(res[1][2].length, 4);
});

Deno.test("Identity on wasm shares data; disposing either side keeps the other valid", async () => {
  await setBackend("wasm");
  const a = tf.tensor1d([1, 2, 3]);
  const b = tf.clone(a);
  a.dispose();
  assert.deepEqual(Array.from(b.dataSync()), [1, 2, 3]);
  const c = tf.clone(b);
  b.dispose();
  assert.deepEqual(Array.from(c.dataSync()), [1, 2, 3]);
  c.dispose();
});

Deno.test("a full wasm heap is a clear error, not corruption", async () => {
  await setBackend("wasm");
  const before = tf.memory().numTensors;
  // 4.4 GB cannot fit in the 4 GiB wasm address space.
  assert.throws(() => tf.zeros([1100, 1000, 1000]), WasmHeapExhaustedError);
  assert.throws(() => tf.zeros([1100, 1000, 1000]), /wasm heap exhausted.*micro-batch/);
  // and the backend still works afterwards
  const t = tf.add(tf.tensor1d([1, 2]), 1);
  assert.deepEqual(Array.from(t.dataSync()), [2, 3]);
  t.dispose();
  assert.ok(tf.memory().numTensors <= before + 2);
});

Deno.test("unavailable and unknown backends say what to install", async () => {
  await assert.rejects(() => setBackend("tensorflow"), (e: Error) => {
    assert.ok(e instanceof BackendUnavailableError);
    assert.match(e.message, /@tensorflow\/tfjs-node/);
    assert.match(e.message, /deno\.json/);
    return true;
  });
  await assert.rejects(() => setBackend("tensorflow-gpu"), /@tensorflow\/tfjs-node-gpu/);
  // deno-lint-ignore no-explicit-any
  await assert.rejects(() => setBackend("tpu" as any), /unknown backend name.*wasm/);
  assert.equal(await setBackend("auto"), "wasm");
  assert.equal(tf.getBackend(), "wasm");
});

/**
 * Run `f` on each backend (same seedable inputs built inside `f`) and return the host values of
 * the tensors it returns, backend by backend.
 */
export async function onBackends(
  backends: BackendName[],
  f: () => tf.Tensor[],
): Promise<Float32Array[][]> {
  const out: Float32Array[][] = [];
  for (const b of backends) {
    await setBackend(b);
    const ts = f();
    out.push(ts.map((t) => Float32Array.from(t.dataSync())));
    tf.dispose(ts);
  }
  return out;
}
