// Fill-in-the-middle (Ollama's /api/generate `suffix`): code models are trained to write what goes
// between a prefix and a suffix when both are given around their FIM tokens, in prefix-suffix-middle
// order; the model then writes the middle. A model whose vocabulary has none of these cannot.

export interface FimTokens {
  prefix: string;
  suffix: string;
  middle: string;
}

/** The FIM tokens of the code models that have them, each set as their tokenizers spell it. */
const FIM_TOKENS: FimTokens[] = [
  // Qwen2.5-Coder, Qwen3-Coder, CodeGemma.
  { prefix: "<|fim_prefix|>", suffix: "<|fim_suffix|>", middle: "<|fim_middle|>" },
  // StarCoder and StarCoder2, Granite Code, Stable Code.
  { prefix: "<fim_prefix>", suffix: "<fim_suffix>", middle: "<fim_middle>" },
  // DeepSeek-Coder (the hole is the suffix's end, the end the middle's start).
  {
    prefix: "<\uff5cfim\u2581begin\uff5c>",
    suffix: "<\uff5cfim\u2581hole\uff5c>",
    middle: "<\uff5cfim\u2581end\uff5c>",
  },
];

/** The FIM tokens of a vocabulary, where `isToken` says which tokens it has as tokens of their own. */
export function fimTokens(isToken: (token: string) => boolean): FimTokens | undefined {
  return FIM_TOKENS.find((t) => isToken(t.prefix) && isToken(t.suffix) && isToken(t.middle));
}

/** The prompt that asks for the text between `prefix` and `suffix`. */
export const fimPrompt = (tokens: FimTokens, prefix: string, suffix: string): string =>
  `${tokens.prefix}${prefix}${tokens.suffix}${suffix}${tokens.middle}`;
