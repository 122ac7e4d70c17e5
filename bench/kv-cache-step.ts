// One decode step's KV cache work over 30 layers in the default model's shapes (9 query / 3 KV
// heads of 64), for the float16 cache, the 8-bit cache and the 4-bit caches (keys per channel, the
// default, and per row): the cache's update alone (writing the new position, as KVCache.update does) and
// update plus attention (KVCache.attention). The two apart leave the cache's own per-step graph
// (bench/kv-attention.ts times attention alone). Interleaved runs, medians of CPU ms (all threads).
//
//   node_modules/.bin/bun bench/kv-cache-step.ts [--context 2000] [--runs 16]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { KVCache, type KvQuantization } from "../src/models/cache";
import { median } from "./lib";

const { values } = parseArgs({
  options: { context: { type: "string", default: "2000" }, runs: { type: "string", default: "16" } },
});
const context = Number(values.context);
const [layers, qHeads, kvHeads, dim] = [30, 9, 3, 64];

/** A model's caches holding `context` positions. */
function caches(quantization?: KvQuantization): KVCache[] {
  return Array.from({ length: layers }, () => {
    const cache = new KVCache(quantization);
    mx.scope(() => {
      const [k, v] = [mx.random.normal([1, kvHeads, context, dim]), mx.random.normal([1, kvHeads, context, dim])];
      mx.evaluate(...cache.update(k, v).flat());
    });
    return cache;
  });
}

const kinds: [string, KVCache[]][] = [
  ["float16", caches()],
  ["8-bit, keys per channel", caches({ bits: 8, groupSize: 64 })],
  ["4-bit, keys per channel", caches({ bits: 4, groupSize: 64 })],
  ["4-bit, keys per row", caches({ bits: 4, groupSize: 64, keys: "rows" })],
];
const q = mx.keep(mx.random.normal([1, qHeads, 1, dim]));
const times = new Map<string, number[]>();
for (let run = 0; run < Number(values.runs); run++)
  for (const [name, model] of kinds)
    for (const attend of [false, true]) {
      const used = process.cpuUsage();
      mx.scope(() => {
        const outs = model.flatMap((cache) => {
          const [k, v] = [mx.random.normal([1, kvHeads, 1, dim]), mx.random.normal([1, kvHeads, 1, dim])];
          return attend ? [cache.attention(q, k, v, dim ** -0.5, undefined)] : cache.update(k, v).flat();
        });
        mx.evaluate(...outs);
      });
      const cpu = process.cpuUsage(used);
      const key = `${name}|${attend}`;
      times.set(key, [...(times.get(key) ?? []), (cpu.user + cpu.system) / 1000]);
    }

console.log(`context ${context}, ${values.runs} interleaved runs; CPU ms of one decode step over ${layers} layers`);
console.log("\n| cache | update | update and attention |\n|---|---:|---:|");
for (const [name] of kinds) {
  const [update, both] = [false, true].map((attend) => median(times.get(`${name}|${attend}`)!).toFixed(2));
  console.log(`| ${name} | ${update} | ${both} |`);
}
