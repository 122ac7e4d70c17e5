// Logging for the CLI: everything goes to stderr (stdout carries only answers), and stays
// quiet unless stderr is a terminal or --verbose was given.
import { createConsola } from "consola";
import { createConsola as createBasicConsola } from "consola/basic";
import { writeErrorReason } from "../format";
import { evictionNote } from "../store/store";
import { errorLine } from "./errors";

// Off a terminal (a file, journald, docker logs), one line per message ("[warn] ..."): the fancy
// reporter, which consola picks there too, sets a blank line before and after each warning's badge.
export const log = (process.stderr.isTTY ? createConsola : createBasicConsola)({
  stdout: process.stderr,
  stderr: process.stderr,
  level: process.stderr.isTTY ? 3 : 1,
});

export function setVerbose(verbose: boolean): void {
  if (verbose) log.level = 4;
}

/**
 * An info line said even where stderr is not a terminal (a script, CI), there as a plain line:
 * for what a command waits on, which a log would otherwise show as a hang.
 */
export function infoEvenPiped(message: string): void {
  if (log.level >= 3) log.info(message);
  else process.stderr.write(`${message}\n`);
}

/** What a command whose model another process is pulling says while it waits (else it looks hung). */
export function infoWaitingForPull(holderPid: number, name: string): void {
  infoEvenPiped(`waiting for process ${holderPid}, which is pulling ${name}`);
}

/** Prints a one-line error (the stack only with --verbose) and exits non-zero. */
export function fail(error: unknown, verbose = false): never {
  process.stderr.write(`error: ${errorLine(error)}\n`);
  if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exit(1);
}

/**
 * How a failed write to stdout ends the command: a reader that went away (`mlx run ... | head -c 5`)
 * quietly with SIGPIPE's status, as it ends `cat` or `yes` (Bun reports the failed write as the
 * stream's error instead of raising the signal); any other (`> /dev/full`) as one line, as every error.
 */
export function failOutput(error: NodeJS.ErrnoException): never {
  if (error.code === "EPIPE") process.exit(128 + 13);
  fail(new Error(`cannot write the output: ${writeErrorReason(error)}`));
}

/**
 * How a failed write to stderr ends the command: a reader of its logs or --verbose figures that
 * went away quietly with SIGPIPE's status; other errors there have nowhere to be told.
 */
export function failLog(error: NodeJS.ErrnoException): never {
  process.exit(error.code === "EPIPE" ? 128 + 13 : 1);
}

/**
 * Writes `text` to stdout and waits until it is written: for output the command exits right after
 * (the usage, the version), whose failed write would otherwise end it with status 0 unsaid.
 */
export async function writeOutput(text: string): Promise<void> {
  const error = await new Promise<Error | null | undefined>((resolve) => process.stdout.write(text, resolve));
  if (error) failOutput(error);
}

/** Models the store evicted to stay under its size limit: a warning, so said even off a terminal (a script's user must learn that a model of theirs is gone). */
export function warnEvicted(names: string[]): void {
  for (const name of names) log.warn(evictionNote(name));
}
