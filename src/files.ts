// Best-effort file operations for caches: on a disk that refuses them (read-only, full, gone) a
// cache is only not kept or not ordered, never an error of what uses it. And the room a disk has
// left, asked before writing much to it. And a text file read up to a bound.
import { closeSync, existsSync, openSync, readSync, rmSync, statfsSync, utimesSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { formatBytes } from "./format";

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

/**
 * The text of a file the user named, read only up to `maxBytes`: a device that never ends
 * (/dev/zero, /dev/urandom) or a huge file is refused with a FileTooLargeError once that much is
 * read, where a whole read held the event loop and filled memory for good. A pipe
 * (`<(command)`) is read to its end as a file is.
 */
export function readTextAtMost(path: string, maxBytes: number): string {
  const fd = openSync(path, "r");
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes + 1 - total));
      const read = readSync(fd, chunk, 0, chunk.length, null);
      if (read === 0) break;
      chunks.push(chunk.subarray(0, read));
      total += read;
      if (total > maxBytes) throw new FileTooLargeError(`larger than ${formatBytes(maxBytes)}`);
    }
    return Buffer.concat(chunks, total).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** readTextAtMost's refusal: its message says how large a file may be. */
export class FileTooLargeError extends Error {
  override name = "FileTooLargeError";
  readonly code = "EFBIG";
}
