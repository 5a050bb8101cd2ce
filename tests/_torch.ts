/**
 * The independent PyTorch reference (`tests/reference/bert_torch.py`) for tests: finds a python3
 * that can `import torch, numpy` and runs the reference on a checkpoint directory.
 *
 * Without such an interpreter the tests that use it are skipped with a message, unless
 * `TINYSTILL_REQUIRE_TORCH=1` (CI), where that is an error.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const SCRIPT = fileURLToPath(new URL("./reference/bert_torch.py", import.meta.url));

// Finding a python3 with torch.

async function importsTorch(python: string): Promise<boolean> {
  try {
    const r = await new Deno.Command(python, {
      args: ["-c", "import torch, numpy"],
      stdout: "null",
      stderr: "null",
    }).output();
    return r.success;
  } catch {
    return false; // interpreter not found
  }
}

async function findTorchPython(): Promise<string | undefined> {
  const candidates = [Deno.env.get("TINYSTILL_PYTHON"), "python3", "/usr/bin/python3"];
  for (const py of candidates) if (py && await importsTorch(py)) return py;
  return undefined;
}

export const PYTHON = await findTorchPython();
if (!PYTHON && Deno.env.get("TINYSTILL_REQUIRE_TORCH") === "1") {
  // CI installs torch: there a missing interpreter is a failure, not a skip
  throw new Error("TINYSTILL_REQUIRE_TORCH=1 but no python3 can `import torch, numpy`");
}
if (!PYTHON) {
  console.warn(
    "torch reference tests: SKIPPED — no python3 that can `import torch, numpy`. Install them " +
      "with `apt-get install python3-torch python3-numpy` (or set TINYSTILL_PYTHON).",
  );
}

// ---------------------------------------------------------------------------------------------
// The torch side: inputs out, a float64 safetensors file back.

export interface Inputs {
  input_ids: number[][];
  attention_mask: number[][];
  token_type_ids: number[][];
  labels: number[];
}

export interface F64Tensor {
  shape: number[];
  data: Float64Array;
}

/** Parse a safetensors file of F64 tensors (what the reference writes). */
export function parseF64Safetensors(
  bytes: Uint8Array,
): { tensors: Map<string, F64Tensor>; metadata: Record<string, string> } {
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  const data = bytes.subarray(8 + headerLen);
  const tensors = new Map<string, F64Tensor>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: [start, end] } = e as {
      dtype: string;
      shape: number[];
      data_offsets: [number, number];
    };
    assert.equal(dtype, "F64", `${name}: reference output dtype`);
    tensors.set(name, { shape, data: new Float64Array(data.slice(start, end).buffer) });
  }
  return { tensors, metadata: header.__metadata__ ?? {} };
}

export async function runTorch(
  ckpt: string,
  inputs: Inputs,
  work: string,
  extra: Record<string, unknown> = {},
) {
  const inPath = join(work, "inputs.json"), outPath = join(work, "torch_out.safetensors");
  await Deno.writeTextFile(
    inPath,
    JSON.stringify({ ...inputs, dtype: "float64", ...extra }),
  );
  const r = await new Deno.Command(PYTHON!, {
    args: [SCRIPT, ckpt, inPath, outPath],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) {
    throw new Error(
      `bert_torch.py failed (${r.code}):\n${new TextDecoder().decode(r.stderr)}` +
        new TextDecoder().decode(r.stdout),
    );
  }
  return parseF64Safetensors(await Deno.readFile(outPath));
}
