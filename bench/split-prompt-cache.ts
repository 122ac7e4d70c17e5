// A prompt cache file on a model split across processes: `mlx cache-prompt` a ~1,000-token
// document once per configuration (one process; 2 ranks, tensor parallel; 2 ranks, pipeline
// stages), then time to first token of `mlx run` asking about it, from the file against with the
// whole document in the prompt. TTFT is the engine's own figure (rank 0, --json stats), so model
// loading is left out. The runs are interleaved round by round, so load hits them alike; medians.
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/split-prompt-cache.ts [--rounds 3] [--model smollm2] [--lines 40]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    model: { type: "string", default: "smollm2" },
    lines: { type: "string", default: "40" },
  },
});
const model = values.model!;
const mlx = [process.execPath, join(import.meta.dir, "..", "src", "main.ts")];
const dir = mkdtempSync(join(tmpdir(), "mlx-split-prompt-cache-"));
const document = Array.from(
  { length: Number(values.lines) },
  (_, i) => `Line ${i}: the parcel numbered ${i} weighs ${(i * 7) % 13} kilograms and goes to depot ${i % 5}.`,
).join("\n");
const question = "Which depot does parcel 3 go to?";
// A loaded 2-core machine can stall a rank past the default 30 s.
const patient = ["--peer-timeout", "120"];
const configs = [
  { label: "1 process", launch: [] as string[], split: [] as string[] },
  { label: "2 ranks, tensor parallel", launch: ["launch", "-n", "2", "--"], split: ["--tensor-parallel", ...patient] },
  {
    label: "2 ranks, stages (--layers 0-14,15-29)",
    launch: ["launch", "-n", "2", "--"],
    split: ["--layers", "0-14,15-29", ...patient],
  },
];

async function mlxRun(args: string[], stdin?: string) {
  const proc = Bun.spawn([...mlx, ...args], {
    stdin: stdin === undefined ? "ignore" : new Blob([stdin]),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) throw new Error(`mlx ${args.join(" ")}: ${stderr.trim().split("\n").at(-1)}`);
  return stdout;
}

const files = configs.map((_, i) => join(dir, `doc${i}.cache`));
for (const [i, c] of configs.entries())
  await mlxRun([...c.launch, "cache-prompt", "-m", model, ...c.split, files[i]!], document);

const ttft: Record<string, number[]> = {};
const answers = new Map<string, string>();
for (let round = 0; round < Number(values.rounds); round++)
  for (const [i, c] of configs.entries())
    for (const fromFile of round % 2 ? [true, false] : [false, true]) {
      const run = ["run", "-m", model, ...c.split, "--json", "--temp", "0", "--max-tokens", "8"];
      const prompt = fromFile ? ["--prompt-cache", files[i]!, question] : [`${document}\n\n${question}`];
      const result = JSON.parse(await mlxRun([...c.launch, ...run, ...prompt]));
      const key = `${c.label}, ${fromFile ? "from the file" : "whole prompt"}`;
      (ttft[key] ??= []).push(result.stats.time_to_first_token_seconds * 1000);
      answers.set(key, JSON.stringify(result.token_ids));
      if (round === 0)
        console.error(`${key}: ${result.stats.prompt_tokens} prompt tokens, ${result.stats.cached_tokens} cached`);
    }
rmSync(dir, { recursive: true, force: true });

console.log(`| configuration | TTFT whole prompt (ms) | TTFT from the file (ms) | ratio |`);
console.log(`|---|---|---|---|`);
for (const c of configs) {
  const whole = median(ttft[`${c.label}, whole prompt`]!);
  const cached = median(ttft[`${c.label}, from the file`]!);
  console.log(`| ${c.label} | ${whole.toFixed(0)} | ${cached.toFixed(0)} | ${ratio(cached, whole)} |`);
}
const same = new Set(answers.values()).size === 1;
console.log(`\nGreedy tokens identical across all ${answers.size} runs: ${same}`);
