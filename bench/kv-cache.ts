// Is decoding at a long context dominated by KV-cache copies? Decode speed after a short
// and after a ~2,000-token context, and MLX's active memory across decode steps: with
// in-place cache updates it stays flat (no per-token copy of the cache).
//
//   node_modules/.bin/bun bench/kv-cache.ts [--context 2000] [--steps 32] [-m MODEL]
import { parseArgs } from "node:util";
import { generateTokens } from "../src/engine/batch";
import { memoryFigures } from "../src/engine/device";
import { defaultSampling } from "../src/engine/sampling";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";

const { values } = parseArgs({ options: { context: { type: "string", default: "2000" }, steps: { type: "string", default: "32" }, model: { type: "string", short: "m" } } });
const steps = Number(values.steps);
const lm = loadModel(await resolveModelPath(values.model));
const text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ";

function measure(contextTokens: number) {
  const prompt = lm.tokenizer.encode(text.repeat(Math.ceil(contextTokens / 15)), { addSpecialTokens: false }).slice(0, contextTokens);
  const before = memoryFigures().active;
  const active: number[] = [];
  let started = 0;
  let n = 0;
  for (const _ of generateTokens(lm.model, { promptIds: prompt, sampling: defaultSampling, maxTokens: steps + 1 })) {
    if (n === 0) started = performance.now(); // time decode steps only, after the prefill
    active.push(memoryFigures().active);
    n++;
  }
  const seconds = (performance.now() - started) / 1000;
  // What the sequence holds after its prefill: its KV cache, mostly.
  const cacheBytes = active[0]! - before;
  return { context: prompt.length, tokensPerSecond: steps / seconds, activeGrowth: active.at(-1)! - active[1]!, cacheBytes };
}

const short = measure(32);
const long = measure(Number(values.context));
console.log("| context (tokens) | decode tokens/s | active memory change over the decode steps | active memory held after the prefill (KV cache) |");
console.log("|---:|---:|---:|---:|");
for (const r of [short, long]) {
  console.log(`| ${r.context} | ${r.tokensPerSecond.toFixed(2)} | ${(r.activeGrowth / 1e6).toFixed(2)} MB over ${steps} steps | ${(r.cacheBytes / 1e6).toFixed(1)} MB |`);
}
console.log(`\ndecode at ${long.context} tokens runs at ${((long.tokensPerSecond / short.tokensPerSecond) * 100).toFixed(0)}% of the speed at ${short.context} tokens.`);
