/**
 * Which teacher layer each student layer learns from (TinyBERT's mapping function g).
 *
 * Index 0 is the embedding output on both sides and always maps 0 → 0. For student layers
 * m = 1..M of a teacher with N layers:
 * - `uniform` (the paper's default): m → m·N/M (needs M to divide N; TinyBERT4 of BERT-base:
 *   1→3, 2→6, 3→9, 4→12);
 * - `last`: the top M teacher layers, m → N − M + m;
 * - an explicit list of M teacher layers (for m = 1..M), each in 1..N, non-decreasing.
 * @module
 */

import { InputError } from "../errors.ts";

/** How a pipeline file asks for a mapping. */
export type LayerMapSpec = "uniform" | "last" | number[];

/**
 * The teacher hidden-state index for every student hidden-state index `0..M` (so the result has
 * `M + 1` entries and starts with 0). Attention layers map as `map[m] - 1` for m ≥ 1.
 */
export function resolveLayerMap(
  spec: LayerMapSpec,
  teacherLayers: number,
  studentLayers: number,
  where = "layer_map",
): number[] {
  const N = teacherLayers, M = studentLayers;
  if (M < 1 || N < 1) throw new Error(`layer counts must be ≥ 1 (teacher ${N}, student ${M})`);
  if (M > N) {
    throw new InputError("the student has more layers than the teacher", {
      field: where,
      expected: `≤ ${N} student layers`,
      got: String(M),
    });
  }
  if (spec === "uniform") {
    if (N % M !== 0) {
      throw new InputError(`uniform mapping needs the student's layers to divide the teacher's`, {
        field: where,
        expected: `a divisor of ${N}`,
        got: `${M} student layers`,
        hint: `Use "last" or an explicit list of ${M} teacher layers.`,
      });
    }
    return Array.from({ length: M + 1 }, (_, m) => (m * N) / M);
  }
  if (spec === "last") return Array.from({ length: M + 1 }, (_, m) => (m === 0 ? 0 : N - M + m));
  if (!Array.isArray(spec) || spec.length !== M) {
    throw new InputError("explicit layer map has the wrong length", {
      field: where,
      expected: `${M} teacher layers (one per student layer)`,
      got: JSON.stringify(spec),
    });
  }
  spec.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 1 || t > N) {
      throw new InputError("teacher layer out of range", {
        field: `${where}[${i}]`,
        expected: `integer in 1..${N}`,
        got: JSON.stringify(t),
      });
    }
    if (i > 0 && t < spec[i - 1]) {
      throw new InputError("teacher layers must not decrease", {
        field: `${where}[${i}]`,
        expected: `≥ ${spec[i - 1]}`,
        got: String(t),
      });
    }
  });
  return [0, ...spec];
}

/** The teacher hidden-state indices a mapping reads (what teacher-forward must cache). */
export function teacherHiddenIndices(map: number[]): number[] {
  return [...new Set(map)].sort((a, b) => a - b);
}

/** The teacher attention layers (0-based) a mapping reads: `map[m] − 1` for m ≥ 1. */
export function teacherAttentionLayers(map: number[]): number[] {
  return [...new Set(map.slice(1).map((t) => t - 1))].sort((a, b) => a - b);
}
