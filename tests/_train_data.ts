/**
 * Shared by the training tests: tiny labelled data, a model config, a bitwise check, running
 * `_train_child.ts` (killed and resumed) on either engine, and the divergence check.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { padRows, type TokenRows } from "../pipeline/store/tokens.ts";
import {
  type BatchSource,
  type CurvePoint,
  type Phase,
  train,
  TrainingDivergedError,
  type TrainOptions,
} from "../pipeline/train/loop.ts";
import { Bert } from "../pipeline/model/bert.ts";
import type { EngineName } from "../pipeline/train/engine.ts";
import { readSafetensors } from "../pipeline/model/safetensors.ts";
import { seededRandom } from "../pipeline/random.ts";

/** A 2-layer BERT small enough to train in milliseconds; dropout on (as in real training). */
export const TRAIN_CONFIG = {
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 24,
  max_position_embeddings: 16,
  id2label: { "0": "a", "1": "b" },
};

/** A short classification phase on {@link TRAIN_CONFIG}: 6 steps of 8, warmup, decay, clipping. */
export const TRAIN_PHASE: Phase = {
  name: "p",
  objective: "classification",
  steps: 6,
  batchSize: 8,
  lr: 1e-3,
  warmup: 0.2,
  weightDecay: 0.01,
  maxGradNorm: 1,
};

/** `n` token rows of length 3..12 whose label is whether token 7 occurs (learnable). */
export function tinyRows(n: number, seed = 1): TokenRows {
  const r = seededRandom(seed); // _util.ts's mulberry32 too, but that module loads tfjs
  const ids: Int32Array[] = [], types: Int32Array[] = [];
  const lengths = new Int32Array(n), labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const len = 3 + Math.floor(r() * 10);
    const row = Int32Array.from({ length: len }, () => 1 + Math.floor(r() * 39));
    row[0] = 2;
    if (i % 2 === 0) row[1 + Math.floor(r() * (len - 1))] = 7;
    else for (let k = 1; k < len; k++) if (row[k] === 7) row[k] = 8;
    ids.push(row);
    types.push(new Int32Array(len));
    lengths[i] = len;
    labels[i] = i % 2 === 0 ? 1 : 0;
  }
  return { ids, types, lengths, labels };
}

/** A batch source over {@link tinyRows} in groups of 16 rows. */
export function tinySource(n: number, seed = 1): BatchSource {
  const rows = tinyRows(n, seed);
  const groups = [];
  for (let s = 0; s < n; s += 16) groups.push({ start: s, end: Math.min(n, s + 16) });
  return { groups, load: (_g, r) => Promise.resolve(padRows(rows, r)) };
}

/** Assert that `actual` holds exactly the bytes of `expected`, naming the first element that differs. */
export function assertSameBytes(actual: Float32Array, expected: Float32Array, what: string): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: ${actual.length} elements, expected ${expected.length}`);
  }
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const b = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  const i = a.findIndex((x, j) => x !== b[j]);
  if (i >= 0) throw new Error(`${what}[${i}]: ${actual[i]}, expected ${expected[i]} (bit for bit)`);
}

/**
 * The run of the resume tests (`_train_child.ts`, and the in-process cross-engine resume): a
 * model of {@link TRAIN_CONFIG} (seed 3) trained for phase `a` (steps 1–5: batches of 8 in
 * micro-batches of 4, warmup, decay, clipping) then phase `b` (steps 6–9: batches of 6, no
 * warmup, decay or clipping), checkpoints every 2 steps (and at each phase end) in `dir`.
 */
export function resumeRun(
  dir: string,
  opts: { engine: EngineName; replicas?: number },
): TrainOptions {
  return {
    model: Bert.create(TRAIN_CONFIG, {}, 3),
    phases: [
      {
        name: "a",
        objective: "classification",
        steps: 5,
        batchSize: 8,
        microBatchSize: 4,
        lr: 1e-3,
        warmup: 0.2,
        weightDecay: 0.01,
        maxGradNorm: 1,
      },
      {
        name: "b",
        objective: "classification",
        steps: 4,
        batchSize: 6,
        lr: 5e-4,
        warmup: 0,
        weightDecay: 0,
        maxGradNorm: 0,
      },
    ],
    source: tinySource(40),
    stateDir: dir,
    checkpointEvery: 2,
    seed: 7,
    replicas: opts.replicas ?? 1,
    engine: opts.engine,
    backend: "wasm",
  };
}

/**
 * Assert that a resumed run ended as the uninterrupted one: the same loss curve (the first step
 * that differs is named) and every weight bit for bit (every tensor that differs is named).
 */
export function assertSameRun(
  got: { weights: Map<string, { data: Float32Array }>; curve: CurvePoint[] },
  want: { weights: Map<string, { data: Float32Array }>; curve: CurvePoint[] },
  what: string,
): void {
  const step = want.curve.findIndex((p, i) => JSON.stringify(p) !== JSON.stringify(got.curve[i]));
  const differ: string[] = [];
  for (const [name, t] of want.weights) {
    const mine = got.weights.get(name);
    if (!mine) differ.push(`${name} (missing)`);
    else {
      try {
        assertSameBytes(mine.data, t.data, name);
      } catch (e) {
        differ.push((e as Error).message);
      }
    }
  }
  assert.deepEqual([...got.weights.keys()], [...want.weights.keys()], `${what}: tensors`);
  assert.ok(
    step < 0 && got.curve.length === want.curve.length && differ.length === 0,
    `${what}: ` +
      (step >= 0
        ? `the curve differs from step ${step + 1}: ${JSON.stringify(got.curve[step])}, ` +
          `expected ${JSON.stringify(want.curve[step])}; `
        : "") +
      `${differ.length} tensor(s) differ: ${differ.join("; ")}`,
  );
}

/** What one run of `_train_child.ts` printed and how it ended. */
export interface ChildRun {
  out: string;
  code: number;
  signal: Deno.Signal | null;
  err: string;
}

/**
 * Run `_train_child.ts` on `dir`. With `killAfter = k` the child stalls after step `k` and is
 * killed there with SIGKILL (after its checkpoint, if one was due at `k`).
 */
export async function runChild(
  dir: string,
  opts: { replicas?: number; engine: EngineName; killAfter?: number },
): Promise<ChildRun> {
  const { replicas = 1, engine, killAfter } = opts;
  const cmd = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./_train_child.ts", import.meta.url).pathname,
      dir,
      `${replicas}`,
      engine,
      killAfter === undefined ? "" : `${killAfter}`,
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const proc = cmd.spawn();
  let out = "";
  const dec = new TextDecoder();
  for await (const chunk of proc.stdout) {
    out += dec.decode(chunk);
    if (killAfter !== undefined && out.includes(`step ${killAfter}\n`)) {
      proc.kill("SIGKILL");
      break;
    }
  }
  const status = await proc.status;
  const err = dec.decode(await new Response(proc.stderr).arrayBuffer());
  return { out, code: status.code, signal: status.signal, err };
}

/** The `<phase>: <engine> engine` lines a child printed, as `[phase, engine]` pairs. */
export function childEngines(out: string): [string, string][] {
  return [...out.matchAll(/^(\w+): (\w+) engine$/gm)].map((m) => [m[1], m[2]]);
}

/** What a finished child run left in `dir`: every weight, its loss curve, steps it restored. */
export async function childResult(dir: string, run: ChildRun) {
  assert.equal(run.code, 0, run.err);
  const weights = (await readSafetensors(join(dir, "final.safetensors"))).tensors;
  const curve: CurvePoint[] = JSON.parse(await Deno.readTextFile(join(dir, "curve.json")));
  const resumed = /resumed (\d+)/.exec(run.out);
  assert.ok(resumed, run.out);
  return { weights, curve, resumedAt: Number(resumed[1]), engines: childEngines(run.out) };
}

/**
 * The checkpoint a child killed after step `k` resumes from: every 2 global steps and at the end
 * of phase `a` (step 5).
 */
export function lastCheckpoint(k: number): number {
  return Math.max(k - (k % 2), k >= 5 ? 5 : 0);
}

/**
 * Kill a child on `engine` with SIGKILL after each step in `kills` (3: mid phase `a`; 5: at its
 * end; 7: mid phase `b`), resume it (on `resumeEngine`, default the same) and check what it ends
 * with: the engines that ran, the step it resumed at, and then `check` (the weights and curve).
 */
export async function killAndResume(
  dir: string,
  opts: { replicas: number; engine: EngineName; resumeEngine?: EngineName; kills: number[] },
  check: (k: number, got: Awaited<ReturnType<typeof childResult>>) => void,
): Promise<void> {
  const { replicas, engine, kills } = opts;
  const resumeEngine = opts.resumeEngine ?? engine;
  for (const k of kills) {
    const d = join(dir, `k${k}-${engine}-${resumeEngine}`);
    const killed = await runChild(d, { replicas, engine, killAfter: k });
    assert.equal(killed.signal, "SIGKILL", `${killed.out}\n${killed.err}`);
    assert.deepEqual(childEngines(killed.out)[0], ["a", engine]);
    const got = await childResult(d, await runChild(d, { replicas, engine: resumeEngine }));
    assert.equal(got.resumedAt, lastCheckpoint(k), `killed after step ${k}`);
    // the resumed run opens the phase it stopped in and any after it, on its own engine
    const phases = lastCheckpoint(k) <= 5 ? ["a", "b"] : ["b"];
    assert.deepEqual(got.engines, phases.map((p) => [p, resumeEngine]));
    check(k, got);
  }
}

/**
 * Regression on {@link tinySource}'s 0/1 labels; the last row of the 5th batch loaded gets the
 * target `poison`, so step 5's loss is `poison`-valued. With 2 replicas that row is in the
 * worker's shard (shard 0, the first rows, stays with the lead).
 */
export function poisonedSource(poison: number): BatchSource {
  const base = tinySource(48);
  let loads = 0;
  return {
    groups: base.groups,
    load: async (g, rows) => {
      const b = await base.load(g, rows);
      const targets = Float32Array.from(b.labels.data);
      if (++loads === 5) targets[rows.length - 1] = poison;
      return { ...b, labels: { data: targets, shape: b.labels.shape } };
    },
  };
}

/**
 * Train regression on {@link poisonedSource}`(poison)` (checkpoints every 2 steps) on `engine`
 * and check that it stops with {@link TrainingDivergedError} at phase "p" step 5 naming the
 * checkpoint, that the failed update was not applied to the model, and that the checkpoint holds
 * the state and weights after step 4, byte for byte.
 */
export async function checkDivergence(
  poison: number,
  opts: { replicas: number; engine: "tfjs" | "onnx" },
): Promise<void> {
  const model = Bert.create({ ...TRAIN_CONFIG, id2label: { "0": "score" } }, {}, 5);
  let afterStep4 = new Map<string, Float32Array>();
  const keepWeights = () => {
    afterStep4 = new Map([...model.params].map(([n, v]) => [n, Float32Array.from(v.data)]));
  };
  const logs: string[] = [];
  const dir = await Deno.makeTempDir({ prefix: "tinystill_test_" });
  try {
    await assert.rejects(
      train({
        model,
        phases: [{
          name: "p",
          objective: "regression",
          steps: 8,
          batchSize: 8,
          lr: 1e-3,
          warmup: 0.2,
          weightDecay: 0.01,
          maxGradNorm: 1,
        }],
        source: poisonedSource(poison),
        stateDir: dir,
        checkpointEvery: 2,
        seed: 1,
        replicas: opts.replicas,
        engine: opts.engine,
        backend: "wasm",
        log: (m) => void logs.push(m),
        afterStep: (s) => s === 4 ? keepWeights() : undefined,
      }),
      (e: unknown) => {
        assert.ok(e instanceof TrainingDivergedError, String(e));
        assert.equal(e.phase, "p");
        assert.equal(e.step, 5);
        assert.ok(Object.is(e.loss, poison), `loss ${e.loss}`);
        assert.match(
          e.message,
          new RegExp(
            `loss is ${poison} at phase "p" step 5; the last good checkpoint is kept in .*ckpt`,
          ),
        );
        return true;
      },
    );
    assert.ok(logs.includes(`p: ${opts.engine} engine`), logs.join("\n"));
    const state = JSON.parse(await Deno.readTextFile(join(dir, "ckpt", "state.json")));
    assert.equal(state.step, 4);
    assert.equal(state.curve.length, 4);
    // the failed update was not applied, and the checkpoint holds the weights after step 4
    const saved = await readSafetensors(join(dir, "ckpt", "weights.safetensors"));
    assert.equal(afterStep4.size, model.params.size);
    for (const [name, w] of afterStep4) {
      assertSameBytes(model.params.get(name)!.data, w, `model ${name}`);
      assertSameBytes(saved.tensors.get(name)!.data, w, `checkpoint ${name}`);
    }
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
}
