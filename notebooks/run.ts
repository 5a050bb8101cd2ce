/**
 * `deno task notebooks [files…] [--check] [--out DIR] [--html DIR] [--repeat N] [--stats FILE]`
 *
 * Executes the notebooks (default: every `notebooks/*.ipynb`) headless on the Deno Jupyter
 * kernel, failing on any cell error and on any missing expected output (see `notebooks/run.py`),
 * and writes each back to its file with its outputs. `--check` writes nothing and fails instead
 * when a cell's outputs differ from the committed ones (cells marked as timing-dependent aside);
 * `--out DIR` writes the executed copies there instead of over the notebooks.
 *
 * Every run computes the tiny pipeline from scratch in a new directory `.notebook-runs-*.tmp/` in
 * the repository (gitignored; removed afterwards; at the depth of `runs/`, so the stage hashes are
 * the ones a run into `runs/` gets), and the outputs name paths relative to the notebooks: that
 * directory as `../runs`, the repository as `..`. So the outputs do not depend on what an earlier
 * run left behind or on where the repository is.
 *
 * Set-up: Debian `python3-nbclient` (it brings `jupyter_client` and `nbformat`); the Deno
 * kernelspec is installed here with `deno jupyter --install --force` into `.jupyter/` inside the
 * repository (gitignored), so nothing outside it changes.
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/[\\/]$/, "");
const DATA = join(REPO, ".jupyter", "data");

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const p = new Deno.Command(cmd, { args, env, stdout: "inherit", stderr: "inherit" }).spawn();
  return (await p.status).code;
}

async function quiet(cmd: string, args: string[], env: Record<string, string> = {}) {
  try {
    return await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  } catch {
    return null;
  }
}

// Debian's python3 (where apt puts python3-nbclient), unless TINYSTILL_PYTHON says otherwise
const system = "/usr/bin/python3";
const python = Deno.env.get("TINYSTILL_PYTHON") ??
  (await Deno.stat(system).then(() => system, () => "python3"));
const probe = await quiet(python, ["-c", "import jupyter_client, nbformat"]);
if (!probe?.success) {
  console.error(
    `notebooks: ${python} cannot import jupyter_client and nbformat.\n` +
      "  Install them: apt-get install python3-nbclient (Debian; .ci/run does this).",
  );
  Deno.exit(2);
}
// the Deno kernelspec, inside the repository
const install = await quiet(Deno.execPath(), ["jupyter", "--install", "--force"], {
  XDG_DATA_HOME: DATA,
});
if (!install?.success) {
  console.error(new TextDecoder().decode(install?.stderr ?? new Uint8Array()));
  console.error("notebooks: `deno jupyter --install --force` failed");
  Deno.exit(2);
}

const args = [...Deno.args];
if (!args.some((a) => a.endsWith(".ipynb"))) {
  const dir = join(REPO, "notebooks");
  const all = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".ipynb"))
    .sort();
  args.unshift(...all.map((n) => join(dir, n)));
}
// write over the notebooks unless checking, measuring (--repeat) or writing elsewhere
if (!args.includes("--out")) {
  if (args.includes("--repeat")) args.push("--out", join(REPO, ".jupyter", "executed"));
  else if (!args.includes("--check")) args.push("--write");
}
// Ctrl-C reaches the runner too, which shuts its kernel down; then the directory is removed
Deno.addSignalListener("SIGINT", () => {});
// a clean pipeline directory at the depth of runs/ (*.tmp is gitignored)
const fresh = await Deno.makeTempDir({ dir: REPO, prefix: ".notebook-runs-", suffix: ".tmp" });
const replace = ["--replace", fresh, join(REPO, "runs"), "--replace", REPO, ".."];
let code: number;
try {
  code = await run(python, [join(REPO, "notebooks", "run.py"), ...args, ...replace], {
    JUPYTER_PATH: join(DATA, "jupyter"),
    JUPYTER_DATA_DIR: join(DATA, "jupyter"),
    NO_COLOR: "1",
    TINYSTILL_NOTEBOOK_RUNS: fresh,
  });
} finally {
  await Deno.remove(fresh, { recursive: true });
}
Deno.exit(code);
