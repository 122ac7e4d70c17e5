// The engine as a library, on Node and on Bun: a script imports the package ("mlx": Node gets
// dist/node/index.js through ffi-rs, Bun the source through bun:ffi), loads the default model
// and answers greedily; both give the token ids `mlx run` gives. Needs the default model
// (fetched into the store on first use) and dist/node/index.js (scripts/setup.sh builds it).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { cliRunner } from "./helpers/cli";

const root = join(import.meta.dir, "..");
const script = join(import.meta.dir, "fixtures", "library-greedy.mjs");
const lifecycle = join(import.meta.dir, "fixtures", "library-lifecycle.mjs");
const home = process.env.MLX_HOME ?? join(root, ".cache", "mlx-home");
const prompt = "Name three colours.";
const maxTokens = 12;

async function library(runtime: string, args = [script, prompt, String(maxTokens)]): Promise<any> {
  const proc = Bun.spawn([runtime, ...args], {
    cwd: root,
    env: { ...process.env, MLX_HOME: home },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) throw new Error(`${runtime} exited with ${code}: ${stderr.trim()}`);
  return JSON.parse(stdout);
}

describe("the library", () => {
  test("on Node and on Bun, the default model's greedy tokens are those of mlx run", async () => {
    const run = await cliRunner(home)(["run", "--json", "--max-tokens", String(maxTokens), prompt]);
    expect(run.code).toBe(0);
    const expected = JSON.parse(run.stdout).token_ids as number[];
    expect(expected.length).toBeGreaterThan(0);
    const onNode = await library("node");
    expect(onNode.runtime).toBe("node");
    expect(onNode.tokenIds).toEqual(expected);
    const onBun = await library(process.execPath);
    expect(onBun.runtime).toBe("bun");
    expect(onBun.tokenIds).toEqual(expected);
  }, 300_000);

  test("on Node and on Bun: leaving a stream early cancels it, a chat's turns take turns, bad options and use after close() are typed errors", async () => {
    for (const runtime of ["node", process.execPath]) {
      const seen = await library(runtime, [lifecycle]);
      // With one sequence at a time, a generation left decoding after `break` held these for a minute.
      expect(seen.afterBreak).toBe("length");
      expect(seen.chatAfterBreak).toBe("length");
      // The abandoned question is not kept; overlapping sends answer in order.
      expect(seen.chatRoles).toEqual(["user:Hi", "assistant", "user:One", "assistant", "user:Two", "assistant"]);
      expect(seen.badOptions).toEqual([
        "InvalidParameterError: maxTokens must be a whole number > 0 (got 0)",
        "InvalidParameterError: stop must be a non-empty string or an array of them",
        'InvalidParameterError: message 0 must be { role: "system" | "user" | "assistant", content: string }',
        "InvalidParameterError: embed() takes an array of strings",
      ]);
      expect(seen.stopString).toEqual([true, "stop"]);
      expect(seen.afterClose).toEqual([
        "ClosedError: the model is closed (close() was called); load it again to use it",
        "ClosedError: the model is closed (close() was called); load it again to use it",
        "ClosedError: the chat is closed (close() was called on it or on its model)",
      ]);
    }
  }, 300_000);
});
