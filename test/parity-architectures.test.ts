// Each architecture against mlx-lm on a tiny random-weight model of it (plain and quantized):
// the test writes the model, and mlx-lm's outputs on the same directory were recorded by
// scripts/parity-tiny.sh (test/fixtures/parity-tiny-mlx-lm.json). First-step logits agree
// within 1e-3 and greedy tokens are identical.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel } from "../src/models/load";
import { firstStepLogits, greedy, withKernels } from "./helpers/parity";
import { writeTinyModel } from "./helpers/tiny-model";
import { tinyParityModels, tinyParityPrompt, tinyParityTokens } from "./helpers/tiny-parity";
import reference from "./fixtures/parity-tiny-mlx-lm.json";

const LOGIT_TOLERANCE = 1e-3;
const dir = mkdtempSync(join(tmpdir(), "mlx-tiny-parity-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe(`tiny models against mlx-lm ${reference.mlx_lm} (MLX ${reference.mlx})`, () => {
  test("every tiny model has a recording, and every recording a model", () => {
    expect(Object.keys(reference.models).sort()).toEqual(Object.keys(tinyParityModels).sort());
  });

  for (const [name, options] of Object.entries(tinyParityModels)) {
    test(`${name}: first-step logits within ${LOGIT_TOLERANCE}, ${tinyParityTokens} greedy tokens identical`, () => {
      const expected = reference.models[name as keyof typeof reference.models];
      const path = join(dir, name);
      writeTinyModel(path, options);
      // The recording is of these very weights (same seed, same MLX): otherwise re-record.
      const sha256 = new Bun.CryptoHasher("sha256").update(readFileSync(join(path, "model.safetensors"))).digest("hex");
      expect(sha256, "the tiny model differs from the recorded one; run scripts/parity-tiny.sh").toBe(
        expected.weights_sha256,
      );
      const lm = loadModel(path);
      try {
        // MLX's own kernels: exactly mlx-lm's numbers (ours sum in another order; see parity.test.ts).
        withKernels(false, () => {
          const logits = firstStepLogits(
            lm,
            tinyParityPrompt,
            expected.top_logits.map(([id]) => id!),
          );
          logits.forEach((v, i) =>
            expect(Math.abs(v - expected.top_logits[i]![1]!)).toBeLessThanOrEqual(LOGIT_TOLERANCE),
          );
          // EOS is not special here (as in mlx-lm's generate_step): random weights may well produce it.
          expect(greedy(lm, tinyParityPrompt, tinyParityTokens, { untilEos: false })).toEqual(expected.output_ids);
        });
      } finally {
        lm.free();
      }
    }, 120_000);
  }
});
