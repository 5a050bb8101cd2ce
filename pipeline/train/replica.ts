/**
 * A worker thread answering `{ id, type, … }` requests with `{ id, ok, result | error }`: how the
 * trainer talks to its data-parallel replicas (`replica_worker.ts`).
 * @module
 */

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** One replica worker and its pending requests. */
export class ReplicaWorker {
  private worker: Worker;
  private next = 0;
  private pending = new Map<number, Pending>();

  constructor(url: URL) {
    this.worker = new Worker(url, { type: "module" });
    this.worker.onmessage = (e: MessageEvent) => {
      const { id, ok, result, error } = e.data;
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      if (ok) p.resolve(result);
      else p.reject(new Error(`replica worker: ${error}`));
    };
    this.worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      for (const p of this.pending.values()) p.reject(new Error(`replica worker: ${e.message}`));
      this.pending.clear();
    };
  }

  /** Send a request; resolves with the worker's result. */
  request<T>(msg: Record<string, unknown>, transfer: Transferable[] = []): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ id, ...msg }, transfer);
    });
  }

  /** Stop the worker; pending requests are rejected. */
  terminate(): void {
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(new Error("replica worker terminated"));
    this.pending.clear();
  }
}
