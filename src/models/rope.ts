// Rotary position embeddings and their scaling variants (default, linear, llama3).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { RopeScaling } from "./config";

export type Rope = (x: MxArray, offset: number | MxArray) => MxArray;

export interface RopeParams {
  dims: number;
  base: number;
  traditional: boolean;
  scaling?: RopeScaling;
  /** Precomputed frequencies (e.g. a GGUF's rope_freqs), used as they are. */
  freqs?: MxArray;
}

export function initializeRope(p: RopeParams): Rope {
  if (p.freqs) return withFreqs(p.dims, p.traditional, mx.keep(p.freqs));
  const type = p.scaling?.type ?? "default";
  if (type === "default" || type === "linear") {
    const scale = type === "linear" ? 1 / p.scaling!.factor : 1;
    return (x, offset) => mx.fast.rope(x, { dims: p.dims, traditional: p.traditional, base: p.base, scale, offset });
  }
  if (type === "llama3") return withFreqs(p.dims, p.traditional, llama3Freqs(p.dims, p.base, p.scaling!));
  throw new Error(`unsupported rope scaling '${type}' (supported: default, linear, llama3)`);
}

function withFreqs(dims: number, traditional: boolean, freqs: MxArray): Rope {
  return (x, offset) => mx.fast.rope(x, { dims, traditional, scale: 1, offset, freqs });
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
