// `mlx ps` and `mlx stop` against a real `mlx serve` on loopback, as `ollama ps` and `ollama stop`
// ask Ollama: the models it holds, and one unloaded on request; a server that is not there, or
// that wants a key, is one line and status 1.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { post, serve } from "./helpers/serve";
import { startServer } from "./helpers/store";
import { writeTinyModel } from "./helpers/tiny-model";

let server: RunningServer;
let model: string;
let mlx: ReturnType<typeof cliRunner>;
let root: string;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "mlx-ps-"));
  model = join(root, "tiny");
  writeTinyModel(model, { contextLength: 640 });
  server = serve({});
  mlx = cliRunner(join(root, "home"));
});

afterAll(() => server.stop());

describe("mlx ps and mlx stop", () => {
  test("ps lists what the server holds; stop unloads it; then ps lists nothing", async () => {
    expect((await mlx(["ps", "--url", server.url])).stdout).toBe("NAME  SIZE  CONTEXT  UNTIL\n");
    await post(`${server.url}/api/generate`, { model, prompt: "Hi", stream: false, options: { num_predict: 1 } });
    const listed = await mlx(["ps", "--url", server.url]);
    expect(listed.code).toBe(0);
    const [header, row] = listed.stdout.trimEnd().split("\n");
    expect(header!.split(/ {2,}/)).toEqual(["NAME", "SIZE", "CONTEXT", "UNTIL"]);
    expect(row!.split(/ {2,}/)).toEqual([model, expect.stringMatching(/^[\d.]+ [KM]B$/), "640", "5 minutes from now"]);
    const json = JSON.parse((await mlx(["ps", "--url", server.url, "--json"])).stdout);
    expect(json).toEqual([expect.objectContaining({ name: model, context_length: 640 })]);
    const stopped = await mlx(["stop", model, "--url", server.url]);
    expect([stopped.code, stopped.stderr]).toEqual([0, ""]);
    expect(server.state.models.loaded).toHaveLength(0);
  });

  test("a model in use lists when it will unload once idle (its keep-alive from now), not 'forever'", async () => {
    const lease = await server.state.models.acquire(model);
    try {
      const listed = await mlx(["ps", "--url", server.url]);
      const [, row] = listed.stdout.trimEnd().split("\n");
      expect(row!.split(/ {2,}/).at(-1)).toBe("5 minutes from now");
    } finally {
      lease.release();
      server.state.models.unload(lease.entry);
    }
  });

  test("a keep-alive of a minute, an hour or a day reads as one, not 60 seconds, 60 minutes or 24 hours", async () => {
    for (const [keepAliveMs, until] of [
      [60_000, "1 minute from now"],
      [3_600_000, "1 hour from now"],
      [86_400_000, "1 day from now"],
    ] as const) {
      const lease = await server.state.models.acquire(model, keepAliveMs);
      try {
        const [, row] = (await mlx(["ps", "--url", server.url])).stdout.trimEnd().split("\n");
        expect(row!.split(/ {2,}/).at(-1)).toBe(until);
      } finally {
        lease.release();
        server.state.models.unload(lease.entry);
      }
    }
  });

  test("stop of a model the server does not hold is an error that names what it holds, and loads nothing", async () => {
    const r = await mlx(["stop", model, "--url", server.url]);
    expect([r.code, r.stderr.trim()]).toEqual([1, `error: model '${model}' is not loaded there (none is)`]);
    expect(server.state.models.loaded).toHaveLength(0);
  });

  test("stop unloads what ps lists by that name after models.toml changed its settings, or broke", async () => {
    // The server reads the models.toml of its process's MLX_HOME, per request.
    const savedHome = process.env.MLX_HOME;
    const home = join(root, "alias-home");
    mkdirSync(home, { recursive: true });
    const file = join(home, "models.toml");
    process.env.MLX_HOME = home;
    try {
      for (const change of [`kv_bits = 8\n`, `kv_bit = 8\n`]) {
        writeFileSync(file, `[models.tiny]\nsource = "${model}"\n`);
        await post(`${server.url}/api/generate`, {
          model: "tiny",
          prompt: "Hi",
          stream: false,
          options: { num_predict: 1 },
        });
        expect(server.state.models.loaded.map((e) => e.name)).toEqual(["tiny"]);
        // Its settings edited (another cache: another entry's key), or the file broken meanwhile.
        writeFileSync(file, `[models.tiny]\nsource = "${model}"\n${change}`);
        const stopped = await mlx(["stop", "tiny", "--url", server.url]);
        expect([stopped.code, stopped.stderr]).toEqual([0, ""]);
        expect(server.state.models.loaded).toHaveLength(0);
      }
    } finally {
      process.env.MLX_HOME = savedHome;
    }
  });

  test("MLX_HOST, in the forms OLLAMA_HOST takes, is where ps and stop ask; --url wins over it; a bad one is one line, status 1", async () => {
    const { port } = new URL(server.url);
    await post(`${server.url}/api/generate`, { model, prompt: "Hi", stream: false, options: { num_predict: 1 } });
    const home = join(root, "home");
    for (const host of [`127.0.0.1:${port}`, `http://127.0.0.1:${port}`, `http://127.0.0.1:${port}/`]) {
      const listed = await cliRunner(home, { MLX_HOST: host })(["ps", "--json"]);
      expect([listed.code, JSON.parse(listed.stdout).map((m: { name: string }) => m.name)]).toEqual([0, [model]]);
    }
    // --url wins, also over a value that is no address.
    const overridden = await cliRunner(home, { MLX_HOST: "ftp://nowhere" })(["ps", "--url", server.url, "--json"]);
    expect(overridden.code).toBe(0);
    for (const [value, why] of [
      ["ftp://nowhere", "a scheme of 'ftp'"],
      ["127.0.0.1:99999", "a port above 65535"],
      [":11435", "no host before the port: 127.0.0.1:PORT, or 0.0.0.0:PORT for every interface"],
      ["127.0.0.1:port", "no host, or not a host and port"],
    ]) {
      const refused = await cliRunner(home, { MLX_HOST: value })(["ps"]);
      expect([refused.code, refused.stderr]).toEqual([
        1,
        `error: MLX_HOST '${value}' must be host, host:port or http://host:port, as OLLAMA_HOST (${why})\n`,
      ]);
    }
    const stopped = await cliRunner(home, { MLX_HOST: `127.0.0.1:${port}` })(["stop", model]);
    expect([stopped.code, stopped.stderr]).toEqual([0, ""]);
    expect(server.state.models.loaded).toHaveLength(0);
  });

  test("a server that is not there, a bad URL, or one that wants a key: one line, status 1", async () => {
    const gone = serve({});
    const url = gone.url;
    await gone.stop();
    const down = await mlx(["ps", "--url", url]);
    expect([down.code, down.stderr.trim()]).toEqual([
      1,
      `error: cannot reach mlx serve at ${url}: nothing answers (start one with \`mlx serve\`, or give --url or MLX_HOST)`,
    ]);
    // A user:password in --url (sent as Basic auth) is masked, as bench masks it.
    const withPassword = url.replace("http://", "http://mlx-user:pw-s3cret@");
    for (const command of [["ps"], ["stop", model]]) {
      const masked = await mlx([...command, "--url", withPassword]);
      expect([masked.code, masked.stderr.trim()]).toEqual([
        1,
        `error: cannot reach mlx serve at ${url.replace("http://", "http://***@")}: nothing answers (start one with \`mlx serve\`, or give --url or MLX_HOST)`,
      ]);
    }
    // Another server on that port: its page is not the error (whose first line it was); stop asks /api/ps first.
    const page = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => new Response("<!DOCTYPE HTML>\n<html>Not Found</html>", { status: 404 }),
    });
    try {
      for (const command of [["ps"], ["stop", model]]) {
        const other = await mlx([...command, "--url", page.url.origin]);
        expect([other.code, other.stderr]).toEqual([
          1,
          `error: ${page.url.origin} answered /api/ps with HTTP 404 and something other than JSON: is it mlx serve?\n`,
        ]);
      }
    } finally {
      page.stop(true);
    }
    // Ollama before 0.6 (its /api/ps without context_length): "-", not "undefined".
    const ollama = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () =>
        Response.json({
          models: [{ name: "llama3:latest", size: 5137025024, expires_at: "2318-01-01T00:00:00Z" }],
        }),
    });
    try {
      const older = await mlx(["ps", "--url", ollama.url.origin]);
      expect(older.stdout.trimEnd().split("\n")[1]!.split(/ {2,}/)).toEqual([
        "llama3:latest",
        "5.1 GB",
        "-",
        "forever",
      ]);
    } finally {
      ollama.stop(true);
    }
    // One that answers JSON, but not a model list: said so, not a TypeError ("null is not an object").
    for (const body of [{ models: null }, { hello: "world" }, null, { models: [null] }, { models: [{ id: 1 }] }]) {
      const api = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json(body) });
      try {
        for (const command of [["ps"], ["ps", "--json"], ["stop", model]]) {
          const other = await mlx([...command, "--url", api.url.origin]);
          expect([other.code, other.stdout, other.stderr]).toEqual([
            1,
            "",
            `error: ${api.url.origin} answered /api/ps with JSON that lists no models: is it mlx serve?\n`,
          ]);
        }
      } finally {
        api.stop(true);
      }
    }
    // One that stalls or hangs up in the middle of its answer: said so, naming it.
    for (const [reply, reason] of [
      [{ stallAfter: 10 }, "the rest did not come within 10 s"],
      [{ dropAfter: 10 }, "the connection closed before its end"],
    ] as const) {
      const cut = await startServer(() => ({ status: 200, body: `{"models": []}${" ".repeat(100)}`, ...reply }));
      try {
        const r = await mlx(["ps", "--url", cut.url]);
        expect([r.code, r.stderr]).toEqual([1, `error: ${cut.url} answered /api/ps in part: ${reason}\n`]);
      } finally {
        await cut.close();
      }
    }
    const bad = await mlx(["ps", "--url", "ftp://x"]);
    expect([bad.code, bad.stderr.trim()]).toEqual([1, "error: --url must be an http(s) URL (got 'ftp://x')"]);
    const locked = serve({ apiKey: "s3cret" });
    try {
      const refused = await mlx(["ps", "--url", locked.url]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toStartWith(`error: ${locked.url}: HTTP 401: `);
      expect(refused.stderr).toEndWith(" (the server wants a key: give it with --api-key or $MLX_API_KEY)\n");
      expect(refused.stderr.trim().split("\n")).toHaveLength(1);
      const wrong = await mlx(["ps", "--url", locked.url, "--api-key", "nope"]);
      expect(wrong.stderr).toEndWith(" (the key given by --api-key or $MLX_API_KEY is not the server's)\n");
      expect((await mlx(["ps", "--url", locked.url, "--api-key", "s3cret"])).code).toBe(0);
    } finally {
      await locked.stop();
    }
  });
});
