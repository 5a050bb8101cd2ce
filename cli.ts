/**
 * `deno task distill [pipeline.yaml] [--force] [--from STAGE] [--only STAGE] [--shard i/n]`
 *
 * Runs a pipeline file (see `tasks/` and `pipeline/spec.ts`). Without one it runs the default
 * job, `tasks/spam.yaml`: train a teacher on SpamAssassin, distill a student from it, train the
 * same student on labels alone, and evaluate all three on the held-out test split.
 * @module
 */

import { InputError } from "./pipeline/errors.ts";
import { parseShard, type RunOptions, runPipeline } from "./pipeline/run/runner.ts";
import { loadPipeline } from "./pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "./pipeline/stages/mod.ts";

const USAGE = "usage: deno task distill [pipeline.yaml] [--force] [--from STAGE] " +
  "[--only STAGE] [--shard i/n] [--quiet]";

function parseArgs(args: string[]): { file?: string; opts: RunOptions } {
  const opts: RunOptions = {};
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new InputError(`${a} needs a value`, { hint: USAGE });
      return v;
    };
    if (a === "--force") opts.force = true;
    else if (a === "--quiet") opts.quiet = true;
    else if (a === "--from") opts.from = value();
    else if (a === "--only") opts.only = value();
    else if (a === "--shard") opts.shard = parseShard(value());
    else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      Deno.exit(0);
    } else if (a.startsWith("--")) throw new InputError(`unknown option ${a}`, { hint: USAGE });
    else if (file === undefined) file = a;
    else throw new InputError(`unexpected argument ${a}`, { hint: USAGE });
  }
  return { file, opts };
}

try {
  const { file, opts } = parseArgs(Deno.args);
  const path = file ?? new URL("./tasks/spam.yaml", import.meta.url).pathname;
  if (file === undefined) console.error(`tinystill distill: running the default job ${path}`);
  const reports = await runPipeline(await loadPipeline(path, BUILTIN_STAGES), opts);
  for (const r of reports) {
    console.log(`${r.key.padEnd(20)} ${r.status.padEnd(8)} ${r.seconds.toFixed(1)}s  ${r.dir}`);
  }
  // an up-to-date evaluation still shows its result
  for (const r of reports) {
    if (r.status !== "skipped" || !r.key.startsWith("evaluate")) continue;
    const report = `${r.dir}/report.md`;
    const text = await Deno.readTextFile(report).catch(() => null);
    if (text === null) continue;
    const table = text.split("\n").filter((l) => l.startsWith("|")).join("\n");
    console.log(`\n${r.key} (up to date):\n${table}\nreport: ${report}`);
  }
} catch (e) {
  if (e instanceof InputError) {
    console.error(`error: ${e.message}`);
    Deno.exit(1);
  }
  throw e;
}
