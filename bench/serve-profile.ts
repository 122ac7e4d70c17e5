// Where `mlx serve`'s wall time goes under load: the real server (startServer, as `mlx serve`
// runs it) in this process, driven over HTTP by `mlx bench --url` in another process, with every
// engine step timed. Per concurrency level it splits the level's wall time into the engine's
// steps (by the rows they decoded, and those where sequences joined or left), the gaps between
// two steps while sequences run (the JS side: SSE writes, detokenizing, HTTP handlers), and the
// time the engine sat idle (no sequence running nor waiting: clients between requests); and the
// CPU time of the server's steps, of its JS side, and of the client process.
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/serve-profile.ts [-m MODEL] [--requests 16] [--max-tokens 32] [--clients 1,8]
import { parseArgs } from "node:util";
import { byRows, recordSteps } from "./engine-steps";
import { startServer } from "../src/server/app";
import { resolveModelPath } from "../src/store/resolve";

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m", default: ".cache/bench/smollm2-mlx" },
    requests: { type: "string", default: "16" },
    "max-tokens": { type: "string", default: "32" },
    clients: { type: "string", default: "1,8" },
    client: { type: "string", default: "dist/mlx" },
  },
});

const engine = recordSteps();

const model = await resolveModelPath(values.model);
const server = startServer({ port: 0, defaultModel: model, version: "bench", logError: console.error });
// Loaded before the first level, so that its CPU figures leave the loading out.
(await server.state.models.acquire(model, Infinity)).release();
const ms = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const fmt = (x: number) => x.toFixed(0);

async function level(clients: number): Promise<void> {
  engine.reset();
  const cpu = process.cpuUsage();
  const started = performance.now();
  const proc = Bun.spawn(
    [
      values.client,
      "bench",
      "--url",
      server.url,
      "-m",
      model,
      "--concurrency",
      String(clients),
      "--requests",
      values.requests,
      "--max-tokens",
      values["max-tokens"],
      "--json",
    ],
    { stdout: "pipe", stderr: "ignore" },
  );
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  const wall = performance.now() - started;
  const used = process.cpuUsage(cpu);
  const serverCpu = (used.user + used.system) / 1000;
  const clientCpu = Number(proc.resourceUsage()!.cpuTime.total) / 1000;
  const result = JSON.parse(out).levels[0] as {
    duration_seconds: number;
    output_tokens: number;
    output_tokens_per_second: number;
  };
  // The level proper: the client's warm-up request (its first steps, up to the engine's first
  // idle spell) is left out; the level runs from its first step to its last.
  const records = engine.records();
  const firstIdle = records.findIndex((r, i) => i > 0 && r.before === 0 && records[i - 1]!.after === 0);
  const steps = records.slice(Math.max(0, firstIdle));
  const window = steps.at(-1)!.end - steps[0]!.start;
  const joins = steps.filter((r) => r.after > r.before);
  const leaves = steps.filter((r) => r.after < r.before && r.after >= 0);
  const decodes = steps.filter((r) => r.after === r.before && r.before > 0);
  let gaps = 0;
  let idle = 0;
  for (let i = 1; i < steps.length; i++) {
    const gap = steps[i]!.start - steps[i - 1]!.end;
    // Nothing running after the last step: the engine waited for requests.
    if (steps[i - 1]!.after === 0) idle += gap;
    else gaps += gap;
  }
  const rows = byRows(decodes);
  const stepCpu = ms(steps.map((r) => r.cpuMs));
  const tokens = ms(steps.map((r) => r.tokens));
  console.log(
    `| ${clients} | ${result.output_tokens_per_second.toFixed(1)} | ${fmt(window)} | ${fmt(ms(decodes.map((r) => r.end - r.start)))} | ${fmt(ms(joins.map((r) => r.end - r.start)))} (${joins.length}) | ${fmt(ms(leaves.map((r) => r.end - r.start)))} (${leaves.length}) | ${fmt(gaps)} | ${fmt(idle)} | ${rows} | ${(stepCpu / tokens).toFixed(2)} | ${((serverCpu - stepCpu) / tokens).toFixed(2)} | ${(clientCpu / tokens).toFixed(2)} | ${fmt(wall)} |`,
  );
}

console.log(`# ${values.requests} requests of up to ${values["max-tokens"]} tokens per level; times in ms`);
console.log(
  "| clients | output tok/s (client) | level (first to last step) | decode steps | join steps (n) | leave steps (n) | gaps between steps | engine idle | decode steps by rows: count × median ms | server CPU ms/token in steps | server CPU ms/token outside steps | client CPU ms/token | client process wall |",
);
console.log("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
for (const clients of values.clients.split(",").map(Number)) await level(clients);
await server.stop();
process.exit(0);
