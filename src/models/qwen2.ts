// Qwen2 / Qwen2.5: a llama whose q, k and v projections carry biases (read from the
// weights when present, so nothing more is needed than the llama blocks).
import { buildDecoder } from "./llama";
import type { Weights } from "./layers";

export const build = (w: Weights) => buildDecoder(w);
