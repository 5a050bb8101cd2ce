/**
 * Reading and writing a tokenizer in the Hugging Face layout: `vocab.txt`, `tokenizer.json`,
 * `tokenizer_config.json`.
 * @module
 */

import { join } from "node:path";
import { InputError } from "../../errors.ts";
import { writeFileAtomic, writeJsonAtomic } from "../../store/fsutil.ts";
import { BertTokenizer } from "./tokenizer.ts";
import { isObject, SPECIAL_TOKENS, tokenizerJsonText } from "./tokenizer_json.ts";

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
