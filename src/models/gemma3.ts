// Gemma 3 (text), as mlx-lm's gemma3_text: local sliding-window attention layers with a global
// one every `sliding_window_pattern` layers (each with its own rotary base), q/k norms, norms
// after attention and after the MLP too, a GeGLU MLP, embeddings scaled by √hidden, and RMS
// norms that scale by (1 + weight).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { ropeSection, type RopeScaling } from "./config";
import { KVCache } from "./cache";
import { embedding, linear, Weights } from "./layers";
import { attention, endlessDecoder, heldElsewhere, mlp } from "./llama";
import { decoder, type Block, type DecoderModel } from "./model";
import { SlidingKVCache, slidingLayerMask } from "./sliding-cache";

/** Gemma's RMS norm multiplies by (1 + weight): the weights are stored as offsets from 1. */
export function gemmaNorm(w: Weights, prefix: string, eps: number): (x: MxArray) => MxArray {
  const weight = w.derive(() => mx.add(w.get(`${prefix}.weight`), 1));
  return (x) => mx.fast.rmsNorm(x, weight, eps);
}

/** x + y, kept within float16's range when the model runs in float16 (Gemma's activations can overflow it). */
function clipResidual(x: MxArray, y: MxArray): MxArray {
  if (x.dtype !== mx.Dtype.float16) return mx.add(x, y);
  const bound = mx.largestFinite(mx.Dtype.float16);
  const sum = mx.add(mx.astype(x, mx.Dtype.float32), mx.astype(y, mx.Dtype.float32));
  return mx.astype(mx.minimum(mx.maximum(sum, -bound), bound), mx.Dtype.float16);
}

/** The nearest bfloat16 to a number (round to nearest even), as mlx-lm rounds the embedding scale. */
function toBfloat16(value: number): number {
  const bits = new Uint32Array(new Float32Array([value]).buffer)[0]!;
  const rounded = (bits + 0x7fff + ((bits >>> 16) & 1)) & 0xffff0000;
  return new Float32Array(new Uint32Array([rounded >>> 0]).buffer)[0]!;
}

export interface Gemma3Options {
  slidingWindow: number;
  slidingWindowPattern: number;
  queryPreAttnScalar: number;
  ropeLocalBase: number;
  finalLogitSoftcapping?: number;
}

const slidingTheta = (raw: Record<string, unknown>): number | undefined => {
  const theta = ropeSection(raw, "sliding_attention")?.rope_theta;
  return typeof theta === "number" ? theta : undefined;
};

export function gemma3Options(raw: Record<string, unknown>): Gemma3Options {
  const num = (key: string, fallback: number) => (typeof raw[key] === "number" ? (raw[key] as number) : fallback);
  return {
    slidingWindow: num("sliding_window", 512),
    slidingWindowPattern: num("sliding_window_pattern", 6),
    queryPreAttnScalar: num("query_pre_attn_scalar", 256),
    // transformers 5 writes it as the sliding layers' own rope_theta.
    ropeLocalBase: num("rope_local_base_freq", slidingTheta(raw) ?? 10_000),
    finalLogitSoftcapping: typeof raw.final_logit_softcapping === "number" ? raw.final_logit_softcapping : undefined,
  };
}

export function build(w: Weights): DecoderModel {
  const c = w.config;
  const o = gemma3Options(c.raw);
  const isSliding = (layer: number) => (layer + 1) % o.slidingWindowPattern !== 0;
  const stage = w.stage ?? { start: 0, end: c.numHiddenLayers, ends: true };

  const block = (i: number): Block => {
    const p = `model.layers.${i}`;
    const sliding = isSliding(i);
    const rope: { base: number; scaling?: RopeScaling } = sliding
      ? { base: o.ropeLocalBase }
      : { base: c.ropeTheta, scaling: c.ropeScaling };
    const selfAttn = attention(w, `${p}.self_attn`, c, {
      qkNorm: true,
      norm: gemmaNorm,
      scale: o.queryPreAttnScalar ** -0.5,
      rope,
    });
    const feedForward = mlp(w, `${p}.mlp`, "gelu_approx");
    const [inputNorm, postAttnNorm, preFfnNorm, postFfnNorm] = [
      "input_layernorm",
      "post_attention_layernorm",
      "pre_feedforward_layernorm",
      "post_feedforward_layernorm",
    ].map((n) => gemmaNorm(w, `${p}.${n}`, c.rmsNormEps)) as [
      (x: MxArray) => MxArray,
      (x: MxArray) => MxArray,
      (x: MxArray) => MxArray,
      (x: MxArray) => MxArray,
    ];
    return (x, mask, cache) => {
      const m = sliding ? slidingLayerMask(mask, cache, x.shape[1]!, o.slidingWindow) : mask;
      const h = clipResidual(x, postAttnNorm(selfAttn(inputNorm(x), m, cache)));
      return clipResidual(h, postFfnNorm(feedForward(preFfnNorm(h))));
    };
  };

  const blocks = Array.from({ length: c.numHiddenLayers }, (_, i) =>
    i < stage.start || i >= stage.end ? heldElsewhere(`layer ${i}`) : block(i),
  );
  const makeCaches = () =>
    Array.from({ length: c.numHiddenLayers }, (_, i) =>
      isSliding(i) ? new SlidingKVCache(o.slidingWindow) : new KVCache(),
    );
  if (!stage.ends) return endlessDecoder({ config: c, blocks, makeCaches });
  const embed = embedding(w, "model.embed_tokens");
  const norm = gemmaNorm(w, "model.norm", c.rmsNormEps);
  const lmHead = w.has("lm_head.weight") ? linear(w, "lm_head") : embed.asLinear;
  const scale = toBfloat16(Math.sqrt(c.hiddenSize));
  const softcap = o.finalLogitSoftcapping;
  return decoder({
    config: c,
    embed: (ids) => {
      const h = embed.lookup(ids);
      return mx.multiply(h, mx.astype(mx.scalar(scale), h.dtype));
    },
    blocks,
    head: (h) => {
      const logits = lmHead(norm(h));
      return softcap ? mx.multiply(mx.tanh(mx.divide(logits, softcap)), softcap) : logits;
    },
    finalNorm: norm,
    makeCaches,
  });
}
