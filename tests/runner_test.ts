/**
 * The runner with two toy stages: content-addressed skip and rerun, --force/--from/--only,
 * crash safety (earlier outputs intact, partial work kept for resume), input checks, manifests.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { z } from "zod";
import { Progress } from "../pipeline/run/progress.ts";
import {
  canonicalJson,
  defineStage,
  fileDigest,
  planPipeline,
  runPipeline,
  sha256Hex,
} from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { assertInputError, withTempDir } from "./_util.ts";

const runs: string[] = [];
/** Crash injection outside the params, so the crashed and the resumed run share one hash. */
let crashAt: number | null = null;

const emit = defineStage({
  name: "emit",
  version: 1,
  params: z.strictObject({ n: z.number().int().positive() }),
  async run(ctx) {
    runs.push(ctx.key);
    const lines: string[] = [];
    // resumable: pieces already in the partial dir are kept
    for (let i = 0; i < ctx.params.n; i++) {
      const piece = join(ctx.out, `piece-${i}.txt`);
      if (crashAt === i) {
        throw new Error(`emit: simulated crash at ${i}`);
      }
      try {
        await Deno.stat(piece);
      } catch {
        await Deno.writeTextFile(piece, String(i * i));
      }
      lines.push(await Deno.readTextFile(piece));
    }
    await Deno.writeTextFile(join(ctx.out, "numbers.txt"), lines.join("\n"));
    return { counts: { numbers: ctx.params.n } };
  },
});

const sum = defineStage({
  name: "sum",
  version: 1,
  params: z.strictObject({ input: z.string(), scale: z.number().default(1) }),
  needs: (p) => [p.input],
  async run(ctx) {
    runs.push(ctx.key);
    const text = await Deno.readTextFile(join(ctx.inputs[ctx.params.input], "numbers.txt"));
    const total = text.split("\n").map(Number).reduce((a, b) => a + b, 0) * ctx.params.scale;
    await Deno.writeTextFile(join(ctx.out, "sum.txt"), String(total));
    return { metrics: { sum: total } };
  },
});

/** The stage kinds these toy pipelines may use (passed explicitly; nothing is registered). */
const TOY = [emit, sum];

function pipeline(dir: string, emit: string, sum = "{ input: emit }") {
  return parsePipeline(
    `name: toy\noutput_dir: ${join(dir, "runs")}\nstages:\n  - emit: ${emit}\n  - sum: ${sum}\n`,
    join(dir, "toy.yaml"),
    TOY,
  );
}

async function readSum(reports: { key: string; dir: string }[]) {
  return Number(
    await Deno.readTextFile(join(reports.find((r) => r.key === "sum")!.dir, "sum.txt")),
  );
}

Deno.test("finished stages are skipped; a changed param reruns exactly what is downstream", async () => {
  await withTempDir(async (dir) => {
    runs.length = 0;
    const r1 = await runPipeline(pipeline(dir, "{ n: 4 }"), { quiet: true });
    assert.deepEqual(runs, ["emit", "sum"]);
    assert.equal(await readSum(r1), 0 + 1 + 4 + 9);
    assert.match(r1[0].dir, /runs\/toy\/emit-[0-9a-f]{16}$/);

    runs.length = 0;
    const r2 = await runPipeline(pipeline(dir, "{ n: 4 }"), { quiet: true });
    assert.deepEqual(runs, []);
    assert.deepEqual(r2.map((r) => r.status), ["skipped", "skipped"]);

    runs.length = 0; // downstream param only: emit stays
    const r3 = await runPipeline(pipeline(dir, "{ n: 4 }", "{ input: emit, scale: 2 }"), {
      quiet: true,
    });
    assert.deepEqual(runs, ["sum"]);
    assert.equal(await readSum(r3), 28);

    runs.length = 0; // upstream param: both, and the sum's hash changes with its input's
    const r4 = await runPipeline(pipeline(dir, "{ n: 5 }"), { quiet: true });
    assert.deepEqual(runs, ["emit", "sum"]);
    assert.notEqual(r4[1].hash, r1[1].hash);
    assert.equal(await readSum(r4), 30);

    const manifest = JSON.parse(await Deno.readTextFile(join(r4[1].dir, "manifest.json")));
    assert.equal(manifest.stage, "sum");
    assert.deepEqual(manifest.params, { input: "emit", scale: 1 });
    assert.deepEqual(manifest.inputs, { emit: r4[0].hash });
    assert.equal(manifest.metrics.sum, 30);
    assert.ok(manifest.seconds >= 0 && manifest.started);
    const resolved = await Deno.readTextFile(join(dir, "runs/toy/pipeline.resolved.yaml"));
    assert.match(resolved, /scale: 1/); // defaults written out
  });
});

Deno.test("--force, --from and --only", async () => {
  await withTempDir(async (dir) => {
    const p = pipeline(dir, "{ n: 3 }");
    await assertInputError(() => runPipeline(p, { only: "sum", quiet: true }), [
      '--only sum: its input "emit" has not run yet',
    ]);
    await runPipeline(p, { quiet: true });
    runs.length = 0;
    await runPipeline(p, { force: true, quiet: true });
    assert.deepEqual(runs, ["emit", "sum"]);
    runs.length = 0;
    await runPipeline(p, { from: "sum", quiet: true });
    assert.deepEqual(runs, ["sum"]);
    runs.length = 0;
    await runPipeline(p, { only: "emit", quiet: true });
    assert.deepEqual(runs, ["emit"]);
    await assertInputError(() => runPipeline(p, { from: "nope", quiet: true }), [
      '--from: no stage "nope"',
      "expected emit, sum",
    ]);
  });
});

Deno.test("a crash leaves earlier outputs intact and the partial work for the rerun", async () => {
  await withTempDir(async (dir) => {
    const good = await runPipeline(pipeline(dir, "{ n: 3 }"), { quiet: true });
    const before = await Deno.readTextFile(join(good[1].dir, "sum.txt"));
    crashAt = 4;
    try {
      await assert.rejects(
        () => runPipeline(pipeline(dir, "{ n: 6 }"), { quiet: true }),
        /simulated crash at 4/,
      );
    } finally {
      crashAt = null;
    }
    // the finished run is untouched
    assert.equal(await Deno.readTextFile(join(good[1].dir, "sum.txt")), before);
    // the partial directory kept pieces 0..3; no final directory for the crashed stage
    const root = join(dir, "runs/toy");
    const entries = [...Deno.readDirSync(root)].map((e) => e.name);
    const partial = entries.find((n) => n.startsWith(".emit-") && n.endsWith(".partial"))!;
    assert.ok(partial, entries.join(" "));
    assert.equal(entries.filter((n) => n.startsWith("emit-")).length, 1); // only the n=3 run
    const pieces = [...Deno.readDirSync(join(root, partial))].map((e) => e.name).sort();
    assert.deepEqual(pieces, ["piece-0.txt", "piece-1.txt", "piece-2.txt", "piece-3.txt"]);
    // the rerun resumes from those pieces (a marker proves piece 1 is reused, not recomputed)
    await Deno.writeTextFile(join(root, partial, "piece-1.txt"), "100");
    runs.length = 0;
    const r = await runPipeline(pipeline(dir, "{ n: 6 }"), { quiet: true });
    assert.deepEqual(runs, ["emit", "sum"]);
    assert.equal(await readSum(r), 0 + 100 + 4 + 9 + 16 + 25);
    assert.ok(![...Deno.readDirSync(root)].some((e) => e.name.endsWith(".partial")));
  });
});

Deno.test("missing inputs, wrong order and unknown stages are clear errors", async () => {
  await withTempDir(async (dir) => {
    await assertInputError(() => runPipeline(pipeline(dir, "{ n: 2 }", "{ input: tokenize }")), [
      'stage "sum" needs "tokenize", which the pipeline does not run',
      "stages[1].sum",
      "expected one of the earlier stages: emit",
    ]);
    const reversed = parsePipeline(
      `name: toy\noutput_dir: ${dir}\nstages:\n  - sum: { input: emit }\n  - emit: { n: 2 }\n`,
      "rev.yaml",
      TOY,
    );
    await assertInputError(() => runPipeline(reversed), [
      'stage "sum" needs "emit", which runs after it (a cycle or wrong order)',
      'Move "emit" before "sum"',
    ]);
    const self = parsePipeline(
      `name: toy\noutput_dir: ${dir}\nstages:\n  - sum: { input: sum }\n`,
      "self.yaml",
      TOY,
    );
    await assertInputError(() => runPipeline(self), ["runs as itself"]);
    await assertInputError(
      () => parsePipeline(`name: toy\nstages:\n  - emitt: { n: 1 }\n`, "u.yaml", TOY),
      ['unknown stage "emitt"', "emit", "sum"],
    );
  });
});

Deno.test("two runs of one stage kind as kind@label get separate outputs", async () => {
  await withTempDir(async (dir) => {
    const p = parsePipeline(
      `name: toy\noutput_dir: ${dir}\nstages:\n  - emit@a: { n: 2 }\n  - emit@b: { n: 3 }\n` +
        `  - sum: { input: emit@b }\n`,
      "two.yaml",
      TOY,
    );
    const r = await runPipeline(p, { quiet: true });
    assert.deepEqual(r.map((x) => x.key), ["emit@a", "emit@b", "sum"]);
    assert.equal(await readSum(r), 5);
  });
});

Deno.test("canonical JSON ignores key order; progress draws rate and ETA", () => {
  assert.equal(
    canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] }),
    canonicalJson({ a: [{ c: 3, d: 2 }], b: 1 }),
  );
  let t = 0;
  const written: string[] = [];
  const out = {
    writeSync: (b: Uint8Array) => (written.push(new TextDecoder().decode(b)), b.length),
    isTerminal: () => false,
  };
  const bar = new Progress("tokenize", 1000, { unit: "examples", out, now: () => t, logEvery: 1 });
  t = 2000;
  bar.tick(400);
  assert.match(written[0], /tokenize \[#{10}-{14}\] 40% 400\/1000 examples 200\/s ETA 3s/);
  t = 5000;
  bar.tick(600);
  bar.finish();
  assert.match(written.at(-1)!, /100% 1000\/1000 examples 200\/s ETA 0s/);
});

Deno.test("a second run of the same pipeline is refused while the first holds the lock", async () => {
  await withTempDir(async (dir) => {
    const root = join(dir, "runs/toy");
    await Deno.mkdir(root, { recursive: true });
    // a live holder (this process stands in for another run)
    await Deno.writeTextFile(join(root, ".lock"), `${Deno.pid}\n`);
    await assertInputError(() => runPipeline(pipeline(dir, "{ n: 2 }"), { quiet: true }), [
      `another run (process ${Deno.pid}) is writing`,
      "toy.yaml",
    ]);
    // a holder that no longer exists: the lock is taken over, and released after the run
    await Deno.writeTextFile(join(root, ".lock"), "999999999\n");
    const r = await runPipeline(pipeline(dir, "{ n: 2 }"), { quiet: true });
    assert.deepEqual(r.map((x) => x.status), ["ran", "ran"]);
    await assert.rejects(Deno.stat(join(root, ".lock")), Deno.errors.NotFound);
  });
});

const studentOnly = defineStage({
  name: "student-only",
  version: 1,
  params: z.strictObject({}),
  models: () => ["student"],
  run(ctx) {
    runs.push(ctx.key);
    return Promise.resolve({});
  },
});

Deno.test("a changed teacher/student section reruns the stages that read it, only those", async () => {
  await withTempDir(async (dir) => {
    const p = (teacherLayers: number, studentLayers: number) =>
      parsePipeline(
        `name: models\noutput_dir: ${join(dir, "runs")}\n` +
          `teacher: { config: { num_hidden_layers: ${teacherLayers} } }\n` +
          `student: { config: { num_hidden_layers: ${studentLayers} } }\n` +
          `stages:\n  - emit: { n: 1 }\n  - student-only: {}\n`,
        join(dir, "m.yaml"),
        [...TOY, studentOnly],
      );
    runs.length = 0;
    await runPipeline(p(4, 2), { quiet: true });
    assert.deepEqual(runs, ["emit", "student-only"]);
    runs.length = 0; // the teacher changed: emit (reads both by default) reruns, student-only not
    await runPipeline(p(6, 2), { quiet: true });
    assert.deepEqual(runs, ["emit"]);
    runs.length = 0; // the student changed: both
    await runPipeline(p(6, 1), { quiet: true });
    assert.deepEqual(runs, ["emit", "student-only"]);
  });
});

Deno.test("a checkpoint path counts by where it leads, not by how the pipeline file spells it", async () => {
  await withTempDir(async (dir) => {
    const p = (file: string, ckpt: string) =>
      parsePipeline(
        `name: paths\noutput_dir: ${join(dir, "runs")}\n` +
          `teacher: { checkpoint: ${ckpt} }\nstages:\n  - emit: { n: 1 }\n`,
        join(dir, file),
        TOY,
      );
    const [a] = await planPipeline(p("tasks/a.yaml", "../models/t"));
    const [b] = await planPipeline(p("tasks/experiments/b.yaml", "../../models/t"));
    const [c] = await planPipeline(p("c.yaml", join(dir, "models", "t")));
    const [other] = await planPipeline(p("tasks/a.yaml", "../models/u"));
    assert.equal(b.hash, a.hash);
    assert.equal(c.hash, a.hash);
    assert.notEqual(other.hash, a.hash);
  });
});

Deno.test("fileDigest: the SHA-256 of the bytes, of nothing when missing, renewed when the file changes", async () => {
  await withTempDir(async (dir) => {
    const f = join(dir, "w.bin");
    assert.equal(await fileDigest(f), await sha256Hex(new Uint8Array()));
    await Deno.writeFile(f, new Uint8Array([1, 2, 3]));
    const a = await fileDigest(f);
    assert.equal(a, await sha256Hex(new Uint8Array([1, 2, 3])));
    assert.equal(await fileDigest(f), a); // remembered
    await Deno.writeFile(f, new Uint8Array([1, 2, 3, 4]));
    assert.equal(await fileDigest(f), await sha256Hex(new Uint8Array([1, 2, 3, 4])));
  });
});
