// One stream through a split model against one process: decode speed of one streamed request at
// a time on `mlx serve` as 1 process and as 2 (and 3) ranks on loopback; optionally the same
// for other checkouts of this repository (--baseline DIR, repeatable; their shim by --baseline-shim). Every
// configuration's server is up for the whole run and they take requests in turn, round after
// round (every other round reversed), so a changing load hits them alike: on a busy machine
// single runs vary by 5×, and only many interleaved requests tell configurations apart.
// Decode tokens/s of a request: its tokens after the first over the time from first to last; and
// the time from sending it to its first token.
// The issue's aim: 2 ranks at ≥ 0.9× one process.
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/pipeline-stream.ts [--rounds 20] [--ranks 1,2] [--tokens 64] [--model M] [--endpoint chat|completions]
//     [--baseline /tmp/base --baseline-shim /tmp/base/libmlx_shim.so]
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Endpoint, timedRequest } from "../src/bench/server";
import { percentile } from "../src/bench/stats";
import { median, spawnServe } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "20" },
    ranks: { type: "string", default: "1,2" },
    tokens: { type: "string", default: "64" },
    model: { type: "string", default: "smollm2" },
    // completions for a base model (no chat template), such as gemma3
    endpoint: { type: "string", default: "chat" },
    baseline: { type: "string", multiple: true },
    "baseline-shim": { type: "string" },
  },
});
const model = values.model!;
if (values.endpoint !== "chat" && values.endpoint !== "completions") throw new Error("--endpoint: chat or completions");
const endpoint: Endpoint = values.endpoint;
const ranksList = values.ranks!.split(",").map(Number);
const prompt = "Write a long story about the sea, the wind and a lighthouse keeper who counts the waves.";

interface Build {
  name: string;
  main: string;
  env: Record<string, string>;
}
const builds: Build[] = [{ name: "this tree", main: join(import.meta.dir, "..", "src", "main.ts"), env: {} }];
for (const dir of values.baseline ?? [])
  builds.push({
    name: `baseline ${dir}`,
    main: join(dir, "src", "main.ts"),
    env: values["baseline-shim"] ? { MLX_SHIM_PATH: values["baseline-shim"] } : {},
  });

interface Config {
  build: Build;
  ranks: number;
  label: string;
  url?: string;
  proc?: Bun.Subprocess;
  tps: number[];
  itl: number[];
  ttft: number[];
}
const configs: Config[] = builds.flatMap((build) =>
  ranksList.map((ranks) => ({
    build,
    ranks,
    label: `${build.name}, ${ranks === 1 ? "1 process" : `${ranks} ranks`}`,
    tps: [],
    itl: [],
    ttft: [],
  })),
);

try {
  for (const c of configs) {
    const serve = ["serve", "--port", "0", "-m", model, "--prefix-cache-mb", "0"];
    const command = [process.execPath, c.build.main, ...(c.ranks > 1 ? ["launch", "-n", String(c.ranks), "--"] : [])];
    // The launcher passes its environment on to every rank.
    const { proc, url } = await spawnServe([...command, ...serve], c.label, { ...process.env, ...c.build.env });
    Object.assign(c, { proc, url });
  }
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const c of round % 2 ? [...configs].reverse() : configs) {
      const target = { base: c.url!, model, endpoint, timeoutSeconds: 600 };
      const r = await timedRequest(target, prompt, Number(values.tokens));
      if (!r.ok) throw new Error(`${c.label}: ${r.error}`);
      const decodeMs = r.itlMs.reduce((a, b) => a + b, 0);
      c.tps.push((r.itlMs.length / decodeMs) * 1000);
      c.itl.push(...r.itlMs);
      c.ttft.push(r.ttftMs);
    }
    process.stderr.write(`round ${round + 1} done\n`);
  }
} finally {
  for (const c of configs) c.proc?.kill("SIGTERM");
  await Promise.all(configs.map((c) => c.proc?.exited));
}

console.log(
  "| build | ranks | decode tokens/s, median of requests | ITL p50 (ms) | ITL p95 (ms) | vs 1 process, same build | time to first token, median (ms) |",
);
console.log("|---|---|---|---|---|---|---|");
for (const c of configs) {
  const alone = configs.find((a) => a.build === c.build && a.ranks === 1);
  const ratio = alone ? (median(c.tps) / median(alone.tps)).toFixed(2) : "n/a";
  console.log(
    `| ${c.build.name} | ${c.ranks} | ${median(c.tps).toFixed(1)} | ${percentile(c.itl, 50).toFixed(1)} | ${percentile(c.itl, 95).toFixed(1)} | ${ratio}× | ${median(c.ttft).toFixed(1)} |`,
  );
}
