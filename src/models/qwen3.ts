// Qwen3: a llama with RMSNorm on each head's queries and keys before the rotary embedding.
import { buildDecoder } from "./llama";
import type { Weights } from "./layers";

export const build = (w: Weights) => buildDecoder(w, { qkNorm: true });
