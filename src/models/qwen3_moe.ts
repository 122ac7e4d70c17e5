// Qwen3-MoE: Qwen3's attention (q/k norms) with sparse mixture-of-experts feed-forward layers
// (every `decoder_sparse_step`-th layer, except `mlp_only_layers`, which keep the dense MLP).
import { buildDecoder } from "./llama";
import type { Weights } from "./layers";
import { sparseMoE, stackExperts } from "./moe";

export function build(w: Weights) {
  const raw = w.config.raw;
  const experts = Number(raw.num_experts ?? 0);
  const step = Number(raw.decoder_sparse_step ?? 1);
  const denseLayers = new Set(Array.isArray(raw.mlp_only_layers) ? (raw.mlp_only_layers as number[]) : []);
  const topK = Number(raw.num_experts_per_tok);
  return buildDecoder(w, { qkNorm: true }, (layer, prefix) => {
    if (denseLayers.has(layer) || experts === 0 || (layer + 1) % step !== 0) return undefined;
    for (const proj of ["gate_proj", "up_proj", "down_proj"]) {
      stackExperts(w, `${prefix}.mlp.switch_mlp.${proj}`, experts, (e) => `${prefix}.mlp.experts.${e}.${proj}`);
    }
    return sparseMoE(w, `${prefix}.mlp`, { experts, topK, softmaxFirst: true, normTopK: raw.norm_topk_prob === true });
  });
}
