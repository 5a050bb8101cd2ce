/** The evaluate stage's report: comparison table, number formats, SVG charts, Markdown. */

import assert from "node:assert/strict";
import {
  barChartSvg,
  comparisonTable,
  DASH,
  escapeXml,
  formatBytes,
  formatCount,
  formatInteger,
  formatMetric,
  formatRatio,
  lineChartSvg,
  logTicks,
  markdownTable,
  type ModelRow,
  niceTicks,
  reportMarkdown,
  type Table,
  textTable,
} from "../pipeline/report/report.ts";
import { rng } from "./_util.ts";

const TEACHER: ModelRow = {
  name: "bert-base",
  role: "teacher",
  metrics: { accuracy: 0.9, macro_f1: 0.8843, mcc: 0.80125 },
  parameters: 109_482_240,
  bytes: 438_000_000,
  latency_ms: 20,
  throughput: 512.3,
};
const STUDENT: ModelRow = {
  name: "tinybert-4",
  role: "student",
  metrics: { accuracy: 0.87, macro_f1: 0.8612, mcc: 0.7234 },
  parameters: 14_350_248,
  bytes: 27_500_000,
  latency_ms: 2.5,
  throughput: 12_345.6,
};
const BASELINE: ModelRow = {
  name: "majority | class",
  role: "baseline",
  metrics: { accuracy: 0.5, mcc: 0 },
  parameters: 1,
  bytes: 120,
  latency_ms: 0.004,
  throughput: 2_500_000,
};

function assertThrows(fn: () => unknown, parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error, `expected an Error, got ${e}`);
    for (const p of parts) {
      assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} lacks "${p}"`);
    }
    return true;
  });
}

/** Column of `table` by header → cell of row `r`. */
function cell(table: Table, r: number, header: string): string {
  const j = table.headers.indexOf(header);
  assert.ok(j >= 0, `no column "${header}" in ${table.headers.join(", ")}`);
  return table.cells[r][j];
}

Deno.test("comparison table: metrics, retention and ratios from hand-made rows", () => {
  const t = comparisonTable([TEACHER, STUDENT, BASELINE], { metric: "accuracy" });
  assert.deepEqual(t.headers, [
    "model",
    "accuracy %",
    "macro_f1 %",
    "mcc",
    "retention % (accuracy)",
    "parameters",
    "size ×",
    "on disk",
    "latency ms",
    "speed-up ×",
    "throughput ex/s",
  ]);
  assert.deepEqual(t.cells[0], [
    "bert-base",
    "90.0",
    "88.4",
    "0.801",
    DASH, // the teacher's own retention
    "109.5M",
    "1.0×",
    "438.0 MB",
    "20.00",
    "1.0×",
    "512",
  ]);
  assert.deepEqual(t.cells[1], [
    "tinybert-4",
    "87.0",
    "86.1",
    "0.723",
    "96.7", // 100 · 0.87 / 0.9 = 96.666…
    "14.4M",
    "7.6×", // 109,482,240 / 14,350,248 = 7.629
    "27.5 MB",
    "2.50",
    "8.0×", // 20 / 2.5
    "12,346",
  ]);
  // a metric the row lacks is "—"; a retention of 0.5 / 0.9 = 55.6 %
  assert.equal(cell(t, 2, "macro_f1 %"), DASH);
  assert.equal(cell(t, 2, "retention % (accuracy)"), "55.6");
  assert.equal(cell(t, 2, "mcc"), "0.000");
  assert.equal(cell(t, 2, "size ×"), "109482240.0×");
  assert.equal(cell(t, 2, "on disk"), "120 B");
  assert.equal(cell(t, 2, "speed-up ×"), "5000.0×");
  assert.equal(cell(t, 2, "throughput ex/s"), "2,500,000");
  assert.deepEqual(t.align?.slice(0, 2), ["left", "right"]);

  // retention of another metric; explicit teacher by name (even if its role differs)
  const m = comparisonTable([TEACHER, STUDENT], { metric: "mcc" });
  assert.equal(cell(m, 1, "retention % (mcc)"), "90.3"); // 0.7234 / 0.80125 = 0.90284
  const s = comparisonTable([TEACHER, STUDENT], { metric: "accuracy", teacher: "tinybert-4" });
  assert.equal(cell(s, 0, "retention % (accuracy)"), "103.4"); // 0.9 / 0.87
  assert.equal(cell(s, 1, "retention % (accuracy)"), DASH);
  assert.equal(cell(s, 0, "speed-up ×"), "0.1×"); // 2.5 / 20
});

Deno.test("comparison table without a teacher leaves the ratio columns empty", () => {
  const t = comparisonTable([STUDENT, BASELINE], { metric: "accuracy" });
  for (const h of ["retention % (accuracy)", "size ×", "speed-up ×"]) {
    assert.deepEqual([cell(t, 0, h), cell(t, 1, h)], [DASH, DASH]);
  }
});

Deno.test("comparison table errors are clear", () => {
  assertThrows(() => comparisonTable([], { metric: "accuracy" }), ["no models"]);
  assertThrows(() => comparisonTable([TEACHER, TEACHER], { metric: "accuracy" }), [
    'two rows are named "bert-base"',
  ]);
  assertThrows(() => comparisonTable([TEACHER], { metric: "accuracy", teacher: "bert" }), [
    'no model named "bert"',
    "bert-base",
  ]);
  assertThrows(() => comparisonTable([TEACHER, { ...TEACHER, name: "b" }], { metric: "mcc" }), [
    'several rows have role "teacher"',
    "opts.teacher",
  ]);
  assertThrows(() => comparisonTable([TEACHER, STUDENT], { metric: "acc" }), [
    'the teacher "bert-base" has no metric "acc"',
    "accuracy, macro_f1, mcc",
  ]);
  assertThrows(() => comparisonTable([STUDENT], { metric: "f1" }), ['no model has metric "f1"']);
});

Deno.test("number formats", () => {
  assert.equal(formatMetric("accuracy", 0.8765), "87.7"); // 87.64999999999999 in binary
  assert.equal(formatMetric("accuracy", 0.8764), "87.6");
  assert.equal(formatMetric("mcc", -0.0004), "0.000");
  assert.equal(formatMetric("macro_f1", 1), "100.0");
  assert.equal(formatMetric("mcc", -0.12345), "-0.123");
  assert.equal(formatMetric("pearson", 0.9), "0.900");
  assert.equal(formatMetric("spearman", 0.87654), "0.877");
  assert.equal(formatMetric("mse", 0.0123456), "0.01235");
  assert.equal(formatMetric("accuracy", NaN), DASH);
  assert.equal(formatMetric("accuracy", undefined), DASH);
  assert.equal(formatCount(950), "950");
  assert.equal(formatCount(4_385), "4.4k");
  assert.equal(formatCount(14_350_248), "14.4M");
  assert.equal(formatCount(999_960), "1.0M"); // not "1000.0k"
  assert.equal(formatCount(1_340_000_000), "1.3B");
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(4_096), "4.1 kB");
  assert.equal(formatBytes(27_500_000), "27.5 MB");
  assert.equal(formatBytes(1.34e9), "1.3 GB");
  assert.equal(formatBytes(-1), DASH);
  assert.equal(formatRatio(7.629), "7.6×");
  assert.equal(formatRatio(Infinity), DASH);
  assert.equal(formatRatio(0), DASH);
  assert.equal(formatInteger(0), "0");
  assert.equal(formatInteger(999.5), "1,000");
  assert.equal(formatInteger(1_234_567.2), "1,234,567");
  assert.equal(formatInteger(-12_345), "-12,345");
});

/** Pipes that separate Markdown cells (not the escaped `\|` inside them). */
function unescapedPipes(line: string): number {
  return (line.match(/(?<!\\)\|/g) ?? []).length;
}

Deno.test("markdown table: one line per row, pipes per line, alignment row", () => {
  const t = comparisonTable([TEACHER, STUDENT, BASELINE], { metric: "accuracy" });
  const md = markdownTable(t);
  assert.ok(md.endsWith("\n"));
  const lines = md.trimEnd().split("\n");
  assert.equal(lines.length, 2 + 3);
  for (const l of lines) assert.equal(unescapedPipes(l), t.headers.length + 1, l);
  assert.ok(lines[2].startsWith("| bert-base | 90.0 |"));
  assert.ok(lines[4].includes("majority \\| class"));
  const alignCells = lines[1].split("|").slice(1, -1).map((s) => s.trim());
  assert.deepEqual(alignCells, ["---", ...new Array(t.headers.length - 1).fill("---:")]);

  // inferred alignment: numeric columns right, text left
  const inferred = markdownTable({
    headers: ["name", "score", "size"],
    cells: [["a", "1.5", "27.5 MB"], ["b", DASH, "4.1 kB"]],
  });
  assert.equal(inferred.split("\n")[1], "| --- | ---: | ---: |");
  assertThrows(() => markdownTable({ headers: ["a", "b"], cells: [["1"]] }), [
    "row 0 has 1 cells but there are 2 headers",
  ]);
});

Deno.test("text table: aligned columns, numbers right-aligned", () => {
  const t = comparisonTable([TEACHER, STUDENT, BASELINE], { metric: "accuracy" });
  const lines = textTable(t).trimEnd().split("\n");
  assert.equal(lines.length, 2 + 3);
  // the last column is right-aligned, so every line ends at the same width
  const widths = new Set(lines.map((l) => [...l].length));
  assert.equal(widths.size, 1, textTable(t));
  assert.ok(lines[1].startsWith("----------------  ")); // "majority | class" is 16 wide
  // left-aligned name padded to 16, then "accuracy %" (10 wide) right-aligned
  assert.ok(lines[3].startsWith("tinybert-4              87.0  "), lines[3]);
  // right alignment: "0.000" ends where "0.801" ends
  const col = t.headers.indexOf("mcc");
  const end = (l: string, s: string) => l.indexOf(s) + s.length;
  assert.equal(end(lines[2], t.cells[0][col]), end(lines[4], t.cells[2][col]));
});

/**
 * A tiny well-formedness check: one root `<svg>`, balanced tags, quoted attributes, no raw `<`
 * or unescaped `&` in text. Returns the elements as [name, attributes] in document order.
 */
function parseSvg(svg: string): [string, Record<string, string>][] {
  const s = svg.trim();
  assert.ok(s.startsWith("<svg "), "starts with <svg");
  assert.ok(s.endsWith("</svg>"), "ends with </svg>");
  const stack: string[] = [];
  const elements: [string, Record<string, string>][] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let i = 0, roots = 0;
  while (i < s.length) {
    const lt = s.indexOf("<", i);
    const text = s.slice(i, lt < 0 ? s.length : lt);
    assert.ok(!text.includes(">"), `raw > in text ${JSON.stringify(text)}`);
    assert.ok(!/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(text), `raw & in ${JSON.stringify(text)}`);
    if (lt < 0) break;
    tag.lastIndex = lt;
    const m = tag.exec(s);
    assert.ok(m, `malformed tag at ${JSON.stringify(s.slice(lt, lt + 60))}`);
    const [all, close, name, attrs, selfClose] = m;
    if (close) {
      assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    } else {
      if (stack.length === 0) roots++;
      const a: Record<string, string> = {};
      for (const [, k, v] of attrs.matchAll(/([\w:-]+)="([^"]*)"/g)) {
        assert.ok(!(k in a), `duplicate attribute ${k}`);
        assert.ok(!/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(v), `raw & in attribute ${k}`);
        a[k] = v;
      }
      elements.push([name, a]);
      if (!selfClose) stack.push(name);
    }
    i = lt + all.length;
  }
  assert.deepEqual(stack, [], "unclosed elements");
  assert.equal(roots, 1, "one root element");
  assert.ok(!/NaN|Infinity|undefined/.test(svg), "no NaN/Infinity/undefined in the output");
  return elements;
}

function polylines(svg: string): [number, number][][] {
  return parseSvg(svg).filter(([n]) => n === "polyline").map(([, a]) =>
    a.points.trim() === ""
      ? []
      : a.points.trim().split(/\s+/).map((p) => p.split(",").map(Number) as [number, number])
  );
}

const LINE_OPTS = { title: "Dev accuracy", xLabel: "step", yLabel: "accuracy" };

Deno.test("line chart: one polyline per series with its points, legend, title", () => {
  const series = [
    { name: "teacher", points: [[0, 0.5], [100, 0.7], [200, 0.8], [300, 0.85], [400, 0.9]] },
    { name: "student", points: [[0, 0.4], [200, 0.75], [400, 0.87]] },
  ] as { name: string; points: [number, number][] }[];
  const svg = lineChartSvg(series, LINE_OPTS);
  const lines = polylines(svg);
  assert.deepEqual(lines.map((l) => l.length), [5, 3]);
  // distinct colours
  const strokes = parseSvg(svg).filter(([n]) => n === "polyline").map(([, a]) => a.stroke);
  assert.equal(new Set(strokes).size, 2);
  assert.ok(svg.includes(">teacher</text>") && svg.includes(">student</text>"), "legend");
  assert.ok(svg.includes(">Dev accuracy</text>"), "title");
  // x grows with x, y (SVG) shrinks as the value grows
  const t = lines[0];
  for (let k = 1; k < t.length; k++) assert.ok(t[k][0] > t[k - 1][0] && t[k][1] < t[k - 1][1]);
  // inside the canvas
  for (const [x, y] of lines.flat()) assert.ok(x >= 0 && x <= 640 && y >= 0 && y <= 400);
  // custom size
  const big = parseSvg(lineChartSvg(series, { ...LINE_OPTS, width: 900, height: 500 }));
  assert.deepEqual([big[0][1].width, big[0][1].height], ["900", "500"]);
});

Deno.test("line chart edge cases: escaping, NaN/Infinity, single point, constant, no data", () => {
  const esc = lineChartSvg([{ name: 'a<b & "c"', points: [[0, 1], [1, 2]] }], {
    title: "loss <&> 'x'",
    xLabel: "x < 1",
    yLabel: "y & z",
  });
  parseSvg(esc);
  assert.ok(esc.includes("loss &lt;&amp;&gt; &apos;x&apos;"));
  assert.ok(esc.includes("a&lt;b &amp; &quot;c&quot;"));
  assert.ok(!esc.includes("<&"));
  assert.equal(escapeXml("a\u0001b"), "ab"); // control characters XML forbids are dropped

  const holes = lineChartSvg([{
    name: "s",
    points: [[0, 1], [1, NaN], [2, Infinity], [NaN, 3], [-Infinity, 1], [3, 2]],
  }], LINE_OPTS);
  assert.deepEqual(polylines(holes).map((l) => l.length), [2]);

  const single = lineChartSvg([{ name: "s", points: [[5, 0.5]] }], LINE_OPTS);
  const [[p]] = polylines(single);
  assert.ok(p[0] > 72 && p[0] < 640 && p[1] > 48 && p[1] < 344, `point ${p} inside the plot`);

  const constant = lineChartSvg([{ name: "s", points: [[0, 3], [1, 3], [2, 3]] }], LINE_OPTS);
  const [c] = polylines(constant);
  assert.equal(new Set(c.map((q) => q[1])).size, 1);
  assert.ok(c[0][1] > 48 && c[0][1] < 344, "constant line inside the plot");

  for (
    const series of [[], [{ name: "empty", points: [] }], [{ name: "nan", points: [[NaN, 1]] }]]
  ) {
    const svg = lineChartSvg(series as { name: string; points: [number, number][] }[], LINE_OPTS);
    assert.ok(svg.includes(">no data</text>"));
    assert.ok(polylines(svg).every((l) => l.length === 0));
    assert.equal(polylines(svg).length, series.length);
  }
  assertThrows(() => lineChartSvg([], { ...LINE_OPTS, width: 10 }), ["at least 200 × 150"]);
});

Deno.test("line chart with logY: positive values on a log scale, y ≤ 0 skipped", () => {
  const svg = lineChartSvg(
    [{ name: "loss", points: [[0, 1000], [1, 100], [2, 10], [3, 1], [4, 0], [5, -1]] }],
    { ...LINE_OPTS, logY: true },
  );
  const [l] = polylines(svg);
  assert.equal(l.length, 4);
  // equal ratios → equal vertical steps
  const dy = l.slice(1).map((q, k) => q[1] - l[k][1]);
  for (const d of dy) assert.ok(Math.abs(d - dy[0]) < 0.2 && d > 0, `steps ${dy}`);
  for (const label of [">1<", ">10<", ">100<", ">1000<"]) assert.ok(svg.includes(label), label);
  const small = lineChartSvg([{ name: "s", points: [[0, 0.002], [1, 0.03]] }], {
    ...LINE_OPTS,
    logY: true,
  });
  assert.equal(polylines(small)[0].length, 2);
});

Deno.test("niceTicks: ascending, evenly spaced {1,2,5}×10^k steps covering the range", () => {
  assert.deepEqual(niceTicks(0, 0.93, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0, 100, 5), [0, 20, 40, 60, 80, 100]); // 100/4 = 25 → step 20
  assert.deepEqual(niceTicks(-3.7, 12.2), [-5, 0, 5, 10, 15]); // 15.9/4 = 3.975 → step 5
  assert.deepEqual(niceTicks(0, 1, 3), [0, 0.5, 1]);
  assert.deepEqual(niceTicks(0.93, 0), niceTicks(0, 0.93)); // order does not matter
  const r = rng(11);
  const cases: [number, number, number][] = [
    [0, 0.93, 5],
    [0, 1, 5],
    [-3.7, 12.2, 5],
    [0.61, 0.62, 5],
    [1e-7, 3e-7, 4],
    [12_345, 98_765, 6],
    [-1e9, -2, 5],
    [5, 5, 5],
    [0, 0, 5],
    [-0.3, -0.3, 3],
    [0.1, 0.7, 2],
  ];
  for (let k = 0; k < 200; k++) {
    const a = (r() - 0.5) * 10 ** Math.floor(r() * 12 - 6), b = a + r() * 10 ** (r() * 10 - 5);
    cases.push([a, b, 2 + Math.floor(r() * 8)]);
  }
  for (const [min, max, count] of cases) {
    const t = niceTicks(min, max, count);
    const what = `niceTicks(${min}, ${max}, ${count}) = ${t}`;
    assert.ok(t.length >= 2 && t.length <= 2 * count + 1, what);
    assert.ok(t[0] <= Math.min(min, max) && t[t.length - 1] >= Math.max(min, max), what);
    assert.ok(t[t.length - 1] > t[0], what);
    const step = (t[t.length - 1] - t[0]) / (t.length - 1);
    // float rounding of the tick values themselves, relative to their magnitude
    const tol = 1e-9 * step + 1e-14 * Math.max(Math.abs(t[0]), Math.abs(t[t.length - 1]));
    for (let i = 1; i < t.length; i++) {
      assert.ok(Math.abs(t[i] - t[i - 1] - step) <= tol, `uneven: ${what}`);
    }
    const p10 = 10 ** Math.floor(Math.log10(step) + 1e-9);
    assert.ok([1, 2, 5, 10].some((m) => Math.abs(step - m * p10) <= tol), `step ${step}: ${what}`);
    // no tick is wasted: the second and the second-to-last are inside the range
    assert.ok(min === max || (t[1] > min && t[t.length - 2] < max), `wasted tick: ${what}`);
  }
  assertThrows(() => niceTicks(0, NaN), ["niceTicks", "finite"]);
  assertThrows(() => niceTicks(0, 1, 1), ["count must be an integer ≥ 2"]);
});

Deno.test("logTicks: decades, 1-2-5 within two decades", () => {
  assert.deepEqual(logTicks(1, 1000), [1, 10, 100, 1000]);
  assert.deepEqual(logTicks(3, 40), [2, 5, 10, 20, 50]);
  assert.deepEqual(logTicks(1e-3, 1e6), [1e-3, 1, 1e3, 1e6]);
  assert.deepEqual(logTicks(10, 10), [1, 2, 5, 10, 20, 50, 100]);
  assert.deepEqual(logTicks(0.002, 0.03), [0.002, 0.005, 0.01, 0.02, 0.05]);
  assertThrows(() => logTicks(0, 10), ["logTicks", "positive"]);
});

Deno.test("bar chart: grouped teacher vs student bars, legend, negatives, n/a, no data", () => {
  const svg = barChartSvg([
    { label: "teacher", group: "accuracy", value: 0.9 },
    { label: "student", group: "accuracy", value: 0.87 },
    { label: "teacher", group: "macro F1 <&>", value: 0.88 },
    { label: "student", group: "macro F1 <&>", value: 0.86 },
  ], { title: "Teacher vs student", yLabel: "score" });
  const els = parseSvg(svg);
  const rects = els.filter(([n]) => n === "rect").map(([, a]) => a);
  // background + 4 bars + 2 legend swatches
  assert.equal(rects.length, 7);
  const bars = rects.slice(1, 5);
  assert.equal(bars[0].fill, bars[2].fill); // same series, same colour
  assert.notEqual(bars[0].fill, bars[1].fill);
  // heights proportional to the values (bars start at 0)
  const h = bars.map((b) => Number(b.height));
  assert.ok(Math.abs(h[1] / h[0] - 0.87 / 0.9) < 0.01, `heights ${h}`);
  assert.ok(svg.includes("macro F1 &lt;&amp;&gt;"));
  assert.ok(svg.includes(">0.87</text>"), "value label");

  const mixed = barChartSvg([
    { label: "mcc", value: -0.2 },
    { label: "acc", value: 0.6 },
    { label: "broken", value: NaN },
  ], { title: "t", yLabel: "y" });
  const mixedRects = parseSvg(mixed).filter(([n]) => n === "rect");
  assert.equal(mixedRects.length, 1 + 2);
  assert.ok(mixed.includes(">n/a</text>"));

  const none = barChartSvg([], { title: "t", yLabel: "y" });
  parseSvg(none);
  assert.ok(none.includes(">no data</text>"));
  assertThrows(
    () =>
      barChartSvg([{ label: "a", group: "g", value: 1 }, { label: "a", group: "g", value: 2 }], {
        title: "t",
        yLabel: "y",
      }),
    ['two bars are labelled "a" in group "g"'],
  );
});

Deno.test("report markdown embeds the title, table, notes and charts", () => {
  const table = comparisonTable([TEACHER, STUDENT], { metric: "accuracy" });
  const md = reportMarkdown({
    title: "SST-2: TinyBERT-4 vs BERT-base",
    table,
    notes: ["dev set, 872 examples", "latency on 2 CPU cores (wasm)"],
    charts: [
      { file: "accuracy.svg", caption: "Dev accuracy" },
      { file: "loss curve.svg", caption: "Loss [log]" },
    ],
  });
  assert.ok(md.startsWith("# SST-2: TinyBERT-4 vs BERT-base\n\n"));
  assert.ok(md.includes(markdownTable(table)));
  assert.ok(md.includes("\n- dev set, 872 examples\n- latency on 2 CPU cores (wasm)\n"));
  assert.ok(md.includes("\n![Dev accuracy](accuracy.svg)\n"));
  assert.ok(md.includes("\n![Loss \\[log\\]](<loss curve.svg>)\n"));
  assert.ok(md.endsWith("\n") && !md.endsWith("\n\n"));
  const bare = reportMarkdown({ title: "t", table });
  assert.equal(bare, `# t\n\n${markdownTable(table)}`);
  // a further section sits between the notes and the charts
  const extra = { headers: ["A", "B"], cells: [["x", "1"]] };
  const withSection = reportMarkdown({
    title: "t",
    table,
    notes: ["n"],
    sections: [{ title: "Paired", table: extra, notes: ["why"] }],
    charts: [{ file: "c.svg", caption: "c" }],
  });
  assert.ok(
    withSection.includes(`\n- n\n\n## Paired\n\n${markdownTable(extra)}\n- why\n\n![c](c.svg)\n`),
    withSection,
  );
});
