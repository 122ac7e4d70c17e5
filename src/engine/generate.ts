// One generation, start to end, through the scheduler that serves every request: the text as
// it streams, then the result with the figures people ask about (tokens/s, time to first
// token, peak memory). `mlx run`, `mlx chat`, `mlx bench` and the library use it; the server
// reads the scheduler's events itself.
import type { LoadedModel } from "../models/load";
import { DEFAULT_PREFILL_CHUNK } from "./batch";
import { memoryFigures, resetPeakMemory } from "./device";
import type { PrefixCache } from "./prefix-cache";
import { prepareGeneration, type GenerationSpec, type PreparedGeneration } from "./request";
import { Scheduler, sampledTokens, type FinishReason, type GenerationUsage } from "./scheduler";
import { ToolCallStream, type ToolCall, type ToolCallDelta } from "./tools";

export interface CompletionStats {
  promptTokens: number;
  /** Of which the prefix cache held (not prefilled again). */
  cachedTokens: number;
  promptSeconds: number;
  promptTokensPerSecond: number;
  generatedTokens: number;
  generationSeconds: number;
  generationTokensPerSecond: number;
  timeToFirstTokenSeconds: number;
  peakMemoryBytes: number;
  /** Speculative decoding: tokens drafted, and how many the model kept. */
  draftedTokens: number;
  acceptedTokens: number;
}

export interface CompletionResult {
  /** The answer (without a thinking model's reasoning, nor the calls in toolCalls). */
  text: string;
  /** The calls the answer made of the functions the request offered (none when it offered none). */
  toolCalls: ToolCall[];
  /** A thinking model's reasoning ("" when none). */
  reasoning: string;
  promptTokenIds: number[];
  /** The text promptTokenIds stand for (the prompt as the chat template wrote it), where they are that text's alone. */
  promptText?: string;
  /** The answer's tokens (without the end-of-sequence token that ended it). */
  tokenIds: number[];
  finishReason: FinishReason;
  /** The budget ran out and the grammar closed the answer early (valid, but cut short). */
  closedEarly: boolean;
  stats: CompletionStats;
}

/**
 * A scheduler for one caller's generations, one at a time (`mlx run`, a chat, a benchmark):
 * a batch of one through the same code as the server. `prefixCache` keeps a conversation's
 * keys and values between turns. A long prompt is prefilled in the server's chunks: Ctrl-C is
 * seen between two of them (a chunk evaluates without a return to the event loop), so a chunk
 * of 2,048 tokens made it wait seconds.
 */
export function soloScheduler(lm: LoadedModel, prefixCache?: PrefixCache): Scheduler {
  return new Scheduler(lm, { maxBatch: 1, prefillChunk: DEFAULT_PREFILL_CHUNK, maxQueue: 1, prefixCache });
}

/**
 * A piece of the answer as it streams: answer text, a thinking model's reasoning apart, and the
 * progress of the tool calls being written (announced, their arguments in pieces, ended), as the
 * server's streams send them.
 */
export interface CompletionPiece {
  text: string;
  reasoning?: string;
  toolCalls?: ToolCallDelta[];
}

/**
 * Streams the answer to `spec` as pieces; returns the whole result when done. A reader that
 * stops early (a `break` out of its loop) cancels the generation: it would otherwise go on
 * decoding, unread, up to max_tokens, in a batch slot the next request waits for.
 */
export async function* streamCompletion(
  scheduler: Scheduler,
  spec: GenerationSpec,
): AsyncGenerator<CompletionPiece, CompletionResult> {
  const reading = followSignal(spec.signal);
  let prepared: PreparedGeneration;
  try {
    prepared = await prepareGeneration(scheduler.lm, { ...spec, signal: reading.signal });
  } catch (error) {
    // Aborted while its prompt was read: cancelled, as once it runs (not the error of a prompt
    // it had no need to read to the end, such as one longer than the context).
    if (reading.signal.aborted && error === reading.signal.reason) return cancelledBeforeStart();
    reading.abort();
    throw error;
  }
  resetPeakMemory();
  let text = "";
  let reasoning = "";
  // Offered tools: a call the model writes is read out of the answer, never streamed as its text.
  const calls = prepared.toolFormat && new ToolCallStream(prepared.toolFormat);
  try {
    for await (const event of scheduler.submit(prepared.request)) {
      if (event.type === "error") throw event.error;
      if (event.type === "text") {
        const shown = calls ? calls.push(event.text) : event.text;
        const deltas = calls?.callDeltas() ?? [];
        if (!shown && !event.reasoning && deltas.length === 0) continue;
        text += shown;
        reasoning += event.reasoning ?? "";
        yield { text: shown, reasoning: event.reasoning, ...(deltas.length > 0 && { toolCalls: deltas }) };
        continue;
      }
      const answer = calls?.end();
      // What finishes the calls announced, then those read whole at the end only (see ToolCallStream.end).
      const deltas = calls?.callDeltas() ?? [];
      if (answer?.content || deltas.length > 0) {
        text += answer?.content ?? "";
        yield { text: answer?.content ?? "", ...(deltas.length > 0 && { toolCalls: deltas }) };
      }
      const closedEarly = prepared.constraint?.closedEarly() ?? false;
      return {
        text,
        toolCalls: answer?.calls ?? [],
        reasoning,
        promptTokenIds: prepared.promptIds,
        promptText: prepared.promptText,
        tokenIds: event.tokenIds,
        finishReason: event.finishReason,
        closedEarly,
        stats: completionStats(event.usage),
      };
    }
    throw new Error("the scheduler ended a generation without a result");
  } finally {
    reading.abort(); // first, so that a generation left unread stops before its grammar is freed
    prepared.dispose();
  }
}

/** A controller that aborts when `outer` does (at once if it has), and can be aborted on its own. */
function followSignal(outer?: AbortSignal): AbortController {
  const controller = new AbortController();
  if (outer?.aborted) controller.abort();
  else outer?.addEventListener("abort", () => controller.abort(), { once: true, signal: controller.signal });
  return controller;
}

/** The result of a generation cancelled before it was submitted: no prompt read, nothing generated. */
export function cancelledBeforeStart(): CompletionResult {
  const usage = {
    promptTokens: 0,
    completionTokens: 0,
    reasoningTokens: 0,
    cachedTokens: 0,
    queueMs: 0,
    timeToFirstTokenMs: 0,
    totalMs: 0,
    draftedTokens: 0,
    acceptedTokens: 0,
  } satisfies GenerationUsage;
  return {
    text: "",
    toolCalls: [],
    reasoning: "",
    promptTokenIds: [],
    tokenIds: [],
    finishReason: "cancelled",
    closedEarly: false,
    stats: completionStats(usage),
  };
}

/** The whole answer to `spec`, when nothing needs the text as it streams. */
export async function complete(scheduler: Scheduler, spec: GenerationSpec): Promise<CompletionResult> {
  const stream = streamCompletion(scheduler, spec);
  for (;;) {
    const step = await stream.next();
    if (step.done) return step.value;
  }
}

function completionStats(u: GenerationUsage): CompletionStats {
  const prefilled = u.promptTokens - u.cachedTokens;
  const promptSeconds = (u.timeToFirstTokenMs - u.queueMs) / 1000;
  const generationSeconds = (u.totalMs - u.timeToFirstTokenMs) / 1000;
  // The first token comes out of the prefill step, so it is not counted in generation speed; an
  // end-of-sequence (or a stop token left out) that ended the answer is: its decode step is timed,
  // as llama.cpp's and mlx-lm's speeds count it. Uncounted, a short answer's speed read low (a
  // 5-token answer's by a fifth).
  const decoded = Math.max(0, sampledTokens(u) - 1);
  return {
    promptTokens: u.promptTokens,
    cachedTokens: u.cachedTokens,
    promptSeconds,
    promptTokensPerSecond: promptSeconds > 0 ? prefilled / promptSeconds : 0,
    generatedTokens: u.completionTokens,
    generationSeconds,
    generationTokensPerSecond: generationSeconds > 0 ? decoded / generationSeconds : 0,
    timeToFirstTokenSeconds: u.timeToFirstTokenMs / 1000,
    peakMemoryBytes: memoryFigures().peak,
    draftedTokens: u.draftedTokens,
    acceptedTokens: u.acceptedTokens,
  };
}
