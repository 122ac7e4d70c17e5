// Mixture-of-experts feed-forward layers, as mlx-lm's SwitchGLU: a router picks each token's
// top-k experts, the token goes through those experts' SwiGLU MLPs (the experts' matrices are
// stacked per layer, [experts, out, in], and multiplied with MLX's gather_mm / gather_qmm), and
// the outputs are summed with the router's weights. Each token (each row of a batch) is routed
// on its own.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { linear, type Weights } from "./layers";
import type { FeedForward } from "./llama";

type SwitchLinear = (x: MxArray, experts: MxArray, sorted: boolean) => MxArray;

/**
 * The experts' matrices of `stacked` (e.g. "model.layers.0.mlp.switch_mlp.gate_proj"), stacking
 * them first when the checkpoint has one per expert (`perExpert(e)` names them), as mlx-lm's
 * sanitize does: the stack replaces them among the weights.
 */
export function stackExperts(w: Weights, stacked: string, count: number, perExpert: (e: number) => string): void {
  if (w.has(`${stacked}.weight`) || !w.has(`${perExpert(0)}.weight`)) return;
  for (const suffix of ["weight", "scales", "biases"]) {
    if (!w.has(`${perExpert(0)}.${suffix}`)) continue;
    const names = Array.from({ length: count }, (_, e) => `${perExpert(e)}.${suffix}`);
    const t = mx.keep(mx.scope(() => mx.stack(names.map((n) => w.get(n)))));
    mx.evaluate(t);
    w.tensors.set(`${stacked}.${suffix}`, t);
    for (const n of names) {
      w.tensors.get(n)!.free();
      w.tensors.delete(n);
    }
  }
  // Per-expert quantization overrides name the experts; the stack takes the first one's.
  const override = w.config.quantizationOverrides[perExpert(0)];
  if (override !== undefined) w.config.quantizationOverrides[stacked] = override;
}

/**
 * The plain experts' matrix `name`, as MLX's gather_mm can multiply it: on the CPU that is float32
 * alone (a bfloat16 or float16 checkpoint failed at its first token), so a half-precision stack is
 * widened once here and held in the map in place of the original.
 */
function cpuGatherable(w: Weights, name: string): MxArray {
  const weight = w.get(name);
  if (weight.dtype === mx.Dtype.float32 || !mx.defaultDeviceIsCpu()) return weight;
  const wide = mx.keep(mx.scope(() => mx.astype(weight, mx.Dtype.float32)));
  mx.evaluate(wide);
  w.tensors.set(name, wide);
  weight.free();
  return wide;
}

/** The experts' matrices at `prefix`, with their per-expert output bias [experts, out] where they have one (gpt-oss). */
function switchLinear(w: Weights, prefix: string): SwitchLinear {
  const quant = w.quantFor(prefix);
  let product: SwitchLinear;
  if (quant) {
    const weight = w.get(`${prefix}.weight`);
    const scales = w.get(`${prefix}.scales`);
    const biases = w.optional(`${prefix}.biases`);
    product = (x, experts, sorted) =>
      mx.gatherQmm(x, weight, scales, biases, quant, { rhsIndices: experts, sortedIndices: sorted });
  } else {
    const plain = cpuGatherable(w, `${prefix}.weight`);
    product = (x, experts, sorted) => {
      const y = mx.gatherMm(mx.astype(x, plain.dtype), mx.transpose(plain, [0, 2, 1]), {
        rhsIndices: experts,
        sortedIndices: sorted,
      });
      return mx.astype(y, x.dtype);
    };
  }
  const bias = w.optional(`${prefix}.bias`);
  if (!bias) return product;
  return (x, experts, sorted) => mx.add(product(x, experts, sorted), mx.expandDims(mx.take(bias, experts, 0), -2));
}

/** The gated activation of the experts' gate and up projections. */
export type GatedActivation = (gate: MxArray, up: MxArray) => MxArray;

const swiGLU: GatedActivation = (gate, up) => mx.multiply(mx.silu(gate), up);

/** x [B, L, D] through the experts `experts` [B, L, k] picks: [B, L, k, D]. */
export function switchGLU(
  w: Weights,
  prefix: string,
  activation: GatedActivation = swiGLU,
): (x: MxArray, experts: MxArray) => MxArray {
  const gate = switchLinear(w, `${prefix}.gate_proj`);
  const up = switchLinear(w, `${prefix}.up_proj`);
  const down = switchLinear(w, `${prefix}.down_proj`);
  return (x, experts) => {
    const [batch, length, k] = experts.shape as [number, number, number];
    const dims = x.shape[2]!;
    let h = mx.expandDims(x, [-2, -3]);
    // Many tokens: sort them by expert, so each expert's matrix is read once for all its rows.
    const sort = batch * length * k >= 64;
    let picks = experts;
    let inverse: MxArray | undefined;
    if (sort) {
      const flat = mx.reshape(experts, [-1]);
      const order = mx.argsort(flat);
      inverse = mx.argsort(order);
      h = mx.take(mx.reshape(h, [-1, 1, dims]), mx.floorDivide(order, k), 0);
      picks = mx.take(flat, order, 0);
    }
    let out = down(activation(gate(h, picks, sort), up(h, picks, sort)), picks, sort);
    if (inverse) out = mx.reshape(mx.take(out, inverse, 0), [batch, length, k, 1, -1]);
    return mx.squeeze(out, -2);
  };
}

export interface RouterOptions {
  experts: number;
  topK: number;
  /** Qwen3-MoE: softmax over all experts, then the top k (renormalised when `normTopK`). Mixtral: top k of the logits, then softmax over them. */
  softmaxFirst: boolean;
  normTopK?: boolean;
  /** The router's and the experts' names under the layer's prefix ("gate" and "switch_mlp" unless given; gpt-oss: "router", "experts"). */
  names?: { router: string; experts: string };
  /** The experts' activation (SwiGLU unless given). */
  activation?: GatedActivation;
}

/** A sparse MoE layer at `prefix`: a router (`${prefix}.gate`), and experts (`${prefix}.switch_mlp`). */
export function sparseMoE(w: Weights, prefix: string, o: RouterOptions): FeedForward {
  const names = o.names ?? { router: "gate", experts: "switch_mlp" };
  const router = linear(w, `${prefix}.${names.router}`);
  const experts = switchGLU(w, `${prefix}.${names.experts}`, o.activation);
  const { topK: k } = o;
  return (x) => {
    const [batch, length] = x.shape as [number, number];
    const logits = router(x);
    let picks: MxArray;
    let scores: MxArray;
    if (o.softmaxFirst) {
      const gates = mx.softmax(logits, -1, true);
      picks = mx.slice(mx.argpartition(gates, o.experts - k, -1), [0, 0, o.experts - k], [batch, length, o.experts]);
      scores = mx.takeAlongAxis(gates, picks, -1);
      if (o.normTopK) scores = mx.divide(scores, mx.sum(scores, -1, true));
    } else {
      picks = mx.slice(mx.argpartition(mx.negative(logits), k - 1, -1), [0, 0, 0], [batch, length, k]);
      scores = mx.softmax(mx.takeAlongAxis(logits, picks, -1), -1, true);
    }
    const y = experts(x, picks);
    return mx.astype(mx.sum(mx.multiply(y, mx.expandDims(scores, -1)), -2), y.dtype);
  };
}
