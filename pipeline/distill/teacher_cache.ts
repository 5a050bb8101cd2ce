/**
 * The teacher-output cache, in one place: what it holds, how big it will be, how a batch of
 * teacher outputs becomes per-example records (written by `teacher-forward`), and how those
 * records become distillation batches again (read by `distill`), along with the same batches
 * computed by the teacher online. Both run the teacher the one way inference runs
 * (`openInference` on its inference graph, ONNX Runtime by default) through {@link runTeacher}.
 *
 * Per example the cache holds the logits, the mapped hidden states and the mapped pre-softmax
 * attention scores, each cropped to the example's real length `len` (padded positions are neither
 * stored nor used by the losses; the −10000 key offset is re-created from the length when a batch
 * is rebuilt): `C + |hidden|·len·H + |attention|·heads·len²` values of 2 (F16) or 4 (F32) bytes.
 * Attention dominates: a 12-head layer at len 128 is 196,608 values per example.
 * @module
 */

import { join } from "node:path";
import type { HostArray, HostBatch } from "../data/batch.ts";
import type { EngineRef } from "../engines/mod.ts";
import {
  batchInputs,
  type Inference,
  type InferenceOptions,
  openInference,
} from "../engines/inference.ts";
import { InputError } from "../errors.ts";
import type { Bert } from "../model/bert.ts";
import { headLogits, headOutputNames } from "../graph/export.ts";
import { type ColumnSpec, PartReader } from "../store/parquet.ts";
import { padRows, type TokenRows } from "../store/tokens.ts";
import type { BatchSource } from "../train/loop.ts";

// ---------------------------------------------------------------------------------------------
// running the teacher

/**
 * A batch's teacher outputs on the host, by layer. The arrays are sparse: only the indices asked
 * of {@link runTeacher} are set.
 */
export interface TeacherOutputs {
  /**
   * The head's logits: `[B, C]`; per token `[B, S, C]` (token classification) or `[B, S, 2]`
   * (QA: span start at index 0, end at 1).
   */
  logits?: HostArray;
  /** `hiddenStates[i]`: hidden state `i` (0 = embedding output), `[B, S, H]`. */
  hiddenStates?: HostArray[];
  /**
   * `attentionScores[l]`: layer `l`'s pre-softmax scores `[B, heads, S, S]`, with the additive
   * `(1 − mask)·(−10000)` on padded key columns.
   */
  attentionScores?: HostArray[];
  /** `values[l]`: layer `l`'s value vectors `[B, heads, S, d]`. */
  values?: HostArray[];
}

/** Which teacher outputs a batch needs (layer indices as in {@link TeacherOutputs}). */
export interface TeacherWants {
  logits: boolean;
  hidden: readonly number[];
  scores: readonly number[];
  values?: readonly number[];
}

/**
 * The options of the teacher's inference graph for `wants`: every hidden state and score as
 * outputs when any layer is wanted (plus the value vectors when those are), no masked-LM logits.
 */
export function teacherGraphOptions(wants: TeacherWants): InferenceOptions {
  const values = (wants.values?.length ?? 0) > 0;
  const layers = wants.hidden.length > 0 || wants.scores.length > 0 || values;
  return { outputs: layers ? "all" : "logits", values, mlm: false };
}

/**
 * Run the teacher's inference graph (opened with {@link teacherGraphOptions}) on a padded host
 * batch (`inputIds`, `attentionMask`, `tokenTypeIds`, each `[B, S]`), fetching only the outputs
 * `wants` names.
 */
export async function runTeacher(
  inference: Inference,
  teacher: Pick<Bert, "heads">,
  batch: HostBatch,
  wants: TeacherWants,
): Promise<TeacherOutputs> {
  const values = wants.values ?? [];
  const names = [
    ...(wants.logits ? headOutputNames(teacher) : []),
    ...wants.hidden.map((i) => `hidden_state_${i}`),
    ...wants.scores.map((l) => `attention_scores_${l}`),
    ...values.map((l) => `attention_values_${l}`),
  ];
  const res = await inference.run(batchInputs(batch), names);
  const host = (name: string): HostArray => ({ data: res[name].data, shape: res[name].dims });
  const out: TeacherOutputs = { hiddenStates: [], attentionScores: [], values: [] };
  for (const i of wants.hidden) out.hiddenStates![i] = host(`hidden_state_${i}`);
  for (const l of wants.scores) out.attentionScores![l] = host(`attention_scores_${l}`);
  for (const l of values) out.values![l] = host(`attention_values_${l}`);
  if (wants.logits) {
    const head = headLogits(teacher, res);
    out.logits = { data: head.data, shape: head.dims };
  }
  return out;
}

/** One example's cached teacher outputs. */
export interface TeacherRecord {
  /** Real (unpadded) length. */
  length: number;
  logits?: Float32Array;
  /** One `[length, H]` array per kept hidden state. */
  hidden: Float32Array[];
  /** One `[heads, length, length]` array per kept attention layer. */
  scores: Float32Array[];
}

/** Rows `0..len` of example `b` of a `[B, S, H]` array. */
function cropHidden(h: HostArray, b: number, len: number): Float32Array {
  const [, S, H] = h.shape;
  const base = b * S * H;
  return h.data.slice(base, base + len * H) as Float32Array;
}

/** The top-left `len × len` block of every head of example `b` of a `[B, heads, S, S]` array. */
function cropScores(s: HostArray, b: number, len: number): Float32Array {
  const [, nh, S] = s.shape;
  const out = new Float32Array(nh * len * len);
  for (let h = 0; h < nh; h++) {
    for (let q = 0; q < len; q++) {
      const src = ((b * nh + h) * S + q) * S;
      out.set(s.data.subarray(src, src + len), (h * len + q) * len);
    }
  }
  return out;
}

/**
 * Split a batch's teacher outputs into per-example records, keeping hidden states
 * `hiddenIndices` (0 = embeddings) and attention layers `attentionLayers` (0-based).
 */
export function toRecords(
  out: TeacherOutputs,
  lengths: ArrayLike<number>,
  hiddenIndices: number[],
  attentionLayers: number[],
): TeacherRecord[] {
  const records: TeacherRecord[] = [];
  for (let b = 0; b < lengths.length; b++) {
    const len = lengths[b];
    const rec: TeacherRecord = {
      length: len,
      hidden: hiddenIndices.map((i) => cropHidden(out.hiddenStates![i], b, len)),
      scores: attentionLayers.map((l) => cropScores(out.attentionScores![l], b, len)),
    };
    if (out.logits && out.logits.shape.length === 3) {
      // per token (token classification, QA): the first `len` positions, [len, C]
      const [, S, C] = out.logits.shape;
      rec.logits = out.logits.data.slice(b * S * C, (b * S + len) * C) as Float32Array;
    } else if (out.logits) {
      const C = out.logits.shape[1];
      rec.logits = out.logits.data.slice(b * C, (b + 1) * C) as Float32Array;
    }
    records.push(rec);
  }
  return records;
}

/** The Parquet columns of a cache split: length, label, logits, hidden_<i>, scores_<l>. */
export function cacheColumns(
  numLabels: number,
  hiddenIndices: number[],
  attentionLayers: number[],
  dtype: "F16" | "F32",
  /** Token classification / QA: `[length, numLabels]` logits per row. */
  perToken = false,
): ColumnSpec[] {
  const logits: ColumnSpec = perToken
    ? { name: "logits", kind: "float-blob", dtype: "F32" }
    : { name: "logits", kind: "float-blob", shape: [numLabels], dtype: "F32" };
  return [
    { name: "length", kind: "int32" },
    { name: "label", kind: "int32" },
    ...(numLabels ? [logits] : []),
    ...hiddenIndices.map((i) => ({ name: `hidden_${i}`, kind: "float-blob" as const, dtype })),
    ...attentionLayers.map((l) => ({ name: `scores_${l}`, kind: "float-blob" as const, dtype })),
  ];
}

/** The float columns of a part, from its records in row order (see {@link cacheColumns}). */
export function recordColumns(
  recs: TeacherRecord[],
  logits: boolean,
  hiddenIndices: number[],
  attentionLayers: number[],
): Record<string, Float32Array[]> {
  const cols: Record<string, Float32Array[]> = {};
  if (logits) cols.logits = recs.map((r) => r.logits!);
  hiddenIndices.forEach((i, k) => cols[`hidden_${i}`] = recs.map((r) => r.hidden[k]));
  attentionLayers.forEach((l, k) => cols[`scores_${l}`] = recs.map((r) => r.scores[k]));
  return cols;
}

// ---------------------------------------------------------------------------------------------
// reading: distillation batches (`t_logits`, `t_hidden_<i>`, `t_scores_<l>`, `t_values_<l>`)

/** `cache.json`: what a teacher-forward output holds (checked against the distill stage). */
export interface CacheInfo {
  layer_map: number[];
  hidden_indices: number[];
  attention_layers: number[];
  dtype: "F16" | "F32";
  labels: string[] | null;
}

/** Read `cache.json` of a teacher-forward output. */
export async function readCacheInfo(cacheDir: string): Promise<CacheInfo> {
  return JSON.parse(await Deno.readTextFile(join(cacheDir, "cache.json")));
}

/** Pad `rows` of `[len, …]` blobs into one `[B, S, …]` host array (zeros elsewhere). */
function padHidden(blobs: Float32Array[], lengths: number[], S: number): HostArray {
  const B = blobs.length, H = lengths[0] ? blobs[0].length / lengths[0] : 0;
  const out = new Float32Array(B * S * H);
  blobs.forEach((b, i) => out.set(b, i * S * H));
  return { data: out, shape: [B, S, H] };
}

/** Pad `[h, len, len]` score blobs into `[B, h, S, S]`. */
function padScores(blobs: Float32Array[], lengths: number[], S: number): HostArray {
  const B = blobs.length;
  const len0 = lengths[0];
  const h = len0 ? blobs[0].length / (len0 * len0) : 1;
  const out = new Float32Array(B * h * S * S);
  blobs.forEach((b, i) => {
    const L = lengths[i];
    for (let k = 0; k < h; k++) {
      for (let q = 0; q < L; q++) {
        out.set(b.subarray((k * L + q) * L, (k * L + q + 1) * L), ((i * h + k) * S + q) * S);
      }
    }
  });
  return { data: out, shape: [B, h, S, S] };
}

/**
 * Cached logits of some rows as one batch array: `[B, C]`, or for token classification and QA
 * (the token rows have per-token targets) `[B, S, C]` padded with NaN past each row's length, so
 * a loss that read padding would show it (the prediction rows gather or mask real positions).
 */
export function padLogits(arrs: Float32Array[], tokens: TokenRows, rows: number[]): HostArray {
  const B = rows.length;
  if (!tokens.tokenLabels && !tokens.startPositions) {
    const C = arrs[0].length, data = new Float32Array(B * C);
    arrs.forEach((l, i) => data.set(l, i * C));
    return { data, shape: [B, C] };
  }
  let S = 1;
  for (const r of rows) S = Math.max(S, tokens.lengths[r]);
  const C = arrs[0].length / tokens.lengths[rows[0]];
  const data = new Float32Array(B * S * C).fill(NaN);
  arrs.forEach((l, i) => {
    if (l.length !== tokens.lengths[rows[i]] * C) {
      throw new Error(`teacher cache row ${rows[i]}: ${l.length} logits, expected length × ${C}`);
    }
    data.set(l, i * S * C);
  });
  return { data, shape: [B, S, C] };
}

/** Batches of token rows with the teacher's cached outputs (batches stay inside a part). */
export async function cacheSource(
  cacheDir: string,
  tokens: TokenRows,
  hidden: number[],
  attention: number[],
  logits: boolean,
): Promise<BatchSource> {
  const reader = await PartReader.open(join(cacheDir, "train"));
  const cols = [
    "length",
    ...(logits ? ["logits"] : []),
    ...hidden.map((i) => `hidden_${i}`),
    ...attention.map((l) => `scores_${l}`),
  ];
  let cached: { group: number; columns: Record<string, unknown> } | null = null;
  if (hidden.length === 0 && attention.length === 0) {
    // logits only (a prediction phase): read them once, then batches come from memory
    const all: Float32Array[] = [];
    for await (const part of reader.parts(["logits"])) {
      all.push(...(part.columns.logits as Float32Array[]));
    }
    const rows = all.length;
    return {
      groups: [{ start: 0, end: rows }],
      lengths: tokens.lengths,
      load(_group, rs) {
        const batch = padRows(tokens, rs);
        if (logits) batch.t_logits = padLogits(rs.map((r) => all[r]), tokens, rs);
        return Promise.resolve(batch);
      },
    };
  }
  return {
    groups: reader.index.parts.map((p) => ({ start: p.firstRow, end: p.firstRow + p.rowCount })),
    lengths: tokens.lengths,
    async load(group, rows) {
      if (cached?.group !== group) {
        cached = { group, columns: (await reader.readPart(group, cols)).columns };
      }
      const first = reader.index.parts[group].firstRow;
      const batch = padRows(tokens, rows);
      const S = batch.inputIds.shape[1];
      const lengths = rows.map((r) => tokens.lengths[r]);
      const cachedLen = cached.columns.length as Int32Array;
      rows.forEach((r, i) => {
        if (cachedLen[r - first] !== lengths[i]) {
          throw new Error(
            `teacher cache row ${r} has length ${cachedLen[r - first]}, tokens ${lengths[i]}`,
          );
        }
      });
      const pick = (name: string) =>
        rows.map((r) => (cached!.columns[name] as Float32Array[])[r - first]);
      if (logits) batch.t_logits = padLogits(pick("logits"), tokens, rows);
      for (const i of hidden) batch[`t_hidden_${i}`] = padHidden(pick(`hidden_${i}`), lengths, S);
      for (const l of attention) {
        batch[`t_scores_${l}`] = padScores(pick(`scores_${l}`), lengths, S);
      }
      return batch;
    },
  };
}

/** A {@link BatchSource} that runs the teacher: {@link OnlineSource.close} releases it. */
export interface OnlineSource extends BatchSource {
  /** Release the teacher's inference session (when one was opened); no load after this. */
  close(): Promise<void>;
}

/** Options of {@link onlineSource}. */
export interface OnlineSourceOptions {
  /** The executor of the teacher's inference graph (default ONNX Runtime). */
  engine?: EngineRef;
  /** Intra-op threads (default one per core). */
  threads?: number;
}

/**
 * The same batches with the teacher run on the fly (no cache), for `value_relation` (values are
 * not cached) and general distillation over packed corpora: the teacher's inference graph, opened
 * at the first batch, gives `t_logits` (when `needs` has `logits` and the teacher a head),
 * `t_hidden_<i>` (`hidden`), `t_scores_<l>` and `t_values_<l>` (`attention`), each for the whole
 * padded batch (`[B, S, …]`, as {@link runTeacher} returns them). Close it when training ends.
 */
export function onlineSource(
  teacher: Bert,
  tokens: TokenRows,
  hidden: number[],
  attention: number[],
  needs: Set<string>,
  opts: OnlineSourceOptions = {},
): OnlineSource {
  const wants: TeacherWants = {
    logits: needs.has("logits") && !!(teacher.heads.classifier || teacher.heads.qa),
    hidden: needs.has("hidden") ? hidden : [],
    scores: needs.has("scores") ? attention : [],
    values: needs.has("values") ? attention : [],
  };
  let session: Promise<Inference> | null = null;
  let closed = false;
  return {
    // the teacher runs on any rows: one group, shuffled as a whole
    groups: [{ start: 0, end: tokens.lengths.length }],
    lengths: tokens.lengths,
    async load(_group, rows) {
      if (closed) throw new Error("onlineSource: the teacher's session is closed");
      session ??= openInference(teacher, { ...teacherGraphOptions(wants), ...opts });
      const batch = padRows(tokens, rows);
      const out = await runTeacher(await session, teacher, batch, wants);
      if (out.logits) batch.t_logits = out.logits;
      for (const i of wants.hidden) batch[`t_hidden_${i}`] = out.hiddenStates![i];
      for (const l of wants.scores) batch[`t_scores_${l}`] = out.attentionScores![l];
      for (const l of wants.values!) batch[`t_values_${l}`] = out.values![l];
      return batch;
    },
    async close() {
      closed = true;
      const s = session;
      session = null;
      // a session that failed to open has nothing to release (its load already threw)
      await (await s?.catch(() => null))?.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// size, before any of it is computed

/** What the cache stores per example. */
export interface CacheShape {
  numLabels: number;
  /** `numLabels` logits per token (token classification, QA) rather than per example. */
  perToken?: boolean;
  hiddenSize: number;
  heads: number;
  /** Number of teacher hidden states kept (embedding output included if mapped). */
  hiddenLayers: number;
  /** Number of teacher attention-score layers kept. */
  attentionLayers: number;
  dtype: "F16" | "F32";
}

/** Bytes of the float payload for examples of these real lengths (row metadata not counted). */
export function estimateCacheBytes(lengths: ArrayLike<number>, s: CacheShape): number {
  const width = s.dtype === "F16" ? 2 : 4;
  let values = 0;
  for (let i = 0; i < lengths.length; i++) {
    const len = lengths[i];
    values += s.numLabels * (s.perToken ? len : 1) + s.hiddenLayers * len * s.hiddenSize +
      s.attentionLayers * s.heads * len * len;
  }
  return values * width;
}

/** `1.23 GB`-style figure (decimal units, as disks are sold). */
export function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}

/** Refuse a cache above `limit` bytes, saying how big it would be and what to change. */
export function checkCacheLimit(bytes: number, limit: number, field: string): void {
  if (bytes <= limit) return;
  throw new InputError("the teacher-output cache would exceed its size limit", {
    field,
    expected: `≤ ${formatBytes(limit)}`,
    got: formatBytes(bytes),
    hint: `Raise ${field}, store F16 instead of F32, map fewer layers, shorten ` +
      `max_seq_length, or set cache: false to run the teacher online during distillation.`,
  });
}
