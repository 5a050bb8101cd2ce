/**
 * Hugging Face checkpoint weights on disk: find and read `model.safetensors` (or a sharded
 * `model.safetensors.index.json`), normalize tensor names to the base-model layout, and write
 * them back under the names `transformers` expects.
 *
 * Normalized names are those of `BertModel` (`embeddings.*`, `encoder.*`, `pooler.*`) plus the
 * task heads as `transformers` names them (`classifier.*`, `cls.predictions.*`,
 * `cls.seq_relationship.*`).
 * @module
 */

import { exists } from "../store/fsutil.ts";
import { basename, join } from "node:path";
import { InputError } from "../errors.ts";
import { type FloatDType, readSafetensors, writeSafetensors } from "./safetensors.ts";

/** One float tensor of a checkpoint. */
export interface CheckpointTensor {
  shape: number[];
  data: Float32Array;
  /** The dtype it was stored as. */
  dtype: FloatDType;
}

/** What {@link readCheckpointTensors} found. */
export interface CheckpointTensors {
  /** Tensors under normalized names. */
  tensors: Map<string, CheckpointTensor>;
  /** The file read: `model.safetensors` or `model.safetensors.index.json`. */
  file: string;
  /** Names (as stored) of the buffers dropped: `embeddings.position_ids`, integer tensors. */
  dropped: string[];
}

/** Options of {@link writeCheckpointTensors}. */
export interface WriteCheckpointOptions {
  /** Storage dtype; default `"F32"`. */
  dtype?: FloatDType;
  /**
   * Prefix base-model tensors with `bert.`, as a model with a task head
   * (`BertForSequenceClassification`, `BertForMaskedLM`) names them.
   */
  prefixBase: boolean;
  /** Extra `__metadata__` entries (`format: "pt"` is always present). */
  metadata?: Record<string, string>;
}

/** The single-file weights name. */
export const SAFETENSORS_FILE = "model.safetensors";
/** The index of a sharded safetensors checkpoint. */
export const SAFETENSORS_INDEX_FILE = "model.safetensors.index.json";

/** Weight files of other frameworks that tinystill does not read. */
const OTHER_WEIGHT_FILES = [
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
  "tf_model.h5",
  "tf_model.h5.index.json",
  "flax_model.msgpack",
  "flax_model.msgpack.index.json",
];

const BASE_PREFIXES = ["embeddings.", "encoder.", "pooler."];

function isBaseName(name: string): boolean {
  return BASE_PREFIXES.some((p) => name.startsWith(p));
}

/**
 * The normalized name of a stored tensor, or `undefined` for a buffer to drop: strips `bert.`
 * from base-model names and renames legacy LayerNorm `gamma`/`beta` to `weight`/`bias`.
 */
export function normalizeTensorName(name: string): string | undefined {
  let n = name.startsWith("bert.") && isBaseName(name.slice(5)) ? name.slice(5) : name;
  if (n === "embeddings.position_ids") return undefined;
  n = n.replace(/\.gamma$/, ".weight").replace(/\.beta$/, ".bias");
  return n;
}

function conversionHint(dir: string): string {
  return "Convert it to safetensors, e.g. in Python: " +
    "`from transformers import AutoModel; " +
    `m = AutoModel.from_pretrained("${dir}"); ` +
    `m.save_pretrained("${dir}", safe_serialization=True)\`` +
    " (use the AutoModelFor... class of the checkpoint to keep its task head)";
}

/** Read the shards listed by a `model.safetensors.index.json`. */
async function readSharded(dir: string, indexPath: string) {
  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (e) {
    throw new InputError(`cannot read the shard index: ${(e as Error).message}`, {
      file: indexPath,
    }, { cause: e });
  }
  const weightMap = (index as { weight_map?: unknown })?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new InputError("invalid shard index", {
      file: indexPath,
      field: "weight_map",
      expected: '{"tensor name": "shard file"}',
      got: JSON.stringify(weightMap) ?? "nothing",
    });
  }
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard !== basename(shard) || shard.startsWith(".")) {
      throw new InputError("invalid shard file name", {
        file: indexPath,
        field: `weight_map.${name}`,
        expected: "a file name in the checkpoint directory",
        got: JSON.stringify(shard),
      });
    }
    byShard.set(shard, [...(byShard.get(shard) ?? []), name]);
  }
  const tensors = new Map<string, { dtype: FloatDType; shape: number[]; data: Float32Array }>();
  const skipped: string[] = [];
  for (const [shard, names] of byShard) {
    const shardPath = join(dir, shard);
    const st = await readSafetensors(shardPath);
    const ints = new Set(st.skipped.map((s) => s.name));
    for (const name of names) {
      const t = st.tensors.get(name);
      if (t) tensors.set(name, t);
      else if (ints.has(name)) skipped.push(name);
      else {
        throw new InputError("tensor listed in the shard index is missing from its shard", {
          file: shardPath,
          field: name,
          hint: `It is listed in ${indexPath}`,
        });
      }
    }
  }
  return { tensors, skipped };
}

/**
 * Read the weights of the checkpoint in `dir` (`model.safetensors`, or a sharded
 * `model.safetensors.index.json`) under normalized names. Throws {@link InputError} for a
 * missing directory, a checkpoint in another format (with the conversion command), or a name
 * clash after normalization.
 */
export async function readCheckpointTensors(dir: string): Promise<CheckpointTensors> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    throw new InputError("checkpoint directory not found", { file: dir }, { cause: e });
  }
  if (!info.isDirectory) {
    throw new InputError("not a directory", {
      file: dir,
      expected: "a checkpoint directory holding config.json and model.safetensors",
      got: "a file",
    });
  }

  let file = join(dir, SAFETENSORS_FILE);
  let stored: Map<string, { dtype: FloatDType; shape: number[]; data: Float32Array }>;
  let dropped: string[];
  if (await exists(file)) {
    const st = await readSafetensors(file);
    stored = st.tensors;
    dropped = st.skipped.map((s) => s.name);
  } else if (await exists(join(dir, SAFETENSORS_INDEX_FILE))) {
    file = join(dir, SAFETENSORS_INDEX_FILE);
    const sh = await readSharded(dir, file);
    stored = sh.tensors;
    dropped = sh.skipped;
  } else {
    const other: string[] = [];
    for (const f of OTHER_WEIGHT_FILES) if (await exists(join(dir, f))) other.push(f);
    if (other.length > 0) {
      throw new InputError("tinystill reads only safetensors weights", {
        file: dir,
        expected: SAFETENSORS_FILE,
        got: other.join(", "),
        hint: conversionHint(dir),
      });
    }
    throw new InputError("no model weights found", {
      file: dir,
      expected: `${SAFETENSORS_FILE} or ${SAFETENSORS_INDEX_FILE}`,
      got: "neither",
    });
  }

  const tensors = new Map<string, CheckpointTensor>();
  const from = new Map<string, string>();
  for (const [name, t] of stored) {
    const norm = normalizeTensorName(name);
    if (norm === undefined) {
      dropped.push(name);
      continue;
    }
    const prev = from.get(norm);
    if (prev !== undefined) {
      throw new InputError("two tensors have the same name after normalization", {
        file,
        field: norm,
        got: `${prev} and ${name}`,
      });
    }
    from.set(norm, name);
    tensors.set(norm, { shape: t.shape, data: t.data, dtype: t.dtype });
  }
  return { tensors, file, dropped };
}

/**
 * Write `tensors` (normalized names) to `dir/model.safetensors` under the names `transformers`
 * loads: with `prefixBase`, base-model tensors get the `bert.` prefix of task-head models.
 * Returns the path written.
 */
export async function writeCheckpointTensors(
  dir: string,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  opts: WriteCheckpointOptions,
): Promise<string> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of tensors) {
    const hfName = opts.prefixBase && isBaseName(name) ? `bert.${name}` : name;
    out.set(hfName, { shape: t.shape, data: t.data });
  }
  const path = join(dir, SAFETENSORS_FILE);
  await writeSafetensors(path, out, { dtype: opts.dtype, metadata: opts.metadata });
  return path;
}
