// Phi-3 (and Phi-4-mini): a llama with fused projections (qkv_proj for queries, keys and values;
// gate_up_proj for the MLP), LongRoPE ("longrope"/"su" rope scaling) for long contexts, and the
// rotary embedding on the first partial_rotary_factor of each head's features only (Phi-4-mini's 0.75).
import { buildDecoder, fusedMlp } from "./llama";
import type { Weights } from "./layers";

export function build(w: Weights) {
  const c = w.config;
  const factor = typeof c.raw.partial_rotary_factor === "number" ? c.raw.partial_rotary_factor : 1;
  const ropeDims = Math.floor(c.headDim * factor);
  return buildDecoder(w, { fusedQkv: true, ropeDims }, (_, prefix) => fusedMlp(w, `${prefix}.mlp`));
}
