/**
 * Masked-language-model data, as BERT pretraining prepares it: whole examples packed into blocks
 * of at most `maxLength` tokens (`[CLS] a [SEP] b [SEP] …`; an example never straddles blocks),
 * then 15% of the non-special tokens chosen for prediction, of which 80% become `[MASK]`, 10% a
 * random token and 10% stay as they are. Masks are drawn per (seed, epoch, block), so every epoch
 * sees new masks (RoBERTa's dynamic masking) and a resumed run the same ones.
 * @module
 */

import { seededRandom } from "../random.ts";
import { IGNORE_INDEX } from "../model/align.ts";

/** Token ids the masking must know. */
export interface SpecialIds {
  cls: number;
  sep: number;
  mask: number;
  pad: number;
}

/**
 * Pack tokenized examples (each `[CLS] … [SEP]`, as the tokenize stage stores them) into blocks
 * of at most `maxLength`: each block starts with `[CLS]`, each example adds its tokens after its
 * `[CLS]` (so it ends with `[SEP]`). Examples are kept whole; one longer than a block is cut.
 */
export function packExamples(
  examples: Int32Array[],
  maxLength: number,
  ids: SpecialIds,
): Int32Array[] {
  const blocks: Int32Array[] = [];
  let cur: number[] = [ids.cls];
  for (const ex of examples) {
    let body = Array.from(ex[0] === ids.cls ? ex.subarray(1) : ex);
    if (body.length === 0) continue;
    if (body.length > maxLength - 1) body = [...body.slice(0, maxLength - 2), ids.sep];
    if (cur.length + body.length > maxLength) {
      blocks.push(Int32Array.from(cur));
      cur = [ids.cls];
    }
    cur.push(...body);
  }
  if (cur.length > 1) blocks.push(Int32Array.from(cur));
  return blocks;
}

/** Options of {@link maskBlock}. */
export interface MaskOptions {
  /** Fraction of non-special tokens to predict (default 0.15). */
  prob?: number;
  vocabSize: number;
  ids: SpecialIds;
  /** Ids never chosen and never drawn as random replacements (e.g. `[UNK]`, `[PAD]`). */
  special?: ReadonlySet<number>;
}

/**
 * Choose the positions to predict in one block and corrupt them (80/10/10). Returns the model
 * input and the labels (`IGNORE_INDEX` where nothing is predicted). At least one position is
 * predicted when the block has a non-special token.
 */
export function maskBlock(
  block: Int32Array,
  seed: number,
  opts: MaskOptions,
): { input: Int32Array; labels: Int32Array } {
  const rand = seededRandom(seed);
  const prob = opts.prob ?? 0.15;
  const { ids } = opts;
  const special = new Set([ids.cls, ids.sep, ids.mask, ids.pad, ...(opts.special ?? [])]);
  const input = Int32Array.from(block);
  const labels = new Int32Array(block.length).fill(IGNORE_INDEX);
  const candidates: number[] = [];
  for (let i = 0; i < block.length; i++) if (!special.has(block[i])) candidates.push(i);
  if (candidates.length === 0) return { input, labels };
  // exactly round(prob · n) positions (at least 1), like Hugging Face's whole-block sampling
  const k = Math.max(1, Math.round(prob * candidates.length));
  for (let i = candidates.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [candidates[i], candidates[j]] = [candidates[j], candidates[i]];
  }
  for (const pos of candidates.slice(0, k)) {
    labels[pos] = block[pos];
    const r = rand();
    if (r < 0.8) input[pos] = ids.mask;
    else if (r < 0.9) {
      let t: number;
      do t = Math.floor(rand() * opts.vocabSize); while (special.has(t));
      input[pos] = t;
    } // else: kept as it is
  }
  return { input, labels };
}
