// The quantized KV cache (--kv-bits) against the float one on one model: bytes per token,
// decode tokens/s at long contexts, and quality (greedy agreement, mean absolute logit
// difference).
//
//   node_modules/.bin/bun bench/kv-quantized.ts [-m MODEL] [--contexts 512,2000,8000] [--steps 16] [--runs 3] [--prompts 10] [--tokens 64]
//
// Speed: the context is put in the cache directly (random keys and values of the model's
// dtype, quantized as the cache quantizes them) instead of prefilling thousands of tokens,
// which a decode step's cost does not depend on; then `steps` real decode steps are timed, in
// wall time and in CPU time per token (all threads; steadier when other work shares the CPUs).
// Runs interleave the three caches (float, 8-bit, 4-bit) and the medians are reported.
// Quality: each prompt's greedy answer with each cache (identical answers, and tokens before the
// first difference), and the mean absolute logit difference from the float cache over the float
// answer (prompt + answer through each cache in one pass). The same prompts through mlx-lm's
// quantized KV cache: bench/kv_quantized_mlx_lm.py.
import { parseArgs } from "node:util";
import { generateTokens } from "../src/engine/batch";
import { promptTokens } from "../src/engine/prompt";
import { defaultSampling } from "../src/engine/sampling";
import * as mx from "../src/mlx";
import { forward, freeCaches, makeCaches } from "../src/models";
import type { KvQuantization } from "../src/models/cache";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import prompts from "./kv-quality-prompts.json" with { type: "json" };

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    contexts: { type: "string", default: "512,2000,8000" },
    steps: { type: "string", default: "16" },
    runs: { type: "string", default: "3" },
    prompts: { type: "string", default: "10" },
    tokens: { type: "string", default: "64" },
  },
});
const lm = loadModel(await resolveModelPath(values.model));
const model = lm.model;
const kinds: { name: string; kv?: KvQuantization }[] = [
  { name: "float" },
  { name: "8-bit", kv: { bits: 8, groupSize: 64 } },
  { name: "4-bit", kv: { bits: 4, groupSize: 64 } },
  // The layout --max-kv-size keeps (and the default before keys per channel).
  { name: "8-bit, keys per row", kv: { bits: 8, groupSize: 64, keys: "rows" } },
  { name: "4-bit, keys per row", kv: { bits: 4, groupSize: 64, keys: "rows" } },
];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function cacheWithContext(kv: KvQuantization | undefined, context: number) {
  const caches = makeCaches(model, { quantization: kv });
  mx.scope(() => forward(model, mx.array(Int32Array.from([1]), [1, 1]), caches)); // one real token sets shapes and dtype
  const [batch, heads] = caches[0]!.keys![0]!.shape as number[];
  const dim = model.config.headDim;
  const dtype = caches[0]!.keys!.at(kv ? 1 : 0)!.dtype; // a quantized cache's scales have the model's dtype
  for (const cache of caches) {
    for (let done = 1; done < context; done += 1024) {
      const n = Math.min(1024, context - done);
      mx.scope(() => {
        const random = () => mx.astype(mx.random.normal([batch!, heads!, n, dim!]), dtype);
        cache.update(random(), random());
      });
      mx.evaluate(...cache.state);
    }
  }
  return caches;
}

/** Decode tokens/s, and the CPU time per token of all our threads (ms): steadier on a loaded machine. */
function decodeSpeed(kv: KvQuantization | undefined, context: number, steps: number): [number, number] {
  const caches = cacheWithContext(kv, context);
  let token = mx.keep(mx.array(Int32Array.from([42]), [1, 1]));
  const step = () => {
    const next = mx.keep(
      mx.scope(() =>
        mx.reshape(
          mx.argmax(mx.slice(forward(model, token, caches), [0, 0, 0], [1, 1, model.config.vocabSize]), -1),
          [1, 1],
        ),
      ),
    );
    mx.evaluate(next);
    token.free();
    token = next;
  };
  step(); // warm-up
  const [started, cpu] = [performance.now(), process.cpuUsage()];
  for (let i = 0; i < steps; i++) step();
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  token.free();
  freeCaches(caches);
  return [steps / seconds, (used.user + used.system) / 1000 / steps];
}

// Bytes per token: the cache after 256 positions (its capacity then is exactly 256).
const bytes = kinds.map(({ kv }) => {
  const caches = cacheWithContext(kv, 256);
  const perToken = caches.reduce((n, c) => n + c.nbytes, 0) / 256;
  freeCaches(caches);
  return perToken;
});

const contexts = values.contexts!.split(",").map(Number);
const steps = Number(values.steps);
const speeds = new Map<string, number[]>();
const cpuPerToken = new Map<string, number[]>();
for (let run = 0; run < Number(values.runs); run++) {
  for (const context of contexts) {
    // Rotate the order each run so no cache always goes first.
    const order = kinds.map((_, i) => kinds[(i + run) % kinds.length]!);
    for (const { name, kv } of order) {
      const key = `${name}@${context}`;
      const [speed, cpu] = decodeSpeed(kv, context, steps);
      speeds.set(key, [...(speeds.get(key) ?? []), speed]);
      cpuPerToken.set(key, [...(cpuPerToken.get(key) ?? []), cpu]);
      process.stderr.write(
        `run ${run + 1}: ${key}: ${speed.toFixed(2)} tokens/s, ${cpu.toFixed(1)} CPU ms per token\n`,
      );
    }
  }
}

const questions = prompts.slice(0, Number(values.prompts));
const answerTokens = Number(values.tokens);
const quality = kinds.slice(1).map(() => ({ identical: 0, agreeingTokens: 0, logitDiffs: [] as number[] }));
for (const question of questions) {
  const prompt = promptTokens(lm.tokenizer, question);
  const greedy = (kv?: KvQuantization) =>
    [...generateTokens(model, { promptIds: prompt, sampling: defaultSampling, maxTokens: answerTokens }, kv)].map(
      (e) => e.token,
    );
  const answer = greedy();
  const sequence = [...prompt, ...answer.slice(0, -1)];
  // Logits at the positions that predict the answer's tokens.
  const logitsWith = (kv?: KvQuantization) => {
    const caches = makeCaches(model, { quantization: kv });
    const out = mx.keep(
      mx.scope(() =>
        mx.slice(
          forward(model, mx.array(Int32Array.from(sequence), [1, sequence.length]), caches),
          [0, prompt.length - 1, 0],
          [1, sequence.length, model.config.vocabSize],
        ),
      ),
    );
    freeCaches(caches);
    return out;
  };
  const reference = logitsWith();
  kinds.slice(1).forEach(({ kv }, i) => {
    const logits = logitsWith(kv);
    const firstDifference = greedy(kv).findIndex((t, j) => t !== answer[j]);
    quality[i]!.identical += firstDifference < 0 ? 1 : 0;
    quality[i]!.agreeingTokens += firstDifference < 0 ? answer.length : firstDifference;
    quality[i]!.logitDiffs.push(
      mx.scope(() =>
        mx
          .mean(mx.abs(mx.subtract(mx.astype(logits, mx.Dtype.float32), mx.astype(reference, mx.Dtype.float32))))
          .item(),
      ),
    );
    logits.free();
  });
  reference.free();
  process.stderr.write(`quality: ${question}\n`);
}

console.log(
  `| cache | KV bytes per token | ${contexts.map((c) => `decode tokens/s at ${c}`).join(" | ")} | greedy answers identical to float | tokens before the first difference (of ${questions.length * answerTokens}) | mean abs logit difference |`,
);
console.log(`|---|---:|${contexts.map(() => "---:").join("|")}|---:|---:|---:|`);
kinds.forEach(({ name }, i) => {
  const speed = contexts.map((c) => median(speeds.get(`${name}@${c}`)!).toFixed(2)).join(" | ");
  const q = quality[i - 1];
  const qualityCells = q
    ? `${q.identical} of ${questions.length} | ${q.agreeingTokens} | ${(q.logitDiffs.reduce((a, b) => a + b, 0) / q.logitDiffs.length).toFixed(4)}`
    : "(reference) | | ";
  console.log(`| ${name} | ${bytes[i]!.toFixed(0)} | ${speed} | ${qualityCells} |`);
});
console.log(`\n| cache | ${contexts.map((c) => `CPU ms per token at ${c}`).join(" | ")} |`);
console.log(`|---|${contexts.map(() => "---:").join("|")}|`);
for (const { name } of kinds) {
  const cpu = contexts.map((c) => median(cpuPerToken.get(`${name}@${c}`)!).toFixed(1)).join(" | ");
  console.log(`| ${name} | ${cpu} |`);
}
console.log(
  `\nruns: ${values.runs}, ${steps} decode steps each; every run's figures: ${JSON.stringify(Object.fromEntries(speeds))}; CPU ms per token: ${JSON.stringify(Object.fromEntries(cpuPerToken))}`,
);
