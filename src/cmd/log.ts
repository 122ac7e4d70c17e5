// Logging for the CLI: everything goes to stderr (stdout carries only answers), and stays
// quiet unless stderr is a terminal or --verbose was given.
import { createConsola } from "consola";
import { evictionNote } from "../store/store";
import { errorLine } from "./errors";

export const log = createConsola({
  stdout: process.stderr,
  stderr: process.stderr,
  level: process.stderr.isTTY ? 3 : 1,
});

export function setVerbose(verbose: boolean): void {
  if (verbose) log.level = 4;
}

/** Prints a one-line error (the stack only with --verbose) and exits non-zero. */
export function fail(error: unknown, verbose = false): never {
  process.stderr.write(`error: ${errorLine(error)}\n`);
  if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exit(1);
}

/** Models the store evicted to stay under its size limit: a warning, so said even off a terminal (a script's user must learn that a model of theirs is gone). */
export function warnEvicted(names: string[]): void {
  for (const name of names) log.warn(evictionNote(name));
}
