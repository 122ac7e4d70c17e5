// The prefix cache on a model split across processes: a request that shares a long system
// prompt with the one before it, time to first token with the prefix cache on and off, one
// process against 2 ranks on loopback. Each configuration is its own `mlx serve`; they are
// interleaved round by round, so load on the machine hits them alike.
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/pipeline-prefix.ts [--rounds 3] [--model smollm2] [--words 700]
import { join } from "node:path";
import { parseArgs } from "node:util";
import OpenAI from "openai";
import { median, ratio, spawnServe } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    model: { type: "string", default: "smollm2" },
    words: { type: "string", default: "700" },
  },
});
const model = values.model!;
const mlx = [process.execPath, join(import.meta.dir, "..", "src", "main.ts")];
const configs = [
  { label: "1 process, prefix cache", ranks: 1, cache: true },
  { label: "2 ranks, prefix cache", ranks: 2, cache: true },
  { label: "2 ranks, no prefix cache", ranks: 2, cache: false },
];
const words = ["sea", "wind", "stone", "light", "river", "field"];
const system = `You answer questions about this text. ${Array.from({ length: Number(values.words) }, (_, i) => words[i % words.length]).join(" ")}`;

/** Milliseconds to the first streamed token, and the prompt tokens the server reports cached. */
async function ask(client: OpenAI, question: string): Promise<{ ttft: number; cached: number; prompt: number }> {
  const started = performance.now();
  let ttft = Number.NaN;
  let cached = 0;
  let prompt = 0;
  const stream = await client.chat.completions.create({
    model,
    messages: [
      { role: "system", content: system },
      { role: "user", content: question },
    ],
    max_tokens: 8,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (Number.isNaN(ttft) && chunk.choices[0]?.delta?.content) ttft = performance.now() - started;
    if (chunk.usage) {
      cached = chunk.usage.prompt_tokens_details?.cached_tokens ?? 0;
      prompt = chunk.usage.prompt_tokens;
    }
  }
  return { ttft, cached, prompt };
}

const figures = new Map(
  configs.map((c) => [c.label, { first: [] as number[], second: [] as number[], cached: 0, prompt: 0 }]),
);
for (let round = 0; round < Number(values.rounds); round++) {
  for (const c of configs) {
    const serve = ["serve", "--port", "0", "-m", model, ...(c.cache ? [] : ["--prefix-cache-mb", "0"])];
    const command = c.ranks === 1 ? [...mlx, ...serve] : [...mlx, "launch", "-n", String(c.ranks), "--", ...serve];
    const { proc, url } = await spawnServe(command, c.label);
    try {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 600_000 });
      const first = await ask(client, "Which word comes first?");
      const second = await ask(client, "Which word comes last?");
      const f = figures.get(c.label)!;
      f.first.push(first.ttft);
      f.second.push(second.ttft);
      f.cached = second.cached;
      f.prompt = second.prompt;
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  }
}

const base = figures.get(configs[0]!.label)!;
console.log(`| configuration | prompt tokens | cached on the 2nd | TTFT 1st (ms) | TTFT 2nd (ms) | 2nd vs 1 process |`);
console.log(`|---|---|---|---|---|---|`);
for (const c of configs) {
  const f = figures.get(c.label)!;
  const [first, second] = [median(f.first), median(f.second)];
  console.log(
    `| ${c.label} | ${f.prompt} | ${f.cached} | ${first.toFixed(0)} | ${second.toFixed(0)} | ${ratio(second, median(base.second))} |`,
  );
}
