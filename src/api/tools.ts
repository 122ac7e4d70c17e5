// Reading tools from requests, shared by both API families: `tools` (the same shape in OpenAI
// and Ollama), OpenAI's `tool_choice`, and the tool calls of earlier assistant messages
// (arguments as JSON text in OpenAI, as an object in Ollama).
import { isJsonObject, parseExactJson } from "../exact-json";
import { checkJsonSchema, SchemaError } from "../engine/grammar";
import type { ConversationMessage, ToolCall, ToolChoice, ToolRequest, ToolSpec } from "../engine/tools";
import { Fields, ValidationError, unsupported } from "./validate";

const FUNCTION_NAME = /^[A-Za-z0-9_-]{1,64}$/;
export const MAX_TOOLS = 128;

function parseTools(f: Fields, commaJoinedTypes: boolean): ToolSpec[] | undefined {
  const raw = f.array("tools", { max: MAX_TOOLS });
  if (!raw || raw.length === 0) return undefined;
  const names = new Set<string>();
  return raw.map((item, i) => {
    const at = `tools.${i}`;
    const tool = Fields.item(item, at);
    const type = tool.string("type") ?? "function";
    if (type !== "function") tool.fail("type", `must be 'function', got '${type}'`);
    const fn = tool.object("function");
    if (!fn) throw new ValidationError(`'${at}.function' is required`, `${at}.function`);
    if (!commaJoinedTypes) return toolSpec(fn, "parameters", names);
    return toolSpec(
      new Fields({ ...fn.body, parameters: typesListed(fn.body.parameters) }, fn.prefix),
      "parameters",
      names,
    );
  });
}

/**
 * ollama-python makes a tool of a Python function whose parameter has several types
 * (`Union[int, str]`) by joining them in one string, "integer, string", which Ollama takes (it
 * reads no schema): here, the list of types that JSON Schema writes for it.
 */
function typesListed(parameters: unknown): unknown {
  if (!isJsonObject(parameters) || !isJsonObject(parameters.properties)) return parameters;
  const properties = Object.entries(parameters.properties).map(([name, property]) =>
    isJsonObject(property) && typeof property.type === "string" && property.type.includes(",")
      ? [name, { ...property, type: property.type.split(",").map((type) => type.trim()) }]
      : [name, property],
  );
  return { ...parameters, properties: Object.fromEntries(properties) };
}

/** One function offered: its name (unique among `names`), description and argument schema (in `schemaField`). */
export function toolSpec(fn: Fields, schemaField: string, names: Set<string>): ToolSpec {
  const name = fn.string("name", { required: true })!;
  if (!FUNCTION_NAME.test(name)) fn.fail("name", "must be 1 to 64 letters, digits, underscores or dashes");
  if (names.has(name)) fn.fail("name", `repeats the function name '${name}'`);
  names.add(name);
  const parameters = fn.object(schemaField)?.body ?? {};
  // A call's arguments are an object in every API: under a schema of another type a forced call
  // wrote a value no call can hold, which reached the client as the raw call text. OpenAI and
  // Anthropic refuse such a schema too.
  if ("type" in parameters && parameters.type !== "object")
    fn.fail(
      `${schemaField}.type`,
      `must be 'object' (a call's arguments are an object); got ${JSON.stringify(parameters.type)}`,
    );
  try {
    checkJsonSchema(parameters);
  } catch (error) {
    if (error instanceof SchemaError) throw new ValidationError(error.message, fn.name(schemaField));
    throw error;
  }
  const strict = fn.boolean("strict");
  return { name, description: fn.string("description"), parameters, ...(strict !== undefined && { strict }) };
}

/**
 * The request's tools and, in OpenAI requests (`withChoice`), tool_choice; undefined when it
 * offers none. `flatNamedChoice` also takes a function named as the Responses API names it,
 * {type: "function", name}, which the AI SDK's Ollama provider sends to /api/chat.
 * `commaJoinedTypes`: Ollama's, where a parameter's types may come as one string (typesListed).
 */
export function toolRequest(
  f: Fields,
  {
    withChoice,
    flatNamedChoice = false,
    commaJoinedTypes = false,
  }: { withChoice: boolean; flatNamedChoice?: boolean; commaJoinedTypes?: boolean },
): ToolRequest | undefined {
  const tools = parseTools(f, commaJoinedTypes);
  const choice = withChoice ? parseToolChoice(f, tools, flatNamedChoice) : "auto";
  // OpenAI's forced function is exactly one call of it ("required" is one or more): a model that
  // chained calls of it ran to max_tokens, and clients run no call of an answer cut short.
  const parallel = (f.boolean("parallel_tool_calls") ?? true) && typeof choice !== "object";
  if (!tools) return undefined;
  return { tools, choice, parallel };
}

/** OpenAI's tool_choice: "none", "auto", "required", or {type: "function", function: {name}}. */
function parseToolChoice(f: Fields, tools: ToolSpec[] | undefined, flatNamed: boolean): ToolChoice {
  const raw = f.raw("tool_choice");
  let nameParam = "tool_choice.function.name";
  if (raw === undefined || raw === null) return "auto";
  let choice: ToolChoice;
  if (typeof raw === "string") {
    if (raw !== "none" && raw !== "auto" && raw !== "required")
      f.fail("tool_choice", `must be one of none, auto, required, or a function; got '${raw}'`);
    choice = raw;
  } else {
    const c = f.object("tool_choice")!;
    // Only a named function: OpenAI's allowed_tools (a subset of the tools) and custom tools we do not implement.
    const type = c.string("type") ?? "function";
    if (type !== "function") throw unsupported("tool_choice.type", `a tool_choice of type '${type}'`);
    const fn = c.object("function");
    if (flatNamed && !fn && c.has("name")) {
      nameParam = "tool_choice.name";
      choice = { name: c.string("name")! };
    } else {
      if (!fn) throw new ValidationError("'tool_choice.function' is required", "tool_choice.function");
      choice = { name: fn.string("name", { required: true })! };
    }
  }
  if (choice === "none" || choice === "auto") return choice;
  if (!tools)
    throw new ValidationError(
      `'tool_choice' ${typeof choice === "string" ? `'${choice}'` : "naming a function"} needs 'tools'`,
      "tool_choice",
    );
  if (typeof choice === "object" && !tools.some((t) => t.name === choice.name)) {
    throw new ValidationError(
      `'tool_choice' names the function '${choice.name}', which is not among the tools`,
      nameParam,
    );
  }
  return choice;
}

/** An earlier assistant message's calls (a call sent without an id gets one from its place, so the prompt stays the same between requests). */
export function parseToolCalls(m: Fields, argumentsAs: "json-text" | "object"): ToolCall[] | undefined {
  const raw = m.array("tool_calls");
  if (!raw || raw.length === 0) return undefined;
  return raw.map((item, i) => {
    const at = m.name(`tool_calls.${i}`);
    const call = Fields.item(item, at);
    const fn = call.object("function");
    if (!fn) throw new ValidationError(`'${at}.function' is required`, `${at}.function`);
    const name = fn.string("name", { required: true, nonEmpty: true })!;
    return {
      id: call.string("id") ?? `call_${at.match(/\d+/g)!.join("_")}`,
      name,
      arguments: callArguments(fn, argumentsAs),
    };
  });
}

/** A call's `arguments`: an object (Ollama) or JSON text (OpenAI). */
export function callArguments(fn: Fields, argumentsAs: "json-text" | "object"): Record<string, unknown> {
  if (argumentsAs === "object") return fn.object("arguments")?.body ?? {};
  const text = fn.string("arguments") ?? "{}";
  // A call of a function without parameters, as some clients and models write it.
  if (text.trim() === "") return {};
  let value: unknown;
  try {
    value = parseExactJson(text);
  } catch {
    fn.fail("arguments", "must be a JSON object written as a string");
  }
  if (!isJsonObject(value)) fn.fail("arguments", "must be a JSON object written as a string");
  return value as Record<string, unknown>;
}

/** The function a tool result answers, from the earlier call with that id. */
export function toolResultName(earlier: ConversationMessage[], callId: string): string | undefined {
  for (const m of earlier) for (const c of m.toolCalls ?? []) if (c.id === callId) return c.name;
  return undefined;
}
