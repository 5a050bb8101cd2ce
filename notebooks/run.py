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
(any stdout/stderr text). Executed copies go to `--out` (never into the repository), and
`--html DIR` also writes a standalone HTML page per notebook.
"""

import argparse
import html
import json
import os
import queue
import sys
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


def run_notebook(path, kernel, timeout, grace, stats):
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
    ap.add_argument("--html", default=None, help="also write an HTML page per notebook here")
    ap.add_argument("--repeat", type=int, default=1, help="run each notebook this many times")
    ap.add_argument("--stats", default=None, help="write the run statistics (JSON) here")
    args = ap.parse_args()
    failures, summary = [], []
    for path in args.notebooks:
        for rep in range(args.repeat):
            stats = {"notebook": path, "run": rep + 1, "cells": 0, "late": 0, "late_max_ms": 0.0,
                     "late_outputs": [], "outputs": []}
            t0 = time.monotonic()
            nb, failure = run_notebook(path, args.kernel, args.timeout, args.grace, stats)
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
            status = "ok" if failure is None else "FAILED"
            print(f"{status:6s} {path} ({stats['cells']} cells, {stats['seconds']:.1f} s, "
                  f"{stats['late']} outputs after idle, max {stats['late_max_ms']:.1f} ms)", flush=True)
            if failure:
                failures.append(failure)
                print(failure, file=sys.stderr, flush=True)
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump(summary, f, indent=1)
    if failures:
        print(f"{len(failures)} notebook run(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
