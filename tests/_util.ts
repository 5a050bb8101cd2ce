/** Shared test helpers: relative-error comparison and running a computation on two backends. */

import assert from "node:assert/strict";
import { type BackendName, setBackend, tf } from "../pipeline/tfjs/backend.ts";
import { InputError } from "../pipeline/errors.ts";

/** max |a − b| / max(1e-6, max |b|): the relative error used throughout the tests. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= num)) num = d; // NaN propagates as a failure
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-6);
}

/** Assert `relErr(actual, expected) <= tol`, naming what was compared. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
): void {
  const e = relErr(actual, expected);
  if (!(e <= tol)) throw new Error(`${what}: relative error ${e.toExponential(3)} > ${tol}`);
}

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

/** A deterministic PRNG (mulberry32) for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` values uniform in [-1, 1) from a seeded PRNG. */
export function randomArray(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

/** Run `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tinystill_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Assert that `fn` throws (or rejects with) an InputError whose message contains every part. */
export async function assertInputError(fn: () => unknown, parts: string[]): Promise<InputError> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof InputError, `expected InputError, got ${err}`);
  for (const p of parts) {
    assert.ok(err.message.includes(p), `message ${JSON.stringify(err.message)} lacks "${p}"`);
  }
  return err;
}
