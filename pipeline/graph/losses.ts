/**
 * The distillation loss terms, written once, as graphs. Each term is one entry of
 * {@link LOSS_TERMS}: its YAML name (the key), what it needs from the teacher, the teacher layers
 * it reads, and its graph, built on the student's forward ({@link TermContext}). Every engine runs
 * that graph (and its backward, from the tape's rules). Adding a term is adding an entry here (or
 * {@link registerLossTerm} from user code) and one README row.
 *
 * Batches carry the teacher targets padded to the batch's length: `t_logits [B, C]` (`[B, S, C]`
 * per-token heads), `t_hidden_<i> [B, S, Ht]` (teacher hidden-state index i),
 * `t_scores_<l> [B, ht, S, S]` and `t_values_<l> [B, ht, S, dt]` (teacher layer l, 0-based).
 * Padded positions of teacher targets hold anything (zeros, NaN from the cache): they are
 * *selected away* (`Where`) before any arithmetic, never multiplied by a 0 mask. Every denominator
 * is clamped to ≥ 1, so a batch without real tokens gives 0.
 *
 * Definitions (s = student, t = teacher; heads matched by averaging groups of k consecutive heads
 * of the larger side when one count is k times the other; `len_b` real tokens of example b):
 * - `attention_mse` (TinyBERT): set every score ≤ −100 to 0 in s and t, then
 *   `Σ_{b,h,i,j real} (s − t)² / (h · Σ_b len_b²)` per mapped layer, summed over layers.
 * - `hidden_mse` (TinyBERT): `y = x·Wᵀ + b` (the learned projection `distill.fit_dense`, identity
 *   when the widths match), `Σ_{real tokens} Σ_d (y − t)² / (Σ_b len_b · Ht)` per mapped index
 *   (index 0 = embeddings when `embeddings`), summed.
 * - `soft_ce` (TinyBERT): `mean over rows × C of −softmax(z_t/T)·log_softmax(z_s/T)`, no T².
 * - `kl` (DistilBERT): `T² · (1/rows) · Σ p_t (log p_t − log p_s)`, `p = softmax(z/T)`.
 * - `cosine` (DistilBERT): `Σ_{real tokens} (1 − cos(s, t)) / Σ_b len_b` on the last mapped
 *   hidden states (projected), `‖x‖ = √(Σx² + ε²)`, ε = 1e-8.
 * - `attention_kl` (MiniLM): per head and real query row, KL of the attention distributions over
 *   real keys (padded keys at −1e9), `/ (h · Σ_b len_b)`, on the last mapped layer.
 * - `value_relation` (MiniLM): the same KL on relation scores `V·Vᵀ/√d` (real keys).
 * - `logit_mse`: mean of (z_s − z_t)² over rows × C (TinyBERT's prediction loss for regression).
 * - `hard_ce`: cross-entropy on the gold labels, mean over the labelled rows (label −100: none).
 *
 * Prediction rows (what `soft_ce`, `kl`, `logit_mse`, `hard_ce` compare): one per example for a
 * sequence classifier `[B, C]`; one per real token for a token classifier (gold: the labelled first
 * pieces); for QA the start and the end distribution over positions of every example (`[2B, S]`,
 * padding at −10000 on both sides), so `soft_ce` there is the mean CE of those 2B distributions.
 * @module
 */

import { type Dim, GraphBuildError, type Tape, type Value } from "./tape.ts";
import { DataType } from "./ir.ts";
import { type BertGraph, MASK_VALUE } from "./bert.ts";

/** What a loss term reads besides the student's own forward pass. */
export type LossInput = "scores" | "hidden" | "logits" | "values" | "labels";

/** The prediction head the prediction terms read. */
export type PredictionHead = "logits" | "tokens" | "span";

/** What a term's graph is built from. */
export interface TermContext {
  t: Tape;
  /** The student's forward. */
  student: BertGraph;
  /** Teacher hidden-state index for every student index 0..M. */
  layerMap: readonly number[];
  /** Number of student layers M. */
  M: number;
  /** `hidden_mse` includes the embedding output (index 0). */
  embeddings: boolean;
  /** Softmax temperature (`soft_ce`, `kl`; 1 when not given). */
  temperature: number;
  /** A teacher target by batch key (`t_scores_3`, `t_hidden_2`, `t_logits`): a graph input. */
  target(key: string): Value;
  /** The student's hidden state m projected to the teacher's width, `[B, S, Ht]`. */
  projected(m: number): Value;
  /** The real-token mask `[B, S]` as bool and float. */
  real: Value;
  realF: Value;
  /** `max(Σ keepF · factor, 1)`. */
  countOf(keepF: Value, factor: number): Value;
  /** Match head counts of `[B, h, ·, ·]` student/teacher values (group means). */
  matchHeads(s: Value, t: Value): [Value, Value];
  /** Prediction rows: the student's `[rows, K]`, the teacher's (same rows), and the gold ones. */
  rows: PredictionRows;
}

/** The rows the prediction-layer terms compare (see the module doc). */
export interface PredictionRows {
  head: PredictionHead;
  student(): Value;
  teacher(): Value;
  /** int64 gold targets of the student's rows (−100: skip the row). */
  gold(): Value;
  /** Σ over the compared rows of a per-element value `[rows, K]` (token heads: real rows only). */
  sum(x: Value): Value;
  /** Number of compared rows × `k` (≥ 1). */
  count(k: number): Value;
}

/** A loss term: one registry entry says everything the pipeline and the graph need. */
export interface LossTerm {
  /** Teacher outputs to cache or compute (`scores`, `hidden`, `logits`, `values`) or `labels`. */
  readonly needs: readonly LossInput[];
  /** One line for docs and error messages. */
  readonly description: string;
  /** Compares class distributions (refused on a regression task). */
  readonly classes?: boolean;
  /** Teacher attention layers it reads: every mapped layer (default) or only the top one. */
  readonly layers?: "mapped" | "last";
  /** The term's (unweighted) scalar value on the batch, as a graph. */
  graph(c: TermContext): Value;
}

const sumAll = (t: Tape, parts: Value[]) => parts.reduce((a, b) => t.add(a, b));

/** KL of row distributions over real keys, `/ (h · Σ len_b)` (MiniLM's attention/value terms). */
function rowKl(c: TermContext, s: Value, tt: Value): Value {
  const { t } = c;
  const g = t.g;
  const h = s.shape[1] as number;
  const unsq = (v: Value, axes: number[], shape: Dim[]) =>
    t.constant(g.node("Unsqueeze", [v.name, g.int64s("axes", axes)]), shape, v.type);
  const keyReal = unsq(c.real, [1, 2], ["B", 1, 1, "S"]);
  const queryReal = unsq(c.real, [1, 3], ["B", 1, "S", 1]);
  const zero = t.scalar(0), negBig = t.scalar(-1e9);
  const prep = (x: Value) => t.where(keyReal, t.where(queryReal, x, zero), negBig);
  const logPs = t.logSoftmax(prep(s));
  const logPt = t.detach(t.logSoftmax(prep(tt)));
  const perRow = t.sum(t.mul(t.exp(logPt), t.sub(logPt, logPs)), [-1]); // [B, h, S]
  const rows = unsq(c.real, [1], ["B", 1, "S"]);
  return t.div(t.sum(t.where(rows, perRow, zero)), c.countOf(c.realF, h));
}

/** `[B, S]` → `[B, S, 1]` (float or bool, as `v`). */
function perToken(t: Tape, v: Value): Value {
  return t.constant(
    t.g.node("Unsqueeze", [v.name, t.g.int64s("axes", [2])]),
    ["B", "S", 1],
    v.type,
  );
}

const BUILTIN = {
  attention_mse: {
    needs: ["scores"],
    description: "TinyBERT: MSE of pre-softmax attention scores over real query/key pairs",
    graph: (c) => {
      const { t } = c;
      const g = t.g;
      const pair = t.mul(
        t.constant(g.node("Unsqueeze", [c.realF.name, g.int64s("axes", [1, 3])]), ["B", 1, "S", 1]),
        t.constant(g.node("Unsqueeze", [c.realF.name, g.int64s("axes", [1, 2])]), ["B", 1, 1, "S"]),
      ); // [B, 1, S, S]: 1 on real (query, key) pairs
      const hundred = t.scalar(-100), zero = t.scalar(0);
      const parts: Value[] = [];
      for (let m = 1; m <= c.M; m++) {
        const tt = c.target(`t_scores_${c.layerMap[m] - 1}`);
        const [s, tm] = c.matchHeads(c.student.scores[m - 1], tt);
        const h = s.shape[1] as number;
        // TinyBERT: entries ≤ −100 (masked keys) set to 0 on both sides
        const t0 = t.mul(t.where(t.compare("Greater", tm, hundred), tm, zero), pair);
        const s0 = t.mul(t.where(t.compare("LessOrEqual", s, hundred), zero, s), pair);
        parts.push(t.div(t.sum(t.square(t.sub(s0, t0))), t.maxConst(t.scale(t.sum(pair), h), 1)));
      }
      return sumAll(t, parts);
    },
  },
  hidden_mse: {
    needs: ["hidden"],
    description: "TinyBERT: MSE of projected student hidden states (x·Wᵀ + b) over real tokens",
    graph: (c) => {
      const { t } = c;
      const keep = perToken(t, c.realF);
      const zero = t.scalar(0);
      const parts: Value[] = [];
      for (let m = c.embeddings ? 0 : 1; m <= c.M; m++) {
        const tt = c.target(`t_hidden_${c.layerMap[m]}`);
        const Ht = tt.shape[2] as number;
        // selected by the real tokens (a cached teacher has NaN at padded positions), not by
        // IsNaN/IsInf, which ONNX Runtime's WebGPU provider has no kernels for
        const t0 = t.where(perToken(t, c.real), tt, zero);
        const y0 = t.mul(c.projected(m), keep);
        parts.push(t.div(t.sum(t.square(t.sub(y0, t0))), c.countOf(c.realF, Ht)));
      }
      return sumAll(t, parts);
    },
  },
  soft_ce: {
    needs: ["logits"],
    classes: true,
    description: "TinyBERT: soft cross-entropy −softmax(z_t/T)·log_softmax(z_s/T), mean over B×C",
    graph: (c) => {
      const { t, rows } = c;
      const T = t.scalar(c.temperature);
      const pt = t.detach(t.softmax(t.div(rows.teacher(), T)));
      const logPs = t.logSoftmax(t.div(rows.student(), T));
      if (rows.head === "logits") return t.neg(t.mean(t.mul(pt, logPs)));
      // token rows: mean over real rows × C; QA: × 1 (each start/end distribution's CE)
      const C = rows.student().shape[1] as number;
      return t.neg(t.div(rows.sum(t.mul(pt, logPs)), rows.count(rows.head === "tokens" ? C : 1)));
    },
  },
  kl: {
    needs: ["logits"],
    classes: true,
    description: "DistilBERT: KL(softmax(z_t/T) ‖ softmax(z_s/T))·T², mean over the batch",
    graph: (c) => {
      const { t, rows } = c;
      const T = c.temperature;
      const logPt = t.detach(t.logSoftmax(t.div(rows.teacher(), t.scalar(T))));
      const logPs = t.logSoftmax(t.div(rows.student(), t.scalar(T)));
      const kl = rows.sum(t.mul(t.exp(logPt), t.sub(logPt, logPs)));
      return t.div(t.scale(kl, T * T), rows.count(1));
    },
  },
  cosine: {
    needs: ["hidden"],
    description: "DistilBERT: 1 − cosine of student and teacher hidden states over real tokens",
    graph: (c) => {
      const { t } = c;
      const s = c.projected(c.M);
      const tt = c.target(`t_hidden_${c.layerMap[c.M]}`);
      const keep = perToken(t, c.real);
      const zero = t.scalar(0);
      const s0 = t.where(keep, s, zero);
      const t0 = t.where(keep, tt, zero);
      const eps2 = t.scalar(1e-8 * 1e-8);
      const ns = t.sqrt(t.add(t.sum(t.square(s0), [-1]), eps2));
      const nt = t.sqrt(t.add(t.sum(t.square(t0), [-1]), eps2));
      const cos = t.div(t.sum(t.mul(s0, t0), [-1]), t.mul(ns, nt));
      const per = t.where(c.real, t.sub(t.scalar(1), cos), zero);
      return t.div(t.sum(per), c.countOf(c.realF, 1));
    },
  },
  attention_kl: {
    needs: ["scores"],
    layers: "last",
    description: "MiniLM: KL of attention distributions over real keys, mean over heads × rows",
    graph: (c) => {
      const tt = c.target(`t_scores_${c.layerMap[c.M] - 1}`);
      const [s, tm] = c.matchHeads(c.student.scores[c.M - 1], tt);
      return rowKl(c, s, tm);
    },
  },
  value_relation: {
    needs: ["values"],
    layers: "last",
    description: "MiniLM: KL of value relations softmax(V·Vᵀ/√d) over real keys",
    graph: (c) => {
      const { t } = c;
      const g = t.g;
      const tt = c.target(`t_values_${c.layerMap[c.M] - 1}`);
      const keep = t.constant(
        g.node("Unsqueeze", [c.real.name, g.int64s("axes", [1, 3])]),
        ["B", 1, "S", 1],
        DataType.BOOL,
      );
      const zero = t.scalar(0);
      const relation = (v: Value) => {
        const v0 = t.where(keep, v, zero);
        return t.div(t.matmul(v0, v0, true), t.scalar(Math.sqrt(v.shape[3] as number)));
      };
      const [s, tm] = c.matchHeads(relation(c.student.values[c.M - 1]), relation(tt));
      return rowKl(c, s, tm);
    },
  },
  logit_mse: {
    needs: ["logits"],
    description:
      "MSE between student and teacher logits (TinyBERT's prediction loss for regression)",
    graph: (c) => {
      const { t, rows } = c;
      const diff = t.square(t.sub(rows.student(), rows.teacher()));
      // QA: mean over 2B × S (padded positions at −10000 on both sides, difference 0)
      if (rows.head !== "tokens") return t.mean(diff);
      return t.div(rows.sum(diff), rows.count(rows.student().shape[1] as number));
    },
  },
  hard_ce: {
    needs: ["labels"],
    classes: true,
    description: "cross-entropy of the student's logits on the gold labels, mean over the batch",
    graph: (c) => c.t.crossEntropy(c.rows.student(), c.rows.gold()),
  },
} satisfies Record<string, LossTerm>;

/** The YAML names of the built-in loss terms (derived from the registry). */
export type LossTermName = keyof typeof BUILTIN;

const REGISTRY = new Map<string, LossTerm>(Object.entries(BUILTIN));

/** The built-in loss terms, by YAML name. */
export const LOSS_TERMS: Readonly<Record<LossTermName, LossTerm>> = Object.freeze({ ...BUILTIN });

/**
 * Add a loss term under `name` (user code: a term of one's own, trainable on every engine since
 * engines run its graph). Throws when the name is taken.
 */
export function registerLossTerm(name: string, term: LossTerm): void {
  if (!/^[a-z][a-z0-9_]*$/.test(name)) {
    throw new Error(`loss term name '${name}': lower case letters, digits and _ only`);
  }
  if (REGISTRY.has(name)) throw new Error(`loss term '${name}' is already registered`);
  REGISTRY.set(name, Object.freeze({ ...term }));
}

/** The term called `name`, or undefined. */
export function lossTerm(name: string): LossTerm | undefined {
  return REGISTRY.get(name);
}

/** Every registered term's name (built-in first). */
export function lossTermNames(): string[] {
  return [...REGISTRY.keys()];
}

/** One weighted loss term of a phase. */
export interface LossTermSpec {
  /** A registered term ({@link LossTermName} or one added with {@link registerLossTerm}). */
  name: LossTermName | (string & Record<never, never>);
  weight: number;
  /** Softmax temperature of `soft_ce` and `kl` (default 1). */
  temperature?: number;
}

/** The registered term `name`; throws naming the known ones. */
export function requireTerm(name: string): LossTerm {
  const term = REGISTRY.get(name);
  if (!term) {
    throw new GraphBuildError(`unknown loss term '${name}' (known: ${lossTermNames().join(", ")})`);
  }
  return term;
}

/** Which teacher outputs (and labels) a set of terms reads. */
export function termNeeds(terms: readonly LossTermSpec[]): Set<LossInput> {
  return new Set(terms.flatMap((t) => [...requireTerm(t.name).needs]));
}

/**
 * The teacher attention layers (0-based) a set of terms reads: every mapped layer for a term that
 * compares all of them (`attention_mse`), only the top mapped one for `layers: "last"`; sorted.
 */
export function termAttentionLayers(terms: readonly LossTermSpec[], layerMap: number[]): number[] {
  const layers = new Set<number>();
  const M = layerMap.length - 1;
  for (const t of terms) {
    const term = requireTerm(t.name);
    if (!term.needs.includes("scores") && !term.needs.includes("values")) continue;
    if (term.layers === "last") layers.add(layerMap[M] - 1);
    else for (let m = 1; m <= M; m++) layers.add(layerMap[m] - 1);
  }
  return [...layers].sort((a, b) => a - b);
}

/** Padded QA positions in the prediction rows (as the student's additive mask). */
export const SPAN_MASK_VALUE = MASK_VALUE;
