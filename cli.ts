/**
 * `deno task distill [pipeline.yaml]`: run a distillation pipeline file.
 *
 * The pipeline runner and its stages (tokenize → teacher-forward → cache → distill → finetune →
 * evaluate) are not built yet; until they are, this says so instead of pretending.
 * @module
 */

const file = Deno.args[0] ?? "tasks/spam.yaml";
console.error(
  `tinystill distill ${file}: the pipeline runner and its stages are not implemented yet ` +
    `(issues #3 and #4).\nAvailable now from mod.ts: loadBert/saveBert (Hugging Face ` +
    `checkpoints), loadTokenizer, Bert.forward, AdamW, DataParallel; see README.md.`,
);
Deno.exit(2);
