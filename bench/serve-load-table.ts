// The table of bench/serve-load.sh: both servers' levels side by side (Markdown), medians over
// the rounds, and the ratios. Reads the JSON that `mlx bench --url … --json` wrote
// (<system>-<round>-<level>.json).
//   node_modules/.bin/bun bench/serve-load-table.ts [.cache/bench/serve-load] [mlx-lm|baseline]
import { readdirSync, readFileSync } from "node:fs";
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
  output_tokens_per_second: number;
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
    levels.push(...JSON.parse(readFileSync(join(dir, f), "utf8")).levels);
    byRound.set(match[2]!, levels);
  }
  return [...byRound.values()].map((levels) => levels.sort((a, b) => a.concurrency - b.concurrency));
};
const systems: Record<string, Level[][]> = { ours: rounds("ours"), [peer]: rounds(peer) };
const med = (runs: Level[][], i: number, pick: (l: Level) => number) => median(runs.map((levels) => pick(levels[i]!)));

console.log(
  `| clients | system | rounds | completed / failed (all rounds) | req/s | output tokens/s | TTFT median (ms) | TPOT median (ms) | end-to-end median (ms) |`,
);
console.log("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
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
  console.log(
    `${level.concurrency} clients: ours / ${peer} output tokens/s ${(output(systems.ours, i) / output(systems[peer]!, i)).toFixed(3)}×; against ${first[0]!.concurrency} client(s): ${scaling}`,
  );
}
