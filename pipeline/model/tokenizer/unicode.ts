/**
 * Unicode as the Rust `tokenizers` library sees it: character classes (control, whitespace,
 * punctuation, nonspacing mark), the CJK blocks BERT pads, NFD accent stripping and per-character
 * lowercasing, each corrected where this JS runtime's Unicode version disagrees with the Rust one.
 * @module
 */

/**
 * Where the Rust `tokenizers` library disagrees with this JS runtime about Unicode: its character
 * categories predate Unicode 9, its lowercasing is newer than V8's. Each category set lists the
 * code points (hex ranges) where the JS regex next to it gives the wrong answer; `lowercase` maps
 * `lo-hi>target` (lo → target, lo+1 → target+1, …). Measured by `tests/tokenizer_test.ts`, which
 * sweeps every code point and prints a fresh table when a dependency update moves the difference.
 */
const RUST_UNICODE = {
  /** `[\p{Cc}\p{Cf}\p{Co}\p{Cs}]`: removed by clean_text. */
  control: "890-891 8e2 110cd 13430-1343f",
  /** `\p{P}`: split off as punctuation. */
  punctuation: "61d 9fd a76 c77 c84 166d 1b4e-1b4f 1b7d-1b7f 2e43-2e4f 2e52-2e5d 10d6e 10ead " +
    "10f55-10f59 10f86-10f89 111c9 113d4-113d5 113d7-113d8 1144b-1144f 1145a-1145b 1145d " +
    "11660-1166c 116b9 1183b 11944-11946 119e2 11a3f-11a46 11a9a-11a9c 11a9e-11aa2 11b00-11b09 " +
    "11be1 11c41-11c45 11c70-11c71 11ef7-11ef8 11f43-11f4f 11fff 12ff1-12ff2 16d6d-16d6f " +
    "16e97-16e9a 16fe2 1e5ff 1e95e-1e95f",
  /** `\p{Mn}`: removed when stripping accents. */
  nonspacingMark: "7fd 897-89f 8ca-8e1 9fe afa-aff b55 c04 c3c d00 d3b-d3c d81 eba ece 1734 " +
    "180f 1885-1886 1abf-1ace 1df6-1dfb a82c a8c5 a8ff a9bd 10d24-10d27 10d69-10d6d " +
    "10eab-10eac 10efc-10eff 10f46-10f50 10f82-10f85 11070 11073-11074 110c2 111c9 111cf 1123e " +
    "11241 1133b 113bb-113c0 113ce 113d0 113d2 113e1-113e2 11438-1143f 11442-11444 11446 1145e " +
    "1171e 1182f-11837 11839-1183a 1193b-1193c 1193e 11943 119d4-119d7 119da-119db 119e0 " +
    "11a01-11a0a 11a33-11a38 11a3b-11a3e 11a47 11a51-11a56 11a59-11a5b 11a8a-11a96 11a98-11a99 " +
    "11c30-11c36 11c38-11c3d 11c3f 11c92-11ca7 11caa-11cb0 11cb2-11cb3 11cb5-11cb6 11d31-11d36 " +
    "11d3a 11d3c-11d3d 11d3f-11d45 11d47 11d90-11d91 11d95 11d97 11ef3-11ef4 11f00-11f01 " +
    "11f36-11f3a 11f40 11f42 11f5a 13440 13447-13455 1611e-16129 1612d-1612f 16f4f 16fe4 " +
    "1cf00-1cf2d 1cf30-1cf46 1e000-1e006 1e008-1e018 1e01b-1e021 1e023-1e024 1e026-1e02a 1e08f " +
    "1e130-1e136 1e2ae 1e2ec-1e2ef 1e4ec-1e4ef 1e5ee-1e5ef 1e944-1e94a",
  /** Characters that `String.prototype.normalize("NFD")` splits and the Rust NFD keeps whole. */
  noDecomposition: "105c9 105e4 11383 11385 1138e 11391 113c5 113c7-113c8 11938 16121-16128 " +
    "16d68-16d6a",
  /** Lowercase mappings that differ from `String.prototype.toLowerCase`. */
  lowercase: "a7ce>a7cf a7d2>a7d3 a7d4>a7d5 16ea0-16eb8>16ebb",
};

function parseRanges(ranges: string): [number, number, number][] {
  return ranges.split(" ").filter((s) => s).map((item) => {
    const [range, target] = item.split(">");
    const [lo, hi = lo] = range.split("-").map((h) => parseInt(h, 16));
    return [lo, hi, target === undefined ? lo : parseInt(target, 16)];
  });
}

function codePointSet(ranges: string): Set<number> {
  const set = new Set<number>();
  for (const [lo, hi] of parseRanges(ranges)) for (let cp = lo; cp <= hi; cp++) set.add(cp);
  return set;
}

const CONTROL_DELTA = codePointSet(RUST_UNICODE.control);
const PUNCT_DELTA = codePointSet(RUST_UNICODE.punctuation);
const MN_DELTA = codePointSet(RUST_UNICODE.nonspacingMark);
const NO_NFD = codePointSet(RUST_UNICODE.noDecomposition);
const LOWER_DELTA = new Map<number, string>();
for (const [lo, hi, target] of parseRanges(RUST_UNICODE.lowercase)) {
  for (let cp = lo; cp <= hi; cp++) LOWER_DELTA.set(cp, String.fromCodePoint(target + cp - lo));
}

const CONTROL_RE = /^[\p{Cc}\p{Cf}\p{Co}\p{Cs}]$/u;
const PUNCT_RE = /^\p{P}$/u;
const MN_RE = /^\p{Mn}$/u;
const WHITESPACE_RE = /^\p{White_Space}$/u;
const ASCII_RE = /^\p{ASCII}*$/u;

const KNOWN = 1;
/** Dropped by clean_text: NUL, U+FFFD and control characters other than \t \n \r. */
export const REMOVED = 2;
export const WHITESPACE = 4;
export const PUNCTUATION = 8;
export const NONSPACING_MARK = 16;
/** Class bits of each code point, filled in on first use. */
const charClasses = new Uint8Array(0x110000);

/** The class bits of code point `cp` ({@link REMOVED}, {@link WHITESPACE}, …), as in Rust. */
export function charClass(cp: number): number {
  if (charClasses[cp]) return charClasses[cp];
  const ch = String.fromCodePoint(cp);
  let c = KNOWN;
  const tabOrNewline = cp === 9 || cp === 10 || cp === 13;
  if (cp === 0 || cp === 0xfffd) c |= REMOVED;
  if (!tabOrNewline && CONTROL_RE.test(ch) !== CONTROL_DELTA.has(cp)) c |= REMOVED;
  if (WHITESPACE_RE.test(ch)) c |= WHITESPACE;
  const asciiPunct = (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) ||
    (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  if (asciiPunct || PUNCT_RE.test(ch) !== PUNCT_DELTA.has(cp)) c |= PUNCTUATION;
  if (MN_RE.test(ch) !== MN_DELTA.has(cp)) c |= NONSPACING_MARK;
  return charClasses[cp] = c;
}

/** The CJK ideograph blocks BERT surrounds with spaces (from 0x2B920, not 0x2B820, as in Rust). */
export function isChineseChar(cp: number): boolean {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) || (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

function isNonspacingMark(ch: string): boolean {
  return (charClass(ch.codePointAt(0)!) & NONSPACING_MARK) !== 0;
}

/** NFD, then drop nonspacing marks; characters the Rust NFD does not know stay whole. */
export function stripAccents(text: string): string {
  if (ASCII_RE.test(text)) return text;
  let out = "";
  let run = "";
  const flush = () => {
    for (const ch of run.normalize("NFD")) if (!isNonspacingMark(ch)) out += ch;
    run = "";
  };
  for (const ch of text) {
    if (NO_NFD.has(ch.codePointAt(0)!)) {
      flush();
      if (!isNonspacingMark(ch)) out += ch;
    } else {
      run += ch;
    }
  }
  flush();
  return out;
}

/** Lowercase one character at a time: no context rules (a final Σ stays σ, as in Rust). */
export function lowercase(text: string): string {
  if (ASCII_RE.test(text)) return text.toLowerCase();
  let out = "";
  for (const ch of text) out += LOWER_DELTA.get(ch.codePointAt(0)!) ?? ch.toLowerCase();
  return out;
}
