// A Bun macro: `import { bundle } from "./bundle" with { type: "macro" }` runs it while the
// importing file is transpiled (by `bun build --compile`, or by `bun` running the sources), so
// the browser code of src/web/ ends up in the executable as a string, minified, with its npm
// dependencies bundled in: no CDN, no files next to the binary. Bun.build cannot run inside a
// macro (the bundler waits on it), hence the CLI.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** `entry` (a .ts or .css file, relative to src/web/) bundled for the browser, as text. */
export function bundle(entry: string): string {
  const path = fileURLToPath(new URL(`../../web/${entry}`, import.meta.url));
  const run = Bun.spawnSync([process.execPath, "build", path, "--minify", "--target=browser"], {
    env: { ...process.env, BUN_BE_BUN: "1" },
    stderr: "pipe",
  });
  if (run.exitCode !== 0) throw new Error(`bundling src/web/${entry} failed:\n${run.stderr.toString()}`);
  return run.stdout.toString();
}

/** A file of src/web/ as it is (the HTML pages). */
export function source(file: string): string {
  return readFileSync(fileURLToPath(new URL(`../../web/${file}`, import.meta.url)), "utf8");
}
