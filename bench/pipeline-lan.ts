// One model across processes under `mlx serve`: one process against ranks on loopback
// (`mlx launch -n N`) and against ranks started over ssh from hostfiles (bench/netns-lan.sh
// puts them in network namespaces joined by an emulated LAN). For each configuration: time to
// first token and inter-token latency (p50/p95) by prompt size, output tokens/s by number of
// concurrent streaming clients, each stage's busy fraction and bytes per token per hop while
// the clients run (rank 0's /stats), and each rank's resident memory over the run.
// Configurations are interleaved round by round, so load on the machine hits them alike.
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/pipeline-lan.ts [--ranks 1,2,3] [--hostfile lan2.json
//     --hostfile lan3.json --ssh-config ssh_config] [--sizes 128,512,2048] [--clients 1,2,4,8,16]
//     [--rounds 1] [--model smollm2]
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { benchServer, timedRequest } from "../src/bench/server";
import { percentile } from "../src/bench/stats";
import { readHostfile, ringHostfile } from "../src/cmd/launch-plan";
import { median, spawnServe } from "./lib";

const { values } = parseArgs({
  options: {
    ranks: { type: "string", default: "1,2,3" },
    hostfile: { type: "string", multiple: true, default: [] },
    "ssh-config": { type: "string" },
    sizes: { type: "string", default: "128,512" },
    clients: { type: "string", default: "1,2,4,8" },
    "requests-per-size": { type: "string", default: "3" },
    "max-tokens": { type: "string", default: "32" },
    rounds: { type: "string", default: "1" },
    model: { type: "string", default: "smollm2" },
  },
});
const list = (s: string) => s.split(",").map(Number);
const model = values.model!;
const sizes = list(values.sizes!);
const clientLevels = list(values.clients!);
const perSize = Number(values["requests-per-size"]);
const maxTokens = Number(values["max-tokens"]);
const mlx = [process.execPath, join(import.meta.dir, "..", "src", "main.ts")];

interface Config {
  name: string;
  ranks: number;
  /** How to start `serve` (all of it: the launcher and its ranks). */
  command: string[];
  /** Where rank 0's server listens. */
  host: string;
  /** The ranks' process ids, by rank, given the process we started. */
  rankPids: (pid: number) => number[];
}

const environOf = (pid: number): string[] => {
  try {
    return readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
  } catch {
    return []; // gone, or not ours to read
  }
};
const rankOf = (env: string[]) => Number(env.find((e) => e.startsWith("MLX_RANK="))?.slice(9) ?? Number.NaN);
const byRank = (pids: number[]) =>
  pids
    .map((pid) => ({ pid, rank: rankOf(environOf(pid)) }))
    .filter((p) => Number.isInteger(p.rank))
    .sort((a, b) => a.rank - b.rank)
    .map((p) => p.pid);
const children = (pid: number): number[] => {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
};

const configs: Config[] = [
  ...list(values.ranks!).map(
    (ranks): Config =>
      ranks === 1
        ? { name: "1 process", ranks, command: mlx, host: "127.0.0.1", rankPids: (pid) => [pid] }
        : {
            name: `${ranks} ranks, loopback`,
            ranks,
            command: [...mlx, "launch", "-n", String(ranks), "--"],
            host: "127.0.0.1",
            rankPids: (pid) => byRank(children(pid)),
          },
  ),
  ...values.hostfile!.map((file): Config => {
    const hosts = readHostfile(file, 32323);
    // Remote ranks are not our descendants: find them by the ring hostfile they were given.
    const ring = ringHostfile(hosts);
    const givenRing = (pid: number) => {
      const path = environOf(pid)
        .find((e) => e.startsWith("MLX_HOSTFILE="))
        ?.slice(13);
      try {
        return path !== undefined && readFileSync(path, "utf8") === ring;
      } catch {
        return false;
      }
    };
    return {
      name: `${hosts.length} ranks, ${file.split("/").at(-1)}`,
      ranks: hosts.length,
      command: [
        ...mlx,
        "launch",
        "--hostfile",
        file,
        ...(values["ssh-config"] ? ["--ssh-config", values["ssh-config"]] : []),
        "--",
      ],
      host: hosts[0]!.addresses[0]!.slice(0, hosts[0]!.addresses[0]!.lastIndexOf(":")),
      rankPids: () =>
        byRank(
          readdirSync("/proc")
            .filter((d) => /^\d+$/.test(d))
            .map(Number)
            .filter(givenRing),
        ),
    };
  }),
];

// Prompts of about `tokens` tokens (the words repeat; the request around them, with the chat
// template, is ~55), each unique from its first word, so no cache of any kind helps. The ask
// comes last: after a long run of words, a bare "Summarize" gets an end-of-sequence at once.
let promptCount = 0;
const prompt = (tokens: number) =>
  `${++promptCount}. ${Array.from({ length: tokens - 55 }, (_, i) => ["sea", "wind", "stone", "light"][i % 4]).join(" ")}\n\nWrite a long story, at least 300 words, that uses each of the words above.`;

interface Figures {
  ttft: Map<number, number[]>;
  itl: Map<number, number[]>;
  tokensPerSecond: Map<number, number[]>;
  /** Rank 0's /stats pipeline figures before and after the client levels. */
  stages: { before?: PipelineStats; after?: PipelineStats }[];
  /** Resident memory (MB) per rank at each phase's end: [phase, MB by rank]. */
  memory: [string, number[]][][];
}
interface PipelineStats {
  sent_bytes_per_token: number;
  stages: { rank: number; compute_seconds: number; receive_wait_seconds: number; sent_bytes_per_token: number }[];
}
const figures = new Map<string, Figures>(
  configs.map((c) => [c.name, { ttft: new Map(), itl: new Map(), tokensPerSecond: new Map(), stages: [], memory: [] }]),
);
const push = <K>(m: Map<K, number[]>, k: K, ...v: number[]) => m.set(k, [...(m.get(k) ?? []), ...v]);

const rssMB = (pid: number) => {
  try {
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kb ? Number(kb) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
};

async function startServe(config: Config) {
  // No prefix cache anywhere: a split model has none yet, and the warm-ups repeat a prompt.
  const serve = ["serve", "--host", config.host, "--port", "0", "--prefix-cache-mb", "0", "-m", model];
  return spawnServe([...config.command, ...serve], `${config.name}: serve`);
}

async function pipelineStats(url: string): Promise<PipelineStats | undefined> {
  const stats = (await (await fetch(`${url}/stats`)).json()) as { models: { pipeline?: PipelineStats }[] };
  return stats.models[0]?.pipeline;
}

async function measure(config: Config) {
  const f = figures.get(config.name)!;
  const { proc, url } = await startServe(config);
  const pids = config.rankPids(proc.pid);
  if (pids.length !== config.ranks) throw new Error(`${config.name}: found ranks ${pids} of ${config.ranks}`);
  const memory: [string, number[]][] = [];
  const sample = (phase: string) => memory.push([phase, pids.map(rssMB)]);
  // Peaks between the phases' ends too: sampled every half second.
  const peak = pids.map(() => 0);
  const sampler = setInterval(() => pids.forEach((pid, i) => (peak[i] = Math.max(peak[i]!, rssMB(pid) || 0))), 500);
  sample("loaded");
  try {
    for (const size of sizes) {
      for (let i = 0; i < perSize; i++) {
        const r = await timedRequest(
          { base: url, model, endpoint: "chat", timeoutSeconds: 600 },
          prompt(size),
          maxTokens,
        );
        if (!r.ok) throw new Error(`${config.name}: ${r.error}`);
        push(f.ttft, size, r.ttftMs);
        push(f.itl, size, ...r.itlMs);
      }
      sample(`after ${size}-token prompts`);
    }
    // The heartbeat brings the stages' figures every peer-timeout / 3 (10 s): one before, one after.
    const heartbeat = () => Bun.sleep(10_500);
    const stages: Figures["stages"][number] = {};
    if (config.ranks > 1) {
      await heartbeat();
      stages.before = await pipelineStats(url);
    }
    for (const clients of clientLevels) {
      const prompts = Array.from({ length: 2 * clients }, () => prompt(128));
      const r = await benchServer({
        url,
        concurrency: [clients],
        requests: prompts.length,
        model,
        maxTokens,
        prompts,
        timeoutSeconds: 600,
      });
      const level = r.levels[0]!;
      if (level.failed) throw new Error(`${config.name}: ${level.errors.join("; ")}`);
      push(f.tokensPerSecond, clients, level.outputTokensPerSecond);
      sample(`after ${clients} clients`);
    }
    if (config.ranks > 1) {
      await heartbeat();
      stages.after = await pipelineStats(url);
    }
    f.stages.push(stages);
  } finally {
    clearInterval(sampler);
    memory.push(["peak", peak]);
    f.memory.push(memory);
    proc.kill("SIGTERM");
    await proc.exited;
  }
}

const rounds = Number(values.rounds);
for (let round = 0; round < rounds; round++) {
  // Every other round in reverse, so a load that rises or falls during the run favours no one.
  for (const config of round % 2 ? [...configs].reverse() : configs) {
    await measure(config);
    process.stderr.write(`round ${round + 1}: ${config.name} done\n`);
  }
}

const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "n/a");
const p = (v: number[] | undefined, q: number) => percentile(v ?? [], q);
const base = figures.get(configs[0]!.name)!;
console.log(`## Time to first token and inter-token latency, one client (${perSize} requests a size a round)\n`);
console.log("| configuration | prompt | TTFT p50 (ms) | TTFT p95 (ms) | ITL p50 (ms) | ITL p95 (ms) |");
console.log("|---|---|---|---|---|---|");
for (const size of sizes)
  for (const c of configs) {
    const f = figures.get(c.name)!;
    console.log(
      `| ${c.name} | ~${size} | ${fmt(p(f.ttft.get(size), 50), 0)} | ${fmt(p(f.ttft.get(size), 95), 0)} | ${fmt(p(f.itl.get(size), 50))} | ${fmt(p(f.itl.get(size), 95))} |`,
    );
  }
console.log(`\n## Output tokens/s, concurrent streaming clients (~128-token prompts, ${maxTokens} tokens each)\n`);
console.log(`| configuration | ${clientLevels.map((c) => `${c} client${c > 1 ? "s" : ""}`).join(" | ")} |`);
console.log(`|---|${clientLevels.map(() => "---").join("|")}|`);
for (const c of configs) {
  const f = figures.get(c.name)!;
  const cells = clientLevels.map((n) => {
    const tps = median(f.tokensPerSecond.get(n) ?? []);
    return c === configs[0] ? fmt(tps) : `${fmt(tps)} (${fmt(tps / median(base.tokensPerSecond.get(n) ?? []), 2)}×)`;
  });
  console.log(`| ${c.name} | ${cells.join(" | ")} |`);
}
// One hop's cost from one client's decode: (ITL split − ITL alone) / hops (N ranks: N hops a step).
console.log("\n## Per hop, stages and memory\n");
console.log(
  "| configuration | per-hop cost from one client's ITL p50 (ms) | bytes per token per hop | stage busy fraction while the clients ran (ranks 1…) |",
);
console.log("|---|---|---|---|");
const alone = p(base.itl.get(sizes[0]!), 50);
for (const c of configs.filter((c) => c.ranks > 1)) {
  const f = figures.get(c.name)!;
  const hop = (p(f.itl.get(sizes[0]!), 50) - alone) / c.ranks;
  const last = f.stages.at(-1);
  const busy = (last?.after?.stages ?? []).map((s) => {
    const before = last?.before?.stages.find((b) => b.rank === s.rank);
    const compute = s.compute_seconds - (before?.compute_seconds ?? 0);
    const wait = s.receive_wait_seconds - (before?.receive_wait_seconds ?? 0);
    return `rank ${s.rank} ${fmt((100 * compute) / (compute + wait), 0)}%`;
  });
  const bytes = [last?.after?.sent_bytes_per_token, ...(last?.after?.stages ?? []).map((s) => s.sent_bytes_per_token)];
  console.log(
    `| ${c.name} | ${fmt(hop, 2)} | ${bytes.map((b) => fmt(b ?? Number.NaN, 0)).join(" / ")} | ${busy.join(", ")} |`,
  );
}
console.log("\nResident memory by rank (MB, last round), at the end of each phase:\n");
for (const c of configs) {
  const memory = figures.get(c.name)!.memory.at(-1) ?? [];
  console.log(
    `- ${c.name}: ${memory.map(([phase, mb]) => `${phase} ${mb.map((m) => fmt(m, 0)).join("/")}`).join("; ")}`,
  );
}
