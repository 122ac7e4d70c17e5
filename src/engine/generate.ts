// The token loop for one sequence, shaped like mlx-lm's generate_step so the outputs match
// it token for token: the prompt but its last token is prefilled in chunks (only the cache
// is evaluated), then each step samples from the last position while the next step's graph
// is already being evaluated (async_eval pipelining).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { cacheState, type DecoderModel, type KVCache } from "../models";
import { makeSampler, repetitionPenalty, type LogitsProcessor, type SamplingParams } from "./sampling";

export interface GeneratedToken {
  token: number;
  /** log-probability of the chosen token under the model (before sampling filters). */
  logprob: number;
  /** The full log-probability row, when asked for (for top_logprobs). */
  logprobs?: MxArray;
}

export interface TokenLoopOptions {
  sampling: SamplingParams;
  maxTokens: number;
  /** Prompt tokens per prefill chunk; bounds peak memory on long prompts. */
  prefillStepSize?: number;
  /** Keep each step's logprobs row alive for the caller (who must free it). */
  keepLogprobs?: boolean;
  /** Called after each prefill chunk with (done, total). */
  onPrefill?: (done: number, total: number) => void;
  /**
   * Adjust each step's logits [1, vocab] given every token so far (prompt and generated),
   * e.g. a grammar's allowed-token mask. Runs after the repetition penalty, if any.
   */
  logitsProcessors?: LogitsProcessor[];
}

/**
 * Yields generated tokens for `prompt`, extending `caches` (which may already hold a prefix
 * of the conversation: pass only the new tokens). Stops after maxTokens; the caller stops
 * earlier on EOS or a stop string simply by not asking for more.
 */
export function* tokenLoop(model: DecoderModel, caches: KVCache[], prompt: number[], o: TokenLoopOptions): Generator<GeneratedToken> {
  if (prompt.length === 0) throw new Error("empty prompt: nothing to generate from");
  const sample = makeSampler(o.sampling);
  const history: number[] = [];
  const stepSize = o.prefillStepSize ?? 2048;

  let remaining = prompt;
  let done = 0;
  o.onPrefill?.(0, prompt.length);
  while (remaining.length > 1) {
    const chunk = remaining.slice(0, Math.min(stepSize, remaining.length - 1));
    // Build the graph in a scope and evaluate after it: once the scope has dropped our
    // handles on the intermediates, MLX can free each one as soon as it is consumed.
    mx.scope(() => {
      model.layers(model.embed(tokens(chunk)), caches);
    });
    mx.evaluate(...cacheState(caches));
    history.push(...chunk);
    done += chunk.length;
    o.onPrefill?.(done, prompt.length);
    remaining = remaining.slice(chunk.length);
  }

  // One step: the last position's logits → (token, its logprob, the logprobs row), all left
  // unevaluated, so one async evaluation computes them together.
  // Without logits processors the input can be the previous step's unevaluated token, so the
  // next graph is built while MLX still computes the current one; processors need the
  // previous token on the host first.
  const processors = [...(o.sampling.repetitionPenalty !== 1 ? [repetitionPenalty(o.sampling)] : []), ...(o.logitsProcessors ?? [])];
  const hostTokens = processors.length > 0;
  const step = (input: number[] | MxArray): Step =>
    mx.scope(() => {
      const ids = Array.isArray(input) ? tokens(input) : mx.reshape(input, [1, -1]);
      const hidden = model.layers(model.embed(ids), caches);
      const last = mx.slice(hidden, [0, hidden.shape[1]! - 1], [1, hidden.shape[1]!]);
      let logits = mx.reshape(model.head(last), [1, -1]);
      for (const process of processors) logits = process(history, logits);
      const logprobs = mx.subtract(logits, mx.logsumexp(logits, undefined, true));
      const token = sample(logprobs);
      const chosen = mx.takeAlongAxis(logprobs, mx.reshape(token, [1, 1]), -1);
      return [token, chosen, mx.squeeze(logprobs, 0)] as Step;
    });

  history.push(...remaining);
  let current: Step = step(remaining);
  mx.asyncEvaluate(...current);
  // The step whose arrays are still ours to free if the caller stops early: the one being
  // read, or the one built ahead of what the caller has seen.
  let owned: Step | undefined = current;
  try {
    for (let n = 0; n < o.maxTokens; n++) {
      const [y, chosen, logprobs] = current;
      const more = n + 1 < o.maxTokens;
      let next: Step | undefined;
      if (more && !hostTokens) {
        // Queue the next step before waiting on this one, so MLX never idles between steps.
        next = step(y);
        mx.asyncEvaluate(...next);
      }
      const token = y.item();
      const logprob = chosen.item();
      history.push(token);
      if (more && hostTokens) {
        next = step([token]);
        mx.asyncEvaluate(...next);
      }
      y.free();
      chosen.free();
      // A kept row belongs to the caller once yielded.
      if (!o.keepLogprobs) logprobs.free();
      owned = next;
      yield { token, logprob, logprobs: o.keepLogprobs ? logprobs : undefined };
      if (!next) return;
      current = next;
    }
  } finally {
    if (owned) for (const a of owned) a.free();
  }
}

type Step = [token: MxArray, logprob: MxArray, logprobs: MxArray];

function tokens(ids: number[]): MxArray {
  return mx.array(Int32Array.from(ids), [1, ids.length]);
}
