/**
 * Atomic file output: write to a temporary sibling, fsync, then rename over the target, so a
 * crash never leaves a half-written file where a complete one is expected.
 * @module
 */

import { basename, dirname, join } from "node:path";

function tmpSibling(path: string): string {
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(16);
  return join(dirname(path), `.${basename(path)}.${Deno.pid}.${rand}.tmp`);
}

/** Write `data` to `path` atomically (temp file in the same directory + fsync + rename). */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = tmpSibling(path);
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    let off = 0;
    while (off < bytes.length) off += await f.write(bytes.subarray(off));
    await f.sync();
  } catch (e) {
    f.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  f.close();
  await Deno.rename(tmp, path);
}

/**
 * Swap a finished directory `tmp` into place at `dest`: an existing `dest` is first renamed to
 * `old` (a stale `old` is removed beforehand) and removed only after `tmp` has taken its place,
 * so a crash leaves `dest` or `old` whole, never a mix.
 */
export async function swapDir(tmp: string, dest: string, old = `${dest}.old`): Promise<void> {
  await Deno.remove(old, { recursive: true }).catch(() => {});
  const had = await exists(dest);
  if (had) await Deno.rename(dest, old);
  await Deno.rename(tmp, dest);
  if (had) await Deno.remove(old, { recursive: true });
}

/** Write a JSON value atomically, pretty-printed with a trailing newline. */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/** True when `path` exists (any kind); other stat errors propagate. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
