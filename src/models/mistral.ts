// Mistral: a llama with its own defaults (untied output layer, rope base 1e6 in v0.2+).
// The sliding window of v0.1 is not applied: like mlx-lm, we attend over the full context.
import { buildDecoder } from "./llama";
import type { Weights } from "./layers";

export const build = (w: Weights) => buildDecoder(w);
