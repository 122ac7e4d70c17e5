// From what a caller asks for to a request the scheduler runs, for every front end (the HTTP
// APIs, `mlx run`, `mlx chat`, the library): the prompt turned into token ids (chat template,
// tools), checked against the vocabulary and the context, max_tokens settled, the grammar the
// answer must follow and every logits processor.
import { ChatTemplateUnsupportedError, ContextLengthError, InvalidParameterError, UnsupportedError } from "../errors";
import { BudgetError } from "./budget/steering";
import type { LoadedModel } from "../models/load";
import { TemplateParseError, TemplateRaisedError, TemplateTypeError } from "../tokenizer/python-jinja";
import type { Tokenizer } from "../tokenizer/tokenizer";
import { fimPrompt, fimTokens } from "../tokenizer/fim";
import {
  createJsonConstraint,
  createPatternConstraint,
  SchemaError,
  type GrammarConstraint,
  type JsonFormat,
  type TextPattern,
} from "./grammar";
import { chatText, promptText } from "./prompt";
import { runStepsAsync, type Steps } from "../event-loop";
import {
  allowedTokensProcessor,
  badWordsProcessor,
  logitsProcessors,
  minTokensProcessor,
  settleTemperature,
  validateSampling,
  type LogitsProcessor,
  type SamplingParams,
} from "./sampling";
import {
  answerTokens,
  forcedClose,
  opensThinking,
  reasoningTags,
  thinkingBudget,
  thinkingTemplate,
  type ReasoningFormat,
  type ThinkingRequest,
} from "./reasoning";
import { HARMONY } from "./harmony";
import type { ModelPrompt } from "../store/aliases";
import type { GenerationRequest } from "./scheduler";
import {
  createToolCallConstraint,
  offeredTools,
  requiredFunctions,
  templateInput,
  toolTemplate,
  type ConversationMessage,
  type ToolCallFormat,
  type ToolRequest,
  type ToolSpec,
  type ToolTemplate,
} from "./tools";

/** The prompt: chat messages (through the model's template), text (templated or raw), or token ids. */
export type PromptInput =
  /**
   * `continueFinal`: the last message is the assistant's start of its answer, which the model goes on with (Anthropic's prefill).
   * `param`: the request's field that holds the messages, in its errors (default messages; Responses' input).
   */
  | { kind: "chat"; messages: ConversationMessage[]; continueFinal?: boolean; param?: string }
  /** `suffix`: the text after the one to write (fill-in-the-middle, with the model's FIM tokens; no template). */
  | { kind: "text"; text: string; template: boolean; system?: string; suffix?: string }
  | { kind: "ids"; ids: number[] };

/** The request's field that holds the prompt, in its errors. */
const promptParam = (prompt: PromptInput) => (prompt.kind === "chat" ? (prompt.param ?? "messages") : "prompt");

/** Structured output asked for, and the request field that asked (named in its errors). */
export interface FormatInput {
  format: JsonFormat;
  param: string;
  /** The schema's name and description as the client gave them (OpenAI's json_schema): a remote provider's model reads them. */
  name?: string;
  description?: string;
}

/**
 * vLLM's extra sampling parameters that say which tokens a request's prompt and answer hold
 * and where the answer ends, as its SamplingParams reads them.
 */
export interface AnswerControls {
  /** min_tokens: no end-of-sequence or stop token, nor stop string, before this many tokens. */
  minTokens?: number;
  /** stop_token_ids: tokens that end the answer. */
  stopTokenIds?: number[];
  /** include_stop_str_in_output: the stop string (or stop token) that ended the answer is shown. */
  includeStop?: boolean;
  /** skip_special_tokens: special tokens show no text. */
  skipSpecialTokens?: boolean;
  /** allowed_token_ids: the only tokens the answer may hold. */
  allowedTokenIds?: number[];
  /** bad_words: words the answer never holds (as their tokens, with and without a leading space). */
  badWords?: string[];
  /** truncate_prompt_tokens: only the prompt's last this many tokens are read (-1: as many as the context holds). */
  truncatePromptTokens?: number;
  /** guided_regex, guided_choice, guided_grammar (or structured_outputs'): the answer's shape, and the field that asked. */
  pattern?: { pattern: TextPattern; param: string };
}

/** Each control's name in vLLM's API (in errors). */
export const ANSWER_CONTROL_PARAMS: Record<Exclude<keyof AnswerControls, "pattern">, string> = {
  minTokens: "min_tokens",
  stopTokenIds: "stop_token_ids",
  includeStop: "include_stop_str_in_output",
  skipSpecialTokens: "skip_special_tokens",
  allowedTokenIds: "allowed_token_ids",
  badWords: "bad_words",
  truncatePromptTokens: "truncate_prompt_tokens",
};

export interface GenerationSpec {
  prompt: PromptInput;
  /** The turns the model's alias puts first (models.toml's system and messages): see withModelPrompt. */
  modelPrompt?: ModelPrompt;
  /** Ids put before the prompt (Ollama's /api/generate context). */
  prefixIds?: number[];
  /**
   * An earlier sequence as text and as the ids the KV cache holds for it (a chat's last prompt
   * and the answer sampled to it): a templated prompt whose text starts with that text takes
   * those ids for it. Tokenized again, a sampled answer's text can come out as other tokens
   * than the ones sampled, and the cache then matched the prompt only up to the first of them.
   */
  earlierSequence?: TokenizedText;
  sampling: SamplingParams;
  /** Most tokens to generate; clamped to the room the context leaves (default: all of it). */
  maxTokens?: number;
  /** Make a max_tokens beyond the model's context an error instead of clamping it (OpenAI). */
  strictMaxTokens?: boolean;
  /** The request's own bound on its context, prompt and answer (Ollama's num_ctx); the model's is kept where smaller. */
  contextBound?: ContextBound;
  /** The request's own name for maxTokens, in its errors (default max_tokens). */
  maxTokensParam?: string;
  stop?: string[];
  /** Alternatives reported per token (0: none). */
  topLogprobs?: number;
  /** JSON the answer must be. */
  format?: FormatInput;
  /** Functions the model may (or must) call; chat prompts only. */
  tools?: ToolRequest;
  /** Thinking on or off and its token budget, for models that think. */
  thinking?: ThinkingRequest;
  /** Generate past end-of-sequence tokens, up to maxTokens. */
  ignoreEos?: boolean;
  /** vLLM's controls of the answer's tokens and its end. */
  controls?: AnswerControls;
  /** The caller's own logits processors (e.g. a grammar it made), after the sampling's own. */
  processors?: LogitsProcessor[];
  signal?: AbortSignal;
}

/** A text and the ids that stand for it. */
export interface TokenizedText {
  text: string;
  ids: number[];
}

export interface PreparedGeneration {
  request: GenerationRequest;
  promptIds: number[];
  /** The text promptIds stand for, where they are that text's alone (not ids given, nor a prefix's, nor cut). */
  promptText?: string;
  /** Set when the model was offered tools: how to read its calls out of the answer. */
  toolFormat?: ToolCallFormat;
  /** The grammar the answer follows, if any (to tell whether it completed). */
  constraint?: GrammarConstraint;
  /** Frees what the request holds (its grammar matcher); call once its generation has ended. */
  dispose(): void;
}

/** A request's bound on its context: its size, and the field that set it (named in errors). */
export interface ContextBound {
  tokens: number;
  param: string;
}

/**
 * The answer length its alias gives a model opened by that name (models.toml's num_predict), for a
 * request that sets none: undefined where it has none, or one of 0 or less (to the context's end).
 */
export function modelMaxTokens(lm: Pick<LoadedModel, "limits">): number | undefined {
  const n = lm.limits?.numPredict;
  return n !== undefined && n > 0 ? n : undefined;
}

/** The context its alias gives a model opened by that name (models.toml's num_ctx), which a request's own replaces. */
export function modelContextBound(lm: LoadedModel): ContextBound | undefined {
  const tokens = lm.limits?.numCtx;
  return tokens === undefined ? undefined : { tokens, param: "num_ctx in models.toml" };
}

const MODEL_CONTEXT = "the model's context";

/** The context a request may fill: the model's, or less where the request bounds it. */
export function contextLimit(lm: LoadedModel, bound: ContextBound | undefined): { tokens: number; whose: string } {
  const model = lm.config.maxPositionEmbeddings;
  return bound && bound.tokens < model
    ? { tokens: bound.tokens, whose: bound.param }
    : { tokens: model, whose: MODEL_CONTEXT };
}

/**
 * A prompt-too-long error's first sentence, in OpenAI's and vLLM's words: clients tell this error
 * by them (LiteLLM maps "This model's maximum context length is" to its ContextWindowExceededError,
 * which its context-window fallbacks act on), not only by the code context_length_exceeded.
 */
function maximumContext(context: number, whose: string): string {
  return `This model's maximum context length is ${context} tokens${whose === MODEL_CONTEXT ? "" : ` (${whose})`}.`;
}

export async function prepareGeneration(lm: LoadedModel, spec: GenerationSpec): Promise<PreparedGeneration> {
  const vocab = lm.config.vocabSize;
  validateSampling(spec.sampling, vocab);
  const offered = offeredTools(spec.tools);
  const template = toolTemplate(lm.tokenizer.chatTemplateFor(offered));
  // A format that types arguments by the functions' schemas reads them from the offered ones.
  const toolFormat = offered && (template.format.withTools?.(offered) ?? template.format);
  const shaped = shapedAnswer(spec.format !== undefined || spec.controls?.pattern !== undefined, spec.tools);
  // An earlier exchange's ids (Ollama's context) already hold the alias's messages, as Ollama leaves them out then.
  const given = spec.modelPrompt ?? lm.prompt;
  const modelPrompt = spec.prefixIds?.length ? { system: given?.system } : given;
  const prompt = withModelPrompt(spec.prompt, modelPrompt, lm.tokenizer);
  const thinking = settleThinking(lm.tokenizer, prompt, spec.thinking, shaped);
  const { tokens: context, whose } = contextLimit(lm, spec.contextBound ?? modelContextBound(lm));
  // A megabyte's tokenizing takes seconds: a request aborted meanwhile stops there.
  const tokenized = await runStepsAsync(
    tokenize(lm.tokenizer, prompt, template, offered, thinking?.templateVars, spec.earlierSequence),
    spec.signal,
  );
  const promptIds = truncatedPrompt(
    withPrefix(spec.prefixIds ?? [], tokenized.ids, lm.tokenizer),
    spec.controls?.truncatePromptTokens,
    context,
  );
  if (promptIds.length === 0) throw new InvalidParameterError("the prompt is empty", "prompt");
  const badId = promptIds.find((id) => !(id >= 0 && id < vocab));
  if (badId !== undefined)
    throw new InvalidParameterError(`token id ${badId} is outside the model's vocabulary (${vocab})`, "prompt");
  // A rotating cache (--max-kv-size) holds a bounded part of any length: only max_tokens limits.
  const rotating = lm.maxKvSize !== undefined;
  if (!rotating && promptIds.length >= context) {
    throw new ContextLengthError(
      `${maximumContext(context, whose)} However, the prompt is ${promptIds.length} tokens (leave room for at least one generated token)`,
      promptParam(spec.prompt),
    );
  }
  const maxTokensParam = spec.maxTokensParam ?? "max_tokens";
  // An answer longer than the context can never come, except through a rotating cache.
  if (spec.strictMaxTokens && !rotating && spec.maxTokens !== undefined && spec.maxTokens > context)
    throw new InvalidParameterError(
      `${maxTokensParam} is ${spec.maxTokens}, more than ${whose} of ${context} tokens`,
      maxTokensParam,
    );
  const room = rotating ? context : context - promptIds.length;
  const maxTokens = Math.min(spec.maxTokens ?? modelMaxTokens(lm) ?? room, rotating ? Infinity : room);
  // Where the template starts the reasoning itself, the answer begins inside it.
  const startsInside = thinking !== undefined && opensThinking(lm.tokenizer.decode(promptIds.slice(-16)));
  const reasoning: ReasoningFormat | undefined = thinking && {
    startsInside,
    harmony: thinking.harmony,
    promptTail: thinking.harmony ? harmonyPromptTail(lm.tokenizer, promptIds) : "",
  };
  // A template that opens the reasoning and cannot switch it off gets a budget of 0 under a grammar
  // that shapes the whole answer: `</think>` is forced first, and the grammar shapes what follows.
  const forced = startsInside && thinking?.budget === 0 && shaped !== undefined ? forcedClose(lm.tokenizer).length : 0;
  const constraint = await grammarConstraint(lm, spec, toolFormat, maxTokens - forced).catch((error) => {
    if (!(error instanceof BudgetError)) throw error;
    // Where the context, not max_tokens, set the budget, the prompt is what leaves too little room.
    if (maxTokens < (spec.maxTokens ?? Infinity))
      throw new ContextLengthError(
        `${maximumContext(context, whose)} However, the prompt is ${promptIds.length} tokens: the ${maxTokens} left are too few for this format, whose shortest valid answer takes ${error.minimum + forced}`,
        promptParam(spec.prompt),
      );
    throw new BudgetError(error.maxTokens + forced, error.minimum + forced, maxTokensParam);
  });
  const budget =
    thinking?.budget !== undefined
      ? [
          thinkingBudget(
            lm.tokenizer,
            promptIds.length,
            thinking.budget,
            startsInside,
            reasoningTags(reasoning!, offered !== undefined),
          ),
        ]
      : [];
  // The grammar shapes the answer, not a reasoning before it: one the prompt opened, or one the
  // answer opens where the grammar allows prose (a grammar that shapes the answer from its first token does not).
  const grammar =
    constraint &&
    (thinking
      ? constraint.processorShaping(answerTokens(lm.tokenizer, promptIds.length, reasoning!))
      : constraint.processor);
  const controls = spec.controls ?? {};
  const stopTokenIds = checkedTokenIds(controls.stopTokenIds, vocab, "stop_token_ids");
  // (Under ignore_eos the end tokens end nothing: only the stop tokens are held back.)
  const ends = [...(spec.ignoreEos ? [] : lm.tokenizer.eosTokenIds), ...(stopTokenIds ?? [])];
  const allowed = checkedTokenIds(controls.allowedTokenIds, vocab, "allowed_token_ids");
  // After the grammar's mask, and each only narrowing what it leaves where that leaves a token:
  // the grammar's shape wins (a complete answer, which allows only the end, ends short of
  // min_tokens), where a step with no token left drew one the grammar refuses, which failed the batch.
  const tokenControls = [
    ...(allowed ? [allowedTokensProcessor(allowed)] : []),
    ...(controls.badWords?.length
      ? [badWordsProcessor(badWordTokens(lm.tokenizer, controls.badWords), promptIds.length)]
      : []),
    ...(controls.minTokens ? [minTokensProcessor(ends, controls.minTokens, promptIds.length)] : []),
  ];
  const processors = logitsProcessors(spec.sampling, promptIds.length, [
    ...(spec.processors ?? []),
    ...budget,
    ...(grammar ? [startingAt(promptIds.length + forced, grammar)] : []),
    ...tokenControls,
  ]);
  return {
    request: {
      promptIds,
      sampling: settleTemperature(spec.sampling),
      maxTokens,
      // A schema or a required call fixes the answer's whole shape, and the grammar ends it there:
      // a stop string met inside (a quote, a newline) would only cut it into something invalid.
      stop: shaped !== undefined ? undefined : spec.stop?.length ? spec.stop : lm.limits?.stop,
      topLogprobs: spec.topLogprobs,
      processors,
      reasoning,
      ignoreEos: spec.ignoreEos,
      minTokens: controls.minTokens,
      stopTokenIds: stopTokenIds && new Set(stopTokenIds),
      includeStop: controls.includeStop,
      skipSpecialTokens: controls.skipSpecialTokens,
      // A grammar, a thinking budget (or a caller's processor) keeps state from step to step and
      // must see only tokens that were chosen, never drafts: such a request decodes without speculation.
      speculate: !constraint && budget.length === 0 && !spec.processors?.length,
      closedEarly: constraint && (() => constraint.closedEarly()),
      signal: spec.signal,
    },
    promptIds,
    promptText: promptIds === tokenized.ids ? tokenized.text : undefined,
    toolFormat,
    constraint,
    dispose: () => constraint?.dispose(),
  };
}

/** Roles that bring a system prompt of their own (OpenAI's developer message is one). */
const SYSTEM_ROLES = ["system", "developer"];

/**
 * The prompt with the turns its model's alias puts first (models.toml's `system` and `messages`,
 * as Ollama's SYSTEM and MESSAGE): the alias's system message where the request brings none of
 * its own, then the alias's messages, then the request's. Every front end's prompt comes through
 * here (chat messages, Anthropic's system as its first message, a templated text prompt and its
 * system); raw text and ids are the caller's exactly, as Ollama's raw requests are.
 */
export function withModelPrompt(
  prompt: PromptInput,
  model: ModelPrompt | undefined,
  tokenizer: Tokenizer,
): PromptInput {
  const messages = model?.messages ?? [];
  if (model?.system === undefined && messages.length === 0) return prompt;
  const systemTurn = (system: string | undefined): ConversationMessage[] =>
    system === undefined ? [] : [{ role: "system", content: system }];
  if (prompt.kind === "chat") {
    const ownSystem = prompt.messages.some((m) => SYSTEM_ROLES.includes(m.role));
    // The request's leading system messages stay first: templates take a system message there only.
    const leading = prompt.messages.findIndex((m) => !SYSTEM_ROLES.includes(m.role));
    const split = leading < 0 ? prompt.messages.length : leading;
    return {
      ...prompt,
      messages: [
        ...(ownSystem ? prompt.messages.slice(0, split) : systemTurn(model?.system)),
        ...messages,
        ...(ownSystem ? prompt.messages.slice(split) : prompt.messages),
      ],
    };
  }
  if (prompt.kind !== "text" || !prompt.template) return prompt;
  const system = prompt.system ?? model?.system;
  // Turns before the prompt need the chat template; without one the text goes as it is (with the system before it).
  if (messages.length === 0 || !tokenizer.chatTemplate) return { ...prompt, system };
  return { kind: "chat", messages: [...systemTurn(system), ...messages, { role: "user", content: prompt.text }] };
}

/**
 * vLLM's truncate_prompt_tokens: the prompt's last `keep` tokens (-1: as many as the `context`
 * holds), the start of a long conversation dropped rather than the request refused.
 */
function truncatedPrompt(promptIds: number[], keep: number | undefined, context: number): number[] {
  if (keep === undefined) return promptIds;
  if (keep > context)
    throw new InvalidParameterError(
      `truncate_prompt_tokens is ${keep}, more than the context of ${context} tokens (-1 keeps as many as it holds)`,
      "truncate_prompt_tokens",
    );
  const kept = keep === -1 ? context : keep;
  return promptIds.length > kept ? promptIds.slice(-kept) : promptIds;
}

/**
 * Each bad word's tokens as vLLM finds them: the word as it is (without leading spaces), and
 * with one space before it where that makes other tokens of the same count (the word in the
 * middle of a text, for a tokenizer that reads a space into the next word).
 */
function badWordTokens(tokenizer: Tokenizer, words: readonly string[]): number[][] {
  const sequences: number[][] = [];
  for (const word of words) {
    const bare = tokenizer.encode(word.trimStart(), { addSpecialTokens: false });
    const spaced = tokenizer.encode(` ${word.trimStart()}`, { addSpecialTokens: false });
    if (bare.length > 0) sequences.push(bare);
    if (spaced.length > 0 && spaced.length === bare.length && spaced[0] !== bare[0]) sequences.push(spaced);
  }
  return sequences;
}

/** Token ids a request names (`param`), each checked to be in the model's vocabulary. */
function checkedTokenIds(ids: number[] | undefined, vocab: number, param: string): number[] | undefined {
  const bad = ids?.find((id) => !(id >= 0 && id < vocab));
  if (bad !== undefined)
    throw new InvalidParameterError(
      `${param} names token id ${bad}, outside the vocabulary (ids 0 to ${vocab - 1})`,
      param,
    );
  return ids;
}

/**
 * A conversation (with the tools it offers, and thinking as asked, which a required call switches
 * off where the template allows) as the text the chat template makes of it for a generation.
 */
export function renderChat(
  lm: LoadedModel,
  given: ConversationMessage[],
  tools?: ToolRequest,
  thinking?: ThinkingRequest,
  modelPrompt: ModelPrompt | undefined = lm.prompt,
): string {
  if (!lm.tokenizer.chatTemplate) throw new UnsupportedError("this model has no chat template", "messages");
  const prompt = withModelPrompt({ kind: "chat", messages: given }, modelPrompt, lm.tokenizer);
  const messages = prompt.kind === "chat" ? prompt.messages : given;
  const offered = offeredTools(tools);
  const input = templateInput(toolTemplate(lm.tokenizer.chatTemplateFor(offered)), messages, offered);
  const extra = settleThinking(
    lm.tokenizer,
    { kind: "chat", messages },
    thinking,
    shapedAnswer(false, tools),
  )?.templateVars;
  return withTemplateErrors(() =>
    lm.tokenizer.applyChatTemplate(input.messages, { addGenerationPrompt: true, tools: input.tools, extra }),
  );
}

/**
 * A prompt's tokens (with the tools it offers, and thinking as asked, which JSON output or a
 * required call switches off where the template allows), as a generation would see them.
 */
export async function promptTokenIds(
  lm: LoadedModel,
  given: PromptInput,
  tools?: ToolRequest,
  thinking?: ThinkingRequest,
  jsonOutput = false,
  modelPrompt?: ModelPrompt,
): Promise<number[]> {
  const prompt = withModelPrompt(given, modelPrompt ?? lm.prompt, lm.tokenizer);
  const vars = settleThinking(lm.tokenizer, prompt, thinking, shapedAnswer(jsonOutput, tools))?.templateVars;
  const offered = offeredTools(tools);
  return (
    await runStepsAsync(
      tokenize(lm.tokenizer, prompt, toolTemplate(lm.tokenizer.chatTemplateFor(offered)), offered, vars),
    )
  ).ids;
}

/** How many tokens a prompt is, as a generation would see it (see promptTokenIds). */
export async function countPromptTokens(...args: Parameters<typeof promptTokenIds>): Promise<number> {
  return (await promptTokenIds(...args)).length;
}

/**
 * How a templated prompt thinks: the template variables that switch thinking, and the budget
 * (a template that cannot switch it off gets a budget of 0). Undefined when the answer is not
 * split: a model whose template has no <think>, or raw text or ids. An answer a grammar shapes
 * whole, JSON or required calls (`shaped` says which), switches thinking off where the template allows;
 * where it cannot, the reasoning gets a budget of 0 unless the request asks for thinking (the
 * grammar then shapes what follows the reasoning).
 */
function settleThinking(
  tokenizer: Tokenizer,
  prompt: PromptInput,
  thinking: ThinkingRequest | undefined,
  shaped: ShapedAnswer | undefined,
): { templateVars?: Record<string, unknown>; budget?: number; harmony: boolean } | undefined {
  const { thinks, switchedBy, harmony } = thinkingTemplate(tokenizer.chatTemplate);
  const asked = thinking ?? {};
  if (asked.enabled && !thinks)
    throw new UnsupportedError(
      "this model does not think (its chat template has no <think> section)",
      asked.param ?? "thinking",
    );
  const templated = prompt.kind === "chat" || (prompt.kind === "text" && prompt.template);
  if (!thinks || !templated) return undefined;
  if (harmony) return settleHarmony(asked, shaped);
  // A budget asks for reasoning to bound: a template that reasons only when switched on (DeepSeek-V3.1's) is.
  const wanted = asked.enabled ?? (switchedBy && asked.budget ? true : undefined);
  const enabled = shaped !== undefined && (switchedBy || !wanted) ? false : wanted;
  if (enabled === undefined) return { budget: asked.budget, harmony };
  if (switchedBy)
    return { templateVars: { [switchedBy]: enabled }, budget: enabled ? asked.budget : undefined, harmony };
  return { budget: enabled ? asked.budget : 0, harmony };
}

/**
 * gpt-oss always reasons first, as hard as its template's `reasoning_effort` says (low, medium,
 * high; "minimal" is its low, "xhigh" its high). Thinking switched off is a budget of 0: the analysis is closed at
 * once and the final answer's header forced. JSON output is the final message's, after the
 * reasoning (as vLLM shapes it). Required calls are not split: the grammar has the model write
 * its call message from the first token.
 */
function settleHarmony(asked: ThinkingRequest, shaped: ShapedAnswer | undefined) {
  if (shaped === "calls") return undefined;
  const effort = asked.effort === "minimal" ? "low" : asked.effort === "xhigh" ? "high" : asked.effort;
  const templateVars = effort && effort !== "none" ? { reasoning_effort: effort } : undefined;
  return { templateVars, budget: asked.enabled === false ? 0 : asked.budget, harmony: true };
}

/**
 * The prompt from its last message's start on: where it leaves a harmony model (at a new
 * message's header, or inside the message continue_final_message goes on with).
 */
function harmonyPromptTail(tokenizer: Tokenizer, promptIds: number[]): string {
  const start = tokenizer.encode(HARMONY.start, { addSpecialTokens: false });
  const at = start.length === 1 ? promptIds.lastIndexOf(start[0]!) : -1;
  return tokenizer.decode(promptIds.slice(at >= 0 ? at : -64));
}

/**
 * The prompt's ids, and the text they stand for (none for ids given). `template` says how the
 * chat template handles tools; `tools` are those offered on this turn; `earlier`: see
 * GenerationSpec.earlierSequence. Pauses while it encodes a long text (Tokenizer.encodeSteps): a
 * server serves others meanwhile.
 */
function* tokenize(
  tokenizer: Tokenizer,
  prompt: PromptInput,
  template: ToolTemplate,
  tools: ToolSpec[] | undefined,
  templateVars?: Record<string, unknown>,
  earlier?: TokenizedText,
): Steps<{ ids: number[]; text?: string }> {
  if (prompt.kind === "ids") return { ids: prompt.ids };
  const { text, addSpecialTokens } = promptTextOf(tokenizer, prompt, template, tools, templateVars);
  const ids = yield* tokenizer.encodeSteps(text, { addSpecialTokens });
  // Text the tokenizer adds special tokens to starts with them: an earlier sequence's ids would not.
  if (!earlier || addSpecialTokens || !text.startsWith(earlier.text)) return { ids, text };
  return { ids: yield* withEarlierIds(tokenizer, text.slice(earlier.text.length), ids, earlier.ids), text };
}

/**
 * The ids of a text that starts with an earlier sequence's text: that sequence's ids, then the
 * rest of the text tokenized, where the whole text's own tokens (`ids`) end with those of the
 * rest, so that the two meet between tokens (the end of an answer, then the template's
 * end-of-turn token). Where they meet inside a token, the whole text's own ids.
 */
function* withEarlierIds(tokenizer: Tokenizer, rest: string, ids: number[], earlierIds: number[]): Steps<number[]> {
  const restIds = yield* tokenizer.encodeSteps(rest, { addSpecialTokens: false });
  const tail = ids.slice(ids.length - restIds.length);
  if (restIds.length > ids.length || restIds.some((id, i) => id !== tail[i])) return ids;
  return [...earlierIds, ...restIds];
}

/** The text a prompt not given as ids is encoded from (as chatTokens, promptTokens do). */
function promptTextOf(
  tokenizer: Tokenizer,
  prompt: Exclude<PromptInput, { kind: "ids" }>,
  template: ToolTemplate,
  tools: ToolSpec[] | undefined,
  templateVars?: Record<string, unknown>,
): { text: string; addSpecialTokens: boolean } {
  switch (prompt.kind) {
    case "text":
      if (prompt.suffix !== undefined)
        return { text: fillInTheMiddle(tokenizer, prompt.text, prompt.suffix), addSpecialTokens: true };
      if (prompt.template && tokenizer.chatTemplate)
        return withTemplateErrors(() =>
          promptText(tokenizer, prompt.text, { system: prompt.system, extra: templateVars }),
        );
      // Raw text (a raw request ignores the system prompt, as Ollama does).
      return {
        text: prompt.template && prompt.system ? `${prompt.system}\n\n${prompt.text}` : prompt.text,
        addSpecialTokens: true,
      };
    case "chat":
      if (!tokenizer.chatTemplate)
        throw new UnsupportedError(
          "this model has no chat template: use /v1/completions (or /api/generate with raw) instead",
          promptParam(prompt),
        );
      return withTemplateErrors(() => {
        const { messages, tools: templateTools } = templateInput(template, prompt.messages, tools);
        const text = chatText(tokenizer, messages, templateTools, templateVars, prompt.continueFinal);
        return { text, addSpecialTokens: false };
      }, promptParam(prompt));
  }
}

/** The prompt that asks the model for the text between `prefix` and `suffix`: a 400 for a model without FIM tokens. */
function fillInTheMiddle(tokenizer: Tokenizer, prefix: string, suffix: string): string {
  const tokens = fimTokens((token) => tokenizer.isAddedToken(token));
  if (!tokens)
    throw new UnsupportedError(
      "this model cannot fill in the middle (its vocabulary has no FIM tokens such as <|fim_prefix|>): 'suffix' needs a code model that has them (Qwen2.5-Coder, StarCoder2, DeepSeek-Coder, CodeGemma)",
      "suffix",
    );
  return fimPrompt(tokens, prefix, suffix);
}

/**
 * Ids that go on from `prefix` (an earlier exchange's): as Ollama tokenizes the two as one text,
 * the sequence starts with the BOS a tokenizer adds, not a second one between them. Only one the
 * tokenizer adds: a config may name as BOS a token that opens every turn (SmolLM2's <|im_start|>).
 */
function withPrefix(prefix: number[], ids: number[], tokenizer: Tokenizer): number[] {
  if (prefix.length === 0) return ids;
  const bos = tokenizer.bosTokenId;
  const addsBos = bos !== undefined && tokenizer.encode("")[0] === bos;
  return [...prefix, ...(addsBos && ids[0] === bos ? ids.slice(1) : ids)];
}

/** `fn`, its template's errors the request's where they are (a 400 naming `param`). */
function withTemplateErrors<T>(fn: () => T, param = "messages"): T {
  try {
    return fn();
  } catch (error) {
    // A template's raise_exception (e.g. roles that must alternate) is the request's fault.
    if (error instanceof TemplateRaisedError)
      throw new InvalidParameterError(`the model's chat template rejected the messages: ${error.message}`, param);
    // So is a value the template cannot use, where Python's Jinja2 fails alike (a tool without the description it adds).
    if (error instanceof TemplateTypeError)
      throw new InvalidParameterError(`the model's chat template failed on the messages: ${error.message}`, param);
    if (error instanceof TemplateParseError)
      throw new ChatTemplateUnsupportedError(
        `the model's chat template cannot be parsed (a syntax error in it, or Jinja2 syntax mlx's template renderer lacks): ${error.message}`,
      );
    // Anything else is our renderer failing where Python's Jinja2 (transformers, vLLM) renders.
    throw new ChatTemplateUnsupportedError(
      `the model's chat template uses a feature of Python's Jinja2 that mlx's template renderer lacks: ${(error as Error).message}`,
    );
  }
}

/** A processor that leaves the logits alone until the history is `length` tokens long (then it sees its first). */
const startingAt =
  (length: number, processor: LogitsProcessor): LogitsProcessor =>
  (history, logits) =>
    history.length < length ? logits : processor(history, logits);

/** What a grammar shapes whole, from the answer's first token: required calls (which take precedence), or JSON output. */
type ShapedAnswer = "calls" | "json";

function shapedAnswer(jsonOutput: boolean, tools: ToolRequest | undefined): ShapedAnswer | undefined {
  if (offeredTools(tools) !== undefined && requiredFunctions(tools!) !== undefined) return "calls";
  return jsonOutput ? "json" : undefined;
}

/**
 * The grammar the answer must follow: calls when the request requires one, the request's JSON
 * format, or free text in which any call the model starts stays valid; each steered to a valid
 * end within `maxTokens`. A schema xgrammar or ajv refuses is the caller's error, except for
 * tools the model may ignore: those are then only parsed, as most servers do. A `maxTokens`
 * too small for any valid answer is a BudgetError naming the minimum.
 */
async function grammarConstraint(
  lm: LoadedModel,
  spec: GenerationSpec,
  toolFormat: ToolCallFormat | undefined,
  maxTokens: number,
): Promise<GrammarConstraint | undefined> {
  const tools = toolFormat && spec.tools;
  const required = tools && requiredFunctions(tools);
  const format = spec.format;
  if (required)
    return withSchemaErrors("tools", () =>
      createToolCallConstraint(lm.tokenizer, toolFormat, required, {
        required: true,
        // gpt-oss ends its answer at a call's <|call|>: one call an answer.
        parallel: tools.parallel && toolFormat.name !== "harmony",
        maxTokens,
      }),
    );
  if (format)
    return withSchemaErrors(format.param, () => createJsonConstraint(lm.tokenizer, format.format, { maxTokens }));
  const pattern = spec.controls?.pattern;
  if (pattern) return withSchemaErrors(pattern.param, () => createPatternConstraint(lm.tokenizer, pattern.pattern));
  // Harmony's calls are messages of their own, headed by special tokens a grammar's free text
  // does not take: calls the model may make are read, not shaped.
  if (tools && toolFormat.name !== "harmony")
    return withSchemaErrors(null, () =>
      createToolCallConstraint(lm.tokenizer, toolFormat, tools.tools, {
        required: false,
        parallel: tools.parallel,
        maxTokens,
      }),
    );
  return undefined;
}

/** A SchemaError as the error of `param` (a library caller catches it by its class); with no param (tools the model may ignore), as no constraint. */
async function withSchemaErrors(
  param: string | null,
  make: () => Promise<GrammarConstraint>,
): Promise<GrammarConstraint | undefined> {
  try {
    return await make();
  } catch (error) {
    if (!(error instanceof SchemaError)) throw error;
    if (param === null) return undefined;
    throw new SchemaError(error.message, param);
  }
}
