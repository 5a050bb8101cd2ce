/**
 * The pipeline file: a YAML document naming the data, the teacher, the student and an ordered
 * list of stages with their params, validated by a zod schema. Every problem is reported as
 * `file:line:col: path: what is wrong` (mostly `expected …, got …`); `lr: "x"` on line 32 of
 * `tasks/spam.yaml` gives
 * `tasks/spam.yaml:32:11: stages[1].finetune@teacher.lr: expected number, got "x"`.
 *
 * Stage params are validated by the schema of each stage kind passed in (`BUILTIN_STAGES`, or
 * your own list), so the stage modules own their params (TextBrewer/torchdistill style: the
 * experiment is the file). Nothing is registered globally: the kinds a file may use are the ones
 * its caller names.
 * @module
 */

import { LineCounter, parseDocument, stringify } from "yaml";
import { z } from "zod";
import type { DatasetSpec } from "../data/types.ts";
import { InputError, showValue as show } from "../errors.ts";

/** Backends a pipeline may ask for (see `backend.ts`). */
export const BACKENDS = ["auto", "wasm", "cpu", "tensorflow", "tensorflow-gpu", "webgpu"] as const;

/** Where a dataset comes from and which columns hold what (see `pipeline/data/`). */
export const DatasetSchema = z.strictObject({
  format: z.enum([
    "csv",
    "tsv",
    "jsonl",
    "parquet",
    "spam-assassin",
    "brown",
    "brown-pos",
    "sotu",
    "moby-dick",
  ]),
  /** One file holding every split (split by `split`), relative to the pipeline file. */
  path: z.string().min(1).optional(),
  train: z.string().min(1).optional(),
  dev: z.string().min(1).optional(),
  test: z.string().min(1).optional(),
  text_column: z.string().min(1).optional(),
  text_pair_column: z.string().min(1).optional(),
  label_column: z.string().min(1).optional(),
  /** The label order; must match the teacher's id2label. Inferred (sorted) when absent. */
  labels: z.array(z.string().min(1)).min(1).optional(),
  /**
   * `regression`: the label column holds numbers (STS-B style); `token-classification`: a list
   * of words (`words_column`, default `tokens`) and one tag per word (`label_column`, default
   * `tags`); `question-answering`: question, context and SQuAD-style answers.
   */
  task: z.enum(["classification", "regression", "token-classification", "question-answering"])
    .optional(),
  /** Token classification: the column with each example's words (default `tokens`). */
  words_column: z.string().min(1).optional(),
  /** Extractive QA: the column with the answers (default `answers`). */
  answers_column: z.string().min(1).optional(),
  split: z.strictObject({
    dev: z.number().min(0).max(0.5).default(0.1),
    test: z.number().min(0).max(0.5).default(0.1),
    seed: z.number().int().default(42),
  }).optional(),
  /** Keep at most this many examples per source, sampled by the split seed. */
  limit: z.number().int().positive().optional(),
  /** TSV only: honour double quotes like CSV (GLUE TSVs are unquoted). */
  quote: z.boolean().optional(),
  /** Drop the examples whose text occurs in these splits of another dataset of this file. */
  exclude: z.strictObject({
    dataset: z.string().min(1),
    splits: z.array(z.enum(["train", "dev", "test"])).min(1).default(["dev", "test"]),
  }).optional(),
  /**
   * Keep the labels of this many training examples (chosen by the split seed) and drop the
   * rest's: the unlabeled rows feed teacher-forward and distillation, not `finetune`.
   */
  labelled: z.number().int().min(0).optional(),
  /** Drop every label of these splits at load (`true`: all of them). */
  drop_labels: z.union([z.boolean(), z.array(z.enum(["train", "dev", "test"])).min(1)])
    .optional(),
}) satisfies z.ZodType<Omit<DatasetSpec, "name">>;

/** A model the pipeline reads (`checkpoint`) or builds from a Hugging Face `config`. */
export const ModelSchema = z.strictObject({
  /** A Hugging Face checkpoint directory (config.json + model.safetensors). */
  checkpoint: z.string().min(1).optional(),
  /** BertConfig keys for a model built by the pipeline (validated again when built). */
  config: z.record(z.string(), z.unknown()).optional(),
  /** Tokenizer directory (vocab.txt or tokenizer.json); default: the checkpoint's. */
  tokenizer: z.string().min(1).optional(),
  /** How a student starts: random, from chosen teacher layers, or from `checkpoint`. */
  init: z.enum(["random", "teacher-layers", "checkpoint"]).optional(),
}).refine((m) => m.checkpoint !== undefined || m.config !== undefined, {
  message: "expected `checkpoint` or `config`",
});

/** What parsing needs of a stage kind: its name in pipeline files and its params schema. */
export interface StageKind {
  name: string;
  params: z.ZodType;
}

/** Stage kinds by name (what a parsed pipeline carries to the runner). */
export type StageKinds = ReadonlyMap<string, StageKind>;

/** Index a list of stage kinds by name, refusing two kinds of one name. */
export function stageKinds(list: readonly StageKind[]): StageKinds {
  const kinds = new Map<string, StageKind>();
  for (const k of list) {
    if (kinds.has(k.name)) throw new Error(`two stage kinds are named "${k.name}"`);
    kinds.set(k.name, k);
  }
  return kinds;
}

/**
 * The stage kind of a stage key: a pipeline may run one kind twice as `kind@label`
 * (e.g. `distill@general`, `distill@task`); the key names its outputs, the kind its code.
 */
export function stageKind(key: string): string {
  return key.split("@")[0];
}

/** The schema of the whole file (built from the given stage kinds). */
export function pipelineSchema(kinds: StageKinds) {
  const known = () => [...kinds.keys()].join(", ");
  const stage = z.record(z.string(), z.unknown()).superRefine((entry, ctx) => {
    const keys = Object.keys(entry);
    if (keys.length !== 1) {
      ctx.addIssue({
        code: "custom",
        message: `expected one stage name as the only key, got ${
          keys.length ? keys.map((k) => JSON.stringify(k)).join(", ") : "none"
        }`,
      });
      return;
    }
    const name = keys[0];
    const schema = kinds.get(stageKind(name))?.params;
    if (!schema) {
      ctx.addIssue({
        code: "custom",
        path: [name],
        message: `unknown stage "${stageKind(name)}" (known: ${known()})`,
        params: { atKey: true },
      });
      return;
    }
    const res = schema.safeParse(entry[name] ?? {}, { reportInput: true });
    if (!res.success) {
      for (const issue of res.error.issues) {
        ctx.addIssue({ ...issue, path: [name, ...issue.path] } as z.core.$ZodRawIssue);
      }
    } else {
      entry[name] = res.data;
    }
  });
  return z.strictObject({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "a name of letters, digits, . _ -"),
    seed: z.number().int().default(42),
    backend: z.enum(BACKENDS).default("auto"),
    /** Root of the stage outputs: `<output_dir>/<name>/<stage>-<hash>/`. */
    output_dir: z.string().min(1).default("runs"),
    datasets: z.record(z.string(), DatasetSchema).default({}),
    teacher: ModelSchema.optional(),
    student: ModelSchema.optional(),
    stages: z.array(stage).min(1),
  });
}

/** A validated pipeline file with every default filled in. */
export interface Pipeline {
  name: string;
  seed: number;
  backend: (typeof BACKENDS)[number];
  output_dir: string;
  datasets: Record<string, z.infer<typeof DatasetSchema>>;
  teacher?: z.infer<typeof ModelSchema>;
  student?: z.infer<typeof ModelSchema>;
  /** Each entry is `{ stageName: params }` with the stage's defaults applied. */
  stages: Record<string, Record<string, unknown>>[];
  /** The file it was read from (for relative paths and messages). */
  file: string;
  /** The stage kinds it was validated against, which the runner runs. */
  kinds: StageKinds;
}

function pathString(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out || "(top level)";
}

/** "expected …, got …" for one zod issue, in plain words. */
function describe(issue: z.core.$ZodIssue): string {
  const got = "input" in issue ? show(issue.input) : undefined;
  switch (issue.code) {
    case "invalid_type": {
      const expected = issue.expected === "number" && issue.message.includes("int")
        ? "integer"
        : issue.expected;
      return `expected ${expected}, got ${got}`;
    }
    case "too_big":
      return `expected ${issue.origin === "number" ? "number" : `${issue.origin} length`} ` +
        `${issue.inclusive ? "≤" : "<"} ${issue.maximum}, got ${got}`;
    case "too_small":
      return `expected ${issue.origin === "number" ? "number" : `${issue.origin} length`} ` +
        `${issue.inclusive ? "≥" : ">"} ${issue.minimum}, got ${
          issue.origin === "number" ? got : show((issue.input as { length?: number })?.length)
        }`;
    case "unrecognized_keys":
      return `unknown key${issue.keys.length > 1 ? "s" : ""} ${
        issue.keys.map((k) => JSON.stringify(k)).join(", ")
      }`;
    case "invalid_value":
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}, got ${got}`;
    case "invalid_format":
      return `expected ${issue.format}, got ${got}`;
    case "invalid_union": {
      // no branch came close: name what each would have taken
      const wants = issue.errors.flatMap((branch) =>
        branch.slice(0, 1).flatMap((b) =>
          b.code === "invalid_value"
            ? b.values.map((v) => JSON.stringify(v))
            : b.code === "invalid_type"
            ? [b.expected === "array" ? "a list" : `a ${b.expected}`]
            : []
        )
      );
      return wants.length
        ? `expected ${wants.slice(0, -1).join(", ")}${wants.length > 1 ? " or " : ""}${
          wants.at(-1)
        }, got ${got}`
        : `${issue.message}, got ${got}`;
    }
    case "custom":
      return issue.params?.atKey ? issue.message : `${issue.message}${got ? `, got ${got}` : ""}`;
    default:
      return got !== undefined && !issue.message.includes("got")
        ? `${issue.message}, got ${got}`
        : issue.message;
  }
}

/**
 * Parse and validate a pipeline file's text. Throws one {@link InputError} listing every problem
 * (`file:line:col: path: expected …, got …`), the first also in `field`/`expected`/`got`.
 */
export function parsePipeline(
  text: string,
  file: string,
  stages: readonly StageKind[],
): Pipeline {
  const kinds = stageKinds(stages);
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = lineCounter.linePos(e.pos[0]);
    throw new InputError(`invalid YAML at line ${pos.line} column ${pos.col}: ${e.message}`, {
      file,
    });
  }
  const raw = doc.toJS();
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new InputError("a pipeline file must be a YAML mapping", {
      file,
      expected: "keys name, stages, …",
      got: show(raw),
    });
  }
  const res = pipelineSchema(kinds).safeParse(raw, { reportInput: true });
  if (!res.success) {
    // an unknown key is reported at the key itself, with the key in the path
    const issues = res.error.issues.flatMap(unionBranch).map((issue) =>
      issue.code === "unrecognized_keys" && issue.keys.length === 1
        ? { ...issue, path: [...issue.path, issue.keys[0]] }
        : issue
    );
    const lines = issues.map((issue) => {
      const node = doc.getIn(issue.path as (string | number)[], true) as
        | { range?: number[] }
        | undefined;
      const atKey = issue.code === "unrecognized_keys" ||
        (issue.code === "custom" && issue.params?.atKey === true);
      const keyNode = atKey ? keyOf(doc, issue.path) : undefined;
      const range = keyNode?.range ?? node?.range;
      const at = range ? lineCounter.linePos(range[0]) : undefined;
      const where = at ? `${file}:${at.line}:${at.col}` : file;
      return `${where}: ${pathString(issue.path)}: ${describe(issue)}`;
    });
    const first = issues[0];
    const err = new InputError(
      lines.length === 1 ? lines[0] : `${lines.length} problems:\n  ${lines.join("\n  ")}`,
    );
    Object.assign(err, { file, field: pathString(first.path) });
    throw err;
  }
  const p = res.data as Omit<Pipeline, "file" | "kinds">;
  crossCheck(p, file);
  return { ...p, file, kinds };
}

/**
 * A value that matches no branch of a union (`layer_map: uniform | last | [ints]`) is reported
 * by the branch it came closest to — the one whose first problem lies deepest — so the message
 * names the bad element (`layer_map[1]: expected number, got "x"`), not just "invalid input".
 */
function unionBranch(issue: z.core.$ZodIssue): z.core.$ZodIssue[] {
  if (issue.code !== "invalid_union" || issue.errors.length === 0) return [issue];
  const depth = (branch: z.core.$ZodIssue[]) => branch[0]?.path.length ?? -1;
  const best = issue.errors.reduce((a, b) => (depth(b) > depth(a) ? b : a));
  if (depth(best) <= 0) return [issue];
  return best.map((i) => ({ ...i, path: [...issue.path, ...i.path] })).flatMap(unionBranch);
}

/** The key node of the entry at `path` (for pointing at an unknown key). */
function keyOf(
  doc: ReturnType<typeof parseDocument>,
  path: readonly PropertyKey[],
): { range?: number[] } | undefined {
  const parent = doc.getIn(path.slice(0, -1) as (string | number)[], true) as
    | { items?: { key?: { value?: unknown; range?: number[] } }[] }
    | undefined;
  const last = path[path.length - 1];
  return parent?.items?.find((it) => it.key?.value === last)?.key;
}

/** Read and validate a pipeline file against these stage kinds. */
export async function loadPipeline(file: string, stages: readonly StageKind[]): Promise<Pipeline> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new InputError("pipeline file not found", {
        file,
        hint: "README.md shows a pipeline file; tests/*_stage_test.ts run more.",
      });
    }
    throw e;
  }
  return parsePipeline(text, file, stages);
}

/** Checks that span sections: every dataset a stage names exists. */
function crossCheck(p: Omit<Pipeline, "file" | "kinds">, file: string): void {
  p.stages.forEach((entry, i) => {
    const [name, params] = Object.entries(entry)[0];
    const ds = (params as { dataset?: unknown }).dataset;
    if (typeof ds === "string" && !(ds in p.datasets)) {
      throw new InputError("unknown dataset", {
        file,
        field: `stages[${i}].${name}.dataset`,
        expected: `one of ${Object.keys(p.datasets).map((k) => JSON.stringify(k)).join(", ")}`,
        got: JSON.stringify(ds),
      });
    }
  });
}

/** The resolved pipeline (defaults filled in) as YAML, to be written next to the outputs. */
export function resolvedYaml(p: Pipeline): string {
  const { file: _file, kinds: _kinds, ...rest } = p;
  return `# resolved from ${p.file} by tinystill\n` + stringify(rest);
}
