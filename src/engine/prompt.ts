// From the user's text to prompt token ids: through the model's chat template when it has
// one (as mlx-lm's apply_chat_template does), or as plain text.
import { UnsupportedError } from "../errors";
import type { ChatMessage, Tokenizer } from "../tokenizer/tokenizer";

export function promptTokens(
  tokenizer: Tokenizer,
  prompt: string,
  o: { system?: string; raw?: boolean; extra?: Record<string, unknown> } = {},
): number[] {
  const { text, addSpecialTokens } = promptText(tokenizer, prompt, o);
  return tokenizer.encode(text, { addSpecialTokens });
}

/** The text promptTokens encodes, and whether the tokenizer adds its special tokens to it. */
export function promptText(
  tokenizer: Tokenizer,
  prompt: string,
  o: { system?: string; raw?: boolean; extra?: Record<string, unknown> } = {},
): { text: string; addSpecialTokens: boolean } {
  if (o.raw || !tokenizer.chatTemplate) return { text: prompt, addSpecialTokens: true };
  const messages: ChatMessage[] = [];
  if (o.system) messages.push({ role: "system", content: o.system });
  messages.push({ role: "user", content: prompt });
  return { text: chatText(tokenizer, messages, undefined, o.extra), addSpecialTokens: false };
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
  // The template already wrote any BOS token, so none is added here (as transformers does).
  // Special-token text is read as special tokens wherever it is, a user's message included (a
  // message holding "<|im_end|>\n<|im_start|>system" opens a system turn), as transformers'
  // apply_chat_template(tokenize=True), vLLM and llama.cpp's server all do: the text is the
  // caller's to vouch for.
  return tokenizer.encode(chatText(tokenizer, messages, tools, extra, continueFinal), { addSpecialTokens: false });
}

/** The text chatTokens encodes (without the special tokens a tokenizer adds). */
export function chatText(
  tokenizer: Tokenizer,
  messages: ChatMessage[],
  tools?: unknown[],
  extra?: Record<string, unknown>,
  continueFinal = false,
): string {
  return continueFinal
    ? renderToContinueFinal(tokenizer, messages, tools, extra)
    : tokenizer.applyChatTemplate(messages, { tools, extra });
}

// Marks where the final message's text ends, as transformers' continue_final_message does: the
// text itself may also occur in what the template closes the turn with ("end" in "<|im_end|>").
const CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG ";

/**
 * A rendering cut after its final message's text, so that what the template closes the turn with
 * (an end-of-turn token) is not there and the model goes on with that text. Templates may trim
 * a message, and with it the tag's space: then the text is cut before the tag and right-trimmed.
 */
function renderToContinueFinal(
  tokenizer: Tokenizer,
  messages: ChatMessage[],
  tools?: unknown[],
  extra?: Record<string, unknown>,
): string {
  const final = messages.at(-1)!;
  const content = typeof final.content === "string" ? final.content : "";
  const tagged = [...messages.slice(0, -1), { ...final, content: content + CONTINUE_TAG }];
  const text = tokenizer.applyChatTemplate(tagged, { addGenerationPrompt: false, tools, extra });
  const at = text.lastIndexOf(CONTINUE_TAG.trimEnd());
  if (typeof final.content !== "string" || at < 0 || !text.slice(0, at).trimEnd().endsWith(content.trim())) {
    throw new UnsupportedError(
      "the chat template does not write the final assistant message as given, so it cannot be continued",
      "messages",
    );
  }
  return text.startsWith(CONTINUE_TAG, at) ? text.slice(0, at) : text.slice(0, at).trimEnd();
}
