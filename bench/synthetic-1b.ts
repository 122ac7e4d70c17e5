// Do our CPU kernels scale past the 135M default model? A model in the shapes of a
// Llama-3.2-1B (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, a tied 128,256-token
// embedding) with random weights, written once under .cache/bench/synthetic-1b/:
//   mlx/        MLX affine 4-bit, group 64 (as mlx-community's 4-bit Llama-3.2-1B), by
//               test/helpers/tiny-model.ts's writer with SmolLM2's tokenizer (~0.8 GB);
//   model.gguf  the same shapes in Q4_0 for llama.cpp (~0.7 GB), by bench/synthetic_gguf.py.
// Random weights make gibberish, but every token costs what a trained model's does.
//
// Each round runs every configuration as a fresh process, in a rotating order:
//   ours          `mlx bench -n 1 -p P -g G --json` on mlx/, MLX_CPU_THREADS=t
//   MLX's         the same with MLX_KERNELS=mlx (MLX's own CPU ops)
//   ours (GGUF)   ours on model.gguf: the bytes llama.cpp reads (Q4_0 → MLX's 4-bit, group 32)
//   llama.cpp     node-llama-cpp on model.gguf, t threads (bench/llama-cpp.ts)
// and prints the medians, each thread count against 1, and ours against the others.
//
//   node_modules/.bin/bun bench/synthetic-1b.ts [--rounds 2] [--prompt-tokens 64] [--gen-tokens 16]
//       [--threads 1,2] [--mlx-threads 1] [--skip mlx,gguf,llama]
import { parseArgs } from "node:util";
import { existsSync, mkdirSync, readdirSync, realpathSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { median, ratio, spawnTimed } from "./lib";
import { writeLlamaSpeedScript } from "./llama-cpp";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "2" },
    "prompt-tokens": { type: "string", default: "64" },
    "gen-tokens": { type: "string", default: "16" },
    threads: { type: "string", default: "1,2" },
    // MLX's own CPU ops run on its stream's one thread whatever MLX_CPU_THREADS says (that sizes
    // our kernels' pool), and at this size take minutes a run: by default only at 1.
    "mlx-threads": { type: "string", default: "1" },
    skip: { type: "string", default: "" },
    // Internal: the child process that writes the MLX model (its MLX memory ends with it).
    "write-mlx": { type: "string" },
  },
});

const llama1B = { hidden: 2048, layers: 16, heads: 32, kvHeads: 8, intermediate: 8192, vocab: 128256 };
const headDim = llama1B.hidden / llama1B.heads;
const context = 4096;
const ropeTheta = 500000;

if (values["write-mlx"]) {
  const { writeTinyModel } = await import("../test/helpers/tiny-model");
  writeTinyModel(values["write-mlx"], {
    dims: {
      hidden: llama1B.hidden,
      heads: llama1B.heads,
      kvHeads: llama1B.kvHeads,
      intermediate: llama1B.intermediate,
    },
    headDim,
    layers: llama1B.layers,
    vocabSize: llama1B.vocab,
    quantize: { bits: 4, groupSize: 64 },
    tied: true,
    contextLength: context,
  });
  process.exit(0);
}

const root = resolve(import.meta.dir, "..");
const dir = join(root, ".cache/bench/synthetic-1b");
const mlxDir = join(dir, "mlx");
const gguf = join(dir, "model.gguf");
const nodeDir = join(root, ".cache/peers/node");
const bun = process.execPath;
const say = (s: string) => process.stderr.write(`[synthetic-1b] ${s}\n`);
const P = Number(values["prompt-tokens"]);
const G = Number(values["gen-tokens"]);
const rounds = Number(values.rounds);
const threadCounts = values.threads.split(",").map(Number);
const mlxThreadCounts = values["mlx-threads"].split(",").map(Number);
const skipped = new Set(values.skip.split(",").filter(Boolean));

mkdirSync(dir, { recursive: true });
// Each written under another name and renamed into place, so an interrupted write is redone.
if (!existsSync(join(mlxDir, "config.json"))) {
  say(`writing the random 4-bit MLX model into ${mlxDir}`);
  const partial = `${mlxDir}.partial`;
  const child = Bun.spawnSync([bun, import.meta.path, "--write-mlx", partial], { stderr: "inherit", cwd: root });
  if (child.exitCode !== 0) throw new Error("writing the MLX model failed");
  renameSync(partial, mlxDir);
}
const needsGGUF = !skipped.has("gguf") || !skipped.has("llama");
if (needsGGUF && !existsSync(gguf)) {
  say(`writing the random Q4_0 GGUF ${gguf}`);
  const { resolveModelPath } = await import("../src/store/resolve");
  let source = await resolveModelPath(undefined);
  if (statSync(source).isDirectory()) source = join(source, readdirSync(source).find((f) => f.endsWith(".gguf"))!);
  const spec = JSON.stringify({ ...llama1B, context, ropeTheta });
  const python = join(root, ".cache/peers/venv/bin/python");
  const child = Bun.spawnSync(
    [python, join(root, "bench/synthetic_gguf.py"), realpathSync(source), `${gguf}.partial`, spec],
    { stderr: "inherit" },
  );
  if (child.exitCode !== 0) throw new Error("writing the GGUF failed (bash bench/setup-peers.sh installs gguf)");
  renameSync(`${gguf}.partial`, gguf);
}

interface Configuration {
  name: string;
  threads: number;
  run: () => Promise<{ pp: number; tg: number; weightBytes: number }>;
}

/** `mlx bench` on `model` in a fresh process with `env`. */
const ours = (model: string, env: Record<string, string>) => async () => {
  const r = await spawnTimed(
    [bun, "src/main.ts", "bench", "-m", model, "-n", "1", "-p", String(P), "-g", String(G), "--json"],
    "",
    { cwd: root, env: { ...process.env, ...env } },
  );
  const m = JSON.parse(r.stdout).models[0];
  return { pp: m.prompt_tokens_per_second.mean, tg: m.generation_tokens_per_second.mean, weightBytes: m.size_bytes };
};

let llamaSpec = "";
const llama = (threads: number) => async () => {
  const r = await spawnTimed(["node", writeLlamaSpeedScript(nodeDir), gguf, llamaSpec, String(threads)], "", {
    cwd: nodeDir,
  });
  const j = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  return { pp: j.pp_tps, tg: j.tg_tps, weightBytes: j.weight_bytes };
};

if (!skipped.has("llama")) {
  // The token ids `mlx bench` feeds (its synthetic prompt in SmolLM2's tokenizer, which both files carry).
  const { loadModel } = await import("../src/models/load");
  const { resolveModelPath } = await import("../src/store/resolve");
  const { syntheticPrompt } = await import("../src/bench/model");
  const lm = loadModel(await resolveModelPath(undefined));
  llamaSpec = join(dir, "llama-spec.json");
  writeFileSync(llamaSpec, JSON.stringify({ prompt: syntheticPrompt(lm, P), context: syntheticPrompt(lm, 1), gen: G }));
  lm.free();
}

const configurations: Configuration[] = threadCounts.flatMap((t) => {
  const threads = { MLX_CPU_THREADS: String(t) };
  const list: Configuration[] = [{ name: "ours", threads: t, run: ours(mlxDir, threads) }];
  if (!skipped.has("mlx") && mlxThreadCounts.includes(t))
    list.push({ name: "MLX's kernels", threads: t, run: ours(mlxDir, { ...threads, MLX_KERNELS: "mlx" }) });
  if (!skipped.has("gguf")) list.push({ name: "ours (GGUF)", threads: t, run: ours(gguf, threads) });
  if (!skipped.has("llama")) list.push({ name: "llama.cpp (GGUF)", threads: t, run: llama(t) });
  return list;
});

const results = new Map(configurations.map((c) => [c, [] as { pp: number; tg: number; weightBytes: number }[]]));
const started = performance.now();
say(`${rounds} rounds of ${configurations.length} processes; pp${P}, tg${G}`);
for (let round = 0; round < rounds; round++) {
  const order = configurations.map((_, i) => configurations[(i + round) % configurations.length]!);
  for (const c of order) {
    const r = await c.run();
    results.get(c)!.push(r);
    say(
      `round ${round + 1}/${rounds} ${c.name}, ${c.threads} thread(s): pp${P} ${r.pp.toFixed(2)}, tg${G} ${r.tg.toFixed(2)} tokens/s [${((performance.now() - started) / 1000).toFixed(0)} s]`,
    );
  }
}

const med = (name: string, threads: number, pick: "pp" | "tg") => {
  const c = configurations.find((c) => c.name === name && c.threads === threads);
  return c ? median(results.get(c)!.map((r) => r[pick])) : Number.NaN;
};
const names = [...new Set(configurations.map((c) => c.name))];
const t0 = threadCounts[0]!;
const out: string[] = [];
const header = ["system"];
for (const t of threadCounts) header.push(`pp${P} tok/s, ${t} thr`, `tg${G} tok/s, ${t} thr`);
for (const t of threadCounts.slice(1)) header.push(`pp ${t} vs ${t0}`, `tg ${t} vs ${t0}`);
header.push("weights");
out.push(`| ${header.join(" | ")} |`);
out.push(
  `|---|${header
    .slice(1)
    .map(() => "---:")
    .join("|")}|`,
);
for (const name of names) {
  const cells = [name];
  const fixed = (v: number) => (Number.isNaN(v) ? "" : v.toFixed(2));
  for (const t of threadCounts) cells.push(fixed(med(name, t, "pp")), fixed(med(name, t, "tg")));
  for (const t of threadCounts.slice(1))
    cells.push(ratio(med(name, t, "pp"), med(name, t0, "pp")), ratio(med(name, t, "tg"), med(name, t0, "tg")));
  const c = configurations.find((c) => c.name === name)!;
  cells.push(`${(results.get(c)![0]!.weightBytes / 1e6).toFixed(0)} MB`);
  out.push(`| ${cells.join(" | ")} |`);
}
out.push("");
for (const t of threadCounts)
  for (const [other, against] of [
    ["MLX's kernels", "ours"],
    ["llama.cpp (GGUF)", "ours (GGUF)"],
  ] as const)
    if (configurations.some((c) => c.name === other && c.threads === t))
      out.push(
        `${t} thread(s): ${against} / ${other}: prompt ${ratio(med(against, t, "pp"), med(other, t, "pp"))}, decode ${ratio(med(against, t, "tg"), med(other, t, "tg"))}`,
      );
out.push("");
out.push(`Median of ${rounds} rounds; total time ${((performance.now() - started) / 1000).toFixed(0)} s.`);
console.log(out.join("\n"));
