// Speculative decoding on the default model: decode tokens/s and acceptance with no
// speculation, prompt lookup, the model as its own draft, and a 2-layer truncated draft, on
// prompts where drafts should be right (rewrite a given text, repeat code with an edit) and
// where they should not (free writing); then, for the back-off threshold, the batch's total
// tokens/s with and without prompt lookup at 1-4 sequences. Runs interleaved; medians.
// Usage: bun bench/speculative.ts [rounds=3] [max tokens=128] [batch: only the batch part]
// (needs .cache/smollm2-2layer: `mlx convert smollm2 .cache/smollm2-mlx`, then
// `bun bench/truncated-draft.ts .cache/smollm2-mlx .cache/smollm2-2layer 2`)
import { BatchGenerator } from "../src/engine/batch";
import { complete, soloScheduler } from "../src/engine/generate";
import { promptTokens } from "../src/engine/prompt";
import { defaultSampling } from "../src/engine/sampling";
import { acceptanceRate, type SpeculationOptions } from "../src/engine/speculative";
import { loadModel, type LoadedModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";
import { median, ratio } from "./lib";

const rounds = Number(process.argv[2] ?? 3);
const maxTokens = Number(process.argv[3] ?? 128);
const batchOnly = process.argv[4] === "batch";
const target = loadModel(await resolveModelPath(undefined));
const truncated = loadModel(".cache/smollm2-2layer");

const text =
  "The city council met on Tuesday to discuss the new budget. After a long debate, the members agreed to spend more on public transport and parks, and less on road building. The mayor said the plan would make the city greener and easier to move around. Some business owners worried that fewer roads would hurt deliveries, but the council promised to review the plan after one year.";
const code =
  "function total(items) {\n  let sum = 0;\n  for (const item of items) {\n    sum += item.price * item.quantity;\n  }\n  return sum;\n}\n\nfunction average(items) {\n  if (items.length === 0) return 0;\n  return total(items) / items.length;\n}\n";
const prompts = {
  rewrite: `Rewrite the following text, word for word, but in the past tense:\n\n${text}`,
  "code edit": `Repeat this code exactly, but rename the function total to sumPrices:\n\n${code}`,
  "free writing": "Write a short story about a dragon who learns to bake bread.",
};
const methods: [string, LoadedModel["speculation"]][] = [
  ["none", undefined],
  ["prompt lookup (4)", { numDraft: 4 }],
  ["self draft (3)", { numDraft: 3, draft: target }],
  ["2-layer draft (3)", { numDraft: 3, draft: truncated }],
];

console.log(`## one sequence: decode tokens/s (median of ${rounds}), acceptance; ${maxTokens} tokens, greedy`);
const figures = new Map<string, { speed: number[]; drafted: number; accepted: number }>();
for (let round = 0; round < (batchOnly ? 0 : rounds); round++) {
  for (const [name, prompt] of Object.entries(prompts)) {
    const promptIds = promptTokens(target.tokenizer, prompt, {});
    for (const [method, speculation] of methods) {
      target.speculation = speculation;
      const scheduler = soloScheduler(target);
      const r = await complete(scheduler, {
        prompt: { kind: "ids", ids: promptIds },
        sampling: defaultSampling,
        maxTokens,
      });
      scheduler.dispose();
      const key = `${name}|${method}`;
      const f = figures.get(key) ?? { speed: [], drafted: 0, accepted: 0 };
      f.speed.push(r.stats.generationTokensPerSecond);
      f.drafted += r.stats.draftedTokens;
      f.accepted += r.stats.acceptedTokens;
      figures.set(key, f);
    }
  }
}
target.speculation = undefined;
console.log("| prompt | method | decode tok/s | vs none | accepted of drafted per answer |");
console.log("|---|---|---|---|---|");
for (const name of batchOnly ? [] : Object.keys(prompts)) {
  const base = median(figures.get(`${name}|none`)!.speed);
  for (const [method] of methods) {
    const f = figures.get(`${name}|${method}`)!;
    const speed = median(f.speed);
    const accepted = f.drafted > 0 ? `${(100 * acceptanceRate(f)).toFixed(0)}% of ${f.drafted / rounds}` : "–";
    console.log(`| ${name} | ${method} | ${speed.toFixed(1)} | ${ratio(speed, base)} | ${accepted} |`);
  }
}

// The back-off threshold: n sequences decoding together, speculating whatever the batch size.
console.log(`\n## n sequences together (rewrite prompt, greedy, ${maxTokens / 2} tokens each): total tokens/s`);
const batchPrompt = promptTokens(target.tokenizer, prompts.rewrite, {});
const batchSpeed = new Map<string, number[]>();
for (let round = 0; round < rounds; round++) {
  for (const n of [1, 2, 3, 4]) {
    for (const [method, speculation] of [
      ["none", undefined],
      ["prompt lookup (4)", { numDraft: 4, maxBatch: Infinity }],
    ] as [string, SpeculationOptions | undefined][]) {
      const generator = new BatchGenerator(target.model, { maxBatch: n, prefillChunk: 2048, speculation });
      for (let i = 0; i < n; i++)
        generator.add(String(i), { promptIds: batchPrompt, sampling: defaultSampling, maxTokens: maxTokens / 2 });
      // Prefill every sequence first, so that only decoding is timed.
      while (generator.running < n) generator.step();
      let tokens = 0;
      const started = performance.now();
      while (!generator.idle) tokens += generator.step().length;
      const seconds = (performance.now() - started) / 1000;
      generator.dispose();
      const key = `${n}|${method}`;
      batchSpeed.set(key, [...(batchSpeed.get(key) ?? []), tokens / seconds]);
    }
  }
}
console.log("| sequences | none tok/s | prompt lookup tok/s | lookup vs none |");
console.log("|---|---|---|---|");
for (const n of [1, 2, 3, 4]) {
  const none = median(batchSpeed.get(`${n}|none`)!);
  const lookup = median(batchSpeed.get(`${n}|prompt lookup (4)`)!);
  console.log(`| ${n} | ${none.toFixed(1)} | ${lookup.toFixed(1)} | ${ratio(lookup, none)} |`);
}
truncated.free();
target.free();
