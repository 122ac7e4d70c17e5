// A pipeline stage's decode step in one process, in the process's CPU time: building its graph
// (the layers of a middle stage, 6-18 of the default model's 30 by default, on a batch of left-
// padded rows as a micro-batch at 8 clients on 3 ranks holds) against evaluating it. The build is
// paid once per micro-batch on every rank, so it is what a split adds per step besides the
// weights read again. Compare shims by running it with MLX_SHIM_PATH set to each, in turn.
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/stage-step.ts [--rows 3] [--layers 6-18] [--steps 60]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { BatchKVCache } from "../src/models/batch-cache";
import { KVCache } from "../src/models/cache";
import { cacheState } from "../src/models/model";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "smollm2" },
    rows: { type: "string", default: "3" },
    layers: { type: "string", default: "6-18" },
    steps: { type: "string", default: "60" },
  },
});
const rows = Number(values.rows);
const steps = Number(values.steps);
const [start, end] = values.layers!.split("-").map(Number) as [number, number];
const lm = loadModel(await resolveModelPath(values.model!));
const { model } = lm;
const width = model.config.hiddenSize;

// Each row prefilled alone to another length (~120-140 positions), then joined: padded rows.
const caches = Array.from({ length: model.numLayers }, () => new BatchKVCache());
for (let r = 0; r < rows; r++) {
  const single = Array.from({ length: model.numLayers }, () => new KVCache());
  mx.scope(() =>
    mx.evaluate(
      model.layers(mx.random.normal([1, 120 + 7 * r, width]), single, start, end),
      ...cacheState(single.slice(start, end)),
    ),
  );
  caches.forEach((c, i) => (i >= start && i < end ? c.extend(single[i]!) : c.leftPadding.push(0)));
}

const cpuMs = () => {
  const used = process.cpuUsage();
  return (used.user + used.system) / 1000;
};
const build: number[] = [];
const evaluate: number[] = [];
for (let step = 0; step < steps + 10; step++) {
  mx.scope(() => {
    const input = mx.random.normal([rows, 1, width]);
    mx.evaluate(input);
    const started = cpuMs();
    const out = model.layers(input, caches, start, end);
    const built = cpuMs();
    mx.evaluate(out, ...cacheState(caches.slice(start, end)));
    // The first steps warm up (the caches grow, MLX's allocator fills).
    if (step >= 10) {
      build.push(built - started);
      evaluate.push(cpuMs() - built);
    }
  });
}
console.log(
  `layers ${start}-${end}, ${rows} rows: graph built in ${median(build).toFixed(3)} ms of CPU, evaluated in ${median(evaluate).toFixed(3)} ms (medians of ${steps} steps)`,
);
for (const c of caches) c.free();
lm.free();
