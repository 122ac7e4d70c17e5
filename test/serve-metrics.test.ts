// `mlx serve`'s /metrics and /stats as a monitoring system reads them: counters that never go
// down while the server runs (a model unloaded and loaded again included), requests waiting for
// their model, the peak memory after an unload, and the adaptive tuner's limits as it moves them
// under a light load and under a full batch, and MLX's buffer cache given back once the server idles.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama } from "ollama";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { loadModelAsync } from "../src/models/load";
import { eventually, longStream, post, serve, startServe, tinyModel } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

let server: RunningServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

/** The value of one sample of /metrics (0 when the series is absent). */
async function sample(url: string, series: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

/** A completion of exactly `tokens` tokens (the tiny model's end token does not stop it). */
async function complete(url: string, model: string, prompt: string, tokens: number): Promise<void> {
  const r = await post(`${url}/v1/completions`, { model, prompt, max_tokens: tokens, ignore_eos: true });
  expect(r.json.usage.completion_tokens).toBe(tokens);
}

async function modelStats(url: string): Promise<any> {
  const stats: any = await (await fetch(`${url}/stats`)).json();
  return stats.models[0];
}

describe("per-model counters", () => {
  test("go on from where they were when the model is unloaded (keep_alive 0) and loaded again", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model });
    const { url } = server;
    const ollama = new Ollama({ host: url });
    const hits = `mlx_prefix_cache_hits_total{model="${model}"}`;
    const hitTokens = `mlx_prefix_cache_hit_tokens_total{model="${model}"}`;
    const misses = `mlx_prefix_cache_misses_total{model="${model}"}`;
    // The same prompt twice: the second starts from the first's cached prefix.
    const ask = (keepAlive?: number) =>
      ollama.generate({ model, prompt: "Tell me about the sea", options: { num_predict: 2 }, keep_alive: keepAlive });
    await ask();
    await ask(0);
    await eventually(async () => (await sample(url, "mlx_models_loaded")) === 0);
    const before = {
      hits: await sample(url, hits),
      hitTokens: await sample(url, hitTokens),
      misses: await sample(url, misses),
    };
    expect(before.hits).toBeGreaterThan(0);
    expect(before.hitTokens).toBeGreaterThan(0);
    // The first request's miss: /metrics had the hits, not the misses to set them against (/stats had both).
    expect(before.misses).toBe(1);

    await ask(); // loads the model again, with an empty prefix cache: a miss
    expect(await sample(url, "mlx_models_loaded")).toBe(1);
    expect(await sample(url, hits)).toBe(before.hits);
    expect(await sample(url, hitTokens)).toBe(before.hitTokens);
    expect(await sample(url, misses)).toBe(before.misses + 1);
    await ask(); // and a hit, counted on top
    expect(await sample(url, hits)).toBe(before.hits + 1);
    expect(await sample(url, misses)).toBe(before.misses + 1);
  });
});

describe("token counters", () => {
  test("match the usage an OpenAI client gets, a prompt with n choices counted once", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model });
    const { url } = server;
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
    const counters = async () => ({
      prompt: await sample(url, "mlx_prompt_tokens_total"),
      completion: await sample(url, "mlx_generation_tokens_total"),
    });
    for (const n of [1, 3]) {
      const before = await counters();
      const answer = await client.completions.create({ model, prompt: ["Once upon", "The sea is"], max_tokens: 4, n });
      const after = await counters();
      expect({ n, prompt: after.prompt - before.prompt, completion: after.completion - before.completion }).toEqual({
        n,
        prompt: answer.usage!.prompt_tokens,
        completion: answer.usage!.completion_tokens,
      });
    }
    const before = await counters();
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Tell me about the sea" }],
      max_tokens: 4,
      n: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) usage ??= chunk.usage ?? undefined;
    const after = await counters();
    expect(after.prompt - before.prompt).toBe(usage!.prompt_tokens);
    expect(after.completion - before.completion).toBe(usage!.completion_tokens);
  });
});

describe("prompt tokens processed", () => {
  test("count an embedding request's inputs, as the usage its client gets says", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model });
    const { url } = server;
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
    const before = await sample(url, "mlx_prompt_tokens_total");
    const answer = await client.embeddings.create({ model, input: ["Tell me about the sea", "Once upon a time"] });
    const ollama = await new Ollama({ host: url }).embed({ model, input: "The sea is" });
    expect(answer.usage.prompt_tokens).toBeGreaterThan(0);
    expect((await sample(url, "mlx_prompt_tokens_total")) - before).toBe(
      answer.usage.prompt_tokens + ollama.prompt_eval_count,
    );
  });

  test("leave out a prompt whose client left while it waited for a batch slot: it was never read", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const model = join(root, "model");
    writeTinyModel(model, { contextLength: 8192 });
    server = serve({ defaultModel: model, maxBatch: 1 });
    const { url } = server;
    try {
      const { stop } = await longStream(url);
      const gone = new AbortController();
      const queued = fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: "word ".repeat(500), max_tokens: 2 }),
        signal: gone.signal,
      }).catch(() => "gone");
      await eventually(async () => (await sample(url, "mlx_requests_waiting")) === 1);
      gone.abort();
      expect(await queued).toBe("gone");
      stop.abort();
      const cancelled = `mlx_generations_total{route="/v1/completions",finish_reason="cancelled"}`;
      await eventually(async () => (await sample(url, cancelled)) === 2);
      // The long stream's few prompt tokens: the 500 words' were counted too.
      expect(await sample(url, "mlx_prompt_tokens_total")).toBeLessThan(20);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("queue depth", () => {
  test("a request waiting for its model, while another model is busy, shows as waiting for a model, in /metrics and /stats", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const [busy, next] = [join(root, "busy"), join(root, "next")];
    writeTinyModel(busy, { contextLength: 8192 });
    writeTinyModel(next);
    server = serve({ maxLoadedModels: 1 });
    const { url } = server;
    try {
      const { stop } = await longStream(url, busy);
      const waiting = post(`${url}/v1/completions`, { model: next, prompt: "Once", max_tokens: 2 });
      await eventually(async () => (await sample(url, "mlx_requests_waiting_for_model")) === 1);
      // /stats showed no request pending at all: it is in no model's queue yet.
      const queue = async () => ((await (await fetch(`${url}/stats`)).json()) as any).queue;
      expect(await queue()).toMatchObject({ running: 1, waiting: 0, waiting_for_model: 1 });
      stop.abort();
      expect((await waiting).status).toBe(200);
      expect(await sample(url, "mlx_requests_waiting_for_model")).toBe(0);
      expect(await queue()).toMatchObject({ running: 0, waiting: 0, waiting_for_model: 0 });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("the -m preload at start is no request waiting for its model; a request for it while it loads is one", async () => {
    // The preload waits, before reading its weights, until the test has seen it loading (a load
    // may take only a few turns of the event loop); the request then waits behind it.
    let seenLoading = () => {};
    const model = tinyModel();
    server = serve({
      defaultModel: model,
      loadModel: async (path) => (await new Promise<void>((go) => (seenLoading = go)), loadModelAsync(path)),
    });
    const { url } = server;
    const queue = async () => ((await (await fetch(`${url}/stats`)).json()) as any).queue;
    await eventually(async () => (await sample(url, `mlx_model_loading{model="${model}"}`)) === 1);
    expect(await sample(url, "mlx_requests_waiting_for_model")).toBe(0);
    expect(await queue()).toMatchObject({ waiting_for_model: 0 });
    const answer = post(`${url}/v1/completions`, { model, prompt: "Once", max_tokens: 1 });
    await eventually(async () => (await sample(url, "mlx_requests_waiting_for_model")) === 1);
    expect(await queue()).toMatchObject({ waiting_for_model: 1 });
    seenLoading();
    expect((await answer).status).toBe(200);
    expect(await sample(url, "mlx_requests_waiting_for_model")).toBe(0);
  });
});

describe("models being loaded", () => {
  test("a model is 1 in mlx_model_loading while it loads, and has no series once it loaded or failed to", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const [model, damaged] = [join(root, "tiny"), join(root, "damaged")];
    writeTinyModel(model);
    // Damaged where only reading its weights finds it (a weight file that is none fails before the
    // load starts): its config names a layer its weights lack.
    writeTinyModel(damaged);
    const config = JSON.parse(readFileSync(join(damaged, "config.json"), "utf8"));
    writeFileSync(join(damaged, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 3 }));
    // Each load waits, before reading its weights, until the test has seen it in the gauge: the
    // scrapes do not race a load that may take only a few turns of the event loop.
    let seenLoading = () => {};
    server = serve({
      loadModel: async (path) => (await new Promise<void>((go) => (seenLoading = go)), loadModelAsync(path)),
    });
    const { url } = server;
    const loading = (name: string) => `mlx_model_loading{model="${name}"}`;
    /** A request for `name`, with /metrics scraped until its load shows, then let go; its answer and the metrics after it. */
    const scrapedWhileLoading = async (name: string) => {
      const answer = post(`${url}/v1/completions`, { model: name, prompt: "Once", max_tokens: 1 });
      await eventually(async () => (await sample(url, loading(name))) === 1);
      seenLoading();
      const { status } = await answer;
      return { status, after: (await (await fetch(`${url}/metrics`)).text()).split("\n") };
    };
    try {
      const loaded = await scrapedWhileLoading(model);
      expect(loaded.status).toBe(200);
      expect(loaded.after.filter((l) => l.startsWith("mlx_model_loading{"))).toEqual([]);
      expect(loaded.after.filter((l) => l === "# TYPE mlx_model_loading gauge")).toHaveLength(1);

      const failed = await scrapedWhileLoading(damaged);
      expect(failed.status).toBe(500);
      expect(failed.after.filter((l) => l.startsWith("mlx_model_loading{"))).toEqual([]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("generations by outcome", () => {
  test("count a request that ended before it started once: its client gone while it waited for its model, a model that does not load", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const [busy, next, broken] = [join(root, "busy"), join(root, "next"), join(root, "broken")];
    writeTinyModel(busy, { contextLength: 8192 });
    writeTinyModel(next);
    writeTinyModel(broken);
    writeFileSync(join(broken, "model.safetensors"), "not a safetensors file");
    server = serve({ maxLoadedModels: 1 });
    const { url } = server;
    const generations = (outcome: string) =>
      sample(url, `mlx_generations_total{route="/v1/completions",finish_reason="${outcome}"}`);
    try {
      const { stop } = await longStream(url, busy);
      const gone = new AbortController();
      const waiting = fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: next, prompt: "Once", max_tokens: 2 }),
        signal: gone.signal,
      }).catch(() => "gone");
      await eventually(async () => (await sample(url, "mlx_requests_waiting_for_model")) === 1);
      gone.abort();
      expect(await waiting).toBe("gone");
      await eventually(async () => (await sample(url, "mlx_requests_waiting_for_model")) === 0);
      stop.abort();
      // The long stream and the request whose client left while it waited: it was not counted at all.
      await eventually(async () => (await generations("cancelled")) === 2);
      expect((await post(`${url}/v1/completions`, { model: broken, prompt: "Once", max_tokens: 2 })).status).toBe(500);
      expect(await generations("error")).toBe(1);
      expect((await post(`${url}/v1/completions`, { model: next, prompt: "Once", max_tokens: 2 })).status).toBe(200);
      expect(await generations("length")).toBe(1);
      expect(await generations("cancelled")).toBe(2);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("leave out a request with n choices that the full queue refused, though its first choices were queued", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const model = join(root, "model");
    writeTinyModel(model, { contextLength: 8192 });
    server = serve({ defaultModel: model, maxBatch: 1, maxQueue: 2 });
    const { url } = server;
    try {
      const { stop } = await longStream(url);
      // Two choices find room in the queue, the third none: the request is a 429, as one of a single choice.
      const refused = await post(`${url}/v1/completions`, { prompt: "Once", max_tokens: 2, n: 3 });
      expect(refused.status).toBe(429);
      expect(await sample(url, "mlx_requests_waiting")).toBe(0);
      stop.abort();
      const cancelled = `mlx_generations_total{route="/v1/completions",finish_reason="cancelled"}`;
      // The long stream alone: the refused request's choices were never generations.
      await eventually(async () => (await sample(url, cancelled)) === 1);
      await Bun.sleep(50);
      expect(await sample(url, cancelled)).toBe(1);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("requests by route", () => {
  test("are labelled by the route as registered, paths with ids included; unmatched paths as other", async () => {
    server = serve({ defaultModel: tinyModel() });
    const { url } = server;
    await fetch(`${url}/v1/models/${encodeURIComponent(tinyModel())}`);
    await fetch(`${url}/v1/responses/resp_missing`);
    await fetch(`${url}/api/push`, { method: "POST", body: "{}" });
    await fetch(`${url}/no/such/route`);
    await fetch(`${url}/another/missing/route`);
    const requests = (route: string, status: number) =>
      sample(url, `mlx_http_requests_total{route="${route}",status="${status}"}`);
    expect(await requests("/v1/models/:id", 200)).toBe(1);
    expect(await requests("/v1/responses/:id", 404)).toBe(1);
    expect(await requests("/api/push", 501)).toBe(1);
    expect(await requests("other", 404)).toBe(2);
    const stats: any = await (await fetch(`${url}/stats`)).json();
    expect(stats.requests.by_route["/v1/models/:id"]).toBe(1);
  });
});

describe("memory", () => {
  test("the peak since the server started outlives an unloaded model, as in /stats", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model });
    const { url } = server;
    await new Ollama({ host: url }).generate({ model, prompt: "Hi", options: { num_predict: 2 }, keep_alive: 0 });
    await eventually(async () => (await sample(url, "mlx_models_loaded")) === 0);
    const stats: any = await (await fetch(`${url}/stats`)).json();
    expect(stats.memory.peak).toBeGreaterThan(0);
    expect(await sample(url, "mlx_memory_peak_bytes")).toBe(stats.memory.peak);
  });

  test("live MLX arrays come back to their idle count after requests that finish, stop, fail and are dropped, and to 0 once unloaded", async () => {
    const model = tinyModel();
    // A server of its own: the count is the process's, and in this one other test files' models
    // and arrays (and the collector freeing theirs at any time) would count too. Without the
    // prefix cache, which keeps arrays on purpose, the idle count is the weights'.
    const { proc, url } = await startServe(undefined, ["--prefix-cache-mb", "0"]);
    const arrays = async () => {
      const stats: any = await (await fetch(`${url}/stats`)).json();
      expect(await sample(url, "mlx_arrays_live")).toBe(stats.memory.arrays);
      return stats.memory.arrays as number;
    };
    const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
    await openai.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 2 });
    const idle = await arrays();
    expect(idle).toBeGreaterThan(0); // the weights
    for (let i = 0; i < 3; i++) {
      await openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: `Hi ${i}` }],
        max_tokens: 4,
        n: 2,
        logprobs: true,
        top_logprobs: 2,
        stop: ["e"],
      });
      const stream = await openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: "Go on" }],
        max_tokens: 200,
        stream: true,
      });
      for await (const _ of stream) break; // the client goes away mid-answer
      const tooLong = await post(`${url}/v1/chat/completions`, {
        model,
        messages: [{ role: "user", content: "word ".repeat(400) }],
      });
      expect(tooLong.status).toBe(400);
      await new Ollama({ host: url }).embed({ model, input: ["one", "two"] });
    }
    await eventually(async () => (await modelStats(url)).active_requests === 0);
    expect(await arrays()).toBe(idle);
    await new Ollama({ host: url }).generate({ model, prompt: "", keep_alive: 0 });
    await eventually(async () => (await sample(url, "mlx_models_loaded")) === 0);
    expect(await arrays()).toBe(0);
    proc.kill();
    await proc.exited;
  });
});

describe("inter-token latency", () => {
  test("a request counts one interval per token after its first, also when its whole prompt was cached", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model });
    const { url } = server;
    const intervals = () => sample(url, "mlx_inter_token_latency_seconds_count");
    // The second request's prompt is all in the prefix cache: its last token rides a decode step.
    for (const attempt of ["first", "repeated"]) {
      const before = await intervals();
      await complete(url, model, "Tell me about the sea", 6);
      expect({ attempt, intervals: (await intervals()) - before }).toEqual({ attempt, intervals: 5 });
    }
  });
});

describe("the adaptive tuner", () => {
  // A target no step misses: every observation is "comfortably under".
  const easyTarget = 60_000;

  test("one client at a time moves no limit, as its decode steps show neither a bigger batch nor a prefill", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model, targetItlMs: easyTarget, maxBatch: 2, prefillChunk: 64 });
    for (let i = 0; i < 3; i++) await complete(server.url, model, `Story ${i}`, 20);
    const m = await modelStats(server.url);
    expect(m.tuner.estimated_p99_itl_ms).toBeGreaterThan(0); // it did observe the steps
    expect(m.tuner.adjustments).toBe(0);
    expect(m.max_batch).toBe(2);
    expect(m.prefill_chunk).toBe(64);
    expect(await sample(server.url, `mlx_batch_limit{model="${model}"}`)).toBe(2);
  });

  test("an unreachable target leaves the prefill chunk alone while prompts fit in it: its size would change no step", async () => {
    // Before, any step with a prompt to prefill counted: four short prompts halved the chunk.
    const model = tinyModel();
    server = serve({ defaultModel: model, targetItlMs: 1, maxBatch: 4, prefillChunk: 512 });
    await Promise.all([1, 2, 3, 4].map((i) => complete(server!.url, model, `Story ${i}`, 30)));
    const m = await modelStats(server.url);
    expect(m.tuner.adjustments).toBeGreaterThan(0); // it shed sequences instead
    expect(m.prefill_chunk).toBe(512);
  });

  test("an unreachable target cuts the prefill chunk where a long prompt's prefill fills it beside a decoding stream", async () => {
    // A context for the long stream's 8,000 tokens and the prompt beside it.
    const model = join(mkdtempSync(join(tmpdir(), "mlx-serve-metrics-")), "tiny");
    writeTinyModel(model, { contextLength: 16_384 });
    server = serve({ defaultModel: model, targetItlMs: 1, maxBatch: 4, prefillChunk: 64 });
    const decoding = await longStream(server.url, model);
    try {
      await complete(server.url, model, "word ".repeat(400), 2);
    } finally {
      decoding.stop.abort();
    }
    expect((await modelStats(server.url)).prefill_chunk).toBeLessThan(64);
  });

  test("a full batch that keeps up raises the limit", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model, targetItlMs: easyTarget, maxBatch: 2, prefillChunk: 64 });
    await Promise.all([1, 2, 3, 4].map((i) => complete(server!.url, model, `Story ${i}`, 30)));
    expect((await modelStats(server.url)).max_batch).toBeGreaterThan(2);
  });
});

describe("per-model gauges", () => {
  test("give one series per model name, also while an alias is loaded twice (models.toml changed its settings)", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const model = join(root, "tiny");
    writeTinyModel(model);
    // The server reads the models.toml of its process's MLX_HOME, per request.
    const savedHome = process.env.MLX_HOME;
    process.env.MLX_HOME = root;
    server = serve({ maxLoadedModels: 2 });
    try {
      for (const settings of ["", "max_kv_size = 512\n"]) {
        writeFileSync(join(root, "models.toml"), `[models.tiny]\nsource = "${model}"\n${settings}`);
        await complete(server.url, "tiny", "Once", 2);
      }
      expect(server.state.models.loaded.map((e) => e.name)).toEqual(["tiny", "tiny"]);
      const series = (await (await fetch(`${server.url}/metrics`)).text())
        .split("\n")
        .filter((line) => line !== "" && !line.startsWith("#"))
        .map((line) => line.slice(0, line.lastIndexOf(" ")));
      expect(series.filter((s, i) => series.indexOf(s) !== i)).toEqual([]);
      expect(await sample(server.url, `mlx_batch_limit{model="tiny"}`)).toBe(2 * 8);
    } finally {
      process.env.MLX_HOME = savedHome;
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("latencies", () => {
  test("time to first token and end-to-end latency count the request's wait for its model to load, as its client waited", async () => {
    const model = tinyModel();
    const loadMs = 400;
    server = serve({ loadModel: async (path) => (await Bun.sleep(loadMs), loadModelAsync(path)) });
    const { url } = server;
    const answer = await new Ollama({ host: url }).generate({ model, prompt: "Once", options: { num_predict: 2 } });
    expect(answer.load_duration / 1e6).toBeGreaterThanOrEqual(loadMs - 1);
    for (const histogram of ["mlx_time_to_first_token_seconds", "mlx_e2e_request_latency_seconds"]) {
      expect(await sample(url, `${histogram}_count`)).toBe(1);
      expect(await sample(url, `${histogram}_sum`)).toBeGreaterThanOrEqual(answer.load_duration / 1e9);
      expect(await sample(url, `${histogram}_sum`)).toBeLessThanOrEqual(answer.total_duration / 1e9);
    }
  });
});

describe("the log", () => {
  test("says a model whose files do not load, which clients get a 500 for, once while it fails alike", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-metrics-"));
    const broken = join(root, "broken");
    writeTinyModel(broken);
    writeFileSync(join(broken, "model.safetensors"), "not a safetensors file");
    const warnings: string[] = [];
    server = serve({ logWarning: (message) => warnings.push(message) });
    try {
      for (let i = 0; i < 2; i++) {
        const r = await post(`${server.url}/v1/completions`, { model: broken, prompt: "Once", max_tokens: 2 });
        expect(r.status).toBe(500);
        expect(warnings).toEqual([r.json.error.message]);
      }
      expect(warnings[0]).toContain(broken);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("memory", () => {
  test("MLX's buffer cache (and the heap's free pages) go back to the system once the server idles, its model still loaded", async () => {
    const model = tinyModel();
    server = serve({ defaultModel: model, idleMemoryReturnMs: 0 });
    const { url } = server;
    const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
    // Requests leave their freed buffers in MLX's cache (and the heap): kept for the next ones,
    // and, without the idle return, for as long as the server runs with the model loaded.
    for (const prompt of ["Tell me about the sea", "Tell me about the mountains and the rivers"])
      await openai.completions.create({ model, prompt, max_tokens: 8 });
    await eventually(async () => (await sample(url, "mlx_memory_cache_bytes")) === 0);
    expect(await sample(url, "mlx_models_loaded")).toBe(1);
  });
});
