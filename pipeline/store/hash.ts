/** Content hashes for cache keys and checksums. @module */

/** JSON with object keys sorted at every level: the input to content hashes. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

/** Hex SHA-256 of a string. */
export async function sha256Hex(text: string | Uint8Array): Promise<string> {
  const bytes = typeof text === "string" ? new TextEncoder().encode(text) : text;
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const fileDigests = new Map<string, Promise<string>>();

/**
 * Hex SHA-256 of a file's bytes (of no bytes when the file is missing), for the fingerprints of
 * external inputs such as checkpoint weights. Remembered per path, size and mtime, so a plan that
 * names one checkpoint in several stages reads and hashes it once.
 */
export async function fileDigest(path: string): Promise<string> {
  const st = await Deno.stat(path).catch(() => null);
  if (!st) return sha256Hex(new Uint8Array());
  const key = `${path}\u0000${st.size}\u0000${st.mtime?.getTime() ?? ""}`;
  let d = fileDigests.get(key);
  if (!d) {
    d = Deno.readFile(path).then(sha256Hex);
    fileDigests.set(key, d);
    d.catch(() => fileDigests.delete(key));
  }
  return d;
}
