// Model mode of `mlx bench` on a remote model (models.toml `provider = ...`): the same two
// tests, seen from here through the provider's API. Its tokenizer is not ours, so the prompt
// is prose of about p tokens (the provider's usage says how many it counted and how many of
// them it had cached: the tokens it prefilled are reported), and the generation test asks for
// g tokens greedily, past the model's end-of-sequence as the local test does (vLLM's ignore_eos,
// which mlx serve and llama.cpp's server take too), counted by the provider's usage: a provider
// that refuses ignore_eos (OpenAI's API, Anthropic's) is asked without, and one of those, or one
// that ignores the field (Ollama), may stop earlier. With a depth, after prose of about d tokens
// (the provider's count is reported), its speed timed from the first token. Its answers and
// what the reports say of it serve the prompt suite too (runRemoteSuite).
import { streamRemoteCompletion, type RemoteModel } from "../providers";
import type { CompletionResult } from "../engine/generate";
import { prose, type ModelBenchOptions, type ModelBenchResult, type ModelInfo } from "./model";
import { uncached } from "./server";
import { summarize } from "./stats";

/** A greedy answer through the chat template, streamed: its text and its figures timed from the stream. */
export async function remoteAnswer(
  remote: RemoteModel,
  text: string,
  maxTokens: number,
  ignoreEos = false,
): Promise<CompletionResult> {
  const stream = streamRemoteCompletion(remote, {
    prompt: { kind: "text", text, template: true },
    sampling: { temperature: 0 },
    maxTokens,
    ...(ignoreEos && { ignoreEos }),
  });
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return step.value;
}

const answer = async (remote: RemoteModel, text: string, maxTokens: number, ignoreEos = false) =>
  (await remoteAnswer(remote, text, maxTokens, ignoreEos)).stats;

/** What the reports say of a remote model: where it is served, not weights seen from here. */
export function remoteModelInfo(remote: RemoteModel, name: string): ModelInfo {
  return {
    model: name,
    path: `${remote.config.baseUrl} (${remote.config.model})`,
    format: "remote",
    architecture: remote.config.kind,
    quantization: "-",
    // The provider's weights and memory are unseen from here: NaN, which the reports write as
    // null (JSON), an empty cell (CSV) and "-" (table), never as a measured 0 bytes.
    sizeBytes: Number.NaN,
  };
}

/**
 * A speed from the provider's counts, or NaN (no sample: "-" in the table, null in --json) where
 * it counted too few tokens to time: none (a stream without usage), or, for the generation test
 * (timed from its first token), one, which leaves no decode time. Its 0 tokens/s measured nothing.
 */
const counted = (speed: number, tokens: number, fewest: number) => (tokens >= fewest ? speed : Number.NaN);
const speedText = (speed: number) =>
  Number.isFinite(speed) ? `${speed.toFixed(2)} tokens/s` : "too few tokens counted to time";

export async function benchRemoteModel(
  remote: RemoteModel,
  name: string,
  o: ModelBenchOptions,
): Promise<ModelBenchResult> {
  const say = o.onProgress ?? (() => {});
  // The local test's prose, at about four characters per token.
  const proseOf = (tokens: number) => prose.repeat(Math.ceil((tokens * 4) / prose.length)).slice(0, tokens * 4);
  const prompt = proseOf(o.promptTokens);
  const genPrompt = o.depth > 0 ? proseOf(o.depth) : "Tell a long story about a river.";
  say(`${name}: warm-up`);
  // The warm-up asks whether the provider takes ignore_eos: one that refuses it (a 400, or
  // Anthropic's API, which has none) is warmed up and measured without.
  const ignoreEos =
    o.genTokens > 0 &&
    (await answer(remote, "Say hello.", 4, true).then(
      () => true,
      () => false,
    ));
  if (!ignoreEos) await answer(remote, "Say hello.", 4);
  const pp: number[] = [];
  const ttft: number[] = [];
  const tg: number[] = [];
  let promptTokens = 0;
  let generated = 0;
  let depth = 0;
  for (let i = 1; i <= o.repetitions; i++) {
    if (o.promptTokens > 0) {
      // Each run's prompt is prefilled anew; what a chat template puts before it (a system
      // prompt) may still be cached: the tokens the provider says it prefilled are those timed.
      const s = await answer(remote, uncached(prompt), 1);
      promptTokens = s.promptTokens - s.cachedTokens;
      const speed = counted(s.promptTokensPerSecond, promptTokens, 1);
      pp.push(speed);
      ttft.push(s.timeToFirstTokenSeconds);
      say(
        `${name}: pp${promptTokens} ${i}/${o.repetitions}: ${speedText(speed)}, first token after ${(s.timeToFirstTokenSeconds * 1000).toFixed(0)} ms`,
      );
    }
    if (o.genTokens > 0) {
      const s = await answer(remote, genPrompt, o.genTokens, ignoreEos);
      generated = s.generatedTokens;
      if (o.depth > 0) depth = s.promptTokens;
      // -g 1, or an early end-of-sequence, answers one token: no decode time.
      const speed = counted(s.generationTokensPerSecond, s.generatedTokens, 2);
      tg.push(speed);
      say(`${name}: tg${s.generatedTokens} ${i}/${o.repetitions}: ${speedText(speed)}`);
    }
  }
  return {
    ...remoteModelInfo(remote, name),
    repetitions: o.repetitions,
    promptTokens,
    genTokens: generated,
    depth,
    promptTokensPerSecond: summarize(pp),
    generationTokensPerSecond: summarize(tg),
    timeToFirstTokenSeconds: summarize(ttft),
    peakMemoryBytes: Number.NaN,
    promptPeakMemoryBytes: Number.NaN,
    generationPeakMemoryBytes: Number.NaN,
    samples: { promptTokensPerSecond: pp, generationTokensPerSecond: tg, timeToFirstTokenSeconds: ttft },
  };
}
