/**
 * The distillation loss terms of the registry (`pipeline/graph/losses.ts`), each term's graph
 * built on a small context whose student values are fed directly (scores, values, projected
 * hidden states, prediction rows: graph inputs), and run on ONNX Runtime and tfjs (wasm and cpu):
 * values computed by hand, and against float64 references written here with plain loops
 * (padding, temperature, T², head grouping, TinyBERT's ≤ −100 rule, NaN teacher padding), and
 * every gradient of the student values against float64 central differences of those references.
 * The registry itself: names, needs, layers; unknown and mismatched terms refused.
 *
 * The context here stands in for the training graph's (`train_graph.ts`), which builds the student
 * values from the BERT forward; that whole path is compared with PyTorch in `parity_test.ts`.
 */

import assert from "node:assert/strict";
import { type Dim, GraphBuildError, Tape, type Value } from "../pipeline/graph/tape.ts";
import { DataType } from "../pipeline/graph/ir.ts";
import type { BertGraph } from "../pipeline/graph/bert.ts";
import {
  LOSS_TERMS,
  lossTerm,
  lossTermNames,
  type PredictionRows,
  requireTerm,
  termAttentionLayers,
  type TermContext,
  termNeeds,
} from "../pipeline/graph/losses.ts";
import { buildLossGraph, TRAIN_OPSET } from "../pipeline/graph/train_graph.ts";
import { type EngineRef, openExecutor } from "../pipeline/engines/mod.ts";
import type { HostTensor } from "../pipeline/engines/executor.ts";
import { makeConfig } from "../pipeline/model/config.ts";
import { parameterShapes } from "../pipeline/model/bert.ts";
import { assertClose, randomArray } from "./_util.ts";

const EXECUTORS: { label: string; ref: EngineRef }[] = [
  { label: "onnxruntime", ref: { kind: "onnxruntime" } },
  { label: "tfjs/wasm", ref: { kind: "tfjs", backend: "wasm" } },
  { label: "tfjs/cpu", ref: { kind: "tfjs", backend: "cpu" } },
];
/** Per-element tolerance of a term's value (float32 graph vs float64 reference). */
const TOL = 1e-5;

// ---------- a term's graph on fed student values ----------

/** Values with their shape, and the symbolic dims the tape declares (`B`, `S`; as the shape). */
type Arr = { data: ArrayLike<number>; shape: number[]; dims?: Dim[] };

/** What the small context feeds: the student values a term reads, the teacher's, the mask. */
interface Spec {
  /** Real-token lengths; the batch is `[lens.length, S]`. */
  lens: number[];
  S: number;
  /** Student pre-softmax scores per layer `[B, h, S, S]`. */
  scores?: Arr[];
  /** Student value vectors per layer `[B, h, S, d]`. */
  values?: Arr[];
  /** Student hidden states already projected to the teacher's width, per index 0..M. */
  projected?: Arr[];
  /** Teacher targets by batch key (`t_scores_0`, `t_hidden_1`, …). */
  targets?: Record<string, Arr>;
  /** Prediction rows (sequence classifier: one per example). */
  rows?: { student: Arr; teacher: Arr; gold?: number[] };
  M?: number;
  layerMap?: number[];
  embeddings?: boolean;
  temperature?: number;
}

/** Student inputs (each gets a gradient output `grad:<name>`). */
function studentInputs(spec: Spec): [string, Arr][] {
  const out: [string, Arr][] = [];
  spec.scores?.forEach((a, l) => out.push([`s_scores_${l}`, a]));
  spec.values?.forEach((a, l) => out.push([`s_values_${l}`, a]));
  spec.projected?.forEach((a, m) => out.push([`s_projected_${m}`, a]));
  if (spec.rows) out.push(["s_rows", spec.rows.student]);
  return out;
}

/** Build term `name`'s graph on a context of fed values (loss and every student gradient). */
function termGraph(name: string, spec: Spec) {
  const t = new Tape();
  const g = t.g;
  const params = new Map<string, Value>();
  const param = (key: string, a: Arr) => {
    const v = t.param(key, a.dims ?? a.shape);
    params.set(key, v);
    return v;
  };
  const scores = (spec.scores ?? []).map((a, l) => param(`s_scores_${l}`, a));
  const values = (spec.values ?? []).map((a, l) => param(`s_values_${l}`, a));
  const projected = (spec.projected ?? []).map((a, m) => param(`s_projected_${m}`, a));
  const mask = t.input("attention_mask", ["B", "S"], DataType.INT64);
  const real = t.cast(mask, DataType.BOOL);
  const realF = t.cast(real, DataType.FLOAT);
  const fed = new Map<string, Value>();
  const target = (key: string) => {
    const a = spec.targets?.[key];
    if (!a) throw new Error(`no target ${key}`);
    if (!fed.has(key)) fed.set(key, t.input(key, a.dims ?? a.shape));
    return fed.get(key)!;
  };
  const countOf = (keepF: Value, factor: number) => t.maxConst(t.scale(t.sum(keepF), factor), 1);
  const matchHeads = (s: Value, tt: Value): [Value, Value] => {
    const hs = s.shape[1] as number, ht = tt.shape[1] as number;
    if (hs === ht) return [s, tt];
    return ht > hs ? [s, t.headGroupMean(tt, ht / hs)] : [t.headGroupMean(s, hs / ht), tt];
  };
  let rows: PredictionRows | undefined;
  if (spec.rows) {
    const r = spec.rows;
    const sRows = param("s_rows", r.student);
    const tRows = t.input("t_rows", r.teacher.shape);
    const gold = t.input("gold", [r.student.shape[0]], DataType.INT64);
    rows = {
      head: "logits",
      student: () => sRows,
      teacher: () => tRows,
      gold: () => gold,
      sum: (x) => t.sum(x),
      count: (k) => t.scalar(Math.max(r.student.shape[0] * k, 1)),
    };
  }
  const M = spec.M ?? 1;
  const ctx: TermContext = {
    t,
    student: { scores, values, hidden: [] } as unknown as BertGraph,
    layerMap: spec.layerMap ?? Array.from({ length: M + 1 }, (_, m) => m),
    M,
    embeddings: spec.embeddings ?? true,
    temperature: spec.temperature ?? 1,
    target,
    projected: (m) => projected[m],
    real,
    realF,
    countOf,
    matchHeads,
    rows: rows ?? ({} as PredictionRows),
  };
  const loss = requireTerm(name).graph(ctx);
  t.output(loss, "loss");
  const grads = t.gradients(loss, [...params.values()], true);
  for (const [p, gname] of grads) {
    g.output(gname, {
      name: `grad:${p}`,
      elemType: DataType.FLOAT,
      dims: [...params.get(p)!.shape],
    });
  }
  const model = g.toModel({ name: "term", opset: TRAIN_OPSET, irVersion: 8, producer: "test" });
  return { graph: g.graph(), model, grads: [...grads.keys()] };
}

function feedsOf(spec: Spec): Record<string, HostTensor> {
  const f32 = (a: Arr): HostTensor => ({ data: Float32Array.from(a.data), dims: a.shape });
  const feeds: Record<string, HostTensor> = {};
  for (const [k, a] of studentInputs(spec)) feeds[k] = f32(a);
  for (const [k, a] of Object.entries(spec.targets ?? {})) feeds[k] = f32(a);
  const maskData = new BigInt64Array(spec.lens.length * spec.S);
  spec.lens.forEach((len, b) => {
    for (let s = 0; s < len; s++) maskData[b * spec.S + s] = 1n;
  });
  feeds.attention_mask = { data: maskData, dims: [spec.lens.length, spec.S] };
  if (spec.rows) {
    feeds.t_rows = f32(spec.rows.teacher);
    const n = spec.rows.student.shape[0];
    feeds.gold = {
      data: BigInt64Array.from((spec.rows.gold ?? new Array(n).fill(0)).map(BigInt)),
      dims: [n],
    };
  }
  return feeds;
}

/** Term `name` on `spec` on every executor: its value and its student gradients. */
async function runTerm(
  name: string,
  spec: Spec,
): Promise<{ label: string; loss: number; grads: Map<string, Float32Array> }[]> {
  const built = termGraph(name, spec);
  const feeds = feedsOf(spec);
  const out = [];
  for (const exec of EXECUTORS) {
    const session = await (await openExecutor(exec.ref)).open(built.graph, built.model);
    try {
      const res = await session.run(feeds);
      const grads = new Map(
        built.grads.map((p) => [p, Float32Array.from(res[`grad:${p}`].data as Float32Array)]),
      );
      out.push({ label: exec.label, loss: (res.loss.data as Float32Array)[0], grads });
    } finally {
      await session.close();
    }
  }
  return out;
}

/** Assert term `name` on `spec` gives `expected` on every executor (0: |value| < 1e-6). */
async function expectTerm(name: string, spec: Spec, expected: number, tol = TOL): Promise<void> {
  onEvery(await runTerm(name, spec), (r) => {
    const where = `${name} [${r.label}]`;
    if (expected !== 0) assertClose([r.loss], [expected], tol, where);
    else assert.ok(Math.abs(r.loss) < 1e-6, `${where}: ${r.loss} is not 0`);
  });
}

/** Run `check` on every executor's result; throw one error naming every executor that failed. */
function onEvery<T extends { label: string }>(results: T[], check: (r: T) => void): void {
  const failed: string[] = [];
  for (const r of results) {
    try {
      check(r);
    } catch (e) {
      failed.push(e instanceof Error ? e.message : String(e));
    }
  }
  if (failed.length) throw new Error(`${failed.length} executor(s) failed:\n${failed.join("\n")}`);
}

/**
 * Term `name` on `spec` against `ref` (a float64 function of the student values): the value, and
 * every student gradient against central differences of `ref` (per element, floor 1e-2 × the
 * largest entry), on every executor.
 */
async function expectTermAndGradients(
  name: string,
  spec: Spec,
  ref: (s: Spec) => number,
): Promise<void> {
  const expected = ref(spec);
  const fd = new Map<string, Float64Array>();
  const h = 1e-4;
  for (const [key, a] of studentInputs(spec)) {
    const base = Float64Array.from(a.data);
    const grad = new Float64Array(base.length);
    for (let i = 0; i < base.length; i++) {
      const at = (x: number) => {
        const data = Float64Array.from(base);
        data[i] = x;
        return ref(withInput(spec, key, { data, shape: a.shape }));
      };
      grad[i] = (at(base[i] + h) - at(base[i] - h)) / (2 * h);
    }
    fd.set(key, grad);
  }
  onEvery(await runTerm(name, spec), (r) => {
    assertClose([r.loss], [expected], TOL, `${name} [${r.label}]`);
    for (const [key, want] of fd) {
      const got = r.grads.get(key);
      const largest = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      if (largest === 0) {
        assert.ok(!got || got.every((v) => v === 0), `${name} ${key}: gradient should be 0`);
        continue;
      }
      assert.ok(got, `${name} [${r.label}]: no gradient for ${key}`);
      assert.ok(got.every(Number.isFinite), `${name} [${r.label}]: ${key} gradient not finite`);
      assertClose(got, want, 1e-3, `${name} [${r.label}] d/d${key} vs central differences`, {
        floor: 1e-2 * largest,
      });
    }
  });
}

/** `spec` with student input `key` replaced. */
function withInput(spec: Spec, key: string, a: Arr): Spec {
  const copy: Spec = { ...spec };
  const [kind, index] = [key.replace(/_\d+$/, ""), Number(key.split("_").at(-1))];
  if (kind === "s_scores") copy.scores = spec.scores!.map((x, l) => (l === index ? a : x));
  else if (kind === "s_values") copy.values = spec.values!.map((x, l) => (l === index ? a : x));
  else if (kind === "s_projected") {
    copy.projected = spec.projected!.map((x, m) => (m === index ? a : x));
  } else if (key === "s_rows") copy.rows = { ...spec.rows!, student: a };
  return copy;
}

// ---------- float64 references (plain loops) ----------

/** Mean of groups of k consecutive heads of x [B, h, S, T]. */
function refAvgHeads(x: ArrayLike<number>, B: number, h: number, k: number, ST: number): number[] {
  const g = h / k;
  const out = new Array(B * g * ST).fill(0);
  for (let b = 0; b < B; b++) {
    for (let gi = 0; gi < g; gi++) {
      for (let e = 0; e < ST; e++) {
        let sum = 0;
        for (let j = 0; j < k; j++) sum += x[(b * h + gi * k + j) * ST + e];
        out[(b * g + gi) * ST + e] = sum / k;
      }
    }
  }
  return out;
}

/** Both sides at a common head count, by group means of the larger. */
function refMatch(
  s: ArrayLike<number>,
  hs: number,
  t: ArrayLike<number>,
  ht: number,
  B: number,
  ST: number,
): [ArrayLike<number>, ArrayLike<number>, number] {
  if (ht > hs) return [s, refAvgHeads(t, B, ht, ht / hs, ST), hs];
  if (hs > ht) return [refAvgHeads(s, B, hs, hs / ht, ST), t, ht];
  return [s, t, hs];
}

function refAttentionMse(
  s0: ArrayLike<number>,
  hs: number,
  t0: ArrayLike<number>,
  ht: number,
  lens: number[],
  S: number,
): number {
  const B = lens.length;
  const [s, t, h] = refMatch(s0, hs, t0, ht, B, S * S);
  let sum = 0, count = 0;
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < h; hh++) {
      for (let i = 0; i < lens[b]; i++) {
        for (let j = 0; j < lens[b]; j++) {
          const idx = ((b * h + hh) * S + i) * S + j;
          const sv = s[idx] <= -100 ? 0 : s[idx];
          const tv = t[idx] <= -100 ? 0 : t[idx];
          sum += (sv - tv) ** 2;
          count++;
        }
      }
    }
  }
  return sum / count;
}

/** Σ over real tokens of |y − t|² / (Σ len · H). */
function refHiddenMse(
  y: ArrayLike<number>,
  t: ArrayLike<number>,
  H: number,
  lens: number[],
  S: number,
): number {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let s = 0; s < len; s++) {
      for (let o = 0; o < H; o++) sum += (y[(b * S + s) * H + o] - t[(b * S + s) * H + o]) ** 2;
      count += H;
    }
  });
  return sum / count;
}

function logSoftmax(z: number[]): number[] {
  const m = Math.max(...z);
  const l = Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
  return z.map((v) => v - m - l);
}

function rowsOf(x: ArrayLike<number>, B: number, C: number): number[][] {
  return Array.from({ length: B }, (_, b) => Array.from({ length: C }, (_, c) => x[b * C + c]));
}

function refSoftCe(zs: ArrayLike<number>, zt: ArrayLike<number>, B: number, C: number, T: number) {
  let sum = 0;
  const rs = rowsOf(zs, B, C), rt = rowsOf(zt, B, C);
  for (let b = 0; b < B; b++) {
    const ls = logSoftmax(rs[b].map((v) => v / T)), lt = logSoftmax(rt[b].map((v) => v / T));
    for (let c = 0; c < C; c++) sum -= Math.exp(lt[c]) * ls[c];
  }
  return sum / (B * C);
}

/** KL(p_t ‖ p_s) summed over the rows (no mean, no T²). */
function refKlSum(zs: ArrayLike<number>, zt: ArrayLike<number>, B: number, C: number, T: number) {
  let sum = 0;
  const rs = rowsOf(zs, B, C), rt = rowsOf(zt, B, C);
  for (let b = 0; b < B; b++) {
    const ls = logSoftmax(rs[b].map((v) => v / T)), lt = logSoftmax(rt[b].map((v) => v / T));
    for (let c = 0; c < C; c++) sum += Math.exp(lt[c]) * (lt[c] - ls[c]);
  }
  return sum;
}

function refCosine(
  s: ArrayLike<number>,
  t: ArrayLike<number>,
  H: number,
  lens: number[],
  S: number,
) {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let p = 0; p < len; p++) {
      let dot = 0, ns = 0, nt = 0;
      for (let d = 0; d < H; d++) {
        const a = s[(b * S + p) * H + d], c = t[(b * S + p) * H + d];
        dot += a * c;
        ns += a * a;
        nt += c * c;
      }
      sum += 1 - dot / (Math.sqrt(ns + 1e-16) * Math.sqrt(nt + 1e-16));
      count++;
    }
  });
  return sum / count;
}

/** KL over real keys of matched [B, h, S, S] scores, mean over heads × real query rows. */
function refRowKl(
  s: ArrayLike<number>,
  t: ArrayLike<number>,
  h: number,
  lens: number[],
  S: number,
) {
  let sum = 0, count = 0;
  lens.forEach((len, b) => {
    for (let hh = 0; hh < h; hh++) {
      for (let i = 0; i < len; i++) {
        const base = ((b * h + hh) * S + i) * S;
        const rs = Array.from({ length: len }, (_, j) => s[base + j]);
        const rt = Array.from({ length: len }, (_, j) => t[base + j]);
        const ls = logSoftmax(rs), lt = logSoftmax(rt);
        for (let j = 0; j < len; j++) sum += Math.exp(lt[j]) * (lt[j] - ls[j]);
        count++;
      }
    }
  });
  return sum / count;
}

/** V·Vᵀ/√d of values [B, h, S, d] → [B, h, S, S]. */
function refRelation(v: ArrayLike<number>, B: number, h: number, S: number, d: number): number[] {
  const out = new Array(B * h * S * S).fill(0);
  for (let bh = 0; bh < B * h; bh++) {
    for (let i = 0; i < S; i++) {
      for (let j = 0; j < S; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += v[(bh * S + i) * d + e] * v[(bh * S + j) * d + e];
        out[(bh * S + i) * S + j] = dot / Math.sqrt(d);
      }
    }
  }
  return out;
}

// ---------- test data ----------

const S = 5;
const LENS = [5, 3]; // example 2 is shorter: positions 3, 4 are padding
const B = LENS.length;

function isPadScore(idx: number, h: number): boolean {
  const j = idx % S, i = Math.floor(idx / S) % S, b = Math.floor(idx / (S * S * h));
  return i >= LENS[b] || j >= LENS[b];
}

/** Padding in a [B, S, width] tensor, or in a [B, heads, S, width] one when `heads` is given. */
function isPadToken(idx: number, width: number, heads = 1): boolean {
  const p = Math.floor(idx / width) % S, b = Math.floor(idx / (width * S * heads));
  return p >= LENS[b];
}

/** A copy with padded entries replaced: NaN for teachers, big finite junk for students. */
function junk(x: Float32Array, isPad: (i: number) => boolean, value: number): Float32Array {
  return x.map((v, i) => (isPad(i) ? (Number.isNaN(value) ? NaN : value * ((i % 7) - 3)) : v));
}

/** Scores `[B, h, S, S]`, values `[B, h, S, d]`, hidden states `[B, S, H]`. */
const sc = (data: ArrayLike<number>, h: number): Arr => ({
  data,
  shape: [B, h, S, S],
  dims: ["B", h, "S", "S"],
});
const vals = (data: ArrayLike<number>, h: number, d: number): Arr => ({
  data,
  shape: [B, h, S, d],
  dims: ["B", h, "S", d],
});
const hid = (data: ArrayLike<number>, H: number): Arr => ({
  data,
  shape: [B, S, H],
  dims: ["B", "S", H],
});

// ---------- the registry ----------

Deno.test("LOSS_TERMS: every built-in term with what it needs and which layers it reads", () => {
  const needs = Object.fromEntries(
    Object.entries(LOSS_TERMS).map(([name, term]) => [name, [...term.needs]]),
  );
  assert.deepEqual(needs, {
    attention_mse: ["scores"],
    hidden_mse: ["hidden"],
    soft_ce: ["logits"],
    kl: ["logits"],
    cosine: ["hidden"],
    attention_kl: ["scores"],
    value_relation: ["values"],
    logit_mse: ["logits"],
    hard_ce: ["labels"],
  });
  for (const [name, term] of Object.entries(LOSS_TERMS)) {
    assert.ok(term.description.length > 10, name);
    assert.equal(lossTerm(name), term);
    // the class-distribution terms are refused on regression; logit_mse is its prediction loss
    assert.equal(!!term.classes, ["soft_ce", "kl", "hard_ce"].includes(name), name);
    assert.equal(
      term.layers ?? "mapped",
      name === "attention_kl" || name === "value_relation" ? "last" : "mapped",
      name,
    );
  }
  assert.deepEqual(lossTermNames().slice(0, 9), Object.keys(LOSS_TERMS));
  assert.ok(Object.isFrozen(LOSS_TERMS));
  // what a set of terms reads from the teacher, and which attention layers (0-based)
  const spec = (...names: string[]) => names.map((name) => ({ name, weight: 1 }));
  assert.deepEqual(
    [...termNeeds(spec("attention_mse", "hidden_mse", "hard_ce"))].sort(),
    ["hidden", "labels", "scores"],
  );
  assert.deepEqual(termAttentionLayers(spec("attention_mse"), [0, 2, 4, 6]), [1, 3, 5]);
  assert.deepEqual(termAttentionLayers(spec("attention_kl"), [0, 2, 4, 6]), [5]);
  assert.deepEqual(termAttentionLayers(spec("value_relation", "hidden_mse"), [0, 3, 6]), [5]);
  assert.deepEqual(termAttentionLayers(spec("hidden_mse", "soft_ce"), [0, 3, 6]), []);
  assert.throws(
    () => requireTerm("attention_mes"),
    (e) =>
      e instanceof GraphBuildError && e.message.includes("unknown loss term 'attention_mes'") &&
      e.message.includes("known: attention_mse, hidden_mse"),
  );
  assert.throws(() => termNeeds(spec("nope")), /unknown loss term 'nope'/);
});

Deno.test("head counts that do not divide are refused when the graph is built", () => {
  const config = makeConfig({
    vocab_size: 20,
    hidden_size: 8,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    intermediate_size: 8,
    max_position_embeddings: 8,
  });
  const heads = { classifier: false, mlm: false };
  for (const term of ["attention_mse", "attention_kl"]) {
    assert.throws(
      () =>
        buildLossGraph({
          config,
          heads,
          params: parameterShapes(config, heads),
          objective: "distillation",
          objectiveOptions: {
            terms: [{ name: term, weight: 1 }],
            layerMap: [0, 1],
            embeddings: true,
            projection: "shared",
          },
          dropout: false,
          targets: { t_scores_0: [1, 3, 4, 4] },
        }),
      (e) =>
        e instanceof GraphBuildError &&
        e.message.includes("teacher and student head counts are incompatible (3, 2)"),
      term,
    );
  }
});

// ---------- values by hand and against the loop references ----------

Deno.test("attention_mse: literal case with padding and the ≤ −100 rule", async () => {
  // B = 2, 1 head, S = 2; example 2 has one real token.
  // Example 1: s = [[1, 2], [3, −150]], t = [[0, 2], [1, 5]]; −150 → 0, so the squared errors are
  //   1, 0, 4, (0 − 5)² = 25 → 30. Example 2: only pair (0, 0) counts: (4 − 1)² = 9.
  // Count = heads · Σ len² = 1 · (4 + 1) = 5 → loss = 39 / 5 = 7.8.
  const lit = (data: number[]): Arr => ({ data, shape: [2, 1, 2, 2], dims: ["B", 1, "S", "S"] });
  await expectTerm("attention_mse", {
    lens: [2, 1],
    S: 2,
    scores: [lit([1, 2, 3, -150, 4, 77, -10000, 8])],
    targets: { t_scores_0: lit([0, 2, 1, 5, 1, NaN, NaN, NaN]) },
  }, 7.8);
  // the teacher's −100 is ≤ −100 (set to 0); −99.5 is not: (1 − 0)² + (2 + 99.5)² over 2 pairs
  await expectTerm("attention_mse", {
    lens: [2, 1],
    S: 2,
    scores: [lit([1, 2, 0, 0, 0, 0, 0, 0])],
    targets: { t_scores_0: lit([-100, -99.5, 0, 0, 0, 0, 0, 0]) },
  }, (1 + 101.5 ** 2) / 5);
});

Deno.test("attention_mse over two layers: random scores vs reference, padding never matters, gradients", async () => {
  const h = 2, n = B * h * S * S;
  const s = [randomArray(n, 1).map((v) => v * 3), randomArray(n, 3).map((v) => v * 3)];
  const t = [randomArray(n, 2).map((v) => v * 3), randomArray(n, 4).map((v) => v * 3)];
  // real entries ≤ −100 on both sides, and one exactly −100 (the rule is ≤)
  s[0][1] = -200;
  t[0][7] = -100;
  t[1][1 * S * S + 2] = -1e4;
  const ref = (x: Spec) =>
    [0, 1].reduce(
      (acc, l) =>
        acc +
        refAttentionMse(x.scores![l].data, h, x.targets![`t_scores_${2 * l + 1}`].data, h, LENS, S),
      0,
    );
  // layer map [0, 2, 4]: student layer m compares with teacher layer 2m (t_scores_1, t_scores_3)
  const base: Spec = {
    lens: LENS,
    S,
    M: 2,
    layerMap: [0, 2, 4],
    scores: [sc(s[0], h), sc(s[1], h)],
    targets: { t_scores_1: sc(t[0], h), t_scores_3: sc(t[1], h) },
  };
  const expected = ref(base);
  // without the rule the number would differ
  const clamp = (x: Float32Array) => x.map((v) => Math.max(v, -99));
  assert.ok(
    Math.abs(
      expected -
        refAttentionMse(clamp(s[0]), h, clamp(t[0]), h, LENS, S) -
        refAttentionMse(s[1], h, clamp(t[1]), h, LENS, S),
    ) > 1,
  );
  await expectTermAndGradients("attention_mse", base, ref);
  // padded entries: junk in the student, NaN in the teacher
  await expectTerm("attention_mse", {
    ...base,
    scores: base.scores!.map((a) =>
      sc(junk(a.data as Float32Array, (i) => isPadScore(i, h), 1000), h)
    ),
    targets: {
      t_scores_1: sc(junk(t[0], (i) => isPadScore(i, h), NaN), h),
      t_scores_3: sc(junk(t[1], (i) => isPadScore(i, h), NaN), h),
    },
  }, expected);
});

Deno.test("head grouping: teacher 4 heads vs student 2, student 4 vs teacher 2 (attention_mse, attention_kl)", async () => {
  const n2 = B * 2 * S * S, n4 = B * 4 * S * S;
  const s2 = randomArray(n2, 3), t4h = randomArray(n4, 4);
  const s4 = randomArray(n4, 5), t2 = randomArray(n2, 6);
  const tAvg = refAvgHeads(t4h, B, 4, 2, S * S); // teacher heads (0,1), (2,3) averaged
  const sAvg = refAvgHeads(s4, B, 4, 2, S * S);
  const spec = (s: ArrayLike<number>, hs: number, t: ArrayLike<number>, ht: number): Spec => ({
    lens: LENS,
    S,
    scores: [sc(s, hs)],
    targets: { t_scores_0: sc(t, ht) },
  });
  await expectTermAndGradients(
    "attention_mse",
    spec(s2, 2, t4h, 4),
    (x) => refAttentionMse(x.scores![0].data, 2, tAvg, 2, LENS, S),
  );
  // the student grouped: every student head gets a gradient (checked against the differences)
  await expectTermAndGradients(
    "attention_mse",
    spec(s4, 4, t2, 2),
    (x) => refAttentionMse(refAvgHeads(x.scores![0].data, B, 4, 2, S * S), 2, t2, 2, LENS, S),
  );
  await expectTerm("attention_kl", spec(s2, 2, t4h, 4), refRowKl(s2, tAvg, 2, LENS, S));
  await expectTerm("attention_kl", spec(s4, 4, t2, 2), refRowKl(sAvg, t2, 2, LENS, S));
});

Deno.test("hidden_mse: projected states vs the teacher over real tokens, embeddings on and off", async () => {
  const Ht = 4;
  const y = [0, 1, 2].map((m) => randomArray(B * S * Ht, 10 + m));
  const t = [0, 1, 2].map((m) => randomArray(B * S * Ht, 20 + m));
  const spec = (embeddings: boolean, yy = y, tt = t): Spec => ({
    lens: LENS,
    S,
    M: 2,
    layerMap: [0, 1, 2],
    embeddings,
    projected: yy.map((a) => hid(a, Ht)),
    targets: Object.fromEntries(tt.map((a, i) => [`t_hidden_${i}`, hid(a, Ht)])),
  });
  const ref = (x: Spec) =>
    (x.embeddings ? [0, 1, 2] : [1, 2]).reduce(
      (acc, m) =>
        acc + refHiddenMse(x.projected![m].data, x.targets![`t_hidden_${m}`].data, Ht, LENS, S),
      0,
    );
  await expectTermAndGradients("hidden_mse", spec(true), ref);
  await expectTermAndGradients("hidden_mse", spec(false), ref);
  // index 0 alone is what embeddings: false leaves out
  assert.ok(ref(spec(true)) - ref(spec(false)) > 0.1);
  // junk in the student's padding, NaN in the teacher's: the same value
  await expectTerm(
    "hidden_mse",
    spec(
      true,
      y.map((a) => junk(a, (i) => isPadToken(i, Ht), 50)),
      t.map((a) => junk(a, (i) => isPadToken(i, Ht), NaN)),
    ),
    ref(spec(true)),
  );
});

Deno.test("soft_ce and kl: 2 classes by hand, T = 1 and T = 2", async () => {
  // z_s = [1, 0], z_t = [0, 2], T = 2: z_t/T = [0, 1] → p_t = [1, e]/(1 + e) = [0.268941, 0.731059];
  // log_softmax(z_s/T) = [0.5, 0] − log(1 + e^0.5) = [−0.474077, −0.974077];
  // soft CE = −(0.268941·(−0.474077) + 0.731059·(−0.974077)) / (B·C = 2) = 0.839606 / 2 = 0.419803.
  // log p_t = [−1.313262, −0.313262]; KL = 0.268941·(−0.839185) + 0.731059·0.660815 = 0.257403,
  // times T² = 4 → 1.029613. At T = 1: soft CE 0.597029, KL 0.828725.
  const rows = (T: number): Spec => ({
    lens: [2],
    S: 2,
    temperature: T,
    rows: { student: { data: [1, 0], shape: [1, 2] }, teacher: { data: [0, 2], shape: [1, 2] } },
  });
  await expectTerm("soft_ce", rows(2), 0.419803, 2e-6);
  await expectTerm("kl", rows(2), 1.029613, 2e-6);
  await expectTerm("soft_ce", rows(1), 0.597029, 2e-6);
  await expectTerm("kl", rows(1), 0.828725, 2e-6);

  const Bn = 4, C = 3;
  const zs = randomArray(Bn * C, 30).map((v) => v * 4),
    zt = randomArray(Bn * C, 31).map((v) => v * 4);
  for (const T of [1, 2]) {
    const spec: Spec = {
      lens: [1, 1, 1, 1],
      S: 1,
      temperature: T,
      rows: { student: { data: zs, shape: [Bn, C] }, teacher: { data: zt, shape: [Bn, C] } },
    };
    await expectTermAndGradients(
      "soft_ce",
      spec,
      (x) => refSoftCe(x.rows!.student.data, zt, Bn, C, T),
    );
    await expectTermAndGradients(
      "kl",
      spec,
      (x) => (T * T * refKlSum(x.rows!.student.data, zt, Bn, C, T)) / Bn,
    );
  }
});

Deno.test("cosine: real tokens only; same direction gives 0", async () => {
  const H = 4;
  const s = randomArray(B * S * H, 40), t = randomArray(B * S * H, 41);
  const spec = (ss: Float32Array, tt: Float32Array): Spec => ({
    lens: LENS,
    S,
    M: 1,
    projected: [hid(ss, H), hid(ss, H)],
    targets: { t_hidden_1: hid(tt, H) },
  });
  const ref = (x: Spec) => refCosine(x.projected![1].data, t, H, LENS, S);
  await expectTermAndGradients("cosine", spec(s, t), ref);
  await expectTerm(
    "cosine",
    spec(junk(s, (i) => isPadToken(i, H), 30), junk(t, (i) => isPadToken(i, H), NaN)),
    ref(spec(s, t)),
  );
  await expectTerm("cosine", spec(s, s.map((v) => 3 * v)), 0);
});

Deno.test("attention_kl: distributions over real keys of the last mapped layer", async () => {
  const h = 2, n = B * h * S * S;
  const s = randomArray(n, 50).map((v) => v * 3), t = randomArray(n, 51).map((v) => v * 3);
  // the student as the model produces it: −10000 added on padded keys; teacher padding NaN
  const sModel = s.map((v, i) => {
    const j = i % S, b = Math.floor(i / (S * S * h));
    return j >= LENS[b] ? v - 10000 : v;
  });
  const tJ = junk(t, (i) => isPadScore(i, h), NaN);
  // layer map [0, 1, 3]: the last student layer (index 1) against teacher layer 2 (t_scores_2)
  const spec = (ss: Float32Array, tt: Float32Array): Spec => ({
    lens: LENS,
    S,
    M: 2,
    layerMap: [0, 1, 3],
    scores: [sc(randomArray(n, 52), h), sc(ss, h)],
    targets: { t_scores_2: sc(tt, h) },
  });
  await expectTermAndGradients(
    "attention_kl",
    spec(s, t),
    (x) => refRowKl(x.scores![1].data, t, h, LENS, S),
  );
  await expectTerm("attention_kl", spec(sModel, tJ), refRowKl(s, t, h, LENS, S));
  await expectTerm("attention_kl", spec(t, tJ), 0); // identical distributions on real keys
});

Deno.test("value_relation: relations V·Vᵀ/√d with different head widths and head counts", async () => {
  const hs = 2, ds = 3, ht = 4, dt = 5;
  const vs = randomArray(B * hs * S * ds, 60).map((v) => v * 2);
  const vt = randomArray(B * ht * S * dt, 61).map((v) => v * 2);
  const rt = refAvgHeads(refRelation(vt, B, ht, S, dt), B, ht, ht / hs, S * S);
  const spec = (v: Float32Array, t: Float32Array, h: number, d: number): Spec => ({
    lens: LENS,
    S,
    values: [vals(v, hs, ds)],
    targets: { t_values_0: vals(t, h, d) },
  });
  await expectTermAndGradients(
    "value_relation",
    spec(vs, vt, ht, dt),
    (x) => refRowKl(refRelation(x.values![0].data, B, hs, S, ds), rt, hs, LENS, S),
  );
  const vtSame = randomArray(B * hs * S * dt, 62);
  await expectTerm(
    "value_relation",
    spec(vs, vtSame, hs, dt),
    refRowKl(refRelation(vs, B, hs, S, ds), refRelation(vtSame, B, hs, S, dt), hs, LENS, S),
  );
  await expectTerm(
    "value_relation",
    spec(
      junk(vs, (i) => isPadToken(i, ds, hs), 20),
      junk(vt, (i) => isPadToken(i, dt, ht), NaN),
      ht,
      dt,
    ),
    refRowKl(refRelation(vs, B, hs, S, ds), rt, hs, LENS, S),
  );
});

Deno.test("hard_ce and logit_mse: by hand and against the loop reference", async () => {
  // logits [2, 0], label 0: −log_softmax = log(1 + e^−2) = 0.126928
  // logits [0, 0], label 1: log 2 = 0.693147 → mean 0.410038; a −100 row does not count
  const rows: Spec["rows"] = {
    student: { data: [2, 0, 0, 0, 5, -5], shape: [3, 2] },
    teacher: { data: [0, 0, 0, 0, 0, 0], shape: [3, 2] },
    gold: [0, 1, -100],
  };
  await expectTerm("hard_ce", { lens: [1, 1, 1], S: 1, rows }, (0.1269280110429726 + Math.LN2) / 2);
  // (0.5 − 1)² = 0.25, (−1 − 1)² = 4, (2 − 2)² = 0, (3 − 0)² = 9 → mean 13.25 / 4 = 3.3125
  await expectTerm("logit_mse", {
    lens: [1, 1],
    S: 1,
    rows: {
      student: { data: [0.5, -1, 2, 3], shape: [2, 2] },
      teacher: { data: [1, 1, 2, 0], shape: [2, 2] },
    },
  }, 3.3125);
  const Bn = 5, C = 3;
  const z = randomArray(Bn * C, 70).map((v) => v * 3), labels = [2, 0, 1, 1, 2];
  const zt = randomArray(Bn * C, 71).map((v) => v * 3);
  const spec: Spec = {
    lens: [1, 1, 1, 1, 1],
    S: 1,
    rows: {
      student: { data: z, shape: [Bn, C] },
      teacher: { data: zt, shape: [Bn, C] },
      gold: labels,
    },
  };
  await expectTermAndGradients("hard_ce", spec, (x) => {
    let ce = 0;
    rowsOf(x.rows!.student.data, Bn, C).forEach((r, b) => (ce -= logSoftmax(r)[labels[b]]));
    return ce / Bn;
  });
  await expectTermAndGradients("logit_mse", spec, (x) => {
    let sum = 0;
    for (let i = 0; i < Bn * C; i++) sum += (x.rows!.student.data[i] - zt[i]) ** 2;
    return sum / (Bn * C);
  });
});
