/**
 * The distillation objective around its graph: the student's training-only projections
 * (TinyBERT's `fit_dense`, student width → teacher width) and each term's value on a batch
 * ({@link lossBreakdown}). The terms themselves are the registry of `graph/losses.ts`; the
 * objective graph (a weighted sum of them on the student's forward) is built by
 * `onnx/train_graph.ts`, and every engine runs that graph.
 *
 * The projection is `distill.fit_dense.{weight,bias}` when shared by every layer (the paper's
 * code), `distill.fit_dense.<m>.{weight,bias}` per student index m with `projection: per-layer`.
 * It exists only when the widths differ and a term reads hidden states.
 * @module
 */

import { type Bert, normalInit } from "../model/bert.ts";
import {
  LOSS_TERMS,
  type LossInput,
  type LossTerm,
  type LossTermName,
  type LossTermSpec,
  termAttentionLayers,
  termNeeds,
} from "../graph/losses.ts";
import {
  batchFeeds,
  buildLossGraph,
  type DistillObjectiveOptions,
  projectionName,
} from "../graph/train_graph.ts";
import type { HostBatch } from "../data/batch.ts";
import { type EngineRef, openExecutor } from "../engines/mod.ts";

export { LOSS_TERMS, projectionName, termAttentionLayers, termNeeds };
export type { DistillObjectiveOptions, LossInput, LossTerm, LossTermName, LossTermSpec };

/**
 * Add the projections `hidden_mse`/`cosine` need when the student is narrower than the teacher
 * (normal(0, 0.02) weights, zero bias, as TinyBERT initialises `fit_dense`). No-op when the
 * widths match or the parameters exist (a resumed or general-distilled student). Returns the
 * prefixes added.
 */
export function addProjections(
  student: Bert,
  teacherWidth: number,
  opts: DistillObjectiveOptions,
  seed: number,
): string[] {
  const Hs = student.config.hidden_size;
  if (Hs === teacherWidth) return [];
  if (!termNeeds(opts.terms).has("hidden")) return [];
  const M = opts.layerMap.length - 1;
  const names = new Set<string>();
  for (let m = 0; m <= M; m++) names.add(projectionName(opts, m));
  const added: string[] = [];
  let i = 0;
  for (const name of names) {
    i++;
    if (student.params.has(`${name}.weight`)) continue;
    student.addExtra(`${name}.weight`, {
      data: normalInit(teacherWidth * Hs, 0.02, seed * 31 + i),
      shape: [teacherWidth, Hs],
    });
    student.addExtra(`${name}.bias`, {
      data: new Float32Array(teacherWidth),
      shape: [teacherWidth],
    });
    added.push(name);
  }
  return added;
}

/**
 * Each term's value on a batch, without gradients and without dropout (for logs and tests: the
 * same model and batch always give the same values): `{ name: value }`. Runs the objective's
 * loss graph on `engine` (default ONNX Runtime).
 */
export async function lossBreakdown(
  model: Bert,
  batch: HostBatch,
  opts: DistillObjectiveOptions,
  engine?: EngineRef,
): Promise<Record<string, number>> {
  const targets: Record<string, number[]> = {};
  for (const [k, v] of Object.entries(batch)) if (k.startsWith("t_")) targets[k] = v.shape;
  const graph = buildLossGraph({
    config: model.config,
    heads: model.heads,
    params: model.shapes(),
    objective: "distillation",
    objectiveOptions: opts,
    dropout: false,
    targets,
  });
  const session = await (await openExecutor(engine)).open(graph.graph, graph.model, {
    what: "the loss graph",
  });
  try {
    const feeds = batchFeeds(graph.feeds, batch, "lossBreakdown");
    for (const name of graph.inputs) {
      const p = model.p(name);
      feeds[name] = { data: p.data, dims: p.shape };
    }
    const names = opts.terms.map((t) => `term:${t.name}`);
    const out = await session.run(feeds, names);
    return Object.fromEntries(
      opts.terms.map((t) => [t.name, out[`term:${t.name}`].data[0] as number]),
    );
  } finally {
    await session.close();
  }
}
