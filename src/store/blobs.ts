// The content-addressed half of the store: <root>/blobs/sha256-<hex>. A blob is only ever
// created by renaming a complete, hashed file into place, so a name always matches its bytes
// unless the disk itself corrupts them (which `mlx verify` finds).
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync } from "node:fs";
import { copyFile, lstat, mkdir, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { forgetTokenizerFiles } from "../tokenizer/gguf-cache";
import { blobPath, blobsDir, tempPathIn, tmpDir } from "./paths";
import { syncToDisk } from "./sync";

export interface BlobRef {
  sha256: string;
  size: number;
}

export async function hashFile(path: string): Promise<BlobRef> {
  const hasher = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    hasher.update(chunk);
    size += chunk.byteLength;
  }
  return { sha256: hasher.digest("hex"), size };
}

/** Whether the blob is on disk with the expected size (a cheap check; hashing is verify's job). */
export async function blobPresent({ sha256, size }: BlobRef): Promise<boolean> {
  return stat(blobPath(sha256)).then(
    (s) => s.isFile() && s.size === size,
    () => false,
  );
}

/**
 * Stores a file as a blob. `move` hands the file over (it must be on the store's filesystem,
 * e.g. under tmpDir()); otherwise a copy is made first and hashed, so the blob's name matches
 * its bytes even if the original changes meanwhile.
 */
export async function addBlob(path: string, { move = false } = {}): Promise<BlobRef> {
  if (!move) {
    const copy = tempPathIn(tmpDir(), "blob");
    try {
      await copyFile(path, copy);
      return await addBlob(copy, { move: true });
    } catch (error) {
      await unlink(copy).catch(() => {});
      throw error;
    }
  }
  const ref = await hashFile(path);
  if (await blobPresent(ref)) {
    await unlink(path);
    return ref;
  }
  const dest = blobPath(ref.sha256);
  await mkdir(dirname(dest), { recursive: true });
  await syncToDisk(path);
  // rename() replaces a damaged file at the name, but not a directory there.
  if ((await lstat(dest).catch(() => undefined))?.isDirectory()) await removeBlob(ref.sha256);
  await rename(path, dest);
  return ref;
}

/** The sha256 of every blob on disk now. */
export function blobsOnDisk(): Set<string> {
  if (!existsSync(blobsDir())) return new Set();
  return new Set(
    readdirSync(blobsDir())
      .filter((name) => name.startsWith("sha256-"))
      .map((name) => name.slice("sha256-".length)),
  );
}

/** Removes what is at the blob's name: its file, or a directory put there by damage or by hand. */
export async function removeBlob(sha256: string): Promise<void> {
  forgetTokenizerFiles(blobPath(sha256));
  await rm(blobPath(sha256), { recursive: true, force: true });
}
