// Rotary position embeddings and their scaling variants (default, linear, dynamic, llama3, longrope, yarn).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { RopeScaling } from "./config";

export interface Rope {
  (x: MxArray, offset: number | MxArray): MxArray;
  /** Its settings but the offset, where it is one plain rotation (fused ops can run it themselves). */
  settings?: Omit<mx.fast.RopeOptions, "offset">;
}

export interface RopeParams {
  dims: number;
  base: number;
  traditional: boolean;
  scaling?: RopeScaling;
  /** Precomputed frequencies (e.g. a GGUF's rope_freqs), used as they are. */
  freqs?: MxArray;
  /** The model's context length (LongRoPE scales by how far it exceeds the original one). */
  maxPositionEmbeddings?: number;
}

export function initializeRope(p: RopeParams): Rope {
  if (p.freqs) return withFreqs(p.dims, p.traditional, mx.keep(p.freqs));
  const type = p.scaling?.type ?? "default";
  // Dynamic NTK raises the base only past max_position_embeddings (mlx-lm's DynamicNTKScalingRoPE:
  // base · (factor · length / max − factor + 1)^(dims / (dims − 2)), the base itself up to max),
  // where no request goes: the engine bounds each one by the model's context. Plain RoPE within it.
  if (type === "default" || type === "linear" || type === "dynamic") {
    const settings = {
      dims: p.dims,
      traditional: p.traditional,
      base: p.base,
      scale: type === "linear" ? 1 / p.scaling!.factor : 1,
    };
    return Object.assign((x: MxArray, offset: number | MxArray) => mx.fast.rope(x, { ...settings, offset }), {
      settings,
    });
  }
  if (type === "llama3") return withFreqs(p.dims, p.traditional, llama3Freqs(p.dims, p.base, p.scaling!));
  if (type === "longrope" || type === "su") return suScaled(p);
  if (type === "yarn") return yarn(p);
  throw new Error(`unsupported rope scaling '${type}' (supported: default, linear, dynamic, llama3, longrope, yarn)`);
}

/**
 * YaRN as mlx-lm's YarnRoPE: frequencies that turn fewer than `beta_slow` times over the original
 * context are interpolated (divided by `factor`), those turning more than `beta_fast` times kept,
 * a linear ramp between; the rotated part is scaled by 0.1·mscale·ln(factor) + 1 (over the same with mscale_all_dim).
 */
function yarn(p: RopeParams): Rope {
  const s = p.scaling!;
  const { dims, base } = p;
  const factor = s.factor;
  const original = s.originalMaxPositionEmbeddings ?? 4096;
  const correctionDim = (rotations: number) =>
    (dims * Math.log(original / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
  const low = Math.max(Math.floor(correctionDim(s.betaFast ?? 32)), 0);
  let high = Math.min(Math.ceil(correctionDim(s.betaSlow ?? 1)), dims - 1);
  if (high === low) high += 0.001;
  const attentionScale = (m: number) => (factor <= 1 ? 1 : 0.1 * m * Math.log(factor) + 1);
  const mscale = attentionScale(s.mscale ?? 1) / attentionScale(s.mscaleAllDim ?? 0);
  const freqs = mx.keep(
    mx.scope(() => {
      const extrapolated = mx.power(base, mx.divide(mx.arange(0, dims, 2, mx.Dtype.float32), dims));
      const interpolated = mx.multiply(extrapolated, factor);
      // 0 up to `low` (keep the frequency), 1 from `high` (interpolate it).
      const index = mx.arange(0, dims / 2, 1, mx.Dtype.float32);
      const ramp = mx.minimum(mx.maximum(mx.divide(mx.subtract(index, low), high - low), 0), 1);
      const out = mx.divide(
        mx.multiply(interpolated, extrapolated),
        mx.add(mx.multiply(interpolated, mx.subtract(1, ramp)), mx.multiply(extrapolated, ramp)),
      );
      mx.evaluate(out);
      return out;
    }),
  );
  const rope = withFreqs(dims, p.traditional, freqs);
  return (x, offset) => rope(scaleRotated(x, dims, mscale), offset);
}

/**
 * Phi-3's LongRoPE as mlx-lm's SuScaledRoPE: the long factors stretch the frequencies, and the
 * rotated part is scaled by √(1 + ln(context / original) / ln(original)) when the context grew.
 */
function suScaled(p: RopeParams): Rope {
  const s = p.scaling!;
  if (!s.longFactor || s.longFactor.length !== p.dims / 2)
    throw new Error(`rope_scaling '${s.type}' needs long_factor with ${p.dims / 2} values`);
  const original = s.originalMaxPositionEmbeddings ?? 4096;
  const factor = (p.maxPositionEmbeddings ?? 131072) / original;
  const scale = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
  const freqs = mx.keep(
    mx.scope(() => {
      const out = mx.multiply(
        mx.array(Float32Array.from(s.longFactor!)),
        mx.power(p.base, mx.divide(mx.arange(0, p.dims, 2, mx.Dtype.float32), p.dims)),
      );
      mx.evaluate(out);
      return out;
    }),
  );
  const rope = withFreqs(p.dims, false, freqs);
  return (x, offset) => rope(scaleRotated(x, p.dims, scale), offset);
}

/** x with its first `dims` features (the rotated ones; the rest pass through, as Phi-4-mini's partial rotary has them) times `scale`. */
function scaleRotated(x: MxArray, dims: number, scale: number): MxArray {
  if (scale === 1) return x;
  const last = x.shape.length - 1;
  if (dims === x.shape[last]) return mx.multiply(x, scale);
  const origin = x.shape.map(() => 0);
  const rotatedEnd = x.shape.map((d, i) => (i === last ? dims : d));
  const passStart = x.shape.map((_, i) => (i === last ? dims : 0));
  const rotated = mx.multiply(mx.slice(x, origin, rotatedEnd), scale);
  return mx.concatenate([rotated, mx.slice(x, passStart, x.shape)], -1);
}

function withFreqs(dims: number, traditional: boolean, freqs: MxArray): Rope {
  const settings = { dims, traditional, scale: 1, freqs };
  return Object.assign((x: MxArray, offset: number | MxArray) => mx.fast.rope(x, { ...settings, offset }), {
    settings,
  });
}

/** Llama 3's frequency-dependent stretch: long wavelengths scaled by `factor`, short ones kept, a smooth blend between. */
function llama3Freqs(dims: number, base: number, s: RopeScaling): MxArray {
  return mx.keep(
    mx.scope(() => {
      const factor = s.factor;
      const low = s.lowFreqFactor ?? 1;
      const high = s.highFreqFactor ?? 4;
      const oldContext = s.originalMaxPositionEmbeddings ?? 8192;
      const lowWavelen = oldContext / low;
      const highWavelen = oldContext / high;
      const exponents = mx.divide(mx.arange(0, dims, 2, mx.Dtype.float32), dims);
      let freqs = mx.power(base, exponents);
      const wavelens = mx.multiply(freqs, 2 * Math.PI);
      freqs = mx.where(mx.greater(wavelens, lowWavelen), mx.multiply(freqs, factor), freqs);
      const medium = mx.logicalAnd(mx.greater(wavelens, highWavelen), mx.less(wavelens, lowWavelen));
      const smooth = mx.divide(mx.subtract(mx.divide(oldContext, wavelens), low), high - low);
      const smoothFreqs = mx.divide(freqs, mx.add(mx.divide(mx.subtract(1, smooth), factor), smooth));
      const out = mx.where(medium, smoothFreqs, freqs);
      mx.evaluate(out);
      return out;
    }),
  );
}
