/**
 * Hugging Face `BertConfig`: the keys of `config.json`, their defaults, and validation.
 *
 * Field names are the Hugging Face ones (snake_case) so a config read from a checkpoint and one
 * written by tinystill are interchangeable with `transformers.BertConfig`.
 * @module
 */

import { join } from "node:path";
import { InputError, showValue as show } from "../errors.ts";
import { writeJsonAtomic } from "../store/fsutil.ts";

/** The keys of a Hugging Face `config.json` for BERT that tinystill reads and writes. */
export interface BertConfig {
  model_type: "bert";
  architectures?: string[];
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  hidden_act: "gelu" | "gelu_new" | "relu";
  hidden_dropout_prob: number;
  attention_probs_dropout_prob: number;
  max_position_embeddings: number;
  type_vocab_size: number;
  initializer_range: number;
  layer_norm_eps: number;
  pad_token_id: number;
  /** Classifier labels; their count sets the classification head width. */
  id2label?: Record<string, string>;
  label2id?: Record<string, number>;
  /** `"regression"` for a 1-output head trained with MSE. */
  problem_type?:
    | "single_label_classification"
    | "multi_label_classification"
    | "regression";
  classifier_dropout?: number | null;
  position_embedding_type?: "absolute";
  torch_dtype?: string;
  [extra: string]: unknown;
}

/** Defaults of `transformers.BertConfig` (bert-base-uncased shape). */
export const BERT_DEFAULTS: BertConfig = {
  model_type: "bert",
  vocab_size: 30522,
  hidden_size: 768,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  intermediate_size: 3072,
  hidden_act: "gelu",
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  max_position_embeddings: 512,
  type_vocab_size: 2,
  initializer_range: 0.02,
  layer_norm_eps: 1e-12,
  pad_token_id: 0,
};

/** Keys `readConfig` requires in `config.json`: they fix the shapes of the weights. */
export const REQUIRED_CONFIG_KEYS = [
  "vocab_size",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "intermediate_size",
] as const;

/** Activation functions the model implements. */
export const HIDDEN_ACTS: readonly BertConfig["hidden_act"][] = ["gelu", "gelu_new", "relu"];

const PROBLEM_TYPES = [
  "single_label_classification",
  "multi_label_classification",
  "regression",
] as const;

const POSITIVE_INT_KEYS = [
  ...REQUIRED_CONFIG_KEYS,
  "max_position_embeddings",
  "type_vocab_size",
] as const;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v);
}

/** `line L column C` of a JSON.parse failure, from V8's message or its byte position. */
function jsonErrorLocation(text: string, err: Error): string | undefined {
  const lc = /line (\d+) column (\d+)/.exec(err.message);
  if (lc) return `line ${lc[1]} column ${lc[2]}`;
  const pos = /position (\d+)/.exec(err.message);
  const at = pos ? Number(pos[1]) : /end of JSON/.test(err.message) ? text.length : undefined;
  if (at === undefined) return undefined;
  const before = text.slice(0, at).split("\n");
  return `line ${before.length} column ${before[before.length - 1].length + 1}`;
}

/**
 * Validate a config object and fill defaults for absent (or `undefined`) keys. Unknown keys are
 * kept. `num_labels` without `id2label` becomes `id2label`/`label2id` with `LABEL_i` names, as in
 * `transformers`. Throws {@link InputError} whose file is `source`.
 */
function validateConfig(raw: Record<string, unknown>, source: string): BertConfig {
  const cfg: Record<string, unknown> = { ...raw };
  for (const [k, v] of Object.entries(BERT_DEFAULTS)) if (cfg[k] === undefined) cfg[k] = v;
  const fail = (field: string, expected: string, message = "invalid value") =>
    new InputError(message, { file: source, field, expected, got: show(cfg[field]) });

  if (cfg.model_type !== "bert") {
    throw new InputError("unsupported model_type", {
      file: source,
      field: "model_type",
      expected: '"bert"',
      got: show(cfg.model_type),
      hint: "tinystill reads BERT checkpoints only",
    });
  }
  for (const k of POSITIVE_INT_KEYS) {
    if (!isInt(cfg[k]) || cfg[k] <= 0) throw fail(k, "positive integer");
  }
  const vocab = cfg.vocab_size as number;
  if (!isInt(cfg.pad_token_id) || cfg.pad_token_id < 0 || cfg.pad_token_id >= vocab) {
    throw fail("pad_token_id", `integer in [0, vocab_size = ${vocab})`);
  }
  for (const k of ["hidden_dropout_prob", "attention_probs_dropout_prob"]) {
    const v = cfg[k];
    if (typeof v !== "number" || !(v >= 0 && v <= 1)) throw fail(k, "number in [0, 1]");
  }
  if (cfg.classifier_dropout !== undefined && cfg.classifier_dropout !== null) {
    const v = cfg.classifier_dropout;
    if (typeof v !== "number" || !(v >= 0 && v <= 1)) {
      throw fail("classifier_dropout", "null or number in [0, 1]");
    }
  }
  for (const k of ["initializer_range", "layer_norm_eps"]) {
    const v = cfg[k];
    if (typeof v !== "number" || !(v > 0 && Number.isFinite(v))) throw fail(k, "positive number");
  }
  if (!HIDDEN_ACTS.includes(cfg.hidden_act as BertConfig["hidden_act"])) {
    throw fail("hidden_act", `one of ${HIDDEN_ACTS.map((a) => `"${a}"`).join(", ")}`);
  }
  const hidden = cfg.hidden_size as number;
  const heads = cfg.num_attention_heads as number;
  if (hidden % heads !== 0) {
    throw fail(
      "hidden_size",
      `a multiple of num_attention_heads (${heads})`,
      "hidden_size is not divisible by num_attention_heads",
    );
  }
  if (
    cfg.architectures !== undefined &&
    !(Array.isArray(cfg.architectures) && cfg.architectures.every((a) => typeof a === "string"))
  ) {
    throw fail("architectures", "array of strings");
  }
  if (cfg.position_embedding_type !== undefined && cfg.position_embedding_type !== "absolute") {
    throw fail("position_embedding_type", '"absolute"', "unsupported position embedding type");
  }
  for (const k of ["problem_type", "torch_dtype"]) if (cfg[k] === null) delete cfg[k];
  if (
    cfg.problem_type !== undefined &&
    !PROBLEM_TYPES.includes(cfg.problem_type as typeof PROBLEM_TYPES[number])
  ) {
    throw fail("problem_type", `one of ${PROBLEM_TYPES.map((p) => `"${p}"`).join(", ")}`);
  }
  if (cfg.torch_dtype !== undefined && typeof cfg.torch_dtype !== "string") {
    throw fail("torch_dtype", "string");
  }
  validateLabels(cfg, source, fail);
  return cfg as BertConfig;
}

/** Check `id2label`/`label2id` (and turn a bare `num_labels` into them). */
function validateLabels(
  cfg: Record<string, unknown>,
  source: string,
  fail: (field: string, expected: string, message?: string) => InputError,
): void {
  if (cfg.num_labels !== undefined) {
    const n = cfg.num_labels;
    if (!isInt(n) || n < 0) throw fail("num_labels", "non-negative integer");
    if (cfg.id2label === undefined) {
      const names = Array.from({ length: n }, (_, i) => `LABEL_${i}`);
      cfg.id2label = Object.fromEntries(names.map((name, i) => [String(i), name]));
      cfg.label2id ??= Object.fromEntries(names.map((name, i) => [name, i]));
    } else if (isRecord(cfg.id2label) && Object.keys(cfg.id2label).length !== n) {
      throw new InputError("num_labels disagrees with id2label", {
        file: source,
        field: "num_labels",
        expected: `${Object.keys(cfg.id2label).length} (the size of id2label)`,
        got: show(n),
      });
    }
    delete cfg.num_labels;
  }
  if (cfg.id2label !== undefined) {
    const m = cfg.id2label;
    if (!isRecord(m)) throw fail("id2label", 'object {"0": "label", ...}');
    const n = Object.keys(m).length;
    for (let i = 0; i < n; i++) {
      if (typeof m[String(i)] !== "string") {
        throw new InputError("invalid label map", {
          file: source,
          field: `id2label.${i}`,
          expected: `a label name for every id 0..${n - 1}`,
          got: show(m[String(i)]),
        });
      }
    }
    // transformers writes both maps; derive the inverse when only id2label is given
    cfg.label2id ??= Object.fromEntries(Object.entries(m).map(([id, name]) => [name, Number(id)]));
  }
  if (cfg.label2id !== undefined) {
    const m = cfg.label2id;
    if (!isRecord(m)) throw fail("label2id", 'object {"label": 0, ...}');
    for (const [name, id] of Object.entries(m)) {
      if (!isInt(id) || id < 0) {
        throw new InputError("invalid label map", {
          file: source,
          field: `label2id.${name}`,
          expected: "non-negative integer",
          got: show(id),
        });
      }
    }
  }
}

/**
 * Read and validate `dir/config.json`. Missing optional keys get the `transformers` defaults;
 * unknown keys are kept. Throws {@link InputError} naming the file and the key.
 */
export async function readConfig(dir: string): Promise<BertConfig> {
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const missing = e instanceof Deno.errors.NotFound;
    throw new InputError(missing ? "file not found" : `cannot read: ${(e as Error).message}`, {
      file: path,
      hint: missing
        ? "A BERT checkpoint directory holds config.json next to its weights"
        : undefined,
    }, { cause: e });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    const reason = (e as Error).message.replace(/ in JSON at position \d+.*$/s, "");
    throw new InputError(`invalid JSON: ${reason}`, {
      file: path,
      field: jsonErrorLocation(text, e as Error),
    }, { cause: e });
  }
  if (!isRecord(raw)) {
    throw new InputError("not a JSON object", { file: path, expected: "{...}", got: show(raw) });
  }
  for (const k of REQUIRED_CONFIG_KEYS) {
    if (raw[k] === undefined) {
      throw new InputError("missing required key", {
        file: path,
        field: k,
        expected: "positive integer",
        got: "nothing",
      });
    }
  }
  return validateConfig(raw, path);
}

/**
 * Build a config in code: `BERT_DEFAULTS` overridden by `partial`, validated like
 * {@link readConfig} (errors name the file `config`).
 */
export function makeConfig(partial: Partial<BertConfig> = {}): BertConfig {
  return validateConfig(partial, "config");
}

/**
 * Validate `config` and write it to `dir/config.json` atomically, keys sorted (as
 * `transformers` writes them), with `model_type: "bert"`. Returns the path written.
 */
export async function writeConfig(dir: string, config: BertConfig): Promise<string> {
  const path = join(dir, "config.json");
  const valid = validateConfig({ ...config, model_type: "bert" }, path);
  const sorted = Object.fromEntries(
    Object.keys(valid).sort().map((k) => [k, valid[k]]),
  );
  await writeJsonAtomic(path, sorted);
  return path;
}

/** Number of classifier labels (size of `id2label`); 0 when the config has none. */
export function numLabels(config: BertConfig): number {
  return config.id2label ? Object.keys(config.id2label).length : 0;
}

/** The label names in index order (`id2label["0"]`, `["1"]`, …); empty when the config has none. */
export function labelNames(config: BertConfig): string[] {
  return Array.from({ length: numLabels(config) }, (_, i) => config.id2label![i]);
}
