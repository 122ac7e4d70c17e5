// <root>/index.json: a summary of every manifest in one small file, so listing the store and
// choosing what to evict read one file instead of all manifests. It is a cache: the manifests
// are the truth, and when the index is missing, damaged or names a different set of models
// than the manifests directory holds (a crash between the two writes), it is rebuilt from them.
// Callers hold the store lock.
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { noSpaceLeft } from "../format";
import { readManifestFile, writeJsonAtomic, type ModelManifest } from "./manifest";
import { indexPath, isSha256Hex, manifestsDir, modelKey } from "./paths";

export type IndexEntry = Omit<ModelManifest, "files" | "schemaVersion"> & {
  /** sha256 -> size of the model's blobs (sizes, so the store's total needs no stat calls). */
  blobs: Record<string, number>;
};

interface IndexFile {
  version: 1;
  models: Record<string, IndexEntry>;
}

export function indexEntry(manifest: ModelManifest): IndexEntry {
  const { files, schemaVersion: _, ...summary } = manifest;
  return { ...summary, blobs: Object.fromEntries(files.map((f) => [f.sha256, f.size])) };
}

/** Every stored model by name. */
export function loadIndex(): Map<string, IndexEntry> {
  const keys = manifestKeys();
  const stored = readIndexFile();
  if (stored && sameKeys(stored, keys)) return new Map(Object.entries(stored.models));
  return rebuildIndex(keys);
}

export function saveIndex(models: Map<string, IndexEntry>): void {
  const file: IndexFile = { version: 1, models: Object.fromEntries(models) };
  writeJsonAtomic(indexPath(), file);
}

/**
 * saveIndex, where a full disk has no room for it: the file, now stale, is removed instead
 * (which needs none), for the next read to rebuild it from the manifests.
 */
export function saveIndexIfRoom(models: Map<string, IndexEntry>): void {
  try {
    saveIndex(models);
  } catch (error) {
    if (!noSpaceLeft(error)) throw error;
    rmSync(indexPath(), { force: true });
  }
}

function rebuildIndex(keys: string[]): Map<string, IndexEntry> {
  const models = new Map<string, IndexEntry>();
  for (const key of keys) {
    const manifest = readManifestFile(join(manifestsDir(), `${key}.json`));
    if (manifest) models.set(manifest.name, indexEntry(manifest));
  }
  try {
    saveIndex(models);
  } catch {
    // Only a cache: reading the store must not fail where it cannot be written (a full disk,
    // where `mlx list` shows what to remove); the next change to the store writes it.
  }
  return models;
}

function readIndexFile(): IndexFile | undefined {
  try {
    const file = JSON.parse(readFileSync(indexPath(), "utf8")) as IndexFile;
    if (file.version !== 1 || typeof file.models !== "object" || file.models === null) return undefined;
    return Object.entries(file.models).every(([name, entry]) => wellFormedEntry(name, entry)) ? file : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether an entry has the fields listing and eviction read, under its own name: one edited by
 * hand (its blobs gone, another model's entry) makes the index damaged, rebuilt as a missing one.
 */
function wellFormedEntry(name: string, entry: IndexEntry): boolean {
  return (
    entry?.name === name &&
    typeof entry.source === "string" &&
    (entry.format === "mlx" || entry.format === "gguf") &&
    typeof entry.lastUsedAt === "string" &&
    Number.isSafeInteger(entry.totalBytes) &&
    typeof entry.blobs === "object" &&
    entry.blobs !== null &&
    Object.entries(entry.blobs).every(([sha256, size]) => isSha256Hex(sha256) && Number.isSafeInteger(size))
  );
}

/** The keys (modelKey) of the manifest files on disk, readable or not. */
export function manifestKeys(): string[] {
  try {
    return readdirSync(manifestsDir())
      .filter((f) => f.endsWith(".json"))
      .map((f) => f.slice(0, -".json".length));
  } catch {
    return [];
  }
}

function sameKeys(file: IndexFile, keys: string[]): boolean {
  const indexed = Object.keys(file.models).map(modelKey);
  if (indexed.length !== keys.length) return false;
  const present = new Set(keys);
  return indexed.every((k) => present.has(k));
}
