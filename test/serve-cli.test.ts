// `mlx serve` as a user starts it: the real CLI in a child process on port 0, the bound URL on
// stderr, a preloaded default model, a clean stop on SIGTERM, bad flags refused.
import { expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { post, startServe, tinyModel } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const main = join(import.meta.dir, "..", "src", "main.ts");

test("serves on 127.0.0.1, prints the URL, uses -m by default, stops on SIGTERM", async () => {
  const model = tinyModel();
  const { proc, url } = await startServe(model);
  try {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 3 }),
    });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { model: string }).model).toBe(model);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
}, 20_000);

test("SIGTERM lets a stream in flight finish, takes no new request, then exits 0", async () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  writeTinyModel(join(root, "long"), { contextLength: 4096 });
  const { proc, url } = await startServe(join(root, "long"));
  try {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 1500,
        ignore_eos: true,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    const reader = r.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    let streamEnded = false;
    const reading = (async () => {
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read())
        text += new TextDecoder().decode(chunk.value);
      streamEnded = true;
    })();
    proc.kill("SIGTERM");
    // A new request is refused once the signal is handled, however long that takes on a busy
    // machine (looked for up to 100 times), and while the stream is still in flight: not only
    // once it has ended and the server exits.
    let refusedInFlight: boolean | undefined;
    for (let look = 0; look < 100 && refusedInFlight === undefined; look++) {
      const ended = streamEnded;
      if (
        await fetch(`${url}/health`).then(
          () => false,
          () => true,
        )
      )
        refusedInFlight = !ended;
      else await Bun.sleep(50);
    }
    expect(refusedInFlight).toBe(true);
    await reading;
    expect(text).toContain('"completion_tokens":1500');
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
}, 60_000);

test("--timeout-graceful-shutdown 0 cuts a stream in flight at SIGTERM (it ends with the shutdown's error), then exits 0", async () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  writeTinyModel(join(root, "long"), { contextLength: 4096 });
  // docker stop waits 10 s, not the default grace's 25, before SIGKILL: an operator sets it lower.
  const { proc, url } = await startServe(join(root, "long"), ["--timeout-graceful-shutdown", "0"]);
  try {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 1500,
        ignore_eos: true,
        stream: true,
      }),
    });
    const reader = r.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    proc.kill("SIGTERM");
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read())
      text += new TextDecoder().decode(chunk.value);
    // Cut, not let finish: its last event is the shutdown's error, and far fewer than 1500 tokens came.
    expect(text).toContain("the server is shutting down");
    expect(text.split('"delta":{"content"').length - 1).toBeLessThan(1500);
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
}, 60_000);

test("a --timeout-graceful-shutdown that is not a number of seconds from 0 (or empty: an unset $GRACE) is one line, not a server", async () => {
  for (const value of ["-1", "soon", ""]) {
    const proc = Bun.spawn([process.execPath, main, "serve", "--port", "0", "--timeout-graceful-shutdown", value], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const stderr = await new Response(proc.stderr).text();
    expect(await proc.exited).toBe(1);
    expect(stderr).toBe(`error: --timeout-graceful-shutdown must be a number ≥ 0 (got '${value}')\n`);
  }
}, 30_000);

test("a bad flag is one line and a non-zero exit", async () => {
  const proc = Bun.spawn([process.execPath, main, "serve", "--port", "99999"], { stdout: "pipe", stderr: "pipe" });
  const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  expect(code).not.toBe(0);
  expect(stderr).toMatch(/^error: --port/m);
});

test('a --port or --host given empty (an unset "$PORT") or a port not in digits is one line, not a server elsewhere', async () => {
  // Before: --port "" listened on any free port, 0x10 on 16, 1e3 on 1000, and --host "" on every
  // interface, said as http://localhost.
  for (const [flags, line] of [
    [["--port", ""], "error: --port must be 0-65535 (got '')"],
    [["--port", "0x10"], "error: --port must be 0-65535 (got '0x10')"],
    [["--port", "1e3"], "error: --port must be 0-65535 (got '1e3')"],
    [["--host", "", "--port", "0"], "error: --host needs an address (an empty one would listen on every interface)"],
  ] as const) {
    const proc = Bun.spawn([process.execPath, main, "serve", ...flags], { stdout: "pipe", stderr: "pipe" });
    // Were the value taken, the server would listen: stop it then, so the test ends either way.
    const timer = setTimeout(() => proc.kill(), 10_000);
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    clearTimeout(timer);
    expect(stderr).toBe(`${line}\n`);
    expect(code).toBe(1);
  }
}, 60_000);

/** `mlx serve` with `flags` (and `env`) on store `home`, expected to refuse to start: its stderr and status (killed after 10 s). */
async function refusedServe(
  home: string,
  flags: string[],
  env: Record<string, string> = {},
): Promise<{ stderr: string; code: number }> {
  const proc = Bun.spawn([process.execPath, main, "serve", ...flags, "--port", "0"], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MLX_HOME: home, ...env },
  });
  const timer = setTimeout(() => proc.kill(), 10_000);
  const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { stderr, code };
}

test("MLX_HOST, as OLLAMA_HOST for ollama serve, is where it listens and mlx ps asks; --host and --port win; a bad one is one line", async () => {
  const home = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  // Host and port from it alone: [::1] (not the default 127.0.0.1), any free port (not 11435).
  const proc = Bun.spawn([process.execPath, main, "serve"], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MLX_HOME: home, MLX_HOST: "[::1]:0" },
  });
  try {
    const reader = proc.stderr.getReader();
    let stderr = "";
    for (let reads = 0; reads < 100 && !/listening on \S+ /.test(stderr); reads++) {
      const chunk = await reader.read();
      if (chunk.done) break;
      stderr += new TextDecoder().decode(chunk.value);
    }
    const url = /listening on (\S+) /.exec(stderr)?.[1];
    expect(url).toMatch(/^http:\/\/\[::1\]:\d+$/);
    expect(url).not.toEndWith(":11435");
    const listed = Bun.spawnSync([process.execPath, main, "ps"], {
      env: { ...process.env, MLX_HOME: home, MLX_HOST: url!.replace("http://", "") },
    });
    expect([listed.exitCode, listed.stdout.toString()]).toEqual([0, "NAME  SIZE  CONTEXT  UNTIL\n"]);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
  const flagged = await startServe(undefined, ["--host", "127.0.0.1"], { MLX_HOST: "[::1]:11435" });
  try {
    // startServe gives --port 0: both parts from the flags.
    expect(flagged.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(flagged.url).not.toEndWith(":11435");
  } finally {
    flagged.proc.kill();
  }
  const refused = await refusedServe(home, [], { MLX_HOST: "ftp://nowhere" });
  expect(refused).toEqual({
    code: 1,
    stderr:
      "error: MLX_HOST 'ftp://nowhere' must be host, host:port or http://host:port, as OLLAMA_HOST (a scheme of 'ftp')\n",
  });
}, 30_000);

test("a -m that names no model (a typo) is one line with a suggestion and a non-zero exit, not a server", async () => {
  const home = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  const { stderr, code } = await refusedServe(home, ["-m", "smolm2"]);
  expect(stderr).not.toContain("listening");
  expect(stderr).toMatch(/^error: unknown model 'smolm2' .*did you mean 'smollm2'\?/m);
  expect(code).toBe(1);
}, 20_000);

test("a --draft-model that names no model (a typo) is one line and a non-zero exit, not a server", async () => {
  // Before: the server started, and every request on its model failed with a 400 about the draft.
  const home = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  for (const [draft, why] of [
    ["smolm2", /^error: draft model: unknown model 'smolm2' .*did you mean 'smollm2'\?/],
    [join(home, "no-such-draft"), /^error: draft model: model not found: .*no-such-draft$/],
  ] as const) {
    const { stderr, code } = await refusedServe(home, ["--draft-model", draft]);
    expect(stderr).not.toContain("listening");
    expect(stderr.trim()).toMatch(why);
    expect(stderr.trim().split("\n")).toHaveLength(1);
    expect(code).toBe(1);
  }
}, 20_000);

test("an MLX_KV_DTYPE it does not know is one line and a non-zero exit, not a server that fails every request", async () => {
  // Before: read only when a model's cache was made, so the server started, and every request failed.
  const home = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  const { stderr, code } = await refusedServe(home, [], { MLX_KV_DTYPE: "float8" });
  expect(stderr).toBe("error: MLX_KV_DTYPE must be float16 or float32, not 'float8'\n");
  expect(code).toBe(1);
}, 20_000);

test("an IPv6 address given as URLs write it (--host [::1]) is said in a URL that opens", async () => {
  // Before: http://[[::1]]:PORT, brackets doubled (startServe fetches the URL it reads).
  const { proc, url } = await startServe(undefined, ["--host", "[::1]"]);
  try {
    expect(url).toMatch(/^http:\/\/\[::1\]:\d+$/);
    expect(((await (await fetch(`${url}/health`)).json()) as { status: string }).status).toBe("ok");
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
}, 20_000);

test("an address it cannot listen on is one line naming the address and why, and a non-zero exit", async () => {
  const taken = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  try {
    for (const [flags, why] of [
      [["--host", "nonexistent.invalid", "--port", "0"], /^error: cannot listen on nonexistent\.invalid:0: /],
      [
        ["--port", String(taken.port)],
        new RegExp(`^error: cannot listen on 127\\.0\\.0\\.1:${taken.port}: port ${taken.port} is in use`),
      ],
    ] as const) {
      const proc = Bun.spawn([process.execPath, main, "serve", ...flags], { stdout: "pipe", stderr: "pipe" });
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(stderr).toMatch(why);
      expect(stderr.trim().split("\n")).toHaveLength(1);
    }
  } finally {
    taken.stop(true);
  }
});

test("--cors and --allowed-host values no request could match are refused at start, in one line", async () => {
  for (const [flag, value] of [
    ["--cors", "http://localhost:3000/"], // browsers send no trailing slash
    ["--cors", "localhost:3000"], // nor an origin without its scheme
    ["--allowed-host", "proxy.internal:8080"], // the port is not part of the name compared
    ["--allowed-host", "https://proxy.internal"],
  ]) {
    const proc = Bun.spawn([process.execPath, main, "serve", "--port", "0", flag!, value!], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(code).toBe(1);
    expect(stderr.trim()).toStartWith(`error: ${flag} '${value}' must be `);
    expect(stderr.trim().split("\n")).toHaveLength(1);
  }
});

test('an empty --api-key (an unset "$KEY") is refused, not a server open to every request', async () => {
  const proc = Bun.spawn([process.execPath, main, "serve", "--port", "0", "--api-key", ""], {
    stdout: "pipe",
    stderr: "pipe",
  });
  // Were it taken for no key, the server would listen: stop it then, so the test ends either way.
  const timer = setTimeout(() => proc.kill(), 10_000);
  const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  expect(stderr).not.toContain("listening");
  expect(code).toBe(1);
  expect(stderr.trim()).toBe("error: --api-key needs a key (an empty one would leave the server open)");
}, 20_000);

test("an MLX_API_KEY set to nothing (MLX_API_KEY= in a unit file) is refused, not a server open to every request", async () => {
  const home = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  // Before: "" served every request without a key, and spaces alone refused them all.
  for (const key of ["", "  "]) {
    const { stderr, code } = await refusedServe(home, [], { MLX_API_KEY: key });
    expect(stderr).toBe("error: MLX_API_KEY is set but empty: give it a key, or unset it to serve without one\n");
    expect(code).toBe(1);
  }
}, 30_000);

test("what the server works around and goes on from (a prompt cache directory it cannot use) is a warning, not an error", async () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  const blocker = join(root, "a-file");
  writeFileSync(blocker, "not a directory");
  const { proc, url } = await startServe(tinyModel(), ["--prompt-cache-dir", join(blocker, "cache")]);
  try {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 3 }),
    });
    expect(r.status).toBe(200);
    proc.kill("SIGTERM");
    // What the server said after its URL (startServe read up to it).
    let stderr = "";
    const reader = proc.stderr.getReader();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read())
      stderr += new TextDecoder().decode(chunk.value);
    expect(await proc.exited).toBe(0);
    expect(stderr).toMatch(/warn.*prompt cache: cannot use .*, going on without it/i);
    expect(stderr).not.toMatch(/^error:/m);
  } finally {
    proc.kill();
  }
}, 20_000);

test("a reader of its log that went away costs the server nothing: every request is answered, and SIGTERM stops it", async () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  const { proc, url } = await startServe(undefined);
  try {
    // As `mlx serve 2>&1 | head -n 1` once head has its line: the log's pipe has no reader.
    await proc.stderr.cancel();
    // Each model that fails to load is said in the log (once per problem): three writes to the closed pipe.
    const statuses: number[] = [];
    for (const name of ["a", "b", "c"]) {
      mkdirSync(join(root, name));
      writeFileSync(join(root, name, "config.json"), "{not json");
      const r = await post(`${url}/v1/chat/completions`, {
        model: join(root, name),
        messages: [{ role: "user", content: "Hi" }],
      });
      statuses.push(r.status);
    }
    expect(statuses).toEqual([500, 500, 500]);
    expect((await fetch(`${url}/health`)).status).toBe(200);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
}, 30_000);

/** What the server said after its URL (startServe read up to it), read until `said` or its end. */
async function readStderrUntil(proc: Bun.Subprocess<"ignore", "pipe", "pipe">, said: RegExp): Promise<string> {
  let stderr = "";
  const reader = proc.stderr.getReader();
  for (let reads = 0; reads < 100 && !said.test(stderr); reads++) {
    const chunk = await reader.read();
    if (chunk.done) break;
    stderr += new TextDecoder().decode(chunk.value);
  }
  reader.releaseLock();
  return stderr;
}

test("a hangup (SIGHUP: its terminal closed) stops the server as SIGTERM does, and says so; under nohup it stays ignored", async () => {
  // Before: exit 129 with nothing said, its streams cut.
  const hungUp = await startServe(undefined);
  try {
    hungUp.proc.kill("SIGHUP");
    expect(await readStderrUntil(hungUp.proc, /hangup/)).toContain("hangup (SIGHUP): stopping");
    expect(await hungUp.proc.exited).toBe(0);
  } finally {
    hungUp.proc.kill();
  }
  // nohup asked for hangups to be ignored; a handler of ours would have undone that.
  const kept = await startServe(undefined, [], {}, ["nohup"]);
  try {
    kept.proc.kill("SIGHUP");
    // Answered after the hangup was delivered: it was ignored (a stopping server refuses connections).
    for (let i = 0; i < 3; i++) expect((await fetch(`${kept.url}/health`)).status).toBe(200);
    kept.proc.kill("SIGTERM");
    expect(await kept.proc.exited).toBe(0);
    // Read to its end (a pattern that never matches).
    expect(await readStderrUntil(kept.proc, /(?!)/)).not.toContain("hangup");
  } finally {
    kept.proc.kill();
  }
}, 30_000);

test("what it logs off a terminal (journald, docker logs) is one line per message, no blank lines around it", async () => {
  // As a unit or a container runs it: consola writes one line per message anyway under a test
  // runner (NODE_ENV=test, as bun test sets it) or CI.
  const { proc, url } = await startServe(undefined, [], { NODE_ENV: "production", TEST: undefined, CI: undefined });
  try {
    // A warning it says, then stops: read to its end (a pattern that never matches).
    proc.kill("SIGHUP");
    const stderr = await readStderrUntil(proc, /(?!)/);
    expect(await proc.exited).toBe(0);
    expect(url).toStartWith("http://127.0.0.1:");
    expect(stderr.split("\n")).toEqual(["[warn] hangup (SIGHUP): stopping", "[info] stopped", ""]);
  } finally {
    proc.kill();
  }
}, 30_000);

test("off a terminal (systemd, docker logs) it says its lifecycle, one line each: loaded, stopping with what is in flight, unloaded, stopped", async () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-cli-"));
  const model = join(root, "long");
  writeTinyModel(model, { contextLength: 4096 });
  // Its whole log, read here (startServe would consume what came with the URL): stderr a pipe, no --verbose.
  const proc = Bun.spawn([process.execPath, main, "serve", "--port", "0", "-m", model], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1", NODE_ENV: "production", TEST: undefined, CI: undefined },
  });
  try {
    const reader = proc.stderr.getReader();
    let stderr = "";
    const readUntil = async (said: RegExp) => {
      for (let reads = 0; reads < 100 && !said.test(stderr); reads++) {
        const chunk = await reader.read();
        if (chunk.done) break;
        stderr += new TextDecoder().decode(chunk.value);
      }
    };
    await readUntil(/listening on http:\S+\s/);
    const url = /listening on (http:\S+)/.exec(stderr)![1]!;
    // Healthy once its model is loaded (looked at up to 500 times).
    for (let look = 0; look < 500 && (await fetch(`${url}/health`)).status !== 200; look++) await Bun.sleep(20);
    const r = await fetch(`${url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ prompt: "Once", max_tokens: 200, ignore_eos: true, stream: true }),
    });
    const stream = r.body!.getReader();
    await stream.read(); // in flight
    proc.kill("SIGTERM");
    while (!(await stream.read()).done);
    await readUntil(/(?!)/); // to its end
    expect(await proc.exited).toBe(0);
    expect(stderr.split("\n").slice(1)).toEqual([
      expect.stringMatching(new RegExp(`^\\[info\\] loaded ${model} \\(${model}\\) in [\\d.]+ s$`)),
      "[info] SIGTERM: stopping, letting 1 request(s) finish, up to 25 s (again: now)",
      `[info] unloaded ${model}`,
      "[info] stopped",
      "",
    ]);
  } finally {
    proc.kill();
  }
}, 30_000);
