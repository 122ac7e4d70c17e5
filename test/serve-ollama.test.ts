// `mlx serve` through the official Ollama client: chat and generate (NDJSON streams and whole),
// the final figures in nanoseconds, options, tags/ps/show/version, keep_alive loading and
// unloading.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Ollama } from "ollama";
import type { RunningServer } from "../src/server/app";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually, post, serve, tinyModel } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

let server: RunningServer;
let ollama: Ollama;
let model: string;
const messages = [{ role: "user", content: "Why is the sky blue?" }];
const greedy = { temperature: 0, num_predict: 10 };

beforeAll(() => {
  model = tinyModel();
  server = serve();
  ollama = new Ollama({ host: server.url });
});
afterAll(() => server.stop());

const expectFigures = (r: {
  total_duration: number;
  load_duration: number;
  prompt_eval_count: number;
  prompt_eval_duration: number;
  eval_count: number;
  eval_duration: number;
}) => {
  expect(r.total_duration).toBeGreaterThan(1000); // nanoseconds: a request takes over a microsecond
  expect(Number.isInteger(r.total_duration)).toBe(true);
  expect(Number.isInteger(r.load_duration)).toBe(true);
  expect(r.prompt_eval_count).toBeGreaterThan(0);
  expect(r.prompt_eval_duration).toBeGreaterThan(0);
  expect(r.eval_count).toBeGreaterThan(0);
  // From the first token to the end of the answer: never nothing.
  expect(r.eval_duration).toBeGreaterThan(0);
  expect(r.total_duration).toBeGreaterThanOrEqual(r.load_duration + r.prompt_eval_duration + r.eval_duration);
};

describe("Ollama chat and generate", () => {
  test("chat, whole and streamed: same text, done with figures", async () => {
    const whole = await ollama.chat({ model, messages, stream: false, options: greedy });
    expect(whole.done).toBe(true);
    expect(whole.message.role).toBe("assistant");
    expect(["stop", "length"]).toContain(whole.done_reason);
    expect(whole.eval_count).toBeLessThanOrEqual(10);
    expectFigures(whole);
    let text = "";
    let last: Awaited<ReturnType<typeof ollama.chat>> | undefined;
    let parts = 0;
    for await (const part of await ollama.chat({ model, messages, stream: true, options: greedy })) {
      parts++;
      text += part.message.content;
      last = part;
    }
    expect(parts).toBeGreaterThan(2);
    expect(text).toBe(whole.message.content);
    expect(last!.done).toBe(true);
    expect(last!.eval_count).toBe(whole.eval_count);
    expectFigures(last!);
  });

  test("generate with the template, raw, system, a stop option and context", async () => {
    const r = await ollama.generate({ model, prompt: "Hello", stream: false, options: { ...greedy, num_predict: 16 } });
    expect(r.done).toBe(true);
    expect(r.context!.length).toBe(r.prompt_eval_count + r.eval_count);
    expectFigures(r);
    const raw = await ollama.generate({ model, prompt: "Hello", raw: true, stream: false, options: greedy });
    expect(raw.prompt_eval_count).toBeLessThan(r.prompt_eval_count);
    const system = await ollama.generate({
      model,
      prompt: "Hello",
      system: "Be brief.",
      stream: false,
      options: greedy,
    });
    expect(system.prompt_eval_count).not.toBe(r.prompt_eval_count); // it replaces the template's default system prompt
    expect(r.response!.length).toBeGreaterThan(8);
    const response = r.response ?? "";
    const stop = response.slice(4, 7);
    const stopped = await ollama.generate({
      model,
      prompt: "Hello",
      stream: false,
      options: { ...greedy, num_predict: 16, stop: [stop] },
    });
    expect(stopped.response).toBe(response.slice(0, response.indexOf(stop)));
    expect(stopped.done_reason).toBe("stop");
    const continued = await ollama.generate({
      model,
      prompt: "More",
      context: r.context,
      stream: false,
      options: greedy,
    });
    expect(continued.prompt_eval_count).toBeGreaterThan(r.context!.length);
    let streamed = "";
    for await (const part of await ollama.generate({
      model,
      prompt: "Hello",
      stream: true,
      options: { ...greedy, num_predict: 16 },
    }))
      streamed += part.response ?? "";
    expect(streamed).toBe(response);
  });

  test("sampling options: a seed repeats", async () => {
    const options = {
      temperature: 0.9,
      top_k: 30,
      top_p: 0.8,
      min_p: 0.02,
      repeat_penalty: 1.2,
      seed: 3,
      num_predict: 8,
    };
    const a = await ollama.generate({ model, prompt: "Hi", stream: false, options });
    const b = await ollama.generate({ model, prompt: "Hi", stream: false, options });
    expect(a.response).toBe(b.response);
  });

  test("a name with Ollama's default tag (:latest) is the model without it", async () => {
    const plain = await ollama.chat({ model, messages, stream: false, options: greedy });
    const tagged = await ollama.chat({ model: `${model}:latest`, messages, stream: false, options: greedy });
    expect(tagged.message.content).toBe(plain.message.content);
  });

  test("an unknown model: a 404 whose message the client shows", async () => {
    const error = await ollama.chat({ model: "no-such-model", messages }).catch((e) => e);
    expect(error.status_code).toBe(404);
    expect(error.message).toMatch(/no-such-model/);
    const tagged = await ollama.chat({ model: "no-such-model:latest", messages }).catch((e) => e);
    expect(tagged.status_code).toBe(404);
    const bad = await ollama.generate({ model, prompt: "x", options: { temperature: -1 } }).catch((e) => e);
    expect(bad.status_code).toBe(400);
    expect(bad.message).toMatch(/temperature/);
  });
});

describe("Ollama model management", () => {
  test("version, tags, show", async () => {
    expect((await ollama.version()).version).toBe("0.1.0-test");
    await ollama.generate({ model, prompt: "x", stream: false, options: { num_predict: 1 } });
    const tags = await ollama.list();
    expect(tags.models.map((m) => m.name)).toContain(model);
    const show = await ollama.show({ model });
    expect(show.template).toContain("im_start");
    expect(show.details.family).toBe("llama");
    expect((show.model_info as unknown as Record<string, number>)["llama.context_length"]).toBe(256);
  });

  test("keep_alive: 0 unloads at once, an empty request loads, -1 keeps, '50ms' expires", async () => {
    await ollama.generate({ model, prompt: "", keep_alive: -1 }); // a load request
    let ps = await ollama.ps();
    expect(ps.models.map((m) => m.name)).toContain(model);
    expect(new Date(ps.models[0]!.expires_at).getFullYear()).toBeGreaterThan(2200);
    const unloaded = await post(`${server.url}/api/generate`, { model, keep_alive: 0 });
    expect(unloaded.json.done_reason).toBe("unload");
    expect((await ollama.ps()).models).toEqual([]);
    await ollama.chat({ model, messages, stream: false, keep_alive: "50ms", options: { num_predict: 2 } });
    await eventually(async () => (await ollama.ps()).models.length === 0, 3000);
    const r = await ollama.chat({ model, messages, stream: false, keep_alive: 0, options: { num_predict: 2 } });
    expect(r.load_duration).toBeGreaterThan(0); // it was loaded for this request
    expect((await ollama.ps()).models).toEqual([]); // and unloaded right after
    const bad = await post(`${server.url}/api/generate`, { model, keep_alive: "5 minutes" });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatch(/keep_alive/);
  });
});

describe("one model at a time (--max-models 1)", () => {
  test("a request for a second model waits while the first is busy, then it takes the first one's place", async () => {
    const second = join(mkdtempSync(join(tmpdir(), "mlx-second-")), "tiny");
    writeTinyModel(second, { contextLength: 256, seed: 7 });
    const busy = await ollama.chat({ model, messages, stream: true, options: { temperature: 0, num_predict: 150 } });
    const loadedNow = async () => (await ollama.ps()).models.map((m) => m.model);
    let most = 0;
    const watching = setInterval(async () => (most = Math.max(most, (await loadedNow()).length)), 5);
    let firstDone = 0;
    const other = ollama
      .chat({ model: second, messages, stream: false, options: { num_predict: 2 } })
      .then((r) => ({ r, at: performance.now() }));
    for await (const chunk of busy) if (chunk.done) firstDone = performance.now();
    const { r, at } = await other;
    clearInterval(watching);
    expect(r.done).toBe(true);
    expect(at).toBeGreaterThan(firstDone); // it waited for the first model to finish
    expect(most).toBe(1); // never two models in memory
    expect(await loadedNow()).toEqual([second]);
  });
});
