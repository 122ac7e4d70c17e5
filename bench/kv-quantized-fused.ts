// A quantized KV cache's decode step with its write inside the fused attention input (one node a
// layer fewer: KVCache.roomFor's quantized room, mx.fast.attentionInputQuantized; attention then
// reads the whole buffers, no views) against the same step with the cache's own write node
// (mx.fast.quantizedCacheWrite, and attention on its views), in one process on the
// default model: the two alternate every round over the same positions, so the host's drift
// falls on both alike. The token loop is pipelined as the engine's (step n + 1 queued before step
// n is read). Medians of wall and CPU ms (all threads) per step.
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/kv-quantized-fused.ts [-m MODEL] [--context 32] [--bits 8] [--rounds 12]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { forward, makeCaches } from "../src/models";
import { KVCache } from "../src/models/cache";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    context: { type: "string", default: "32" },
    bits: { type: "string", default: "8" },
    rounds: { type: "string", default: "12" },
  },
});
const context = Number(values.context);
const kv = { bits: Number(values.bits), groupSize: 64 };
const { model } = loadModel(await resolveModelPath(values.model));
const caches = makeCaches(model, { quantization: kv });
const prompt = Array.from({ length: context }, (_, i) => 3 + ((i * 7) % 1000));
for (let at = 0; at < context; at += 512) {
  const chunk = prompt.slice(at, at + 512);
  mx.scope(() => mx.evaluate(forward(model, mx.array(Int32Array.from(chunk), [1, chunk.length]), caches)));
}

const roomFor = KVCache.prototype.roomFor;
/** The cache's own write node: no quantized room (a float cache's is kept). */
function ownWrite(this: KVCache, rows: Parameters<typeof roomFor>[0]) {
  const room = roomFor.call(this, rows);
  return room && "quantization" in room ? undefined : room;
}

/** `n` greedy-free decode steps of one token, pipelined as the engine's token loop. */
function decode(n: number): void {
  const step = () => mx.keep(mx.scope(() => forward(model, mx.array(Int32Array.from([5]), [1, 1]), caches)));
  let pending = step();
  mx.asyncEvaluate(pending);
  for (let i = 1; i < n; i++) {
    const next = step();
    mx.asyncEvaluate(next);
    mx.evaluate(pending);
    pending.free();
    pending = next;
  }
  mx.evaluate(pending);
  pending.free();
}

// 28 steps a round stay inside one group of keys from the context (up to 63 positions past it
// join the float tail): every round decodes the same positions, taken back between rounds.
const modes = { fused: roomFor, "own write node": ownWrite };
const times: Record<string, { wall: number[]; cpu: number[] }> = {};
for (let round = 0; round < Number(values.rounds); round++) {
  const order = Object.entries(modes);
  if (round % 2) order.reverse();
  for (const [name, room] of order) {
    KVCache.prototype.roomFor = room;
    for (const c of caches) c.trim(context);
    decode(4);
    for (const c of caches) c.trim(context);
    const cpu = process.cpuUsage();
    const started = performance.now();
    decode(24);
    const used = process.cpuUsage(cpu);
    const t = (times[name] ??= { wall: [], cpu: [] });
    t.wall.push((performance.now() - started) / 24);
    t.cpu.push((used.user + used.system) / 1000 / 24);
  }
}
KVCache.prototype.roomFor = roomFor;
for (const [name, t] of Object.entries(times))
  console.log(
    `${kv.bits}-bit at ${context}, ${name}: ${median(t.wall).toFixed(2)} ms a step, ${median(t.cpu).toFixed(2)} CPU ms`,
  );
