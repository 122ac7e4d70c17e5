// Serving in one process, step by step: the scheduler `mlx serve` runs, under 1..C clients that
// each send their next request when the last one ends (the prompts and greedy requests of
// `mlx bench --url`), without HTTP. Every engine step is timed (clock and the process's CPU
// time, the steadier measure on a shared machine) and classed: a step where newcomers joined
// the batch, one where sequences left it, or a plain decode step; and the decode steps by the
// rows they decoded. CPU ms per token at C clients against 1 is the scaling a CPU-bound server
// can reach, whatever else runs on the machine.
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/serve-steps.ts [-m MODEL] [--requests 16] [--max-tokens 32] [--clients 1,8]
import { parseArgs } from "node:util";
import { byRows, recordSteps, type StepRecord } from "./engine-steps";
import { streamCompletion } from "../src/engine/generate";
import { PrefixCache } from "../src/engine/prefix-cache";
import { defaultSampling } from "../src/engine/sampling";
import { Scheduler } from "../src/engine/scheduler";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    requests: { type: "string", default: "16" },
    "max-tokens": { type: "string", default: "32" },
    clients: { type: "string", default: "1,8" },
  },
});
const requests = Number(values.requests);
const maxTokens = Number(values["max-tokens"]);
const lm = loadModel(await resolveModelPath(values.model));
// `mlx bench --url`'s prompts, and `mlx serve`'s defaults (batch limit 8, prefill chunk 512, prefix cache).
const prompts = [
  "Write a short story about a lighthouse keeper and a storm.",
  "Explain how a refrigerator works to a ten-year-old.",
  "List five ideas for a weekend trip, with one sentence each.",
  "Summarize the plot of a heist movie you invent.",
];
const scheduler = new Scheduler(lm, {
  maxBatch: 8,
  prefillChunk: 512,
  maxQueue: 64,
  prefixCache: new PrefixCache(512 * 1024 * 1024, Infinity),
});

const steps = recordSteps();

async function answer(i: number): Promise<number> {
  const stream = streamCompletion(scheduler, {
    prompt: { kind: "chat", messages: [{ role: "user", content: prompts[i % prompts.length]! }] },
    sampling: defaultSampling,
    maxTokens,
  });
  for (;;) {
    const next = await stream.next();
    if (next.done) return next.value.tokenIds.length;
  }
}

const cpu = (rs: StepRecord[]) => rs.reduce((sum, r) => sum + r.cpuMs, 0);
await answer(0); // warm-up
console.log(`# ${requests} requests of up to ${maxTokens} tokens per level`);
console.log(
  "| clients | tokens | tokens/s (clock) | CPU ms per token | steps | join steps (CPU ms) | leave steps (CPU ms) | decode steps (CPU ms per token) | decode steps by rows: count × median ms |",
);
console.log("|---:|---:|---:|---:|---:|---|---|---|---|");
for (const clients of values.clients.split(",").map(Number)) {
  steps.reset();
  let next = 0;
  let tokens = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < requests) {
        const generated = await answer(next++);
        tokens += generated;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const records = steps.records();
  const joins = records.filter((r) => r.waiting && r.after > r.before);
  const leaves = records.filter((r) => r.after < r.before);
  const decodes = records.filter((r) => !r.waiting && r.after === r.before);
  const rows = byRows(decodes);
  const decodeTokens = decodes.reduce((sum, r) => sum + r.tokens, 0);
  console.log(
    `| ${clients} | ${tokens} | ${(tokens / seconds).toFixed(1)} | ${(cpu(records) / tokens).toFixed(2)} | ${records.length} | ${joins.length} (${cpu(joins).toFixed(0)}) | ${leaves.length} (${cpu(leaves).toFixed(0)}) | ${decodes.length} (${(cpu(decodes) / decodeTokens).toFixed(2)}) | ${rows} |`,
  );
}
scheduler.dispose();
