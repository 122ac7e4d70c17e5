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
  /** The reasoning before an assistant's answer, as the client sends it back (templates of models that think render it). */
  reasoning?: string;
  /** A participant's name (OpenAI's `name` on a system, user or assistant message): a template may render it. */
  name?: string;
}
