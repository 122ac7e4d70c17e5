// From the user's text to prompt token ids: through the model's chat template when it has
// one (as mlx-lm's apply_chat_template does), or as plain text.
import type { ChatMessage, Tokenizer } from "../tokenizer/tokenizer";

export function promptTokens(
  tokenizer: Tokenizer,
  prompt: string,
  o: { system?: string; raw?: boolean; extra?: Record<string, unknown> } = {},
): number[] {
  if (o.raw || !tokenizer.chatTemplate) return tokenizer.encode(prompt, { addSpecialTokens: true });
  const messages: ChatMessage[] = [];
  if (o.system) messages.push({ role: "system", content: o.system });
  messages.push({ role: "user", content: prompt });
  return chatTokens(tokenizer, messages, undefined, o.extra);
}

/** A conversation rendered with the chat template (with the tools offered, if any), ready for the assistant's turn. */
export function chatTokens(
  tokenizer: Tokenizer,
  messages: ChatMessage[],
  tools?: unknown[],
  /** Further template variables (enable_thinking). */
  extra?: Record<string, unknown>,
): number[] {
  const text = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true, tools, extra });
  // The template already wrote any BOS token, so none is added here (as transformers does).
  return tokenizer.encode(text, { addSpecialTokens: false });
}
