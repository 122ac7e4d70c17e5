// What a request's tools are, once both API families have been read: the functions offered,
// whether and which one the model must call, and the calls as they travel in a conversation.

export interface ToolSpec {
  name: string;
  description?: string;
  /** JSON Schema of the arguments object. */
  parameters: Record<string, unknown>;
  /**
   * OpenAI's `strict` as the client set it: the arguments follow the schema exactly. A call made
   * here follows it anyway where its grammar constrains it; an OpenAI-compatible provider is sent it.
   */
  strict?: boolean;
  /** Anthropic's `cache_control` on the tool's definition: a prompt-cache breakpoint an Anthropic provider is sent. */
  cacheControl?: Record<string, unknown>;
}

/** "auto": the model decides; "none": no calls; "required": at least one; `{ name }`: that function. */
export type ToolChoice = "auto" | "none" | "required" | { name: string };

export interface ToolRequest {
  tools: ToolSpec[];
  choice: ToolChoice;
  /** Whether one answer may hold several calls. */
  parallel: boolean;
}

export interface ToolCall {
  id: string;
  name: string;
  arguments: Record<string, unknown>;
}

/** A chat message as the API layer hands it over: prose, plus the calls an assistant made or the call a tool message answers. */
export interface ConversationMessage {
  role: string;
  content: string;
  toolCalls?: ToolCall[];
  toolCallId?: string;
  /** The function a tool message answers (looked up from the call when the client did not say). */
  toolName?: string;
  /**
   * A tool message that reports the call's failure (Anthropic's is_error): its content starts
   * with TOOL_ERROR_PREFIX, which says so to a template (none has such a flag).
   */
  isError?: boolean;
  /** The reasoning before an assistant's answer, as the client sends it back (templates of models that think render it). */
  reasoning?: string;
  /** A participant's name (OpenAI's `name` on a system, user or assistant message): a template may render it. */
  name?: string;
  /**
   * An assistant turn's thinking as Anthropic's clients send it back: each block with its
   * signature, or redacted (encrypted). Anthropic verifies them, so they travel to an Anthropic
   * provider unchanged (`reasoning` holds their text for a template).
   */
  thinkingBlocks?: ThinkingBlock[];
  /** Anthropic's `cache_control` on one of the message's blocks: a prompt-cache breakpoint an Anthropic provider is sent. */
  cacheControl?: Record<string, unknown>;
}

/** What a failed call's result starts with (isError), as templates read it. */
export const TOOL_ERROR_PREFIX = "Error: ";

/** A thinking block of Anthropic's: its text and signature, or only the encrypted data of a redacted one. */
export type ThinkingBlock =
  | { type: "thinking"; thinking: string; signature: string }
  | { type: "redacted_thinking"; data: string };
