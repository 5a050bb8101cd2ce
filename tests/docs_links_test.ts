/**
 * The README and `docs/*.md` stay true to the tree: every relative link resolves to a file (and its
 * `#anchor` to a heading of that file, as GitHub slugs it), and every `deno task NAME` they show is
 * a task of `deno.json`.
 */

import assert from "node:assert/strict";
import { dirname, join, normalize } from "node:path";

const ROOT = normalize(join(dirname(new URL(import.meta.url).pathname), ".."));

function markdownFiles(): string[] {
  const docs = [...Deno.readDirSync(join(ROOT, "docs"))]
    .filter((e) => e.isFile && e.name.endsWith(".md"))
    .map((e) => join("docs", e.name))
    .sort();
  return ["README.md", ...docs];
}

/** The text outside fenced code blocks. */
function prose(md: string): string {
  return md.replace(/^```[^\n]*\n[\s\S]*?^```$/gm, "");
}

/** GitHub's anchors of a Markdown file's headings (lowercase, punctuation dropped, `-` for spaces). */
function anchors(md: string): Set<string> {
  const seen = new Map<string, number>(), out = new Set<string>();
  for (const m of prose(md).matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const slug = m[1].toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/\s/g, "-");
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("README and docs: every relative link resolves to a file and heading", () => {
  const bad: string[] = [];
  let count = 0;
  for (const file of markdownFiles()) {
    const text = prose(Deno.readTextFileSync(join(ROOT, file)));
    for (const m of text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1];
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
      count++;
      const [path, anchor] = target.split("#", 2);
      const resolved = path ? join(ROOT, dirname(file), path) : join(ROOT, file);
      if (!exists(resolved)) {
        bad.push(`${file}: ${target} (no file ${resolved.slice(ROOT.length + 1)})`);
      } else if (anchor !== undefined && resolved.endsWith(".md")) {
        if (!anchors(Deno.readTextFileSync(resolved)).has(anchor)) {
          bad.push(`${file}: ${target} (no heading #${anchor})`);
        }
      }
    }
  }
  assert.ok(count > 20, `only ${count} relative links found: is the link pattern right?`);
  assert.deepEqual(bad, []);
});

Deno.test("README and docs: every `deno task` they name is in deno.json", () => {
  const tasks = Object.keys(JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json"))).tasks);
  const bad: string[] = [];
  for (const file of markdownFiles()) {
    const text = Deno.readTextFileSync(join(ROOT, file));
    for (const m of text.matchAll(/deno task ([\w:-]+)/g)) {
      if (!tasks.includes(m[1])) bad.push(`${file}: deno task ${m[1]}`);
    }
  }
  assert.deepEqual(bad, [], `tasks in deno.json: ${tasks.join(", ")}`);
});

Deno.test("anchors: GitHub's slugs", () => {
  const md =
    "# A: b\n## Training on ONNX Runtime (issue 14)\n```\n# not a heading\n```\n## A: b\n" +
    "### `fp16` and INT8 exports\n";
  assert.deepEqual([...anchors(md)], [
    "a-b",
    "training-on-onnx-runtime-issue-14",
    "a-b-1",
    "fp16-and-int8-exports",
  ]);
});
