// Models that think (Qwen3, QwQ, DeepSeek-R1 distills) write their reasoning between <think>
// and </think> before the answer. The engine splits the two once, for every front end: the
// scheduler passes each sequence's text through a ReasoningSplitter, so API routes and the CLI
// get reasoning and answer apart. A thinking budget is a logits processor that, once the
// reasoning has used its tokens, makes the model write the closing tag (as Qwen's and vLLM's
// thinking budgets do), so the answer always comes.
import * as mx from "../mlx";
import type { Tokenizer } from "../tokenizer/tokenizer";
import { harmonyReasoningTags, harmonyReasoningTagsBeforeCalls, HarmonySplitter, isHarmonyTemplate } from "./harmony";
import type { LogitsProcessor } from "./sampling";
import { partialMarker } from "./stop";

export const THINK_OPEN = "<think>";
export const THINK_CLOSE = "</think>";

/** Where a model's reasoning opens and closes, and what a spent thinking budget makes it write. */
export interface ReasoningTags {
  open: string;
  close: string;
  forced: string;
}

export const thinkTags: ReasoningTags = { open: THINK_OPEN, close: THINK_CLOSE, forced: THINK_CLOSE };

/** What a request asks of a thinking model (undefined fields: the model's own default). */
export interface ThinkingRequest {
  /** Think or not; where the template cannot switch thinking off, `false` is a budget of 0. */
  enabled?: boolean;
  /** Most reasoning tokens before the model is made to close its reasoning. */
  budget?: number;
  /** The request field that asked (named in errors). */
  param?: string;
  /**
   * How hard to think (OpenAI's reasoning_effort: low, medium, high), for templates that take it
   * (gpt-oss's); "none" where the client named that effort (thinking is then off: `enabled`).
   */
  effort?: string;
  /** Anthropic's thinking "adaptive" (the model decides, as a local model does unasked), for an Anthropic provider. */
  adaptive?: boolean;
  /**
   * Anthropic's thinking display as the client asked: "summarized" or "omitted" (the reasoning's
   * text withheld, its signature kept), for an Anthropic provider (whose default depends on the model).
   */
  display?: "summarized" | "omitted";
}

/**
 * How a chat template handles thinking: whether it knows the tags (or writes harmony, gpt-oss's
 * format, whose analysis channel is the reasoning), and the variable that switches it, if any:
 * `enable_thinking` (Qwen3, GLM), or `thinking` (DeepSeek-V3.1, whose template does not think
 * unless it is true).
 */
export function thinkingTemplate(chatTemplate: string | undefined): {
  thinks: boolean;
  switchedBy: ThinkingSwitch | undefined;
  harmony: boolean;
} {
  const t = chatTemplate ?? "";
  const harmony = isHarmonyTemplate(t);
  const thinks = harmony || t.includes(THINK_OPEN) || t.includes(THINK_CLOSE);
  return { thinks, switchedBy: harmony ? undefined : thinkingSwitch(t), harmony };
}

/** The template variables that switch thinking on and off (vLLM's chat_template_kwargs name them). */
export const THINKING_SWITCHES = ["enable_thinking", "thinking"] as const;
export type ThinkingSwitch = (typeof THINKING_SWITCHES)[number];

function thinkingSwitch(template: string): ThinkingSwitch | undefined {
  if (template.includes("enable_thinking")) return "enable_thinking";
  // A bare variable (not a message's `thinking` field, as gpt-oss's `message.thinking`).
  if (/(?<![.\w'"])thinking is defined/.test(template)) return "thinking";
  return undefined;
}

/** What splits a sequence's text into reasoning and answer (a ReasoningSplitter, or a HarmonySplitter). */
export interface TextSplitter {
  /** Whether the text so far ends inside the reasoning. */
  readonly inside: boolean;
  /** Whether the text so far ends in the answer (which a grammar shapes). */
  readonly answering: boolean;
  push(piece: string): SplitText;
  flush(): SplitText;
}

/** How a request's text is split: by <think> tags, or as harmony messages (from where the prompt leaves off). */
export interface ReasoningFormat {
  startsInside: boolean;
  harmony: boolean;
  /** The prompt's end (harmony: the message it leaves the model in, if any). */
  promptTail: string;
}

export const newSplitter = (f: ReasoningFormat): TextSplitter =>
  f.harmony ? new HarmonySplitter(f.promptTail) : new ReasoningSplitter(f.startsInside);

/** The tags of a request's reasoning; `callsOffered`: the model may call a function after it. */
export function reasoningTags(f: ReasoningFormat, callsOffered = false): ReasoningTags {
  if (!f.harmony) return thinkTags;
  return callsOffered ? harmonyReasoningTagsBeforeCalls : harmonyReasoningTags;
}

/** Whether a rendered prompt ends inside an open <think> (templates that start the reasoning themselves). */
export function opensThinking(promptTail: string): boolean {
  return promptTail.lastIndexOf(THINK_OPEN) > promptTail.lastIndexOf(THINK_CLOSE);
}

export interface SplitText {
  text: string;
  reasoning: string;
}

/**
 * Streamed text → reasoning and answer. Reasoning is what comes between <think> and </think>,
 * where <think> is either the answer's first words or already in the prompt (`startsInside`);
 * a tag split across pieces is held back until it is whole. Whitespace around the tags is
 * dropped, as Ollama and vLLM do.
 */
export class ReasoningSplitter {
  #inside: boolean;
  /** Until the answer has begun, a <think> may still open the reasoning. */
  #answerStarted = false;
  #pending = "";
  /** Reasoning shown so far (its leading whitespace is dropped). */
  #reasoningStarted = false;

  constructor(startsInside: boolean) {
    this.#inside = startsInside;
  }

  /** Whether the text so far ends inside the reasoning. */
  get inside(): boolean {
    return this.#inside;
  }

  get answering(): boolean {
    return !this.#inside;
  }

  push(piece: string): SplitText {
    let buffer = this.#pending + piece;
    this.#pending = "";
    const out: SplitText = { text: "", reasoning: "" };
    while (buffer) {
      if (this.#inside) {
        const close = buffer.indexOf(THINK_CLOSE);
        const end = close >= 0 ? close : buffer.length - partialMarker(buffer, [THINK_CLOSE]);
        out.reasoning += this.#reasoning(buffer.slice(0, end));
        if (close < 0) {
          this.#pending = buffer.slice(end);
          break;
        }
        this.#inside = false;
        buffer = buffer.slice(close + THINK_CLOSE.length);
        continue;
      }
      if (!this.#answerStarted) {
        const start = buffer.trimStart();
        if (!start) break; // whitespace before the answer (or before a <think>) is dropped
        if (start.startsWith(THINK_OPEN)) {
          this.#inside = true;
          buffer = start.slice(THINK_OPEN.length);
          continue;
        }
        if (THINK_OPEN.startsWith(start)) {
          this.#pending = start;
          break;
        }
        this.#answerStarted = true;
        buffer = start;
      }
      out.text += buffer;
      break;
    }
    return out;
  }

  /**
   * What was held back, at the end of the text. Inside the reasoning that is the start of a
   * </think> the end cut off (max_tokens right after a thinking budget forced it): part of a
   * tag, never reasoning.
   */
  flush(): SplitText {
    const rest = this.#pending;
    this.#pending = "";
    if (this.#inside) return { text: "", reasoning: "" };
    return { text: this.#answerStarted ? rest : rest.trimStart(), reasoning: "" };
  }

  #reasoning(text: string): string {
    if (this.#reasoningStarted) return text;
    const trimmed = text.trimStart();
    if (trimmed) this.#reasoningStarted = true;
    return trimmed;
  }
}

/**
 * Whether a token of a sequence is its answer's rather than its reasoning's, read as the
 * ReasoningSplitter reads the text: the reasoning runs from the prompt's end where the prompt
 * opened it (`startsInside`), or from a <think> that opens the answer, up to the token that
 * writes </think>. Asked in order of `index` (the next token's at `history.length`). A grammar
 * shapes the answer's tokens only, as vLLM applies structured output and tool grammars once
 * the reasoning ends.
 */
export function answerTokens(
  tokenizer: Tokenizer,
  promptLength: number,
  format: ReasoningFormat,
): (history: readonly number[], index: number) => boolean {
  const splitter = newSplitter(format);
  let next = promptLength;
  return (history, index) => {
    for (; next < index; next++) splitter.push(tokenizer.decode([history[next]!]));
    return splitter.answering;
  };
}

/** The tokens a thinking budget forces once it is spent: `</think>`'s (the answer goes on from there). */
export const forcedClose = (tokenizer: Tokenizer, tags: ReasoningTags = thinkTags) =>
  tokenizer.encode(tags.forced, { addSpecialTokens: false });

/**
 * A logits processor that lets the reasoning run `budget` tokens, then forces the tokens of
 * "</think>" one by one. It follows the generated text itself (the ids of the tags differ by
 * vocabulary): the reasoning starts at the prompt's end (`startsInside`) or after a generated
 * <think>, and once a </think> is written the processor has nothing more to do.
 */
export function thinkingBudget(
  tokenizer: Tokenizer,
  promptLength: number,
  budget: number,
  startsInside: boolean,
  tags: ReasoningTags = thinkTags,
): LogitsProcessor {
  const close = forcedClose(tokenizer, tags);
  const tailLength = 2 * Math.max(tags.open.length, tags.close.length);
  let seen = promptLength;
  let tail = "";
  let openedAt: number | undefined = startsInside ? promptLength : undefined;
  let closed = false;
  return (history, logits) => {
    for (; seen < history.length && !closed; seen++) {
      tail = (tail + tokenizer.decode([history[seen]!])).slice(-tailLength);
      if (openedAt === undefined && tail.includes(tags.open)) {
        openedAt = seen + 1;
        tail = "";
      } else if (openedAt !== undefined && seen < openedAt + budget && tail.includes(tags.close)) closed = true;
    }
    if (closed || openedAt === undefined) return logits;
    const forced = history.length - openedAt - budget;
    if (forced < 0 || forced >= close.length) return logits;
    const index = mx.array(Int32Array.of(close[forced]!), [1, 1]);
    const only = mx.full(logits.shape, -Infinity, logits.dtype);
    return mx.putAlongAxis(only, index, mx.takeAlongAxis(logits, index, -1), -1);
  };
}
