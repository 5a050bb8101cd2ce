/**
 * A minimal protocol-buffers wire-format writer (and a small reader for tests), written from the
 * wire-format spec: a field is a key `(fieldNumber << 3) | wireType` as a varint, followed by a
 * varint (type 0), 8 little-endian bytes (type 1), a varint length + bytes (type 2: strings,
 * bytes, nested messages, packed repeated scalars) or 4 little-endian bytes (type 5).
 *
 * The writer keeps a list of chunks and never concatenates until {@link ProtoWriter.finish}, so
 * nesting a message with tens of megabytes of weights costs no copy per level.
 * @module
 */

/** Wire types of the protobuf encoding. */
export const WireType = { VARINT: 0, I64: 1, LEN: 2, I32: 5 } as const;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of a typed array in little-endian order (a view when the host is little-endian). */
export function littleEndianBytes(
  a: Float32Array | Int32Array | BigInt64Array | Uint16Array | Float64Array,
): Uint8Array {
  const view = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  if (LITTLE_ENDIAN) return view;
  const out = new Uint8Array(view.length);
  const w = a.BYTES_PER_ELEMENT;
  for (let i = 0; i < view.length; i += w) {
    for (let j = 0; j < w; j++) out[i + j] = view[i + w - 1 - j];
  }
  return out;
}

/** Append-only encoder of one protobuf message. */
export class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private scratch: number[] = [];
  /** Bytes written so far. */
  length = 0;

  private flushScratch(): void {
    if (this.scratch.length === 0) return;
    this.chunks.push(Uint8Array.from(this.scratch));
    this.scratch = [];
  }

  private pushBytes(b: Uint8Array): void {
    if (b.length < 64) {
      for (let i = 0; i < b.length; i++) this.scratch.push(b[i]);
    } else {
      this.flushScratch();
      this.chunks.push(b);
    }
    this.length += b.length;
  }

  /**
   * A raw varint. Non-negative numbers up to 2^53 and any int64 as a bigint; negative values
   * are written as their 64-bit two's complement (10 bytes), as protobuf does for int64/int32.
   */
  varint(v: number | bigint): this {
    if (typeof v === "number") {
      if (!Number.isInteger(v)) throw new RangeError(`varint: ${v} is not an integer`);
      if (v < 0 || v > Number.MAX_SAFE_INTEGER) return this.varint(BigInt(v));
      while (v >= 0x80) {
        this.scratch.push((v % 0x80) | 0x80);
        v = Math.floor(v / 0x80);
        this.length++;
      }
      this.scratch.push(v);
      this.length++;
      return this;
    }
    let u = BigInt.asUintN(64, v);
    while (u >= 0x80n) {
      this.scratch.push(Number(u & 0x7fn) | 0x80);
      u >>= 7n;
      this.length++;
    }
    this.scratch.push(Number(u));
    this.length++;
    return this;
  }

  /** A field key. */
  tag(field: number, wireType: number): this {
    return this.varint(field * 8 + wireType);
  }

  /** An integer field (int32, int64, uint64, enum, bool as 0/1): wire type 0. */
  int(field: number, v: number | bigint): this {
    return this.tag(field, WireType.VARINT).varint(v);
  }

  /** A float field: wire type 5, 4 little-endian bytes. */
  float(field: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.tag(field, WireType.I32);
    this.pushBytes(b);
    return this;
  }

  /** A double field: wire type 1, 8 little-endian bytes. */
  double(field: number, v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    this.tag(field, WireType.I64);
    this.pushBytes(b);
    return this;
  }

  /** A length-delimited bytes field (the array is referenced, not copied). */
  bytes(field: number, b: Uint8Array): this {
    this.tag(field, WireType.LEN).varint(b.length);
    this.pushBytes(b);
    return this;
  }

  /** A UTF-8 string field. */
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  /** A nested message field; `m`'s chunks are adopted, so do not write to `m` afterwards. */
  message(field: number, m: ProtoWriter): this {
    m.flushScratch();
    this.tag(field, WireType.LEN).varint(m.length);
    this.flushScratch();
    for (const c of m.chunks) this.chunks.push(c);
    this.length += m.length;
    return this;
  }

  /** Packed repeated varints (int64/int32 lists) in one length-delimited field. */
  packedInts(field: number, values: readonly (number | bigint)[]): this {
    const inner = new ProtoWriter();
    for (const v of values) inner.varint(v);
    inner.flushScratch();
    return this.bytes(field, concat(inner.chunks, inner.length));
  }

  /** Packed repeated floats (fixed32) in one length-delimited field. */
  packedFloats(field: number, values: ArrayLike<number>): this {
    return this.bytes(field, littleEndianBytes(Float32Array.from(values)));
  }

  /** Packed repeated doubles (fixed64) in one length-delimited field. */
  packedDoubles(field: number, values: ArrayLike<number>): this {
    return this.bytes(field, littleEndianBytes(Float64Array.from(values)));
  }

  /** The encoded message as one array. */
  finish(): Uint8Array {
    this.flushScratch();
    return concat(this.chunks, this.length);
  }
}

function concat(chunks: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  if (off !== length) throw new Error(`protobuf: internal length mismatch ${off} vs ${length}`);
  return out;
}

/** One decoded field: a bigint for varint/fixed64, a number for fixed32 (raw bits), bytes for LEN. */
export interface ProtoField {
  field: number;
  wireType: number;
  value: bigint | number | Uint8Array;
}

/** Read an unsigned varint at `pos`; returns the value and the next position. */
export function readVarint(buf: Uint8Array, pos: number): [bigint, number] {
  let result = 0n, shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error("protobuf: truncated varint");
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
    if (shift > 63n) throw new Error("protobuf: varint longer than 10 bytes");
  }
}

/** Decode the top-level fields of one message (nested messages stay as bytes). */
export function readFields(buf: Uint8Array): ProtoField[] {
  const out: ProtoField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [key, p] = readVarint(buf, pos);
    pos = p;
    const field = Number(key >> 3n), wireType = Number(key & 7n);
    if (wireType === WireType.VARINT) {
      const [v, q] = readVarint(buf, pos);
      out.push({ field, wireType, value: v });
      pos = q;
    } else if (wireType === WireType.I64) {
      if (pos + 8 > buf.length) throw new Error("protobuf: truncated fixed64");
      const v = new DataView(buf.buffer, buf.byteOffset + pos, 8).getBigUint64(0, true);
      out.push({ field, wireType, value: v });
      pos += 8;
    } else if (wireType === WireType.LEN) {
      const [len, q] = readVarint(buf, pos);
      const end = q + Number(len);
      if (end > buf.length) throw new Error("protobuf: truncated length-delimited field");
      out.push({ field, wireType, value: buf.subarray(q, end) });
      pos = end;
    } else if (wireType === WireType.I32) {
      if (pos + 4 > buf.length) throw new Error("protobuf: truncated fixed32");
      const v = new DataView(buf.buffer, buf.byteOffset + pos, 4).getUint32(0, true);
      out.push({ field, wireType, value: v });
      pos += 4;
    } else {
      throw new Error(`protobuf: unsupported wire type ${wireType} at byte ${pos}`);
    }
  }
  return out;
}
