/**
 * Load and save a {@link Bert} in the Hugging Face layout: `config.json` + `model.safetensors`
 * (F32, F16 or BF16; with or without the `bert.` prefix; legacy `gamma`/`beta` names).
 *
 * Tensor names are the model's own parameter names (see `bert.ts`), so loading is a lookup plus
 * shape checks; every mismatch is an {@link InputError} naming the file and the tensor.
 * @module
 */

import { join } from "node:path";
import { Bert, type BertHeads, type Param, parameterShapes } from "./bert.ts";
import {
  type CheckpointTensor,
  readCheckpointTensors,
  writeCheckpointTensors,
} from "./checkpoint_files.ts";
import { type BertConfig, numLabels, readConfig, writeConfig } from "./config.ts";
import { InputError } from "../errors.ts";
import type { FloatDType } from "./safetensors.ts";

/** Options of {@link loadBert}. */
export interface LoadBertOptions {
  /**
   * Heads to build. Default: the heads whose tensors the checkpoint has. A head asked for but
   * absent from the checkpoint is freshly initialised (as `from_pretrained` does) and listed in
   * {@link LoadedBert.newlyInitialized}.
   */
  heads?: Partial<BertHeads>;
  /** Seed for freshly initialised tensors. */
  seed?: number;
  /** Replace `id2label` (e.g. to put a classifier for a new task on a pretrained encoder). */
  id2label?: Record<string, string>;
}

/** A loaded model plus what the loader had to do to it. */
export interface LoadedBert extends Bert {
  /** Parameters that were not in the checkpoint and got a fresh initialisation. */
  newlyInitialized?: string[];
  /** Tensors in the checkpoint that this model does not use (e.g. an NSP head). */
  unusedTensors?: string[];
}

const TIED_OR_UNUSED = /^(cls\.predictions\.decoder\.weight|cls\.seq_relationship\.)/;

function fmtShape(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

/** Read a Hugging Face BERT checkpoint directory. */
export async function loadBert(dir: string, opts: LoadBertOptions = {}): Promise<LoadedBert> {
  let config: BertConfig = await readConfig(dir);
  if (opts.id2label) {
    const label2id = Object.fromEntries(Object.entries(opts.id2label).map(([k, v]) => [v, +k]));
    config = { ...config, id2label: opts.id2label, label2id };
  }
  const { tensors, file } = await readCheckpointTensors(dir);
  // A classifier in the weights but no labels in config.json: name them LABEL_i from its width,
  // as transformers does, rather than silently dropping the head.
  const classifier = tensors.get("classifier.weight");
  if (classifier && numLabels(config) === 0 && opts.heads?.classifier !== false) {
    const names = Array.from({ length: classifier.shape[0] }, (_, i) => `LABEL_${i}`);
    config = {
      ...config,
      id2label: Object.fromEntries(names.map((n, i) => [String(i), n])),
      label2id: Object.fromEntries(names.map((n, i) => [n, i])),
    };
  }
  // Newer checkpoints store the MLM bias as decoder.bias (tied to cls.predictions.bias).
  if (!tensors.has("cls.predictions.bias") && tensors.has("cls.predictions.decoder.bias")) {
    tensors.set("cls.predictions.bias", tensors.get("cls.predictions.decoder.bias")!);
  }
  tensors.delete("cls.predictions.decoder.bias");
  const arch = config.architectures ?? [];
  const heads: BertHeads = {
    classifier: opts.heads?.classifier ??
      (tensors.has("classifier.weight") && numLabels(config) > 0),
    mlm: opts.heads?.mlm ?? tensors.has("cls.predictions.transform.dense.weight"),
  };
  // the classifier of a token-classification checkpoint labels every token
  const tokenClassifier = opts.heads?.tokenClassifier ??
    arch.includes("BertForTokenClassification");
  if (heads.classifier && tokenClassifier) heads.tokenClassifier = true;
  if (opts.heads?.qa ?? tensors.has("qa_outputs.weight")) heads.qa = true;
  if (heads.classifier && numLabels(config) < 1) {
    throw new InputError("a classifier head needs labels", {
      file: join(dir, "config.json"),
      field: "id2label",
      expected: "at least one label",
      got: JSON.stringify(config.id2label ?? null),
    });
  }
  const shapes = parameterShapes(config, heads);

  // Every tensor of the encoder must be there, with the shape the config implies.
  const missing: string[] = [];
  for (const [name, shape] of shapes) {
    const t = tensors.get(name);
    if (!t) {
      missing.push(name);
      continue;
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new InputError("tensor shape does not match config.json", {
        file,
        field: name,
        expected: fmtShape(shape),
        got: fmtShape(t.shape),
        hint: `Check ${join(dir, "config.json")} against the weights.`,
      });
    }
  }
  const optional = (n: string) =>
    n.startsWith("pooler.") || n.startsWith("classifier.") || n.startsWith("cls.predictions.") ||
    n.startsWith("qa_outputs.");
  const required = missing.filter((n) => !optional(n));
  if (required.length > 0) {
    throw new InputError(`${required.length} tensor(s) missing`, {
      file,
      field: required.slice(0, 5).join(", ") + (required.length > 5 ? ", …" : ""),
      expected: `all ${shapes.size} tensors of a ${config.num_hidden_layers}-layer BERT`,
      got: `${tensors.size} tensors`,
    });
  }
  const unused = [...tensors.keys()].filter((n) => !shapes.has(n));
  const stray = unused.filter((n) => /^(embeddings|encoder|pooler)\./.test(n));
  if (stray.length > 0) {
    throw new InputError("tensor not part of the model that config.json describes", {
      file,
      field: stray[0],
      hint: `num_hidden_layers is ${config.num_hidden_layers}; is config.json from another model?`,
    });
  }

  const fresh = missing.length > 0 ? Bert.create(config, heads, opts.seed ?? 0) : null;
  const values = new Map<string, Param>();
  for (const [name, shape] of shapes) {
    const t: CheckpointTensor | undefined = tensors.get(name);
    values.set(name, t ? { data: t.data, shape } : fresh!.p(name));
  }
  const bert = new Bert(config, heads, values) as LoadedBert;
  if (missing.length > 0) bert.newlyInitialized = missing;
  const ignored = unused.filter((n) => !TIED_OR_UNUSED.test(n));
  if (unused.length > 0) bert.unusedTensors = unused;
  if (ignored.length > 0) {
    console.warn(`loadBert: ${file}: ignoring ${ignored.length} tensor(s): ${ignored.join(", ")}`);
  }
  return bert;
}

/** Options of {@link saveBert}. */
export interface SaveBertOptions {
  /** Weight dtype in `model.safetensors` (default F32). */
  dtype?: FloatDType;
  /** Extra `__metadata__` entries. */
  metadata?: Record<string, string>;
}

/** The Hugging Face class that loads a model with these heads. */
export function architectureOf(heads: BertHeads): string {
  if (heads.qa) return "BertForQuestionAnswering";
  if (heads.classifier && heads.tokenClassifier) return "BertForTokenClassification";
  if (heads.classifier) return "BertForSequenceClassification";
  if (heads.mlm) return "BertForMaskedLM";
  return "BertModel";
}

/**
 * Write `config.json` and `model.safetensors` into `dir` (each file atomically). Models with a
 * head get the `bert.` prefix on encoder tensors, as `transformers` writes them.
 */
export async function saveBert(bert: Bert, dir: string, opts: SaveBertOptions = {}): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  // token classification and QA models have no pooler in transformers (add_pooling_layer=False)
  const pooler = !(bert.heads.qa || (bert.heads.classifier && bert.heads.tokenClassifier));
  for (const [name, v] of bert.modelParams()) {
    if (!pooler && name.startsWith("pooler.")) continue;
    tensors.set(name, { shape: v.shape, data: v.data });
  }
  await writeCheckpointTensors(dir, tensors, {
    dtype: opts.dtype ?? "F32",
    prefixBase: bert.heads.classifier || bert.heads.mlm || !!bert.heads.qa,
    metadata: { format: "pt", producer: "tinystill", ...opts.metadata },
  });
  await writeConfig(dir, {
    ...bert.config,
    architectures: [architectureOf(bert.heads)],
    torch_dtype: { F32: "float32", F16: "float16", BF16: "bfloat16" }[opts.dtype ?? "F32"],
  });
}
