/** The dataset layer: readers on the tiny fixtures, labels, splits, bad inputs, real corpora. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { assertInputError, withTempDir } from "./_util.ts";
import { datasetHash, loadDataset } from "../pipeline/data/mod.ts";
import {
  parseDelimited,
  readCsv,
  readJsonl,
  readParquet,
  readTsv,
} from "../pipeline/data/readers.ts";
import { brownSentence, chunkText, emailText } from "../pipeline/data/corpora.ts";
import { firstInvalidUtf8 } from "../pipeline/data/text.ts";
import type { Dataset, DatasetSpec } from "../pipeline/data/types.ts";

const TINY = new URL("../fixtures/tiny/", import.meta.url).pathname;
const NO_SPLIT = { dev: 0, test: 0, seed: 0 };

Deno.test("csv reader: header, RFC 4180 quoting, CRLF", async () => {
  const t = await readCsv(join(TINY, "sentiment.csv"));
  assert.deepEqual(t.columns, ["id", "text", "label"]);
  assert.equal(t.rows.length, 30);
  assert.deepEqual(t.rows[0], {
    values: { id: "1", text: "a warm, funny film", label: "pos" },
    where: "line 2",
  });
  assert.deepEqual(t.rows[27].values, { id: "28", text: "Great, really great", label: "pos" });
  assert.deepEqual(t.rows[28], {
    values: { id: "29", text: "line one\nline two", label: "neg" },
    where: "line 30",
  });
  // The quoted newline shifts the next row's line number.
  assert.deepEqual(t.rows[29], {
    values: { id: "30", text: 'she said "wow"', label: "pos" },
    where: "line 32",
  });
});

Deno.test("tsv reader: GLUE style, quotes are literal unless quote is set", async () => {
  const t = await readTsv(join(TINY, "sst2.tsv"));
  assert.deepEqual(t.columns, ["sentence", "label"]);
  assert.equal(t.rows.length, 12);
  assert.deepEqual(t.rows[3].values, { sentence: 'a "must see" , he said ', label: "1" });
  const q = parseDelimited('a\tb\n"x\ty"\t1\n', "q.tsv", { delimiter: "\t", quote: true });
  assert.deepEqual(q.rows[0].values, { a: "x\ty", b: "1" });
});

Deno.test("jsonl and parquet readers", async () => {
  const j = await readJsonl(join(TINY, "pairs.jsonl"));
  assert.deepEqual(j.columns, ["premise", "hypothesis", "label"]);
  assert.equal(j.rows.length, 9);
  assert.deepEqual(j.rows[1], {
    values: {
      premise: "A man plays a guitar.",
      hypothesis: "The man is asleep.",
      label: "contradiction",
    },
    where: "line 2",
  });
  const p = await readParquet(join(TINY, "sentiment.parquet"));
  const c = await readCsv(join(TINY, "sentiment.csv"));
  assert.deepEqual(p.columns, ["id", "text", "label"]);
  assert.equal(p.rows.length, 30);
  assert.equal(p.rows[0].where, "row 1");
  p.rows.forEach((r, i) => {
    assert.equal(r.values.text, c.rows[i].values.text);
    assert.equal(r.values.label, c.rows[i].values.label);
    assert.equal(String(r.values.id), c.rows[i].values.id);
  });
});

Deno.test("loadDataset: inferred labels are sorted and recorded; explicit order is kept", async () => {
  const csv = await loadDataset({ format: "csv", path: "sentiment.csv", split: NO_SPLIT }, TINY);
  assert.equal(csv.name, "sentiment");
  assert.deepEqual(csv.labels, ["neg", "pos"]);
  assert.equal(csv.train.length, 30);
  assert.deepEqual(csv.train[0], { text: "a warm, funny film", label: 1 });
  const explicit = await loadDataset(
    { format: "parquet", path: "sentiment.parquet", labels: ["pos", "neg"], split: NO_SPLIT },
    TINY,
  );
  assert.deepEqual(explicit.labels, ["pos", "neg"]);
  assert.deepEqual(explicit.train[0], { text: "a warm, funny film", label: 0 });
  const sst = await loadDataset(
    { format: "tsv", path: "sst2.tsv", text_column: "sentence", split: NO_SPLIT },
    TINY,
  );
  assert.deepEqual(sst.labels, ["0", "1"]);
  assert.deepEqual(sst.train[2].label, 1);
  const nli = await loadDataset({
    format: "jsonl",
    path: "pairs.jsonl",
    text_column: "premise",
    text_pair_column: "hypothesis",
    split: NO_SPLIT,
  }, TINY);
  assert.deepEqual(nli.labels, ["contradiction", "entailment", "neutral"]);
  assert.deepEqual(nli.train[0], {
    text: "A man plays a guitar.",
    textPair: "A person makes music.",
    label: 1,
  });
  // Same content through CSV and Parquet: same hash; different label order: different hash.
  const pq = await loadDataset({ format: "parquet", path: "sentiment.parquet" }, TINY);
  const cs = await loadDataset({ format: "csv", path: "sentiment.csv" }, TINY);
  assert.match(datasetHash(cs), /^[0-9a-f]{64}$/);
  assert.equal(datasetHash(pq), datasetHash(cs));
  assert.notEqual(datasetHash(explicit), datasetHash(csv));
});

function texts(d: Dataset): string[][] {
  return [d.train, d.dev, d.test].map((p) => p.map((e) => e.text));
}

Deno.test("split: deterministic by seed, sizes by ratio, stratified, no overlap or loss", async () => {
  const spec = (seed: number): DatasetSpec => ({
    format: "csv",
    path: "sentiment.csv",
    split: { dev: 0.2, test: 0.2, seed },
  });
  const a = await loadDataset(spec(1), TINY);
  const b = await loadDataset(spec(1), TINY);
  const c = await loadDataset(spec(2), TINY);
  assert.deepEqual(texts(a), texts(b));
  assert.equal(datasetHash(a), datasetHash(b));
  assert.notDeepEqual(texts(a), texts(c));
  assert.notEqual(datasetHash(a), datasetHash(c));
  // 16 pos, 14 neg: per class round(16·0.2) = 3, round(14·0.2) = 3.
  assert.deepEqual([a.train.length, a.dev.length, a.test.length], [18, 6, 6]);
  for (const part of [a.dev, a.test]) {
    assert.equal(part.filter((e) => e.label === 0).length, 3);
  }
  const all = texts(a).flat();
  assert.equal(new Set(all).size, 30);
  const csv = await readCsv(join(TINY, "sentiment.csv"));
  assert.deepEqual(new Set(all), new Set(csv.rows.map((r) => r.values.text)));
});

Deno.test("separate train/dev/test files, limit, and carving a missing dev from train", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "train.csv"), "text,label\na,x\nb,y\nc,x\nd,y\n");
    await Deno.writeTextFile(join(dir, "dev.csv"), "text,label\ne,y\n");
    const d = await loadDataset({ format: "csv", train: "train.csv", dev: "dev.csv" }, dir);
    assert.deepEqual(texts(d), [["a", "b", "c", "d"], ["e"], []]);
    assert.deepEqual(d.dev, [{ text: "e", label: 1 }]);
    const carved = await loadDataset({
      format: "csv",
      train: join(dir, "train.csv"),
      test: join(dir, "dev.csv"),
      split: { dev: 0.5, test: 0.4, seed: 3 },
    }, "/nonexistent");
    assert.deepEqual([carved.train.length, carved.dev.length, carved.test.length], [2, 2, 1]);
  });
  const limited = await loadDataset(
    { format: "csv", path: "sentiment.csv", limit: 10, split: NO_SPLIT },
    TINY,
  );
  assert.equal(limited.train.length, 10);
});

Deno.test("bad inputs: missing file, empty dataset, missing columns", async () => {
  await withTempDir(async (dir) => {
    await assertInputError(
      () => loadDataset({ format: "csv", path: "nope.csv" }, dir),
      [join(dir, "nope.csv"), "file not found"],
    );
    await Deno.writeTextFile(join(dir, "empty.csv"), "text,label\r\n");
    await assertInputError(
      () => loadDataset({ format: "csv", path: "empty.csv" }, dir),
      [join(dir, "empty.csv"), "dataset is empty"],
    );
    await Deno.writeTextFile(join(dir, "blank.jsonl"), "\n\n");
    await assertInputError(
      () => loadDataset({ format: "jsonl", path: "blank.jsonl" }, dir),
      [join(dir, "blank.jsonl"), "dataset is empty"],
    );
  });
  await assertInputError(
    () => loadDataset({ format: "tsv", path: "sst2.tsv" }, TINY),
    ["sst2.tsv", "text_column", 'no column "text"', '"sentence", "label"'],
  );
  await assertInputError(
    () => loadDataset({ format: "csv", path: "sentiment.csv", label_column: "gold" }, TINY),
    ["sentiment.csv", "label_column", 'no column "gold"', '"id", "text", "label"'],
  );
  await assertInputError(
    () =>
      loadDataset({
        format: "jsonl",
        path: "pairs.jsonl",
        text_column: "premise",
        text_pair_column: "hyp",
      }, TINY),
    ["pairs.jsonl", "text_pair_column", '"premise", "hypothesis", "label"'],
  );
});

Deno.test("bad inputs: label not in the list, malformed rows", async () => {
  await assertInputError(
    () => loadDataset({ format: "csv", path: "sentiment.csv", labels: ["neg", "positive"] }, TINY),
    ["sentiment.csv", "line 2", 'label "pos" is not in the label list', '["neg","positive"]'],
  );
  await assertInputError(
    () =>
      loadDataset({
        format: "jsonl",
        path: "pairs.jsonl",
        text_column: "premise",
        labels: ["entailment", "contradiction"],
      }, TINY),
    ["pairs.jsonl", "line 3", '"neutral"', '["entailment","contradiction"]'],
  );
  await withTempDir(async (dir) => {
    const cases: [string, string, string[]][] = [
      ["ragged.tsv", "text\tlabel\na\t1\nb\n", ["line 3", "wrong number of fields"]],
      ["open.csv", 'text,label\n"a,1\nb,2\n', ["line 2", "unterminated quoted field"]],
      ["bad.jsonl", '{"text":"a","label":"x"}\n{"text": oops}\n', ["line 2", "invalid JSON"]],
      ["nolabel.csv", "text,label\na,x\nb,\n", ["line 3", "empty label"]],
      ["notext.jsonl", '{"text":"a","label":"x"}\n{"label":"x"}\n', ["line 2", 'column "text"']],
    ];
    for (const [name, body, parts] of cases) {
      await Deno.writeTextFile(join(dir, name), body);
      const format = name.split(".")[1] as DatasetSpec["format"];
      await assertInputError(() => loadDataset({ format, path: name }, dir), [name, ...parts]);
    }
    await Deno.writeTextFile(join(dir, "junk.parquet"), "not parquet at all");
    await assertInputError(
      () => loadDataset({ format: "parquet", path: "junk.parquet" }, dir),
      ["junk.parquet", "not a readable Parquet file"],
    );
  });
  await assertInputError(
    () =>
      loadDataset(
        { format: "csv", path: "sentiment.csv", split: { dev: 0.5, test: 0.5, seed: 0 } },
        TINY,
      ),
    ["split", "bad split ratios"],
  );
});

Deno.test("bad inputs: invalid UTF-8 names the file, line and byte offset", async () => {
  assert.equal(firstInvalidUtf8(new TextEncoder().encode("héllo — ok 😀")), -1);
  assert.equal(firstInvalidUtf8(Uint8Array.of(0x61, 0xc3)), 1); // truncated
  assert.equal(firstInvalidUtf8(Uint8Array.of(0xc0, 0x80)), 0); // overlong
  assert.equal(firstInvalidUtf8(Uint8Array.of(0xed, 0xa0, 0x80)), 0); // surrogate
  await withTempDir(async (dir) => {
    const head = new TextEncoder().encode("text,label\nfine,x\ncaf");
    const bytes = new Uint8Array([...head, 0xe9, ...new TextEncoder().encode(",y\n")]);
    await Deno.writeFile(join(dir, "latin1.csv"), bytes);
    await assertInputError(
      () => loadDataset({ format: "csv", path: "latin1.csv" }, dir),
      [join(dir, "latin1.csv"), "invalid UTF-8", "line 3", `byte offset ${head.length}`],
    );
    await Deno.writeFile(join(dir, "latin1.jsonl"), Uint8Array.of(0x7b, 0x7d, 0x0a, 0xff, 0x0a));
    await assertInputError(
      () => loadDataset({ format: "jsonl", path: "latin1.jsonl" }, dir),
      ["latin1.jsonl", "invalid UTF-8", "line 2, byte offset 3"],
    );
    // In Parquet the bad bytes sit inside a cell: the row and column are named.
    const { parquetWriteBuffer } = await import("hyparquet-writer");
    const buf = parquetWriteBuffer({
      columnData: [{
        name: "text",
        data: [Uint8Array.of(0x6f, 0x6b), Uint8Array.of(0x62, 0xff)],
        type: "BYTE_ARRAY",
      }],
    });
    await Deno.writeFile(join(dir, "bad.parquet"), new Uint8Array(buf));
    await assertInputError(
      () => loadDataset({ format: "parquet", path: "bad.parquet" }, dir),
      ["bad.parquet", "invalid UTF-8", 'row 2, column "text", byte offset 1'],
    );
  });
});

Deno.test("text helpers: email text, Brown detokenizer, chunking", () => {
  const raw = "From x\nReceived: relay\nSubject: Win a\n  prize\nContent-Type: text/html\n" +
    "Content-Transfer-Encoding: quoted-printable\n\n<p>Click =3D <b>now</b>&amp; win=\n big</p>\n";
  assert.equal(emailText(raw), "Win a prize Click = now & win big");
  assert.equal(emailText(`Subject: s\n\n${"word ".repeat(100)}`, 50).length <= 50, true);
  assert.equal(
    brownSentence(
      "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc it/pps didn't/do* ./.",
    ),
    'The jury said "no evidence", and it didn\'t.',
  );
  const long = "One two three. Four five six. Seven eight nine.\n\nShort para.";
  assert.deepEqual(chunkText(long, 30), [
    "One two three. Four five six.",
    "Seven eight nine.",
    "Short para.",
  ]);
  assert.ok(chunkText("x ".repeat(100), 20).every((c) => c.length <= 20));
});

Deno.test("corpus: spam-assassin", async () => {
  const d = await loadDataset({ format: "spam-assassin", split: NO_SPLIT });
  assert.deepEqual(d.labels, ["ham", "spam"]);
  assert.equal(d.train.length, 6046);
  const spam = d.train.filter((e) => e.label === 1).length;
  console.log(`spam-assassin: ${d.train.length} emails, ${spam} spam`);
  assert.ok(spam > 1000 && spam < 3000);
  assert.ok(d.train.every((e) => e.text.length > 0 && e.text.length <= 2000));
  assert.ok(!d.train.some((e) => /^Received:/m.test(e.text)));
});

Deno.test("corpus: brown", async () => {
  const d = await loadDataset({ format: "brown", split: { dev: 0.1, test: 0.1, seed: 0 } });
  assert.equal(d.labels!.length, 15);
  assert.deepEqual(d.labels!.slice(0, 3), ["adventure", "belles_lettres", "editorial"]);
  const n = d.train.length + d.dev.length + d.test.length;
  console.log(`brown: ${n} sentences, ${d.labels!.length} genres`);
  assert.equal(n, 57340);
  assert.equal(new Set(d.test.map((e) => e.label)).size, 15);
  const first = [...d.train, ...d.dev, ...d.test].find((e) =>
    e.text.startsWith("The Fulton County")
  );
  assert.ok(first, "the first news sentence is there");
  assert.equal(d.labels![first.label!], "news");
});

Deno.test("corpus: sotu and moby-dick, unlabeled chunks", async () => {
  for (const format of ["sotu", "moby-dick"] as const) {
    const d = await loadDataset({ format, split: NO_SPLIT });
    console.log(`${format}: ${d.train.length} chunks`);
    assert.equal(d.labels, undefined);
    assert.ok(d.train.length > 1000);
    assert.ok(
      d.train.every((e) => e.label === undefined && e.text.length > 0 && e.text.length <= 600),
    );
  }
  const moby = await loadDataset({ format: "moby-dick", limit: 50, split: NO_SPLIT });
  assert.equal(moby.train.length, 50);
});
