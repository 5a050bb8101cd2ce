/**
 * Reading bytes and decoding UTF-8 strictly: a missing file or an invalid byte becomes an
 * InputError that names the file and the line and byte offset.
 * @module
 */

import { InputError } from "../errors.ts";

/**
 * Offset of the first byte that is not part of a well-formed UTF-8 sequence, or -1 when all of
 * `bytes` is valid (overlong forms, surrogates and code points above U+10FFFF are invalid).
 */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const c = bytes[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    let n: number, min: number;
    if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80];
    else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800];
    else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    if (i + n >= bytes.length) return i;
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = bytes[i + k];
      if ((d & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}

const strict = new TextDecoder("utf-8", { fatal: true });

/**
 * Decode `bytes` as UTF-8 (a leading BOM is dropped). Invalid UTF-8 throws an InputError naming
 * `file`, the line and the byte offset of the first bad byte; `where` replaces the line when the
 * bytes are one value inside a file (a Parquet cell).
 */
export function decodeUtf8(bytes: Uint8Array, file: string, where?: string): string {
  try {
    return strict.decode(bytes);
  } catch {
    const offset = Math.max(0, firstInvalidUtf8(bytes));
    let line = 1;
    for (let i = 0; i < offset; i++) if (bytes[i] === 0x0a) line++;
    const at = where ? `${where}, byte offset ${offset}` : `line ${line}, byte offset ${offset}`;
    throw new InputError("invalid UTF-8", {
      file,
      field: at,
      expected: "UTF-8 text",
      got: `byte 0x${bytes[offset]?.toString(16).padStart(2, "0")}`,
      hint: "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
    });
  }
}

/** Read a whole file; a missing file or a directory is an InputError naming the path. */
export async function readBytes(file: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new InputError("file not found", {
        file,
        hint: "check the dataset path (relative paths are resolved against the task file's folder)",
      });
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new InputError("is a directory, not a data file", { file });
    }
    throw e;
  }
}

/** Read a file as strict UTF-8 text (see {@link decodeUtf8}). */
export async function readText(file: string): Promise<string> {
  return decodeUtf8(await readBytes(file), file);
}
