/**
 * BERT WordPiece tokenization that matches Hugging Face's `BertTokenizerFast` (the Rust
 * `tokenizers` library) id for id, on top of the pure-JS `@huggingface/tokenizers` engine.
 *
 * The engine supplies the WordPiece model, the post-processor (`[CLS] A [SEP] B [SEP]`) and the
 * vocabulary maps. Three steps are done here because the engine differs from the Rust library:
 * - normalization and pre-tokenization ({@link bertNormalize}, {@link bertPreTokenize}): the
 *   engine treats characters outside the BMP (CJK Extension B+) as two halves, lowercases a final
 *   Σ to ς, and classifies characters with a newer Unicode version than the Rust library does;
 * - splitting on special tokens: only on the raw text, as the Rust library does;
 * - truncation ("longest_first") and padding, which the engine does not do at all.
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { Tokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";
import { InputError } from "../errors.ts";
import { writeFileAtomic, writeJsonAtomic } from "../store/fsutil.ts";

// ---------------------------------------------------------------------------------------------
// Unicode: the Rust library's character classes
// ---------------------------------------------------------------------------------------------

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
const REMOVED = 2;
const WHITESPACE = 4;
const PUNCTUATION = 8;
const NONSPACING_MARK = 16;
/** Class bits of each code point, filled in on first use. */
const charClasses = new Uint8Array(0x110000);

function charClass(cp: number): number {
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
function isChineseChar(cp: number): boolean {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) || (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

function isNonspacingMark(ch: string): boolean {
  return (charClass(ch.codePointAt(0)!) & NONSPACING_MARK) !== 0;
}

/** NFD, then drop nonspacing marks; characters the Rust NFD does not know stay whole. */
function stripAccents(text: string): string {
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
function lowercase(text: string): string {
  if (ASCII_RE.test(text)) return text.toLowerCase();
  let out = "";
  for (const ch of text) out += LOWER_DELTA.get(ch.codePointAt(0)!) ?? ch.toLowerCase();
  return out;
}

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

// ---------------------------------------------------------------------------------------------
// tokenizer.json
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// BertTokenizer
// ---------------------------------------------------------------------------------------------

/** Options of {@link BertTokenizer.encode} and the batch encoders. */
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

/** A batch as int32 tensors of shape `[batch, seq]` (the caller disposes them). */
export interface EncodingTensors {
  inputIds: tf.Tensor2D;
  attentionMask: tf.Tensor2D;
  tokenTypeIds: tf.Tensor2D;
}

/** Settings that live in `tokenizer_config.json` rather than `tokenizer.json`. */
export interface TokenizerSettings {
  /** Default `maxLength` (`model_max_length`, default 512). */
  modelMaxLength?: number;
  /** The file the tokenizer came from, for error messages. */
  source?: string;
}

type TokenizerJsonInput = Record<string, unknown> & { model: Record<string, unknown> };

/**
 * A BERT WordPiece tokenizer, equal in output to `transformers.BertTokenizerFast` built from the
 * same `tokenizer.json`. Build one with {@link loadTokenizer} or {@link BertTokenizer.fromVocab}.
 */
export class BertTokenizer {
  /** Token → id, special and added tokens included. */
  readonly vocab: ReadonlyMap<string, number>;
  /** Id → token. */
  readonly idToToken: readonly string[];
  /** Number of ids (the embedding rows a model needs). */
  readonly vocabSize: number;
  /** Id of `[PAD]`. */
  readonly padId: number;
  /** Id of `[CLS]`. */
  readonly clsId: number;
  /** Id of `[SEP]`. */
  readonly sepId: number;
  /** Id of `[UNK]` (the model's unknown token). */
  readonly unkId: number;
  /** Id of `[MASK]`, when the vocabulary has it. */
  readonly maskId: number | undefined;
  /** Default length limit (`model_max_length`). */
  readonly modelMaxLength: number;

  readonly #json: TokenizerJson;
  readonly #engine: Tokenizer;
  readonly #normalize: (text: string) => string;
  readonly #preTokenize: (text: string) => string[];
  /** Added tokens matched in the raw text, and those matched after normalization. */
  readonly #rawAdded: RegExp | null;
  readonly #normalizedAdded: RegExp | null;
  readonly #normalizedToToken = new Map<string, string>();
  /** Special tokens the post-processor adds to a single input and to a pair. */
  readonly #specialsAdded: { single: number; pair: number };

  /**
   * @param json a parsed `tokenizer.json` with a WordPiece model
   * @param settings `tokenizer_config.json` settings and the source file for error messages
   */
  constructor(json: unknown, settings: TokenizerSettings = {}) {
    const file = settings.source;
    this.#json = checkTokenizerJson(json, file);
    this.modelMaxLength = settings.modelMaxLength ?? 512;
    const { model, added_tokens: added } = this.#json;

    const idToToken: string[] = [];
    for (const [token, id] of Object.entries(model.vocab)) idToToken[id] = token;
    for (const t of added) idToToken[t.id] = t.content;
    const hole = idToToken.findIndex((t) => t === undefined);
    if (hole >= 0) {
      throw new InputError("token ids are not contiguous", {
        file,
        field: "model.vocab",
        expected: `ids 0..${idToToken.length - 1}`,
        got: `no token with id ${hole}`,
      });
    }
    this.idToToken = idToToken;
    this.vocabSize = idToToken.length;
    this.vocab = new Map(idToToken.map((t, i) => [t, i]));
    const need = (token: string) => {
      const id = this.vocab.get(token);
      if (id === undefined) {
        throw new InputError(`the vocabulary has no ${token} token`, {
          file,
          field: "model.vocab",
          expected: `a vocabulary with ${token}`,
        });
      }
      return id;
    };
    this.unkId = need(model.unk_token);
    this.clsId = need(SPECIAL_TOKENS.cls);
    this.sepId = need(SPECIAL_TOKENS.sep);
    this.padId = need(SPECIAL_TOKENS.pad);
    this.maskId = this.vocab.get(SPECIAL_TOKENS.mask);

    try {
      this.#engine = new Tokenizer(this.#json, {});
    } catch (e) {
      throw new InputError(`unsupported tokenizer.json: ${(e as Error).message}`, { file }, {
        cause: e,
      });
    }
    const engine = this.#engine;
    const normalizer = this.#json.normalizer;
    if (normalizer?.type === "BertNormalizer") {
      const o = normalizer as Partial<BertNormalizerOptions>;
      const options: BertNormalizerOptions = {
        clean_text: o.clean_text ?? true,
        handle_chinese_chars: o.handle_chinese_chars ?? true,
        strip_accents: o.strip_accents ?? null,
        lowercase: o.lowercase ?? true,
      };
      this.#normalize = (text) => bertNormalize(text, options);
    } else {
      this.#normalize = engine.normalizer ? (text) => engine.normalizer!(text) : (text) => text;
    }
    if (this.#json.pre_tokenizer?.type === "BertPreTokenizer") {
      this.#preTokenize = bertPreTokenize;
    } else {
      this.#preTokenize = engine.pre_tokenizer
        ? (text) => engine.pre_tokenizer!(text)
        : (text) => text ? [text] : [];
    }
    const raw = added.filter((t) => !t.normalized).map((t) => t.content);
    for (const t of added.filter((t) => t.normalized)) {
      const normalized = this.#normalize(t.content);
      if (normalized) this.#normalizedToToken.set(normalized, t.content);
    }
    this.#rawAdded = alternation(raw);
    this.#normalizedAdded = alternation([...this.#normalizedToToken.keys()]);
    this.#specialsAdded = {
      single: this.#postProcess([], null).tokens.length,
      pair: this.#postProcess([], []).tokens.length,
    };
  }

  /** A tokenizer for `vocab` (token i has id i), as `BertTokenizerFast` would build it. */
  static fromVocab(
    vocab: readonly string[],
    options: BuildOptions & { modelMaxLength?: number },
  ): BertTokenizer {
    return new BertTokenizer(buildTokenizerJson(vocab, options), options);
  }

  /** Whether the normalizer lowercases (`do_lower_case`). */
  get doLowerCase(): boolean {
    return this.#bertNormalizer()?.lowercase ?? false;
  }

  /** The WordPiece tokens of `text`, without `[CLS]`/`[SEP]`. */
  tokenize(text: string): string[] {
    return this.#split(text).tokens;
  }

  /** Encode one input or a pair: `[CLS] text [SEP]` or `[CLS] text [SEP] pair [SEP]`. */
  encode(text: string, pair?: string, options: EncodeOptions = {}): Encoding {
    const { truncation = true, padding = false } = options;
    const maxLength = this.#maxLength(options);
    const a = this.#split(text);
    const b = pair === undefined ? null : this.#split(pair);
    let tokensA = a.tokens;
    let tokensB = b?.tokens ?? null;
    if (truncation) {
      const budget = maxLength - (b ? this.#specialsAdded.pair : this.#specialsAdded.single);
      if (budget < 0) {
        throw new InputError("maxLength is shorter than the special tokens", {
          field: "maxLength",
          expected: `at least ${maxLength - budget}`,
          got: String(maxLength),
        });
      }
      const [na, nb] = truncateLongestFirst(
        earlyExitLength(a, maxLength),
        b && earlyExitLength(b, maxLength),
        budget,
      );
      tokensA = tokensA.slice(0, na);
      tokensB = tokensB && tokensB.slice(0, nb);
    }
    const { tokens, token_type_ids } = this.#postProcess(tokensA, tokensB);
    const inputIds = tokens.map((t) => this.vocab.get(t) ?? this.unkId);
    const out: Encoding = {
      inputIds,
      attentionMask: inputIds.map(() => 1),
      tokenTypeIds: token_type_ids ?? inputIds.map(() => 0),
    };
    return padding === "max_length" ? this.#pad(out, maxLength) : out;
  }

  /**
   * Encode a batch into `[batch, seq]` int32 arrays. `pairs`, when given, pairs `pairs[i]` with
   * `texts[i]`. Sequences of unequal length need padding (default `"longest"`).
   */
  encodeBatchArrays(
    texts: readonly string[],
    pairs?: readonly string[],
    options: EncodeOptions = {},
  ): EncodingArrays {
    if (pairs && pairs.length !== texts.length) {
      throw new InputError("texts and pairs differ in length", {
        field: "pairs",
        expected: `${texts.length} pairs`,
        got: String(pairs.length),
      });
    }
    const padding = options.padding ?? "longest";
    const rows = texts.map((t, i) => this.encode(t, pairs?.[i], { ...options, padding: false }));
    const longest = Math.max(0, ...rows.map((r) => r.inputIds.length));
    const seq = padding === "max_length" ? this.#maxLength(options) : longest;
    const ragged = rows.find((r) => r.inputIds.length !== seq);
    if (ragged && (padding === false || ragged.inputIds.length > seq)) {
      throw new InputError("the batch cannot be made rectangular", {
        field: "padding",
        expected: `every sequence at most ${seq} tokens, padded`,
        got: `a sequence of ${ragged.inputIds.length} tokens with padding ${padding}`,
        hint: 'Use padding "longest", or truncation with padding "max_length"',
      });
    }
    const batch = rows.length;
    const ids = new Int32Array(batch * seq).fill(this.padId);
    const mask = new Int32Array(batch * seq);
    const types = new Int32Array(batch * seq);
    rows.forEach((r, i) => {
      ids.set(r.inputIds, i * seq);
      mask.set(r.attentionMask, i * seq);
      types.set(r.tokenTypeIds, i * seq);
    });
    return { ids, mask, types, batch, seq };
  }

  /** {@link encodeBatchArrays} as int32 tensors of shape `[batch, seq]`. */
  encodeBatch(
    texts: readonly string[],
    pairs?: readonly string[],
    options: EncodeOptions = {},
  ): EncodingTensors {
    const { ids, mask, types, batch, seq } = this.encodeBatchArrays(texts, pairs, options);
    return {
      inputIds: tf.tensor2d(ids, [batch, seq], "int32"),
      attentionMask: tf.tensor2d(mask, [batch, seq], "int32"),
      tokenTypeIds: tf.tensor2d(types, [batch, seq], "int32"),
    };
  }

  /** The `tokenizer.json` object (a copy). */
  toJSON(): TokenizerJson {
    return structuredClone(this.#json);
  }

  /** The `tokenizer_config.json` that `transformers` writes for this tokenizer. */
  tokenizerConfig(): Record<string, unknown> {
    const n = this.#bertNormalizer();
    const config: Record<string, unknown> = {
      added_tokens_decoder: Object.fromEntries(
        this.#json.added_tokens.map((t) => [String(t.id), {
          content: t.content,
          lstrip: t.lstrip,
          normalized: t.normalized,
          rstrip: t.rstrip,
          single_word: t.single_word,
          special: t.special,
        }]),
      ),
      clean_up_tokenization_spaces: true,
      do_basic_tokenize: true,
      do_lower_case: n?.lowercase ?? false,
      model_max_length: this.modelMaxLength,
      never_split: null,
      strip_accents: n?.strip_accents ?? null,
      tokenize_chinese_chars: n?.handle_chinese_chars ?? true,
      tokenizer_class: "BertTokenizer",
    };
    for (const [role, token] of Object.entries(SPECIAL_TOKENS)) {
      if (this.vocab.has(token)) config[`${role}_token`] = token;
    }
    // Sorted keys, as `transformers` writes them.
    return Object.fromEntries(Object.entries(config).sort(([a], [b]) => a < b ? -1 : 1));
  }

  #bertNormalizer(): Partial<BertNormalizerOptions> | undefined {
    const n = this.#json.normalizer;
    return n?.type === "BertNormalizer" ? n as Partial<BertNormalizerOptions> : undefined;
  }

  /**
   * Tokens of `text`, and after which of them each WordPiece word ends: added tokens are matched
   * in the raw text, the rest is normalized, matched against normalized added tokens, split into
   * words and run through the engine's WordPiece model.
   */
  #split(text: string): SplitText {
    const tokens: string[] = [];
    const wordEnds: number[] = [];
    splitOn(text, this.#rawAdded).forEach((part, i) => {
      if (i % 2) return tokens.push(part);
      splitOn(this.#normalize(part), this.#normalizedAdded).forEach((piece, j) => {
        if (j % 2) return tokens.push(this.#normalizedToToken.get(piece)!);
        for (const word of this.#preTokenize(piece)) {
          for (const t of this.#engine.model!([word])) tokens.push(t);
          wordEnds.push(tokens.length);
        }
      });
    });
    return { tokens, wordEnds };
  }

  #postProcess(a: string[], b: string[] | null): { tokens: string[]; token_type_ids?: number[] } {
    const post = this.#engine.post_processor;
    if (!post) return { tokens: [...a, ...(b ?? [])], token_type_ids: undefined };
    return post(a, b, true);
  }

  #maxLength(options: EncodeOptions): number {
    const maxLength = options.maxLength ?? this.modelMaxLength;
    if (!(Number.isInteger(maxLength) && maxLength >= 0)) {
      throw new InputError("maxLength must be a non-negative integer", {
        field: "maxLength",
        got: String(maxLength),
      });
    }
    return maxLength;
  }

  #pad(e: Encoding, length: number): Encoding {
    if (!Number.isSafeInteger(length)) {
      throw new InputError("cannot pad to an unbounded length", {
        field: "maxLength",
        expected: 'a finite maxLength with padding "max_length"',
        got: String(length),
      });
    }
    const n = Math.max(0, length - e.inputIds.length);
    return {
      inputIds: [...e.inputIds, ...Array(n).fill(this.padId)],
      attentionMask: [...e.attentionMask, ...Array(n).fill(0)],
      tokenTypeIds: [...e.tokenTypeIds, ...Array(n).fill(0)],
    };
  }
}

/** A sequence's tokens and the token counts at which its WordPiece words end. */
interface SplitText {
  tokens: string[];
  wordEnds: number[];
}

/**
 * The length the Rust library sees for a sequence when truncating to `maxLength`: since
 * tokenizers 0.23 it stops tokenizing after the first word that brings the count to `maxLength`
 * (added tokens count but never stop it), so longer sequences look shorter. The difference shows
 * only when both inputs of a pair reach `maxLength`: then they compare as equally long.
 */
function earlyExitLength(text: SplitText, maxLength: number): number {
  return text.wordEnds.find((end) => end >= maxLength) ?? text.tokens.length;
}

/**
 * Hugging Face's "longest_first" truncation of lengths `n1` (and `n2` for a pair) to `budget`
 * tokens: if only the longer input must shrink, it alone is cut; otherwise the shorter gets
 * ⌊budget/2⌋ and the longer the rest (on a tie the first counts as the shorter).
 */
function truncateLongestFirst(n1: number, n2: number | null, budget: number): [number, number] {
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

/** A regex matching any of `tokens`, longest first, or null when there are none. */
function alternation(tokens: string[]): RegExp | null {
  if (!tokens.length) return null;
  const escaped = [...tokens].sort((x, y) => y.length - x.length)
    .map((t) => t.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&"));
  return new RegExp(`(${escaped.join("|")})`, "u");
}

/** `text` split around matches of `re`: even indices are text, odd ones the matches. */
function splitOn(text: string, re: RegExp | null): string[] {
  return re ? text.split(re) : [text];
}

// ---------------------------------------------------------------------------------------------
// Reading and writing the Hugging Face layout
// ---------------------------------------------------------------------------------------------

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Check the parts of a `tokenizer.json` this module relies on; fill optional keys. */
function checkTokenizerJson(json: unknown, file?: string): TokenizerJson {
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

/**
 * The tokens of a `vocab.txt` (one per line, line i holds id i - 1), read as `transformers`
 * reads it. Throws an {@link InputError} naming `file` and the line for an empty or repeated
 * token.
 */
export function parseVocabTxt(text: string, file?: string): string[] {
  const tokens = text.split(/\r\n|\r|\n/);
  if (tokens.at(-1) === "") tokens.pop();
  if (!tokens.length) {
    throw new InputError("empty vocabulary", { file, expected: "a token a line" });
  }
  const lineOf = new Map<string, number>();
  tokens.forEach((token, i) => {
    const line = `line ${i + 1}`;
    if (token === "") {
      throw new InputError("empty token", { file, field: line, expected: "a token a line" });
    }
    if (lineOf.has(token)) {
      throw new InputError(`duplicate token ${JSON.stringify(token)}`, {
        file,
        field: line,
        expected: "each token once",
        got: `also on line ${lineOf.get(token)}`,
      });
    }
    lineOf.set(token, i + 1);
  });
  return tokens;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InputError(`invalid JSON: ${(e as Error).message}`, { file }, { cause: e });
  }
}

/** The `tokenizer_config.json` keys read by {@link loadTokenizer}. */
interface TokenizerConfigKeys {
  do_lower_case?: boolean;
  strip_accents?: boolean | null;
  tokenize_chinese_chars?: boolean;
  model_max_length?: number;
}

function readConfig(json: unknown, file: string): TokenizerConfigKeys {
  if (!isObject(json)) throw new InputError("not a JSON object", { file });
  const check = (key: string, ok: (v: unknown) => boolean, expected: string) => {
    if (json[key] !== undefined && !ok(json[key])) {
      throw new InputError("bad value", {
        file,
        field: key,
        expected,
        got: JSON.stringify(json[key]),
      });
    }
  };
  const bool = (v: unknown) => typeof v === "boolean";
  check("do_lower_case", bool, "true or false");
  check("strip_accents", (v) => v === null || bool(v), "true, false or null");
  check("tokenize_chinese_chars", bool, "true or false");
  check("model_max_length", (v) => Number.isInteger(v) && (v as number) > 0, "a positive integer");
  return json as TokenizerConfigKeys;
}

/**
 * Load a tokenizer from a Hugging Face model directory: `tokenizer.json` when present, otherwise
 * `vocab.txt` with the settings of `tokenizer_config.json` (`do_lower_case` defaults to true).
 * As in `BertTokenizerFast`, `do_lower_case`, `strip_accents` and `tokenize_chinese_chars` set
 * in `tokenizer_config.json` override the `tokenizer.json` normalizer. Throws an
 * {@link InputError} naming the file for anything missing or malformed.
 */
export async function loadTokenizer(dir: string): Promise<BertTokenizer> {
  try {
    if (!(await Deno.stat(dir)).isDirectory) {
      throw new InputError("not a directory", { file: dir, expected: "a model directory" });
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new InputError("tokenizer directory not found", { file: dir }, { cause: e });
  }
  const configPath = join(dir, "tokenizer_config.json");
  const configText = await readOptional(configPath);
  const config = configText === undefined
    ? {}
    : readConfig(parseJson(configText, configPath), configPath);
  const modelMaxLength = config.model_max_length ?? 512;

  const jsonPath = join(dir, "tokenizer.json");
  const jsonText = await readOptional(jsonPath);
  if (jsonText !== undefined) {
    const json = parseJson(jsonText, jsonPath);
    const normalizer = isObject(json) ? json.normalizer : undefined;
    if (isObject(normalizer) && normalizer.type === "BertNormalizer") {
      const overrides = {
        lowercase: config.do_lower_case,
        strip_accents: config.strip_accents,
        handle_chinese_chars: config.tokenize_chinese_chars,
      };
      for (const [key, value] of Object.entries(overrides)) {
        if (value !== undefined) normalizer[key] = value;
      }
    }
    return new BertTokenizer(json, { modelMaxLength, source: jsonPath });
  }

  const vocabPath = join(dir, "vocab.txt");
  const vocabText = await readOptional(vocabPath);
  if (vocabText === undefined) {
    throw new InputError("no tokenizer found", {
      file: dir,
      expected: "tokenizer.json or vocab.txt",
      got: "neither",
      hint: "Point at a Hugging Face BERT model directory",
    });
  }
  const vocab = parseVocabTxt(vocabText, vocabPath);
  const required = [SPECIAL_TOKENS.unk, SPECIAL_TOKENS.cls, SPECIAL_TOKENS.sep, SPECIAL_TOKENS.pad];
  const missing = required.filter((t) => !vocab.includes(t));
  if (missing.length) {
    throw new InputError(`the vocabulary has no ${missing.join(", ")}`, {
      file: vocabPath,
      expected: `${required.join(", ")} among the tokens`,
    });
  }
  return BertTokenizer.fromVocab(vocab, {
    doLowerCase: config.do_lower_case ?? true,
    stripAccents: config.strip_accents,
    tokenizeChineseChars: config.tokenize_chinese_chars,
    modelMaxLength,
  });
}

/**
 * Write `vocab.txt`, `tokenizer.json` and `tokenizer_config.json` into `dir` (the Hugging Face
 * layout), each atomically.
 */
export async function saveTokenizer(tok: BertTokenizer, dir: string): Promise<void> {
  const json = tok.toJSON();
  const modelVocab = Object.entries(json.model.vocab).sort((a, b) => a[1] - b[1]);
  await writeFileAtomic(join(dir, "vocab.txt"), modelVocab.map(([t]) => `${t}\n`).join(""));
  await writeFileAtomic(join(dir, "tokenizer.json"), tokenizerJsonText(json));
  await writeJsonAtomic(join(dir, "tokenizer_config.json"), tok.tokenizerConfig());
}
