/**
 * The layering of `pipeline/`, checked on its static import graph: no import cycles between files
 * or between the folders of `pipeline/` (`train/ → graph/ → train/` would mean two folders each
 * sit above the other), nothing in store/ or data/ that imports the layers above, and no
 * side-effect-only imports (a module imported "to register" something makes the importer depend
 * on a load order nobody can see: import what you use by name instead). Cycles are reported as
 * chains from their alphabetically first node, paths relative to `pipeline/`.
 *
 * Edges are read from the source text of every `.ts` file under `pipeline/`: `import … from`,
 * `import type … from`, `export … from`, `export type … from`, `export * from` and bare
 * `import "…"`, for relative specifiers (npm and `node:` imports are not part of the graph).
 * Type-only imports count: a cycle of types is still a cycle in the layering (the lower module
 * knows about the upper one), even though it vanishes at run time. Dynamic `import()` and
 * `new Worker(new URL(…))` do not count: they are resolved lazily, at run time, and are how a
 * lower layer may reach an optional upper one on purpose.
 *
 * The reader is line based, which `deno fmt` makes safe: a top-level statement starts in column
 * 0, while import-like text inside JSDoc (` * import …`) or an indented string does not.
 */

import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const PIPELINE = join(ROOT, "pipeline");

/** One static import or re-export of a module. */
interface Import {
  /** The module specifier as written; in {@link importGraph}, relative ones become file paths. */
  target: string;
  /** 1-based line of the statement. */
  line: number;
  /** `import "./x.ts";`: run for its effects only (e.g. "to register" something). */
  sideEffectOnly: boolean;
}

/**
 * The static imports and re-exports of one module's source text. Statements start at column 0
 * with `import` or `export`; an `export` without `from` (a declaration or a local export list)
 * is no import, nor is a dynamic `import(…)`.
 */
function parseImports(source: string): Import[] {
  const lines = source.split("\n");
  const out: Import[] = [];
  for (let i = 0; i < lines.length; i++) {
    const isImport = /^import\s*[\w$"'{*]/.test(lines[i]);
    const isReExport = /^export\s+(type\s+)?[{*]/.test(lines[i]);
    if (!isImport && !isReExport) continue;
    // The statement runs to the line holding its module specifier (or, for a local
    // `export { … }` list, its closing brace).
    let text = lines[i];
    let j = i;
    const ended = () =>
      /["'][^"']+["']\s*;?\s*(\/\/.*)?$/.test(text) || (isReExport && /}\s*;?\s*$/.test(text));
    while (!ended() && j + 1 < lines.length) text += "\n" + lines[++j];
    const from = text.match(/^(?:import|export)\b[\s\S]*?\bfrom\s*["']([^"']+)["']/);
    const bare = text.match(/^import\s*["']([^"']+)["']/);
    if (from || bare) {
      out.push({ target: (from ?? bare)![1], line: i + 1, sideEffectOnly: !from });
    } else if (isImport) {
      throw new Error(`line ${i + 1}: cannot read this import: ${text}`);
    }
    i = j;
  }
  return out;
}

/** Every `.ts` file under `dir`, relative to it, sorted. */
async function tsFiles(dir: string, prefix = ""): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) files.push(...await tsFiles(dir, rel));
    else if (e.isFile && e.name.endsWith(".ts")) files.push(rel);
  }
  return files.sort();
}

/** The import graph of `pipeline/`: each file (relative path) to its imports. */
async function importGraph(root = PIPELINE): Promise<Map<string, Import[]>> {
  const graph = new Map<string, Import[]>();
  for (const file of await tsFiles(root)) {
    const source = await Deno.readTextFile(join(root, file));
    let parsed;
    try {
      parsed = parseImports(source);
    } catch (e) {
      throw new Error(`${file}: ${(e as Error).message}`);
    }
    graph.set(
      file,
      parsed.map((e) => ({
        ...e,
        target: e.target.startsWith(".")
          ? relative(root, normalize(join(root, dirname(file), e.target))).replaceAll("\\", "/")
          : e.target,
      })),
    );
  }
  return graph;
}

/**
 * The folder a file belongs to: its top-level directory under `pipeline/` (`train/`), or the file
 * itself for the modules at the top (`errors.ts`).
 */
function folderOf(file: string): string {
  const slash = file.indexOf("/");
  return slash < 0 ? file : file.slice(0, slash + 1);
}

/**
 * Successors of each node: the files of `pipeline/` each file imports, or (`byFolder`) the other
 * folders each folder imports from.
 */
function edges(
  graph: Map<string, Import[]>,
  byFolder = false,
): Map<string, string[]> {
  const key = byFolder ? folderOf : (f: string) => f;
  const succ = new Map<string, Set<string>>();
  for (const [file, imports] of graph) {
    const from = key(file);
    if (!succ.has(from)) succ.set(from, new Set());
    for (const { target } of imports) {
      if (graph.has(target) && key(target) !== from) succ.get(from)!.add(key(target));
    }
  }
  return new Map([...succ].map(([n, s]) => [n, [...s].sort()]));
}

/**
 * Every elementary cycle of a small graph (tens of nodes), each as a chain that starts and ends
 * at its alphabetically first node: `a.ts → b.ts → a.ts`.
 */
function findCycles(succ: Map<string, string[]>): string[] {
  const nodes = [...succ.keys()].sort();
  const cycles: string[] = [];
  // Simple paths from `start` through nodes after it: each cycle is found once, from its least
  // node.
  for (const start of nodes) {
    const path = [start];
    const walk = (node: string) => {
      for (const next of succ.get(node) ?? []) {
        if (next === start) cycles.push([...path, start].join(" → "));
        else if (next > start && !path.includes(next)) {
          path.push(next);
          walk(next);
          path.pop();
        }
      }
    };
    walk(start);
  }
  return cycles.sort();
}

/** For a folder cycle, one file import behind each of its steps (what to look at to break it). */
function witnesses(graph: Map<string, Import[]>, chain: string): string {
  const hops = chain.split(" → ");
  return hops.slice(1).map((to, i) => {
    const from = hops[i];
    for (const [file, imports] of graph) {
      const hit = folderOf(file) === from && imports.find((e) => folderOf(e.target) === to);
      if (hit) return `    ${file}:${hit.line} imports ${hit.target}`;
    }
    return `    ${from} → ${to}: ?`;
  }).join("\n");
}

Deno.test("pipeline/: no import cycles between files or between folders", async () => {
  const graph = await importGraph();
  const fileCycles = findCycles(edges(graph));
  const folderCycles = findCycles(edges(graph, true));
  const problems = [
    ...fileCycles.map((c) => `import cycle: ${c}`),
    ...folderCycles.map((c) => `import cycle: ${c}\n${witnesses(graph, c)}`),
  ];
  const shown = problems.length > 12 ? [...problems.slice(0, 12), "…"] : problems;
  assert.ok(problems.length === 0, `${problems.length} problems:\n${shown.join("\n")}`);
});

/**
 * The bottom of the layering: the stores and the dataset layer import only each other and the
 * top-level modules (`errors.ts`, `random.ts`), never the model, training, engines or stages
 * built on them. (A cycle check alone would let `store/ → train/` through while nothing in
 * train/ happened to import store/.)
 */
const BOTTOM = ["store/", "data/"];

Deno.test("pipeline/: store/ and data/ import nothing above them", async () => {
  const bad: string[] = [];
  const graph = await importGraph();
  for (const [file, imports] of graph) {
    if (!BOTTOM.includes(folderOf(file))) continue;
    for (const e of imports) {
      const to = folderOf(e.target);
      if (graph.has(e.target) && to.endsWith("/") && !BOTTOM.includes(to)) {
        bad.push(`${file}:${e.line} imports ${e.target}`);
      }
    }
  }
  assert.deepEqual(bad, [], `\n${bad.join("\n")}\n`);
});

Deno.test("pipeline/: no side-effect-only imports", async () => {
  const found: string[] = [];
  const lines = new Map<string, string>();
  for (const [file, imports] of await importGraph()) {
    for (const e of imports.filter((e) => e.sideEffectOnly)) {
      found.push(`${file} → ${e.target}`);
      lines.set(`${file} → ${e.target}`, `${file}:${e.line}`);
    }
  }
  const problems = [
    ...found.map((s) => `${lines.get(s)}: side-effect-only import of ${s.split(" → ")[1]}`),
  ];
  assert.deepEqual(problems, [], `\n${problems.join("\n")}\n`);
});

Deno.test("parseImports reads every static form and nothing else", () => {
  const source = [
    "/**",
    " * import { notAnImport } from './doc.ts';",
    " */",
    'import * as tf from "@tensorflow/tfjs";',
    'import { a, type B } from "./a.ts";',
    'import type { C } from "../c.ts";',
    "import {",
    "  d,",
    "  e,",
    '} from "./de.ts"; // trailing comment',
    'import f, { g } from "./fg.ts";',
    'import "./registers.ts";',
    'export { h } from "./h.ts";',
    'export type { I } from "./i.ts";',
    'export * from "./all.ts";',
    'export * as ns from "./ns.ts";',
    "export {",
    "  local,",
    "};",
    "export const x = 1;",
    "export function y() {",
    '  const s = `import "./in-a-string.ts"`;',
    '  return import("./dynamic.ts");',
    "}",
    'export { j } from "./j.ts";',
  ].join("\n");
  assert.deepEqual(parseImports(source).map((e) => `${e.line} ${e.target} ${e.sideEffectOnly}`), [
    "4 @tensorflow/tfjs false",
    "5 ./a.ts false",
    "6 ../c.ts false",
    "7 ./de.ts false",
    "11 ./fg.ts false",
    "12 ./registers.ts true",
    "13 ./h.ts false",
    "14 ./i.ts false",
    "15 ./all.ts false",
    "16 ./ns.ts false",
    "25 ./j.ts false",
  ]);
});
