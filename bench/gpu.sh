#!/usr/bin/env bash
# The GPU bench on an NVIDIA machine WITHOUT network (issue 21): TinyBERT4 train step and BERT-base
# forward + train step on ONNX Runtime webgpu vs ONNX Runtime cpu vs PyTorch CUDA, tokens/s and %
# of the GPU's fp32 peak (bench/gpu.ts). Installs nothing from the network; uses the working tree
# plus what bench/gpu_pack.sh put in .gpu/ (or $TINYSTILL_GPU_PACK) on a machine with network:
#   libvulkan1_*.deb     the Vulkan loader, unpacked here with dpkg-deb -x (not installed);
#                        a system libvulkan.so.1 is used when there is no .deb
#   deno.xz | deno       Deno, used only when `deno` is not on PATH (also looked for in
#                        .gpu-deno/, and as $TMPDIR/tinystill-gpu/deno left by an earlier run)
#   node_modules.tar.xz  the npm packages, unpacked only when node_modules lacks onnxruntime-node
# The NVIDIA Vulkan ICD comes from the driver: $VK_ICD_FILENAMES, else the first nvidia_icd.json
# of /usr/share/vulkan/icd.d, /etc/vulkan/icd.d, /usr/local/nvidia/share/vulkan/icd.d.
#
# Usage: bench/gpu.sh [--quick] [--allow-software]   (exit 2: no GPU adapter / missing file)
#   TINYSTILL_GPU_PEAK_TFLOPS  fp32 peak to divide by (default: a table by adapter name)
#   TINYSTILL_GPU_TIMEOUT      seconds for the whole bench (default 290)
#   TINYSTILL_PYTHON           the python with torch (default: python3 on PATH)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PACK=${TINYSTILL_GPU_PACK:-$ROOT/.gpu}
WORK=${TMPDIR:-/tmp}/tinystill-gpu
mkdir -p "$WORK"
die() {
  echo "bench/gpu.sh: $*" >&2
  exit 2
}
say() { echo "bench/gpu.sh: $*" >&2; }
# unpack .xz without relying on the xz tool being installed
unxz_to() { if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
fi; }

ARGS=(--budget "$((${TINYSTILL_GPU_TIMEOUT:-290} - 10))")
REQUIRE=--require-gpu
for a in "$@"; do
  case "$a" in
  --allow-software) REQUIRE="" ;; # smoke tests on SwiftShader
  --quick) ARGS+=(--quick) ;;
  *) die "unknown argument $a (usage: bench/gpu.sh [--quick] [--allow-software])" ;;
  esac
done
[[ -n "$REQUIRE" ]] && ARGS+=("$REQUIRE")

if command -v nvidia-smi >/dev/null; then
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
else
  say "no nvidia-smi on PATH"
fi

# 1. the Vulkan loader: the copied .deb, unpacked beside (not into) the system
deb=$(ls "$PACK"/libvulkan1_*.deb 2>/dev/null | head -1 || true)
if [[ -n "$deb" ]]; then
  rm -rf "$WORK/vulkan"
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$WORK/vulkan"
  else
    (mkdir -p "$WORK/vulkan" && cd "$WORK/vulkan" && ar x "$deb" && tar -xf data.tar.*)
  fi
  lib="$WORK/vulkan/usr/lib/x86_64-linux-gnu"
  [[ -e "$lib/libvulkan.so.1" ]] || die "no libvulkan.so.1 in $deb"
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "Vulkan loader: $lib/libvulkan.so.1 (from $(basename "$deb"))"
elif ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
  say "Vulkan loader: the system's libvulkan.so.1"
else
  die "no Vulkan loader: no libvulkan.so.1 on this system and no $PACK/libvulkan1_*.deb
  (on a machine with network: bench/gpu_pack.sh, or apt-get download libvulkan1 into $PACK)"
fi

# 2. the driver's Vulkan ICD
icd=${VK_ICD_FILENAMES:-}
if [[ -z "$icd" ]]; then
  for f in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
    if [[ -f "$f" ]]; then
      icd=$f
      break
    fi
  done
fi
[[ -n "$icd" ]] || die "no NVIDIA Vulkan ICD (nvidia_icd.json) in /usr/share/vulkan/icd.d,
  /etc/vulkan/icd.d or /usr/local/nvidia/share/vulkan/icd.d: is the NVIDIA driver installed
  with its Vulkan part? Set VK_ICD_FILENAMES to the driver's ICD json."
[[ -f "$icd" ]] || die "the Vulkan ICD $icd does not exist"
export VK_ICD_FILENAMES="$icd" VK_DRIVER_FILES="$icd"
# the ICD names the driver library (libGLX_nvidia.so.0), found on the loader's path
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  if [[ -d "$d" ]]; then export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"; fi
done
say "Vulkan ICD: $icd ($(grep -o '"library_path"[^,}]*' "$icd" 2>/dev/null || echo '?'))"

# 3. Deno: on PATH, else the copied binary
if command -v deno >/dev/null; then
  DENO=$(command -v deno)
elif [[ -x "$PACK/deno" ]]; then
  DENO="$PACK/deno"
elif [[ -f "$PACK/deno.xz" || -f "$ROOT/.gpu-deno/deno.xz" ]]; then
  xzd="$PACK/deno.xz"
  [[ -f "$xzd" ]] || xzd="$ROOT/.gpu-deno/deno.xz"
  unxz_to "$xzd" "$WORK/deno.part"
  chmod +x "$WORK/deno.part"
  mv "$WORK/deno.part" "$WORK/deno"
  DENO="$WORK/deno"
elif [[ -x "$WORK/deno" ]]; then
  DENO="$WORK/deno"
else
  die "no Deno: not on PATH, no $PACK/deno, $PACK/deno.xz, .gpu-deno/deno.xz or $WORK/deno
  (on a machine with network: bench/gpu_pack.sh copies this machine's Deno there)"
fi
say "Deno: $DENO ($("$DENO" --version | head -1))"

# 4. the npm packages
if [[ ! -d node_modules/.deno/onnxruntime-node@1.30.0 ]]; then
  [[ -f "$PACK/node_modules.tar.xz" ]] || die "no node_modules/ (onnxruntime-node) and no
  $PACK/node_modules.tar.xz (on a machine with network: deno install, then bench/gpu_pack.sh)"
  unxz_to "$PACK/node_modules.tar.xz" "$WORK/node_modules.tar"
  tar -xf "$WORK/node_modules.tar"
  rm -f "$WORK/node_modules.tar"
  say "node_modules: unpacked from $PACK/node_modules.tar.xz"
fi

# 5. the bench, bounded and offline: node_modules as it is (manual: Deno installs nothing, and
# the packed subset is enough), --cached-only (no registry is asked); its child processes too
export TINYSTILL_DENO_FLAGS="--node-modules-dir=manual --cached-only"
# Deno's own WebGPU (the adapter probe) on Vulkan only, as Dawn inside ONNX Runtime: else wgpu
# falls back to a GL adapter (llvmpipe, or NVIDIA's EGL) that ONNX Runtime never uses
export DENO_WEBGPU_BACKEND=${DENO_WEBGPU_BACKEND:-vulkan}
export TINYSTILL_PYTHON=${TINYSTILL_PYTHON:-python3} DENO_NO_UPDATE_CHECK=1
# shellcheck disable=SC2086
exec timeout -k 10 "${TINYSTILL_GPU_TIMEOUT:-290}" \
  "$DENO" run $TINYSTILL_DENO_FLAGS -A bench/gpu.ts "${ARGS[@]}"
