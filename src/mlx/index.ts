// The MLX binding: import everything from here as `mx`, as model code does with mlx.core.
export { MxArray, scope, keep } from "./array";
export {
  Dtype,
  dtypeName,
  dtypeFromName,
  isFloating,
  itemSize,
  largestFinite,
  type DtypeCode,
  type DtypeName,
} from "./dtype";
export { MlxError } from "./ffi";
export * from "./ops";
export * as fast from "./fast";
export * as random from "./random";
export * as memory from "./memory";
export * as distributed from "./distributed";
export { defaultDeviceIsCpu, defaultStream, newStream, onStream } from "./stream";
export {
  loadSafetensors,
  loadGGUF,
  saveSafetensors,
  readGGUFAffine,
  readGGUFDequantized,
  type GGUFBlocks,
  type LoadedFile,
  type MetaValue,
} from "./io";
import { lib } from "./ffi";
import { defaultDeviceIsCpu } from "./stream";

export const version = (): string => String(lib.mlxs_version());
export const gpuAvailable = (): boolean => lib.mlxs_gpu_available() === 1;
/**
 * Our CPU kernels (ffi/src/kernels/) on or off for the ops built from now on (off: MLX's own ops,
 * for comparison); returns the previous setting. They start on unless MLX_KERNELS=mlx.
 */
export const useCpuKernels = (on: boolean): boolean => {
  cpuKernelsOn = on;
  return lib.mlxs_use_cpu_kernels(on ? 1 : 0) === 1;
};
// The switch as the shim starts with it (MLX_KERNELS), read once before any op exists.
let cpuKernelsOn = lib.mlxs_use_cpu_kernels(1) === 1;
lib.mlxs_use_cpu_kernels(cpuKernelsOn ? 1 : 0);
/** Whether our CPU kernels build the ops from now on: they are on and the default device is the CPU. */
export const cpuKernelsActive = (): boolean => cpuKernelsOn && defaultDeviceIsCpu();
/**
 * Whether a product of `rows` outputs runs on our CPU kernels in 8-bit groups of 16, which MLX's
 * own ops refuse (a GGUF's Q6_K weights may then stay quantized).
 */
export const cpuKernelsReadHalfGroups = (rows: number): boolean => lib.mlxs_kernels_read_half_groups(rows) === 1;
/** The instruction set and thread count our CPU kernels run with, e.g. "avx2, 2 threads" (", int16 activations" by default on AVX-512 VNNI, ", int8 activations" with MLX_CPU_INT8=1). */
export const cpuKernels = (): string => String(lib.mlxs_cpu_kernels_describe());
export function setDefaultDevice(kind: "cpu" | "gpu"): void {
  if (lib.mlxs_set_default_device(kind === "gpu" ? 1 : 0) !== 0) throw new Error(`cannot use the ${kind}`);
}
