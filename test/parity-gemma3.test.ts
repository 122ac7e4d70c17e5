// gemma3 on its real weights against mlx-lm: Gemma 3 270M (the `gemma3` alias, a Q4_K_M GGUF
// fetched into the store on first use) converted by `mlx convert` (its Q5_0 and Q6_K layers
// re-quantized to 4-bit; Q4_K and Q8_0 kept as they are), loaded by both. Raw prompts (the GGUF has no chat template): the same prompt ids,
// first-step logits within 1e-3, 48 greedy tokens identical. Recorded with
// scripts/reference/mlx_lm_greedy.py --raw (scripts/parity.sh).
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { convertGGUF } from "../src/models/convert";
import { loadModel, type LoadedModel } from "../src/models/load";
import { storeRoot } from "../src/store/paths";
import { resolveModelPath } from "../src/store/resolve";
import { firstStepLogits, greedy, withKernels } from "./helpers/parity";
import reference from "./fixtures/parity-gemma3-mlx-lm.json";

const LOGIT_TOLERANCE = 1e-3;
let lm: LoadedModel;

beforeAll(async () => {
  const dir = join(storeRoot(), "test-parity", "gemma3-mlx");
  if (!existsSync(join(dir, "config.json"))) await convertGGUF(await resolveModelPath("gemma3"), dir, { force: true });
  lm = loadModel(dir);
}, 600_000);

describe(`gemma3 270M against mlx-lm ${reference.mlx_lm} (MLX ${reference.mlx})`, () => {
  test("the converted model is 4-bit where the GGUF had K-quants", () => {
    expect(lm.config.quantization).toEqual({ groupSize: 64, bits: 4, mode: "affine" });
    expect(lm.weightBytes).toBeLessThan(260e6);
  });

  for (const c of reference.cases) {
    test(`${reference.max_tokens} greedy tokens identical, logits within ${LOGIT_TOLERANCE}: ${c.prompt.slice(0, 40)}`, () => {
      expect(lm.tokenizer.encode(c.prompt)).toEqual(c.prompt_ids);
      // MLX's own kernels: exactly mlx-lm's numbers (ours sum in another order; see parity.test.ts).
      withKernels(false, () => {
        const logits = firstStepLogits(
          lm,
          c.prompt_ids,
          c.top_logits.map(([id]) => id!),
        );
        logits.forEach((v, i) => expect(Math.abs(v - c.top_logits[i]![1]!)).toBeLessThanOrEqual(LOGIT_TOLERANCE));
        expect(greedy(lm, c.prompt_ids, reference.max_tokens)).toEqual(c.output_ids);
      });
    }, 600_000);
  }
});
