/**
 * Metrics of token classification (word accuracy, conlleval entity F1), extractive QA (SQuAD EM
 * and F1) and the paired bootstrap, against hand-computed values.
 */

import assert from "node:assert/strict";
import {
  entityChunks,
  entityF1,
  entityF1Counts,
  exactMatch,
  normalizeAnswer,
  pairedBootstrap,
  squadMetrics,
  squadScores,
  tokenAccuracy,
  tokenCorrect,
  tokenF1,
} from "../pipeline/report/metrics.ts";
import { rng } from "./_util.ts";

function near(actual: number, expected: number, what: string, tol = 1e-12): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected}`);
}

const chunks = (tags: string) =>
  entityChunks(tags.split(" ")).map((e) => `${e.type}:${e.start}-${e.end}`);
const tags = (...sentences: string[]) => sentences.map((s) => s.split(" "));

Deno.test("tokenAccuracy pools words over sentences; tokenCorrect gives the per-sentence counts", () => {
  // 2 of 3 right, then 0 of 1: pooled 2/4 (a per-sentence mean would give 1/3)
  near(tokenAccuracy([[0, 1, 2], [1]], [[0, 1, 1], [0]]), 0.5, "pooled");
  assert.deepEqual(tokenCorrect([[0, 1, 2], [1]], [[0, 1, 1], [0]]), {
    num: Float64Array.of(2, 0),
    den: Float64Array.of(3, 1),
  });
  assert.equal(tokenAccuracy([[3], [], [4, 4]], [[3], [], [4, 4]]), 1);
  assert.throws(() => tokenAccuracy([[0]], [[0], [1]]), /pred has 1 sentences but gold has 2/);
  assert.throws(() => tokenAccuracy([[0, 1]], [[0]]), /sentence 0 has 2 pred tags but 1 gold/);
  assert.throws(() => tokenAccuracy([], []), /no sentences/);
  assert.throws(() => tokenAccuracy([[]], [[]]), /no words/);
});

Deno.test("entityChunks: IOB1 and IOB2 read as conlleval does", () => {
  assert.deepEqual(chunks("B-PER I-PER O B-LOC"), ["PER:0-2", "LOC:3-4"]);
  // IOB1: I- opens a chunk; B- only separates two adjacent chunks of one type
  assert.deepEqual(chunks("I-PER I-PER B-PER O"), ["PER:0-2", "PER:2-3"]);
  // I- after O starts a chunk
  assert.deepEqual(chunks("O I-LOC I-LOC"), ["LOC:1-3"]);
  // a type change ends one chunk and starts another, with B- or I-
  assert.deepEqual(chunks("B-PER I-LOC"), ["PER:0-1", "LOC:1-2"]);
  assert.deepEqual(chunks("B-PER I-PER I-ORG I-ORG"), ["PER:0-2", "ORG:2-4"]);
  // B- after B- of the same type: two chunks
  assert.deepEqual(chunks("B-PER B-PER"), ["PER:0-1", "PER:1-2"]);
  // a chunk running to the sentence end is closed there
  assert.deepEqual(chunks("O B-MISC I-MISC"), ["MISC:1-3"]);
  assert.deepEqual(chunks("O O"), []);
  assert.deepEqual(entityChunks([]), []);
  // types may hold dashes
  assert.deepEqual(chunks("B-WORK-OF-ART I-WORK-OF-ART"), ["WORK-OF-ART:0-2"]);
  assert.throws(() => entityChunks(["O", "PER"]), /tag "PER" at word 1 is not an IOB tag/);
  assert.throws(() => entityChunks(["E-PER"]), /not an IOB tag/);
  assert.throws(() => entityChunks(["B-"]), /not an IOB tag/);
});

Deno.test("entityF1: exact chunk matches, pooled and per type, hand-computed", () => {
  // one sentence: PER matches, LOC predicted as ORG
  const one = entityF1(tags("B-PER I-PER O B-LOC"), tags("B-PER I-PER O B-ORG"));
  assert.deepEqual(one, {
    precision: 0.5,
    recall: 0.5,
    f1: 0.5,
    support: 2,
    perType: {
      LOC: { precision: 0, recall: 0, f1: 0, support: 1 },
      ORG: { precision: 0, recall: 0, f1: 0, support: 0 },
      PER: { precision: 1, recall: 1, f1: 1, support: 1 },
    },
  });
  // three sentences: gold PER, LOC | — | LOC(2 words); pred PER | ORG | LOC(2 words)
  // gold 3, pred 3, matched 2 → P = R = F1 = 2/3; LOC: P 1/1, R 1/2, F1 2·1/(1+2)
  const gold = tags("B-PER O B-LOC", "O O", "B-LOC I-LOC");
  const pred = tags("B-PER O O", "B-ORG O", "B-LOC I-LOC");
  const r = entityF1(gold, pred);
  near(r.precision, 2 / 3, "P");
  near(r.recall, 2 / 3, "R");
  near(r.f1, 2 / 3, "F1");
  assert.equal(r.support, 3);
  assert.deepEqual(Object.keys(r.perType), ["LOC", "ORG", "PER"]);
  assert.deepEqual(r.perType.LOC, { precision: 1, recall: 0.5, f1: 2 / 3, support: 2 });
  assert.deepEqual(r.perType.ORG, { precision: 0, recall: 0, f1: 0, support: 0 });
  // a boundary error is a miss both ways (no partial credit)
  const b = entityF1(tags("B-PER I-PER I-PER"), tags("B-PER I-PER O"));
  assert.deepEqual([b.precision, b.recall, b.f1, b.support], [0, 0, 0, 1]);
  // I- after O in the prediction is the same chunk as B- I- in gold (IOB1 vs IOB2)
  assert.equal(entityF1(tags("B-LOC I-LOC"), tags("I-LOC I-LOC")).f1, 1);
  // P ≠ R: gold 2 chunks, pred 1 correct → P 1, R 1/2, F1 2/3
  const pr = entityF1(tags("B-PER O B-PER"), tags("B-PER O O"));
  assert.deepEqual([pr.precision, pr.recall, pr.support], [1, 0.5, 2]);
  near(pr.f1, 2 / 3, "F1 = 2PR/(P+R)");
  // chunks never run across sentences: two PER chunks, not one
  const split = entityF1(tags("O B-PER", "I-PER O"), tags("O B-PER", "I-PER O"));
  assert.equal(split.support, 2);
  assert.equal(split.f1, 1);
});

Deno.test("entityF1: the 0/0 cases are 0 (conlleval, seqeval zero_division=0)", () => {
  // no gold and no predicted chunk at all
  assert.deepEqual(entityF1(tags("O O", "O"), tags("O O", "O")), {
    precision: 0,
    recall: 0,
    f1: 0,
    support: 0,
    perType: {},
  });
  // predictions but no gold: precision 0/1, recall 0/0 → 0
  assert.deepEqual(entityF1(tags("O"), tags("B-X")), {
    precision: 0,
    recall: 0,
    f1: 0,
    support: 0,
    perType: { X: { precision: 0, recall: 0, f1: 0, support: 0 } },
  });
  // gold but no predictions: precision 0/0 → 0
  const r = entityF1(tags("B-X"), tags("O"));
  assert.deepEqual([r.precision, r.recall, r.f1, r.support], [0, 0, 0, 1]);
  assert.throws(() => entityF1(tags("O O"), tags("O")), /sentence 0 has 2 gold tags but 1 pred/);
  assert.throws(() => entityF1([], []), /entityF1: no sentences/);
  assert.throws(() => entityF1(tags("B-X"), tags("X")), /not an IOB tag/);
});

Deno.test("SQuAD normalization: case, punctuation, articles as whole words, whitespace", () => {
  assert.equal(normalizeAnswer("The  Eiffel\tTower!"), "eiffel tower");
  assert.equal(normalizeAnswer("an apple, the pear and A plum"), "apple pear and plum");
  assert.equal(normalizeAnswer("A.B.C."), "abc"); // punctuation goes first
  assert.equal(normalizeAnswer("Theatre of anarchy"), "theatre of anarchy");
  assert.equal(normalizeAnswer("Ann's ($5.00) [sic]"), "anns 500 sic");
  // non-ASCII letters are word characters (Python's Unicode \b): "ça" keeps its "a"
  assert.equal(normalizeAnswer("the Élysée, thé, ça"), "élysée thé ça");
  assert.equal(normalizeAnswer("«the» über"), "« » über"); // only ASCII punctuation is removed
  assert.equal(normalizeAnswer("  the  "), "");
});

Deno.test("SQuAD exact match and token F1: best over golds, bag-of-words overlap", () => {
  assert.equal(exactMatch("the Eiffel Tower", ["Paris", "Eiffel Tower."]), 1);
  assert.equal(exactMatch("Eiffel", ["Paris", "Eiffel Tower."]), 0);
  // pred [big, red, dog], gold [red, dog]: common 2 → P 2/3, R 1 → F1 0.8
  near(tokenF1("the big red dog", ["red dog"]), 0.8, "F1");
  // bags: gold has one "dog", so only one of the prediction's two matches → P 1/2, R 1
  near(tokenF1("dog dog", ["dog"]), 2 / 3, "bag");
  near(tokenF1("dog", ["dog dog"]), 2 / 3, "bag, other way");
  // the best gold: "red cat" shares one word of two both ways → 0.5
  near(tokenF1("red dog", ["blue cat", "red cat"]), 0.5, "max over golds");
  assert.equal(tokenF1("the", ["a"]), 1); // both normalize to nothing
  assert.equal(exactMatch("the", ["a"]), 1);
  assert.equal(tokenF1("the", ["dog"]), 0);
  assert.equal(tokenF1("cat", ["dog"]), 0);
  assert.throws(() => tokenF1("x", []), /tokenF1: no gold answers/);
  assert.throws(() => exactMatch("x", []), /exactMatch: no gold answers/);
});

Deno.test("squadMetrics: per-question means, as fractions", () => {
  const preds = ["Eiffel Tower", "big red dog", "x"];
  const golds = [["the Eiffel Tower"], ["red dog", "a dog"], ["y", "z"]];
  // EM 1, 0, 0; F1 1, 0.8, 0
  const s = squadScores(preds, golds);
  assert.deepEqual([...s.exactMatch], [1, 0, 0]);
  near(s.f1[1], 0.8, "F1 of question 1");
  const m = squadMetrics(preds, golds);
  near(m.exactMatch, 1 / 3, "EM");
  near(m.f1, 1.8 / 3, "F1");
  assert.throws(() => squadMetrics(["a"], []), /1 predictions but 0 gold answer lists/);
  assert.throws(() => squadMetrics([], []), /no questions/);
  assert.throws(() => squadMetrics(["a"], [[]]), /question 0 has no gold answer/);
});

Deno.test("pairedBootstrap: identical → 0 and [0, 0]; a constant shift is exact", () => {
  const a = [1, 0, 1, 1, 0, 1];
  const same = pairedBootstrap(a, a.slice(), { resamples: 200, seed: 3 });
  assert.deepEqual(
    [same.diff, same.ci95, same.p, same.n, same.resamples, same.seed],
    [0, [0, 0], 1, 6, 200, 3],
  );
  near(same.a, 4 / 6, "a");
  const ratio = { num: [2, 0, 4], den: [3, 0, 5] };
  const sameRatio = pairedBootstrap(ratio, ratio, { resamples: 100 });
  assert.deepEqual([sameRatio.diff, sameRatio.ci95, sameRatio.p], [0, [0, 0], 1]);
  near(sameRatio.a, 6 / 8, "Σnum / Σden");
  // every example 0.5 better: every resample differs by exactly 0.5
  const b = [0.5, 0, 1, 0.25, 0.75];
  const up = pairedBootstrap(b.map((x) => x + 0.5), b, { resamples: 500 });
  assert.deepEqual([up.diff, up.ci95], [0.5, [0.5, 0.5]]);
  assert.equal(up.p, 2 / 501); // no resample at or below 0: (0 + 1) / (500 + 1), twice
  near(up.a - up.b, 0.5, "a − b");
  const down = pairedBootstrap(b, b.map((x) => x + 0.5), { resamples: 500 });
  assert.deepEqual([down.diff, down.ci95, down.p], [-0.5, [-0.5, -0.5], 2 / 501]);
});

Deno.test("pairedBootstrap: two examples, hand-computable resampling distribution", () => {
  // differences [1, 0]: a resample's mean is 0, 1/2, 1 with probability 1/4, 1/2, 1/4, so the
  // 2.5% and 97.5% quantiles are 0 and 1 and P(diff ≤ 0) = 1/4 → p ≈ 2 · 1/4
  const r = pairedBootstrap([1, 0], [0, 0], { resamples: 4000, seed: 11 });
  assert.equal(r.diff, 0.5);
  assert.deepEqual(r.ci95, [0, 1]);
  near(r.p, 0.5, "p", 0.05);
  // seeded: the same seed repeats, another seed draws differently
  assert.deepEqual(pairedBootstrap([1, 0], [0, 0], { resamples: 4000, seed: 11 }), r);
  assert.notEqual(pairedBootstrap([1, 0], [0, 0], { resamples: 4000, seed: 12 }).p, r.p);
});

Deno.test("pairedBootstrap: interval width matches the normal theory of a mean", () => {
  // 400 examples, A right on 70%, B on 60% (paired): the bootstrap SE of the mean difference is
  // sd(d)/√n with the population sd, so the 95% interval is about diff ± 1.96 · SE
  const r = rng(5);
  const n = 400;
  const a = Array.from({ length: n }, () => (r() < 0.7 ? 1 : 0));
  const b = a.map((x) => (r() < 0.15 ? 1 - x : x));
  const d = a.map((x, i) => x - b[i]);
  const mean = d.reduce((s, v) => s + v, 0) / n;
  const se = Math.sqrt(d.reduce((s, v) => s + (v - mean) ** 2, 0) / n / n);
  const res = pairedBootstrap(a, b, { resamples: 3000, seed: 1 });
  near(res.diff, mean, "diff");
  // each end within 0.2 SE of mean ∓ 1.96 SE (a 90% interval's ends would be 0.3 SE inside)
  const [lo, hi] = res.ci95;
  assert.ok(Math.abs(lo - (mean - 1.96 * se)) < 0.2 * se, `low end ${lo}, SE ${se}`);
  assert.ok(Math.abs(hi - (mean + 1.96 * se)) < 0.2 * se, `high end ${hi}, SE ${se}`);
});

Deno.test("pairedBootstrap over ratio scores: pooled entity F1 and word accuracy by sentence", () => {
  const gold = tags("B-PER O B-LOC", "O O", "B-LOC I-LOC", "B-ORG O");
  const predA = tags("B-PER O B-LOC", "O O", "B-LOC I-LOC", "B-ORG O");
  const predB = tags("B-PER O O", "B-ORG O", "B-LOC I-LOC", "O O");
  const a = entityF1Counts(gold, predA), b = entityF1Counts(gold, predB);
  assert.deepEqual(b, { num: Float64Array.of(2, 0, 2, 0), den: Float64Array.of(3, 1, 2, 1) });
  const res = pairedBootstrap(a, b, { resamples: 500 });
  assert.equal(res.a, entityF1(gold, predA).f1);
  near(res.b, entityF1(gold, predB).f1, "pooled F1 of B"); // 4 / 7
  near(res.diff, 1 - 4 / 7, "diff");
  assert.ok(res.ci95[0] >= 0 && res.ci95[1] <= 1 && res.ci95[0] <= res.diff);
  const goldIds = [[0, 1, 2], [0], [1, 1]];
  const w = tokenCorrect([[0, 1, 1], [0], [1, 0]], goldIds);
  const acc = pairedBootstrap(w, tokenCorrect(goldIds, goldIds), { resamples: 50 });
  near(acc.a, 4 / 6, "word accuracy of A");
  assert.equal(acc.b, 1);
  // a resample (or the data) without any chunk scores 0, not NaN
  const none = pairedBootstrap({ num: [0, 0], den: [0, 0] }, { num: [0, 0], den: [0, 0] });
  assert.deepEqual([none.a, none.diff, none.ci95], [0, 0, [0, 0]]);
});

Deno.test("pairedBootstrap: bad inputs are clear errors", () => {
  assert.throws(() => pairedBootstrap([1, 2], [1]), /A has 2 values but B has 1/);
  assert.throws(() => pairedBootstrap([], []), /no examples/);
  assert.throws(() => pairedBootstrap([1, NaN], [1, 2]), /A.num\[1\] is NaN/);
  assert.throws(() => pairedBootstrap([1], [1], { resamples: 0 }), /resamples must be a positive/);
  assert.throws(
    () => pairedBootstrap({ num: [1, 2], den: [1] }, [1, 2]),
    /A.num has 2 values but A.den has 1/,
  );
});
