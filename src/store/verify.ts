// `mlx verify`: re-hashes every blob the stored models use. A blob whose bytes no longer
// match its name is removed (keeping it would only fail later, at load time), and the models
// that used it, or that miss a blob, are named so they can be pulled again. What no model uses
// (what interrupted or failed pulls left) is removed too, unless a pull is running.
import { existsSync, lstatSync, readdirSync, rmSync } from "node:fs";
import { stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { hashFile, removeBlob } from "./blobs";
import { busyLockHolders, withStoreLock } from "./lock";
import { loadIndex } from "./model-index";
import { blobPath, blobsDir, downloadsDir, manifestsDir, modelsDir, tmpDir } from "./paths";
import { blobsLinkedIn, linkedBlobs, pruneRevisions, unreadableModels } from "./store";

export interface VerifyReport {
  checkedBlobs: number;
  checkedBytes: number;
  /** Blobs whose size or content did not match (now removed). */
  corrupt: string[];
  /** Blobs that were not there to begin with. */
  missing: string[];
  /** Models to pull (or convert, or fuse) again: see repair() in store.ts. */
  damagedModels: string[];
  /**
   * Files no stored model uses, left by interrupted or failed pulls (partial downloads, files of
   * a model never completed, scratch files), now removed; none while a pull is running (its pids).
   */
  leftovers: { files: number; bytes: number } | { runningPulls: number[] };
  /** The store could not be written (read-only, another user's): corrupt blobs and leftovers were kept. */
  readOnly: boolean;
}

export async function verifyStore(
  onBlob?: (sha256: string, index: number, count: number) => void,
): Promise<VerifyReport> {
  // Hashing can take minutes: do it outside the lock, from a snapshot of the index.
  const models = await withStoreLock(() => loadIndex(), { readOnly: true });
  const users = new Map<string, string[]>();
  const sizes = new Map<string, number>();
  for (const m of models.values()) {
    for (const [sha, size] of Object.entries(m.blobs)) {
      sizes.set(sha, size);
      users.set(sha, [...(users.get(sha) ?? []), m.name]);
    }
  }
  const report: VerifyReport = {
    checkedBlobs: 0,
    checkedBytes: 0,
    corrupt: [],
    missing: [],
    damagedModels: [],
    leftovers: { files: 0, bytes: 0 },
    readOnly: false,
  };
  let position = 0;
  for (const [sha256, size] of sizes) {
    onBlob?.(sha256, position++, sizes.size);
    const onDisk = await stat(blobPath(sha256)).then(
      (s) => s.size,
      () => undefined,
    );
    if (onDisk === undefined) {
      report.missing.push(sha256);
      continue;
    }
    report.checkedBlobs++;
    report.checkedBytes += onDisk;
    // A wrong size is proof enough; hashing is only needed when the size agrees.
    if (onDisk !== size || (await hashFile(blobPath(sha256))).sha256 !== sha256) report.corrupt.push(sha256);
  }
  let current = models;
  await withStoreLock(
    async (locked) => {
      // A model removed (or evicted) while the blobs were hashed: its files went on purpose, and
      // one it shared may have gone with it; what no stored model uses now is only left over.
      current = loadIndex();
      const used = new Set([...current.values()].flatMap((m) => Object.keys(m.blobs)));
      report.missing = report.missing.filter((sha) => used.has(sha));
      report.corrupt = report.corrupt.filter((sha) => used.has(sha));
      // Read-only: what is damaged is told, for the store's owner to mend; nothing can be removed.
      if (!locked) {
        report.readOnly = true;
        return;
      }
      for (const sha of report.corrupt) await removeBlob(sha);
      // A running pull's files are not a model's yet: they only look left over.
      const runningPulls = busyLockHolders();
      report.leftovers = runningPulls.length > 0 ? { runningPulls: [...new Set(runningPulls)] } : removeLeftovers();
    },
    { readOnly: true },
  );
  const damaged = new Set(
    [...report.corrupt, ...report.missing].flatMap((sha) => users.get(sha) ?? []).filter((name) => current.has(name)),
  );
  // A manifest that cannot be read is damage too (its files take space), which only `mlx rm` mends.
  report.damagedModels = [...new Set([...damaged, ...(await unreadableModels())])].sort();
  return report;
}

/** Removes what no stored model uses: unreferenced blobs, partial downloads, scratch files. Under the store lock. */
function removeLeftovers(): { files: number; bytes: number } {
  const modelDirs = existsSync(modelsDir()) ? readdirSync(modelsDir()) : [];
  // A directory of links with no manifest: what `mlx rm` killed after removing the manifest, or a
  // process killed while linking a model's files (<key>.<pid>.tmp), left. Under the store lock,
  // which every change to a model holds, no live process is making one.
  const manifests = manifestFileNames();
  const orphans = manifests ? modelDirs.filter((key) => !manifests.has(`${key}.json`)) : [];
  for (const key of orphans) rmSync(join(modelsDir(), key), { recursive: true, force: true });
  // An old revision kept for a process that still uses the model keeps its files: that process
  // may read them again (a server reloading the model it loaded before an update).
  const revisions = pruneRevisions();
  const used = usedBlobNames(
    modelDirs.filter((key) => !orphans.includes(key)),
    revisions,
  );
  const leftovers = [
    ...filesIn(blobsDir()).filter((path) => !used.has(basename(path))),
    ...filesIn(downloadsDir()),
    ...filesIn(tmpDir()),
  ];
  let bytes = 0;
  for (const path of leftovers) {
    bytes += lstatSync(path).size;
    rmSync(path, { force: true });
  }
  // The folders they were in: a conversion's staging folder (<tmp>/convert.*.tmp.partial-<pid>/).
  for (const entry of readdirSync(tmpDir(), { withFileTypes: true }))
    if (entry.isDirectory()) rmSync(join(tmpDir(), entry.name), { recursive: true, force: true });
  return { files: leftovers.length, bytes };
}

/**
 * The manifests folder's file names; none when there is no folder. Undefined when it cannot be
 * read (its permissions, say): then every model's directory would look orphaned, its files unused.
 */
function manifestFileNames(): Set<string> | undefined {
  try {
    return new Set(readdirSync(manifestsDir()));
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ENOENT" ? new Set() : undefined;
  }
}

/** The blob file names stored models use: their manifests', their directories' links (a model whose manifest is unreadable keeps its files until `mlx rm`), and the links of the revisions kept. */
function usedBlobNames(modelDirs: string[], revisions: string[]): Set<string> {
  const models = [
    ...[...loadIndex().values()].map((m) => m.blobs),
    ...modelDirs.map((key) => linkedBlobs(decodeURIComponent(key))),
    ...revisions.map(blobsLinkedIn),
  ];
  return new Set(models.flatMap((blobs) => Object.keys(blobs).map((sha256) => basename(blobPath(sha256)))));
}

/** Every file under `dir`, however deep; none when it does not exist. */
function filesIn(dir: string): string[] {
  try {
    return readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((entry) => !entry.isDirectory())
      .map((entry) => join(entry.parentPath, entry.name));
  } catch {
    return [];
  }
}
