/**
 * The tiny pipeline the notebooks walk through: the whole tinystill recipe (tokenize → teacher
 * fine-tune → teacher-forward cache → distill → labels-only baseline → evaluate) on
 * 400 SpamAssassin emails (cut to 32 tokens) with toy model sizes, so every notebook runs in
 * seconds. Outputs go to
 * `runs/notebook-tiny/` (see {@link defaultOutputDir}); stages are content-addressed, so a notebook reuses what an earlier one
 * computed.
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BUILTIN_STAGES,
  parsePipeline,
  type Pipeline,
  runPipeline,
  type StageReport,
} from "../../mod.ts";

/** The repository root. */
export const REPO = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Where the tiny pipeline writes: `TINYSTILL_NOTEBOOK_RUNS` if set (`deno task notebooks --fresh`
 * sets a new temporary directory), else `runs/` in the repository.
 */
export function defaultOutputDir(): string {
  return Deno.env.get("TINYSTILL_NOTEBOOK_RUNS") || join(REPO, "runs");
}

/** The tiny pipeline file's text (absolute paths, so it runs from any working directory). */
export function tinyPipelineYaml(outputDir = defaultOutputDir()): string {
  return `name: notebook-tiny
seed: 7
backend: wasm
output_dir: ${outputDir}
datasets:
  spam:
    format: spam-assassin
    limit: 400
    split: { dev: 0.15, test: 0.15, seed: 3 }
teacher:
  tokenizer: ${join(REPO, "fixtures", "bert-base-uncased")}
  config: { num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 2, intermediate_size: 128,
            max_position_embeddings: 64 }
student:
  config: { num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64,
            max_position_embeddings: 64 }
stages:
  - tokenize: { dataset: spam, max_seq_length: 32 }
  - finetune@teacher: { model: teacher, steps: 60, lr: 3.0e-3, batch_size: 16, replicas: 1 }
  - teacher-forward: { teacher: finetune@teacher, dtype: F16 }
  - distill:
      teacher: finetune@teacher
      replicas: 1
      batch_size: 16
      phases:
        - { name: intermediate, losses: { attention_mse: 1, hidden_mse: 1 }, steps: 40, lr: 5.0e-3 }
        - { name: prediction, losses: { soft_ce: 1 }, steps: 40, lr: 5.0e-3, evaluate: true }
  - finetune@student: { model: student, steps: 80, lr: 5.0e-3, batch_size: 16, replicas: 1 }
  - evaluate:
      teacher: finetune@teacher
      students: { student: distill }
      baselines: { labels-only: finetune@student }
      latency_examples: 10
`;
}

/** The tiny pipeline, parsed and validated. */
export function tinyPipeline(outputDir?: string): Pipeline {
  return parsePipeline(
    tinyPipelineYaml(outputDir),
    join(REPO, "notebooks", "tiny.yaml"),
    BUILTIN_STAGES,
  );
}

/** Stage keys of the tiny pipeline, in order. */
export function stageKeys(p: Pipeline): string[] {
  return p.stages.map((s) => Object.keys(s)[0]);
}

/**
 * Run the tiny pipeline up to and including stage `key` (finished stages are skipped) and return
 * every stage's report by key.
 */
export async function runUpTo(
  key: string,
  opts: { quiet?: boolean; outputDir?: string } = {},
): Promise<Record<string, StageReport>> {
  const p = tinyPipeline(opts.outputDir);
  const keys = stageKeys(p);
  const last = keys.indexOf(key);
  if (last < 0) throw new Error(`no stage '${key}' in the tiny pipeline (${keys.join(", ")})`);
  const reports = await runPipeline(
    { ...p, stages: p.stages.slice(0, last + 1) },
    { quiet: opts.quiet ?? true },
  );
  return Object.fromEntries(reports.map((r) => [r.key, r]));
}
