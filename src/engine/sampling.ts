// Turning logits into the next token: every logits processor (repetition penalty, logit_bias,
// presence and frequency penalties, a grammar's mask), then the filters of mlx-lm's sampler
// (top-k, top-p, min-p) and temperature. All on MLX arrays, so sampling adds no round trip to
// the host.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { InvalidParameterError } from "../errors";

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
  /** OpenAI semantics: subtracted once from the logit of every token already generated. */
  presencePenalty?: number;
  /** OpenAI semantics: subtracted per occurrence from the logit of every token already generated. */
  frequencyPenalty?: number;
  /**
   * Ollama's and llama.cpp's semantics of the two penalties above: they count the tokens of the
   * repetition window (repetitionContext), prompt included, rather than the whole answer.
   */
  penaltiesInWindow?: boolean;
  /** token id → bias added to its logit. */
  logitBias?: Map<number, number>;
}

export const defaultSampling: SamplingParams = {
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  repetitionContext: 20,
};

/** Checks a user's sampling values against a model's vocabulary, naming the first bad one. */
export function validateSampling(p: SamplingParams, vocab = Infinity): void {
  const fail = (what: string, param: string) => {
    throw new InvalidParameterError(what, param);
  };
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature))
    fail(`temperature must be >= 0 (got ${p.temperature})`, "temperature");
  if (!(p.topP > 0 && p.topP <= 1)) fail(`top_p must be in (0, 1] (got ${p.topP})`, "top_p");
  if (!Number.isInteger(p.topK) || p.topK < 0) fail(`top_k must be a whole number >= 0 (got ${p.topK})`, "top_k");
  // 1 keeps only the most likely token (greedy), as mlx-lm, vLLM and llama.cpp take it.
  if (!(p.minP >= 0 && p.minP <= 1)) fail(`min_p must be in [0, 1] (got ${p.minP})`, "min_p");
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty))
    fail(`repetition penalty must be > 0 (got ${p.repetitionPenalty})`, "repetition_penalty");
  if (p.seed !== undefined && !Number.isInteger(p.seed)) fail(`seed must be a whole number (got ${p.seed})`, "seed");
  for (const id of p.logitBias?.keys() ?? []) {
    if (!(id >= 0 && id < vocab))
      fail(`logit_bias names token id ${id}, outside the vocabulary (ids 0 to ${vocab - 1})`, "logit_bias");
  }
}

/**
 * Below this a temperature samples as greedy, its limit: logits divided by it overflow float32
 * (30 / 1e-37 is past its largest number, and the draw turns to noise), and well before that
 * every draw is already the argmax (float32 logits cannot differ by 1e-20 × their gap).
 */
const GREEDY_BELOW = 1e-20;

/**
 * Above this a temperature draws as uniformly as it ever will among the tokens the filters keep:
 * logits (tens apart at most) times 1e-30 differ by far less than the draw's noise. It also
 * bounds the scale: 1 / 1e50 is 0 in float32, and a dropped token's -Infinity times 0 is NaN,
 * which the draw then took for a token (one that top-k, top-p or a grammar had dropped).
 */
const UNIFORM_ABOVE = 1e30;

/** `p` with a temperature too small to sample by (GREEDY_BELOW) made greedy's 0. */
export const settleTemperature = (p: SamplingParams): SamplingParams =>
  p.temperature > 0 && p.temperature < GREEDY_BELOW ? { ...p, temperature: 0 } : p;

/**
 * Adjusts logits [1, vocab] given every token so far (prompt and generated), as mlx-lm's logits
 * processors do. `history` holds them all, unless the processor `takesPending`: then the latest
 * may still be on its way (the step ahead computes it while this one is built) and comes as
 * `pending`, a lazy [1] array, the rest in `history`. Only such processors let a sequence's next
 * step be built before its last token is read (the pipelined step); the others need it on the host.
 */
export type LogitsProcessor = {
  (history: readonly number[], logits: MxArray, pending?: MxArray): MxArray;
  takesPending?: true;
};

/** `process` marked as taking the latest token lazily (see LogitsProcessor). */
const takingPending = (process: (history: readonly number[], logits: MxArray, pending?: MxArray) => MxArray) =>
  Object.assign(process, { takesPending: true as const });

/**
 * Every processor a sequence's sampling asks for, in order: logit_bias, repetition penalty,
 * presence/frequency penalties (over the `promptLength` tokens' continuation, or the repetition
 * window where `penaltiesInWindow`), then `extra`
 * (a grammar's mask, last, so nothing re-allows a token it forbids). The bias comes first, as
 * in mlx-lm, llama.cpp and vLLM: the repetition penalty scales the biased logit.
 */
export function logitsProcessors(
  p: SamplingParams,
  promptLength: number,
  extra: LogitsProcessor[] = [],
): LogitsProcessor[] {
  const processors: LogitsProcessor[] = [];
  if (p.logitBias && p.logitBias.size > 0) {
    const ids = Int32Array.from(p.logitBias.keys());
    const bias = Float32Array.from(p.logitBias.values());
    processors.push(takingPending((_history, logits) => addAt(logits, mx.array(ids, [1, ids.length]), bias)));
  }
  if (p.repetitionPenalty !== 1 && p.repetitionContext > 0)
    processors.push(
      takingPending((history, logits, pending) => {
        // The window's tokens on the host: all but the pending one (none of a window of 1).
        const onHost = p.repetitionContext - (pending ? 1 : 0);
        const recent = onHost > 0 ? history.slice(-onHost) : [];
        return penalizeRepetition(logits, recentIndex(recent, pending), p.repetitionPenalty);
      }),
    );
  const presence = p.presencePenalty ?? 0;
  const frequency = p.frequencyPenalty ?? 0;
  const window = p.penaltiesInWindow ? p.repetitionContext : undefined;
  if ((presence !== 0 || frequency !== 0) && window !== 0)
    processors.push(
      takingPending((history, logits, pending) => {
        // The answer's tokens, or the window's (all but the pending one on the host).
        const from = window === undefined ? promptLength : Math.max(0, history.length - window + (pending ? 1 : 0));
        const counts = new Map<number, number>();
        for (let i = from; i < history.length; i++) counts.set(history[i]!, (counts.get(history[i]!) ?? 0) + 1);
        const ids = Int32Array.from(counts.keys());
        const penalized =
          counts.size === 0
            ? logits
            : addAt(
                logits,
                mx.array(ids, [1, ids.length]),
                Float32Array.from(counts.values(), (n) => -(presence + frequency * n)),
              );
        if (!pending) return penalized;
        // The pending token (a generated one, in any window) counts once more: the frequency penalty again,
        // and the presence penalty too where the host's tokens did not hold it yet.
        const index = mx.reshape(mx.astype(pending, mx.Dtype.int32), [1, 1]);
        const held = counts.size > 0 ? mx.any(mx.equal(mx.array(ids), mx.reshape(index, [1]))) : undefined;
        // As a number: a bool times a scalar 0 or 1 stays a bool (a weak scalar), which cannot be negated.
        const extra = held
          ? mx.negative(mx.add(mx.multiply(mx.astype(mx.logicalNot(held), mx.Dtype.float32), presence), frequency))
          : mx.array([-(presence + frequency)]);
        return addAt(penalized, index, extra);
      }),
    );
  return [...processors, ...extra];
}

/**
 * vLLM's min_tokens: the tokens that would end the answer (`ends`: its end-of-sequence and stop
 * tokens) are not drawn while it holds fewer than `minTokens` tokens after the `promptLength` ones,
 * unless nothing else may be (as these token controls all: see unlessNothingLeft).
 */
export function minTokensProcessor(ends: readonly number[], minTokens: number, promptLength: number): LogitsProcessor {
  return takingPending((history, logits, pending) => {
    if (history.length + (pending ? 1 : 0) - promptLength >= minTokens || ends.length === 0) return logits;
    return maskAt(logits, ends);
  });
}

/** vLLM's allowed_token_ids: every token but these is made impossible. */
export function allowedTokensProcessor(allowed: readonly number[]): LogitsProcessor {
  return takingPending((_history, logits) => {
    const mask = new Uint8Array(logits.shape.at(-1)!);
    for (const id of allowed) mask[id] = 1;
    return unlessNothingLeft(
      logits,
      mx.where(mx.array(mask, [1, mask.length], mx.Dtype.bool), logits, negativeInfinity(logits)),
    );
  });
}

/**
 * vLLM's bad_words, as token sequences: the last token of each is made impossible where the
 * answer (after the `promptLength` tokens) ends with the rest of it, so that none is ever
 * generated whole (one of a single token never is). Only a sequence of one token needs no history.
 */
export function badWordsProcessor(words: readonly (readonly number[])[], promptLength: number): LogitsProcessor {
  const always = words.filter((w) => w.length === 1).map((w) => w[0]!);
  const longer = words.filter((w) => w.length > 1);
  if (longer.length === 0) return takingPending((_history, logits) => maskAt(logits, always));
  return (history, logits) => {
    const banned = [...always];
    for (const word of longer) {
      const prefix = word.length - 1;
      const from = history.length - prefix;
      if (from < promptLength) continue;
      if (word.slice(0, prefix).every((id, i) => history[from + i] === id)) banned.push(word.at(-1)!);
    }
    return banned.length > 0 ? maskAt(logits, banned) : logits;
  };
}

/** logits [1, vocab] with the tokens `ids` made impossible (-Infinity), unless no token would be left. */
function maskAt(logits: MxArray, ids: readonly number[]): MxArray {
  const index = mx.array(Int32Array.from(ids), [1, ids.length]);
  return unlessNothingLeft(
    logits,
    mx.putAlongAxis(logits, index, mx.broadcastTo(negativeInfinity(logits), index.shape), -1),
  );
}

/**
 * `masked`, a narrowing of `logits` [1, vocab], where it leaves some token possible; else
 * `logits`: an earlier mask (a grammar's) allowed only tokens this one forbids, and a draw from
 * nothing would take a token both refuse. Chosen lazily, with no wait for the host.
 */
function unlessNothingLeft(logits: MxArray, masked: MxArray): MxArray {
  return mx.where(mx.greater(mx.max(masked, -1, true), negativeInfinity(logits)), masked, logits);
}

/** logits [1, vocab] with `values` ([ids' length], host or lazy) added at the positions `index` [1, n]. */
function addAt(logits: MxArray, index: MxArray, values: Float32Array | MxArray): MxArray {
  const at = mx.takeAlongAxis(logits, index, -1);
  const added = values instanceof Float32Array ? mx.array(values, [1, values.length]) : mx.reshape(values, at.shape);
  return mx.putAlongAxis(logits, index, mx.astype(mx.add(at, added), logits.dtype), -1);
}

/** The positions of the recent tokens [1, n]: those on the host, then the pending one (lazy) if any. */
function recentIndex(recent: readonly number[], pending: MxArray | undefined): MxArray | undefined {
  const known = recent.length > 0 ? mx.array(Int32Array.from(recent), [1, recent.length]) : undefined;
  const latest = pending && mx.reshape(mx.astype(pending, mx.Dtype.int32), [1, 1]);
  return known && latest ? mx.concatenate([known, latest], 1) : (known ?? latest);
}

/**
 * Below this a repetition penalty favours a seen token as much as it ever will: its positive logit
 * divided by it is already 1e30 times itself, far past every other. It also bounds the division:
 * 1e-50 is 0 in float32, and a logit over it infinite.
 */
const STRONGEST_FAVOUR = 1e-30;

/** Applies the repetition penalty in place of the logits of recently seen tokens (`index` [1, n]). */
export function penalizeRepetition(logits: MxArray, index: MxArray | undefined, penalty: number): MxArray {
  if (penalty === 1 || index === undefined) return logits;
  const seen = mx.takeAlongAxis(logits, index, -1);
  // In float32, a positive logit divided by a penalty below 1 kept within the logits' dtype: a
  // float16 model's 20 / 1e-6 (or anyone's 20 / 1e-50) was Infinity, and the draw noise.
  const wide = mx.astype(seen, mx.Dtype.float32);
  const divided = mx.divide(wide, Math.max(penalty, STRONGEST_FAVOUR));
  const bounded = mx.minimum(divided, mx.largestFinite(logits.dtype));
  const penalized = mx.where(mx.less(wide, 0), mx.multiply(wide, penalty), bounded);
  return mx.putAlongAxis(logits, index, mx.astype(penalized, logits.dtype), -1);
}

const negativeInfinity = (like: MxArray) => mx.full([], -Infinity, like.dtype);

function topK(logprobs: MxArray, k: number): MxArray {
  const vocab = logprobs.shape.at(-1)!;
  if (k >= vocab) return logprobs;
  const dropped = mx.slice(mx.argpartition(mx.negative(logprobs), k - 1, -1), [0, k], [logprobs.shape[0]!, vocab]);
  return mx.putAlongAxis(logprobs, dropped, mx.broadcastTo(negativeInfinity(logprobs), dropped.shape), -1);
}

/**
 * mlx-lm's top-p: every token at least as likely as the least likely one the nucleus needs, ties
 * included (ranked by a sort, a tie was cut by the tokens' ids; in bfloat16 ties are common).
 * Summed in float32, as mlx-lm's: a half-precision model's bfloat16 sum stops growing once each
 * token's share falls below its last bit (a Zipf vocabulary of 49,152 summed to 0.46), and top-p
 * then kept a sliver of the tokens it should (284 of some 15,700 at 0.9). The mass is measured
 * against the whole sum, not 1 (which float32 can fall short of).
 */
function topP(logprobs: MxArray, p: number): MxArray {
  const sorted = mx.sort(logprobs, -1); // ascending
  const probs = mx.exp(mx.astype(sorted, mx.Dtype.float32));
  // Each position's mass of the tokens more likely than it.
  const above = mx.cumsum(probs, -1, { reverse: true, inclusive: false });
  const rows = logprobs.shape[0]!;
  const total = mx.add(mx.slice(above, [0, 0], [rows, 1]), mx.slice(probs, [0, 0], [rows, 1]));
  const dropped = mx.sum(mx.greaterEqual(above, mx.multiply(total, p)), -1, true);
  // At most all but the most likely: a p below float32's least (1e-50) is 0 there, and every mass reaches it.
  const vocab = logprobs.shape.at(-1)!;
  const threshold = mx.takeAlongAxis(sorted, mx.minimum(mx.astype(dropped, mx.Dtype.int32), vocab - 1), -1);
  return mx.where(mx.less(logprobs, threshold), negativeInfinity(logprobs), logprobs);
}

function minP(logprobs: MxArray, p: number): MxArray {
  const best = mx.max(logprobs, -1, true);
  return mx.where(mx.less(logprobs, mx.add(best, Math.log(p))), negativeInfinity(logprobs), logprobs);
}

/** A sampler: logprobs [B, vocab] → token ids [B]. */
export type Sampler = (logprobs: MxArray) => MxArray;

/**
 * A stream of random keys from a seed (a fresh key per call), or no keys (MLX's global state).
 * `ahead(n)` gives the next n keys without taking them: speculative decoding draws a draft's
 * tokens with the keys that decoding them one at a time would take.
 */
export interface RandomKeys {
  (): MxArray | undefined;
  ahead(n: number): (MxArray | undefined)[];
}

export function randomKeys(seed: number | undefined): RandomKeys {
  if (seed === undefined) return Object.assign(() => undefined, { ahead: (n: number) => Array(n).fill(undefined) });
  let key = mx.keep(mx.random.key(seed));
  const take = () => {
    const [next, sub] = mx.random.split(key);
    key.free();
    key = mx.keep(next);
    return sub;
  };
  const ahead = (n: number) => {
    const keys: MxArray[] = [];
    let at = key;
    for (let i = 0; i < n; i++) {
      const [next, sub] = mx.random.split(at);
      keys.push(sub);
      at = next;
    }
    return keys;
  };
  return Object.assign(take, { ahead });
}

/**
 * The logits a sampler with temperature draws from: logprobs [B, vocab] through top-p, min-p
 * and top-k, divided by the temperature (speculative decoding compares these distributions).
 */
export function samplingLogits(p: SamplingParams, logprobs: MxArray): MxArray {
  // mlx-lm's order: top-p first, on the whole distribution. After top-k the kept mass may be
  // below 1 - top_p, and top-p would then drop every token.
  let filtered = logprobs;
  if (p.topP > 0 && p.topP < 1) filtered = topP(filtered, p.topP);
  if (p.minP > 0) filtered = minP(filtered, p.minP);
  if (p.topK > 0) filtered = topK(filtered, p.topK);
  return mx.multiply(filtered, 1 / Math.min(p.temperature, UNIFORM_ABOVE));
}

export function makeSampler(p: SamplingParams, keys: RandomKeys = randomKeys(p.seed)): Sampler {
  if (p.temperature === 0) return (logprobs) => mx.argmax(logprobs, -1);
  return (logprobs) => drawToken(p, logprobs, keys());
}

/** Tokens [B] drawn from logprobs [B, vocab] with temperature > 0, as a sampler draws them with `key`. */
export function drawToken(p: SamplingParams, logprobs: MxArray, key: MxArray | undefined): MxArray {
  return mx.random.categorical(samplingLogits(p, logprobs), -1, key);
}
