// Running the CLI as users drive it: the real entry point in a child process.
import { expect } from "bun:test";
import { existsSync } from "node:fs";
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
 * Waits until `proc` marks its model in use (the file `marker`), sends it Ctrl-C, and checks it
 * exits 130 on its own (its exit handlers ran) with the marker removed.
 */
export async function interruptWhileInUse(proc: Bun.Subprocess, marker: string): Promise<void> {
  for (const deadline = Date.now() + 20_000; !existsSync(marker) && Date.now() < deadline; ) await Bun.sleep(10);
  expect(existsSync(marker)).toBe(true);
  proc.kill("SIGINT");
  expect(await proc.exited).toBe(130);
  expect(proc.signalCode).toBeNull(); // it exited, rather than being killed before its exit handlers
  expect(existsSync(marker)).toBe(false);
}
