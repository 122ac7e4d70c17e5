// LoRA/DoRA adapters against mlx-lm: random adapters for tiny models (plain, 4-bit, DoRA,
// biased projections) and for the default model (its GGUF as the base); our greedy tokens with
// the adapter equal mlx-lm's generate with adapter_path, and a model fused with `mlx fuse`'s
// code equals mlx-lm's fuse (and, unquantized, the adapter applied at run time). mlx-lm's
// outputs were recorded by scripts/parity-adapters.sh (test/fixtures/parity-adapters-mlx-lm.json).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
});
