// From a validated API request to a running generation, for both API families: hold the model
// (the request's timeout already running), settle sampling defaults, prepare the request in the
// engine (prompt ids, context, grammar, logits processors) and submit it to the model's
// scheduler with a signal that fires on client disconnect or the request timeout (a model that
// is a remote alias goes to its provider instead: remote-generation.ts). Also the per-request
// figures that feed /metrics.
import type { RequestHints, SamplingInput } from "../api/common";
import {
  contextLimit,
  prepareGeneration,
  type AnswerControls,
  type ContextBound,
  type FormatInput,
  type PreparedGeneration,
  type PromptInput,
} from "../engine/request";
import type { SamplingParams } from "../engine/sampling";
import { settleSampling } from "../engine/model-settings";
import type { GenerationEvent, GenerationUsage, TokenLogprob } from "../engine/scheduler";
import type { ChatLogprob } from "../api/openai";
import type { ToolCallParser, ToolRequest } from "../engine/tools";
import type { ThinkingRequest } from "../engine/reasoning";
import type { Tokenizer } from "../tokenizer/tokenizer";
import { remoteModel } from "../providers";
import { readGenerationDefaults, type SamplingDefaults } from "../models/generation-config";
import type { LoadedModel } from "../models/load";
import {
  aliasLimits,
  aliasPrompt,
  aliasSampling,
  loadAliases,
  type ModelLimits,
  type ModelPrompt,
} from "../store/aliases";
import { badRequest, requestTimeout, serverStopping, toApiError } from "./errors";
import { knownName, type Lease, type ModelRegistry } from "./model-registry";
import { startRemoteGeneration } from "./remote-generation";
import type { ServerMetrics } from "./metrics";
import type { ServerConfig } from "./state";
import type { Flight, InFlight } from "./inflight";

export interface GenerateInput {
  route: string;
  model: string;
  keepAliveMs?: number;
  prompt: PromptInput;
  /** Ollama's /api/generate context: ids prepended to the prompt. */
  prefixIds?: number[];
  sampling: SamplingInput;
  defaults: Partial<SamplingParams>;
  /** undefined: the model's num_predict (models.toml), else the context's end; Infinity: the context's end. */
  maxTokens?: number;
  /** The API's own maxTokens where neither the request nor its model sets one (OpenAI's completions: 16). */
  defaultMaxTokens?: number;
  /** Whether a max_tokens beyond the context is an error (OpenAI) or clamped (Ollama). */
  strictMaxTokens: boolean;
  /** The request's name for maxTokens, in its errors (default max_tokens). */
  maxTokensParam?: string;
  /** The request's own bound on its context (Ollama's num_ctx). */
  contextBound?: ContextBound;
  stop?: string[];
  /** Whether the answer's tokens' logprobs are asked for. */
  logprobs?: boolean;
  /** Alternatives reported per token (default 0). */
  topLogprobs?: number;
  /** Structured output to enforce while sampling. */
  format?: FormatInput;
  /** Functions the model may (or must) call; chat prompts only. */
  tools?: ToolRequest;
  /** Thinking on or off, and its budget, for models that think. */
  thinking?: ThinkingRequest;
  /** Generate past end-of-sequence tokens (vLLM's ignore_eos). */
  ignoreEos?: boolean;
  /** vLLM's controls of the answer's tokens and its end (min_tokens, stop_token_ids, ...). */
  controls?: AnswerControls;
  /** What the request says about itself (end user, cache key): for a remote provider only. */
  hints?: RequestHints;
  /**
   * Set on a prompt's further choices (n > 1): the client sent the prompt once, and /metrics
   * counts its tokens once, as the answer's usage does.
   */
  repeatsPrompt?: boolean;
  /** An earlier choice's hold on the model (n > 1): shared, not acquired again (see Lease.share). */
  heldWith?: Lease;
  /** Aborts when the client goes away. */
  clientSignal: AbortSignal;
  timeoutMs: number;
}

export interface Generation {
  /** Milliseconds spent loading the model for this request. */
  loadMs: number;
  /** Its hold on the model until finish (none for a remote model). */
  lease?: Lease;
  /** The model's tokenizer (none for a remote model: it has no logprobs either). */
  tokenizer?: Tokenizer;
  /** The prompt's token ids (none for a remote model). */
  promptIds: number[];
  /** Set when the model was offered tools: how to read its calls out of the answer. */
  toolFormat?: ToolCallParser;
  /** The sampling it runs with, defaults settled (none for a remote model: its provider settles them). */
  sampling?: SamplingParams;
  events: AsyncIterable<GenerationEvent>;
  /**
   * Resolves once the engine began its prefill, when the prefix cache's share of the prompt is
   * known (promptUsage); at once for a remote model. It may never resolve for a generation
   * that ends first: wait on it together with its first event.
   */
  admitted: Promise<void>;
  /**
   * The prompt's tokens and those a cache gave (or a provider's cache took), as known once
   * admitted: a local model's prefix cache, or a remote provider's usage as its answer started
   * (an Anthropic provider's; else 0, told at the end).
   */
  promptUsage: () => { promptTokens: number; cachedTokens: number; cacheWriteTokens?: number };
  /** Set once the server ended it (its timeout, its shutdown); a client gone is not. */
  cutShort: () => CutShort | undefined;
  /** Stops the generation (client gone). */
  abort: () => void;
  /** Whether the token budget closed a structured answer early (to keep it valid). */
  closedEarly: () => boolean;
  /**
   * Records the outcome in /metrics and releases the model; call exactly once. No outcome: the
   * request was refused after this choice of it started (a 4xx), and it was never a generation.
   */
  finish: (outcome: string | undefined, usage?: GenerationUsage) => void;
}

export interface GenerationContext {
  models: ModelRegistry;
  metrics: ServerMetrics;
  inflight: InFlight;
  /** See ServerState.shutdown. */
  shutdown: AbortController;
}

/** The model a request names, else the server's default; a 400 when there is neither. */
export function requestedModel(config: ServerConfig, name: string | undefined): string {
  const model = name ?? config.defaultModel;
  if (!model) throw badRequest("'model' is required", "model");
  return model;
}

/** What a generation takes from its HTTP request: the route, the client's disconnect, the server's timeout. */
export function httpRequestBounds(
  config: ServerConfig,
  req: { path: string; raw: Request },
): Pick<GenerateInput, "route" | "clientSignal" | "timeoutMs"> {
  return { route: req.path, clientSignal: req.raw.signal, timeoutMs: config.requestTimeoutMs };
}

/** Why the server ended a generation before its end, as its outcome in /metrics and its error. */
export interface CutShort {
  outcome: "timeout" | "shutdown";
  error: Error;
}

/**
 * A request's own abort: its client going away, its timeout, whose clock starts now (waiting
 * for a model, or for a remote provider, counts), or the server's shutdown.
 */
export function requestDeadline(input: Pick<GenerateInput, "clientSignal" | "timeoutMs">, shutdown?: AbortSignal) {
  const controller = new AbortController();
  let cut: CutShort | undefined;
  const cutShort = (reason: CutShort) => {
    cut ??= reason;
    controller.abort();
  };
  const timer = setTimeout(() => cutShort({ outcome: "timeout", error: requestTimeout() }), input.timeoutMs);
  const onShutdown = () => cutShort({ outcome: "shutdown", error: serverStopping() });
  const onClientAbort = () => controller.abort();
  input.clientSignal.addEventListener("abort", onClientAbort, { once: true });
  shutdown?.addEventListener("abort", onShutdown, { once: true });
  if (input.clientSignal.aborted) controller.abort();
  if (shutdown?.aborted) onShutdown();
  return {
    controller,
    timedOut: () => cut?.outcome === "timeout",
    cutShort: () => cut,
    /** Stops the clock and stops listening to the client and the server; once the request has ended. */
    release: () => {
      clearTimeout(timer);
      input.clientSignal.removeEventListener("abort", onClientAbort);
      shutdown?.removeEventListener("abort", onShutdown);
    },
  };
}

/**
 * The model named, held for a request that generates nothing (tokenizing, counting tokens, a
 * preload): its wait for the model, or for room to load it, ends as a generation's would, at the
 * request timeout (a 504), when the client goes away, or when the server stops (a 503).
 */
export async function holdModel(
  ctx: Pick<GenerationContext, "models" | "shutdown">,
  name: string,
  input: Pick<GenerateInput, "clientSignal" | "timeoutMs" | "keepAliveMs">,
): Promise<Lease> {
  const deadline = requestDeadline(input, ctx.shutdown.signal);
  try {
    return await ctx.models.acquire(name, input.keepAliveMs, deadline.controller.signal);
  } catch (error) {
    throw deadline.cutShort()?.error ?? error;
  } finally {
    deadline.release();
  }
}

export async function startGeneration(ctx: GenerationContext, input: GenerateInput): Promise<Generation> {
  const remote = remoteModel(input.model);
  // A count without a limit (Ollama's num_predict -1) is no count to a provider.
  if (remote)
    return startRemoteGeneration(ctx, remote, {
      ...input,
      maxTokens: finite(input.maxTokens ?? input.defaultMaxTokens),
    });
  // The request's clock starts now: waiting for a model to load (or for room to load it) counts.
  const deadline = requestDeadline(input, ctx.shutdown.signal);
  const controller = deadline.controller;
  const arrived = performance.now();
  // The time from its arrival to its submission to the scheduler: its wait for its model and its prompt's preparation.
  let beforeSubmitMs = 0;
  let lease: Lease | undefined;
  let prepared: PreparedGeneration | undefined;
  let flight: Flight | undefined;
  let finished = false;
  const finish = (outcome: string | undefined, usage?: GenerationUsage) => {
    if (finished) return;
    finished = true;
    prepared?.dispose();
    if (flight) ctx.inflight.end(flight);
    deadline.release();
    if (outcome !== undefined) recordOutcome(ctx.metrics, input, outcome, usage && sinceArrival(usage, beforeSubmitMs));
    lease?.release();
  };
  try {
    lease = input.heldWith
      ? input.heldWith.share()
      : await ctx.models.acquire(input.model, input.keepAliveMs, controller.signal);
    const lm = lease.entry.lm;
    const sampling = settleSampling(input.sampling, input.defaults, loadedSamplingDefaults(lm, input.model));
    prepared = await prepareGeneration(lm, {
      prompt: input.prompt,
      modelPrompt: modelPrompt(input.model),
      prefixIds: input.prefixIds,
      sampling,
      ...settleLimits(input, modelLimits(input.model)),
      topLogprobs: input.topLogprobs ?? 0,
      format: input.format,
      tools: input.tools,
      thinking: input.thinking,
      ignoreEos: input.ignoreEos,
      controls: input.controls,
      signal: controller.signal,
    });
    beforeSubmitMs = performance.now() - arrived;
    const admitted = Promise.withResolvers<void>();
    const promptTokens = prepared.promptIds.length;
    let cachedTokens = 0;
    const onStart = (cached: number) => {
      cachedTokens = cached;
      admitted.resolve();
    };
    const tracked = ctx.inflight.track(
      input.model,
      prepared.promptIds.length,
      lease.entry.scheduler.submit({ ...prepared.request, adapter: lease.adapter, onStart }),
    );
    flight = tracked.flight;
    const constraint = prepared.constraint;
    return {
      loadMs: lease.loadMs,
      lease,
      tokenizer: lm.tokenizer,
      promptIds: prepared.promptIds,
      toolFormat: prepared.toolFormat,
      sampling,
      events: tracked.events,
      admitted: admitted.promise,
      promptUsage: () => ({ promptTokens, cachedTokens }),
      cutShort: deadline.cutShort,
      abort: () => controller.abort(),
      closedEarly: () => constraint?.closedEarly() ?? false,
      finish,
    };
  } catch (error) {
    finished = true;
    prepared?.dispose();
    deadline.release();
    lease?.release();
    recordUnstarted(ctx.metrics, input, error, deadline);
    throw deadline.cutShort()?.error ?? error;
  }
}

/**
 * Counts in /metrics a generation that ended before its first event: its client gone
 * ("cancelled"), cut short ("timeout", "shutdown") while it waited for its model (its load, or
 * room to load it) or for its provider, or failed on the server's side ("error": a model that
 * does not load, a provider that fails). A request refused (a 4xx: a prompt too long, an
 * unknown model) was never a generation.
 */
export function recordUnstarted(
  m: ServerMetrics,
  input: Pick<GenerateInput, "route" | "repeatsPrompt">,
  error: unknown,
  deadline: Pick<ReturnType<typeof requestDeadline>, "controller" | "cutShort">,
): void {
  const outcome = deadline.controller.signal.aborted
    ? (deadline.cutShort()?.outcome ?? "cancelled")
    : toApiError(error).status >= 500
      ? "error"
      : undefined;
  if (outcome) recordOutcome(m, input, outcome, undefined);
}

/**
 * A local generation's times as /metrics counts them: from the request's arrival, as its client
 * waited and as a remote model's are (its wait for a connection counts), not from its submission
 * to the scheduler, which left out its wait for its model (a load of seconds, or room for one).
 */
function sinceArrival(usage: GenerationUsage, beforeSubmitMs: number): GenerationUsage {
  return {
    ...usage,
    queueMs: usage.queueMs + beforeSubmitMs,
    timeToFirstTokenMs: usage.timeToFirstTokenMs + beforeSubmitMs,
    totalMs: usage.totalMs + beforeSubmitMs,
  };
}

export function recordOutcome(
  m: ServerMetrics,
  input: Pick<GenerateInput, "route" | "repeatsPrompt">,
  outcome: string,
  usage: GenerationUsage | undefined,
): void {
  m.finished.inc({ route: input.route, finish_reason: outcome });
  if (!usage) return;
  // "Processed": a prompt still waiting for its batch slot when its generation ended was never read.
  if (!input.repeatsPrompt && !usage.unstarted) m.promptTokens.inc({}, usage.promptTokens);
  m.generatedTokens.inc({}, usage.completionTokens);
  m.queueWait.observe(usage.queueMs / 1000);
  if (usage.completionTokens > 0) m.ttft.observe(usage.timeToFirstTokenMs / 1000);
  m.e2e.observe(usage.totalMs / 1000);
}

const recommended = new WeakMap<LoadedModel, SamplingDefaults>();

/** A loaded model's sampling values for requests naming it `name` (its generation_config.json read once per load). */
function loadedSamplingDefaults(lm: LoadedModel, name: string): SamplingDefaults {
  let own = recommended.get(lm);
  if (!own) recommended.set(lm, (own = readGenerationDefaults(lm.path)));
  return modelSamplingDefaults(lm.path, name, own);
}

/** The sampling values of the model at `path` named `name`: its alias's in models.toml over its generation_config.json's. */
export function modelSamplingDefaults(
  path: string,
  name: string,
  own: SamplingDefaults = readGenerationDefaults(path),
): SamplingDefaults {
  return { ...own, ...aliasSampling(aliasNamed(name)) };
}

/** The stop strings, answer length and context the alias a request names gives it (models.toml's stop, num_predict, num_ctx). */
export function modelLimits(name: string): ModelLimits {
  return aliasLimits(aliasNamed(name));
}

/**
 * The context a request naming `name` fills on `lm` where it sets none: its alias's num_ctx, within
 * the model's own. What /api/ps, /v1/models and /stats report for a loaded model by the name it is
 * listed by, as Ollama reports the num_ctx a loaded model serves, not its files' context.
 */
export function servedContextLength(name: string, lm: LoadedModel): number {
  let numCtx: number | undefined;
  try {
    numCtx = modelLimits(name).numCtx;
  } catch {
    // A models.toml broken meanwhile fails the requests, which say why; listing what is loaded (and
    // so unloading it: mlx stop, ollama stop) never fails over it: the files' context.
  }
  return contextLimit(lm, numCtx === undefined ? undefined : { tokens: numCtx, param: "num_ctx" }).tokens;
}

/**
 * The request's stop strings, answer length and context, else its model's (`limits`), as Ollama
 * applies a Modelfile's stop, num_predict and num_ctx: a request's own replaces the model's.
 */
function settleLimits(
  input: GenerateInput,
  limits: ModelLimits,
): Pick<GenerateInput, "maxTokens" | "strictMaxTokens" | "maxTokensParam" | "contextBound" | "stop"> {
  const model = aliasNamed(input.model);
  // As Ollama's runner, a count of 0 or less runs until a stop or the context's end (Infinity here).
  const numPredict = limits.numPredict === undefined || limits.numPredict > 0 ? limits.numPredict : Infinity;
  const ownLength = input.maxTokens !== undefined || numPredict === undefined;
  return {
    maxTokens: finite(input.maxTokens ?? numPredict ?? input.defaultMaxTokens),
    // The model's length is a default, clamped to the context as Ollama clamps it, never the request's error.
    strictMaxTokens: ownLength && input.strictMaxTokens,
    maxTokensParam: ownLength ? input.maxTokensParam : `num_predict of model '${model}'`,
    contextBound:
      input.contextBound ??
      (limits.numCtx === undefined ? undefined : { tokens: limits.numCtx, param: `num_ctx of model '${model}'` }),
    stop: input.stop?.length ? input.stop : limits.stop,
  };
}

/** A count, undefined where it has no limit (Infinity). */
const finite = (n: number | undefined) => (n === Infinity ? undefined : n);

/** The turns the alias a request names puts before its prompt (models.toml's system and messages). */
export function modelPrompt(name: string): ModelPrompt {
  return aliasPrompt(aliasNamed(name));
}

/** The alias a request's model name means: Ollama's clients add ":latest" to a name without a tag, "m:latest" is "m". */
export function aliasNamed(name: string): string {
  const { models } = loadAliases();
  return knownName(name, (candidate) => models.has(candidate)) ?? name;
}

/** Each token's logprob and its alternatives', as OpenAI's chat completions and Responses give them. */
export function chatLogprobs(
  tokenizer: Tokenizer,
  tokens: TokenLogprob[],
  top: TokenLogprob[][] | undefined,
): ChatLogprob[] {
  return tokens.map((t, i) => ({
    ...tokenText(tokenizer, t.token),
    logprob: t.logprob,
    top_logprobs: (top?.[i] ?? []).map((a) => ({ ...tokenText(tokenizer, a.token), logprob: a.logprob })),
  }));
}

/**
 * A token as OpenAI's logprobs show it: its bytes (a SentencePiece byte token's one byte, a word's
 * leading space), and their text (U+FFFD for part of a character, which only the bytes keep).
 */
export function tokenText(tokenizer: Tokenizer, id: number): { token: string; bytes: number[] } {
  const bytes = tokenizer.pieceBytes(id);
  return { token: new TextDecoder().decode(bytes), bytes: [...bytes] };
}
