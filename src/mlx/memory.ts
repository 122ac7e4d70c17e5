// MLX's memory counters and limits (bytes).
import type { MxArray } from "./array";
export { liveArrays } from "./array";
import { lib } from "./ffi";
import { handles } from "./ops";

export const activeMemory = (): number => Number(lib.mlxs_active_memory());
export const peakMemory = (): number => Number(lib.mlxs_peak_memory());
export const cacheMemory = (): number => Number(lib.mlxs_cache_memory());
export const resetPeakMemory = (): void => lib.mlxs_reset_peak_memory();
export const setMemoryLimit = (bytes: number): number => Number(lib.mlxs_set_memory_limit(BigInt(bytes)));
export const setCacheLimit = (bytes: number): number => Number(lib.mlxs_set_cache_limit(BigInt(bytes)));
export const clearCache = (): void => lib.mlxs_clear_cache();

/**
 * Whether hugePages acts: on Linux (transparent huge pages), on the CPU backend, unless
 * MLX_HUGE_PAGES=0 (for comparison). Read once.
 */
export const hugePagesOn =
  process.platform === "linux" && process.env.MLX_HUGE_PAGES !== "0" && lib.mlxs_gpu_available() !== 1;

/**
 * Huge pages for the buffers of these evaluated arrays: for those that live long and are read in
 * full every step (weights, KV caches), so streaming them does not miss the TLB every 4 KiB
 * (ffi/src/huge_pages.cpp). `collapse` turns their filled pages into huge ones, on a thread of
 * the shim's (hugePagesSettled waits for it); without it only memory touched later gets them.
 * Returns the bytes queued; 0 where !hugePagesOn or the kernel cannot (THP `never`).
 */
export const hugePages = (arrays: MxArray[], collapse = true): number =>
  !hugePagesOn || arrays.length === 0
    ? 0
    : Number(lib.mlxs_huge_pages(handles(arrays), arrays.length, collapse ? 1 : 0));

/** Waits until the huge pages asked for so far are in place (for tests and benchmarks). */
export const hugePagesSettled = (): void => lib.mlxs_huge_pages_wait();
