/**
 * Tokenizer output as tfjs tensors (the tokenizer itself has no tfjs dependency).
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { EncodeOptions } from "./encoding.ts";
import type { BertTokenizer } from "./tokenizer.ts";

/** A batch as int32 tensors of shape `[batch, seq]` (the caller disposes them). */
export interface EncodingTensors {
  inputIds: tf.Tensor2D;
  attentionMask: tf.Tensor2D;
  tokenTypeIds: tf.Tensor2D;
}

/**
 * {@link BertTokenizer.encodeBatchArrays} as int32 tensors of shape `[batch, seq]`: the model
 * inputs of a batch of texts (or pairs: `pairs[i]` goes with `texts[i]`).
 */
export function encodeBatch(
  tokenizer: BertTokenizer,
  texts: readonly string[],
  pairs?: readonly string[],
  options: EncodeOptions = {},
): EncodingTensors {
  const { ids, mask, types, batch, seq } = tokenizer.encodeBatchArrays(texts, pairs, options);
  return {
    inputIds: tf.tensor2d(ids, [batch, seq], "int32"),
    attentionMask: tf.tensor2d(mask, [batch, seq], "int32"),
    tokenTypeIds: tf.tensor2d(types, [batch, seq], "int32"),
  };
}
