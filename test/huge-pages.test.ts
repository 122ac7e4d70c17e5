// Huge pages for MLX's long-lived buffers (ffi/src/huge_pages.cpp): a loaded model's weights and a
// KV cache's buffers end in transparent huge pages (AnonHugePages in /proc/self/smaps_rollup
// grows by about their size), their contents unchanged, and MLX_HUGE_PAGES=0 turns it off.
// Where the kernel gives no huge pages (not Linux, or THP `never` in
// /sys/kernel/mm/transparent_hugepage/enabled) the counts are not asserted: only that nothing fails.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import * as mx from "../src/mlx";
import { KVCache } from "../src/models/cache";

const thpFile = "/sys/kernel/mm/transparent_hugepage/enabled";
const thp = existsSync(thpFile) && !readFileSync(thpFile, "utf8").includes("[never]");
const MiB = 1 << 20;

/** This process's anonymous memory in transparent huge pages, bytes. */
function anonHugeBytes(): number {
  if (!existsSync("/proc/self/smaps_rollup")) return 0;
  const kb = readFileSync("/proc/self/smaps_rollup", "utf8").match(/AnonHugePages:\s+(\d+) kB/);
  return Number(kb?.[1] ?? 0) * 1024;
}

describe("huge pages", () => {
  test("an evaluated buffer is collapsed into huge pages, its contents unchanged", () => {
    const a = mx.keep(mx.random.uniform([16 * MiB], mx.Dtype.float32, mx.random.key(3)));
    mx.evaluate(a);
    const before = a.bytes();
    const huge = anonHugeBytes();
    const collapsed = mx.memory.hugePages([a]);
    mx.memory.hugePagesSettled();
    if (thp) {
      expect(collapsed).toBeGreaterThanOrEqual(60 * MiB);
      expect(anonHugeBytes() - huge).toBeGreaterThanOrEqual(60 * MiB);
    }
    expect(a.bytes()).toEqual(before);
    a.free();
  });

  // In a process of its own: in this one, memory earlier tests left in huge pages may be reused.
  test("a loaded model's weights, repacked ones included, are in huge pages", () => {
    const script = `import { readFileSync } from "node:fs";
import * as mx from "${import.meta.dir}/../src/mlx";
import { loadModel } from "${import.meta.dir}/../src/models/load";
import { resolveModelPath } from "${import.meta.dir}/../src/store/resolve";
const huge = () => Number(readFileSync("/proc/self/smaps_rollup", "utf8").match(/AnonHugePages:\\s+(\\d+) kB/)?.[1] ?? 0) * 1024;
const before = huge();
const lm = loadModel(await resolveModelPath(undefined));
mx.memory.hugePagesSettled();
console.log(huge() - before, lm.weightBytes);`;
    const run = Bun.spawnSync([process.execPath, "-e", script], { env: process.env, stderr: "inherit" });
    const [huge, weightBytes] = run.stdout.toString().trim().split(" ").map(Number) as [number, number];
    expect(weightBytes).toBeGreaterThan(50 * MiB);
    if (thp) expect(huge).toBeGreaterThanOrEqual(0.8 * weightBytes);
  });

  test("a KV cache's buffers get huge pages as they grow", () => {
    const cache = new KVCache();
    const huge = anonHugeBytes();
    // 2 × 16 MiB of float16 keys and values, grown twice.
    for (let i = 0; i < 2; i++)
      mx.scope(() => {
        const part = mx.random.normal([1, 8, 1024, 512], mx.Dtype.float32, mx.random.key(i));
        const [keys, values] = cache.update(mx.astype(part, mx.Dtype.float16), mx.astype(part, mx.Dtype.float16));
        mx.evaluate(...keys, ...values);
      });
    mx.memory.hugePagesSettled();
    if (thp) expect(anonHugeBytes() - huge).toBeGreaterThanOrEqual(24 * MiB);
    cache.free();
  });

  test("MLX_HUGE_PAGES=0 turns it off", () => {
    const script = `import * as mx from "${import.meta.dir}/../src/mlx";
const a = mx.zeros([16 * ${MiB}], mx.Dtype.float32); mx.evaluate(a);
console.log(mx.memory.hugePagesOn, mx.memory.hugePages([a]));`;
    const run = Bun.spawnSync([process.execPath, "-e", script], { env: { ...process.env, MLX_HUGE_PAGES: "0" } });
    expect(run.stdout.toString().trim()).toBe("false 0");
  });
});
