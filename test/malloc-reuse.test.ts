// Freed activations' memory is reused (ffi/src/malloc_reuse.cpp): once a prompt has run, the next
// prompt's forward pass faults in few fresh pages, far fewer than under glibc's defaults
// (MLX_MALLOC_REUSE=0). The setting is read when the shim loads, so each way runs in a child that
// reads its own minor page faults (Linux) around prompts of 256 tokens on the default model,
// converted as `mlx bench` and the peer benchmarks run it: ~33,000 a prompt under glibc's
// defaults, ~250 reused (loaded from its GGUF, this loop's faults under glibc's defaults went with
// where the huge pages' advice fell: ~120 without it, ~130 or 8,000-11,000 with it). And what
// the heap keeps goes back to the system when MLX's cache is cleared.
import { beforeAll, describe, expect, test } from "bun:test";
import { resolveModelPath } from "../src/store/resolve";
import { convertedModel } from "../src/store/derived";

const script = `
  import { readFileSync } from "node:fs";
  import { generateTokens } from "./src/engine/batch";
  import { defaultSampling } from "./src/engine/sampling";
  import { loadModel } from "./src/models/load";
  const lm = loadModel(process.env.MODEL);
  const minorFaults = () => Number(readFileSync("/proc/self/stat", "utf8").split(") ")[1].split(" ")[7]);
  const promptIds = Array.from({ length: 256 }, (_, i) => (i * 7919 + 5) % 49152);
  // The engine's token loop to the prompt's first token, as \`mlx bench\`'s prompt test runs it.
  const prompt = () => {
    for (const _ of generateTokens(lm.model, { promptIds, sampling: defaultSampling, maxTokens: 1 }));
  };
  prompt();
  const before = minorFaults();
  for (let i = 0; i < 4; i++) prompt();
  console.log((minorFaults() - before) / 4);`;

// A model loaded and freed, then MLX's cache cleared (as `serve` does when it unloads a model):
// the RSS that glibc's own malloc_trim would still give back afterwards, MB.
const trimScript = `
  import { readFileSync } from "node:fs";
  import { dlopen, FFIType } from "bun:ffi";
  import * as mx from "./src/mlx";
  import { loadModel } from "./src/models/load";
  import { resolveModelPath } from "./src/store/resolve";
  const rss = () => Number(readFileSync("/proc/self/status", "utf8").match(/VmRSS:\\s+(\\d+)/)[1]) / 1024;
  const lm = loadModel(await resolveModelPath(undefined));
  mx.memory.hugePagesSettled(); // the weights' huge pages, collapsed on a thread of the shim's, in place
  lm.free();
  mx.memory.clearCache();
  const cleared = rss();
  dlopen("libc.so.6", { malloc_trim: { args: [FFIType.u64], returns: FFIType.i32 } }).symbols.malloc_trim(0n);
  console.log(cleared - rss());`;

/** The number a child running `code` prints last (loading may print before it), with `env` added. */
function childNumber(code: string, env: Record<string, string | undefined> = {}): number {
  const child = Bun.spawnSync([process.execPath, "-e", code], { env: { ...process.env, ...env }, stderr: "pipe" });
  expect(child.stderr.toString()).toBe("");
  return Number(child.stdout.toString().trim().split("\n").at(-1));
}

/** The default model converted (beforeAll), as the children load it. */
let converted = "";
/** Minor page faults a prompt takes in a child with MLX_MALLOC_REUSE=`reuse` (unset: the default). */
const faultsPerPrompt = (reuse: string | undefined): number =>
  childNumber(script, { MLX_MALLOC_REUSE: reuse, MODEL: converted });

beforeAll(async () => {
  // Fetched and converted into the store once, before the children read it.
  converted = (await convertedModel(await resolveModelPath(undefined), "smollm2-mlx")).path;
}, 600_000);

describe("freed memory reused", () => {
  test.skipIf(process.platform !== "linux")(
    "a prompt faults in under half the pages glibc's defaults take",
    () => {
      const reused = faultsPerPrompt(undefined);
      const defaults = faultsPerPrompt("0");
      console.log(`minor page faults per 256-token prompt: ${reused} reused, ${defaults} with glibc's defaults`);
      expect(defaults).toBeGreaterThan(1000);
      expect(reused).toBeLessThan(defaults / 2);
    },
    120_000,
  );

  test.skipIf(process.platform !== "linux")(
    "clearing MLX's cache gives the heap's free pages back too",
    () => {
      const left = childNumber(trimScript);
      console.log(`RSS a malloc_trim still gave back after clearCache: ${left.toFixed(1)} MB`);
      expect(left).toBeLessThan(2);
    },
    120_000,
  );
});
