// The library on Node (ffi-rs) against Bun (bun:ffi), in one run, interleaved: the cost of
// one call into MLX (an op built and freed, and a cheap query, many times), and generation
// tokens/s of the default model through the library. Prints a Markdown table of medians.
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/runtimes.ts [--runs 3] [--gen 64]
import { parseArgs } from "node:util";
import { median } from "./lib";

const { values } = parseArgs({
  options: { runs: { type: "string", default: "3" }, gen: { type: "string", default: "64" } },
});
const runs = Number(values.runs);
const probe = new URL("./runtime-probe.ts", import.meta.url).pathname;
const bundled = ".cache/bench/runtime-probe.mjs";
const build = Bun.spawnSync(
  [process.execPath, "build", "--target", "node", probe, "--outfile", bundled, "--external", "ffi-rs"],
  { stderr: "inherit" },
);
if (build.exitCode !== 0) throw new Error("bundling the probe for Node failed");

interface Figures {
  opMicros: number;
  queryMicros: number;
  genTps: number;
}
const results: Record<"node" | "bun", Figures[]> = { node: [], bun: [] };

async function measure(runtime: "node" | "bun"): Promise<Figures> {
  const command = runtime === "node" ? ["node", bundled] : [process.execPath, probe];
  const proc = Bun.spawn([...command, values.gen!], { stdout: "pipe", stderr: "inherit" });
  const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  if (code !== 0) throw new Error(`${runtime} probe exited with ${code}`);
  return JSON.parse(out);
}

for (let i = 0; i < runs; i++) {
  const order = i % 2 === 0 ? (["bun", "node"] as const) : (["node", "bun"] as const);
  for (const runtime of order) {
    const f = await measure(runtime);
    results[runtime].push(f);
    console.error(
      `run ${i + 1}/${runs} ${runtime}: op ${f.opMicros.toFixed(2)} µs, query ${f.queryMicros.toFixed(2)} µs, generation ${f.genTps.toFixed(2)} tokens/s`,
    );
  }
}
const med = (r: "node" | "bun", k: keyof Figures) => median(results[r].map((f) => f[k]));
console.log(`| measure (median of ${runs}) | Bun (bun:ffi) | Node (ffi-rs) | Node / Bun |`);
console.log("|---|---:|---:|---:|");
for (const [name, key] of [
  ["one op built and freed (µs per op)", "opMicros"],
  ["one cheap query, mlxs_array_dtype (µs per call)", "queryMicros"],
  [`generation tokens/s (default model, ${values.gen} tokens)`, "genTps"],
] as const) {
  console.log(
    `| ${name} | ${med("bun", key).toFixed(2)} | ${med("node", key).toFixed(2)} | ${(med("node", key) / med("bun", key)).toFixed(2)}× |`,
  );
}
