/**
 * The one seeded PRNG of tinystill (mulberry32) and the shuffles built on it: data splits, the
 * training order, MLM masking and the tokenize row order all draw from it, so the same seed gives
 * the same run on any backend. (`model/bert.ts` inlines the same generator, int32 only, in its
 * dropout mask for speed.)
 * @module
 */

/** A seeded PRNG (mulberry32) returning floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Shuffle `xs` in place (Fisher–Yates) with `rand`; returns it. */
export function shuffle<T>(xs: T[], rand: () => number): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/** A seeded permutation of `xs` (Fisher–Yates over mulberry32), `xs` left as it is. */
export function shuffled<T>(xs: readonly T[], seed: number): T[] {
  return shuffle(xs.slice(), seededRandom(seed ^ 0x2545f491));
}
