// Gemma 3 as a K-quant GGUF serves it (the `gemma3` alias: a Q4_K_M file of Q8_0, Q5_0, Q4_K and
// Q6_K tensors), end to end. Its local layers attend within a sliding window; under
// --max-kv-size every layer's cache rotates, and a local layer must still see only its window,
// counted in positions (a rotated cache's columns are not positions: its sinks sit next to the
// newest ones). Checked on a tiny gemma3 against full caches masked as rotation would, whose
// local layers narrow the mask by position, and on the real model from the command line. And a
// split across processes plans with the bytes each tensor takes once loaded, not in the file
// (Q5_0 held at 8 bits, Q6_K at 16).
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateTokens } from "../src/engine/batch";
import { defaultSampling } from "../src/engine/sampling";
import * as mx from "../src/mlx";
import { convertGGUF } from "../src/models/convert";
import { buildModel, parseConfig, Weights, type DecoderModel } from "../src/models";
import type { KvQuantization } from "../src/models/cache";
import { readGGUFHeader } from "../src/models/gguf-header";
import { loadedBytes, loadGGUFTensors } from "../src/models/gguf-tensors";
import { readLayout } from "../src/models/layout";
import { stageHolds } from "../src/models/stage";
import { resolveModelPath } from "../src/store/resolve";
import { cliRunner } from "./helpers/cli";
import { rotationReference } from "./helpers/rotation";
import { decodeJoining } from "./helpers/generate";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

const WINDOW = 6;
let model: DecoderModel;
beforeAll(() => {
  const o = { modelType: "gemma3_text" as const, window: WINDOW, layers: 4, seed: 11 };
  model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
});

const reference = (prompt: number[], maxTokens: number, maxSize: number, kv?: KvQuantization) =>
  rotationReference(model, prompt, maxTokens, maxSize, kv);

function greedy(prompt: number[], maxTokens: number, maxKvSize: number): number[] {
  const request = { promptIds: prompt, sampling: defaultSampling, maxTokens };
  return [...generateTokens(model, request, undefined, { maxKvSize })].map((e) => e.token);
}

const prompt = (length: number, seed: number) => Array.from({ length }, (_, i) => (i * 37 + seed * 11) % 250);

describe("gemma3's sliding-window layers under --max-kv-size", () => {
  // Sizes below the window (a sink falls out of the window) and above it (older positions do).
  for (const size of [5, 9, 16])
    test(`a rotating cache of ${size} (window ${WINDOW}): each local layer sees its window by position`, () => {
      for (const p of [prompt(3, 1), prompt(20, 2), prompt(45, 3)])
        expect(greedy(p, 60, size)).toEqual(reference(p, 60, size));
    });

  test("batched, prefilled in chunks, sequences joining at different lengths: each as the reference", () => {
    const plan = [
      { prompt: prompt(30, 4), maxTokens: 50, joinAt: 0 },
      { prompt: prompt(2, 5), maxTokens: 40, joinAt: 3 },
      { prompt: prompt(13, 6), maxTokens: 45, joinAt: 11 },
    ];
    const out = decodeJoining(model, plan, { maxBatch: 4, prefillChunk: 7, maxKvSize: 10 });
    expect(out).toEqual(plan.map((r) => reference(r.prompt, r.maxTokens, 10)));
  });

  test("the real gemma3 GGUF: a prompt past its 512-position window and past the cache size is answered", async () => {
    const run = cliRunner(process.env.MLX_HOME ?? "");
    const records = Array.from({ length: 60 }, (_, i) => `Record ${i}: item ${(i * 7) % 13} moved to shelf ${i % 5}.`);
    const { code, stdout, stderr } = await run([
      "run",
      "-m",
      "gemma3",
      "--temp",
      "0",
      "--max-kv-size",
      "300",
      "--max-tokens",
      "8",
      "--json",
      records.join("\n"),
    ]);
    expect(stderr).not.toContain("error");
    expect(code).toBe(0);
    const result = JSON.parse(stdout) as { token_ids: number[]; prompt_token_ids: number[] };
    expect(result.prompt_token_ids.length).toBeGreaterThan(512);
    expect(result.token_ids.length).toBe(8);
  }, 600_000);
});

/** The bytes MLX holds for each GGUF tensor once loaded: its weight, and its scales and biases when kept quantized. */
function heldBytes(path: string, wanted?: (name: string) => boolean): Map<string, number> {
  const loaded = loadGGUFTensors(path, readGGUFHeader(path), wanted);
  const held = new Map<string, number>();
  for (const [name, t] of loaded.tensors) {
    const weight = name.replace(/\.(?:scales|biases)$/, ".weight");
    const key = loaded.tensors.has(weight) ? weight : name.replace(/\.(?:scales|biases)$/, "");
    held.set(key, (held.get(key) ?? 0) + t.nbytes);
    t.free();
  }
  return held;
}

describe("the bytes a split across processes plans with", () => {
  test("each GGUF type's tensor counts the bytes it takes once loaded", () => {
    const path = join(import.meta.dir, "fixtures", "gguf-quants.gguf");
    const header = readGGUFHeader(path);
    const held = heldBytes(path, (name) => name !== "IQ2_XXS"); // the fixture's unreadable one
    const readable = header.tensors.filter((t) => held.has(t.name));
    expect(readable.map((t) => [t.type, loadedBytes(t)])).toEqual(readable.map((t) => [t.type, held.get(t.name)!]));
    expect(readable.map((t) => t.type)).toEqual(
      expect.arrayContaining(["Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q3_K", "MXFP4"]),
    );
  });

  test("gemma3: the layers a later rank holds weigh what it loads", async () => {
    const path = await resolveModelPath("gemma3");
    const layout = readLayout(path);
    const stage = { start: 1, end: layout.numLayers, ends: false };
    const held = heldBytes(path, (name) => stageHolds(stage, name));
    const loaded = [...held.values()].reduce((a, b) => a + b, 0);
    const planned = layout.layerBytes.slice(1).reduce((a, b) => a + b, 0) + layout.sharedBytes;
    expect(planned).toBe(loaded);
  }, 600_000);
});

describe("mlx convert gemma3", () => {
  test("--bits 8 --group-size 32 keeps the Q5_0 layers (held at 8 bits in groups of 32) exactly as read", async () => {
    const path = await resolveModelPath("gemma3");
    const header = readGGUFHeader(path);
    const dir = mkdtempSync(join(tmpdir(), "mlx-kquants-"));
    try {
      await convertGGUF(path, join(dir, "out"), { bits: 8, groupSize: 32 });
      const converted = mx.loadSafetensors(join(dir, "out", "model.safetensors")).tensors;
      const read = loadGGUFTensors(path, header, (name) => name === "blk.0.attn_q.weight").tensors;
      expect(header.tensors.find((t) => t.name === "blk.0.attn_q.weight")!.type).toBe("Q5_0");
      for (const part of ["weight", "scales", "biases"]) {
        const [got, want] = [
          converted.get(`model.layers.0.self_attn.q_proj.${part}`)!,
          read.get(`blk.0.attn_q.${part}`)!,
        ];
        expect(got.shape).toEqual(want.shape);
        expect(Boolean(mx.scope(() => mx.all(mx.equal(got, want)).item()))).toBe(true);
      }
      for (const t of [...converted.values(), ...read.values()]) t.free();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 600_000);
});
