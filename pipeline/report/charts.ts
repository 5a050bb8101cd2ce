/**
 * The evaluate report's charts as Vega-Lite specs (a maintained charting library, npm `vega` +
 * `vega-lite`), rendered to SVG headless: each model's score with its 95% interval on an axis
 * zoomed to the data, score against latency and against size (one labelled point per model), and
 * loss curves whose x axis ends at the last step. The specs are plain JSON: the evaluate stage
 * writes each next to its SVG (`*.vl.json`), and Jupyter renders them natively
 * (`application/vnd.vegalite.v5+json`).
 * @module
 */

import type { TopLevelSpec } from "vega-lite";
import { metricKind } from "./report.ts";

/** A Vega-Lite (v5 schema) chart specification, as JSON. */
export type VegaLiteSpec = Record<string, unknown>;

/** The schema the specs declare (what Jupyter's renderer reads). */
export const VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json";

/** One model on the score charts. */
export interface ScorePoint {
  name: string;
  role: "teacher" | "student" | "baseline";
  /** The score (a fraction for accuracy-like metrics). */
  score: number;
  /** Its 95% interval. */
  lo: number;
  hi: number;
  latency_ms: number;
  parameters: number;
  bytes: number;
}

const z95 = 1.959963984540054;

/**
 * A 95% interval of one model's score on `n` examples: the Wilson score interval for a
 * proportion (accuracy, exact match; approximate for F1-type scores, which are not one proportion
 * over examples), Fisher's z for a correlation (Pearson, Spearman, MCC; approximate for MCC);
 * `[score, score]` for anything else or n < 4.
 */
export function scoreInterval(metric: string, score: number, n: number): [number, number] {
  if (!Number.isFinite(score) || !(n >= 1)) return [score, score];
  const kind = metricKind(metric);
  if (kind === "percent") {
    const p = Math.min(1, Math.max(0, score)), z2 = z95 * z95;
    const mid = (p + z2 / (2 * n)) / (1 + z2 / n);
    const half = (z95 / (1 + z2 / n)) * Math.sqrt(p * (1 - p) / n + z2 / (4 * n * n));
    return [Math.max(0, mid - half), Math.min(1, mid + half)];
  }
  if (kind === "correlation" && n >= 4) {
    const r = Math.min(0.999999, Math.max(-0.999999, score));
    const zr = Math.atanh(r), se = 1 / Math.sqrt(n - 3);
    return [Math.tanh(zr - z95 * se), Math.tanh(zr + z95 * se)];
  }
  return [score, score];
}

/**
 * An axis domain zoomed to `values` (not from 0): their range padded by `pad` of it on each side
 * (at least a small absolute margin when they are all equal), clamped to `[min, max]`.
 */
export function zoomedDomain(
  values: number[],
  opts: { pad?: number; min?: number; max?: number } = {},
): [number, number] {
  const xs = values.filter(Number.isFinite);
  if (xs.length === 0) return [opts.min ?? 0, opts.max ?? 1];
  let lo = Math.min(...xs), hi = Math.max(...xs);
  const span = hi - lo || Math.max(Math.abs(hi) * 0.02, 0.01);
  lo -= span * (opts.pad ?? 0.15);
  hi += span * (opts.pad ?? 0.15);
  if (opts.min !== undefined) lo = Math.max(opts.min, lo);
  if (opts.max !== undefined) hi = Math.min(opts.max, hi);
  return [lo, hi];
}

const ROLE_SCALE = {
  domain: ["teacher", "student", "baseline"],
  range: ["#4c78a8", "#e45756", "#7f7f7f"],
};

function scoreFormat(metric: string): string {
  return metricKind(metric) === "percent" ? ".1%" : ".3f";
}

function scoreTitle(metric: string): string {
  return metricKind(metric) === "percent" ? `${metric} (%)` : metric;
}

const CONFIG = {
  font: "DejaVu Sans, Verdana, sans-serif",
  title: { fontSize: 14, anchor: "start", offset: 10 },
  axis: { labelFontSize: 11, titleFontSize: 12, labelLimit: 260 },
  legend: { labelFontSize: 11, titleFontSize: 12, orient: "bottom", labelLimit: 360 },
  view: { stroke: "#dddddd" },
};

/**
 * Each model's score with its 95% interval (a dot on a horizontal rule), models sorted by score,
 * the value printed above each dot, on a score axis zoomed to the intervals (not from 0).
 */
export function scoreChartSpec(
  points: ScorePoint[],
  opts: { metric: string; title: string },
): VegaLiteSpec {
  const percent = metricKind(opts.metric) === "percent";
  const domain = zoomedDomain(points.flatMap((p) => [p.lo, p.hi, p.score]), {
    pad: 0.08,
    ...(percent ? { min: 0, max: 1 } : {}),
  });
  const fmt = scoreFormat(opts.metric);
  const x = {
    type: "quantitative",
    scale: { domain, nice: false, zero: false },
    axis: { format: fmt, title: `${scoreTitle(opts.metric)}, 95% interval` },
  };
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: opts.title,
    width: 520,
    height: { step: 40 },
    config: CONFIG,
    // only what is drawn: a spec's data is then as reproducible as its chart
    data: {
      values: points.map(({ name, role, score, lo, hi }) => ({ name, role, score, lo, hi })),
    },
    encoding: {
      y: {
        field: "name",
        type: "nominal",
        sort: { field: "score", order: "descending" },
        axis: { title: null },
      },
      color: { field: "role", type: "nominal", scale: ROLE_SCALE, title: "role" },
    },
    layer: [
      {
        mark: { type: "rule", strokeWidth: 3, opacity: 0.6 },
        encoding: { x: { field: "lo", ...x }, x2: { field: "hi" } },
      },
      {
        mark: { type: "point", filled: true, size: 90, opacity: 1 },
        encoding: {
          x: { field: "score", ...x },
          tooltip: [
            { field: "name" },
            { field: "score", format: fmt },
            { field: "lo", format: fmt },
            { field: "hi", format: fmt },
          ],
        },
      },
      {
        mark: { type: "text", dy: -12, fontSize: 11, color: "#333333" },
        encoding: { x: { field: "score", ...x }, text: { field: "score", format: fmt } },
      },
    ],
  };
}

/** What the trade-off chart puts on x. */
export type TradeoffAxis = "latency_ms" | "bytes" | "parameters";

const AXIS_TITLE: Record<TradeoffAxis, string> = {
  latency_ms: "latency at batch 1 (ms, log scale)",
  bytes: "size on disk (MB, log scale)",
  parameters: "parameters (millions, log scale)",
};

/**
 * Score against a cost (latency, size on disk, parameters): one labelled point per model with its
 * 95% interval as a vertical rule, both axes zoomed to the data (cost on a log scale): the
 * trade-off a user chooses from. Up and to the left is better.
 */
export function tradeoffSpec(
  points: ScorePoint[],
  opts: { metric: string; x: TradeoffAxis; title: string },
): VegaLiteSpec {
  const percent = metricKind(opts.metric) === "percent";
  const cost = (p: ScorePoint) =>
    opts.x === "bytes"
      ? p.bytes / 1e6
      : opts.x === "parameters"
      ? p.parameters / 1e6
      : p.latency_ms;
  const values = points.map(({ name, role, score, lo, hi }, i) => ({
    name,
    role,
    score,
    lo,
    hi,
    cost: cost(points[i]),
  }));
  const costs = values.map((v) => v.cost).filter((c) => c > 0);
  // log scale: pad by a factor on each side, room for the labels on the right
  const lo = Math.min(...costs), hi = Math.max(...costs);
  const ratio = hi / lo > 1.0001 ? hi / lo : 2;
  const xDomain = costs.length
    ? [lo / Math.pow(ratio, 0.12), hi * Math.pow(ratio, 0.45)]
    : [0.1, 10];
  const yDomain = zoomedDomain(points.flatMap((p) => [p.lo, p.hi, p.score]), {
    pad: 0.1,
    ...(percent ? { min: 0, max: 1 } : {}),
  });
  placeLabels(values, xDomain as [number, number], yDomain, TRADEOFF_SIZE);
  const fmt = scoreFormat(opts.metric);
  const y = {
    type: "quantitative",
    scale: { domain: yDomain, nice: false, zero: false },
    axis: { format: fmt, title: `${scoreTitle(opts.metric)}, 95% interval` },
  };
  const x = {
    field: "cost",
    type: "quantitative",
    scale: { type: "log", domain: xDomain, nice: false },
    axis: { title: AXIS_TITLE[opts.x], format: "~g", grid: true },
  };
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: opts.title,
    width: TRADEOFF_SIZE.width,
    height: TRADEOFF_SIZE.height,
    config: CONFIG,
    data: { values },
    encoding: {
      x,
      color: { field: "role", type: "nominal", scale: ROLE_SCALE, title: "role" },
    },
    layer: [
      {
        mark: { type: "rule", strokeWidth: 2, opacity: 0.5 },
        encoding: { y: { field: "lo", ...y }, y2: { field: "hi" } },
      },
      {
        mark: { type: "point", filled: true, size: 80, opacity: 1 },
        encoding: {
          y: { field: "score", ...y },
          tooltip: [{ field: "name" }, { field: "score", format: fmt }, {
            field: "cost",
            format: ".3~g",
          }],
        },
      },
      {
        mark: { type: "text", align: "left", dx: 8, dy: 0, fontSize: 11, color: "#333333" },
        encoding: { y: { field: "label_y", ...y }, text: { field: "name" } },
      },
    ],
  };
}

const TRADEOFF_SIZE = { width: 520, height: 320 };

/**
 * Where each point's name goes (`label_y`, in score units): right of its point, moved down line
 * by line while its box would overlap a label already placed (models often share a size or a
 * latency, e.g. a student and its baseline of the same shape) or another point. Text width is
 * estimated (11 px).
 */
function placeLabels(
  values: { name: string; cost: number; score: number; label_y?: number }[],
  xDomain: [number, number],
  yDomain: [number, number],
  size: { width: number; height: number },
): void {
  const lx = (c: number) =>
    size.width * (Math.log(c) - Math.log(xDomain[0])) /
    (Math.log(xDomain[1]) - Math.log(xDomain[0]));
  const ly = (s: number) => size.height * (1 - (s - yDomain[0]) / (yDomain[1] - yDomain[0]));
  const line = 14, placed: { x0: number; x1: number; y: number }[] = [];
  const order = values.map((_, i) => i).sort((a, b) => values[b].score - values[a].score);
  for (const i of order) {
    const v = values[i];
    const x0 = lx(v.cost) + 8, x1 = x0 + 6.6 * v.name.length;
    let y = ly(v.score);
    const clash = () =>
      placed.some((p) => p.x0 < x1 && x0 < p.x1 && Math.abs(p.y - y) < line) ||
      values.some((o, j) =>
        j !== i && lx(o.cost) > x0 - 6 && lx(o.cost) < x1 + 6 && Math.abs(ly(o.score) - y) < 10
      );
    for (let k = 0; k < values.length && clash(); k++) y += line;
    placed.push({ x0, x1, y });
    v.label_y = yDomain[0] + (1 - y / size.height) * (yDomain[1] - yDomain[0]);
  }
}

/** One line of a loss chart: `[step, loss]` points. */
export interface LossLine {
  name: string;
  points: [number, number][];
}

/**
 * Training loss against step, one line per series (a run's phases), log y; the x axis spans the
 * first to the last logged step exactly (not rounded out to a "nice" end).
 */
export function lossChartSpec(lines: LossLine[], opts: { title: string }): VegaLiteSpec {
  const values = lines.flatMap((l) =>
    l.points.filter(([s, v]) => Number.isFinite(s) && Number.isFinite(v) && v > 0).map((
      [step, loss],
    ) => ({ series: l.name, step, loss }))
  );
  const steps = values.map((v) => v.step);
  const first = steps.length ? Math.min(...steps) : 0;
  const last = steps.length ? Math.max(...steps) : 1;
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: opts.title,
    width: 520,
    height: 280,
    config: CONFIG,
    data: { values },
    mark: { type: "line", strokeWidth: 2, point: values.length <= 40 },
    encoding: {
      x: {
        field: "step",
        type: "quantitative",
        scale: { domain: [first, last === first ? first + 1 : last], nice: false, zero: false },
        axis: { title: "step", format: "d" },
      },
      y: {
        field: "loss",
        type: "quantitative",
        scale: { type: "log" },
        axis: { title: "loss (log scale)", format: "~g" },
      },
      color: { field: "series", type: "nominal", title: null },
    },
  };
}

/**
 * Render a Vega-Lite spec to a standalone SVG document, headless (no browser, no canvas; text
 * widths estimated). Vega is loaded on first use, so importing this module costs nothing.
 */
export async function renderSvg(spec: VegaLiteSpec): Promise<string> {
  const [vega, { compile }] = await Promise.all([import("vega"), import("vega-lite")]);
  const compiled = compile(spec as unknown as TopLevelSpec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
