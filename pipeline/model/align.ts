/**
 * Aligning word-level annotations with word pieces: token-classification tags go on the first
 * piece of each word (the other pieces and `[CLS]`/`[SEP]` get {@link IGNORE_INDEX}, as Hugging
 * Face's `run_ner` does), and extractive-QA answers (character spans of the context) become the
 * start and end piece of the span.
 *
 * Each word is word-pieced on its own. BERT's basic tokenizer splits on whitespace before
 * anything else, so piecing the whitespace words of a text one by one gives the same pieces as
 * piecing the whole text.
 * @module
 */

import type { BertTokenizer } from "./tokenizer/tokenizer.ts";

/** The label of positions a loss ignores (as in Hugging Face). */
export const IGNORE_INDEX = -100;

/** A word-labelled sequence, encoded. */
export interface WordEncoding {
  /** `[CLS] pieces… [SEP]`. */
  ids: number[];
  /** The word's tag at its first piece, {@link IGNORE_INDEX} elsewhere. */
  tokenLabels: number[];
  /** How many words have their first piece in `ids` (the rest were cut by `maxLength`). */
  wordsKept: number;
  /** True when `maxLength` cut pieces off. */
  truncated: boolean;
  /** Words that have no piece at all (e.g. only characters the normalizer removes). */
  emptyWords: number[];
}

function pieceIds(tok: BertTokenizer, text: string): number[] {
  return tok.tokenize(text).map((t) => tok.vocab.get(t) ?? tok.unkId);
}

/**
 * Encode pre-split words with one tag each: `[CLS] w1₁ w1₂ w2₁ … [SEP]`, at most `maxLength`
 * tokens. Tags must be as many as words (callers check it with file and line first).
 */
export function encodeWords(
  tok: BertTokenizer,
  words: readonly string[],
  tags: readonly number[],
  maxLength: number,
): WordEncoding {
  if (tags.length !== words.length) {
    throw new Error(`encodeWords: ${tags.length} tags for ${words.length} words`);
  }
  const ids = [tok.clsId], tokenLabels = [IGNORE_INDEX];
  const budget = maxLength - 1; // room for [SEP]
  let wordsKept = 0, truncated = false;
  const emptyWords: number[] = [];
  for (let w = 0; w < words.length; w++) {
    const pieces = pieceIds(tok, words[w]);
    if (pieces.length === 0) {
      emptyWords.push(w);
      continue;
    }
    for (let k = 0; k < pieces.length; k++) {
      if (ids.length >= budget) {
        truncated = true;
        break;
      }
      ids.push(pieces[k]);
      tokenLabels.push(k === 0 ? tags[w] : IGNORE_INDEX);
      if (k === 0) wordsKept++;
    }
    if (truncated) break;
  }
  ids.push(tok.sepId);
  tokenLabels.push(IGNORE_INDEX);
  return { ids, tokenLabels, wordsKept, truncated, emptyWords };
}

/** The whitespace-separated words of a text with their `[start, end)` character spans. */
export function whitespaceWords(text: string): { word: string; start: number; end: number }[] {
  const out: { word: string; start: number; end: number }[] = [];
  for (const m of text.matchAll(/\S+/g)) {
    out.push({ word: m[0], start: m.index!, end: m.index! + m[0].length });
  }
  return out;
}

/** A question + context pair, encoded for span prediction. */
export interface SpanEncoding {
  /** `[CLS] question [SEP] context [SEP]`. */
  ids: number[];
  /** 0 on `[CLS] question [SEP]`, 1 on `context [SEP]`. */
  types: number[];
  /** Per token: the index of the context word it is a piece of, or −1 (question, specials). */
  tokenWords: number[];
  /** `[start, end)` character span of each context word, flat: `[s0, e0, s1, e1, …]`. */
  wordSpans: number[];
  /** The answer's first and last token; both 0 (`[CLS]`) when the answer was cut off. */
  startPosition: number;
  endPosition: number;
  /** True when `maxLength` cut the context. */
  truncated: boolean;
  /** True when an answer was given but `maxLength` cut it off (its target is `[CLS]`). */
  answerCut: boolean;
}

/**
 * Encode a question and its context, at most `maxLength` tokens: the question is kept whole (up
 * to half the budget) and the context is cut at the end, as Hugging Face's `only_second`
 * truncation does (one window; no document stride). `answer` (a character span of the context)
 * gives the target positions: the first piece of the first word the span touches and the last
 * piece of the last one.
 */
export function encodeQuestionContext(
  tok: BertTokenizer,
  question: string,
  context: string,
  answer: { start: number; text: string } | undefined,
  maxLength: number,
): SpanEncoding {
  const budget = maxLength - 3;
  const q = pieceIds(tok, question).slice(0, Math.floor(budget / 2));
  const ids = [tok.clsId, ...q, tok.sepId];
  const types = ids.map(() => 0);
  const tokenWords = ids.map(() => -1);
  const words = whitespaceWords(context);
  const wordSpans = words.flatMap((w) => [w.start, w.end]);
  const room = maxLength - 1; // leave [SEP]
  let truncated = false;
  const firstPiece = new Map<number, number>(), lastPiece = new Map<number, number>();
  for (let w = 0; w < words.length && !truncated; w++) {
    for (const id of pieceIds(tok, words[w].word)) {
      if (ids.length >= room) {
        truncated = true;
        break;
      }
      if (!firstPiece.has(w)) firstPiece.set(w, ids.length);
      lastPiece.set(w, ids.length);
      ids.push(id);
      types.push(1);
      tokenWords.push(w);
    }
  }
  ids.push(tok.sepId);
  types.push(1);
  tokenWords.push(-1);
  let startPosition = 0, endPosition = 0, answerCut = false;
  if (answer) {
    const aEnd = answer.start + answer.text.length;
    const touched = words.map((w, i) => ({ w, i })).filter(({ w }) =>
      w.end > answer.start && w.start < aEnd
    ).map(({ i }) => i);
    const first = touched[0], last = touched[touched.length - 1];
    if (first === undefined || !firstPiece.has(first) || !lastPiece.has(last)) answerCut = true;
    else {
      startPosition = firstPiece.get(first)!;
      endPosition = lastPiece.get(last)!;
    }
  }
  return {
    ids,
    types,
    tokenWords,
    wordSpans,
    startPosition,
    endPosition,
    truncated,
    answerCut,
  };
}

/**
 * The answer text of a predicted token span: the context from the start of the start token's
 * word to the end of the end token's word ("" when either is not a context token or end < start).
 */
export function spanText(
  context: string,
  tokenWords: ArrayLike<number>,
  wordSpans: ArrayLike<number>,
  start: number,
  end: number,
): string {
  const ws = tokenWords[start], we = tokenWords[end];
  if (ws === undefined || we === undefined || ws < 0 || we < 0 || end < start) return "";
  return context.slice(wordSpans[2 * ws], wordSpans[2 * we + 1]);
}

/**
 * The best span of start/end logits over context tokens: argmax of `start[i] + end[j]` with
 * `i ≤ j < i + maxAnswerTokens` (the rule of BERT's SQuAD code, without its n-best list).
 */
export function bestSpan(
  startLogits: ArrayLike<number>,
  endLogits: ArrayLike<number>,
  tokenWords: ArrayLike<number>,
  maxAnswerTokens = 30,
): { start: number; end: number; score: number } {
  let best = { start: 0, end: 0, score: -Infinity };
  const n = tokenWords.length;
  for (let i = 0; i < n; i++) {
    if (tokenWords[i] < 0) continue;
    for (let j = i; j < Math.min(n, i + maxAnswerTokens); j++) {
      if (tokenWords[j] < 0) continue;
      const s = startLogits[i] + endLogits[j];
      if (s > best.score) best = { start: i, end: j, score: s };
    }
  }
  return best;
}
