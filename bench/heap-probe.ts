// Preloaded into a `mlx serve` process by bench/heap-growth.ts (bun --preload): every second it
// writes the malloc heap's figures (glibc's mallinfo2, all arenas) and the RSS as one JSON line to
// $HEAP_PROBE_FILE, which the benchmark reads. Candidates to compare: HEAP_PROBE_TRIM_MS trims
// the heap that often, HEAP_PROBE_CACHE_LIMIT bounds MLX's buffer cache. Linux x86-64 with glibc
// only: mallinfo2 returns its 80-byte struct through a hidden pointer, which bun:ffi passes as the
// first argument.
import { appendFileSync, readFileSync } from "node:fs";
import { dlopen, FFIType, ptr } from "bun:ffi";

const file = process.env.HEAP_PROBE_FILE;
if (file && process.platform === "linux" && process.arch === "x64") {
  const libc = dlopen("libc.so.6", {
    mallinfo2: { args: [FFIType.ptr], returns: FFIType.ptr },
    malloc_trim: { args: [FFIType.u64], returns: FFIType.i32 },
  });
  const info = new BigUint64Array(10);
  const write = () => {
    libc.symbols.mallinfo2(ptr(info));
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0);
    const [arena, , , , mmapped, , , used, free, topFree] = Array.from(info, Number);
    appendFileSync(
      file,
      `${JSON.stringify({ at: Date.now(), rss: rssKb * 1024, arena, mmapped, used, free, topFree })}\n`,
    );
  };
  setInterval(write, 1000).unref();
  // HEAP_PROBE_TRIM_MS: malloc_trim(0) that often, under load too (a candidate for the product).
  const trimMs = Number(process.env.HEAP_PROBE_TRIM_MS ?? 0);
  if (trimMs > 0) setInterval(() => libc.symbols.malloc_trim(0), trimMs).unref();
  // HEAP_PROBE_CACHE_LIMIT: MLX's buffer cache bounded to that many bytes (MLX's default: 32 MiB).
  const cacheLimit = process.env.HEAP_PROBE_CACHE_LIMIT;
  if (cacheLimit !== undefined) (await import("../src/mlx/memory")).setCacheLimit(Number(cacheLimit));
}
