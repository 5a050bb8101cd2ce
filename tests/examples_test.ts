/** The README's example runs as documented and prints what it promises. */

import assert from "node:assert/strict";

Deno.test("examples/quickstart.ts runs: save, load, encode, inference graph, one training step", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "examples/quickstart.ts"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(text, /hidden states: 3 × \[2,7,64\], attention scores: 2 × \[2,4,7,7\]/);
  assert.match(text, /logits: \[2,2\]/);
  const loss = Number(text.match(/loss (\d+\.\d+)/)![1]);
  assert.ok(Math.abs(loss - Math.log(2)) < 0.1, `fresh 2-class loss ≈ ln 2, got ${loss}`);
  // Adam's first step moves a weight by lr·ĝ/(|ĝ| + eps) (+ lr·wd·|w|): at most ≈ lr = 5e-5
  const moved = Number(text.match(/moved by up to (\S+)/)![1]);
  assert.ok(moved > 4e-5 && moved < 5.1e-5, `largest step ${moved}`);
});

Deno.test("the README's pipeline file is valid", async () => {
  const { BUILTIN_STAGES } = await import("../pipeline/stages/mod.ts");
  const { parsePipeline } = await import("../pipeline/run/spec.ts");
  const readme = await Deno.readTextFile("README.md");
  const yaml = readme.match(/```yaml\n([\s\S]*?)```/)![1];
  const p = parsePipeline(yaml, "tasks/README.yaml", BUILTIN_STAGES);
  assert.deepEqual(p.stages.map((s) => Object.keys(s)[0]), [
    "tokenize",
    "finetune@teacher",
    "teacher-forward",
    "distill",
    "finetune@student",
    "finetune@general",
    "evaluate",
  ]);
  assert.equal((p.stages[2]["teacher-forward"] as { dtype: string }).dtype, "F16");
});

Deno.test("every pipeline in tasks/ is valid and plans (stage order, inputs, hashes)", async () => {
  const { BUILTIN_STAGES } = await import("../pipeline/stages/mod.ts");
  const { loadPipeline } = await import("../pipeline/run/spec.ts");
  const { planPipeline } = await import("../pipeline/run/runner.ts");
  const files = [...Deno.readDirSync("tasks")].map((e) => e.name).filter((n) =>
    n.endsWith(".yaml")
  );
  assert.deepEqual(files.sort(), [
    "brown-genre.yaml",
    "brown-pos.yaml",
    "hf-teacher.yaml",
    "pretrain.yaml",
    "spam.yaml",
  ]);
  for (const f of files) {
    const p = await loadPipeline(`tasks/${f}`, BUILTIN_STAGES);
    const kinds = p.stages.map((s) => Object.keys(s)[0].split("@")[0]);
    assert.ok(kinds.includes("distill"), f);
    if (f === "pretrain.yaml") {
      assert.ok(kinds.includes("mlm-pretrain") && kinds.includes("publish"), f);
    } else assert.ok(kinds.includes("evaluate"), f);
    if (f === "hf-teacher.yaml") continue; // its checkpoint and CSV are the user's
    const plan = await planPipeline(p);
    assert.equal(new Set(plan.map((s) => s.hash)).size, plan.length, f);
  }
});

Deno.test("every experiment in tasks/experiments/ is valid and plans", async () => {
  const { BUILTIN_STAGES } = await import("../pipeline/stages/mod.ts");
  const { loadPipeline } = await import("../pipeline/run/spec.ts");
  const { planPipeline } = await import("../pipeline/run/runner.ts");
  const files = [...Deno.readDirSync("tasks/experiments")].map((e) => e.name).filter((n) =>
    n.endsWith(".yaml")
  );
  assert.ok(files.length >= 4, files.join(", "));
  for (const f of files) {
    const plan = await planPipeline(await loadPipeline(`tasks/experiments/${f}`, BUILTIN_STAGES));
    assert.ok(plan.length > 1, f);
  }
});
