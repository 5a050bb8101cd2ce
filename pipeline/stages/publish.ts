/**
 * `publish`: ship a model a stage trained as a Hugging Face folder with a model card — compact
 * weights (F16 by default), the tokenizer, the training curve drawn as SVG, and a `README.md`
 * that says how the model was made: the exact pipeline file, the stage's params, counts and
 * metrics (e.g. the held-out MLM accuracy), the training time and the machine it ran on.
 *
 * ```yaml
 * - publish@teacher:
 *     model: mlm-pretrain@teacher
 *     to: ../models/tinystill-bert-4l-256
 *     title: tinystill BERT 4L-256 (MLM-pretrained)
 * ```
 *
 * The folder is built in the stage's output directory (as every stage's output) and then copied
 * to `to` (relative to the pipeline file) through a temporary sibling and a rename, so a crash
 * leaves either the previous folder or the new one, never a mix. This is the one stage whose
 * purpose is to write outside `runs/`.
 * @module
 */

import { cpus, totalmem } from "node:os";
import { basename, join, relative } from "node:path";
import { z } from "zod";
import { loadBert, saveBert } from "../model/checkpoint.ts";
import { exists, swapDir, writeFileAtomic } from "../store/fsutil.ts";
import { lossSeries } from "../report/report.ts";
import { lossChartSpec, renderSvg } from "../report/charts.ts";
import { defineStage, sha256Hex, type StageResult } from "../run/runner.ts";
import type { CurvePoint } from "../train/loop.ts";
import { modelDirOf } from "./common.ts";

/** Params of the publish stage. */
export const PublishParams = z.strictObject({
  /** The stage whose `model/` to publish. */
  model: z.string().min(1),
  /** Destination folder, relative to the pipeline file. */
  to: z.string().min(1),
  /** Weight dtype of the published `model.safetensors`. */
  dtype: z.enum(["F16", "BF16", "F32"]).default("F16"),
  /** The card's title (default: the folder name). */
  title: z.string().min(1).optional(),
  /** A paragraph for the card: what the model is and what it is for. */
  description: z.string().optional(),
  /** SPDX licence of the weights, for the card's metadata. */
  license: z.string().min(1).default("apache-2.0"),
  /** Other published models to name in the card (e.g. the teacher of a student), as paths. */
  related: z.record(z.string(), z.string()).default({}),
});
/** Validated publish params. */
export type PublishParams = z.infer<typeof PublishParams>;

const TOKENIZER_FILES = ["vocab.txt", "tokenizer.json", "tokenizer_config.json"];

interface Manifest {
  stage: string;
  key: string;
  params: Record<string, unknown>;
  started: string;
  seconds: number;
  counts?: Record<string, number>;
  metrics?: Record<string, number | string>;
}

/** Copy every file of `src` into `dest` (flat folders). */
async function copyFlat(src: string, dest: string): Promise<void> {
  await Deno.mkdir(dest, { recursive: true });
  for await (const e of Deno.readDir(src)) {
    if (e.isFile) await Deno.copyFile(join(src, e.name), join(dest, e.name));
  }
}

/** Replace folder `dest` by a copy of `src`: copy to a sibling, then swap with renames. */
export async function replaceFolder(src: string, dest: string): Promise<void> {
  const tmp = `${dest}.tmp-${Deno.pid}`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await copyFlat(src, tmp);
  await swapDir(tmp, dest, `${dest}.old-${Deno.pid}`);
}

/** A count with thousands separators, or a measurement to 4 significant digits. */
function fmt(v: number | string, count = false): string {
  if (typeof v === "string") return v;
  if (count) return v.toLocaleString("en-US");
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
}

function minutes(s: number): string {
  return s >= 90 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`;
}

/** The model card (`README.md`, with Hugging Face metadata front matter). */
export function modelCard(o: {
  title: string;
  description?: string;
  license: string;
  config: Record<string, unknown>;
  parameters: number;
  bytes: number;
  dtype: string;
  stage: Manifest;
  pipelineFile: string;
  pipelineText: string;
  machine: string;
  related: Record<string, string>;
  hasCurve: boolean;
  mlm: boolean;
}): string {
  const c = o.config;
  const lines = [
    "---",
    `license: ${o.license}`,
    "language: en",
    "library_name: transformers",
    `pipeline_tag: ${o.mlm ? "fill-mask" : "feature-extraction"}`,
    "tags: [bert, tinystill" + (o.stage.stage === "distill" ? ", tinybert, distillation" : "") +
    "]",
    "---",
    "",
    `# ${o.title}`,
    "",
  ];
  if (o.description) lines.push(o.description.trim(), "");
  lines.push(
    "## Model",
    "",
    `| | |`,
    `|---|---|`,
    `| architecture | ${(c.architectures as string[] | undefined)?.[0] ?? "BertModel"} |`,
    `| layers × hidden | ${c.num_hidden_layers} × ${c.hidden_size} |`,
    `| attention heads | ${c.num_attention_heads} |`,
    `| FFN size | ${c.intermediate_size} |`,
    `| max positions | ${c.max_position_embeddings} |`,
    `| vocabulary | ${c.vocab_size} (WordPiece, uncased) |`,
    `| parameters | ${fmt(o.parameters, true)} |`,
    `| weights | ${o.dtype}, ${(o.bytes / 1e6).toFixed(1)} MB |`,
    "",
    "Load it with `transformers` (`AutoModel.from_pretrained(path)`), with transformers.js " +
      "after an ONNX export, or with tinystill (`loadBert(path)`, or `teacher.checkpoint` / " +
      "`student.checkpoint` in a pipeline file).",
    "",
  );
  for (const [name, path] of Object.entries(o.related)) lines.push(`- ${name}: \`${path}\``);
  if (Object.keys(o.related).length) lines.push("");
  const s = o.stage;
  lines.push(
    "## How it was made",
    "",
    `Stage \`${s.key}\` of \`${o.pipelineFile}\` (tinystill), started ${s.started}, ` +
      `${minutes(s.seconds)} on ${o.machine}.`,
    "",
  );
  const results: [string, number | string, boolean][] = [
    ...Object.entries(s.counts ?? {}).map(([k, v]) => [k, v, true] as [string, number, boolean]),
    ...Object.entries(s.metrics ?? {}).map(([k, v]) =>
      [k, v, false] as [string, number | string, boolean]
    ),
  ];
  if (results.length) {
    lines.push("| result | value |", "|---|---|");
    for (const [k, v, count] of results) lines.push(`| ${k} | ${fmt(v, count)} |`);
    lines.push("");
  }
  if (o.hasCurve) lines.push("![training loss](training_curve.svg)", "");
  lines.push(
    `Stage params:`,
    "",
    "```json",
    JSON.stringify(s.params, null, 2),
    "```",
    "",
    `The pipeline file, exactly as run (\`deno task distill ${o.pipelineFile}\` reproduces it):`,
    "",
    "```yaml",
    o.pipelineText.trimEnd(),
    "```",
    "",
  );
  return lines.join("\n");
}

/** The publish stage. */
export const publish = defineStage({
  name: "publish",
  version: 2,
  params: PublishParams,
  models: () => [],
  needs: (p) => [p.model],
  async run(ctx): Promise<StageResult> {
    const { params, pipeline: p } = ctx;
    const src = modelDirOf(p, ctx.inputs, ctx.resolve, params.model, "teacher", `${ctx.key}.model`);
    const stageDir = ctx.inputs[params.model];
    const manifest: Manifest = JSON.parse(
      await Deno.readTextFile(join(stageDir, "manifest.json")),
    );
    const out = join(ctx.out, "model");
    const model = await loadBert(src);
    let parameters: number;
    let config: Record<string, unknown>;
    try {
      await saveBert(model, out, { dtype: params.dtype });
      parameters = model.numParameters();
      config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    } finally {
      model.dispose();
    }
    for (const f of TOKENIZER_FILES) {
      if (await exists(join(src, f))) await Deno.copyFile(join(src, f), join(out, f));
    }
    // the training curve, drawn
    const curveFile = join(stageDir, "curve.json");
    let hasCurve = false;
    if (await exists(curveFile)) {
      const c: { curve: CurvePoint[] } = JSON.parse(await Deno.readTextFile(curveFile));
      await writeFileAtomic(
        join(out, "training_curve.svg"),
        await renderSvg(
          lossChartSpec(lossSeries("loss", c.curve, false), {
            title: `${params.model}: training loss`,
          }),
        ),
      );
      hasCurve = true;
    }
    const weights = join(out, "model.safetensors");
    const bytes = (await Deno.stat(weights)).size;
    const cpu = cpus();
    const machine = `${cpu[0]?.model.trim() ?? "unknown CPU"} (${cpu.length} cores, ` +
      `${Math.round(totalmem() / 2 ** 30)} GiB), Deno ${Deno.version.deno}, backend ${p.backend}`;
    const dest = ctx.resolve(params.to);
    const related = Object.fromEntries(
      Object.entries(params.related).map(([k, v]) => [k, relative(dest, ctx.resolve(v)) || "."]),
    );
    await writeFileAtomic(
      join(out, "README.md"),
      modelCard({
        title: params.title ?? basename(dest),
        description: params.description,
        license: params.license,
        config,
        parameters,
        bytes,
        dtype: params.dtype,
        stage: manifest,
        pipelineFile: relative(Deno.cwd(), p.file),
        pipelineText: await Deno.readTextFile(p.file),
        machine,
        related,
        hasCurve,
        mlm: (config.architectures as string[])[0] === "BertForMaskedLM",
      }),
    );
    await replaceFolder(out, dest);
    ctx.log(`published ${manifest.key} → ${dest} (${(bytes / 1e6).toFixed(1)} MB ${params.dtype})`);
    return {
      counts: { parameters, bytes },
      metrics: { sha256: await sha256Hex(await Deno.readFile(weights)) },
    };
  },
});
