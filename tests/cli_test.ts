/** `deno task distill FILE`: runs a pipeline, skips what is done, reports bad options clearly. */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { withTempDir } from "./_util.ts";

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli.ts", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("the CLI runs a pipeline file, then skips it; errors exit 1 with a message", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "p.yaml");
    await Deno.writeTextFile(
      file,
      `name: cli\noutput_dir: ${dir}/runs\ndatasets:\n  tiny:\n    format: csv\n` +
        `    path: ${resolve("fixtures/tiny/sentiment.csv")}\n` +
        `stages:\n  - tokenize: { dataset: tiny, tokenizer: ${
          resolve("fixtures/bert-base-uncased")
        } }\n`,
    );
    const first = await cli(file, "--quiet");
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^tokenize\s+ran\s/m);
    const second = await cli(file, "--quiet");
    assert.match(second.stdout, /^tokenize\s+skipped\s/m);
    const bad = await cli(file, "--from", "distill");
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /error: .*p\.yaml: --from: no stage "distill"/);
    const opt = await cli("--nope");
    assert.equal(opt.code, 1);
    assert.match(opt.stderr, /unknown option --nope\. usage: deno task distill/);
    // no file: the default job, tasks/spam.yaml (asked for a stage it lacks, so nothing runs)
    const none = await cli("--only", "nope");
    assert.equal(none.code, 1);
    assert.match(none.stderr, /running the default job .*tasks\/spam\.yaml/);
    assert.match(none.stderr, /spam\.yaml: --only: no stage "nope"/);
  });
});
