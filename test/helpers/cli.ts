// Running the CLI as users drive it: the real entry point in a child process.
import { join } from "node:path";

const main = join(import.meta.dir, "..", "..", "src", "main.ts");

/** A runner of `mlx <args>` with MLX_HOME set to `home`; stdin is closed unless given. */
export function cliRunner(home: string) {
  const env = { ...process.env, MLX_HOME: home, NO_COLOR: "1" };
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
