// Tool calls: the functions a request offers, rendered through the chat template; the calls
// read back out of the answer (whole or streamed) in the model family's format; and, when a
// call is required, a grammar that makes the answer a valid call.
import type { ToolRequest, ToolSpec } from "./types";

export { createToolCallConstraint } from "./constraint";
export {
  toolCallFormats,
  toolTemplate,
  type ParsedAnswer,
  type ToolCallFormat,
  type ToolCallParser,
  type ToolTemplate,
} from "./formats";
export { named, pairToolResults, templateInput } from "./prompt";
export { ToolCallStream, type ToolCallDelta } from "./stream";
export type { ConversationMessage, ThinkingBlock, ToolCall, ToolChoice, ToolRequest, ToolSpec } from "./types";
export { TOOL_ERROR_PREFIX } from "./types";

/** The functions the model is told about on this turn (none when tool_choice is "none"). */
export function offeredTools(request: ToolRequest | undefined): ToolSpec[] | undefined {
  if (!request || request.choice === "none" || request.tools.length === 0) return undefined;
  return request.tools;
}

/** The functions one of which must be called, or undefined when the model may answer in prose. */
export function requiredFunctions(request: ToolRequest): ToolSpec[] | undefined {
  const choice = request.choice;
  if (choice === "required") return request.tools;
  if (typeof choice === "object") return request.tools.filter((t) => t.name === choice.name);
  return undefined;
}
