// `mlx stop MODEL`: a running `mlx serve` unloads the model now, as `ollama stop` asks Ollama
// (a request with keep_alive 0; one answering requests unloads once they are done).
import { defineCommand } from "citty";
import { fail } from "./log";
import { runningModels } from "./ps";
import { askServer, serverArgs } from "./server-client";

export default defineCommand({
  meta: { name: "stop", description: "Unload a model from a running mlx serve" },
  args: {
    model: { type: "positional", description: "The model to unload, as mlx ps lists it", required: true },
    ...serverArgs,
  },
  async run({ args }) {
    try {
      // Asked of a model not loaded, keep_alive 0 would load it first: only one that is loaded.
      const models = await runningModels(args);
      const names = models.map((m) => m.name);
      const name = names.find((n) => n === args.model || n === `${args.model}:latest` || `${n}:latest` === args.model);
      if (name === undefined)
        throw new Error(
          `model '${args.model}' is not loaded there${names.length > 0 ? ` (loaded: ${names.join(", ")})` : " (none is)"}`,
        );
      await askServer(args, "/api/generate", { model: name, keep_alive: 0 });
    } catch (error) {
      fail(error);
    }
  },
});
