// Ours against mlx_lm.generate on the same converted model, in one run, interleaved:
// generation tokens/s, prompt tokens/s (a ~512-token prompt), and wall time from process
// start to the first answer byte of a one-shot run. Prints a Markdown table. With
// --baseline, the peer is another build of ours (e.g. the code before a change) instead.
//
//   bash bench/setup-peers.sh && bash scripts/setup.sh
//   node_modules/.bin/bun bench/engine.ts [--runs 3] [--gen 128] [--prompt-tokens 512] [--model DIR] [--baseline path/to/mlx]
import { parseArgs } from "node:util";
import { existsSync } from "node:fs";
import { median, ratio, spawnTimed, type Timed } from "./lib";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    gen: { type: "string", default: "128" },
    "prompt-tokens": { type: "string", default: "512" },
    model: { type: "string", default: ".cache/bench/smollm2-mlx" },
    baseline: { type: "string" },
  },
});
const runs = Number(values.runs);
const genTokens = Number(values.gen);
const model = values.model!;
const python = ".cache/peers/venv/bin/python";
const baseline = values.baseline;
if (!baseline && !existsSync(python)) throw new Error("run bash bench/setup-peers.sh first");
const peerName = baseline ? "baseline" : "mlx-lm";
if (!existsSync(`${model}/config.json`)) {
  console.error(`converting the default model into ${model}`);
  const c = Bun.spawnSync(["dist/mlx", "convert", "smollm2", model, "--force"], { stderr: "inherit" });
  if (c.exitCode !== 0) throw new Error("conversion failed");
}

// A long prompt: repeated plain prose, cut to about the asked number of tokens (≈ 4 chars each).
const sentence =
  "The river carried the small boat past fields of barley, old stone bridges and quiet villages where people waved from their gardens. ";
const longPrompt =
  `Summarize this text in one sentence.\n\n${sentence.repeat(Math.ceil((Number(values["prompt-tokens"]) * 4.3) / sentence.length))}`.slice(
    0,
    Number(values["prompt-tokens"]) * 4.6,
  );
const shortPrompt = "Write a long story about a lighthouse keeper and a storm.";

interface Figures {
  genTps: number;
  promptTps: number;
  promptTokens: number;
  startToFirstMs: number;
  peakMB: number;
}

function ours(prompt: string, maxTokens: number, binary = "dist/mlx"): Promise<Timed> {
  return spawnTimed([binary, "run", "-m", model, "--max-tokens", String(maxTokens), "--verbose", prompt], "");
}
function mlxLm(prompt: string, maxTokens: number): Promise<Timed> {
  return spawnTimed(
    [
      python,
      "-m",
      "mlx_lm",
      "generate",
      "--model",
      model,
      "--max-tokens",
      String(maxTokens),
      "--temp",
      "0",
      "--prompt",
      prompt,
    ],
    "==========\n",
  );
}

function parseOurs(t: Timed): Figures {
  const num = (re: RegExp) => Number(re.exec(t.stderr)?.[1] ?? Number.NaN);
  return {
    promptTokens: num(/prompt:\s+(\d+) tokens/),
    promptTps: num(/prompt:\s+\d+ tokens, ([\d.]+) tokens\/s/),
    genTps: num(/generation: \d+ tokens, ([\d.]+) tokens\/s/),
    peakMB: num(/peak memory: ([\d.]+) MB/),
    startToFirstMs: t.firstByteMs,
  };
}
function parseMlxLm(t: Timed): Figures {
  const num = (re: RegExp) => Number(re.exec(t.stdout)?.[1] ?? Number.NaN);
  return {
    promptTokens: num(/Prompt: (\d+) tokens/),
    promptTps: num(/Prompt: \d+ tokens, ([\d.]+) tokens-per-sec/),
    genTps: num(/Generation: \d+ tokens, ([\d.]+) tokens-per-sec/),
    peakMB: num(/Peak memory: ([\d.]+) GB/) * 1024,
    startToFirstMs: t.firstByteMs,
  };
}

const results: Record<"ours" | "mlx-lm", { gen: Figures[]; prompt: Figures[] }> = {
  ours: { gen: [], prompt: [] },
  "mlx-lm": { gen: [], prompt: [] },
};
for (let i = 0; i < runs; i++) {
  // Alternate which system goes first, so neither always runs on a warmer machine.
  const order = i % 2 === 0 ? (["ours", "mlx-lm"] as const) : (["mlx-lm", "ours"] as const);
  for (const system of order) {
    const run = async (p: string, n: number) =>
      system === "ours"
        ? parseOurs(await ours(p, n))
        : baseline
          ? parseOurs(await ours(p, n, baseline))
          : parseMlxLm(await mlxLm(p, n));
    const gen = await run(shortPrompt, genTokens);
    const prompt = await run(longPrompt, 1);
    results[system].gen.push(gen);
    results[system].prompt.push(prompt);
    console.error(
      `run ${i + 1}/${runs} ${system === "ours" ? "ours" : peerName}: gen ${gen.genTps.toFixed(2)} tok/s, prompt ${prompt.promptTps.toFixed(2)} tok/s (${prompt.promptTokens} tokens), start→first ${gen.startToFirstMs.toFixed(0)} ms`,
    );
  }
}

const med = (system: "ours" | "mlx-lm", test: "gen" | "prompt", key: keyof Figures) =>
  median(results[system][test].map((f) => f[key]));
const rows: [string, number, number, string][] = [
  ["generation tokens/s", med("ours", "gen", "genTps"), med("mlx-lm", "gen", "genTps"), "higher is better"],
  [
    `prompt tokens/s (${med("ours", "prompt", "promptTokens")}-token prompt)`,
    med("ours", "prompt", "promptTps"),
    med("mlx-lm", "prompt", "promptTps"),
    "higher is better",
  ],
  [
    "process start → first answer byte (ms)",
    med("ours", "gen", "startToFirstMs"),
    med("mlx-lm", "gen", "startToFirstMs"),
    "lower is better",
  ],
  ["peak memory (MB)", med("ours", "gen", "peakMB"), med("mlx-lm", "gen", "peakMB"), "lower is better"],
];
console.log(`| measure (median of ${runs}) | ours | ${peerName} | ours / ${peerName} | |`);
console.log("|---|---:|---:|---:|---|");
for (const [name, a, b, note] of rows)
  console.log(`| ${name} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${ratio(a, b)} | ${note} |`);
