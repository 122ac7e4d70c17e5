// Anthropic's context editing (`context_management.edits`): before the prompt reaches the model,
// the oldest tool results (clear_tool_uses_20250919) and earlier turns' thinking
// (clear_thinking_20251015) are cleared. The client keeps its whole history and sends it again
// each time; the answer says what was cleared (`applied_edits`). Compaction (a summary the model
// writes) is not done here: asking for it is a 400 naming it.
import type { ConversationMessage } from "../engine/tools";
import { Fields, unsupported } from "./validate";

export interface ClearToolUses {
  type: "clear_tool_uses_20250919";
  /** Clearing starts once the prompt holds more than this many input tokens or tool uses. */
  trigger: { type: "input_tokens" | "tool_uses"; value: number };
  /** The most recent tool uses kept whole. */
  keep: number;
  /** Clear nothing unless this many input tokens at least would go. */
  clearAtLeast: number;
  excludeTools: Set<string>;
  /** Clear the calls' inputs too: all of them (true) or those of the tools named. */
  clearInputs: boolean | Set<string>;
}

export interface ClearThinking {
  type: "clear_thinking_20251015";
  /** The most recent assistant turns with thinking that keep it (Infinity: all). */
  keep: number;
}

export type ContextEdit = ClearToolUses | ClearThinking;

export type AppliedEdit =
  | { type: "clear_tool_uses_20250919"; cleared_tool_uses: number; cleared_input_tokens: number }
  | { type: "clear_thinking_20251015"; cleared_thinking_turns: number; cleared_input_tokens: number };

/** What stands in for a cleared tool result, so the model knows there was one. */
export const CLEARED_TOOL_RESULT = "[tool result cleared from the context]";

// Anthropic's defaults: clear once past 100,000 input tokens, keeping the last 3 tool uses;
// without a clear_thinking edit, only the last turn's thinking is kept.
const DEFAULT_TRIGGER_TOKENS = 100_000;
const DEFAULT_KEEP_TOOL_USES = 3;
const DEFAULT_KEEP_THINKING_TURNS = 1;

/** `context_management`: {edits: [...]}, each edit checked; undefined when absent. */
export function contextEdits(f: Fields): ContextEdit[] | undefined {
  const config = f.object("context_management");
  if (!config) return undefined;
  config.onlyKnown(["edits"]);
  const raw = config.array("edits") ?? [];
  return raw.map((item, i) => {
    const edit = Fields.item(item, config.name(`edits.${i}`));
    const type = edit.string("type", { required: true })!;
    if (type === "clear_tool_uses_20250919") return clearToolUses(edit);
    if (type === "clear_thinking_20251015") return clearThinking(edit);
    if (type === "compact_20260112")
      throw unsupported(edit.name("type"), "'compact_20260112' (compaction: a summary the model writes)");
    return edit.fail("type", `must be 'clear_tool_uses_20250919' or 'clear_thinking_20251015'; got '${type}'`);
  });
}

function clearToolUses(edit: Fields): ClearToolUses {
  edit.onlyKnown(["type", "trigger", "keep", "clear_at_least", "exclude_tools", "clear_tool_inputs"]);
  const trigger = edit.object("trigger");
  const triggerType = trigger ? threshold(trigger, ["input_tokens", "tool_uses"]) : "input_tokens";
  const clearAtLeast = edit.object("clear_at_least");
  if (clearAtLeast) threshold(clearAtLeast, ["input_tokens"]);
  const keep = edit.object("keep");
  if (keep) threshold(keep, ["tool_uses"]);
  const inputs = edit.raw("clear_tool_inputs");
  return {
    type: "clear_tool_uses_20250919",
    trigger: { type: triggerType, value: trigger?.integer("value", { min: 0 }) ?? DEFAULT_TRIGGER_TOKENS },
    keep: keep?.integer("value", { min: 0 }) ?? DEFAULT_KEEP_TOOL_USES,
    clearAtLeast: clearAtLeast?.integer("value", { min: 0 }) ?? 0,
    excludeTools: new Set(toolNames(edit, "exclude_tools")),
    clearInputs: Array.isArray(inputs)
      ? new Set(toolNames(edit, "clear_tool_inputs"))
      : (edit.boolean("clear_tool_inputs") ?? false),
  };
}

function clearThinking(edit: Fields): ClearThinking {
  edit.onlyKnown(["type", "keep"]);
  if (edit.raw("keep") === "all") return { type: "clear_thinking_20251015", keep: Infinity };
  const keep = edit.object("keep");
  if (!keep) return { type: "clear_thinking_20251015", keep: DEFAULT_KEEP_THINKING_TURNS };
  if (threshold(keep, ["thinking_turns", "all"], { valued: false }) === "all")
    return { type: "clear_thinking_20251015", keep: Infinity };
  return {
    type: "clear_thinking_20251015",
    keep: keep.integer("value", { min: 1 }) ?? keep.fail("value", "is required"),
  };
}

/** A {type, value} threshold's type, one of `types`; its value is read by the caller. */
function threshold<T extends string>(f: Fields, types: T[], o: { valued?: boolean } = {}): T {
  f.onlyKnown(["type", "value"]);
  const type = f.string("type", { required: true })!;
  if (!types.includes(type as T)) f.fail("type", `must be ${types.map((t) => `'${t}'`).join(" or ")}; got '${type}'`);
  if ((o.valued ?? true) && !f.has("value")) f.fail("value", "is required");
  return type as T;
}

function toolNames(f: Fields, field: string): string[] {
  const raw = f.array(field) ?? [];
  raw.forEach((name, i) => {
    if (typeof name !== "string") f.fail(`${field}.${i}`, "must be a tool's name");
  });
  return raw as string[];
}

/**
 * The conversation as the model gets it, once the edits (in their order) have cleared what they
 * clear, and what each cleared. `countTokens` counts a conversation's prompt: an edit that clears
 * fewer tokens than its clear_at_least leaves the conversation as it was.
 */
export async function applyContextEdits(
  messages: ConversationMessage[],
  edits: ContextEdit[],
  countTokens: (messages: ConversationMessage[]) => Promise<number>,
): Promise<{ messages: ConversationMessage[]; applied: AppliedEdit[] }> {
  const applied: AppliedEdit[] = [];
  let tokens: number | undefined; // the current conversation's, once counted
  const counted = async () => (tokens ??= await countTokens(messages));
  for (const edit of edits) {
    if (edit.type === "clear_tool_uses_20250919") {
      const uses = toolUses(messages);
      const over =
        edit.trigger.type === "tool_uses" ? uses.length > edit.trigger.value : (await counted()) > edit.trigger.value;
      const cleared = over
        ? uses.slice(0, Math.max(0, uses.length - edit.keep)).filter((u) => !edit.excludeTools.has(u.name))
        : [];
      if (cleared.length === 0) continue;
      const edited = withToolUsesCleared(messages, cleared, edit.clearInputs);
      const before = await counted();
      const after = await countTokens(edited);
      if (before - after < edit.clearAtLeast) continue;
      applied.push({ type: edit.type, cleared_tool_uses: cleared.length, cleared_input_tokens: before - after });
      messages = edited;
      tokens = after;
    } else {
      const thinkingTurns = messages.flatMap((m, i) =>
        m.role === "assistant" && (m.reasoning || m.thinkingBlocks?.length) ? [i] : [],
      );
      const cleared = thinkingTurns.slice(0, Math.max(0, thinkingTurns.length - edit.keep));
      if (cleared.length === 0) continue;
      const edited = messages.map((m, i) => (cleared.includes(i) ? withoutThinking(m) : m));
      const before = await counted();
      const after = await countTokens(edited);
      applied.push({ type: edit.type, cleared_thinking_turns: cleared.length, cleared_input_tokens: before - after });
      messages = edited;
      tokens = after;
    }
  }
  return { messages, applied };
}

interface ToolUse {
  id: string;
  name: string;
}

/** The conversation's tool calls, oldest first. */
const toolUses = (messages: ConversationMessage[]): ToolUse[] =>
  messages.flatMap((m) => m.toolCalls?.map((c) => ({ id: c.id, name: c.name })) ?? []);

function withToolUsesCleared(
  messages: ConversationMessage[],
  cleared: ToolUse[],
  clearInputs: boolean | Set<string>,
): ConversationMessage[] {
  const ids = new Set(cleared.map((u) => u.id));
  const inputCleared = (name: string) => (typeof clearInputs === "boolean" ? clearInputs : clearInputs.has(name));
  return messages.map((m) => {
    if (m.role === "tool" && ids.has(m.toolCallId!)) {
      const { isError: _wasError, ...result } = m;
      return { ...result, content: CLEARED_TOOL_RESULT };
    }
    if (!m.toolCalls?.some((c) => ids.has(c.id) && inputCleared(c.name))) return m;
    return {
      ...m,
      toolCalls: m.toolCalls.map((c) => (ids.has(c.id) && inputCleared(c.name) ? { ...c, arguments: {} } : c)),
    };
  });
}

function withoutThinking(m: ConversationMessage): ConversationMessage {
  const { reasoning: _reasoning, thinkingBlocks: _blocks, ...rest } = m;
  return rest;
}
