// `mlx verify`: re-hashes every blob the stored models use. A blob whose bytes no longer
// match its name is removed (keeping it would only fail later, at load time), and the models
// that used it, or that miss a blob, are named so they can be pulled again.
import { stat } from "node:fs/promises";
import { hashFile, removeBlob } from "./blobs";
import { withStoreLock } from "./lock";
import { loadIndex } from "./model-index";
import { blobPath } from "./paths";

export interface VerifyReport {
  checkedBlobs: number;
  checkedBytes: number;
  /** Blobs whose size or content did not match (now removed). */
  corrupt: string[];
  /** Blobs that were not there to begin with. */
  missing: string[];
  /** Models that need `mlx pull <name>`. */
  damagedModels: string[];
}

export async function verifyStore(
  onBlob?: (sha256: string, index: number, count: number) => void,
): Promise<VerifyReport> {
  // Hashing can take minutes: do it outside the lock, from a snapshot of the index.
  const models = await withStoreLock(() => loadIndex());
  const users = new Map<string, string[]>();
  const sizes = new Map<string, number>();
  for (const m of models.values()) {
    for (const [sha, size] of Object.entries(m.blobs)) {
      sizes.set(sha, size);
      users.set(sha, [...(users.get(sha) ?? []), m.name]);
    }
  }
  const report: VerifyReport = { checkedBlobs: 0, checkedBytes: 0, corrupt: [], missing: [], damagedModels: [] };
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
  await withStoreLock(async () => {
    for (const sha of report.corrupt) await removeBlob(sha);
  });
  const damaged = new Set([...report.corrupt, ...report.missing].flatMap((sha) => users.get(sha) ?? []));
  report.damagedModels = [...damaged].sort();
  return report;
}
