// When a call is required (tool_choice "required" or a named function), the answer is
// constrained to calls in the model's format whose arguments match the function's parameter
// schema: each function's schema becomes EBNF (its rules prefixed so several fit in one
// grammar), wrapped in the call's JSON and the format's tags.
import { canonicalJson, createGrammarConstraint, prefixRules, schemaEbnf, SchemaError, validateSchema, type GrammarConstraint, type GrammarSource } from "../grammar";
import type { Tokenizer } from "../../tokenizer/tokenizer";
import type { ToolCallFormat } from "./formats";
import type { ToolSpec } from "./types";

/** The functions a required call may name: the one chosen, or all offered. */
export async function createToolCallConstraint(tokenizer: Tokenizer, format: ToolCallFormat, functions: ToolSpec[], parallel: boolean): Promise<GrammarConstraint> {
  for (const f of functions) {
    try {
      await validateSchema(argumentsSchema(f));
    } catch (error) {
      if (error instanceof SchemaError) throw new SchemaError(`function '${f.name}' parameters: ${error.message}`);
      throw error;
    }
  }
  return createGrammarConstraint(tokenizer, toolCallGrammar(format, functions, parallel));
}

/** An empty parameter schema still means an arguments object. */
function argumentsSchema(f: ToolSpec): Record<string, unknown> {
  return Object.keys(f.parameters).length > 0 ? f.parameters : { type: "object", properties: {} };
}

function toolCallGrammar(format: ToolCallFormat, functions: ToolSpec[], parallel: boolean): GrammarSource {
  return {
    key: `tools:${format.name}:${parallel}:${canonicalJson(functions.map((f) => [f.name, argumentsSchema(f)]))}`,
    root: "tool_calls",
    ebnf: async () => {
      const rules: string[] = [];
      const calls: string[] = [];
      for (const [i, f] of functions.entries()) {
        rules.push(prefixRules(await schemaEbnf(argumentsSchema(f), true), `f${i}_`));
        // Laid out as the models write it: {"name": "f", "arguments": {...}}
        const head = JSON.stringify(`{"name": ${JSON.stringify(f.name)}, "${format.argumentsKey}": `);
        rules.push(`call_${i} ::= ${head} f${i}_root "}"`);
        calls.push(`call_${i}`);
      }
      rules.push(`call ::= ${calls.join(" | ")}`, format.callsRule(parallel));
      return rules.join("\n");
    },
  };
}
