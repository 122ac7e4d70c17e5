// What the front ends may know about the device MLX computes on: memory figures, and the
// peak memory of one measured run. They read it here, never from src/mlx.
import * as mx from "../mlx";

export interface MemoryFigures {
  /** Bytes held by live arrays. */
  active: number;
  /** The most held at once since start (or since the last resetPeakMemory). */
  peak: number;
  /** Bytes kept by MLX's buffer cache for reuse. */
  cache: number;
  /** MLX array handles alive now: back to its baseline once idle, or something leaks. */
  arrays: number;
}

export function memoryFigures(): MemoryFigures {
  return {
    active: mx.memory.activeMemory(),
    peak: mx.memory.peakMemory(),
    cache: mx.memory.cacheMemory(),
    arrays: mx.memory.liveArrays(),
  };
}

/** Starts a new peak-memory measurement. */
export const resetPeakMemory = (): void => mx.memory.resetPeakMemory();

/** Returns the buffers MLX keeps for reuse to the system (e.g. between two benchmarked models). */
export const clearMemoryCache = (): void => mx.memory.clearCache();

/** Whether models compute on the CPU (MLX's default device), not a GPU. */
export const computesOnCpu = (): boolean => mx.defaultDeviceIsCpu();
