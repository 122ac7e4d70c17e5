// `mlx rm <model>...`: remove stored models (files other models share stay), and models mlx
// create made (their models.toml entries).
import { confirm, isCancel } from "@clack/prompts";
import { defineCommand } from "citty";
import { existsSync } from "node:fs";
import { manifestPath, readManifest } from "../store/manifest";
import { formatBytes } from "../format";
import { modelRequest } from "../store/pull";
import { refuseInUse, removeModel } from "../store/store";
import { userAliasFile } from "../store/aliases";
import { isUserAlias, refuseRemovingMadeFrom, removeUserAlias } from "../store/create";
import { fail, log } from "./log";
import { variadic } from "./strict-flags";

export default defineCommand({
  meta: { name: "rm", description: "Remove models from the store" },
  args: {
    // Several at once, as `ollama rm a b` takes them.
    model: variadic({ type: "positional", required: true, description: "Aliases or stored model names (one or more)" }),
    yes: { type: "boolean", alias: "y", description: "Do not ask for confirmation" },
  },
  async run({ args }) {
    try {
      // A model mlx create made has no files: its entry in the user's models.toml goes (its base stays).
      const given = args._.map(String);
      const made = given.filter((name) => !existsSync(manifestPath(name)) && isUserAlias(name));
      // Every name is checked before any model goes, so a typo in one, or one in use, removes none.
      const names = given.filter((name) => !made.includes(name)).map((what) => modelRequest(what).name);
      // An unreadable manifest still names a model whose files take space: removing it is the repair.
      for (const name of names)
        if (!existsSync(manifestPath(name))) throw new Error(`no stored model named '${name}' (see mlx list)`);
      for (const name of names) {
        refuseInUse(name);
        refuseRemovingMadeFrom(name, made);
      }
      // Only a person at a terminal can answer; scripts pass -y.
      if (!args.yes && process.stdin.isTTY) {
        const listed = [...made.map((name) => `${name} (an alias in models.toml)`), ...names.map(described)];
        const answer = await confirm({ message: `Remove ${listed.join(", ")}?`, initialValue: false });
        if (isCancel(answer) || !answer) {
          log.info("nothing removed");
          return;
        }
      }
      for (const name of made) {
        await removeUserAlias(name);
        log.success(`removed ${name} from ${userAliasFile()}`);
      }
      for (const name of names) {
        const { freedBytes } = await removeModel(name, (stored) => refuseRemovingMadeFrom(stored));
        log.success(`removed ${name}, freed ${formatBytes(freedBytes)}`);
      }
    } catch (error) {
      fail(error);
    }
  },
});

/** A model as the confirmation names it: with its size. */
function described(name: string): string {
  const manifest = readManifest(name);
  return `${name} (${manifest ? formatBytes(manifest.totalBytes) : "unreadable manifest"})`;
}
