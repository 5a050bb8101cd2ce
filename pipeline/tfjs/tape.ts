/**
 * Backprop that frees memory as it goes.
 *
 * Stock tfjs keeps every tensor a kernel saved for its gradient, and every intermediate
 * gradient, alive until the whole backward pass ends, so peak memory is all activations plus all
 * gradients at once. This replaces `engine.gradients` (used by `tf.grads`, `tf.variableGrads` and
 * optimizers) with the same algorithm, except that once a tape node has been back-propagated its
 * saved tensors and the gradients of its outputs are disposed. Peak memory becomes the saved
 * activations still to be used plus a frontier of gradients.
 *
 * Higher-order gradients (a `gradients` call inside another) keep the stock behaviour.
 * @module
 */

import * as tf from "@tensorflow/tfjs";

// deno-lint-ignore no-explicit-any
type Any = any;

interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
}

/**
 * The nodes of `tape` that lie on a path from one of `xs` to `y`, each with only the inputs
 * that depend on `xs`.
 */
export function filterTape(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set<number>(xs.map((x) => x.id));
  const nodeFromX = new Set<number>();
  for (const node of tape) {
    for (const name in node.inputs) {
      if (fromX.has(node.inputs[name].id)) {
        for (const o of node.outputs) fromX.add(o.id);
        nodeFromX.add(node.id);
        break;
      }
    }
  }
  const toY = new Set<number>([y.id]);
  const nodeToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (node.outputs.some((o) => toY.has(o.id))) {
      for (const name in node.inputs) toY.add(node.inputs[name].id);
      nodeToY.add(node.id);
    }
  }
  const filtered: TapeNode[] = [];
  for (const node of tape) {
    if (!nodeFromX.has(node.id) || !nodeToY.has(node.id)) continue;
    const inputs: Record<string, tf.Tensor> = {};
    for (const name in node.inputs) {
      const t = node.inputs[name];
      if (fromX.has(t.id)) inputs[name] = t;
    }
    filtered.push({ ...node, inputs });
  }
  return filtered;
}

function backprop(
  grads: Map<number, tf.Tensor>,
  tape: TapeNode[],
  tidy: (f: () => tf.Tensor) => tf.Tensor,
  keep: Set<number>,
  root: tf.Tensor,
): void {
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    const dys = node.outputs.map((o) => grads.get(o.id) ?? null);
    if (node.gradient == null) {
      throw new Error(
        `Cannot compute gradient: gradient function not found for ${node.kernelName}.`,
      );
    }
    const inputGradients = node.gradient(dys);
    const produced = new Set<tf.Tensor>();
    for (const name in node.inputs) {
      if (!(name in inputGradients)) {
        throw new Error(
          `Cannot backprop through input ${name}. Available gradients found: ` +
            `${Object.keys(inputGradients)}.`,
        );
      }
      const dx = tidy(() => inputGradients[name]());
      if (dx.dtype !== "float32") {
        throw new Error(
          `Error in gradient for op ${node.kernelName}. The gradient of input ${name} must ` +
            `have 'float32' dtype, but has '${dx.dtype}'`,
        );
      }
      const x = node.inputs[name];
      if (!tf.util.arraysEqual(dx.shape, x.shape)) {
        throw new Error(
          `Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has ` +
            `shape '${dx.shape}', which does not match the shape of the input '${x.shape}'`,
        );
      }
      const prev = grads.get(x.id);
      if (prev == null) {
        grads.set(x.id, dx);
        produced.add(dx);
      } else {
        const sum = tf.add(prev, dx);
        grads.set(x.id, sum);
        produced.add(sum);
        produced.delete(prev);
        if (prev !== root) prev.dispose();
        if (!dys.includes(dx) && dx !== root) dx.dispose();
      }
    }
    // This node is done: its saved activations and its outputs' gradients are dead.
    for (const s of node.saved ?? []) if (!produced.has(s)) s.dispose();
    for (const o of node.outputs) {
      const g = grads.get(o.id);
      if (g == null || keep.has(o.id)) continue;
      grads.delete(o.id);
      if (g !== root && !produced.has(g)) g.dispose();
    }
  }
}

let installed = false;
// deno-lint-ignore no-explicit-any
let stockFn: ((...args: any[]) => { value: tf.Tensor; grads: tf.Tensor[] }) | null = null;

/** tfjs's own `engine.gradients` (kept for comparisons in tests and benchmarks). */
export function stockGradients(
  f: () => tf.Tensor,
  xs: tf.Tensor[],
): { value: tf.Tensor; grads: tf.Tensor[] } {
  const engine = tf.engine() as Any;
  return stockFn ? stockFn(f, xs) : engine.gradients(f, xs);
}

/** Replace the engine's `gradients` with the freeing version (idempotent, backend-agnostic). */
export function installTapeFreeing(): void {
  if (installed) return;
  const engine = tf.engine() as Any;
  const stock = engine.gradients.bind(engine);
  stockFn = stock;
  engine.gradients = function (
    f: () => tf.Tensor,
    xs: tf.Tensor[],
    dy?: tf.Tensor,
    allowNoGradients = false,
  ) {
    if (engine.state.gradientDepth > 0 || engine.state.activeTape != null) {
      return stock(f, xs, dy, allowNoGradients);
    }
    tf.util.assert(xs.length > 0, () => "gradients() received an empty list of xs.");
    if (dy != null && dy.dtype !== "float32") {
      throw new Error(`dy must have 'float32' dtype, but has '${dy.dtype}'`);
    }
    const y = engine.scopedRun(
      () => engine.startTape(),
      () => engine.endTape(),
      () => engine.tidy("forward", f),
    );
    tf.util.assert(y instanceof tf.Tensor, () => "The result y returned by f() must be a tensor.");
    const tape = engine.state.activeTape as TapeNode[];
    const filtered = filterTape(tape, xs, y);
    if (!allowNoGradients && filtered.length === 0 && xs.length > 0) {
      throw new Error(
        "Cannot compute gradient of y=f(x) with respect to x. Make sure that the f you passed " +
          "encloses all operations that lead from x to y.",
      );
    }
    return engine.tidy("backward", () => {
      const root = dy == null ? tf.ones(y.shape) : dy;
      const grads = new Map<number, tf.Tensor>([[y.id, root]]);
      const keep = new Set(xs.map((x) => x.id));
      try {
        backprop(grads, filtered, (g) => engine.tidy(g), keep, root);
      } finally {
        // Whatever was not freed on the way (nodes off the x→y path, or after an error).
        for (const node of tape) for (const s of node.saved ?? []) s.dispose();
        engine.state.activeTape = null;
      }
      return { value: y, grads: xs.map((x) => grads.get(x.id)) };
    });
  };
  installed = true;
}
