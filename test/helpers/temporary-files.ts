// Preloaded by `bun test` (bunfig.toml): every temporary file or folder the tests make goes into
// one folder of this run, removed when the run ends. The tests write gigabytes there (model
// copies, stores, servers' files), which piled up in /tmp run after run until the disk was full.
import { afterAll } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const run = mkdtempSync(join(tmpdir(), "mlx-tests-"));
// os.tmpdir() reads TMPDIR at each call; child processes given process.env inherit it too.
process.env.TMPDIR = run;
// A preload's afterAll runs once, after every file's tests (bun test fires no "exit" event).
afterAll(() => rmSync(run, { recursive: true, force: true }));
