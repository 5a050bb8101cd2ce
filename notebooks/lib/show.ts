/**
 * What the notebooks display, as Jupyter MIME bundles: any object with a
 * `Symbol.for("Jupyter.display")` method is rendered by the Deno kernel when a cell evaluates to
 * it. The report's charts are Vega-Lite specs (`pipeline/report/charts.ts`) shown natively by
 * Jupyter with their SVG as the fallback ({@link chart}, {@link reportChart}); other SVG charts come
 * from `pipeline/report/report.ts` (bar charts) and {@link heatmapSvg}.
 * @module
 */

import { join } from "node:path";
import {
  barChartSvg,
  type BertTokenizer,
  encodeBatch,
  loadBert,
  loadTokenizer,
  lossChartSpec,
  type LossPoint,
  lossSeries,
  openInference,
  PartReader,
  renderSvg,
  type StageReport,
  type VegaLiteSpec,
} from "../../mod.ts";

const DISPLAY = Symbol.for("Jupyter.display");

/** Something a notebook cell can evaluate to and have rendered. */
export interface Displayable {
  [DISPLAY](): Record<string, string>;
  /** The same content as MIME type → data (for tests and non-Jupyter use). */
  bundle: Record<string, string>;
}

function displayable(bundle: Record<string, string>): Displayable {
  return { bundle, [DISPLAY]: () => bundle };
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

/** An SVG image. */
export function svg(markup: string, alt = "chart"): Displayable {
  return displayable({ "image/svg+xml": markup, "text/plain": `[${alt}]` });
}

/** The MIME type Jupyter renders Vega-Lite specs from. */
export const VEGA_LITE_MIME = "application/vnd.vegalite.v5+json";

/** A chart: its Vega-Lite spec (rendered by Jupyter), with the SVG as the fallback elsewhere. */
export interface ChartDisplay {
  [DISPLAY](): Record<string, unknown>;
  bundle: { [VEGA_LITE_MIME]: VegaLiteSpec; "image/svg+xml": string; "text/plain": string };
}

/** A Vega-Lite chart with its SVG rendering (rendered here when not given). */
export async function chart(spec: VegaLiteSpec, svgMarkup?: string): Promise<ChartDisplay> {
  const title = typeof spec.title === "string" ? spec.title : "chart";
  const bundle = {
    [VEGA_LITE_MIME]: spec,
    "image/svg+xml": svgMarkup ?? await renderSvg(spec),
    "text/plain": `[${title}]`,
  };
  return { bundle, [DISPLAY]: () => bundle };
}

/** A chart the evaluate stage wrote: `<dir>/<name>.vl.json` and its `<name>.svg`. */
export async function reportChart(evaluateDir: string, name: string): Promise<ChartDisplay> {
  const spec = JSON.parse(await Deno.readTextFile(join(evaluateDir, `${name}.vl.json`)));
  return chart(spec, await Deno.readTextFile(join(evaluateDir, `${name}.svg`)));
}

/** HTML (with a plain-text fallback). */
export function html(markup: string, text = "[html]"): Displayable {
  return displayable({ "text/html": markup, "text/plain": text });
}

/** Markdown (rendered by Jupyter; the source is the plain-text fallback). */
export function markdown(md: string): Displayable {
  return displayable({ "text/markdown": md, "text/plain": md });
}

/**
 * Several SVG charts side by side, `columns` to a row, as one SVG image (each chart nested at its
 * place). One image output renders wherever a notebook's SVG outputs do (on a code host too, where
 * an HTML output with inline SVG may be sanitized away).
 * @throws Error when a chart is not an `<svg>` with a width and a height.
 */
export function sideBySide(
  svgs: string[],
  opts: { columns?: number; gap?: number; alt?: string } = {},
): Displayable {
  const columns = opts.columns ?? 2, gap = opts.gap ?? 12;
  const charts = svgs.map((s) => {
    const open = /<svg\b[^>]*>/.exec(s);
    const size = (attr: string) =>
      Number(new RegExp(`\\s${attr}="([\\d.]+)"`).exec(open?.[0] ?? "")?.[1]);
    const w = size("width"), h = size("height");
    if (!open || !(w > 0 && h > 0)) {
      throw new Error("sideBySide: a chart is not an <svg> with a size");
    }
    return { body: s.slice(open.index + 4).trimEnd(), w, h };
  });
  const parts: string[] = [];
  let y = 0, width = 0;
  for (let r = 0; r < charts.length; r += columns) {
    const row = charts.slice(r, r + columns);
    let x = 0;
    for (const c of row) {
      parts.push(`<svg x="${x}" y="${y}"${c.body}`);
      x += c.w + gap;
    }
    width = Math.max(width, x - gap);
    y += Math.max(...row.map((c) => c.h)) + gap;
  }
  const height = Math.max(0, y - gap);
  return svg(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}">\n${parts.join("\n")}\n</svg>\n`,
    opts.alt ?? `${svgs.length} charts`,
  );
}

/** An HTML table from rows of cells (the first row is the header). */
export function htmlTable(rows: (string | number)[][]): Displayable {
  const [head, ...body] = rows;
  const tr = (r: (string | number)[], tag: string) =>
    `<tr>${r.map((c) => `<${tag}>${escapeHtml(String(c))}</${tag}>`).join("")}</tr>`;
  const text = rows.map((r) => r.join("\t")).join("\n");
  return html(
    `<table><thead>${tr(head, "th")}</thead><tbody>${
      body.map((r) => tr(r, "td")).join("")
    }</tbody></table>`,
    text,
  );
}

/** What a pipeline run did, stage by stage: ran or skipped (up to date), seconds, output dir. */
export function stageTable(reports: StageReport[] | Record<string, StageReport>): Displayable {
  const list = Array.isArray(reports) ? reports : Object.values(reports);
  return htmlTable([
    ["stage", "status", "seconds", "output"],
    ...list.map((r) => [r.key, r.status, r.seconds.toFixed(1), r.dir.split(/[\\/]/).at(-1)!]),
  ]);
}

/**
 * An evaluate stage's `report.md` as Markdown, without its image links (they point at SVG files
 * next to it, which a notebook cannot resolve; show those with {@link svg}).
 */
export async function reportMarkdown(evaluateDir: string): Promise<Displayable> {
  const md = await Deno.readTextFile(join(evaluateDir, "report.md"));
  return markdown(
    md.split("\n").filter((l) => !/^!\[[^\]]*\]\([^)]*\.svg\)\s*$/.test(l)).join("\n").trimEnd() +
      "\n",
  );
}

/** Viridis-like colour for t ∈ [0, 1]. */
function colour(t: number): string {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c.join(",")})`;
}

/** Softmax of one row of logits or pre-softmax scores (max-subtracted, so large values are safe). */
export function softmax(row: ArrayLike<number>): number[] {
  const xs = Array.from(row);
  const m = Math.max(...xs);
  const e = xs.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/**
 * A heatmap of `matrix[row][col]` (e.g. attention probabilities: query rows, key columns), with
 * optional axis labels (tokens), scaled to the matrix's own min..max.
 */
export function heatmapSvg(
  matrix: number[][],
  opts: { title: string; rowLabels?: string[]; colLabels?: string[]; cell?: number },
): string {
  const n = matrix.length, m = matrix[0]?.length ?? 0;
  const cell = opts.cell ?? 18;
  const left = opts.rowLabels ? 70 : 10, top = opts.colLabels ? 80 : 30;
  const width = left + m * cell + 10, height = top + n * cell + 10;
  let lo = Infinity, hi = -Infinity;
  for (const r of matrix) {
    for (const v of r) if (Number.isFinite(v)) (lo = Math.min(lo, v), hi = Math.max(hi, v));
  }
  const span = hi > lo ? hi - lo : 1;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="10">`,
    `<text x="${left}" y="14" font-size="12" font-weight="bold">${escapeHtml(opts.title)}</text>`,
  ];
  matrix.forEach((r, i) =>
    r.forEach((v, j) => {
      parts.push(
        `<rect x="${left + j * cell}" y="${top + i * cell}" width="${cell}" height="${cell}" ` +
          `fill="${colour((v - lo) / span)}"><title>${v.toFixed(3)}</title></rect>`,
      );
    })
  );
  opts.rowLabels?.forEach((l, i) =>
    parts.push(
      `<text x="${left - 4}" y="${top + i * cell + cell * 0.7}" text-anchor="end">${
        escapeHtml(l)
      }</text>`,
    )
  );
  opts.colLabels?.forEach((l, j) => {
    const x = left + j * cell + cell * 0.7, y = top - 4;
    parts.push(
      `<text x="${x}" y="${y}" transform="rotate(-60 ${x} ${y})">${escapeHtml(l)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** Counts of `values` in `bins` equal-width bins, as a bar chart SVG. */
export function histogramSvg(
  values: number[],
  bins: number,
  title: string,
  xLabel: string,
): string {
  const lo = Math.min(...values), hi = Math.max(...values);
  const w = Math.max(1, Math.ceil((hi - lo + 1) / bins));
  const counts = new Map<number, number>();
  for (const v of values) {
    const b = lo + Math.floor((v - lo) / w) * w;
    counts.set(b, (counts.get(b) ?? 0) + 1);
  }
  const bars = [...counts.entries()].sort((a, b) => a[0] - b[0]).map(([b, c]) => ({
    label: w === 1 ? String(b) : `${b}–${b + w - 1}`,
    value: c,
  }));
  return barChartSvg(bars, { title, yLabel: `examples (by ${xLabel})` });
}

/** The rows of a tokenize split: ids, lengths and labels. */
export async function tokenRows(tokensDir: string, split: string) {
  const reader = await PartReader.open(join(tokensDir, split));
  const ids: Int32Array[] = [], lengths: number[] = [], labels: number[] = [];
  for await (const part of reader.parts(["input_ids", "length", "label"])) {
    ids.push(...(part.columns.input_ids as Int32Array[]));
    lengths.push(...(part.columns.length as Int32Array));
    labels.push(...(part.columns.label as Int32Array));
  }
  return { ids, lengths, labels };
}

/** A table of the first `n` examples of a split: tokens as the model sees them. */
export async function tokenTable(tokensDir: string, split = "train", n = 5): Promise<Displayable> {
  const tok = await loadTokenizer(join(tokensDir, "tokenizer"));
  const meta = JSON.parse(await Deno.readTextFile(join(tokensDir, "labels.json")));
  const rows = await tokenRows(tokensDir, split);
  const table: (string | number)[][] = [["#", "label", "length", "tokens"]];
  for (let i = 0; i < Math.min(n, rows.ids.length); i++) {
    table.push([
      i,
      meta.labels?.[rows.labels[i]] ?? "",
      rows.lengths[i],
      Array.from(rows.ids[i], (id) => tok.idToToken[id]).join(" "),
    ]);
  }
  return htmlTable(table);
}

/**
 * The training curve of a stage (`curve.json`) as a line chart, one line per phase, its x axis
 * ending at the last step (the Vega-Lite chart of the evaluate report).
 */
export async function lossCurveSvg(stageDir: string, title: string): Promise<string> {
  const c: { curve: LossPoint[] } = JSON.parse(
    await Deno.readTextFile(join(stageDir, "curve.json")),
  );
  return await renderSvg(lossChartSpec(lossSeries("loss", c.curve, false), { title }));
}

/**
 * Attention probabilities of every layer and head of a model on one text (`maps[layer][head]`,
 * query rows by key columns): the softmax of the pre-softmax scores the model's inference graph
 * outputs, run on ONNX Runtime.
 */
export async function attentionMaps(
  modelDir: string,
  text: string,
  tokenizer?: BertTokenizer,
): Promise<{ tokens: string[]; maps: number[][][][] }> {
  const tok = tokenizer ?? await loadTokenizer(modelDir);
  const model = await loadBert(modelDir);
  const engine = await openInference(model, { outputs: "all", mlm: false, threads: 1 });
  try {
    const enc = encodeBatch(tok, [text], undefined, { maxLength: 32 });
    const tokens = Array.from(enc.inputIds, (id) => tok.idToToken[id]);
    const out = await engine.run(enc);
    const maps: number[][][][] = [];
    for (let l = 0; out[`attention_scores_${l}`]; l++) {
      const { data, dims: [, heads, n, m] } = out[`attention_scores_${l}`];
      maps.push(
        Array.from(
          { length: heads },
          (_, h) =>
            Array.from(
              { length: n },
              (_, i) => softmax(data.subarray((h * n + i) * m, (h * n + i + 1) * m)),
            ),
        ),
      );
    }
    return { tokens, maps };
  } finally {
    await engine.close();
    model.dispose();
  }
}

/** Size on disk of a directory tree, in bytes. */
export async function diskBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    n += e.isDirectory ? await diskBytes(p) : (await Deno.stat(p)).size;
  }
  return n;
}
