// LoRA/DoRA adapters against mlx-lm: random adapters for tiny models (plain, 4-bit, DoRA,
// biased projections) and for the default model (its GGUF as the base); our greedy tokens with
// the adapter equal mlx-lm's generate with adapter_path, and a model fused with `mlx fuse`'s
// code equals mlx-lm's fuse (and, unquantized, the adapter applied at run time). mlx-lm's
// outputs were recorded by scripts/parity-adapters.sh (test/fixtures/parity-adapters-mlx-lm.json).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../src/mlx";
import { fuseAdapter } from "../src/models/fuse";
import { loadModel, type LoadedModel } from "../src/models/load";
import { loadAdapter } from "../src/models/lora";
import { resolveModelPath } from "../src/store/resolve";
import {
  adapterParityCases,
  adapterParityPrompt,
  adapterParityTokens,
  smollm2Adapter,
  smollm2AdapterTokens,
} from "./helpers/adapter-parity";
import { cliRunner } from "./helpers/cli";
import { greedy, withKernels } from "./helpers/parity";
import { writeRandomAdapter } from "./helpers/random-adapter";
import { writeTinyModel } from "./helpers/tiny-model";
import reference from "./fixtures/parity-adapters-mlx-lm.json";

const dir = mkdtempSync(join(tmpdir(), "mlx-adapter-parity-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha256 = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");

/** `lm` with the adapter in `adapterDir`, freed after `fn`. */
function withAdapter<T>(path: string, adapterDir: string, fn: (lm: LoadedModel) => T): T {
  const lm = loadModel(path);
  try {
    lm.adapter = loadAdapter(adapterDir, lm.weights.lora);
    return fn(lm);
  } finally {
    lm.free();
  }
}

function withModel<T>(path: string, fn: (lm: LoadedModel) => T): T {
  const lm = loadModel(path);
  try {
    return fn(lm);
  } finally {
    lm.free();
  }
}

describe(`adapters against mlx-lm ${reference.mlx_lm} (MLX ${reference.mlx})`, () => {
  test("every case has a recording, and every recording a case", () => {
    expect(Object.keys(reference.tiny).sort()).toEqual(Object.keys(adapterParityCases).sort());
  });

  for (const [name, { model, adapter }] of Object.entries(adapterParityCases)) {
    test(`${name}: greedy tokens with the adapter, and fused, as mlx-lm's`, async () => {
      const expected = reference.tiny[name as keyof typeof reference.tiny];
      const modelDir = join(dir, name, "model");
      const adapterDir = join(dir, name, "adapter");
      writeTinyModel(modelDir, model);
      writeRandomAdapter(adapterDir, adapter);
      expect(sha256(join(adapterDir, "adapters.safetensors")), "re-record with scripts/parity-adapters.sh").toBe(
        expected.adapter_sha256,
      );
      const fusedDir = join(dir, name, "fused");
      await fuseAdapter(modelDir, adapterDir, fusedDir);
      // MLX's own kernels: exactly mlx-lm's numbers.
      withKernels(false, () => {
        const run = (lm: LoadedModel) => greedy(lm, adapterParityPrompt, adapterParityTokens, { untilEos: false });
        const adapted = withAdapter(modelDir, adapterDir, run);
        expect(adapted).toEqual(expected.output_ids);
        const fused = withModel(fusedDir, run);
        expect(fused).toEqual(expected.fused_output_ids);
        // Unquantized, fusing changes nothing; quantized, the merged weights are rounded to 4 bits again.
        if (!model.quantize) expect(fused).toEqual(adapted);
        // And the adapter changes the answer at all.
        expect(withModel(modelDir, run)).not.toEqual(adapted);
      });
    }, 120_000);
  }

  test("the default model (its GGUF) with an adapter: mlx-lm's greedy answers, also fused", async () => {
    const adapterDir = join(dir, "smollm2-adapter");
    writeRandomAdapter(adapterDir, smollm2Adapter);
    expect(sha256(join(adapterDir, "adapters.safetensors"))).toBe(reference.smollm2.adapter_sha256);
    const gguf = await resolveModelPath(undefined);
    const fusedDir = join(dir, "smollm2-fused");
    await fuseAdapter(gguf, adapterDir, fusedDir);
    withKernels(false, () => {
      const answers = (lm: LoadedModel) =>
        reference.smollm2.cases.map((c) => greedy(lm, c.prompt_ids, smollm2AdapterTokens));
      expect(withAdapter(gguf, adapterDir, answers)).toEqual(reference.smollm2.cases.map((c) => c.output_ids));
      // Fused: the first answer (the fuse is what is checked; every answer costs seconds).
      const first = reference.smollm2.cases[0]!;
      const fused = withModel(fusedDir, (lm) => greedy(lm, first.prompt_ids, smollm2AdapterTokens));
      expect(fused).toEqual(first.fused_output_ids);
    });
  }, 600_000);

  test("the default model fused with --de-quantize: float weights exactly the quantized fuse's, no quantization, the adapter's answer", async () => {
    const adapterDir = join(dir, "smollm2-adapter-dequantized");
    writeRandomAdapter(adapterDir, smollm2Adapter);
    const gguf = await resolveModelPath(undefined);
    const mlx = cliRunner(join(dir, "home-dequantized"));
    const fuse = async (...flags: string[]) => {
      const r = await mlx(["fuse", gguf, "--adapter", adapterDir, ...flags]);
      expect(r.stderr).not.toContain("error");
      expect(r.code).toBe(0);
      return r.stdout.trim();
    };
    const quantizedDir = await fuse("smollm2-fused");
    const dequantizedDir = await fuse("--de-quantize", "smollm2-dequantized");
    const config = JSON.parse(readFileSync(join(dequantizedDir, "config.json"), "utf8"));
    expect(config.quantization).toBeUndefined();
    expect(config.quantization_config).toBeUndefined();
    const { quantization } = JSON.parse(readFileSync(join(quantizedDir, "config.json"), "utf8"));
    const quantized = mx.loadSafetensors(join(quantizedDir, "model.safetensors")).tensors;
    const dequantized = mx.loadSafetensors(join(dequantizedDir, "model.safetensors")).tensors;
    const adapted = new Set(Object.keys(smollm2Adapter.layers));
    try {
      // Every layer's weight as floats: no scales, no packed codes.
      expect([...dequantized.keys()].filter((n) => n.endsWith(".scales") || n.endsWith(".biases"))).toEqual([]);
      expect([...dequantized.values()].filter((t) => !mx.isFloating(t.dtype)).length).toBe(0);
      const layers = [...quantized.keys()].filter((n) => n.endsWith(".scales")).map((n) => n.slice(0, -7));
      expect(layers.length).toBeGreaterThan(200);
      for (const prefix of layers) {
        const [weight, scales, biases] = ["weight", "scales", "biases"].map((s) => quantized.get(`${prefix}.${s}`)!);
        // A layer quantized otherwise (the embedding in 8 bits) has its own entry, as mlx-lm writes it.
        const own = quantization[prefix] ?? quantization;
        const q = { groupSize: own.group_size, bits: own.bits };
        const [gap, step] = mx.scope(() => {
          const float = dequantized.get(`${prefix}.weight`)!;
          const gap = mx.max(
            mx.abs(mx.subtract(mx.astype(mx.dequantize(weight!, scales!, biases, q), float.dtype), float)),
          );
          return [gap.item(), mx.max(mx.abs(scales!)).item()];
        });
        // The layers the adapter left are the very values the quantized fuse stands for; the
        // adapted ones are the fused floats, which the quantized fuse rounded to its 4-bit steps.
        if (adapted.has(prefix)) expect(gap).toBeLessThanOrEqual(step);
        else expect(gap).toBe(0);
      }
    } finally {
      for (const t of [...quantized.values(), ...dequantized.values()]) t.free();
    }
    // It loads, and answers as the adapter applied at run time does (mlx-lm's answer).
    withKernels(false, () => {
      const first = reference.smollm2.cases[0]!;
      expect(withModel(dequantizedDir, (lm) => greedy(lm, first.prompt_ids, smollm2AdapterTokens))).toEqual(
        first.output_ids,
      );
    });
  }, 600_000);
});
