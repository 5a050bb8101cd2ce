/**
 * Every built-in stage, registered on import (their params schemas join the pipeline-file
 * schema). Import this before parsing a pipeline file.
 * @module
 */

export { SPLITS, TOKEN_COLUMNS, tokenize, TokenizeParams } from "./tokenize.ts";
export { teacherForward, TeacherForwardParams } from "./teacher_forward.ts";
export { finetune, FinetuneParams } from "./finetune.ts";
export { distill, DistillParams, DistillPhase } from "./distill.ts";
export { evaluate, EvaluateParams } from "./evaluate.ts";
export { mlmPretrain, MlmPretrainParams } from "./mlm_pretrain.ts";
export { publish, PublishParams } from "./publish.ts";
