// What each rank of 2-rank tensor parallel holds against one process: the bytes of weights after
// loading, and MLX's peak while loading (a GGUF is read whole by MLX's reader, then cut; an MLX
// directory is read tensor by tensor as it is cut).
//   MLX_HOME=$PWD/.cache/mlx-home bun bench/tensor-parallel-memory.ts [model or path]
import * as mx from "../src/mlx";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";

const [model = "smollm2", who] = process.argv.slice(2);
if (who === undefined) {
  // Each in a process of its own: MLX's peak is per process.
  console.log("| holds | weights (MB) | peak while loading (MB) |\n|---|---|---|");
  for (const part of ["alone", "0", "1"]) {
    const r = Bun.spawnSync([process.execPath, import.meta.path, model, part], {
      stderr: "inherit",
    });
    process.stdout.write(r.stdout.toString());
  }
} else {
  const path = await resolveModelPath(model);
  const rank = Number(who);
  const lm =
    who === "alone"
      ? loadModel(path)
      : loadModel(path, { start: 0, end: Number.MAX_SAFE_INTEGER, ends: rank === 0 }, { rank, size: 2 });
  const mb = (n: number) => (n / 1e6).toFixed(1);
  const label = who === "alone" ? "1 process" : `rank ${rank} of 2`;
  console.log(`| ${label} | ${mb(lm.weightBytes)} | ${mb(mx.memory.peakMemory())} |`);
}
