// What the first stage of a split model does besides its layers, in layers' worth: one decode
// step's decoder layer against the output head with the sampler (final norm, output layer,
// log-softmax, argmax), for a batch of 1 and of 8 rows, timed in one process, alternating, each
// as one evaluation of `repeat` copies (so MLX's per-evaluation cost is shared). The default
// split (src/engine/pipeline/plan.ts) counts the head as some layers' worth; this compares its
// estimate with time.
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/stage-cost.ts [--model smollm2] [--runs 15]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import type { MxArray } from "../src/mlx";
import { headLayers } from "../src/engine/pipeline/plan";
import { KVCache } from "../src/models/cache";
import { readLayout } from "../src/models/layout";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "smollm2" },
    runs: { type: "string", default: "15" },
    repeat: { type: "string", default: "8" },
    context: { type: "string", default: "128" },
  },
});
const runs = Number(values.runs);
const repeat = Number(values.repeat);
const context = Number(values.context);
const path = await resolveModelPath(values.model);
const layout = readLayout(path);
const lm = loadModel(path);
const { model } = lm;
const width = layout.hiddenSize;

const timed = (fn: () => void) => {
  const started = performance.now();
  fn();
  return performance.now() - started;
};

console.log(`# ${values.model}: ${layout.numLayers} layers, ${mx.cpuKernels()}, context ${context}`);
console.log("| rows | one layer (ms) | head + sampler (ms) | head in layers, timed | the split's estimate |");
console.log("|---|---|---|---|---|");
for (const rows of [1, 8]) {
  // A cache per copy of the layer, each holding `context` positions already (a few more by the
  // end: each run adds one).
  const caches = Array.from({ length: repeat }, () => {
    const c = new KVCache();
    mx.scope(() => mx.evaluate(model.layers(mx.random.normal([rows, context, width]), [c], 0, 1), ...c.state));
    return c;
  });
  const layer = () =>
    timed(() =>
      mx.scope(() => {
        const outs: MxArray[] = [];
        for (const c of caches) {
          const h = mx.random.normal([rows, 1, width]);
          outs.push(model.layers(h, [c], 0, 1), ...c.state);
        }
        mx.evaluate(...outs);
      }),
    );
  const head = () =>
    timed(() =>
      mx.scope(() => {
        const outs: MxArray[] = [];
        for (let i = 0; i < repeat; i++) {
          const logits = mx.reshape(model.head(mx.random.normal([rows, 1, width])), [rows, -1]);
          const logprobs = mx.subtract(logits, mx.logsumexp(logits, undefined, true));
          outs.push(mx.argmax(logprobs, -1));
        }
        mx.evaluate(...outs);
      }),
    );
  layer();
  head();
  const l: number[] = [];
  const h: number[] = [];
  for (let r = 0; r < runs; r++) {
    l.push(layer() / repeat);
    h.push(head() / repeat);
  }
  for (const c of caches) c.free();
  const timedRatio = median(h) / median(l);
  console.log(
    `| ${rows} | ${median(l).toFixed(3)} | ${median(h).toFixed(3)} | ${timedRatio.toFixed(1)} | ${headLayers(layout).toFixed(1)} |`,
  );
}
lm.free();
