/**
 * The report's Vega-Lite charts: the specs hold what they must (score axis zoomed to the data,
 * one point per model, the loss x axis ending at the last step, 95% intervals), they render to SVG
 * headless in Deno, and the rendered axes say so too (no tick at 0%, none past the last step).
 */

import assert from "node:assert/strict";
import {
  lossChartSpec,
  renderSvg,
  scoreChartSpec,
  scoreInterval,
  type ScorePoint,
  tradeoffSpec,
  type VegaLiteSpec,
  zoomedDomain,
} from "../pipeline/report/charts.ts";

// the default job's scores (issue 23): 605 test emails, scores between 0.962 and 0.972
const N = 605;
const MODELS: [string, ScorePoint["role"], number, number, number][] = [
  ["teacher", "teacher", 0.972, 9.1, 179e6],
  ["student", "student", 0.964, 1.2, 17.7e6],
  ["student (fp16)", "student", 0.964, 1.3, 8.9e6],
  ["student (int8)", "student", 0.962, 0.9, 4.6e6],
  ["labels-only", "baseline", 0.972, 1.2, 17.7e6],
  ["general + labels", "baseline", 0.97, 1.2, 17.7e6],
];
const POINTS: ScorePoint[] = MODELS.map(([name, role, score, latency_ms, bytes]) => {
  const [lo, hi] = scoreInterval("accuracy", score, N);
  return { name, role, score, lo, hi, latency_ms, bytes, parameters: bytes / 4 };
});

/** The layers' encodings of a spec (a layered chart, or a single mark). */
function layers(spec: VegaLiteSpec): Record<string, Record<string, unknown>>[] {
  const enc = (spec.encoding ?? {}) as Record<string, Record<string, unknown>>;
  const ls = (spec.layer as { encoding: Record<string, Record<string, unknown>> }[]) ?? [spec];
  return ls.map((l) => ({ ...enc, ...(l.encoding ?? {}) }));
}

/** The numbers printed as axis ticks of a rendered chart's `role-axis-label` groups. */
function tickNumbers(svg: string): number[] {
  const out: number[] = [];
  for (const g of svg.matchAll(/role-axis-label[^]*?<\/g>/g)) {
    for (const t of g[0].matchAll(/<text[^>]*>([^<]*)<\/text>/g)) {
      const v = Number(t[1].replace("%", "").replace(/,/g, ""));
      if (t[1] !== "" && Number.isFinite(v)) out.push(v);
    }
  }
  return out;
}

Deno.test("scoreInterval: Wilson for proportions, Fisher z for correlations", () => {
  // 90 of 100: the Wilson 95% interval is 0.8256 … 0.9448
  const [lo, hi] = scoreInterval("accuracy", 0.9, 100);
  assert.ok(Math.abs(lo - 0.82565) < 1e-4 && Math.abs(hi - 0.94485) < 1e-4, `${lo} ${hi}`);
  // r = 0.5, n = 28: tanh(atanh(0.5) ± 1.96/5) = tanh(0.5493 ± 0.392) = 0.1560 … 0.7358
  const [a, b] = scoreInterval("pearson", 0.5, 28);
  assert.ok(Math.abs(a - 0.1560) < 1e-3 && Math.abs(b - 0.7358) < 1e-3, `${a} ${b}`);
  assert.deepEqual(scoreInterval("accuracy", 1, 50).map((v) => v <= 1), [true, true]);
  assert.deepEqual(scoreInterval("mse", 0.3, 50), [0.3, 0.3]);
});

Deno.test("score chart: every model with its interval on an axis zoomed to the data", async () => {
  const spec = scoreChartSpec(POINTS, { metric: "accuracy", title: "spam: test" });
  assert.equal((spec.data as { values: unknown[] }).values.length, MODELS.length);
  const lo = Math.min(...POINTS.map((p) => p.lo)), hi = Math.max(...POINTS.map((p) => p.hi));
  for (const l of layers(spec)) {
    const domain = (l.x.scale as { domain: number[] }).domain;
    // zoomed: covers every interval, starts far above 0 and spans little more than the data
    assert.ok(domain[0] <= lo && domain[1] >= hi, JSON.stringify(domain));
    assert.ok(domain[0] > 0.9, `the score axis starts at ${domain[0]}, not near the data`);
    assert.ok(domain[1] - domain[0] < 1.3 * (hi - lo), JSON.stringify(domain));
    assert.equal((l.x.scale as { zero?: boolean }).zero, false);
  }
  const [rule] = layers(spec);
  assert.equal(rule.x.field, "lo");
  assert.equal(rule.x2.field, "hi");
  const svg = await renderSvg(spec);
  assert.match(svg, /^<svg/);
  for (const [name] of MODELS) assert.ok(svg.includes(`>${name}</text>`), name);
  assert.ok(svg.includes(">97.2%</text>") && svg.includes(">96.2%</text>"));
  const ticks = tickNumbers(svg).filter((v) => v > 50); // the score axis (%)
  assert.ok(ticks.length >= 3 && Math.min(...ticks) > 90, `score ticks ${ticks}`);
});

Deno.test("trade-off charts: one labelled point per model, score zoomed, cost on a log axis", async () => {
  for (const x of ["latency_ms", "bytes"] as const) {
    const spec = tradeoffSpec(POINTS, { metric: "accuracy", x, title: x });
    const values = (spec.data as { values: { name: string; cost: number; label_y: number }[] })
      .values;
    assert.deepEqual(values.map((v) => v.name), MODELS.map((m) => m[0]));
    const point = layers(spec)[1];
    assert.equal(point.y.field, "score");
    assert.equal((point.x.scale as { type: string }).type, "log");
    const yDomain = (point.y.scale as { domain: number[] }).domain;
    assert.ok(yDomain[0] > 0.9 && yDomain[0] <= Math.min(...POINTS.map((p) => p.lo)));
    const text = layers(spec)[2];
    assert.equal(text.text.field, "name");
    // models at the same cost and score get labels on different lines
    const at = (n: string) => values.find((v) => v.name === n)!;
    if (x === "latency_ms") {
      assert.notEqual(at("student").label_y, at("student (fp16)").label_y);
    } else assert.notEqual(at("student").label_y, at("labels-only").label_y);
    const svg = await renderSvg(spec);
    const labels = /class="mark-text role-mark layer_2_marks"[^]*?<\/g>/.exec(svg)?.[0] ?? "";
    for (const [name] of MODELS) {
      assert.equal(labels.split(`>${name}</text>`).length - 1, 1, `${x}: label ${name}`);
    }
    const symbols = /class="mark-symbol role-mark layer_1_marks"[^]*?<\/g>/.exec(svg)?.[0] ?? "";
    assert.equal(symbols.match(/<path /g)?.length, MODELS.length, `${x}: one point per model`);
  }
});

Deno.test("loss chart: the x axis ends at the last step", async () => {
  const last = 437;
  const spec = lossChartSpec([
    { name: "intermediate", points: Array.from({ length: 300 }, (_, i) => [i + 1, 5 / (i + 1)]) },
    {
      name: "prediction",
      points: Array.from({ length: last - 300 }, (_, i) => [i + 301, 0.5 / (i + 1)]),
    },
  ], { title: "loss" });
  const x = (spec.encoding as Record<string, { scale: { domain: number[]; nice: boolean } }>).x;
  assert.deepEqual(x.scale.domain, [1, last]);
  assert.equal(x.scale.nice, false);
  const svg = await renderSvg(spec);
  const xTicks = tickNumbers(svg).filter((v) => v >= 50 && Number.isInteger(v));
  assert.ok(xTicks.length >= 3 && Math.max(...xTicks) <= last, `x ticks ${xTicks}`);
  // the axis line ends where the last point is drawn: no room to the right of the data
  assert.ok(!xTicks.includes(450) && !xTicks.includes(500), `x ticks ${xTicks}`);
});

Deno.test("zoomedDomain pads the data range and clamps it", () => {
  assert.deepEqual(zoomedDomain([0.95, 0.97], { pad: 0.5 }).map((v) => +v.toFixed(4)), [
    0.94,
    0.98,
  ]);
  assert.deepEqual(zoomedDomain([0.99, 1], { pad: 0.5, max: 1 })[1], 1);
  const [a, b] = zoomedDomain([0.5, 0.5]);
  assert.ok(a < 0.5 && b > 0.5);
});
