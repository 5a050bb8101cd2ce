/**
 * A genuinely full wasm heap (in its own test file: the heap never shrinks, so this process is
 * spent afterwards). Stock tfjs would write past the heap or into address 0 here.
 */

import assert from "node:assert/strict";
import { setBackend, tf, WasmHeapExhaustedError } from "../pipeline/engines/tfjs_backend.ts";

Deno.test("filling the 4 GiB wasm heap raises WasmHeapExhaustedError and corrupts nothing", async () => {
  await setBackend("wasm");
  const n = 300_000_000; // 1.2 GB each: the fourth cannot fit
  const a = tf.fill([n], 1.5);
  const b = tf.add(a, a); // 3.0
  const c = tf.add(a, b); // 4.5
  assert.throws(() => tf.add(b, c), (e: Error) => {
    assert.ok(e instanceof WasmHeapExhaustedError, String(e));
    assert.match(e.message, /could not allocate 1144\.4 MiB/);
    return true;
  });
  // What was there is intact: spot-check the ends and the middle of each tensor.
  for (const [t, v] of [[a, 1.5], [b, 3], [c, 4.5]] as const) {
    const last = tf.slice(t, [n - 1], [1]), first = tf.slice(t, [0], [1]);
    const mid = tf.slice(t, [n >> 1], [1]);
    assert.deepEqual([first, mid, last].map((x) => x.dataSync()[0]), [v, v, v]);
    tf.dispose([first, mid, last]);
  }
  tf.dispose([a, b, c]);
  // memory is reusable after freeing
  const d = tf.fill([n], 2);
  assert.equal(tf.sum(tf.slice(d, [0], [10])).dataSync()[0], 20);
  d.dispose();
});
