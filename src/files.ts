// Best-effort file operations for caches: on a disk that refuses them (read-only, full, gone) a
// cache is only not kept or not ordered, never an error of what uses it. And the room a disk has
// left, asked before writing much to it.
import { existsSync, rmSync, statfsSync, utimesSync } from "node:fs";
import { dirname, resolve } from "node:path";

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

/**
 * The bytes this process may still write on the file system that `path` is, or would be, on (its
 * nearest existing folder: asking creates nothing); Infinity when the system cannot be asked.
 */
export function freeBytes(path: string): number {
  let dir = resolve(path);
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  try {
    const { bavail, bsize } = statfsSync(dir);
    return bavail * bsize;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

/**
 * Fails before `bytes` for `what` are written under `dir` where its disk has not that much room,
 * rather than filling the disk and failing halfway with a part of it written. The error is the
 * system's own ENOSPC (a server answers it as its want of room: 507).
 */
export function requireFreeSpace(dir: string, bytes: number, what: string): void {
  const free = freeBytes(dir);
  if (free >= bytes) return;
  // Rounded apart (the need up, the room down): both rounded up, a shortfall of less than a
  // megabyte read "about 4 MB needed, 4 MB free".
  throw new NotEnoughSpaceError(
    `not enough disk space in ${dir} for ${what}: about ${Math.ceil(bytes / 1e6)} MB needed, ${Math.floor(free / 1e6)} MB free`,
  );
}

/** requireFreeSpace's refusal: its message says all (what, where, how much), for callers to pass on as it is. */
export class NotEnoughSpaceError extends Error {
  override name = "NotEnoughSpaceError";
  readonly code = "ENOSPC";
}
