// The dtype a float KV cache holds keys and values in. Under float32 activations (how a GGUF
// model runs) the cache is float16 where our CPU attention kernel reads it: it widens float16
// to fp32 as it reads, so a decode step at a long context reads half the bytes for the same
// answers (bench/RESULTS.md: greedy output identical to a float32 cache on 10 of 10 prompts,
// logits 0.0024 apart on average). Elsewhere (MLX_KERNELS=mlx, a GPU) the cache keeps the
// activations' dtype: MLX's attention would widen the whole cache again every step, and with
// its own kernels we promise mlx-lm's numbers exactly. MLX_KV_DTYPE=float32 keeps float32
// caches everywhere; bfloat16 and float16 activations are stored as they come.
import * as mx from "../mlx";
import type { DtypeCode } from "../mlx";
import { KV_DTYPES } from "../mlx/environment";

/** MLX_KV_DTYPE, checked: float16 (the default) or float32. */
function chosen(): (typeof KV_DTYPES)[number] {
  const value = process.env.MLX_KV_DTYPE || "float16";
  if (!(KV_DTYPES as readonly string[]).includes(value))
    throw new Error(`MLX_KV_DTYPE must be ${KV_DTYPES.join(" or ")}, not '${value}'`);
  return value as (typeof KV_DTYPES)[number];
}

/** The dtype a float cache stores keys/values computed in `activations` as. */
export function floatCacheDtype(activations: DtypeCode): DtypeCode {
  const narrow = activations === mx.Dtype.float32 && chosen() === "float16" && mx.cpuKernelsActive();
  return narrow ? mx.Dtype.float16 : activations;
}
