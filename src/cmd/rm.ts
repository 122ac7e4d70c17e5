// `mlx rm <model>`: remove a stored model (files other models share stay).
import { confirm, isCancel } from "@clack/prompts";
import { defineCommand } from "citty";
import { readManifest } from "../store/manifest";
import { formatBytes } from "../format";
import { modelRequest } from "../store/pull";
import { removeModel } from "../store/store";
import { fail, log } from "./log";

export default defineCommand({
  meta: { name: "rm", description: "Remove a model from the store" },
  args: {
    model: { type: "positional", required: true, description: "Alias or stored model name" },
    yes: { type: "boolean", alias: "y", description: "Do not ask for confirmation" },
  },
  async run({ args }) {
    try {
      const { name } = modelRequest(args.model);
      const manifest = readManifest(name);
      if (!manifest) throw new Error(`no stored model named '${name}' (see mlx list)`);
      // Only a person at a terminal can answer; scripts pass -y.
      if (!args.yes && process.stdin.isTTY) {
        const answer = await confirm({
          message: `Remove ${name} (${formatBytes(manifest.totalBytes)})?`,
          initialValue: false,
        });
        if (isCancel(answer) || !answer) {
          log.info("nothing removed");
          return;
        }
      }
      const { freedBytes } = await removeModel(name);
      log.success(`removed ${name}, freed ${formatBytes(freedBytes)}`);
    } catch (error) {
      fail(error);
    }
  },
});
