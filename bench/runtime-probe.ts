// One runtime's figures for bench/runtimes.ts, as JSON on stdout. Bun runs this file; Node
// runs it bundled (bun build --target node), so both go through the same code.
import { load } from "../src/index";
import * as mx from "../src/mlx";

const gen = Number(process.argv[2] ?? 64);
const a = mx.array([1, 2, 3, 4], [2, 2]);
const perCall = (n: number, fn: () => void) => {
  fn(); // warm
  const started = performance.now();
  for (let i = 0; i < n; i++) fn();
  return ((performance.now() - started) * 1000) / n;
};
const opMicros = perCall(20_000, () => mx.add(a, a).free());
const queryMicros = perCall(50_000, () => a.dtype);
const model = await load();
await model.generate("Hi", { maxTokens: 4 }); // warm-up
const result = await model.generate("Write a long story about a lighthouse keeper and a storm.", { maxTokens: gen });
model.close();
process.stdout.write(`${JSON.stringify({ opMicros, queryMicros, genTps: result.stats.generationTokensPerSecond })}\n`);
