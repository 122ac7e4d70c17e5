// Model management over HTTP with the `ollama` client against a real server: pull (streamed
// progress and stream: false) from a Hugging Face hub served on loopback, copy, delete (a
// loaded idle model is unloaded first, its memory given back); and llama.cpp's /tokenize,
// /detokenize, /apply-template.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama } from "ollama";
import OpenAI from "openai";
import { memoryFigures } from "../src/engine/device";
import type { RunningServer } from "../src/server/app";
import { modelUsers, releaseModel } from "../src/store/in-use";
import { manifestPath, readManifest } from "../src/store/manifest";
import { modelRequest, pullModel } from "../src/store/pull";
import { fusedModel } from "../src/store/derived";
import { blobPath } from "../src/store/paths";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { healthWhile, post, serve } from "./helpers/serve";
import { startHfHub, type TestServer } from "./helpers/store";
import { writeTinyModel } from "./helpers/tiny-model";

let server: RunningServer;
let ollama: Ollama;
let hub: { hub: TestServer; storage: TestServer };
let local: string;

// This file's store and hub, given back to the files after it (bun test runs them in one process).
const savedEnv = { MLX_HOME: process.env.MLX_HOME, HF_ENDPOINT: process.env.HF_ENDPOINT };

beforeAll(async () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-serve-models-"));
  process.env.MLX_HOME = join(root, "home");
  local = join(root, "tiny");
  writeTinyModel(local);
  const files = new Map(readdirSync(local).map((name) => [name, new Uint8Array(readFileSync(join(local, name)))]));
  hub = await startHfHub({ "org/tiny": { files } });
  process.env.HF_ENDPOINT = hub.hub.url;
  server = serve({ defaultModel: local });
  ollama = new Ollama({ host: server.url });
});

afterAll(async () => {
  await server.stop();
  await Promise.all([hub.hub.close(), hub.storage.close()]);
  for (const [name, value] of Object.entries(savedEnv)) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
});

/** The requests the hub has had, as "METHOD path". */
const hubPaths = () => hub.hub.requests.map((r) => `${r.method} ${r.path}`);

describe("Ollama model management", () => {
  test("pull streams progress up to success; a second pull finds it stored; stream: false", async () => {
    const statuses: string[] = [];
    let completed = 0;
    let total = 0;
    for await (const p of await ollama.pull({ model: "hf:org/tiny", stream: true })) {
      statuses.push(p.status);
      if (p.total) ({ completed, total } = p);
    }
    expect(statuses[0]).toBe("pulling manifest");
    expect(statuses).toContain("pulling org/tiny");
    expect(statuses.slice(-3)).toEqual(["verifying sha256 digest", "writing manifest", "success"]);
    expect(completed).toBe(total);
    expect(total).toBe(readManifest("org/tiny")!.totalBytes);
    // Stored: one look at the branch (an update would be pulled, as `ollama pull` does), no file.
    const asked = hub.hub.requests.length;
    expect((await ollama.pull({ model: "org/tiny", stream: false })).status).toBe("success");
    expect(hubPaths().slice(asked)).toEqual(["GET /api/models/org/tiny/revision/main"]);
    const tags = await ollama.list();
    expect(tags.models.map((m) => m.name)).toContain("org/tiny");
    // Stored for later, not held: `mlx rm` and eviction may take it while the server runs.
    expect(modelUsers("org/tiny")).toEqual([]);
  });

  test("pull takes a stored model or alias named with Ollama's default tag (m:latest), as show, copy and delete do", async () => {
    await ollama.pull({ model: "hf:org/tiny", stream: false });
    const asked = hub.hub.requests.length;
    expect((await ollama.pull({ model: "org/tiny:latest", stream: false })).status).toBe("success");
    expect(hubPaths().slice(asked)).toEqual(["GET /api/models/org/tiny/revision/main"]);
    const statuses: string[] = [];
    for await (const p of await ollama.pull({ model: "org/tiny:latest", stream: true })) statuses.push(p.status);
    expect(statuses).toContain("pulling org/tiny");
    expect(statuses.at(-1)).toBe("success");
    // Not stored and no alias: the hint names the repository without the tag.
    const unknown = await ollama.pull({ model: "org/other:latest", stream: false }).catch((e) => e);
    expect(unknown.status_code).toBe(400);
    expect(unknown.message).toEndWith("give hf:org/other");
  });

  test("pull of a model made here (mlx fuse, convert): it is there, or the command that makes it again; never a path on the server's disk", async () => {
    const adapter = join(local, "..", "tiny-adapter");
    writeRandomAdapter(adapter, { layers: lastLayers(2, 1, { "self_attn.q_proj": [64, 64] }) });
    await fusedModel(local, adapter, "tiny-fused");
    releaseModel("tiny-fused"); // made by this test process, not in use
    const downloads = hub.hub.requests.length;
    expect((await ollama.pull({ model: "tiny-fused", stream: false })).status).toBe("success");
    const statuses: string[] = [];
    for await (const p of await ollama.pull({ model: "tiny-fused", stream: true })) statuses.push(p.status);
    expect(statuses.at(-1)).toBe("success");
    expect(hub.hub.requests.length).toBe(downloads);
    expect(modelUsers("tiny-fused")).toEqual([]);

    const weights = readManifest("tiny-fused")!.files.find((f) => f.name.endsWith(".safetensors"))!;
    rmSync(blobPath(weights.sha256));
    const damaged = await ollama.pull({ model: "tiny-fused", stream: false }).catch((e) => e);
    expect(damaged.message).toContain("'tiny-fused' was made here, not pulled; run `mlx fuse ");
    expect(damaged.message).not.toContain(process.cwd());
    await ollama.delete({ model: "tiny-fused" });
  });

  test("copy and delete take a model by the source it was pulled from (hf:org/repo), as pull, show and mlx rm do", async () => {
    await ollama.pull({ model: "hf:org/tiny", stream: false });
    await ollama.copy({ source: "hf:org/tiny", destination: "copied-by-source" });
    expect(readManifest("copied-by-source")!.source).toBe("hf:org/tiny");
    await ollama.delete({ model: "hf:org/tiny" });
    expect(readManifest("org/tiny")).toBeUndefined();
    // A source is still no name to copy to.
    const refused = await ollama.copy({ source: "copied-by-source", destination: "hf:org/other" }).catch((e) => e);
    expect(refused.status_code).toBe(400);
    // Nor is a name Ollama would refuse ("destination is invalid"), which create refuses too: nothing is stored.
    for (const destination of ["my copy", "copy!", "-copy"]) {
      const invalid = await ollama.copy({ source: "copied-by-source", destination }).catch((e) => e);
      expect(invalid.status_code).toBe(400);
      expect(invalid.message).toBe(
        `cannot copy to '${destination}': use letters, digits and . _ - : / (starting with a letter or digit)`,
      );
      expect(readManifest(destination)).toBeUndefined();
    }
    await ollama.delete({ model: "copied-by-source" });
    await ollama.pull({ model: "hf:org/tiny", stream: false }); // as the tests after this one find it
  });

  test("a loaded stored model reads the same in /api/ps as in /api/tags: digest and details", async () => {
    await ollama.generate({ model: "org/tiny", prompt: "Hi", options: { num_predict: 1 } });
    const listed = (await ollama.list()).models.find((m) => m.name === "org/tiny")!;
    const running = (await ollama.ps()).models.find((m) => m.name === "org/tiny")!;
    expect(running.digest).toBe(listed.digest);
    expect(running.details).toEqual(listed.details);
    expect(listed.details.parameter_size).not.toBe("");
    await ollama.generate({ model: "org/tiny", prompt: "", keep_alive: 0 }); // unloaded again
  });

  test("a stored model loaded as 'name:latest' is listed once in /api/tags, and /api/ps reads it the same", async () => {
    await ollama.generate({ model: "org/tiny:latest", prompt: "Hi", options: { num_predict: 1 } });
    const tags = (await ollama.list()).models;
    expect(tags.filter((m) => m.name.startsWith("org/tiny")).map((m) => m.name)).toEqual(["org/tiny"]);
    const listed = tags.find((m) => m.name === "org/tiny")!;
    const running = (await ollama.ps()).models.find((m) => m.name === "org/tiny:latest")!;
    expect(running.digest).toBe(listed.digest);
    expect(running.details).toEqual(listed.details);
    await ollama.generate({ model: "org/tiny:latest", prompt: "", keep_alive: 0 });
  });

  test("a stored model loaded as 'name:latest' is listed once in /v1/models too, as 'name' with its context", async () => {
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    await ollama.generate({ model: "org/tiny:latest", prompt: "Hi", options: { num_predict: 1 } });
    const listed = (await openai.models.list()).data.filter((m) => m.id.startsWith("org/tiny"));
    const ps = (await (await fetch(`${server.url}/api/ps`)).json()) as { models: { context_length: number }[] };
    expect(listed.map((m) => [m.id, (m as { max_model_len?: number }).max_model_len])).toEqual([
      ["org/tiny", ps.models[0]!.context_length],
    ]);
    await ollama.generate({ model: "org/tiny:latest", prompt: "", keep_alive: 0 });
  });

  test("pull errors: a path on the server's disk is refused; a repo the hub lacks fails in the stream", async () => {
    await expect(ollama.pull({ model: local, stream: false })).rejects.toThrow("cannot pull");
    const statuses: string[] = [];
    const pulling = async () => {
      for await (const p of await ollama.pull({ model: "hf:org/missing", stream: true })) statuses.push(p.status);
    };
    await expect(pulling()).rejects.toThrow("pulling 'org/missing' failed");
    expect(statuses).toEqual(["pulling manifest"]);
  });

  test("copy shares the files; delete unloads an idle model first; unknown names are 404s", async () => {
    await ollama.copy({ source: "org/tiny", destination: "tiny-copy" });
    expect(readManifest("tiny-copy")!.files).toEqual(readManifest("org/tiny")!.files);
    // Loaded (and so in use by this process) until delete unloads it.
    const answer = await ollama.generate({ model: "tiny-copy", prompt: "Hi", options: { num_predict: 2 } });
    expect(answer.done).toBe(true);
    expect(server.state.models.find("tiny-copy")).toBeDefined();
    await ollama.delete({ model: "tiny-copy" });
    expect(server.state.models.find("tiny-copy")).toBeUndefined();
    // Its buffers went back to the system, not into MLX's cache.
    expect(memoryFigures().cache).toBe(0);
    expect(readManifest("tiny-copy")).toBeUndefined();
    expect(readManifest("org/tiny")).toBeDefined();
    await expect(ollama.delete({ model: "tiny-copy" })).rejects.toMatchObject({ status_code: 404 });
    await expect(ollama.copy({ source: "nothing", destination: "x" })).rejects.toMatchObject({ status_code: 404 });
  });

  test("a copy and its original (one model's files under two names) are loaded once, listed under each, and let go by both when unloaded", async () => {
    // Before, each name's files loaded apart: two copies of the weights, each taking one of --max-models.
    await ollama.pull({ model: "hf:org/tiny" });
    await ollama.copy({ source: "org/tiny", destination: "tiny-twin" });
    const loads: string[] = [];
    const two = serve({ maxLoadedModels: 2, onLoad: (name) => loads.push(name) });
    try {
      const client = new Ollama({ host: two.url });
      for (const model of ["org/tiny", "tiny-twin", "org/tiny"])
        expect((await client.generate({ model, prompt: "Hi", options: { num_predict: 1 } })).done).toBe(true);
      expect(loads).toEqual(["org/tiny"]);
      expect((await client.ps()).models.map((m) => m.name)).toEqual(["org/tiny", "tiny-twin"]);
      // Stopped by the copy's name (ollama stop tiny-twin), the one model unloads, and neither
      // name's files stay in use by this process (mlx rm and eviction may take them).
      await client.generate({ model: "tiny-twin", prompt: "", keep_alive: 0 });
      expect((await client.ps()).models).toEqual([]);
      expect(modelUsers("tiny-twin")).not.toContain(process.pid);
      // Deleting the copy leaves the original loaded: only its name goes.
      for (const model of ["org/tiny", "tiny-twin"]) await client.generate({ model, prompt: "" });
      await client.delete({ model: "tiny-twin" });
      expect((await client.ps()).models.map((m) => m.name)).toEqual(["org/tiny"]);
      expect(loads).toEqual(["org/tiny", "org/tiny"]);
    } finally {
      await two.stop();
      await ollama.delete({ model: "tiny-twin" }).catch(() => {});
    }
  });

  test("/v1/models/{id} finds a stored model named 'name:latest', as a chat completion takes it, under the id asked", async () => {
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const listed = (await openai.models.list()).data.find((m) => m.id === "org/tiny")!;
    expect(await openai.models.retrieve("org/tiny:latest")).toEqual({ ...listed, id: "org/tiny:latest" });
    const other = await openai.models.retrieve("org/tiny:v2").catch((e) => e);
    expect(other).toBeInstanceOf(OpenAI.NotFoundError);
  });

  test("copy and delete take Ollama's default tag (:latest): 'm:latest' is the model stored as 'm'", async () => {
    await ollama.copy({ source: "org/tiny:latest", destination: "tagged-copy:latest" });
    expect(readManifest("tagged-copy")).toBeDefined();
    await ollama.delete({ model: "tagged-copy:latest" });
    expect(readManifest("tagged-copy")).toBeUndefined();
    expect(readManifest("org/tiny")).toBeDefined();
  });

  test("copy refuses a name a request would not reach the copy by: an alias (built in or models.toml) or a source", async () => {
    // Requests for an alias go to the model it names, which a copy under its name would replace.
    for (const destination of ["smollm2", "smollm2:latest", "hf:org/other", "pypi:other"]) {
      const error = await ollama.copy({ source: "org/tiny", destination }).catch((e) => e);
      expect(error.status_code).toBe(400);
      expect(error.message).toContain(destination.replace(":latest", ""));
    }
    expect(readManifest("smollm2")).toBeUndefined();
    expect(readManifest("hf:org/other")).toBeUndefined();
  });

  test("copy refuses a path on the server's disk: a request naming it would load the path, never the copy", async () => {
    await ollama.pull({ model: "hf:org/tiny", stream: false });
    for (const destination of [local, join(local, "config.json"), `${local}:latest`]) {
      const error = await ollama.copy({ source: "org/tiny", destination }).catch((e) => e);
      expect(error.status_code).toBe(400);
      expect(error.message).toContain("loads the path on the server's disk");
      expect(readManifest(destination.replace(":latest", ""))).toBeUndefined();
    }
    // One that is no path there is no model name either (it starts with '/'), as Ollama and create take names.
    const notThere = await ollama.copy({ source: "org/tiny", destination: join(local, "not-there") }).catch((e) => e);
    expect(notThere.status_code).toBe(400);
    expect(notThere.message).toContain("use letters, digits and . _ - : / (starting with a letter or digit)");
    expect(readManifest(join(local, "not-there"))).toBeUndefined();
  });

  test("show describes a stored model without using it, and pulls nothing", async () => {
    await ollama.copy({ source: "org/tiny", destination: "shown-copy" });
    const lastUsed = readManifest("shown-copy")!.lastUsedAt;
    expect((await ollama.show({ model: "shown-copy:latest" })).details.format).toBe("mlx");
    expect((await ollama.show({ model: "hf:org/tiny" })).details.format).toBe("mlx");
    // Describing is not using: `mlx rm` may take it while the server runs, and its last use stays.
    expect(modelUsers("shown-copy")).toEqual([]);
    expect(readManifest("shown-copy")!.lastUsedAt).toBe(lastUsed);
    const downloads = hub.hub.requests.length;
    const missing = await ollama.show({ model: "hf:org/not-pulled" }).catch((e) => e);
    expect(missing.status_code).toBe(404);
    expect(missing.message).toContain("org/not-pulled");
    expect(hub.hub.requests.length).toBe(downloads);
    await ollama.delete({ model: "shown-copy" });
  });

  test("delete refuses a model answering requests (409) with why, and takes it once they end", async () => {
    await ollama.copy({ source: "org/tiny", destination: "busy-copy" });
    const lease = await server.state.models.acquire("busy-copy"); // as a request in flight holds it
    const refused = await ollama
      .delete({ model: "busy-copy" })
      .catch((e) => e)
      .finally(() => lease.release());
    expect(refused.status_code).toBe(409);
    // The process using it is this server: the client is told to wait, not to stop a process.
    expect(refused.message).toBe("'busy-copy' is answering requests on this server; delete it once they end");
    await ollama.delete({ model: "busy-copy" });
    expect(readManifest("busy-copy")).toBeUndefined();
  });

  test("copy over a model this server holds: unloaded first, so a request answers with the copy, not the weights replaced; a 409 while it answers", async () => {
    const other = join(local, "..", "other-tiny");
    writeTinyModel(other, { seed: 5 });
    await pullModel(modelRequest(other));
    await ollama.pull({ model: "hf:org/tiny", stream: false });
    const answer = async (model: string) =>
      (await ollama.generate({ model, prompt: "Hi", keep_alive: 0, options: { num_predict: 6, temperature: 0 } }))
        .response;
    const otherAnswer = await answer("other-tiny");
    expect(await answer("org/tiny")).not.toBe(otherAnswer); // else the check below could not fail

    await ollama.copy({ source: "org/tiny", destination: "replaced-copy" });
    await ollama.generate({ model: "replaced-copy", prompt: "Hi", keep_alive: -1, options: { num_predict: 1 } });
    const lease = await server.state.models.acquire("replaced-copy"); // as a request in flight holds it
    const refused = await ollama
      .copy({ source: "other-tiny", destination: "replaced-copy" })
      .catch((e) => e)
      .finally(() => lease.release());
    expect(refused.status_code).toBe(409);
    expect(refused.message).toBe("'replaced-copy' is answering requests on this server; copy over it once they end");
    expect(readManifest("replaced-copy")!.source).toBe("hf:org/tiny");

    await ollama.copy({ source: "other-tiny", destination: "replaced-copy" });
    expect(server.state.models.find("replaced-copy")).toBeUndefined();
    expect(modelUsers("replaced-copy")).toEqual([]);
    expect(await answer("replaced-copy")).toBe(otherAnswer);
    await ollama.delete({ model: "replaced-copy" });
    await ollama.delete({ model: "other-tiny" });
  });

  test("delete takes a model this server used and has unloaded since (its own in-use mark does not hold it)", async () => {
    await ollama.copy({ source: "org/tiny", destination: "used-copy" });
    await ollama.generate({ model: "used-copy", prompt: "Hi", keep_alive: 0, options: { num_predict: 1 } });
    expect(server.state.models.find("used-copy")).toBeUndefined(); // unloaded after the answer
    // Unloaded, it is no longer this server's in use: another process's `mlx rm` or eviction may take it.
    expect(modelUsers("used-copy")).toEqual([]);
    await ollama.delete({ model: "used-copy" });
    expect(readManifest("used-copy")).toBeUndefined();
  });

  test("a stored model whose files were damaged on disk fails to load with the commands that repair it, as mlx run says", async () => {
    const dir = join(local, "..", "tiny-damaged");
    writeTinyModel(dir, { seed: 11 });
    // A config.json of its own: the tiny models' is the same blob, which the other tests' models share.
    const ownConfig = { ...JSON.parse(readFileSync(join(dir, "config.json"), "utf8")), damaged_here: true };
    writeFileSync(join(dir, "config.json"), JSON.stringify(ownConfig));
    await pullModel(modelRequest(dir));
    releaseModel("tiny-damaged");
    // Its config.json overwritten in place (same size, so the cheap size check passes).
    const config = readManifest("tiny-damaged")!.files.find((f) => f.name === "config.json")!;
    writeFileSync(blobPath(config.sha256), "#".repeat(config.size));
    const r = await post(`${server.url}/v1/chat/completions`, {
      model: "tiny-damaged",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 1,
    });
    expect(r.status).toBe(500);
    expect(r.json.error.code).toBe("model_load_failed");
    expect(r.json.error.message).toContain(
      "stored model 'tiny-damaged' may be damaged: run `mlx verify`, then run `mlx pull tiny-damaged`",
    );
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });
});

describe("OpenAI /v1/models", () => {
  test("a stored model's 'created' is when it was stored, the same loaded or not, in the list and alone", async () => {
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    await ollama.pull({ model: "hf:org/tiny", stream: false });
    const stored = await openai.models.retrieve("org/tiny");
    expect(stored).toMatchObject({ id: "org/tiny", object: "model", owned_by: "mlx" });
    expect(stored.created).toBeGreaterThan(0);
    expect(stored.created).toBeLessThanOrEqual(Date.now() / 1000);
    // Loaded a second later at least, so that a load time would read differently.
    await Bun.sleep(1100);
    await ollama.generate({ model: "org/tiny", prompt: "Hi", options: { num_predict: 1 } });
    expect(server.state.models.loaded.map((e) => e.name)).toContain("org/tiny");
    expect((await openai.models.retrieve("org/tiny")).created).toBe(stored.created);
    const listed = (await openai.models.list()).data.find((m) => m.id === "org/tiny")!;
    expect(listed.created).toBe(stored.created);
    // Loaded, it also gives its context length (vLLM's field), which only its config tells.
    const context = server.state.models.find("org/tiny")!.lm.config.maxPositionEmbeddings;
    expect(listed).toMatchObject({ max_model_len: context });
    expect(stored).not.toHaveProperty("max_model_len");
    await ollama.generate({ model: "org/tiny", prompt: "", keep_alive: 0 }); // unloaded again
  });
});

/**
 * The fewest /health answers while megabytes are worked through a part at a time (counted, not
 * timed: a loaded machine stretches every wait). Done in one go, the loop gets a turn or two.
 */
const ANSWERED_MEANWHILE = 8;

describe("llama.cpp utilities", () => {
  test("tokenize (with pieces), detokenize back, apply-template as a generation renders it", async () => {
    const ids = (await post(`${server.url}/tokenize`, { content: "Hello world" })).json.tokens as number[];
    expect(ids.length).toBeGreaterThan(1);
    const pieces = (await post(`${server.url}/tokenize`, { content: "Hello world", with_pieces: true })).json.tokens;
    expect(pieces.map((p: { id: number }) => p.id)).toEqual(ids);
    expect(pieces.map((p: { piece: string }) => p.piece).join("")).toBe("Hello world");
    expect((await post(`${server.url}/detokenize`, { tokens: ids })).json.content).toBe("Hello world");
    // As llama.cpp: a piece that is part of a character comes as its bytes, so the pieces still add up.
    const split = (await post(`${server.url}/tokenize`, { content: " 日本", with_pieces: true })).json.tokens;
    expect(split.map((p: { piece: unknown }) => p.piece)).toEqual([[32, 230], [151], [165], "本"]);
    const messages = [{ role: "user", content: "Hi" }];
    const { prompt } = (await post(`${server.url}/apply-template`, { messages })).json;
    expect(prompt).toContain("<|im_start|>user\nHi<|im_end|>");
    // The prompt it shows is the one a chat completion reads.
    const promptIds = (await post(`${server.url}/tokenize`, { content: prompt })).json.tokens;
    const chat = await post(`${server.url}/v1/chat/completions`, { messages, max_tokens: 1 });
    expect(chat.json.usage.prompt_tokens).toBe(promptIds.length);
    // Text parts go a line apart, as vLLM joins them (glued, "Hi" and "there" ran into "Hithere").
    const parts = [
      { type: "text", text: "Hi" },
      { type: "text", text: "there" },
    ];
    const rendered = (await post(`${server.url}/apply-template`, { messages: [{ role: "user", content: parts }] }))
      .json;
    expect(rendered.prompt).toContain("<|im_start|>user\nHi\nthere<|im_end|>");
  });

  test("vLLM's shapes: /tokenize of a prompt or a chat's messages (count, max_model_len, token_strs), /detokenize's prompt", async () => {
    // They were a 400 ('prompt' and 'messages' unknown), though vLLM's clients send them to the same paths.
    const text = "Hi 日本 👍";
    const { status, json } = await post(`${server.url}/tokenize`, { prompt: text, return_token_strs: true });
    expect(status).toBe(200);
    const llama = (await post(`${server.url}/tokenize`, { content: text, add_special: true })).json.tokens;
    const listed = (await fetch(`${server.url}/v1/models/${encodeURIComponent(local)}`)).json();
    const served = ((await listed) as { max_model_len: number }).max_model_len;
    expect(json).toMatchObject({ count: llama.length, max_model_len: served, tokens: llama });
    // Each token's string in the vocabulary, as vLLM's convert_ids_to_tokens gives them: byte-level
    // pieces of a character and all.
    expect(json.token_strs).toHaveLength(llama.length);
    expect(json.token_strs).toContain("Ġæ");
    const plain = (await post(`${server.url}/tokenize`, { prompt: text, add_special_tokens: false })).json;
    expect(plain.tokens).toEqual((await post(`${server.url}/tokenize`, { content: text })).json.tokens);
    expect(plain.token_strs).toBeNull();
    const back = (await post(`${server.url}/detokenize`, { tokens: plain.tokens })).json;
    expect(back).toEqual({ content: text, prompt: text });
    // A chat's tokens are those its chat completion reads (continue_final_message too).
    const messages = [{ role: "user", content: text }];
    const chat = (await post(`${server.url}/tokenize`, { messages })).json;
    const completion = await post(`${server.url}/v1/chat/completions`, { messages, max_tokens: 1 });
    expect(chat.count).toBe(completion.json.usage.prompt_tokens);
    const { prompt } = (await post(`${server.url}/apply-template`, { messages })).json;
    expect(chat.tokens).toEqual((await post(`${server.url}/tokenize`, { content: prompt })).json.tokens);
    const started = [...messages, { role: "assistant", content: "Sure" }];
    const continued = { messages: started, continue_final_message: true, add_generation_prompt: false };
    const goesOn = await post(`${server.url}/v1/chat/completions`, { ...continued, max_tokens: 1 });
    expect((await post(`${server.url}/tokenize`, continued)).json.count).toBe(goesOn.json.usage.prompt_tokens);
    // What either shape does not take is a 400 naming it.
    const refused = async (body: object) => {
      const r = await post(`${server.url}/tokenize`, body);
      return [r.status, r.json.error.param];
    };
    expect(await refused({ prompt: text, with_pieces: true })).toEqual([400, "with_pieces"]);
    expect(await refused({ messages, add_special_tokens: true })).toEqual([400, "add_special_tokens"]);
    expect(await refused({ messages, stream: true })).toEqual([400, "stream"]);
  });

  test("a text of megabytes is tokenized (and its pieces written) a part at a time: the server answers meanwhile, the ids those of the text in one go", async () => {
    const unit = "Héllo wörld, 12345 times!\n\n  indented\tcode() {x = 3.14;}  <|im_start|>user 日本 😀 don't ";
    const content = unit.repeat(Math.ceil(3_000_000 / unit.length));
    await post(`${server.url}/tokenize`, { content: "warm" }); // the default model loaded
    const tokenizer = server.state.models.loaded[0]!.lm.tokenizer;
    const tokenized = post(`${server.url}/tokenize`, { content, with_pieces: true });
    const { answers } = await healthWhile(server.url, tokenized);
    const { status, json } = await tokenized;
    expect(status).toBe(200);
    expect(json.tokens.map((t: { id: number }) => t.id)).toEqual(tokenizer.encode(content));
    expect(
      json.tokens
        .slice(0, 3)
        .map((t: { piece: string }) => t.piece)
        .join(""),
    ).toBe("Héllo");
    expect(answers).toBeGreaterThanOrEqual(ANSWERED_MEANWHILE);
  });

  test("two million ids are detokenized a part at a time: the server answers meanwhile, the text that of the ids in one go", async () => {
    const big = serve({ defaultModel: local, maxBodyBytes: 16 * 1024 * 1024 });
    try {
      await post(`${big.url}/tokenize`, { content: "warm" }); // the default model loaded
      const tokenizer = big.state.models.loaded[0]!.lm.tokenizer;
      const tokens = tokenizer.encode("Héllo wörld, 12345 times! 日本 😀 don't\n".repeat(120_000));
      expect(tokens.length).toBeGreaterThan(2_000_000);
      const detokenized = post(`${big.url}/detokenize`, { tokens });
      const { answers } = await healthWhile(big.url, detokenized);
      const { status, json } = await detokenized;
      expect(status).toBe(200);
      expect(json.content).toBe(tokenizer.decode(tokens));
      expect(answers).toBeGreaterThanOrEqual(ANSWERED_MEANWHILE);
    } finally {
      await big.stop();
    }
  });

  test("bad requests are 400s naming the field", async () => {
    const cases: [string, unknown, string][] = [
      ["/tokenize", {}, "content"],
      ["/tokenize", { content: "x", parse_special: false }, "parse_special"],
      ["/detokenize", { tokens: [1, -2] }, "tokens.1"],
      ["/detokenize", { tokens: [1, 10_000_000] }, "tokens.1"],
      ["/apply-template", { messages: [{ role: "user", content: "x" }], temperature: 1 }, "temperature"],
    ];
    for (const [path, body, param] of cases) {
      const r = await post(`${server.url}${path}`, body);
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe(param);
    }
  });
});

describe("models.toml settings", () => {
  test("aliases of one model with other settings are listed, and loaded apart, each with its own", async () => {
    const aliases = join(process.env.MLX_HOME!, "models.toml");
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(
      aliases,
      `[models.windowed]\nsource = "${local}"\nmax_kv_size = 8\n\n[models.whole]\nsource = "${local}"\n\n[models.gone]\nsource = "${local}-gone"\n`,
    );
    const two = serve({ maxLoadedModels: 2 });
    try {
      // Listed (the chat page's picker reads this list) while their weights are here; not one whose path is gone.
      const listed = ((await (await fetch(`${two.url}/v1/models`)).json()) as { data: { id: string }[] }).data;
      expect(listed.map((m) => m.id)).toEqual(expect.arrayContaining(["windowed", "whole"]));
      expect(listed.map((m) => m.id)).not.toContain("gone");
      for (const model of ["windowed", "whole"])
        expect((await post(`${two.url}/v1/completions`, { model, prompt: "Hi", max_tokens: 2 })).status).toBe(200);
      const maxKvSizes = Object.fromEntries(two.state.models.loaded.map((e) => [e.name, e.lm.maxKvSize ?? null]));
      expect(maxKvSizes).toEqual({ windowed: 8, whole: null });
    } finally {
      await two.stop();
      rmSync(aliases);
    }
  });

  test("aliases of one model with the same load settings share it, and /api/ps and /v1/models list it under each name asked, as /api/tags does", async () => {
    // Before, /api/ps listed only the first name (with its num_ctx), /api/tags listed that one as a
    // plain loaded model (no parent, another digest) and the other as an alias.
    const aliases = join(process.env.MLX_HOME!, "models.toml");
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(
      aliases,
      `[models.mario]\nsource = "${local}"\nnum_ctx = 64\n\n[models.luigi]\nsource = "${local}"\nnum_ctx = 128\n`,
    );
    const one = serve({});
    try {
      const client = new Ollama({ host: one.url });
      for (const model of ["mario", "luigi"])
        await client.generate({ model, prompt: "Hi", options: { num_predict: 1 } });
      expect(one.state.models.loaded).toHaveLength(1); // one copy of the weights
      // (The ollama client's types leave out context_length.)
      const running = (
        (await (await fetch(`${one.url}/api/ps`)).json()) as {
          models: { name: string; context_length: number; digest: string; details: unknown }[];
        }
      ).models;
      expect(running.map((m) => [m.name, m.context_length])).toEqual([
        ["mario", 64],
        ["luigi", 128],
      ]);
      const tags = (await client.list()).models;
      // As an Ollama client names it ("m:latest" is "m"), it reads as /api/tags lists "m".
      await client.generate({ model: "luigi:latest", prompt: "Hi", options: { num_predict: 1 } });
      const tagged = ((await client.ps()).models as { name: string; digest: string; details: unknown }[]).at(-1)!;
      expect(tagged.name).toBe("luigi:latest");
      expect((await client.list()).models.filter((m) => m.name.startsWith("luigi")).map((m) => m.name)).toEqual([
        "luigi",
      ]);
      for (const m of [...running, { ...tagged, name: "luigi" }]) {
        const listed = tags.find((t) => t.name === m.name)!;
        expect([m.digest, m.details]).toEqual([listed.digest, listed.details]);
        expect(listed.details.parent_model).toBe(local);
      }
      const v1 = (
        (await (await fetch(`${one.url}/v1/models`)).json()) as { data: { id: string; max_model_len?: number }[] }
      ).data;
      expect(v1.filter((m) => m.id === "mario" || m.id === "luigi").map((m) => [m.id, m.max_model_len])).toEqual([
        ["mario", 64],
        ["luigi", 128],
      ]);
      // Stopped by either name (ollama stop luigi), the shared model unloads.
      await client.generate({ model: "luigi", prompt: "", keep_alive: 0 });
      expect((await client.ps()).models).toEqual([]);
    } finally {
      await one.stop();
      rmSync(aliases);
    }
  });

  test("an alias whose source is changed while its model is loaded answers with the new source's model, as Ollama reloads a model replaced", async () => {
    const other = join(local, "..", "tiny-other");
    writeTinyModel(other, { seed: 5 });
    const aliases = join(process.env.MLX_HOME!, "models.toml");
    mkdirSync(process.env.MLX_HOME!, { recursive: true });
    writeFileSync(aliases, `[models.moving]\nsource = "${local}"\n`);
    try {
      expect(
        (await post(`${server.url}/v1/completions`, { model: "moving", prompt: "Hi", max_tokens: 1 })).status,
      ).toBe(200);
      expect(server.state.models.find("moving")?.path).toBe(local);
      writeFileSync(aliases, `[models.moving]\nsource = "${other}"\n`);
      expect(
        (await post(`${server.url}/v1/completions`, { model: "moving", prompt: "Hi", max_tokens: 1 })).status,
      ).toBe(200);
      expect(server.state.models.find("moving")?.path).toBe(other);
      // A loaded stored model whose manifest was damaged meanwhile still answers (nothing pulled again).
      await ollama.pull({ model: "hf:org/tiny", stream: false });
      expect(
        (await post(`${server.url}/v1/completions`, { model: "org/tiny", prompt: "Hi", max_tokens: 1 })).status,
      ).toBe(200);
      const manifest = readFileSync(manifestPath("org/tiny"), "utf8");
      const downloads = hub.hub.requests.length;
      writeFileSync(manifestPath("org/tiny"), manifest.slice(0, 20));
      try {
        expect(
          (await post(`${server.url}/v1/completions`, { model: "org/tiny", prompt: "Hi", max_tokens: 1 })).status,
        ).toBe(200);
        expect(hub.hub.requests.length).toBe(downloads);
      } finally {
        writeFileSync(manifestPath("org/tiny"), manifest);
      }
    } finally {
      rmSync(aliases);
      for (const entry of server.state.models.loaded) if (entry.path === other) server.state.models.unload(entry);
    }
  });
});
