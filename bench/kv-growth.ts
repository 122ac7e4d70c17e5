// What a float16 KV cache's growth costs decode at a long context: 30 layers in the default
// model's shapes (3 KV heads of 64), prefilled to --from positions, then written one position
// at a time for --positions more (KVCache.update, as a decode step writes), each step
// evaluated. A write that fits costs the same at any length; a growth copies the cache into a
// larger buffer and gives it huge pages, a cost that grows with the context. Reported: the
// median step's CPU time (all threads), the growths, and the CPU time above the median summed
// over all steps (the shim's huge-page thread included, waited for at the end) per growth and
// per position. Run it in two trees (or with two shims) alternately to compare them.
//
//   node_modules/.bin/bun bench/kv-growth.ts [--from 2000] [--positions 1024] [--runs 3]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { KVCache } from "../src/models/cache";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    from: { type: "string", default: "2000" },
    positions: { type: "string", default: "1024" },
    runs: { type: "string", default: "3" },
  },
});
const [from, positions] = [Number(values.from), Number(values.positions)];
const [layers, kvHeads, dim] = [30, 3, 64];
const cpuMs = (since: NodeJS.CpuUsage) => {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / 1000;
};

function run(): { step: number; extra: number; growths: number; held: number } {
  const caches = Array.from({ length: layers }, () => new KVCache());
  for (const cache of caches)
    mx.scope(() => {
      const [k, v] = [mx.random.normal([1, kvHeads, from, dim]), mx.random.normal([1, kvHeads, from, dim])];
      mx.evaluate(...cache.update(mx.astype(k, mx.Dtype.float16), mx.astype(v, mx.Dtype.float16)).flat());
    });
  mx.memory.hugePagesSettled();
  const row = mx.keep(mx.astype(mx.random.normal([1, kvHeads, 1, dim]), mx.Dtype.float16));
  let growths = 0;
  const steps: number[] = [];
  for (let p = 0; p < positions; p++) {
    const capacity = caches[0]!.keys![0]!.shape[2]!;
    const before = process.cpuUsage();
    mx.scope(() => mx.evaluate(...caches.flatMap((cache) => cache.update(row, row).flat())));
    steps.push(cpuMs(before));
    if (caches[0]!.keys![0]!.shape[2]! !== capacity) growths++;
  }
  const settling = process.cpuUsage();
  mx.memory.hugePagesSettled();
  const typical = median(steps);
  const extra = steps.reduce((sum, ms) => sum + Math.max(0, ms - typical), cpuMs(settling));
  const held = caches[0]!.keys![0]!.shape[2]!;
  for (const cache of caches) cache.free();
  row.free();
  return { step: typical, extra, growths, held };
}

const results = Array.from({ length: Number(values.runs) }, run);
const { growths, held } = results.at(-1)!;
const extra = median(results.map((r) => r.extra));
console.log(
  `${from} → ${from + positions} positions, 30 layers: a write ${median(results.map((r) => r.step)).toFixed(3)} CPU ms; ${growths} growths (${held} positions held at the end); CPU above that ${extra.toFixed(0)} ms (runs ${results.map((r) => r.extra.toFixed(0)).join(", ")}): ${(extra / growths).toFixed(1)} ms a growth, ${(extra / positions).toFixed(3)} ms a position (medians of ${results.length})`,
);
