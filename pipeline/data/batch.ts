/**
 * A batch in host memory (`HostBatch`): named typed arrays with their shapes, split along the
 * first axis. It is what data sources produce (e.g. padded token rows), what crosses to worker
 * replicas, and what becomes tensors only inside a training or forward step (`train/batch.ts`).
 * @module
 */

/** A host-side array with its shape: what crosses to a worker. */
export interface HostArray {
  data: Int32Array | Float32Array;
  shape: number[];
}

/** A batch in host memory, every entry split along its first axis. */
export type HostBatch = Record<string, HostArray>;

/** Rows `[start, end)` of every entry. */
export function sliceBatch(batch: HostBatch, start: number, end: number): HostBatch {
  const out: HostBatch = {};
  for (const [k, v] of Object.entries(batch)) {
    const row = v.shape.slice(1).reduce((a, b) => a * b, 1);
    out[k] = {
      data: v.data.slice(start * row, end * row),
      shape: [end - start, ...v.shape.slice(1)],
    };
  }
  return out;
}

/** Number of examples (first-axis length, the same for every entry). */
export function batchRows(batch: HostBatch): number {
  const sizes = new Set(Object.values(batch).map((v) => v.shape[0]));
  if (sizes.size !== 1) throw new Error(`batch entries disagree on the batch size: ${[...sizes]}`);
  return [...sizes][0];
}
