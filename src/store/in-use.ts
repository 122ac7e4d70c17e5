// Which models running processes are using: a marker file per (model, pid) under
// <root>/in-use/<key>/. Eviction and `mlx rm` leave a model alone while any marker names a
// live process; markers of dead processes are stale and cleaned up when seen (a marker left
// behind names a pid that another process may take later, keeping the model "in use"). A process
// interrupted (Ctrl-C) or stopped (SIGTERM: kill, timeout(1), docker stop) where nothing else
// handles it exits with the signal's status (128 + its number) after removing its markers, where
// the signal would have killed it before its exit handlers ran. (Not SIGHUP: a listener would
// undo nohup's ignoring it.)
import { mkdirSync, readdirSync, rmdirSync, unlinkSync, writeFileSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";
import { isProcessAlive } from "./lock";
import { inUseDir, modelKey } from "./paths";

/** This process's markers, each with the model it marks. */
const held = new Map<string, string>();
let exitHookInstalled = false;

/** Marks `name` as used by this process until it exits (or `releaseModel` is called). */
export function markInUse(name: string): void {
  const dir = join(inUseDir(), modelKey(name));
  const marker = join(dir, String(process.pid));
  if (held.has(marker)) return;
  // Before the marker exists, so no interrupt falls between the two.
  if (!exitHookInstalled) {
    process.on("exit", releaseAll);
    for (const signal of ENDING_SIGNALS) process.on(signal, () => exitOnSignal(signal));
    exitHookInstalled = true;
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(marker, "");
  held.set(marker, name);
}

/** The signals that end a process by default whose ending removes the markers (SIGHUP not: see above). */
const ENDING_SIGNALS = ["SIGINT", "SIGTERM"] as const;

/** The signal's own ending (status 128 + its number), through exit so the markers go; unless a command handles it (stopping an answer, a server's shutdown). */
function exitOnSignal(signal: (typeof ENDING_SIGNALS)[number]): void {
  if (process.listenerCount(signal) === 1) process.exit(128 + constants.signals[signal]);
}

export function releaseModel(name: string): void {
  const marker = join(inUseDir(), modelKey(name), String(process.pid));
  if (!held.delete(marker)) return;
  removeQuietly(marker);
}

/** The models this process marks as in use. */
export function modelsHeld(): string[] {
  return [...new Set(held.values())];
}

/** The pids of live processes using `name`. */
export function modelUsers(name: string): number[] {
  const dir = join(inUseDir(), modelKey(name));
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  const live: number[] = [];
  for (const entry of entries) {
    const pid = Number(entry);
    if (Number.isInteger(pid) && pid > 0 && isProcessAlive(pid)) live.push(pid);
    else removeQuietly(join(dir, entry));
  }
  if (live.length === 0) {
    try {
      rmdirSync(dir);
    } catch {
      // a marker appeared meanwhile
    }
  }
  return live;
}

function releaseAll(): void {
  for (const marker of held.keys()) removeQuietly(marker);
  held.clear();
}

function removeQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}
