/**
 * `deno task notebooks [files…] [--html DIR] [--fresh] [--repeat N] [--stats FILE]`
 *
 * Executes the notebooks (default: every `notebooks/*.ipynb`) headless on the Deno Jupyter
 * kernel, failing on any cell error and on any missing expected output (see `notebooks/run.py`).
 * Set-up: Debian `python3-nbclient` (it brings `jupyter_client` and `nbformat`); the Deno
 * kernelspec is installed here with `deno jupyter --install --force` into `.jupyter/` inside the
 * repository (gitignored), so nothing outside it changes. Executed copies go to
 * `.jupyter/executed/`. `--fresh` runs the tiny pipeline into a new temporary directory (removed
 * afterwards) instead of `runs/notebook-tiny/`, so every stage is computed as on a clean clone.
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../", import.meta.url));
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

const args = Deno.args.filter((a) => a !== "--fresh");
const fresh = args.length < Deno.args.length
  ? await Deno.makeTempDir({ prefix: "tinystill_notebooks_" })
  : undefined;
if (!args.some((a) => a.endsWith(".ipynb"))) {
  const dir = join(REPO, "notebooks");
  const all = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".ipynb"))
    .sort();
  args.unshift(...all.map((n) => join(dir, n)));
}
if (!args.includes("--out")) args.push("--out", join(REPO, ".jupyter", "executed"));
const code = await run(python, [join(REPO, "notebooks", "run.py"), ...args], {
  JUPYTER_PATH: join(DATA, "jupyter"),
  JUPYTER_DATA_DIR: join(DATA, "jupyter"),
  NO_COLOR: "1",
  ...(fresh ? { TINYSTILL_NOTEBOOK_RUNS: fresh } : {}),
});
if (fresh) await Deno.remove(fresh, { recursive: true });
Deno.exit(code);
