/**
 * Hugging Face `BertConfig`: the keys of `config.json`, their defaults, and validation.
 *
 * Field names are the Hugging Face ones (snake_case) so a config read from a checkpoint and one
 * written by tinystill are interchangeable with `transformers.BertConfig`.
 * @module
 */

/** The keys of a Hugging Face `config.json` for BERT that tinystill reads and writes. */
export interface BertConfig {
  model_type: "bert";
  architectures?: string[];
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  hidden_act: "gelu" | "gelu_new" | "relu";
  hidden_dropout_prob: number;
  attention_probs_dropout_prob: number;
  max_position_embeddings: number;
  type_vocab_size: number;
  initializer_range: number;
  layer_norm_eps: number;
  pad_token_id: number;
  /** Classifier labels; their count sets the classification head width. */
  id2label?: Record<string, string>;
  label2id?: Record<string, number>;
  /** `"regression"` for a 1-output head trained with MSE. */
  problem_type?:
    | "single_label_classification"
    | "multi_label_classification"
    | "regression";
  classifier_dropout?: number | null;
  position_embedding_type?: "absolute";
  torch_dtype?: string;
  [extra: string]: unknown;
}

/** Defaults of `transformers.BertConfig` (bert-base-uncased shape). */
export const BERT_DEFAULTS: BertConfig = {
  model_type: "bert",
  vocab_size: 30522,
  hidden_size: 768,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  intermediate_size: 3072,
  hidden_act: "gelu",
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  max_position_embeddings: 512,
  type_vocab_size: 2,
  initializer_range: 0.02,
  layer_norm_eps: 1e-12,
  pad_token_id: 0,
};
