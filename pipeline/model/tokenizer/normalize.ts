/**
 * Hugging Face's `BertNormalizer` and `BertPreTokenizer`, character for character as the Rust
 * library computes them. The pure-JS engine's own versions differ: they treat characters outside
 * the BMP (CJK Extension B+) as two halves, lowercase a final Σ to ς, and classify characters with
 * a newer Unicode version than the Rust library does.
 * @module
 */

import {
  charClass,
  isChineseChar,
  lowercase,
  PUNCTUATION,
  REMOVED,
  stripAccents,
  WHITESPACE,
} from "./unicode.ts";

/** The options of a `BertNormalizer`, as named in `tokenizer.json`. */
export interface BertNormalizerOptions {
  /** Remove control characters and map every whitespace character to a space. */
  clean_text: boolean;
  /** Put spaces around CJK ideographs so each becomes a word. */
  handle_chinese_chars: boolean;
  /** Remove accents (NFD, then drop nonspacing marks); `null` follows `lowercase`. */
  strip_accents: boolean | null;
  /** Lowercase. */
  lowercase: boolean;
}

/**
 * Hugging Face's `BertNormalizer`, character for character as the Rust library computes it:
 * clean text, pad CJK ideographs, strip accents, lowercase (in that order).
 */
export function bertNormalize(text: string, options: BertNormalizerOptions): string {
  let out = "";
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (options.clean_text) {
      const c = charClass(cp);
      if (c & REMOVED) continue;
      if (c & WHITESPACE) {
        out += " ";
        continue;
      }
    }
    out += options.handle_chinese_chars && isChineseChar(cp) ? ` ${ch} ` : ch;
  }
  if (options.strip_accents ?? options.lowercase) out = stripAccents(out);
  if (options.lowercase) out = lowercase(out);
  return out;
}

/**
 * Hugging Face's `BertPreTokenizer`: split on whitespace (dropped) and around every punctuation
 * character (kept as a word of its own).
 */
export function bertPreTokenize(text: string): string[] {
  const words: string[] = [];
  let word = "";
  for (const ch of text) {
    const c = charClass(ch.codePointAt(0)!);
    const space = (c & WHITESPACE) !== 0;
    if (space || c & PUNCTUATION) {
      if (word) words.push(word);
      word = "";
      if (!space) words.push(ch);
    } else {
      word += ch;
    }
  }
  if (word) words.push(word);
  return words;
}
