/**
 * What the evaluate stage writes: the teacher-vs-student comparison table (Markdown and aligned
 * plain text), standalone SVG charts (no dependencies), and the Markdown report tying them
 * together.
 *
 * Number formats: percentage metrics (accuracy, F1, …) as % with 1 decimal, correlations (MCC,
 * Pearson, Spearman) with 3 decimals, parameter counts as `14.4M`, sizes on disk in decimal units
 * (`27.5 MB`, 1 MB = 10⁶ bytes), ratios as `7.9×`, throughput as an integer with thousands
 * separators. A missing or non-finite value is shown as `—`.
 * @module
 */

/** The placeholder for a value that is missing, undefined, or not applicable. */
export const DASH = "—";

/** One evaluated model: its metrics and its cost. */
export interface ModelRow {
  /** The model's display name (unique within a table). */
  name: string;
  /** What the model is: the reference for ratios is the teacher. */
  role: "teacher" | "student" | "baseline";
  /** Metric name → value, as from `classificationMetrics`/`regressionMetrics` (fractions). */
  metrics: Record<string, number>;
  /** Number of parameters. */
  parameters: number;
  /** Size of the saved model on disk, in bytes. */
  bytes: number;
  /** Latency of one example (batch 1), in milliseconds. */
  latency_ms: number;
  /** Throughput at the best batch size, in examples per second. */
  throughput: number;
}

/** A table of already formatted cells. */
export interface Table {
  headers: string[];
  /** One array of cells per row, as many as `headers`. */
  cells: string[][];
  /** Per-column alignment; when absent, columns whose cells all look numeric are right-aligned. */
  align?: ("left" | "right")[];
}

/** Options of {@link comparisonTable}. */
export interface ComparisonOptions {
  /** The metric whose retention (model ÷ teacher) is reported. */
  metric: string;
  /** The name of the reference row; default: the one row whose role is "teacher". */
  teacher?: string;
}

// ---------------------------------------------------------------------------------------------
// Number formatting

/**
 * `v.toFixed(d)` rounding halves away from zero on the decimal value as printed (so 0.8765 · 100
 * shows as 87.7, not 87.6 as `(87.64999999999999).toFixed(1)` would).
 */
export function toFixedHalfUp(v: number, d: number): string {
  if (!Number.isFinite(v)) return String(v);
  const clean = Number(Math.abs(v).toPrecision(12));
  const r = Math.round(Number(`${clean}e${d}`));
  const out = Number(`${r}e-${d}`).toFixed(d);
  return v < 0 && r !== 0 ? `-${out}` : out;
}

/** How a metric is shown, decided by its name. */
export function metricKind(name: string): "percent" | "correlation" | "other" {
  const n = name.toLowerCase();
  if (/(^|[_-])(accuracy|acc|f1|precision|recall|exact_match|em)$/.test(n)) return "percent";
  if (/(^|[_-])(mcc|pearson|spearman|corr|correlation|r)$/.test(n)) return "correlation";
  return "other";
}

/** The column header of a metric: `accuracy %` for percentages, the bare name otherwise. */
export function metricHeader(name: string): string {
  return metricKind(name) === "percent" ? `${name} %` : name;
}

/**
 * A metric value for a table: percentages (accuracy, macro_f1, …) as `87.3` (the header says %),
 * correlations (mcc, pearson, spearman) as `0.412`, anything else (mse, loss) with 4 significant
 * digits. `—` when missing or non-finite.
 */
export function formatMetric(name: string, value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return DASH;
  switch (metricKind(name)) {
    case "percent":
      return toFixedHalfUp(value * 100, 1);
    case "correlation":
      return toFixedHalfUp(value, 3);
    default:
      return String(Number(value.toPrecision(4)));
  }
}

/** `n` divided into `units` of `base`, 1 decimal, the unit chosen after rounding (no "1000.0k"). */
function scaled(n: number, units: string[], sep: string): string {
  let i = 0, v = n;
  while (i < units.length - 1 && Math.abs(Number(toFixedHalfUp(v, 1))) >= 1000) {
    v /= 1000;
    i++;
  }
  return i === 0
    ? `${Math.round(n)}${sep}${units[0]}`.trimEnd()
    : `${toFixedHalfUp(v, 1)}${sep}${units[i]}`;
}

/** A parameter count: `950`, `4.4k`, `14.4M`, `1.3B`. `—` when non-finite or negative. */
export function formatCount(n: number): string {
  if (!Number.isFinite(n) || n < 0) return DASH;
  return scaled(n, ["", "k", "M", "B", "T"], "");
}

/** A size on disk in decimal units: `512 B`, `4.1 kB`, `27.5 MB`, `1.3 GB`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return DASH;
  return scaled(n, ["B", "kB", "MB", "GB", "TB"], " ");
}

/** A ratio as `7.9×`; `—` when not a finite positive number. */
export function formatRatio(r: number): string {
  return Number.isFinite(r) && r > 0 ? `${toFixedHalfUp(r, 1)}×` : DASH;
}

/** An integer with `,` thousands separators (independent of the locale): `12,345`. */
export function formatInteger(n: number): string {
  if (!Number.isFinite(n)) return DASH;
  const s = Math.abs(Math.round(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return Math.round(n) < 0 ? `-${s}` : s;
}

// ---------------------------------------------------------------------------------------------
// The comparison table

/** The reference row of a comparison: `opts.teacher` by name, else the one "teacher" row. */
function findTeacher(rows: ModelRow[], opts: ComparisonOptions): ModelRow | undefined {
  if (opts.teacher !== undefined) {
    const t = rows.find((r) => r.name === opts.teacher);
    if (!t) {
      throw new Error(
        `comparisonTable: no model named "${opts.teacher}" to use as the teacher ` +
          `(models: ${rows.map((r) => r.name).join(", ")})`,
      );
    }
    return t;
  }
  const teachers = rows.filter((r) => r.role === "teacher");
  if (teachers.length > 1) {
    throw new Error(
      `comparisonTable: several rows have role "teacher" ` +
        `(${teachers.map((r) => r.name).join(", ")}); pass opts.teacher to choose one`,
    );
  }
  return teachers[0];
}

/**
 * The comparison table of the evaluate stage, one row per model (in the given order).
 *
 * Columns: `model`; each metric found in any row (first-seen order; see {@link formatMetric});
 * `retention % (<metric>)` = 100 · model ÷ teacher of `opts.metric` (1 decimal, `—` for the
 * teacher itself; meaningful for higher-is-better metrics); `parameters`; `size ×` = teacher
 * parameters ÷ model parameters; `on disk`; `latency ms` (batch 1, 2 decimals); `speed-up ×` =
 * teacher latency ÷ model latency; `throughput ex/s`. Without a teacher row the ratio columns are
 * `—`.
 * @throws Error when `rows` is empty, names repeat, `opts.teacher` names no row, several rows are
 * teachers and `opts.teacher` is absent, or the teacher (or, without one, every row) lacks
 * `opts.metric`.
 */
export function comparisonTable(rows: ModelRow[], opts: ComparisonOptions): Table {
  if (rows.length === 0) throw new Error("comparisonTable: no models to compare");
  const seen = new Set<string>();
  for (const r of rows) {
    if (seen.has(r.name)) throw new Error(`comparisonTable: two rows are named "${r.name}"`);
    seen.add(r.name);
  }
  const metricNames: string[] = [];
  for (const r of rows) {
    for (const k of Object.keys(r.metrics)) if (!metricNames.includes(k)) metricNames.push(k);
  }
  const teacher = findTeacher(rows, opts);
  const holder = teacher ? [teacher] : rows;
  if (!holder.some((r) => opts.metric in r.metrics)) {
    const who = teacher ? `the teacher "${teacher.name}" has no` : "no model has";
    const has = teacher ? Object.keys(teacher.metrics) : metricNames;
    throw new Error(
      `comparisonTable: ${who} metric "${opts.metric}" for the retention column ` +
        `(metrics: ${has.join(", ") || "none"})`,
    );
  }
  const headers = [
    "model",
    ...metricNames.map(metricHeader),
    `retention % (${opts.metric})`,
    "parameters",
    "size ×",
    "on disk",
    "latency ms",
    "speed-up ×",
    "throughput ex/s",
  ];
  const cells = rows.map((r) => {
    let retention = DASH;
    if (teacher && r !== teacher) {
      const v = r.metrics[opts.metric], t = teacher.metrics[opts.metric];
      const ratio = (100 * v) / t;
      if (Number.isFinite(ratio)) retention = toFixedHalfUp(ratio, 1);
    }
    return [
      r.name,
      ...metricNames.map((m) => formatMetric(m, r.metrics[m])),
      retention,
      formatCount(r.parameters),
      teacher ? formatRatio(teacher.parameters / r.parameters) : DASH,
      formatBytes(r.bytes),
      Number.isFinite(r.latency_ms) ? toFixedHalfUp(r.latency_ms, 2) : DASH,
      teacher ? formatRatio(teacher.latency_ms / r.latency_ms) : DASH,
      formatInteger(r.throughput),
    ];
  });
  return { headers, cells, align: headers.map((_, i) => (i === 0 ? "left" : "right")) };
}

/** Whether a formatted cell reads as a number (with an optional unit), or is a placeholder. */
function numericCell(s: string): boolean {
  return s === DASH || s === "" ||
    /^[-+−]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?(e[-+]?\d+)?\s*(%|×|[kMBT]|[kMGT]?B)?$/i.test(
        s.trim(),
      ) &&
      /\d/.test(s);
}

/** The alignment of each column: explicit, else right for all-numeric columns. */
function alignments(table: Table): ("left" | "right")[] {
  checkTable(table);
  return table.headers.map((_, j) => {
    if (table.align?.[j]) return table.align[j];
    const col = table.cells.map((row) => row[j]);
    return col.length > 0 && col.every(numericCell) && col.some((s) => s !== DASH && s !== "")
      ? "right"
      : "left";
  });
}

function checkTable(table: Table): void {
  table.cells.forEach((row, i) => {
    if (row.length !== table.headers.length) {
      throw new Error(
        `table row ${i} has ${row.length} cells but there are ${table.headers.length} headers`,
      );
    }
  });
}

/** One Markdown cell: pipes escaped, line breaks flattened. */
function mdCell(s: string): string {
  return s.replace(/\r?\n/g, " ").replace(/\|/g, "\\|");
}

/**
 * A GitHub-flavoured Markdown table: a header line, an alignment line (`---:` for right-aligned
 * columns) and one line per row; `|` inside cells is escaped. Ends with a newline.
 */
export function markdownTable(table: Table): string {
  const align = alignments(table);
  const line = (cells: string[]) => `| ${cells.map(mdCell).join(" | ")} |`;
  return [
    line(table.headers),
    `|${align.map((a) => (a === "right" ? " ---: " : " --- ")).join("|")}|`,
    ...table.cells.map(line),
  ].join("\n") + "\n";
}

/**
 * The table as aligned plain text for a terminal: columns padded to their widest cell and
 * separated by two spaces, numeric columns right-aligned, a rule of dashes under the headers.
 * Ends with a newline.
 */
export function textTable(table: Table): string {
  const align = alignments(table);
  const all = [table.headers, ...table.cells].map((r) => r.map((s) => s.replace(/\r?\n/g, " ")));
  const widths = table.headers.map((_, j) => Math.max(...all.map((r) => [...r[j]].length)));
  const pad = (s: string, j: number) => {
    const fill = " ".repeat(widths[j] - [...s].length);
    return align[j] === "right" ? fill + s : s + fill;
  };
  const line = (cells: string[]) => cells.map(pad).join("  ").trimEnd();
  return [
    line(all[0]),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...all.slice(1).map(line),
  ].join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------
// Ticks

/** k·m·10^e computed so that decimal steps come out exact (0.6, not 0.6000000000000001). */
function tickValue(k: number, m: number, e: number): number {
  return e >= 0 ? k * m * 10 ** e : (k * m) / 10 ** -e;
}

/**
 * About `count` "nice" ticks covering [min, max]: ascending, evenly spaced by a step of the form
 * {1, 2, 5} × 10^k, the first ≤ min and the last ≥ max (e.g. `niceTicks(0, 0.93, 5)` → 0, 0.2,
 * …, 1). A degenerate range (min = max) is widened by 10 % of |min| (or by 1 around 0) so the
 * axis still has a non-zero span. Arguments in the wrong order are swapped.
 * @throws Error when min or max is not finite, or count is not an integer ≥ 2.
 */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) {
    throw new Error(`niceTicks: the range must be finite, got [${min}, ${max}]`);
  }
  if (!Number.isInteger(count) || count < 2) {
    throw new Error(`niceTicks: count must be an integer ≥ 2, got ${count}`);
  }
  if (min > max) [min, max] = [max, min];
  if (max - min <= Math.max(Math.abs(min), Math.abs(max)) * 1e-12) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    min -= pad;
    max += pad;
  }
  const raw = (max - min) / (count - 1);
  let e = Math.floor(Math.log10(raw));
  const f = raw / 10 ** e;
  let m = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  if (m === 10) {
    m = 1;
    e++;
  }
  const step = m * 10 ** e;
  let k0 = Math.floor(min / step + 1e-9), k1 = Math.ceil(max / step - 1e-9);
  while (tickValue(k0, m, e) > min) k0--;
  while (tickValue(k1, m, e) < max) k1++;
  const ticks: number[] = [];
  for (let k = k0; k <= k1; k++) ticks.push(tickValue(k, m, e) + 0); // + 0: no −0
  return ticks;
}

/**
 * Ticks for a logarithmic axis covering [min, max] (both > 0): 1-2-5 ticks per decade when the
 * range spans at most two decades, else powers of ten (every n-th decade, about `count` ticks).
 * @throws Error when min or max is not finite and positive.
 */
export function logTicks(min: number, max: number, count = 5): number[] {
  if (!(min > 0 && max > 0 && Number.isFinite(min) && Number.isFinite(max))) {
    throw new Error(`logTicks: the range must be finite and positive, got [${min}, ${max}]`);
  }
  if (min > max) [min, max] = [max, min];
  let e0 = Math.floor(Math.log10(min)), e1 = Math.ceil(Math.log10(max));
  while (tickValue(1, 1, e0) > min) e0--;
  while (tickValue(1, 1, e1) < max) e1++;
  if (e0 === e1) {
    e0--;
    e1++;
  }
  if (e1 - e0 <= 2) {
    const all: number[] = [];
    for (let e = e0; e <= e1; e++) {
      for (const m of [1, 2, 5]) if (e < e1 || m === 1) all.push(tickValue(1, m, e));
    }
    let first = 0, last = all.length - 1;
    if (min === max) return all; // a single value: keep the whole widened range
    while (first + 1 < all.length && all[first + 1] <= min) first++;
    while (last - 1 >= 0 && all[last - 1] >= max) last--;
    return all.slice(first, last + 1);
  }
  const stride = Math.max(1, Math.ceil((e1 - e0) / (count - 1)));
  e0 = Math.floor(e0 / stride) * stride;
  e1 = Math.ceil(e1 / stride) * stride;
  const ticks: number[] = [];
  for (let e = e0; e <= e1; e += stride) ticks.push(tickValue(1, 1, e));
  return ticks;
}

/** A tick label: enough decimals for the step, exponent notation for very large/small values. */
function tickLabel(v: number, step: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-4) return v.toExponential().replace(/\.?0+e/, "e").replace("e+", "e");
  if (step <= 0) return String(Number(v.toPrecision(6)));
  const decimals = Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9)));
  return v.toFixed(decimals);
}

// ---------------------------------------------------------------------------------------------
// SVG

/** Text escaped for XML content and attribute values; control characters XML forbids dropped. */
export function escapeXml(s: string): string {
  return s
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

/** Distinct series colours (Tableau 10); past ten, colours repeat with a dash pattern. */
const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#79706e",
];
const DASHES = ["", "6 3", "2 3", "8 3 2 3"];

function colour(i: number): string {
  return PALETTE[i % PALETTE.length];
}

function dash(i: number): string {
  const d = DASHES[Math.floor(i / PALETTE.length) % DASHES.length];
  return d ? ` stroke-dasharray="${d}"` : "";
}

/** A coordinate with at most one decimal. */
function num(v: number): string {
  return String(Math.round(v * 10) / 10);
}

/** Cut `s` to about `maxChars` characters with an ellipsis. */
function clip(s: string, maxChars: number): string {
  const cs = [...s];
  return cs.length <= maxChars ? s : cs.slice(0, Math.max(1, maxChars - 1)).join("") + "…";
}

const CHAR_W = 7; // approximate width of a 12px sans-serif character

/** Plot frame shared by the charts. */
interface Frame {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
  legendX: number;
}

function frame(width: number, height: number, legendNames: string[], fn: string): Frame {
  if (!(Number.isFinite(width) && width >= 200 && Number.isFinite(height) && height >= 150)) {
    throw new Error(`${fn}: width and height must be at least 200 × 150, got ${width} × ${height}`);
  }
  const longest = Math.max(0, ...legendNames.map((n) => [...n].length));
  const legendW = legendNames.length === 0
    ? 0
    : Math.min(width * 0.35, 36 + CHAR_W * Math.min(longest, 28));
  const right = width - 20 - legendW;
  return { width, height, left: 72, right, top: 48, bottom: height - 56, legendX: right + 16 };
}

/** The opening of a chart: root element, background, title. */
function svgHead(f: Frame, title: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" ` +
    `viewBox="0 0 ${f.width} ${f.height}" font-family="sans-serif" font-size="12">`,
    `<title>${escapeXml(title)}</title>`,
    `<rect x="0" y="0" width="${f.width}" height="${f.height}" fill="#ffffff"/>`,
    `<text x="${num(f.width / 2)}" y="26" text-anchor="middle" font-size="16" ` +
    `font-weight="bold">${escapeXml(title)}</text>`,
  ];
}

/** Horizontal grid lines, y tick labels, the y-axis label and the axis lines. */
function yAxis(
  f: Frame,
  ticks: number[],
  py: (v: number) => number,
  labels: string[],
  yLabel: string,
) {
  const out: string[] = [];
  ticks.forEach((t, i) => {
    const y = num(py(t));
    out.push(
      `<line x1="${f.left}" y1="${y}" x2="${num(f.right)}" y2="${y}" stroke="#e0e0e0"/>`,
      `<text x="${f.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">` +
        `${escapeXml(labels[i])}</text>`,
    );
  });
  const cy = num((f.top + f.bottom) / 2);
  out.push(
    `<text x="18" y="${cy}" text-anchor="middle" transform="rotate(-90 18 ${cy})">` +
      `${escapeXml(yLabel)}</text>`,
    `<line x1="${f.left}" y1="${f.top}" x2="${f.left}" y2="${num(f.bottom)}" stroke="#333333"/>`,
    `<line x1="${f.left}" y1="${num(f.bottom)}" x2="${num(f.right)}" y2="${num(f.bottom)}" ` +
      `stroke="#333333"/>`,
  );
  return out;
}

function legend(f: Frame, names: string[], swatch: (i: number, y: number) => string): string[] {
  const maxChars = Math.max(4, Math.floor((f.width - f.legendX - 30) / CHAR_W));
  return names.flatMap((n, i) => {
    const y = f.top + 8 + 18 * i;
    return [
      swatch(i, y),
      `<text x="${num(f.legendX + 24)}" y="${y}" dominant-baseline="middle">` +
      `${escapeXml(clip(n, maxChars))}</text>`,
    ];
  });
}

function noData(f: Frame): string {
  return `<text x="${num((f.left + f.right) / 2)}" y="${num((f.top + f.bottom) / 2)}" ` +
    `text-anchor="middle" dominant-baseline="middle" fill="#888888">no data</text>`;
}

/** One logged training step, as `curve.json` holds it (see `train.ts`). */
export interface LossPoint {
  phase: string;
  /** Step over the whole run. */
  globalStep: number;
  loss: number;
}

/**
 * Loss-curve series of one training run: one per phase (named `name: phase` when there are
 * several, else `name`), x = step over the whole run. With `smooth`, each point is the running
 * mean over ~2% of the phase's steps, so the trend is readable.
 */
export function lossSeries(name: string, curve: LossPoint[], smooth = true): LineSeries[] {
  const phases = [...new Set(curve.map((p) => p.phase))];
  return phases.map((ph) => {
    const pts = curve.filter((p) => p.phase === ph);
    const w = smooth ? Math.max(1, Math.round(pts.length / 50)) : 1;
    const points: [number, number][] = pts.map((p, i) => {
      const win = pts.slice(Math.max(0, i - w + 1), i + 1);
      return [p.globalStep, win.reduce((a, q) => a + q.loss, 0) / win.length];
    });
    return { name: phases.length > 1 ? `${name}: ${ph}` : name, points };
  });
}

/** One line of {@link lineChartSvg}. */
export interface LineSeries {
  name: string;
  /** `[x, y]` points, drawn in the given order; non-finite points are skipped. */
  points: [number, number][];
}

/** Options of {@link lineChartSvg}. */
export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Pixels; default 640. */
  width?: number;
  /** Pixels; default 400. */
  height?: number;
  /** Logarithmic y axis; points with y ≤ 0 are then skipped. */
  logY?: boolean;
}

/**
 * A standalone SVG line chart: axes with about 5 nice ticks each (see {@link niceTicks},
 * {@link logTicks}), one `<polyline>` per series (always, even with no drawable points) in
 * distinct colours, point markers for short series, a legend, the title and axis labels. Text is
 * XML-escaped. Non-finite points (and y ≤ 0 with `logY`) are skipped; a single point or a
 * constant series gets a non-zero axis range; with nothing to draw, the axes say "no data".
 * @throws Error when width/height is below 200 × 150.
 */
export function lineChartSvg(series: LineSeries[], opts: LineChartOptions): string {
  const logY = opts.logY ?? false;
  const f = frame(opts.width ?? 640, opts.height ?? 400, series.map((s) => s.name), "lineChartSvg");
  const valid = series.map((s) =>
    s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0))
  );
  const all = valid.flat();
  const empty = all.length === 0;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const xTicks = empty ? niceTicks(0, 1) : niceTicks(Math.min(...xs), Math.max(...xs));
  const yTicks = empty
    ? (logY ? logTicks(1, 10) : niceTicks(0, 1))
    : logY
    ? logTicks(Math.min(...ys), Math.max(...ys))
    : niceTicks(Math.min(...ys), Math.max(...ys));
  const fy = logY ? Math.log10 : (v: number) => v;
  const [x0, x1] = [xTicks[0], xTicks[xTicks.length - 1]];
  const [y0, y1] = [fy(yTicks[0]), fy(yTicks[yTicks.length - 1])];
  const px = (x: number) => f.left + ((x - x0) / (x1 - x0)) * (f.right - f.left);
  const py = (y: number) => f.bottom - ((fy(y) - y0) / (y1 - y0)) * (f.bottom - f.top);

  const xStep = xTicks[1] - xTicks[0], yStep = yTicks[1] - yTicks[0];
  const yLabels = yTicks.map((t) => tickLabel(t, logY ? 0 : yStep));
  const out = svgHead(f, opts.title);
  out.push(...yAxis(f, yTicks, py, yLabels, opts.yLabel));
  for (const t of xTicks) {
    const x = num(px(t));
    out.push(
      `<line x1="${x}" y1="${num(f.bottom)}" x2="${x}" y2="${
        num(f.bottom + 5)
      }" stroke="#333333"/>`,
      `<text x="${x}" y="${num(f.bottom + 18)}" text-anchor="middle">` +
        `${escapeXml(tickLabel(t, xStep))}</text>`,
    );
  }
  out.push(
    `<text x="${num((f.left + f.right) / 2)}" y="${num(f.height - 14)}" text-anchor="middle">` +
      `${escapeXml(opts.xLabel)}</text>`,
  );
  if (empty) out.push(noData(f));
  valid.forEach((pts, i) => {
    const points = pts.map(([x, y]) => `${num(px(x))},${num(py(y))}`).join(" ");
    out.push(
      `<polyline fill="none" stroke="${colour(i)}" stroke-width="2"${dash(i)} ` +
        `stroke-linejoin="round" points="${points}"/>`,
    );
    if (pts.length <= 40) {
      for (const [x, y] of pts) {
        out.push(`<circle cx="${num(px(x))}" cy="${num(py(y))}" r="3" fill="${colour(i)}"/>`);
      }
    }
  });
  out.push(
    ...legend(
      f,
      series.map((s) => s.name),
      (i, y) =>
        `<line x1="${num(f.legendX)}" y1="${y}" x2="${num(f.legendX + 18)}" y2="${y}" ` +
        `stroke="${colour(i)}" stroke-width="2"${dash(i)}/>`,
    ),
    "</svg>",
  );
  return out.join("\n") + "\n";
}

/** One bar of {@link barChartSvg}. */
export interface Bar {
  /** The bar's name: the series (coloured, in the legend) when grouped, else the x label. */
  label: string;
  value: number;
  /** The x category (e.g. the metric) when bars are grouped (e.g. teacher vs student). */
  group?: string;
}

/** Options of {@link barChartSvg}. */
export interface BarChartOptions {
  title: string;
  yLabel: string;
  /** Pixels; default 640. */
  width?: number;
  /** Pixels; default 400. */
  height?: number;
}

/** A bar's value label: 3 significant digits. */
function valueLabel(v: number): string {
  return Math.abs(v) >= 1000 ? formatInteger(v) : String(Number(v.toPrecision(3)));
}

/**
 * A standalone SVG bar chart for teacher-vs-student metrics. When any bar has a `group`, groups
 * are the x categories (first-seen order) and labels are colour-coded series with a legend
 * (`[{label: "teacher", group: "accuracy", value: 0.9}, {label: "student", …}]`); otherwise
 * each bar is its own category named by its label. Bars start at 0 (negative values go down),
 * carry their value on top, and a non-finite value is drawn as "n/a". Text is XML-escaped.
 * @throws Error when a (group, label) pair repeats, or width/height is below 200 × 150.
 */
export function barChartSvg(bars: Bar[], opts: BarChartOptions): string {
  const grouped = bars.some((b) => b.group !== undefined);
  const categories: string[] = [];
  const seriesNames: string[] = [];
  const keys = new Set<string>();
  for (const b of bars) {
    const cat = grouped ? b.group ?? "" : b.label;
    if (grouped) {
      const key = JSON.stringify([cat, b.label]);
      if (keys.has(key)) {
        throw new Error(`barChartSvg: two bars are labelled "${b.label}" in group "${cat}"`);
      }
      keys.add(key);
      if (!categories.includes(cat)) categories.push(cat);
      if (!seriesNames.includes(b.label)) seriesNames.push(b.label);
    }
  }
  const f = frame(opts.width ?? 640, opts.height ?? 400, seriesNames, "barChartSvg");
  const vals = bars.map((b) => b.value).filter(Number.isFinite);
  const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals);
  const ticks = lo === hi ? niceTicks(0, 1) : niceTicks(lo, hi);
  const [y0, y1] = [ticks[0], ticks[ticks.length - 1]];
  const py = (v: number) => f.bottom - ((v - y0) / (y1 - y0)) * (f.bottom - f.top);
  const step = ticks[1] - ticks[0];

  const out = svgHead(f, opts.title);
  out.push(...yAxis(f, ticks, py, ticks.map((t) => tickLabel(t, step)), opts.yLabel));
  if (bars.length === 0) {
    out.push(noData(f), "</svg>");
    return out.join("\n") + "\n";
  }
  const nCat = grouped ? categories.length : bars.length;
  const catW = (f.right - f.left) / nCat;
  const slots = grouped ? seriesNames.length : 1;
  const barW = (catW * 0.8) / slots;
  const zero = py(0);
  bars.forEach((b, i) => {
    const cat = grouped ? categories.indexOf(b.group ?? "") : i;
    const slot = grouped ? seriesNames.indexOf(b.label) : 0;
    const x = f.left + cat * catW + catW * 0.1 + slot * barW;
    const cx = num(x + barW / 2);
    if (!Number.isFinite(b.value)) {
      out.push(
        `<text x="${cx}" y="${num(zero - 4)}" text-anchor="middle" fill="#888888">n/a</text>`,
      );
      return;
    }
    const y = py(b.value);
    const fill = grouped ? colour(slot) : colour(i);
    out.push(
      `<rect x="${num(x)}" y="${num(Math.min(y, zero))}" width="${num(barW * 0.92)}" ` +
        `height="${num(Math.abs(zero - y))}" fill="${fill}"/>`,
      `<text x="${cx}" y="${num(b.value >= 0 ? y - 4 : y + 13)}" text-anchor="middle" ` +
        `font-size="11">${escapeXml(valueLabel(b.value))}</text>`,
    );
  });
  const maxChars = Math.max(3, Math.floor(catW / CHAR_W));
  const names = grouped ? categories : bars.map((b) => b.label);
  names.forEach((n, c) => {
    out.push(
      `<text x="${num(f.left + (c + 0.5) * catW)}" y="${num(f.bottom + 18)}" ` +
        `text-anchor="middle">${escapeXml(clip(n, maxChars))}</text>`,
    );
  });
  if (lo < 0) {
    out.push(
      `<line x1="${f.left}" y1="${num(zero)}" x2="${num(f.right)}" y2="${num(zero)}" ` +
        `stroke="#333333"/>`,
    );
  }
  out.push(
    ...legend(
      f,
      seriesNames,
      (i, y) =>
        `<rect x="${num(f.legendX)}" y="${num(y - 6)}" width="18" height="12" ` +
        `fill="${colour(i)}"/>`,
    ),
    "</svg>",
  );
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------
// The report

/** What {@link reportMarkdown} assembles. */
export interface ReportInput {
  title: string;
  table: Table;
  /** Bullet points under the table (datasets, hardware, caveats). */
  notes?: string[];
  /** Further tables after the notes, each under a `## title`, with its own notes. */
  sections?: { title: string; table: Table; notes?: string[] }[];
  /** Charts to embed, by path relative to the report. */
  charts?: { file: string; caption: string }[];
}

/**
 * The Markdown report: `# title`, the table (see {@link markdownTable}), the notes as a bullet
 * list, then one `![caption](file)` paragraph per chart. Ends with a newline.
 */
export function reportMarkdown(input: ReportInput): string {
  const parts = [`# ${input.title.replace(/\r?\n/g, " ")}`, markdownTable(input.table).trimEnd()];
  const notes = input.notes ?? [];
  const bullets = (ns: string[]) => ns.map((n) => `- ${n.replace(/\r?\n/g, " ")}`).join("\n");
  if (notes.length > 0) parts.push(bullets(notes));
  for (const s of input.sections ?? []) {
    parts.push(`## ${s.title.replace(/\r?\n/g, " ")}`, markdownTable(s.table).trimEnd());
    if (s.notes?.length) parts.push(bullets(s.notes));
  }
  for (const c of input.charts ?? []) {
    const caption = c.caption.replace(/\r?\n/g, " ").replace(/([\\[\]])/g, "\\$1");
    const file = /[\s()<>]/.test(c.file)
      ? `<${c.file.replace(/[<>]/g, encodeURIComponent)}>`
      : c.file;
    parts.push(`![${caption}](${file})`);
  }
  return parts.join("\n\n") + "\n";
}
