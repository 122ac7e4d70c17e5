// The MLX binding: import everything from here as `mx`, as model code does with mlx.core.
export { MxArray, scope, keep } from "./array";
export { Dtype, dtypeName, dtypeFromName, isFloating, itemSize, type DtypeCode, type DtypeName } from "./dtype";
export { MlxError } from "./ffi";
export * from "./ops";
export * as fast from "./fast";
export * as random from "./random";
export * as memory from "./memory";
export { defaultDeviceIsCpu, defaultStream, newStream, onStream } from "./stream";
export { loadSafetensors, loadGGUF, saveSafetensors, type LoadedFile, type MetaValue } from "./io";
import { lib } from "./ffi";

export const version = (): string => String(lib.mlxs_version());
export const gpuAvailable = (): boolean => lib.mlxs_gpu_available() === 1;
export function setDefaultDevice(kind: "cpu" | "gpu"): void {
  if (lib.mlxs_set_default_device(kind === "gpu" ? 1 : 0) !== 0) throw new Error(`cannot use the ${kind}`);
}
