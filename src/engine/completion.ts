// One completion on a loaded model: token ids in, streamed text out, with EOS and stop
// strings, the context limit, cancellation, and the figures people ask about (tokens/s,
// time to first token, peak memory).
import * as mx from "../mlx";
import type { LoadedModel } from "../models/load";
import { freeCaches, makeCaches, type KVCache } from "../models";
import { createDetokenizer } from "../tokenizer/detokenizer";
import { tokenLoop, type TokenLoopOptions } from "./generate";
import type { SamplingParams } from "./sampling";
import { StopMatcher } from "./stop";

export type FinishReason = "stop" | "length" | "cancelled";

export interface CompletionOptions {
  sampling: SamplingParams;
  maxTokens: number;
  stop?: string[];
  signal?: AbortSignal;
  prefillStepSize?: number;
  onPrefill?: (done: number, total: number) => void;
  logitsProcessors?: TokenLoopOptions["logitsProcessors"];
}

export interface CompletionStats {
  promptTokens: number;
  promptSeconds: number;
  promptTokensPerSecond: number;
  generatedTokens: number;
  generationSeconds: number;
  generationTokensPerSecond: number;
  timeToFirstTokenSeconds: number;
  peakMemoryBytes: number;
}

export interface CompletionResult {
  text: string;
  promptTokenIds: number[];
  tokenIds: number[];
  /** Every sampled token in order, including the end-of-sequence token that ended the answer. */
  sampledIds: number[];
  finishReason: FinishReason;
  stats: CompletionStats;
}

export class ContextLengthError extends Error {
  override name = "ContextLengthError";
}

/** Throws when `promptTokens` new tokens do not fit after what the cache already holds. */
export function checkContext(lm: LoadedModel, promptTokens: number, cached = 0): void {
  const limit = lm.config.maxPositionEmbeddings;
  if (cached + promptTokens >= limit) {
    throw new ContextLengthError(
      `the prompt is ${promptTokens + cached} tokens, but the model's context is ${limit} tokens (leave room for at least one generated token)`,
    );
  }
}

/**
 * Streams the completion of `promptIds` (the tokens not yet in `caches`) as text deltas,
 * and returns the whole result when done.
 */
export function* complete(lm: LoadedModel, caches: KVCache[], promptIds: number[], o: CompletionOptions): Generator<string, CompletionResult> {
  const cached = caches[0]?.offset ?? 0;
  checkContext(lm, promptIds.length, cached);
  const room = lm.config.maxPositionEmbeddings - cached - promptIds.length;
  const maxTokens = Math.min(o.maxTokens, room);
  const eos = lm.tokenizer.eosTokenIds;
  const detokenizer = createDetokenizer(lm.tokenizer);
  const stops = new StopMatcher(o.stop ?? []);

  mx.memory.resetPeakMemory();
  const start = performance.now();
  let firstTokenAt = 0;
  const tokenIds: number[] = [];
  const sampledIds: number[] = [];
  let text = "";
  let finishReason: FinishReason = "length";
  // Text held back (an unfinished character, a possible stop string) is released at the end,
  // except after a stop string, which withholds everything from itself on.
  let stoppedByString = false;

  const loop = tokenLoop(lm.model, caches, promptIds, {
    sampling: o.sampling,
    maxTokens,
    prefillStepSize: o.prefillStepSize,
    onPrefill: o.onPrefill,
    logitsProcessors: o.logitsProcessors,
  });
  for (const { token } of loop) {
    if (tokenIds.length === 0) firstTokenAt = performance.now();
    if (o.signal?.aborted) {
      finishReason = "cancelled";
      break;
    }
    sampledIds.push(token);
    if (eos.has(token)) {
      finishReason = "stop";
      break;
    }
    tokenIds.push(token);
    const { text: shown, stopped } = stops.push(detokenizer.push(token));
    if (shown) {
      text += shown;
      yield shown;
    }
    if (stopped) {
      finishReason = "stop";
      stoppedByString = true;
      break;
    }
  }
  loop.return(undefined);
  if (!stoppedByString) {
    const rest = stops.push(detokenizer.flush());
    const tail = rest.stopped ? rest.text : rest.text + stops.flush();
    if (rest.stopped) finishReason = "stop";
    if (tail) {
      text += tail;
      yield tail;
    }
  }
  const end = performance.now();
  const promptSeconds = ((firstTokenAt || end) - start) / 1000;
  const generationSeconds = firstTokenAt ? (end - firstTokenAt) / 1000 : 0;
  // The first token comes out of the prefill step, so it is not counted in generation speed.
  const decoded = Math.max(0, tokenIds.length - 1);
  return {
    text,
    promptTokenIds: promptIds,
    tokenIds,
    sampledIds,
    finishReason,
    stats: {
      promptTokens: promptIds.length,
      promptSeconds,
      promptTokensPerSecond: promptSeconds > 0 ? promptIds.length / promptSeconds : 0,
      generatedTokens: tokenIds.length,
      generationSeconds,
      generationTokensPerSecond: generationSeconds > 0 ? decoded / generationSeconds : 0,
      timeToFirstTokenSeconds: promptSeconds,
      peakMemoryBytes: mx.memory.peakMemory(),
    },
  };
}

/** A whole completion on fresh caches, when nothing needs the text as it streams. */
export function completeAll(lm: LoadedModel, promptIds: number[], o: CompletionOptions): CompletionResult {
  const caches = makeCaches(lm.model);
  try {
    const stream = complete(lm, caches, promptIds, o);
    let step = stream.next();
    while (!step.done) step = stream.next();
    return step.value;
  } finally {
    freeCaches(caches);
  }
}
