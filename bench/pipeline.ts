// One model across processes against one process, on loopback: `mlx run` (time to first token,
// decode tokens/s by prompt size) and `mlx serve` under 1-16 concurrent streaming clients
// (inter-token latency p50/p95, output tokens/s, and how busy each rank was during the load, from
// the figures rank 0 reports in /stats), split models with a micro-batch per rank in flight and
// with one (--micro-batches 1). Configurations are interleaved round by round, so load on the
// machine hits them alike; with --baseline DIR (another checkout of this repository, sharing the
// shim), its builds take their turn beside this tree's in every round, for before/after ratios.
// --variant="FLAGS" (repeatable; the = because FLAGS start with a dash) adds a 3-rank serve with those flags (e.g. "--micro-batches 6" or
// "--layers 0-6,7-18,19-29"), on every build; --skip-run leaves out the `mlx run` table; --ranks
// picks the rank counts run (a ratio to one process needs 1 among them). Each server gets a
// warm-up load first (the most clients, 8 tokens each, prompts of their own), so that the loads
// measured are its steady serving, not a fresh process's first steps (its weights' first reads,
// the first prompt's prefill through one rank after another); --cold leaves it out. --tokens sets
// each client's answer (32 by default).
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/pipeline.ts [--rounds 2] [--model smollm2] [--clients 1,2,4,8,16]
//     [--baseline /tmp/base] [--skip-one-in-flight] [--variant="--micro-batches 6"] [--skip-run] [--ranks 1,2,3] [--cold] [--tokens 32]
import { execSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median, spawnTimed, spawnServe } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "2" },
    model: { type: "string", default: "smollm2" },
    clients: { type: "string", default: "1,2,4,8,16" },
    baseline: { type: "string" },
    "skip-one-in-flight": { type: "boolean", default: false },
    variant: { type: "string", multiple: true, default: [] },
    "skip-run": { type: "boolean", default: false },
    ranks: { type: "string", default: "1,2,3" },
    cold: { type: "boolean", default: false },
    tokens: { type: "string", default: "32" },
  },
});
const rounds = Number(values.rounds);
const model = values.model!;
/** This tree, and the baseline checkout's (the same rounds, each configuration on both in turn). */
const builds = [
  { name: "this tree", main: join(import.meta.dir, "..", "src", "main.ts") },
  ...(values.baseline ? [{ name: "baseline", main: join(values.baseline, "src", "main.ts") }] : []),
];
type Build = (typeof builds)[number];
const configs = values.ranks!.split(",").map(Number);
const clientCounts = values.clients!.split(",").map(Number);
/** Serve configurations: ranks, and the split's flags where not the default. */
interface ServeConfig {
  ranks: number;
  flags?: string[];
}
const serveConfigs: ServeConfig[] = [
  ...configs.map((ranks) => ({ ranks })),
  ...(values["skip-one-in-flight"] || !configs.includes(3) ? [] : [{ ranks: 3, flags: ["--micro-batches", "1"] }]),
  ...values.variant!.map((v) => ({ ranks: 3, flags: v.split(/\s+/).filter(Boolean) })),
];
const label = (c: ServeConfig) => (c.flags ? `${c.ranks}, ${c.flags.join(" ")}` : `${c.ranks}`);
const under = (build: Build, ranks: number, command: string[]) => {
  const mlx = [process.execPath, build.main];
  return ranks === 1 ? [...mlx, ...command] : [...mlx, "launch", "-n", String(ranks), "--", ...command];
};
/** Both builds in turn, the other way round every other round. */
const inTurn = (round: number) => (round % 2 ? [...builds].reverse() : builds);

// Prompts of about 128 and 512 tokens (the words repeat; the tokenizer counts them).
const prompt = (words: number) =>
  `Summarize: ${Array.from({ length: words }, (_, i) => ["sea", "wind", "stone", "light"][i % 4]).join(" ")}`;
const prompts = { 128: prompt(120), 512: prompt(500) };
const runFigures = new Map<string, { ttft: number[]; tps: number[] }>();

const percentile = (v: number[], p: number) => {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};

async function runOnce(build: Build, ranks: number, size: keyof typeof prompts) {
  const r = await spawnTimed(
    under(build, ranks, ["run", "-m", model, "--raw", "--json", "--max-tokens", "48", prompts[size]]),
    "",
  );
  const { stats } = JSON.parse(r.stdout);
  const key = `${build.name}/${ranks}/${size}`;
  const f = runFigures.get(key) ?? { ttft: [], tps: [] };
  f.ttft.push(stats.time_to_first_token_seconds * 1000);
  f.tps.push(stats.generation_tokens_per_second);
  runFigures.set(key, f);
}

interface ServeFigures {
  itl: number[];
  tokensPerSecond: number[];
  /** Per rank, the share of each load's time it spent computing. */
  busy: number[][];
  /** Per rank, CPU seconds over the load (all its threads), and their sum per output token (ms). */
  cpu: number[][];
  cpuPerToken: number[];
  /** Per rank, its CPU milliseconds per output token. */
  rankCpuPerToken: number[][];
}
const serveFigures = new Map<string, ServeFigures>();

async function startServe(build: Build, c: ServeConfig) {
  // A heartbeat every 3 s (a third of the peer timeout) brings the stages' figures back; a
  // shorter timeout stops the ranks when a loaded machine holds rank 0 up that long in a prefill.
  const split = c.ranks > 1 ? ["--peer-timeout", "9", ...(c.flags ?? [])] : [];
  return spawnServe(under(build, c.ranks, ["serve", "--port", "0", "-m", model, ...split]));
}

/**
 * `clients` streamed completions at once (`maxTokens` each, prompt i ending in `${tag}${i}`): the
 * gaps between their tokens, and tokens/s overall.
 */
async function load(
  url: string,
  clients: number,
  maxTokens = 32,
  tag = "",
): Promise<{ itl: number[]; tokensPerSecond: number }> {
  const started = performance.now();
  const gaps: number[] = [];
  let tokens = 0;
  await Promise.all(
    Array.from({ length: clients }, async (_, i) => {
      const r = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model,
          prompt: `${prompts[128]} ${tag}${i}`,
          max_tokens: maxTokens,
          temperature: 0,
          stream: true,
        }),
      });
      let last: number | undefined;
      const decoder = new TextDecoder();
      for await (const chunk of r.body!) {
        const events = decoder
          .decode(chunk)
          .split("\n\n")
          .filter((e) => e.startsWith("data: {"));
        for (const _ of events) {
          const now = performance.now();
          if (last !== undefined) gaps.push(now - last);
          last = now;
          tokens++;
        }
      }
    }),
  );
  return { itl: gaps, tokensPerSecond: (tokens / (performance.now() - started)) * 1000 };
}

interface Pipeline {
  receive_wait_seconds: number;
  stages: { rank: number; compute_seconds: number }[];
}

/** Rank 0's time waiting for the ring, and each later rank's computing, once a heartbeat has been round. */
async function pipelineTimes(url: string): Promise<number[]> {
  await Bun.sleep(3_200);
  const stats = (await (await fetch(`${url}/stats`)).json()) as { models: { pipeline: Pipeline }[] };
  const p = stats.models[0]!.pipeline;
  return [p.receive_wait_seconds, ...p.stages.map((s) => s.compute_seconds)];
}

const ticksPerSecond = Number(execSync("getconf CLK_TCK").toString()) || 100;

/**
 * The serving processes under `root` by rank (MLX_RANK in their environment; `root` itself when
 * it serves alone): CPU time is what the ranks share on one machine, and load on it does not
 * stretch it as it stretches wall time.
 */
function rankProcesses(root: number, ranks: number): number[] {
  if (ranks === 1) return [root];
  const parent = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")[1]);
  const byRank: number[] = [];
  for (const entry of readdirSync("/proc")) {
    const pid = Number(entry);
    try {
      if (!pid || parent(pid) !== root) continue;
      const env = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
      const rank = env.find((v) => v.startsWith("MLX_RANK="));
      if (rank) byRank[Number(rank.slice("MLX_RANK=".length))] = pid;
    } catch {
      // A process that ended meanwhile.
    }
  }
  return byRank;
}

/** CPU seconds (user and system) each process has used so far. */
const cpuSeconds = (pids: number[]): number[] =>
  pids.map((pid) => {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
  });

for (let round = 0; round < rounds; round++) {
  // Every other round in reverse, so a load that rises or falls during the run favours no one.
  for (const ranks of values["skip-run"] ? [] : round % 2 ? [...configs].reverse() : configs)
    for (const size of [128, 512] as const) for (const build of inTurn(round)) await runOnce(build, ranks, size);
  for (const config of round % 2 ? [...serveConfigs].reverse() : serveConfigs)
    for (const build of inTurn(round)) await serveLoad(build, config, round);
}

async function serveLoad(build: Build, config: ServeConfig, round: number) {
  const { proc, url } = await startServe(build, config);
  try {
    const pids = rankProcesses(proc.pid, config.ranks);
    if (!values.cold) await load(url, Math.max(...clientCounts), 8, "warm-up ");
    for (const clients of clientCounts) {
      const before = config.ranks > 1 ? await pipelineTimes(url) : [];
      const cpuBefore = cpuSeconds(pids);
      const started = performance.now();
      const r = await load(url, clients, Number(values.tokens));
      const seconds = (performance.now() - started) / 1000;
      const cpu = cpuSeconds(pids).map((t, rank) => t - cpuBefore[rank]!);
      const key = `${build.name}/${label(config)}/${clients}`;
      const f = serveFigures.get(key) ?? {
        itl: [],
        tokensPerSecond: [],
        busy: [],
        cpu: [],
        cpuPerToken: [],
        rankCpuPerToken: [],
      };
      f.itl.push(...r.itl);
      f.tokensPerSecond.push(r.tokensPerSecond);
      f.cpu.push(cpu);
      f.cpuPerToken.push((1000 * cpu.reduce((a, b) => a + b, 0)) / (r.tokensPerSecond * seconds));
      f.rankCpuPerToken.push(cpu.map((t) => (1000 * t) / (r.tokensPerSecond * seconds)));
      if (config.ranks > 1) {
        // Rank 0 is busy whenever it is not waiting for the ring; the others when computing.
        const after = await pipelineTimes(url);
        const spent = after.map((t, rank) => (t - before[rank]!) / seconds);
        f.busy.push([1 - spent[0]!, ...spent.slice(1)]);
      }
      serveFigures.set(key, f);
    }
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
  }
  process.stderr.write(`round ${round + 1}: serve on ${label(config)} (${build.name}) done\n`);
}

const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "n/a");
console.log("## mlx run (median over rounds)\n");
console.log("| build | ranks | prompt | time to first token (ms) | decode tokens/s | vs 1 process, same build |");
console.log("|---|---|---|---|---|---|");
for (const build of values["skip-run"] ? [] : builds)
  for (const size of [128, 512]) {
    const one = runFigures.get(`${build.name}/1/${size}`);
    const base = one ? median(one.tps) : Number.NaN;
    for (const ranks of configs) {
      const f = runFigures.get(`${build.name}/${ranks}/${size}`)!;
      console.log(
        `| ${build.name} | ${ranks} | ~${size} | ${fmt(median(f.ttft), 0)} | ${fmt(median(f.tps))} | ${fmt(median(f.tps) / base, 2)}× |`,
      );
    }
  }
console.log(`\n## mlx serve, streamed clients (${values.tokens} tokens each)\n`);
console.log(
  "| build | ranks, flags | clients | ITL p50 (ms) | ITL p95 (ms) | output tokens/s | vs 1 process, same build | CPU ms per output token | CPU ms per output token: rank 0, 1, ... | busy: rank 0, 1, ... | CPU share: rank 0, 1, ... |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|---|");
for (const build of builds)
  for (const clients of clientCounts) {
    const one = serveFigures.get(`${build.name}/1/${clients}`);
    const base = one ? median(one.tokensPerSecond) : Number.NaN;
    for (const config of serveConfigs) {
      const f = serveFigures.get(`${build.name}/${label(config)}/${clients}`)!;
      const tps = median(f.tokensPerSecond);
      // Each rank's median over the rounds.
      const perRank = (table: number[][], show: (v: number) => string) =>
        config.ranks === 1 ? "—" : table[0]!.map((_, rank) => show(median(table.map((b) => b[rank]!)))).join(", ");
      const shares = (table: number[][]) => perRank(table, (v) => `${fmt(100 * v, 0)}%`);
      // Each rank's part of the CPU time all ranks used, per round.
      const cpuShares = f.cpu.map((c) => c.map((t) => t / c.reduce((a, b) => a + b, 0)));
      console.log(
        `| ${build.name} | ${label(config)} | ${clients} | ${fmt(percentile(f.itl, 50))} | ${fmt(percentile(f.itl, 95))} | ${fmt(tps)} | ${fmt(tps / base, 2)}× | ${fmt(median(f.cpuPerToken))} | ${perRank(f.rankCpuPerToken, (v) => fmt(v, 2))} | ${shares(f.busy)} | ${shares(cpuShares)} |`,
      );
    }
  }
