#!/usr/bin/env python3
"""Execute Jupyter notebooks headless on the Deno kernel, and fail loudly.

Used by `deno task notebooks` (notebooks/run.ts sets up the kernel and calls this). For every
code cell it sends `execute_request`, collects the outputs from the IOPub channel, and then keeps
reading IOPub for `--grace` seconds after the kernel reports idle: the Deno kernel sometimes
publishes `status: idle` a millisecond before the cell's last output, which stock
`nbconvert --execute` then drops. Every output that arrives after idle restarts the grace
period and is counted (`late` in the summary), so the race can be measured.

A run fails (exit 1) when a cell raises, or when a cell's expected outputs are missing. A cell
declares what it must show in its metadata:

    "metadata": {"tinystill": {"expect": ["image/svg+xml", "stream"]}}

where each entry is a MIME type that some display/execute_result output must carry, or `stream`
(any stdout/stderr text).

`--write` writes each notebook back to its file with its outputs (a temporary file renamed over
it); `--check` instead compares the fresh outputs with the ones in the file and fails when a cell's
differ, except where a cell declares that its outputs depend on timing:

    "metadata": {"tinystill": {"timing": true}}          every output of the cell is skipped
    "metadata": {"tinystill": {"timing": ["stream"]}}    only printed text is skipped

(entries are `stream` or MIME types; execution counts are compared in every cell). `--replace OLD
NEW` rewrites OLD to NEW in every output (absolute paths, before writing and comparing). `--out
DIR` writes executed copies there, and `--html DIR` a standalone HTML page per notebook.
"""

import argparse
import difflib
import html
import json
import os
import queue
import sys
import tempfile
import time

import nbformat
from jupyter_client import KernelManager

OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error", "update_display_data"}


class CellFailure(Exception):
    pass


def collect(kc, msg_id, timeout, grace, stats, displays, alive=lambda: True):
    """Outputs of one execute request: read IOPub until idle, then `grace` s past the last output.

    `displays` maps display ids to the outputs shown under them (update_display_data redraws
    them, also when the display was made by an earlier cell)."""
    outputs, count, error = [], None, None
    idle_at = None
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if idle_at is None:
            wait = deadline - now
            if wait <= 0:
                raise CellFailure(f"timed out after {timeout:.0f} s")
        else:
            wait = idle_at + grace - now
            if wait <= 0:
                break
        try:
            # wake up every 2 s to notice a dead kernel (crash, out of memory) before the timeout
            msg = kc.get_iopub_msg(timeout=min(wait, 2.0))
        except queue.Empty:
            if idle_at is None and not alive():
                raise CellFailure("the kernel died")
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "status":
            if content["execution_state"] == "idle" and idle_at is None:
                idle_at = time.monotonic()
            continue
        if idle_at is not None and kind in OUTPUT_TYPES:
            late = time.monotonic() - idle_at
            stats["late"] += 1
            stats["late_max_ms"] = max(stats["late_max_ms"], late * 1000)
            stats["late_outputs"].append([stats["cells"] + 1, kind, round(late * 1000, 3)])
            idle_at = time.monotonic()  # keep listening after each late output
        if kind == "execute_input":
            count = content.get("execution_count")
        elif kind == "stream":
            if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == content["name"]:
                outputs[-1].text += content["text"]
            else:
                outputs.append(nbformat.v4.new_output("stream", name=content["name"], text=content["text"]))
        elif kind in ("display_data", "execute_result", "error"):
            out = nbformat.v4.output_from_msg(msg)
            outputs.append(out)
            did = content.get("transient", {}).get("display_id")
            if did:
                displays.setdefault(did, []).append(out)
            if kind == "error":
                error = f"{content.get('ename')}: {content.get('evalue')}"
        elif kind == "update_display_data":
            # redraw every output shown under this display id (e.g. a live loss chart)
            for out in displays.get(content.get("transient", {}).get("display_id"), []):
                out["data"] = content["data"]
                out["metadata"] = content.get("metadata", {})
        elif kind == "clear_output":
            outputs = []
    return outputs, count, error


def shell_reply(kc, msg_id, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]
    raise CellFailure("no execute_reply from the kernel")


def has_output(outputs, want):
    if want == "stream":
        return any(o.output_type == "stream" and o.text.strip() for o in outputs)
    return any(o.output_type in ("display_data", "execute_result") and want in o.get("data", {}) for o in outputs)


def replace_in_outputs(outputs, replacements):
    """Rewrite every (old, new) pair in the outputs' text: streams, MIME data, errors."""
    def fix(v):
        if isinstance(v, str):
            for old, new in replacements:
                v = v.replace(old, new)
            return v
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    for o in outputs:
        if o.output_type == "stream":
            o.text = fix(o.text)
        elif o.output_type == "error":
            o.evalue, o.traceback = fix(o.evalue), fix(o.traceback)
        else:
            for k in list(o.get("data", {})):
                o.data[k] = fix(o.data[k])


def timing_rule(cell):
    """What of the cell's output depends on timing: True (all of it), or a list of `stream` / MIME
    types (nothing when empty)."""
    rule = cell.metadata.get("tinystill", {}).get("timing", [])
    if rule is True or rule is False:
        return rule or []
    if not isinstance(rule, list) or not all(isinstance(r, str) for r in rule):
        raise ValueError(f"tinystill.timing must be true or a list of 'stream'/MIME types, got {rule!r}")
    return rule


def comparable(cell):
    """A code cell as the check compares it: its execution count and the outputs that do not depend
    on timing (see `timing_rule`), as plain data."""
    rule = timing_rule(cell)
    out = {"execution_count": cell.get("execution_count")}
    if rule is True:
        out["outputs"] = "(timing: not compared)"
        return out
    outputs = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            if "stream" not in rule:
                outputs.append({"stream": o.name, "text": o.text})
        elif o.output_type == "error":
            outputs.append({"error": o.ename, "evalue": o.evalue})
        else:
            data = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                    for k, v in o.get("data", {}).items() if k not in rule}
            if data:
                outputs.append({o.output_type: o.get("execution_count"), "data": data})
    out["outputs"] = outputs
    return out


def render(value):
    """Lines of a comparable cell, for a diff: JSON, with strings broken at their newlines."""
    return json.dumps(value, indent=1, ensure_ascii=False).replace("\\n", "\\n\n").splitlines()


def clip(line, at, width=160):
    """`line` cut to about `width` characters around position `at` (where it differs)."""
    if len(line) <= width:
        return line
    start = max(0, min(at - width // 3, len(line) - width))
    return (line[:1] + "..." if start > 0 else "") + line[start:start + width] + \
        ("..." if start + width < len(line) else "")


def short_diff(old, new, limit=40):
    """A unified diff of two line lists; a long changed line is shown around its first change."""
    diff = list(difflib.unified_diff(old, new, "committed", "computed now", lineterm="", n=1))
    out, i = [], 0
    while i < len(diff):
        # a block of removed lines and the added lines after it: clip each pair where they differ
        j = i
        while j < len(diff) and diff[j].startswith("-") and not diff[j].startswith("---"):
            j += 1
        k = j
        while k < len(diff) and diff[k].startswith("+") and not diff[k].startswith("+++"):
            k += 1
        if j > i:
            removed, added = diff[i:j], diff[j:k]
            for n, line in enumerate(removed + added):
                other = added if n < len(removed) else removed
                m = n if n < len(removed) else n - len(removed)
                twin = other[m] if m < len(other) else ""
                at = next((p for p, (a, b) in enumerate(zip(line[1:], twin[1:])) if a != b),
                          min(len(line), len(twin)))
                out.append(clip(line, at + 1))
            i = k
        else:
            out.append(clip(diff[i], 0))
            i += 1
    return out[:limit] + ([f"... ({len(out) - limit} more diff lines)"] if len(out) > limit else [])


def check_notebook(path, committed, fresh):
    """Differences between the committed and the freshly computed notebook, one message per cell."""
    problems = []
    old = [c for c in committed.cells if c.cell_type == "code"]
    new = [c for c in fresh.cells if c.cell_type == "code"]
    for i, (a, b) in enumerate(zip(old, new)):
        ca, cb = comparable(a), comparable(b)
        if ca != cb:
            problems.append(f"{path}: code cell {i + 1} (id {a.get('id', '?')}): its outputs differ "
                            "from the committed ones\n    " + "\n    ".join(short_diff(render(ca), render(cb))))
    return problems


def write_atomic(path, nb):
    """Write the notebook to a temporary file next to `path`, then rename it over `path`."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(nbformat.writes(nb) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run_notebook(path, kernel, timeout, grace, stats, replacements=()):
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=kernel)
    km.start_kernel(cwd=os.path.dirname(os.path.abspath(path)))
    kc = km.client()
    kc.start_channels()
    failure, displays = None, {}
    try:
        kc.wait_for_ready(timeout=120)
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        for i, cell in enumerate(code_cells):
            cell.outputs, cell.execution_count = [], None
        for i, cell in enumerate(code_cells):
            where = f"{path}: code cell {i + 1}"
            if not cell.source.strip():
                continue
            msg_id = kc.execute(cell.source, store_history=True, allow_stdin=False)
            try:
                outputs, count, error = collect(kc, msg_id, timeout, grace, stats, displays, km.is_alive)
                reply = shell_reply(kc, msg_id, timeout)
            except CellFailure as e:
                failure = f"{where}: {e}"
                break
            replace_in_outputs(outputs, replacements)
            cell.outputs, cell.execution_count = outputs, count
            stats["cells"] += 1
            stats["outputs"].append(sorted({
                f"{o.output_type}:{o.name}" if o.output_type == "stream" else f"{o.output_type}:{','.join(sorted(o.get('data', {})))}"
                for o in outputs}))
            if error or reply.get("status") == "error":
                failure = f"{where} raised {error or reply.get('ename', 'an error')}\n" + "".join(
                    line for line in reply.get("traceback", [])[:20]
                )
                break
            expect = cell.metadata.get("tinystill", {}).get("expect", [])
            missing = [w for w in expect if not has_output(outputs, w)]
            if missing:
                got = sorted({k for o in outputs for k in (o.get("data", {}).keys() if "data" in o else [o.output_type])})
                failure = f"{where}: expected output {', '.join(missing)} is missing (got: {', '.join(got) or 'nothing'})"
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return nb, failure


def to_html(nb, title):
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}pre{background:#f6f6f6;padding:8px;overflow:auto}"
             ".out{border-left:3px solid #9ab;padding-left:8px;margin-bottom:16px}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(f"<pre style='background:none'>{html.escape(cell.source)}</pre>")
            continue
        if cell.cell_type != "code":
            continue
        parts.append(f"<pre>{html.escape(cell.source)}</pre><div class='out'>")
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                parts.append(f"<pre>{html.escape(o.text)}</pre>")
            elif o.output_type == "error":
                parts.append(f"<pre style='color:#b00'>{html.escape(o.ename + ': ' + o.evalue)}</pre>")
            else:
                data = o.get("data", {})
                if "image/svg+xml" in data:
                    parts.append(data["image/svg+xml"])
                elif "text/html" in data:
                    parts.append(data["text/html"])
                elif "text/markdown" in data:
                    parts.append(f"<pre>{html.escape(data['text/markdown'])}</pre>")
                elif "text/plain" in data:
                    parts.append(f"<pre>{html.escape(data['text/plain'])}</pre>")
        parts.append("</div>")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--kernel", default="deno")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    ap.add_argument("--grace", type=float, default=0.3, help="seconds to keep reading IOPub after idle")
    ap.add_argument("--out", default=None, help="directory for the executed copies")
    ap.add_argument("--write", action="store_true", help="write each notebook back with its outputs")
    ap.add_argument("--check", action="store_true",
                    help="fail when the outputs in the files differ from fresh ones (timing cells aside)")
    ap.add_argument("--replace", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                    help="rewrite OLD to NEW in every output (e.g. absolute paths)")
    ap.add_argument("--html", default=None, help="also write an HTML page per notebook here")
    ap.add_argument("--repeat", type=int, default=1, help="run each notebook this many times")
    ap.add_argument("--stats", default=None, help="write the run statistics (JSON) here")
    args = ap.parse_args()
    if args.write and (args.check or args.repeat != 1):
        ap.error("--write goes with neither --check nor --repeat")
    failures, summary, stale = [], [], []
    for path in args.notebooks:
        committed = nbformat.read(path, as_version=4) if args.check else None
        for rep in range(args.repeat):
            stats = {"notebook": path, "run": rep + 1, "cells": 0, "late": 0, "late_max_ms": 0.0,
                     "late_outputs": [], "outputs": []}
            t0 = time.monotonic()
            nb, failure = run_notebook(path, args.kernel, args.timeout, args.grace, stats,
                                       [tuple(r) for r in args.replace])
            stats["seconds"] = round(time.monotonic() - t0, 2)
            stats["ok"] = failure is None
            summary.append(stats)
            name = os.path.splitext(os.path.basename(path))[0]
            for d, ext, write in ((args.out, ".ipynb", lambda f: nbformat.write(nb, f)),
                                  (args.html, ".html", lambda f: f.write(to_html(nb, name)))):
                if d:
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, name + ext), "w", encoding="utf-8") as f:
                        write(f)
            differ = check_notebook(path, committed, nb) if committed and failure is None else []
            stale += differ
            if args.write and failure is None:
                write_atomic(path, nb)
            status = "ok" if failure is None and not differ else "FAILED"
            what = ", written" if args.write and failure is None else \
                f", {len(differ)} cell(s) differ" if differ else ", outputs as committed" if committed else ""
            print(f"{status:6s} {path} ({stats['cells']} cells, {stats['seconds']:.1f} s, "
                  f"{stats['late']} outputs after idle, max {stats['late_max_ms']:.1f} ms{what})", flush=True)
            if failure:
                failures.append(failure)
                print(failure, file=sys.stderr, flush=True)
            for d in differ:
                print(d, file=sys.stderr, flush=True)
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump(summary, f, indent=1)
    if stale:
        print(f"{len(stale)} cell(s) show outputs that the committed code no longer computes: run "
              "`deno task notebooks` and commit the notebooks (cells whose outputs depend on timing "
              "are marked \"tinystill\": {\"timing\": ...} in their metadata)", file=sys.stderr)
    if failures:
        print(f"{len(failures)} notebook run(s) failed", file=sys.stderr)
    if failures or stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
