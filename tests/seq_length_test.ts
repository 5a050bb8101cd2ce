/**
 * Rows longer than a model's position table are refused before any compute, naming the setting
 * that made them (the tokenize stage's `max_seq_length`) with expected vs got — not a plain Error
 * from the embedding lookup mid-run.
 */

import { join, resolve } from "node:path";
import { Bert } from "../pipeline/model/bert.ts";
import { saveBert } from "../pipeline/model/checkpoint.ts";
import { runPipeline } from "../pipeline/run/runner.ts";
import { parsePipeline } from "../pipeline/run/spec.ts";
import { BUILTIN_STAGES } from "../pipeline/stages/mod.ts";
import { assertInputError, withTempDir } from "./_util.ts";

const VOCAB = resolve("fixtures", "bert-base-uncased");

/** A CSV whose texts run to ~40 tokens. */
async function longCsv(dir: string): Promise<string> {
  const words = "the quick brown fox jumps over the lazy dog while the cat sleeps".split(" ");
  const lines = ["text,label"];
  for (let i = 0; i < 20; i++) {
    const text = Array.from({ length: 36 }, (_, k) => words[(i + k) % words.length]).join(" ");
    lines.push(`${text},${i % 2 ? "pos" : "neg"}`);
  }
  const path = join(dir, "long.csv");
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  return path;
}

const yaml = (dir: string, csv: string, teacher: string, stages: string) =>
  `name: seq
output_dir: ${dir}/runs
backend: wasm
datasets:
  long: { format: csv, path: ${csv}, labels: [neg, pos], split: { dev: 0.2, test: 0.2, seed: 1 } }
teacher: { checkpoint: ${teacher} }
student:
  tokenizer: ${VOCAB}
  config: { num_hidden_layers: 1, hidden_size: 8, num_attention_heads: 2, intermediate_size: 8,
            max_position_embeddings: 32 }
stages:
  - tokenize: { dataset: long, max_seq_length: 48 }
${stages}`;

Deno.test("max_seq_length above a model's max_position_embeddings is refused before compute", async () => {
  await withTempDir(async (dir) => {
    const csv = await longCsv(dir);
    const teacher = Bert.create(
      {
        vocab_size: 30522,
        num_hidden_layers: 1,
        hidden_size: 8,
        num_attention_heads: 2,
        intermediate_size: 8,
        max_position_embeddings: 36,
        id2label: { "0": "neg", "1": "pos" },
        label2id: { neg: 0, pos: 1 },
      },
      { classifier: true },
      1,
    );
    const tdir = join(dir, "teacher");
    await saveBert(teacher, tdir);
    teacher.dispose();
    await Deno.copyFile(join(VOCAB, "vocab.txt"), join(tdir, "vocab.txt"));
    const run = (stages: string) =>
      runPipeline(
        parsePipeline(yaml(dir, csv, tdir, stages), join(dir, "p.yaml"), BUILTIN_STAGES),
        {
          quiet: true,
        },
      );
    // the student (32 positions) is trained on rows of up to 48 tokens
    await assertInputError(
      () => run("  - finetune: { model: student, steps: 1, replicas: 1 }\n"),
      [
        "longer than the student's max_position_embeddings",
        "tokenize.max_seq_length",
        "expected ≤ 32 tokens",
        "got 38 tokens", // 36 words + [CLS] + [SEP]: the longest row, not the setting
      ],
    );
    // the teacher (36 positions) would run on them in teacher-forward
    await assertInputError(
      () => run("  - teacher-forward: { engine: tfjs, replicas: 1 }\n"),
      ["teacher's max_position_embeddings", "tokenize.max_seq_length", "expected ≤ 36 tokens"],
    );
  });
});
