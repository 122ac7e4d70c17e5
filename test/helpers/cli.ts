// Running the CLI as users drive it: the real entry point in a child process.
import { expect } from "bun:test";
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";

const main = join(import.meta.dir, "..", "..", "src", "main.ts");

/** A runner of `mlx <args>` with MLX_HOME set to `home` (and `extraEnv`); stdin is closed unless given. */
export function cliRunner(home: string, extraEnv: Record<string, string> = {}) {
  const env = { ...process.env, MLX_HOME: home, NO_COLOR: "1", ...extraEnv };
  return async (args: string[], stdin?: string) => {
    const proc = Bun.spawn([process.execPath, main, ...args], {
      stdin: stdin === undefined ? "ignore" : new Blob([stdin]),
      stdout: "pipe",
      stderr: "pipe",
      env,
    });
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { stdout, stderr, code };
  };
}

export const mainScript = main;

/**
 * Waits until `proc` marks its model in use (the file `marker`), sends it Ctrl-C (or `signal`),
 * and checks it exits with the signal's status (128 + its number) on its own (its exit handlers
 * ran) with the marker removed.
 */
export async function interruptWhileInUse(
  proc: Bun.Subprocess,
  marker: string,
  signal: "SIGINT" | "SIGTERM" = "SIGINT",
): Promise<void> {
  for (const deadline = Date.now() + 20_000; !existsSync(marker) && Date.now() < deadline; ) await Bun.sleep(10);
  expect(existsSync(marker)).toBe(true);
  proc.kill(signal);
  expect(await proc.exited).toBe(128 + constants.signals[signal]);
  expect(proc.signalCode).toBeNull(); // it exited, rather than being killed before its exit handlers
  expect(existsSync(marker)).toBe(false);
}
