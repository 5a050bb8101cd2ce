/** The pipeline file: validation messages with file, line, path, expected and got; defaults. */

import assert from "node:assert/strict";
import { z } from "zod";
import { InputError } from "../pipeline/errors.ts";
import { loadPipeline, parsePipeline, resolvedYaml, type StageKind } from "../pipeline/run/spec.ts";
import { assertInputError } from "./_util.ts";

// The stage kinds a file may use are passed in; these stand in for real ones.
const KINDS: StageKind[] = [
  {
    name: "tokenize",
    params: z.strictObject({
      dataset: z.string(),
      max_seq_length: z.number().int().min(8).max(512).default(128),
    }),
  },
  {
    name: "distill",
    params: z.strictObject({
      layer_map: z.array(z.number().int().min(0).lt(12)).optional(),
      temperature: z.number().positive().default(1),
    }),
  },
];

const GOOD = `name: spam
datasets:
  spam:
    format: spam-assassin
    split: { dev: 0.1, test: 0.1, seed: 7 }
teacher:
  checkpoint: fixtures/teacher
stages:
  - tokenize: { dataset: spam }
  - distill:
      layer_map: [0, 3, 6, 9]
`;

Deno.test("a valid file gets its defaults, and the resolved YAML reads back the same", () => {
  const p = parsePipeline(GOOD, "tasks/spam.yaml", KINDS);
  assert.equal(p.seed, 42);
  assert.equal(p.backend, "auto");
  assert.equal(p.output_dir, "runs");
  assert.deepEqual(p.stages[0], { tokenize: { dataset: "spam", max_seq_length: 128 } });
  assert.deepEqual(p.stages[1], { distill: { layer_map: [0, 3, 6, 9], temperature: 1 } });
  assert.deepEqual(p.datasets.spam.split, { dev: 0.1, test: 0.1, seed: 7 });
  const again = parsePipeline(resolvedYaml(p), "resolved.yaml", KINDS);
  assert.deepEqual({ ...again, file: "" }, { ...p, file: "" });
});

Deno.test("a wrong type names file, line, column, path, expected and got", async () => {
  const bad = GOOD.replace("[0, 3, 6, 9]", '[0, "x", 6, 20]');
  const err = await assertInputError(() => parsePipeline(bad, "tasks/spam.yaml", KINDS), [
    'tasks/spam.yaml:11:22: stages[1].distill.layer_map[1]: expected number, got "x"',
    "tasks/spam.yaml:11:30: stages[1].distill.layer_map[3]: expected number < 12, got 20",
    "2 problems",
  ]);
  assert.equal(err.file, "tasks/spam.yaml");
  assert.equal(err.field, "stages[1].distill.layer_map[1]");
});

Deno.test("unknown keys, unknown stages and malformed stage entries are rejected", async () => {
  await assertInputError(
    () => parsePipeline(GOOD.replace("name: spam", "name: spam\nseeed: 3"), "f.yaml", KINDS),
    ['f.yaml:2:1: seeed: unknown key "seeed"'],
  );
  await assertInputError(
    () => parsePipeline(GOOD.replace("layer_map: [0, 3, 6, 9]", "layermap: [1]"), "f.yaml", KINDS),
    ['f.yaml:11:7: stages[1].distill.layermap: unknown key "layermap"'],
  );
  await assertInputError(
    () => parsePipeline(GOOD + "  - distil: {}\n", "f.yaml", KINDS),
    ['f.yaml:12:5: stages[2].distil: unknown stage "distil" (known: ', "tokenize", "distill"],
  );
  await assertInputError(
    () => parsePipeline(GOOD + "  - { tokenize: {dataset: spam}, distill: {} }\n", "f.yaml", KINDS),
    ['stages[2]: expected one stage name as the only key, got "tokenize", "distill"'],
  );
  await assertInputError(
    () => parsePipeline(GOOD.replace("format: spam-assassin", "format: xls"), "f.yaml", KINDS),
    ['f.yaml:4:13: datasets.spam.format: expected one of "csv", "tsv"', 'got "xls"'],
  );
});

Deno.test("cross-section and structural errors", async () => {
  await assertInputError(
    () => parsePipeline(GOOD.replace("{ dataset: spam }", "{ dataset: ham }"), "f.yaml", KINDS),
    ["f.yaml: stages[0].tokenize.dataset: unknown dataset", 'expected one of "spam"', 'got "ham"'],
  );
  await assertInputError(
    () =>
      parsePipeline(
        GOOD.replace("  checkpoint: fixtures/teacher", "  tokenizer: x"),
        "f.yaml",
        KINDS,
      ),
    ["teacher: expected `checkpoint` or `config`"],
  );
  await assertInputError(
    () => parsePipeline(GOOD.replace(/stages:[\s\S]*/, "stages: []\n"), "f.yaml", KINDS),
    ["stages: expected array length ≥ 1, got 0"],
  );
  await assertInputError(() => parsePipeline("name: [unclosed\n", "f.yaml", KINDS), [
    "f.yaml: invalid YAML at line",
  ]);
  await assertInputError(() => parsePipeline("- a\n- b\n", "f.yaml", KINDS), [
    "a pipeline file must be a YAML mapping",
  ]);
  await assertInputError(
    () => parsePipeline("name: 'bad name!'\nstages: [{tokenize: {dataset: x}}]", "f.yaml", KINDS),
    [
      "f.yaml:1:7: name:",
    ],
  );
  await assert.rejects(() => loadPipeline("tasks/does-not-exist.yaml", KINDS), (e: Error) => {
    assert.ok(e instanceof InputError);
    assert.match(e.message, /tasks\/does-not-exist\.yaml: pipeline file not found/);
    return true;
  });
});

Deno.test("a value no branch of a union takes names the bad element, or every branch's form", async () => {
  const { BUILTIN_STAGES } = await import("../pipeline/stages/mod.ts");
  const spam = await Deno.readTextFile("tasks/spam.yaml");
  const withMap = (map: string) =>
    parsePipeline(
      spam.replace("{ teacher: finetune@teacher, dtype: F16 }", `{ layer_map: ${map} }`),
      "tasks/spam.yaml",
      BUILTIN_STAGES,
    );
  // the list branch came closest: its element is named
  await assertInputError(() => withMap('[1, "x"]'), [
    'tasks/spam.yaml:33:39: stages[2].teacher-forward.layer_map[1]: expected number, got "x"',
  ]);
  // no branch came close: each one's form is listed
  await assertInputError(() => withMap("unifrom"), [
    'stages[2].teacher-forward.layer_map: expected "uniform", "last" or a list, got "unifrom"',
  ]);
});
