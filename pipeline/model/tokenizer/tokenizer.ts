/**
 * BERT WordPiece tokenization that matches Hugging Face's `BertTokenizerFast` (the Rust
 * `tokenizers` library) id for id, on top of the pure-JS `@huggingface/tokenizers` engine.
 *
 * The engine supplies the WordPiece model, the post-processor (`[CLS] A [SEP] B [SEP]`) and the
 * vocabulary maps. Three steps are done here because the engine differs from the Rust library:
 * - normalization and pre-tokenization (`normalize.ts`, on the Rust library's Unicode classes in
 *   `unicode.ts`);
 * - splitting on special tokens: only on the raw text, as the Rust library does;
 * - truncation ("longest_first") and padding, which the engine does not do at all (`encoding.ts`).
 * @module
 */

import { Tokenizer } from "@huggingface/tokenizers";
import { InputError } from "../../errors.ts";
import {
  earlyExitLength,
  type EncodeOptions,
  type Encoding,
  type EncodingArrays,
  type SplitText,
  truncateLongestFirst,
} from "./encoding.ts";
import { bertNormalize, type BertNormalizerOptions, bertPreTokenize } from "./normalize.ts";
import {
  type BuildOptions,
  buildTokenizerJson,
  checkTokenizerJson,
  SPECIAL_TOKENS,
  type TokenizerJson,
} from "./tokenizer_json.ts";

/** Settings that live in `tokenizer_config.json` rather than `tokenizer.json`. */
export interface TokenizerSettings {
  /** Default `maxLength` (`model_max_length`, default 512). */
  modelMaxLength?: number;
  /** The file the tokenizer came from, for error messages. */
  source?: string;
}

/**
 * A BERT WordPiece tokenizer, equal in output to `transformers.BertTokenizerFast` built from the
 * same `tokenizer.json`. Build one with `loadTokenizer` (`io.ts`) or {@link BertTokenizer.fromVocab}.
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
