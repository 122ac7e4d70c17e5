// Llama (and SmolLM2, which is a llama): pre-norm blocks of grouped-query attention with
// rotary embeddings and a SwiGLU MLP. Mistral, Qwen2 and Qwen3 reuse these pieces.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import { embedding, fusedLinear, linear, rmsNorm, summedOverShards, Weights } from "./layers";
import type { RopeScaling } from "./config";
import { decoder, type Block, type DecoderModel, type DecoderParts, type Mask } from "./model";
import { initializeRope } from "./rope";
import { KVCache, type AttentionCache } from "./cache";
import { SlidingKVCache, slidingLayerMask } from "./sliding-cache";

/**
 * Whether the fused attention input writes a step's new keys and values into a float cache
 * itself: decode steps and speculative verification (up to 16 positions), one sequence's or a
 * batch's, where the graph's nodes cost as much as its arithmetic. At 8 rows the cache's own
 * writes were two MLX copies a layer, whose tasks' frees made MLX's stream thread wait for
 * malloc's lock (bench/RESULTS.md "The batch's K/V write fused"). A prefill chunk keeps the
 * cache's own writes: the engine evaluates only the caches after a chunk, which MLX orders into a
 * higher peak with the write fused (+39 MB at 2,000 tokens; "The fused K/V write, second pass").
 */
export function writesFused(length: number): boolean {
  return length <= 16;
}

export interface AttentionOptions {
  /** Qwen3 normalises each head's queries and keys before the rotary embedding. */
  qkNorm?: boolean;
  /** Makes the norm layers (Gemma's scales by 1 + weight). */
  norm?: typeof rmsNorm;
  /** The softmax scale, when it is not 1/√head_dim. */
  scale?: number;
  /** The rotary base and scaling, when a layer's are not the config's (Gemma's local layers). */
  rope?: { base: number; scaling?: RopeScaling };
  /** Phi-3 computes queries, keys and values in one projection, qkv_proj. */
  fusedQkv?: boolean;
  /** gpt-oss: a learned logit per head (`${prefix}.sinks`) that joins each softmax without a value. */
  sinks?: boolean;
  /** How many of each head's features the rotary embedding turns, when not all (Phi-4-mini's partial_rotary_factor). */
  ropeDims?: number;
}

/**
 * Attention; given `inputNorm` (a plain RMSNorm's weight and epsilon), it is the attention half
 * of a pre-norm block: x → x + attention(inputNorm(x)), where the layers allow as two fused ops
 * (norm, q/k/v product and RoPE; output product and residual add) around the cache's attention.
 */
export function attention(
  w: Weights,
  prefix: string,
  c: ModelConfig,
  options: AttentionOptions = {},
  inputNorm?: { weight: MxArray; eps: number },
) {
  const project = options.fusedQkv ? fusedQkv(w, `${prefix}.qkv_proj`, c) : separateQkv(w, prefix);
  const oProj = summedOverShards(w, linear(w, `${prefix}.o_proj`));
  const norm = options.norm ?? rmsNorm;
  const qNorm = options.qkNorm ? norm(w, `${prefix}.q_norm`, c.rmsNormEps) : undefined;
  const kNorm = options.qkNorm ? norm(w, `${prefix}.k_norm`, c.rmsNormEps) : undefined;
  const rope = initializeRope({
    dims: options.ropeDims ?? c.headDim,
    base: options.rope?.base ?? c.ropeTheta,
    traditional: c.ropeTraditional,
    scaling: options.rope ? options.rope.scaling : c.ropeScaling,
    freqs: w.optional("rope_freqs"),
    maxPositionEmbeddings: c.maxPositionEmbeddings,
  });
  const scale = options.scale ?? c.headDim ** -0.5;
  const sinks = options.sinks ? w.get(`${prefix}.sinks`) : undefined;

  // [B, L, heads * dim] → [B, heads, L, dim], normalising per head first where asked.
  const heads = (x: MxArray, n: number, norm?: (x: MxArray) => MxArray) => {
    const [b, l] = x.shape as [number, number];
    const split = mx.reshape(x, [b, l, n, -1]);
    return mx.transpose(norm ? norm(split) : split, [0, 2, 1, 3]);
  };

  const composed = (x: MxArray, offset: number | MxArray): [MxArray, MxArray, MxArray] => {
    const [q, k, v] = project(inputNorm ? mx.fast.rmsNorm(x, inputNorm.weight, inputNorm.eps) : x);
    const queries = heads(q, c.numAttentionHeads, qNorm);
    const keys = heads(k, c.numKeyValueHeads, kNorm);
    return [rope(queries, offset), rope(keys, offset), heads(v, c.numKeyValueHeads)];
  };
  const { quantized } = project;
  const { settings } = rope;
  const shape = { heads: c.numAttentionHeads, kvHeads: c.numKeyValueHeads, headDim: c.headDim };
  const byHeads = quantized?.weight.shape[0] === (shape.heads + 2 * shape.kvHeads) * shape.headDim;
  const fusedInput =
    inputNorm && quantized && byHeads && settings && !qNorm ? { ...inputNorm, quantized, settings } : undefined;
  const fusedOutput = inputNorm && oProj.quantized;

  // Attention on the fused input. On our kernels, in decode steps (writesFused), the op writes
  // the new keys and values into the cache's buffers itself where the cache lets it: the cache's
  // two writes and the two slices attention reads (and, into a float16 cache of float32
  // activations, two casts) are no nodes; into a quantized cache, its write step is none.
  const attend = (x: MxArray, offset: number | MxArray, cache: AttentionCache, mask: Mask): MxArray => {
    const { weight, eps, quantized: qkv, settings } = fusedInput!;
    const rotation = { ...settings, offset };
    const [batch, length] = x.shape as [number, number];
    const rows = { batch, heads: shape.kvHeads, length, dim: shape.headDim, activations: x.dtype };
    // The keys' dtype, the product's, is x's when x is float32 or the scales share x's dtype
    // (else MLX promotes, and the cache would pick its dtype from another). MLX's kernels
    // (MLX_KERNELS=mlx, a GPU) keep the cache's own writes.
    const keysLikeX = x.dtype === mx.Dtype.float32 || qkv.scales.dtype === x.dtype;
    const fusedWrite = mx.cpuKernelsActive() && keysLikeX && writesFused(length);
    const room = fusedWrite ? cache.roomFor?.(rows) : undefined;
    if (!room)
      return cache.attention(...mx.fast.attentionInput(x, weight, eps, qkv, shape, rotation), scale, mask, sinks);
    if ("quantization" in room) {
      const written = mx.fast.attentionInputQuantized(x, weight, eps, qkv, shape, rotation, room);
      return cache.attendWritten!(written, scale, mask, sinks);
    }
    const [queries, keys, values, validKeys, validValues] = mx.fast.attentionInput(
      x,
      weight,
      eps,
      qkv,
      shape,
      rotation,
      room,
    );
    cache.wrote!(keys, values, length);
    return mx.fast.scaledDotProductAttention(queries, validKeys, validValues, scale, mask, sinks);
  };

  // Attention's heads [B, H, L, D], before the output projection. The fused ops are a dozen and
  // three graph nodes fewer per layer. Adapters update the products separately, so not while one
  // is selected.
  const attendHeads = (x: MxArray, mask: Mask, cache: AttentionCache): MxArray => {
    const offset = cache.ropeOffset;
    return fusedInput && !w.lora.adapting
      ? attend(x, offset, cache, mask)
      : cache.attention(...composed(x, offset), scale, mask, sinks);
  };
  const forward = (x: MxArray, mask: Mask, cache: AttentionCache): MxArray => {
    const [b, l] = x.shape as [number, number];
    const out = attendHeads(x, mask, cache);
    if (fusedOutput && !w.lora.adapting) return mx.fast.attentionOutput(x, out, fusedOutput);
    const projected = oProj(mx.reshape(mx.transpose(out, [0, 2, 1, 3]), [b, l, -1]));
    return inputNorm ? mx.add(x, projected) : projected;
  };
  // Where the output half may be fused (with the block's MLP half, see block), its heads and weights.
  return Object.assign(forward, { fusedOutput: fusedOutput ? { attendHeads, oProj: fusedOutput } : undefined });
}

interface Qkv {
  (x: MxArray): [MxArray, MxArray, MxArray];
  /** As a Linear's: the one quantized product's weights, where it is one. */
  quantized?: mx.fast.QuantizedWeights;
}

/** q_proj, k_proj and v_proj, run as one product where their weights allow (see fusedLinear). */
function separateQkv(w: Weights, prefix: string): Qkv {
  const qkv = fusedLinear(
    w,
    ["q_proj", "k_proj", "v_proj"].map((p) => `${prefix}.${p}`),
  );
  return Object.assign((x: MxArray) => qkv(x) as [MxArray, MxArray, MxArray], { quantized: qkv.quantized });
}

/** One projection whose outputs are the queries, then the keys, then the values. */
function fusedQkv(w: Weights, prefix: string, c: ModelConfig): Qkv {
  const qkv = linear(w, prefix);
  const queries = c.numAttentionHeads * c.headDim;
  const keys = c.numKeyValueHeads * c.headDim;
  return (x) => {
    const all = qkv(x);
    const [b, l, n] = all.shape as [number, number, number];
    const part = (start: number, end: number) => mx.slice(all, [0, 0, start], [b, l, end]);
    return [part(0, queries), part(queries, queries + keys), part(queries + keys, n)];
  };
}

/** Phi-3's MLP: gate and up in one projection, gate_up_proj (the gate's outputs first). */
export function fusedMlp(w: Weights, prefix: string) {
  const gateUp = linear(w, `${prefix}.gate_up_proj`);
  const down = linear(w, `${prefix}.down_proj`);
  return (x: MxArray) => {
    const h = gateUp(x);
    const [b, l, n] = h.shape as [number, number, number];
    return down(mx.multiply(mx.silu(mx.slice(h, [0, 0, 0], [b, l, n / 2])), mx.slice(h, [0, 0, n / 2], [b, l, n])));
  };
}

/** down(act(gate(x)) · up(x)), the activation fused with the product: SwiGLU's SiLU, or GeGLU's GELU (tanh approximation). */
export function mlp(w: Weights, prefix: string, activation: "silu" | "gelu_approx" = "silu"): FeedForward {
  const gateUp = fusedLinear(w, [`${prefix}.gate_proj`, `${prefix}.up_proj`]);
  const down = summedOverShards(w, linear(w, `${prefix}.down_proj`));
  const gated = activation === "silu" ? mx.fast.siluMul : mx.fast.geluApproxMul;
  const forward = (x: MxArray) => {
    const [gate, up] = gateUp(x) as [MxArray, MxArray];
    return down(gated(gate, up));
  };
  if (activation !== "silu" || !gateUp.quantized || !down.quantized) return forward;
  return Object.assign(forward, { swiglu: { gateUp: gateUp.quantized, down: down.quantized } });
}

export interface FeedForward {
  (x: MxArray): MxArray;
  /** The SwiGLU MLP's two quantized products, where the block may run as one fused op (mlpBlock). */
  swiglu?: { gateUp: mx.fast.QuantizedWeights; down: mx.fast.QuantizedWeights };
}

/** A pre-norm block; the feed-forward layer is the SwiGLU MLP unless given (a mixture of experts). */
export function block(
  w: Weights,
  prefix: string,
  c: ModelConfig,
  options: AttentionOptions = {},
  feedForward: FeedForward = mlp(w, `${prefix}.mlp`),
): Block {
  const inputNorm = { weight: w.get(`${prefix}.input_layernorm.weight`), eps: c.rmsNormEps };
  const postNorm = rmsNorm(w, `${prefix}.post_attention_layernorm`, c.rmsNormEps);
  const postNormWeight = w.get(`${prefix}.post_attention_layernorm.weight`);
  const selfAttn = attention(w, `${prefix}.self_attn`, c, options, inputNorm);
  const { swiglu } = feedForward;
  // The MLP half as one op (norm, products, activation, residual): a handful of graph nodes
  // fewer per layer. Adapters update the products separately, so not while one is selected.
  const mlpHalf = (h: MxArray) =>
    swiglu && !w.lora.adapting
      ? mx.fast.mlpBlock(h, postNormWeight, c.rmsNormEps, swiglu.gateUp, swiglu.down)
      : mx.add(h, feedForward(postNorm(h)));
  // Attention's output half and the MLP half as one op, which on our kernels also runs the
  // attention itself: a decode step's graph is then two nodes a layer, which MLX's evaluation
  // queues far enough ahead that the next step is built while this one runs (bench/RESULTS.md
  // "The one-row decode step's fixed costs", "Attention in the block's second node").
  const tail = swiglu && selfAttn.fusedOutput;
  if (!tail) return (x, mask, cache) => mlpHalf(selfAttn(x, mask, cache));
  return (x, mask, cache) =>
    w.lora.adapting
      ? mlpHalf(selfAttn(x, mask, cache))
      : mx.fast.attentionOutputMlp(
          x,
          tail.attendHeads(x, mask, cache),
          tail.oProj,
          postNormWeight,
          c.rmsNormEps,
          swiglu.gateUp,
          swiglu.down,
        );
}

/**
 * `feedForward(layer, prefix)` makes a layer's feed-forward part where it is not the SwiGLU MLP;
 * `slidingWindow(layer)` is the window of a layer that attends to its last positions only.
 */
export function buildDecoder(
  w: Weights,
  options: AttentionOptions = {},
  feedForward?: (layer: number, prefix: string) => FeedForward | undefined,
  slidingWindow?: (layer: number) => number | undefined,
): DecoderModel {
  const c = w.config;
  const stage = w.stage ?? { start: 0, end: c.numHiddenLayers, ends: true };
  const windows = Array.from({ length: c.numHiddenLayers }, (_, i) => slidingWindow?.(i));
  const blocks = windows.map((window, i): Block => {
    if (i < stage.start || i >= stage.end) return heldElsewhere(`layer ${i}`);
    const full = block(w, `model.layers.${i}`, c, options, feedForward?.(i, `model.layers.${i}`));
    if (window === undefined) return full;
    return (x, mask, cache) => full(x, slidingLayerMask(mask, cache, x.shape[1]!, window), cache);
  });
  const makeCaches = slidingWindow
    ? () => windows.map((window) => (window === undefined ? new KVCache() : new SlidingKVCache(window)))
    : undefined;
  if (!stage.ends) return endlessDecoder({ config: c, blocks, makeCaches });
  const embed = embedding(w, "model.embed_tokens");
  const norm = rmsNorm(w, "model.norm", c.rmsNormEps);
  const lmHead = c.tieWordEmbeddings || !w.has("lm_head.weight") ? embed.asLinear : linear(w, "lm_head");
  return decoder({ config: c, embed: embed.lookup, blocks, head: (h) => lmHead(norm(h)), finalNorm: norm, makeCaches });
}

/** What a pipeline stage runs in place of a part another process holds: never called there. */
export function heldElsewhere(part: string): () => never {
  return () => {
    throw new Error(`${part} is held by another process of the pipeline`);
  };
}

/** The model of a pipeline stage that holds neither end (embedding, final norm, output layer): its blocks. */
export function endlessDecoder(parts: Pick<DecoderParts, "config" | "blocks" | "makeCaches">): DecoderModel {
  return decoder({
    ...parts,
    embed: heldElsewhere("the embedding"),
    head: heldElsewhere("the output layer"),
    finalNorm: heldElsewhere("the final norm"),
  });
}

export const build = (w: Weights): DecoderModel => buildDecoder(w);
