// `mlx serve` as an operator exposes it: what a client may make the server read from its disk.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join, relative } from "node:path";
import { createApp, createState, keylessExposure, type RunningServer } from "../src/server/app";
import { modelRequest, pullModel } from "../src/store/pull";
import { userAliasFile } from "../src/store/aliases";
import { post, serve, startServe, tinyModel } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

let root: string;
/** A model directory on the server's disk that the operator did not name. */
let otherModel: string;

beforeAll(() => {
  tinyModel(); // sets MLX_HOME to a scratch store unless the run gave one
  root = mkdtempSync(join(tmpdir(), "mlx-security-"));
  otherModel = join(root, "other");
  writeTinyModel(otherModel, { contextLength: 256 });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const chat = (model: string) => ({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 2 });

describe("model names that are paths on the server's machine", () => {
  let server: RunningServer;
  beforeAll(() => {
    server = serve({ defaultModel: tinyModel(), apiKey: "k", requestPaths: false });
  });
  afterAll(() => server.stop());
  const auth = { Authorization: "Bearer k" };

  test("are refused alike whether the file is a model, another file or nothing: no load, no clue", async () => {
    const names = [
      otherModel,
      relative(process.cwd(), otherModel),
      join(root, "..", "..", "etc", "passwd"),
      "/etc/passwd",
      join(root, "missing"),
    ];
    for (const name of names) {
      const r = await post(`${server.url}/v1/chat/completions`, chat(name), auth);
      expect([name, r.status, r.json.error.code]).toEqual([name, 404, "model_not_found"]);
      expect(r.json.error.message).toBe(
        `model not found: '${name}' (this server loads no model by a path on its machine; name an alias or a stored model)`,
      );
      const shown = await post(`${server.url}/api/show`, { model: name }, auth);
      expect([name, shown.status]).toEqual([name, 404]);
    }
    expect(server.state.models.loaded.map((e) => e.path)).not.toContain(otherModel);
  });

  test("the model the operator named by its path still answers by that path", async () => {
    const r = await post(`${server.url}/v1/chat/completions`, chat(tinyModel()), auth);
    expect(r.status).toBe(200);
  });

  test("are refused by default only where the server listens beyond this machine", () => {
    const exposed = createState({ host: "0.0.0.0", logError: () => {} });
    const local = createState({ host: "127.0.0.1", logError: () => {} });
    expect(exposed.models.mayBePath(otherModel)).toBe(false);
    expect(local.models.mayBePath(otherModel)).toBe(true);
    expect(createState({ host: "0.0.0.0", requestPaths: true }).models.mayBePath(otherModel)).toBe(true);
  });

  test("serve --no-model-paths refuses them on loopback too; without it they are described", async () => {
    const show = async (flags: string[]) => {
      const { proc, url } = await startServe(undefined, flags);
      try {
        return await post(`${url}/api/show`, { model: otherModel });
      } finally {
        proc.kill();
        await proc.exited;
      }
    };
    expect((await show(["--no-model-paths"])).status).toBe(404);
    expect((await show([])).status).toBe(200);
  });
});

describe("/api/copy names the store cannot hold", () => {
  let server: RunningServer;
  let sharedHome: string | undefined;
  beforeAll(async () => {
    // A scratch store holding one model (a tiny GGUF stored as a pulled one is): nothing shared is touched.
    sharedHome = process.env.MLX_HOME;
    process.env.MLX_HOME = join(root, "home");
    const gguf = join(root, "quants.gguf");
    copyFileSync(join(import.meta.dir, "fixtures", "gguf-quants.gguf"), gguf);
    await pullModel(modelRequest(gguf));
    server = serve();
  });
  afterAll(async () => {
    await server.stop();
    process.env.MLX_HOME = sharedHome;
  });

  test("are a 400 naming the destination, and the store is left as it was", async () => {
    const copy = (destination: string) => post(`${server.url}/api/copy`, { source: "quants", destination });
    const long = await copy("m".repeat(300));
    expect([long.status, long.json.error]).toEqual([
      400,
      "cannot copy to a name of 300 characters: too long; choose a shorter one",
    ]);
    // Short enough for its manifest's file name, too long for the directory staged while linking it.
    const nearly = await copy("m".repeat(248));
    expect([nearly.status, nearly.json.error]).toEqual([
      400,
      "cannot copy to a name of 248 characters: too long; choose a shorter one",
    ]);
    const control = await copy("a\u0000b");
    expect([control.status, control.json.error]).toEqual([
      400,
      "cannot copy to a name with control characters; choose another name",
    ]);
    const tags = (await (await fetch(`${server.url}/api/tags`)).json()) as { models: { name: string }[] };
    expect(tags.models.map((m) => m.name)).toEqual(["quants"]);
    expect((await copy("m".repeat(200))).status).toBe(200);
  });
});

describe("requests from web pages on other sites", () => {
  let server: RunningServer;
  beforeAll(() => {
    server = serve({ corsOrigins: ["http://app.example"] });
  });
  afterAll(() => server.stop());
  // What a page's fetch(..., {method: "POST", body}) sends with no preflight: text/plain.
  const show = (origin: string) =>
    fetch(`${server.url}/api/show`, {
      method: "POST",
      body: JSON.stringify({ model: tinyModel() }),
      headers: { "Content-Type": "text/plain", Origin: origin },
    });

  test("are refused with a 403 unless --cors names the site; this machine's pages and API clients pass", async () => {
    const foreign = await show("http://evil.example");
    expect(foreign.status).toBe(403);
    expect(await foreign.json()).toEqual({
      error: "requests from pages at http://evil.example are refused (serve --cors http://evil.example allows them)",
    });
    expect((await show("null")).status).toBe(403);
    expect((await show(server.url)).status).toBe(200);
    expect((await show("http://app.example")).status).toBe(200);
    // This machine's pages, as Ollama allows them: a local app in development, an editor's panel.
    for (const local of [
      "http://localhost:5173",
      "https://127.0.0.1:8443",
      "http://[::1]:3000",
      "vscode-webview://a1b2",
    ])
      expect([local, (await show(local)).status]).toEqual([local, 200]);
    expect((await show("http://localhost.evil.example")).status).toBe(403);
    const client = await post(`${server.url}/api/show`, { model: tinyModel() });
    expect(client.status).toBe(200);
  });

  test("this machine's pages can use the API from a browser, as with Ollama: their preflight and answers carry CORS headers", async () => {
    const plain = serve({}); // no --cors
    try {
      for (const url of [plain.url, server.url]) {
        const origin = "http://localhost:5173";
        // What a browser asks before a page's JSON POST (the ollama client's).
        const preflight = await fetch(`${url}/api/chat`, {
          method: "OPTIONS",
          headers: {
            Origin: origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
          },
        });
        expect(preflight.status).toBe(204);
        expect(preflight.headers.get("access-control-allow-origin")).toBe(origin);
        expect(preflight.headers.get("access-control-allow-methods")).toContain("POST");
        expect(preflight.headers.get("access-control-allow-headers")).toContain("content-type");
        const tags = await fetch(`${url}/api/tags`, { headers: { Origin: origin } });
        expect(tags.status).toBe(200);
        expect(tags.headers.get("access-control-allow-origin")).toBe(origin);
        // A page elsewhere is told nothing it could read.
        const foreign = await fetch(`${url}/api/tags`, { headers: { Origin: "http://evil.example" } });
        expect(foreign.status).toBe(403);
        expect(foreign.headers.get("access-control-allow-origin")).toBeNull();
      }
    } finally {
      await plain.stop();
    }
  });
});

describe("requests addressed to another host (DNS rebinding)", () => {
  let server: RunningServer;
  beforeAll(() => {
    server = serve({});
  });
  afterAll(() => server.stop());
  // A page on evil.example whose name was made to resolve to 127.0.0.1 sends its own name in Host,
  // and its own origin: as "the server's own page" it would read every answer.
  const addressed = (host: string) =>
    new Promise<string>((resolve, reject) => {
      const socket = connect(Number(new URL(server.url).port), "127.0.0.1", () =>
        socket.write(`GET /api/tags HTTP/1.1\r\nHost: ${host}\r\nOrigin: http://${host}\r\nConnection: close\r\n\r\n`),
      );
      let response = "";
      socket.on("data", (data) => (response += data));
      socket.on("end", () => resolve(response.split("\r\n")[0]!));
      socket.on("error", reject);
    });

  test("a loopback server answers only requests to this machine by name", async () => {
    const port = new URL(server.url).port;
    expect(await addressed(`evil.example:${port}`)).toBe("HTTP/1.1 403 Forbidden");
    const refused = await fetch(`${server.url}/api/tags`, { headers: { Host: "evil.example" } });
    expect(await refused.json()).toEqual({
      error:
        "requests addressed to evil.example are refused: this server listens on loopback and answers requests to this machine (serve --allowed-host evil.example answers them too; serve --host makes it listen elsewhere)",
    });
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `app.localhost:${port}`, `[::1]:${port}`, hostname()])
      expect([host, await addressed(host)]).toEqual([host, "HTTP/1.1 200 OK"]);
  });

  test("--allowed-host: a reverse proxy that passes its own Host on is answered, its page's requests too; no other name is", async () => {
    const proxied = serve({ allowedHosts: ["Models.Example"] });
    try {
      const port = Number(new URL(proxied.url).port);
      const addressedTo = (host: string) =>
        fetch(`${proxied.url}/api/tags`, { headers: { Host: host, Origin: `https://${host}` } });
      for (const host of ["models.example", `models.example:${port}`, "MODELS.EXAMPLE"])
        expect([host, (await addressedTo(host)).status]).toEqual([host, 200]);
      for (const host of ["evil.example", "models.example.evil.example", `evil.example:${port}`])
        expect([host, (await addressedTo(host)).status]).toEqual([host, 403]);
    } finally {
      await proxied.stop();
    }
  });

  test("a server on a loopback address written otherwise (0:0:0:0:0:0:0:1, ::ffff:127.0.0.1) answers only requests addressed to this machine", async () => {
    // Before: taken for another machine's address, with no Host check (DNS rebinding).
    for (const host of ["0:0:0:0:0:0:0:1", "[0::1]", "::ffff:127.0.0.1", "127.0.0.1"]) {
      const app = createApp(createState({ host, logError: () => {} }));
      const addressedTo = async (name: string) =>
        (await app.request(`http://${name}/api/version`, { headers: { Host: name } })).status;
      expect([host, await addressedTo("rebound.example"), await addressedTo("127.0.0.1:11435")]).toEqual([
        host,
        403,
        200,
      ]);
    }
  });

  test("a server listening beyond this machine answers any Host (its clients name it as they reach it)", async () => {
    const exposed = createApp(createState({ host: "0.0.0.0", logError: () => {} }));
    const r = await exposed.request("http://models.lan:11435/api/version", { headers: { Host: "models.lan:11435" } });
    expect(r.status).toBe(200);
  });
});

describe("the API key", () => {
  test("a server others can reach that asks them for no key says so at start; on loopback, or with a key, it does not", () => {
    // Before: nothing was said, whatever --host exposed (serve logs what this returns).
    const said = (o: { host: string; apiKey?: string }) =>
      keylessExposure(createState({ ...o, logError: () => {} }).config);
    expect(said({ host: "0.0.0.0" })).toBe(
      "listening beyond this machine without an API key: whoever reaches it can use its models, and pull, copy and delete them (--api-key or $MLX_API_KEY require one)",
    );
    expect(said({ host: "::" })).toBe(said({ host: "0.0.0.0" }));
    for (const o of [{ host: "0.0.0.0", apiKey: "k" }, { host: "127.0.0.1" }, { host: "::1" }, { host: "localhost" }])
      expect([o, said(o)]).toEqual([o, undefined]);
  });

  test("one given with a line end or spaces around it (MLX_API_KEY from a CRLF .env file) is the key without them, as clients' keys are read", async () => {
    const server = serve({ defaultModel: tinyModel(), apiKey: " k\r\n" });
    try {
      for (const headers of [{ Authorization: "Bearer k" }, { "x-api-key": "k" }] as Record<string, string>[]) {
        const r = await fetch(`${server.url}/v1/models`, { headers });
        expect([headers, r.status]).toEqual([headers, 200]);
      }
      expect((await fetch(`${server.url}/v1/models`, { headers: { Authorization: "Bearer x" } })).status).toBe(401);
      expect((await fetch(`${server.url}/v1/models`)).status).toBe(401);
    } finally {
      await server.stop();
    }
  });

  test("one of spaces alone locks every route but /health, never opens them", async () => {
    const server = serve({ defaultModel: tinyModel(), apiKey: "  " });
    try {
      for (const headers of [{}, { Authorization: "Bearer  " }, { "x-api-key": " " }] as Record<string, string>[]) {
        const r = await fetch(`${server.url}/v1/models`, { headers });
        expect([headers, r.status]).toEqual([headers, 401]);
      }
    } finally {
      await server.stop();
    }
  });
});

describe("sources a request names, written into the server's log", () => {
  let server: RunningServer;
  const logged: string[] = [];
  let hub: ReturnType<typeof Bun.serve>;
  const savedEnv = {
    MLX_HOME: process.env.MLX_HOME,
    HF_ENDPOINT: process.env.HF_ENDPOINT,
    MLX_PYPI_INDEX_URL: process.env.MLX_PYPI_INDEX_URL,
  };
  beforeAll(() => {
    // A scratch store: the pulls and aliases these requests would make touch nothing shared.
    process.env.MLX_HOME = join(root, "logged-home");
    // A real hub and package index on loopback that hold nothing: a pull the server makes fails there.
    hub = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("not found", { status: 404 }) });
    process.env.HF_ENDPOINT = `http://127.0.0.1:${hub.port}`;
    process.env.MLX_PYPI_INDEX_URL = `http://127.0.0.1:${hub.port}/simple`;
    const log = (line: unknown) => logged.push(String(line instanceof Error ? line.message : line));
    server = serve({ apiKey: "k", logInfo: log, logWarning: log, logError: log });
  });
  afterAll(async () => {
    await server.stop();
    hub.stop(true);
    for (const [name, value] of Object.entries(savedEnv))
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
  });

  test("are refused with a 400 when they hold a line end or a terminal escape, before any pull is logged", async () => {
    // Before: the pull ran and its log lines carried the client's text as it was, a forged line among them.
    const forged = "\n[warn] the operator's API key is 'guess'\u001b[8m";
    const auth = { Authorization: "Bearer k" };
    for (const model of [`hf:org/repo@main${forged}`, `hf:org/repo@v1\u001b[2J`, `pypi:pkg==1.0#model\u001b[2J.gguf`]) {
      const pulled = await post(`${server.url}/api/pull`, { model, stream: false }, auth);
      expect([model, pulled.status]).toEqual([model, 400]);
      const chat = await post(
        `${server.url}/v1/chat/completions`,
        { model, messages: [{ role: "user", content: "Hi" }] },
        auth,
      );
      expect([model, chat.status]).toEqual([model, 400]);
    }
    // Nor made into an alias (in models.toml), whose every request would pull the source as it is written.
    const created = await post(
      `${server.url}/api/create`,
      { model: "forged", from: `hf:org/repo@main${forged}` },
      auth,
    );
    expect([created.status, created.json.error]).toEqual([
      400,
      'invalid source: the revision "main\\n[warn] the operator\'s API key is \'guess\'\\u001b[8m" is not a branch, tag or commit (those have no spaces, control characters, "..", "@{" or any of ~^?*[\\)',
    ]);
    expect(existsSync(userAliasFile())).toBe(false);
    expect(logged).toEqual([]);
    // A hub's branch of a pull request is a revision still: its pull is made (and fails at this hub).
    const pr = await post(`${server.url}/api/pull`, { model: "hf:org/repo@refs/pr/1", stream: false }, auth);
    expect(pr.status).toBe(502);
  });
});
