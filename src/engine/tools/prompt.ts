// A conversation with tools, as the chat template gets it. A template that renders tools
// itself gets them (and past calls and results) in transformers' shapes. A template without
// tool support gets plain messages: the functions described in the system prompt, past calls
// written as <tool_call> blocks, and results as <tool_response> blocks in a user turn.
import type { ChatMessage } from "../../tokenizer/tokenizer";
import { mistralToolCallId, spacedJson, toolCallFormats, type ToolTemplate } from "./formats";
import type { ConversationMessage, ToolCall, ToolSpec } from "./types";

export interface TemplateInput {
  messages: ChatMessage[];
  /** For the template's `tools` variable (undefined: no tools offered). */
  tools?: unknown[];
}

/** A function as the template reads it: `strict` is for a remote provider, and leaves the prompt as it was. */
const functionTool = ({ strict: _strict, ...fn }: ToolSpec) => ({ type: "function", function: fn });

/** `offered`: the functions the model may call on this turn (none when tool_choice is "none"). */
export function templateInput(
  template: ToolTemplate,
  messages: ConversationMessage[],
  offered: ToolSpec[] | undefined,
): TemplateInput {
  const tools = offered && offered.length > 0 ? offered : undefined;
  if (template.native) {
    const paired = pairToolResults(messages);
    const ids = template.format.nineCharacterIds ? paired.map(withMistralIds) : paired;
    return {
      messages: ids.map((m) => nativeMessage(m, template.format.argumentsAsText ?? false)),
      tools: tools?.map(functionTool),
    };
  }
  const plain = plainMessages(messages);
  return { messages: tools ? withToolsInSystemPrompt(plain, tools) : plain };
}

/**
 * The conversation with each tool result tied to its call, as templates that render ids and
 * remote providers require: Ollama's clients send results with no call id (at most the
 * function's name). A result without one answers the first still unanswered call of the
 * assistant turn before it, of the function it names when it names one.
 */
export function pairToolResults(conversation: ConversationMessage[]): ConversationMessage[] {
  let open: ToolCall[] = [];
  return conversation.map((m) => {
    if (m.role === "assistant") open = [...(m.toolCalls ?? [])];
    if (m.role !== "tool") return m;
    const named = open.findIndex((c) => c.name === m.toolName);
    const at = m.toolCallId ? open.findIndex((c) => c.id === m.toolCallId) : Math.max(named, 0);
    const call = at >= 0 ? open.splice(at, 1)[0] : undefined;
    return m.toolCallId || !call ? m : { ...m, toolCallId: call.id };
  });
}

/** A message with its call ids as Mistral's templates take them (else they raise an exception). */
function withMistralIds(m: ConversationMessage): ConversationMessage {
  if (m.toolCalls?.length) return { ...m, toolCalls: m.toolCalls.map((c) => ({ ...c, id: mistralToolCallId(c.id) })) };
  return m.toolCallId ? { ...m, toolCallId: mistralToolCallId(m.toolCallId) } : m;
}

/** A participant's name, where the message has one (as transformers hands a template the message's own keys). */
export const named = (m: ConversationMessage): { name?: string } => (m.name === undefined ? {} : { name: m.name });

/** `argumentsAsText`: each call's arguments as JSON text, laid out as the call grammar makes the model write them. */
function nativeMessage(m: ConversationMessage, argumentsAsText: boolean): ChatMessage {
  if (m.toolCalls?.length) {
    return withReasoning(m, {
      role: m.role,
      content: m.content,
      ...named(m),
      tool_calls: m.toolCalls.map((c) => ({
        id: c.id,
        type: "function",
        function: { name: c.name, arguments: argumentsAsText ? spacedJson(c.arguments) : c.arguments },
      })),
    });
  }
  if (m.role === "tool") return { role: "tool", content: m.content, tool_call_id: m.toolCallId, name: m.toolName };
  return withReasoning(m, { role: m.role, content: m.content, ...named(m) });
}

/**
 * The message with the reasoning `m` carries, as `reasoning_content`, the name Qwen3's and
 * DeepSeek's templates read (Qwen3's renders it in the turns of a multi-step tool call, so the
 * prompt goes on from what the model wrote), and as `thinking`, gpt-oss's: transformers gives
 * templates both.
 */
const withReasoning = (m: ConversationMessage, message: ChatMessage): ChatMessage =>
  m.reasoning ? { ...message, reasoning_content: m.reasoning, thinking: m.reasoning } : message;

/** Calls as a hermes answer holds them: laid out as the call grammar makes the model write them. */
const writeCalls = (calls: ToolCall[]) =>
  calls
    .map((c) => {
      const { begin, end } = toolCallFormats.hermes.callLayout(c.name);
      return `${begin}${spacedJson(c.arguments)}${end}`;
    })
    .join(toolCallFormats.hermes.separator);

/**
 * Calls as text in the assistant's turn, results of consecutive tool messages merged into one
 * user turn, and a user message right after them into that turn too: two user turns in a row
 * are what templates that need turns to alternate (Gemma's) refuse.
 */
function plainMessages(messages: ConversationMessage[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  // The user turn that collects the results of the tool messages just seen.
  let results: ChatMessage | undefined;
  for (const m of messages) {
    if (m.role === "tool") {
      const result = `<tool_response>\n${m.content}\n</tool_response>`;
      if (results) results.content = `${results.content}\n${result}`;
      else out.push((results = { role: "user", content: result }));
      continue;
    }
    if (m.role === "user" && results) {
      results.content = `${results.content}\n\n${m.content}`;
      results = undefined;
      continue;
    }
    results = undefined;
    if (m.toolCalls?.length)
      out.push(
        withReasoning(m, {
          role: m.role,
          content: [m.content, writeCalls(m.toolCalls)].filter(Boolean).join("\n"),
          ...named(m),
        }),
      );
    else out.push(withReasoning(m, { role: m.role, content: m.content, ...named(m) }));
  }
  return out;
}

function withToolsInSystemPrompt(messages: ChatMessage[], tools: ToolSpec[]): ChatMessage[] {
  const block = toolsPrompt(tools);
  const [first, ...rest] = messages;
  if (first?.role === "system") return [{ ...first, content: `${first.content}\n\n${block}` }, ...rest];
  return [{ role: "system", content: block }, ...messages];
}

function toolsPrompt(tools: ToolSpec[]): string {
  const signatures = tools.map((t) => JSON.stringify(functionTool(t))).join("\n");
  return [
    "# Tools",
    "",
    "You can call the functions listed between <tools> and </tools> when they help answer the user:",
    "<tools>",
    signatures,
    "</tools>",
    "",
    "To call a function, answer with one JSON object per call, each on its own line between <tool_call> and </tool_call>:",
    "<tool_call>",
    '{"name": "<function name>", "arguments": {<arguments as a JSON object>}}',
    "</tool_call>",
    "The results come back between <tool_response> and </tool_response>.",
  ].join("\n");
}
