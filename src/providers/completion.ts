// A remote answer for the command line (run, chat, bench), with the contract of the engine's
// streamCompletion: text deltas as they arrive, then the whole result with its figures, so a
// command treats a remote model as it treats a local one.
import type { CompletionPiece, CompletionResult } from "../engine/generate";
import { defaultSampling, type SamplingParams } from "../engine/sampling";
import type { SamplingInput } from "../api/common";
import type { RemoteModel } from "./model";
import type { RemoteRequest } from "./types";

export async function* streamRemoteCompletion(
  remote: RemoteModel,
  req: RemoteRequest,
  signal?: AbortSignal,
): AsyncGenerator<CompletionPiece, CompletionResult> {
  // Restarted as each attempt has its connection: the figures are the provider's on the answer it
  // gave (its prefill, its decode), not the wait for a connection, an attempt that failed (a 503,
  // a timeout) or the backoff before the retry, which would pass for a slow prefill.
  let started = performance.now();
  let firstAt: number | undefined;
  let text = "";
  let reasoning = "";
  /**
   * Text deltas received, one token each as OpenAI-compatible servers stream them: the count
   * of a stopped answer, whose usage never comes, or of one from a provider that sends none (as
   * `mlx bench` counts a stream without usage).
   */
  let deltas = 0;
  const result = (
    finishReason: CompletionResult["finishReason"],
    usage = { promptTokens: 0, completionTokens: deltas, cachedTokens: 0 },
  ) => {
    const end = performance.now();
    const ttft = ((firstAt ?? end) - started) / 1000;
    const generationSeconds = (end - (firstAt ?? end)) / 1000;
    return {
      text,
      toolCalls: [],
      reasoning,
      promptTokenIds: [],
      tokenIds: [],
      finishReason,
      closedEarly: false,
      stats: {
        promptTokens: usage.promptTokens,
        cachedTokens: usage.cachedTokens,
        // The provider's prefill and network time are one figure seen from here: the wait for the first text.
        promptSeconds: ttft,
        promptTokensPerSecond: ttft > 0 ? (usage.promptTokens - usage.cachedTokens) / ttft : 0,
        generatedTokens: usage.completionTokens,
        generationSeconds,
        // As the engine counts: the first token comes with the prefill.
        generationTokensPerSecond:
          generationSeconds > 0 ? Math.max(0, usage.completionTokens - 1) / generationSeconds : 0,
        timeToFirstTokenSeconds: ttft,
        peakMemoryBytes: 0,
        draftedTokens: 0,
        acceptedTokens: 0,
      },
    };
  };
  try {
    const onConnection = () => {
      started = performance.now();
    };
    for await (const event of remote.stream(req, { signal, onConnection })) {
      // A provider that sends no usage (some OpenAI-compatible servers ignore include_usage) counts 0.
      if (event.type === "done")
        return result(event.finishReason, {
          ...event.usage,
          completionTokens: event.usage.completionTokens || deltas,
        });
      // Only a client that sends the conversation back has a use for a thinking block's signature.
      if (event.type === "thinking_block" || event.type === "start") continue;
      firstAt ??= performance.now();
      if (event.text) deltas++;
      if (event.type === "reasoning") {
        reasoning += event.text;
        yield { text: "", reasoning: event.text };
      } else {
        text += event.text;
        yield { text: event.text };
      }
    }
  } catch (error) {
    if (signal?.aborted) return result("cancelled");
    throw error;
  }
  throw new Error("the remote answer ended without a result");
}

/**
 * A command's sampling as a remote request carries it: the values that change nothing (top_p
 * 1, top_k 0, ...) are left to the provider, the temperature is kept (the CLI is greedy by
 * default, as mlx-lm is, and says so to the provider too).
 */
export function remoteSampling(s: SamplingParams): SamplingInput {
  const changed = (key: keyof SamplingParams) => (s[key] !== defaultSampling[key] ? s[key] : undefined);
  return {
    temperature: s.temperature,
    topP: changed("topP") as number | undefined,
    topK: changed("topK") as number | undefined,
    minP: changed("minP") as number | undefined,
    repetitionPenalty: changed("repetitionPenalty") as number | undefined,
    seed: s.seed,
  };
}
