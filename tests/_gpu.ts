/**
 * Where the GPU tests find a Vulkan driver: SwiftShader (a software Vulkan) from the npm package
 * `@sparticuz/chromium` (`.ci/run` extracts it). `TINYSTILL_VK_ICD` names its ICD json, else the
 * cache path `$XDG_CACHE_HOME/tinystill/swiftshader/vk_swiftshader_icd.json` (default
 * `~/.cache/...`). Without one the GPU tests skip with a message; with `CI=true` they fail.
 * WebGPU runs in child processes: the Vulkan loader reads `VK_ICD_FILENAMES` and
 * `LD_LIBRARY_PATH` (SwiftShader's own `libvulkan.so.1` sits beside it) at process start.
 */

import { dirname, join } from "node:path";

/** The ICD json of SwiftShader, or null. */
export function swiftshaderIcd(): string | null {
  const env = Deno.env.get("TINYSTILL_VK_ICD");
  const cache = Deno.env.get("XDG_CACHE_HOME") ?? join(Deno.env.get("HOME") ?? "/root", ".cache");
  const path = env ?? join(cache, "tinystill", "swiftshader", "vk_swiftshader_icd.json");
  try {
    Deno.statSync(path);
    return path;
  } catch {
    return null;
  }
}

/** The environment of a WebGPU child process, or why there is none (the test then skips). */
export function gpuEnv(): { env: Record<string, string> } | { skip: string } {
  const icd = swiftshaderIcd();
  if (!icd) {
    const why = "no SwiftShader ICD (set TINYSTILL_VK_ICD or run .ci/run, see docs/gpu.md)";
    if (Deno.env.get("CI") === "true") throw new Error(`GPU tests under CI=true: ${why}`);
    return { skip: why };
  }
  const lib = dirname(icd);
  const ld = Deno.env.get("LD_LIBRARY_PATH");
  return { env: { VK_ICD_FILENAMES: icd, LD_LIBRARY_PATH: ld ? `${lib}:${ld}` : lib } };
}

/** Run `deno run -A <script> ...args` with `env`; its stdout and stderr together. */
export async function runChild(
  script: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; out: string }> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(script, import.meta.url).pathname, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  });
  const r = await p.output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}
