/**
 * safetensors read/write and checkpoint-file normalization: round trips, a byte-level file built
 * by hand (independent of the writer), every validation error, and HF name handling.
 */

import assert from "node:assert/strict";
import { assertInputError, withTempDir } from "./_util.ts";
import { join } from "node:path";
import {
  encodeSafetensors,
  f16BitsToNumber,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  readSafetensors,
  writeSafetensors,
} from "../pipeline/model/safetensors.ts";
import {
  readCheckpointTensors,
  writeCheckpointTensors,
} from "../pipeline/model/checkpoint_files.ts";

// ---------------------------------------------------------------------------------------------
// Helpers.

/** Build a safetensors file by hand: u64 LE length, header text as given, raw data bytes. */
function buildFile(header: unknown, data: Uint8Array, headerLen?: bigint): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLen ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** Little-endian bytes of u16 words. */
function u16le(...words: number[]): Uint8Array {
  const out = new Uint8Array(words.length * 2);
  const dv = new DataView(out.buffer);
  words.forEach((w, i) => dv.setUint16(2 * i, w, true));
  return out;
}

function f32le(...values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const dv = new DataView(out.buffer);
  values.forEach((v, i) => dv.setFloat32(4 * i, v, true));
  return out;
}

function i64le(...values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const dv = new DataView(out.buffer);
  values.forEach((v, i) => dv.setBigInt64(8 * i, BigInt(v), true));
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function bitsOf(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** Deterministic pseudo-random u32 stream (xorshift32). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>>= 0);
  };
}

function randomFloats(n: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed);
  return Float32Array.from({ length: n }, () => ((next() / 2 ** 32) * 2 - 1) * scale);
}

/** A valid 3-tensor file (F32) and its tensors, for the error tests that damage it. */
function validFile(): Uint8Array {
  return encodeSafetensors([
    { name: "a", shape: [2, 3], data: randomFloats(6, 1) },
    { name: "b", shape: [4], data: randomFloats(4, 2) },
    { name: "c", shape: [5], data: randomFloats(5, 3) },
  ]);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

Deno.test("F32 round trip is bit-identical, incl. -0, inf, NaN, subnormals, scalars, empties", async () => {
  await withTempDir(async (dir) => {
    const special = new Float32Array([0, -0, Infinity, -Infinity, NaN, 1e-45, -1.4e-40, 3.4e38]);
    const tensors = new Map([
      ["w", { shape: [16, 8], data: randomFloats(128, 7, 10) }],
      ["special", { shape: [2, 4], data: special }],
      ["scalar", { shape: [], data: new Float32Array([42.5]) }],
      ["empty", { shape: [0, 3], data: new Float32Array(0) }],
    ]);
    const path = join(dir, "m.safetensors");
    await writeSafetensors(path, tensors, { metadata: { note: "hi" } });
    const st = await readSafetensors(path);
    assert.deepEqual(st.metadata, { format: "pt", note: "hi" });
    assert.deepEqual(st.skipped, []);
    assert.equal(st.tensors.size, 4);
    for (const [name, t] of tensors) {
      const got = st.tensors.get(name)!;
      assert.equal(got.dtype, "F32");
      assert.deepEqual(got.shape, t.shape);
      assert.deepEqual(bitsOf(got.data), bitsOf(t.data), name);
    }
  });
});

Deno.test("header is padded with spaces to 8-byte alignment; tensors sorted by name", () => {
  for (let extra = 0; extra < 9; extra++) {
    // Vary the name length so every padding amount occurs.
    const bytes = encodeSafetensors([
      { name: "zz", shape: [1], data: new Float32Array([1]) },
      { name: "a".repeat(extra + 1), shape: [2], data: new Float32Array([2, 3]) },
    ]);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    const trimmed = text.trimEnd();
    assert.ok(n - trimmed.length < 8);
    assert.match(text.slice(trimmed.length), /^ *$/);
    assert.ok(text.startsWith('{"__metadata__":{"format":"pt"}'));
    const header = JSON.parse(text);
    assert.deepEqual(header["a".repeat(extra + 1)].data_offsets, [0, 8]);
    assert.deepEqual(header.zz.data_offsets, [8, 12]);
    assert.equal(bytes.length, 8 + n + 12);
    assert.deepEqual(
      new Float32Array(bytes.slice(8 + n).buffer),
      new Float32Array([2, 3, 1]),
    );
  }
});

Deno.test("F16 round trip: exact for representable values, within half an ulp otherwise", async () => {
  await withTempDir(async (dir) => {
    // Every finite binary16 value.
    const all: number[] = [];
    for (let h = 0; h < 0x10000; h++) {
      if (((h >>> 10) & 0x1f) !== 0x1f) all.push(f16BitsToNumber(h));
    }
    const exact = new Float32Array(all);
    const approx = randomFloats(10_000, 11, 100);
    const path = join(dir, "h.safetensors");
    await writeSafetensors(path, [
      { name: "exact", shape: [exact.length], data: exact },
      { name: "approx", shape: [approx.length], data: approx },
      { name: "special", shape: [3], data: new Float32Array([Infinity, -Infinity, NaN]) },
    ], { dtype: "F16" });
    const st = await readSafetensors(path);
    assert.equal(st.tensors.get("exact")!.dtype, "F16");
    assert.deepEqual(bitsOf(st.tensors.get("exact")!.data), bitsOf(exact));
    const got = st.tensors.get("approx")!.data;
    for (let i = 0; i < approx.length; i++) {
      const tol = Math.max(Math.abs(approx[i]) * 2 ** -11, 2 ** -25);
      assert.ok(Math.abs(got[i] - approx[i]) <= tol, `${approx[i]} -> ${got[i]}`);
    }
    const sp = st.tensors.get("special")!.data;
    assert.equal(sp[0], Infinity);
    assert.equal(sp[1], -Infinity);
    assert.ok(Number.isNaN(sp[2]));
  });
});

Deno.test("F16 encoding rounds to nearest even, incl. subnormals and overflow", () => {
  const enc = (v: number) => f32BitsToF16Bits(new Uint32Array(new Float32Array([v]).buffer)[0]);
  assert.equal(enc(1), 0x3c00);
  assert.equal(enc(1 + 2 ** -11), 0x3c00); // tie → even (down)
  assert.equal(enc(1 + 3 * 2 ** -11), 0x3c02); // tie → even (up)
  assert.equal(enc(1 + 2 ** -11 + 2 ** -20), 0x3c01); // above the tie
  assert.equal(enc(65504), 0x7bff);
  assert.equal(enc(65519), 0x7bff);
  assert.equal(enc(65520), 0x7c00); // tie at max → even = infinity
  assert.equal(enc(-1e10), 0xfc00);
  assert.equal(enc(2 ** -24), 0x0001);
  assert.equal(enc(2 ** -25), 0x0000); // tie → even (zero)
  assert.equal(enc(2 ** -25 + 2 ** -40), 0x0001);
  assert.equal(enc(3 * 2 ** -25), 0x0002); // tie 1.5 → 2
  assert.equal(enc(-(2 ** -26)), 0x8000);
  assert.equal(enc(1023.5 * 2 ** -24), 0x0400); // rounds up into the smallest normal
  assert.equal(enc(-0), 0x8000);
  assert.equal(enc(NaN) & 0x7c00, 0x7c00);
  assert.notEqual(enc(NaN) & 0x3ff, 0);
  // Agreement with the engine's own binary16 conversion, where it exists.
  const F16 = typeof Float16Array === "function" ? Float16Array : undefined;
  if (F16) {
    const next = rng(99);
    const bits = Uint32Array.from({ length: 200_000 }, () => next());
    const floats = new Float32Array(bits.buffer);
    const native = new Uint16Array(new F16(floats).buffer);
    for (let i = 0; i < bits.length; i++) {
      if (Number.isNaN(floats[i])) continue;
      assert.equal(f32BitsToF16Bits(bits[i]), native[i], `bits 0x${bits[i].toString(16)}`);
    }
    const allHalf = new F16(new Uint16Array(Array.from({ length: 0x10000 }, (_, i) => i)).buffer);
    for (let h = 0; h < 0x10000; h++) {
      assert.ok(Object.is(f16BitsToNumber(h), allHalf[h]) || Number.isNaN(allHalf[h]));
    }
  }
});

Deno.test("BF16 round trip: exact for representable values, ties to even", async () => {
  await withTempDir(async (dir) => {
    const exact = Float32Array.from(
      [1, -2, 0.5, 3.140625, 1e-40, Infinity, -Infinity, 0, -0],
      (v) => v,
    );
    // Make every value exactly representable: keep only the top 16 bits.
    const eb = bitsOf(exact);
    for (let i = 0; i < eb.length; i++) eb[i] &= 0xffff0000;
    const approx = randomFloats(10_000, 5, 1000);
    const path = join(dir, "b.safetensors");
    await writeSafetensors(path, [
      { name: "exact", shape: [exact.length], data: exact },
      { name: "approx", shape: [approx.length], data: approx },
    ], { dtype: "BF16" });
    const st = await readSafetensors(path);
    assert.equal(st.tensors.get("exact")!.dtype, "BF16");
    assert.deepEqual(bitsOf(st.tensors.get("exact")!.data), eb);
    const got = st.tensors.get("approx")!.data;
    for (let i = 0; i < approx.length; i++) {
      assert.ok(Math.abs(got[i] - approx[i]) <= Math.abs(approx[i]) * 2 ** -8);
    }
  });
  const enc = (v: number) => f32BitsToBf16Bits(new Uint32Array(new Float32Array([v]).buffer)[0]);
  assert.equal(enc(1), 0x3f80);
  assert.equal(enc(1 + 2 ** -8), 0x3f80); // tie → even (down)
  assert.equal(enc(1 + 3 * 2 ** -8), 0x3f82); // tie → even (up)
  assert.equal(enc(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  assert.equal(enc(3.4028234663852886e38), 0x7f80); // f32 max rounds to infinity
  assert.equal(enc(-Infinity), 0xff80);
  assert.equal(enc(NaN) & 0x7f80, 0x7f80);
  assert.notEqual(enc(NaN) & 0x7f, 0);
});

Deno.test("hand-built file: F16 subnormals/inf/NaN, BF16, unaligned F32, skipped I64", async () => {
  await withTempDir(async (dir) => {
    // Data order: h (F16, 6 bytes), f (F32 at offset 6: unaligned), b (BF16), ids (I64).
    const data = concat(
      u16le(0x0001, 0x03ff, 0x7c00),
      f32le(1.5, -0.25),
      u16le(0x3f80, 0xc000, 0x7f80, 0x0001, 0xff80, 0x7fc0),
      i64le(0, 1, 2),
      u16le(0xfc00, 0x7e00, 0x8000, 0x3c00, 0x4248, 0xbc00),
    );
    // Header keys deliberately not in data order; no padding (unaligned data section).
    const header = {
      b: { dtype: "BF16", shape: [2, 3], data_offsets: [14, 26] },
      "embeddings.position_ids": { dtype: "I64", shape: [1, 3], data_offsets: [26, 50] },
      __metadata__: { format: "pt" },
      h: { dtype: "F16", shape: [3], data_offsets: [0, 6] },
      h2: { dtype: "F16", shape: [2, 3], data_offsets: [50, 62] },
      f: { dtype: "F32", shape: [2], data_offsets: [6, 14] },
    };
    const path = join(dir, "hand.safetensors");
    await Deno.writeFile(path, buildFile(header, data));
    const st = await readSafetensors(path);
    assert.deepEqual([...st.tensors.keys()], ["h", "f", "b", "h2"]);
    assert.deepEqual(st.skipped, [
      { name: "embeddings.position_ids", dtype: "I64", shape: [1, 3] },
    ]);
    assert.deepEqual(st.metadata, { format: "pt" });
    const h = st.tensors.get("h")!;
    assert.deepEqual(h.shape, [3]);
    assert.deepEqual([...h.data], [2 ** -24, 1023 * 2 ** -24, Infinity]);
    assert.deepEqual([...st.tensors.get("f")!.data], [1.5, -0.25]);
    const b = st.tensors.get("b")!;
    assert.deepEqual(b.shape, [2, 3]);
    const bv = [...b.data];
    assert.deepEqual(bv.slice(0, 5), [1, -2, Infinity, 2 ** -133, -Infinity]);
    assert.ok(Number.isNaN(bv[5]));
    const h2 = [...st.tensors.get("h2")!.data];
    assert.equal(h2[0], -Infinity);
    assert.ok(Number.isNaN(h2[1]));
    assert.ok(Object.is(h2[2], -0));
    assert.deepEqual(h2.slice(3), [1, 3.140625, -1]);
  });
});

// ---------------------------------------------------------------------------------------------
// Validation errors.

Deno.test("errors: missing, short, oversized or truncated header, corrupt JSON", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "x.safetensors");
    await assertInputError(() => readSafetensors(p), [p, "not found"]);

    await Deno.writeFile(p, new Uint8Array([1, 2, 3]));
    await assertInputError(() => readSafetensors(p), [p, "truncated", "8 bytes", "got 3 bytes"]);

    await Deno.writeFile(p, buildFile("{}", new Uint8Array(), 200_000_000n));
    await assertInputError(() => readSafetensors(p), [p, "unreasonably large", "200000000"]);

    await Deno.writeFile(p, buildFile('{"a":1}', new Uint8Array(), 100n));
    await assertInputError(() => readSafetensors(p), [p, "truncated", "100 header bytes"]);

    await Deno.writeFile(p, buildFile('{"a": {"dtype": "F32",', new Uint8Array()));
    await assertInputError(() => readSafetensors(p), [p, "corrupt header", "JSON"]);

    await Deno.writeFile(p, buildFile("[1,2]", new Uint8Array()));
    await assertInputError(() => readSafetensors(p), [p, "corrupt header", "object"]);

    await Deno.writeFile(p, buildFile({ __metadata__: { n: 3 } }, new Uint8Array()));
    await assertInputError(() => readSafetensors(p), [p, "__metadata__.n", "expected string"]);
  });
});

Deno.test("errors: unsupported dtype names file, tensor, dtype and the supported list", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "q.safetensors");
    for (const dtype of ["F8_E4M3", "Q4", "F64"]) {
      const header = {
        ok: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
        "encoder.layer.0.attention.self.query.weight": {
          dtype,
          shape: [2],
          data_offsets: [4, 6],
        },
      };
      await Deno.writeFile(p, buildFile(header, new Uint8Array(6)));
      await assertInputError(() => readSafetensors(p), [
        p,
        "encoder.layer.0.attention.self.query.weight",
        "unsupported dtype",
        `got ${dtype}`,
        "F32, F16, BF16",
      ]);
    }
  });
});

Deno.test("errors: offsets that disagree with shape, overlap, gaps, bad shapes", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "o.safetensors");
    const write = (header: unknown, n: number) =>
      Deno.writeFile(p, buildFile(header, new Uint8Array(n)));

    await write({ w: { dtype: "F16", shape: [2, 3], data_offsets: [0, 10] } }, 10);
    await assertInputError(() => readSafetensors(p), [
      p,
      "w: data_offsets do not match",
      "expected 12 bytes",
      "got 10 bytes",
    ]);

    await write({
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    }, 12);
    await assertInputError(() => readSafetensors(p), [p, "b: ", "overlaps", "start at byte 8"]);

    await write({
      a: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
      b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    }, 12);
    await assertInputError(() => readSafetensors(p), [p, "b: ", "gap", "got 8"]);

    await write({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, 10);
    await assertInputError(() => readSafetensors(p), [p, "trailing bytes", "4 bytes", "got 10"]);

    await write({ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4);
    await assertInputError(() => readSafetensors(p), [p, "a: ", "shape"]);

    await write({ a: { dtype: "F32", shape: [1], data_offsets: [4, 0] } }, 4);
    await assertInputError(() => readSafetensors(p), [p, "a: ", "data_offsets"]);

    await write({ a: { shape: [1], data_offsets: [0, 4] } }, 4);
    await assertInputError(() => readSafetensors(p), [p, "a: ", "dtype"]);
  });
});

Deno.test("errors: a truncated file names the tensor and expected vs got bytes", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "t.safetensors");
    const bytes = validFile();
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    // a: 24 bytes, b: 16, c: 20 → data section 60 bytes; cut 7 bytes off c.
    await Deno.writeFile(p, bytes.subarray(0, bytes.length - 7));
    await assertInputError(() => readSafetensors(p), [
      p,
      "c: file is truncated",
      "expected 60 bytes",
      "got 53 bytes",
    ]);
    // Cut into b: b is the first tensor that does not fit.
    await Deno.writeFile(p, bytes.subarray(0, 8 + n + 30));
    await assertInputError(() => readSafetensors(p), [p, "b: ", "truncated", "40", "got 30"]);
  });
});

Deno.test("writer rejects bad tensors with an InputError naming the tensor", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "w.safetensors");
    await assertInputError(
      () => writeSafetensors(p, [{ name: "x", shape: [2, 2], data: new Float32Array(3) }]),
      [p, "x: ", "expected 4 values", "got 3"],
    );
    await assertInputError(
      () =>
        writeSafetensors(p, [
          { name: "x", shape: [1], data: new Float32Array(1) },
          { name: "x", shape: [1], data: new Float32Array(1) },
        ]),
      [p, "x: ", "duplicate"],
    );
    await assertInputError(
      () => writeSafetensors(p, [{ name: "__metadata__", shape: [], data: new Float32Array(1) }]),
      [p, "invalid tensor name"],
    );
    // Nothing was left behind.
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

// ---------------------------------------------------------------------------------------------
// Checkpoint files: discovery and name normalization.

Deno.test("checkpoint: strips bert., renames gamma/beta, drops position_ids, keeps heads", async () => {
  await withTempDir(async (dir) => {
    const names = [
      "bert.embeddings.word_embeddings.weight",
      "bert.embeddings.LayerNorm.gamma",
      "bert.embeddings.LayerNorm.beta",
      "bert.encoder.layer.0.output.LayerNorm.gamma",
      "bert.pooler.dense.weight",
      "cls.predictions.transform.LayerNorm.gamma",
      "cls.predictions.bias",
      "cls.seq_relationship.weight",
      "classifier.weight",
    ];
    const header: Record<string, unknown> = {};
    const parts: Uint8Array[] = [];
    let at = 0;
    names.forEach((name, i) => {
      header[name] = { dtype: "F32", shape: [2], data_offsets: [at, at + 8] };
      parts.push(f32le(i, -i));
      at += 8;
    });
    header["bert.embeddings.position_ids"] = {
      dtype: "I64",
      shape: [1, 2],
      data_offsets: [at, at + 16],
    };
    parts.push(i64le(0, 1));
    await Deno.writeFile(join(dir, "model.safetensors"), buildFile(header, concat(...parts)));

    const ck = await readCheckpointTensors(dir);
    assert.equal(ck.file, join(dir, "model.safetensors"));
    assert.deepEqual(ck.dropped, ["bert.embeddings.position_ids"]);
    assert.deepEqual([...ck.tensors.keys()].sort(), [
      "classifier.weight",
      "cls.predictions.bias",
      "cls.predictions.transform.LayerNorm.weight",
      "cls.seq_relationship.weight",
      "embeddings.LayerNorm.bias",
      "embeddings.LayerNorm.weight",
      "embeddings.word_embeddings.weight",
      "encoder.layer.0.output.LayerNorm.weight",
      "pooler.dense.weight",
    ]);
    assert.deepEqual([...ck.tensors.get("embeddings.LayerNorm.bias")!.data], [2, -2]);
    assert.equal(ck.tensors.get("classifier.weight")!.dtype, "F32");
  });
});

Deno.test("checkpoint: a float position_ids buffer is dropped too; name clashes are errors", async () => {
  await withTempDir(async (dir) => {
    const one = () => ({ shape: [1], data: new Float32Array([1]) });
    await writeSafetensors(
      join(dir, "model.safetensors"),
      new Map([["embeddings.position_ids", one()], ["pooler.dense.bias", one()]]),
    );
    const ck = await readCheckpointTensors(dir);
    assert.deepEqual([...ck.tensors.keys()], ["pooler.dense.bias"]);
    assert.deepEqual(ck.dropped, ["embeddings.position_ids"]);

    await writeSafetensors(
      join(dir, "model.safetensors"),
      new Map([["embeddings.LayerNorm.gamma", one()], ["bert.embeddings.LayerNorm.weight", one()]]),
    );
    await assertInputError(() => readCheckpointTensors(dir), [
      "model.safetensors",
      "embeddings.LayerNorm.weight",
      "same name",
    ]);
  });
});

Deno.test("checkpoint: missing dir, pytorch-only dir (with conversion hint), empty dir", async () => {
  await withTempDir(async (dir) => {
    const missing = join(dir, "nope");
    await assertInputError(() => readCheckpointTensors(missing), [missing, "not found"]);

    await Deno.writeTextFile(join(dir, "config.json"), "{}");
    await assertInputError(() => readCheckpointTensors(dir), [dir, "no model weights"]);

    await Deno.writeFile(join(dir, "pytorch_model.bin"), new Uint8Array(4));
    await assertInputError(() => readCheckpointTensors(dir), [
      dir,
      "reads only safetensors",
      "got pytorch_model.bin",
      "AutoModel.from_pretrained",
      "safe_serialization=True",
    ]);

    await assertInputError(
      () => readCheckpointTensors(join(dir, "config.json")),
      ["config.json", "not a directory"],
    );
  });
});

Deno.test("checkpoint: write with and without the bert. prefix, read back", async () => {
  await withTempDir(async (dir) => {
    const tensors = new Map([
      ["embeddings.word_embeddings.weight", { shape: [3, 2], data: randomFloats(6, 1) }],
      ["encoder.layer.0.attention.self.query.bias", { shape: [2], data: randomFloats(2, 2) }],
      ["pooler.dense.bias", { shape: [2], data: randomFloats(2, 3) }],
      ["classifier.weight", { shape: [2, 2], data: randomFloats(4, 4) }],
    ]);
    const path = await writeCheckpointTensors(dir, tensors, { prefixBase: true, dtype: "F16" });
    assert.equal(path, join(dir, "model.safetensors"));
    const raw = await readSafetensors(path);
    assert.deepEqual([...raw.tensors.keys()].sort(), [
      "bert.embeddings.word_embeddings.weight",
      "bert.encoder.layer.0.attention.self.query.bias",
      "bert.pooler.dense.bias",
      "classifier.weight",
    ]);
    assert.equal(raw.tensors.get("classifier.weight")!.dtype, "F16");
    const back = await readCheckpointTensors(dir);
    assert.deepEqual([...back.tensors.keys()].sort(), [...tensors.keys()].sort());
    for (const [name, t] of tensors) {
      const got = back.tensors.get(name)!;
      assert.deepEqual(got.shape, t.shape);
      for (let i = 0; i < t.data.length; i++) {
        assert.ok(Math.abs(got.data[i] - t.data[i]) <= Math.abs(t.data[i]) * 2 ** -11 + 2 ** -25);
      }
    }

    await writeCheckpointTensors(dir, tensors, { prefixBase: false });
    const plain = await readSafetensors(path);
    assert.deepEqual([...plain.tensors.keys()].sort(), [...tensors.keys()].sort());
  });
});

Deno.test("checkpoint: sharded model.safetensors.index.json", async () => {
  await withTempDir(async (dir) => {
    const one = (v: number) => ({ shape: [1], data: new Float32Array([v]) });
    await writeSafetensors(
      join(dir, "model-00001-of-00002.safetensors"),
      new Map([["bert.embeddings.LayerNorm.gamma", one(1)], ["bert.pooler.dense.bias", one(2)]]),
    );
    await writeSafetensors(
      join(dir, "model-00002-of-00002.safetensors"),
      new Map([["classifier.bias", one(3)]]),
    );
    const index = {
      metadata: { total_size: 12 },
      weight_map: {
        "bert.embeddings.LayerNorm.gamma": "model-00001-of-00002.safetensors",
        "bert.pooler.dense.bias": "model-00001-of-00002.safetensors",
        "classifier.bias": "model-00002-of-00002.safetensors",
      },
    };
    const indexPath = join(dir, "model.safetensors.index.json");
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    const ck = await readCheckpointTensors(dir);
    assert.equal(ck.file, indexPath);
    assert.deepEqual(
      Object.fromEntries([...ck.tensors].map(([k, t]) => [k, t.data[0]])),
      { "embeddings.LayerNorm.weight": 1, "pooler.dense.bias": 2, "classifier.bias": 3 },
    );

    (index.weight_map as Record<string, string>)["classifier.weight"] =
      "model-00002-of-00002.safetensors";
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    await assertInputError(() => readCheckpointTensors(dir), [
      "model-00002-of-00002.safetensors",
      "classifier.weight",
      "missing",
    ]);

    (index.weight_map as Record<string, string>)["classifier.weight"] = "../evil.safetensors";
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    await assertInputError(() => readCheckpointTensors(dir), [indexPath, "invalid shard"]);
  });
});

// ---------------------------------------------------------------------------------------------
// Optional cross-check with an independent implementation (Python + numpy), if present.

async function hasNumpy(): Promise<boolean> {
  try {
    const out = await new Deno.Command("python3", {
      args: ["-c", "import numpy"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

const PY_CROSSCHECK = `
import json, struct, sys
import numpy as np
path_in, path_out = sys.argv[1], sys.argv[2]
raw = open(path_in, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
assert (8 + n) % 8 == 0
data = raw[8 + n:]
e = header["x"]
a, b = e["data_offsets"]
x16 = np.frombuffer(data[a:b], dtype="<f2").reshape(e["shape"])
src = np.arange(-3000, 3000, dtype=np.float32).reshape(60, 100) * np.float32(0.0137)
assert np.array_equal(x16, src.astype(np.float16)), "F16 rounding differs from numpy"
y = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 7
body = y.astype("<f2").tobytes() + y.astype("<f4").tobytes()
hdr = json.dumps({"h": {"dtype": "F16", "shape": [3, 4], "data_offsets": [0, 24]},
                  "f": {"dtype": "F32", "shape": [3, 4], "data_offsets": [24, 72]}}).encode()
open(path_out, "wb").write(struct.pack("<Q", len(hdr)) + hdr + body)
`;

Deno.test({
  name: "cross-check with numpy: F16 rounding and a Python-written file",
  ignore: !(await hasNumpy()),
  fn: async () => {
    await withTempDir(async (dir) => {
      const src = Float32Array.from({ length: 6000 }, (_, i) => Math.fround(i - 3000));
      for (let i = 0; i < src.length; i++) src[i] = Math.fround(src[i] * Math.fround(0.0137));
      const ours = join(dir, "ours.safetensors");
      const theirs = join(dir, "theirs.safetensors");
      await writeSafetensors(ours, [{ name: "x", shape: [60, 100], data: src }], { dtype: "F16" });
      const res = await new Deno.Command("python3", { args: ["-c", PY_CROSSCHECK, ours, theirs] })
        .output();
      assert.ok(res.success, new TextDecoder().decode(res.stderr));
      const st = await readSafetensors(theirs);
      const f = st.tensors.get("f")!.data;
      const h = st.tensors.get("h")!.data;
      for (let i = 0; i < 12; i++) {
        assert.equal(f[i], Math.fround((i - 5) / 7));
        assert.ok(Math.abs(h[i] - f[i]) <= Math.abs(f[i]) * 2 ** -11);
      }
    });
  },
});
