// `mlx rm <model>`: remove a stored model (files other models share stay).
import { confirm, isCancel } from "@clack/prompts";
import { defineCommand } from "citty";
import { existsSync } from "node:fs";
import { manifestPath, readManifest } from "../store/manifest";
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
      // An unreadable manifest still names a model whose files take space: removing it is the repair.
      if (!existsSync(manifestPath(name))) throw new Error(`no stored model named '${name}' (see mlx list)`);
      const manifest = readManifest(name);
      // Only a person at a terminal can answer; scripts pass -y.
      if (!args.yes && process.stdin.isTTY) {
        const answer = await confirm({
          message: `Remove ${name} (${manifest ? formatBytes(manifest.totalBytes) : "unreadable manifest"})?`,
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
