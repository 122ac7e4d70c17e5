// How much memory a piece of work adds at its highest, for tests that tell a copy of a buffer
// from a write in place.
import * as mx from "../../src/mlx";

/**
 * The highest active memory while `work` runs, above what was active before it. MLX's buffer
 * cache is emptied first: it may hand a small request a larger block left by earlier work (a
 * previous test's 200 KB buffer for a 384-byte tail), and the counters then count the whole
 * block, which reads as a copy that never happened.
 */
export function peakAbove(work: () => void): number {
  mx.memory.clearCache();
  const before = mx.memory.activeMemory();
  mx.memory.resetPeakMemory();
  work();
  return mx.memory.peakMemory() - before;
}
