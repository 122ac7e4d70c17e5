// From a validated API request to a running generation, for both API families: hold the model,
// turn the prompt into token ids, check it against the context, settle sampling defaults and
// logits processors, and submit to the model's engine with a signal that fires on client
// disconnect or the request timeout. Also the per-request figures that feed /metrics.
import * as mx from "../mlx";
import type { FormatInput, PromptInput, SamplingInput } from "../api/common";
import { createJsonConstraint, SchemaError, type GrammarConstraint } from "../engine/grammar";
import { BudgetError } from "../engine/budget/steering";
import { createToolCallConstraint, offeredTools, requiredFunctions, templateInput, toolTemplate, type ToolCallFormat, type ToolRequest, type ToolSpec, type ToolTemplate } from "../engine/tools";
import { ValidationError } from "../api/validate";
import { checkContext } from "../engine/completion";
import { chatTokens, promptTokens } from "../engine/prompt";
import { defaultSampling, validateSampling, type LogitsProcessor, type SamplingParams } from "../engine/sampling";
import type { Tokenizer } from "../tokenizer/tokenizer";
import type { LoadedModel } from "../models/load";
import type { GenerationEvent, GenerationUsage } from "./engine";
import { badRequest } from "./errors";
import type { Lease, ModelRegistry } from "./models";
import type { ServerMetrics } from "./metrics";
import type { InFlight } from "./inflight";

export interface GenerateInput {
  route: string;
  model: string;
  keepAliveMs?: number;
  prompt: PromptInput;
  /** Ollama's /api/generate context: ids prepended to the prompt. */
  prefixIds?: number[];
  sampling: SamplingInput;
  defaults: Partial<SamplingParams>;
  maxTokens?: number;
  /** Whether a max_tokens beyond the context is an error (OpenAI) or clamped (Ollama). */
  strictMaxTokens: boolean;
  stop: string[];
  topLogprobs: number;
  /** Structured output to enforce while sampling. */
  format?: FormatInput;
  /** Functions the model may (or must) call; chat prompts only. */
  tools?: ToolRequest;
  /** Aborts when the client goes away. */
  clientSignal: AbortSignal;
  timeoutMs: number;
}

export interface Generation {
  lease: Lease;
  lm: LoadedModel;
  promptIds: number[];
  /** Set when the model was offered tools: how to read its calls out of the answer. */
  toolFormat?: ToolCallFormat;
  events: AsyncIterable<GenerationEvent>;
  timedOut: () => boolean;
  /** Stops the generation (client gone). */
  abort: () => void;
  /** Whether the token budget closed a structured answer early (to keep it valid). */
  closedEarly: () => boolean;
  /** Records the outcome in /metrics and releases the model; call exactly once. */
  finish: (outcome: string, usage?: GenerationUsage) => void;
}

export interface GenerationContext {
  models: ModelRegistry;
  metrics: ServerMetrics;
  inflight: InFlight;
}

/**
 * The grammar the answer must follow: calls when the request requires one, the request's JSON
 * format, or free text in which any call the model starts stays valid; each steered to a valid
 * end within `maxTokens`. A schema xgrammar or ajv refuses is the client's 400, except for
 * tools the model may ignore: those are then only parsed, as most servers do. A `maxTokens`
 * too small for any valid answer is a 400 on max_tokens naming the minimum.
 */
async function grammarConstraint(lm: LoadedModel, input: GenerateInput, toolFormat: ToolCallFormat | undefined, maxTokens: number): Promise<GrammarConstraint | undefined> {
  const tools = toolFormat && input.tools;
  const required = tools && requiredFunctions(tools);
  const format = input.format;
  if (required) return withSchemaErrors("tools", () => createToolCallConstraint(lm.tokenizer, toolFormat, required, { required: true, parallel: tools.parallel, maxTokens }));
  if (format) return withSchemaErrors(format.param, () => createJsonConstraint(lm.tokenizer, format.format, { maxTokens }));
  if (tools) return withSchemaErrors(null, () => createToolCallConstraint(lm.tokenizer, toolFormat, tools.tools, { required: false, parallel: tools.parallel, maxTokens }));
  return undefined;
}

/** A SchemaError as the client's 400 on `param`; with no param (tools the model may ignore), as no constraint. */
async function withSchemaErrors(param: string | null, make: () => Promise<GrammarConstraint>): Promise<GrammarConstraint | undefined> {
  try {
    return await make();
  } catch (error) {
    if (error instanceof BudgetError) throw badRequest(error.message, "max_tokens");
    if (!(error instanceof SchemaError)) throw error;
    if (param === null) return undefined;
    throw badRequest(error.message, param);
  }
}

export async function startGeneration(ctx: GenerationContext, input: GenerateInput): Promise<Generation> {
  const lease = await ctx.models.acquire(input.model, input.keepAliveMs);
  try {
    const lm = lease.entry.lm;
    const offered = offeredTools(input.tools);
    const template = toolTemplate(lm.tokenizer.chatTemplate);
    const toolFormat = offered && template.format;
    const promptIds = [...(input.prefixIds ?? []), ...tokenize(lm.tokenizer, input.prompt, template, offered)];
    if (promptIds.length === 0) throw badRequest("the prompt is empty", "prompt");
    const vocab = lm.config.vocabSize;
    const badId = promptIds.find((id) => id >= vocab);
    if (badId !== undefined) throw badRequest(`token id ${badId} is outside the model's vocabulary (${vocab})`, "prompt");
    checkContext(lm, promptIds.length);
    const context = lm.config.maxPositionEmbeddings;
    const room = context - promptIds.length;
    if (input.strictMaxTokens && input.maxTokens !== undefined && input.maxTokens > context)
      throw badRequest(`max_tokens is ${input.maxTokens}, more than the model's context of ${context} tokens`, "max_tokens");
    const maxTokens = Math.min(input.maxTokens ?? room, room);
    const sampling = settleSampling(input.sampling, input.defaults);
    const constraint = await grammarConstraint(lm, input, toolFormat, maxTokens);
    const processors = [...(logitsProcessors(input.sampling, promptIds.length, vocab) ?? []), ...(constraint ? [constraint.processor] : [])];

    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, input.timeoutMs);
    const onClientAbort = () => controller.abort();
    input.clientSignal.addEventListener("abort", onClientAbort, { once: true });
    if (input.clientSignal.aborted) controller.abort();

    let events: AsyncIterable<GenerationEvent>;
    try {
      events = lease.entry.engine.submit({ promptIds, sampling, maxTokens, stop: input.stop, topLogprobs: input.topLogprobs, logitsProcessors: processors.length > 0 ? processors : undefined, signal: controller.signal });
    } catch (error) {
      constraint?.dispose();
      clearTimeout(timer);
      input.clientSignal.removeEventListener("abort", onClientAbort);
      throw error;
    }
    const tracked = ctx.inflight.track(input.model, promptIds.length, events);
    let finished = false;
    return {
      lease,
      lm,
      promptIds,
      toolFormat,
      events: tracked.events,
      timedOut: () => timedOut,
      abort: () => controller.abort(),
      closedEarly: () => constraint?.closedEarly() ?? false,
      finish: (outcome, usage) => {
        if (finished) return;
        finished = true;
        constraint?.dispose();
        clearTimeout(timer);
        input.clientSignal.removeEventListener("abort", onClientAbort);
        ctx.inflight.end(tracked.flight);
        const m = ctx.metrics;
        m.finished.inc({ route: input.route, finish_reason: outcome });
        if (usage) {
          m.promptTokens.inc({}, usage.promptTokens);
          m.generatedTokens.inc({}, usage.completionTokens);
          m.queueWait.observe(usage.queueMs / 1000);
          if (usage.completionTokens > 0) m.ttft.observe(usage.timeToFirstTokenMs / 1000);
          m.e2e.observe(usage.totalMs / 1000);
        }
        lease.release();
      },
    };
  } catch (error) {
    lease.release();
    throw error;
  }
}

/** `template` says how the chat template handles tools; `tools` are those offered on this turn. */
function tokenize(tokenizer: Tokenizer, prompt: PromptInput, template: ToolTemplate, tools: ToolSpec[] | undefined): number[] {
  switch (prompt.kind) {
    case "ids":
      return prompt.ids;
    case "text":
      if (prompt.template && tokenizer.chatTemplate) return withTemplateErrors(() => promptTokens(tokenizer, prompt.text, { system: prompt.system }));
      // Raw text (a raw request ignores the system prompt, as Ollama does).
      return tokenizer.encode(prompt.template && prompt.system ? `${prompt.system}\n\n${prompt.text}` : prompt.text, { addSpecialTokens: true });
    case "chat":
      if (!tokenizer.chatTemplate) throw badRequest("this model has no chat template: use /v1/completions (or /api/generate with raw) instead", "messages");
      return withTemplateErrors(() => {
        const { messages, tools: templateTools } = templateInput(template, prompt.messages, tools);
        return chatTokens(tokenizer, messages, templateTools);
      });
  }
}

function withTemplateErrors<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    // A template's raise_exception (e.g. roles that must alternate) is the request's fault.
    throw badRequest(`the model's chat template rejected the messages: ${(error as Error).message}`, "messages");
  }
}

function settleSampling(input: SamplingInput, defaults: Partial<SamplingParams>): SamplingParams {
  const pick = <K extends keyof SamplingParams>(k: K, v: SamplingParams[K] | undefined) => v ?? defaults[k] ?? defaultSampling[k];
  const params: SamplingParams = {
    temperature: pick("temperature", input.temperature),
    topP: pick("topP", input.topP),
    topK: pick("topK", input.topK),
    minP: pick("minP", input.minP),
    repetitionPenalty: pick("repetitionPenalty", input.repetitionPenalty),
    repetitionContext: pick("repetitionContext", input.repetitionContext),
    seed: input.seed,
  };
  if (params.repetitionContext === 0) params.repetitionPenalty = 1;
  try {
    validateSampling(params);
  } catch (error) {
    throw new ValidationError((error as Error).message);
  }
  return params;
}

/** presence/frequency penalties and logit_bias as logits adjustments (OpenAI's definitions). */
export function logitsProcessors(s: SamplingInput, promptLength: number, vocab: number): LogitsProcessor[] | undefined {
  const processors: LogitsProcessor[] = [];
  if (s.logitBias) {
    const entries = [...s.logitBias].filter(([id]) => id < vocab);
    if (entries.length < s.logitBias.size) throw badRequest(`logit_bias names a token id outside the vocabulary (${vocab})`, "logit_bias");
    const ids = Int32Array.from(entries.map(([id]) => id));
    const bias = Float32Array.from(entries.map(([, b]) => b));
    processors.push((_history, logits) => addAt(logits, ids, bias));
  }
  const presence = s.presencePenalty ?? 0;
  const frequency = s.frequencyPenalty ?? 0;
  if (presence !== 0 || frequency !== 0) {
    processors.push((history, logits) => {
      if (history.length <= promptLength) return logits;
      const counts = new Map<number, number>();
      for (let i = promptLength; i < history.length; i++) counts.set(history[i]!, (counts.get(history[i]!) ?? 0) + 1);
      const ids = Int32Array.from(counts.keys());
      const penalty = Float32Array.from([...counts.values()].map((n) => -(presence + frequency * n)));
      return addAt(logits, ids, penalty);
    });
  }
  return processors.length > 0 ? processors : undefined;
}

/** logits [1, vocab] with `values` added at the positions `ids`. */
function addAt(logits: mx.MxArray, ids: Int32Array, values: Float32Array): mx.MxArray {
  const index = mx.array(ids, [1, ids.length]);
  const at = mx.takeAlongAxis(logits, index, -1);
  const adjusted = mx.astype(mx.add(at, mx.array(values, [1, values.length])), logits.dtype);
  return mx.putAlongAxis(logits, index, adjusted, -1);
}

/** A token as OpenAI's logprobs show it: its text and its bytes. */
export function tokenText(tokenizer: Tokenizer, id: number): { token: string; bytes: number[] } {
  const bytes = tokenizer.isByteLevel ? [...tokenizer.tokenBytes(id)] : [...new TextEncoder().encode(tokenizer.decode([id]))];
  return { token: tokenizer.decode([id]), bytes };
}
