// How long `mlx launch -n N -- run` takes from start to exit on a one-token answer, and how often
// MLX's ring waited out a refused connect (its 1 s backoff), for this tree's shim and another one
// (BASELINE_SHIM, e.g. one built from an earlier commit), in alternated rounds.
//
//   MLX_HOME=$PWD/.cache/mlx-home BASELINE_SHIM=/tmp/base/libmlx_shim.so \
//     node_modules/.bin/bun bench/launch-start.ts [rounds] [ranks]
import { median } from "./lib";

const rounds = Number(process.argv[2] ?? 10);
const ranks = process.argv[3] ?? "3";
const baseline = process.env.BASELINE_SHIM;
if (!baseline) throw new Error("set BASELINE_SHIM to the shim to compare with");

const builds = { baseline, "this tree": undefined } as const;
const seconds: Record<string, number[]> = { baseline: [], "this tree": [] };
const waits: Record<string, number> = { baseline: 0, "this tree": 0 };
for (let round = 0; round < rounds; round++) {
  for (const [name, shim] of Object.entries(builds)) {
    const env: Record<string, string | undefined> = { ...process.env, MLX_RING_VERBOSE: "1" };
    if (shim) env.MLX_SHIM_PATH = shim;
    else delete env.MLX_SHIM_PATH;
    const started = performance.now();
    const launch = Bun.spawnSync(
      [process.execPath, "src/main.ts", "launch", "-n", ranks, "--", "run", "-m", "smollm2", "--max-tokens", "1", "Hi"],
      { env, stdout: "ignore", stderr: "pipe" },
    );
    const stderr = launch.stderr.toString();
    if (launch.exitCode !== 0) throw new Error(`${name}: launch failed: ${stderr}`);
    seconds[name]!.push((performance.now() - started) / 1000);
    waits[name]! += stderr.match(/\[ring\] Attempt \d+ wait/g)?.length ?? 0;
  }
}
console.log(`| ${ranks} ranks, ${rounds} rounds | median s, start to exit | ring waits of 1 s |`);
console.log("|---|---:|---:|");
for (const name of Object.keys(builds))
  console.log(`| ${name} | ${median(seconds[name]!).toFixed(2)} | ${waits[name]} |`);
