/**
 * The `tokenizer.json` of a BERT WordPiece tokenizer: its shape, building it from a vocabulary
 * (`vocab.txt`) as `BertTokenizerFast` does, checking one read from disk, and writing its text as
 * Hugging Face does.
 * @module
 */

import { InputError } from "../../errors.ts";
import type { BertNormalizerOptions } from "./normalize.ts";

/** The special tokens of a BERT vocabulary, by role. */
export const SPECIAL_TOKENS = {
  pad: "[PAD]",
  unk: "[UNK]",
  cls: "[CLS]",
  sep: "[SEP]",
  mask: "[MASK]",
} as const;

/** One entry of `added_tokens` in `tokenizer.json`. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** The parts of a Hugging Face `tokenizer.json` that a BERT WordPiece tokenizer uses. */
export interface TokenizerJson {
  version: string;
  truncation: unknown;
  padding: unknown;
  added_tokens: AddedTokenJson[];
  normalizer: ({ type: "BertNormalizer" } & BertNormalizerOptions) | { type: string } | null;
  pre_tokenizer: { type: string } | null;
  post_processor: { type: string; [key: string]: unknown } | null;
  decoder: { type: string; [key: string]: unknown } | null;
  model: {
    type: "WordPiece";
    unk_token: string;
    continuing_subword_prefix: string;
    max_input_chars_per_word: number;
    vocab: Record<string, number>;
  };
}

/** How to build a `tokenizer.json` from a vocabulary (the `BertTokenizer` settings). */
export interface BuildOptions {
  /** Lowercase the input (`do_lower_case`). */
  doLowerCase: boolean;
  /** Strip accents; `null` (the default) strips them exactly when lowercasing. */
  stripAccents?: boolean | null;
  /** Put spaces around CJK ideographs (default true). */
  tokenizeChineseChars?: boolean;
  /** Longer words become `[UNK]` (default 100). */
  maxInputCharsPerWord?: number;
}

/**
 * The `tokenizer.json` that `transformers.BertTokenizerFast` builds for `vocab` (token i has id
 * i): BertNormalizer, BertPreTokenizer, WordPiece with `[UNK]` and `##`, `[CLS] $A [SEP]`
 * (pairs: `[CLS] $A [SEP] $B:1 [SEP]:1`), a WordPiece decoder, and the special tokens as
 * added tokens. Throws an {@link InputError} when `vocab` has duplicates or lacks a special token.
 */
export function buildTokenizerJson(vocab: readonly string[], options: BuildOptions): TokenizerJson {
  const ids = new Map<string, number>();
  vocab.forEach((token, id) => {
    if (ids.has(token)) {
      throw new InputError(`duplicate token ${JSON.stringify(token)}`, {
        field: `vocab[${id}]`,
        expected: "each token once",
        got: `also at vocab[${ids.get(token)}]`,
      });
    }
    ids.set(token, id);
  });
  for (const role of ["unk", "cls", "sep", "pad"] as const) {
    if (!ids.has(SPECIAL_TOKENS[role])) {
      throw new InputError(`the vocabulary has no ${SPECIAL_TOKENS[role]} token`, {
        field: "vocab",
        expected: `${Object.values(SPECIAL_TOKENS).slice(0, 4).join(", ")} in the vocabulary`,
      });
    }
  }
  const specials = Object.values(SPECIAL_TOKENS).filter((t) => ids.has(t))
    .map((content) => ({ id: ids.get(content)!, content }))
    .sort((a, b) => a.id - b.id);
  const { cls, sep } = SPECIAL_TOKENS;
  const special = (id: string, typeId: number) => ({ SpecialToken: { id, type_id: typeId } });
  const sequence = (id: string, typeId: number) => ({ Sequence: { id, type_id: typeId } });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: specials.map(({ id, content }) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: options.tokenizeChineseChars ?? true,
      strip_accents: options.stripAccents ?? null,
      lowercase: options.doLowerCase,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [special(cls, 0), sequence("A", 0), special(sep, 0)],
      pair: [special(cls, 0), sequence("A", 0), special(sep, 0), sequence("B", 1), special(sep, 1)],
      special_tokens: Object.fromEntries(
        [cls, sep].map((t) => [t, { id: t, ids: [ids.get(t)!], tokens: [t] }]),
      ),
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: SPECIAL_TOKENS.unk,
      continuing_subword_prefix: "##",
      max_input_chars_per_word: options.maxInputCharsPerWord ?? 100,
      vocab: Object.fromEntries(vocab.map((token, id) => [token, id])),
    },
  };
}

/**
 * `tokenizer.json` text as Hugging Face writes it: two-space indents, vocabulary in id order (a
 * plain `JSON.stringify` would put number-like tokens such as "1996" first).
 */
export function tokenizerJsonText(json: TokenizerJson): string {
  const marker = "\u0000vocab\u0000";
  const withMarker = { ...json, model: { ...json.model, vocab: marker } };
  const entries = Object.entries(json.model.vocab).sort((a, b) => a[1] - b[1])
    .map(([token, id]) => `      ${JSON.stringify(token)}: ${id}`);
  const vocab = entries.length ? `{\n${entries.join(",\n")}\n    }` : "{}";
  return JSON.stringify(withMarker, null, 2).replace(JSON.stringify(marker), () => vocab) + "\n";
}

type TokenizerJsonInput = Record<string, unknown> & { model: Record<string, unknown> };

/** A plain object (not null, not an array). */
export function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Check the parts of a `tokenizer.json` this module relies on; fill optional keys. */
export function checkTokenizerJson(json: unknown, file?: string): TokenizerJson {
  const fail = (message: string, details: { field?: string; expected?: string; got?: string }) =>
    new InputError(message, { file, ...details });
  if (!isObject(json) || !isObject(json.model)) {
    throw fail("not a tokenizer.json", { expected: 'an object with a "model" object' });
  }
  const { model } = json as TokenizerJsonInput;
  if (model.type !== "WordPiece") {
    throw fail("not a WordPiece tokenizer", {
      field: "model.type",
      expected: '"WordPiece" (a BERT tokenizer)',
      got: JSON.stringify(model.type),
    });
  }
  if (!isObject(model.vocab) || !Object.keys(model.vocab).length) {
    throw fail("empty vocabulary", { field: "model.vocab", expected: "token → id entries" });
  }
  const seen = new Map<number, string>();
  for (const [token, id] of Object.entries(model.vocab)) {
    if (!Number.isInteger(id) || (id as number) < 0 || seen.has(id as number)) {
      throw fail(`bad id for token ${JSON.stringify(token)}`, {
        field: "model.vocab",
        expected: "a unique non-negative integer",
        got: seen.has(id as number) ? `${id}, also the id of ${seen.get(id as number)}` : `${id}`,
      });
    }
    seen.set(id as number, token);
  }
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) {
    throw fail("added_tokens is not a list", { field: "added_tokens", got: typeof added });
  }
  added.forEach((t, i) => {
    if (!isObject(t) || !Number.isInteger(t.id) || typeof t.content !== "string") {
      throw fail("bad added token", { field: `added_tokens[${i}]`, expected: "{id, content}" });
    }
    if (t.lstrip || t.rstrip || t.single_word) {
      throw fail("added tokens with lstrip, rstrip or single_word are not supported", {
        field: `added_tokens[${i}]`,
        got: JSON.stringify(t.content),
      });
    }
  });
  for (const key of ["normalizer", "pre_tokenizer", "post_processor", "decoder"]) {
    if (json[key] !== undefined && json[key] !== null && !isObject(json[key])) {
      throw fail(`${key} is not an object`, { field: key, got: JSON.stringify(json[key]) });
    }
  }
  // Key order as Hugging Face writes it.
  return structuredClone({
    version: "1.0",
    truncation: null,
    padding: null,
    ...json,
    added_tokens: added.map((t) => ({
      id: t.id,
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: t.normalized ?? !t.special,
      special: t.special ?? false,
    })),
    normalizer: json.normalizer ?? null,
    pre_tokenizer: json.pre_tokenizer ?? null,
    post_processor: json.post_processor ?? null,
    decoder: json.decoder ?? null,
    model: {
      type: model.type,
      unk_token: model.unk_token ?? SPECIAL_TOKENS.unk,
      continuing_subword_prefix: model.continuing_subword_prefix ?? "##",
      max_input_chars_per_word: model.max_input_chars_per_word ?? 100,
      ...model,
    },
  }) as TokenizerJson;
}
