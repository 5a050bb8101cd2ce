/**
 * Progress for long work: on a terminal a bar with rate and ETA, redrawn at most 10×/s;
 * elsewhere (CI, logs) a plain line every few seconds and one at the end.
 * @module
 */

/** Options of {@link Progress}. */
export interface ProgressOptions {
  /** What is being counted, e.g. "examples" or "tokens". */
  unit: string;
  /** Where to write (default stderr). */
  out?: { writeSync(b: Uint8Array): number; isTerminal(): boolean };
  /** Seconds between plain log lines when not on a terminal (default 5). */
  logEvery?: number;
  /** Clock in ms (tests). */
  now?: () => number;
}

function fmtDuration(s: number): string {
  if (!isFinite(s)) return "?";
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** A rate: two significant digits below 10 (0.35 steps/s), else like a count. */
function fmtRate(r: number): string {
  return r < 10 ? String(Number(r.toPrecision(2))) : fmtCount(Math.round(r));
}

function fmtCount(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e4 ? `${(n / 1e3).toFixed(1)}k` : `${n}`;
}

/** A progress reporter for `total` units of work (unknown total: pass 0). */
export class Progress {
  private done = 0;
  private readonly start: number;
  private lastDraw = -Infinity;
  private readonly out: NonNullable<ProgressOptions["out"]>;
  private readonly tty: boolean;
  private readonly now: () => number;
  private readonly enc = new TextEncoder();

  constructor(readonly label: string, readonly total: number, readonly opts: ProgressOptions) {
    this.out = opts.out ?? Deno.stderr;
    this.tty = this.out.isTerminal();
    this.now = opts.now ?? (() => performance.now());
    this.start = this.now();
  }

  /** The line as it would be drawn now: `label [####----] 40% 1.2k/3.0k examples 950/s ETA 2s`. */
  line(): string {
    const secs = Math.max(1e-9, (this.now() - this.start) / 1000);
    const rate = this.done / secs;
    const head = `${this.label} `;
    const tail = `${fmtCount(this.done)}${this.total ? `/${fmtCount(this.total)}` : ""} ` +
      `${this.opts.unit} ${fmtRate(rate)}/s`;
    if (!this.total) return `${head}${tail} ${fmtDuration(secs)}`;
    const frac = Math.min(1, this.done / this.total);
    const width = 24, fill = Math.round(frac * width);
    const eta = rate > 0 ? (this.total - this.done) / rate : Infinity;
    return `${head}[${"#".repeat(fill)}${"-".repeat(width - fill)}] ${(frac * 100).toFixed(0)}% ` +
      `${tail} ETA ${fmtDuration(eta)}`;
  }

  /** Add `n` finished units and redraw if due. */
  tick(n = 1): void {
    this.done += n;
    const t = this.now();
    const every = this.tty ? 100 : (this.opts.logEvery ?? 5) * 1000;
    if (t - this.lastDraw >= every) {
      this.lastDraw = t;
      this.write(this.tty ? `\r${this.line()}\x1b[K` : `${this.line()}\n`);
    }
  }

  /** Final line. */
  finish(): void {
    this.write(this.tty ? `\r${this.line()}\x1b[K\n` : `${this.line()}\n`);
  }

  private write(s: string): void {
    this.out.writeSync(this.enc.encode(s));
  }
}
