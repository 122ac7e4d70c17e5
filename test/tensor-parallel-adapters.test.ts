// Adapters under tensor parallel: each rank holds its slice of every adapted projection's
// update, cut as the layer is (B's outputs for q/k/v and gate/up, A's inputs for o_proj and
// down_proj), and DoRA's per-output factor from the whole row's norm (summed over the ranks).
// Greedy output is the single process's, token for token, in run and in serve's mixed batches.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { cliRunner } from "./helpers/cli";
import { completeTogether, launchServe, startRank, writeLoopbackRing } from "./helpers/launch";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { serve } from "./helpers/serve";
import { tinyDims, writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
const mlx = cliRunner(home);
let dir: string;
let tiny: string;
let quantized: string;
let lora: string;
let dora: string;

const { hidden, heads, kvHeads, headDim, intermediate } = tinyDims;
/** Every projection tensor parallel cuts: by outputs (q/k/v, gate/up) and by inputs (o, down). */
const projections: Record<string, [number, number]> = {
  "self_attn.q_proj": [hidden, heads * headDim],
  "self_attn.k_proj": [hidden, kvHeads * headDim],
  "self_attn.v_proj": [hidden, kvHeads * headDim],
  "self_attn.o_proj": [heads * headDim, hidden],
  "mlp.gate_proj": [hidden, intermediate],
  "mlp.up_proj": [hidden, intermediate],
  "mlp.down_proj": [intermediate, hidden],
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-tp-adapters-"));
  tiny = join(dir, "tiny");
  quantized = join(dir, "tiny-q4");
  writeTinyModel(tiny, { layers: 3, seed: 5 });
  writeTinyModel(quantized, { layers: 3, seed: 6, quantize: { groupSize: 32, bits: 4 } });
  lora = join(dir, "lora");
  dora = join(dir, "dora");
  writeRandomAdapter(lora, { layers: lastLayers(3, 2, projections), seed: 1, strength: 0.5 });
  writeRandomAdapter(dora, { layers: lastLayers(3, 3, projections), seed: 2, strength: 0.5, kind: "dora" });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tokenIds = (stdout: string): number[] => JSON.parse(stdout).token_ids;

describe("mlx launch -n 2 -- run --tensor-parallel --adapter", () => {
  test("LoRA on a float model and DoRA on a 4-bit one: the single process's greedy tokens", async () => {
    for (const [model, adapter] of [
      [tiny, lora],
      [quantized, dora],
    ] as const) {
      const prompt = ["run", "-m", model, "--json", "--temp", "0", "--max-tokens", "24", "Hello there"];
      const base = await mlx(prompt);
      const alone = await mlx([...prompt, "--adapter", adapter]);
      expect(alone.code).toBe(0);
      // The adapter changes the answer: the test would see a rank that ignored its share.
      expect(tokenIds(alone.stdout)).not.toEqual(tokenIds(base.stdout));
      const split = await mlx(["launch", "-n", "2", "--", ...prompt, "--adapter", adapter, "--tensor-parallel"]);
      expect(split.stderr).toBe("");
      expect(split.code).toBe(0);
      expect(tokenIds(split.stdout)).toEqual(tokenIds(alone.stdout));
    }
  }, 120_000);
});

describe("mlx launch -n 2 -- serve --tensor-parallel --adapter", () => {
  test("rows of the base, a LoRA and a DoRA adapter in one batch answer as one process", async () => {
    const requests = [tiny, "tuned", "scaled", tiny, "tuned", "scaled"].map((model, i) => ({
      model,
      prompt: i < 3 ? "Once upon a time" : "The weather",
      max_tokens: 10,
      temperature: 0,
    }));
    const adapters = new Map([
      ["tuned", { base: tiny, dir: lora }],
      ["scaled", { base: tiny, dir: dora }],
    ]);
    const one = serve({ adapters });
    const expected: string[] = [];
    try {
      const client = new OpenAI({ baseURL: `${one.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
      for (const r of requests) expected.push((await client.completions.create(r)).choices[0]!.text);
    } finally {
      await one.stop();
    }
    expect(new Set(expected.slice(0, 3)).size).toBe(3);
    const server = await launchServe(home, 2, tiny, [
      "--tensor-parallel",
      "--adapter",
      `tuned=${lora}`,
      "--adapter",
      `scaled=${dora}`,
    ]);
    expect(await completeTogether(server, requests)).toEqual(expected);
  }, 120_000);
});

describe("a rank lost while rank 0 loads a DoRA adapter", () => {
  test("rank 0 stops within the peer timeout, naming it: the norms' all_sum is watched like a message", async () => {
    // Ranks started by hand, rank 1 in a directory where the adapter's relative path holds a
    // named pipe: it blocks reading it, and is stopped there (a silent peer, as a machine that
    // is gone without closing its connection), while rank 0 waits in the norms' all_sum.
    const ring = await writeLoopbackRing(join(dir, "ring-dora.json"), 2);
    const elsewhere = mkdtempSync(join(dir, "elsewhere-"));
    mkdirSync(join(elsewhere, "dora"));
    copyFileSync(join(dora, "adapter_config.json"), join(elsewhere, "dora", "adapter_config.json"));
    const pipe = join(elsewhere, "dora", "adapters.safetensors");
    execFileSync("mkfifo", [pipe]);
    const args = [
      "run",
      "-m",
      tiny,
      "--adapter",
      "dora",
      "--max-tokens",
      "2",
      "--tensor-parallel",
      "--peer-timeout",
      // The join is watched too: long enough for both processes to start on a loaded CI machine.
      "5",
    ];
    const rank = (r: number, cwd: string) => startRank(home, ring, r, [...args, "Hello"], cwd);
    const [zero, one] = [rank(0, dir), rank(1, elsewhere)];
    // Opening the pipe for writing returns once rank 1 opens it to read: then it is stopped.
    const stopper = Bun.spawn(["sh", "-c", `exec 3>"$0"; kill -STOP ${one.pid}; sleep 60`, pipe]);
    try {
      const code = await Promise.race([zero.exited, Bun.sleep(20_000).then(() => "still waiting")]);
      expect(code).toBe(3);
      expect(await new Response(zero.stderr).text()).toBe(
        "error: rank 0: no answer from rank 1 for 5 s (--peer-timeout); stopping\n",
      );
    } finally {
      for (const p of [zero, one, stopper]) p.kill("SIGKILL");
    }
  }, 60_000);
});
