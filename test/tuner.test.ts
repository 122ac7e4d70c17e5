// The adaptive tuner converges: it backs off when latency is over target and grows when under.
import { describe, expect, test } from "bun:test";
import { AdaptiveTuner } from "../src/engine/tuner";

const bounds = { minBatch: 1, maxBatch: 16, minChunk: 32, maxChunk: 1024 };

describe("AdaptiveTuner", () => {
  test("latency over target shrinks the prefill chunk, then the batch", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 64 }, settle: 4 });
    for (let i = 0; i < 40; i++) t.observe(120);
    expect(t.limits.prefillChunk).toBe(32);
    expect(t.limits.maxBatch).toBeLessThan(8);
    expect(t.adjustments[0]!.reason).toMatch(/> target 50 ms/);
  });

  test("latency well under target admits more sequences up to the bound, then bigger chunks", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 14, prefillChunk: 128 }, settle: 2 });
    for (let i = 0; i < 40; i++) t.observe(5);
    expect(t.limits.maxBatch).toBe(16);
    expect(t.limits.prefillChunk).toBeGreaterThan(128);
    expect(t.limits.prefillChunk).toBeLessThanOrEqual(1024);
  });

  test("under a load whose latency grows with the batch, it settles near the target", () => {
    // A simulated engine: each extra sequence adds 6 ms per token.
    const t = new AdaptiveTuner({ targetItlMs: 60, bounds, initial: { maxBatch: 1, prefillChunk: 256 }, settle: 4 });
    for (let i = 0; i < 400; i++) t.observe(10 + 6 * t.limits.maxBatch);
    const p99 = t.estimatedP99Ms!;
    expect(p99).toBeLessThanOrEqual(60);
    expect(t.limits.maxBatch).toBeGreaterThanOrEqual(5);
  });

  test("ignores nonsense observations", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 4, prefillChunk: 64 } });
    expect(t.observe(Number.NaN)).toBeUndefined();
    expect(t.emaMs).toBeUndefined();
  });
});
