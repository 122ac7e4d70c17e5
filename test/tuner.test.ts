// The adaptive tuner converges: it backs off when latency is over target and grows when under.
import { describe, expect, test } from "bun:test";
import { AdaptiveTuner } from "../src/engine/tuner";

const bounds = { minBatch: 1, maxBatch: 16, minChunk: 32, maxChunk: 1024 };

describe("AdaptiveTuner", () => {
  test("latency over target shrinks the prefill chunk, then the batch", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 64 }, settle: 4 });
    for (let i = 0; i < 40; i++) t.observe(120, t.limits.maxBatch, true);
    expect(t.limits.prefillChunk).toBe(32);
    expect(t.limits.maxBatch).toBeLessThan(8);
    expect(t.adjustments[0]!.reason).toMatch(/> target 50 ms/);
  });

  test("latency well under target admits more sequences up to the bound, then bigger chunks", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 14, prefillChunk: 128 }, settle: 2 });
    for (let i = 0; i < 40; i++) t.observe(5, t.limits.maxBatch, true);
    expect(t.limits.maxBatch).toBe(16);
    expect(t.limits.prefillChunk).toBeGreaterThan(128);
    expect(t.limits.prefillChunk).toBeLessThanOrEqual(1024);
  });

  test("under a load whose latency grows with the batch, it settles near the target", () => {
    // A simulated engine: each extra sequence adds 6 ms per token.
    const t = new AdaptiveTuner({ targetItlMs: 60, bounds, initial: { maxBatch: 1, prefillChunk: 256 }, settle: 4 });
    for (let i = 0; i < 400; i++) t.observe(10 + 6 * t.limits.maxBatch, t.limits.maxBatch, true);
    const p99 = t.estimatedP99Ms!;
    expect(p99).toBeLessThanOrEqual(60);
    expect(t.limits.maxBatch).toBeGreaterThanOrEqual(5);
  });

  test("fast steps of a batch below the limit grow the prefill chunk, never the limit", () => {
    // One client at a time: nothing says 9 or 32 sequences would be as fast as one.
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 64 }, settle: 2 });
    for (let i = 0; i < 40; i++) t.observe(5, 1, true);
    expect(t.limits.maxBatch).toBe(8);
    expect(t.limits.prefillChunk).toBe(1024);
  });

  test("slow steps bring the limit below the batch that was slow, not one below a limit it never reached", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 16, prefillChunk: 32 }, settle: 2 });
    for (let i = 0; i < 2; i++) t.observe(120, 6, true);
    expect(t.limits.maxBatch).toBe(5);
  });

  test("slow steps of a lone sequence leave the batch limit alone: there is nothing to shed", () => {
    // One client over target (a latency spike, or a target no single stream meets): cutting the
    // limit from 8 to 1 would not speed it up, and would queue the clients that come next.
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 64 }, settle: 2 });
    for (let i = 0; i < 40; i++) expect(t.observe(120, 1, false)).toBeUndefined();
    expect(t.limits).toEqual({ maxBatch: 8, prefillChunk: 64 });
    expect(t.adjustmentCount).toBe(0);
  });

  test("steps with no prompt prefilling never move the prefill chunk, whose effect they cannot show", () => {
    // Slow decode steps alone: a smaller chunk would not make them faster; shedding a sequence would.
    const slow = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 512 }, settle: 2 });
    for (let i = 0; i < 40; i++) slow.observe(120, slow.limits.maxBatch, false);
    expect(slow.limits.prefillChunk).toBe(512);
    expect(slow.limits.maxBatch).toBe(1);
    // Fast decode steps of a batch below its limit: nothing to grow that they would show.
    const fast = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 64 }, settle: 2 });
    for (let i = 0; i < 40; i++) expect(fast.observe(5, 1, false)).toBeUndefined();
    expect(fast.limits).toEqual({ maxBatch: 8, prefillChunk: 64 });
    expect(fast.adjustmentCount).toBe(0);
  });

  test("slow prefill steps cut the prefill chunk, not the batch, though the step it decides on was a plain decode", () => {
    // A serve under load: steps sharing a prompt chunk are slow, the decode steps between them fast.
    const t = new AdaptiveTuner({ targetItlMs: 40, bounds, initial: { maxBatch: 4, prefillChunk: 128 }, settle: 4 });
    for (let i = 0; i < 3; i++) t.observe(300, 2, true);
    expect(t.observe(20, 2, false)).toEqual({ maxBatch: 4, prefillChunk: 64 });
    // Long after the last prefill, slow decode steps shed a sequence and leave the chunk alone.
    for (let i = 0; i < 40; i++) t.observe(300, t.limits.maxBatch, false);
    expect(t.limits).toEqual({ maxBatch: 1, prefillChunk: 64 });
  });

  test("a cut waits for the batch to come down to it: the limit turns new sequences away, it sheds none", () => {
    // Eight long answers decode on, slowly: the batch stays 8 whatever the limit, until one ends.
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 8, prefillChunk: 64 }, settle: 2 });
    for (let i = 0; i < 40; i++) t.observe(120, 8, false);
    expect(t.limits.maxBatch).toBe(7);
    // One of them ended: a batch of 7 still slow is the next cut's cue.
    for (let i = 0; i < 4; i++) t.observe(120, 7, false);
    expect(t.limits.maxBatch).toBe(6);
  });

  test("counts every adjustment, also those past the latest 100 it keeps", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 16, prefillChunk: 32 }, settle: 1 });
    // Turns of slow and fast steps of a full batch, each long enough to move the limits end to end.
    let changes = 0;
    for (let i = 0; i < 600; i++)
      if (t.observe(Math.floor(i / 50) % 2 === 0 ? 500 : 1, t.limits.maxBatch, true)) changes++;
    expect(changes).toBeGreaterThan(100);
    expect(t.adjustments.length).toBe(100);
    expect(t.adjustmentCount).toBe(changes);
  });

  test("ignores nonsense observations", () => {
    const t = new AdaptiveTuner({ targetItlMs: 50, bounds, initial: { maxBatch: 4, prefillChunk: 64 } });
    expect(t.observe(Number.NaN, 1, false)).toBeUndefined();
    expect(t.emaMs).toBeUndefined();
  });
});
