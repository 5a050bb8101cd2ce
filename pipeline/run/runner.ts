/**
 * The runner: executes a pipeline's stages in order, each into its own content-addressed
 * directory `<output_dir>/<pipeline>/<stage>-<hash>/`, where the hash covers the stage's code
 * version, its params, the hashes of the stages it reads and a fingerprint of its external inputs
 * (data files, checkpoints). So a re-run skips finished stages and a changed param reruns exactly
 * the stages downstream of it.
 *
 * A stage writes into `.<stage>-<hash>.partial/`, which is renamed into place only after it
 * returns and its `manifest.json` is written: a crash leaves earlier outputs intact, and a stage
 * that writes its work in durable pieces (teacher-forward's row groups) resumes from them.
 * Stages never read each other's files directly: the runner hands each the directories of the
 * stages it declared it needs.
 * @module
 */

import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import type { z } from "zod";
import { InputError } from "../errors.ts";
import type { ShardSpec } from "../store/parquet.ts";
import { exists, swapDir, writeFileAtomic, writeJsonAtomic } from "../store/fsutil.ts";
import { canonicalJson, sha256Hex } from "../store/hash.ts";
import { Progress } from "./progress.ts";
import { type Pipeline, resolvedYaml, stageKind } from "./spec.ts";

/** What a stage gets when it runs. */
export interface StageContext<P> {
  pipeline: Pipeline;
  /** The stage key in the pipeline file (`tokenize`, `distill@task`, …). */
  key: string;
  params: P;
  /** The directory to write into (renamed into place when `run` returns). */
  out: string;
  /** Output directories of the stages this one needs, by stage key. */
  inputs: Record<string, string>;
  /** A path from the pipeline file, made absolute (relative to the file's directory). */
  resolve(path: string): string;
  /** A progress reporter labelled with this stage. */
  progress(total: number, unit: string): Progress;
  log(message: string): void;
  /** Set when this process runs one share of a shardable stage. */
  shard?: ShardSpec;
}

/** What a stage reports back; it goes into `manifest.json`. */
export interface StageResult {
  counts?: Record<string, number>;
  metrics?: Record<string, number | string>;
  /** Where ONNX Runtime ran: `device` and the WebGPU adapter (see `deviceMetrics`). */
  device?: Record<string, string>;
}

/** A stage: a typed params schema and a `run` that writes only into `ctx.out`. */
export interface Stage<P> {
  /** The stage kind, as written in pipeline files. */
  name: string;
  /** Bump when the stage's output for the same inputs changes (invalidates old outputs). */
  version: number;
  params: z.ZodType<P>;
  /** Keys of earlier stages whose outputs this stage reads, from its params. */
  needs?(params: P): string[];
  /**
   * The pipeline's model sections (`teacher`, `student`: config, checkpoint, tokenizer, init)
   * whose content the stage reads; they join its hash. Default: both.
   */
  models?(params: P): ("teacher" | "student")[];
  /** The stage can split its work among processes (`--shard i/n`). */
  shardable?: boolean;
  /** A digest of external inputs (files, checkpoints) that the hash must cover. */
  fingerprint?(
    params: P,
    ctx: {
      pipeline: Pipeline;
      resolve(path: string): string;
      /** The stage key (`distill@task`), for messages. */
      key?: string;
    },
  ): Promise<string>;
  run(ctx: StageContext<P>): Promise<StageResult>;
}

export { canonicalJson, fileDigest, sha256Hex } from "../store/hash.ts";

/**
 * A stage kind, typed by its params schema. Defining registers nothing: a stage runs when it is
 * in the list given to `parsePipeline`/`loadPipeline` (`BUILTIN_STAGES`, or your own).
 */
export function defineStage<P>(stage: Stage<P>): Stage<P> {
  return stage;
}

/** Options of {@link runPipeline} (the CLI's `--force`, `--from`, `--only`). */
export interface RunOptions {
  /** Rerun every stage. */
  force?: boolean;
  /** Rerun this stage and every stage after it. */
  from?: string;
  /** Run only this stage (the stages it needs must have run). */
  only?: string;
  /** No progress or log output. */
  quiet?: boolean;
  /**
   * Run only this share of the shardable stage (`--shard i/n`): it writes its parts and stops
   * without finalising; a later run without `--shard` checks every part is there and finishes.
   */
  shard?: ShardSpec;
}

/** Parse `"i/n"` (as given to `--shard`) into a ShardSpec. */
export function parseShard(spec: string): ShardSpec {
  const m = /^(\d+)\/(\d+)$/.exec(spec.trim());
  const shard = m ? { index: Number(m[1]), count: Number(m[2]) } : undefined;
  if (!shard || shard.count < 1 || shard.index >= shard.count) {
    throw new InputError("bad shard", {
      field: "--shard",
      expected: "i/n with 0 <= i < n, e.g. 0/4",
      got: JSON.stringify(spec),
    });
  }
  return shard;
}

/** What happened to one stage. */
export interface StageReport {
  key: string;
  hash: string;
  dir: string;
  status: "ran" | "skipped";
  seconds: number;
  result?: StageResult;
}

interface Planned {
  index: number;
  key: string;
  // deno-lint-ignore no-explicit-any
  stage: Stage<any>;
  params: Record<string, unknown>;
  needs: string[];
  hash: string;
  dir: string;
}

/** Resolve stage order, check inputs, and compute every stage's hash and directory. */
export async function planPipeline(p: Pipeline): Promise<Planned[]> {
  const keys = p.stages.map((entry) => Object.keys(entry)[0]);
  const resolvePath = (path: string) => isAbsolute(path) ? path : resolve(dirname(p.file), path);
  const root = resolve(p.output_dir, p.name);
  const plan: Planned[] = [];
  const hashes = new Map<string, string>();
  // A model section as the hash sees it: its paths by where they lead (relative to the output
  // root), not by how the file spells them, so two pipeline files in different folders that
  // name the same checkpoint share their stages.
  const sectionKey = (s: Pipeline["teacher"]) => {
    if (!s) return null;
    const at = (path: string | undefined) => path && relative(root, resolvePath(path));
    return { ...s, checkpoint: at(s.checkpoint), tokenizer: at(s.tokenizer) };
  };
  for (let i = 0; i < p.stages.length; i++) {
    const key = keys[i];
    const params = p.stages[i][key];
    // deno-lint-ignore no-explicit-any
    const stage = p.kinds.get(stageKind(key)) as Stage<any> | undefined;
    if (!stage?.run) {
      throw new InputError(`no stage implementation for "${stageKind(key)}"`, {
        file: p.file,
        field: `stages[${i}]`,
      });
    }
    if (keys.indexOf(key) !== i) {
      throw new InputError(`stage "${key}" appears twice; name repeats as kind@label`, {
        file: p.file,
        field: `stages[${i}]`,
      });
    }
    const needs = stage.needs?.(params) ?? [];
    for (const need of needs) {
      const at = keys.indexOf(need);
      if (at < 0) {
        throw new InputError(`stage "${key}" needs "${need}", which the pipeline does not run`, {
          file: p.file,
          field: `stages[${i}].${key}`,
          expected: `one of the earlier stages: ${keys.slice(0, i).join(", ") || "(none)"}`,
          got: JSON.stringify(need),
        });
      }
      if (at >= i) {
        throw new InputError(
          `stage "${key}" needs "${need}", which runs ${at === i ? "as itself" : "after it"} ` +
            `(a cycle or wrong order)`,
          { file: p.file, field: `stages[${i}].${key}`, hint: `Move "${need}" before "${key}".` },
        );
      }
    }
    const fingerprint = stage.fingerprint
      ? await stage.fingerprint(params, { pipeline: p, resolve: resolvePath, key })
      : "";
    // `device` (where ONNX Runtime runs) does not name another output: not hashed, so a cpu run's
    // outputs serve a webgpu rerun and the reverse
    const { device: _device, ...hashed } = params as Record<string, unknown>;
    const hash = (await sha256Hex(canonicalJson({
      kind: stage.name,
      version: stage.version,
      params: hashed,
      seed: p.seed,
      inputs: Object.fromEntries(needs.map((n) => [n, hashes.get(n)])),
      models: Object.fromEntries(
        (stage.models?.(params) ?? ["teacher", "student"]).map((r) => [r, sectionKey(p[r])]),
      ),
      fingerprint,
    }))).slice(0, 16);
    hashes.set(key, hash);
    plan.push({ index: i, key, stage, params, needs, hash, dir: join(root, `${key}-${hash}`) });
  }
  return plan;
}

/** Run (or skip) every stage of `p`; returns what happened to each. */
export async function runPipeline(p: Pipeline, opts: RunOptions = {}): Promise<StageReport[]> {
  const plan = await planPipeline(p);
  const keys = plan.map((s) => s.key);
  for (const flag of ["from", "only"] as const) {
    const k = opts[flag];
    if (k !== undefined && !keys.includes(k)) {
      throw new InputError(`--${flag}: no stage "${k}"`, {
        file: p.file,
        expected: keys.join(", "),
        got: k,
      });
    }
  }
  const root = resolve(p.output_dir, p.name);
  await Deno.mkdir(root, { recursive: true });
  const unlock = await lockOutputs(root, p.file);
  try {
    return await runLocked(p, opts, plan, keys, root);
  } finally {
    await unlock();
  }
}

/** True when a process with this id exists (Linux /proc; elsewhere assumed alive). */
async function alive(pid: number): Promise<boolean> {
  if (pid === Deno.pid) return true;
  try {
    await Deno.stat(`/proc/${pid}`);
    return true;
  } catch (e) {
    return !(e instanceof Deno.errors.NotFound) || !(await exists("/proc/self"));
  }
}

/**
 * Take `<root>/.lock` so two runs never write the same stage directories at once (they would
 * corrupt each other's partial outputs). A lock left by a process that no longer exists is taken
 * over.
 */
async function lockOutputs(root: string, file: string): Promise<() => Promise<void>> {
  const lock = join(root, ".lock");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const f = await Deno.open(lock, { write: true, createNew: true });
      await f.write(new TextEncoder().encode(`${Deno.pid}\n`));
      f.close();
      return () => Deno.remove(lock).catch(() => {});
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      const pid = Number((await Deno.readTextFile(lock).catch(() => "")).trim());
      if (Number.isInteger(pid) && pid > 0 && await alive(pid)) {
        throw new InputError(`another run (process ${pid}) is writing ${root}`, {
          file,
          hint: `Wait for it to finish or stop it; remove ${lock} if that process is gone.`,
        });
      }
      await Deno.remove(lock).catch(() => {}); // stale: its process is gone
    }
  }
  throw new Error(`cannot take ${lock}`);
}

async function runLocked(
  p: Pipeline,
  opts: RunOptions,
  plan: Planned[],
  keys: string[],
  root: string,
): Promise<StageReport[]> {
  await writeFileAtomic(join(root, "pipeline.resolved.yaml"), resolvedYaml(p));
  const log = (m: string) => {
    if (!opts.quiet) console.error(m);
  };
  const resolvePath = (path: string) => isAbsolute(path) ? path : resolve(dirname(p.file), path);
  const fromIndex = opts.from ? keys.indexOf(opts.from) : Infinity;
  const reports: StageReport[] = [];
  const byKey = new Map(plan.map((s) => [s.key, s]));
  const env: RunEnv = { p, byKey, resolvePath, log, quiet: opts.quiet ?? false };
  for (const s of plan) {
    const done = await exists(join(s.dir, "manifest.json"));
    if (opts.only && s.key !== opts.only) {
      // not selected; but what the selected stage reads must already exist
      if (!done && byKey.get(opts.only)!.needs.includes(s.key)) {
        throw new InputError(`--only ${opts.only}: its input "${s.key}" has not run yet`, {
          file: p.file,
          hint: `Run without --only first (or with --only ${s.key}).`,
        });
      }
      reports.push({ key: s.key, hash: s.hash, dir: s.dir, status: "skipped", seconds: 0 });
      continue;
    }
    const mustRun = !done || opts.force || s.index >= fromIndex || opts.only === s.key;
    if (opts.shard && mustRun) {
      if (!s.stage.shardable) {
        throw new InputError(`--shard: stage "${s.key}" has not run and cannot be sharded`, {
          file: p.file,
          hint: `Run the pipeline up to "${s.key}" without --shard first.`,
        });
      }
      await runShard(env, s, opts.shard);
      reports.push({ key: s.key, hash: s.hash, dir: s.dir, status: "ran", seconds: 0 });
      break; // later stages need the finished output
    }
    if (!mustRun) {
      log(`${s.key}: up to date (${s.dir})`);
      reports.push({ key: s.key, hash: s.hash, dir: s.dir, status: "skipped", seconds: 0 });
      continue;
    }
    reports.push(await runStage(env, s));
  }
  return reports;
}

/** What every stage run of one `runPipeline` call shares. */
interface RunEnv {
  p: Pipeline;
  byKey: Map<string, Planned>;
  resolvePath: (path: string) => string;
  log: (m: string) => void;
  quiet: boolean;
}

/** The directory a stage builds its output in (kept across crashes so stages may resume). */
async function partialDir(s: Planned): Promise<string> {
  const dir = join(dirname(s.dir), `.${s.key}-${s.hash}.partial`);
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

/** Build a stage's context (shared by whole and sharded runs). */
async function contextFor(
  env: RunEnv,
  s: Planned,
  out: string,
  shard?: ShardSpec,
  // deno-lint-ignore no-explicit-any
): Promise<StageContext<any>> {
  const { p, byKey, resolvePath, log, quiet } = env;
  const inputs: Record<string, string> = {};
  for (const need of s.needs) {
    const dir = byKey.get(need)!.dir;
    if (!(await exists(join(dir, "manifest.json")))) {
      throw new InputError(`stage "${s.key}": input "${need}" is missing (${dir})`, {
        file: p.file,
      });
    }
    inputs[need] = dir;
  }
  const sink = { writeSync: (b: Uint8Array) => b.length, isTerminal: () => false };
  return {
    pipeline: p,
    key: s.key,
    params: s.params,
    out,
    inputs,
    resolve: resolvePath,
    progress: (total, unit) => new Progress(s.key, total, quiet ? { unit, out: sink } : { unit }),
    log: (m) => log(`${s.key}: ${m}`),
    shard,
  };
}

async function runShard(env: RunEnv, s: Planned, shard: ShardSpec) {
  const partial = await partialDir(s);
  const ctx = await contextFor(env, s, partial, shard);
  env.log(`${s.key}: shard ${shard.index}/${shard.count} → ${partial}`);
  await s.stage.run(ctx);
  env.log(`${s.key}: shard done; run again without --shard once every shard has finished`);
}

async function runStage(env: RunEnv, s: Planned): Promise<StageReport> {
  const { log, byKey } = env;
  const partial = await partialDir(s);
  const ctx = await contextFor(env, s, partial);
  const started = new Date();
  const t0 = performance.now();
  log(`${s.key}: running → ${s.dir}`);
  const result: StageResult = await s.stage.run(ctx) ?? {};
  const seconds = (performance.now() - t0) / 1000;
  await writeJsonAtomic(join(partial, "manifest.json"), {
    stage: s.stage.name,
    key: s.key,
    version: s.stage.version,
    hash: s.hash,
    params: s.params,
    inputs: Object.fromEntries(s.needs.map((n) => [n, byKey.get(n)!.hash])),
    started: started.toISOString(),
    seconds,
    ...result,
  });
  // Swap into place; an older copy (a forced rerun) is removed only after the rename.
  await swapDir(partial, s.dir, `${s.dir}.old-${Date.now()}`);
  log(`${s.key}: done in ${seconds.toFixed(1)}s`);
  return { key: s.key, hash: s.hash, dir: s.dir, status: "ran", seconds, result };
}
