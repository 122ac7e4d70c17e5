// The base-versus-fine-tuned table: trains a small LoRA adapter for the default model with
// mlx-lm (`mlx_lm.lora`, a peer: bench/setup-peers.sh) on a few hundred generated examples that
// teach a fixed answer format (a one-line JSON record of a sentence's city, country and year),
// then measures both with `mlx bench --prompts` on held-out sentences: tokens/s, time to first
// token, peak memory, and how many answers pass the format check (a JSON Schema).
// Prints the table and the commands; add them to bench/RESULTS.md.
//
//   node_modules/.bin/bun bench/base-vs-tuned.ts [--iters 10] [--batch-size 2] [--examples 300] [--prompts 20]
//                                               [--adapter DIR: measure this adapter, no training]
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { resolveModelPath } from "../src/store/resolve";

const { values } = parseArgs({
  options: {
    // Short on purpose: mlx-lm trains at ~2 tokens/s on this CPU (10 iterations took 6 minutes),
    // and the format is regular: 10 iterations took it from 0/20 to 19/20 (bench/RESULTS.md).
    iters: { type: "string", default: "10" },
    "batch-size": { type: "string", default: "2" },
    "learning-rate": { type: "string", default: "5e-4" },
    examples: { type: "string", default: "300" },
    prompts: { type: "string", default: "20" },
    work: { type: "string", default: ".cache/bench/base-vs-tuned" },
    adapter: { type: "string" },
  },
});
const work = resolve(values.work!);
const mlx = resolve("dist/mlx");
const peers = resolve(".cache/peers/venv/bin");
if (!existsSync(join(peers, "mlx_lm.lora"))) throw new Error("mlx-lm is missing: run bash bench/setup-peers.sh");
mkdirSync(work, { recursive: true });

// The task: one sentence in, its facts out as exactly {"city": ..., "country": ..., "year": ...}.
const places: [string, string][] = [
  ["Paris", "France"],
  ["Lyon", "France"],
  ["Berlin", "Germany"],
  ["Munich", "Germany"],
  ["Madrid", "Spain"],
  ["Seville", "Spain"],
  ["Rome", "Italy"],
  ["Milan", "Italy"],
  ["Lisbon", "Portugal"],
  ["Porto", "Portugal"],
  ["Vienna", "Austria"],
  ["Prague", "Czechia"],
  ["Warsaw", "Poland"],
  ["Krakow", "Poland"],
  ["Oslo", "Norway"],
  ["Bergen", "Norway"],
  ["Tokyo", "Japan"],
  ["Osaka", "Japan"],
  ["Seoul", "South Korea"],
  ["Busan", "South Korea"],
  ["Toronto", "Canada"],
  ["Montreal", "Canada"],
  ["Chicago", "United States"],
  ["Denver", "United States"],
  ["Lima", "Peru"],
  ["Cusco", "Peru"],
  ["Nairobi", "Kenya"],
  ["Mombasa", "Kenya"],
  ["Cairo", "Egypt"],
  ["Luxor", "Egypt"],
  ["Sydney", "Australia"],
  ["Perth", "Australia"],
  ["Dublin", "Ireland"],
  ["Cork", "Ireland"],
  ["Athens", "Greece"],
  ["Delphi", "Greece"],
  ["Hanoi", "Vietnam"],
  ["Hue", "Vietnam"],
  ["Quito", "Ecuador"],
  ["Bogota", "Colombia"],
];
const templates = [
  (c: string, y: number) => `My grandmother moved to ${c} in ${y} and never left.`,
  (c: string, y: number) => `The conference took place in ${c} back in ${y}.`,
  (c: string, y: number) => `In ${y}, a small bakery opened its doors in ${c}.`,
  (c: string, y: number) => `We spent the winter of ${y} walking around ${c}.`,
  (c: string, y: number) => `${c} hosted the chess finals in ${y}.`,
  (c: string, y: number) => `The museum in ${c} was rebuilt in ${y} after the fire.`,
];
const instruction = "Extract the city, country and year from this sentence as JSON:";
// A fixed pseudo-random sequence, so every run trains and tests on the same examples.
let seed = 12345;
const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
const example = (i: number) => {
  const [city, country] = places[Math.floor(next() * places.length)]!;
  const year = 1900 + Math.floor(next() * 120);
  const sentence = templates[i % templates.length]!(city, year);
  return { prompt: `${instruction} ${sentence}`, answer: JSON.stringify({ city, country, year }) };
};
const train = Array.from({ length: Number(values.examples) }, (_, i) => example(i));
const held = Array.from({ length: Number(values.prompts) }, (_, i) => example(i + 7));
const data = join(work, "data");
mkdirSync(data, { recursive: true });
const chat = (e: { prompt: string; answer: string }) =>
  JSON.stringify({
    messages: [
      { role: "user", content: e.prompt },
      { role: "assistant", content: e.answer },
    ],
  });
writeFileSync(join(data, "train.jsonl"), `${train.map(chat).join("\n")}\n`);
writeFileSync(join(data, "valid.jsonl"), `${train.slice(0, 20).map(chat).join("\n")}\n`);
const suite = join(work, "prompts.jsonl");
writeFileSync(suite, `${held.map((e) => JSON.stringify({ prompt: e.prompt })).join("\n")}\n`);
const schema = join(work, "record.schema.json");
writeFileSync(
  schema,
  JSON.stringify({
    type: "object",
    properties: { city: { type: "string" }, country: { type: "string" }, year: { type: "integer" } },
    required: ["city", "country", "year"],
    additionalProperties: false,
  }),
);

const run = (file: string, args: string[], env: Record<string, string> = {}) => {
  process.stderr.write(`$ ${[file, ...args].join(" ")}\n`);
  return execFileSync(file, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] }).toString();
};
const show = (file: string, args: string[]) => {
  process.stderr.write(`$ ${[file, ...args].join(" ")}\n`);
  execFileSync(file, args, { stdio: ["ignore", 2, "inherit"] });
};

// mlx-lm trains on an MLX directory: the default model converted by us.
const base = join(work, "smollm2-mlx");
if (!existsSync(join(base, "config.json"))) run(mlx, ["convert", "smollm2", base, "--force"]);
const adapter = values.adapter ? resolve(values.adapter) : join(work, "adapter");
const trainFlags: Record<string, string> = {
  model: base,
  data,
  iters: values.iters!,
  "batch-size": values["batch-size"]!,
  "num-layers": "8",
  "learning-rate": values["learning-rate"]!,
  "adapter-path": adapter,
  "steps-per-report": "10",
  "steps-per-eval": "1000",
  "val-batches": "2",
  "max-seq-length": "256",
  seed: "0",
};
const trainArgs = ["--train", "--mask-prompt", ...Object.entries(trainFlags).flatMap(([k, v]) => [`--${k}`, v])];
const started = performance.now();
if (!values.adapter) show(join(peers, "mlx_lm.lora"), trainArgs); // its progress on stderr
const trainSeconds = (performance.now() - started) / 1000;

// A store of our own with the two aliases, so the measured commands read as users type them.
const home = join(work, "mlx-home");
mkdirSync(home, { recursive: true });
const gguf = await resolveModelPath("smollm2");
writeFileSync(
  join(home, "models.toml"),
  `[models.smollm2]\nsource = "${gguf}"\n\n[models.smollm2-tuned]\nsource = "smollm2"\nadapter = "${adapter}"\n`,
);
const benchArgs = ["bench", "--prompts", suite, "-m", "smollm2", "-m", "smollm2-tuned", "--expect-schema", schema];
benchArgs.push("--max-tokens", "48");
const table = run(mlx, benchArgs, { MLX_HOME: home });
if (!values.adapter)
  process.stdout.write(
    `training: ${peers}/mlx_lm.lora ${trainArgs.join(" ")}  (${train.length} examples, ${trainSeconds.toFixed(0)} s)\n\n`,
  );
process.stdout.write(`MLX_HOME=${home} dist/mlx ${benchArgs.join(" ")}\n\n${table}`);
