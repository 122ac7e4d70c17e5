// Which models running processes are using: a marker file per (model, pid) under
// <root>/in-use/<key>/. Eviction and `mlx rm` leave a model alone while any marker names a
// live process; markers of dead processes are stale and cleaned up when seen. A marker holds when
// its process started (Linux), so that one left behind (the process killed: SIGTERM, SIGKILL) is
// not taken for a later process given the same pid, which would keep the model "in use". A process
// interrupted (Ctrl-C) where nothing else handles it exits with 130 after removing its markers,
// where the signal would have killed it before its exit handlers ran.
import { mkdirSync, readdirSync, readFileSync, rmdirSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { noSpaceLeft } from "../format";
import { isProcessAlive, processStartTime } from "./lock";
import { inUseDir, modelKey } from "./paths";

/** This process's markers, each with the model it marks. */
const held = new Map<string, string>();
let exitHookInstalled = false;

/** This process's marker for `name` in the store it uses. */
const markerOf = (name: string) => join(inUseDir(), modelKey(name), String(process.pid));

/** Marks `name` as used by this process until it exits (or `releaseModel` is called). */
export function markInUse(name: string): void {
  const marker = markerOf(name);
  const dir = dirname(marker);
  if (held.has(marker)) return;
  // Before the marker exists, so no interrupt falls between the two.
  if (!exitHookInstalled) {
    process.on("exit", releaseAll);
    process.on("SIGINT", exitOnInterrupt);
    exitHookInstalled = true;
  }
  mkdirSync(dir, { recursive: true });
  try {
    writeFileSync(marker, processStartTime(process.pid) ?? "");
  } catch (error) {
    // The start needs a data block: on a full disk the marker is made but stays empty, its pid
    // alone (as an older mlx's markers), and the model still opens.
    if (!noSpaceLeft(error)) throw error;
  }
  held.set(marker, name);
}

/** SIGINT's own ending (status 128 + 2), through exit so the markers go; unless a command handles it (stopping an answer). */
function exitOnInterrupt(): void {
  if (process.listenerCount("SIGINT") === 1) process.exit(130);
}

export function releaseModel(name: string): void {
  const marker = markerOf(name);
  if (!held.delete(marker)) return;
  removeQuietly(marker);
}

/** Whether this process marks `name` as in use in the store it uses. */
export function holdsModel(name: string): boolean {
  return held.has(markerOf(name));
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
    if (Number.isInteger(pid) && pid > 0 && isProcessAlive(pid) && markedBy(pid, join(dir, entry))) live.push(pid);
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

/** Whether live process `pid` is the one that wrote `marker`: it started when the marker says, where it says. */
function markedBy(pid: number, marker: string): boolean {
  let started: string;
  try {
    started = readFileSync(marker, "utf8");
  } catch {
    return false; // removed meanwhile: its process is done with the model
  }
  const now = started === "" ? undefined : processStartTime(pid);
  return now === undefined || now === started;
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
