// Does decoding slow down as the context grows? Decode speed after a short and after a
// ~2,000-token context, in interleaved bursts (short, long, short, long, ...) so that a busy
// machine slows both alike, reported as medians; with --compare also with MLX's own kernels
// (ours off) in the same bursts. CPU time per step (all threads) is reported too: on a shared
// machine it moves less than wall time, which also counts the waits on other processes. MLX's
// active memory across the decode steps stays flat when the cache is updated in place (no
// per-token copy of the cache).
//
//   node_modules/.bin/bun bench/kv-cache.ts [--context 2000] [--steps 16] [--rounds 5] [--compare] [-m MODEL]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { generateTokens } from "../src/engine/batch";
import { defaultSampling } from "../src/engine/sampling";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    context: { type: "string", default: "2000" },
    steps: { type: "string", default: "16" },
    rounds: { type: "string", default: "5" },
    compare: { type: "boolean", default: false },
    model: { type: "string", short: "m" },
  },
});
const steps = Number(values.steps);
const rounds = Number(values.rounds);
const lm = loadModel(await resolveModelPath(values.model));
const text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ";

/** A sequence prefilled to `contextTokens`, decoding on demand in bursts. */
function sequence(contextTokens: number) {
  const prompt = lm.tokenizer
    .encode(text.repeat(Math.ceil(contextTokens / 15)), { addSpecialTokens: false })
    .slice(0, contextTokens);
  const held = mx.memory.activeMemory();
  const tokens = generateTokens(lm.model, {
    promptIds: prompt,
    sampling: defaultSampling,
    maxTokens: rounds * 2 * (steps + 1) + 1,
  });
  tokens.next(); // the prefill and the first token
  // What the sequence holds once prefilled: its KV cache, mostly.
  const cacheBytes = mx.memory.activeMemory() - held;
  const speeds: number[] = [];
  const growth: number[] = [];
  /** CPU time per step (ms, all threads): on a shared machine steadier than wall time, which waits on neighbours. */
  const cpuMs: number[] = [];
  return {
    context: prompt.length,
    speeds,
    growth,
    cpuMs,
    cacheBytes,
    end: () => tokens.return(undefined),
    /** `steps` decode steps, timed from the burst's first token (which may wait on the other sequence's queued step). */
    burst() {
      tokens.next();
      const started = performance.now();
      const cpu = process.cpuUsage();
      const before = mx.memory.activeMemory();
      for (let n = 0; n < steps; n++) tokens.next();
      speeds.push(steps / ((performance.now() - started) / 1000));
      const used = process.cpuUsage(cpu);
      cpuMs.push((used.user + used.system) / 1000 / steps);
      growth.push(mx.memory.activeMemory() - before);
    },
  };
}

const configurations = values.compare ? [true, false] : [true];
const short = sequence(32);
const long = sequence(Number(values.context));
interface Bursts {
  speeds: number[];
  cpuMs: number[];
}
const bursts = () => ({ speeds: [] as number[], cpuMs: [] as number[] });
const results = new Map(configurations.map((ours) => [ours, { short: bursts(), long: bursts() }]));
for (let round = 0; round < rounds; round++) {
  for (const ours of configurations) {
    mx.useCpuKernels(ours);
    for (const [s, into] of [
      [short, results.get(ours)!.short],
      [long, results.get(ours)!.long],
    ] as [ReturnType<typeof sequence>, Bursts][]) {
      s.burst();
      into.speeds.push(s.speeds.at(-1)!);
      into.cpuMs.push(s.cpuMs.at(-1)!);
    }
  }
}
mx.useCpuKernels(true);

console.log(`${rounds} interleaved bursts of ${steps} decode steps; medians.\n`);
console.log(
  `| kernels | tokens/s, context 32 | tokens/s, context ${long.context} | long / short | CPU ms per step, 32 | CPU ms per step, ${long.context} | short / long, by CPU time | active memory change per burst (long) | KV cache (long) |`,
);
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
const cacheMB = (long.cacheBytes / 1e6).toFixed(1);
for (const ours of configurations) {
  const r = results.get(ours)!;
  const [a, b] = [median(r.short.speeds), median(r.long.speeds)];
  const [ca, cb] = [median(r.short.cpuMs), median(r.long.cpuMs)];
  console.log(
    `| ${ours ? `ours (${mx.cpuKernels()})` : "MLX's"} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${ratio(b, a)} | ${ca.toFixed(1)} | ${cb.toFixed(1)} | ${ratio(ca, cb)} | ${(median(long.growth) / 1e6).toFixed(2)} MB | ${cacheMB} MB |`,
  );
}
short.end();
long.end();
