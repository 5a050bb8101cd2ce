/**
 * Encodings as plain arrays, and the length arithmetic of truncation (Hugging Face's
 * "longest_first", with the Rust library's early exit).
 * @module
 */

/** Options of `BertTokenizer.encode` and the batch encoders. */
export interface EncodeOptions {
  /** Length limit, special tokens included (default: the tokenizer's `modelMaxLength`). */
  maxLength?: number;
  /**
   * `"max_length"`: pad to `maxLength`; `"longest"`: to the longest sequence of the batch; `false`:
   * no padding. Default: `false` for `encode`, `"longest"` for the batch encoders. Padding goes on
   * the right with `[PAD]`, attention mask 0 and token type 0.
   */
  padding?: "max_length" | "longest" | false;
  /**
   * Cut sequences to `maxLength` (default true). Pairs are cut "longest_first", as Hugging Face
   * does: when both must shrink, the shorter input keeps ⌊budget/2⌋ tokens and the longer
   * ⌈budget/2⌉ (ties: the first is the shorter).
   */
  truncation?: boolean;
}

/** One encoded input (or pair), as plain arrays. */
export interface Encoding {
  inputIds: number[];
  attentionMask: number[];
  tokenTypeIds: number[];
}

/** A batch as row-major `[batch, seq]` int32 arrays, for code that does not use tfjs. */
export interface EncodingArrays {
  ids: Int32Array;
  mask: Int32Array;
  types: Int32Array;
  batch: number;
  seq: number;
}

/** A sequence's tokens and the token counts at which its WordPiece words end. */
export interface SplitText {
  tokens: string[];
  wordEnds: number[];
}

/**
 * The length the Rust library sees for a sequence when truncating to `maxLength`: since
 * tokenizers 0.23 it stops tokenizing after the first word that brings the count to `maxLength`
 * (added tokens count but never stop it), so longer sequences look shorter. The difference shows
 * only when both inputs of a pair reach `maxLength`: then they compare as equally long.
 */
export function earlyExitLength(text: SplitText, maxLength: number): number {
  return text.wordEnds.find((end) => end >= maxLength) ?? text.tokens.length;
}

/**
 * Hugging Face's "longest_first" truncation of lengths `n1` (and `n2` for a pair) to `budget`
 * tokens: if only the longer input must shrink, it alone is cut; otherwise the shorter gets
 * ⌊budget/2⌋ and the longer the rest (on a tie the first counts as the shorter).
 */
export function truncateLongestFirst(
  n1: number,
  n2: number | null,
  budget: number,
): [number, number] {
  if (n2 === null) return [Math.min(n1, budget), 0];
  if (n1 + n2 <= budget) return [n1, n2];
  const swap = n1 > n2;
  let short = Math.min(n1, n2);
  let long = short > budget ? short : Math.max(short, budget - short);
  if (short + long > budget) {
    short = Math.floor(budget / 2);
    long = budget - short;
  }
  return swap ? [long, short] : [short, long];
}
