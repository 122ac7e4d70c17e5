// A tiny model that writes a given answer, for tests that need a model's exact text (prose
// before a tool call, say) where random weights would write gibberish.
import { readFileSync, writeFileSync } from "node:fs";
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
  writeScript(dir, ids, smolVocabSize);
}

/**
 * gpt-oss's harmony special tokens, added after SmolLM2's vocabulary; `<|channel|>` and
 * `<|message|>` twice, as a scripted model (whose next token depends on the last alone) needs
 * another id for each second marker of a message after its reasoning.
 */
export const harmonyTokens = [
  "<|start|>",
  "<|end|>",
  "<|message|>",
  "<|channel|>",
  "<|constrain|>",
  "<|return|>",
  "<|call|>",
  "<|channel|>",
  "<|message|>",
] as const;
/** The id of harmonyTokens[i]. */
export const harmonyId = (i: number) => smolVocabSize + i;

/**
 * A model with gpt-oss's special tokens and `chatTemplate` (a harmony one) whose greedy answer to
 * a prompt ending in `<|start|>assistant` is `script`: pieces of text (tokenized apart) or token
 * ids, then <|return|>. <|return|> and <|call|> end generation, as gpt-oss's generation config says.
 */
export function writeScriptedHarmonyModel(dir: string, script: (string | number)[], chatTemplate: string): void {
  const vocabSize = smolVocabSize + harmonyTokens.length;
  writeTinyModel(dir, { ...options, vocabSize, contextLength: 2048, chatTemplate });
  const tokenizerPath = join(dir, "tokenizer.json");
  const tokenizer = JSON.parse(readFileSync(tokenizerPath, "utf8"));
  tokenizer.added_tokens.push(
    ...harmonyTokens.map((content, i) => ({
      id: harmonyId(i),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
  );
  writeFileSync(tokenizerPath, JSON.stringify(tokenizer));
  const [returnId, callId] = [
    harmonyId(harmonyTokens.indexOf("<|return|>")),
    harmonyId(harmonyTokens.indexOf("<|call|>")),
  ];
  writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [returnId, callId] }));
  const lm = loadModel(dir);
  const ids = ["assistant", ...script, returnId].flatMap((piece) =>
    typeof piece === "number" ? [piece] : lm.tokenizer.encode(piece, { addSpecialTokens: false }),
  );
  lm.free();
  writeScript(dir, ids, vocabSize);
}

/** The weights that make a model of `vocabSize` go from each of `ids` to the next. */
function writeScript(dir: string, ids: number[], vocabSize: number): void {
  const options = { layers: 1, tied: false, vocabSize };
  const { hidden } = tinyDims;
  const embed = new Float32Array(vocabSize * hidden);
  const head = new Float32Array(vocabSize * hidden);
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
  replace("model.embed_tokens.weight", () => mx.array(embed, [vocabSize, hidden]));
  replace("lm_head.weight", () => mx.array(head, [vocabSize, hidden]));
  replace("model.norm.weight", () => mx.add(mx.zeros([hidden]), 1));
  for (const name of ["model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"]) {
    const weight = weights.get(name)!;
    replace(name, () => mx.multiply(weight, 0));
  }
  mx.evaluate(...weights.values());
  mx.saveSafetensors(join(dir, "model.safetensors"), weights, { format: "mlx" });
  for (const t of weights.values()) t.free();
}
