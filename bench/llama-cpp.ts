// llama.cpp's side of the peer benchmarks, through node-llama-cpp (installed by
// bench/setup-peers.sh in .cache/peers/node): a speed script run with node, as
//   node peer-llama-speed.mjs MODEL.gguf SPEC.json THREADS
// where SPEC.json holds {prompt: ids, context: ids, gen: n}. It warms up (32 prompt tokens, 4
// generated), then times the prompt to its first token and `gen` tokens after `context` (one
// token, whose step is timed with them, or more, prefilled and their first token sampled before
// the clock starts), and prints one JSON line {pp_tps, ttft_s, tg_tps, tg_tokens, weight_bytes}.
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** Writes the speed script next to node-llama-cpp (so node resolves it) and returns its path. */
export function writeLlamaSpeedScript(nodeDir: string): string {
  const path = join(nodeDir, "peer-llama-speed.mjs");
  writeFileSync(
    path,
    `import { readFileSync } from "node:fs";
import { getLlama } from "node-llama-cpp";
const [modelPath, specPath, threadsArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const spec = JSON.parse(readFileSync(specPath, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", progressLogs: false, maxThreads: threads });
const model = await llama.loadModel({ modelPath });
const contextSize = Math.max(2048, spec.context.length + spec.gen + 8);
const context = await model.createContext({ contextSize, batchSize: 2048, threads });
const sequence = context.getSequence();
async function promptTest(ids) {
  await sequence.clearHistory();
  const start = performance.now();
  for await (const _ of sequence.evaluate(ids, { temperature: 0 })) break;
  return (performance.now() - start) / 1000;
}
async function genTest(ids, n) {
  await sequence.clearHistory();
  const untimed = ids.length > 1 ? 1 : 0;
  let start = performance.now();
  let seen = 0;
  let count = 0;
  for await (const _ of sequence.evaluate(ids, { temperature: 0 })) {
    if (++seen <= untimed) start = performance.now();
    else if (++count >= n) break;
  }
  return [(performance.now() - start) / 1000, count];
}
await promptTest(spec.prompt.slice(0, 32));
await genTest(spec.context, 4);
const ppS = await promptTest(spec.prompt);
const [tgS, tgN] = await genTest(spec.context, spec.gen);
console.log(JSON.stringify({ pp_tps: spec.prompt.length / ppS, ttft_s: ppS, tg_tps: tgN / tgS, tg_tokens: tgN, weight_bytes: model.size }));
await context.dispose(); await model.dispose(); await llama.dispose();
`,
  );
  return path;
}
