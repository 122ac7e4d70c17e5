// The table of bench/serve-load.sh: both servers' levels side by side (Markdown), and the ratios
// the serve issue asks about. Reads the JSON that `mlx bench --url … --json` wrote.
//   node_modules/.bin/bun bench/serve-load-table.ts [.cache/bench/serve-load]
import { readFileSync } from "node:fs";
import { join } from "node:path";

interface Stat { mean: number; median: number; p99: number }
interface Level { concurrency: number; completed: number; failed: number; requests_per_second: number; output_tokens_per_second: number; ttft_ms: Stat; tpot_ms: Stat; e2e_ms: Stat }

const dir = process.argv[2] ?? ".cache/bench/serve-load";
const read = (name: string): Level[] => JSON.parse(readFileSync(join(dir, `${name}.json`), "utf8")).levels;
const systems = { ours: read("ours"), "mlx_lm.server": read("mlx-lm") };
const ms = (s: Stat) => `${s.mean.toFixed(0)} / ${s.median.toFixed(0)} / ${s.p99.toFixed(0)}`;

console.log("| clients | system | completed / failed | req/s | output tokens/s | TTFT mean / median / P99 (ms) | TPOT mean / median / P99 (ms) | end-to-end mean / median / P99 (ms) |");
console.log("|---:|---|---:|---:|---:|---:|---:|---:|");
for (const [i, level] of systems.ours.entries()) {
  for (const [name, levels] of Object.entries(systems)) {
    const l = levels[i] ?? level;
    console.log(`| ${l.concurrency} | ${name} | ${l.completed} / ${l.failed} | ${l.requests_per_second.toFixed(3)} | ${l.output_tokens_per_second.toFixed(2)} | ${ms(l.ttft_ms)} | ${ms(l.tpot_ms)} | ${ms(l.e2e_ms)} |`);
  }
}
const at = (levels: Level[], c: number) => levels.find((l) => l.concurrency === c)?.output_tokens_per_second ?? NaN;
const x = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
const { ours, "mlx_lm.server": peer } = systems;
console.log();
console.log(`ours at 8 clients / ours at 1: ${x(at(ours, 8), at(ours, 1))}; mlx_lm.server at 8 / at 1: ${x(at(peer, 8), at(peer, 1))}; ours / mlx_lm.server at 8 clients: ${x(at(ours, 8), at(peer, 8))}; at 16: ${x(at(ours, 16), at(peer, 16))}`);
