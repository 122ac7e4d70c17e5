// Mixtral: Mistral's attention with a sparse mixture of experts in every layer
// (block_sparse_moe; the experts' w1/w3/w2 are the gate/up/down projections).
import { buildDecoder } from "./llama";
import type { Weights } from "./layers";
import { sparseMoE, stackExperts } from "./moe";

export function build(w: Weights) {
  const raw = w.config.raw;
  const experts = Number(raw.num_local_experts ?? 8);
  const topK = Number(raw.num_experts_per_tok ?? 2);
  return buildDecoder(w, {}, (_, prefix) => {
    for (const [name, proj] of [
      ["w1", "gate_proj"],
      ["w3", "up_proj"],
      ["w2", "down_proj"],
    ] as const) {
      stackExperts(
        w,
        `${prefix}.block_sparse_moe.switch_mlp.${proj}`,
        experts,
        (e) => `${prefix}.block_sparse_moe.experts.${e}.${name}`,
      );
    }
    return sparseMoE(w, `${prefix}.block_sparse_moe`, { experts, topK, softmaxFirst: false });
  });
}
