// Phi-3: a llama with fused projections (qkv_proj for queries, keys and values; gate_up_proj
// for the MLP) and LongRoPE ("longrope"/"su" rope scaling) for long contexts.
import { buildDecoder, fusedMlp } from "./llama";
import type { Weights } from "./layers";

export const build = (w: Weights) => buildDecoder(w, { fusedQkv: true }, (_, prefix) => fusedMlp(w, `${prefix}.mlp`));
