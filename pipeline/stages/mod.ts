/**
 * Every built-in stage, registered on import (their params schemas join the pipeline-file
 * schema). Import this before parsing a pipeline file.
 * @module
 */

export { SPLITS, TOKEN_COLUMNS, tokenize, TokenizeParams } from "./tokenize.ts";
export { teacherForward, TeacherForwardParams } from "./teacher_forward.ts";
