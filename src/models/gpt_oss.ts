// gpt-oss, as mlx-lm's gpt_oss: sliding-window and full attention layers alternating (as
// `layer_types` says), biased projections and a learned sink logit per head in each softmax,
// YaRN rotary scaling, and a mixture of experts in every layer whose experts have biases and
// a clamped SwiGLU. OpenAI ships the experts in MX FP4 blocks; they run as MLX's mxfp4 mode.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { Weights } from "./layers";
import { buildDecoder } from "./llama";
import type { DecoderModel } from "./model";
import { type GatedActivation, sparseMoE } from "./moe";

/** gpt-oss's SwiGLU: the gate clipped from above, the linear part clipped both ways and shifted by 1. */
export function clampedSwiGLU(alpha: number, limit: number): GatedActivation {
  return (gate, up) => {
    const g = mx.minimum(gate, limit);
    const u = mx.maximum(mx.minimum(up, limit), -limit);
    return mx.multiply(mx.add(u, 1), mx.multiply(g, mx.sigmoid(mx.multiply(g, alpha))));
  };
}

export function build(w: Weights): DecoderModel {
  const c = w.config;
  const raw = c.raw;
  const window = typeof raw.sliding_window === "number" ? raw.sliding_window : 128;
  const layerTypes = Array.isArray(raw.layer_types)
    ? (raw.layer_types as string[])
    : Array.from({ length: c.numHiddenLayers }, (_, i) => (i % 2 === 0 ? "sliding_attention" : "full_attention"));
  const moe = {
    experts: Number(raw.num_local_experts ?? 128),
    topK: Number(raw.num_experts_per_tok ?? 4),
    softmaxFirst: false,
    names: { router: "router", experts: "experts" },
    activation: clampedSwiGLU(1.702, typeof raw.swiglu_limit === "number" ? raw.swiglu_limit : 7),
  };
  return buildDecoder(
    w,
    { sinks: true },
    (_, prefix) => {
      splitGateUp(w, `${prefix}.mlp.experts`);
      return sparseMoE(w, `${prefix}.mlp`, moe);
    },
    (layer) => (layerTypes[layer] === "sliding_attention" ? window : undefined),
  );
}

/**
 * OpenAI's layout of a layer's experts into mlx-lm's (as its sanitize does): gate_up_proj holds
 * the gate's and the up projection's rows interleaved (gate first), and MX FP4 weights come as
 * `_blocks` of bytes [experts, out, in / 32, 16] with `_scales`, which are MLX's mxfp4 words
 * and scales once the bytes are read as uint32.
 */
function splitGateUp(w: Weights, prefix: string): void {
  const t = w.tensors;
  /** Replaces tensor `from` by what `parts` make of it. */
  const replace = (from: string, parts: [string, (v: MxArray) => MxArray][]) => {
    const v = t.get(from);
    if (!v) return;
    for (const [to, make] of parts) {
      const made = mx.keep(mx.scope(() => mx.contiguous(make(v))));
      mx.evaluate(made);
      t.set(to, made);
    }
    t.delete(from);
    v.free();
  };
  const words = (v: MxArray) => mx.reshape(mx.view(v, mx.Dtype.uint32), [...v.shape.slice(0, -2), -1]);
  const same = (v: MxArray) => v;
  replace(`${prefix}.down_proj_blocks`, [[`${prefix}.down_proj.weight`, words]]);
  replace(`${prefix}.down_proj_scales`, [[`${prefix}.down_proj.scales`, same]]);
  replace(`${prefix}.down_proj_bias`, [[`${prefix}.down_proj.bias`, same]]);
  // Even rows (bias entries) are the gate's, odd ones the up projection's.
  const interleaved = (axisFromEnd: number, then: (v: MxArray) => MxArray = same) =>
    [0, 1].map((first) => (v: MxArray) => {
      const u = then(v);
      const axis = u.shape.length - axisFromEnd;
      const start = u.shape.map((_, i) => (i === axis ? first : 0));
      const strides = u.shape.map((_, i) => (i === axis ? 2 : 1));
      return mx.slice(u, start, u.shape, strides);
    });
  const split = (from: string, suffix: string, parts: ((v: MxArray) => MxArray)[]) =>
    replace(from, [
      [`${prefix}.gate_proj.${suffix}`, parts[0]!],
      [`${prefix}.up_proj.${suffix}`, parts[1]!],
    ]);
  split(`${prefix}.gate_up_proj_blocks`, "weight", interleaved(2, words));
  split(`${prefix}.gate_up_proj_scales`, "scales", interleaved(2));
  split(`${prefix}.gate_up_proj.weight`, "weight", interleaved(2));
  split(`${prefix}.gate_up_proj_bias`, "bias", interleaved(1));
}
