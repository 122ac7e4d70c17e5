// Does a rank's idle wait slow the step it then evaluates? A split model's rank builds its next
// decode step, waits (off the CPU) while the other ranks compute, then evaluates it. Here, in one
// process: a one-token step through layers `--layers` (a 2-rank split's half by default) built,
// then evaluated at once or after a sleep of each of `--gaps` ms, alternating, a few steps of each
// in turn. Medians of the evaluation's wall time; the difference is what waking after the gap
// costs (threads and caches gone cold, a halted virtual CPU), paid once per rank per token.
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/idle-gap.ts [--layers 0-15] [--gaps 0,3,7] [--rounds 60]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { cacheState, makeCaches } from "../src/models";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "smollm2" },
    layers: { type: "string", default: "0-15" },
    gaps: { type: "string", default: "0,3,7" },
    rounds: { type: "string", default: "60" },
  },
});
const [start, end] = values.layers!.split("-").map(Number) as [number, number];
const gaps = values.gaps!.split(",").map(Number);
const lm = loadModel(await resolveModelPath(values.model!));
const { model } = lm;

// A 64-token context first, as a short conversation's cache holds.
const caches = makeCaches(model, { windowed: false });
mx.scope(() => mx.evaluate(model.layers(model.embed(mx.array(new Int32Array(64).fill(100), [1, 64])), caches)));
mx.evaluate(...cacheState(caches));
const x = mx.keep(mx.random.normal([1, 1, model.config.hiddenSize], mx.Dtype.float32, mx.random.key(1)));
const stage = caches.slice(start, end);

const times = new Map<number, number[]>(gaps.map((gap) => [gap, []]));
for (let round = 0; round < Number(values.rounds); round++) {
  for (const gap of gaps) {
    for (let step = 0; step < 4; step++) {
      const out = mx.scope(() => mx.keep(model.layers(x, caches, start, end)));
      if (gap > 0) Bun.sleepSync(gap);
      const started = performance.now();
      mx.evaluate(out, ...cacheState(stage));
      // Back to back, the first step of a turn follows the other gaps' sleeps: not counted.
      if (gap > 0 || step > 0) times.get(gap)!.push(performance.now() - started);
      out.free();
    }
  }
}
for (const [gap, ms] of times)
  console.log(
    `gap ${gap} ms: layers ${start}-${end} evaluated in ${median(ms).toFixed(3)} ms (median of ${ms.length} steps)`,
  );
