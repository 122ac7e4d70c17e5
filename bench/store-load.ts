// First against later loads through the model store, each in a fresh process (as `mlx run`):
//   default model  resolveModelPath(default) + loadModel; the first run in a new store writes the
//                  manifest and the model directory, later runs find them (the PyPI download
//                  itself is answered from the seeded blob, so no network time is included)
//   converted      convertedModel(GGUF) + loadModel; the first run converts, later runs find the
//                  conversion by the hash of its inputs
// usage: bun bench/store-load.ts [runs]   (needs the default model in $MLX_HOME or ~/.cache/mlx)
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { median } from "./lib";

const [mode, spec] = process.argv.slice(2);

if (mode === "--child") {
  // One measurement: what a fresh `mlx run` pays before its first token.
  const { resolveModelPath } = await import("../src/store/resolve");
  const { convertedModel } = await import("../src/store/derived");
  const { loadModel } = await import("../src/models/load");
  const started = performance.now();
  let path = await resolveModelPath(undefined, { onProgress: () => {} });
  if (spec === "converted") path = (await convertedModel(path, "smollm2-mlx")).path;
  const prepared = performance.now();
  loadModel(path);
  process.stdout.write(`${JSON.stringify({ prepareMs: prepared - started, loadMs: performance.now() - prepared })}\n`);
  process.exit(0);
}

const runs = Number(mode ?? 5);
const { storeRoot } = await import("../src/store/paths");
const source = storeRoot();
const scratch = mkdtempSync(join(tmpdir(), "mlx-bench-store-"));
// A store as the first release left it: the default model's blob and its PyPI ref, nothing else.
cpSync(join(source, "blobs"), join(scratch, "blobs"), { recursive: true });
cpSync(join(source, "refs", "pypi"), join(scratch, "refs", "pypi"), { recursive: true });

async function measure(what: string): Promise<{ prepareMs: number; loadMs: number }> {
  const proc = Bun.spawn([process.execPath, import.meta.path, "--child", what], {
    env: { ...process.env, MLX_HOME: scratch },
    stdout: "pipe",
    stderr: "inherit",
  });
  const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  if (code !== 0) throw new Error(`child for ${what} exited with ${code}`);
  return JSON.parse(out);
}

const fmt = (ms: number) => `${ms.toFixed(0)} ms`;
try {
  for (const what of ["default", "converted"]) {
    const first = await measure(what);
    const later = [];
    for (let i = 0; i < runs; i++) later.push(await measure(what));
    const prepare = median(later.map((r) => r.prepareMs));
    const load = median(later.map((r) => r.loadMs));
    console.log(
      `| ${what} | first | ${fmt(first.prepareMs)} | ${fmt(first.loadMs)} | ${fmt(first.prepareMs + first.loadMs)} |`,
    );
    console.log(`| ${what} | later (median of ${runs}) | ${fmt(prepare)} | ${fmt(load)} | ${fmt(prepare + load)} |`);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
