/**
 * tinystill: distil a Hugging Face BERT teacher into a small student (TinyBERT), in Deno.
 *
 * ```ts
 * import { encodeBatch, loadBert, loadTokenizer, openInference } from "./mod.ts";
 *
 * const tokenizer = await loadTokenizer("fixtures/bert-base-uncased");
 * const bert = await loadBert("path/to/hf-checkpoint"); // config.json + model.safetensors
 * const engine = await openInference(bert, { outputs: "all" }); // ONNX Runtime; or tfjs
 * const out = await engine.run(encodeBatch(tokenizer, ["a first sentence", "and a second one"]));
 * out.hidden_state_4.data; // Float32Array [batch, seq, hidden]; attention_scores_l, logits, …
 * ```
 * @module
 */

/**
 * The model, written once: BERT's forward and heads as a graph (`bertForward`, Hugging Face
 * `BertModel` semantics and parameter names) and its weights on the host (`Bert`).
 */
export {
  bertForward,
  type BertGraph,
  type BertInputValues,
  type Weights,
} from "./pipeline/graph/bert.ts";
export {
  Bert,
  type BertHeads,
  isNoDecay,
  MASK_VALUE,
  type Param,
  parameterShapes,
} from "./pipeline/model/bert.ts";

/**
 * The engines that run tinystill's graphs: ONNX Runtime (default) and tfjs (wasm, cpu, webgpu,
 * tfjs-node where importable), and the one inference API on them.
 */
export {
  type Inference,
  type InferenceInputs,
  type InferenceOptions,
  type InferenceOutput,
  openInference,
} from "./pipeline/engines/inference.ts";
export { type EngineRef, openExecutor } from "./pipeline/engines/mod.ts";
export type { Executor, GraphSession, HostTensor } from "./pipeline/engines/executor.ts";
export {
  BACKEND_NAMES,
  type BackendName,
  BackendUnavailableError,
  WasmHeapExhaustedError,
} from "./pipeline/engines/tfjs_backend.ts";

/** Hugging Face checkpoints: `config.json`, `model.safetensors`. */
export {
  architectureOf,
  loadBert,
  type LoadBertOptions,
  type LoadedBert,
  saveBert,
  type SaveBertOptions,
} from "./pipeline/model/checkpoint.ts";
export {
  BERT_DEFAULTS,
  type BertConfig,
  makeConfig,
  numLabels,
  readConfig,
  writeConfig,
} from "./pipeline/model/config.ts";
export {
  type FloatDType,
  readSafetensors,
  type SafeTensors,
  writeSafetensors,
} from "./pipeline/model/safetensors.ts";

/** WordPiece tokenization (`vocab.txt` or `tokenizer.json`). */
export { BertTokenizer } from "./pipeline/model/tokenizer/tokenizer.ts";
export { buildTokenizerJson } from "./pipeline/model/tokenizer/tokenizer_json.ts";
export type { Encoding } from "./pipeline/model/tokenizer/encoding.ts";
export { encodeBatch, type ModelInputs } from "./pipeline/model/tokenizer/inputs.ts";
export { loadTokenizer, saveTokenizer } from "./pipeline/model/tokenizer/io.ts";

/** Training: AdamW (one, host-fused), the schedule, the trainer and its engines. */
export {
  ADAMW_DEFAULTS,
  type AdamWHyper,
  type AdamWState,
  adamwUpdate,
  linearWarmupDecay,
} from "./pipeline/train/optim.ts";
export type { HostBatch } from "./pipeline/data/batch.ts";
export {
  type EngineName,
  openTrainEngine,
  resolveEngine,
  type TrainEngine,
} from "./pipeline/train/engine.ts";

/**
 * The declarative pipeline: file schema, runner, stages, datasets, Parquet part stores. The stage
 * kinds a file may use are passed in: `loadPipeline(file, BUILTIN_STAGES)`, or a list with your
 * own `defineStage(...)` kinds added.
 */
export {
  loadPipeline,
  parsePipeline,
  type Pipeline,
  resolvedYaml,
  type StageKind,
} from "./pipeline/run/spec.ts";
export {
  defineStage,
  planPipeline,
  type RunOptions,
  runPipeline,
  type Stage,
  type StageContext,
  type StageReport,
  type StageResult,
} from "./pipeline/run/runner.ts";
export * as stages from "./pipeline/stages/mod.ts";
export { BUILTIN_STAGES } from "./pipeline/stages/mod.ts";
/**
 * TinyBERT data augmentation (`augment` stage): each training example plus N copies whose words
 * are replaced, with probability p_t, by one of the teacher MLM head's top-K predictions; output in
 * the tokenize layout (see `docs/augmentation.md`).
 */
export {
  augment,
  AugmentParams,
  checkMlmCheckpoint,
  topCandidates,
  wordSpans,
} from "./pipeline/stages/augment.ts";
export { datasetHash, loadDataset } from "./pipeline/data/mod.ts";
/**
 * Token classification and extractive QA: word tags on first word pieces, answer character spans
 * as token positions, and the best-span decoding `evaluate` uses.
 */
export {
  bestSpan,
  encodeQuestionContext,
  encodeWords,
  IGNORE_INDEX,
  spanText,
} from "./pipeline/model/align.ts";
export type { Dataset, DatasetSpec, Example } from "./pipeline/data/types.ts";
export {
  type ColumnSpec,
  finalize,
  PartReader,
  PartWriter,
  type StoreIndex,
} from "./pipeline/store/parquet.ts";
export { type LayerMapSpec, resolveLayerMap } from "./pipeline/distill/layer_map.ts";
export { estimateCacheBytes } from "./pipeline/distill/teacher_cache.ts";
export { Progress } from "./pipeline/run/progress.ts";

/**
 * Distillation: the loss-term registry (TinyBERT, DistilBERT, MiniLM; one entry = name, needs,
 * layers, graph; add your own with `registerLossTerm`), the objective around it, and the training
 * loop shared by `finetune`, `distill` and `mlm-pretrain`.
 */
export {
  LOSS_TERMS,
  type LossInput,
  type LossTerm,
  lossTerm,
  type LossTermName,
  lossTermNames,
  type LossTermSpec,
  registerLossTerm,
  type TermContext,
} from "./pipeline/graph/losses.ts";
export {
  addProjections,
  type DistillObjectiveOptions,
  lossBreakdown,
} from "./pipeline/distill/objective.ts";
export {
  type BatchSource,
  epochBatches,
  type Phase,
  train,
  TrainingDivergedError,
  type TrainOptions,
  type TrainResult,
} from "./pipeline/train/loop.ts";
export { maskBlock, packExamples } from "./pipeline/train/mlm.ts";

/**
 * Evaluation metrics and the teacher-vs-student report (tables, Markdown, SVG charts; the report's
 * charts as Vega-Lite specs rendered to SVG).
 */
export {
  accuracy,
  classificationMetrics,
  entityF1,
  exactMatch,
  macroF1,
  mcc,
  pairedBootstrap,
  pearson,
  regressionMetrics,
  spearman,
  squadMetrics,
  tokenAccuracy,
  tokenF1,
} from "./pipeline/report/metrics.ts";
export {
  barChartSvg,
  comparisonTable,
  lineChartSvg,
  type LossPoint,
  lossSeries,
  markdownTable,
  type ModelRow,
  reportMarkdown,
  textTable,
} from "./pipeline/report/report.ts";
export {
  lossChartSpec,
  renderSvg,
  scoreChartSpec,
  scoreInterval,
  type ScorePoint,
  tradeoffSpec,
  type VegaLiteSpec,
} from "./pipeline/report/charts.ts";

/**
 * The graphs (ONNX export in the transformers.js layout; training graphs built by the `Tape`
 * differentiator, a backward rule beside each primitive) and the trainer that runs them.
 */
export { exportGraph, exportOnnx, saveOnnxFolder } from "./pipeline/graph/export.ts";
export { OnnxLoadError } from "./pipeline/engines/onnxruntime.ts";
export { Trainer, type TrainerOptions } from "./pipeline/train/trainer.ts";
export {
  buildGradGraph,
  buildLossGraph,
  type GradGraph,
  type GradGraphSpec,
} from "./pipeline/graph/train_graph.ts";
export { GraphBuildError, Tape, type Value } from "./pipeline/graph/tape.ts";

/** Errors about bad input name the file, the field, and what was expected. */
export { InputError, type InputErrorDetails } from "./pipeline/errors.ts";
