// Where one decode step of the default model goes: the whole step (the engine's token loop,
// pipelined as in serving), the graph built by TypeScript alone, and each op of the step timed
// alone in its real shapes (each op repeated as many times as a step runs it, in one evaluation,
// so MLX's per-evaluation cost is paid once). The ops' sum against the whole step leaves the
// graph's own cost (nodes, allocations, the sampler, thread wake-ups between ops). `--rows R`:
// R sequences decoded together (the batched step of serving), every op with R rows.
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/decode-profile.ts [--runs 5] [--context 64] [--rows 1] [--cpu] [--step-only]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import type { MxArray } from "../src/mlx";
import { median } from "./lib";
import { resolveModelPath } from "../src/store/resolve";
import { loadModel } from "../src/models/load";
import { BatchGenerator } from "../src/engine/batch";
import { defaultSampling } from "../src/engine/sampling";
import { cacheState, makeCaches } from "../src/models";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    context: { type: "string", default: "64" },
    tokens: { type: "string", default: "64" },
    rows: { type: "string", default: "1" },
    // Ops timed by the process's CPU time rather than the clock (steadier on a shared machine).
    cpu: { type: "boolean", default: false },
    // The whole step alone (to compare builds): no build timing, no table of ops.
    "step-only": { type: "boolean", default: false },
  },
});
const runs = Number(values.runs);
const context = Number(values.context);
const tokens = Number(values.tokens);
const rows = Number(values.rows);

const lm = loadModel(await resolveModelPath(undefined));
const c = lm.model.config;
const layers = c.numHiddenLayers;
console.log(`# ${mx.cpuKernels()}, ${layers} layers, context ${context}, ${rows} row(s)`);

function timed(fn: () => void): number {
  if (values.cpu) {
    const started = process.cpuUsage();
    fn();
    const used = process.cpuUsage(started);
    return (used.user + used.system) / 1000;
  }
  const started = performance.now();
  fn();
  return performance.now() - started;
}

/** Median ms of `make()`'s arrays evaluated together, over `runs` runs after one warm-up. */
function medianEval(make: () => MxArray[]): number {
  const once = () => timed(() => mx.scope(() => mx.evaluate(...make())));
  once();
  return median(Array.from({ length: runs }, once));
}

// The whole step: tokens/s of the engine's token loop after a `context`-token prompt, and the
// process's CPU time per step (on a loaded machine, with MLX_CPU_THREADS=1, the steadier measure
// of the work a step does: no thread waits for another).
function stepMs(): { wall: number; cpu: number } {
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let r = 0; r < runs; r++) {
    const generator = new BatchGenerator(lm.model, { maxBatch: rows, prefillChunk: 2048 });
    for (let b = 0; b < rows; b++)
      generator.add(String(b), {
        // Rows of different lengths, as in serving: each row's padding is masked.
        promptIds: Array.from({ length: context + 3 * b }, (_, i) => 100 + i + b),
        sampling: defaultSampling,
        maxTokens: tokens + 1,
      });
    // Timed from the first step with every row decoding.
    while (generator.running < rows) generator.step();
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    let steps = 0;
    for (; !generator.idle; steps++) generator.step();
    wall.push((performance.now() - t0) / steps);
    const used = process.cpuUsage(c0);
    cpu.push((used.user + used.system) / 1000 / steps);
    generator.dispose();
  }
  return { wall: median(wall), cpu: median(cpu) };
}

// The graph of one step built in TypeScript, never evaluated: the host's share.
function buildMs(): number {
  const caches = makeCaches(lm.model, { windowed: false });
  mx.scope(() => mx.evaluate(lm.model.layers(lm.model.embed(mx.array(new Int32Array(context), [1, context])), caches)));
  mx.evaluate(...cacheState(caches));
  const once = () =>
    timed(() =>
      mx.scope(() => {
        const h = lm.model.layers(lm.model.embed(mx.array(new Int32Array([7]), [1, 1])), caches);
        const logits = lm.model.head(h);
        mx.argmax(mx.subtract(logits, mx.logsumexp(logits, undefined, true)), -1);
      }),
    );
  once();
  const ms = median(Array.from({ length: runs * 4 }, once));
  for (const cache of caches) cache.free();
  return ms;
}

const w = lm.weights.tensors;
const quant = (prefix: string) => ({
  weight: w.get(`${prefix}.weight`)!,
  scales: w.get(`${prefix}.scales`)!,
  biases: w.get(`${prefix}.biases`)!,
});
const q = lm.weights.quantFor("model.layers.0.self_attn.o_proj")!;
const headQuant = lm.weights.quantFor("model.embed_tokens")!;
const D = c.hiddenSize;
const x1 = (k: number) => mx.keep(mx.random.normal([rows, 1, k], mx.Dtype.float32, mx.random.key(k)));
const xD = x1(D);
const xI = x1(c.intermediateSize);
const qmm = (prefix: string, x: MxArray, spec = q) => {
  const t = quant(prefix);
  return mx.quantizedMatmul(x, t.weight, t.scales, t.biases, spec, true);
};
const repeat = (n: number, op: (i: number) => MxArray) => () => Array.from({ length: n }, (_, i) => op(i));
const l0 = "model.layers.0";
// Each layer's own weights, as a step reads them (not one layer's, which would stay in the cache).
const fused = (i: number, part: string) =>
  [...w.keys()]
    .find((k) => k.startsWith(`model.layers.${i}.${part}.`) && k.includes("+") && k.endsWith(".weight"))!
    .replace(/\.weight$/, "");
const kvHeads = c.numKeyValueHeads;
const hd = c.headDim;
const queries = mx.keep(mx.random.normal([rows, c.numAttentionHeads, 1, hd], mx.Dtype.float32, mx.random.key(3)));
const keys = mx.keep(mx.random.normal([rows, kvHeads, context, hd], mx.Dtype.float32, mx.random.key(4)));
const vals = mx.keep(mx.random.normal([rows, kvHeads, context, hd], mx.Dtype.float32, mx.random.key(5)));
const normWeight = w.get(`${l0}.input_layernorm.weight`)!;
const gate = x1(c.intermediateSize + 1);
const logitsRow = x1(c.vocabSize);
const tiny = mx.keep(mx.scalar(1));

const ops: [string, number, () => MxArray[]][] = [
  ["q/k/v projection (4-bit)", layers, repeat(layers, (i) => qmm(fused(i, "self_attn"), xD))],
  ["o projection (4-bit)", layers, repeat(layers, (i) => qmm(`model.layers.${i}.self_attn.o_proj`, xD))],
  ["gate/up projection (4-bit)", layers, repeat(layers, (i) => qmm(fused(i, "mlp"), xD))],
  ["down projection (4-bit)", layers, repeat(layers, (i) => qmm(`model.layers.${i}.mlp.down_proj`, xI))],
  ["output layer (8-bit, tied embedding)", 1, repeat(1, () => qmm("model.embed_tokens", xD, headQuant))],
  [
    `attention over ${context} keys`,
    layers,
    repeat(layers, () => mx.fast.scaledDotProductAttention(queries, keys, vals, hd ** -0.5)),
  ],
  ["RMSNorm", 2 * layers + 1, repeat(2 * layers + 1, () => mx.fast.rmsNorm(xD, normWeight, 1e-5))],
  [
    "SiLU·mul",
    layers,
    repeat(layers, () => mx.fast.siluMul(mx.slice(gate, [0, 0, 0], [rows, 1, c.intermediateSize]), xI)),
  ],
  [
    "logsumexp + argmax (sampler)",
    1,
    repeat(1, () => mx.argmax(mx.subtract(logitsRow, mx.logsumexp(logitsRow, -1, true)), -1)),
  ],
  ["a trivial op (scalar add), per node", 100, repeat(100, () => mx.add(tiny, tiny))],
];

const { wall, cpu: stepCpu } = stepMs();
console.log(
  `\nwhole step (engine token loop, pipelined): ${wall.toFixed(2)} ms a step of ${rows} token(s) (${((1000 * rows) / wall).toFixed(1)} tokens/s), ${stepCpu.toFixed(2)} ms of CPU time`,
);
// The ops' shares are of the step measured the same way (CPU time with --cpu).
const step = values.cpu ? stepCpu : wall;
if (values["step-only"]) process.exit(0);
const build = buildMs();
console.log(`graph build in TypeScript alone: ${build.toFixed(2)} ms/token (overlaps evaluation when pipelined)\n`);
console.log("| op | per step | ms per step | share of the step |");
console.log("|---|---:|---:|---:|");
let sum = 0;
for (const [name, count, make] of ops) {
  const ms = medianEval(make);
  const perStep = name.startsWith("a trivial") ? ms / count : ms;
  if (!name.startsWith("a trivial")) sum += ms;
  console.log(
    `| ${name} | ${name.startsWith("a trivial") ? 1 : count} | ${perStep.toFixed(3)} | ${((100 * perStep) / step).toFixed(1)}% |`,
  );
}
console.log(`| sum of the ops above | | ${sum.toFixed(2)} | ${((100 * sum) / step).toFixed(1)}% |`);
console.log(
  `| the rest (graph nodes, copies, cache updates, wake-ups) | | ${(step - sum).toFixed(2)} | ${((100 * (step - sum)) / step).toFixed(1)}% |`,
);
