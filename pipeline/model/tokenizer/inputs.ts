/**
 * Tokenizer output as model inputs: the row-major `[batch, seq]` arrays `openInference` runs.
 * @module
 */

import type { EncodeOptions } from "./encoding.ts";
import type { BertTokenizer } from "./tokenizer.ts";

/** A batch's model inputs, each row-major `[batch, seq]`. */
export interface ModelInputs {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  tokenTypeIds: Int32Array;
  batch: number;
  seq: number;
}

/**
 * {@link BertTokenizer.encodeBatchArrays} as model inputs: a batch of texts (or pairs: `pairs[i]`
 * goes with `texts[i]`), padded to one length.
 */
export function encodeBatch(
  tokenizer: BertTokenizer,
  texts: readonly string[],
  pairs?: readonly string[],
  options: EncodeOptions = {},
): ModelInputs {
  const { ids, mask, types, batch, seq } = tokenizer.encodeBatchArrays(texts, pairs, options);
  return { inputIds: ids, attentionMask: mask, tokenTypeIds: types, batch, seq };
}
