// How `mlx run` and `mlx chat` show a thinking model's reasoning: before the answer, dimmed on a
// terminal and set apart from the answer by a blank line; `--hide-thinking` drops it.
import type { ArgsDef } from "citty";
import type { CompletionPiece } from "../engine/generate";
import { thinkingTemplate, type ThinkingRequest } from "../engine/reasoning";
import { UnsupportedError } from "../errors";
import type { LoadedModel } from "../models/load";
import { positiveInteger } from "./options";

export const thinkingArgs = {
  think: {
    type: "boolean",
    description: "Let a model that thinks reason first (--no-think: answer at once; default: the model's own)",
  },
  "thinking-budget": { type: "string", description: "Most reasoning tokens before the model must answer" },
  "hide-thinking": { type: "boolean", description: "Do not show a thinking model's reasoning" },
} as const satisfies ArgsDef;

/** --think / --no-think and --thinking-budget as the engine's request. */
export function thinkingFrom(args: Record<string, unknown>): ThinkingRequest | undefined {
  const enabled = args.think as boolean | undefined;
  const budgetArg = args["thinking-budget"];
  const budget = budgetArg === undefined ? undefined : positiveInteger("thinking-budget", budgetArg);
  if (enabled === false && budget !== undefined) throw new Error("--thinking-budget cannot go with --no-think");
  return enabled === undefined && budget === undefined ? undefined : { enabled, budget };
}

/**
 * --think or a budget for a model that does not think is refused before any prompt: the engine
 * refuses --think too, but only once asked, which in a chat is at every message.
 */
export function checkThinking(lm: LoadedModel, thinking: ThinkingRequest | undefined): void {
  if (!thinking || thinking.enabled === false || thinkingTemplate(lm.tokenizer.chatTemplate).thinks) return;
  const refusal = "this model does not think (its chat template has no <think> section)";
  throw new UnsupportedError(
    thinking.budget === undefined ? refusal : `${refusal}, so --thinking-budget has nothing to bound`,
  );
}

const DIM = "\x1b[2m";
const UNDIM = "\x1b[22m";

/**
 * Turns streamed pieces into what to write: reasoning (unless hidden; dimmed on a terminal,
 * unless NO_COLOR is set), then the answer. `end` is what to write after the last piece: a
 * reasoning cut off before any answer (max tokens, Ctrl-C) must not leave the terminal dim.
 */
export function pieceWriter(o: { hide: boolean; terminal: boolean }): {
  show: (piece: CompletionPiece) => string;
  end: () => string;
} {
  const dim = o.terminal && !process.env.NO_COLOR;
  let inReasoning = false;
  return {
    show: (piece) => {
      let out = "";
      if (piece.reasoning && !o.hide) {
        if (!inReasoning) out += dim ? DIM : "";
        inReasoning = true;
        out += piece.reasoning;
      }
      if (piece.text) {
        if (inReasoning) out += `${dim ? UNDIM : ""}\n\n`;
        inReasoning = false;
        out += piece.text;
      }
      return out;
    },
    end: () => (inReasoning && dim ? UNDIM : ""),
  };
}
