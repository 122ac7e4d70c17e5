// A generation served by a remote provider, in the shape every route already answers with:
// the provider's events become the engine's (text as it arrives; calls, usage and timings at
// the end), so each API family's route serves any provider unchanged. The first event is
// awaited here, so a provider that fails before answering (unreachable, circuit open, queue
// full, an error status after the retries) is an HTTP error status, not a broken stream.
import { parseExactJson } from "../exact-json";
import { ProviderError, UnsupportedError } from "../errors";
import type { GenerationEvent } from "../engine/scheduler";
import type { ToolCall, ToolCallParser } from "../engine/tools";
import { offeredTools } from "../engine/tools";
import type { RemoteEvent, RemoteModel } from "../providers";
import { ApiError } from "./errors";
import {
  recordOutcome,
  recordUnstarted,
  requestDeadline,
  type GenerateInput,
  type Generation,
  type GenerationContext,
} from "./generation";

/**
 * A remote answer's calls travel to the route as one last piece of text behind this marker (a
 * private-use character no provider writes), and this parser reads them back, ids included.
 */
const CALLS_MARKER = "\u{F8FF}calls:";
const remoteCalls: ToolCallParser = {
  markers: [CALLS_MARKER],
  anywhere: true,
  parse(text) {
    const at = text.indexOf(CALLS_MARKER);
    if (at < 0) return { content: text, calls: [] };
    return { content: text.slice(0, at), calls: parseExactJson(text.slice(at + CALLS_MARKER.length)) as ToolCall[] };
  },
};

export async function startRemoteGeneration(
  ctx: GenerationContext,
  remote: RemoteModel,
  input: GenerateInput,
): Promise<Generation> {
  const name = input.model;
  if (input.prefixIds?.length)
    throw new UnsupportedError(`model '${name}' is remote: a context of token ids cannot be sent to it`, "context");
  if (input.logprobs || input.topLogprobs)
    throw new UnsupportedError(`model '${name}' is remote: logprobs are not available from it`, "logprobs");
  if (input.contextBound)
    throw new UnsupportedError(
      `model '${name}' is remote: its context is the provider's, which ${input.contextBound.param} cannot bound`,
      input.contextBound.param,
    );
  const labels = { provider: remote.provider.label, model: name };
  const m = ctx.metrics;
  const deadline = requestDeadline(input, ctx.shutdown.signal);
  const controller = deadline.controller;
  const started = performance.now();
  // When its first attempt had a connection of the provider's pool: the wait before is its queue's.
  let connectedAt: number | undefined;
  const queueMs = () => (connectedAt ?? performance.now()) - started;
  let providerOutcome = "cancelled";
  const remoteEvents = remote.stream(
    {
      prompt: input.prompt,
      sampling: input.sampling,
      maxTokens: input.maxTokens,
      ...(input.maxTokensParam === "max_completion_tokens" && { maxTokensParam: input.maxTokensParam }),
      stop: input.stop,
      format: input.format,
      tools: input.tools,
      thinking: input.thinking,
      ignoreEos: input.ignoreEos,
      controls: input.controls,
      hints: input.hints,
    },
    {
      signal: controller.signal,
      onRetry: (reason) => m.providerRetries.inc({ ...labels, reason }),
      onConnection: () => (connectedAt ??= performance.now()),
    },
  );
  let finished = false;
  const finishedRemote = () => {
    deadline.release();
    m.providerRequests.inc({ ...labels, outcome: providerOutcome });
    m.providerDuration.observe((performance.now() - started) / 1000, labels);
  };
  let first: IteratorResult<RemoteEvent>;
  try {
    first = await remoteEvents.next();
  } catch (error) {
    // The client went away before the first event (queued, between retries, or while a JSON
    // answer was being checked): a cancellation, not the provider's failure nor ours.
    const gone = controller.signal.aborted && !deadline.cutShort();
    providerOutcome = gone ? "cancelled" : outcomeOf(error, deadline.timedOut());
    finishedRemote();
    recordUnstarted(m, input, error, deadline);
    if (gone) throw new ApiError(499, "the client went away before the provider answered", "invalid_request_error");
    throw deadline.cutShort()?.error ?? error;
  }
  const firstAt = performance.now();
  // The provider's usage as its answer started, where it tells one (an Anthropic provider's message_start).
  const startUsage = !first.done && first.value.type === "start" ? first.value.usage : undefined;
  m.providerFirstByte.observe((firstAt - started) / 1000, labels);

  async function* events(): AsyncGenerator<GenerationEvent> {
    let next = first;
    let completionTokens = 0;
    const ms = () => performance.now() - started;
    const cancelled = (): GenerationEvent => ({
      type: "done",
      finishReason: "cancelled",
      usage: {
        promptTokens: 0,
        completionTokens,
        cachedTokens: 0,
        reasoningTokens: 0,
        draftedTokens: 0,
        acceptedTokens: 0,
        queueMs: queueMs(),
        timeToFirstTokenMs: firstAt - started,
        totalMs: ms(),
      },
      tokenIds: [],
    });
    try {
      while (!next.done) {
        const event = next.value;
        // A delta a token, as `mlx chat` counts them: what a stream its client left generated
        // (its usage never comes), until the provider's usage says.
        if ((event.type === "text" || event.type === "reasoning") && event.text) completionTokens++;
        if (event.type === "start") {
          // Told on as the stream starts (promptUsage), and again in its end's usage.
        } else if (event.type === "text") yield { type: "text", text: event.text, tokens: [] };
        else if (event.type === "reasoning") yield { type: "text", text: "", reasoning: event.text, tokens: [] };
        else if (event.type === "thinking_block")
          yield { type: "text", text: "", thinkingBlock: event.block, tokens: [] };
        else {
          providerOutcome = "ok";
          if (event.calls.length > 0)
            yield { type: "text", text: CALLS_MARKER + JSON.stringify(event.calls), tokens: [] };
          // A provider that sends no usage (include_usage ignored) leaves its deltas' count, as run and chat take it.
          completionTokens = event.usage.completionTokens || completionTokens;
          yield {
            type: "done",
            finishReason: event.finishReason,
            stopSequence: event.stopSequence,
            stopToken: event.stopToken,
            ...(event.refused && { refused: true }),
            tokenIds: [],
            usage: {
              ...event.usage,
              completionTokens,
              reasoningTokens: 0,
              draftedTokens: 0,
              acceptedTokens: 0,
              queueMs: queueMs(),
              timeToFirstTokenMs: firstAt - started,
              totalMs: ms(),
            },
          };
        }
        next = await remoteEvents.next();
      }
    } catch (error) {
      if (controller.signal.aborted) {
        providerOutcome = deadline.cutShort()?.outcome ?? "cancelled";
        yield cancelled();
      } else {
        providerOutcome = outcomeOf(error, false);
        yield { type: "error", error: error as Error };
      }
    }
  }

  // The dashboard's live count: a delta a token, as the events' own count above (not the calls,
  // which come with the end).
  const deltas = (event: { text: string; reasoning?: string }) =>
    event.reasoning || (event.text && !event.text.startsWith(CALLS_MARKER)) ? 1 : 0;
  const tracked = ctx.inflight.track(name, 0, events(), deltas);
  return {
    loadMs: 0,
    promptIds: [],
    toolFormat: offeredTools(input.tools) && remoteCalls,
    events: tracked.events,
    admitted: Promise.resolve(),
    promptUsage: () => startUsage ?? { promptTokens: 0, cachedTokens: 0 },
    cutShort: deadline.cutShort,
    abort: () => controller.abort(),
    closedEarly: () => false,
    finish: (outcome, usage) => {
      if (finished) return;
      finished = true;
      ctx.inflight.end(tracked.flight);
      // A route that stops reading early (client gone) ends the provider's request too.
      void remoteEvents.return(undefined);
      finishedRemote();
      if (outcome !== undefined) recordOutcome(m, input, outcome, usage);
    },
  };
}

/** The provider outcome /metrics counts for an error: the ProviderError's kind, a request it refused, else "error". */
function outcomeOf(error: unknown, timedOut: boolean): string {
  if (timedOut) return "timeout";
  if (error instanceof ProviderError) return error.kind;
  return error instanceof UnsupportedError ? "unsupported" : "error";
}
