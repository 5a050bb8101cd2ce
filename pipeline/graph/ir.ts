/**
 * A small ONNX graph builder that encodes a `ModelProto` with {@link ProtoWriter}.
 *
 * Field numbers are those of `onnx.proto` (ModelProto: ir_version 1, producer_name 2,
 * producer_version 3, graph 7, opset_import 8; GraphProto: node 1, name 2, initializer 5,
 * input 11, output 12; NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7;
 * AttributeProto: name 1, f 2, i 3, s 4, ints 8, type 20; TensorProto: dims 1, data_type 2,
 * name 8, raw_data 9; ValueInfoProto: name 1, type 2; TypeProto.tensor_type 1;
 * TypeProto.Tensor: elem_type 1, shape 2; TensorShapeProto.dim 1; Dimension: dim_value 1,
 * dim_param 2; OperatorSetIdProto: domain 1, version 2).
 * @module
 */

import { littleEndianBytes, ProtoWriter } from "./protobuf.ts";

/** ONNX `TensorProto.DataType` values used here. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
} as const;

/** ONNX `AttributeProto.AttributeType` values used here. */
const AttrType = { FLOAT: 1, INT: 2, STRING: 3, INTS: 7 } as const;

/** A node attribute value: a float (`{ f }`), an int, an int list or a string. */
export type AttrValue = { f: number } | number | number[] | string;

/** A graph input or output: element type and dims (a string is a symbolic `dim_param`). */
export interface ValueInfo {
  name: string;
  elemType: number;
  dims: (number | string)[];
}

/** One node of a graph: an ONNX op on named values. */
export interface Node {
  op: string;
  inputs: string[];
  outputs: string[];
  name: string;
  attrs: Record<string, AttrValue>;
  domain?: string;
}

/** A constant tensor of the graph (little-endian bytes of `dataType`). */
export interface Initializer {
  name: string;
  dataType: number;
  dims: number[];
  raw: Uint8Array;
}

/**
 * A built graph as plain data: what every executor runs (ONNX Runtime reads it encoded by
 * {@link GraphBuilder.toModel}; the tfjs executor interprets it node by node). Nodes are in
 * topological order; an empty input name is an omitted optional input.
 */
export interface Graph {
  nodes: readonly Node[];
  initializers: readonly Initializer[];
  inputs: readonly ValueInfo[];
  outputs: readonly ValueInfo[];
}

/** Host data of a tensor: float32, int64 (ids, labels), int32, uint8 (masks), float16 bits. */
export type TensorData = Float32Array | BigInt64Array | Int32Array | Uint8Array | Uint16Array;

/** A tensor a graph is fed or returns, on the host: row-major data and its dims. */
export interface HostTensor {
  data: TensorData;
  dims: number[];
}

/** What a `ModelProto` says besides its graph. */
export interface EncodeOptions {
  name: string;
  opset: number;
  irVersion: number;
  producer: string;
}

/** Builds one ONNX graph: nodes in topological order, initializers, inputs and outputs. */
export class GraphBuilder {
  private nodes: Node[] = [];
  private inits: Initializer[] = [];
  private inputs: ValueInfo[] = [];
  private outputs: ValueInfo[] = [];
  private names = new Set<string>();
  private counter = 0;

  /** An unused value name starting with `hint` (registered when a value takes it). */
  fresh(hint: string): string {
    let n = `${hint}_${this.counter++}`;
    while (this.names.has(n)) n = `${hint}_${this.counter++}`;
    return n;
  }

  /** Declare a graph input. */
  input(info: ValueInfo): string {
    this.names.add(info.name);
    this.inputs.push(info);
    return info.name;
  }

  /** Declare a graph output (an existing value, renamed to `info.name` by an Identity). */
  output(value: string, info: ValueInfo): void {
    if (value !== info.name) this.node("Identity", [value], {}, info.name);
    this.outputs.push(info);
  }

  /** Add an initializer from raw little-endian bytes. */
  initializer(name: string, dataType: number, dims: number[], raw: Uint8Array): string {
    if (this.names.has(name)) throw new Error(`onnx: duplicate value name ${name}`);
    this.names.add(name);
    this.inits.push({ name, dataType, dims, raw });
    return name;
  }

  /** A float32 constant initializer. */
  floats(hint: string, values: number[] | Float32Array, dims: number[] = [values.length]): string {
    return this.initializer(
      this.fresh(hint),
      DataType.FLOAT,
      dims,
      littleEndianBytes(Float32Array.from(values)),
    );
  }

  /** An int64 constant initializer. */
  int64s(hint: string, values: number[], dims: number[] = [values.length]): string {
    return this.initializer(
      this.fresh(hint),
      DataType.INT64,
      dims,
      littleEndianBytes(BigInt64Array.from(values.map(BigInt))),
    );
  }

  /** An int32 constant initializer. */
  int32s(hint: string, values: number[], dims: number[] = [values.length]): string {
    return this.initializer(
      this.fresh(hint),
      DataType.INT32,
      dims,
      littleEndianBytes(Int32Array.from(values)),
    );
  }

  private scalars = new Map<number, string>();

  /** A scalar float32 constant (one initializer per distinct value). */
  scalar(hint: string, v: number): string {
    let name = this.scalars.get(v);
    if (name === undefined) {
      name = this.floats(hint, [v], []);
      this.scalars.set(v, name);
    }
    return name;
  }

  /**
   * Append a node; returns its (first) output name. `out` names the output, else a fresh name
   * derived from the op type is used.
   */
  node(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, out?: string): string {
    const o = out ?? this.fresh(op);
    if (this.names.has(o)) throw new Error(`onnx: duplicate value name ${o}`);
    this.names.add(o);
    this.nodes.push({ op, inputs, outputs: [o], name: `${op}_${this.nodes.length}`, attrs });
    return o;
  }

  /**
   * Append a node with several outputs (e.g. `LayerNormalization`'s Y, Mean, InvStdDev); returns
   * their fresh names. `domain` selects a non-default operator set (e.g. `com.microsoft`).
   */
  nodeMulti(
    op: string,
    inputs: string[],
    outputs: number,
    attrs: Record<string, AttrValue> = {},
    domain?: string,
  ): string[] {
    const outs = Array.from({ length: outputs }, () => {
      const o = this.fresh(op);
      this.names.add(o);
      return o;
    });
    const name = `${op}_${this.nodes.length}`;
    this.nodes.push({ op, inputs, outputs: outs, name, attrs, domain });
    return outs;
  }

  /** Number of nodes so far. */
  get size(): number {
    return this.nodes.length;
  }

  /** The graph as plain data (the live lists: build first, then read). */
  graph(): Graph {
    return {
      nodes: this.nodes,
      initializers: this.inits,
      inputs: this.inputs,
      outputs: this.outputs,
    };
  }

  /** Encode the graph as a `ModelProto`. */
  toModel(opts: EncodeOptions): Uint8Array {
    return GraphBuilder.encode(this.graph(), opts);
  }

  /** Encode `graph` as a `ModelProto`. */
  static encode(graph: Graph, opts: EncodeOptions): Uint8Array {
    const g = new ProtoWriter();
    for (const n of graph.nodes) g.message(1, encodeNode(n));
    g.string(2, opts.name);
    // initializers no node reads (e.g. a constant only a skipped branch would have used)
    const used = new Set(graph.nodes.flatMap((n) => n.inputs));
    for (const v of graph.outputs) used.add(v.name);
    for (const t of graph.initializers) if (used.has(t.name)) g.message(5, encodeTensor(t));
    for (const v of graph.inputs) g.message(11, encodeValueInfo(v));
    for (const v of graph.outputs) g.message(12, encodeValueInfo(v));

    const m = new ProtoWriter();
    m.int(1, opts.irVersion);
    m.string(2, opts.producer);
    m.string(3, "0.1.0");
    m.message(7, g);
    m.message(8, new ProtoWriter().string(1, "").int(2, opts.opset));
    const domains = new Set(graph.nodes.flatMap((n) => n.domain ? [n.domain] : []));
    for (const d of domains) m.message(8, new ProtoWriter().string(1, d).int(2, 1));
    return m.finish();
  }
}

function encodeNode(n: Node): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name);
  w.string(4, n.op);
  if (n.domain) w.string(7, n.domain);
  for (const [name, v] of Object.entries(n.attrs)) {
    const a = new ProtoWriter().string(1, name);
    if (typeof v === "number") a.int(3, v).int(20, AttrType.INT);
    else if (typeof v === "string") a.string(4, v).int(20, AttrType.STRING);
    else if (Array.isArray(v)) a.packedInts(8, v).int(20, AttrType.INTS);
    else a.float(2, v.f).int(20, AttrType.FLOAT);
    w.message(5, a);
  }
  return w;
}

function encodeTensor(t: Initializer): ProtoWriter {
  const w = new ProtoWriter();
  if (t.dims.length > 0) w.packedInts(1, t.dims);
  w.int(2, t.dataType);
  w.string(8, t.name);
  w.bytes(9, t.raw);
  return w;
}

function encodeValueInfo(v: ValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.dims) {
    const dim = new ProtoWriter();
    if (typeof d === "number") dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter().int(1, v.elemType).message(2, shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, v.name).message(2, type);
}
