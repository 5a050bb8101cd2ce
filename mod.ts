/**
 * tinystill: distil a Hugging Face BERT teacher into a small student (TinyBERT), in Deno.
 *
 * ```ts
 * import { loadBert, loadTokenizer, setBackend, tf } from "./mod.ts";
 *
 * await setBackend("wasm");
 * const tokenizer = await loadTokenizer("fixtures/bert-base-uncased");
 * const bert = await loadBert("path/to/hf-checkpoint"); // config.json + model.safetensors
 * const batch = tokenizer.encodeBatch(["a first sentence", "and a second one"]);
 * const { hiddenStates, attentionScores, logits } = bert.forward(batch);
 * ```
 * @module
 */

/** The tfjs namespace in use, backends, and the wasm training fills. */
export {
  BACKEND_NAMES,
  type BackendName,
  BackendUnavailableError,
  getBackend,
  setBackend,
  tf,
  wasmHeapBytes,
  WasmHeapExhaustedError,
} from "./pipeline/backend.ts";

/** The model: Hugging Face `BertModel` semantics, HF parameter names. */
export {
  Bert,
  type BertHeads,
  type BertInputs,
  type BertOutputs,
  type ForwardOptions,
  gelu,
  isNoDecay,
  layerNorm,
  linear,
  MASK_VALUE,
  parameterShapes,
} from "./pipeline/bert.ts";

/** Hugging Face checkpoints: `config.json`, `model.safetensors`. */
export {
  architectureOf,
  loadBert,
  type LoadBertOptions,
  type LoadedBert,
  saveBert,
  type SaveBertOptions,
} from "./pipeline/checkpoint.ts";
export {
  BERT_DEFAULTS,
  type BertConfig,
  makeConfig,
  numLabels,
  readConfig,
  writeConfig,
} from "./pipeline/config.ts";
export {
  type FloatDType,
  readSafetensors,
  type SafeTensors,
  writeSafetensors,
} from "./pipeline/safetensors.ts";

/** WordPiece tokenization (`vocab.txt` or `tokenizer.json`). */
export {
  BertTokenizer,
  buildTokenizerJson,
  type Encoding,
  type EncodingTensors,
  loadTokenizer,
  saveTokenizer,
} from "./pipeline/tokenizer.ts";

/** Training: AdamW, schedules, objectives, data-parallel replicas. */
export { AdamW, type AdamWOptions, type AdamWState, linearWarmupDecay } from "./pipeline/optim.ts";
export { type Batch, getObjective, type Objective, OBJECTIVES } from "./pipeline/objectives.ts";
export {
  computeGradients,
  DataParallel,
  type DataParallelOptions,
  type GradientResult,
  type HostBatch,
  toTensors,
} from "./pipeline/parallel.ts";

/** The declarative pipeline: file schema, runner, stages, datasets, Parquet part stores. */
export {
  knownStages,
  loadPipeline,
  parsePipeline,
  type Pipeline,
  registerStage,
  resolvedYaml,
} from "./pipeline/spec.ts";
export {
  defineStage,
  planPipeline,
  type RunOptions,
  runPipeline,
  type Stage,
  type StageContext,
  type StageReport,
  type StageResult,
} from "./pipeline/runner.ts";
export * as stages from "./pipeline/stages/mod.ts";
export { datasetHash, loadDataset } from "./pipeline/data/mod.ts";
export type { Dataset, DatasetSpec, Example } from "./pipeline/data/types.ts";
export {
  type ColumnSpec,
  finalize,
  PartReader,
  PartWriter,
  type StoreIndex,
} from "./pipeline/parquet_store.ts";
export { type LayerMapSpec, resolveLayerMap } from "./pipeline/layer_map.ts";
export { estimateCacheBytes } from "./pipeline/cache_size.ts";
export { Progress } from "./pipeline/progress.ts";

/**
 * Distillation: the named loss terms (TinyBERT, DistilBERT, MiniLM), the objective that sums
 * them, and the training loop shared by `finetune`, `distill` and `mlm-pretrain`.
 */
export * as losses from "./pipeline/losses.ts";
export { LOSS_TERMS, type LossTermName, matchHeads } from "./pipeline/losses.ts";
export {
  addProjections,
  distillationObjective,
  type DistillObjectiveOptions,
  type LossTermSpec,
} from "./pipeline/distill_objective.ts";
export {
  type BatchSource,
  epochBatches,
  type Phase,
  train,
  TrainingDivergedError,
  type TrainOptions,
  type TrainResult,
} from "./pipeline/train.ts";
export { maskBlock, packExamples } from "./pipeline/mlm.ts";

/** Evaluation metrics and the teacher-vs-student report (tables, Markdown, SVG charts). */
export {
  accuracy,
  classificationMetrics,
  macroF1,
  mcc,
  pearson,
  regressionMetrics,
  spearman,
} from "./pipeline/metrics.ts";
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
} from "./pipeline/report.ts";

/** ONNX export (transformers.js layout) and ONNX Runtime inference. */
export { exportOnnx, saveOnnxFolder } from "./pipeline/onnx/export.ts";
export { OnnxEngine, OnnxLoadError } from "./pipeline/onnx/engine.ts";

/** Errors about bad input name the file, the field, and what was expected. */
export { InputError, type InputErrorDetails } from "./pipeline/errors.ts";
