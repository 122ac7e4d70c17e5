// Best-effort file operations for caches: on a disk that refuses them (read-only, full, gone) a
// cache is only not kept or not ordered, never an error of what uses it.
import { rmSync, utimesSync } from "node:fs";

/** Removes `path` if the disk lets us. */
export function removeQuietly(path: string): void {
  try {
    rmSync(path, { force: true });
  } catch {}
}

/** Marks `path` used now (its modification time), for a least-recently-used bound. */
export function markUsed(path: string): void {
  try {
    const now = new Date();
    utimesSync(path, now, now);
  } catch {}
}
