/**
 * Deterministic sampling and train/dev/test splitting by seed.
 * @module
 */

import { seededRandom, shuffle } from "../random.ts";
import type { SplitSpec } from "./types.ts";

const byIndex = (a: number, b: number) => a - b;

/** Keep at most `limit` items, chosen uniformly by `seed`, in their original order. */
export function sampleLimit<T>(items: T[], limit: number | undefined, seed: number): T[] {
  if (limit === undefined || items.length <= limit) return items;
  const rand = seededRandom(seed ^ 0x5bd1e995);
  const keep = shuffle(items.map((_, i) => i), rand).slice(0, limit).sort(byIndex);
  return keep.map((i) => items[i]);
}

/** The three parts of a split. */
export interface Splits<T> {
  /** Training items. */
  train: T[];
  /** Dev items. */
  dev: T[];
  /** Test items. */
  test: T[];
}

/**
 * Split items by seed: within each label (stratified; one group when unlabeled), shuffle and
 * take round(n·test) for test and round(n·dev) for dev, the rest for train. Every item lands in
 * exactly one part; each part keeps the items' original order. Same seed, same split.
 */
export function splitBySeed<T extends { label?: number }>(items: T[], split: SplitSpec): Splits<T> {
  const groups = new Map<number, number[]>();
  items.forEach((it, i) => {
    const key = it.label ?? -1;
    const g = groups.get(key);
    if (g) g.push(i);
    else groups.set(key, [i]);
  });
  const rand = seededRandom(split.seed);
  const parts = { train: [] as number[], dev: [] as number[], test: [] as number[] };
  for (const key of [...groups.keys()].sort(byIndex)) {
    const idx = shuffle(groups.get(key)!, rand);
    const nTest = Math.round(idx.length * split.test);
    const nDev = Math.round(idx.length * split.dev);
    idx.forEach((i, k) =>
      (k < nTest ? parts.test : k < nTest + nDev ? parts.dev : parts.train).push(i)
    );
  }
  const pick = (ix: number[]) => ix.sort(byIndex).map((i) => items[i]);
  return { train: pick(parts.train), dev: pick(parts.dev), test: pick(parts.test) };
}
