// Stored models as a whole: opening one for use, committing a freshly pulled one, listing,
// removing, and evicting the least recently used ones when the store outgrows its limit.
// Every change happens under the store lock, so two mlx processes never interleave them.
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { NotEnoughSpaceError } from "../files";
import { noSpaceLeft, shellWord } from "../format";
import { loadAliases } from "./aliases";
import { blobPresent, removeBlob } from "./blobs";
import { markInUse, modelsHeld, modelUsers, releaseModel } from "./in-use";
import { withStoreLock } from "./lock";
import {
  manifestPath,
  newManifest,
  readManifest,
  writeManifest,
  type ManifestFile,
  type ModelManifest,
} from "./manifest";
import { ModelInUseError, ModelLoadError, ModelNotFoundError } from "../errors";
import { indexEntry, loadIndex, manifestKeys, saveIndex, saveIndexIfRoom, type IndexEntry } from "./model-index";
import { blobPath, isSha256Hex, modelKey, modelsDir, revisionsDir, storeRoot } from "./paths";

export const DEFAULT_MAX_BYTES = 100e9;

/** A stored model whose blobs are missing or truncated; the message says how to repair it. */
export class StoreDamageError extends Error {
  override name = "StoreDamageError";
}

/**
 * A model `name` whose manifest is there but unreadable (cut short by a crash, or written by a
 * newer mlx), undefined for any other: it is listed, so using it is told this, not "not found".
 */
export function unreadableManifestError(name: string): StoreDamageError | undefined {
  if (readManifest(name) || !existsSync(manifestPath(name))) return undefined;
  return new StoreDamageError(
    `the manifest of '${name}' is unreadable (cut short, or from a newer mlx); mlx rm ${shellWord(name)} removes it`,
  );
}

/** $MLX_CACHE_MAX_BYTES: a byte count, or a number with a KB/MB/GB/TB suffix (powers of 1000). */
export function storeLimitBytes(): number {
  const raw = process.env.MLX_CACHE_MAX_BYTES?.trim();
  if (!raw) return DEFAULT_MAX_BYTES;
  const match = raw.match(/^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$/i);
  if (!match) throw new Error(`MLX_CACHE_MAX_BYTES must be a size like 50000000000 or 50GB (got '${raw}')`);
  const scale = { "": 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12 }[match[2]!.toUpperCase() as "" | "K" | "M" | "G" | "T"];
  return Math.floor(Number(match[1]) * scale);
}

/** What to hand to loadModel: the materialized directory, or the .gguf inside it. */
export function loadPath(manifest: Pick<ModelManifest, "name" | "format" | "files">): string {
  const dir = join(modelsDir(), modelKey(manifest.name));
  if (manifest.format === "mlx") return dir;
  return join(dir, manifest.files.find((f) => f.name.endsWith(".gguf"))!.name);
}

/**
 * Ends this process's use of the stored models that load from one of `paths` (a server that
 * unloaded them, or pulled one it does not hold): from then on `mlx rm` and eviction may take
 * them, as they could not while the server ran. The revisions an update kept for this process
 * (commitModel's usedHere) go with it, unless another process uses the model too; what cannot
 * go now (the store lock not had) stays for `mlx verify` to remove.
 */
export async function releaseStoredModels(paths: string[]): Promise<void> {
  const released = modelsHeld().filter((name) => {
    const manifest = readManifest(name);
    return !manifest || paths.includes(loadPath(manifest));
  });
  for (const name of released) releaseModel(name);
  if (released.length === 0) return;
  await withStoreLock(
    async (locked) => {
      if (!locked) return;
      const index = loadIndex();
      for (const name of released)
        if (modelUsers(name).length === 0) await removeUnreferencedBlobs(removeOldRevisions(name), index);
    },
    { readOnly: true },
  ).catch(() => {});
}

/**
 * For an error while loading `path`: when it is a stored model, the commands that repair it
 * (its blobs were verified when stored, so a load failure there means damage on disk).
 */
export function repairHint(path: string): string | undefined {
  const inside = relative(modelsDir(), path);
  if (inside === "" || inside.startsWith("..") || isAbsolute(inside)) return undefined;
  const manifest = readManifest(decodeURIComponent(inside.split(sep)[0]!));
  if (!manifest) return undefined;
  return `stored model '${manifest.name}' may be damaged: run \`mlx verify\`, then run \`${repair(manifest.name).command}\``;
}

/**
 * A failure to load `path`'s own files (a ModelLoadError), with repairHint's commands where `path`
 * is a stored model; any other error as it is.
 */
export function withRepairHint(error: unknown, path: string): unknown {
  const hint = error instanceof ModelLoadError && repairHint(path);
  return hint ? new ModelLoadError(`${(error as Error).message}; ${hint}`, { cause: error }) : error;
}

/** How a fused model written dequantized (mlx fuse --de-quantize) records its source: a fuse's, said so for repair's command. */
export const DEQUANTIZED_FUSE = "fuse:dequantized:";

/**
 * What brings back a damaged stored model: a pulled one is pulled again; one made here (mlx
 * convert, mlx fuse), which `mlx pull` does not know, is made again; one whose manifest is
 * unreadable is removed (nothing says where it came from).
 */
export function repair(name: string): { need: string; command: string } {
  const manifest = readManifest(name);
  if (manifest === undefined) return { need: "removing", command: `mlx rm ${shellWord(name)}` };
  const { source, madeFrom = [] } = manifest;
  if (source.startsWith("fuse:")) {
    const [base = "<its base>", adapter = "<its adapter dir>"] = madeFrom.map(shellWord);
    const flag = source.startsWith(DEQUANTIZED_FUSE) ? " --de-quantize" : "";
    return { need: "a new fusion", command: `mlx fuse ${base} --adapter ${adapter}${flag} ${shellWord(name)}` };
  }
  if (source.startsWith("convert:"))
    return { need: "a new conversion", command: `mlx convert ${convertInput(name, madeFrom[0])}` };
  return { need: "a new pull", command: `mlx pull ${shellWord(name)}` };
}

/**
 * A model made here (mlx convert, mlx fuse) has nowhere to be pulled from: its path when it is
 * stored intact, else an error naming the command that makes it again.
 */
export async function openMadeHere(name: string): Promise<string> {
  const path = await openStoredModel(name).catch((error) => {
    if (!(error instanceof StoreDamageError)) throw error;
  });
  if (path) return path;
  throw new StoreDamageError(`'${name}' was made here, not pulled; run \`${repair(name).command}\` to make it again`);
}

/**
 * `mlx convert X` stores its conversion as X-mlx (X an alias, a stored model or a file's name): the
 * X to give again; `given`, the GGUF as it was named, where the manifest records it.
 */
function convertInput(name: string, given: string | undefined): string {
  const stem = name.replace(/-mlx$/, "");
  if (loadAliases().models.has(stem) || readManifest(stem)) return shellWord(stem);
  return given === undefined ? `<path to ${stem}.gguf>` : shellWord(given);
}

/**
 * Opens a stored model for use: marks it in use by this process (so no one evicts it), records
 * the time, and returns its load path. Undefined when it is not stored, or was stored from a
 * different source (models.toml changed): the caller pulls it then.
 */
export function openStoredModel(name: string, source?: string): Promise<string | undefined> {
  return withStoreLock(
    async (locked) => {
      const manifest = readManifest(name);
      if (!manifest || (source !== undefined && manifest.source !== source)) return undefined;
      await assertIntact(manifest);
      // A store this process cannot write (read-only, another user's) is used as it is: no mark,
      // no time of use, its directory as its owner linked it; only its owner can remove it then.
      if (locked) {
        markInUse(name);
        materialize(manifest);
        recordUse(manifest);
      }
      return loadPath(manifest);
    },
    { readOnly: true },
  );
}

/**
 * Records that a model was used now, for the eviction order. On a full disk this is skipped:
 * the model is stored and usable, and a stale time only makes it a little likelier to go first.
 */
function recordUse(manifest: ModelManifest): void {
  manifest.lastUsedAt = new Date().toISOString();
  try {
    writeManifest(manifest);
    const index = loadIndex();
    index.set(manifest.name, indexEntry(manifest));
    saveIndex(index);
  } catch (error) {
    if (!noSpaceLeft(error)) throw error;
  }
}

/**
 * A full disk while storing `what` (a file, a model), said of the store: Node's message names
 * the store's scratch file or staging folder, not what was being stored, nor the way out.
 */
export function storingFailed(what: string, error: unknown): unknown {
  // A refusal before writing already names what needed how much room where.
  if (!noSpaceLeft(error) || error instanceof NotEnoughSpaceError) return error;
  return new Error(`no space left on device while storing ${what} in ${storeRoot()}; free some space and run again`, {
    cause: error,
  });
}

/**
 * Records a model whose blobs are all in place, and makes room for it by evicting the least
 * recently used models (never one in use). Returns its load path and the evicted names.
 * `usedHere`: this process used the model before (a server that has it loaded pulls its update):
 * the revision it read stays, as for another process using it, until releaseStoredModels.
 */
export function commitModel(
  manifest: ModelManifest,
  { usedHere = false }: { usedHere?: boolean } = {},
): Promise<{ path: string; evicted: string[] }> {
  // Read before anything is written: a bad $MLX_CACHE_MAX_BYTES must leave no model behind its error.
  const limit = storeLimitBytes();
  return withStoreLock(async () => {
    // A concurrent eviction may have removed a blob this model shares with the evicted one.
    await assertIntact(manifest);
    markInUse(manifest.name);
    const previous = readManifest(manifest.name);
    // The manifest last, as what makes the model stored: a full disk that fails its directory
    // fails the pull with no model listed.
    materialize(manifest);
    try {
      writeManifest(manifest);
    } catch (error) {
      // Not stored: its directory goes too (a previous model's own is linked again when opened).
      if (!previous) {
        rmSync(join(modelsDir(), modelKey(manifest.name)), { recursive: true, force: true });
        rmSync(join(revisionsDir(), modelKey(manifest.name)), { recursive: true, force: true });
      }
      throw error;
    }
    const index = loadIndex();
    index.set(manifest.name, indexEntry(manifest));
    // A process using the model (a server that loaded it) keeps the files of the revision it
    // loaded: they stay, unreferenced, until it lets go of the model (this process) or for
    // `mlx verify` to remove once it has stopped (another). This process's own mark is no use
    // but where it held it before (usedHere): the pull that commits the model took one too.
    const inUse = usedHere || modelUsers(manifest.name).some((pid) => pid !== process.pid);
    if (!inUse)
      await removeUnreferencedBlobs(
        [...removeOldRevisions(manifest.name), ...(previous?.files.map((f) => f.sha256) ?? [])],
        index,
      );
    const evicted = await evictToFit(index, manifest.name, limit);
    // The model is stored now: the index, a cache, is not worth failing the pull for.
    saveIndexIfRoom(index);
    return { path: loadPath(manifest), evicted };
  });
}

/** Removes these blobs (those a failed pull stored) unless a stored model uses them. */
export function discardBlobs(sha256s: string[]): Promise<void> {
  return withStoreLock(async () => {
    await removeUnreferencedBlobs(sha256s, loadIndex());
  });
}

export function listModels(): Promise<IndexEntry[]> {
  return withStoreLock(() => [...loadIndex().values()].sort((a, b) => a.name.localeCompare(b.name)), {
    readOnly: true,
  });
}

/** Models whose manifest is there but unreadable (cut short by a crash, or written by a newer mlx): only `mlx rm` helps them. */
export function unreadableModels(): Promise<string[]> {
  return withStoreLock(
    () =>
      manifestKeys()
        .map(decodeURIComponent)
        .filter((name) => !readManifest(name))
        .sort(),
    { readOnly: true },
  );
}

/** Whether a stored model's blobs are all on disk at their sizes (a stat each; hashing is verify's job). */
export async function blobsPresent(model: IndexEntry): Promise<boolean> {
  const present = await Promise.all(Object.entries(model.blobs).map(([sha256, size]) => blobPresent({ sha256, size })));
  return present.every(Boolean);
}

/**
 * Removes a model and the blobs no other model uses; refuses while a process is using it, or
 * where `refuse` throws (run under the store lock, so that what it checks cannot change before
 * the model goes). A model whose manifest is unreadable is removed too (its files found through its directory).
 */
export function removeModel(name: string, refuse?: (name: string) => void): Promise<{ freedBytes: number }> {
  return withStoreLock(async () => {
    const index = loadIndex();
    if (!index.has(name) && !existsSync(manifestPath(name)))
      throw new ModelNotFoundError(`no stored model named '${name}'`);
    refuseInUse(name);
    refuse?.(name);
    const freedBytes = await deleteModel(index, name);
    saveIndex(index);
    return { freedBytes };
  });
}

/** Throws ModelInUseError when a process is using the model (removing it would pull its files from under it). */
export function refuseInUse(name: string): void {
  const users = modelUsers(name);
  if (users.length > 0) throw new ModelInUseError(`'${name}' is in use by process ${users.join(", ")}; stop it first`);
}

/**
 * Before making a model that replaces the one stored as `name` (its files removed): refused while
 * another process uses it, as `mlx rm` and a copy over it are, before anything is fetched or
 * made. This process's own use (a server resolving a name it holds) it knows of.
 */
export function refuseReplacingInUse(name: string): void {
  const stored = readManifest(name);
  if (!stored) return;
  const others = modelUsers(name).filter((pid) => pid !== process.pid);
  if (others.length > 0)
    throw new ModelInUseError(
      `cannot replace '${name}' (stored from ${stored.source}) while process ${others.join(", ")} is using it; stop it first`,
    );
}

/**
 * Stores `source`'s files under a second name too (its blobs shared, so it costs no space);
 * a model already named `destination` is replaced, unless a process is using it.
 */
export function copyModel(source: string, destination: string): Promise<void> {
  return withStoreLock(async () => {
    const manifest = readManifest(source);
    if (!manifest) throw new ModelNotFoundError(`no stored model named '${source}'`);
    await assertIntact(manifest);
    const previous = readManifest(destination);
    // Replacing its files would pull them from under the process using it, as removing it would.
    if (previous && destination !== source) refuseInUse(destination);
    const copy = newManifest({ ...manifest, name: destination });
    writeManifest(copy);
    materialize(copy);
    // A destination replaced was refused while in use: its earlier revisions are no one's now.
    const oldLinks = previous && destination !== source ? removeOldRevisions(destination) : [];
    const index = loadIndex();
    index.set(destination, indexEntry(copy));
    if (previous) await removeUnreferencedBlobs([...oldLinks, ...previous.files.map((f) => f.sha256)], index);
    saveIndex(index);
  });
}

/** Total size of the distinct blobs of these models (a shared file counts once). */
export function distinctBytes(models: Iterable<IndexEntry>): number {
  const sizes = new Map<string, number>();
  for (const m of models) for (const [sha, size] of Object.entries(m.blobs)) sizes.set(sha, size);
  let total = 0;
  for (const size of sizes.values()) total += size;
  return total;
}

/** How a model evicted by a pull or a conversion is told to the user. */
export const evictionNote = (name: string) =>
  `evicted ${name} (least recently used) to stay under the store's size limit`;

async function evictToFit(index: Map<string, IndexEntry>, keep: string, limit: number): Promise<string[]> {
  if (distinctBytes(index.values()) <= limit) return [];
  // Nor a model another is made from (models.toml's source): the made model would name nothing,
  // as `mlx rm` refuses to leave it.
  const madeFrom = new Set([...loadAliases().models.values()].map((alias) => alias.source));
  const evictable = [...index.values()]
    .filter((m) => m.name !== keep && modelUsers(m.name).length === 0 && !madeFrom.has(m.name))
    .sort((a, b) => a.lastUsedAt.localeCompare(b.lastUsedAt));
  // Only when evicting brings the store under its limit: a model larger than the limit (with
  // those in use) would otherwise cost every other model and still leave the store over it.
  const kept = [...index.values()].filter((m) => !evictable.includes(m));
  if (distinctBytes(kept) > limit) return [];
  const remaining = new Map(index);
  const chosen: IndexEntry[] = [];
  for (const candidate of evictable) {
    if (distinctBytes(remaining.values()) <= limit) break;
    remaining.delete(candidate.name);
    chosen.push(candidate);
  }
  // Not one whose files the remaining models hold anyway (a second name for the same weights, a
  // fork of them): evicting it would free nothing, and only lose the model.
  for (const candidate of chosen.toReversed()) {
    const without = distinctBytes(remaining.values());
    remaining.set(candidate.name, candidate);
    if (distinctBytes(remaining.values()) > without) remaining.delete(candidate.name);
  }
  const evicted = chosen.filter((m) => !remaining.has(m.name)).map((m) => m.name);
  for (const name of evicted) await deleteModel(index, name);
  return evicted;
}

/**
 * Manifest first: once it is gone the model no longer exists, and a crash later only leaves
 * unreferenced files. Returns the bytes freed.
 */
async function deleteModel(index: Map<string, IndexEntry>, name: string): Promise<number> {
  const blobs = index.get(name)?.blobs ?? linkedBlobs(name);
  // recursive: an unreadable manifest may be a directory in its place.
  rmSync(manifestPath(name), { recursive: true, force: true });
  index.delete(name);
  rmSync(join(modelsDir(), modelKey(name)), { recursive: true, force: true });
  rmSync(join(revisionsDir(), modelKey(name)), { recursive: true, force: true });
  const removed = await removeUnreferencedBlobs(Object.keys(blobs), index);
  return removed.reduce((n, sha) => n + blobs[sha]!, 0);
}

/** The blobs a model's directory links to (sha256 -> size on disk): what is known of a model whose manifest is unreadable. */
export function linkedBlobs(name: string): Record<string, number> {
  return blobsLinkedIn(join(modelsDir(), modelKey(name)));
}

/** The blobs a directory of a model's links (a revision's) links to, sha256 -> size on disk. */
export function blobsLinkedIn(dir: string): Record<string, number> {
  const blobs: Record<string, number> = {};
  if (!existsSync(dir)) return blobs;
  for (const link of modelLinks(dir)) {
    const sha256 = basename(readlinkSync(join(dir, link))).replace(/^sha256-/, "");
    if (isSha256Hex(sha256)) blobs[sha256] = statSync(blobPath(sha256), { throwIfNoEntry: false })?.size ?? 0;
  }
  return blobs;
}

/**
 * Removes those of the candidates no model in the index uses, nor a revision kept for a process
 * reading it (an update's old one); returns the ones removed.
 */
async function removeUnreferencedBlobs(candidates: string[], index: Map<string, IndexEntry>): Promise<string[]> {
  const referenced = new Set([
    ...[...index.values()].flatMap((m) => Object.keys(m.blobs)),
    ...entriesOf(revisionsDir()).flatMap((key) =>
      entriesOf(join(revisionsDir(), key)).flatMap((id) => Object.keys(blobsLinkedIn(join(revisionsDir(), key, id)))),
    ),
  ]);
  const unreferenced = candidates.filter((sha) => !referenced.has(sha));
  for (const sha of unreferenced) await removeBlob(sha);
  return unreferenced;
}

async function assertIntact(manifest: ModelManifest): Promise<void> {
  for (const file of manifest.files) {
    if (!(await blobPresent(file))) {
      throw new StoreDamageError(
        `stored model '${manifest.name}' is damaged: its ${file.name} (blob sha256-${file.sha256.slice(0, 12)}…) is missing or truncated; run \`${repair(manifest.name).command}\` to store it again (\`mlx verify\` checks every model)`,
      );
    }
  }
}

/**
 * The model as a directory of relative symlinks to its blobs, so loadModel reads it like any
 * model directory and the store can move with $MLX_HOME; symlinks rather than hardlinks: a removed
 * blob must free its space, and a missing one must show as a broken link. One directory per
 * revision (revisions/<key>/<id>/), the model's name (models/<key>) a symlink to the current one,
 * replaced by a single rename(2): a process resolving the name (loadModel does, once) never finds
 * it missing, and reads one revision's files throughout, never some of each. The revision it
 * resolved stays until no other process uses the model (removeOldRevisions).
 */
function materialize(manifest: ModelManifest): void {
  const name = join(modelsDir(), modelKey(manifest.name));
  const current = currentRevision(name);
  // A store made before revisions (models/<key> a directory) is read as it is, and moved to them
  // when the model changes: opening it writes nothing an older mlx sharing the store would redo.
  if (current !== undefined && revisionMatches(current, manifest)) return;
  const revisions = join(revisionsDir(), modelKey(manifest.name));
  const revision = join(revisions, `${Date.now().toString(36)}-${crypto.randomUUID().slice(0, 8)}`);
  // Built beside its final place, so the links' relative targets are the same from both.
  const staging = `${revision}.tmp`;
  try {
    mkdirSync(staging, { recursive: true });
    for (const file of manifest.files) {
      mkdirSync(dirname(join(staging, file.name)), { recursive: true });
      symlinkSync(linkTarget(revision, file), join(staging, file.name));
    }
    renameSync(staging, revision);
  } catch (error) {
    rmSync(staging, { recursive: true, force: true });
    throw error;
  }
  mkdirSync(modelsDir(), { recursive: true });
  const link = `${name}.${process.pid}.tmp`;
  rmSync(link, { recursive: true, force: true });
  symlinkSync(relative(modelsDir(), revision), link);
  if (current === name) {
    // rename(2) does not put a link where a directory is: the old directory is set aside first,
    // so the name is missing for the instant between two renames, at the model's first update.
    const legacy = `${revision}.legacy`;
    renameSync(name, legacy);
    renameSync(link, name);
    rmSync(legacy, { recursive: true, force: true });
  } else renameSync(link, name);
}

/**
 * The directory the model's name (models/<key>) leads to: its current revision's, the name itself
 * where it is a directory (a store made before revisions), undefined where there is none.
 */
function currentRevision(name: string): string | undefined {
  const info = lstatSync(name, { throwIfNoEntry: false });
  if (info?.isSymbolicLink()) return resolve(dirname(name), readlinkSync(name));
  return info?.isDirectory() ? name : undefined;
}

/**
 * What a file's link in a revision's directory `dir` holds: its blob, from the link's own folder
 * (the revision's, or one in it: 1_Pooling/).
 */
function linkTarget(dir: string, file: ManifestFile): string {
  return relative(dirname(join(dir, file.name)), blobPath(file.sha256));
}

/**
 * Removes the model's revisions but its current one: those a process that used the model may
 * still read, so only once no other process uses it (under the store lock). Returns the blobs
 * they linked (each removed unless a stored model, or a revision kept, uses it: removeUnreferencedBlobs).
 */
function removeOldRevisions(name: string): string[] {
  const revisions = join(revisionsDir(), modelKey(name));
  const current = currentRevision(join(modelsDir(), modelKey(name)));
  const linked: string[] = [];
  for (const entry of entriesOf(revisions)) {
    const dir = join(revisions, entry);
    if (dir === current) continue;
    linked.push(...Object.keys(blobsLinkedIn(dir)));
    rmSync(dir, { recursive: true, force: true });
  }
  // None left (the name a directory again, as an mlx from before revisions links it): its folder goes too.
  if (current === undefined || dirname(current) !== revisions) rmSync(revisions, { recursive: true, force: true });
  return linked;
}

/**
 * Removes the revisions no process can be reading: those of models no longer named, and a
 * model's old ones unless a process uses it (a server that loaded it before an update reads its
 * files again: its tokenizer, its weights when it loads them anew). Returns the revision
 * directories kept. Under the store lock.
 */
export function pruneRevisions(): string[] {
  const kept: string[] = [];
  for (const key of entriesOf(revisionsDir())) {
    const revisions = join(revisionsDir(), key);
    const name = modelName(key);
    // A model's name gone (removed; or, its manifest gone, mlx verify took its link) frees its revisions.
    if (name === undefined || !lstatSync(join(modelsDir(), key), { throwIfNoEntry: false })) {
      rmSync(revisions, { recursive: true, force: true });
      continue;
    }
    if (modelUsers(name).length === 0) removeOldRevisions(name);
    kept.push(...entriesOf(revisions).map((entry) => join(revisions, entry)));
  }
  return kept;
}

/** The model a key names (modelKey's inverse); undefined for a name no key is. */
function modelName(key: string): string | undefined {
  try {
    return decodeURIComponent(key);
  } catch {
    return undefined;
  }
}

/** A directory's entries; none when it does not exist. */
function entriesOf(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Whether a revision's directory links the manifest's files to their blobs, and no others. */
function revisionMatches(dir: string, manifest: ModelManifest): boolean {
  if (!existsSync(dir)) return false;
  try {
    if (modelLinks(dir).length !== manifest.files.length) return false;
    return manifest.files.every((f) => readlinkSync(join(dir, f.name)) === linkTarget(dir, f));
  } catch {
    return false;
  }
}

/** The links of a model's directory, its folders' too, as paths from it. */
function modelLinks(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isSymbolicLink())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)));
}
