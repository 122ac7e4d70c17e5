// The table of bench/serve-load.sh: both servers' levels side by side (Markdown), medians over
// the rounds, and the ratios. Reads the JSON that `mlx bench --url … --json` wrote
// (<system>-<round>-<level>.json), and each server's CPU time over the level where serve-load.sh
// recorded it (<system>-<round>-<level>.cpu, ms).
//   node_modules/.bin/bun bench/serve-load-table.ts [.cache/bench/serve-load] [mlx-lm|baseline]
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { median } from "./lib";

interface Stat {
  mean: number;
  median: number;
  p99: number;
}
interface Level {
  concurrency: number;
  completed: number;
  failed: number;
  requests_per_second: number;
  output_tokens: number;
  output_tokens_per_second: number;
  /** The server's CPU ms per output token over the level (the mlx bench client's warm-up request included). */
  cpuMsPerToken?: number;
  ttft_ms: Stat;
  tpot_ms: Stat;
  e2e_ms: Stat;
}

const dir = process.argv[2] ?? ".cache/bench/serve-load";
const peer = process.argv[3] ?? "mlx-lm";
/** Each round's levels in order: the files <system>-<round>-<level>.json, one level each. */
const rounds = (system: string): Level[][] => {
  const byRound = new Map<string, Level[]>();
  for (const f of readdirSync(dir)) {
    const match = f.match(/^(.+)-(\d+)-(\d+)\.json$/);
    if (!match || match[1] !== system) continue;
    const levels = byRound.get(match[2]!) ?? [];
    const cpuFile = join(dir, f.replace(/\.json$/, ".cpu"));
    const cpuMs = existsSync(cpuFile) ? Number(readFileSync(cpuFile, "utf8")) : undefined;
    for (const level of JSON.parse(readFileSync(join(dir, f), "utf8")).levels as Level[])
      levels.push({ ...level, cpuMsPerToken: cpuMs === undefined ? undefined : cpuMs / level.output_tokens });
    byRound.set(match[2]!, levels);
  }
  return [...byRound.values()].map((levels) => levels.sort((a, b) => a.concurrency - b.concurrency));
};
const systems: Record<string, Level[][]> = { ours: rounds("ours"), [peer]: rounds(peer) };
const med = (runs: Level[][], i: number, pick: (l: Level) => number) => median(runs.map((levels) => pick(levels[i]!)));
const withCpu = Object.values(systems).every((runs) => runs.every((levels) => levels.every((l) => l.cpuMsPerToken)));
const cpuPerToken = (runs: Level[][], i: number) => med(runs, i, (l) => l.cpuMsPerToken!);

console.log(
  `| clients | system | rounds | completed / failed (all rounds) | req/s | output tokens/s | TTFT median (ms) | TPOT median (ms) | end-to-end median (ms) |${withCpu ? " server CPU ms per output token |" : ""}`,
);
console.log(`|---:|---|---:|---:|---:|---:|---:|---:|---:|${withCpu ? "---:|" : ""}`);
const first = systems.ours[0]!;
for (const [i, level] of first.entries()) {
  for (const [name, runs] of Object.entries(systems)) {
    const sum = (pick: (l: Level) => number) => runs.reduce((n, levels) => n + pick(levels[i]!), 0);
    const row = [
      level.concurrency,
      name,
      runs.length,
      `${sum((l) => l.completed)} / ${sum((l) => l.failed)}`,
      med(runs, i, (l) => l.requests_per_second).toFixed(3),
      med(runs, i, (l) => l.output_tokens_per_second).toFixed(2),
      med(runs, i, (l) => l.ttft_ms.median).toFixed(0),
      med(runs, i, (l) => l.tpot_ms.median).toFixed(0),
      med(runs, i, (l) => l.e2e_ms.median).toFixed(0),
      ...(withCpu ? [cpuPerToken(runs, i).toFixed(2)] : []),
    ];
    console.log(`| ${row.join(" | ")} |`);
  }
}
console.log();
// Output tokens/s against the peer at each level, and against one client on each server (the
// scaling continuous batching buys; the first level is taken as the one-client baseline).
const output = (runs: Level[][], i: number) => med(runs, i, (l) => l.output_tokens_per_second);
for (const [i, level] of first.entries()) {
  const scaling = Object.entries(systems)
    .map(([name, runs]) => `${name} ${(output(runs, i) / output(runs, 0)).toFixed(2)}×`)
    .join(", ");
  // By CPU: one client's CPU per token over this level's (what the scaling is where the server has the cores to itself).
  const cpuScaling = withCpu
    ? `; by server CPU per token: ${Object.entries(systems)
        .map(([name, runs]) => `${name} ${(cpuPerToken(runs, 0) / cpuPerToken(runs, i)).toFixed(2)}×`)
        .join(", ")}`
    : "";
  console.log(
    `${level.concurrency} clients: ours / ${peer} output tokens/s ${(output(systems.ours, i) / output(systems[peer]!, i)).toFixed(3)}×; against ${first[0]!.concurrency} client(s): ${scaling}${cpuScaling}`,
  );
}
