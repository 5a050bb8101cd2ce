/**
 * The tokenizer against Hugging Face's Rust `tokenizers` (what `BertTokenizerFast` runs): every
 * code point through the normalizer and pre-tokenizer, a seeded corpus of varied inputs end to
 * end, plus hand-checked encodings, truncation, padding, model inputs and every load error.
 */

import assert from "node:assert/strict";
import { rng as prng } from "./_util.ts";
import { bertNormalizer, bertPreTokenizer, Tokenizer as RustTokenizer } from "tokenizers";
import { join } from "node:path";
import { InputError } from "../pipeline/errors.ts";
import {
  bertNormalize,
  type BertNormalizerOptions,
  bertPreTokenize,
} from "../pipeline/model/tokenizer/normalize.ts";
import { BertTokenizer } from "../pipeline/model/tokenizer/tokenizer.ts";
import type { Encoding } from "../pipeline/model/tokenizer/encoding.ts";
import { encodeBatch } from "../pipeline/model/tokenizer/inputs.ts";
import { loadTokenizer, parseVocabTxt, saveTokenizer } from "../pipeline/model/tokenizer/io.ts";
import {
  buildTokenizerJson,
  SPECIAL_TOKENS,
  tokenizerJsonText,
} from "../pipeline/model/tokenizer/tokenizer_json.ts";
import { fileURLToPath } from "node:url";

const FIXTURE = fileURLToPath(new URL("../fixtures/bert-base-uncased/", import.meta.url));
const fixtureJsonText = await Deno.readTextFile(join(FIXTURE, "tokenizer.json"));
const tok = await loadTokenizer(FIXTURE);
const vocab = parseVocabTxt(await Deno.readTextFile(join(FIXTURE, "vocab.txt")));

/**
 * The Rust tokenizer for a tokenizer.json, special tokens registered: without that, a literal
 * "[MASK]" in the text encodes differently from ours.
 */
function rustTokenizer(jsonText: string): RustTokenizer {
  const rust = RustTokenizer.fromString(jsonText);
  rust.addSpecialTokens(Object.values(SPECIAL_TOKENS));
  return rust;
}

// ---------------------------------------------------------------------------------------------
// A seeded generator of varied text
// ---------------------------------------------------------------------------------------------

const WORDS = vocab.filter((t) => /^[a-z]{2,}$/.test(t));
const PIECES = vocab.filter((t) => /^##[a-z]+$/.test(t)).map((t) => t.slice(2));
const ACCENTED = [
  "café",
  "naïve",
  "Ångström",
  "résumé",
  "über",
  "São Paulo",
  "Zürich",
  "façade",
  "crème brûlée",
  "Dvořák",
  "Łódź",
  "jalapeño",
  "coöperate",
  "İstanbul",
  "ΟΔΟΣ",
  "Σίσυφος ΣΟΦΙΑ",
  "Москва",
  "ÆØÅ æøå",
  "straße ẞ",
  "Å Ω K", // Angstrom, ohm and kelvin signs
];
const EMOJI = ["😀", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "1️⃣", "❤️", "🥰", "🫠", "👨🏿‍💻", "🧑‍🤝‍🧑", "©", "™"];
const CONTROLS = [
  "\u0000",
  "\u0001",
  "\u0007",
  "\u001f",
  "\u007f",
  "\u0085",
  "\u00ad",
  "\u200b",
  "\u200d",
  "\u200e",
  "\ufeff",
  "\ufffd",
  "\u0890",
  "\ue000",
  "\u{f0000}",
  "\u{e0041}",
];
const SPACES = [
  "  ",
  "\t",
  "\n",
  "\r\n",
  "\u00a0",
  "\u2003",
  "\u3000",
  "\u2028",
  "\u000b",
  "\u000c",
];
const MARKS = [
  "\u0301",
  "\u0308",
  "\u0323",
  "\u0300\u0316",
  "\u20dd",
  "\u0489",
  "\u1ac1",
  "\u0e31",
];
const PUNCT = [
  ".",
  ",",
  "!",
  "?",
  "...",
  "…",
  "—",
  "-",
  "(",
  ")",
  "[",
  "]",
  '"',
  "'",
  "«",
  "»",
  "¿",
  "¡",
  "、",
  "。",
  "·",
  "§",
  "$",
  "€",
  "%",
  "&",
  "@",
  "#",
  "~",
  "^",
  "`",
  "|",
  "\\",
  "/",
  ":",
  ";",
  "\u061d",
  "\u2e5d",
  "\u166d",
];
const SPECIAL_TEXT = [
  "[MASK]",
  "[CLS]",
  "[SEP]",
  "[PAD]",
  "[UNK]",
  "[mask]",
  "[ MASK ]",
  "[MASK",
  "[[MASK]]",
  "x[MASK]y",
  "[unused0]",
  "[MASK][MASK]",
  "[MA\u0000SK]",
];
/** Code point ranges of scripts, astral CJK and emoji blocks. */
const SCRIPTS: [number, number][] = [
  [0x4e00, 0x9fff],
  [0x3040, 0x30ff],
  [0xac00, 0xd7a3],
  [0x0600, 0x06ff],
  [0x05d0, 0x05ea],
  [0x0900, 0x097f],
  [0x0e00, 0x0e7f],
  [0x0370, 0x03ff],
  [0x0400, 0x04ff],
  [0x20000, 0x2a6df],
  [0x2b800, 0x2b9ff],
  [0x1f300, 0x1faff],
];

class TextGen {
  readonly #rand: () => number;
  constructor(seed: number) {
    this.#rand = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.#rand() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  chance(p: number): boolean {
    return this.#rand() < p;
  }
  codePoint(lo = 0, hi = 0x10ffff): string {
    let cp;
    do cp = lo + this.int(hi - lo + 1); while (cp >= 0xd800 && cp <= 0xdfff);
    return String.fromCodePoint(cp);
  }

  word(): string {
    let w = this.pick(WORDS);
    while (this.chance(0.3)) w += this.pick(PIECES);
    if (this.chance(0.15)) w = w[0].toUpperCase() + w.slice(1);
    if (this.chance(0.05)) w = w.toUpperCase();
    return w;
  }

  number(): string {
    return this.pick([
      () => String(this.int(100000)),
      () => `${this.int(100)}.${this.int(1000)}`,
      () => `${this.int(1000)},${String(this.int(1000)).padStart(3, "0")},000`,
      () => `$${this.int(500)}`,
      () => `${1900 + this.int(125)}s`,
      () => `${this.int(30)}th`,
      () => `-${this.int(10)}e${this.int(9)}`,
    ])();
  }

  longWord(): string {
    const kind = this.int(3);
    if (kind === 0) return "a".repeat(99 + this.int(4)); // around the 100-character limit
    let w = "";
    const target = 90 + this.int(60);
    while (w.length < target) w += kind === 1 ? this.pick(PIECES) : this.codePoint(0x61, 0x7a);
    return w;
  }

  segment(): string {
    switch (this.int(15)) {
      case 0:
      case 1:
      case 2:
      case 3:
        return this.word();
      case 4:
        return this.number();
      case 5:
        return this.pick(ACCENTED);
      case 6: {
        const [lo, hi] = this.pick(SCRIPTS);
        return Array.from({ length: 1 + this.int(6) }, () => this.codePoint(lo, hi)).join("");
      }
      case 7:
        return this.pick(EMOJI) + (this.chance(0.3) ? this.word() : "");
      case 8:
        return this.word() + this.pick(CONTROLS) + (this.chance(0.5) ? this.word() : "");
      case 9:
        return this.word() + this.pick(MARKS) + (this.chance(0.5) ? this.pick(MARKS) : "");
      case 10:
        return this.pick(PUNCT);
      case 11:
        return this.pick(SPECIAL_TEXT);
      case 12:
        return this.chance(0.3) ? this.longWord() : this.word(); // slow in the JS WordPiece

      case 13:
        return this.codePoint() + (this.chance(0.5) ? this.codePoint(0, 0x2ffff) : "");
      default:
        return this.word() + this.pick(PUNCT) + this.word();
    }
  }

  /** One input: empty, whitespace only, short, medium or long enough to need truncation. */
  text(): string {
    const r = this.int(100);
    if (r < 3) return "";
    if (r < 5) return this.pick(SPACES) + this.pick([" ", "\u0000", ""]);
    const n = r < 60 ? 1 + this.int(12) : r < 90 ? 12 + this.int(60) : 150 + this.int(500);
    let out = "";
    for (let i = 0; i < n; i++) {
      if (i) out += this.chance(0.85) ? " " : this.chance(0.5) ? "" : this.pick(SPACES);
      out += this.segment();
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Parity with the Rust tokenizer
// ---------------------------------------------------------------------------------------------

interface RustEncoding {
  getIds(): number[];
  getTypeIds(): number[];
  getAttentionMask(): number[];
}

/** Collects differences between our encodings and Rust's. */
class Comparison {
  compared = 0;
  readonly diffs: string[] = [];
  check(label: string, input: unknown, ours: Encoding, rust: RustEncoding): void {
    this.compared++;
    const theirs = {
      inputIds: rust.getIds(),
      attentionMask: rust.getAttentionMask(),
      tokenTypeIds: rust.getTypeIds(),
    };
    for (const key of ["inputIds", "attentionMask", "tokenTypeIds"] as const) {
      if (ours[key].join() !== theirs[key].join()) {
        this.diffs.push(
          `${label} ${key} for ${JSON.stringify(input).slice(0, 200)}:\n  ours ${
            ours[key].join(" ").slice(0, 300)
          }\n  rust ${theirs[key].join(" ").slice(0, 300)}`,
        );
      }
    }
  }
}

/** Group indices by a chosen max length, so the Rust tokenizer is reconfigured once per group. */
function byMaxLength(n: number, gen: TextGen): Map<number, number[]> {
  const groups = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const m = gen.pick([3, 5, 8, 16, 33, 64, 128, 512]);
    groups.set(m, [...(groups.get(m) ?? []), i]);
  }
  return groups;
}

Deno.test("parity with the Rust tokenizer on a seeded corpus of 2,600 inputs", async () => {
  const gen = new TextGen(20240611);
  const cmp = new Comparison();
  const rust = rustTokenizer(fixtureJsonText);

  // Single inputs, no truncation.
  const singles = Array.from({ length: 1000 }, () => gen.text());
  rust.disableTruncation();
  (await rust.encodeBatch(singles)).forEach((r, i) => {
    cmp.check("single", singles[i], tok.encode(singles[i], undefined, { truncation: false }), r);
  });

  // Single inputs truncated to assorted lengths.
  const truncated = Array.from({ length: 500 }, () => gen.text());
  for (const [maxLength, idx] of byMaxLength(truncated.length, gen)) {
    rust.setTruncation(maxLength);
    const out = await rust.encodeBatch(idx.map((i) => truncated[i]));
    idx.forEach((i, k) => {
      cmp.check(
        `single@${maxLength}`,
        truncated[i],
        tok.encode(truncated[i], undefined, {
          maxLength,
        }),
        out[k],
      );
    });
  }

  // Pairs, truncated longest-first to assorted lengths, and untruncated. (The Rust binding's
  // encodeBatch takes no pairs.)
  const pairs = Array.from({ length: 700 }, () => [gen.text(), gen.text()] as [string, string]);
  for (const [maxLength, idx] of byMaxLength(500, gen)) {
    rust.setTruncation(maxLength);
    const out = await Promise.all(idx.map((i) => rust.encode(...pairs[i])));
    idx.forEach((i, k) => {
      const ours = tok.encode(pairs[i][0], pairs[i][1], { maxLength });
      cmp.check(`pair@${maxLength}`, pairs[i], ours, out[k]);
    });
  }
  rust.disableTruncation();
  const untruncated = pairs.slice(500);
  (await Promise.all(untruncated.map((p) => rust.encode(...p)))).forEach((r, i) => {
    const [a, b] = untruncated[i];
    cmp.check("pair", untruncated[i], tok.encode(a, b, { truncation: false }), r);
  });

  // Padded batches of ten: singles padded to the longest, pairs to a fixed 64.
  rust.setTruncation(64);
  for (let start = 0; start < 200; start += 10) {
    const texts = Array.from({ length: 10 }, () => gen.text());
    const withPairs = start % 20 !== 0;
    const seconds = withPairs ? Array.from({ length: 10 }, () => gen.text()) : undefined;
    let out: RustEncoding[];
    if (seconds) {
      rust.setPadding({ maxLength: 64 });
      out = await Promise.all(texts.map((t, i) => rust.encode(t, seconds[i])));
    } else {
      rust.setPadding({}); // no options would switch padding off
      out = await rust.encodeBatch(texts);
    }
    const padding = withPairs ? "max_length" : "longest";
    const arrays = tok.encodeBatchArrays(texts, seconds, { maxLength: 64, padding });
    out.forEach((r, i) => {
      const row = (a: Int32Array) => [...a.subarray(i * arrays.seq, (i + 1) * arrays.seq)];
      cmp.check(`batch-${padding}`, [texts[i], seconds?.[i]], {
        inputIds: row(arrays.ids),
        attentionMask: row(arrays.mask),
        tokenTypeIds: row(arrays.types),
      }, r);
    });
  }

  // A cased tokenizer (do_lower_case false) over the same vocabulary.
  const casedJson = buildTokenizerJson(vocab, { doLowerCase: false });
  const cased = new BertTokenizer(casedJson);
  const rustCased = rustTokenizer(tokenizerJsonText(casedJson));
  const casedInputs = Array.from({ length: 200 }, () => gen.text());
  (await rustCased.encodeBatch(casedInputs)).forEach((r, i) => {
    cmp.check(
      "cased",
      casedInputs[i],
      cased.encode(casedInputs[i], undefined, {
        truncation: false,
      }),
      r,
    );
  });

  assert.ok(cmp.compared >= 2000, `only ${cmp.compared} inputs compared`);
  // The corpus really holds the hard cases.
  const all = [...singles, ...truncated, ...pairs.flat(), ...casedInputs];
  const coverage = {
    empty: (t: string) => t.trim() === "",
    wordOver100: (t: string) => /[a-z]{101}/.test(t),
    control: (t: string) => /[\p{Cc}\p{Cf}]/u.test(t.replace(/[\t\n\r]/g, "")),
    cjk: (t: string) => /\p{Script=Han}/u.test(t),
    astral: (t: string) => /[\u{10000}-\u{10ffff}]/u.test(t),
    zwj: (t: string) => t.includes("\u200d"),
    combining: (t: string) => /\p{M}/u.test(t),
    accents: (t: string) => /[éïÅñ]/.test(t),
    literalMask: (t: string) => t.includes("[MASK]"),
    digits: (t: string) => /\d/.test(t),
    truncatedAt512: (t: string) => tok.tokenize(t).length > 510,
  };
  for (const [name, has] of Object.entries(coverage)) {
    const n = all.filter(has).length;
    assert.ok(n >= 10, `only ${n} inputs with ${name}`);
  }
  assert.equal(cmp.compared, 2600);
  assert.equal(cmp.diffs.length, 0, cmp.diffs.slice(0, 8).join("\n"));
});

/** Code points to sweep: planes 0 and 1 whole, the rest around block edges and sampled. */
function sweepCodePoints(): number[] {
  const cps: number[] = [];
  const edges = [0x20000, 0x2a6df, 0x2a700, 0x2b73f, 0x2b740, 0x2b81f, 0x2b820, 0x2b920, 0x2ceaf];
  for (let cp = 0; cp <= 0x10ffff; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const nearEdge = edges.some((e) => Math.abs(cp - e) <= 300) || (cp >= 0xe0000 && cp < 0xe1000);
    if (cp < 0x20000 || nearEdge || cp % 61 === 0) cps.push(cp);
  }
  return cps;
}

const NORMALIZER_OPTIONS: BertNormalizerOptions[] = [
  { clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
  { clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: false },
  { clean_text: true, handle_chinese_chars: false, strip_accents: true, lowercase: false },
  { clean_text: false, handle_chinese_chars: true, strip_accents: false, lowercase: true },
];

Deno.test("every code point normalizes and pre-tokenizes as in Rust", () => {
  const rustNormalizers = NORMALIZER_OPTIONS.map((o) =>
    bertNormalizer({
      cleanText: o.clean_text,
      handleChineseChars: o.handle_chinese_chars,
      stripAccents: o.strip_accents ?? o.lowercase,
      lowercase: o.lowercase,
    })
  );
  const rustPre = bertPreTokenizer();
  // Each code point alone, after a letter, before an accented capital and a final-sigma capital.
  const probe = (cps: number[]) =>
    cps.map((cp) => String.fromCodePoint(cp)).map((c) => `a${c}É${c}Σ ${c}`).join(" ");
  const differs = (text: string) =>
    NORMALIZER_OPTIONS.some((o, k) =>
      bertNormalize(text, o) !== rustNormalizers[k].normalizeString(text)
    ) ||
    bertPreTokenize(text).join("\u0001") !==
      rustPre.preTokenizeString(text).map(([w]) => w).join("\u0001");

  const cps = sweepCodePoints();
  const bad: number[] = [];
  for (let i = 0; i < cps.length; i += 64) {
    const chunk = cps.slice(i, i + 64);
    if (differs(probe(chunk))) bad.push(...chunk.filter((cp) => differs(probe([cp]))));
  }
  assert.ok(cps.length > 150_000);
  assert.deepEqual(
    bad.map((cp) => cp.toString(16)).slice(0, 50),
    [],
    `Unicode handling differs from Rust; RUST_UNICODE in pipeline/model/tokenizer/unicode.ts should be:\n${
      JSON.stringify(measureRustUnicode(), null, 2)
    }`,
  );
});

/** Where the Rust library's Unicode classes differ from this runtime's (the RUST_UNICODE table). */
function measureRustUnicode(): Record<string, string> {
  const only = (o: Partial<Parameters<typeof bertNormalizer>[0]>) =>
    bertNormalizer({
      cleanText: false,
      handleChineseChars: false,
      stripAccents: false,
      lowercase: false,
      ...o,
    });
  const clean = only({ cleanText: true });
  const strip = only({ stripAccents: true });
  const lower = only({ lowercase: true });
  const pre = bertPreTokenizer();
  const found = {
    control: [] as number[],
    punctuation: [] as number[],
    nonspacingMark: [] as number[],
    noDecomposition: [] as number[],
    lowercase: [] as [number, number][],
  };
  for (let cp = 0; cp <= 0x10ffff; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const c = String.fromCodePoint(cp);
    const space = /^\p{White_Space}$/u.test(c);
    if (!space) {
      const removed = clean.normalizeString(c) === "";
      if (removed !== (cp === 0 || cp === 0xfffd || /^[\p{Cc}\p{Cf}\p{Co}\p{Cs}]$/u.test(c))) {
        found.control.push(cp);
      }
      const punct = pre.preTokenizeString(`a${c}b`).length === 3;
      const asciiPunct = /^[!-\/:-@\[-`{-~]$/.test(c);
      if (punct !== (asciiPunct || /^\p{P}$/u.test(c))) found.punctuation.push(cp);
    }
    const stripped = strip.normalizeString(c);
    let decomposes = c.normalize("NFD") !== c;
    if (decomposes && stripped === c) {
      found.noDecomposition.push(cp);
      decomposes = false;
    }
    if (!decomposes && (stripped === "") !== /^\p{Mn}$/u.test(c)) found.nonspacingMark.push(cp);
    const lowered = lower.normalizeString(c);
    if (lowered !== c.toLowerCase()) found.lowercase.push([cp, lowered.codePointAt(0)!]);
  }
  const ranges = (items: [number, number][]) => {
    const out: string[] = [];
    for (let i = 0; i < items.length;) {
      let j = i;
      while (
        j + 1 < items.length && items[j + 1][0] === items[j][0] + 1 &&
        items[j + 1][1] - items[j + 1][0] === items[i][1] - items[i][0]
      ) j++;
      const hex = (n: number) => n.toString(16);
      const span = i === j ? hex(items[i][0]) : `${hex(items[i][0])}-${hex(items[j][0])}`;
      out.push(items[i][0] === items[i][1] ? span : `${span}>${hex(items[i][1])}`);
      i = j + 1;
    }
    return out.join(" ");
  };
  const set = (cps: number[]) => ranges(cps.map((cp) => [cp, cp]));
  return {
    control: set(found.control),
    punctuation: set(found.punctuation),
    nonspacingMark: set(found.nonspacingMark),
    noDecomposition: set(found.noDecomposition),
    lowercase: ranges(found.lowercase),
  };
}

// ---------------------------------------------------------------------------------------------
// Hand-checked behaviour
// ---------------------------------------------------------------------------------------------

Deno.test("fixture vocabulary is bert-base-uncased", () => {
  assert.equal(vocab.length, 30522);
  assert.equal(tok.vocabSize, 30522);
  const known: Record<string, number> = {
    "[PAD]": 0,
    "[unused0]": 1,
    "[UNK]": 100,
    "[CLS]": 101,
    "[SEP]": 102,
    "[MASK]": 103,
    "!": 999,
    "the": 1996,
    "##s": 2015,
    "world": 2088,
    "hello": 7592,
    "##～": 30521,
  };
  for (const [token, id] of Object.entries(known)) {
    assert.equal(tok.vocab.get(token), id, token);
    assert.equal(tok.idToToken[id], token);
  }
  assert.deepEqual(
    [tok.padId, tok.unkId, tok.clsId, tok.sepId, tok.maskId],
    [0, 100, 101, 102, 103],
  );
  assert.equal(tok.modelMaxLength, 512);
  assert.equal(tok.doLowerCase, true);
});

Deno.test("hand-checked encodings", () => {
  assert.deepEqual(tok.encode("hello world"), {
    inputIds: [101, 7592, 2088, 102],
    attentionMask: [1, 1, 1, 1],
    tokenTypeIds: [0, 0, 0, 0],
  });
  assert.deepEqual(tok.encode("Hello, World!").inputIds, [101, 7592, 1010, 2088, 999, 102]);
  assert.deepEqual(tok.tokenize("unaffable"), ["una", "##ffa", "##ble"]);
  assert.deepEqual(tok.tokenize("I like strawberries"), ["i", "like", "straw", "##berries"]);
  assert.deepEqual(tok.encode("I like strawberries").inputIds.slice(1, -1), [
    1045,
    2066,
    13137,
    20968,
  ]);
  assert.deepEqual(tok.tokenize("Café naïve Ångström"), ["cafe", "naive", "ang", "##strom"]);
  // Specials are matched in the raw text only, before lowercasing.
  assert.deepEqual(tok.tokenize("The [MASK] sat."), ["the", "[MASK]", "sat", "."]);
  assert.deepEqual(tok.tokenize("[mask]"), ["[", "mask", "]"]);
  assert.deepEqual(tok.tokenize("x[SEP]y"), ["x", "[SEP]", "y"]);
  // Rust lowercases one character at a time: a final capital sigma becomes σ, not ς.
  assert.deepEqual(tok.tokenize("ΟΔΟΣ"), ["ο", "##δ", "##ο", "##σ"]);
  // An ideograph outside the BMP is a word of its own, like any CJK ideograph.
  assert.deepEqual(tok.tokenize("x\u{20000}y日本"), ["x", "[UNK]", "y", "日", "本"]);
  assert.deepEqual(tok.tokenize("a\u0000b\u200bc\td"), ["abc", "d"]);
  assert.equal(tok.tokenize("a".repeat(100)).includes("[UNK]"), false);
  assert.deepEqual(tok.tokenize("a".repeat(101)), ["[UNK]"]);
  assert.deepEqual(tok.encode(""), {
    inputIds: [101, 102],
    attentionMask: [1, 1],
    tokenTypeIds: [0, 0],
  });
  assert.deepEqual(tok.encode("hello", "world"), {
    inputIds: [101, 7592, 102, 2088, 102],
    attentionMask: [1, 1, 1, 1, 1],
    tokenTypeIds: [0, 0, 0, 1, 1],
  });
});

/** `n` one-token words. */
const letters = (n: number) => Array.from({ length: n }, (_, i) => "abcdefghij"[i % 10]).join(" ");

Deno.test("truncation: single inputs, and pairs longest-first", () => {
  const long = letters(600);
  assert.equal(tok.encode(long).inputIds.length, 512); // model_max_length by default
  assert.equal(tok.encode(long).inputIds.at(-1), 102);
  assert.equal(tok.encode(long, undefined, { truncation: false }).inputIds.length, 602);
  assert.deepEqual(tok.encode("a b c d e f g", undefined, { maxLength: 6 }).inputIds, [
    101,
    1037,
    1038,
    1039,
    1040,
    102,
  ]);
  // [first, second] lengths kept from pairs of [first, second] lengths, 7 tokens of budget.
  const cases: [number, number, number, number][] = [
    [2, 4, 2, 4],
    [2, 8, 2, 5],
    [8, 2, 5, 2],
    [4, 4, 3, 4],
    [4, 8, 3, 4],
    [8, 4, 4, 3],
    [8, 8, 3, 4],
    [0, 9, 0, 7],
    [9, 0, 7, 0],
    [30, 7, 4, 3],
    [7, 30, 3, 4],
    // Both at least maxLength (10): the Rust library (0.23+) sees them as equally long.
    [20, 11, 3, 4],
  ];
  for (const [n1, n2, k1, k2] of cases) {
    const { tokenTypeIds } = tok.encode(letters(n1), letters(n2), { maxLength: 10 });
    const kept = [
      tokenTypeIds.filter((t) => t === 0).length - 2,
      tokenTypeIds.filter((t) => t).length - 1,
    ];
    assert.deepEqual(kept, [k1, k2], `${n1} + ${n2}`);
  }
  assert.deepEqual(tok.encode("a b", "c d", { maxLength: 3 }).inputIds, [101, 102, 102]);
  assert.throws(() => tok.encode("a", "b", { maxLength: 2 }), InputError);
  assert.throws(() => tok.encode("a", undefined, { maxLength: -1 }), InputError);
});

Deno.test("padding: max_length and longest, right side, mask and type 0", () => {
  assert.deepEqual(tok.encode("hello", undefined, { maxLength: 6, padding: "max_length" }), {
    inputIds: [101, 7592, 102, 0, 0, 0],
    attentionMask: [1, 1, 1, 0, 0, 0],
    tokenTypeIds: [0, 0, 0, 0, 0, 0],
  });
  assert.equal(tok.encode("hello", undefined, { padding: "longest" }).inputIds.length, 3);
  const hi = tok.vocab.get("hi")!;
  const batch = tok.encodeBatchArrays(["hello world", "hi"], ["x", "y z x"]);
  assert.equal(batch.batch, 2);
  assert.equal(batch.seq, 7);
  const x = tok.vocab.get("x")!, y = tok.vocab.get("y")!, z = tok.vocab.get("z")!;
  assert.deepEqual([...batch.ids], [101, 7592, 2088, 102, x, 102, 0, 101, hi, 102, y, z, x, 102]);
  assert.deepEqual([...batch.mask], [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]);
  assert.deepEqual([...batch.types], [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
  const fixed = tok.encodeBatchArrays(["a", "b c"], undefined, {
    padding: "max_length",
    maxLength: 8,
  });
  assert.equal(fixed.seq, 8);
  // Unpadded batches must already be rectangular.
  assert.equal(tok.encodeBatchArrays(["a", "b"], undefined, { padding: false }).seq, 3);
  assert.throws(
    () => tok.encodeBatchArrays(["a", "b c"], undefined, { padding: false }),
    InputError,
  );
  assert.throws(
    () =>
      tok.encodeBatchArrays(["a b c d"], undefined, {
        padding: "max_length",
        maxLength: 4,
        truncation: false,
      }),
    InputError,
  );
  assert.throws(() => tok.encodeBatchArrays(["a", "b"], ["c"]), InputError);
  assert.equal(tok.encodeBatchArrays([]).batch, 0);
});

Deno.test("encodeBatch returns the model inputs: row-major int32 [batch, seq] arrays", () => {
  const texts = ["hello world", "hi", "a much longer sentence than the others"];
  const arrays = tok.encodeBatchArrays(texts, undefined, { maxLength: 8, padding: "max_length" });
  const t = encodeBatch(tok, texts, undefined, { maxLength: 8, padding: "max_length" });
  assert.deepEqual(Object.keys(t).sort(), [
    "attentionMask",
    "batch",
    "inputIds",
    "seq",
    "tokenTypeIds",
  ]);
  assert.equal(t.batch, 3);
  assert.equal(t.seq, 8);
  for (
    const [got, data] of [
      [t.inputIds, arrays.ids],
      [t.attentionMask, arrays.mask],
      [t.tokenTypeIds, arrays.types],
    ] as const
  ) {
    assert.ok(got instanceof Int32Array);
    assert.deepEqual([...got], [...data]);
  }
  const row = (b: number) => [...t.inputIds.subarray(b * 8, (b + 1) * 8)];
  assert.deepEqual(row(1), [101, tok.vocab.get("hi"), 102, 0, 0, 0, 0, 0]);
  assert.deepEqual([...t.attentionMask.subarray(8, 16)], [1, 1, 1, 0, 0, 0, 0, 0]);
  assert.equal(row(2).at(-1), 102); // truncated to 8, [SEP] kept
  // pairs: segment B has token type 1
  const p = encodeBatch(tok, ["hi"], ["hello world"]);
  assert.deepEqual([...p.tokenTypeIds], [0, 0, 0, 1, 1, 1]);
  assert.equal(p.seq, 6);
});

Deno.test("do_lower_case false keeps case and accents", async () => {
  const cased = BertTokenizer.fromVocab(vocab, { doLowerCase: false });
  assert.equal(cased.doLowerCase, false);
  assert.equal(cased.tokenizerConfig().do_lower_case, false);
  assert.deepEqual(cased.tokenize("hello"), ["hello"]);
  // The uncased vocabulary has no capitals, so a capitalized word is unknown.
  assert.deepEqual(cased.tokenize("Hello world"), ["[UNK]", "world"]);
  const rust = rustTokenizer(tokenizerJsonText(cased.toJSON()));
  for (const text of ["Hello World", "café Ångström", "ΟΔΟΣ", "[MASK] [mask]", "[CL\u200bS]"]) {
    assert.deepEqual(cased.encode(text).inputIds, (await rust.encode(text)).getIds(), text);
  }
  const stripped = BertTokenizer.fromVocab(vocab, { doLowerCase: false, stripAccents: true });
  assert.deepEqual(stripped.tokenize("café"), ["cafe"]);
});

Deno.test("extra added tokens (normalized or not) match as in Rust", async () => {
  const json = JSON.parse(fixtureJsonText);
  const added = (id: number, content: string, normalized: boolean) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized,
    special: false,
  });
  json.added_tokens.push(
    added(30522, "TinyStill", true),
    added(30523, "<Foo>", false),
    added(30524, "Café!", true),
  );
  const withAdded = new BertTokenizer(json);
  assert.equal(withAdded.vocabSize, 30525);
  assert.deepEqual(withAdded.tokenize("I like TINYSTILL"), ["i", "like", "TinyStill"]);
  const rust = rustTokenizer(JSON.stringify(json));
  const texts = [
    "I like tinystill and TINYSTILL.",
    "xtinystilly",
    "<Foo><foo> a<Foo>b",
    "cafe! CAFÉ! café",
    "tiny still",
    "[MASK]TinyStill[SEP]",
  ];
  for (const text of texts) {
    assert.deepEqual(withAdded.encode(text).inputIds, (await rust.encode(text)).getIds(), text);
  }
});

// ---------------------------------------------------------------------------------------------
// tokenizer.json building, loading and saving
// ---------------------------------------------------------------------------------------------

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tinystill-tok-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("buildTokenizerJson has BertTokenizerFast's components", () => {
  const json = buildTokenizerJson(vocab, { doLowerCase: true });
  assert.deepEqual(json.normalizer, {
    type: "BertNormalizer",
    clean_text: true,
    handle_chinese_chars: true,
    strip_accents: null,
    lowercase: true,
  });
  assert.deepEqual(json.pre_tokenizer, { type: "BertPreTokenizer" });
  assert.deepEqual(json.decoder, { type: "WordPiece", prefix: "##", cleanup: true });
  const { vocab: v, ...model } = json.model;
  assert.deepEqual(model, {
    type: "WordPiece",
    unk_token: "[UNK]",
    continuing_subword_prefix: "##",
    max_input_chars_per_word: 100,
  });
  assert.equal(Object.keys(v).length, 30522);
  assert.deepEqual(
    json.added_tokens.map((t) => [t.id, t.content, t.special, t.normalized]),
    [[0, "[PAD]", true, false], [100, "[UNK]", true, false], [101, "[CLS]", true, false], [
      102,
      "[SEP]",
      true,
      false,
    ], [103, "[MASK]", true, false]],
  );
  const post = json.post_processor as Record<string, unknown>;
  assert.equal(post.type, "TemplateProcessing");
  assert.deepEqual(post.pair, [
    { SpecialToken: { id: "[CLS]", type_id: 0 } },
    { Sequence: { id: "A", type_id: 0 } },
    { SpecialToken: { id: "[SEP]", type_id: 0 } },
    { Sequence: { id: "B", type_id: 1 } },
    { SpecialToken: { id: "[SEP]", type_id: 1 } },
  ]);
  assert.deepEqual(post.special_tokens, {
    "[CLS]": { id: "[CLS]", ids: [101], tokens: ["[CLS]"] },
    "[SEP]": { id: "[SEP]", ids: [102], tokens: ["[SEP]"] },
  });
  assert.throws(
    () => buildTokenizerJson(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "a"], { doLowerCase: true }),
    /vocab\[5\]/,
  );
  assert.throws(
    () => buildTokenizerJson(["[PAD]", "[UNK]", "[SEP]"], { doLowerCase: true }),
    /\[CLS\]/,
  );
});

Deno.test("a tokenizer built from vocab.txt equals the one loaded from tokenizer.json", async () => {
  await withTempDir(async (dir) => {
    await Deno.copyFile(join(FIXTURE, "vocab.txt"), join(dir, "vocab.txt"));
    const fromVocab = await loadTokenizer(dir);
    assert.deepEqual(fromVocab.toJSON(), tok.toJSON());
    assert.equal(tokenizerJsonText(fromVocab.toJSON()), fixtureJsonText);
    assert.deepEqual(fromVocab.tokenizerConfig(), tok.tokenizerConfig());
    const gen = new TextGen(7);
    for (let i = 0; i < 200; i++) {
      const [a, b] = [gen.text(), gen.text()];
      assert.deepEqual(
        fromVocab.encode(a, b, { maxLength: 64 }),
        tok.encode(a, b, { maxLength: 64 }),
      );
    }
  });
});

Deno.test("saveTokenizer writes the Hugging Face layout, byte for byte", async () => {
  await withTempDir(async (dir) => {
    await saveTokenizer(tok, dir);
    for (const file of ["vocab.txt", "tokenizer.json", "tokenizer_config.json"]) {
      assert.equal(
        await Deno.readTextFile(join(dir, file)),
        await Deno.readTextFile(join(FIXTURE, file)),
        file,
      );
    }
    const back = await loadTokenizer(dir);
    assert.deepEqual(back.toJSON(), tok.toJSON());
  });
});

Deno.test("tokenizer_config.json settings apply to both file kinds", async () => {
  await withTempDir(async (dir) => {
    await Deno.copyFile(join(FIXTURE, "vocab.txt"), join(dir, "vocab.txt"));
    const config = { do_lower_case: false, model_max_length: 128 };
    await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
    const fromVocab = await loadTokenizer(dir);
    assert.equal(fromVocab.doLowerCase, false);
    assert.equal(fromVocab.modelMaxLength, 128);
    assert.equal(fromVocab.encode(letters(300)).inputIds.length, 128);
    // As in BertTokenizerFast, the config overrides the tokenizer.json normalizer.
    await Deno.copyFile(join(FIXTURE, "tokenizer.json"), join(dir, "tokenizer.json"));
    const fromJson = await loadTokenizer(dir);
    assert.equal(fromJson.doLowerCase, false);
    assert.deepEqual(fromJson.toJSON(), fromVocab.toJSON());
  });
});

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Expect an InputError whose message contains every one of `parts`. */
async function rejectsWith(promise: Promise<unknown>, ...parts: string[]): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected an InputError, got ${e}`);
    for (const part of parts) assert.ok(e.message.includes(part), `"${e.message}" lacks "${part}"`);
    return true;
  });
}

const SPECIALS_TXT = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";

Deno.test("loadTokenizer errors name the file", async () => {
  await withTempDir(async (dir) => {
    const missing = join(dir, "nope");
    await rejectsWith(loadTokenizer(missing), missing, "not found");
    await rejectsWith(loadTokenizer(dir), dir, "tokenizer.json or vocab.txt");

    const vocabPath = join(dir, "vocab.txt");
    await Deno.writeTextFile(vocabPath, "");
    await rejectsWith(loadTokenizer(dir), vocabPath, "empty vocabulary");
    for (const token of ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]) {
      await Deno.writeTextFile(vocabPath, SPECIALS_TXT.replace(`${token}\n`, "") + "hello\n");
      await rejectsWith(loadTokenizer(dir), vocabPath, token);
    }
    await Deno.writeTextFile(vocabPath, SPECIALS_TXT + "hello\nworld\nhello\n");
    await rejectsWith(loadTokenizer(dir), vocabPath, "line 8", "also on line 6", "hello");
    await Deno.writeTextFile(vocabPath, SPECIALS_TXT + "hello\n\nworld\n");
    await rejectsWith(loadTokenizer(dir), vocabPath, "line 7", "empty token");
    await Deno.writeTextFile(vocabPath, SPECIALS_TXT + "hello\r\nworld\r\n");
    assert.equal((await loadTokenizer(dir)).vocabSize, 7); // CRLF line ends are fine

    const configPath = join(dir, "tokenizer_config.json");
    await Deno.writeTextFile(configPath, '{"do_lower_case": "yes"}');
    await rejectsWith(loadTokenizer(dir), configPath, "do_lower_case");
    await Deno.writeTextFile(configPath, "{oops");
    await rejectsWith(loadTokenizer(dir), configPath, "invalid JSON");
    await Deno.remove(configPath);

    const jsonPath = join(dir, "tokenizer.json");
    await Deno.writeTextFile(jsonPath, "{not json");
    await rejectsWith(loadTokenizer(dir), jsonPath, "invalid JSON");
    const bpe = { model: { type: "BPE", vocab: { a: 0 }, merges: [] } };
    await Deno.writeTextFile(jsonPath, JSON.stringify(bpe));
    await rejectsWith(loadTokenizer(dir), jsonPath, "WordPiece", "BPE");
    const json = buildTokenizerJson(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"], {
      doLowerCase: true,
    });
    const withoutCls = structuredClone(json);
    delete withoutCls.model.vocab["[CLS]"];
    withoutCls.model.vocab["[XLS]"] = 2;
    withoutCls.added_tokens = withoutCls.added_tokens.filter((t) => t.content !== "[CLS]");
    await Deno.writeTextFile(jsonPath, JSON.stringify(withoutCls));
    await rejectsWith(loadTokenizer(dir), jsonPath, "[CLS]");
    json.model.vocab["[CLS]"] = 7;
    await Deno.writeTextFile(jsonPath, JSON.stringify(json));
    await rejectsWith(loadTokenizer(dir), jsonPath, "not contiguous");
    json.model.vocab["[CLS]"] = 2;
    json.added_tokens[0].lstrip = true;
    await Deno.writeTextFile(jsonPath, JSON.stringify(json));
    await rejectsWith(loadTokenizer(dir), jsonPath, "lstrip");
  });
});
