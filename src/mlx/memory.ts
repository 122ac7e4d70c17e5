// MLX's memory counters and limits (bytes).
import { lib } from "./ffi";

export const activeMemory = (): number => Number(lib.mlxs_active_memory());
export const peakMemory = (): number => Number(lib.mlxs_peak_memory());
export const cacheMemory = (): number => Number(lib.mlxs_cache_memory());
export const resetPeakMemory = (): void => lib.mlxs_reset_peak_memory();
export const setMemoryLimit = (bytes: number): number => Number(lib.mlxs_set_memory_limit(BigInt(bytes)));
export const setCacheLimit = (bytes: number): number => Number(lib.mlxs_set_cache_limit(BigInt(bytes)));
export const clearCache = (): void => lib.mlxs_clear_cache();
