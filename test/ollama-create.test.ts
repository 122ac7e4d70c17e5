// Ollama's create (POST /api/create, as the official `ollama` client sends it): a model made from
// a stored model, an alias or a path, with a system prompt, turns, sampling parameters, an
// adapter and a license, written as an alias into the user's models.toml (its other entries
// and comments kept), listed, answering with its system prompt, and removed by /api/delete.
// What it cannot make is a 4xx in Ollama's shape with nothing written. A real server on loopback
// over a temporary MLX_HOME holding a tiny random-weight model.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama, type ProgressResponse } from "ollama";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { post, serve } from "./helpers/serve";
import { tinyDims, writeTinyModel } from "./helpers/tiny-model";

const savedHome = process.env.MLX_HOME;
const SYSTEM = 'You are a pirate.\nAnswer in "rhymes".';
const HAND_WRITTEN =
  `# My own models (a comment create keeps)\n\n[models.mine]\nsource = "tiny" # stored\ntemperature = 0.3\n\n` +
  `[models.far]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "tiny"\n`;
let server: RunningServer;
let ollama: Ollama;
let root: string;
let home: string;
let tiny: string;
let file: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "mlx-create-"));
  home = join(root, "home");
  process.env.MLX_HOME = home;
  tiny = join(root, "tiny");
  writeTinyModel(tiny, { contextLength: 512 });
  // Stored as the model "tiny", as `mlx pull <dir>` stores a local model.
  const pulled = await cliRunner(home)(["pull", tiny]);
  expect(pulled.stderr).toBe(pulled.code === 0 ? pulled.stderr : "");
  expect(pulled.code).toBe(0);
  mkdirSync(home, { recursive: true });
  file = join(home, "models.toml");
  writeFileSync(file, HAND_WRITTEN);
  server = serve({});
  ollama = new Ollama({ host: server.url });
}, 60_000);

afterAll(() => {
  server.stop();
  if (savedHome === undefined) delete process.env.MLX_HOME;
  else process.env.MLX_HOME = savedHome;
});

const once = { num_predict: 1, temperature: 0 };
const user = { role: "user", content: "Where is the treasure?" };
const turns = [
  { role: "user", content: "Ahoy?" },
  { role: "assistant", content: "Arr!" },
];

async function promptTokens(model: string, messages: object[]): Promise<number> {
  return (await ollama.chat({ model, messages: messages as any, stream: false, options: once })).prompt_eval_count;
}

/** Every line of a streamed create. */
async function created(request: Parameters<typeof ollama.create>[0]): Promise<ProgressResponse[]> {
  const lines: ProgressResponse[] = [];
  for await (const line of await ollama.create({ ...request, stream: true })) lines.push(line);
  return lines;
}

describe("POST /api/create", () => {
  test("makes a model from a stored one: listed, shown, answering with its system prompt and turns", async () => {
    const lines = await created({
      model: "pirate",
      from: "tiny",
      system: SYSTEM,
      messages: turns,
      parameters: { temperature: 0.5, top_k: 7, repeat_penalty: 1.1 },
      license: "MIT",
    });
    expect(lines.at(-1)).toEqual({ status: "success" } as ProgressResponse);
    expect(lines.length).toBeGreaterThan(1);
    // The user's file keeps what it held, comments included, with the new entry after it.
    const text = readFileSync(file, "utf8");
    expect(text.startsWith(HAND_WRITTEN)).toBe(true);
    expect(text).toContain('[models.pirate]\nsource = "tiny"\n');

    const listed = (await ollama.list()).models.find((m) => m.name === "pirate");
    expect(listed?.details.parent_model).toBe("tiny");
    const models = (await fetch(`${server.url}/v1/models`).then((r) => r.json())) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toContain("pirate");

    const shown = await ollama.show({ model: "pirate" });
    expect(shown.system).toBe(SYSTEM);
    expect(shown.license).toBe("MIT");
    expect(shown.parameters).toMatch(/^temperature +0\.5$/m);
    expect(shown.parameters).toMatch(/^top_k +7$/m);
    expect(shown.parameters).toMatch(/^repeat_penalty +1\.1$/m);

    const expected = await promptTokens(tiny, [{ role: "system", content: SYSTEM }, ...turns, user]);
    expect(await promptTokens("pirate", [user])).toBe(expected);
    expect(await promptTokens("pirate:latest", [user])).toBe(expected);
  });

  test("stream: false answers one success; creating it again replaces it; one made from it inherits", async () => {
    const r = await post(`${server.url}/api/create`, { model: "parrot", from: tiny, system: "Squawk.", stream: false });
    expect(r).toMatchObject({ status: 200, json: { status: "success" } });
    expect(readFileSync(file, "utf8")).toContain(`[models.parrot]\nsource = ${JSON.stringify(tiny)}\n`);
    // (The official client refuses a local path as `from` itself: sent as other clients send it.)
    await post(`${server.url}/api/create`, { model: "parrot", from: tiny, system: "Polly." });
    const text = readFileSync(file, "utf8");
    expect(text.match(/\[models\.parrot\]/g)).toHaveLength(1);
    expect(text).not.toContain("Squawk.");
    await ollama.create({ model: "chick", from: "parrot:latest", parameters: { top_p: 0.9 } });
    const shown = await ollama.show({ model: "chick" });
    expect(shown.system).toBe("Polly.");
    expect(await promptTokens("chick", [user])).toBe(
      await promptTokens(tiny, [{ role: "system", content: "Polly." }, user]),
    );
  });

  test("an adapter's directory is the model's adapter", async () => {
    const { hidden, heads, headDim } = tinyDims;
    const adapter = join(root, "adapter");
    writeRandomAdapter(adapter, { layers: lastLayers(2, 2, { "self_attn.q_proj": [hidden, heads * headDim] }) });
    await ollama.create({ model: "tuned", from: "tiny", adapters: { "adapters.safetensors": adapter } });
    expect((await ollama.show({ model: "tuned" })).modelfile).toContain(`ADAPTER ${adapter}\n`);
    expect(await promptTokens("tuned", [user])).toBeGreaterThan(0);
  });

  test("what it cannot make is a 4xx in Ollama's shape, and nothing is written", async () => {
    const before = readFileSync(file, "utf8");
    const refused = async (body: object, status: number, message: RegExp) => {
      const r = await post(`${server.url}/api/create`, { model: "bad", from: "tiny", ...body });
      expect(r.status).toBe(status);
      expect(r.json.error).toMatch(message);
      expect(readFileSync(file, "utf8")).toBe(before);
    };
    await refused({ from: "nothing-here" }, 404, /model 'nothing-here' not found/);
    await refused({ from: undefined }, 400, /'from' is required/);
    await refused({ parameters: { temprature: 1 } }, 400, /unknown parameter 'temprature'/);
    await refused({ parameters: { seed: 1 } }, 400, /parameter 'seed' is not kept with a model here/);
    await refused({ parameters: { top_p: 2 } }, 400, /parameter 'top_p' must be a number in \(0, 1\]/);
    await refused({ template: "{{ .Prompt }}" }, 400, /'template' is a Go template/);
    await refused({ quantize: "q4_K_M" }, 400, /'quantize' is not supported/);
    await refused({ files: { "model.gguf": `sha256:${"0".repeat(64)}` } }, 400, /'files' names blobs/);
    await refused({ adapters: { "a.gguf": `sha256:${"0".repeat(64)}` } }, 400, /uploaded blob/);
    await refused({ adapters: { a: join(root, "no-such-adapter") } }, 400, /is not a directory/);
    await refused({ messages: [{ role: "system", content: "x" }] }, 400, /must be "user" or "assistant"/);
    await refused({ model: "tiny", from: "pirate" }, 400, /'tiny' is a stored model/);
    await refused({ model: "smollm2" }, 400, /'smollm2' is an alias models.toml ships/);
    await refused({ model: "loop", from: "loop" }, 400, /cannot be made from itself/);
    await refused({ model: 'a "quoted" name' }, 400, /is not a model name/);
    // An adapter on a model whose source has one: the aliases it would make do not load.
    await refused({ from: "tuned", adapters: { a: join(root, "adapter") } }, 400, /both have an adapter/);
    // The official client's errors carry the message.
    await expect(ollama.create({ model: "bad", from: "nothing-here" })).rejects.toThrow(/not found/);
  });

  test("a server that takes no paths from requests makes no model from one, nor with an adapter's", async () => {
    const closed = serve({ requestPaths: false });
    try {
      const before = readFileSync(file, "utf8");
      const fromPath = await post(`${closed.url}/api/create`, { model: "sneaky", from: tiny });
      expect(fromPath.status).toBe(404);
      const adapter = await post(`${closed.url}/api/create`, {
        model: "sneaky",
        from: "tiny",
        adapters: { a: join(root, "adapter") },
      });
      expect(adapter.status).toBe(400);
      expect(adapter.json.error).toContain("takes no paths");
      expect(readFileSync(file, "utf8")).toBe(before);
      // A stored model by its name it does make from.
      expect((await post(`${closed.url}/api/create`, { model: "sneaky", from: "tiny", stream: false })).status).toBe(
        200,
      );
    } finally {
      closed.stop();
    }
  });

  test("/api/copy of a made model copies its entry", async () => {
    await ollama.copy({ source: "pirate:latest", destination: "corsair" });
    const shown = await ollama.show({ model: "corsair" });
    expect(shown.system).toBe(SYSTEM);
    expect(shown.parameters).toMatch(/^top_k +7$/m);
    expect(await promptTokens("corsair", [user])).toBe(await promptTokens("pirate", [user]));
    // Not over a stored model.
    await expect(ollama.copy({ source: "pirate", destination: "tiny" })).rejects.toThrow(/'tiny' is a stored model/);
  });

  test("/api/delete of a made model removes its entry alone", async () => {
    await ollama.create({ model: "doomed", from: "tiny", system: "Bye." });
    await ollama.delete({ model: "doomed:latest" });
    const text = readFileSync(file, "utf8");
    expect(text).not.toContain("doomed");
    expect(text.startsWith(HAND_WRITTEN)).toBe(true);
    expect(text).toContain("[models.pirate]");
    const names = (await ollama.list()).models.map((m) => m.name);
    expect(names).toContain("tiny");
    expect(names).not.toContain("doomed");
    await expect(ollama.show({ model: "doomed" })).rejects.toThrow();
    // A remote provider's entry is the operator's configuration, not a model made here: it stays.
    expect((await fetch(`${server.url}/api/delete`, { method: "DELETE", body: '{"model": "far"}' })).status).toBe(404);
    expect(readFileSync(file, "utf8")).toContain("[models.far]");
    // One another is made from stays: that one would name nothing.
    const before = readFileSync(file, "utf8");
    const r = await fetch(`${server.url}/api/delete`, { method: "DELETE", body: JSON.stringify({ model: "parrot" }) });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: string }).error).toContain("'chick' is made from 'parrot'");
    expect(readFileSync(file, "utf8")).toBe(before);
  });
});
