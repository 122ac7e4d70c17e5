// The adaptive tuner under a rising load: stages of 1, 2, 4, 8 and 16 concurrent streams on
// one scheduler with a P99 inter-token latency target; per stage, the tuner's estimate and the
// batch limit and prefill chunk it settled on, and the measured step latencies.
//
//   node_modules/.bin/bun bench/tuner.ts [--target-ms 40] [-m MODEL]   (default: a tiny model it writes)
import { parseArgs } from "node:util";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Scheduler } from "../src/engine/scheduler";
import { AdaptiveTuner } from "../src/engine/tuner";
import { defaultSampling } from "../src/engine/sampling";
import { chatTokens } from "../src/engine/prompt";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { writeTinyModel } from "../test/helpers/tiny-model";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    "target-ms": { type: "string", default: "40" },
    model: { type: "string", short: "m" },
    tokens: { type: "string", default: "48" },
  },
});
let path = values.model && (await resolveModelPath(values.model));
if (!path) {
  path = join(mkdtempSync(join(tmpdir(), "mlx-tuner-")), "tiny");
  writeTinyModel(path, { layers: 8, contextLength: 2048 });
}
const lm = loadModel(path);
const target = Number(values["target-ms"]);
const tuner = new AdaptiveTuner({
  targetItlMs: target,
  initial: { maxBatch: 16, prefillChunk: 512 },
  bounds: { minBatch: 1, maxBatch: 16, minChunk: 32, maxChunk: 2048 },
});
const steps: number[] = [];
const scheduler = new Scheduler(lm, {
  maxBatch: 16,
  prefillChunk: 512,
  maxQueue: 64,
  tuner,
  onStep: (ms) => steps.push(ms),
});
const prompt = chatTokens(lm.tokenizer, [
  { role: "user", content: "Tell me a long story about the sea, the wind and a small boat." },
]);

console.log(`target P99 inter-token latency: ${target} ms\n`);
console.log(
  "| concurrent streams | steps | step latency median / P99 (ms) | tuner P99 estimate (ms) | batch limit | prefill chunk | adjustments so far |",
);
console.log("|---:|---:|---:|---:|---:|---:|---:|");
for (const streams of [1, 2, 4, 8, 16]) {
  steps.length = 0;
  // One stage: `streams` requests at once, each drained to its end.
  await Promise.all(
    Array.from({ length: streams }, async (_, i) => {
      const stream = scheduler.submit({
        promptIds: prompt,
        sampling: { ...defaultSampling, temperature: 1, seed: streams * 100 + i },
        maxTokens: Number(values.tokens),
      });
      for await (const event of stream) void event;
    }),
  );
  const sorted = [...steps].sort((a, b) => a - b);
  const p99 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? Number.NaN;
  const { maxBatch, prefillChunk } = scheduler.limits;
  console.log(
    `| ${streams} | ${steps.length} | ${median(steps).toFixed(1)} / ${p99.toFixed(1)} | ${tuner.estimatedP99Ms?.toFixed(1) ?? "n/a"} | ${maxBatch} | ${prefillChunk} | ${tuner.adjustmentCount} |`,
  );
}
scheduler.dispose();
