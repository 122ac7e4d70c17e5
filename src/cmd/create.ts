// `mlx create <name> -f Modelfile`: a model made from another with a system prompt, turns and
// sampling values (Ollama's Modelfile: FROM, PARAMETER, SYSTEM, MESSAGE, ADAPTER, LICENSE), written
// as an alias into $MLX_HOME/models.toml, as POST /api/create writes it.
import { defineCommand } from "citty";
import { resolve } from "node:path";
import { readUserFile, userAliasFile } from "../store/aliases";
import { createModel } from "../store/create";
import { parseModelfile } from "../store/modelfile";
import { fail, log } from "./log";

export default defineCommand({
  meta: {
    name: "create",
    description: "Make a model from another with a system prompt and parameters (an Ollama Modelfile), as an alias",
  },
  args: {
    name: { type: "positional", required: true, description: "The new model's name" },
    file: { type: "string", alias: "f", description: "The Modelfile (default: ./Modelfile)", default: "Modelfile" },
  },
  async run({ args }) {
    try {
      const file = resolve(args.file);
      const recipe = parseModelfile(readUserFile(file), file);
      await createModel({ ...recipe, name: args.name });
      log.success(`created ${args.name} from ${recipe.from} (in ${userAliasFile()})`);
    } catch (error) {
      fail(error);
    }
  },
});
