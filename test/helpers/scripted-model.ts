// A tiny model that writes a given answer, for tests that need a model's exact text (prose
// before a tool call, say) where random weights would write gibberish.
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/load";
import { smolVocabSize, tinyDims, tinyWeights, writeTinyModel } from "./tiny-model";

const options = { layers: 1, tied: false, vocabSize: smolVocabSize };

/**
 * Writes a model whose greedy answer to a chat prompt ending in "\n" (as SmolLM2's template's
 * do; `chatTemplate` replaces it) is `pieces` (each tokenized apart), then <|im_end|>. Its layers
 * add nothing, so each token's embedding alone picks the next: a token met twice goes on as it did
 * first (a grammar may still choose otherwise), and tokens not in the script have no preference.
 */
export function writeScriptedModel(dir: string, pieces: string[], chatTemplate?: string): void {
  writeTinyModel(dir, { ...options, contextLength: 2048, chatTemplate });
  const lm = loadModel(dir);
  const ids = ["\n", ...pieces, "<|im_end|>"].flatMap((piece) => lm.tokenizer.encode(piece));
  lm.free();
  const { hidden } = tinyDims;
  const embed = new Float32Array(smolVocabSize * hidden);
  const head = new Float32Array(smolVocabSize * hidden);
  const dimensions = new Map<number, number>();
  ids.slice(0, -1).forEach((id, i) => {
    if (dimensions.has(id)) return;
    const d = dimensions.size;
    if (d === hidden) throw new Error(`a script of more than ${hidden} distinct tokens`);
    dimensions.set(id, d);
    embed[id * hidden + d] = 1;
    head[ids[i + 1]! * hidden + d] = 4;
  });
  const weights = tinyWeights(options);
  const replace = (name: string, make: () => mx.MxArray) => {
    const old = weights.get(name)!;
    weights.set(name, mx.keep(mx.scope(make)));
    old.free();
  };
  replace("model.embed_tokens.weight", () => mx.array(embed, [smolVocabSize, hidden]));
  replace("lm_head.weight", () => mx.array(head, [smolVocabSize, hidden]));
  replace("model.norm.weight", () => mx.add(mx.zeros([hidden]), 1));
  for (const name of ["model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"]) {
    const weight = weights.get(name)!;
    replace(name, () => mx.multiply(weight, 0));
  }
  mx.evaluate(...weights.values());
  mx.saveSafetensors(join(dir, "model.safetensors"), weights, { format: "mlx" });
  for (const t of weights.values()) t.free();
}
