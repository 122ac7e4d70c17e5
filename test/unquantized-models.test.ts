// Unquantized models end to end: float16 and bfloat16 checkpoints (their decode products go
// through the half-rows kernel, ffi/src/kernels/half_rows_*.cpp, up to 8 rows; more through
// OpenBLAS), against MLX's own kernels and across batch sizes of the server.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { loadModel } from "../src/models/load";
import type { RunningServer } from "../src/server/app";
import { firstStepLogits, greedy, withKernels } from "./helpers/parity";
import { serve } from "./helpers/serve";
import { writeTinyModel, type TinyOptions } from "./helpers/tiny-model";

const root = mkdtempSync(join(tmpdir(), "mlx-unquantized-"));
process.env.MLX_HOME ??= join(root, "home");
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A tiny model directory of these options, written once per test process. */
const written = new Map<string, string>();
function tiny(o: TinyOptions): string {
  const name = `${o.modelType ?? "llama"}-${o.dtype ?? "float32"}`;
  let path = written.get(name);
  if (!path) {
    path = join(root, name);
    writeTinyModel(path, { ...o, contextLength: 256 });
    written.set(name, path);
  }
  return path;
}

const prompt = [1, 17, 300, 4000, 25, 9, 880, 12000, 31, 7, 512, 640];
const probe = [0, 2, 3, 100, 4000, 20000];

describe("half-precision checkpoints", () => {
  test("float16 and bfloat16: our kernels' greedy tokens and first-step logits agree with MLX's own", () => {
    for (const dtype of ["float16", "bfloat16"] as const) {
      const lm = loadModel(tiny({ dtype, tied: false }));
      try {
        const ours = withKernels(true, () => firstStepLogits(lm, prompt, probe));
        const mlx = withKernels(false, () => firstStepLogits(lm, prompt, probe));
        // Half-precision logits: a bfloat16 one is rounded to 8 bits of mantissa.
        const tolerance = dtype === "float16" ? 1e-2 : 5e-2;
        ours.forEach((v, i) => expect(Math.abs(v - mlx[i]!)).toBeLessThanOrEqual(tolerance));
        if (dtype === "float16")
          expect(withKernels(true, () => greedy(lm, prompt, 24, { untilEos: false }))).toEqual(
            withKernels(false, () => greedy(lm, prompt, 24, { untilEos: false })),
          );
      } finally {
        lm.free();
      }
    }
  }, 120_000);

  test("mixture-of-experts models in bfloat16 and float16 generate on the CPU, close to their float32 weights", () => {
    // MLX's CPU gather_mm multiplies float32 alone: these failed at the first token.
    for (const modelType of ["mixtral", "qwen3_moe", "gpt_oss"] as const) {
      const wide = loadModel(tiny({ modelType }));
      const reference = firstStepLogits(wide, prompt, probe);
      wide.free();
      for (const dtype of ["bfloat16", "float16"] as const) {
        const lm = loadModel(tiny({ modelType, dtype }));
        try {
          expect(greedy(lm, prompt, 8, { untilEos: false })).toHaveLength(8);
          const logits = firstStepLogits(lm, prompt, probe);
          const tolerance = dtype === "float16" ? 2e-2 : 1e-1;
          logits.forEach((v, i) => expect(Math.abs(v - reference[i]!)).toBeLessThanOrEqual(tolerance));
        } finally {
          lm.free();
        }
      }
    }
  }, 120_000);
});

describe("a float16 model served", () => {
  let server: RunningServer;
  let openai: OpenAI;
  let model: string;

  beforeAll(() => {
    model = tiny({ dtype: "float16" });
    // No prefix cache: a repeated prompt would then prefill only its last token, a product of
    // another row count than the first time.
    server = serve({ defaultModel: model, maxBatch: 12, prefixCacheBytes: 0 });
    openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(() => server.stop());

  const ask = async (content: string) => {
    const r = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content }],
      temperature: 0,
      max_tokens: 32,
    });
    return r.choices[0]!.message.content;
  };

  test("each greedy answer is the same alone and among 11 others (decode rows past 8 take OpenBLAS)", async () => {
    const prompts = Array.from({ length: 12 }, (_, i) => `Question ${i}: name ${i + 2} colours.`);
    const alone: (string | null)[] = [];
    for (const p of prompts) alone.push(await ask(p));
    let largestBatch = 0;
    const together = Promise.all(prompts.map(ask));
    let running = true;
    together.finally(() => (running = false));
    while (running) {
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      const size = Number(/^mlx_batch_size\{[^}]*\} (\d+)/m.exec(metrics)?.[1] ?? 0);
      largestBatch = Math.max(largestBatch, size);
      await Bun.sleep(5);
    }
    expect(await together).toEqual(alone);
    // Decode steps of more than 8 rows really ran.
    expect(largestBatch).toBeGreaterThan(8);
  }, 300_000);
});
