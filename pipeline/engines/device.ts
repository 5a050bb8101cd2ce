/**
 * Where ONNX Runtime runs a graph: `cpu`, or `webgpu` (the WebGPU execution provider built into
 * onnxruntime-node's Linux library: Dawn on Vulkan). `auto` picks `webgpu` only when a real GPU
 * adapter is there: a software one (SwiftShader, llvmpipe/lavapipe, WARP, a fallback adapter)
 * counts as none, so `auto` is `cpu` on a machine without a GPU. The adapter is read from Deno's
 * own WebGPU (`navigator.gpu.requestAdapter()`, wgpu on the same Vulkan loader and ICDs as Dawn),
 * since ONNX Runtime does not expose Dawn's. See docs/gpu.md.
 * @module
 */

/** The `device` setting of the stages and the API. */
export type Device = "auto" | "cpu" | "webgpu";

/** The devices a resolved setting names. */
export type ResolvedDevice = "cpu" | "webgpu";

/** The WebGPU adapter seen, as the manifest records it. */
export interface AdapterInfo {
  /** Vendor name from its PCI id where known (`NVIDIA`, `Google (SwiftShader)`, …), else the id. */
  vendor: string;
  /** PCI vendor and device ids (hex) as the adapter reports them. */
  vendorId: string;
  deviceId: string;
  /** The adapter's description (the GPU's name; Mesa drivers add their version). */
  description: string;
  /** The driver: the Vulkan ICD file(s) in `VK_ICD_FILENAMES`, when set, else "system ICDs". */
  driver: string;
  /** A CPU (software) rasteriser: never chosen by `auto`. */
  software: boolean;
  /** Where the information came from. */
  source: "deno navigator.gpu";
}

const VENDORS: Record<number, string> = {
  0x10de: "NVIDIA",
  0x1002: "AMD",
  0x1022: "AMD",
  0x8086: "Intel",
  0x13b5: "ARM",
  0x5143: "Qualcomm",
  0x106b: "Apple",
  0x1ae0: "Google (SwiftShader)",
  0x10005: "Mesa",
  0x1414: "Microsoft",
};

const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|software|warp|basic render/i;

/** Whether an adapter description (and vendor id) names a software rasteriser. */
export function isSoftwareAdapter(description: string, vendorId = 0): boolean {
  return SOFTWARE.test(description) || vendorId === 0x10005 || vendorId === 0x1ae0;
}

let adapterInfo: Promise<AdapterInfo | null> | null = null;

/** The default WebGPU adapter here (null when there is none, or none in 10 s); cached. */
export function gpuAdapter(): Promise<AdapterInfo | null> {
  adapterInfo ??= (async () => {
    const gpu = (navigator as { gpu?: GPU }).gpu;
    if (!gpu) return null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const adapter = await Promise.race([
        gpu.requestAdapter(),
        new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 10_000)),
      ]);
      if (!adapter) return null;
      const info = adapter.info as GPUAdapterInfo & { device?: string; description?: string };
      const vendorNum = Number(info.vendor);
      const deviceNum = Number(info.device ?? 0);
      const description = info.description ?? "";
      const hex = (n: number, s: string) => Number.isFinite(n) ? `0x${n.toString(16)}` : s;
      const icd = Deno.env.get("VK_ICD_FILENAMES");
      return {
        vendor: VENDORS[vendorNum] ?? info.vendor,
        vendorId: hex(vendorNum, info.vendor),
        deviceId: hex(deviceNum, info.device ?? ""),
        description,
        driver: icd ? `Vulkan ICD ${icd}` : "system Vulkan ICDs",
        software: isSoftwareAdapter(description, vendorNum) ||
          (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true,
        source: "deno navigator.gpu",
      };
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  })();
  return adapterInfo;
}

/** What a `device` setting resolves to here, the adapter, and why. */
export interface DeviceChoice {
  device: ResolvedDevice;
  adapter: AdapterInfo | null;
  reason: string;
}

/**
 * Resolve `device`: `cpu` and `webgpu` as asked (`webgpu` also on a software adapter: that is
 * how CI tests it), `auto` → `webgpu` on a real GPU adapter, else `cpu`.
 */
export async function resolveDevice(device: Device = "auto"): Promise<DeviceChoice> {
  if (device !== "auto" && device !== "cpu" && device !== "webgpu") {
    throw new Error(`device must be auto, cpu or webgpu, got ${JSON.stringify(device)}`);
  }
  if (device === "cpu") return { device, adapter: null, reason: "asked for" };
  const adapter = await gpuAdapter();
  if (device === "webgpu") {
    return { device, adapter, reason: adapter ? "asked for" : "asked for (no adapter seen)" };
  }
  if (!adapter) return { device: "cpu", adapter, reason: "auto: no WebGPU adapter" };
  if (adapter.software) {
    return {
      device: "cpu",
      adapter,
      reason: `auto: the adapter is a software one (${adapter.description})`,
    };
  }
  return { device: "webgpu", adapter, reason: `auto: GPU adapter ${adapter.description}` };
}
