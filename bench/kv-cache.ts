// Does decoding slow down as the context grows? Decode speed after a short and after a
// ~2,000-token context, in interleaved bursts (short, long, short, long, ...) so that a busy
// machine slows both alike, reported as medians; with --compare also with MLX's own kernels
// (ours off) in the same bursts. CPU time per step (all threads) is reported too: on a shared
// machine it moves less than wall time, which also counts the waits on other processes. MLX's
// active memory across the decode steps stays flat when the cache is updated in place (no
// per-token copy of the cache).
//
//   node_modules/.bin/bun bench/kv-cache.ts [--contexts 32,2000] [--kv-dtypes float16] [--steps 16] [--rounds 5] [--compare] [-m MODEL]
//
// --contexts: the first is the reference each longer one is set against. --kv-dtypes: the float
// cache's dtype under float32 activations (MLX_KV_DTYPE; float16,float32 runs both in the same
// bursts). --compare adds MLX's own kernels (their cache keeps the activations' dtype).
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { generateTokens } from "../src/engine/batch";
import { defaultSampling } from "../src/engine/sampling";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    contexts: { type: "string", default: "32,2000" },
    "kv-dtypes": { type: "string", default: "float16" },
    steps: { type: "string", default: "16" },
    rounds: { type: "string", default: "5" },
    compare: { type: "boolean", default: false },
    model: { type: "string", short: "m" },
  },
});
const steps = Number(values.steps);
const rounds = Number(values.rounds);
const contexts = values.contexts!.split(",").map(Number);
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
    maxTokens: rounds * (steps + 1) + 1,
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

/** Kernels and float cache dtype; its sequences, one per context, are prefilled under them. */
interface Configuration {
  name: string;
  ours: boolean;
  kvDtype: string;
  sequences: ReturnType<typeof sequence>[];
}
const configurations: Configuration[] = [];
for (const [ours, kvDtypes] of [
  [true, values["kv-dtypes"]!.split(",")],
  ...(values.compare ? [[false, ["float32"]] as const] : []),
] as [boolean, string[]][]) {
  for (const kvDtype of kvDtypes) {
    mx.useCpuKernels(ours);
    process.env.MLX_KV_DTYPE = kvDtype;
    const name = ours ? `ours (${mx.cpuKernels()}), ${kvDtype} cache` : "MLX's kernels";
    configurations.push({ name, ours, kvDtype, sequences: contexts.map(sequence) });
  }
}
// Every burst of every configuration and context once per round, the order rotating by round.
const bursts = configurations.flatMap((c) => c.sequences.map((s) => ({ c, s })));
for (let round = 0; round < rounds; round++) {
  for (let i = 0; i < bursts.length; i++) {
    const { c, s } = bursts[(i + round) % bursts.length]!;
    mx.useCpuKernels(c.ours);
    s.burst();
  }
}
mx.useCpuKernels(true);

console.log(`${rounds} interleaved bursts of ${steps} decode steps; medians. Against context ${contexts[0]}.\n`);
console.log(
  "| kernels, cache | context | tokens/s | against the first | CPU ms per step | against the first, by CPU time | active memory change per burst | KV cache |",
);
console.log("|---|---:|---:|---:|---:|---:|---:|---:|");
for (const c of configurations) {
  const [first] = c.sequences;
  for (const s of c.sequences) {
    const [speed, cpu] = [median(s.speeds), median(s.cpuMs)];
    console.log(
      `| ${c.name} | ${s.context} | ${speed.toFixed(2)} | ${ratio(speed, median(first!.speeds))} | ${cpu.toFixed(1)} | ${ratio(median(first!.cpuMs), cpu)} | ${(median(s.growth) / 1e6).toFixed(2)} MB | ${(s.cacheBytes / 1e6).toFixed(1)} MB |`,
    );
  }
}
for (const c of configurations) for (const s of c.sequences) s.end();
