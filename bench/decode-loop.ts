// The decode loop alone, in process: 64 greedy tokens after an 8-token prompt, twice.
// Compare with bench/decode_loop.py (mlx-lm's generate_step on the same directory).
//   node_modules/.bin/bun bench/decode-loop.ts && .cache/peers/venv/bin/python bench/decode_loop.py
import { loadModel } from "../src/models/load";
import { generateTokens } from "../src/engine/batch";
import { defaultSampling } from "../src/engine/sampling";
const lm = loadModel(".cache/bench/smollm2-mlx");
for (let r = 0; r < 2; r++) {
  let n = 0,
    t0 = 0;
  for (const _ of generateTokens(lm.model, {
    promptIds: [1, 2, 3, 4, 5, 6, 7, 8],
    sampling: defaultSampling,
    maxTokens: 65,
  })) {
    if (n++ === 0) t0 = performance.now();
  }
  console.log("ours decode tok/s", (64 / ((performance.now() - t0) / 1000)).toFixed(2));
}
