// Turning logits into the next token: the filters of mlx-lm's sampler (top-k, top-p,
// min-p), temperature, and a repetition penalty over the recent context. All on MLX arrays,
// so sampling adds no round trip to the host.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";

export interface SamplingParams {
  /** 0 means greedy (argmax). */
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  repetitionPenalty: number;
  /** How many recent tokens the repetition penalty looks at. */
  repetitionContext: number;
  seed?: number;
}

export const defaultSampling: SamplingParams = {
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  repetitionContext: 20,
};

/** Checks a user's sampling values, naming the first bad one. */
export function validateSampling(p: SamplingParams): void {
  const fail = (what: string) => {
    throw new RangeError(what);
  };
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature)) fail(`temperature must be >= 0 (got ${p.temperature})`);
  if (!(p.topP > 0 && p.topP <= 1)) fail(`top_p must be in (0, 1] (got ${p.topP})`);
  if (!Number.isInteger(p.topK) || p.topK < 0) fail(`top_k must be a whole number >= 0 (got ${p.topK})`);
  if (!(p.minP >= 0 && p.minP < 1)) fail(`min_p must be in [0, 1) (got ${p.minP})`);
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) fail(`repetition penalty must be > 0 (got ${p.repetitionPenalty})`);
  if (p.seed !== undefined && !Number.isInteger(p.seed)) fail(`seed must be a whole number (got ${p.seed})`);
}

/** Adjusts logits [1, vocab] given every token so far (prompt and generated), as mlx-lm's logits processors do. */
export type LogitsProcessor = (history: readonly number[], logits: MxArray) => MxArray;

/** The repetition penalty as a logits processor over the last `repetitionContext` tokens. */
export function repetitionPenalty(p: SamplingParams): LogitsProcessor {
  return (history, logits) => penalizeRepetition(logits, history.slice(-p.repetitionContext), p.repetitionPenalty);
}

/** Applies the repetition penalty in place of the logits of recently seen tokens. */
export function penalizeRepetition(logits: MxArray, recent: number[], penalty: number): MxArray {
  if (penalty === 1 || recent.length === 0) return logits;
  const index = mx.array(Int32Array.from(recent), [1, recent.length]);
  const seen = mx.takeAlongAxis(logits, index, -1);
  const penalized = mx.where(mx.less(seen, 0), mx.multiply(seen, penalty), mx.divide(seen, penalty));
  return mx.putAlongAxis(logits, index, penalized, -1);
}

const negativeInfinity = (like: MxArray) => mx.full([], -Infinity, like.dtype);

function topK(logprobs: MxArray, k: number): MxArray {
  const vocab = logprobs.shape.at(-1)!;
  if (k >= vocab) return logprobs;
  const dropped = mx.slice(mx.argpartition(mx.negative(logprobs), k - 1, -1), [0, k], [logprobs.shape[0]!, vocab]);
  return mx.putAlongAxis(logprobs, dropped, mx.broadcastTo(negativeInfinity(logprobs), dropped.shape), -1);
}

/** The inverse of a permutation along the last axis: where each sorted position came from. */
function inversePermutation(order: MxArray): MxArray {
  const positions = mx.broadcastTo(mx.arange(0, order.shape.at(-1)!, 1, order.dtype), order.shape);
  return mx.putAlongAxis(mx.zeros(order.shape, order.dtype), order, positions, -1);
}

function topP(logprobs: MxArray, p: number): MxArray {
  const order = mx.argsort(logprobs, -1); // ascending
  const sortedProbs = mx.takeAlongAxis(mx.exp(logprobs), order, -1);
  const cumulative = mx.takeAlongAxis(mx.cumsum(sortedProbs, -1), inversePermutation(order), -1);
  return mx.where(mx.greater(cumulative, 1 - p), logprobs, negativeInfinity(logprobs));
}

function minP(logprobs: MxArray, p: number): MxArray {
  const best = mx.max(logprobs, -1, true);
  return mx.where(mx.less(logprobs, mx.add(best, Math.log(p))), negativeInfinity(logprobs), logprobs);
}

/** A sampler: logprobs [B, vocab] → token ids [B]. */
export type Sampler = (logprobs: MxArray) => MxArray;

export function makeSampler(p: SamplingParams): Sampler {
  if (p.temperature === 0) return (logprobs) => mx.argmax(logprobs, -1);
  let key = p.seed === undefined ? undefined : mx.keep(mx.random.key(p.seed));
  return (logprobs) => {
    let filtered = logprobs;
    if (p.topK > 0) filtered = topK(filtered, p.topK);
    if (p.topP > 0 && p.topP < 1) filtered = topP(filtered, p.topP);
    if (p.minP > 0) filtered = minP(filtered, p.minP);
    let stepKey: MxArray | undefined;
    if (key) {
      const [next, sub] = mx.random.split(key);
      key.free();
      key = mx.keep(next);
      stepKey = sub;
    }
    return mx.random.categorical(mx.multiply(filtered, 1 / p.temperature), -1, stepKey);
  };
}
