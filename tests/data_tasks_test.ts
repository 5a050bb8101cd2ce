/**
 * The dataset layer for token classification (JSONL/Parquet words + tags, the brown-pos corpus)
 * and extractive QA (SQuAD-style answers): what loads, what it loads as, and every bad input.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DuckDBInstance } from "@duckdb/node-api";
import { assertInputError, withTempDir } from "./_util.ts";
import { datasetHash, excludeExamples, loadDataset } from "../pipeline/data/mod.ts";
import { brownBaseTag, brownUniversalTag, UNIVERSAL_TAGS } from "../pipeline/data/brown_tags.ts";
import { brownPosTokens } from "../pipeline/data/corpora.ts";
import type { Dataset, DatasetSpec } from "../pipeline/data/types.ts";

const TINY = new URL("../fixtures/tiny/", import.meta.url).pathname;
const NO_SPLIT = { dev: 0, test: 0, seed: 0 };

const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join("\n") + "\n";

const NER_ROWS = [
  { tokens: ["EU", "rejects", "German", "call"], tags: ["B-ORG", "O", "B-MISC", "O"] },
  { tokens: ["Peter", "Blackburn"], tags: ["B-PER", "I-PER"] },
  { tokens: ["BRUSSELS", "1996-08-22"], tags: ["B-LOC", "O"] },
];

/** Write `files` into a temp dir and run `fn` there. */
async function withFiles(files: Record<string, string>, fn: (dir: string) => Promise<void>) {
  await withTempDir(async (dir) => {
    for (const [name, body] of Object.entries(files)) {
      await Deno.writeTextFile(join(dir, name), body);
    }
    await fn(dir);
  });
}

Deno.test("token classification, jsonl: words, tags as label indices, inferred or given order", async () => {
  await withFiles({ "ner.jsonl": jsonl(NER_ROWS) }, async (dir) => {
    const d = await loadDataset(
      { format: "jsonl", path: "ner.jsonl", task: "token-classification", split: NO_SPLIT },
      dir,
    );
    assert.equal(d.task, "token-classification");
    // inferred: the sorted tag set
    assert.deepEqual(d.labels, ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O"]);
    assert.deepEqual(d.train[0], {
      text: "EU rejects German call",
      words: ["EU", "rejects", "German", "call"],
      tags: [2, 5, 1, 5],
    });
    assert.deepEqual(d.train[1].tags, [3, 4]);
    assert.equal(d.train[1].label, undefined);
    // given order is kept, and may hold tags the data never uses
    const labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"];
    const g = await loadDataset(
      { format: "jsonl", path: "ner.jsonl", task: "token-classification", labels, split: NO_SPLIT },
      dir,
    );
    assert.deepEqual(g.labels, labels);
    assert.deepEqual(g.train.map((e) => e.tags), [[3, 0, 7, 0], [1, 2], [5, 0]]);
    assert.notEqual(datasetHash(g), datasetHash(d));
  });
});

Deno.test("token classification: integer tags (HF ner_tags) index the label list; other columns", async () => {
  const labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"];
  const rows = [
    { id: "0", words: ["EU", "rejects", "German", "call"], ner_tags: [3, 0, 7, 0] },
    { id: "1", words: ["Peter", "Blackburn"], ner_tags: [1, "I-PER"] }, // mixed is fine
  ];
  await withFiles({ "hf.jsonl": jsonl(rows) }, async (dir) => {
    const spec: DatasetSpec = {
      format: "jsonl",
      path: "hf.jsonl",
      task: "token-classification",
      words_column: "words",
      label_column: "ner_tags",
      labels,
      split: NO_SPLIT,
    };
    const d = await loadDataset(spec, dir);
    assert.deepEqual(d.train.map((e) => e.tags), [[3, 0, 7, 0], [1, 2]]);
    await assertInputError(
      () => loadDataset({ ...spec, labels: undefined }, dir),
      ["hf.jsonl", "line 1", 'column "ner_tags" tag 0', "integer tags need a label list"],
    );
    await assertInputError(
      () => loadDataset({ ...spec, labels: labels.slice(0, 5) }, dir),
      ["hf.jsonl", "line 1", "tag 2", "tag index out of range", "0..4", "got 7"],
    );
    await assertInputError(
      () => loadDataset({ ...spec, words_column: undefined }, dir),
      ["hf.jsonl", "words_column", 'no column "tokens"', '"id", "words", "ner_tags"'],
    );
    await assertInputError(
      () => loadDataset({ ...spec, label_column: undefined }, dir),
      ["hf.jsonl", "label_column", 'no column "tags"'],
    );
  });
});

Deno.test("token classification: every malformed row is an InputError naming line and field", async () => {
  const cases: [unknown, string[]][] = [
    [{ tokens: ["a", "b", "c", "d"], tags: ["O", "O", "O"] }, ["3 tags for 4 words"]],
    [{ tokens: ["a", "b"], tags: ["O", "O", "O"] }, ["3 tags for 2 words"]],
    [{ tokens: ["a", 7], tags: ["O", "O"] }, ['column "tokens" word 1', "a word must be a string"]],
    [{ tokens: ["a", ""], tags: ["O", "O"] }, ["word 1", "empty word"]],
    [{ tokens: ["New York", "b"], tags: ["O", "O"] }, ["word 0", "must not hold whitespace"]],
    [{ tokens: [], tags: [] }, ["no words"]],
    [{ tokens: "a b", tags: ["O", "O"] }, ['column "tokens" must hold a list of words']],
    [{ tokens: ["a"], tags: "O" }, ['column "tags" must hold a list of tags']],
    [{ tokens: ["a"], tags: [1.5] }, ["tag 0", "a tag must be a name or an integer index"]],
    [{ tokens: ["a"], tags: [""] }, ["tag 0", "a tag must be a name"]],
    [{ text: "a" }, ['column "tokens" must hold a list of words', "got nothing"]],
  ];
  for (const [bad, parts] of cases) {
    await withFiles({ "bad.jsonl": jsonl([NER_ROWS[0], bad]) }, async (dir) => {
      await assertInputError(
        () =>
          loadDataset(
            { format: "jsonl", path: "bad.jsonl", task: "token-classification" },
            dir,
          ),
        ["bad.jsonl", "line 2", ...parts],
      );
    });
  }
  // an unknown tag, against a given list: file, line, word and the list
  await withFiles({ "ner.jsonl": jsonl(NER_ROWS) }, async (dir) => {
    await assertInputError(
      () =>
        loadDataset({
          format: "jsonl",
          path: "ner.jsonl",
          task: "token-classification",
          labels: ["O", "B-ORG", "B-MISC", "B-PER"],
        }, dir),
      ["ner.jsonl", "line 2, word 1", '"Blackburn"', 'tag "I-PER" is not in the label list'],
    );
  });
  // lists cannot be written in CSV or TSV
  for (const format of ["csv", "tsv"] as const) {
    await assertInputError(
      () => loadDataset({ format, path: "x", task: "token-classification" }),
      ["dataset spec", "format", `which ${format} cannot hold`, "jsonl or parquet"],
    );
  }
  await assertInputError(
    () => loadDataset({ format: "brown", task: "token-classification" }),
    ["the brown corpus has no token-classification annotation"],
  );
  await assertInputError(
    () => loadDataset({ format: "brown-pos", task: "classification" }),
    ["brown-pos is a token-classification corpus"],
  );
  await assertInputError(
    () => loadDataset({ format: "jsonl", path: "x", task: "ner" as never }),
    ["unknown task", "token-classification"],
  );
});

/** Write a Parquet file with real LIST and STRUCT columns (as Hugging Face datasets do). */
async function duckParquet(file: string, select: string): Promise<void> {
  const db = await DuckDBInstance.create(":memory:");
  const c = await db.connect();
  try {
    await c.run(`COPY (${select}) TO '${file}' (FORMAT parquet)`);
  } finally {
    c.closeSync();
    db.closeSync();
  }
}

Deno.test("parquet: LIST words with INT64 tags, STRUCT answers; strings decoded at any depth", async () => {
  await withTempDir(async (dir) => {
    await duckParquet(
      join(dir, "ner.parquet"),
      `SELECT * FROM (VALUES (['Café', 'Müller'], [1::BIGINT, 2]), (['EU'], [3::BIGINT]))
        t(tokens, ner_tags)`,
    );
    const d = await loadDataset({
      format: "parquet",
      path: "ner.parquet",
      task: "token-classification",
      label_column: "ner_tags",
      labels: ["O", "B-PER", "I-PER", "B-ORG"],
      split: NO_SPLIT,
    }, dir);
    assert.deepEqual(d.train, [
      { text: "Café Müller", words: ["Café", "Müller"], tags: [1, 2] },
      { text: "EU", words: ["EU"], tags: [3] },
    ]);
    await duckParquet(
      join(dir, "qa.parquet"),
      `SELECT * FROM (VALUES ('Who?', 'Ann met Bob.', {'text': ['Bob', 'Bob'],
        'answer_start': [8::INT, 8]})) t(question, context, answers)`,
    );
    const q = await loadDataset(
      { format: "parquet", path: "qa.parquet", task: "question-answering", split: NO_SPLIT },
      dir,
    );
    assert.deepEqual(q.train, [{
      text: "Who?",
      textPair: "Ann met Bob.",
      answers: [{ text: "Bob", start: 8 }, { text: "Bob", start: 8 }],
    }]);
    // hyparquet-writer stores nested data as a JSON column: read as lists too
    const { parquetWriteBuffer } = await import("hyparquet-writer");
    await Deno.writeFile(
      join(dir, "json.parquet"),
      new Uint8Array(parquetWriteBuffer({
        columnData: [{ name: "tokens", data: [["ok"]] }, { name: "tags", data: [["O"]] }],
      })),
    );
    const j = await loadDataset(
      { format: "parquet", path: "json.parquet", task: "token-classification", split: NO_SPLIT },
      dir,
    );
    assert.deepEqual(j.train[0], { text: "ok", words: ["ok"], tags: [0] });
    // invalid UTF-8 inside a list: the row, column and list position are named
    await duckParquet(
      join(dir, "latin.parquet"),
      `SELECT [from_hex('6f6b'), from_hex('62ff')] AS tokens, ['O', 'O'] AS tags`,
    );
    await assertInputError(
      () =>
        loadDataset(
          { format: "parquet", path: "latin.parquet", task: "token-classification" },
          dir,
        ),
      ["latin.parquet", "invalid UTF-8", 'row 1, column "tokens"[1], byte offset 1'],
    );
  });
});

Deno.test("split and limit: tagged examples have no label, so the split is not stratified", async () => {
  const rows = Array.from({ length: 40 }, (_, i) => ({
    tokens: [`w${i}`, "x"],
    tags: [i % 4 === 0 ? "B-PER" : "O", "O"],
  }));
  await withFiles({ "many.jsonl": jsonl(rows) }, async (dir) => {
    const spec = (seed: number): DatasetSpec => ({
      format: "jsonl",
      path: "many.jsonl",
      task: "token-classification",
      split: { dev: 0.2, test: 0.1, seed },
    });
    const a = await loadDataset(spec(5), dir);
    assert.deepEqual([a.train.length, a.dev.length, a.test.length], [28, 8, 4]);
    const all = [...a.train, ...a.dev, ...a.test].map((e) => e.text);
    assert.equal(new Set(all).size, 40);
    assert.ok([...a.train, ...a.dev, ...a.test].every((e) => e.label === undefined));
    assert.equal(datasetHash(a), datasetHash(await loadDataset(spec(5), dir)));
    assert.notEqual(datasetHash(a), datasetHash(await loadDataset(spec(6), dir)));
    const limited = await loadDataset({ ...spec(5), limit: 10, split: NO_SPLIT }, dir);
    assert.equal(limited.train.length, 10);
    // exclude by text keeps working on tagged examples
    const ex = excludeExamples(a, a.dev);
    assert.deepEqual([ex.train.length, ex.dev.length, ex.test.length, ex.excluded], [28, 0, 4, 8]);
  });
});

Deno.test("datasetHash covers words, tags and answers; classification hashes are unchanged", async () => {
  // pinned before tags and answers existed: the cache of classification datasets stays valid
  const csv = await loadDataset({ format: "csv", path: "sentiment.csv" }, TINY);
  assert.equal(
    datasetHash(csv),
    "942adb7348121fabaf07c7f12d5439bb17a54d1cb4e66668aa85709e0328af84",
  );
  const base: Dataset = {
    name: "x",
    labels: ["O", "B-PER"],
    task: "token-classification",
    train: [{ text: "Ann runs", words: ["Ann", "runs"], tags: [1, 0] }],
    dev: [],
    test: [],
    source: "x",
  };
  const h = datasetHash(base);
  const tagged = (f: (d: Dataset) => void) => {
    const d = structuredClone(base);
    f(d);
    return datasetHash(d);
  };
  assert.equal(tagged(() => {}), h);
  assert.notEqual(tagged((d) => d.train[0].tags![0] = 0), h);
  assert.notEqual(tagged((d) => d.train[0].words = ["Ann", "runs", ""]), h);
  assert.notEqual(tagged((d) => delete d.train[0].tags), h);
  const qa: Dataset = {
    name: "q",
    task: "question-answering",
    train: [{ text: "Who?", textPair: "Ann met Bob.", answers: [{ text: "Bob", start: 8 }] }],
    dev: [],
    test: [],
    source: "q",
  };
  const hq = datasetHash(qa);
  const qa2 = structuredClone(qa);
  qa2.train[0].answers![0].start = 7;
  assert.notEqual(datasetHash(qa2), hq);
  qa2.train[0].answers = [{ text: "Bob", start: 8 }, { text: "Bob.", start: 8 }];
  assert.notEqual(datasetHash(qa2), hq);
  qa2.train[0].answers = [{ text: "Bob", start: 8 }];
  assert.equal(datasetHash(qa2), hq);
});

const QA_ROWS = [
  {
    id: "a",
    question: "Who did Ann meet?",
    context: "Ann met Bob in Paris.",
    answers: { text: ["Bob"], answer_start: [8] },
  },
  {
    id: "b",
    question: "Where?",
    context: "Ann met Bob in Paris.",
    answers: [{ text: "Paris", answer_start: 15 }, { text: "in Paris", answer_start: 12 }],
  },
];

Deno.test("question answering, jsonl: question, context, answers in both SQuAD layouts", async () => {
  await withFiles({ "qa.jsonl": jsonl(QA_ROWS) }, async (dir) => {
    const d = await loadDataset(
      { format: "jsonl", path: "qa.jsonl", task: "question-answering", split: NO_SPLIT },
      dir,
    );
    assert.equal(d.task, "question-answering");
    assert.equal(d.labels, undefined);
    assert.deepEqual(d.train, [
      {
        text: "Who did Ann meet?",
        textPair: "Ann met Bob in Paris.",
        answers: [{ text: "Bob", start: 8 }],
      },
      {
        text: "Where?",
        textPair: "Ann met Bob in Paris.",
        answers: [{ text: "Paris", start: 15 }, { text: "in Paris", start: 12 }],
      },
    ]);
    for (const e of d.train) {
      for (const a of e.answers!) {
        assert.equal(e.textPair!.slice(a.start, a.start + a.text.length), a.text);
      }
    }
  });
  // other column names; a code-point offset (Python's) after an emoji becomes a UTF-16 offset
  const emoji = { q: "What?", c: "😀 the cat sat", a: [{ text: "cat", answer_start: 6 }] };
  await withFiles({ "e.jsonl": jsonl([emoji]) }, async (dir) => {
    const d = await loadDataset({
      format: "jsonl",
      path: "e.jsonl",
      task: "question-answering",
      text_column: "q",
      text_pair_column: "c",
      answers_column: "a",
      split: NO_SPLIT,
    }, dir);
    assert.deepEqual(d.train[0].answers, [{ text: "cat", start: 7 }]);
    assert.equal(d.train[0].textPair!.slice(7, 10), "cat");
  });
});

Deno.test("question answering: bad answers and empty fields are InputErrors naming the line", async () => {
  const ok = QA_ROWS[0];
  const cases: [unknown, string[]][] = [
    [
      { ...ok, answers: { text: ["Bob"], answer_start: [4] } },
      ['answer "Bob" is not at offset 4 of the context: found "met"', "answer 0"],
    ],
    [
      { ...ok, answers: { text: ["Bob"], answer_start: [19] } },
      ["answer start 19 is outside the context", "21 characters"],
    ],
    [{ ...ok, answers: { text: ["Bob"], answer_start: [-1] } }, ["answer start -1 is outside"]],
    [
      { ...ok, answers: { text: [], answer_start: [] } },
      ["no answers: unanswerable questions (SQuAD v2) are not supported"],
    ],
    [{ ...ok, answers: [] }, ["no answers"]],
    [{ ...ok, question: "  " }, ['column "question"', "empty question"]],
    [{ ...ok, context: "" }, ['column "context"', "empty context"]],
    [{ ...ok, answers: { text: ["Bob"], answer_start: ["8"] } }, [
      "answer_start must be an integer",
    ]],
    [{ ...ok, answers: { text: [""], answer_start: [8] } }, [
      "an answer must be a non-empty string",
    ]],
    [{ ...ok, answers: { text: ["Bob", "x"], answer_start: [8] } }, [
      "2 answer texts for 1 starts",
    ]],
    [{ ...ok, answers: "Bob" }, ['column "answers" must hold SQuAD-style answers']],
    [{ ...ok, context: null }, ['non-text value in column "context"']],
  ];
  for (const [bad, parts] of cases) {
    await withFiles({ "bad.jsonl": jsonl([ok, bad]) }, async (dir) => {
      await assertInputError(
        () => loadDataset({ format: "jsonl", path: "bad.jsonl", task: "question-answering" }, dir),
        ["bad.jsonl", "line 2", ...parts],
      );
    });
  }
  await withFiles({ "qa.jsonl": jsonl([ok]) }, async (dir) => {
    await assertInputError(
      () =>
        loadDataset({
          format: "jsonl",
          path: "qa.jsonl",
          task: "question-answering",
          labels: ["x"],
        }, dir),
      ["a question-answering dataset has no label list"],
    );
    await assertInputError(
      () =>
        loadDataset({
          format: "jsonl",
          path: "qa.jsonl",
          task: "question-answering",
          answers_column: "spans",
        }, dir),
      ["answers_column", 'no column "spans"'],
    );
  });
  await assertInputError(
    () => loadDataset({ format: "csv", path: "x.csv", task: "question-answering" }),
    ["which csv cannot hold"],
  );
});

Deno.test("brown tags → universal tags: the reduction rules on hand-checked tags", () => {
  const cases: [string, string][] = [
    ["nn", "NOUN"],
    ["np$-tl", "NOUN"], // possessive, in a title
    ["nn-tl-hl", "NOUN"],
    ["nrs", "NOUN"],
    ["fw-nn-tl", "NOUN"], // foreign word: its function tag
    ["fw-at-tl", "DET"],
    ["fw-in+at-t", "ADP"], // compound cut short in the corpus
    ["pps+bez", "PRON"], // it's
    ["ppss+md", "PRON"], // I'd
    ["ppss+ber-n", "PRON"],
    ["vb+ppo", "VERB"], // gimme
    ["to+vb", "PRT"],
    ["dod*", "VERB"], // didn't
    ["md*-hl", "VERB"],
    ["*", "ADV"], // not
    ["*-hl", "ADV"],
    ["fw-*", "ADV"],
    ["pp$", "PRON"], // my
    ["pp$$", "PRON"], // mine
    ["wp$", "PRON"], // whose
    ["od", "ADJ"], // first
    ["cs", "ADP"], // because
    ["cc", "CONJ"],
    ["ex", "DET"], // existential there
    ["abn", "DET"], // all, half
    ["abl", "ADV"], // quite
    ["ql", "ADV"], // very
    ["rp", "PRT"],
    ["cd$", "NUM"],
    ["---hl", "."],
    ["``", "."],
    ["'", "."],
    ["uh-tl", "X"],
    ["nil", "X"],
    ["NN-TL", "NOUN"],
  ];
  for (const [tag, want] of cases) assert.equal(brownUniversalTag(tag), want, tag);
  assert.equal(brownBaseTag("np$-tl"), "np");
  assert.equal(brownBaseTag("---hl"), "--");
  assert.equal(brownUniversalTag("xyz"), undefined);
  assert.equal(brownUniversalTag("+nn"), undefined);
  assert.deepEqual(
    brownPosTokens("He/pps didn't/dod* ``/`` go/vb ''/'' ./.", "f", "l"),
    {
      words: ["He", "didn't", '"', "go", '"', "."],
      tags: ["PRON", "VERB", ".", "VERB", ".", "."],
    },
  );
  assert.throws(
    () => brownPosTokens("a/at dog", "ca99", "ca99, line 3"),
    /line 3, token 2.*word\/tag/,
  );
  assert.throws(() => brownPosTokens("a/zz", "ca99", "ca99, line 3"), /unknown Brown tag "zz"/);
  assert.throws(() => brownPosTokens("/at", "f", "l"), /not a word\/tag token/);
});

Deno.test("corpus: brown-pos, 57,340 tagged sentences, hand-checked tags", async () => {
  const d = await loadDataset({ format: "brown-pos", split: { dev: 0.1, test: 0.1, seed: 0 } });
  assert.equal(d.task, "token-classification");
  assert.deepEqual(d.labels, [...UNIVERSAL_TAGS]);
  assert.equal(d.labels!.length, 12);
  const all = [...d.train, ...d.dev, ...d.test];
  assert.equal(all.length, 57340);
  // unstratified: round(57,340 · 0.1) each
  assert.deepEqual([d.dev.length, d.test.length], [5734, 5734]);
  let words = 0;
  const used = new Set<number>();
  for (const e of all) {
    assert.equal(e.label, undefined);
    assert.equal(e.tags!.length, e.words!.length);
    words += e.words!.length;
    e.tags!.forEach((t) => used.add(t));
  }
  console.log(`brown-pos: ${all.length} sentences, ${words} words`);
  assert.equal(used.size, 12);
  const byText = new Map(all.map((e) => [e.text, e]));
  const check = (text: string, tags: string) => {
    const e = byText.get(text);
    assert.ok(e, `sentence ${JSON.stringify(text)}`);
    assert.equal(e.words!.join(" "), text);
    assert.deepEqual(e.tags!.map((t) => d.labels![t]), tags.split(" "), text);
  };
  // ca01 line 3: np-tl nn-tl jj-tl (title parts), nr, np$, `` '', cs, dti
  check(
    `The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary ` +
      `election produced " no evidence " that any irregularities took place .`,
    "DET NOUN NOUN ADJ NOUN VERB NOUN DET NOUN ADP NOUN ADJ NOUN NOUN VERB . DET NOUN . ADP DET " +
      "NOUN VERB NOUN .",
  );
  // pps dod* vb pps bedz jj in dt nn to be vbg .
  check(
    "He didn't think it was possible for this couple to be pretending .",
    "PRON VERB VERB PRON VERB ADJ ADP DET NOUN PRT VERB VERB .",
  );
  // `` pps+bez ql jj , np '' , np vbd .
  check(
    `" He's all right , Craig " , Rachel said .`,
    ". PRON ADV ADJ . NOUN . . NOUN VERB .",
  );
  // fw-at-tl nn$-tl nn vbd in pp$ jj nn .
  check(
    "El Benefactor's vanity grew with his personal wealth .",
    "DET NOUN NOUN VERB ADP PRON ADJ NOUN .",
  );
  // nn nn nn nn nn in abn nns in nn in nns at nn .
  check(
    "Hospital outpatient clinic diagnostic service for all costs in excess of $20 a patient .",
    "NOUN NOUN NOUN NOUN NOUN ADP DET NOUN ADP NOUN ADP NOUN DET NOUN .",
  );
  const limited = await loadDataset({ format: "brown-pos", limit: 100, split: NO_SPLIT });
  assert.equal(limited.train.length, 100);
  assert.ok(limited.train.every((e) => e.words!.length > 0));
});
