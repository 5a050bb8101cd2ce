/**
 * Shared test helpers: per-element relative-error comparison (with an absolute floor and a mask
 * of the entries to compare), and running a computation on two backends.
 */

import assert from "node:assert/strict";
import { InputError } from "../pipeline/errors.ts";

/**
 * Default denominator floor of {@link relErr}. It is absolute: an entry whose reference value is
 * below it in magnitude is held to |a − b| ≤ tol · floor instead of being divided by ≈ 0. 1e-4
 * leaves scalars and small tensors (losses, gradients ≈ 1e-3) all but purely relative; callers
 * comparing values of order one pass {@link UNIT_FLOOR}.
 */
export const REL_FLOOR = 1e-4;

/**
 * Denominator floor for float32 values of order one (activations, scores, logits, products of
 * O(1) operands). Their rounding error is absolute — about 1e-7 × the size of the terms summed,
 * not of the result — so an entry that cancels to near 0 cannot be held to its own magnitude;
 * below 0.1 it is held to tol · 0.1 (1e-5 at tol 1e-4, ≈ 100 float32 ulps of 1).
 */
export const UNIT_FLOOR = 0.1;

/** Options of {@link relErr} and {@link assertClose}. */
export interface CloseOptions {
  /** Absolute denominator floor (default {@link REL_FLOOR}); see {@link relErr}. */
  floor?: number;
  /**
   * Compare only the entries `i` with a truthy `where[i]` (same length as the values), e.g. the
   * real key columns of attention scores ({@link realKeyMask}); the others are ignored.
   */
  where?: ArrayLike<number | boolean>;
}

/** The worst entry of a per-element comparison: its error and index (−1 when all agree). */
function worstEntry(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  per: (d: number, ref: number) => number,
  where?: ArrayLike<number | boolean>,
): { err: number; index: number } {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  if (where && where.length !== a.length) {
    throw new Error(`where has ${where.length} entries, the values ${a.length}`);
  }
  let err = 0, index = -1, compared = 0;
  for (let i = 0; i < a.length; i++) {
    if (where && !where[i]) continue;
    compared++;
    const e = per(Math.abs(a[i] - b[i]), b[i]);
    if (Number.isNaN(e)) return { err: NaN, index: i }; // NaN on either side fails every bound
    if (e > err) [err, index] = [e, i];
  }
  if (compared === 0 && a.length > 0) throw new Error("where selects no entry to compare");
  return { err, index };
}

/**
 * Per-element relative error of `a` against the reference `b`:
 * max over the compared entries of |a_i − b_i| / max(|b_i|, floor).
 *
 * Each entry is held to its own magnitude, so a large entry elsewhere in the tensor (the −10000
 * attention-mask offset, one big logit) does not loosen the check on the others. `floor`
 * (absolute, default {@link REL_FLOOR}) bounds the denominator for entries near 0, which are
 * thereby compared absolutely at tol · floor. `where` restricts the comparison to some entries
 * (e.g. unmasked ones). NaN in either array gives NaN, which fails every `<=` bound.
 */
export function relErr(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  opts: CloseOptions = {},
): number {
  return worstEntry(a, b, perElement(opts.floor ?? REL_FLOOR), opts.where).err;
}

/** |a_i − b_i| / max(|b_i|, floor), as a per-entry error for {@link worstEntry}. */
function perElement(floor: number): (d: number, ref: number) => number {
  return (d, ref) => d / Math.max(Math.abs(ref), floor);
}

/** max |a_i − b_i| over the entries selected by `where` (all when omitted); NaN propagates. */
export function maxAbsErr(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  where?: ArrayLike<number | boolean>,
): number {
  return worstEntry(a, b, (d) => d, where).err;
}

/**
 * Assert `relErr(actual, expected, opts) <= tol` (per element, see {@link relErr}); the message
 * names what was compared and the worst entry.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
  opts: CloseOptions = {},
): void {
  const floor = opts.floor ?? REL_FLOOR;
  const { err, index } = worstEntry(actual, expected, perElement(floor), opts.where);
  if (!(err <= tol)) {
    throw new Error(
      `${what}: relative error ${err.toExponential(3)} > ${tol} at [${index}]: ` +
        `${actual[index]} vs expected ${expected[index]} (floor ${floor})`,
    );
  }
}

/**
 * Which entries of attention scores `[batch, heads, seq, seq]` lie in a real key column: 1 where
 * `attentionMask[b][j]` is non-zero, 0 in the padded columns that carry the additive −10000.
 * Rows of padded queries are ordinary scores and count as real.
 */
export function realKeyMask(
  attentionMask: ArrayLike<ArrayLike<number>>,
  heads: number,
): Uint8Array {
  const B = attentionMask.length, S = B ? attentionMask[0].length : 0;
  const out = new Uint8Array(B * heads * S * S);
  for (let b = 0; b < B; b++) {
    const m = attentionMask[b];
    if (m.length !== S) {
      throw new Error(`attention mask row ${b} has ${m.length} entries, not ${S}`);
    }
    for (let i = 0; i < heads * S; i++) {
      for (let j = 0; j < S; j++) out[(b * heads * S + i) * S + j] = m[j] ? 1 : 0;
    }
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
