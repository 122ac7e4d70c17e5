// Ours against mlx-lm and llama.cpp (through node-llama-cpp) on a GGUF (default: the default model), in one
// run, interleaving the systems round by round, plus the machine's physical limit: its
// memory read bandwidth, and generation tokens/s as a fraction of the bandwidth bound
// (every generated token reads all the weights once).
//
// Each round runs, for each system in a rotating order, two fresh processes:
//   speed:    load, warm up (a 32-token prompt and 4 tokens), then a prompt of exactly P
//             tokens timed to its first token, and G tokens generated after a one-token prompt
//             (with --depth D: after a D-token context, prefilled before the clock starts, as
//             llama-bench's -d), end-of-sequence ignored. The same token ids for every system (the
//             vocabulary is the same in the GGUF and the directory `mlx convert` makes of it).
//             ours: `mlx bench -n 1 -p P -g G --json`; mlx-lm: its generate_step; llama.cpp:
//             node-llama-cpp's LlamaContextSequence.evaluate. Peak memory: MLX's peak counter
//             (ours, mlx-lm) and every process's maximum resident set size.
//   one-shot: the system's usual one-shot command on a short chat prompt, timed from spawning
//             the process to the first byte of the answer on stdout (`dist/mlx run`,
//             `python -m mlx_lm generate`, a node-llama-cpp LlamaChatSession script).
//
//   bash scripts/setup.sh && bash bench/setup-peers.sh
//   node_modules/.bin/bun bench/peers.ts [-m MODEL] [--runs 3] [--prompt-tokens 256] [--gen-tokens 64] [--depth 0] [--skip-mlx-lm]
//
// -m names a stored GGUF model (e.g. gemma3, a Q4_K_M file) instead of the default model.
// --skip-mlx-lm leaves mlx-lm out (its column reads n/a): on a loaded machine its 256-token
// prompt alone takes minutes a round, and ours against llama.cpp is the comparison that moves.
import { parseArgs } from "node:util";
import { existsSync, mkdirSync, readdirSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { median, ratio } from "./lib";
import { writeLlamaSpeedScript } from "./llama-cpp";
import { resolveModelPath } from "../src/store/resolve";
import { loadModel } from "../src/models/load";
import { syntheticPrompt } from "../src/bench/model";

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    runs: { type: "string", default: "3" },
    "prompt-tokens": { type: "string", default: "256" },
    "gen-tokens": { type: "string", default: "64" },
    depth: { type: "string", default: "0" },
    "oneshot-tokens": { type: "string", default: "8" },
    // llama.cpp on 2 threads collapsed on this shared 2-vCPU machine (its threads spin at
    // barriers, so a neighbour's load stalls every step: 0.7-3.7 tokens/s against 66-77 on
    // 1 thread). The table's "CPU cores busy" row shows what each system used.
    "llama-threads": { type: "string", default: "1" },
    "skip-mlx-lm": { type: "boolean", default: false },
  },
});
const runs = Number(values.runs);
const P = Number(values["prompt-tokens"]);
const G = Number(values["gen-tokens"]);
const D = Number(values.depth);
const tgName = `tg${G}${D > 0 ? ` @ d${D}` : ""}`;
const oneShotTokens = Number(values["oneshot-tokens"]);
const root = resolve(import.meta.dir, "..");
const peers = join(root, ".cache/peers");
const python = join(peers, "venv/bin/python");
const nodeDir = join(peers, "node");
const modelName = values.model ?? "smollm2";
const converted = join(root, `.cache/bench/${modelName.replace(/[^\w.-]/g, "_")}-mlx`);
const dist = join(root, "dist/mlx");
const bun = process.execPath;
const threads = Number(values["llama-threads"]);
const cores = cpus().length;
const say = (s: string) => process.stderr.write(`[peers] ${s}\n`);

for (const [path, fix] of [
  [python, "bash bench/setup-peers.sh"],
  [join(nodeDir, "node_modules/node-llama-cpp"), "bash bench/setup-peers.sh"],
  [dist, "bash scripts/setup.sh"],
] as const) {
  if (!existsSync(path)) throw new Error(`${path} is missing: run ${fix} first`);
}

// The model's GGUF (the store's blob), and the converted directory mlx-lm loads.
let gguf = await resolveModelPath(values.model);
if (statSync(gguf).isDirectory()) gguf = join(gguf, readdirSync(gguf).find((f) => f.endsWith(".gguf"))!);
gguf = realpathSync(gguf);
if (!existsSync(join(converted, "config.json"))) {
  say(`converting ${modelName} into ${converted}`);
  const c = Bun.spawnSync([dist, "convert", modelName, converted, "--force"], { stderr: "inherit" });
  if (c.exitCode !== 0) throw new Error("conversion failed");
}
const lm = loadModel(gguf);
const promptIds = syntheticPrompt(lm, P);
// The generation test's context: the first token alone, or the first D tokens of the same prose.
const genContext = syntheticPrompt(lm, Math.max(1, D));
const weightBytes = lm.weightBytes;
// A decode step at depth D also reads the D positions' keys and values: float16 in both caches.
const kvBytes = D * 2 * lm.config.numHiddenLayers * lm.config.numKeyValueHeads * lm.config.headDim * 2;
lm.free();
const ggufBytes = statSync(gguf).size;
mkdirSync(join(root, ".cache/bench"), { recursive: true });
const idsFile = join(root, ".cache/bench/peers-prompt.json");
writeFileSync(idsFile, JSON.stringify({ prompt: promptIds, context: genContext, gen: G }));
const shortPrompt = "Write a long story about a lighthouse keeper and a storm.";

// ---- the peers' speed and one-shot scripts -----------------------------------------------

const mlxLmSpeed = join(peers, "peer_mlx_lm_speed.py");
writeFileSync(
  mlxLmSpeed,
  `import json, sys, time
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

model, _ = load(sys.argv[1])
spec = json.load(open(sys.argv[2]))
greedy = make_sampler(temp=0.0)

def prompt_test(ids):
    mx.reset_peak_memory()
    start = time.perf_counter()
    for _ in generate_step(mx.array(ids), model, max_tokens=1, sampler=greedy):
        break
    return time.perf_counter() - start, mx.get_peak_memory()

def gen_test(context, n):
    # A longer context than one token is prefilled, and its first token sampled, untimed.
    untimed = 1 if len(context) > 1 else 0
    mx.reset_peak_memory()
    start = time.perf_counter()
    seen = count = 0
    for _ in generate_step(mx.array(context), model, max_tokens=n + untimed, sampler=greedy):
        seen += 1
        if seen <= untimed:
            start = time.perf_counter()
        else:
            count += 1
    return time.perf_counter() - start, count, mx.get_peak_memory()

prompt_test(spec["prompt"][:32]); gen_test(spec["context"], 4)
pp_s, pp_peak = prompt_test(spec["prompt"])
tg_s, tg_n, tg_peak = gen_test(spec["context"], spec["gen"])
print(json.dumps({"pp_tps": len(spec["prompt"]) / pp_s, "ttft_s": pp_s, "tg_tps": tg_n / tg_s, "tg_tokens": tg_n, "mlx_peak_bytes": max(pp_peak, tg_peak)}))
`,
);

const llamaSpeed = writeLlamaSpeedScript(nodeDir);

const llamaOneShot = join(nodeDir, "peer-llama-oneshot.mjs");
writeFileSync(
  llamaOneShot,
  `import { getLlama, LlamaChatSession } from "node-llama-cpp";
const [modelPath, prompt, maxTokens, threadsArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const llama = await getLlama({ gpu: false, build: "never", progressLogs: false, maxThreads: threads });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 2048, threads });
const session = new LlamaChatSession({ contextSequence: context.getSequence() });
await session.prompt(prompt, { maxTokens: Number(maxTokens), temperature: 0, onTextChunk: (t) => process.stdout.write(t) });
process.stdout.write("\\n");
await context.dispose(); await model.dispose(); await llama.dispose();
`,
);

// ---- running and timing processes ---------------------------------------------------------

interface ProcessRun {
  stdout: string;
  stderr: string;
  firstByteMs: number;
  maxRssBytes: number;
  /** CPU time over wall time: how many cores the process kept busy. */
  coresBusy: number;
}

async function spawnRun(cmd: string[], marker = "", cwd = root): Promise<ProcessRun> {
  const started = performance.now();
  const proc = Bun.spawn(cmd, {
    cwd,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, NO_COLOR: "1" },
  });
  const stderr = new Response(proc.stderr).text();
  const decoder = new TextDecoder();
  let stdout = "";
  let firstByteMs = Number.NaN;
  for await (const chunk of proc.stdout) {
    stdout += decoder.decode(chunk, { stream: true });
    if (Number.isNaN(firstByteMs)) {
      const at = stdout.indexOf(marker);
      if (at >= 0 && stdout.trimEnd().length > at + marker.length) firstByteMs = performance.now() - started;
    }
  }
  const code = await proc.exited;
  const err = await stderr;
  if (code !== 0)
    throw new Error(
      `${cmd.slice(0, 3).join(" ")} exited with ${code}: ${err.trim().split("\n").slice(-3).join(" | ")}`,
    );
  const usage = proc.resourceUsage();
  const wallUs = (performance.now() - started) * 1000;
  return {
    stdout,
    stderr: err,
    firstByteMs,
    maxRssBytes: usage?.maxRSS ?? Number.NaN,
    coresBusy: usage ? Number(usage.cpuTime.total) / wallUs : Number.NaN,
  };
}

type System = "ours" | "mlx-lm" | "llama.cpp";
const systems: System[] = ["ours", "mlx-lm", "llama.cpp"];

interface Figures {
  ppTps: number;
  ttftMs: number;
  tgTps: number;
  tgTokens: number;
  mlxPeakBytes: number;
  speedRssBytes: number;
  coresBusy: number;
  oneShotMs: number;
  oneShotRssBytes: number;
}

async function speed(system: System): Promise<Omit<Figures, "oneShotMs" | "oneShotRssBytes">> {
  if (system === "ours") {
    const r = await spawnRun([
      bun,
      "src/main.ts",
      "bench",
      "-m",
      gguf,
      "-n",
      "1",
      "-p",
      String(P),
      "-g",
      String(G),
      "-d",
      String(D),
      "--json",
    ]);
    const m = JSON.parse(r.stdout).models[0];
    if (m.prompt_tokens !== P) throw new Error(`ours prefilled ${m.prompt_tokens} tokens, not ${P}`);
    return {
      ppTps: m.prompt_tokens_per_second.mean,
      ttftMs: m.time_to_first_token_seconds.mean * 1000,
      tgTps: m.generation_tokens_per_second.mean,
      tgTokens: G,
      mlxPeakBytes: m.peak_memory_bytes,
      speedRssBytes: r.maxRssBytes,
      coresBusy: r.coresBusy,
    };
  }
  const r =
    system === "mlx-lm"
      ? await spawnRun([python, mlxLmSpeed, converted, idsFile])
      : await spawnRun(["node", llamaSpeed, gguf, idsFile, String(threads)], "", nodeDir);
  const j = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  return {
    ppTps: j.pp_tps,
    ttftMs: j.ttft_s * 1000,
    tgTps: j.tg_tps,
    tgTokens: j.tg_tokens,
    mlxPeakBytes: j.mlx_peak_bytes ?? Number.NaN,
    speedRssBytes: r.maxRssBytes,
    coresBusy: r.coresBusy,
  };
}

async function oneShot(system: System): Promise<ProcessRun> {
  const n = String(oneShotTokens);
  if (system === "ours") return spawnRun([dist, "run", "-m", gguf, "--max-tokens", n, shortPrompt]);
  if (system === "mlx-lm")
    return spawnRun(
      [
        python,
        "-m",
        "mlx_lm",
        "generate",
        "--model",
        converted,
        "--max-tokens",
        n,
        "--temp",
        "0",
        "--prompt",
        shortPrompt,
      ],
      "==========\n",
    );
  return spawnRun(["node", llamaOneShot, gguf, shortPrompt, n, String(threads)], "", nodeDir);
}

// ---- memory bandwidth ---------------------------------------------------------------------

const bandwidthC = `#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
static uint64_t *buf; static size_t words; static int nthreads; static volatile uint64_t sink;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *reader(void *arg) {
  size_t id = (size_t)arg, per = words / nthreads, lo = id * per, hi = lo + per;
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = lo; i < hi; i += 4) { a += buf[i]; b += buf[i + 1]; c += buf[i + 2]; d += buf[i + 3]; }
  sink += a + b + c + d; return NULL;
}
int main(int argc, char **argv) {
  size_t bytes = (size_t)atol(argv[1]) << 20; int passes = atoi(argv[3]); nthreads = atoi(argv[2]);
  int huge = argc > 4 && atoi(argv[4]);
  words = bytes / 8; buf = aligned_alloc(huge ? 2 << 20 : 64, bytes);
  if (huge) madvise(buf, bytes, MADV_HUGEPAGE); /* before the first touch: faulted in as 2 MiB pages */
  memset(buf, 1, bytes);
  double best = 1e30;
  for (int p = 0; p < passes; p++) {
    pthread_t t[64]; double s = now();
    for (int i = 0; i < nthreads; i++) pthread_create(&t[i], NULL, reader, (void *)(size_t)i);
    for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
    double e = now() - s; if (e < best) best = e;
  }
  printf("%.3f\\n", (double)(words / nthreads * nthreads * 8) / best / 1e9);
  return 0;
}
`;

/** Read bandwidth over a 1 GiB buffer in 4 KiB pages, or (hugePages) in transparent huge pages. */
function bandwidthGBs(threadCount: number, hugePages: boolean): number {
  const src = join(peers, "membw.c");
  const exe = join(peers, "membw");
  writeFileSync(src, bandwidthC);
  const cc = Bun.spawnSync(["gcc", "-O3", "-march=native", "-pthread", src, "-o", exe], { stderr: "pipe" });
  if (cc.exitCode !== 0) throw new Error(`gcc failed: ${cc.stderr.toString()}`);
  // 1 GiB: far beyond the caches; the best of 10 passes.
  const r = Bun.spawnSync([exe, "1024", String(threadCount), "10", hugePages ? "1" : "0"], { stdout: "pipe" });
  return Number(r.stdout.toString().trim());
}

// ---- the run ------------------------------------------------------------------------------

const started = performance.now();
say(
  `model: ${gguf} (${(ggufBytes / 1e6).toFixed(1)} MB GGUF; ${(weightBytes / 1e6).toFixed(1)} MB of weights in MLX); mlx-lm on ${converted}`,
);
say(
  `${runs} rounds; speed: pp${P}, ${tgName}; one-shot: ${oneShotTokens} tokens of a short chat prompt; llama.cpp threads: ${threads}`,
);
const results: Record<System, Figures[]> = { ours: [], "mlx-lm": [], "llama.cpp": [] };
for (let round = 0; round < runs; round++) {
  // Rotate the order, so no system always runs first (or right after another's load).
  const running = systems.filter((s) => !(values["skip-mlx-lm"] && s === "mlx-lm"));
  const order = running.map((_, i) => running[(i + round) % running.length]!);
  for (const system of order) {
    const s = await speed(system);
    const o = await oneShot(system);
    const f: Figures = { ...s, oneShotMs: o.firstByteMs, oneShotRssBytes: o.maxRssBytes };
    results[system].push(f);
    say(
      `round ${round + 1}/${runs} ${system}: pp${P} ${f.ppTps.toFixed(2)} tok/s (first token ${f.ttftMs.toFixed(0)} ms), ${tgName} ${f.tgTps.toFixed(2)} tok/s, start→first byte ${f.oneShotMs.toFixed(0)} ms, RSS ${(f.speedRssBytes / 1e6).toFixed(0)} MB [${((performance.now() - started) / 1000).toFixed(0)} s]`,
    );
  }
}
say("measuring memory read bandwidth");
// With huge pages too: the bound is what the hardware can do, and 4 KiB pages cost TLB misses.
const bw1Small = bandwidthGBs(1, false);
const bwAllSmall = bandwidthGBs(cores, false);
const bw1Huge = bandwidthGBs(1, true);
const bwAllHuge = bandwidthGBs(cores, true);
const bw1 = Math.max(bw1Small, bw1Huge);
const bwAll = Math.max(bwAllSmall, bwAllHuge);

const med = (system: System, key: keyof Figures) => median(results[system].map((f) => f[key]));
const fmt = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : "n/a");
const rows: [string, (s: System) => number, number, string][] = [
  [`generation tokens/s (${tgName})`, (s) => med(s, "tgTps"), 2, "higher is better"],
  [`prompt tokens/s (pp${P})`, (s) => med(s, "ppTps"), 2, "higher is better"],
  [`time to first token, ${P}-token prompt (ms)`, (s) => med(s, "ttftMs"), 0, "lower is better"],
  ["peak memory, MLX counter (MB)", (s) => med(s, "mlxPeakBytes") / 1e6, 1, "lower is better"],
  ["peak memory, process max RSS (MB)", (s) => med(s, "speedRssBytes") / 1e6, 1, "lower is better"],
  ["process start → first answer byte (ms)", (s) => med(s, "oneShotMs"), 0, "lower is better"],
  ["CPU cores busy during the speed run (CPU time / wall time)", (s) => med(s, "coresBusy"), 2, ""],
];
const out: string[] = [];
out.push(`| measure (median of ${runs}) | ours | mlx-lm | llama.cpp | ours / mlx-lm | ours / llama.cpp | |`);
out.push("|---|---:|---:|---:|---:|---:|---|");
for (const [name, get, digits, note] of rows) {
  const [a, b, c] = systems.map(get) as [number, number, number];
  out.push(
    `| ${name} | ${fmt(a, digits)} | ${fmt(b, digits)} | ${fmt(c, digits)} | ${ratio(a, b)} | ${ratio(a, c)} | ${note} |`,
  );
}
const bwBest = Math.max(bw1, bwAll);
const bound = (bwBest * 1e9) / (weightBytes + kvBytes);
out.push("");
out.push(
  `Memory read bandwidth (1 GiB buffer, best of 10 passes): ${bw1Small.toFixed(2)} GB/s on 1 thread, ${bwAllSmall.toFixed(2)} GB/s on ${cores} threads in 4 KiB pages; ${bw1Huge.toFixed(2)} and ${bwAllHuge.toFixed(2)} GB/s in huge pages (MADV_HUGEPAGE). The bound takes the best.`,
);
out.push(
  `Bytes read per generated token = the weights: ${(weightBytes / 1e6).toFixed(1)} MB (GGUF file ${(ggufBytes / 1e6).toFixed(1)} MB)${D > 0 ? `, and ${D} positions of float16 keys and values: ${(kvBytes / 1e6).toFixed(1)} MB` : ""}, so the bandwidth bound is ${bwBest.toFixed(1)} GB/s ÷ ${((weightBytes + kvBytes) / 1e6).toFixed(1)} MB = ${bound.toFixed(0)} tokens/s.`,
);
out.push("");
out.push("| generation tokens/s as a fraction of the bandwidth bound | ours | mlx-lm | llama.cpp |");
out.push("|---|---:|---:|---:|");
out.push(
  `| bound ${bound.toFixed(0)} tokens/s | ${systems.map((s) => (Number.isFinite(med(s, "tgTps")) ? `${((med(s, "tgTps") / bound) * 100).toFixed(1)}%` : "n/a")).join(" | ")} |`,
);
out.push("");
out.push(`Total time: ${((performance.now() - started) / 1000).toFixed(0)} s.`);
writeFileSync(
  join(root, ".cache/bench/peers.json"),
  JSON.stringify(
    {
      runs,
      P,
      G,
      D,
      gguf,
      converted,
      weightBytes,
      ggufBytes,
      threads,
      cores,
      bandwidthGBs: {
        one: bw1,
        all: bwAll,
        smallPages: { one: bw1Small, all: bwAllSmall },
        hugePages: { one: bw1Huge, all: bwAllHuge },
      },
      results,
    },
    null,
    2,
  ),
);
console.log(out.join("\n"));
