// Tensor parallel against one process and against a 2-rank pipeline, on loopback: `mlx run`
// decode tokens/s (configurations interleaved round by round), the greedy agreement of 2-rank
// tensor parallel with one process over several prompts, the largest difference in the chosen
// tokens' log-probabilities (served, 32 tokens a prompt), and the bytes rank 0 puts into all_sum
// per token (from the tensor-parallel server's /stats).
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/tensor-parallel.ts [--rounds 3] [--model smollm2]
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median, spawnTimed, spawnServe } from "./lib";

const { values } = parseArgs({
  options: { rounds: { type: "string", default: "3" }, model: { type: "string", default: "smollm2" } },
});
const rounds = Number(values.rounds);
const model = values.model!;
const mlx = [process.execPath, join(import.meta.dir, "..", "src", "main.ts")];
const configs = {
  "1 process": (command: string[]) => [...mlx, ...command],
  "2 ranks, pipeline": (command: string[]) => [...mlx, "launch", "-n", "2", "--", ...command],
  "2 ranks, tensor parallel": (command: string[]) => [
    ...mlx,
    ...["launch", "-n", "2", "--", ...command, "--tensor-parallel"],
  ],
};
type Config = keyof typeof configs;

async function run(config: Config, prompt: string, maxTokens: number) {
  const r = await spawnTimed(
    configs[config](["run", "-m", model, "--json", "--temp", "0", "--max-tokens", String(maxTokens), prompt]),
    "",
  );
  return JSON.parse(r.stdout) as { token_ids: number[]; stats: { generation_tokens_per_second: number } };
}

// Decode speed, interleaved.
const speedPrompt = "Write a short story about a lighthouse keeper.";
const tps = new Map<Config, number[]>();
for (let round = 0; round < rounds; round++) {
  const order = Object.keys(configs) as Config[];
  for (const config of round % 2 ? order.reverse() : order) {
    const r = await run(config, speedPrompt, 64);
    tps.set(config, [...(tps.get(config) ?? []), r.stats.generation_tokens_per_second]);
  }
  process.stderr.write(`round ${round + 1} done\n`);
}

// Greedy agreement: the first token where tensor parallel leaves the single process, by prompt.
const prompts = [
  "Name three colors.",
  "Write a haiku about the sea.",
  "Explain recursion in one paragraph.",
  "What is the capital of France? Answer with a sentence.",
  "List five prime numbers and say why each is prime.",
  "Translate 'good morning' into Spanish, French and German.",
  "Give me a recipe for pancakes.",
  "Why is the sky blue?",
];
const agreement: { prompt: string; tokens: number; firstDifference: number | null }[] = [];
for (const prompt of prompts) {
  const [alone, split] = [await run("1 process", prompt, 96), await run("2 ranks, tensor parallel", prompt, 96)];
  const n = Math.max(alone.token_ids.length, split.token_ids.length);
  const first = Array.from({ length: n }).findIndex((_, i) => alone.token_ids[i] !== split.token_ids[i]);
  agreement.push({ prompt, tokens: alone.token_ids.length, firstDifference: first < 0 ? null : first });
}

// The chosen tokens' log-probabilities, served alone and tensor parallel (the size of the rounding
// differences), and the bytes into all_sum per token from rank 0's /stats.
async function serve(config: Config) {
  const { proc, url } = await spawnServe(configs[config](["serve", "--port", "0", "-m", model]));
  const logprobs = [];
  for (const prompt of prompts) {
    const r = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, prompt, max_tokens: 32, temperature: 0, logprobs: 1 }),
    });
    const body = (await r.json()) as { choices: { logprobs: { tokens: string[]; token_logprobs: number[] } }[] };
    logprobs.push(body.choices[0]!.logprobs);
  }
  const stats = (await (await fetch(`${url}/stats`)).json()) as { models: { pipeline?: Record<string, number> }[] };
  proc.kill("SIGTERM");
  await proc.exited;
  return { logprobs, pipeline: stats.models[0]!.pipeline };
}
const served = { alone: await serve("1 process"), split: await serve("2 ranks, tensor parallel") };
let largest = 0;
let compared = 0;
let identical = 0;
served.alone.logprobs.forEach((a, i) => {
  const b = served.split.logprobs[i]!;
  if (a.tokens.join("\u0000") === b.tokens.join("\u0000")) identical++;
  for (let t = 0; t < a.tokens.length && a.tokens[t] === b.tokens[t]; t++) {
    largest = Math.max(largest, Math.abs(a.token_logprobs[t]! - b.token_logprobs[t]!));
    compared++;
  }
});

const base = median(tps.get("1 process")!);
console.log(`## mlx run, decode of 64 tokens (median of ${rounds} interleaved rounds)\n`);
console.log("| configuration | decode tokens/s | runs | vs 1 process |");
console.log("|---|---|---|---|");
for (const [config, v] of tps)
  console.log(
    `| ${config} | ${median(v).toFixed(1)} | ${v.map((x) => x.toFixed(1)).join(", ")} | ${(median(v) / base).toFixed(2)}× |`,
  );
console.log("\n## Greedy agreement, 2 ranks tensor parallel against 1 process (96 tokens at most)\n");
console.log("| prompt | tokens | first different token |");
console.log("|---|---|---|");
for (const a of agreement) console.log(`| ${a.prompt} | ${a.tokens} | ${a.firstDifference ?? "none"} |`);
console.log(
  `\nChosen tokens' log-probabilities, served alone and tensor parallel (32 tokens at most per prompt): the same tokens for ${identical} of ${prompts.length} prompts; ${compared} compared, largest difference ${largest.toExponential(2)}`,
);
const p = served.split.pipeline!;
console.log(
  `all_sum bytes per token position (rank 0): ${p.sent_bytes_per_token?.toFixed(0)} (${p.sent_bytes} over the served requests)`,
);
