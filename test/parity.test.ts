// Our outputs against mlx-lm's, on the default model (SmolLM2-135M-Instruct): the same chat
// prompt tokens, the same first-step logits within a tolerance, and token-for-token identical
// greedy output — from the converted MLX directory and from the GGUF itself.
// The expected values were recorded with mlx-lm (scripts/reference/mlx_lm_greedy.py; re-run
// both with scripts/parity.sh). Needs the default model: fetched into the store on first use.
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { chatTokens } from "../src/engine/prompt";
import { loadModel, type LoadedModel } from "../src/models/load";
import { convertGGUF } from "../src/models/convert";
import { firstStepLogits, greedy } from "./helpers/parity";
import { resolveModelPath } from "../src/store/resolve";
import { storeRoot } from "../src/store/paths";
import reference from "./fixtures/parity-smollm2-mlx-lm.json";

/** Largest difference allowed between our first-step logits and mlx-lm's (they are f32). */
const LOGIT_TOLERANCE = 1e-3;

interface Case {
  prompt: string;
  prompt_ids: number[];
  output_ids: number[];
  top_logits: [number, number][];
}

const cases = reference.cases as unknown as Case[];
let gguf: LoadedModel;
let directory: LoadedModel;

beforeAll(async () => {
  const ggufPath = await resolveModelPath(undefined);
  const dir = join(storeRoot(), "test-parity", "smollm2-mlx");
  if (!existsSync(join(dir, "config.json"))) convertGGUF(ggufPath, dir, { force: true });
  gguf = loadModel(ggufPath);
  directory = loadModel(dir);
}, 600_000);

describe(`parity with mlx-lm ${reference.mlx_lm} (MLX ${reference.mlx})`, () => {
  test("chat prompts tokenize to mlx-lm's ids, from the directory and from the GGUF", () => {
    for (const c of cases) {
      const messages = [{ role: "user", content: c.prompt }];
      expect(chatTokens(directory.tokenizer, messages)).toEqual(c.prompt_ids);
      expect(chatTokens(gguf.tokenizer, messages)).toEqual(c.prompt_ids);
    }
  }, 60_000);

  test(`first-step logits agree within ${LOGIT_TOLERANCE}`, () => {
    for (const c of cases.slice(0, 2)) {
      const ids = c.top_logits.map(([id]) => id);
      for (const lm of [directory, gguf]) {
        const ours = firstStepLogits(lm, c.prompt_ids, ids);
        ours.forEach((v, i) => expect(Math.abs(v - c.top_logits[i]![1])).toBeLessThanOrEqual(LOGIT_TOLERANCE));
      }
    }
  }, 300_000);

  for (const [i, c] of cases.entries()) {
    test(`greedy output is identical: ${c.prompt.slice(0, 40)}`, () => {
      const fromDirectory = greedy(directory, c.prompt_ids, reference.max_tokens);
      expect(fromDirectory).toEqual(c.output_ids);
      // The GGUF path must agree with the directory path; checked on every other prompt to keep CI short.
      if (i % 2 === 0) expect(greedy(gguf, c.prompt_ids, reference.max_tokens)).toEqual(c.output_ids);
    }, 300_000);
  }
});
