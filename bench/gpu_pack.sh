#!/usr/bin/env bash
# Fill .gpu/ (gitignored) on a machine WITH network, Deno and the npm deps installed, with what
# bench/gpu.sh needs on an NVIDIA machine WITHOUT network:
#   .gpu/libvulkan1_*.deb     the Vulkan loader (Debian; `apt-get download libvulkan1`), ~0.1 MB
#   .gpu/node_modules.tar.xz  the npm packages bench/gpu.ts imports (x64 Linux binaries only),
#                             ~20 MB
#   .gpu-deno/deno.xz         this Deno binary, xz-compressed (~31 MB; a folder of its own, since
#                             the device tool carries 64 MiB a call, the tree included)
# Usage: bench/gpu_pack.sh [--no-deno] [--no-node-modules]. Then copy the tree, .gpu/ and
# .gpu-deno/ to the GPU machine and run bench/gpu.sh there. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${TINYSTILL_GPU_PACK:-.gpu}
mkdir -p "$PACK"
if ! ls "$PACK"/libvulkan1_*.deb >/dev/null 2>&1; then
  (cd "$PACK" && apt-get download libvulkan1)
fi
if [[ " $* " != *" --no-deno "* ]]; then
  mkdir -p "${TINYSTILL_GPU_DENO_PACK:-.gpu-deno}"
  xz -T0 -6 -c "$(command -v deno)" >"${TINYSTILL_GPU_DENO_PACK:-.gpu-deno}/deno.xz"
fi
if [[ " $* " != *" --no-node-modules "* ]]; then
  # the npm packages of bench/gpu.ts's module graph and their dependencies (node_modules/.deno
  # folders), Deno's setup files and the top-level links
  dirs=$(deno info --json bench/gpu.ts | python3 -c '
import json, os, sys
d = json.load(sys.stdin)
pk = d["npmPackages"]
used = {m["npmPackage"] for m in d["modules"] if m.get("kind") == "npm"}
todo = list(used)
while todo:
    for dep in pk.get(todo.pop(), {}).get("dependencies", []):
        if dep not in used:
            used.add(dep)
            todo.append(dep)
root = os.getcwd()
out = set()
for k in used:
    if k in pk:
        out.add("/".join(os.path.relpath(pk[k]["localPath"], root).split("/")[:3]))
print("\n".join(sorted(out)))')
  ort=node_modules/.deno/onnxruntime-node@1.30.0/node_modules/onnxruntime-node/bin/napi-v6
  # shellcheck disable=SC2086
  tar -c --exclude='*.map' --exclude="$ort/darwin" --exclude="$ort/win32" \
    --exclude="$ort/linux/arm64" --exclude='tf.es2017*' --exclude='tf.min*' \
    --exclude='miniprogram' \
    node_modules/.deno/.setup-cache.bin node_modules/.deno/.deno.lock \
    $(find node_modules -maxdepth 2 -type l) $dirs | xz -T0 -6 >"$PACK/node_modules.tar.xz"
fi
ls -la "$PACK" "${TINYSTILL_GPU_DENO_PACK:-.gpu-deno}"
