/**
 * Live loss curves in a notebook: while a pipeline runs, the training loop logs
 * `<stage>: <phase> step <k>/<n> loss <x> …` every tenth of a phase; {@link withLiveLoss} reads
 * those lines as they are logged and redraws one SVG line chart in place (a Jupyter display that
 * is updated by its `display_id`), then draws the complete curves from each stage's `curve.json`.
 * @module
 */

import { join } from "node:path";
import { lineChartSvg, type StageReport } from "../../mod.ts";

/** One logged training step. */
export interface StepLine {
  stage: string;
  phase: string;
  step: number;
  total: number;
  loss: number;
}

const STEP_LINE = /^(\S+): (\S+) step (\d+)\/(\d+) loss (\S+)/;

/** Parse a training-loop log line (`distill: intermediate step 4/40 loss 3.231 …`), else null. */
export function parseStepLine(line: string): StepLine | null {
  const m = STEP_LINE.exec(line);
  if (!m) return null;
  const loss = Number(m[5]);
  if (!Number.isFinite(loss)) return null;
  return { stage: m[1], phase: m[2], step: Number(m[3]), total: Number(m[4]), loss };
}

/** A line chart series: one per stage and phase. */
export type Series = { name: string; points: [number, number][] };

/** Collects step lines into series, with steps counted across the phases of each stage. */
export class LossCurves {
  readonly series = new Map<string, Series>();
  private readonly offsets = new Map<string, { phase: string; offset: number; total: number }>();

  /** Add a step; returns false if the line was not a step line. */
  add(line: string): boolean {
    const s = parseStepLine(line);
    if (!s) return false;
    let o = this.offsets.get(s.stage);
    if (!o) this.offsets.set(s.stage, o = { phase: s.phase, offset: 0, total: s.total });
    if (o.phase !== s.phase) {
      o.offset += o.total;
      o.phase = s.phase;
      o.total = s.total;
    }
    const key = `${s.stage} · ${s.phase}`;
    let series = this.series.get(key);
    if (!series) this.series.set(key, series = { name: key, points: [] });
    series.points.push([o.offset + s.step, s.loss]);
    return true;
  }

  /** The chart so far. */
  svg(title: string): string {
    const series = [...this.series.values()];
    return lineChartSvg(
      series.length ? series : [{ name: "waiting for the first step", points: [] }],
      {
        title,
        xLabel: "step (within the stage)",
        yLabel: "loss",
      },
    );
  }
}

/** The full curves of finished training stages, from their `curve.json`. */
export async function curvesOf(reports: StageReport[]): Promise<Series[]> {
  const out: Series[] = [];
  for (const r of reports) {
    let text: string;
    try {
      text = await Deno.readTextFile(join(r.dir, "curve.json"));
    } catch {
      continue; // not a training stage
    }
    const c = JSON.parse(text) as { curve: { phase: string; globalStep: number; loss: number }[] };
    for (const phase of [...new Set(c.curve.map((p) => p.phase))]) {
      out.push({
        name: `${r.key} · ${phase}`,
        points: c.curve.filter((p) => p.phase === phase).map((p) => [p.globalStep, p.loss]),
      });
    }
  }
  return out;
}

/** Shows (or updates) a MIME bundle under a display id; Deno.jupyter.display in a notebook. */
export type DisplayFn = (
  bundle: Record<string, string>,
  opts: { display_id: string; update: boolean },
) => Promise<void>;

const jupyterDisplay: DisplayFn = (bundle, opts) =>
  Deno.jupyter.display(bundle, { raw: true, ...opts });

/**
 * Run `run` (e.g. `() => runUpTo("distill", { quiet: false })`, which logs its steps) with a
 * loss chart that is redrawn as steps are logged (at most every `everyMs`), and finally from the
 * finished stages' `curve.json` (every step). Log lines are still printed.
 */
export async function withLiveLoss<T extends StageReport[] | Record<string, StageReport>>(
  run: () => Promise<T>,
  opts: { title: string; everyMs?: number; display?: DisplayFn } = { title: "training loss" },
): Promise<T> {
  const display = opts.display ?? jupyterDisplay;
  const displayId = `tinystill-loss-${crypto.randomUUID()}`;
  const curves = new LossCurves();
  const pending: Promise<void>[] = [];
  let shown = false, last = -Infinity;
  const draw = (svg: string) => {
    const update = shown;
    shown = true;
    last = performance.now();
    pending.push(
      display({ "image/svg+xml": svg, "text/plain": `[${opts.title}]` }, {
        display_id: displayId,
        update,
      }),
    );
  };
  draw(curves.svg(opts.title));
  const original = console.error;
  console.error = (...args: unknown[]) => {
    original(...args);
    if (
      curves.add(args.map(String).join(" ")) && performance.now() - last >= (opts.everyMs ?? 250)
    ) {
      draw(curves.svg(opts.title));
    }
  };
  let result: T;
  try {
    result = await run();
  } finally {
    console.error = original;
  }
  const reports = Array.isArray(result) ? result : Object.values(result);
  const full = await curvesOf(reports);
  draw(
    full.length
      ? lineChartSvg(full, { title: opts.title, xLabel: "step (within the stage)", yLabel: "loss" })
      : curves.svg(opts.title),
  );
  await Promise.all(pending);
  return result;
}
