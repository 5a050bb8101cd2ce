/**
 * One error type for everything a user can get wrong: it names the file and the field (tensor,
 * key, line) and says what was expected and what was found.
 * @module
 */

/** Where a bad input was found and what was wrong with it. */
export interface InputErrorDetails {
  /** The file (or directory) that holds the bad input. */
  file?: string;
  /** The field inside it: a JSON key path, a tensor name, `line 12`, … */
  field?: string;
  /** What a valid input would have been. */
  expected?: string;
  /** What was found instead. */
  got?: string;
  /** A hint for fixing it (a command to run, a knob to change). */
  hint?: string;
}

/** A user-facing error about bad input: `file: field: message (expected X, got Y). hint` */
export class InputError extends Error {
  readonly file?: string;
  readonly field?: string;
  readonly expected?: string;
  readonly got?: string;
  readonly hint?: string;

  constructor(
    message: string,
    details: InputErrorDetails = {},
    options?: ErrorOptions,
  ) {
    const where = [details.file, details.field].filter((s) => s).join(": ");
    const eg = details.expected !== undefined || details.got !== undefined
      ? ` (expected ${details.expected ?? "?"}, got ${details.got ?? "?"})`
      : "";
    const hint = details.hint ? `. ${details.hint}` : "";
    super(`${where ? where + ": " : ""}${message}${eg}${hint}`, options);
    this.name = "InputError";
    Object.assign(this, details);
  }
}

/** A value as it appears in an error message: JSON, cut at 60 characters; "nothing" if absent. */
export function showValue(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? s.slice(0, 57) + "..." : s;
}

/** A training step's loss was NaN or ±Infinity; the update was not applied. */
export class NonFiniteLossError extends Error {
  constructor(readonly loss: number, readonly step: number) {
    super(`loss is ${loss} at step ${step}; the update was not applied`);
    this.name = "NonFiniteLossError";
  }
}
