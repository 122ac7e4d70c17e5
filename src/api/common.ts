// What both API families reduce a request to, before the server applies model defaults.
import type { JsonFormat } from "../engine/grammar";
import type { ConversationMessage } from "../engine/tools";

export type { ToolRequest } from "../engine/tools";

/** Structured output asked for, and the request field that asked (for error messages). */
export interface FormatInput {
  format: JsonFormat;
  param: string;
}

export interface SamplingInput {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** How many recent tokens the repetition penalty looks at. */
  repetitionContext?: number;
  seed?: number;
  /** OpenAI semantics: subtracted once from the logit of every token already generated. */
  presencePenalty?: number;
  /** OpenAI semantics: subtracted per occurrence from the logit of every token already generated. */
  frequencyPenalty?: number;
  /** token id → bias added to its logit. */
  logitBias?: Map<number, number>;
}

/** The prompt: chat messages (through the model's template), raw text, or token ids. */
export type PromptInput = { kind: "chat"; messages: ConversationMessage[] } | { kind: "text"; text: string; template: boolean; system?: string } | { kind: "ids"; ids: number[] };
