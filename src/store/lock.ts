// Locks shared by every mlx process on the machine. A lock is a symbolic link whose target is
// its owner's pid (and, on Linux, when that process started: "pid:start", so that a pid the
// system gave again to another process after the owner died is not taken for the owner),
// created atomically with that pid (exactly one creator wins) and needing no
// data block, so locks still work on a full disk, where `mlx rm` must run to free space (a
// file's pid, written after creating it, failed there). A lock whose owner has died is broken,
// so a crash never wedges the store; waiting is bounded, so a live but stuck owner gives a
// clear error instead of a hang. Within one process, callers queue up first,
// because the file alone cannot tell two async tasks of the same pid apart.
import { mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileErrorReason, noSpaceLeft, writeErrorReason } from "../format";
import { locksDir, storeRoot } from "./paths";

export interface LockOptions {
  /** Give up after waiting this long for another process (default 10 s). */
  timeoutMs?: number;
  /** Called once when the lock is busy, with the holder's pid (to tell the user why we wait). */
  onWait?: (holderPid: number) => void;
  /**
   * The caller only reads: where the store cannot be written (a read-only mount, another user's
   * store), it runs without the lock instead of failing. Safe, as every write replaces its file
   * whole (a temporary file renamed over it: writeJsonAtomic, addBlob, materialize), so a reader
   * sees the old file or the new one, never half of one.
   */
  readOnly?: boolean;
  /** Ends the wait for another process with its reason (a client that went away no longer wants the lock). */
  signal?: AbortSignal;
}

export class LockTimeoutError extends Error {
  override name = "LockTimeoutError";
}

const STORE_LOCK = "store.lock";
const POLL_MS = 25;
const MAX_POLL_MS = 250;

const queues = new Map<string, Promise<unknown>>();

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  return !isZombie(pid);
}

/**
 * A process that ended but was not reaped (killed, its parent gone, in a container whose first
 * process reaps none): signals still reach its pid, yet it never runs again, so its locks and
 * marks are a dead process's. Read from /proc (Linux); elsewhere false.
 */
function isZombie(pid: number): boolean {
  return procStat(pid)?.[0] === "Z";
}

/**
 * /proc/PID/stat's fields from the 3rd (the state) on (Linux); undefined elsewhere, or when the
 * process is gone. They follow the command's name, which is in parentheses and may hold spaces.
 */
function procStat(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/**
 * Runs `fn` holding the lock file at `path`; the lock is released however `fn` ends. `fn` is told
 * whether it holds it: only a readOnly caller runs without it, where the store cannot be written.
 */
export function withLock<T>(
  path: string,
  fn: (locked: boolean) => T | Promise<T>,
  options: LockOptions = {},
): Promise<T> {
  const previous = queues.get(path) ?? Promise.resolve();
  const run = previous
    .catch(() => {})
    .then(async () => {
      const release = await acquireFileLock(path, options);
      try {
        return await fn(release !== undefined);
      } finally {
        release?.();
      }
    });
  queues.set(path, run);
  void run
    .finally(() => {
      if (queues.get(path) === run) queues.delete(path);
    })
    .catch(() => {});
  return run;
}

/** The lock around every change to manifests, the index and blobs: held for milliseconds. */
export function withStoreLock<T>(fn: (locked: boolean) => T | Promise<T>, options?: LockOptions): Promise<T> {
  return withLock(join(locksDir(), STORE_LOCK), fn, options);
}

/** The lock's release; undefined where a readOnly caller goes on without it. */
async function acquireFileLock(
  path: string,
  { timeoutMs = 10_000, onWait, readOnly = false, signal }: LockOptions,
): Promise<(() => void) | undefined> {
  const deadline = Date.now() + timeoutMs;
  let pause = POLL_MS;
  let told = false;
  for (;;) {
    try {
      mkdirSync(dirname(path), { recursive: true });
      if (tryCreate(path)) return () => unlinkSync(path);
    } catch (error) {
      if (readOnly && notWritable(error)) return undefined;
      throw cannotCreate(path, error);
    }
    const holder = readHolder(path);
    if (holder === "gone") continue;
    if (holder === "dead") {
      breakStaleLock(path);
      continue;
    }
    if (!told) {
      onWait?.(holder);
      told = true;
    }
    if (Date.now() >= deadline) {
      throw new LockTimeoutError(
        `${path} is held by process ${holder}; waited ${(timeoutMs / 1000).toFixed(0)} s (delete the file if no mlx process is running)`,
      );
    }
    signal?.throwIfAborted();
    // An aborted sleep rejects with an AbortError of its own: the caller's reason is thrown instead.
    await sleep(pause, undefined, { signal }).catch(() => signal!.throwIfAborted());
    pause = Math.min(pause * 2, MAX_POLL_MS);
  }
}

/**
 * When process `pid` started (clock ticks after boot, /proc/PID/stat's 22nd field), where the
 * system says (Linux); undefined elsewhere, or when it is gone.
 */
export function processStartTime(pid: number): string | undefined {
  return procStat(pid)?.[19];
}

const ownStart = processStartTime(process.pid);
const ownMark = ownStart === undefined ? String(process.pid) : `${process.pid}:${ownStart}`;

function tryCreate(path: string): boolean {
  try {
    symlinkSync(ownMark, path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  }
}

/** A write refused for want of permission, or because the file system is mounted read-only. */
export function notWritable(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === "EACCES" || code === "EPERM" || code === "EROFS";
}

/**
 * Node's message names the pid as the link's target and the lock as its path, or the folder it
 * could not make ($MLX_HOME a file): say what failed instead.
 */
function cannotCreate(path: string, error: unknown): Error {
  // Write access is not what is missing there: the disk has no room for even an empty file (its inodes used up).
  if (noSpaceLeft(error))
    return new Error(
      `cannot create the lock ${path}: the disk holding $MLX_HOME has no room left even for an empty file (no free inodes, or a full quota); free some space on it`,
    );
  // Said of the store, not of the lock: whoever cannot write the one cannot change the other.
  if (notWritable(error))
    return new Error(
      `the store ${storeRoot()} is not writable (${writeErrorReason(error)}): pulling, converting, fusing, copying or removing models needs write access to $MLX_HOME`,
    );
  return new Error(
    `cannot create the lock ${path} (${writeErrorReason(error)}): mlx needs write access to its store ($MLX_HOME)`,
  );
}

/** The pids of live processes holding any of the store's locks but the store lock (pulls, downloads, conversions). */
export function busyLockHolders(): number[] {
  let names: string[];
  try {
    names = readdirSync(locksDir());
  } catch {
    return [];
  }
  return names
    .filter((name) => name !== STORE_LOCK)
    .map((name) => readHolder(join(locksDir(), name)))
    .filter((holder): holder is number => typeof holder === "number");
}

/** The holder's pid when it is alive, "dead", or "gone" (released meanwhile). */
function readHolder(path: string): number | "dead" | "gone" {
  let holder: string;
  try {
    holder = readlinkSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EINVAL") return "gone";
    // A plain file: the lock of an earlier mlx, which wrote its pid into it.
    try {
      holder = readFileSync(path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return "gone";
      // Something no mlx made (a directory): taken for released, the wait would spin for ever.
      throw new Error(
        `cannot read the lock ${path} (${fileErrorReason(error)}): remove it if no mlx process is running`,
      );
    }
  }
  const [pidText, started] = holder.trim().split(":");
  const pid = Number.parseInt(pidText!, 10);
  if (!Number.isInteger(pid) || pid <= 0) return "dead";
  // Our own pid: a lock of an earlier process that had it (a restarted container's pid 1); this
  // process never waits for itself, as its own callers queue before they reach the file.
  if (pid === process.pid) return "dead";
  if (!isProcessAlive(pid)) return "dead";
  // Its pid given to a process that started after the owner (checked where both are known).
  const now = started === undefined ? undefined : processStartTime(pid);
  return now !== undefined && now !== started ? "dead" : pid;
}

/**
 * Removes a dead owner's lock. Two processes may find the same stale lock; the check right
 * before unlinking keeps the window in which one could remove the other's fresh lock tiny.
 */
function breakStaleLock(path: string): void {
  if (readHolder(path) !== "dead") return;
  try {
    unlinkSync(path);
  } catch {
    // someone else broke it first
  }
}
