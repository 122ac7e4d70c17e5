// One stream through a split model against one process: `mlx run` decode tokens/s on 1 process
// and on 2 (and 3) ranks on loopback, each configuration run in turn round after round (every
// other round reversed), so a changing load hits them alike; optionally the same against another
// checkout of this repository (--baseline DIR, its shim given by --baseline-shim), interleaved in
// the same rounds. The issue's aim: 2 ranks at ≥ 0.9× one process.
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/pipeline-stream.ts [--rounds 5] [--ranks 1,2] [--tokens 64]
//     [--baseline /tmp/base --baseline-shim /tmp/base/libmlx_shim.so] [--layers 0-10,11-29]
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median, spawnTimed } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "5" },
    ranks: { type: "string", default: "1,2" },
    tokens: { type: "string", default: "64" },
    model: { type: "string", default: "smollm2" },
    baseline: { type: "string" },
    "baseline-shim": { type: "string" },
    // Passed to the split runs as they are (e.g. a split by hand).
    layers: { type: "string" },
  },
});
const ranksList = values.ranks!.split(",").map(Number);
const prompt = "Write a story about the sea, the wind and a lighthouse keeper who counts the waves.";

interface Build {
  name: string;
  main: string;
  env: Record<string, string>;
}
const builds: Build[] = [{ name: "this tree", main: join(import.meta.dir, "..", "src", "main.ts"), env: {} }];
if (values.baseline)
  builds.push({
    name: "baseline",
    main: join(values.baseline, "src", "main.ts"),
    env: values["baseline-shim"] ? { MLX_SHIM_PATH: values["baseline-shim"] } : {},
  });

const configs = builds.flatMap((build) => ranksList.map((ranks) => ({ build, ranks })));
const label = (c: (typeof configs)[number]) => `${c.build.name}, ${c.ranks === 1 ? "1 process" : `${c.ranks} ranks`}`;
const tps = new Map<string, number[]>();

for (let round = 0; round < Number(values.rounds); round++) {
  for (const c of round % 2 ? [...configs].reverse() : configs) {
    const run = ["run", "-m", values.model!, "--temp", "0", "--json", "--max-tokens", values.tokens!];
    if (c.ranks > 1 && values.layers) run.push("--layers", values.layers);
    const command =
      c.ranks === 1
        ? [process.execPath, c.build.main, ...run, prompt]
        : [process.execPath, c.build.main, "launch", "-n", String(c.ranks), "--", ...run, prompt];
    const r = await spawnTimed(command, "", { env: { ...process.env, ...c.build.env } });
    const { stats } = JSON.parse(r.stdout);
    tps.set(label(c), [...(tps.get(label(c)) ?? []), stats.generation_tokens_per_second]);
  }
  process.stderr.write(`round ${round + 1} done\n`);
}

console.log("| build | ranks | decode tokens/s (median) | each round | vs 1 process, same build |");
console.log("|---|---|---|---|---|");
for (const c of configs) {
  const mine = tps.get(label(c))!;
  const alone = tps.get(label({ build: c.build, ranks: 1 }));
  const ratio = alone ? (median(mine) / median(alone)).toFixed(2) : "n/a";
  console.log(
    `| ${c.build.name} | ${c.ranks} | ${median(mine).toFixed(1)} | ${mine.map((t) => t.toFixed(1)).join(", ")} | ${ratio}× |`,
  );
}
