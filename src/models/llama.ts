// Llama (and SmolLM2, which is a llama): pre-norm blocks of grouped-query attention with
// rotary embeddings and a SwiGLU MLP. Mistral, Qwen2 and Qwen3 reuse these pieces.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import { embedding, fusedLinear, linear, rmsNorm, Weights } from "./layers";
import { decoder, type Block, type DecoderModel, type Mask } from "./model";
import { initializeRope } from "./rope";
import type { AttentionCache } from "./cache";

export interface AttentionOptions {
  /** Qwen3 normalises each head's queries and keys before the rotary embedding. */
  qkNorm?: boolean;
}

export function attention(w: Weights, prefix: string, c: ModelConfig, options: AttentionOptions = {}) {
  const qkvProj = fusedLinear(w, ["q_proj", "k_proj", "v_proj"].map((p) => `${prefix}.${p}`));
  const oProj = linear(w, `${prefix}.o_proj`);
  const qNorm = options.qkNorm ? rmsNorm(w, `${prefix}.q_norm`, c.rmsNormEps) : undefined;
  const kNorm = options.qkNorm ? rmsNorm(w, `${prefix}.k_norm`, c.rmsNormEps) : undefined;
  const rope = initializeRope({
    dims: c.headDim,
    base: c.ropeTheta,
    traditional: c.ropeTraditional,
    scaling: c.ropeScaling,
    freqs: w.optional("rope_freqs"),
  });
  const scale = c.headDim ** -0.5;

  // [B, L, heads * dim] → [B, heads, L, dim], normalising per head first where asked.
  const heads = (x: MxArray, n: number, norm?: (x: MxArray) => MxArray) => {
    const [b, l] = x.shape as [number, number];
    const split = mx.reshape(x, [b, l, n, -1]);
    return mx.transpose(norm ? norm(split) : split, [0, 2, 1, 3]);
  };

  return (x: MxArray, mask: Mask, cache: AttentionCache): MxArray => {
    const [b, l] = x.shape as [number, number];
    const [q, k, v] = qkvProj(x) as [MxArray, MxArray, MxArray];
    let queries = heads(q, c.numAttentionHeads, qNorm);
    let keys = heads(k, c.numKeyValueHeads, kNorm);
    let values = heads(v, c.numKeyValueHeads);
    queries = rope(queries, cache.ropeOffset);
    keys = rope(keys, cache.ropeOffset);
    const out = cache.attention(queries, keys, values, scale, mask);
    return oProj(mx.reshape(mx.transpose(out, [0, 2, 1, 3]), [b, l, -1]));
  };
}

export function mlp(w: Weights, prefix: string) {
  const gateUp = fusedLinear(w, [`${prefix}.gate_proj`, `${prefix}.up_proj`]);
  const down = linear(w, `${prefix}.down_proj`);
  return (x: MxArray) => {
    const [gate, up] = gateUp(x) as [MxArray, MxArray];
    return down(mx.fast.siluMul(gate, up));
  };
}

export function block(w: Weights, prefix: string, c: ModelConfig, options: AttentionOptions = {}): Block {
  const inputNorm = rmsNorm(w, `${prefix}.input_layernorm`, c.rmsNormEps);
  const postNorm = rmsNorm(w, `${prefix}.post_attention_layernorm`, c.rmsNormEps);
  const selfAttn = attention(w, `${prefix}.self_attn`, c, options);
  const feedForward = mlp(w, `${prefix}.mlp`);
  return (x, mask, cache) => {
    const h = mx.add(x, selfAttn(inputNorm(x), mask, cache));
    return mx.add(h, feedForward(postNorm(h)));
  };
}

export function buildDecoder(w: Weights, options: AttentionOptions = {}): DecoderModel {
  const c = w.config;
  const embed = embedding(w, "model.embed_tokens");
  const norm = rmsNorm(w, "model.norm", c.rmsNormEps);
  const lmHead = c.tieWordEmbeddings || !w.has("lm_head.weight") ? embed.asLinear : linear(w, "lm_head");
  const blocks = Array.from({ length: c.numHiddenLayers }, (_, i) => block(w, `model.layers.${i}`, c, options));
  return decoder({ config: c, embed: embed.lookup, blocks, head: (h) => lmHead(norm(h)) });
}

export const build = (w: Weights): DecoderModel => buildDecoder(w);
