/**
 * tinystill: distil a Hugging Face BERT teacher into a small student (TinyBERT), in Deno.
 *
 * ```ts
 * import { encodeBatch, loadBert, loadTokenizer, setBackend, tf } from "./mod.ts";
 *
 * await setBackend("wasm");
 * const tokenizer = await loadTokenizer("fixtures/bert-base-uncased");
 * const bert = await loadBert("path/to/hf-checkpoint"); // config.json + model.safetensors
 * const batch = encodeBatch(tokenizer, ["a first sentence", "and a second one"]);
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
} from "./pipeline/tfjs/backend.ts";

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
} from "./pipeline/model/bert.ts";

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
export { encodeBatch, type EncodingTensors } from "./pipeline/model/tokenizer/tensors.ts";
export { loadTokenizer, saveTokenizer } from "./pipeline/model/tokenizer/io.ts";

/** Training: AdamW, schedules, objectives, data-parallel replicas, the engines. */
export {
  AdamW,
  type AdamWOptions,
  type AdamWState,
  linearWarmupDecay,
} from "./pipeline/train/optim.ts";
export {
  type Batch,
  getObjective,
  type Objective,
  OBJECTIVES,
} from "./pipeline/train/objectives.ts";
export {
  computeGradients,
  DataParallel,
  type DataParallelOptions,
  type GradientResult,
} from "./pipeline/train/parallel.ts";
export { type HostBatch, toTensors } from "./pipeline/train/batch.ts";
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
export { predictionRows } from "./pipeline/distill/objective.ts";
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
 * Distillation: the named loss terms (TinyBERT, DistilBERT, MiniLM), the objective that sums
 * them, and the training loop shared by `finetune`, `distill` and `mlm-pretrain`.
 */
export * as losses from "./pipeline/distill/losses.ts";
export { matchHeads } from "./pipeline/distill/losses.ts";
export {
  addProjections,
  distillationObjective,
  type DistillObjectiveOptions,
  LOSS_TERMS,
  type LossTerm,
  type LossTermName,
  type LossTermSpec,
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

/** Evaluation metrics and the teacher-vs-student report (tables, Markdown, SVG charts). */
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

/**
 * ONNX export (transformers.js layout), ONNX Runtime inference, and training on ONNX Runtime:
 * `OnnxTrainer` runs tinystill's generated forward + backward graphs (`buildGradGraph`, built by
 * the `Tape` differentiator) and the AdamW update.
 */
export { exportOnnx, saveOnnxFolder } from "./pipeline/onnx/export.ts";
export { OnnxEngine, OnnxLoadError } from "./pipeline/onnx/engine.ts";
export { OnnxTrainer, type OnnxTrainerOptions } from "./pipeline/onnx/trainer.ts";
export {
  buildGradGraph,
  type GradGraph,
  type GradGraphSpec,
} from "./pipeline/onnx/train_graph.ts";
export { GraphBuildError, Tape, type Value } from "./pipeline/onnx/autodiff.ts";

/** Errors about bad input name the file, the field, and what was expected. */
export { InputError, type InputErrorDetails } from "./pipeline/errors.ts";
