// Our side of a parity check against mlx-lm: greedy token ids and first-step logits.
import * as mx from "../../src/mlx";
import { generateTokens } from "../../src/engine/batch";
import { defaultSampling } from "../../src/engine/sampling";
import type { LoadedModel } from "../../src/models/load";
import { makeCaches, freeCaches } from "../../src/models";

/** Greedy ids after the prompt, until EOS (not included; unless `untilEos` is false) or `maxTokens`. */
export function greedy(lm: LoadedModel, promptIds: number[], maxTokens: number, { untilEos = true } = {}): number[] {
  const out: number[] = [];
  const request = { promptIds, sampling: defaultSampling, maxTokens, adapter: lm.adapter };
  for (const { token } of generateTokens(lm.model, request)) {
    if (untilEos && lm.tokenizer.eosTokenIds.has(token)) break;
    out.push(token);
  }
  return out;
}

/** The logits of `ids` at the last prompt position. */
export function firstStepLogits(lm: LoadedModel, promptIds: number[], ids: number[]): number[] {
  const caches = makeCaches(lm.model);
  const values = mx.scope(() => {
    const input = mx.array(Int32Array.from(promptIds), [1, promptIds.length]);
    const hidden = lm.model.layers(lm.model.embed(input), caches);
    const last = mx.reshape(lm.model.head(mx.slice(hidden, [0, promptIds.length - 1], [1, promptIds.length])), [-1]);
    return mx.take(last, mx.array(Int32Array.from(ids)), 0).toArray();
  });
  freeCaches(caches);
  return values;
}

/** Runs fn with our CPU kernels on or off (MLX's own ops: exactly mlx-lm's numbers), restoring the setting after. */
export function withKernels<T>(ours: boolean, fn: () => T): T {
  const previous = mx.useCpuKernels(ours);
  let result: T;
  try {
    result = fn();
  } catch (error) {
    mx.useCpuKernels(previous);
    throw error;
  }
  // An async fn keeps the setting until it settles.
  if (result instanceof Promise) return result.finally(() => mx.useCpuKernels(previous)) as T;
  mx.useCpuKernels(previous);
  return result;
}
