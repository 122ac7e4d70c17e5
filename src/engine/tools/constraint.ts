// Calls that always parse: an xgrammar structural tag lays each offered function's call out as
// the model family writes it, with its arguments held to the function's parameter schema.
// When a call is required (tool_choice "required" or a named function) the answer must be
// calls; otherwise it is free text, and only from the family's trigger on ("<tool_call>", ...)
// must it continue as a valid call.
import {
  canonicalJson,
  createGrammarConstraint,
  finiteNumbers,
  schemaEbnf,
  SchemaError,
  xmlParametersEbnf,
  validateSchema,
  type BudgetOptions,
  type GrammarConstraint,
} from "../grammar";
import { CallsProgress } from "../budget/calls-progress";
import { SchemaShapes } from "../budget/json-progress";
import { minXmlParameters, xmlLargestOpening } from "../budget/xml-progress";
import { budgetSteering, utf8Length } from "../budget/steering";
import type { StructuralTag, StructuralTagFormat, TagFormat } from "@mlc-ai/web-xgrammar";
import type { Tokenizer } from "../../tokenizer/tokenizer";
import type { ToolCallFormat } from "./formats";
import type { ToolSpec } from "./types";

export interface ToolCallConstraintOptions extends BudgetOptions {
  /** Whether the answer must be calls (else: free text in which calls stay valid). */
  required: boolean;
  /** Whether the answer may hold several calls. */
  parallel: boolean;
}

/** A constraint for one answer that may (or must) call `functions`; a parameter schema it cannot enforce is a SchemaError naming the function. */
export async function createToolCallConstraint(
  tokenizer: Tokenizer,
  format: ToolCallFormat,
  functions: ToolSpec[],
  o: ToolCallConstraintOptions,
): Promise<GrammarConstraint> {
  for (const f of functions) {
    try {
      await validateSchema(argumentsSchema(f));
    } catch (error) {
      if (error instanceof SchemaError) throw new SchemaError(`function '${f.name}' parameters: ${error.message}`);
      throw error;
    }
  }
  const steering =
    o.maxTokens === undefined
      ? undefined
      : budgetSteering(tokenizer, o.maxTokens, () => callsProgress(format, functions, o.required));
  const source = {
    key: `tools:${format.name}:${o.required}:${o.parallel}:${canonicalJson(functions.map((f) => [f.name, argumentsSchema(f)]))}`,
    structuralTag: async (): Promise<StructuralTag> => ({
      type: "structural_tag",
      format: await callsFormat(format, functions, o),
    }),
  };
  return createGrammarConstraint(tokenizer, source, steering);
}

/** The calls' layout as the budget steering reads it (see callsFormat for the grammar itself). */
function callsProgress(format: ToolCallFormat, functions: ToolSpec[], required: boolean) {
  const calls = functions.map((f) => {
    const schema = argumentsSchema(f);
    return { ...format.callLayout(f.name), schema, shapes: new SchemaShapes(schema, true), xml: format.xmlParameters };
  });
  const wrapper = utf8Length((format.list?.begin ?? "") + (format.list?.end ?? ""));
  // Opening a call (the trigger in free text, or a separator) owes a whole smallest call, in
  // bytes (DeepSeek's markers hold three-byte characters). In XML parameters "<" opens a
  // parameter: it may owe the longest one whole.
  const opening = Math.max(
    ...calls.map((c) =>
      c.xml
        ? Math.max(
            xmlLargestOpening(c.shapes, c.schema),
            utf8Length(c.begin + minXmlParameters(c.shapes, c.schema) + c.end) + wrapper,
          )
        : Math.max(
            c.shapes.largestOpening(c.schema),
            utf8Length(c.begin + c.shapes.minText(c.schema) + c.end) + wrapper,
          ),
    ),
  );
  const opener = required ? (format.separator.trim()[0] ?? format.separator[0]) : format.trigger[0];
  return {
    progress: new CallsProgress({
      calls,
      separator: format.separator,
      list: format.list,
      trigger: required ? undefined : format.trigger,
    }),
    opening,
    // What opens another call: the trigger in free text, the separator after a call; and in
    // XML parameters another parameter.
    openers: `${opener}${format.xmlParameters && opener !== "<" ? "<" : ""}`,
  };
}

/** A call's arguments as our JSON-safe EBNF for its schema (see schemaEbnf), or as Qwen's XML parameters (see xmlParametersEbnf), with numbers that stay finite once read (see finiteNumbers). */
async function argumentsEbnf(format: ToolCallFormat, schema: object): Promise<string> {
  return finiteNumbers(await (format.xmlParameters ? xmlParametersEbnf(schema) : schemaEbnf(schema, true)));
}

/** An empty parameter schema still means an arguments object. */
function argumentsSchema(f: ToolSpec): Record<string, unknown> {
  return Object.keys(f.parameters).length > 0 ? f.parameters : { type: "object", properties: {} };
}

async function callsFormat(
  format: ToolCallFormat,
  functions: ToolSpec[],
  { required, parallel }: ToolCallConstraintOptions,
): Promise<StructuralTagFormat> {
  const calls = await Promise.all(
    functions.map(
      async (f): Promise<TagFormat> => ({
        type: "tag",
        ...format.callLayout(f.name),
        content: {
          type: "grammar",
          grammar: await argumentsEbnf(format, argumentsSchema(f)),
        },
      }),
    ),
  );
  const stopAfterFirst = !parallel;
  if (format.list && !format.list.end) {
    // A list no text closes (Mistral's v11+ calls, each after [TOOL_CALLS]): xgrammar takes its
    // calls only after its opening as plain text, and in free text each call whole, trigger first.
    const { begin } = format.list;
    if (required)
      return {
        type: "sequence",
        elements: [
          { type: "const_string", value: begin },
          {
            type: "tags_with_separator",
            tags: calls,
            separator: format.separator,
            at_least_one: true,
            stop_after_first: stopAfterFirst,
          },
        ],
      };
    const wholeCalls = calls.map((c) => ({ ...c, begin: begin + c.begin }));
    return { type: "triggered_tags", triggers: [format.trigger], tags: wholeCalls, stop_after_first: stopAfterFirst };
  }
  if (format.list) {
    // One tagged list of calls (mistral): required, or opened by the trigger in free text.
    const list: TagFormat = {
      type: "tag",
      ...format.list,
      content: {
        type: "tags_with_separator",
        tags: calls,
        separator: format.separator,
        at_least_one: true,
        stop_after_first: stopAfterFirst,
      },
    };
    return required
      ? list
      : { type: "triggered_tags", triggers: [format.trigger], tags: [list], stop_after_first: true };
  }
  if (required)
    return {
      type: "tags_with_separator",
      tags: calls,
      separator: format.separator,
      at_least_one: true,
      stop_after_first: stopAfterFirst,
    };
  return { type: "triggered_tags", triggers: [format.trigger], tags: calls, stop_after_first: stopAfterFirst };
}
