// llama.cpp's server utilities: POST /tokenize, /detokenize and /apply-template, validated; an
// optional `model` picks the model (else the server's default).
import type { ConversationMessage } from "../engine/tools";
import type { PromptInput, ThinkingRequest } from "./common";
import { parseChatRequest } from "./openai";
import { Fields, ValidationError, unsupported } from "./validate";

/**
 * /tokenize as llama.cpp's server takes it (`content`), or as vLLM's does: a text `prompt` (with
 * the tokens the tokenizer adds unless `add_special_tokens` is false), or a chat's `messages`
 * with what /v1/chat/completions reads with them (tools, chat_template_kwargs,
 * continue_final_message), tokenized as a chat completion reads its prompt; `return_token_strs`
 * adds each token's string in the vocabulary.
 */
export type TokenizeRequest =
  | { shape: "llama.cpp"; model?: string; content: string; addSpecial: boolean; withPieces: boolean }
  | { shape: "vllm"; model?: string; text: string; addSpecial: boolean; tokenStrings: boolean }
  | { shape: "vllm-chat"; model?: string; chat: ReturnType<typeof parseChatRequest>; tokenStrings: boolean };

export function parseTokenize(body: unknown): TokenizeRequest {
  const f = Fields.of(body);
  if (f.has("messages")) {
    f.onlyKnown([...VLLM_CHAT_TOKENIZE_FIELDS, "add_special_tokens", "return_token_strs"]);
    // The chat's prompt is tokenized as a chat completion reads it, with what its template writes
    // (a BOS among it) and no more, as vLLM's default add_special_tokens false does.
    if (f.boolean("add_special_tokens"))
      throw unsupported("add_special_tokens", "'add_special_tokens': true with 'messages'");
    const chat = Object.fromEntries(
      Object.entries(body as Record<string, unknown>).filter(([key]) => VLLM_CHAT_TOKENIZE_FIELDS.includes(key)),
    );
    return {
      shape: "vllm-chat",
      model: f.string("model", { nonEmpty: true }),
      chat: parseChatRequest(chat),
      tokenStrings: f.boolean("return_token_strs") ?? false,
    };
  }
  if (f.has("prompt")) {
    f.onlyKnown(["model", "prompt", "add_special_tokens", "return_token_strs"]);
    return {
      shape: "vllm",
      model: f.string("model", { nonEmpty: true }),
      text: f.string("prompt", { required: true })!,
      addSpecial: f.boolean("add_special_tokens") ?? true,
      tokenStrings: f.boolean("return_token_strs") ?? false,
    };
  }
  f.onlyKnown(["model", "content", "add_special", "with_pieces", "parse_special"]);
  // Special tokens written in the text are always read as such (the tokenizer's added tokens).
  if (f.boolean("parse_special") === false) throw unsupported("parse_special", "'parse_special' false");
  return {
    shape: "llama.cpp",
    model: f.string("model", { nonEmpty: true }),
    content: f.string("content", { required: true })!,
    addSpecial: f.boolean("add_special") ?? false,
    withPieces: f.boolean("with_pieces") ?? false,
  };
}

/** What vLLM's chat form of /tokenize takes that a chat completion reads too. */
const VLLM_CHAT_TOKENIZE_FIELDS = [
  "model",
  "messages",
  "tools",
  "tool_choice",
  "reasoning_effort",
  "chat_template_kwargs",
  "continue_final_message",
  "add_generation_prompt",
];

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
