// llama.cpp's server utilities: POST /tokenize, /detokenize and /apply-template, validated; an
// optional `model` picks the model (else the server's default).
import type { ConversationMessage } from "../engine/tools";
import type { PromptInput, ThinkingRequest } from "./common";
import { parseChatRequest } from "./openai";
import { Fields, ValidationError, unsupported } from "./validate";

export function parseTokenize(body: unknown): {
  model?: string;
  content: string;
  addSpecial: boolean;
  withPieces: boolean;
} {
  const f = Fields.of(body);
  f.onlyKnown(["model", "content", "add_special", "with_pieces", "parse_special"]);
  // Special tokens written in the text are always read as such (the tokenizer's added tokens).
  if (f.boolean("parse_special") === false) throw unsupported("parse_special", "'parse_special' false");
  return {
    model: f.string("model", { nonEmpty: true }),
    content: f.string("content", { required: true })!,
    addSpecial: f.boolean("add_special") ?? false,
    withPieces: f.boolean("with_pieces") ?? false,
  };
}

export function parseDetokenize(body: unknown): { model?: string; tokens: number[] } {
  const f = Fields.of(body);
  f.onlyKnown(["model", "tokens"]);
  const tokens = f.array("tokens", { required: true })!;
  tokens.forEach((t, i) => {
    if (!Number.isInteger(t) || (t as number) < 0)
      throw new ValidationError(`'tokens.${i}' must be a token id (a whole number >= 0)`, `tokens.${i}`);
  });
  return { model: f.string("model", { nonEmpty: true }), tokens: tokens as number[] };
}

/**
 * /apply-template takes a chat request's messages (and tools, and thinking on or off, as llama.cpp's
 * takes chat_template_kwargs) as /v1/chat/completions does.
 */
export function parseApplyTemplate(body: unknown): {
  model?: string;
  messages: ConversationMessage[];
  tools: ReturnType<typeof parseChatRequest>["tools"];
  thinking?: ThinkingRequest;
} {
  const f = Fields.of(body);
  f.onlyKnown(["model", "messages", "tools", "tool_choice", "reasoning_effort", "chat_template_kwargs"]);
  const req = parseChatRequest(body);
  const { messages } = req.prompts[0] as Extract<PromptInput, { kind: "chat" }>;
  return { model: req.model, messages, tools: req.tools, thinking: req.thinking };
}
