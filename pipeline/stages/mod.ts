/**
 * The built-in stage kinds. Pass {@link BUILTIN_STAGES} (or a list of your own that includes
 * them) to `loadPipeline`/`parsePipeline`: their params schemas make up the pipeline-file schema
 * and the runner runs them.
 * @module
 */

import { augment } from "./augment.ts";
import { distill } from "./distill.ts";
import { evaluate } from "./evaluate.ts";
import { finetune } from "./finetune.ts";
import { mlmPretrain } from "./mlm_pretrain.ts";
import { publish } from "./publish.ts";
import { teacherForward } from "./teacher_forward.ts";
import { tokenize } from "./tokenize.ts";

export { SPLITS, TOKEN_COLUMNS, tokenize, TokenizeParams } from "./tokenize.ts";
export { augment, AugmentParams } from "./augment.ts";
export { teacherForward, TeacherForwardParams } from "./teacher_forward.ts";
export { finetune, FinetuneParams } from "./finetune.ts";
export { distill, DistillParams, DistillPhase } from "./distill.ts";
export { evaluate, EvaluateParams } from "./evaluate.ts";
export { mlmPretrain, MlmPretrainParams } from "./mlm_pretrain.ts";
export { publish, PublishParams } from "./publish.ts";

/** Every built-in stage kind, in pipeline order. */
export const BUILTIN_STAGES = [
  tokenize,
  augment,
  teacherForward,
  finetune,
  distill,
  evaluate,
  mlmPretrain,
  publish,
] as const;
