// Every error a command ends with, as the one line the user sees: the typed errors that cross
// layers get the line (and hint) that suits a terminal; anything else its message's first line.
import {
  AdapterError,
  ContextLengthError,
  InvalidParameterError,
  ModelNotFoundError,
  ModelLoadError,
  ModelPullError,
  QueueFullError,
  SchemaError,
  UnsupportedError,
} from "../errors";

/** Parameters that are what the user typed or piped in, not a flag they set. */
const inputParams = new Set(["messages", "prompt", "text", "texts"]);

export function errorLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const first = message.split("\n")[0]!;
  // A model's name or source says what is wrong with it itself.
  if (error instanceof InvalidParameterError && error.param === "model") return first;
  // A schema that names no option (a provider's) says what is wrong with it itself.
  if (error instanceof SchemaError && error.param === null) return first;
  if (error instanceof InvalidParameterError)
    return `${inputParams.has(error.param ?? "") ? "invalid input" : "invalid option"}: ${first}`;
  if (error instanceof ContextLengthError) return `${first}; shorten the prompt or use a model with a longer context`;
  if (error instanceof ModelNotFoundError) return `${first} (mlx list shows the stored models)`;
  if (error instanceof ModelPullError || error instanceof ModelLoadError || error instanceof AdapterError) return first;
  if (error instanceof UnsupportedError) return first;
  if (error instanceof QueueFullError) return `${first}; try again in a moment`;
  return first;
}
