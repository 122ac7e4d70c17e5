// From the user's text to prompt token ids: through the model's chat template when it has
// one (as mlx-lm's apply_chat_template does), or as plain text.
import { UnsupportedError } from "../errors";
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

/**
 * A conversation rendered with the chat template (with the tools offered, if any), ready for the
 * assistant's turn; with `continueFinal`, ready to go on with its last message, the assistant's
 * start of an answer (Anthropic's prefill).
 */
export function chatTokens(
  tokenizer: Tokenizer,
  messages: ChatMessage[],
  tools?: unknown[],
  /** Further template variables (enable_thinking). */
  extra?: Record<string, unknown>,
  continueFinal = false,
): number[] {
  let text = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: !continueFinal, tools, extra });
  if (continueFinal) text = cutAfterFinal(text, messages.at(-1)!);
  // The template already wrote any BOS token, so none is added here (as transformers does).
  return tokenizer.encode(text, { addSpecialTokens: false });
}

/**
 * A rendering cut after its final message's text, so that what the template closes the turn with
 * (an end-of-turn token) is not there and the model goes on with that text. Templates may trim
 * a message: its trimmed text is looked for too.
 */
function cutAfterFinal(text: string, final: ChatMessage): string {
  const content = typeof final.content === "string" ? final.content : "";
  for (const written of [content, content.trim()]) {
    const at = written ? text.lastIndexOf(written) : -1;
    if (at >= 0) return text.slice(0, at + written.length);
  }
  throw new UnsupportedError(
    "the chat template does not write the final assistant message as given, so it cannot be continued",
    "messages",
  );
}
